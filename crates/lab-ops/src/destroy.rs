//! `lab destroy`: stop the nodes' domains, undefine those `lab` defined, destroy their clones:
//! only clones whose properties prove they are this lab's.

use lab_exec::Executor;
use lab_model::{Hypervisor, Lab, LabNode};

use crate::probe::HostState;
use crate::{Events, NodeReport, Outcome, failed, not_ours, steps};

pub struct DestroyRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
}

pub async fn destroy(
    exec: &Executor,
    req: &DestroyRequest<'_>,
    events: Events<'_>,
) -> Vec<NodeReport> {
    let lab = &req.lab.name;
    let states = crate::probe_nodes(exec, req.lab, &req.nodes).await;
    crate::each_node(
        exec,
        req.lab,
        &req.nodes,
        &states,
        events,
        |hv, node, state| async move { destroy_node(exec, lab, hv, node, &state, events).await },
    )
    .await
}

async fn destroy_node(
    exec: &Executor,
    lab: &str,
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
    events: Events<'_>,
) -> NodeReport {
    let clone = state.datasets.get(&node.dataset);
    if let Some(problem) = clone.and_then(|ds| not_ours(ds, lab, node, hv)) {
        return NodeReport::new(
            node,
            Outcome::Skipped {
                reason: format!("{problem}; not destroyed"),
            },
        );
    }
    // A domain of the node's name is ours when lab's marker says so; without our clone and
    // without the marker it is someone else's (or pre-provisioned) and left alone.
    let domain_ours = if state.domains.contains_key(&node.name) {
        match crate::domain_is_ours(exec, hv, lab, node).await {
            Ok(ours) => ours,
            Err(e) => return failed(node, "inspect domain", &e, false),
        }
    } else {
        false
    };
    let mut plan = Vec::new();
    if state.domain_running(&node.name) && (clone.is_some() || domain_ours) {
        plan.push(("stop", steps::stop(node)));
    }
    if domain_ours {
        plan.push(("undefine", steps::undefine(node)));
    }
    if clone.is_some() {
        plan.push(("unmount", steps::detach(hv, node)));
        plan.push(("destroy clone", steps::destroy_dataset(node)));
    }
    // Staging leftovers go in every case.
    plan.push(("remove staging", steps::remove_staging(hv, node)));
    let step = crate::step_events(events, hv, node);
    for (name, cmd) in plan {
        step(name);
        if let Err(e) = crate::run_patiently(exec, &hv.name, &cmd).await {
            return failed(node, name, &e, false);
        }
    }
    if clone.is_none() && !domain_ours {
        return NodeReport::new(
            node,
            Outcome::Unchanged {
                reason: format!("no clone {}", node.dataset),
            },
        );
    }
    NodeReport::new(node, Outcome::Done)
}
