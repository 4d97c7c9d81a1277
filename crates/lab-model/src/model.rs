//! The typed lab: schema structs, defaults, cross-references and derived addresses.
//!
//! [`Lab::from_tree`] is the only way to build a [`Lab`], and it validates everything a later
//! step relies on: names, references between sections, uniqueness of ids and datasets. A `Lab`
//! that exists is safe to turn into paths and commands.
//!
//! Long: every section's typed form and the one `from_tree` that fills them all, side by side.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::error::{Hint, ModelError};
use crate::links::{finish_interfaces, resolve_links};
use crate::names;
use crate::proto::resolve_proto;
use crate::resolve::{
    apply_defaults, check_name, name_ok, no_collision, path_of, resolve_hypervisor, resolve_node,
    schema_error, typed, unique_within,
};
use crate::schema::{FileSchema, LAB_DERIVED};
use crate::tree::{Origin, Tree, relative_to};

/// How `lab proto sync` moves snapshots to the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `ssh source zfs send | ssh target zfs recv`, through the controller: no trust between
    /// hypervisors needed.
    #[default]
    Controller,
    /// The source runs `zfs send | ssh target zfs recv` itself.
    Direct,
    /// Each target's zrepl pulls: `zrepl signal wakeup JOB`.
    Zrepl,
}

/// The proto image's lifecycle: where it is updated and how it is replicated and pruned.
/// The dataset on the source is the source hypervisor's `proto`; each other hypervisor keeps
/// its replica at its own `proto`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Proto {
    /// The hypervisor where operators update the proto.
    pub source: String,
    /// The proto VM's domain on the source: no release while it runs.
    pub domain: Option<String>,
    /// The release snapshots (replicated and pruned): a glob.
    pub pattern: String,
    /// How many release snapshots prune keeps on each hypervisor.
    pub keep: u32,
    pub transport: Transport,
    pub zrepl_job: Option<String>,
    /// Send compressed blocks as they are on disk (`zfs send -c`) where both ends can.
    pub compressed: bool,
    /// At most this many targets receive at once.
    pub parallel: u32,
    /// A rate limit per stream (`pv -L` / `mbuffer -r` syntax: `50M`), if any.
    pub bwlimit: Option<String>,
    /// How long `sync` waits for zrepl to deliver the newest release to a target, in seconds.
    pub zrepl_wait: u64,
}

// ---------------------------------------------------------------------------------------------
// The resolved model.

/// How a proto image is stored on a hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// A ZFS filesystem: the clone is mounted at its mountpoint.
    #[default]
    Dataset,
    /// A ZFS volume: the clone's partition `partition` is mounted in the staging directory.
    Zvol,
}

/// Which proto snapshot to clone: an exact name or the newest one matching a glob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum SnapshotSpec {
    Exact(String),
    Newest(String),
}

