//! `lab create`, `lab destroy` and `lab status`: decisions from one probe per hypervisor,
//! carried out through the executor, node by node, hypervisors in parallel.
//!
//! Architecture invariant: nothing destroys a dataset it cannot prove it created: the clone's
//! `lab:lab` and `lab:node` properties name this lab and node, and its origin is a snapshot
//! of the hypervisor's proto. Nothing is ever destroyed recursively.
//!
//! This crate never prints: progress goes out as [`Event`]s, results as reports.

pub mod create;
mod destroy;
pub mod lock;
pub mod probe;
pub mod proto;
mod status;
pub mod steps;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use std::collections::HashMap;

use lab_exec::{ExecError, Executor, Target};
use lab_model::{Hypervisor, Lab, LabNode, SnapshotSpec};
use tokio::sync::Semaphore;

pub use create::{CreateRequest, PlanError, create};
pub use destroy::{DestroyRequest, destroy};
pub use lock::{Holder, LockError, Locks, lock};
pub use probe::{Dataset, HostState, Snapshot};
pub use status::{NodeStatus, Orphan, StatusReport, status};

/// Progress of one node, for whoever displays it.
#[derive(Debug, Clone)]
pub enum Event {
    Step {
        node: String,
        hypervisor: String,
        step: &'static str,
    },
    Done {
        node: String,
        hypervisor: String,
        outcome: String,
    },
    /// Bytes moved so far (proto sync).
    Bytes {
        node: String,
        hypervisor: String,
        bytes: u64,
    },
}

pub type Events<'a> = &'a (dyn Fn(Event) + Sync);

/// How one node ended.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Outcome {
    /// Created (or destroyed) as asked.
    Done,
    /// Nothing to do: already as asked.
    Unchanged { reason: String },
    /// Left alone on purpose.
    Skipped { reason: String },
    /// A step failed; `rolled_back` says whether what this run made was removed again.
    Failed {
        step: String,
        error: String,
        rolled_back: bool,
    },
}

impl Outcome {
    /// One word for logs and progress lines.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    pub node: String,
    pub hypervisor: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The snapshot a created node was cloned from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// With `--dry-run`: the commands that would run, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

impl NodeReport {
    fn new(node: &LabNode, outcome: Outcome) -> NodeReport {
        NodeReport {
            node: node.name.clone(),
            hypervisor: node.hypervisor.clone(),
            outcome,
            snapshot: None,
            commands: Vec::new(),
        }
    }
}

/// The overall result: what the exit code is made of.
pub fn summary(reports: &[NodeReport]) -> Summary {
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    Summary {
        done: count(|o| matches!(o, Outcome::Done)),
        unchanged: count(|o| matches!(o, Outcome::Unchanged { .. })),
        skipped: count(|o| matches!(o, Outcome::Skipped { .. })),
        failed: count(|o| matches!(o, Outcome::Failed { .. })),
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub done: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub failed: usize,
}

/// The executor targets for the hypervisors that carry `nodes`.
pub fn targets(lab: &Lab, nodes: &[&LabNode]) -> Vec<Target> {
    hypervisors_of(lab, nodes).into_iter().map(target).collect()
}

/// A hypervisor as the executor sees it.
pub fn target(hv: &Hypervisor) -> Target {
    Target {
        name: hv.name.clone(),
        ssh: hv.ssh.clone(),
        parallel: hv.parallel as usize,
    }
}

/// The hypervisors that carry `nodes`, in lab order.
pub fn hypervisors_of<'a>(lab: &'a Lab, nodes: &[&LabNode]) -> Vec<&'a Hypervisor> {
    lab.hypervisors
        .iter()
        .filter(|h| nodes.iter().any(|n| n.hypervisor == h.name))
        .collect()
}

/// The snapshot a spec picks among a hypervisor's proto snapshots (oldest first).
pub fn resolve_snapshot<'a>(
    spec: &SnapshotSpec,
    snapshots: &'a [Snapshot],
) -> Option<&'a Snapshot> {
    snapshots.iter().rev().find(|s| spec.matches(&s.name))
}

/// Why a dataset is not provably this lab's clone of this node, or `None` when it is.
pub fn not_ours(ds: &Dataset, lab: &str, node: &LabNode, hv: &Hypervisor) -> Option<String> {
    let proto_prefix = format!("{}@", hv.proto);
    match (
        ds.prop(probe::prop::LAB),
        ds.prop(probe::prop::NODE),
        ds.origin.as_deref(),
    ) {
        (None, _, _) | (_, None, _) => Some(format!(
            "dataset {} exists and was not made by lab",
            ds.name
        )),
        (Some(l), Some(n), _) if l != lab || n != node.name => Some(format!(
            "dataset {} belongs to lab `{l}`, node `{n}`",
            ds.name
        )),
        (_, _, Some(origin)) if origin.starts_with(&proto_prefix) => None,
        (_, _, origin) => Some(format!(
            "dataset {} is not a clone of {} (origin {})",
            ds.name,
            hv.proto,
            origin.unwrap_or("none")
        )),
    }
}

