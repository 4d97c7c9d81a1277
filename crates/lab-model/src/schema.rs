//! What may be written in a lab file (after `include` is resolved): the serde schema that
//! `deny_unknown_fields` checks every key against, and the keys the model derives.

use indexmap::IndexMap;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::model::{MgmtMode, Storage, Transport};

/// Keys of a node that the model derives; `vars` may not reuse them.
pub(crate) const NODE_DERIVED: &[&str] = &[
    "name",
    "hostname",
    "hypervisor",
    "id",
    "dataset",
    "mac",
    "mgmt_ipv4",
    "mgmt_ipv6",
    "links",
    "interfaces",
    "max_links",
    "ssh",
    "domain",
    "staging",
    "start_after",
];
pub(crate) const HYPERVISOR_DERIVED: &[&str] = &[
    "name",
    "id",
    "ssh",
    "peer_ssh",
    "pool",
    "proto",
    "snapshot",
    "storage",
    "partition",
    "staging",
    "lock_dir",
    "parallel",
    "start_batch",
    "start_interval",
    "clones",
    "mgmt_ipv4",
    "mgmt_ipv6",
    "mgmt",
    "underlay",
];
pub(crate) const LAB_DERIVED: &[&str] = &[
    "name",
    "id",
    "p2p_ipv4",
    "p2p_ipv6",
    "wire_port_base",
    "prefix_names",
];

// ---------------------------------------------------------------------------------------------
// Schema: what may be written in a lab file (after `include` is resolved).

/// A `links:` entry: `[a, b]`, or a mapping with its `ends` and what else the link has.
pub(crate) enum LinkSchema {
    Pair([String; 2]),
    Map(Box<LinkMapSchema>),
}

