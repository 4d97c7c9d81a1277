//! Hypervisors as `lab` sees them, shared by create, destroy, status and the proto verbs: the
//! one reader of a hypervisor's state ([`state`]), ownership ([`own`]), every remote command
//! ([`cmd`]), the per-lab locks ([`lock`]), running work node by node ([`run`]), and the
//! reports they all speak ([`report`]).
//!
//! Architecture invariant: this crate decides nothing per verb. It reads, judges ownership and
//! builds commands; `lab-create`, `lab-destroy` and `lab-proto` decide what to do with them.
//! It never prints.

mod clock;
pub mod cmd;
pub mod dhcp;
pub mod doctor;
pub mod link;
pub mod lock;
pub mod own;
pub mod plan;
pub mod reach;
mod report;
pub mod run;
pub mod state;
mod status;

use lab_exec::Target;
use lab_model::{Hypervisor, Lab, LabNode, SnapshotSpec};

pub use clock::{now, owner, utc};
pub use lock::{Holder, LockError, Locks, lock};
pub use report::{Event, Events, NetworkReport, NodeReport, Outcome, Summary, summary};
pub use state::{
    Dataset, Detail, Domain, HostState, Network, NetworkMarker, Pin, ProtoState, Snapshot, ZfsInfo,
};
pub use status::{Expected, NetworkStatus, NodeStatus, Orphan, StatusReport, status};

/// The executor targets for the hypervisors that carry `nodes`.
pub fn targets(lab: &Lab, nodes: &[&LabNode]) -> Vec<Target> {
    lab.hypervisors_of(nodes).into_iter().map(target).collect()
}

/// A hypervisor as the executor sees it.
pub fn target(hv: &Hypervisor) -> Target {
    Target {
        name: hv.name.clone(),
        ssh: hv.ssh.clone(),
        parallel: hv.parallel as usize,
    }
}

/// The snapshot a spec picks among a hypervisor's proto snapshots (oldest first).
pub fn resolve_snapshot<'a>(
    spec: &SnapshotSpec,
    snapshots: &'a [Snapshot],
) -> Option<&'a Snapshot> {
    snapshots.iter().rev().find(|s| spec.matches(&s.name))
}
