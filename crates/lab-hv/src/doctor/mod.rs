//! `lab doctor`: what a hypervisor needs before a lab's first create, asked in one round trip
//! per hypervisor, all at once, and judged here: ok, warn or fail, each failure with its fix.
//!
//! The underlay is checked for real: for every pair of hypervisors a link crosses, the far
//! end listens on the UDP port its end of the wire will use while the near end sends to it,
//! both inside their own probe (the probes run at the same time, so no extra round trip).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use lab_exec::{Cmd, Executor};
use lab_model::{Hypervisor, Lab, LabNode};

mod facts;
mod judge;

const SCRIPT: &str = include_str!("doctor.sh");

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check on one hypervisor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a warning or a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check of one hypervisor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostDoctor {
    pub host: String,
    pub checks: Vec<Check>,
}

impl HostDoctor {
    pub fn worst(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DoctorReport {
    pub hypervisors: Vec<HostDoctor>,
}

impl DoctorReport {
    pub fn failed(&self) -> usize {
        self.hypervisors
            .iter()
            .flat_map(|h| &h.checks)
            .filter(|c| c.verdict == Verdict::Fail)
            .count()
    }
}

/// One UDP check of the underlay, as the probe script takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) listen: bool,
    pub(crate) addr: Ipv4Addr,
    pub(crate) port: u16,
    pub(crate) message: String,
}

/// The underlay checks of a lab: per hypervisor, what it listens for and what it sends, one
/// per ordered pair of hypervisors that a link crosses (the first such wire).
fn underlay_probes(
    lab: &Lab,
    hosts: &[&Hypervisor],
    run: &str,
) -> BTreeMap<String, Vec<(Probe, String)>> {
    let mut probes: BTreeMap<String, Vec<(Probe, String)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let on = |name: &str| lab.nodes.iter().find(|n| n.name == name);
    for node in &lab.nodes {
        for i in &node.interfaces {
            let (Some(wire), Some(peer)) = (i.wire, i.peer.as_deref().and_then(on)) else {
                continue;
            };
            let (here, there) = (&node.hypervisor, &peer.hypervisor);
            if here == there
                || !hosts.iter().any(|h| &h.name == here)
                || !hosts.iter().any(|h| &h.name == there)
                || !seen.insert((there.clone(), here.clone()))
            {
                continue;
            }
            // `there` sends to this end of the wire, where `here` listens.
            let message = format!("lab-doctor {run} {there} {here}");
            let probe = |listen| Probe {
                listen,
                addr: wire.local_address,
                port: wire.local_port,
                message: message.clone(),
            };
            probes
                .entry(here.clone())
                .or_default()
                .push((probe(true), there.clone()));
            probes
                .entry(there.clone())
                .or_default()
                .push((probe(false), here.clone()));
        }
    }
    probes
}

/// The probe command for `hv`.
fn command(hv: &Hypervisor, nonce: &str, probes: &[(Probe, String)]) -> Cmd {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        SCRIPT.into(),
        "lab-doctor".into(),
        nonce.into(),
        hv.pool.clone(),
        hv.proto.clone(),
        hv.mgmt
            .network
            .clone()
            .filter(|_| hv.mgmt.owned)
            .unwrap_or_else(|| "-".into()),
    ];
    for (p, _) in probes {
        argv.push(if p.listen { "listen" } else { "send" }.into());
        argv.push(p.addr.to_string());
        argv.push(p.port.to_string());
        argv.push(p.message.clone());
    }
    Cmd::query(argv).timeout(Duration::from_secs(60)).once()
}

/// Checks the hypervisors of `nodes` (every hypervisor of the lab when it has no nodes).
pub async fn doctor(exec: &Executor, lab: &Lab, nodes: &[&LabNode]) -> DoctorReport {
    let hosts: Vec<&Hypervisor> = if lab.nodes.is_empty() {
        lab.hypervisors.iter().collect()
    } else {
        lab.hypervisors_of(nodes)
    };
    let run = crate::state::nonce();
    let probes = underlay_probes(lab, &hosts, &run);
    let looks: Vec<_> = hosts.iter().map(|hv| {
        let nonce = crate::state::nonce();
        let mine = probes.get(&hv.name).cloned().unwrap_or_default();
        let cmd = command(hv, &nonce, &mine);
        async move {
            let checks = match exec.output(&hv.name, &cmd).await {
                Ok(out) => judge::judge(lab, hv, &facts::parse(&out.stdout, &nonce), &mine),
                Err(e) => vec![Check {
                    check: "ssh".into(),
                    verdict: Verdict::Fail,
                    detail: e.to_string(),
                    fix: Some(format!(
                        "make `ssh {}` work from here without a password (key, known_hosts; the \
                         hypervisor's `ssh:` in the lab file)",
                        hv.ssh
                    )),
                }],
            };
            HostDoctor {
                host: hv.name.clone(),
                checks,
            }
        }
    }).collect();
    DoctorReport {
        hypervisors: crate::run::join_all(looks).await,
    }
}
