//! Ownership: the marks `lab` leaves on what it makes (ZFS user properties on clones, libvirt
//! metadata on domains), and the one judgement of whether something is this lab's.

use lab_exec::ExecError;
use lab_model::{Hypervisor, LabNode};

use crate::state::{Dataset, HostState, MarkerRead};

/// ZFS user properties `lab` records on every clone it makes, and on proto replicas.
pub mod prop {
    pub const LAB: &str = "lab:lab";
    pub const NODE: &str = "lab:node";
    /// The `lab.id` of the lab (its MACs and wire ports derive from it).
    pub const LAB_ID: &str = "lab:id";
    pub const OWNER: &str = "lab:owner";
    pub const ORIGIN: &str = "lab:origin";
    pub const ORIGIN_GUID: &str = "lab:origin-guid";
    pub const OVERLAY: &str = "lab:overlay-sha256";
    pub const CREATED: &str = "lab:created";
    /// The DHCP reservation `lab` added for the node to an operator's network
    /// ([`crate::dhcp::Claim`]); absent when it added none.
    pub const DHCP_HOST: &str = "lab:dhcp-host";
    /// `filling` from the clone until its tree is copied in, then `ready`.
    pub const STATE: &str = "lab:state";
    /// The value of [`STATE`] while a clone is being filled.
    pub const FILLING: &str = "filling";
    /// On a snapshot `lab snapshot` took of a clone: its name (the part after `@`), set on
    /// the snapshot itself (its other `lab:` properties are the clone's, inherited).
    pub const SNAPSHOT: &str = "lab:snapshot";
    /// On a proto replica: when the last sync succeeded (seconds since the epoch).
    pub const SYNCED: &str = "lab:synced";
    /// On a proto replica: the last sync's error, until a sync succeeds.
    pub const SYNC_ERROR: &str = "lab:sync-error";
}

/// The namespace of the libvirt metadata `lab` puts on domains it defines.
pub const DOMAIN_NS: &str = lab_model::LAB_XML_NS;

/// The libvirt metadata element that marks a domain as defined by `lab` for this lab and node.
pub fn domain_marker(lab: &str, node: &str) -> String {
    format!("<lab:lab xmlns:lab=\"{DOMAIN_NS}\" lab=\"{lab}\" node=\"{node}\"/>")
}

/// The metadata that marks a libvirt network as defined by `lab` for `lab`, with the digest
/// of the definition it was made from (so that a changed definition is seen).
pub fn network_marker(lab: &str, sha256: &str) -> String {
    format!("<lab:net xmlns:lab=\"{DOMAIN_NS}\" lab=\"{lab}\" sha256=\"{sha256}\"/>")
}

/// A lab's management network on one hypervisor, as far as ownership goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkFacts {
    Absent,
    /// This lab's: defined from the definition with digest `sha256`.
    Ours {
        active: bool,
        sha256: String,
    },
    /// A network of that name that this lab did not make, and why.
    Foreign(String),
}

/// Whether the network `name` on a hypervisor is this lab's.
pub fn network_facts(state: &HostState, name: &str, lab: &str) -> NetworkFacts {
    match state.networks.get(name) {
        None => NetworkFacts::Absent,
        Some(net) => match &net.marker {
            Some(m) if m.lab == lab => NetworkFacts::Ours {
                active: net.active,
                sha256: m.sha256.clone(),
            },
            Some(m) => NetworkFacts::Foreign(format!("network {name} belongs to lab `{}`", m.lab)),
            None => NetworkFacts::Foreign(format!("network {name} exists and was not made by lab")),
        },
    }
}

/// Why a dataset is not provably this lab's clone of this node, or `None` when it is: its
/// `lab:lab` and `lab:node` name this lab and node and its origin is a snapshot of the proto.
pub fn not_ours(ds: &Dataset, lab: &str, node: &LabNode, hv: &Hypervisor) -> Option<String> {
    let proto_prefix = format!("{}@", hv.proto);
    match (
        ds.prop(prop::LAB),
        ds.prop(prop::NODE),
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

/// Whose clones this run may remove or replace: this lab's, made by `me` (`user@controller`)
/// or by one of `also` (`--owner`). A lab of the same name that another user made from
/// another controller is someone else's lab, whatever their lab files say.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    pub me: String,
    pub also: Vec<String>,
}

impl Owners {
    /// Why the node's clone must not be removed or replaced by this run: its `lab:owner` is
    /// someone else. (A clone with no owner recorded is judged by lab and node alone.)
    pub fn refusal(&self, state: &HostState, node: &LabNode) -> Option<String> {
        let owner = state.datasets.get(&node.dataset)?.prop(prop::OWNER)?;
        if owner == self.me || self.also.iter().any(|o| o == owner) {
            return None;
        }
        Some(format!(
            "clone {} was made by {owner}, not by {}: another user's lab of the same name? \
             (`--owner {owner}` if it is yours to change)",
            node.dataset, self.me
        ))
    }
}

/// What a node's clone is, as far as ownership goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneFacts {
    Absent,
    /// This lab's clone of this node; `filling` when an interrupted run left it half-filled;
    /// `digest` is the overlay digest it was filled from.
    Ours {
        filling: bool,
        digest: Option<String>,
    },
    /// A dataset at the node's name that is not provably this lab's, and why.
    Foreign(String),
}

/// Whose a domain is, by `lab`'s marker in its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// No marker: `lab` did not define it (an operator's, or pre-provisioned).
    None,
    /// This lab's, for this node.
    Ours,
    /// Defined by `lab` for another lab (or another node), named here.
    Other(String),
}

