//! Taking back what a create made for a node whose step after the clone failed.

use lab_exec::{ExecError, Executor};
use lab_hv::cmd;
use lab_hv::run::run_patiently;
use lab_model::{Hypervisor, LabNode};

/// Removes what this run made for a node: its domain definition (if this run defined it),
/// the DHCP reservation its clone claims (the clone is its proof), the mount, the clone and
/// the staging directory. Returns the first thing that would not go.
pub(crate) async fn rollback(
    exec: &Executor,
    hv: &Hypervisor,
    node: &LabNode,
    defined: bool,
    claim: Option<&lab_hv::dhcp::Claim>,
) -> Result<(), ExecError> {
    let mut first = Ok(());
    let mut note = |r: Result<_, ExecError>| {
        if let (Err(e), true) = (r, first.is_ok()) {
            first = Err(e);
        }
    };
    if defined {
        note(run_patiently(exec, &hv.name, &cmd::undefine(node)).await);
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
