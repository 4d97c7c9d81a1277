//! The one reader of a hypervisor: its proto's snapshots, every dataset of the proto's pool
//! with `lab`'s properties, and its libvirt domains, in one round trip. Create, destroy,
//! status and every proto verb decide from this [`HostState`] and nothing else.

use std::collections::BTreeMap;

use lab_exec::{Cmd, ExecError, Executor};
use lab_model::Hypervisor;

use crate::own::prop;

/// Constant text; the pool and the proto are positional arguments (quoted like any other),
/// sections are marked so the output can be split. Datasets are listed first and then read,
/// so that the pool's snapshots (there may be thousands) are never read.
const PROBE: &str = r#"echo '#snapshots'
zfs get -H -p -o name,property,value guid,creation -r "$2" 2>/dev/null || true
echo '#datasets'
zfs list -H -o name -t filesystem,volume -r "$1" 2>/dev/null | xargs -r -d '\n' zfs get -H -p -o name,property,value origin,mounted,type,lab:lab,lab:node,lab:owner,lab:origin,lab:origin-guid,lab:overlay-sha256,lab:created,lab:state,lab:synced,lab:sync-error 2>/dev/null || true
echo '#domains'
virsh -q list --all 2>/dev/null || true
echo '#networks'
virsh -q net-list --all 2>/dev/null | while read -r name state rest; do
  [ -n "$name" ] || continue
  case $name in
    lab-*) mark=$(virsh net-dumpxml --inactive "$name" 2>/dev/null | grep -o '<lab:net [^>]*>' | head -n 1) ;;
    *) mark= ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$state" "$mark"
done
if [ "$3" = nics ]; then
  echo '#nics'
  virsh -q list --all --name 2>/dev/null | while read -r dom; do
    [ -n "$dom" ] || continue
    virsh -q domiflist "$dom" 2>/dev/null | while read -r _ _ _ _ mac; do printf '%s\t%s\n' "$dom" "$mac"; done
  done
fi
echo '#end'
"#;

/// One snapshot of a proto dataset or replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// `pool/proto@name`
    pub full: String,
    pub name: String,
    pub guid: String,
    pub creation: u64,
}

/// A filesystem or volume, with the `lab:` properties it carries.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Dataset {
    pub name: String,
    pub origin: Option<String>,
    pub mounted: bool,
    pub props: BTreeMap<String, String>,
}

impl Dataset {
    pub fn prop(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Domain {
    pub name: String,
    /// `running`, `shut off`, `paused` ...
    pub state: String,
}

/// The proto dataset (or replica) on one hypervisor.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProtoState {
    pub dataset: String,
    pub exists: bool,
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
    /// When the last `lab proto sync` to this replica succeeded (`lab:synced`).
    pub synced: Option<u64>,
    /// The last sync error left on the replica (`lab:sync-error`).
    pub last_error: Option<String>,
}

impl ProtoState {
    pub fn has(&self, name: &str) -> bool {
        self.snapshots.iter().any(|s| s.name == name)
    }
}

/// A clone of a proto snapshot: what keeps the snapshot from being pruned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pin {
    pub snapshot: String,
    pub dataset: String,
    /// The lab and node, when `lab` made the clone.
    pub lab: Option<String>,
    pub node: Option<String>,
}

/// A libvirt network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Network {
    pub name: String,
    pub active: bool,
    /// `lab`'s ownership mark in the network's metadata (read for `lab-*` networks only).
    pub marker: Option<NetworkMarker>,
}

/// What `lab` records in a network it defines: the lab, and the digest of its definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NetworkMarker {
    pub lab: String,
    pub sha256: String,
}

/// How much a probe reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Snapshots, datasets, domains and networks.
    Normal,
    /// Also every domain's NICs (one `virsh domiflist` per domain): for `status`.
    Nics,
}

/// What one hypervisor holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostState {
    pub proto: ProtoState,
    /// Every filesystem and volume of the proto's pool, by name.
    pub datasets: BTreeMap<String, Dataset>,
    pub domains: BTreeMap<String, Domain>,
    pub networks: BTreeMap<String, Network>,
    /// Domain → the MACs of its NICs, in order (with [`Detail::Nics`] only).
    pub nics: BTreeMap<String, Vec<String>>,
}

impl HostState {
    pub fn domain_running(&self, name: &str) -> bool {
        self.domains.get(name).is_some_and(|d| d.state == "running")
    }

