//! Carrying create's decisions out on a hypervisor in one exchange (see [`hypervisor`]),
//! with a rollback of what this run made for a node when one of its steps after the clone
//! fails.

use std::collections::HashMap;
use std::path::PathBuf;

use lab_exec::{Cmd, ExecError, Executor};
use lab_generate::NodeBuild;
use lab_hv::cmd::{self, Ownership};
use lab_hv::plan::{Extras, NodePlan, Trees};
use lab_hv::run::failed;
use lab_hv::{Events, HostState, NetworkReport, NodeReport, Outcome, Snapshot};
use lab_model::{Hypervisor, LabNode, Storage};

use crate::network::{self, NetworkWork};
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

/// The steps of a made node that come before its clone exists: a failure there leaves
/// nothing of this run's to take back.
const BEFORE_CLONE: [&str; 5] = [
    "stop",
    "release DHCP reservation",
    "remove old clone",
    "undefine old domain",
    "clone",
];

/// Creates `nodes` on `hv` in one exchange: a plan with the management network's steps
/// first (`network`), then every node's: a made node's old parts removed, its clone, the
/// clone mounted and checked, its tree copied in from the trees the plan carries, modes, the
/// mark of a complete clone, the DHCP reservation, define; a node that is only started, its
/// reservation and definition; and in the plan's last wave every node's start. A node that
/// fails after its clone is rolled back; the others go on. Reports the network, then the
/// nodes in the order of `nodes`.
pub(crate) async fn hypervisor(
    exec: &Executor,
    req: &CreateRequest<'_>,
    hv: &Hypervisor,
    state: &HostState,
    nodes: &[(&LabNode, Prepared<'_>)],
    network: Option<NetworkWork>,
    events: Events<'_>,
) -> (Option<NetworkReport>, Vec<NodeReport>) {
    let lab = &req.lab.name;
    let mut reports: HashMap<String, NodeReport> = HashMap::new();
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
                Decision::Start { define },
            )),
            Ok(d @ Decision::Make { remove_clone, .. }) => todo.push((
                Todo {
                    node,
                    build,
                    snap: pre.snap,
                    reservation: pre.reservation,
                    make: Some(remove_clone),
                },
                d,
            )),
            Ok(Decision::Skip(_) | Decision::Unchanged(_)) => {
                unreachable!("decision() reports them")
            }
        }
    }
    let trees_dir = lab_hv::lock::trees_dir(hv, lab);
    let mut plans = Vec::new();
    // `--no-start`: a complete clone with nothing to do but its mount and start is left as
    // it is.
    todo.retain(|(t, d)| {
        let idle = !req.start
            && t.make.is_none()
            && start_steps(hv, t, matches!(d, Decision::Start { define: true }), lab)
                .iter()
                .all(|(name, _)| ["mount", "unmount", "start"].contains(name));
        if idle {
            let reason = "its complete clone is there; not started: --no-start".to_owned();
            reports.insert(
                t.node.name.clone(),
                NodeReport::new(t.node, Outcome::Unchanged { reason }),
            );
        }
        !idle
    });
    // The trees of the nodes made anew, in the plan's own exchange: one archive per node,
    // read off the runtime's thread (the locks' heartbeats run there); a tree that cannot be
    // read fails its node only, before its clone.
    let made: Vec<(String, PathBuf)> = todo
        .iter()
        .filter(|(t, _)| t.make.is_some())
        .map(|(t, _)| (t.node.name.clone(), t.build.tree.clone()))
        .collect();
    let read = tokio::task::spawn_blocking(move || {
        made.into_iter()
            .map(|(name, tree)| {
                let archive = lab_hv::plan::tree_archive(&name, &tree);
                (name, tree, archive)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut archive = Vec::new();
    for (name, tree, result) in read {
        match result {
            Ok(bytes) => archive.extend(bytes),
            Err(e) => {
                let error = ExecError::Local {
                    host: hv.name.clone(),
                    command: format!("reading the tree {}", tree.display()),
                    message: e.to_string(),
                };
                if let Some((t, _)) = todo.iter().find(|(t, _)| t.node.name == name) {
                    reports.insert(name.clone(), failed(t.node, "copy", &error, false));
                }
                todo.retain(|(t, _)| t.node.name != name);
            }
        }
    }
    let trees = (!archive.is_empty()).then_some(Trees { archive });
    for (t, d) in &todo {
        let mut steps = match d {
            Decision::Make {
                stop,
                remove_clone,
                undefine,
            } => make_steps(
                req,
                hv,
                t,
                state,
                [*stop, *remove_clone, *undefine],
                &trees_dir,
            ),
            Decision::Start { define } => start_steps(hv, t, *define, lab),
            _ => unreachable!("only made and started nodes have steps"),
        };
        // Every node's start in the plan's last wave, all at once under wires.lock.
        let last_wave = if req.start {
            steps.len() - 1
        } else {
            steps.pop();
            steps.len()
        };
        plans.push(NodePlan {
            node: t.node,
            steps,
            last_wave,
            batch: 0,
        });
    }
    // The starts in batches, where the hypervisor (or --start-batch) or `start_after` asks.
    let batch_count = crate::order::assign(&mut plans, req.start_batch.or(hv.start_batch));
    let (network_name, network_action, first, network_report) = match network {
        Some(NetworkWork::Steps {
            name,
            steps,
            action,
        }) => (Some(name), action, steps, None),
        Some(NetworkWork::Report(r)) => (None, "", Vec::new(), Some(r)),
        None => (None, "", Vec::new(), None),
    };
    let extras = Extras {
        first,
        last: Vec::new(),
        trees,
        start_interval: req.start_interval.unwrap_or(hv.start_interval),
    };
    // Under --dry-run, each node's commands as they run, in order.
    let mut shown: HashMap<String, Vec<String>> = HashMap::new();
    show(exec, &mut shown, &plans);
    let network_shown: Vec<String> = if exec.is_live() {
        Vec::new()
    } else {
        extras
            .first
            .iter()
            .map(|(_, c)| lab_hv::plan::shown_step(c))
            .collect()
    };
    let ran = lab_hv::plan::run_with(exec, hv, lab, &plans, &extras, events).await;
    let (first, results) = (ran.first, ran.nodes);
    let network_report = match (network_name, first) {
        (Some(name), Some(result)) => {
            let mut r = network::ended(hv, &name, network_action, &result);
            r.commands = network_shown;
            if let Err((step, e)) = result {
                // No node's step ran.
                let error = format!("network {step}: {e}");
                for (t, _) in &todo {
                    let report = NodeReport::new(
                        t.node,
                        Outcome::Failed {
                            step: "network".to_owned(),
                            error: error.clone(),
                            rolled_back: false,
                        },
                    );
                    reports.insert(t.node.name.clone(), report);
                }
                return (Some(r), in_order(nodes, reports, events, shown));
            }
            Some(r)
        }
        _ => network_report,
    };

    for ((t, _), (plan, result)) in todo.iter().zip(plans.iter().zip(results)) {
        let name = &t.node.name;
        let batched = |report| crate::order::noted(report, plan.batch, batch_count, &hv.name);
        let report = match (t.make, result) {
            (None, Ok(_)) => NodeReport {
                note: Some(if req.start {
                    "only started: its complete clone was there".to_owned()
                } else {
                    "only defined: its complete clone was there; --no-start".to_owned()
                }),
                ..NodeReport::new(t.node, Outcome::Done)
            },
            (None, Err((step, e))) => failed(t.node, step, &e, false),
            (Some(replaced), Ok(_)) => {
                let mut report = NodeReport::new(t.node, Outcome::Done);
                report.snapshot = Some(t.snap.full.clone());
                report.note = match (replaced, req.start) {
                    (true, true) => Some("made anew: its old clone was replaced".to_owned()),
                    (true, false) => {
                        Some("made anew: its old clone was replaced; --no-start".to_owned())
                    }
                    (false, true) => None,
                    (false, false) => Some("not started: --no-start".to_owned()),
                };
                report
            }
            // Before the clone: nothing of this run's to take back.
            (Some(_), Err((step, e))) if BEFORE_CLONE.contains(&step) => {
                failed(t.node, step, &e, false)
            }
            (Some(_), Err((step, e))) => {
                use crate::rollback::Defined;
                // After the clone, a node with a definition may have one, whatever step
                // failed: the plan may have been cut in its define wave, with the node's
                // last word its ready mark. (An old domain went before the clone.)
                let defined = match (step, t.build.domain_xml.is_some()) {
                    ("start", true) => Defined::Yes,
                    (_, true) => Defined::Maybe,
                    (_, false) => Defined::No,
                };
                let claim = t.reservation.and_then(|r| r.claim.as_ref());
                let lab = &req.lab.name;
                let rollback =
                    crate::rollback::rollback(exec, hv, lab, plan.node, defined, claim).await;
                let mut report = failed(t.node, step, &e, rollback.is_ok());
                if let (Err(e), Outcome::Failed { error, .. }) = (rollback, &mut report.outcome) {
                    error.push_str(&format!("; rollback incomplete: {e}"));
                }
                report
            }
        };
        reports.insert(name.clone(), batched(report));
    }
    (network_report, in_order(nodes, reports, events, shown))
}

/// The reports of `nodes`, in their order, each with its dry-run lines and a `Done` event.
fn in_order(
    nodes: &[(&LabNode, Prepared<'_>)],
    mut reports: HashMap<String, NodeReport>,
    events: Events<'_>,
    mut shown: HashMap<String, Vec<String>>,
) -> Vec<NodeReport> {
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

/// A node made anew: its old parts removed (`[stop, remove_clone, undefine]`), its clone
/// made and mounted, the tree's directories checked, the tree copied in from `trees`, then
/// the rest ([`finish_steps`]).
fn make_steps(
    req: &CreateRequest<'_>,
    hv: &Hypervisor,
    t: &Todo<'_>,
    state: &HostState,
    [stop, remove_clone, undefine]: [bool; 3],
    trees: &str,
) -> Vec<(&'static str, Cmd)> {
    let node = t.node;
    let own = Ownership {
        lab: &req.lab.name,
        lab_id: req.lab.id,
        owner: &req.owners.me,
        overlay_digest: &t.build.digest,
        created: req.now,
        dhcp_claim: t.reservation.and_then(|r| r.claim.as_ref()),
    };
    let mut steps = Vec::new();
    if stop {
        steps.push(("stop", cmd::stop(node)));
    }
    // The old clone's claim goes with it: the reservation it claims goes first.
    if let Some(old) = t.reservation.and_then(|r| r.release.as_ref()) {
        steps.push(("release DHCP reservation", lab_hv::dhcp::release(old)));
    }
    if remove_clone {
        steps.push(("remove old clone", cmd::detach(hv, node)));
        // A replaced clone's lab snapshots go with it (`--force` says so).
        for c in cmd::destroy_lab_snapshots(node, state) {
            steps.push(("remove old clone", c));
        }
        steps.push(("remove old clone", cmd::destroy_dataset(node)));
    }
    if undefine {
        steps.push(("undefine old domain", cmd::undefine(node)));
    }
    steps.push(("clone", cmd::clone(hv, node, t.snap, &own, &state.zfs)));
    // The clone carries its claim on the reservation from here on.
    if let Some(claim) = t.reservation.and_then(|r| r.add.as_ref()) {
        steps.push(("reserve DHCP", lab_hv::dhcp::reserve(claim)));
    }
    if hv.storage == Storage::Zvol {
        steps.push(("mount", cmd::attach(hv, node)));
    }
    let modes = t.build.modes.iter().map(lab_generate::PathMode::args);
    steps.push(("copy", cmd::fill(hv, node, trees, &t.build.dirs, modes)));
    steps.extend(finish_steps(hv, t, &req.lab.name));
    steps
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
        reconciled: req.reconciled.contains(&node.name),
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

/// A made node's steps after its tree is in: a zvol's partition let go, the clone marked
/// complete (the plan's ready wave: one `zfs set` for all its nodes), its domain defined (the
/// define wave) and started. (A dataset stays mounted for the domain's life: its 9p share is
/// that directory.)
fn finish_steps(hv: &Hypervisor, t: &Todo<'_>, lab: &str) -> Vec<(&'static str, Cmd)> {
    let node = t.node;
    let mut steps = Vec::new();
    if hv.storage == Storage::Zvol {
        steps.push(("unmount", cmd::detach(hv, node)));
        steps.push(("unmount", cmd::remove_staging(node)));
    }
    steps.push(("copy", cmd::mark_ready(node)));
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
    match hv.storage {
        Storage::Dataset => steps.push(("mount", cmd::attach(hv, node))),
        // Let go of a zvol a cut run left mounted on the hypervisor: the guest mounts it.
        Storage::Zvol => steps.push(("unmount", cmd::detach(hv, node))),
    }
    if let (Some(xml), true) = (&t.build.domain_xml, define) {
        steps.push(("define", cmd::define_domain(xml, lab, node)));
    }
    steps.push(("start", cmd::start_under_wires_lock(node)));
    steps
}
