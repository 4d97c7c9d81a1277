//! `lab create`: per node, a [`Decision`] from its hypervisor's state ([`decide`]), then the
//! steps that carry it out ([`apply`]): clone the proto snapshot, fill the clone with the node's
//! generated tree, define and start the domain, and roll the node back if a step fails after
//! the clone.
//!
//! Architecture invariant: a dataset `lab` did not make is never touched, `--force` or not;
//! `--force` is read in one place, [`decide`].

mod apply;
mod decide;
mod network;
mod order;
mod reserve;
mod rollback;

use std::collections::HashMap;

use lab_exec::Executor;
use lab_generate::{NetworkBuild, NodeBuild};
use lab_hv::own::prop;
use lab_hv::{Events, NetworkReport, NodeReport, Outcome, Snapshot, resolve_snapshot};
use lab_model::{Lab, LabNode};

pub use decide::{Ask, Decision, decide};
pub use network::{NetworkDecision, decide_network};
pub use order::start_batches;
pub use reserve::Reservation;

/// What to create, after `generate` has written the build.
pub struct CreateRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// Per node name: its generated tree, overlay digest and rendered domain XML.
    pub builds: HashMap<String, NodeBuild>,
    /// Per hypervisor name: the management network lab defines there, as rendered.
    pub networks: HashMap<String, NetworkBuild>,
    /// Replace this lab's running domains and complete clones.
    pub force: bool,
    /// Start the nodes; `false` (`--no-start`): clone, fill and define them only.
    pub start: bool,
    /// `user@controller` (`owners.me`), recorded on every clone, and the other owners whose
    /// clones of this lab may be changed (`--owner`).
    pub owners: lab_hv::own::Owners,
    /// Seconds since the epoch, recorded on every clone.
    pub now: u64,
    /// `--start-batch`: every hypervisor starts its nodes this many at a time, whatever its
    /// `start_batch` says.
    pub start_batch: Option<u32>,
    /// The nodes whose NICs reconcile changed (or, in a dry run, would change) and whose new
    /// build it pushed: their running domains are as the build says.
    pub reconciled: std::collections::HashSet<String>,
    /// `--start-interval`: seconds between two batches, whatever a hypervisor's
    /// `start_interval` says.
    pub start_interval: Option<u64>,
}

/// Why a create cannot start: found before any change on any hypervisor.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{host}: no snapshot of {proto} matches `{spec}` (found: {found}); nothing was changed"
    )]
    NoSnapshot {
        host: String,
        proto: String,
        spec: String,
        found: String,
    },
    #[error("{host}: {message}; nothing was changed")]
    Network { host: String, message: String },
    #[error("{host}: {message}; nothing was changed")]
    Reservation { host: String, message: String },
    #[error(
        "{host}: lab `{other}` (clone {dataset}) has lab id {id} there too: two labs with one id \
         get the same MACs and wire ports; give this lab another `lab.id`; nothing was changed"
    )]
    LabId {
        host: String,
        other: String,
        dataset: String,
        id: u8,
    },
}

/// What `create` did: each hypervisor's management network, then each node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreateReport {
    pub networks: Vec<NetworkReport>,
    pub nodes: Vec<NodeReport>,
}

/// Creates the nodes. Every reachable hypervisor must have a snapshot that matches its setting
/// before anything changes anywhere; an unreachable one fails its own nodes only.
pub async fn create(
    exec: &Executor,
    req: &CreateRequest<'_>,
    events: Events<'_>,
) -> Result<CreateReport, PlanError> {
    let states = lab_hv::run::probe_nodes(exec, req.lab, &req.nodes).await;
    create_from(exec, req, states, events).await
}

/// Whether `create` would refuse (see [`PlanError`]), from one reading of each hypervisor,
/// which it hands back: what a run that changes something before it creates (reconcile)
/// looks at first, so that a refusal still changes nothing.
pub async fn check<'a>(
    exec: &Executor,
    req: &CreateRequest<'a>,
) -> Result<lab_hv::run::States<'a>, PlanError> {
    let states = lab_hv::run::probe_nodes(exec, req.lab, &req.nodes).await;
    plan(req, &states)?;
    Ok(states)
}

/// What `create` decided before any change: each hypervisor's snapshot, management network
/// and the nodes' DHCP reservations.
struct Plan<'r> {
    picked: HashMap<&'r str, Snapshot>,
    decisions: Vec<(
        &'r lab_model::Hypervisor,
        NetworkDecision,
        Option<&'r NetworkBuild>,
        Option<String>,
    )>,
    reservations: HashMap<&'r str, reserve::Reservation>,
}

/// [`create`] from hypervisor states already read (by [`check`], say).
pub async fn create_from(
    exec: &Executor,
    req: &CreateRequest<'_>,
    states: lab_hv::run::States<'_>,
    events: Events<'_>,
) -> Result<CreateReport, PlanError> {
    let Plan {
        picked,
        decisions,
        reservations,
    } = plan(req, &states)?;
    apply_all(exec, req, &states, picked, decisions, reservations, events).await
}

