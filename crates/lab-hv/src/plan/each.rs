//! A verb's per-node decisions carried out through one plan per hypervisor, all hypervisors
//! at once.

use lab_exec::{Cmd, Executor};
use lab_model::{Hypervisor, Lab, LabNode};

use super::{Extras, FirstResult, NodePlan, StepsResult, run_with, shown_step};
use crate::run::{States, failed};
use crate::{Events, HostState, NodeReport};

/// What a verb has for one node: steps for its hypervisor's plan, with what the verb wants to
/// know again when they have run (`T`), or its report already (skipped, unchanged, not
/// inspectable).
pub enum Work<T> {
    Steps(Vec<(&'static str, Cmd)>, T),
    Ends(Box<NodeReport>),
}

/// Every node of `nodes`, decided by `decide` from its hypervisor's probed state; each
/// hypervisor's steps then go in one exchange, all hypervisors at once (one after the other
/// without a live executor, so that each recorded plan is its own), and `finish` makes each
/// node's report from what `decide` kept for it and how its steps ended. Reports in the order of `nodes`, with a
/// `Done` event as each is known; with `--dry-run`, each carries the lines its steps run.
pub async fn each_hypervisor<'a, T, D, F>(
    exec: &Executor,
    lab: &'a Lab,
    nodes: &[&'a LabNode],
    states: &States<'_>,
    events: Events<'_>,
    decide: D,
    finish: F,
) -> Vec<NodeReport>
where
    D: Fn(&'a Hypervisor, &'a LabNode, &HostState) -> Work<T>,
    F: Fn(&'a LabNode, T, StepsResult) -> NodeReport,
{
    let after = |_: &Hypervisor| Vec::new();
    each_hypervisor_then(exec, lab, nodes, states, events, decide, finish, after)
        .await
        .0
}

/// [`each_hypervisor`], with steps of each hypervisor's own (`after`) that its plan runs after
/// every node's, when every node's steps passed; and how they ended, per hypervisor that had
/// any (`None`: not run).
#[allow(clippy::too_many_arguments)]
pub async fn each_hypervisor_then<'a, T, D, F, A>(
    exec: &Executor,
    lab: &'a Lab,
    nodes: &[&'a LabNode],
    states: &States<'_>,
    events: Events<'_>,
    decide: D,
    finish: F,
    after: A,
) -> (
    Vec<NodeReport>,
    Vec<(&'a Hypervisor, FirstResult, Vec<String>)>,
)
where
    D: Fn(&'a Hypervisor, &'a LabNode, &HostState) -> Work<T>,
    F: Fn(&'a LabNode, T, StepsResult) -> NodeReport,
    A: Fn(&'a Hypervisor) -> Vec<(&'static str, Cmd)>,
{
    let done = |report: &NodeReport| crate::run::report_done(events, report);
    let (decide, finish, done, after) = (&decide, &finish, &done, &after);
    let jobs = lab.hypervisors_of(nodes).into_iter().map(|hv| async move {
        let here = nodes.iter().copied().filter(|n| n.hypervisor == hv.name);
        let state = match &states[hv.name.as_str()] {
            Err(e) => {
                let reports: Vec<NodeReport> =
                    here.map(|n| failed(n, "connect", e, false)).collect();
                reports.iter().for_each(done);
                return (reports, None);
            }
            Ok(state) => state,
        };
        let mut reports = Vec::new();
        let (mut plans, mut kept) = (Vec::new(), Vec::new());
        for node in here {
            match decide(hv, node, state) {
                Work::Ends(report) => {
                    done(&report);
                    reports.push(*report);
                }
                Work::Steps(steps, keep) => {
                    plans.push(NodePlan::new(node, steps));
                    kept.push(keep);
                }
            }
        }
        let extras = Extras {
            last: after(hv),
            ..Extras::default()
        };
        let shown: Vec<String> = if exec.is_live() {
            Vec::new()
        } else {
            extras.last.iter().map(|(_, c)| shown_step(c)).collect()
        };
        let ran = run_with(exec, hv, &lab.name, &plans, &extras, events).await;
        for ((plan, keep), result) in plans.iter().zip(kept).zip(ran.nodes) {
            let mut report = finish(plan.node, keep, result);
            if !exec.is_live() {
                report.commands = plan.shown();
            }
            done(&report);
            reports.push(report);
        }
        let last = (!extras.last.is_empty()).then_some((hv, ran.last, shown));
        (reports, last)
    });
    let per_hypervisor = crate::run::at_once_when_live(exec, jobs.collect()).await;
    let (reports, lasts): (Vec<_>, Vec<_>) = per_hypervisor.into_iter().unzip();
    (
        crate::run::in_node_order(nodes, reports),
        lasts.into_iter().flatten().collect(),
    )
}
