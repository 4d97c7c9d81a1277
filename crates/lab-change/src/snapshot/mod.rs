//! `lab snapshot`, `lab snapshots`, `lab restore` and `lab snapshot --delete`.
//!
//! A snapshot of a lab is `<clone>@<name>` on every selected node's clone, with `lab:snapshot`
//! set on it to `<name>`. Each hypervisor takes its share in one command: on OpenZFS in one
//! `zfs snapshot` (atomic: all its clones at one moment, or none); where zfs takes one
//! snapshot per call (zfs-fuse), one after the other, and those taken go again when one fails.
//! When one hypervisor's share fails, the others' are destroyed again: a lab snapshot covers
//! every node it was asked for, or none. Restore powers each node off, rolls its clone back
//! and starts it again if it ran; it destroys the node's later lab snapshots only when asked
//! (`drop_newer`), and never one that `lab` did not take (looked at on the hypervisor, at
//! that moment).

mod restore;

pub use restore::{Restored, restore};

use lab_exec::{ExecError, Executor};
use lab_hv::own::{CloneFacts, Owners, inspect, prop};
use lab_hv::plan::{Extras, NodePlan, Work, run_with, shown_step};
use lab_hv::run::{States, failed, report_done};
use lab_hv::state::CloneSnapshot;
use lab_hv::{Event, Events, HostState, NodeReport, Outcome, cmd};
use lab_model::{Hypervisor, Lab, LabNode};

/// What a snapshot verb works on.
pub struct SnapshotAsk<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// The snapshot's name (checked by `lab_model::names::lab_snapshot`).
    pub name: &'a str,
    /// Whose clones this run may snapshot, roll back or whose snapshots it may delete.
    pub owners: Owners,
}

/// Why a snapshot verb changed nothing: a line per node (or one for the lab).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Refused(pub Vec<String>);

/// The node's hypervisor state, when the node has a complete clone of this lab that this run
/// may change (made by one of `owners`) and no domain but this lab's runs on it; otherwise
/// why not, naming the node.
pub(crate) fn judged<'s>(
    lab: &Lab,
    node: &LabNode,
    states: &'s States<'_>,
    owners: &Owners,
) -> Result<&'s HostState, String> {
    let hv = lab.hypervisor_of(node);
    let state = states[hv.name.as_str()]
        .as_deref()
        .map_err(|e| format!("{}: {e}", node.name))?;
    let facts = inspect(hv, &lab.name, node, state).map_err(|e| format!("{}: {e}", node.name))?;
    match facts.clone {
        CloneFacts::Ours { filling: false, .. } => {}
        CloneFacts::Ours { filling: true, .. } => {
            return Err(format!(
                "{}: its clone {} is half-filled (an interrupted create: `lab create` again)",
                node.name, node.dataset
            ));
        }
        CloneFacts::Absent => {
            return Err(format!(
                "{}: it has no clone {} (lab create --node {})",
                node.name, node.dataset, node.name
            ));
        }
        CloneFacts::Foreign(why) => return Err(format!("{}: {why}", node.name)),
    }
    if let Some(why) = owners.refusal(state, node) {
        return Err(format!("{}: {why}", node.name));
    }
    if facts.domain.running() && !facts.domain.ours() {
        return Err(format!(
            "{}: domain {} runs on its clone and was not defined by lab for this node",
            node.name, node.domain
        ));
    }
    Ok(state)
}

fn find<'s>(state: &'s HostState, node: &LabNode, name: &str) -> Option<&'s CloneSnapshot> {
    state
        .snapshots_of(&node.dataset)
        .iter()
        .find(|s| s.name == name)
}

