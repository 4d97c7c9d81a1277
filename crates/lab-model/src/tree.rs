//! The untyped YAML tree every lab file is read into, with the file:line of every value.
//!
//! Files are parsed into [`Tree`]s, merged (maps deeply, everything else replaced) and only then
//! turned into the typed model. Keeping the origin on every node is what lets `config show
//! --explain` say who set a value and lets schema errors point at a file and line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::error::ModelError;

/// Where a value was written: a file and a 1-based line (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A YAML value with the file:line it came from, and its children: the untyped tree (a lab
/// node is [`crate::LabNode`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub value: Value,
    pub origin: Origin,
}

/// A YAML value. Mappings keep their key order; keys are strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

impl Tree {
    /// The child at `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Tree> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of mapping keys and sequence indices (as decimal strings).
    pub fn lookup<'a>(&'a self, path: &[String]) -> Option<&'a Tree> {
        let mut node = self;
        for segment in path {
            node = match &node.value {
                Value::Map(_) => node.get(segment)?,
                Value::Seq(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The deepest node along `path` that exists: the best place to point an error at.
    pub fn closest<'a>(&'a self, path: &[String]) -> &'a Tree {
        (0..=path.len())
            .rev()
            .find_map(|n| self.lookup(&path[..n]))
            .unwrap_or(self)
    }

    /// Removes and returns the child at `key` of a mapping.
    pub fn take(&mut self, key: &str) -> Option<Tree> {
        match &mut self.value {
            Value::Map(entries) => {
                let pos = entries.iter().position(|(k, _)| k == key)?;
                Some(entries.remove(pos).1)
            }
            _ => None,
        }
    }

    /// Merges `over` on top of `self`: mappings merge key by key, recursively; any other value
    /// (scalars, sequences, or a change of kind) is replaced whole, origin included.
    pub fn merge(&mut self, over: Tree) {
        match (&mut self.value, over.value) {
            (Value::Map(base), Value::Map(top)) => {
                for (key, value) in top {
                    match base.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, existing)) => existing.merge(value),
                        None => base.push((key, value)),
                    }
                }
            }
            (slot, value) => {
                *slot = value;
                self.origin = over.origin;
            }
        }
    }

    /// The plain JSON value, for typed deserialization and templates.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Tree::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parses one YAML document into a [`Tree`] tree whose origins name `file`.
///
/// YAML 1.2 core schema with the surprises turned off: only `true`/`false` are booleans and
/// numbers with leading zeros stay strings. Duplicate keys are errors.
pub fn parse(text: &str, file: &Path) -> Result<Tree, ModelError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
    };
    let file: Arc<Path> = Arc::from(file);
    if text.trim().is_empty() {
        return Ok(Tree {
            value: Value::Map(Vec::new()),
            origin: Origin { file, line: 1 },
        });
    }
    let raw: Spanned<Raw> = serde_saphyr::from_str_with_options(text, options).map_err(|err| {
        let (line, column) = err
            .location()
            .map_or((0, 0), |loc| (loc.line(), loc.column()));
        ModelError::Yaml {
            file: file.to_path_buf(),
            line,
            column,
            message: yaml_message(&err.without_snippet().to_string()),
        }
    })?;
    Ok(raw.into_tree(&file))
}

/// The parser's message for a user: without its location (the error shows it as file:line)
/// and without advice meant for programs that embed the parser.
fn yaml_message(text: &str) -> String {
    let text = text
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(text);
    let text = match text.rfind(" at line ") {
        Some(at)
            if text[at + " at line ".len()..]
                .chars()
                .all(|c| c.is_ascii_digit() || ", column".contains(c)) =>
        {
            &text[..at]
        }
        _ => text,
    };
    text.trim_end().to_owned()
}

/// Reads and parses a file.
pub fn parse_file(path: &Path) -> Result<Tree, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // The line of the first byte that is not UTF-8.
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() as u64 + 1;
        ModelError::Yaml {
            file: path.to_path_buf(),
            line,
            column: 0,
            message: "not UTF-8 text".to_owned(),
        }
    })?;
    parse(&text, path)
}

