//! `lab status`: one probe per hypervisor, every node explained, orphans listed.

use std::collections::HashMap;

use lab_exec::Executor;
use lab_model::{Lab, LabNode};

use crate::own::{not_ours, prop};
use crate::resolve_snapshot;

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub hypervisor: String,
    /// `running`, `shut off` ..., or `absent`; `unknown` when the hypervisor did not answer.
    pub domain: String,
    pub clone: bool,
    /// `ready`, or `filling` for a clone an interrupted run left (the next create redoes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why the dataset at the node's name is not this lab's, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
    pub origin: Option<String>,
    pub owner: Option<String>,
    pub age_seconds: Option<u64>,
    /// The overlay digest on the clone differs from the current build's.
    pub overlay_drift: Option<bool>,
    /// A newer proto snapshot than the clone's origin matches the lab's snapshot setting.
    pub newer_snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A clone of this lab that the lab file no longer names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Orphan {
    pub hypervisor: String,
    pub dataset: String,
    pub node: String,
    pub origin: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub lab: String,
    pub nodes: Vec<NodeStatus>,
    pub orphans: Vec<Orphan>,
}

/// `digests`: per node, the overlay digest of the current build, when there is one.
pub async fn status(
    exec: &Executor,
    lab: &Lab,
    nodes: &[&LabNode],
    digests: &HashMap<String, String>,
    now: u64,
) -> StatusReport {
    let hypervisors = lab.hypervisors_of(nodes);
    let states = crate::run::probe_all(exec, &hypervisors).await;
    let mut out = Vec::new();
    for node in nodes {
        let hv = lab
            .hypervisor(&node.hypervisor)
            .expect("the model checked it");
        let mut s = NodeStatus {
            node: node.name.clone(),
            hypervisor: hv.name.clone(),
            domain: "unknown".to_owned(),
            clone: false,
            state: None,
            foreign: None,
            origin: None,
            owner: None,
            age_seconds: None,
            overlay_drift: None,
            newer_snapshot: None,
            error: None,
        };
        match &states[hv.name.as_str()] {
            Err(e) => s.error = Some(e.to_string()),
            Ok(state) => {
                s.domain = state
                    .domains
                    .get(&node.name)
                    .map_or("absent".to_owned(), |d| d.state.clone());
                if let Some(ds) = state.datasets.get(&node.dataset) {
                    s.clone = true;
                    s.state = Some(ds.prop(prop::STATE).unwrap_or("ready").to_owned());
                    s.foreign = not_ours(ds, &lab.name, node, hv);
                    s.origin = ds.origin.clone();
                    s.owner = ds.prop(prop::OWNER).map(str::to_owned);
                    s.age_seconds = ds
                        .prop(prop::CREATED)
                        .and_then(|c| c.parse::<u64>().ok())
                        .map(|c| now.saturating_sub(c));
                    s.overlay_drift = digests
                        .get(&node.name)
                        .map(|d| ds.prop(prop::OVERLAY) != Some(d.as_str()));
                    let newest = resolve_snapshot(&hv.snapshot, &state.proto.snapshots);
                    s.newer_snapshot = newest
                        .filter(|n| Some(n.full.as_str()) != ds.origin.as_deref())
                        .map(|n| n.full.clone());
                }
            }
        }
        out.push(s);
    }
    let mut orphans = Vec::new();
    for hv in &hypervisors {
        let Ok(state) = &states[hv.name.as_str()] else {
            continue;
        };
        for ds in state.datasets.values() {
            if ds.prop(prop::LAB) != Some(lab.name.as_str()) {
                continue;
            }
            let named = lab
                .nodes
                .iter()
                .any(|n| n.hypervisor == hv.name && n.dataset == ds.name);
            if !named {
                orphans.push(Orphan {
                    hypervisor: hv.name.clone(),
                    dataset: ds.name.clone(),
                    node: ds.prop(prop::NODE).unwrap_or("?").to_owned(),
                    origin: ds.origin.clone(),
                });
            }
        }
    }
    StatusReport {
        lab: lab.name.clone(),
        nodes: out,
        orphans,
    }
}