/// Takes snapshot `ask.name` of every node's clone (see the module's doc). `consistent`:
/// each hypervisor suspends its running nodes' domains while it takes its share. Refused,
/// with nothing changed, when a node cannot be snapshotted or has a snapshot of that name.
pub async fn take(
    exec: &Executor,
    ask: &SnapshotAsk<'_>,
    consistent: bool,
    events: Events<'_>,
) -> Result<Vec<NodeReport>, Refused> {
    let lab = ask.lab;
    let states = lab_hv::run::probe_nodes(exec, lab, &ask.nodes).await;
    let mut refusals = Vec::new();
    for node in &ask.nodes {
        match judged(lab, node, &states, &ask.owners) {
            Err(why) => refusals.push(why),
            Ok(state) => {
                if find(state, node, ask.name).is_some() {
                    refusals.push(format!(
                        "{}: it has a snapshot {} already (`lab snapshot --delete {}` first)",
                        node.name, ask.name, ask.name
                    ));
                }
            }
        }
    }
    if !refusals.is_empty() {
        return Err(Refused(refusals));
    }
    let hypervisors = lab.hypervisors_of(&ask.nodes);
    let jobs = hypervisors.iter().map(|hv| {
        let states = &states;
        async move {
            let here: Vec<&LabNode> = ask
                .nodes
                .iter()
                .copied()
                .filter(|n| n.hypervisor == hv.name)
                .collect();
            let state = states[hv.name.as_str()].as_deref().expect("judged above");
            // Only what runs is paused (and resumed): a domain an operator paused stays so.
            let pause: Vec<&str> = here
                .iter()
                .filter(|n| {
                    consistent
                        && state
                            .domains
                            .get(&n.domain)
                            .is_some_and(|d| d.state == "running")
                })
                .map(|n| n.domain.as_str())
                .collect();
            let clones: Vec<(&str, Option<&str>)> = here
                .iter()
                .map(|n| {
                    let digest = state
                        .datasets
                        .get(&n.dataset)
                        .and_then(|d| d.prop(prop::OVERLAY));
                    (n.dataset.as_str(), digest)
                })
                .collect();
            let atomic = state.zfs.modern();
            let step = cmd::take_snapshot(
                ask.name,
                &[(prop::SNAPSHOT, ask.name.to_owned())],
                &pause,
                &clones,
                atomic,
            );
            let shown = shown_step(&step);
            for n in &here {
                events(Event::Step {
                    node: n.name.clone(),
                    hypervisor: hv.name.clone(),
                    step: "snapshot",
                });
            }
            let extras = Extras {
                first: vec![("snapshot", step)],
                ..Extras::default()
            };
            let ran = run_with(exec, hv, &lab.name, &[], &extras, events).await;
            Share {
                hv,
                here,
                result: ran.first.unwrap_or(Ok(())),
                printed: ran.printed_first,
                atomic,
                shown,
            }
        }
    });
    let shares = lab_hv::run::at_once_when_live(exec, jobs.collect()).await;
    let failed_on: Vec<&str> = shares
        .iter()
        .filter(|s| s.result.is_err())
        .map(|s| s.hv.name.as_str())
        .collect();
    let mut reports = Vec::new();
    for share in &shares {
        // Taken back: every share when one failed, but one that said it left nothing (a
        // share whose command did not end cleanly may have taken its snapshots).
        let clean = matches!(&share.result, Err((_, ExecError::Failed { stderr, .. }))
            if stderr.contains(cmd::UNDONE));
        let undone = if failed_on.is_empty() || clean || !exec.is_live() {
            None
        } else {
            Some(undo(exec, share, ask, events).await)
        };
        reports.extend(share_reports(exec, share, ask.name, &failed_on, undone));
    }
    reports.iter().for_each(|r| report_done(events, r));
    Ok(lab_hv::run::in_node_order(&ask.nodes, vec![reports]))
}

/// One hypervisor's share of a snapshot, as it ended.
struct Share<'a> {
    hv: &'a Hypervisor,
    here: Vec<&'a LabNode>,
    result: Result<(), (&'static str, ExecError)>,
    printed: Vec<String>,
    atomic: bool,
    shown: String,
}

