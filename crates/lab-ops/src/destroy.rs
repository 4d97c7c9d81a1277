//! `lab destroy`: stop the nodes' domains, undefine those `lab` defined, destroy their clones:
//! only clones whose properties prove they are this lab's.

use lab_exec::Executor;
use lab_model::{Hypervisor, Lab, LabNode};

use crate::probe::HostState;
use crate::{Event, Events, NodeReport, Outcome, failed, not_ours, steps};

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
    crate::each_node(
        exec,
        req.lab,
        &req.nodes,
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
    let step = |s: &'static str| {
        events(Event::Step {
            node: node.name.clone(),
            hypervisor: hv.name.clone(),
            step: s,
        })
    };
    let Some(ds) = state.datasets.get(&node.dataset) else {
        // No clone. A domain lab defined for this node (left by an interrupted run) still
        // goes; any other domain of that name is someone else's. Staging leftovers go too.
        if state.domains.contains_key(&node.name) {
            let ours = match crate::domain_is_ours(exec, hv, lab, node).await {
                Ok(ours) => ours,
                Err(e) => return failed(node, "inspect domain", &e, false),
            };
            if ours {
                step("undefine");
                let mut cmds = Vec::new();
                if state.domain_running(&node.name) {
                    cmds.push(("stop", steps::stop(node)));
                }
                cmds.push(("undefine", steps::undefine(node)));
                cmds.push(("remove staging", steps::remove_staging(hv, node)));
                for (name, cmd) in cmds {
                    if let Err(e) = exec.run(&hv.name, &cmd).await {
                        return failed(node, name, &e, false);
                    }
                }
                return NodeReport::new(node, Outcome::Done);
            }
        }
        if let Err(e) = exec.run(&hv.name, &steps::remove_staging(hv, node)).await {
            return failed(node, "remove staging", &e, false);
        }
        return NodeReport::new(
            node,
            Outcome::Unchanged {
                reason: format!("no clone {}", node.dataset),
            },
        );
    };
    if let Some(problem) = not_ours(ds, lab, node, hv) {
        return NodeReport::new(
            node,
            Outcome::Skipped {
                reason: format!("{problem}; not destroyed"),
            },
        );
    }
    if state.domains.contains_key(&node.name) {
        let ours = match crate::domain_is_ours(exec, hv, lab, node).await {
            Ok(ours) => ours,
            Err(e) => return failed(node, "inspect domain", &e, false),
        };
        if state.domain_running(&node.name) {
            step("stop");
            if let Err(e) = exec.run(&hv.name, &steps::stop(node)).await {
                return failed(node, "stop", &e, false);
            }
        }
        if ours {
            step("undefine");
            if let Err(e) = exec.run(&hv.name, &steps::undefine(node)).await {
                return failed(node, "undefine", &e, false);
            }
        }
    }
    step("destroy clone");
    for (name, cmd) in [
        ("unmount", steps::detach(hv, node)),
        ("destroy clone", steps::destroy_dataset(node)),
        ("remove staging", steps::remove_staging(hv, node)),
    ] {
        if let Err(e) = exec.run(&hv.name, &cmd).await {
            return failed(node, name, &e, false);
        }
    }
    NodeReport::new(node, Outcome::Done)
}
