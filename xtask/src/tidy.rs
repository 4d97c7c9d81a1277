//! Tidy checks: the architecture invariants that a text search can enforce.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(rust_files(&p));
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
        out
    }

    fn root() -> PathBuf {
        crate::root()
    }

    /// Library crates of the product (not the binary, not test infrastructure): they never print.
    const LIBRARIES: &[&str] = &[
        "crates/lab-model",
        "crates/lab-generate",
        "crates/lab-exec",
        "crates/lab-ops",
    ];
    /// Product crates that must not spawn processes: only `lab-exec` does.
    const NO_SPAWN: &[&str] = &[
        "crates/lab-model",
        "crates/lab-generate",
        "crates/lab-ops",
        "crates/lab",
    ];

    #[test]
    fn every_file_says_what_it_is_for() {
        for dir in ["crates", "xtask"] {
            for file in rust_files(&root().join(dir)) {
                let text = std::fs::read_to_string(&file).unwrap();
                assert!(
                    text.starts_with("//!"),
                    "{} must start with a `//!` line saying what it is for",
                    file.display()
                );
            }
        }
    }

    fn check(crates: &[&str], banned: &[&str], rule: &str) {
        for krate in crates {
            for file in rust_files(&root().join(krate).join("src")) {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    for b in banned {
                        assert!(
                            !code.contains(b),
                            "{}:{}: `{b}`: {rule}",
                            file.display(),
                            n + 1
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn library_crates_never_print() {
        check(
            LIBRARIES,
            &["println!", "eprintln!", "print!(", "eprint!(", "dbg!"],
            "library crates never print",
        );
    }

    #[test]
    fn only_the_executor_spawns_processes() {
        check(
            NO_SPAWN,
            &["process::Command", "Command::new", "tokio::process"],
            "only lab-exec spawns processes",
        );
    }
}
