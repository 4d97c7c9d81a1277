//! Carrying a create decision out on the hypervisor, step by step, with a rollback of what
//! this run made when a step after the clone fails.

use lab_exec::{ExecError, Executor};
use lab_generate::NodeBuild;
use lab_hv::cmd::{self, Ownership};
use lab_hv::run::{failed, run_patiently, step_events};
use lab_hv::{Events, HostState, NodeReport, Outcome, Snapshot};
use lab_model::{Hypervisor, LabNode, Storage};

use crate::reserve::Reservation;
use crate::{Ask, CreateRequest, Decision, decide};

/// What the plan decided for a node before anything changed.
pub(crate) struct Prepared<'a> {
    pub snap: &'a Snapshot,
    pub reservation: Option<&'a Reservation>,
}

pub(crate) async fn node(
    exec: &Executor,
    req: &CreateRequest<'_>,
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
    pre: &Prepared<'_>,
    events: Events<'_>,
) -> NodeReport {
    let snap = pre.snap;
    let reservation = pre.reservation;
    let step = step_events(events, hv, node);
    let lab = &req.lab.name;
    let build = &req.builds[&node.name];
    let facts = match lab_hv::own::inspect(hv, lab, node, state) {
        Ok(f) => f,
        Err(e) => return failed(node, "inspect", &e, false),
    };
    let ask = Ask {
        force: req.force,
        has_domain_xml: build.domain_xml.is_some(),
        digest: &build.digest,
    };
    let mut decision = decide(&facts, &node.domain, &node.dataset, ask);
    // Another owner's clone of a lab of this name: nothing of it is replaced, stopped,
    // redefined or started (`--owner` says it is this user's to change).
    if matches!(facts.clone, lab_hv::own::CloneFacts::Ours { .. })
        && matches!(decision, Decision::Make { .. } | Decision::Start { .. })
        && let Some(why) = req.owners.refusal(state, node)
    {
        decision = Decision::Skip(format!("{why}; left as it is"));
    }
    let (stop, remove_clone, undefine) = match decision {
        Decision::Skip(reason) => return NodeReport::new(node, Outcome::Skipped { reason }),
        Decision::Unchanged(reason) => return NodeReport::new(node, Outcome::Unchanged { reason }),
        Decision::Start { define } => {
            let how = Start {
                define,
                reservation,
            };
            return start(exec, hv, node, build, &how, lab, &step).await;
        }
        Decision::Make {
            stop,
            remove_clone,
            undefine,
        } => (stop, remove_clone, undefine),
    };
    if stop {
        step("stop");
        if let Err(e) = exec.run(&hv.name, &cmd::stop(node)).await {
            return failed(node, "stop", &e, false);
        }
    }
    // The old clone's claim goes with it: the reservation it claims goes first.
    if let Some(old) = reservation.and_then(|r| r.release.as_ref()) {
        step("release DHCP reservation");
        if let Err(e) = exec.run(&hv.name, &lab_hv::dhcp::release(old)).await {
            return failed(node, "release DHCP reservation", &e, false);
        }
    }
    if remove_clone {
        step("remove old clone");
        for c in [cmd::detach(hv, node), cmd::destroy_dataset(node)] {
            if let Err(e) = run_patiently(exec, &hv.name, &c).await {
                return failed(node, "remove old clone", &e, false);
            }
        }
    }
    if undefine {
        step("undefine old domain");
        if let Err(e) = exec.run(&hv.name, &cmd::undefine(node)).await {
            return failed(node, "undefine old domain", &e, false);
        }
    }

    // Clone. From here on a failure rolls the node back.
    step("clone");
    let own = Ownership {
        lab,
        lab_id: req.lab.id,
        owner: &req.owners.me,
        overlay_digest: &build.digest,
        created: req.now,
        dhcp_claim: reservation.and_then(|r| r.claim.as_ref()),
    };
    if let Err(e) = exec
        .run(&hv.name, &cmd::clone(hv, node, snap, &own, &state.zfs))
        .await
    {
        return failed(node, "clone", &e, false);
    }
    let mut defined = false;
    let result: Result<(), (&'static str, ExecError)> = async {
        step("mount");
        exec.run(&hv.name, &cmd::attach(hv, node))
            .await
            .map_err(|e| ("mount", e))?;
        step("copy");
        exec.run(&hv.name, &cmd::refuse_symlinked_dirs(node, &build.dirs))
            .await
            .map_err(|e| ("copy", e))?;
        exec.rsync(&hv.name, &build.tree, cmd::staging_dir(node))
            .await
            .map_err(|e| ("copy", e))?;
        if !build.modes.is_empty() {
            let modes = build.modes.iter().map(lab_generate::PathMode::args);
            exec.run(&hv.name, &cmd::set_modes(node, modes))
                .await
                .map_err(|e| ("copy", e))?;
        }
        // A dataset stays mounted for the domain's life: its 9p share is that directory. A
        // zvol's partition is unmounted: the domain opens the block device.
        if hv.storage == Storage::Zvol {
            step("unmount");
            exec.run(&hv.name, &cmd::detach(hv, node))
                .await
                .map_err(|e| ("unmount", e))?;
            exec.run(&hv.name, &cmd::remove_staging(node))
                .await
                .map_err(|e| ("unmount", e))?;
        }
        exec.run(&hv.name, &cmd::mark_ready(node))
            .await
            .map_err(|e| ("copy", e))?;
        if let Some(claim) = reservation.and_then(|r| r.add.as_ref()) {
            step("reserve DHCP");
            exec.run(&hv.name, &lab_hv::dhcp::reserve(claim))
                .await
                .map_err(|e| ("reserve DHCP", e))?;
        }
        if let Some(xml) = &build.domain_xml {
            step("define");
            exec.run(&hv.name, &cmd::define_domain(xml, lab, node))
                .await
                .map_err(|e| ("define", e))?;
            defined = true;
        }
        step("start");
        exec.run(&hv.name, &cmd::start(hv, node))
            .await
            .map_err(|e| ("start", e))?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut report = NodeReport::new(node, Outcome::Done);
            report.snapshot = Some(snap.full.clone());
            if remove_clone {
                report.note = Some("made anew: its old clone was replaced".to_owned());
            }
            report
        }
        Err((failed_step, err)) => {
            step("roll back");
            let claim = reservation.and_then(|r| r.claim.as_ref());
            let rollback = rollback(exec, hv, node, defined, claim).await;
            let mut report = failed(node, failed_step, &err, rollback.is_ok());
            if let (Err(e), Outcome::Failed { error, .. }) = (rollback, &mut report.outcome) {
                error.push_str(&format!("; rollback incomplete: {e}"));
            }
            report
        }
    }
}