fn plan<'r>(
    req: &'r CreateRequest<'_>,
    states: &lab_hv::run::States<'_>,
) -> Result<Plan<'r>, PlanError> {
    let mut picked: HashMap<&str, Snapshot> = HashMap::new();
    for hv in req.lab.hypervisors_of(&req.nodes) {
        let Some(Ok(state)) = states.get(hv.name.as_str()) else {
            continue;
        };
        // Another lab with this lab's id on the hypervisor (review 3, N10).
        let id = req.lab.id.to_string();
        if let Some(ds) = state.datasets.values().find(|ds| {
            ds.prop(prop::LAB_ID) == Some(id.as_str())
                && ds.prop(prop::LAB).is_some_and(|l| l != req.lab.name)
        }) {
            return Err(PlanError::LabId {
                host: hv.name.clone(),
                other: ds.prop(prop::LAB).unwrap_or_default().to_owned(),
                dataset: ds.name.clone(),
                id: req.lab.id,
            });
        }
        let snapshots = &state.proto.snapshots;
        match resolve_snapshot(&hv.snapshot, snapshots) {
            Some(snap) => {
                picked.insert(&hv.name, snap.clone());
            }
            None => {
                return Err(PlanError::NoSnapshot {
                    host: hv.name.clone(),
                    proto: hv.proto.clone(),
                    spec: hv.snapshot.text().to_owned(),
                    found: names(snapshots),
                });
            }
        }
    }
    // Every management network is decided before anything changes: a refusal changes nothing.
    let mut decisions = Vec::new();
    for hv in req.lab.hypervisors_of(&req.nodes) {
        let Some(Ok(state)) = states.get(hv.name.as_str()) else {
            continue;
        };
        let here: Vec<&LabNode> = req
            .lab
            .nodes
            .iter()
            .filter(|n| n.hypervisor == hv.name)
            .collect();
        let build = req.networks.get(&hv.name);
        match network::decide_for(&req.lab.name, hv, &here, state, build) {
            NetworkDecision::Refuse(message) => {
                return Err(PlanError::Network {
                    host: hv.name.clone(),
                    message,
                });
            }
            decision => {
                let uuid = hv
                    .mgmt
                    .network
                    .as_ref()
                    .and_then(|n| state.networks.get(n))
                    .and_then(|n| n.uuid.clone());
                decisions.push((hv, decision, build, uuid));
            }
        }
    }
    // ... and every node's DHCP reservation in an operator's network.
    let mut reservations: HashMap<&str, reserve::Reservation> = HashMap::new();
    for node in &req.nodes {
        let Some(Ok(state)) = states.get(node.hypervisor.as_str()) else {
            continue;
        };
        let Some(hv) = req.lab.hypervisor(&node.hypervisor) else {
            continue;
        };
        match reserve::decide(&req.lab.name, hv, node, state) {
            Ok(Some(r)) => {
                reservations.insert(&node.name, r);
            }
            Ok(None) => {}
            Err(message) => {
                return Err(PlanError::Reservation {
                    host: hv.name.clone(),
                    message,
                });
            }
        }
    }
    Ok(Plan {
        picked,
        decisions,
        reservations,
    })
}

async fn apply_all(
    exec: &Executor,
    req: &CreateRequest<'_>,
    states: &lab_hv::run::States<'_>,
    picked: HashMap<&str, Snapshot>,
    decisions: Vec<(
        &lab_model::Hypervisor,
        NetworkDecision,
        Option<&NetworkBuild>,
        Option<String>,
    )>,
    reservations: HashMap<&str, reserve::Reservation>,
    events: Events<'_>,
) -> Result<CreateReport, PlanError> {
    // Each hypervisor's network and nodes in one plan (see `apply::hypervisor`), all
    // hypervisors at once.
    let mut network_work: HashMap<&str, network::NetworkWork> = HashMap::new();
    for (hv, decision, build, uuid) in &decisions {
        if let Some(work) = network::plan(&req.lab.name, hv, decision, *build, uuid.as_deref()) {
            network_work.insert(&hv.name, work);
        }
    }
    let network_work = std::sync::Mutex::new(network_work);
    // Each hypervisor's network and nodes in one exchange (see `apply::hypervisor`), all hypervisors
    // at once.
    let (picked, reservations, network_work) = (&picked, &reservations, &network_work);
    let jobs = req
        .lab
        .hypervisors_of(&req.nodes)
        .into_iter()
        .map(|hv| async move {
            let here: Vec<&LabNode> = req
                .nodes
                .iter()
                .copied()
                .filter(|n| n.hypervisor == hv.name)
                .collect();
            let network = network_work
                .lock()
                .expect("network work")
                .remove(hv.name.as_str());
            let fail_all = |step: &str, error: String| -> Vec<NodeReport> {
                here.iter()
                    .map(|n| {
                        let report = NodeReport::new(
                            n,
                            Outcome::Failed {
                                step: step.to_owned(),
                                error: error.clone(),
                                rolled_back: false,
                            },
                        );
                        lab_hv::run::report_done(events, &report);
                        report
                    })
                    .collect()
            };
            let state = match &states[hv.name.as_str()] {
                Err(e) => return (None, fail_all("connect", e.to_string())),
                Ok(state) => state,
            };
            let prepared: Vec<(&LabNode, apply::Prepared<'_>)> = here
                .iter()
                .map(|n| {
                    let pre = apply::Prepared {
                        snap: &picked[hv.name.as_str()],
                        reservation: reservations.get(n.name.as_str()),
                    };
                    (*n, pre)
                })
                .collect();
            apply::hypervisor(exec, req, hv, state, &prepared, network, events).await
        });
    let (networks, per_hypervisor): (Vec<_>, Vec<_>) =
        lab_hv::run::at_once_when_live(exec, jobs.collect())
            .await
            .into_iter()
            .unzip();
    let networks: Vec<NetworkReport> = networks.into_iter().flatten().collect();
    let nodes = lab_hv::run::in_node_order(&req.nodes, per_hypervisor);
    Ok(CreateReport { networks, nodes })
}

fn names(snaps: &[Snapshot]) -> String {
    if snaps.is_empty() {
        "none".to_owned()
    } else {
        snaps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
