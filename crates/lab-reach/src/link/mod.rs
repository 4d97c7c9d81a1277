//! Links on day two: `lab link` (every link with both ends' state), `lab link down|up` (the
//! carrier of both ends) and `lab capture` (one end's frames as a pcap stream). Each end is
//! worked on by the hypervisor that holds it, and only through a domain `lab` defined for
//! this lab and node.

use std::collections::HashMap;

use lab_exec::Executor;
use lab_hv::own::inspect;
use lab_hv::plan::Work;
use lab_hv::run::failed;
use lab_hv::state::Detail;
use lab_hv::{Events, NodeReport, Outcome};
use lab_model::impair::Impairment;
use lab_model::{Interface, InterfaceKind, Lab, LabNode};

mod capture;

pub use capture::{CaptureAsk, CaptureError, CaptureReport, capture};

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
    // With NICs: one `create` plugged in through QEMU's monitor is set through it too.
    let states: lab_hv::run::States =
        lab_hv::run::probe_all(exec, &lab.hypervisors_of(&nodes), Detail::Nics)
            .await
            .into_iter()
            .map(|(k, v)| (k, v.map(std::sync::Arc::new)))
            .collect();
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
    // Both ends or neither: a link down on one side only is no state a user asked for.
    let refused = crate::refusals_in(lab, &unique, &states);
    if !refused.is_empty() {
        return neither(&unique, &refused, events);
    }
    lab_hv::plan::each_hypervisor(
        exec,
        lab,
        &unique,
        &states,
        events,
        |hv, node, state| {
            // Refused above when it could not be inspected or is not this lab's.
            let facts = match inspect(hv, &lab.name, node, state) {
                Ok(f) => f,
                Err(e) => return Work::Ends(Box::new(failed(node, "inspect", &e, false))),
            };
            let running = facts.domain.running();
            let steps = macs_of(node)
                .into_iter()
                .flat_map(|mac| {
                    let key = format!("{}/{}", node.domain, mac.to_ascii_lowercase());
                    let hot = state.hot_nics.contains(&key);
                    lab_hv::link::set_link(node, mac, up, running, hot)
                })
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

/// `lab`'s own binary, which `lab link set` starts on a hypervisor as the relay of an
/// impaired direction: its bytes, their sha256 (hex) and the machine it runs on (`uname -m`).
pub struct Relay {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub arch: String,
}

/// Impairs, or with `None` (or an impairment of nothing) restores, the frames each end in
/// `directions` sends onto its link, on that end's hypervisor, all at once. One report per
/// end; an end whose domain is not this lab's node is skipped.
pub async fn impair(
    exec: &Executor,
    lab: &Lab,
    directions: &[(End<'_>, Option<Impairment>)],
    relay: &Relay,
    events: Events<'_>,
) -> Vec<NodeReport> {
    let nodes: Vec<&LabNode> = directions.iter().map(|(e, _)| e.node).collect();
    let refused = crate::refusals(exec, lab, &nodes).await;
    if !refused.is_empty() {
        return neither(&nodes, &refused, events);
    }
    let jobs = directions.iter().map(|(end, how)| async move {
        let node = end.node;
        let hv = lab.hypervisor_of(node);
        let how = how.filter(|h| !h.is_none());
        let wire = end.interface.wire.expect("a link's end has a wire");
        let mut cmd = lab_hv::link::impair(
            hv,
            &lab.name,
            node,
            &end.interface.mac,
            &wire,
            how.as_ref()
                .map(|h| (h, relay.sha256.as_str(), relay.arch.as_str())),
        );
        if how.is_some() {
            cmd = cmd.stdin(relay.bytes.clone());
        }
        let before = exec.recorded().len();
        let far = match (&end.interface.peer, &end.interface.peer_interface) {
            (Some(p), Some(i)) => format!("{p}:{i}"),
            _ => "its peer".to_owned(),
        };
        let mut r = match exec.run(&hv.name, &cmd).await {
            Err(e) => failed(node, "impair", &e, false),
            Ok(_) => NodeReport {
                note: Some(match how {
                    Some(h) => format!("{} -> {far}: {h}", end.interface.name),
                    None => format!("{} -> {far}: not impaired", end.interface.name),
                }),
                ..NodeReport::new(node, Outcome::Done)
            },
        };
        if !exec.is_live() {
            r.commands = exec.recorded()[before..]
                .iter()
                .map(|c| c.line.clone())
                .collect();
        }
        lab_hv::run::report_done(events, &r);
        r
    });
    lab_hv::run::at_once_when_live(exec, jobs.collect()).await
}

/// The directions the lab file impairs (`impair:` on a link) among `nodes`' ends: what
/// `lab create` and `lab start` apply to the nodes they started.
pub fn declared<'a>(nodes: &[&'a LabNode]) -> Vec<(End<'a>, Option<Impairment>)> {
    nodes
        .iter()
        .flat_map(|node| {
            node.links()
                .filter(|i| i.impair.is_some())
                .map(|i| (End { node, interface: i }, i.impair))
        })
        .collect()
}

/// Every node skipped, because of `refused` (why some cannot be changed, by node), so that
/// no link is changed on one end only.
fn neither(
    nodes: &[&LabNode],
    refused: &HashMap<String, String>,
    events: Events<'_>,
) -> Vec<NodeReport> {
    let mut why: Vec<String> = refused.iter().map(|(n, w)| format!("{n}: {w}")).collect();
    why.sort();
    nodes
        .iter()
        .map(|node| {
            let r = NodeReport::new(
                node,
                Outcome::Skipped {
                    reason: format!("neither end is changed: {}", why.join("; ")),
                },
            );
            lab_hv::run::report_done(events, &r);
            r
        })
        .collect()
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
    /// How the frames this end sends are impaired (`lab link set`), when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impaired: Option<Impairment>,
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
    let hypervisors = lab.hypervisors_of(&with_peers(lab, nodes));
    let states = lab_hv::run::probe_all(exec, &hypervisors, Detail::Nics).await;
    let end_state = |node: &LabNode, i: &Interface| {
        let hv = lab.hypervisor_of(node);
        let wire = i.wire.expect("a link's interface has a wire");
        let impaired = match states.get(hv.name.as_str()) {
            Some(Ok(state)) => state
                .impairments
                .get(&format!("{}/{}", node.domain, i.mac.to_ascii_lowercase()))
                .copied(),
            _ => None,
        };
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
            impaired,
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

/// `nodes` and the far ends of their links: what `lab link` reads for them.
pub fn with_peers<'a>(lab: &'a Lab, nodes: &[&'a LabNode]) -> Vec<&'a LabNode> {
    let mut all: Vec<&LabNode> = nodes.to_vec();
    for node in nodes {
        for peer in node.links().filter_map(|i| i.peer.as_deref()) {
            if let Some(p) = lab.node(peer)
                && !all.iter().any(|n| n.name == p.name)
            {
                all.push(p);
            }
        }
    }
    all
}