/// How a complete clone left by an earlier run is started.
struct Start<'a> {
    /// Define its domain first.
    define: bool,
    reservation: Option<&'a Reservation>,
}

/// Starts this lab's complete clone left by an earlier run: its DHCP reservation brought to
/// the plan, its domain defined first when `how` says so.
async fn start(
    exec: &Executor,
    hv: &Hypervisor,
    node: &LabNode,
    build: &NodeBuild,
    how: &Start<'_>,
    lab: &str,
    step: &impl Fn(&'static str),
) -> NodeReport {
    let mut plan = Vec::new();
    if let Some(r) = how.reservation {
        if let Some(old) = &r.release {
            plan.push(("release DHCP reservation", lab_hv::dhcp::release(old)));
        }
        // Claimed before it is added: a reservation lab made is always one a clone claims.
        if r.claim != r.claimed {
            plan.push((
                "claim DHCP reservation",
                cmd::claim_dhcp(node, r.claim.as_ref()),
            ));
        }
        if let Some(new) = &r.add {
            plan.push(("reserve DHCP", lab_hv::dhcp::reserve(new)));
        }
    }
    if hv.storage == Storage::Dataset {
        plan.push(("mount", cmd::attach(hv, node)));
    }
    if let (Some(xml), true) = (&build.domain_xml, how.define) {
        plan.push(("define", cmd::define_domain(xml, lab, node)));
    }
    plan.push(("start", cmd::start(hv, node)));
    for (name, c) in plan {
        step(name);
        if let Err(e) = exec.run(&hv.name, &c).await {
            return failed(node, name, &e, false);
        }
    }
    NodeReport {
        note: Some("only started: its complete clone was there".to_owned()),
        ..NodeReport::new(node, Outcome::Done)
    }
}

/// Removes what this run made for a node: its domain definition (if this run defined it),
/// the DHCP reservation its clone claims (the clone is its proof), the mount, the clone and
/// the staging directory. Returns the first thing that would not go.
async fn rollback(
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