/// Destroys again the snapshots a share took (another hypervisor's share failed): how each
/// node's went.
async fn undo(
    exec: &Executor,
    share: &Share<'_>,
    ask: &SnapshotAsk<'_>,
    events: Events<'_>,
) -> Vec<lab_hv::plan::StepsResult> {
    let plans: Vec<NodePlan<'_>> = share
        .here
        .iter()
        .map(|n| {
            NodePlan::new(
                n,
                vec![(
                    "destroy again",
                    cmd::destroy_snapshot_if_there(&n.dataset, ask.name),
                )],
            )
        })
        .collect();
    run_with(
        exec,
        share.hv,
        &ask.lab.name,
        &plans,
        &Extras::default(),
        events,
    )
    .await
    .nodes
}

fn share_reports(
    exec: &Executor,
    share: &Share<'_>,
    name: &str,
    failed_on: &[&str],
    undone: Option<Vec<lab_hv::plan::StepsResult>>,
) -> Vec<NodeReport> {
    let first = share.here.first().map(|n| n.name.as_str()).unwrap_or("");
    let count = share.here.len();
    let how = if share.atomic {
        format!("{count} clone(s) of {} at one moment", share.hv.name)
    } else {
        format!(
            "{count} clone(s) of {} one after the other (its zfs takes one per call)",
            share.hv.name
        )
    };
    let paused = cmd::paused_ms(&share.printed)
        .map(|ms| format!(", domains paused {ms} ms"))
        .unwrap_or_default();
    let unresumed: Vec<&str> = share
        .printed
        .iter()
        .filter_map(|l| l.strip_prefix("unresumed "))
        .collect();
    share
        .here
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut report = match (&share.result, &undone) {
                // The script took back what it took, and said so.
                (Err((step, e)), None) => failed(
                    node,
                    step,
                    e,
                    matches!(e, ExecError::Failed { stderr, .. } if stderr.contains(cmd::UNDONE)),
                ),
                // It did not end cleanly: taken back from here, where it was there.
                (Err((step, e)), Some(undone)) => {
                    let mut report = failed(node, step, e, undone[i].is_ok());
                    if let (Err((_, again)), Outcome::Failed { error, .. }) =
                        (&undone[i], &mut report.outcome)
                    {
                        error.push_str(&format!(
                            "; {}@{name} may be left: destroying it failed too: {again}",
                            node.dataset
                        ));
                    }
                    report
                }
                (Ok(()), Some(undone)) => NodeReport::new(
                    node,
                    match &undone[i] {
                        Ok(_) => Outcome::Failed {
                            step: "snapshot".to_owned(),
                            error: format!(
                                "taken, then destroyed again: the snapshot failed on {}",
                                failed_on.join(", ")
                            ),
                            rolled_back: true,
                        },
                        Err((_, e)) => Outcome::Failed {
                            step: "snapshot".to_owned(),
                            error: format!(
                                "the snapshot failed on {}, and {}@{name} could not be destroyed \
                                 again: {e}",
                                failed_on.join(", "),
                                node.dataset
                            ),
                            rolled_back: false,
                        },
                    },
                ),
                (Ok(()), None) if !unresumed.is_empty() => NodeReport::new(
                    node,
                    Outcome::Failed {
                        step: "resume".to_owned(),
                        error: format!(
                            "taken ({how}), but domain(s) {} could not be resumed: virsh resume",
                            unresumed.join(", ")
                        ),
                        rolled_back: false,
                    },
                ),
                (Ok(()), None) => NodeReport {
                    note: Some(format!("{how}{paused}")),
                    ..NodeReport::new(node, Outcome::Done)
                },
            };
            if !exec.is_live() {
                if i == 0 {
                    report.commands = vec![share.shown.clone()];
                } else {
                    report.note = Some(format!("in the same command as {first}"));
                }
            }
            report
        })
        .collect()
}

