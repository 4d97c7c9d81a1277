//! `lab destroy`: per node, a [`Plan`] from its hypervisor's state ([`decide`]): stop the
//! domain, undefine it if `lab` defined it, destroy the clone if this lab made it; then the
//! plan's steps, in order.
//!
//! Architecture invariant: nothing destroys a dataset it cannot prove it created (its
//! `lab:lab` and `lab:node` name this lab and node and its origin is a snapshot of the proto);
//! a DHCP reservation in an operator's network goes only when such a clone claims it;
//! `zfs destroy` is never recursive (a clone's snapshots that `lab snapshot` took go one by
//! one before it, each checked on the hypervisor); a domain is undefined only when its marker says so.

use std::collections::{HashMap, HashSet};

use lab_exec::{Cmd, ExecError, Executor};
use lab_hv::own::{CloneFacts, NetworkFacts, NodeFacts, Owners, network_facts, prop};
use lab_hv::plan::Work;
use lab_hv::state::MarkerRead;
use lab_hv::{Events, HostState, NetworkReport, NodeReport, Outcome, cmd};
use lab_model::{Hypervisor, Lab, LabNode};

pub struct DestroyRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// Whose clones may go (see [`Owners`]).
    pub owners: Owners,
}

/// What `destroy` does with one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A dataset at the node's name that this lab did not make: left alone.
    Skip(String),
    /// Each flag one step; the (empty) staging directory always goes last.
    Remove {
        stop: bool,
        undefine: bool,
        destroy_clone: bool,
    },
}

impl Plan {
    /// Whether the plan removes anything but a staging leftover.
    pub fn removes_anything(&self) -> bool {
        matches!(
            self,
            Plan::Remove { undefine: true, .. }
                | Plan::Remove {
                    destroy_clone: true,
                    ..
                }
        )
    }
}

/// Decides what `destroy` does with a node. A running domain is stopped when lab defined it
/// for this node, or when it carries no marker and runs on this lab's clone (pre-provisioned);
/// a domain another lab defined is never stopped or undefined.
pub fn decide(facts: &NodeFacts) -> Plan {
    let clone = match &facts.clone {
        CloneFacts::Foreign(why) => return Plan::Skip(format!("{why}; not destroyed")),
        CloneFacts::Ours { .. } => true,
        CloneFacts::Absent => false,
    };
    let ours = facts.domain.ours();
    let unmarked = facts.domain.exists() && !ours && facts.domain.other().is_none();
    Plan::Remove {
        stop: facts.domain.running() && (ours || (clone && unmarked)),
        undefine: ours,
        destroy_clone: clone,
    }
}

/// What `destroy` did: each node, then each hypervisor's management network.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DestroyReport {
    pub nodes: Vec<NodeReport>,
    pub networks: Vec<NetworkReport>,
}

pub async fn destroy(
    exec: &Executor,
    req: &DestroyRequest<'_>,
    events: Events<'_>,
) -> DestroyReport {
    let lab = &req.lab.name;
    let states = lab_hv::run::probe_nodes(exec, req.lab, &req.nodes).await;
    // Each hypervisor's network is decided before anything runs: reported as it is, or
    // removed by its plan after its nodes, when every node there is gone.
    let mut networks = Vec::new();
    // Per hypervisor: its network's name and the steps that remove it.
    let mut removals: HashMap<&str, (&str, Steps)> = HashMap::new();
    for hv in req.lab.hypervisors_of(&req.nodes) {
        let (true, Some(name), Some(Ok(state))) = (
            hv.mgmt.owned,
            hv.mgmt.network.as_deref(),
            states.get(hv.name.as_str()),
        ) else {
            continue;
        };
        match network_plan(req, hv, name, state) {
            NetworkPlan::Report(r) => networks.push(r),
            NetworkPlan::Absent => {}
            NetworkPlan::Remove(steps) => {
                removals.insert(&hv.name, (name, steps));
            }
        }
    }
    // Each hypervisor's nodes, then its network, in one exchange; all hypervisors at once.
    let (nodes, lasts) = lab_hv::plan::each_hypervisor_then(
        exec,
        req.lab,
        &req.nodes,
        &states,
        events,
        |hv, node, state| node_plan(lab, hv, node, state, &req.owners),
        |node, removes_anything, result| match result {
            Err((step, e)) => lab_hv::run::failed(node, step, &e, false),
            Ok(_) if removes_anything => NodeReport::new(node, Outcome::Done),
            // Only the staging leftover went: there was nothing else of it.
            Ok(_) => NodeReport::new(
                node,
                Outcome::Unchanged {
                    reason: format!("no clone {}", node.dataset),
                },
            ),
        },
        |hv| {
            removals
                .get(hv.name.as_str())
                .map(|(_, steps)| steps.clone())
                .unwrap_or_default()
        },
    )
    .await;
    for (hv, result, commands) in lasts {
        let name = removals[hv.name.as_str()].0;
        let report = |outcome, action: &str| NetworkReport {
            hypervisor: hv.name.clone(),
            network: name.to_owned(),
            outcome,
            action: Some(action.to_owned()),
            commands: commands.clone(),
        };
        networks.push(match result {
            Some(Ok(())) => report(Outcome::Done, "removed"),
            Some(Err((
                _,
                ExecError::Failed {
                    status: cmd::NETWORK_IN_USE,
                    stderr,
                    ..
                },
            ))) => report(
                Outcome::Skipped {
                    reason: stderr.trim().to_owned(),
                },
                "kept",
            ),
            Some(Err((_, e))) => report(
                Outcome::Failed {
                    step: "remove network".to_owned(),
                    error: e.to_string(),
                    rolled_back: false,
                },
                "removed",
            ),
            // A node of the lab failed here: it still has its network.
            None => {
                let remaining: Vec<&str> = nodes
                    .iter()
                    .filter(|r| {
                        r.hypervisor == hv.name && matches!(r.outcome, Outcome::Failed { .. })
                    })
                    .map(|r| r.node.as_str())
                    .collect();
                let reason = if remaining.is_empty() {
                    "the hypervisor's plan ended before it came to the network".to_owned()
                } else {
                    format!("nodes of the lab remain here: {}", remaining.join(", "))
                };
                report(Outcome::Skipped { reason }, "kept")
            }
        });
    }
    // In lab order of the hypervisors.
    let order = req.lab.hypervisors_of(&req.nodes);
    networks.sort_by_key(|r| order.iter().position(|h| h.name == r.hypervisor));
    DestroyReport { nodes, networks }
}

