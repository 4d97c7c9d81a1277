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
    /// How far the node is: `absent`, `defined`, `paused`, `running`, or `ready` (its readiness check
    /// passed; only the caller that checks it sets this one); `None` when unknown.
    pub phase: Option<String>,
    pub clone: bool,
    /// `ready`, or `filling` for a clone an interrupted run left (the next create redoes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why the dataset at the node's name is not this lab's, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
    /// Why the domain at the node's name is not this lab's, when one exists and is not: the
    /// day-two verbs do not reach it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign_domain: Option<String>,
    pub origin: Option<String>,
    pub owner: Option<String>,
    pub age_seconds: Option<u64>,
    /// The overlay digest on the clone differs from the current build's.
    pub overlay_drift: Option<bool>,
    /// A newer proto snapshot than the clone's origin matches the lab's snapshot setting.
    pub newer_snapshot: Option<String>,
    /// How the domain's NICs differ from the built definition's (MACs missing or extra,
    /// a MAC twice), when they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nic_drift: Option<String>,
    /// The node's link interfaces whose link `lab link down` took down.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links_down: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A hypervisor's management network, as status sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NetworkStatus {
    pub hypervisor: String,
    pub network: String,
    /// `active`, `inactive` or `absent`.
    pub state: &'static str,
    /// Whether lab made it for this lab (false for an operator's network).
    pub ours: bool,
    /// lab's own network was defined from another definition than the current build's.
    pub definition_drift: Option<bool>,
}

/// What the current build says a node and a network should be, for drift.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Per node: the overlay digest.
    pub digests: HashMap<String, String>,
    /// Per node: the MACs of the built domain definition's NICs.
    pub macs: HashMap<String, Vec<String>>,
    /// Per hypervisor: the digest of the built management network definition.
    pub networks: HashMap<String, String>,
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
    pub networks: Vec<NetworkStatus>,
}

/// `expected`: what the current build says, where there is one.
pub async fn status(
    exec: &Executor,
    lab: &Lab,
    nodes: &[&LabNode],
    expected: &Expected,
    now: u64,
) -> StatusReport {
    let hypervisors = lab.hypervisors_of(nodes);
    // One round trip per hypervisor, readiness included: its nodes' domains and addresses.
    let looks = hypervisors.iter().map(|hv| {
        let ready: Vec<(&str, String)> = nodes
            .iter()
            .filter(|n| n.hypervisor == hv.name)
            .filter_map(|n| Some((n.domain.as_str(), n.mgmt_address()?)))
            .collect();
        async move {
            let pairs: Vec<(&str, &str)> = ready.iter().map(|(d, a)| (*d, a.as_str())).collect();
            crate::state::probe_looking(exec, hv, &pairs).await
        }
    });
    let looked = crate::run::join_all(looks.collect()).await;
    let states: std::collections::HashMap<&str, _> = hypervisors
        .iter()
        .map(|h| h.name.as_str())
        .zip(looked)
        .collect();
    let mut out = Vec::new();
    for node in nodes {
        let hv = lab
            .hypervisor(&node.hypervisor)
            .expect("the model checked it");
        let mut s = NodeStatus {
            node: node.name.clone(),
            hypervisor: hv.name.clone(),
            domain: "unknown".to_owned(),
            phase: None,
            clone: false,
            state: None,
            foreign: None,
            foreign_domain: None,
            origin: None,
            owner: None,
            age_seconds: None,
            overlay_drift: None,
            newer_snapshot: None,
            nic_drift: None,
            links_down: Vec::new(),
            error: None,
        };
        match &states[hv.name.as_str()] {
            Err(e) => s.error = Some(e.to_string()),
            Ok(state) => {
                if let (Some(want), true) = (
                    expected.macs.get(&node.name),
                    state.domains.contains_key(&node.domain),
                ) {
                    let have = state.nics.get(&node.domain).cloned().unwrap_or_default();
                    s.nic_drift = nic_drift(want, &have);
                }
                if let Some(down) = state.links_down.get(&node.domain) {
                    s.links_down = node
                        .links()
                        .filter(|i| down.contains(&i.mac.to_ascii_lowercase()))
                        .map(|i| i.name.clone())
                        .collect();
                }
                s.domain = state
                    .domains
                    .get(&node.domain)
                    .map_or("absent".to_owned(), |d| d.state.clone());
                if let Ok(facts) = crate::own::inspect(hv, &lab.name, node, state)
                    && facts.domain.exists()
                {
                    s.foreign_domain = facts.domain.reach_refusal(&node.domain, &node.name);
                }
                s.phase = Some(
                    match s.domain.as_str() {
                        "absent" => "absent",
                        "running" => "running",
                        "paused" => "paused",
                        _ => "defined",
                    }
                    .to_owned(),
                );
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
                    s.overlay_drift = expected
                        .digests
                        .get(&node.name)
                        .map(|d| ds.prop(prop::OVERLAY) != Some(d.as_str()));
                    let newest = resolve_snapshot(&hv.snapshot, &state.proto.snapshots);
                    s.newer_snapshot = newest
                        .filter(|n| Some(n.full.as_str()) != ds.origin.as_deref())
                        .map(|n| n.full.clone());
                }
                // Ready: running, this lab's (clone and domain), and its ssh server answered.
                if s.phase.as_deref() == Some("running")
                    && s.foreign.is_none()
                    && s.foreign_domain.is_none()
                    && state.ready.contains(&node.domain)
                {
                    s.phase = Some("ready".to_owned());
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
    let mut networks = Vec::new();
    for hv in &hypervisors {
        let (Some(name), Ok(state)) = (&hv.mgmt.network, &states[hv.name.as_str()]) else {
            continue;
        };
        let net = state.networks.get(name);
        let ours = hv.mgmt.owned
            && net
                .and_then(|n| n.marker.as_ref())
                .is_some_and(|m| m.lab == lab.name);
        networks.push(NetworkStatus {
            hypervisor: hv.name.clone(),
            network: name.clone(),
            state: match net {
                None => "absent",
                Some(n) if n.active => "active",
                Some(_) => "inactive",
            },
            ours,
            definition_drift: match (ours, net.and_then(|n| n.marker.as_ref())) {
                (true, Some(m)) => expected.networks.get(&hv.name).map(|d| *d != m.sha256),
                _ => None,
            },
        });
    }
    StatusReport {
        lab: lab.name.clone(),
        nodes: out,
        orphans,
        networks,
    }
}

/// How the MACs of a domain's NICs differ from the built ones, or `None` when they do not.
fn nic_drift(want: &[String], have: &[String]) -> Option<String> {
    let (mut want, mut have) = (want.to_vec(), have.to_vec());
    want.sort();
    have.sort();
    if want == have {
        return None;
    }
    let missing: Vec<&str> = want
        .iter()
        .filter(|m| !have.contains(m))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = have
        .iter()
        .filter(|m| !want.contains(m))
        .map(String::as_str)
        .collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(" ")));
    }
    if !extra.is_empty() {
        parts.push(format!("unexpected {}", extra.join(" ")));
    }
    if parts.is_empty() {
        parts.push(format!(
            "{} NICs where the build has {}",
            have.len(),
            want.len()
        ));
    }
    Some(parts.join("; "))
}
