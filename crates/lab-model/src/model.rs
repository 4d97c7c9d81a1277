//! The typed lab: schema structs, defaults, cross-references and derived addresses.
//!
//! [`Lab::from_tree`] is the only way to build a [`Lab`], and it validates everything a later
//! step relies on: names, references between sections, uniqueness of ids and datasets. A `Lab`
//! that exists is safe to turn into paths and commands.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use indexmap::IndexMap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::error::{Hint, ModelError};
use crate::names;
use crate::tree::{Node, Origin, Value, relative_to};

/// Keys of a node that the model derives; `vars` may not reuse them.
const NODE_DERIVED: &[&str] = &[
    "name",
    "hostname",
    "hypervisor",
    "id",
    "dataset",
    "mac",
    "mgmt_ipv4",
    "mgmt_ipv6",
    "links",
];
const HYPERVISOR_DERIVED: &[&str] = &[
    "name",
    "id",
    "ssh",
    "pool",
    "proto",
    "snapshot",
    "storage",
    "partition",
    "staging",
    "lock_dir",
    "parallel",
    "clones",
    "mgmt_ipv4",
    "mgmt_ipv6",
];
const LAB_DERIVED: &[&str] = &["name", "id", "p2p_ipv4", "p2p_ipv6"];

// ---------------------------------------------------------------------------------------------
// Schema: what may be written in a lab file (after `include` is resolved).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    lab: LabSchema,
    #[serde(default)]
    #[allow(dead_code)] // merged at the tree level; deserialized to reject unknown keys
    defaults: DefaultsSchema,
    hypervisors: IndexMap<String, Json>,
    nodes: IndexMap<String, Json>,
    #[serde(default)]
    links: Vec<[String; 2]>,
    #[serde(default)]
    overlay: Option<String>,
    #[serde(default)]
    overlays: IndexMap<String, OverlaySchema>,
    #[serde(default)]
    proto: Option<ProtoSchema>,
    #[serde(default)]
    #[allow(dead_code)] // read through the tree, validated here
    vars: Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtoSchema {
    source: String,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default = "default_release_pattern")]
    pattern: String,
    #[serde(default = "default_keep")]
    keep: u32,
    #[serde(default)]
    transport: Transport,
    #[serde(default)]
    zrepl_job: Option<String>,
}

