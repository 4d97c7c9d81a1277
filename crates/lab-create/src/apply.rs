//! Carrying create's decisions out on a hypervisor in three exchanges (see [`hypervisor`]),
//! with a rollback of what this run made for a node when one of its steps after the clone
//! fails.

use std::collections::HashMap;

use lab_exec::{Cmd, ExecError, Executor};
use lab_generate::NodeBuild;
use lab_hv::cmd::{self, Ownership};
use lab_hv::plan::NodePlan;
use lab_hv::run::{failed, run_patiently};
use lab_hv::{Events, HostState, NodeReport, Outcome, Snapshot};
use lab_model::{Hypervisor, LabNode, Storage};

use crate::reserve::Reservation;
use crate::{Ask, CreateRequest, Decision, decide};

/// What the plan decided for a node before anything changed.
pub(crate) struct Prepared<'a> {
    pub snap: &'a Snapshot,
    pub reservation: Option<&'a Reservation>,
}

/// A node that has work on its hypervisor, after its decision.
struct Todo<'a> {
    node: &'a LabNode,
    build: &'a NodeBuild,
    snap: &'a Snapshot,
    reservation: Option<&'a Reservation>,
    /// `Some(old clone replaced)` when the node is made anew; `None`: its complete clone is
    /// only started.
    make: Option<bool>,
}

/// The steps of a node's first exchange whose failure rolls the node back: this run made its
/// clone by then. (A failure in the copy or the last exchange always does.)
const AFTER_CLONE: [&str; 2] = ["mount", "copy"];

