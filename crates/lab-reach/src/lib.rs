//! Day two: reaching the nodes of a running lab. [`exec`] runs a command on many nodes at once,
//! from their hypervisors (one connection per hypervisor, as everywhere); [`wait`] waits on the
//! hypervisors until the nodes are ready; [`power`] starts, stops or restarts nodes, their
//! clones and links untouched; [`link`] lists links, takes them down and up, and captures
//! their frames.
//!
//! Every verb here reaches a node only through a domain `lab` defined for that lab and node
//! ([`refusals`]): another lab's node may answer at the address a lab file names.

pub mod link;
mod pcap;
mod power;
pub mod validate;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lab_exec::Executor;
use lab_hv::reach::{self, Readiness};
use lab_hv::{Event, Events};
use lab_model::{Lab, LabNode};

pub use power::{Power, power};

/// What a command did on one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecReport {
    pub node: String,
    pub hypervisor: String,
    /// Its exit status; `None` when it could not be run (see `error`).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExecReport {
    pub fn failed(&self) -> bool {
        self.status != Some(0)
    }
}

/// Why each node must not be reached, by node name: its domain is not one `lab` defined for
/// this lab and node, or its hypervisor could not be read. One probe per hypervisor.
pub async fn refusals(exec: &Executor, lab: &Lab, nodes: &[&LabNode]) -> HashMap<String, String> {
    let states = lab_hv::run::probe_nodes(exec, lab, nodes).await;
    refusals_in(lab, nodes, &states)
}

/// [`refusals`], judged from hypervisor states already read.
pub(crate) fn refusals_in(
    lab: &Lab,
    nodes: &[&LabNode],
    states: &lab_hv::run::States<'_>,
) -> HashMap<String, String> {
    nodes
        .iter()
        .filter_map(|node| {
            let hv = lab.hypervisor_of(node);
            let why = match &states[hv.name.as_str()] {
                Err(e) => Some(e.to_string()),
                Ok(state) => match lab_hv::own::inspect(hv, &lab.name, node, state) {
                    Err(e) => Some(e.to_string()),
                    Ok(facts) => facts.domain.reach_refusal(&node.domain, &node.name),
                },
            };
            why.map(|why| (node.name.clone(), why))
        })
        .collect()
}

/// Runs `words` on every node of this lab, all at once (within each hypervisor's
/// `parallel`), from its hypervisor. One report per node, in the order of `nodes`.
pub async fn exec(
    exec: &Executor,
    lab: &Lab,
    nodes: &[&LabNode],
    words: &[String],
    timeout: Duration,
) -> Vec<ExecReport> {
    let jobs: Vec<(&LabNode, Vec<String>)> = nodes.iter().map(|n| (*n, words.to_vec())).collect();
    exec_each(exec, lab, &jobs, timeout).await
}