fn default_release_pattern() -> String {
    "*-release".to_owned()
}
fn default_keep() -> u32 {
    3
}

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabSchema {
    name: String,
    id: u8,
    #[serde(default)]
    p2p_ipv4: Option<Ipv4Net>,
    #[serde(default)]
    p2p_ipv6: Option<Ipv6Net>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DefaultsSchema {
    #[serde(default)]
    #[allow(dead_code)] // merged at the tree level, checked here to be mappings
    hypervisor: Map<String, Json>,
    #[serde(default)]
    #[allow(dead_code)]
    node: Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlaySchema {
    dir: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HypervisorSchema {
    id: u8,
    #[serde(default)]
    ssh: Option<String>,
    pool: String,
    proto: String,
    snapshot: String,
    #[serde(default)]
    storage: Storage,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default = "default_staging")]
    staging: String,
    #[serde(default = "default_lock_dir")]
    lock_dir: String,
    #[serde(default = "default_parallel")]
    parallel: u32,
    #[serde(default)]
    clones: Option<String>,
    #[serde(default)]
    mgmt_ipv4: Option<Ipv4Net>,
    #[serde(default)]
    mgmt_ipv6: Option<Ipv6Net>,
    #[serde(default)]
    vars: Map<String, Json>,
}

fn default_staging() -> String {
    "/var/lib/lab/staging".to_owned()
}
fn default_lock_dir() -> String {
    "/run/lock/lab".to_owned()
}
fn default_parallel() -> u32 {
    4
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSchema {
    hypervisor: String,
    id: u8,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    dataset: Option<String>,
    #[serde(default)]
    vars: Map<String, Json>,
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
    fn parse(s: &str) -> Self {
        if s.contains(['*', '?']) {
            Self::Newest(s.to_owned())
        } else {
            Self::Exact(s.to_owned())
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
    /// The parent dataset of the clones.
    pub clones: String,
    pub mgmt_ipv4: Option<Ipv4Net>,
    pub mgmt_ipv6: Option<Ipv6Net>,
    pub vars: Map<String, Json>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LabNode {
    pub name: String,
    pub hostname: String,
    pub hypervisor: String,
    pub id: u8,
    /// The clone: `<hypervisor.clones>/<name>` unless set.
    pub dataset: String,
    pub mac: String,
    pub mgmt_ipv4: Option<Ipv4Net>,
    pub mgmt_ipv6: Option<Ipv6Net>,
    pub links: Vec<Interface>,
    pub vars: Map<String, Json>,
}

/// One end of a point-to-point link, seen from a node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Interface {
    /// `eth1`, `eth2` ... in the order links are listed (`eth0` is management).
    pub name: String,
    pub peer: String,
    pub peer_interface: String,
    pub ipv4: Option<Ipv4Net>,
    pub peer_ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Net>,
    pub peer_ipv6: Option<Ipv6Addr>,
    /// The link's position in the lab file, from 0.
    pub link: usize,
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
    pub vars: Map<String, Json>,
    pub hypervisors: Vec<Hypervisor>,
    pub nodes: Vec<LabNode>,
    pub overlays: Vec<Overlay>,
    pub default_overlay: Option<String>,
    pub proto: Option<Proto>,
    /// The merged tree with defaults applied: what `config show` prints.
    pub effective: Node,
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
    pub fn from_tree(mut root: Node, files: Vec<PathBuf>) -> Result<Lab, ModelError> {
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
            hypervisors.push(resolve_hypervisor(&root, name)?);
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
        for name in schema.nodes.keys() {
            nodes.push(resolve_node(&root, name, &schema.lab, &hypervisors)?);
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

        resolve_links(&root, &schema.links, &schema.lab, &mut nodes)?;

        let mut overlays = Vec::new();
        for (name, spec) in &schema.overlays {
            let at = ["overlays", name.as_str(), "dir"].map(String::from);
            check_name(&root, &at[..2], name, "overlay name", names::ident)?;
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
        let vars = root.get("vars").map(Node::to_json);
        Ok(Lab {
            name: schema.lab.name,
            id: schema.lab.id,
            p2p_ipv4: schema.lab.p2p_ipv4,
            p2p_ipv6: schema.lab.p2p_ipv6,
            vars: match vars {
                Some(Json::Object(m)) => m,
                _ => Map::new(),
            },
            hypervisors,
            nodes,
            overlays,
            default_overlay: schema.overlay,
            proto,
            effective: root,
            files,
        })
    }
}

fn resolve_proto(
    root: &Node,
    p: ProtoSchema,
    hypervisors: &[Hypervisor],
) -> Result<Proto, ModelError> {
    if !hypervisors.iter().any(|h| h.name == p.source) {
        return Err(schema_error(
            root,
            &path_of(&["proto", "source"]),
            format!("hypervisor `{}` is not defined", p.source),
            Hint::closest(&p.source, hypervisors.iter().map(|h| h.name.as_str())),
        ));
    }
    if let Some(d) = &p.domain {
        name_ok(root, &["proto", "domain"], d, "domain name", names::ident)?;
    }
    name_ok(
        root,
        &["proto", "pattern"],
        &p.pattern,
        "snapshot pattern",
        names::snapshot_pattern,
    )?;
    if p.keep == 0 {
        return Err(schema_error(
            root,
            &path_of(&["proto", "keep"]),
            "keep must be at least 1: the newest release is what labs clone".to_owned(),
            Hint::default(),
        ));
    }
    match (&p.zrepl_job, p.transport) {
        (Some(job), _) => name_ok(
            root,
            &["proto", "zrepl_job"],
            job,
            "zrepl job",
            names::ident,
        )?,
        (None, Transport::Zrepl) => {
            return Err(schema_error(
                root,
                &path_of(&["proto", "transport"]),
                "transport `zrepl` needs `zrepl_job`: the job to wake on each target".to_owned(),
                Hint::default(),
            ));
        }
        (None, _) => {}
    }
    Ok(Proto {
        source: p.source,
        domain: p.domain,
        pattern: p.pattern,
        keep: p.keep,
        transport: p.transport,
        zrepl_job: p.zrepl_job,
    })
}

fn path_of(segments: &[&str]) -> Vec<String> {
    segments.iter().map(|s| (*s).to_owned()).collect()
}

fn schema_error(root: &Node, path: &[String], message: String, hint: Hint) -> ModelError {
    ModelError::Schema {
        at: root.closest(path).origin.clone(),
        path: path.join("."),
        message,
        hint,
    }
}

/// Deserializes the node at `path` into `T`, turning serde's message into one with a file:line.
fn typed<T: DeserializeOwned>(root: &Node, path: &[String]) -> Result<T, ModelError> {
    let node = root.closest(path);
    serde_path_to_error::deserialize(node.to_json()).map_err(|err| {
        let mut full: Vec<String> = path.to_vec();
        for segment in err.path().iter() {
            use serde_path_to_error::Segment;
            match segment {
                Segment::Map { key } => full.push(key.clone()),
                Segment::Seq { index } => full.push(index.to_string()),
                Segment::Enum { variant } => full.push(variant.clone()),
                Segment::Unknown => {}
            }
        }
        let message = err.inner().to_string();
        let (message, hint) = match unknown_field(&message) {
            Some((field, expected)) => {
                if full.last() != Some(&field) {
                    full.push(field.clone());
                }
                let hint = Hint::closest(&field, expected.iter().map(String::as_str));
                let known = expected.join(", ");
                (format!("unknown key `{field}` (known keys: {known})"), hint)
            }
            None => (message, Hint::default()),
        };
        schema_error(root, &full, message, hint)
    })
}

/// Picks apart serde's "unknown field `x`, expected one of `a`, `b`" message.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

fn name_ok(
    root: &Node,
    path: &[&str],
    value: &str,
    what: &'static str,
    check: names::Validator,
) -> Result<(), ModelError> {
    let path = path_of(path);
    check_name(root, &path, value, what, check)
}

fn check_name(
    root: &Node,
    path: &[String],
    value: &str,
    what: &'static str,
    check: names::Validator,
) -> Result<(), ModelError> {
    check(value).map_err(|rule| ModelError::Name {
        at: root.closest(path).origin.clone(),
        path: path.join("."),
        value: value.to_owned(),
        what,
        rule,
    })
}

fn apply_defaults(root: &mut Node, section: &str, defaults: Option<Node>) {
    let Some(defaults) = defaults else { return };
    let Value::Map(entries) = &mut root.value else {
        return;
    };
    let Some((_, section)) = entries.iter_mut().find(|(k, _)| k == section) else {
        return;
    };
    let Value::Map(items) = &mut section.value else {
        return;
    };
    for (_, item) in items.iter_mut() {
        let mut merged = defaults.clone();
        merged.origin = item.origin.clone();
        // `name:` with nothing under it is an entry that takes every default.
        if item.value != Value::Null {
            merged.merge(item.clone());
        }
        *item = merged;
    }
}

fn no_collision(root: &Node, vars_path: &[&str], reserved: &[&str]) -> Result<(), ModelError> {
    let path = path_of(vars_path);
    if let Some(Node {
        value: Value::Map(entries),
        ..
    }) = root.lookup(&path)
    {
        for (key, _) in entries {
            if reserved.contains(&key.as_str()) {
                let mut at = path.clone();
                at.push(key.clone());
                return Err(schema_error(
                    root,
                    &at,
                    format!("`{key}` is set by lab itself and cannot be a var"),
                    Hint::default(),
                ));
            }
        }
    }
    Ok(())
}

fn resolve_hypervisor(root: &Node, name: &str) -> Result<Hypervisor, ModelError> {
    let at = |field: &'static str| ["hypervisors", name, field];
    name_ok(
        root,
        &["hypervisors", name],
        name,
        "hypervisor name",
        names::ident,
    )?;
    let s: HypervisorSchema = typed(root, &path_of(&["hypervisors", name]))?;
    let ssh = s.ssh.unwrap_or_else(|| name.to_owned());
    name_ok(
        root,
        &at("ssh"),
        &ssh,
        "ssh destination",
        names::ssh_destination,
    )?;
    name_ok(root, &at("pool"), &s.pool, "pool name", names::pool)?;
    name_ok(root, &at("proto"), &s.proto, "dataset name", names::dataset)?;
    if s.proto.split('/').next() != Some(s.pool.as_str()) {
        return Err(schema_error(
            root,
            &path_of(&at("proto")),
            format!("proto dataset `{}` is not in pool `{}`", s.proto, s.pool),
            Hint::default(),
        ));
    }
    name_ok(
        root,
        &at("snapshot"),
        &s.snapshot,
        "snapshot name or pattern",
        names::snapshot_pattern,
    )?;
    name_ok(
        root,
        &at("staging"),
        &s.staging,
        "staging directory",
        names::abs_path,
    )?;
    name_ok(
        root,
        &at("lock_dir"),
        &s.lock_dir,
        "lock directory",
        names::abs_path,
    )?;
    let clones = s.clones.unwrap_or_else(|| s.pool.clone());
    let clones_ok = |c: &str| {
        if c.contains('/') {
            names::dataset(c)
        } else {
            names::pool(c)
        }
    };
    name_ok(root, &at("clones"), &clones, "dataset name", clones_ok)?;
    if clones.split('/').next() != Some(s.pool.as_str()) {
        return Err(schema_error(
            root,
            &path_of(&at("clones")),
            format!("clone parent `{clones}` is not in pool `{}`", s.pool),
            Hint::default(),
        ));
    }
    if s.storage == Storage::Zvol && s.partition.is_none() {
        return Err(schema_error(
            root,
            &path_of(&at("storage")),
            "storage `zvol` needs `partition`: the partition number that holds the root filesystem"
                .to_owned(),
            Hint::default(),
        ));
    }
    if !(1..=8).contains(&s.parallel) {
        return Err(schema_error(
            root,
            &path_of(&at("parallel")),
            format!(
                "parallel must be 1 to 8 (sshd allows 10 sessions per connection), not {}",
                s.parallel
            ),
            Hint::default(),
        ));
    }
    no_collision(root, &at("vars"), HYPERVISOR_DERIVED)?;
    Ok(Hypervisor {
        name: name.to_owned(),
        id: s.id,
        ssh,
        pool: s.pool,
        proto: s.proto,
        snapshot: SnapshotSpec::parse(&s.snapshot),
        storage: s.storage,
        partition: s.partition,
        staging: s.staging,
        lock_dir: s.lock_dir,
        parallel: s.parallel,
        clones,
        mgmt_ipv4: s.mgmt_ipv4,
        mgmt_ipv6: s.mgmt_ipv6,
        vars: s.vars,
    })
}

fn resolve_node(
    root: &Node,
    name: &str,
    lab: &LabSchema,
    hypervisors: &[Hypervisor],
) -> Result<LabNode, ModelError> {
    let at = |field: &'static str| ["nodes", name, field];
    name_ok(root, &["nodes", name], name, "node name", names::ident)?;
    let s: NodeSchema = typed(root, &path_of(&["nodes", name]))?;
    let Some(hv) = hypervisors.iter().find(|h| h.name == s.hypervisor) else {
        return Err(schema_error(
            root,
            &path_of(&at("hypervisor")),
            format!(
                "hypervisor `{}` is not defined under `hypervisors`",
                s.hypervisor
            ),
            Hint::closest(&s.hypervisor, hypervisors.iter().map(|h| h.name.as_str())),
        ));
    };
    let hostname = s.hostname.unwrap_or_else(|| name.to_owned());
    name_ok(
        root,
        &at("hostname"),
        &hostname,
        "hostname",
        names::hostname,
    )?;
    let dataset = s.dataset.unwrap_or_else(|| format!("{}/{name}", hv.clones));
    name_ok(
        root,
        &at("dataset"),
        &dataset,
        "dataset name",
        names::dataset,
    )?;
    if dataset == hv.proto || dataset.starts_with(&format!("{}/", hv.proto)) {
        return Err(schema_error(
            root,
            &path_of(&at("dataset")),
            format!(
                "dataset `{dataset}` would be the proto `{}` or inside it",
                hv.proto
            ),
            Hint::default(),
        ));
    }
    if dataset.split('/').next() != Some(hv.pool.as_str()) {
        return Err(schema_error(
            root,
            &path_of(&at("dataset")),
            format!(
                "dataset `{dataset}` is not in pool `{}` of `{}`",
                hv.pool, hv.name
            ),
            Hint::default(),
        ));
    }
    no_collision(root, &at("vars"), NODE_DERIVED)?;
    let host = |net: IpNet| -> Result<IpNet, ModelError> {
        crate::addr::nth_host(net, u128::from(s.id))
            .map_err(|message| schema_error(root, &path_of(&at("id")), message, Hint::default()))
    };
    let mgmt_ipv4 = match hv.mgmt_ipv4 {
        Some(net) => match host(IpNet::V4(net))? {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => unreachable!("an IPv4 prefix yields IPv4 hosts"),
        },
        None => None,
    };
    let mgmt_ipv6 = match hv.mgmt_ipv6 {
        Some(net) => match host(IpNet::V6(net))? {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => unreachable!("an IPv6 prefix yields IPv6 hosts"),
        },
        None => None,
    };
    Ok(LabNode {
        name: name.to_owned(),
        hostname,
        hypervisor: hv.name.clone(),
        id: s.id,
        dataset,
        mac: crate::addr::mac([lab.id, hv.id, s.id]),
        mgmt_ipv4,
        mgmt_ipv6,
        links: Vec::new(),
        vars: s.vars,
    })
}

fn resolve_links(
    root: &Node,
    links: &[[String; 2]],
    lab: &LabSchema,
    nodes: &mut [LabNode],
) -> Result<(), ModelError> {
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let mut ends = Vec::with_capacity(links.len());
    for (li, [a, b]) in links.iter().enumerate() {
        let mut pair = [0usize; 2];
        for (side, name) in [a, b].into_iter().enumerate() {
            let at = vec!["links".to_owned(), li.to_string(), side.to_string()];
            pair[side] = *index.get(name).ok_or_else(|| {
                schema_error(
                    root,
                    &at,
                    format!("node `{name}` is not defined under `nodes`"),
                    Hint::closest(name, nodes.iter().map(|n| n.name.as_str())),
                )
            })?;
        }
        if pair[0] == pair[1] {
            return Err(schema_error(
                root,
                &["links".to_owned(), li.to_string()],
                format!("link {li} connects `{a}` to itself"),
                Hint::default(),
            ));
        }
        ends.push(pair);
    }
    if !links.is_empty() && lab.p2p_ipv4.is_none() && lab.p2p_ipv6.is_none() {
        return Err(schema_error(
            root,
            &["lab".to_owned()],
            "links need `lab.p2p_ipv4` and/or `lab.p2p_ipv6` to number them".to_owned(),
            Hint::default(),
        ));
    }
    let link_nets = |li: usize| -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), ModelError> {
        let v4 = match lab.p2p_ipv4 {
            Some(pool) => Some(crate::addr::nth_subnet4(pool, 31, li as u32).map_err(|m| {
                schema_error(root, &path_of(&["lab", "p2p_ipv4"]), m, Hint::default())
            })?),
            None => None,
        };
        let v6 =
            match lab.p2p_ipv6 {
                Some(pool) => Some(crate::addr::nth_subnet6(pool, 127, li as u128).map_err(
                    |m| schema_error(root, &path_of(&["lab", "p2p_ipv6"]), m, Hint::default()),
                )?),
                None => None,
            };
        Ok((v4, v6))
    };
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next_if = |node: usize| {
        let n = counts.entry(node).or_insert(0);
        *n += 1;
        format!("eth{n}")
    };
    for (li, [a, b]) in ends.into_iter().enumerate() {
        let (v4, v6) = link_nets(li)?;
        let (if_a, if_b) = (next_if(a), next_if(b));
        let addr4 = |side: u32| {
            v4.map(|n| {
                let ip = Ipv4Addr::from(u32::from(n.network()) + side);
                Ipv4Net::new(ip, 31).expect("31 is a valid IPv4 prefix length")
            })
        };
        let addr6 = |side: u128| {
            v6.map(|n| {
                let ip = Ipv6Addr::from(u128::from(n.network()) + side);
                Ipv6Net::new(ip, 127).expect("127 is a valid IPv6 prefix length")
            })
        };
        let (name_a, name_b) = (nodes[a].name.clone(), nodes[b].name.clone());
        nodes[a].links.push(Interface {
            name: if_a.clone(),
            peer: name_b,
            peer_interface: if_b.clone(),
            ipv4: addr4(0),
            peer_ipv4: addr4(1).map(|n| n.addr()),
            ipv6: addr6(0),
            peer_ipv6: addr6(1).map(|n| n.addr()),
            link: li,
        });
        nodes[b].links.push(Interface {
            name: if_b,
            peer: name_a,
            peer_interface: if_a,
            ipv4: addr4(1),
            peer_ipv4: addr4(0).map(|n| n.addr()),
            ipv6: addr6(1),
            peer_ipv6: addr6(0).map(|n| n.addr()),
            link: li,
        });
    }
    Ok(())
}

fn unique_within(
    root: &Node,
    nodes: &[LabNode],
    field: &str,
    scope: impl Fn(&LabNode) -> String,
    key: impl Fn(&LabNode) -> String,
) -> Result<(), ModelError> {
    let mut seen: HashMap<(String, String), &str> = HashMap::new();
    for node in nodes {
        if let Some(first) = seen.insert((scope(node), key(node)), &node.name) {
            return Err(schema_error(
                root,
                &path_of(&["nodes", &node.name, field]),
                format!("{field} `{}` is already used by node `{first}`", key(node)),
                Hint::default(),
            ));
        }
    }
    Ok(())
}

/// The origin of a value in the effective tree, for messages of later stages.
pub fn origin_of(lab: &Lab, path: &[&str]) -> Origin {
    lab.effective.closest(&path_of(path)).origin.clone()
}
