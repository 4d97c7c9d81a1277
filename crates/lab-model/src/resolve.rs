//! From the merged tree to the typed model, one section at a time: defaults beneath each
//! entry, names checked, hypervisors, nodes and links resolved, with schema errors that point at
//! the file and line of the value.

use std::collections::HashMap;

use indexmap::IndexMap;

use ipnet::IpNet;
use serde::de::DeserializeOwned;

use crate::error::{Hint, ModelError};
use crate::mgmt::resolve_mgmt;
use crate::model::{Hypervisor, Interface, InterfaceKind, LabNode, NodeSsh, SnapshotSpec, Storage};
use crate::names;
use crate::schema::{HYPERVISOR_DERIVED, HypervisorSchema, LabSchema, NODE_DERIVED, NodeSchema};
use crate::tree::{Tree, Value};

pub(crate) fn path_of(segments: &[&str]) -> Vec<String> {
    segments.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn schema_error(
    root: &Tree,
    path: &[String],
    message: String,
    hint: Hint,
) -> ModelError {
    ModelError::Schema {
        at: root.closest(path).origin.clone(),
        path: path.join("."),
        message,
        hint,
    }
}

/// Deserializes the node at `path` into `T`, turning serde's message into one with a file:line.
pub(crate) fn typed<T: DeserializeOwned>(root: &Tree, path: &[String]) -> Result<T, ModelError> {
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
pub(crate) fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
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

pub(crate) fn name_ok(
    root: &Tree,
    path: &[&str],
    value: &str,
    what: &'static str,
    check: names::Validator,
) -> Result<(), ModelError> {
    let path = path_of(path);
    check_name(root, &path, value, what, check)
}

pub(crate) fn check_name(
    root: &Tree,
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

pub(crate) fn apply_defaults(root: &mut Tree, section: &str, defaults: Option<Tree>) {
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

pub(crate) fn no_collision(
    root: &Tree,
    vars_path: &[&str],
    reserved: &[&str],
) -> Result<(), ModelError> {
    let path = path_of(vars_path);
    if let Some(Tree {
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

pub(crate) fn resolve_hypervisor(
    root: &Tree,
    name: &str,
    lab: &LabSchema,
) -> Result<Hypervisor, ModelError> {
    let at = |field: &'static str| ["hypervisors", name, field];
    name_ok(
        root,
        &["hypervisors", name],
        name,
        "hypervisor name",
        names::ident,
    )?;
    let s: HypervisorSchema = typed(root, &path_of(&["hypervisors", name]))?;
    let mgmt = resolve_mgmt(root, name, &s, lab)?;
    let ssh = s.ssh.unwrap_or_else(|| name.to_owned());
    name_ok(
        root,
        &at("ssh"),
        &ssh,
        "ssh destination",
        names::ssh_destination,
    )?;
    let peer_ssh = s.peer_ssh.unwrap_or_else(|| ssh.clone());
    name_ok(
        root,
        &at("peer_ssh"),
        &peer_ssh,
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
    crate::start::check_hypervisor(root, name, s.start_batch, s.start_interval)?;
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
        peer_ssh,
        pool: s.pool,
        proto: s.proto,
        snapshot: SnapshotSpec::parse(&s.snapshot),
        storage: s.storage,
        partition: s.partition,
        staging: s.staging,
        lock_dir: s.lock_dir,
        parallel: s.parallel,
        start_batch: s.start_batch,
        start_interval: s.start_interval,
        clones,
        mgmt_ipv4: s.mgmt_ipv4,
        mgmt_ipv6: s.mgmt_ipv6,
        mgmt,
        underlay: s.underlay,
        vars: s.vars,
    })
}

pub(crate) fn resolve_node(
    root: &Tree,
    name: &str,
    lab: &LabSchema,
    hypervisors: &[Hypervisor],
) -> Result<(LabNode, NodeExtras), ModelError> {
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
    let domain = if lab.prefix_names {
        format!("{}-{name}", lab.name)
    } else {
        name.to_owned()
    };
    let dataset = s
        .dataset
        .unwrap_or_else(|| format!("{}/{domain}", hv.clones));
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
    if let (Some(ip), Some(gw)) = (mgmt_ipv4, hv.mgmt.gateway_ipv4)
        && ip.addr() == gw.addr()
    {
        return Err(schema_error(
            root,
            &path_of(&at("id")),
            format!(
                "id {} gives {}, the management gateway of `{}`",
                s.id,
                ip.addr(),
                hv.name
            ),
            Hint::default(),
        ));
    }
    let mac = match &s.mac {
        Some(m) => {
            name_ok(root, &at("mac"), m, "MAC address", names::mac)?;
            m.clone()
        }
        None => crate::addr::interface_mac(0, lab.id, hv.id, s.id),
    };
    let mut interface_macs = IndexMap::new();
    for (iface, spec) in &s.interfaces {
        if let Some(m) = &spec.mac {
            name_ok(
                root,
                &["nodes", name, "interfaces", iface, "mac"],
                m,
                "MAC address",
                names::mac,
            )?;
            interface_macs.insert(iface.clone(), m.clone());
        }
    }
    let mgmt = Interface {
        name: "eth0".to_owned(),
        kind: InterfaceKind::Mgmt,
        mac: mac.clone(),
        ipv4: mgmt_ipv4,
        ipv6: mgmt_ipv6,
        peer: None,
        peer_interface: None,
        peer_ipv4: None,
        peer_ipv6: None,
        link: None,
        wire: None,
        impair: None,
    };
    let user = s.ssh.user.clone().unwrap_or_else(|| "root".to_owned());
    name_ok(
        root,
        &["nodes", name, "ssh", "user"],
        &user,
        "login name",
        names::user,
    )?;
    let ssh_options = s
        .ssh
        .options
        .clone()
        .unwrap_or_else(crate::schema::default_ssh_options);
    for (i, option) in ssh_options.iter().enumerate() {
        let at = ["nodes", name, "ssh", "options", &i.to_string()].map(String::from);
        let at: Vec<&str> = at.iter().map(String::as_str).collect();
        name_ok(root, &at, option, "ssh option", names::ssh_option)?;
    }
    let node = LabNode {
        name: name.to_owned(),
        hostname,
        hypervisor: hv.name.clone(),
        id: s.id,
        domain,
        dataset,
        staging: format!("{}/{}/{name}", hv.staging.trim_end_matches('/'), lab.name),
        mac,
        mgmt_ipv4,
        mgmt_ipv6,
        interfaces: vec![mgmt],
        ssh: NodeSsh {
            user,
            options: ssh_options,
        },
        start_after: s.start_after,
        vars: s.vars,
    };
    Ok((
        node,
        NodeExtras {
            interface_macs,
            max_links: s.max_links,
        },
    ))
}

/// What a node's entry says that is applied once its links are known.
pub(crate) struct NodeExtras {
    /// Interface name → MAC set in the lab file (`eth0` may also come from `mac:`).
    pub(crate) interface_macs: IndexMap<String, String>,
    pub(crate) max_links: u32,
}

pub(crate) fn unique_within(
    root: &Tree,
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