    /// The clones of proto snapshots, in dataset order.
    pub fn pins(&self) -> Vec<Pin> {
        let prefix = format!("{}@", self.proto.dataset);
        self.datasets
            .values()
            .filter_map(|ds| {
                let snapshot = ds.origin.as_deref()?.strip_prefix(&prefix)?;
                Some(Pin {
                    snapshot: snapshot.to_owned(),
                    dataset: ds.name.clone(),
                    lab: ds.prop(prop::LAB).map(str::to_owned),
                    node: ds.prop(prop::NODE).map(str::to_owned),
                })
            })
            .collect()
    }
}

/// The pool a dataset lives in.
pub fn pool_of(dataset: &str) -> &str {
    dataset.split('/').next().unwrap_or(dataset)
}

/// The probe, as a command.
pub fn probe_cmd(hv: &Hypervisor, detail: Detail) -> Cmd {
    Cmd::query([
        "sh",
        "-c",
        PROBE,
        "lab-probe",
        pool_of(&hv.proto),
        hv.proto.as_str(),
        match detail {
            Detail::Normal => "normal",
            Detail::Nics => "nics",
        },
    ])
}

/// Reads `hv` in one round trip.
pub async fn probe(exec: &Executor, hv: &Hypervisor) -> Result<HostState, ExecError> {
    probe_with(exec, hv, Detail::Normal).await
}

/// Reads `hv` in one round trip, with `detail`.
pub async fn probe_with(
    exec: &Executor,
    hv: &Hypervisor,
    detail: Detail,
) -> Result<HostState, ExecError> {
    let out = exec.run(&hv.name, &probe_cmd(hv, detail)).await?;
    Ok(parse(&hv.proto, &out.stdout))
}

