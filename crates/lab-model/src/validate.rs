//! `validate:`, the checks a lab file declares for `lab validate`: a command run on some nodes,
//! and what its result must be. Built-in checks (BGP, OSPF, link pings) come from the lab
//! plan and need no declaration.

use indexmap::IndexMap;
use serde::Deserialize;

use crate::error::{Hint, ModelError};
use crate::model::LabNode;
use crate::names;
use crate::resolve::{check_name, path_of, schema_error};
use crate::select::names_node;
use crate::tree::Tree;

/// One declared check, as a lab file writes it under `validate: {NAME: ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckSchema {
    /// A shell line run on the node (as `lab exec` runs one).
    command: String,
    /// Node names or globs (`vpp0-*`); every node when absent.
    #[serde(default)]
    nodes: Option<Vec<String>>,
    /// The exit status the command must end with (default 0).
    #[serde(default)]
    exit: Option<i32>,
    /// Text the output (stdout and stderr) must contain.
    #[serde(default)]
    contains: Option<String>,
    /// A regular expression the output must match (`^` and `$` at each line's ends).
    #[serde(default)]
    regex: Option<String>,
    /// Seconds one run of the command may take (default 10).
    #[serde(default)]
    timeout: Option<u64>,
}

/// A declared check, resolved against the lab's nodes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub command: String,
    /// The nodes it runs on, in lab order.
    pub nodes: Vec<String>,
    pub exit: i32,
    pub contains: Option<String>,
    /// Checked to compile when the lab is loaded.
    pub regex: Option<String>,
    pub timeout_secs: u64,
}

pub(crate) fn resolve_checks(
    root: &Tree,
    schema: IndexMap<String, CheckSchema>,
    nodes: &[LabNode],
) -> Result<Vec<Check>, ModelError> {
    let mut checks = Vec::with_capacity(schema.len());
    for (name, c) in schema {
        let at = |field: &str| path_of(&["validate", &name, field]);
        check_name(
            root,
            &path_of(&["validate", &name]),
            &name,
            "check name",
            names::ident,
        )?;
        if c.command.trim().is_empty() {
            return Err(schema_error(
                root,
                &at("command"),
                "is empty: a check runs a command on the node".to_owned(),
                Hint::default(),
            ));
        }
        if let Some(re) = &c.regex
            && let Err(e) = regex_lite::Regex::new(&format!("(?m){re}"))
        {
            return Err(schema_error(
                root,
                &at("regex"),
                format!("is not a regular expression: {e}"),
                Hint::default(),
            ));
        }
        let wanted = match &c.nodes {
            None => nodes.iter().map(|n| n.name.clone()).collect(),
            Some(patterns) => {
                for p in patterns {
                    if !nodes.iter().any(|n| names_node(p, &n.name)) {
                        return Err(schema_error(
                            root,
                            &at("nodes"),
                            format!("`{p}` names no node of the lab"),
                            Hint::closest(p, nodes.iter().map(|n| n.name.as_str())),
                        ));
                    }
                }
                nodes
                    .iter()
                    .filter(|n| patterns.iter().any(|p| names_node(p, &n.name)))
                    .map(|n| n.name.clone())
                    .collect()
            }
        };
        if c.timeout == Some(0) {
            return Err(schema_error(
                root,
                &at("timeout"),
                "must be at least 1 second".to_owned(),
                Hint::default(),
            ));
        }
        checks.push(Check {
            name,
            command: c.command,
            nodes: wanted,
            exit: c.exit.unwrap_or(0),
            contains: c.contains,
            regex: c.regex,
            timeout_secs: c.timeout.unwrap_or(10),
        });
    }
    Ok(checks)
}
