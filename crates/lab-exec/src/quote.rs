//! Quoting for the remote POSIX shell: every argument, always.

/// One argument as a single shell word: bare when it is made only of characters no shell
/// treats specially, else in single quotes (an embedded `'` becomes `'\''`).
pub fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// An argument vector as one shell command line.
pub fn quote_line<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("ssd-vol0/r1@base"), "ssd-vol0/r1@base");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(touch x)"), "'$(touch x)'");
        assert_eq!(
            quote_line(&["zfs", "get", "-H", "lab:lab"]),
            "zfs get -H lab:lab"
        );
    }

    /// Whatever the argument, the shell hands it back unchanged and runs nothing.
    #[test]
    fn the_shell_never_runs_an_argument() {
        let marker = std::env::temp_dir().join(format!("lab-quote-marker-{}", std::process::id()));
        let m = marker.display();
        let hostile = [
            format!("; touch {m}"),
            format!("$(touch {m})"),
            format!("`touch {m}`"),
            format!("' ; touch {m} ; '"),
            format!("\n touch {m}"),
            format!("a && touch {m}"),
            format!("| touch {m}"),
            format!("> {m}"),
            "-rf".to_owned(),
            "ünïcode and spaces".to_owned(),
        ];
        for arg in &hostile {
            let line = quote_line(&["printf", "%s", arg]);
            let out = std::process::Command::new("sh")
                .args(["-c", &line])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), *arg, "{line}");
            assert!(!marker.exists(), "{line} ran something");
        }
    }
}
