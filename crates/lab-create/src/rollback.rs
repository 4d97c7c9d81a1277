//! Taking back what a create made for a node whose step after the clone failed.

use lab_exec::{ExecError, Executor};
use lab_hv::cmd;
use lab_hv::run::run_patiently;
use lab_model::{Hypervisor, LabNode};

/// Whether the run defined the node's domain before the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Defined {
    /// The node has no definition to make.
    No,
    /// A step up to its definition failed, or the plan ended there: the definition may
    /// have been made all the same (a `virsh` killed by its deadline after libvirt took it,
    /// a plan cut in its define wave): undone when the domain's marker names this lab and
    /// node.
    Maybe,
    /// It was defined (a later step failed).
    Yes,
}

/// Removes what this run made for a node: its domain definition (see [`Defined`]), the DHCP
/// reservation its clone claims (the clone is its proof), the mount, the clone and the
/// staging directory. Returns the first thing that would not go.
pub(crate) async fn rollback(
    exec: &Executor,
    hv: &Hypervisor,
    lab: &str,
    node: &LabNode,
    defined: Defined,
    claim: Option<&lab_hv::dhcp::Claim>,
) -> Result<(), ExecError> {
    let mut first = Ok(());
    let mut note = |r: Result<_, ExecError>| {
        if let (Err(e), true) = (r, first.is_ok()) {
            first = Err(e);
        }
    };
    match defined {
        Defined::No => {}
        Defined::Maybe => {
            note(run_patiently(exec, &hv.name, &cmd::undefine_if_marked(node, lab)).await);
        }
        Defined::Yes => note(run_patiently(exec, &hv.name, &cmd::undefine(node)).await),
    }
    // A reservation that would not go keeps its clone: the clone is the claim on it.
    let kept = match claim {
        Some(claim) => {
            let r = run_patiently(exec, &hv.name, &lab_hv::dhcp::release(claim)).await;
            let failed = r.is_err();
            note(r);
            failed
        }
        None => false,
    };
    note(run_patiently(exec, &hv.name, &cmd::detach(hv, node)).await);
    if !kept {
        note(run_patiently(exec, &hv.name, &cmd::destroy_dataset(node)).await);
        note(run_patiently(exec, &hv.name, &cmd::remove_staging(node)).await);
    }
    first
}