/// The domain named after a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainFacts {
    Absent,
    /// `running`: its QEMU lives (running, paused, shutting down: see `Domain::active`).
    Present {
        running: bool,
        marker: Marker,
    },
}

impl DomainFacts {
    pub fn exists(&self) -> bool {
        matches!(self, DomainFacts::Present { .. })
    }
    pub fn running(&self) -> bool {
        matches!(self, DomainFacts::Present { running: true, .. })
    }
    pub fn ours(&self) -> bool {
        matches!(
            self,
            DomainFacts::Present {
                marker: Marker::Ours,
                ..
            }
        )
    }
    /// Why a day-two verb (exec, console, ssh, wait) must not reach the node through this
    /// domain, or `None` when `lab` defined it for this lab and node: another lab's node may
    /// answer at the address this lab file names.
    pub fn reach_refusal(&self, domain: &str, node: &str) -> Option<String> {
        match self {
            DomainFacts::Present {
                marker: Marker::Ours,
                ..
            } => None,
            DomainFacts::Absent => Some(format!(
                "domain {domain} is not defined (lab create --node {node})"
            )),
            DomainFacts::Present {
                marker: Marker::None,
                ..
            } => Some(format!(
                "domain {domain} was not defined by lab for this lab, so it is not reached"
            )),
            DomainFacts::Present {
                marker: Marker::Other(who),
                ..
            } => Some(format!(
                "domain {domain} belongs to {who}, not to this lab, so it is not reached"
            )),
        }
    }
    /// The other lab (and node) whose marker the domain carries, if it carries one.
    pub fn other(&self) -> Option<&str> {
        match self {
            DomainFacts::Present {
                marker: Marker::Other(who),
                ..
            } => Some(who),
            _ => None,
        }
    }
}

/// Whether the UDP ports the node's wires bind are free on its hypervisor. QEMU binds them with
/// `SO_REUSEADDR`, so a second binder succeeds and takes the frames: another lab with the same
/// `lab.id` (or `wire_port_base`) would silently cut this lab's links, or this lab its.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFacts {
    /// Free, or the node has no wires.
    Free,
    /// Bound by something on the host, these.
    Taken(Vec<u16>),
    /// The host's bound ports could not be read.
    Unknown,
}

impl WireFacts {
    /// Why the node's domain must not be started, when it must not (a running domain holds
    /// its own ports: only a start that binds them anew asks).
    pub fn refusal(&self) -> Option<String> {
        match self {
            WireFacts::Free => None,
            WireFacts::Taken(ports) => Some(format!(
                "UDP port(s) {} of its wires are already bound on the hypervisor by something else \
                 (another lab with this lab id or `wire_port_base`?): started now, its links \
                 and that one's would take each other's frames; give one of the labs another \
                 `lab.id` or `lab.wire_port_base`",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            WireFacts::Unknown => Some(
                "could not read which UDP ports are bound on the hypervisor, so its wires' ports \
                 are not known to be free"
                    .to_owned(),
            ),
        }
    }
}

/// Everything create and destroy need to know about one node before they decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub clone: CloneFacts,
    pub domain: DomainFacts,
    pub wires: WireFacts,
}

/// A node's facts, from its hypervisor's probed state alone (the probe read every marker).
/// A hypervisor whose libvirt could not be read has no facts: nothing is decided there.
pub fn inspect(
    hv: &Hypervisor,
    lab: &str,
    node: &LabNode,
    state: &HostState,
) -> Result<NodeFacts, ExecError> {
    if let Some(why) = &state.libvirt_error {
        return Err(ExecError::BadAnswer {
            host: hv.name.clone(),
            command: "virsh list".to_owned(),
            message: why.clone(),
        });
    }
    let clone = match state.datasets.get(&node.dataset) {
        None => CloneFacts::Absent,
        Some(ds) => match not_ours(ds, lab, node, hv) {
            Some(why) => CloneFacts::Foreign(why),
            None => CloneFacts::Ours {
                filling: ds.prop(prop::STATE) == Some(prop::FILLING),
                digest: ds.prop(prop::OVERLAY).map(str::to_owned),
            },
        },
    };
    let domain = match state.domains.get(&node.domain) {
        None => DomainFacts::Absent,
        Some(d) => DomainFacts::Present {
            running: d.active(),
            marker: match &d.marker {
                MarkerRead::None => Marker::None,
                MarkerRead::Some(m) if m.lab == lab && m.node == node.name => Marker::Ours,
                MarkerRead::Some(m) => Marker::Other(format!("lab `{}`, node `{}`", m.lab, m.node)),
                // Whose it is is unknown: it is treated as someone else's, never touched.
                MarkerRead::Unreadable => Marker::Other(
                    "someone lab cannot tell (its marker could not be read)".to_owned(),
                ),
            },
        },
    };
    let ports: Vec<u16> = node
        .interfaces
        .iter()
        .filter_map(|i| i.wire.map(|w| w.local_port))
        .collect();
    let wires = match &state.udp_ports {
        _ if ports.is_empty() => WireFacts::Free,
        None => WireFacts::Unknown,
        Some(bound) => {
            let taken: Vec<u16> = ports.into_iter().filter(|p| bound.contains(p)).collect();
            if taken.is_empty() {
                WireFacts::Free
            } else {
                WireFacts::Taken(taken)
            }
        }
    };
    Ok(NodeFacts {
        clone,
        domain,
        wires,
    })
}
