//! `lab restore`: each node's clone rolled back to a lab snapshot, in one plan per
//! hypervisor; nodes that fail after their stop are started again.

use lab_exec::{Cmd, Executor};
use lab_hv::plan::Work;
use lab_hv::run::failed;
use lab_hv::{Events, HostState, NodeReport, Outcome, cmd};
use lab_model::{Hypervisor, LabNode, Storage};

use super::{Refused, SnapshotAsk, judged};

type Steps = Vec<(&'static str, Cmd)>;

/// How a restore went: each node's report, and the nodes it started again.
pub struct Restored {
    pub reports: Vec<NodeReport>,
    pub started: Vec<String>,
}

/// Rolls every node's clone back to snapshot `ask.name` (see the module's doc). Refused, with
/// nothing changed, when a node has no such snapshot, cannot be changed, or has later lab
/// snapshots and `drop_newer` is not set.
pub async fn restore(
    exec: &Executor,
    ask: &SnapshotAsk<'_>,
    drop_newer: bool,
    events: Events<'_>,
) -> Result<Restored, Refused> {
    let lab = ask.lab;
    let states = lab_hv::run::probe_nodes(exec, lab, &ask.nodes).await;
    let refusals: Vec<String> = ask
        .nodes
        .iter()
        .filter_map(|node| {
            let state = judged(lab, node, &states, &ask.owners);
            let steps = state.and_then(|s| {
                restore_steps(lab.hypervisor_of(node), node, s, ask.name, drop_newer)
            });
            steps.err()
        })
        .collect();
    if !refusals.is_empty() {
        return Err(Refused(refusals));
    }
    let reports = lab_hv::plan::each_hypervisor(
        exec,
        lab,
        &ask.nodes,
        &states,
        events,
        |hv, node, state| match restore_steps(hv, node, state, ask.name, drop_newer) {
            Ok((steps, ran)) => Work::Steps(steps, ran),
            Err(why) => Work::Ends(Box::new(NodeReport::new(
                node,
                Outcome::Skipped { reason: why },
            ))),
        },
        |node, ran, result| match result {
            Err((step, e)) => failed(node, step, &e, false),
            Ok(_) => NodeReport {
                note: Some(if ran {
                    format!("rolled back to {}, started again", ask.name)
                } else {
                    format!("rolled back to {} (it was not running)", ask.name)
                }),
                ..NodeReport::new(node, Outcome::Done)
            },
        },
    )
    .await;
    let running = |n: &LabNode| {
        let hv = lab.hypervisor_of(n);
        matches!(&states[hv.name.as_str()], Ok(s) if s.domain_running(&n.domain))
    };
    let (reports, again) = start_again(exec, ask, reports, &running, events).await;
    let started = ask
        .nodes
        .iter()
        .filter(|n| running(n))
        .filter(|n| {
            again.contains(&n.name)
                || reports
                    .iter()
                    .any(|r| r.node == n.name && matches!(r.outcome, Outcome::Done))
        })
        .map(|n| n.name.clone())
        .collect();
    Ok(Restored { reports, started })
}

/// Starts again, as they were, the nodes that ran and whose restore failed after they were
/// powered off (their clone is rolled back or as it was: the step says): one plan per
/// hypervisor. Their reports say whether they run again; returned too, the nodes that do.
async fn start_again(
    exec: &Executor,
    ask: &SnapshotAsk<'_>,
    mut reports: Vec<NodeReport>,
    running: &dyn Fn(&LabNode) -> bool,
    events: Events<'_>,
) -> (Vec<NodeReport>, Vec<String>) {
    let stopped: Vec<&LabNode> = ask
        .nodes
        .iter()
        .copied()
        .filter(|n| running(n))
        .filter(|n| {
            reports.iter().any(|r| {
                r.node == n.name
                    && matches!(&r.outcome, Outcome::Failed { step, .. }
                        if step != "check" && step != "stop")
            })
        })
        .collect();
    if stopped.is_empty() || !exec.is_live() {
        return (reports, Vec::new());
    }
    let lab = ask.lab;
    let states = lab_hv::run::probe_nodes(exec, lab, &stopped).await;
    let again = lab_hv::plan::each_hypervisor(
        exec,
        lab,
        &stopped,
        &states,
        events,
        |hv, node, _| {
            let mut steps = Vec::new();
            if hv.storage == Storage::Dataset {
                steps.push(("mount", cmd::attach(hv, node)));
            }
            steps.push(("start", cmd::start(hv, node)));
            Work::Steps(steps, ())
        },
        |node, (), result| match result {
            Err((step, e)) => failed(node, step, &e, false),
            Ok(_) => NodeReport::new(node, Outcome::Done),
        },
    )
    .await;
    for r in &mut reports {
        let Some(a) = again.iter().find(|a| a.node == r.node) else {
            continue;
        };
        if let Outcome::Failed { error, .. } = &mut r.outcome {
            match &a.outcome {
                Outcome::Done => error.push_str("; the node was started again"),
                Outcome::Failed { error: e, .. } => {
                    error.push_str(&format!("; starting it again failed too: {e}"));
                }
                _ => {}
            }
        }
    }
    let started = again
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Done))
        .map(|a| a.node.clone())
        .collect();
    (reports, started)
}

/// A node's restore: look that nothing but the lab snapshots it drops was taken after `name`,
/// power it off, unmount, drop those, roll back, mount again, start it if it ran; and whether
/// it runs. Why not, naming the node.
fn restore_steps(
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
    name: &str,
    drop_newer: bool,
) -> Result<(Steps, bool), String> {
    let snaps = state.snapshots_of(&node.dataset);
    let Some(at) = snaps.iter().position(|s| s.name == name) else {
        let have: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "{}: its clone has no snapshot {name} (it has: {}; a node created after the \
             snapshot was taken has none: leave it out with --node)",
            node.name,
            if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            }
        ));
    };
    let newer: Vec<&str> = snaps[at + 1..].iter().map(|s| s.name.as_str()).collect();
    if !newer.is_empty() && !drop_newer {
        return Err(format!(
            "{}: snapshot(s) {} were taken after {name}, and a clone rolled back loses them \
             (--drop-newer destroys them)",
            node.name,
            newer.join(", ")
        ));
    }
    let running = state.domain_running(&node.domain);
    let mut steps = vec![("check", cmd::check_rollback(&node.dataset, name, &newer))];
    if running {
        steps.push(("stop", cmd::stop(node)));
    }
    steps.push(("unmount", cmd::detach(hv, node)));
    for later in &newer {
        steps.push((
            "drop later snapshot",
            cmd::destroy_snapshot(&node.dataset, later),
        ));
    }
    steps.push(("roll back", cmd::rollback(&node.dataset, name)));
    if hv.storage == Storage::Dataset {
        steps.push(("mount", cmd::attach(hv, node)));
    }
    if running {
        steps.push(("start", cmd::start(hv, node)));
    }
    Ok((steps, running))
}
