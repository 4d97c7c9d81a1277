//! The errors of loading a lab: every one names the file and line it is about.

use std::fmt;
use std::path::PathBuf;

use crate::tree::Origin;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}:{line}:{column}: invalid YAML: {message}", file.display())]
    Yaml {
        file: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },

    #[error("{at}: `include` loops back to {}", file.display())]
    IncludeCycle { at: Origin, file: PathBuf },

    /// The YAML is well formed but does not fit the lab schema (unknown key, wrong type ...).
    #[error("{at}: {path}: {message}{hint}")]
    Schema {
        at: Origin,
        path: String,
        message: String,
        hint: Hint,
    },

    /// A name that would reach a shell command or a path does not match its pattern.
    #[error("{at}: {path}: {value:?} is not a valid {what}: {rule}")]
    Name {
        at: Origin,
        path: String,
        value: String,
        what: &'static str,
        rule: &'static str,
    },

    #[error("no lab file given (use --lab FILE)")]
    NoLabFile,

    /// `--host` or `--node` names something the lab does not have.
    #[error("{what} `{name}` is not in the lab{hint}")]
    UnknownSelection {
        what: &'static str,
        name: String,
        hint: Hint,
    },

    /// `--host` and `--node` together leave no node.
    #[error("no node of the lab is {selection}")]
    EmptySelection { selection: String },
}

impl ModelError {
    /// Where in the lab files the error points, when it points anywhere.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Self::IncludeCycle { at, .. } | Self::Schema { at, .. } | Self::Name { at, .. } => {
                Some(at)
            }
            _ => None,
        }
    }
}

/// An optional "did you mean" suggestion, printed after a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint(pub Option<String>);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, " (did you mean `{s}`?)"),
            None => Ok(()),
        }
    }
}

impl Hint {
    /// The candidate closest to `word` by edit distance, when it is close enough to be a typo.
    pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Hint {
        let limit = (word.chars().count() / 3).max(1);
        Hint(
            candidates
                .into_iter()
                .map(|c| (edit_distance(word, c), c))
                .filter(|(d, _)| *d <= limit)
                .min_by_key(|(d, _)| *d)
                .map(|(_, c)| c.to_owned()),
        )
    }
}

/// Edit distance over chars where swapping two neighbours counts as one edit (optimal string
/// alignment), so `brid` is one typo away from `bird`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_only_close_words() {
        assert_eq!(
            Hint::closest("poool", ["pool", "proto"]).0.as_deref(),
            Some("pool")
        );
        assert_eq!(
            Hint::closest("hostnme", ["hostname", "id"]).0.as_deref(),
            Some("hostname")
        );
        assert_eq!(Hint::closest("zzz", ["pool", "proto"]).0, None);
        assert_eq!(
            Hint::closest("brid", ["bird", "frr"]).0.as_deref(),
            Some("bird")
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
