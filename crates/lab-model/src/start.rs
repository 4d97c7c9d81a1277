//! `start_after`: the order a hypervisor's plan starts its nodes in, checked when the lab is
//! loaded.

use crate::error::{Hint, ModelError};
use crate::model::LabNode;
use crate::resolve::{path_of, schema_error};
use crate::tree::Tree;

/// Each node's `start_after` names other nodes of its own hypervisor (a plan per hypervisor
/// orders its starts), without a cycle.
pub(crate) fn check_start_after(root: &Tree, nodes: &[LabNode]) -> Result<(), ModelError> {
    for node in nodes {
        for (i, after) in node.start_after.iter().enumerate() {
            let at = ["nodes", &node.name, "start_after", &i.to_string()].map(String::from);
            let bad = |message: String, hint: Hint| schema_error(root, &at, message, hint);
            match nodes.iter().find(|n| n.name == *after) {
                None => {
                    return Err(bad(
                        format!("start_after names `{after}`, which is no node of the lab"),
                        Hint::closest(after, nodes.iter().map(|n| n.name.as_str())),
                    ));
                }
                Some(n) if n.name == node.name => {
                    return Err(bad(
                        format!("node `{after}` cannot start after itself"),
                        Hint::default(),
                    ));
                }
                Some(n) if n.hypervisor != node.hypervisor => {
                    return Err(bad(
                        format!(
                            "start_after names `{after}`, which is on {} and not on {}: starts \
                             are ordered per hypervisor",
                            n.hypervisor, node.hypervisor
                        ),
                        Hint::default(),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    // A cycle: a node that reaches itself by following start_after.
    for node in nodes {
        let mut seen = vec![node.name.as_str()];
        let mut todo: Vec<&str> = node.start_after.iter().map(String::as_str).collect();
        while let Some(next) = todo.pop() {
            if next == node.name {
                let at = path_of(&["nodes", &node.name, "start_after"]);
                return Err(schema_error(
                    root,
                    &at,
                    format!("start_after makes a cycle through node `{}`", node.name),
                    Hint::default(),
                ));
            }
            if seen.contains(&next) {
                continue;
            }
            seen.push(next);
            if let Some(n) = nodes.iter().find(|n| n.name == next) {
                todo.extend(n.start_after.iter().map(String::as_str));
            }
        }
    }
    Ok(())
}

/// A hypervisor's `start_batch` (at least 1) and `start_interval` (at most an hour).
pub(crate) fn check_hypervisor(
    root: &Tree,
    name: &str,
    start_batch: Option<u32>,
    start_interval: u64,
) -> Result<(), ModelError> {
    let (field, message) = if start_batch == Some(0) {
        ("start_batch", "start_batch must be at least 1".to_owned())
    } else if start_interval > 3600 {
        (
            "start_interval",
            format!(
                "start_interval is seconds between batches, at most 3600, not {start_interval}"
            ),
        )
    } else {
        return Ok(());
    };
    Err(schema_error(
        root,
        &path_of(&["hypervisors", name, field]),
        message,
        Hint::default(),
    ))
}