/// Runs each node's own command (`jobs`), as [`exec`] runs one command on all.
pub async fn exec_each(
    exec: &Executor,
    lab: &Lab,
    jobs: &[(&LabNode, Vec<String>)],
    timeout: Duration,
) -> Vec<ExecReport> {
    let nodes: Vec<&LabNode> = jobs.iter().map(|(n, _)| *n).collect();
    let refused = refusals(exec, lab, &nodes).await;
    let refused = &refused;
    let jobs = jobs.iter().map(|(node, words)| async move {
        let mut report = ExecReport {
            node: node.name.clone(),
            hypervisor: node.hypervisor.clone(),
            status: None,
            stdout: String::new(),
            stderr: String::new(),
            error: None,
        };
        if let Some(why) = refused.get(&node.name) {
            report.error = Some(why.clone());
            return report;
        }
        let Some(address) = node.mgmt_address() else {
            report.error = Some("the node has no management address".to_owned());
            return report;
        };
        let cmd = reach::exec_on_node(node, &address, words, timeout);
        match exec.output(&node.hypervisor, &cmd).await {
            Ok(out) => {
                report.stdout = out.stdout;
                report.stderr = out.stderr;
                // `timeout` on the hypervisor ended it.
                if out.status == 124 {
                    report.error = Some(format!(
                        "did not finish within {} s (ended on the hypervisor)",
                        timeout.as_secs()
                    ));
                } else if let (255, Some(why)) =
                    (out.status, reach::unreachable_because(&report.stderr))
                {
                    report.error = Some(format!("unreachable: {why}"));
                } else {
                    report.status = Some(out.status);
                }
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    });
    lab_hv::run::join_all(jobs.collect()).await
}

/// Whether one node became ready.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WaitReport {
    pub node: String,
    pub hypervisor: String,
    pub ready: bool,
    /// How long it took, in seconds from the start of the wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// The last lines of its console, when it did not become ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<String>,
    /// Why it is not ready, when more is known than "not in time": the domain stopped, the
    /// hypervisor did not answer, the check itself is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn blank(node: &LabNode) -> WaitReport {
    WaitReport {
        node: node.name.clone(),
        hypervisor: node.hypervisor.clone(),
        ready: false,
        seconds: None,
        console: Vec::new(),
        error: None,
    }
}

/// Waits until every node of this lab is ready (`how`), at most `timeout`, checking on each
/// hypervisor (one command there for all its nodes); reports each node as it becomes ready.
pub async fn wait(
    exec: &Executor,
    lab: &Lab,
    nodes: &[&LabNode],
    how: &Readiness,
    timeout: Duration,
    events: Events<'_>,
) -> Vec<WaitReport> {
    let refused = refusals(exec, lab, nodes).await;
    let owned: Vec<&LabNode> = nodes
        .iter()
        .copied()
        .filter(|n| !refused.contains_key(&n.name))
        .collect();
    let mut waited = wait_owned(exec, lab, &owned, how, timeout, events)
        .await
        .into_iter();
    nodes
        .iter()
        .map(|n| match refused.get(&n.name) {
            Some(why) => WaitReport {
                error: Some(why.clone()),
                ..blank(n)
            },
            None => waited.next().expect("one report per owned node"),
        })
        .collect()
}

/// [`wait`] for nodes whose domains were just found to be this lab's.
async fn wait_owned(
    exec: &Executor,
    lab: &Lab,
    nodes: &[&LabNode],
    how: &Readiness,
    timeout: Duration,
    events: Events<'_>,
) -> Vec<WaitReport> {
    let reports: Mutex<HashMap<String, WaitReport>> = Mutex::new(HashMap::new());
    let hypervisors = lab.hypervisors_of(nodes);
    let jobs = hypervisors.iter().map(|hv| {
        let reports = &reports;
        async move {
            let check_error: Mutex<Option<String>> = Mutex::new(None);
            let check_error = &check_error;
            let mut targets = Vec::new();
            for node in nodes.iter().filter(|n| n.hypervisor == hv.name) {
                let address = node.mgmt_address();
                if address.is_none() && !matches!(how, Readiness::Console(_)) {
                    let mut r = blank(node);
                    r.error = Some("the node has no management address".to_owned());
                    reports
                        .lock()
                        .expect("reports")
                        .insert(node.name.clone(), r);
                    continue;
                }
                events(Event::Step {
                    node: node.name.clone(),
                    hypervisor: hv.name.clone(),
                    step: "waiting",
                });
                targets.push((node, address.unwrap_or_else(|| "-".to_owned())));
            }
            if targets.is_empty() {
                return;
            }
            let triples: Vec<(&str, &str, &str)> = targets
                .iter()
                .map(|(n, a)| (n.name.as_str(), n.domain.as_str(), a.as_str()))
                .collect();
            let cmd = reach::wait_nodes(how, timeout.as_secs(), &triples);
            let on_line = |line: &str| {
                let mut words = line.splitn(3, ' ');
                let (kind, node) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                if kind == "ERROR" {
                    *check_error.lock().expect("check error") =
                        Some(line.trim_start_matches("ERROR ").to_owned());
                    return;
                }
                let Some((n, _)) = targets.iter().find(|(n, _)| n.name == node) else {
                    return;
                };
                let mut all = reports.lock().expect("reports");
                let r = all.entry(n.name.clone()).or_insert_with(|| blank(n));
                match kind {
                    "READY" => {
                        r.ready = true;
                        r.seconds = words.next().and_then(|s| s.trim().parse().ok());
                        events(Event::Done {
                            node: n.name.clone(),
                            hypervisor: hv.name.clone(),
                            outcome: "ready".to_owned(),
                        });
                    }
                    "NOT-READY" => {
                        r.error = words.next().map(str::to_owned);
                        events(Event::Done {
                            node: n.name.clone(),
                            hypervisor: hv.name.clone(),
                            outcome: "not ready".to_owned(),
                        });
                    }
                    "LOG" => r.console.push(words.next().unwrap_or("").to_owned()),
                    _ => {}
                }
            };
            let result = exec.stream(&hv.name, &cmd, &on_line).await;
            let check_error = check_error.lock().expect("check error").clone();
            let mut all = reports.lock().expect("reports");
            for (n, _) in &targets {
                let r = all.entry(n.name.clone()).or_insert_with(|| blank(n));
                if r.ready {
                    continue;
                }
                match (&result, &check_error) {
                    (_, Some(why)) => r.error = Some(why.clone()),
                    (Err(e), None) => r.error = Some(e.to_string()),
                    (Ok(_), None) => {}
                }
            }
        }
    });
    lab_hv::run::join_all(jobs.collect()).await;
    let mut all = reports.into_inner().expect("reports");
    nodes
        .iter()
        .map(|n| all.remove(&n.name).unwrap_or_else(|| blank(n)))
        .collect()
}
