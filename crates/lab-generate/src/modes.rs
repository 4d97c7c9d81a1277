//! `modes`, beside an overlay's tree: the owner, group and mode a path of the guest gets, since
//! git carries none of them (only the executable bit).
//!
//! ```text
//! # path              mode  owner[:group]
//! root                0700
//! root/.ssh/authorized_keys 0600 0:0
//! etc/frr             0750  frr:frr
//! etc/frr/frr.conf    -     frr:frr
//! ```
//!
//! A mode is octal or `-` (keep); owner and group are names (looked up in the *image's*
//! `/etc/passwd` and `/etc/group` when the clone is filled) or numbers, either may be left out.
//! A line applies to a node whose tree has that path; the rest of the image keeps its owners
//! and modes.

use std::path::{Component, Path};

use crate::GenerateError;
use crate::build::PathMode;

/// One line of `modes`: the setting as the manifest keeps it, and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeRule {
    pub setting: PathMode,
    pub line: usize,
}

/// A user or group as `modes` may name it: a number, or a name as `useradd` takes it.
pub(crate) fn valid_id(s: &str) -> bool {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return !s.is_empty() && s.len() <= 10;
    }
    lab_model::names::user(s).is_ok()
}

/// A path relative to the guest's `/`, of plain components (no `.`, `..`, empty or control
/// characters).
pub(crate) fn plain_path(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !path.split('/').any(|c| c.is_empty() || c == ".")
        && !path.bytes().any(|b| b.is_ascii_control())
}

/// A mode as the manifest keeps it: four octal digits.
pub(crate) fn valid_mode(mode: &str) -> bool {
    mode.len() == 4 && mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

/// Parses `modes` (`file` names it in errors). Paths are relative, plain and given once.
pub fn parse(file: &Path, text: &str) -> Result<Vec<ModeRule>, GenerateError> {
    let mut rules: Vec<ModeRule> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |message: String| GenerateError::Modes {
            file: file.to_path_buf(),
            line,
            message,
        };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let [path, mode, rest @ ..] = fields.as_slice() else {
            return Err(bad(
                "expected `PATH MODE [OWNER[:GROUP]]` (MODE may be `-`)".to_owned(),
            ));
        };
        let owner_group = match rest {
            [] => None,
            [og] => Some(*og),
            _ => {
                return Err(bad(format!(
                    "`{}` after the owner: one line per path, `PATH MODE [OWNER[:GROUP]]`",
                    rest[1..].join(" ")
                )));
            }
        };
        let path = path.trim_end_matches('/');
        if !plain_path(path) {
            return Err(bad(format!(
                "path `{path}` must be relative to the guest's `/`, without `..` or `.`"
            )));
        }
        let mode = match *mode {
            "-" => None,
            m if (3..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b)) => {
                Some(format!("{:04o}", u32::from_str_radix(m, 8).expect("octal")))
            }
            m => {
                return Err(bad(format!(
                    "mode `{m}` is not octal (e.g. 0640), nor `-` to keep the mode"
                )));
            }
        };
        let (owner, group) = match owner_group {
            None => (None, None),
            Some(og) => {
                let (o, g) = match og.split_once(':') {
                    Some((o, g)) => (o, Some(g)),
                    None => (og, None),
                };
                let o = (!o.is_empty()).then_some(o);
                for id in o.iter().chain(g.iter()) {
                    if !valid_id(id) {
                        return Err(bad(format!(
                            "`{id}` is neither a user or group name nor a number"
                        )));
                    }
                }
                (o.map(str::to_owned), g.map(str::to_owned))
            }
        };
        if mode.is_none() && owner.is_none() && group.is_none() {
            return Err(bad(format!("`{path}` gets neither a mode nor an owner")));
        }
        if let Some(first) = rules.iter().find(|r| r.setting.path == path) {
            return Err(bad(format!(
                "`{path}` is given twice (first on line {})",
                first.line
            )));
        }
        rules.push(ModeRule {
            setting: PathMode {
                path: path.to_owned(),
                mode,
                owner,
                group,
            },
            line,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<(PathMode, usize), String> {
        parse(Path::new("modes"), text)
            .map(|mut r| r.remove(0))
            .map(|r| (r.setting, r.line))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn lines_that_are_read() {
        let (r, _) = one("root/.ssh/ 700 # keys\n").unwrap();
        assert_eq!(
            (r.path.as_str(), r.mode.as_deref(), r.owner, r.group),
            ("root/.ssh", Some("0700"), None, None)
        );
        let (r, line) = one("\n# c\netc/frr - frr:frr\n").unwrap();
        assert_eq!((line, r.mode, r.owner.as_deref()), (3, None, Some("frr")));
        let (r, _) = one("etc/x 2750 :42").unwrap();
        assert_eq!((r.owner, r.group.as_deref()), (None, Some("42")));
    }

    #[test]
    fn lines_that_are_refused_with_their_number() {
        for (text, says) in [
            ("etc", "expected `PATH MODE"),
            ("../etc 0700", "relative"),
            ("/etc 0700", "relative"),
            ("etc/./x 0700", "relative"),
            ("etc 0800", "not octal"),
            ("etc 75", "not octal"),
            ("etc 0700 root extra", "one line per path"),
            ("etc 0700 Root", "neither a user"),
            ("etc 0700 $(id)", "neither a user"),
            ("etc -", "neither a mode nor an owner"),
            ("etc 0700\netc/ 0755", "given twice (first on line 1)"),
        ] {
            let e = parse(Path::new("o/modes"), text).unwrap_err().to_string();
            assert!(e.starts_with("o/modes:"), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