/// Deletes snapshot `ask.name` of every node's clone that has it. A node that cannot be
/// changed (another owner's clone, another lab's) is skipped; refused when no node has it.
pub async fn delete(
    exec: &Executor,
    ask: &SnapshotAsk<'_>,
    events: Events<'_>,
) -> Result<Vec<NodeReport>, Refused> {
    let lab = ask.lab;
    let states = lab_hv::run::probe_nodes(exec, lab, &ask.nodes).await;
    let any = ask.nodes.iter().any(|n| {
        matches!(&states[lab.hypervisor_of(n).name.as_str()], Ok(s) if find(s, n, ask.name).is_some())
    });
    let unread = ask
        .nodes
        .iter()
        .any(|n| states[lab.hypervisor_of(n).name.as_str()].is_err());
    if !any && !unread {
        return Err(Refused(vec![format!(
            "no node of lab {} has a snapshot {} (`lab snapshots` lists them)",
            lab.name, ask.name
        )]));
    }
    Ok(lab_hv::plan::each_hypervisor(
        exec,
        lab,
        &ask.nodes,
        &states,
        events,
        |_, node, state| {
            let ends = |outcome| Work::Ends(Box::new(NodeReport::new(node, outcome)));
            if find(state, node, ask.name).is_none() {
                return ends(Outcome::Unchanged {
                    reason: format!("no snapshot {}", ask.name),
                });
            }
            if let Err(why) = judged(lab, node, &states, &ask.owners) {
                return ends(Outcome::Skipped {
                    reason: format!("{why}; its snapshot is left"),
                });
            }
            Work::Steps(
                vec![(
                    "destroy snapshot",
                    cmd::destroy_snapshot(&node.dataset, ask.name),
                )],
                (),
            )
        },
        |node, (), result| match result {
            Err((step, e)) => failed(node, step, &e, false),
            Ok(_) => NodeReport::new(node, Outcome::Done),
        },
    )
    .await)
}

/// One snapshot of the lab, over its nodes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabSnapshot {
    pub name: String,
    /// When its first clone's snapshot was taken (seconds since the epoch).
    pub created: u64,
    /// The nodes whose clone has it, in lab order.
    pub nodes: Vec<String>,
    /// The nodes asked about whose clone does not have it (created later, or left out).
    pub missing: Vec<String>,
    /// The space only its snapshots hold, in bytes, over every node.
    pub used: u64,
}

/// The lab's snapshots, oldest first, and the hypervisors that could not be read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listing {
    pub snapshots: Vec<LabSnapshot>,
    pub unreadable: Vec<Unreadable>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Unreadable {
    pub hypervisor: String,
    pub error: String,
}

/// The snapshots `lab` took of the clones of `nodes` that are this lab's: read only, one
/// probe per hypervisor.
pub async fn list(exec: &Executor, lab: &Lab, nodes: &[&LabNode]) -> Listing {
    let states = lab_hv::run::probe_nodes(exec, lab, nodes).await;
    let mut snapshots: Vec<LabSnapshot> = Vec::new();
    let mut unreadable = Vec::new();
    for hv in lab.hypervisors_of(nodes) {
        if let Err(e) = &states[hv.name.as_str()] {
            unreadable.push(Unreadable {
                hypervisor: hv.name.clone(),
                error: e.to_string(),
            });
        }
    }
    for node in nodes {
        let hv = lab.hypervisor_of(node);
        let Ok(state) = &states[hv.name.as_str()] else {
            continue;
        };
        let ours = state
            .datasets
            .get(&node.dataset)
            .is_some_and(|ds| lab_hv::own::not_ours(ds, &lab.name, node, hv).is_none());
        if !ours {
            continue;
        }
        for snap in state.snapshots_of(&node.dataset) {
            let entry = match snapshots.iter().position(|s| s.name == snap.name) {
                Some(i) => &mut snapshots[i],
                None => {
                    snapshots.push(LabSnapshot {
                        name: snap.name.clone(),
                        created: snap.creation,
                        nodes: Vec::new(),
                        missing: Vec::new(),
                        used: 0,
                    });
                    snapshots.last_mut().expect("just pushed")
                }
            };
            entry.created = entry.created.min(snap.creation);
            entry.nodes.push(node.name.clone());
            entry.used += snap.used;
        }
    }
    for snap in &mut snapshots {
        snap.missing = nodes
            .iter()
            .filter(|n| !snap.nodes.contains(&n.name))
            .filter(|n| states[lab.hypervisor_of(n).name.as_str()].is_ok())
            .map(|n| n.name.clone())
            .collect();
    }
    snapshots.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Listing {
        snapshots,
        unreadable,
    }
}