impl SnapshotSpec {
    pub(crate) fn parse(s: &str) -> Self {
        if s.contains(['*', '?']) {
            Self::Newest(s.to_owned())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    /// The setting as written: the exact name or the pattern.
    pub fn text(&self) -> &str {
        match self {
            Self::Exact(s) | Self::Newest(s) => s,
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(s) => s == name,
            Self::Newest(p) => names::glob_match(p, name),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Hypervisor {
    pub name: String,
    pub id: u8,
    /// The ssh destination: an ssh config alias or `[user@]host[:port]`.
    pub ssh: String,
    /// The ssh destination other hypervisors use for this one (the `direct` proto transport),
    /// where the controller's aliases do not exist; `ssh` unless set.
    pub peer_ssh: String,
    pub pool: String,
    /// The proto dataset (filesystem or volume) clones are made from.
    pub proto: String,
    pub snapshot: SnapshotSpec,
    pub storage: Storage,
    /// The partition of a zvol that holds the root filesystem.
    pub partition: Option<u32>,
    pub staging: String,
    /// Where the per-lab lock files live (a tmpfs, so a reboot clears them).
    pub lock_dir: String,
    /// How many nodes this hypervisor works on at once.
    pub parallel: u32,
    /// `create` starts this hypervisor's nodes this many at a time (`None`: all at once).
    pub start_batch: Option<u32>,
    /// Seconds between two batches of starts.
    pub start_interval: u64,
    /// The parent dataset of the clones.
    pub clones: String,
    pub mgmt_ipv4: Option<Ipv4Net>,
    pub mgmt_ipv6: Option<Ipv6Net>,
    pub mgmt: MgmtNetwork,
    /// The address other hypervisors reach this one's wires at.
    pub underlay: Option<Ipv4Addr>,
    pub vars: Map<String, Json>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LabNode {
    pub name: String,
    pub hostname: String,
    pub hypervisor: String,
    pub id: u8,
    /// The libvirt domain: the node's name, or `<lab>-<name>` with `lab.prefix_names`.
    pub domain: String,
    /// The clone: `<hypervisor.clones>/<domain>` unless set.
    pub dataset: String,
    /// Where the clone's root filesystem is mounted on the hypervisor:
    /// `<hypervisor.staging>/<lab>/<name>` (the lab in the path keeps labs apart).
    pub staging: String,
    /// The management interface's MAC (`interfaces[0].mac`).
    pub mac: String,
    pub mgmt_ipv4: Option<Ipv4Net>,
    pub mgmt_ipv6: Option<Ipv6Net>,
    /// Management first (`eth0`), then one per link in link order (`eth1`, `eth2` ...).
    pub interfaces: Vec<Interface>,
    /// How to log into the node (`lab ssh`, `lab exec`, inventories).
    pub ssh: NodeSsh,
    /// Nodes of its hypervisor started before it.
    pub start_after: Vec<String>,
    pub vars: Map<String, Json>,
}

/// How to log into a node over ssh, at its management address.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeSsh {
    /// Default `root`.
    pub user: String,
    /// ssh options, each `Key=Value` (`-o Key=Value`).
    pub options: Vec<String>,
}

impl LabNode {
    /// The address `lab` and other tools reach the node at: its management IPv4 address.
    pub fn mgmt_address(&self) -> Option<String> {
        self.mgmt_ipv4.map(|a| a.addr().to_string())
    }

    /// The link interfaces (all but management).
    pub fn links(&self) -> impl Iterator<Item = &Interface> {
        self.interfaces
            .iter()
            .filter(|i| i.kind == InterfaceKind::Link)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceKind {
    /// `eth0`, on the hypervisor's management network.
    Mgmt,
    /// One end of a point-to-point link.
    Link,
}

/// One NIC of a node: what the domain definition and the guest's configuration both name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Interface {
    /// `eth0` for management, then `eth1`, `eth2` ... in the order links are listed.
    pub name: String,
    pub kind: InterfaceKind,
    /// Derived (`52:54:<interface>:<lab>:<hypervisor>:<node>`) unless set in the lab file.
    pub mac: String,
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
    /// The link's other end (links only).
    pub peer: Option<String>,
    pub peer_interface: Option<String>,
    pub peer_ipv4: Option<Ipv4Addr>,
    pub peer_ipv6: Option<Ipv6Addr>,
    /// The link's position in the lab file, from 0 (links only).
    pub link: Option<usize>,
    /// How the link's frames travel (links only).
    pub wire: Option<Wire>,
    /// How the frames this end sends are impaired, as the lab file declares (links only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impair: Option<crate::impair::Impairment>,
}

/// A link's wire: a UDP tunnel between the two NICs' QEMU processes (libvirt's
/// `<interface type='udp'>`), on one hypervisor (loopback) or across two (underlay addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Wire {
    pub local_address: Ipv4Addr,
    pub local_port: u16,
    pub remote_address: Ipv4Addr,
    pub remote_port: u16,
}

impl Wire {
    /// `LOCAL_ADDRESS:PORT>REMOTE_ADDRESS:PORT`: how `lab` says a wire, in its probe's answer
    /// and in reports.
    pub fn text(&self) -> String {
        format!(
            "{}:{}>{}:{}",
            self.local_address, self.local_port, self.remote_address, self.remote_port
        )
    }
}

/// How a hypervisor's management network is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MgmtMode {
    /// lab's own network, no forwarding; DHCP from the plan.
    Isolated,
    /// lab's own network, NATed to the outside; DHCP from the plan.
    Nat,
    /// lab's own network forwarding onto an existing host bridge (DHCP is the site's).
    Bridge,
    /// An operator's libvirt network: used, never changed.
    Existing,
    /// No management NIC.
    None,
}

/// The management network a hypervisor's nodes attach to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MgmtNetwork {
    pub mode: MgmtMode,
    /// The libvirt network of the management NICs (`lab-<lab>` when lab owns it).
    pub network: Option<String>,
    /// Whether lab defines it (and removes it with the lab's last node there).
    pub owned: bool,
    /// The Linux bridge: lab's own (`lab<id>`), or in mode `bridge` the host's.
    pub bridge: Option<String>,
    /// The hypervisor's address on a network lab serves DHCP on: the prefix's last host.
    pub gateway_ipv4: Option<Ipv4Net>,
    /// Mode `existing`: `lab` adds each node's `<host mac name ip>` to the operator's network
    /// (and removes exactly those it added).
    pub reserve: bool,
    /// The network's DHCP answers each node with its planned management address: lab's own
    /// network (modes isolated and nat), or an operator's with `reserve`.
    pub dhcp: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Overlay {
    pub name: String,
    pub dir: PathBuf,
}

/// A loaded, merged and validated lab.
#[derive(Debug, Clone)]
pub struct Lab {
    pub name: String,
    pub id: u8,
    pub p2p_ipv4: Option<Ipv4Net>,
    pub p2p_ipv6: Option<Ipv6Net>,
    /// The first UDP port of the lab's wires.
    pub wire_port_base: u16,
    pub vars: Map<String, Json>,
    pub hypervisors: Vec<Hypervisor>,
    pub nodes: Vec<LabNode>,
    pub overlays: Vec<Overlay>,
    pub default_overlay: Option<String>,
    pub proto: Option<Proto>,
    /// The checks the lab file declares for `lab validate`.
    pub validate: Vec<crate::validate::Check>,
    /// The merged tree with defaults applied: what `config show` prints.
    pub effective: Tree,
    /// Every file read, in merge order.
    pub files: Vec<PathBuf>,
}

impl Lab {
    pub fn hypervisor(&self, name: &str) -> Option<&Hypervisor> {
        self.hypervisors.iter().find(|h| h.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn overlay(&self, name: &str) -> Option<&Overlay> {
        self.overlays.iter().find(|o| o.name == name)
    }

    /// Builds the lab from a merged tree (see [`crate::load`]).
    pub fn from_tree(mut root: Tree, files: Vec<PathBuf>) -> Result<Lab, ModelError> {
        let schema: FileSchema = typed(&root, &[])?;
        let lab_node = root.get("lab").cloned().unwrap_or_else(|| root.clone());
        name_ok(
            &lab_node,
            &["lab", "name"],
            &schema.lab.name,
            "lab name",
            names::lab,
        )?;
        no_collision(&root, &["vars"], LAB_DERIVED)?;

        // Defaults are merged beneath each entry at the tree level so that their origins survive.
        let defaults = root.take("defaults");
        let default_of = |key: &str| defaults.as_ref().and_then(|d| d.get(key)).cloned();
        apply_defaults(&mut root, "hypervisors", default_of("hypervisor"));
        apply_defaults(&mut root, "nodes", default_of("node"));

        let mut hypervisors = Vec::with_capacity(schema.hypervisors.len());
        for name in schema.hypervisors.keys() {
            hypervisors.push(resolve_hypervisor(&root, name, &schema.lab)?);
        }
        for (i, hv) in hypervisors.iter().enumerate() {
            if let Some(first) = hypervisors[..i].iter().find(|o| o.id == hv.id) {
                return Err(schema_error(
                    &root,
                    &path_of(&["hypervisors", &hv.name, "id"]),
                    format!(
                        "id {} is already used by hypervisor `{}`",
                        hv.id, first.name
                    ),
                    Hint::default(),
                ));
            }
        }

        let mut nodes = Vec::with_capacity(schema.nodes.len());
        let mut extras = Vec::with_capacity(schema.nodes.len());
        for name in schema.nodes.keys() {
            let (node, extra) = resolve_node(&root, name, &schema.lab, &hypervisors)?;
            nodes.push(node);
            extras.push(extra);
        }
        let per_hv = |n: &LabNode| n.hypervisor.clone();
        unique_within(&root, &nodes, "id", per_hv, |n| n.id.to_string())?;
        unique_within(&root, &nodes, "dataset", per_hv, |n| n.dataset.clone())?;
        unique_within(
            &root,
            &nodes,
            "hostname",
            |_| String::new(),
            |n| n.hostname.clone(),
        )?;

        let wire_port_base = wire_port_base(&root, &schema.lab, schema.links.len())?;
        let links = crate::links::parse_links(&root, &schema.links)?;
        let pairs: Vec<[String; 2]> = links.iter().map(|l| l.ends().clone()).collect();
        resolve_links(
            &root,
            &pairs,
            &schema.lab,
            wire_port_base,
            &hypervisors,
            &mut nodes,
        )?;
        crate::links::resolve_impairments(&root, &links, &mut nodes)?;
        crate::start::check_start_after(&root, &nodes)?;
        finish_interfaces(&root, schema.lab.id, &hypervisors, &mut nodes, &extras)?;

        let mut overlays = Vec::new();
        for (name, spec) in &schema.overlays {
            let at = ["overlays", name.as_str(), "dir"].map(String::from);
            check_name(&root, &at[..2], name, "overlay name", names::ident)?;
            if spec.dir.trim().is_empty() {
                return Err(schema_error(
                    &root,
                    &at,
                    "an overlay's `dir` cannot be empty (it would copy the lab's own directory into every guest)"
                        .to_owned(),
                    Hint::default(),
                ));
            }
            let dir_origin = &root.closest(&at).origin;
            overlays.push(Overlay {
                name: name.clone(),
                dir: relative_to(&dir_origin.file, &spec.dir),
            });
        }
        if let Some(default) = &schema.overlay
            && !schema.overlays.contains_key(default)
        {
            return Err(schema_error(
                &root,
                &["overlay".to_owned()],
                format!("overlay `{default}` is not defined under `overlays`"),
                Hint::closest(default, schema.overlays.keys().map(String::as_str)),
            ));
        }

        let proto = match schema.proto {
            None => None,
            Some(p) => Some(resolve_proto(&root, p, &hypervisors)?),
        };
        let validate = crate::validate::resolve_checks(&root, schema.validate, &nodes)?;
        let vars = root.get("vars").map(Tree::to_json);
        Ok(Lab {
            name: schema.lab.name,
            id: schema.lab.id,
            p2p_ipv4: schema.lab.p2p_ipv4,
            p2p_ipv6: schema.lab.p2p_ipv6,
            wire_port_base,
            vars: match vars {
                Some(Json::Object(m)) => m,
                _ => Map::new(),
            },
            hypervisors,
            nodes,
            overlays,
            default_overlay: schema.overlay,
            proto,
            validate,
            effective: root,
            files,
        })
    }
}

/// The origin of a value in the effective tree, for messages of later stages.
pub fn origin_of(lab: &Lab, path: &[&str]) -> Origin {
    lab.effective.closest(&path_of(path)).origin.clone()
}

/// Each lab id owns 160 UDP ports (80 links) for its wires: `20000 + 160 * id`, so labs on one
/// hypervisor never meet. A lab with more links needs a base of its own, and a base set by
/// hand must keep the lab's ports out of the ranges other lab ids own (20000..=60959), or its
/// wires could take another lab's.
fn wire_port_base(
    root: &Tree,
    lab: &crate::schema::LabSchema,
    links: usize,
) -> Result<u16, ModelError> {
    const FIRST: usize = 20000;
    const PER_LAB: usize = 160;
    let own = FIRST + PER_LAB * usize::from(lab.id);
    let Some(base) = lab.wire_port_base else {
        if 2 * links > PER_LAB {
            return Err(schema_error(
                root,
                &["links".to_owned()],
                format!(
                    "{links} links need more than the {PER_LAB} UDP ports a lab gets by \
                     default, so their wires would collide with the next lab id's: set \
                     `lab.wire_port_base`"
                ),
                Hint::default(),
            ));
        }
        return Ok(u16::try_from(own).expect("20000 + 160 * 255 < 65536"));
    };
    // Port 0 makes QEMU bind a random port (a dead link); below 1024 are the system's.
    if base < 1024 {
        return Err(schema_error(
            root,
            &path_of(&["lab", "wire_port_base"]),
            format!(
                "wire_port_base {base} is below 1024: ports there are the system's (and 0 \
                 would bind a random port, leaving every link dead); choose a base from 1024 \
                 on, below {FIRST} or from {} on",
                FIRST + PER_LAB * 256
            ),
            Hint::default(),
        ));
    }
    let (from, to) = (usize::from(base), usize::from(base) + 2 * links);
    let owned_end = FIRST + PER_LAB * 256;
    let other = (from.max(FIRST)..to.min(owned_end))
        .find(|p| !(own..own + PER_LAB).contains(p))
        .map(|p| (p - FIRST) / PER_LAB);
    if let Some(other_id) = other {
        let theirs = FIRST + PER_LAB * other_id;
        return Err(schema_error(
            root,
            &path_of(&["lab", "wire_port_base"]),
            format!(
                "wire ports {from}-{} would take lab id {other_id}'s ({theirs}-{}): a lab with \
                 that id on the same hypervisor would collide; choose a base below {FIRST} or \
                 from {owned_end} on",
                to - 1,
                theirs + PER_LAB - 1
            ),
            Hint::default(),
        ));
    }
    Ok(base)
}
