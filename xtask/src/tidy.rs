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

    /// Library crates of the product (not the binary, not test infrastructure).
    const LIBRARIES: &[&str] = &["crates/lab-model", "crates/lab-generate"];

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

    #[test]
    fn library_crates_never_print_or_spawn() {
        for lib in LIBRARIES {
            for file in rust_files(&root().join(lib).join("src")) {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    for banned in [
                        "println!",
                        "eprintln!",
                        "print!(",
                        "eprint!(",
                        "dbg!",
                        "process::Command",
                        "Command::new",
                    ] {
                        assert!(
                            !code.contains(banned),
                            "{}:{}: `{banned}` in a library crate",
                            file.display(),
                            n + 1
                        );
                    }
                }
            }
        }
    }
}
