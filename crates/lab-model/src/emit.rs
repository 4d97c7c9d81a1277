//! Printing a tree back as YAML, optionally with the file:line that set each value.

use std::fmt::Write;

use crate::tree::{Tree, Value};

/// Renders `node` as block-style YAML. With `explain`, every scalar line ends in a comment
/// naming the file and line that set it.
pub fn to_yaml(node: &Tree, explain: bool) -> String {
    let mut out = String::new();
    match &node.value {
        Value::Map(entries) if !entries.is_empty() => map(&mut out, entries, 0, explain),
        _ => {
            scalar_line(&mut out, node, explain);
        }
    }
    out
}

fn map(out: &mut String, entries: &[(String, Tree)], indent: usize, explain: bool) {
    for (key, value) in entries {
        let _ = write!(out, "{:indent$}{}:", "", scalar_text(key));
        child(out, value, indent, explain);
    }
}

fn child(out: &mut String, value: &Tree, indent: usize, explain: bool) {
    match &value.value {
        Value::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            map(out, entries, indent + 2, explain);
        }
        Value::Seq(items) if !items.is_empty() && !is_flat(items) => {
            out.push('\n');
            for item in items {
                let _ = write!(out, "{:indent$}  -", "");
                match &item.value {
                    Value::Map(entries) if !entries.is_empty() => {
                        // first key on the dash line, the rest aligned under it
                        let mut nested = String::new();
                        map(&mut nested, entries, indent + 4, explain);
                        out.push(' ');
                        out.push_str(nested.trim_start());
                    }
                    _ => child(out, item, indent + 2, explain),
                }
            }
        }
        _ => {
            out.push(' ');
            scalar_line(out, value, explain);
        }
    }
}

fn is_flat(items: &[Tree]) -> bool {
    items
        .iter()
        .all(|i| !matches!(i.value, Value::Map(_) | Value::Seq(_)))
}

fn scalar_line(out: &mut String, node: &Tree, explain: bool) {
    out.push_str(&inline(node));
    if explain {
        let _ = write!(out, "  # {}", node.origin);
    }
    out.push('\n');
}

fn inline(node: &Tree) -> String {
    match &node.value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => scalar_text(s),
        Value::Seq(items) => format!(
            "[{}]",
            items.iter().map(inline).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", scalar_text(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A string as a plain scalar when that reads back as the same string, else double-quoted.
fn scalar_text(s: &str) -> String {
    let plain_char = |c: char| c.is_ascii_alphanumeric() || "_./@+-".contains(c);
    let reserved = matches!(
        s,
        "true" | "false" | "null" | "~" | "yes" | "no" | "on" | "off"
    );
    let numeric = s.parse::<f64>().is_ok() || s.starts_with(['-', '.', '+']);
    let mid_colon_ok = !s.contains(": ") && !s.ends_with(':') && !s.contains(" #");
    if !s.is_empty()
        && !reserved
        && !numeric
        && mid_colon_ok
        && s.chars().all(|c| plain_char(c) || c == ':' || c == '/')
    {
        s.to_owned()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::parse;
    use std::path::Path;

    #[test]
    fn round_trips_through_the_parser() {
        let text = "a: 1\nb:\n  c: \"true\"\n  d: [1, x]\n  e:\n    - {f: 1}\n    - g: 2\n      h: \"0755\"\ni: \"a: b\"\nj: 192.168.1.0/24\nk: \"\"\n";
        let node = parse(text, Path::new("t.yaml")).unwrap();
        let out = to_yaml(&node, false);
        let back = parse(&out, Path::new("t.yaml")).unwrap();
        assert_eq!(node.to_json(), back.to_json(), "{out}");
    }

    #[test]
    fn explain_names_file_and_line() {
        let node = parse("a:\n  b: 1\n", Path::new("x.yaml")).unwrap();
        assert_eq!(to_yaml(&node, true), "a:\n  b: 1  # x.yaml:2\n");
    }
}