type Steps = Vec<(&'static str, Cmd)>;

/// What `destroy` does with a hypervisor's management network.
enum NetworkPlan {
    /// Nothing to say: there is none.
    Absent,
    /// Left as it is, and why.
    Report(NetworkReport),
    /// Removed after the nodes, by these steps.
    Remove(Steps),
}

/// Decides, from `hv`'s state before any change, what happens to its management network
/// `name`: left when lab did not make it for this lab or when nodes of the lab that this run
/// does not remove (not selected, skipped, or no longer in the lab file) are there;
/// otherwise removed after the nodes.
fn network_plan(
    req: &DestroyRequest<'_>,
    hv: &Hypervisor,
    name: &str,
    state: &HostState,
) -> NetworkPlan {
    let lab = &req.lab.name;
    let report = |outcome, action: &str| NetworkReport {
        hypervisor: hv.name.clone(),
        network: name.to_owned(),
        outcome,
        action: Some(action.to_owned()),
        commands: Vec::new(),
    };
    let active = match network_facts(state, name, lab) {
        NetworkFacts::Ours { active, .. } => active,
        NetworkFacts::Absent => return NetworkPlan::Absent,
        // A network of that name lab did not make for this lab: never touched, and said.
        NetworkFacts::Foreign(why) => {
            return NetworkPlan::Report(report(
                Outcome::Unchanged {
                    reason: format!("{why}: left as it is"),
                },
                "left",
            ));
        }
    };
    // Nodes of the lab that this run leaves there: not selected, or skipped (not ours to
    // remove, or not inspectable), with a clone or a domain of their name.
    let removed: HashSet<&str> = req
        .nodes
        .iter()
        .filter(|n| n.hypervisor == hv.name)
        .filter(|n| matches!(node_plan(lab, hv, n, state, &req.owners), Work::Steps(..)))
        .map(|n| n.name.as_str())
        .collect();
    let remaining: Vec<String> = req
        .lab
        .nodes
        .iter()
        .filter(|n| n.hypervisor == hv.name && !removed.contains(n.name.as_str()))
        .filter(|n| {
            state.datasets.contains_key(&n.dataset) || state.domains.contains_key(&n.domain)
        })
        .map(|n| n.name.clone())
        .collect();
    // ... and what the lab file no longer names: this lab's clones and domains of nodes
    // removed from the file (`status` lists them as orphans) still use the network.
    let named = |node: &str| {
        req.lab
            .nodes
            .iter()
            .any(|n| n.hypervisor == hv.name && n.name == node)
    };
    let orphans = state
        .datasets
        .values()
        .filter(|ds| ds.prop(prop::LAB) == Some(lab.as_str()))
        .filter_map(|ds| ds.prop(prop::NODE))
        .chain(state.domains.values().filter_map(|d| match &d.marker {
            MarkerRead::Some(m) if m.lab == *lab => Some(m.node.as_str()),
            _ => None,
        }))
        .filter(|node| !named(node))
        .map(|node| format!("{node} (not in the lab file)"))
        .collect::<std::collections::BTreeSet<String>>();
    let remaining: Vec<String> = remaining.into_iter().chain(orphans).collect();
    if !remaining.is_empty() {
        return NetworkPlan::Report(report(
            Outcome::Skipped {
                reason: format!("nodes of the lab remain here: {}", remaining.join(", ")),
            },
            "kept",
        ));
    }
    let mut steps = Vec::new();
    if active {
        steps.push(("remove network", cmd::stop_network(hv)));
    }
    steps.push(("remove network", cmd::undefine_network(name)));
    NetworkPlan::Remove(steps)
}

/// A node's steps (and whether they remove anything but a staging leftover), or its report
/// when there is nothing to run (skipped, or not inspectable).
fn node_plan(
    lab: &str,
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
    owners: &Owners,
) -> Work<bool> {
    let facts = match lab_hv::own::inspect(hv, lab, node, state) {
        Ok(f) => f,
        Err(e) => return Work::Ends(Box::new(lab_hv::run::failed(node, "inspect", &e, false))),
    };
    let mut plan = decide(&facts);
    if matches!(facts.clone, CloneFacts::Ours { .. })
        && let Some(why) = owners.refusal(state, node)
    {
        plan = Plan::Skip(format!("{why}; not destroyed"));
    }
    match &plan {
        Plan::Skip(reason) => Work::Ends(Box::new(NodeReport::new(
            node,
            Outcome::Skipped {
                reason: reason.clone(),
            },
        ))),
        Plan::Remove {
            stop,
            undefine,
            destroy_clone,
        } => {
            let mut steps = Vec::new();
            if *stop {
                steps.push(("stop", cmd::stop(node)));
            }
            if *undefine {
                steps.push(("undefine", cmd::undefine(node)));
            }
            if *destroy_clone {
                // The clone is the claim on the reservation lab added for the node: the
                // reservation goes first, and only when the network has exactly that one.
                if let Some(claim) = state
                    .datasets
                    .get(&node.dataset)
                    .and_then(|ds| ds.prop(prop::DHCP_HOST))
                    .and_then(lab_hv::dhcp::Claim::parse)
                {
                    steps.push(("release DHCP reservation", lab_hv::dhcp::release(&claim)));
                }
                steps.push(("unmount", cmd::detach(hv, node)));
                // Its lab snapshots first, each looked at on the hypervisor (never one lab
                // did not take); a snapshot someone else took keeps the clone and them.
                for c in cmd::destroy_lab_snapshots(node, state) {
                    steps.push(("destroy snapshot", c));
                }
                steps.push(("destroy clone", cmd::destroy_dataset(node)));
            }
            // Staging leftovers go in every case.
            steps.push(("remove staging", cmd::remove_staging(node)));
            Work::Steps(steps, plan.removes_anything())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_hv::own::{DomainFacts, Marker};

    #[test]
    fn every_case_of_a_node() {
        let dom = |running, ours| DomainFacts::Present {
            running,
            marker: if ours { Marker::Ours } else { Marker::None },
        };
        let other_lab = DomainFacts::Present {
            running: true,
            marker: Marker::Other("lab `b`, node `n`".into()),
        };
        let ours = CloneFacts::Ours {
            filling: false,
            digest: None,
        };
        let remove = |stop, undefine, destroy_clone| Plan::Remove {
            stop,
            undefine,
            destroy_clone,
        };
        let table = [
            (
                CloneFacts::Absent,
                DomainFacts::Absent,
                remove(false, false, false),
            ),
            (
                ours.clone(),
                DomainFacts::Absent,
                remove(false, false, true),
            ),
            (ours.clone(), dom(true, true), remove(true, true, true)),
            (
                CloneFacts::Ours {
                    filling: true,
                    digest: None,
                },
                dom(false, true),
                remove(false, true, true),
            ),
            // Another lab's domain is never stopped or undefined, even beside our clone.
            (ours.clone(), other_lab.clone(), remove(false, false, true)),
            (CloneFacts::Absent, other_lab, remove(false, false, false)),
            // Our clone under a domain lab did not define: stopped, never undefined.
            (ours.clone(), dom(true, false), remove(true, false, true)),
            // A leftover domain of ours without its clone goes too.
            (
                CloneFacts::Absent,
                dom(true, true),
                remove(true, true, false),
            ),
            // Someone else's domain without our clone is left running.
            (
                CloneFacts::Absent,
                dom(true, false),
                remove(false, false, false),
            ),
            (
                CloneFacts::Foreign("dataset tank/n exists and was not made by lab".into()),
                dom(true, true),
                Plan::Skip("dataset tank/n exists and was not made by lab; not destroyed".into()),
            ),
        ];
        for (i, (clone, domain, expected)) in table.into_iter().enumerate() {
            let facts = NodeFacts {
                clone,
                domain,
                wires: lab_hv::own::WireFacts::Free,
            };
            assert_eq!(decide(&facts), expected, "row {i}: {facts:?}");
        }
        assert!(!remove(true, false, false).removes_anything());
    }
}
