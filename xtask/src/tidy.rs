//! Tidy checks: the architecture invariants that the workspace's metadata and a text search
//! can enforce. The crate list comes from `cargo metadata`, so a new or split crate cannot
//! escape them: every crate under `crates/` declares its place in `[package.metadata.lab]`,
//! either `layer = N` (a crate depends only on crates of lower layers) or
//! `role = "test-infrastructure"` (a dev-dependency of tests, never of the product).

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    /// The one crate allowed to spawn processes.
    const EXECUTOR: &str = "lab-exec";
    /// A source file longer than this says why in its `//!` header, on a line `//! Long: ...`.
    const LONG_FILE: usize = 500;

    struct Krate {
        name: String,
        dir: PathBuf,
        /// `None` for test infrastructure.
        layer: Option<u64>,
        is_binary: bool,
        /// Workspace crates it depends on: (name, is a dev-dependency).
        deps: Vec<(String, bool)>,
    }

    fn workspace() -> Vec<Krate> {
        let out = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(crate::root())
            .output()
            .expect("cargo metadata runs");
        assert!(out.status.success(), "cargo metadata failed");
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
        let packages = meta["packages"].as_array().expect("packages");
        let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
        let crates_dir = crate::root().join("crates");
        packages
            .iter()
            .filter_map(|p| {
                let manifest = PathBuf::from(p["manifest_path"].as_str()?);
                let dir = manifest.parent()?.to_path_buf();
                if !dir.starts_with(&crates_dir) {
                    return None; // xtask
                }
                let name = p["name"].as_str()?.to_owned();
                let lab = &p["metadata"]["lab"];
                let layer = lab["layer"].as_u64();
                assert!(
                    layer.is_some() || lab["role"] == "test-infrastructure",
                    "{}: [package.metadata.lab] needs `layer = N` or `role = \"test-infrastructure\"`",
                    manifest.display()
                );
                let is_binary = p["targets"]
                    .as_array()?
                    .iter()
                    .any(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")));
                let deps = p["dependencies"]
                    .as_array()?
                    .iter()
                    .filter_map(|d| {
                        let dep = d["name"].as_str()?;
                        names
                            .contains(&dep)
                            .then(|| (dep.to_owned(), d["kind"] == "dev"))
                    })
                    .collect();
                Some(Krate {
                    name,
                    dir,
                    layer,
                    is_binary,
                    deps,
                })
            })
            .collect()
    }

    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(rust_files(&p));
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn nothing_depends_upward_and_the_product_never_on_test_infrastructure() {
        let crates = workspace();
        assert!(crates.len() >= 8, "the workspace's crates were found");
        let layer_of = |name: &str| crates.iter().find(|k| k.name == name).map(|k| k.layer);
        for k in &crates {
            for (dep, dev) in &k.deps {
                let theirs = layer_of(dep).expect("a workspace crate");
                match (k.layer, theirs, dev) {
                    // Tests may use the test bed and anything below them.
                    (_, None, true) => {}
                    (Some(mine), Some(theirs), true) => assert!(
                        theirs <= mine,
                        "{}: dev-dependency {dep} is above it (layer {theirs} > {mine})",
                        k.name
                    ),
                    (Some(mine), Some(theirs), false) => assert!(
                        theirs < mine,
                        "{} (layer {mine}) depends on {dep} (layer {theirs}): only lower layers",
                        k.name
                    ),
                    (Some(_), None, false) => {
                        panic!(
                            "{}: the product depends on test infrastructure {dep}",
                            k.name
                        )
                    }
                    (None, _, _) => {}
                }
            }
        }
    }

    #[test]
    fn every_file_says_what_it_is_for_and_why_it_is_long() {
        for dir in ["crates", "xtask"] {
            for file in rust_files(&crate::root().join(dir)) {
                let text = std::fs::read_to_string(&file).unwrap();
                assert!(
                    text.starts_with("//!"),
                    "{} must start with a `//!` line saying what it is for",
                    file.display()
                );
                let lines = text.lines().count();
                let says_why = text
                    .lines()
                    .take_while(|l| l.starts_with("//!"))
                    .any(|l| l.starts_with("//! Long:"));
                assert!(
                    lines <= LONG_FILE || says_why,
                    "{} has {lines} lines: split it, or say why in a `//! Long:` line",
                    file.display()
                );
            }
        }
    }

    fn check(crates: &[&Krate], banned: &[&str], rule: &str) {
        for krate in crates {
            assert!(krate.dir.join("src").is_dir(), "{} has src/", krate.name);
            for file in rust_files(&krate.dir.join("src")) {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in text.lines().enumerate() {
                    // The code before a comment (`//` at the start or after a space: not a URL).
                    let code = if line.trim_start().starts_with("//") {
                        ""
                    } else {
                        line.split(" //").next().unwrap_or("")
                    };
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
        let crates = workspace();
        let libraries: Vec<&Krate> = crates
            .iter()
            .filter(|k| k.layer.is_some() && !k.is_binary)
            .collect();
        assert!(libraries.len() >= 7, "the library crates were found");
        check(
            &libraries,
            &[
                "println!",
                "eprintln!",
                "print!(",
                "eprint!(",
                "dbg!",
                "io::stdout",
                "io::stderr",
            ],
            "library crates never print",
        );
    }

    #[test]
    fn only_the_executor_spawns_processes() {
        let crates = workspace();
        let product: Vec<&Krate> = crates
            .iter()
            .filter(|k| k.layer.is_some() && k.name != EXECUTOR)
            .collect();
        assert!(
            crates.iter().any(|k| k.name == EXECUTOR),
            "{EXECUTOR} is in the workspace"
        );
        check(
            &product,
            &["process::Command", "Command::new", "tokio::process"],
            "only lab-exec spawns processes",
        );
    }
}
