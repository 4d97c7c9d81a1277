//! Links on day two: `lab link` (every link with both ends' state), `lab link down|up` (the
//! carrier of both ends) and `lab capture` (one end's frames as a pcap stream). Each end is
//! worked on by the hypervisor that holds it, and only through a domain `lab` defined for
//! this lab and node.

use std::future::Future;
use std::time::{Duration, Instant};

use lab_exec::Executor;
use lab_hv::own::inspect;
use lab_hv::plan::Work;
use lab_hv::run::failed;
use lab_hv::state::Detail;
use lab_hv::{Events, NodeReport, Outcome};
use lab_model::{Interface, InterfaceKind, Lab, LabNode};

use crate::pcap::Frames;

/// One end of a link: a node and its interface (`NODE:IFACE`).
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub node: &'a LabNode,
    pub interface: &'a Interface,
}

impl End<'_> {
    /// `node:iface`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.node.name, self.interface.name)
    }
}

/// `NODE:IFACE`, or a node and an interface apart: the end of a link it names.
pub fn end<'a>(lab: &'a Lab, node: &str, interface: &str) -> Result<End<'a>, String> {
    let n = lab.node(node).ok_or_else(|| {
        format!("no node `{node}` in lab {}", lab.name)
            + &lab_model::Hint::closest(node, lab.nodes.iter().map(|n| n.name.as_str())).to_string()
    })?;
    let links = || {
        n.interfaces
            .iter()
            .filter(|i| i.kind != InterfaceKind::Mgmt)
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
    };
    let i = n
        .interfaces
        .iter()
        .find(|i| i.name == interface)
        .ok_or_else(|| {
            format!(
                "node {node} has no interface `{interface}` (its links: {})",
                none_or(&links())
            )
        })?;
    if i.wire.is_none() {
        return Err(format!(
            "{node}:{interface} is the management interface, not a link (its links: {})",
            none_or(&links())
        ));
    }
    Ok(End {
        node: n,
        interface: i,
    })
}

fn none_or(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// `NODE:IFACE` split at its last colon.
pub fn split_end(spec: &str) -> Result<(&str, &str), String> {
    spec.rsplit_once(':')
        .filter(|(n, i)| !n.is_empty() && !i.is_empty())
        .ok_or_else(|| format!("`{spec}` is not NODE:IFACE (e.g. r1:eth1)"))
}

/// Both ends of the link `a` names; `b`, when given, must be its other end.
pub fn link_of<'a>(lab: &'a Lab, a: &str, b: Option<&str>) -> Result<[End<'a>; 2], String> {
    let (node, interface) = split_end(a)?;
    let near = end(lab, node, interface)?;
    let (peer, peer_if) = match (&near.interface.peer, &near.interface.peer_interface) {
        (Some(p), Some(i)) => (p.as_str(), i.as_str()),
        _ => return Err(format!("{a} is not a link's end")),
    };
    let far = end(lab, peer, peer_if)?;
    if let Some(b) = b {
        let (node, interface) = split_end(b)?;
        if (node, interface) != (peer, peer_if) {
            return Err(format!(
                "{a} and {b} are not the two ends of one link: {a} is wired to {}",
                far.name()
            ));
        }
    }
    Ok([near, far])
}