/// A file path as given, made relative to the file that named it.
pub fn relative_to(including: &Path, named: &str) -> PathBuf {
    let named = Path::new(named);
    if named.is_absolute() {
        named.to_path_buf()
    } else {
        including.parent().unwrap_or(Path::new("")).join(named)
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization of the raw tree: serde-saphyr's `Spanned` carries the line of every value.

enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(String, Spanned<Raw>)>),
}

trait IntoNode {
    fn into_tree(self, file: &Arc<Path>) -> Tree;
}

impl IntoNode for Spanned<Raw> {
    fn into_tree(self, file: &Arc<Path>) -> Tree {
        let origin = Origin {
            file: file.clone(),
            line: self.referenced.line(),
        };
        let value = match self.value {
            Raw::Null => Value::Null,
            Raw::Bool(b) => Value::Bool(b),
            Raw::Int(i) => Value::Int(i),
            Raw::Float(f) => Value::Float(f),
            Raw::Str(s) => Value::Str(s),
            Raw::Seq(items) => Value::Seq(items.into_iter().map(|i| i.into_tree(file)).collect()),
            Raw::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, v.into_tree(file)))
                    .collect(),
            ),
        };
        Tree { value, origin }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        i64::try_from(v)
            .map(Raw::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            entries.push((key.0, value));
        }
        Ok(Raw::Map(entries))
    }
}

/// A mapping key: any scalar, kept as its text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Tree {
        parse(text, Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn lines_are_recorded_per_value() {
        let n = p("a: 1\nb:\n  c: x\n  d: [1, 2]\n");
        assert_eq!(n.get("a").unwrap().origin.line, 1);
        assert_eq!(n.lookup(&["b".into(), "c".into()]).unwrap().origin.line, 3);
        assert_eq!(
            n.lookup(&["b".into(), "d".into(), "1".into()])
                .unwrap()
                .value,
            Value::Int(2)
        );
    }

    #[test]
    fn yaml_11_surprises_stay_strings() {
        let n = p("a: no\nb: on\nc: 0755\nd: true\ne: 08\n");
        assert_eq!(n.get("a").unwrap().value, Value::Str("no".into()));
        assert_eq!(n.get("b").unwrap().value, Value::Str("on".into()));
        assert_eq!(n.get("c").unwrap().value, Value::Str("0755".into()));
        assert_eq!(n.get("d").unwrap().value, Value::Bool(true));
        assert_eq!(n.get("e").unwrap().value, Value::Str("08".into()));
    }

    #[test]
    fn merge_is_deep_for_maps_and_replaces_the_rest() {
        let mut base = p("m: {a: 1, b: {c: 2}}\nl: [1, 2]\ns: x\n");
        base.merge(parse("m: {b: {d: 3}}\nl: [9]\ns: y\n", Path::new("o.yaml")).unwrap());
        assert_eq!(
            base.to_json(),
            serde_json::json!({"m": {"a": 1, "b": {"c": 2, "d": 3}}, "l": [9], "s": "y"})
        );
        assert_eq!(
            base.get("s").unwrap().origin.file.as_ref(),
            Path::new("o.yaml")
        );
        let a = base.lookup(&["m".into(), "a".into()]).unwrap();
        assert_eq!(a.origin.file.as_ref(), Path::new("t.yaml"));
    }

    #[test]
    fn duplicate_keys_and_bad_yaml_have_a_line() {
        for text in ["a: 1\na: 2\n", "a: [1, 2\nb: 3\n"] {
            match parse(text, Path::new("bad.yaml")) {
                Err(ModelError::Yaml { line, message, .. }) => {
                    assert!(line >= 1, "{text}");
                    assert!(
                        !message.contains("DuplicateKeyPolicy") && !message.contains(" at line "),
                        "{message}"
                    );
                }
                other => panic!("expected a YAML error, got {other:?}"),
            }
        }
    }
}
