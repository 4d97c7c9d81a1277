//! `lab create`: per node, a [`Decision`] from its hypervisor's state ([`decide`]), then the
//! steps that carry it out ([`apply`]): clone the proto snapshot, fill the clone with the node's
//! generated tree, define and start the domain, and roll the node back if a step fails after
//! the clone.
//!
//! Architecture invariant: a dataset `lab` did not make is never touched, `--force` or not;
//! `--force` is read in one place, [`decide`].

mod apply;
mod decide;

use std::collections::HashMap;

use lab_exec::Executor;
use lab_generate::NodeBuild;
use lab_hv::{Events, NodeReport, Snapshot, resolve_snapshot};
use lab_model::{Lab, LabNode};

pub use decide::{Ask, Decision, decide};

/// What to create, after `generate` has written the build.
pub struct CreateRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// Per node name: its generated tree, overlay digest and rendered domain XML.
    pub builds: HashMap<String, NodeBuild>,
    /// Replace this lab's running domains and complete clones.
    pub force: bool,
    /// `user@controller`, recorded on every clone.
    pub owner: String,
    /// Seconds since the epoch, recorded on every clone.
    pub now: u64,
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
}

/// Creates the nodes. Every reachable hypervisor must have a snapshot that matches its setting
/// before anything changes anywhere; an unreachable one fails its own nodes only.
pub async fn create(
    exec: &Executor,
    req: &CreateRequest<'_>,
    events: Events<'_>,
) -> Result<Vec<NodeReport>, PlanError> {
    let states = lab_hv::run::probe_nodes(exec, req.lab, &req.nodes).await;
    let mut picked: HashMap<&str, Snapshot> = HashMap::new();
    for hv in req.lab.hypervisors_of(&req.nodes) {
        let Some(Ok(state)) = states.get(hv.name.as_str()) else {
            continue;
        };
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
    let picked = &picked;
    Ok(lab_hv::run::each_node(
        exec,
        req.lab,
        &req.nodes,
        &states,
        events,
        |hv, node, state| async move {
            let snap = &picked[hv.name.as_str()];
            apply::node(exec, req, hv, node, &state, snap, events).await
        },
    )
    .await)
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
