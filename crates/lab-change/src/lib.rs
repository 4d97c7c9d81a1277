//! Changing a running lab without recreating it. `reconcile`: `create` again brings the
//! nodes' links in line with the lab file (NICs plugged in and, with `--prune`, out). `push`: each node's new build brought into
//! it (into its clone, or through its running guest) and its reload hook run. `snapshot`: one ZFS snapshot of every
//! selected node's clone, taken per hypervisor in one command, listed, rolled back to
//! (`restore`) and deleted; owned and checked like every other lab object (a snapshot is the
//! lab's when its `lab:snapshot` is set on it and names it, and its clone is this lab's).

pub mod push;
pub mod reconcile;
pub mod save;
pub mod snapshot;

pub use push::{PushReport, PushRequest, Reload};
pub use reconcile::{Change, Gone, NicReport, ReconcileReport, ReconcileRequest};
pub use save::{SaveReport, SaveRequest};
pub use snapshot::{LabSnapshot, Listing, Refused, Restored, SnapshotAsk};