/// Takes the links of `ends` down or up: each end's NIC in its running domain (the guest
/// loses or gets back its carrier) and in its definition (a restart keeps it). One plan per
/// hypervisor; an end whose domain `lab` did not define for its node is skipped.
pub async fn set_state(
    exec: &Executor,
    lab: &Lab,
    ends: &[End<'_>],
    up: bool,
    events: Events<'_>,
) -> Vec<NodeReport> {
    let nodes: Vec<&LabNode> = ends.iter().map(|e| e.node).collect();
    let states = lab_hv::run::probe_nodes(exec, lab, &nodes).await;
    let macs_of = |node: &LabNode| -> Vec<&str> {
        ends.iter()
            .filter(|e| e.node.name == node.name)
            .map(|e| e.interface.mac.as_str())
            .collect()
    };
    let names_of = |node: &LabNode| -> String {
        ends.iter()
            .filter(|e| e.node.name == node.name)
            .map(|e| e.interface.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A node may hold both ends of a list of links: one report per node.
    let mut unique: Vec<&LabNode> = Vec::new();
    for n in nodes {
        if !unique.iter().any(|u| u.name == n.name) {
            unique.push(n);
        }
    }
    lab_hv::plan::each_hypervisor(
        exec,
        lab,
        &unique,
        &states,
        events,
        |hv, node, state| {
            let facts = match inspect(hv, &lab.name, node, state) {
                Ok(f) => f,
                Err(e) => return Work::Ends(Box::new(failed(node, "inspect", &e, false))),
            };
            if let Some(why) = facts.domain.reach_refusal(&node.domain, &node.name) {
                return Work::Ends(Box::new(NodeReport::new(
                    node,
                    Outcome::Skipped { reason: why },
                )));
            }
            let running = facts.domain.running();
            let steps = macs_of(node)
                .into_iter()
                .flat_map(|mac| lab_hv::link::set_link(node, mac, up, running))
                .collect();
            Work::Steps(steps, running)
        },
        |node, running, result| match result {
            Err((step, e)) => failed(node, step, &e, false),
            Ok(_) => NodeReport {
                note: Some(format!(
                    "{} {}{}",
                    names_of(node),
                    if up { "up" } else { "down" },
                    if running {
                        ""
                    } else {
                        " (the domain is not running: from its next start)"
                    }
                )),
                ..NodeReport::new(node, Outcome::Done)
            },
        },
    )
    .await
}

/// One end of a link as `lab link` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndState {
    pub node: String,
    pub interface: String,
    pub hypervisor: String,
    pub mac: String,
    /// The UDP port this end's QEMU binds, on `address`.
    pub address: String,
    pub port: u16,
    /// `up` or `down`; `absent` when the node's domain is not there, `unknown` when its
    /// hypervisor could not be read, `foreign` when the domain is not this lab's node.
    pub state: String,
}

/// A link of the lab file with both its ends.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkState {
    /// Its position in the lab file's `links`, from 0.
    pub link: usize,
    pub ends: [EndState; 2],
}

/// Every link of the lab whose ends are among `nodes`, each end's state read from its
/// hypervisor (one probe each, with the domains' NICs).
pub async fn links(exec: &Executor, lab: &Lab, nodes: &[&LabNode]) -> Vec<LinkState> {
    let hypervisors = lab.hypervisors_of(nodes);
    let states = lab_hv::run::probe_all(exec, &hypervisors, Detail::Nics).await;
    let end_state = |node: &LabNode, i: &Interface| {
        let hv = lab.hypervisor_of(node);
        let wire = i.wire.expect("a link's interface has a wire");
        let state = match states.get(hv.name.as_str()) {
            None | Some(Err(_)) => "unknown".to_owned(),
            Some(Ok(state)) => match inspect(hv, &lab.name, node, state) {
                Err(_) => "unknown".to_owned(),
                Ok(facts) if !facts.domain.exists() => "absent".to_owned(),
                Ok(facts) if !facts.domain.ours() => "foreign".to_owned(),
                Ok(_) => {
                    let down = state
                        .links_down
                        .get(&node.domain)
                        .is_some_and(|d| d.contains(&i.mac.to_ascii_lowercase()));
                    if down { "down" } else { "up" }.to_owned()
                }
            },
        };
        EndState {
            node: node.name.clone(),
            interface: i.name.clone(),
            hypervisor: hv.name.clone(),
            mac: i.mac.clone(),
            address: wire.local_address.to_string(),
            port: wire.local_port,
            state,
        }
    };
    let mut out: Vec<LinkState> = Vec::new();
    for node in nodes {
        for i in node.interfaces.iter().filter(|i| i.wire.is_some()) {
            let (Some(link), Some(peer), Some(peer_if)) = (i.link, &i.peer, &i.peer_interface)
            else {
                continue;
            };
            if out.iter().any(|l| l.link == link) {
                continue;
            }
            let Ok(far) = end(lab, peer, peer_if) else {
                continue;
            };
            out.push(LinkState {
                link,
                ends: [end_state(node, i), end_state(far.node, far.interface)],
            });
        }
    }
    out.sort_by_key(|l| l.link);
    out
}

/// What `lab capture` is asked for.
#[derive(Debug, Clone, Default)]
pub struct CaptureAsk {
    /// A tcpdump filter expression (its words), applied on the hypervisor.
    pub filter: Vec<String>,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// What a capture got.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureReport {
    pub node: String,
    pub interface: String,
    pub hypervisor: String,
    pub frames: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Why it ended: `count`, `duration`, `stopped` (by the caller: a signal, a closed
    /// output) or `ended` (on the hypervisor).
    pub ended: &'static str,
}

/// A capture that could not be made or failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("node {node} on {hypervisor}: {why}")]
    Refused {
        node: String,
        hypervisor: String,
        why: String,
    },
    #[error(transparent)]
    Exec(#[from] lab_exec::ExecError),
    #[error("capture on {end} at {hypervisor} failed (exit {status}): {stderr}")]
    Failed {
        end: String,
        hypervisor: String,
        status: i32,
        stderr: String,
    },
}

/// Captures the frames of `end`'s NIC on its hypervisor and hands the pcap stream to `sink`
/// as it comes (which returns false when it cannot take more: its reader went away), until
/// `ask`'s count or duration, or `stop`. The capture is taken away on the hypervisor before
/// this returns (or, should the connection be cut, by the hypervisor's side alone).
pub async fn capture(
    exec: &Executor,
    lab: &Lab,
    end: End<'_>,
    ask: &CaptureAsk,
    sink: &mut (dyn FnMut(&[u8]) -> bool + Send),
    stop: impl Future<Output = ()>,
) -> Result<CaptureReport, CaptureError> {
    let node = end.node;
    let hv = lab.hypervisor_of(node);
    if let Some(why) = crate::refusals(exec, lab, &[node]).await.remove(&node.name) {
        return Err(CaptureError::Refused {
            node: node.name.clone(),
            hypervisor: hv.name.clone(),
            why,
        });
    }
    // Without a duration, a day at most: the hypervisor's own bound, should the controller
    // vanish without closing the connection.
    let limit = ask
        .duration
        .map_or(Duration::from_secs(86_400), |d| d + Duration::from_secs(60));
    let cmd = lab_hv::link::capture(node, &end.interface.mac, &ask.filter, limit);
    let mut frames = Frames::new(ask.count);
    let mut why: &'static str = "ended";
    let started = Instant::now();
    let mut take = |chunk: &[u8]| {
        let n = frames.feed(chunk);
        if !sink(&chunk[..n]) {
            why = "stopped";
            return false;
        }
        if frames.full() {
            why = "count";
            return false;
        }
        true
    };
    let (mut timed_out, mut stopped) = (false, false);
    let until = async {
        match ask.duration {
            Some(d) => tokio::select! {
                () = tokio::time::sleep(d) => timed_out = true,
                () = stop => stopped = true,
            },
            None => {
                stop.await;
                stopped = true;
            }
        }
    };
    let out = exec.tap(&hv.name, &cmd, &mut take, until).await?;
    let seconds = started.elapsed().as_secs_f64();
    if timed_out {
        why = "duration";
    } else if stopped {
        why = "stopped";
    }
    // Ended on the hypervisor, not by anything here: a failure says why.
    if why == "ended" && out.status != 0 {
        return Err(CaptureError::Failed {
            end: end.name(),
            hypervisor: hv.name.clone(),
            status: out.status,
            stderr: out.stderr.trim().to_owned(),
        });
    }
    Ok(CaptureReport {
        node: node.name.clone(),
        interface: end.interface.name.clone(),
        hypervisor: hv.name.clone(),
        frames: frames.frames,
        bytes: frames.bytes,
        seconds: (seconds * 10.0).round() / 10.0,
        ended: why,
    })
}