/// Splits the probe's output into its sections; `proto` is the hypervisor's proto dataset.
pub fn parse(proto: &str, text: &str) -> HostState {
    let mut state = HostState {
        proto: ProtoState {
            dataset: proto.to_owned(),
            ..ProtoState::default()
        },
        ..HostState::default()
    };
    let snapshot_prefix = format!("{proto}@");
    let mut snapshots: Vec<Snapshot> = Vec::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(s) = line.strip_prefix('#') {
            section = match s {
                "snapshots" | "datasets" | "domains" | "networks" | "nics" => s,
                _ => "",
            };
            continue;
        }
        match section {
            "snapshots" => {
                let Some((name, property, value)) = row(line) else {
                    continue;
                };
                let Some(short) = name.strip_prefix(&snapshot_prefix) else {
                    continue;
                };
                let i = match snapshots.iter().position(|s| s.full == name) {
                    Some(i) => i,
                    None => {
                        snapshots.push(Snapshot {
                            full: name.to_owned(),
                            name: short.to_owned(),
                            guid: String::new(),
                            creation: 0,
                        });
                        snapshots.len() - 1
                    }
                };
                match property {
                    "guid" => snapshots[i].guid = value.to_owned(),
                    "creation" => snapshots[i].creation = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            "datasets" => {
                let Some((name, property, value)) = row(line) else {
                    continue;
                };
                // Snapshots are the rows whose *name* has an `@` (values may have one too).
                if name.contains('@') {
                    continue;
                }
                let ds = state
                    .datasets
                    .entry(name.to_owned())
                    .or_insert_with(|| Dataset {
                        name: name.to_owned(),
                        ..Dataset::default()
                    });
                match (property, value) {
                    (_, "-") | ("type", _) => {}
                    ("origin", v) => ds.origin = Some(v.to_owned()),
                    ("mounted", v) => ds.mounted = v == "yes",
                    (p, v) => {
                        ds.props.insert(p.to_owned(), v.to_owned());
                    }
                }
            }
            "domains" => {
                // " 3    vpp0-1   running" or " -    vpp0-2   shut off"
                let mut words = line.split_whitespace();
                let (Some(_id), Some(name)) = (words.next(), words.next()) else {
                    continue;
                };
                state.domains.insert(
                    name.to_owned(),
                    Domain {
                        name: name.to_owned(),
                        state: words.collect::<Vec<_>>().join(" "),
                    },
                );
            }
            "networks" => {
                let mut f = line.splitn(3, '\t');
                let (Some(name), Some(active)) = (f.next(), f.next()) else {
                    continue;
                };
                let marker = f.next().and_then(parse_network_marker);
                state.networks.insert(
                    name.to_owned(),
                    Network {
                        name: name.to_owned(),
                        active: active == "active",
                        marker,
                    },
                );
            }
            "nics" => {
                if let Some((domain, mac)) = line.split_once('\t')
                    && !mac.is_empty()
                {
                    state
                        .nics
                        .entry(domain.to_owned())
                        .or_default()
                        .push(mac.to_ascii_lowercase());
                }
            }
            _ => {}
        }
    }
    // zfs lists snapshots in the order they were taken; creation (seconds) only refines it.
    snapshots.sort_by_key(|s| s.creation);
    state.proto.snapshots = snapshots;
    if let Some(ds) = state.datasets.get(proto) {
        state.proto.exists = true;
        state.proto.synced = ds.prop(prop::SYNCED).and_then(|v| v.parse().ok());
        state.proto.last_error = ds.prop(prop::SYNC_ERROR).map(str::to_owned);
    }
    state
}

/// `<lab:net xmlns:lab="..." lab="LAB" sha256="HEX"/>` as read back from libvirt.
fn parse_network_marker(text: &str) -> Option<NetworkMarker> {
    let attr = |key: &str| -> Option<String> {
        for quote in ['"', '\''] {
            let open = format!(" {key}={quote}");
            if let Some(start) = text.find(&open) {
                let rest = &text[start + open.len()..];
                return rest.find(quote).map(|end| rest[..end].to_owned());
            }
        }
        None
    };
    Some(NetworkMarker {
        lab: attr("lab")?,
        sha256: attr("sha256")?,
    })
}

/// `name TAB property TAB value`.
fn row(line: &str) -> Option<(&str, &str, &str)> {
    let mut fields = line.splitn(3, '\t');
    Some((fields.next()?, fields.next()?, fields.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section() {
        let text = "#snapshots\n\
            p/proto\tguid\t99\np/proto@b\tguid\t22\np/proto@b\tcreation\t200\np/proto@a\tguid\t11\np/proto@a\tcreation\t100\n\
            #datasets\n\
            p\torigin\t-\np/proto\tlab:synced\t1234\np/proto\tlab:sync-error\t-\n\
            p/r1\torigin\tp/proto@a\np/r1\tmounted\tno\np/r1\tlab:lab\tdemo\np/r1\tlab:node\t-\np/r1\tlab:owner\tops@ctl\np/r1@s\tlab:lab\tx\n\
            #domains\n 3    r1   running\n -    r2   shut off\n\
            #networks\nlab-demo\tactive\t<lab:net xmlns:lab='https://lab.invalid/schema/1' lab='demo' sha256='ab12'/>\ndefault\tinactive\t\n\
            #nics\nr1\t52:54:00:01:00:01\nr1\t52:54:01:01:00:01\n#end\n";
        let s = parse("p/proto", text);
        assert_eq!(
            s.proto
                .snapshots
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.proto.snapshots[1].guid, "22");
        assert!(s.proto.exists);
        assert_eq!(s.proto.synced, Some(1234));
        assert_eq!(s.proto.last_error, None);
        let r1 = &s.datasets["p/r1"];
        assert_eq!(r1.origin.as_deref(), Some("p/proto@a"));
        assert_eq!(r1.prop(prop::LAB), Some("demo"));
        assert_eq!(r1.prop(prop::NODE), None);
        assert_eq!(r1.prop(prop::OWNER), Some("ops@ctl"));
        assert!(!s.datasets.contains_key("p/r1@s"));
        assert!(s.domain_running("r1"));
        assert_eq!(s.domains["r2"].state, "shut off");
        assert_eq!(
            s.networks["lab-demo"].marker,
            Some(NetworkMarker {
                lab: "demo".into(),
                sha256: "ab12".into()
            })
        );
        assert!(s.networks["lab-demo"].active);
        assert!(!s.networks["default"].active && s.networks["default"].marker.is_none());
        assert_eq!(s.nics["r1"], ["52:54:00:01:00:01", "52:54:01:01:00:01"]);
        assert_eq!(
            s.pins(),
            [Pin {
                snapshot: "a".into(),
                dataset: "p/r1".into(),
                lab: Some("demo".into()),
                node: None
            }]
        );
    }

    #[test]
    fn a_missing_proto_is_absent_not_an_error() {
        let s = parse(
            "p/proto",
            "#snapshots\n#datasets\np\torigin\t-\n#domains\n#end\n",
        );
        assert!(!s.proto.exists);
        assert!(s.proto.snapshots.is_empty());
    }
}
