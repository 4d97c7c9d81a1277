//! Running work on hypervisors: all at once on one task (one after another without a live
//! executor), reports in the order of the nodes, changes that zfs refuses for a moment
//! retried.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use lab_exec::{ExecError, Executor};
use lab_model::{Hypervisor, Lab, LabNode};

use crate::report::{Event, Events, NodeReport, Outcome};
use crate::state::{self, HostState};

/// Runs futures concurrently on the current task and returns their outputs in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// Probes every hypervisor once, all at once.
pub async fn probe_all<'a>(
    exec: &Executor,
    hypervisors: &[&'a Hypervisor],
    detail: state::Detail,
) -> HashMap<&'a str, Result<HostState, ExecError>> {
    let probes = join_all(
        hypervisors
            .iter()
            .map(|hv| state::probe_with(exec, hv, detail))
            .collect(),
    )
    .await;
    hypervisors
        .iter()
        .map(|h| h.name.as_str())
        .zip(probes)
        .collect()
}

/// Each hypervisor's probed state, or why it could not be probed.
pub type States<'a> = HashMap<&'a str, Result<Arc<HostState>, ExecError>>;

/// Probes the hypervisors that carry `nodes`.
pub async fn probe_nodes<'a>(exec: &Executor, lab: &'a Lab, nodes: &[&LabNode]) -> States<'a> {
    probe_all(exec, &lab.hypervisors_of(nodes), state::Detail::Normal)
        .await
        .into_iter()
        .map(|(k, v)| (k, v.map(Arc::new)))
        .collect()
}

/// Runs `jobs` all at once with a live executor, and one after another without one (dry run,
/// plan tests), so that each job's recorded commands are its own.
pub async fn at_once_when_live<F: Future>(exec: &Executor, jobs: Vec<F>) -> Vec<F::Output> {
    if exec.is_live() {
        return join_all(jobs).await;
    }
    let mut out = Vec::new();
    for job in jobs {
        out.push(job.await);
    }
    out
}

/// Each hypervisor's reports, put back in the order of `nodes`.
pub fn in_node_order(nodes: &[&LabNode], per_hypervisor: Vec<Vec<NodeReport>>) -> Vec<NodeReport> {
    let mut by_node: HashMap<String, NodeReport> = per_hypervisor
        .into_iter()
        .flatten()
        .map(|r| (r.node.clone(), r))
        .collect();
    nodes
        .iter()
        .filter_map(|n| by_node.remove(&n.name))
        .collect()
}

/// Runs a change that zfs may refuse for a moment with "busy" right after an unmount (a
/// dataset's last users are still letting go): up to 10 tries, half a second apart.
pub async fn run_patiently(
    exec: &Executor,
    host: &str,
    cmd: &lab_exec::Cmd,
) -> Result<lab_exec::Out, ExecError> {
    let mut tries = 0;
    loop {
        match exec.run(host, cmd).await {
            Err(ExecError::Failed { stderr, .. }) if stderr.contains("busy") && tries < 9 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// An executor error as a failed node, naming the step (and the pool, when it is full).
pub fn failed(node: &LabNode, step: &str, err: &ExecError, rolled_back: bool) -> NodeReport {
    let mut error = err.to_string();
    if error.contains("No space left on device") || error.contains("out of space") {
        let pool = node.dataset.split('/').next().unwrap_or_default();
        error = format!("no space left on pool {pool}: {error}");
    }
    NodeReport::new(
        node,
        Outcome::Failed {
            step: step.to_owned(),
            error,
            rolled_back,
        },
    )
}

/// Says that a node's report is known (progress lines end there).
pub fn report_done(events: Events<'_>, report: &NodeReport) {
    events(Event::Done {
        node: report.node.clone(),
        hypervisor: report.hypervisor.clone(),
        outcome: report.outcome.word().to_owned(),
    });
}
