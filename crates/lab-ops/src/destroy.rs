//! `lab destroy`: stop the nodes' domains, undefine those `lab` defined, destroy their clones:
//! only clones whose properties prove they are this lab's.

use std::collections::HashMap;

use lab_exec::Executor;
use lab_model::{Hypervisor, Lab, LabNode};
use tokio::sync::Semaphore;

use crate::create::outcome_word;
use crate::probe::{self, HostState};
use crate::{Event, Events, NodeReport, Outcome, failed, join_all, not_ours, steps};

pub struct DestroyRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
}

pub async fn destroy(
    exec: &Executor,
    req: &DestroyRequest<'_>,
    events: Events<'_>,
) -> Vec<NodeReport> {
    let hypervisors = crate::hypervisors_of(req.lab, &req.nodes);
    let probes = join_all(
        hypervisors
            .iter()
            .map(|hv| probe::probe(exec, hv))
            .collect(),
    )
    .await;
    let states: HashMap<&str, _> = hypervisors
        .iter()
        .map(|h| h.name.as_str())
        .zip(probes)
        .collect();
    let limits: HashMap<&str, Semaphore> = hypervisors
        .iter()
        .map(|h| (h.name.as_str(), Semaphore::new(h.parallel as usize)))
        .collect();
    let sequential = !exec.is_live();
    let work = req.nodes.iter().map(|node| {
        let hv = req
            .lab
            .hypervisor(&node.hypervisor)
            .expect("the model checked it");
        let state = &states[hv.name.as_str()];
        let limit = &limits[hv.name.as_str()];
        async move {
            let _slot = limit.acquire().await.expect("never closed");
            let report = match state {
                Err(e) => failed(node, "connect", e, false),
                Ok(state) => destroy_node(exec, &req.lab.name, hv, node, state, events).await,
            };
            events(Event::Done {
                node: node.name.clone(),
                hypervisor: node.hypervisor.clone(),
                outcome: outcome_word(&report.outcome).to_owned(),
            });
            report
        }
    });
    if sequential {
        let mut reports = Vec::new();
        for job in work {
            let before = exec.recorded().len();
            let mut report = job.await;
            report.commands = exec.recorded()[before..]
                .iter()
                .map(|r| r.line.clone())
                .collect();
            reports.push(report);
        }
        reports
    } else {
        join_all(work.collect()).await
    }
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
            let ours = match exec.output(&hv.name, &steps::read_marker(node)).await {
                Ok(out) => steps::marker_matches(&out.stdout, lab, &node.name),
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
        let ours = match exec.output(&hv.name, &steps::read_marker(node)).await {
            Ok(out) => steps::marker_matches(&out.stdout, lab, &node.name),
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
