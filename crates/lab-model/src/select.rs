//! Node selection: the `--host` and `--node` filters every verb takes, checked against the lab.

use crate::error::{Hint, ModelError};
use crate::model::{Hypervisor, Lab, LabNode};

impl Lab {
    /// The nodes on `hosts` (all hypervisors when empty) named in `nodes` (all when empty), in
    /// lab order. A name may be a glob (`*`, `?`: `vpp0-*`). A name the lab does not have, or a
    /// glob that matches no node, is an error with a suggestion.
    pub fn select(&self, hosts: &[String], nodes: &[String]) -> Result<Vec<&LabNode>, ModelError> {
        for h in hosts {
            if self.hypervisor(h).is_none() {
                return Err(ModelError::UnknownSelection {
                    what: "hypervisor",
                    name: h.clone(),
                    hint: Hint::closest(h, self.hypervisors.iter().map(|h| h.name.as_str())),
                });
            }
        }
        let named = |pattern: &String, node: &LabNode| names_node(pattern, &node.name);
        for n in nodes {
            if is_glob(n) && !self.nodes.iter().any(|node| named(n, node)) {
                return Err(ModelError::EmptySelection {
                    selection: format!("named like `{n}`"),
                });
            }
            if !self.nodes.iter().any(|node| named(n, node)) {
                return Err(ModelError::UnknownSelection {
                    what: "node",
                    name: n.clone(),
                    hint: Hint::closest(n, self.nodes.iter().map(|n| n.name.as_str())),
                });
            }
        }
        let selected: Vec<&LabNode> = self
            .nodes
            .iter()
            .filter(|n| hosts.is_empty() || hosts.contains(&n.hypervisor))
            .filter(|n| nodes.is_empty() || nodes.iter().any(|p| named(p, n)))
            .collect();
        if selected.is_empty() && !(hosts.is_empty() && nodes.is_empty()) {
            let mut said = Vec::new();
            if !hosts.is_empty() {
                said.push(format!("on {}", hosts.join(" or ")));
            }
            if !nodes.is_empty() {
                said.push(format!("named {}", nodes.join(" or ")));
            }
            return Err(ModelError::EmptySelection {
                selection: said.join(" and "),
            });
        }
        Ok(selected)
    }

    /// The hypervisors that carry `nodes`, in lab order.
    pub fn hypervisors_of(&self, nodes: &[&LabNode]) -> Vec<&Hypervisor> {
        self.hypervisors
            .iter()
            .filter(|h| nodes.iter().any(|n| n.hypervisor == h.name))
            .collect()
    }

    /// The hypervisor a node of this lab runs on.
    pub fn hypervisor_of(&self, node: &LabNode) -> &Hypervisor {
        self.hypervisor(&node.hypervisor)
            .expect("the model checked every node's hypervisor")
    }
}

/// Whether `pattern` (a node name, or a glob with `*` and `?`) names the node `name`.
pub(crate) fn names_node(pattern: &str, name: &str) -> bool {
    if is_glob(pattern) {
        crate::names::glob_match(pattern, name)
    } else {
        pattern == name
    }
}

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?'])
}