/// Creates `nodes` on `hv` in three exchanges: one plan with each made node's steps up to its
/// clone mounted and checked, the nodes' trees (rsync, each its own channel, all at once), and
/// one plan with the rest (modes, the mark of a complete clone, the DHCP reservation, define,
/// start) and every node that is only started. A node that fails after its clone is rolled
/// back; the others go on. Reports in the order of `nodes`.
pub(crate) async fn hypervisor(
    exec: &Executor,
    req: &CreateRequest<'_>,
    hv: &Hypervisor,
    state: &HostState,
    nodes: &[(&LabNode, Prepared<'_>)],
    events: Events<'_>,
) -> Vec<NodeReport> {
    let lab = &req.lab.name;
    let mut reports: HashMap<String, NodeReport> = HashMap::new();
    let mut first = Vec::new();
    let mut todo = Vec::new();
    for (node, pre) in nodes {
        let build = &req.builds[&node.name];
        match decision(req, hv, node, state, build) {
            Err(report) => {
                reports.insert(node.name.clone(), *report);
            }
            Ok(Decision::Start { define }) => todo.push((
                Todo {
                    node,
                    build,
                    snap: pre.snap,
                    reservation: pre.reservation,
                    make: None,
                },
                define,
            )),
            Ok(Decision::Make {
                stop,
                remove_clone,
                undefine,
            }) => {
                let own = Ownership {
                    lab,
                    lab_id: req.lab.id,
                    owner: &req.owners.me,
                    overlay_digest: &build.digest,
                    created: req.now,
                    dhcp_claim: pre.reservation.and_then(|r| r.claim.as_ref()),
                };
                let mut steps = Vec::new();
                if stop {
                    steps.push(("stop", cmd::stop(node)));
                }
                // The old clone's claim goes with it: the reservation it claims goes first.
                if let Some(old) = pre.reservation.and_then(|r| r.release.as_ref()) {
                    steps.push(("release DHCP reservation", lab_hv::dhcp::release(old)));
                }
                if remove_clone {
                    steps.push(("remove old clone", cmd::detach(hv, node)));
                    steps.push(("remove old clone", cmd::destroy_dataset(node)));
                }
                if undefine {
                    steps.push(("undefine old domain", cmd::undefine(node)));
                }
                steps.push(("clone", cmd::clone(hv, node, pre.snap, &own, &state.zfs)));
                steps.push(("mount", cmd::attach(hv, node)));
                steps.push(("copy", cmd::refuse_symlinked_dirs(node, &build.dirs)));
                first.push(NodePlan::new(node, steps));
                todo.push((
                    Todo {
                        node,
                        build,
                        snap: pre.snap,
                        reservation: pre.reservation,
                        make: Some(remove_clone),
                    },
                    false,
                ));
            }
            Ok(Decision::Skip(_) | Decision::Unchanged(_)) => {
                unreachable!("decision() reports them")
            }
        }
    }
    // Under --dry-run, each node's commands as they run, in order.
    let mut shown: HashMap<String, Vec<String>> = HashMap::new();
    show(exec, &mut shown, &first);

    // 1. Up to the clone, mounted and checked.
    // Per node that failed: the step, the error, and whether this run made its clone.
    let mut failed_at: HashMap<String, (&'static str, ExecError, bool)> = HashMap::new();
    for (plan, result) in first
        .iter()
        .zip(lab_hv::plan::run(exec, hv, &first, events).await)
    {
        if let Err((step, e)) = result {
            let cloned = AFTER_CLONE.contains(&step);
            failed_at.insert(plan.node.name.clone(), (step, e, cloned));
        }
    }
    // 2. The trees, every node's at once.
    let copies: Vec<&Todo<'_>> = todo
        .iter()
        .map(|(t, _)| t)
        .filter(|t| t.make.is_some() && !failed_at.contains_key(&t.node.name))
        .collect();
    let copied: Vec<Result<(), ExecError>> = if exec.is_live() {
        let jobs = copies
            .iter()
            .map(|t| exec.rsync(&hv.name, &t.build.tree, cmd::staging_dir(t.node)));
        lab_hv::run::join_all(jobs.collect()).await
    } else {
        let mut out = Vec::new();
        for t in &copies {
            let before = exec.recorded().len();
            out.push(
                exec.rsync(&hv.name, &t.build.tree, cmd::staging_dir(t.node))
                    .await,
            );
            shown
                .entry(t.node.name.clone())
                .or_default()
                .extend(exec.recorded()[before..].iter().map(|r| r.line.clone()));
        }
        out
    };
    for (t, result) in copies.iter().zip(copied) {
        if let Err(e) = result {
            failed_at.insert(t.node.name.clone(), ("copy", e, true));
        }
    }
    // 3. The rest, and every node that is only started.
    let mut last = Vec::new();
    for (t, define) in &todo {
        if failed_at.contains_key(&t.node.name) {
            continue;
        }
        let steps = match t.make {
            Some(_) => finish_steps(hv, t, lab),
            None => start_steps(hv, t, *define, lab),
        };
        // Every node's start in the plan's last wave, all at once under wires.lock.
        let last_wave = steps.len() - 1;
        last.push(NodePlan {
            node: t.node,
            steps,
            last_wave,
        });
    }
    show(exec, &mut shown, &last);
    let mut ended: HashMap<String, Result<(), (&'static str, ExecError)>> = HashMap::new();
    for (plan, result) in last
        .iter()
        .zip(lab_hv::plan::run(exec, hv, &last, events).await)
    {
        ended.insert(plan.node.name.clone(), result.map(drop));
    }

    for (t, _) in &todo {
        let name = &t.node.name;
        let outcome = match failed_at.remove(name) {
            Some((step, e, cloned)) => Err((step, e, cloned)),
            None => match ended.remove(name) {
                Some(Err((step, e))) => Err((step, e, true)),
                _ => Ok(()),
            },
        };
        let report = match (t.make, outcome) {
            (None, Ok(())) => NodeReport {
                note: Some("only started: its complete clone was there".to_owned()),
                ..NodeReport::new(t.node, Outcome::Done)
            },
            (None, Err((step, e, _))) => failed(t.node, step, &e, false),
            (Some(replaced), Ok(())) => {
                let mut report = NodeReport::new(t.node, Outcome::Done);
                report.snapshot = Some(t.snap.full.clone());
                if replaced {
                    report.note = Some("made anew: its old clone was replaced".to_owned());
                }
                report
            }
            // Before the clone: nothing of this run's to take back.
            (Some(_), Err((step, e, false))) => failed(t.node, step, &e, false),
            (Some(_), Err((step, e, true))) => {
                let defined = step == "start" && t.build.domain_xml.is_some();
                let claim = t.reservation.and_then(|r| r.claim.as_ref());
                let rollback = rollback(exec, hv, t.node, defined, claim).await;
                let mut report = failed(t.node, step, &e, rollback.is_ok());
                if let (Err(e), Outcome::Failed { error, .. }) = (rollback, &mut report.outcome) {
                    error.push_str(&format!("; rollback incomplete: {e}"));
                }
                report
            }
        };
        reports.insert(name.clone(), report);
    }
    nodes
        .iter()
        .filter_map(|(n, _)| {
            let mut report = reports.remove(&n.name)?;
            if let Some(lines) = shown.remove(&n.name) {
                report.commands = lines;
            }
            lab_hv::run::report_done(events, &report);
            Some(report)
        })
        .collect()
}

/// Adds each plan's steps, as they run, to its node's commands (without a live executor).
fn show(exec: &Executor, shown: &mut HashMap<String, Vec<String>>, plans: &[NodePlan<'_>]) {
    if exec.is_live() {
        return;
    }
    for plan in plans {
        shown
            .entry(plan.node.name.clone())
            .or_default()
            .extend(plan.shown());
    }
}

/// The node's decision, or its report when there is nothing to run (skipped, unchanged, not
/// inspectable).
fn decision(
    req: &CreateRequest<'_>,
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
    build: &NodeBuild,
) -> Result<Decision, Box<NodeReport>> {
    let facts = lab_hv::own::inspect(hv, &req.lab.name, node, state)
        .map_err(|e| Box::new(failed(node, "inspect", &e, false)))?;
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
    match decision {
        Decision::Skip(reason) => Err(Box::new(NodeReport::new(node, Outcome::Skipped { reason }))),
        Decision::Unchanged(reason) => Err(Box::new(NodeReport::new(
            node,
            Outcome::Unchanged { reason },
        ))),
        d => Ok(d),
    }
}

/// A made node's steps after its tree is in: the overlay's modes, a zvol's partition let go,
/// the clone marked complete, its DHCP reservation, its domain defined and started. (A
/// dataset stays mounted for the domain's life: its 9p share is that directory.)
fn finish_steps(hv: &Hypervisor, t: &Todo<'_>, lab: &str) -> Vec<(&'static str, Cmd)> {
    let node = t.node;
    let mut steps = Vec::new();
    if !t.build.modes.is_empty() {
        let modes = t.build.modes.iter().map(lab_generate::PathMode::args);
        steps.push(("copy", cmd::set_modes(node, modes)));
    }
    if hv.storage == Storage::Zvol {
        steps.push(("unmount", cmd::detach(hv, node)));
        steps.push(("unmount", cmd::remove_staging(node)));
    }
    steps.push(("copy", cmd::mark_ready(node)));
    if let Some(claim) = t.reservation.and_then(|r| r.add.as_ref()) {
        steps.push(("reserve DHCP", lab_hv::dhcp::reserve(claim)));
    }
    if let Some(xml) = &t.build.domain_xml {
        steps.push(("define", cmd::define_domain(xml, lab, node)));
    }
    steps.push(("start", cmd::start_under_wires_lock(node)));
    steps
}

/// A complete clone's steps when it is only started: its DHCP reservation brought to the
/// plan (claimed before it is added: a reservation lab made is always one a clone claims), a
/// dataset mounted, the domain defined when it is missing, started.
fn start_steps(hv: &Hypervisor, t: &Todo<'_>, define: bool, lab: &str) -> Vec<(&'static str, Cmd)> {
    let node = t.node;
    let mut steps = Vec::new();
    if let Some(r) = t.reservation {
        if let Some(old) = &r.release {
            steps.push(("release DHCP reservation", lab_hv::dhcp::release(old)));
        }
        if r.claim != r.claimed {
            steps.push((
                "claim DHCP reservation",
                cmd::claim_dhcp(node, r.claim.as_ref()),
            ));
        }
        if let Some(new) = &r.add {
            steps.push(("reserve DHCP", lab_hv::dhcp::reserve(new)));
        }
    }
    if hv.storage == Storage::Dataset {
        steps.push(("mount", cmd::attach(hv, node)));
    }
    if let (Some(xml), true) = (&t.build.domain_xml, define) {
        steps.push(("define", cmd::define_domain(xml, lab, node)));
    }
    steps.push(("start", cmd::start_under_wires_lock(node)));
    steps
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