/// `user@controller`, recorded as the owner of what `lab` makes.
pub fn owner() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(user_from_uid);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{user}@{host}")
}

/// The login name of this process's uid, from /etc/passwd (cron may set no $USER).
fn user_from_uid() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .and_then(|r| r.split_whitespace().next().map(str::to_owned))
            })
        });
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    uid.and_then(|uid| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid).then(|| f[0].to_owned())
        })
    })
    .unwrap_or_else(|| "unknown".to_owned())
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from a day count (Howard Hinnant's algorithm), years 1970 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs futures concurrently on the current task and returns their outputs in order.
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
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
pub(crate) async fn probe_all<'a>(
    exec: &Executor,
    hypervisors: &[&'a Hypervisor],
) -> HashMap<&'a str, Result<HostState, ExecError>> {
    let probes = join_all(
        hypervisors
            .iter()
            .map(|hv| probe::probe(exec, hv))
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
pub(crate) type States<'a> = HashMap<&'a str, Result<Arc<HostState>, ExecError>>;

/// Probes the hypervisors that carry `nodes`.
pub(crate) async fn probe_nodes<'a>(
    exec: &Executor,
    lab: &'a Lab,
    nodes: &[&LabNode],
) -> States<'a> {
    probe_all(exec, &hypervisors_of(lab, nodes))
        .await
        .into_iter()
        .map(|(k, v)| (k, v.map(Arc::new)))
        .collect()
}

/// Runs `work` for every node against its hypervisor's probed state, at most `parallel` nodes
/// per hypervisor at once, and reports each node's end as an event. A hypervisor that could not
/// be probed fails its nodes at the `connect` step. Without a live executor the nodes go one at
/// a time, so each report carries exactly its own recorded commands.
pub(crate) async fn each_node<'a, F, Fut>(
    exec: &Executor,
    lab: &'a Lab,
    nodes: &[&'a LabNode],
    states: &States<'_>,
    events: Events<'_>,
    work: F,
) -> Vec<NodeReport>
where
    F: Fn(&'a Hypervisor, &'a LabNode, Arc<HostState>) -> Fut,
    Fut: Future<Output = NodeReport>,
{
    let hypervisors = hypervisors_of(lab, nodes);
    let limits: HashMap<&str, Semaphore> = hypervisors
        .iter()
        .map(|h| (h.name.as_str(), Semaphore::new(h.parallel as usize)))
        .collect();
    let work = &work;
    let jobs = nodes.iter().map(|node| {
        let hv = lab
            .hypervisor(&node.hypervisor)
            .expect("the model checked it");
        let state = &states[hv.name.as_str()];
        let limit = &limits[hv.name.as_str()];
        async move {
            let _slot = limit.acquire().await.expect("never closed");
            let report = match state {
                Err(e) => failed(node, "connect", e, false),
                Ok(state) => work(hv, node, Arc::clone(state)).await,
            };
            events(Event::Done {
                node: node.name.clone(),
                hypervisor: node.hypervisor.clone(),
                outcome: report.outcome.word().to_owned(),
            });
            report
        }
    });
    if exec.is_live() {
        return join_all(jobs.collect()).await;
    }
    let mut reports = Vec::new();
    for job in jobs {
        let before = exec.recorded().len();
        let mut report = job.await;
        report.commands = exec.recorded()[before..]
            .iter()
            .map(|r| r.line.clone())
            .collect();
        reports.push(report);
    }
    reports
}

/// Whether the domain named after `node` carries `lab`'s marker for this lab and node, i.e.
/// whether `lab` defined it (reads the libvirt metadata; a domain without it is not ours).
pub(crate) async fn domain_is_ours(
    exec: &Executor,
    hv: &Hypervisor,
    lab: &str,
    node: &LabNode,
) -> Result<bool, ExecError> {
    let out = exec.output(&hv.name, &steps::read_marker(node)).await?;
    Ok(out.success() && steps::marker_matches(&out.stdout, lab, &node.name))
}

/// Runs a change that zfs may refuse for a moment with "busy" right after an unmount (a
/// dataset's last users are still letting go): up to 10 tries, half a second apart.
pub(crate) async fn run_patiently(
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

/// Reports one node's steps as [`Event::Step`]s.
pub(crate) fn step_events<'a>(
    events: Events<'a>,
    hv: &'a Hypervisor,
    node: &'a LabNode,
) -> impl Fn(&'static str) + 'a {
    move |step| {
        events(Event::Step {
            node: node.name.clone(),
            hypervisor: hv.name.clone(),
            step,
        })
    }
}

/// An executor error as a failed node, naming the step (and the pool, when it is full).
pub(crate) fn failed(node: &LabNode, step: &str, err: &ExecError, rolled_back: bool) -> NodeReport {
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