impl LinkSchema {
    pub(crate) fn ends(&self) -> &[String; 2] {
        match self {
            LinkSchema::Pair(ends) => ends,
            LinkSchema::Map(m) => &m.ends,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkMapSchema {
    pub(crate) ends: [String; 2],
    /// How the link is impaired from create on (`lab link set`'s words).
    #[serde(default)]
    pub(crate) impair: Option<ImpairSchema>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImpairSchema {
    /// Only the frames this end sends (default: both directions).
    pub(crate) from: Option<String>,
    /// The values as written (`20ms`, `1%`, `10mbit`; a bare number is read, and refused, as
    /// its text).
    pub(crate) delay: Option<Json>,
    pub(crate) jitter: Option<Json>,
    pub(crate) loss: Option<Json>,
    pub(crate) duplicate: Option<Json>,
    pub(crate) reorder: Option<Json>,
    pub(crate) rate: Option<Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSchema {
    pub(crate) lab: LabSchema,
    #[serde(default)]
    #[allow(dead_code)] // merged at the tree level; deserialized to reject unknown keys
    pub(crate) defaults: DefaultsSchema,
    pub(crate) hypervisors: IndexMap<String, Json>,
    pub(crate) nodes: IndexMap<String, Json>,
    /// `[a, b]` or a mapping (`LinkSchema`), read one by one so that each error names its
    /// entry.
    #[serde(default)]
    pub(crate) links: Vec<Json>,
    #[serde(default)]
    pub(crate) overlay: Option<String>,
    #[serde(default)]
    pub(crate) overlays: IndexMap<String, OverlaySchema>,
    #[serde(default)]
    pub(crate) proto: Option<ProtoSchema>,
    /// Checks `lab validate` runs besides the built-in ones.
    #[serde(default)]
    pub(crate) validate: IndexMap<String, crate::validate::CheckSchema>,
    #[serde(default)]
    #[allow(dead_code)] // read through the tree, validated here
    pub(crate) vars: Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProtoSchema {
    pub(crate) source: String,
    #[serde(default)]
    pub(crate) domain: Option<String>,
    #[serde(default = "default_release_pattern")]
    pub(crate) pattern: String,
    #[serde(default = "default_keep")]
    pub(crate) keep: u32,
    #[serde(default)]
    pub(crate) transport: Transport,
    #[serde(default)]
    pub(crate) zrepl_job: Option<String>,
    #[serde(default = "default_true")]
    pub(crate) compressed: bool,
    #[serde(default = "default_proto_parallel")]
    pub(crate) parallel: u32,
    #[serde(default)]
    pub(crate) bwlimit: Option<String>,
    #[serde(default = "default_zrepl_wait")]
    pub(crate) zrepl_wait: u64,
}

pub(crate) fn default_proto_parallel() -> u32 {
    4
}
pub(crate) fn default_zrepl_wait() -> u64 {
    600
}

pub(crate) fn default_release_pattern() -> String {
    "*-release".to_owned()
}
pub(crate) fn default_keep() -> u32 {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LabSchema {
    pub(crate) name: String,
    pub(crate) id: u8,
    #[serde(default)]
    pub(crate) p2p_ipv4: Option<Ipv4Net>,
    #[serde(default)]
    pub(crate) p2p_ipv6: Option<Ipv6Net>,
    /// The first UDP port of the lab's wires (default `20000 + 160 * id`).
    #[serde(default)]
    pub(crate) wire_port_base: Option<u16>,
    /// Name domains and clones `<lab>-<node>`, so that labs with the same node names can share
    /// a hypervisor.
    #[serde(default)]
    pub(crate) prefix_names: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultsSchema {
    #[serde(default)]
    #[allow(dead_code)] // merged at the tree level, checked here to be mappings
    pub(crate) hypervisor: Map<String, Json>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) node: Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverlaySchema {
    pub(crate) dir: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HypervisorSchema {
    pub(crate) id: u8,
    #[serde(default)]
    pub(crate) ssh: Option<String>,
    /// How other hypervisors reach this one by ssh (`transport: direct`); default `ssh`.
    #[serde(default)]
    pub(crate) peer_ssh: Option<String>,
    pub(crate) pool: String,
    pub(crate) proto: String,
    pub(crate) snapshot: String,
    #[serde(default)]
    pub(crate) storage: Storage,
    #[serde(default)]
    pub(crate) partition: Option<u32>,
    #[serde(default = "default_staging")]
    pub(crate) staging: String,
    #[serde(default = "default_lock_dir")]
    pub(crate) lock_dir: String,
    #[serde(default = "default_parallel")]
    pub(crate) parallel: u32,
    /// `create` starts this hypervisor's nodes this many at a time (default: all at once).
    #[serde(default)]
    pub(crate) start_batch: Option<u32>,
    /// Seconds between two batches of starts.
    #[serde(default)]
    pub(crate) start_interval: u64,
    #[serde(default)]
    pub(crate) clones: Option<String>,
    #[serde(default)]
    pub(crate) mgmt_ipv4: Option<Ipv4Net>,
    #[serde(default)]
    pub(crate) mgmt_ipv6: Option<Ipv6Net>,
    #[serde(default)]
    pub(crate) mgmt: Option<MgmtSchema>,
    /// The address other hypervisors reach this one's wires at.
    #[serde(default)]
    pub(crate) underlay: Option<Ipv4Addr>,
    #[serde(default)]
    pub(crate) vars: Map<String, Json>,
}

/// A hypervisor's management network.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MgmtSchema {
    #[serde(default)]
    pub(crate) mode: Option<MgmtMode>,
    /// Mode `bridge`: the host bridge the lab's network forwards onto.
    #[serde(default)]
    pub(crate) bridge: Option<String>,
    /// Mode `existing`: the operator's libvirt network the nodes attach to.
    #[serde(default)]
    pub(crate) network: Option<String>,
    /// Modes `isolated` and `nat`: the hypervisor's address on the network, a host number of
    /// `mgmt_ipv4` or an address in it (default: the prefix's last host).
    #[serde(default)]
    pub(crate) gateway: Option<GatewaySchema>,
    /// Mode `existing`: add each node's DHCP reservation to the operator's network (default:
    /// when the hypervisor has `mgmt_ipv4`, so that nodes have planned addresses).
    #[serde(default)]
    pub(crate) reserve: Option<bool>,
}

impl From<GatewaySchema> for crate::addr::Either<u32, Ipv4Addr> {
    fn from(g: GatewaySchema) -> Self {
        match g {
            GatewaySchema::Host(n) => crate::addr::Either::Left(n),
            GatewaySchema::Address(a) => crate::addr::Either::Right(a),
        }
    }
}

/// `mgmt.gateway`: `1` (the prefix's first host) or `192.168.20.1`.
#[derive(Clone, Copy)]
pub(crate) enum GatewaySchema {
    Host(u32),
    Address(Ipv4Addr),
}

impl<'de> Deserialize<'de> for GatewaySchema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = GatewaySchema;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a host number of `mgmt_ipv4` (such as 1) or an IPv4 address in it")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                u32::try_from(n)
                    .map(GatewaySchema::Host)
                    .map_err(|_| E::custom(format!("host number {n} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("host number {n} is negative")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse().map(GatewaySchema::Address).map_err(|_| {
                    E::custom(format!(
                        "{s:?} is neither a host number (such as 1) nor an IPv4 address"
                    ))
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

pub(crate) fn default_staging() -> String {
    "/var/lib/lab/staging".to_owned()
}
/// Root's own directory on a tmpfs (a reboot clears it): not `/run/lock`, where anybody may
/// create `lab/` first.
pub(crate) fn default_lock_dir() -> String {
    "/run/lab".to_owned()
}
pub(crate) fn default_parallel() -> u32 {
    4
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSchema {
    pub(crate) hypervisor: String,
    pub(crate) id: u8,
    #[serde(default)]
    pub(crate) hostname: Option<String>,
    #[serde(default)]
    pub(crate) dataset: Option<String>,
    /// The management interface's MAC, instead of the derived one.
    #[serde(default)]
    pub(crate) mac: Option<String>,
    /// Per interface (`eth0`, `eth1` ...): a MAC instead of the derived one.
    #[serde(default)]
    pub(crate) interfaces: IndexMap<String, InterfaceSchema>,
    #[serde(default = "default_max_links")]
    pub(crate) max_links: u32,
    /// Nodes of the same hypervisor that `create` starts before this one (in an earlier
    /// batch, with `start_batch`).
    #[serde(default)]
    pub(crate) start_after: Vec<String>,
    /// How `lab ssh`, `lab exec` and inventories log into the node.
    #[serde(default)]
    pub(crate) ssh: NodeSshSchema,
    #[serde(default)]
    pub(crate) vars: Map<String, Json>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSshSchema {
    #[serde(default)]
    pub(crate) user: Option<String>,
    /// ssh options as `Key=Value`, e.g. `IdentityFile=~/.ssh/lab`; when not given, host keys
    /// are neither checked nor kept (see [`default_ssh_options`]).
    #[serde(default)]
    pub(crate) options: Option<Vec<String>>,
}

/// A lab's nodes get new host keys on every create, at the same addresses: by default, ssh
/// neither checks nor records them (as containerlab does).
pub(crate) fn default_ssh_options() -> Vec<String> {
    [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
    ]
    .map(String::from)
    .to_vec()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InterfaceSchema {
    #[serde(default)]
    pub(crate) mac: Option<String>,
}

pub(crate) fn default_max_links() -> u32 {
    16
}

pub(crate) fn default_true() -> bool {
    true
}
