//! The one reader of a hypervisor: its proto's snapshots, every dataset of the proto's pool
//! with `lab`'s properties, and its libvirt domains, in one round trip. Create, destroy,
//! status and every proto verb decide from this [`HostState`] and nothing else.
//!
//! Long: the state's types and the one parser that fills them from the probe's sections are
//! read together (a field and the row that sets it); the parser's tests are in
//! `state_tests.rs`.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use lab_exec::{Cmd, ExecError, Executor};
use lab_model::Hypervisor;
use lab_model::impair::Impairment;

use crate::own::prop;

/// Constant text; the pool, the proto, the detail, the marker namespace and a nonce are
/// positional arguments (quoted like any other). Sections and each command's exit status
/// (`rc N`, so that a failure never reads as absence) are marked by lines that start with `#`
/// and the nonce: a property value or a marker with a newline cannot forge one, since nobody
/// knows the nonce before the probe runs. Datasets are listed first and then read, so that
/// the pool's snapshots (there may be thousands) are never read; the list is printed too, so
/// that a value with a newline cannot invent a dataset. Every domain's marker and every
/// network's mark is read here, in the same round trip; a read that fails is `?`, not "none".
const PROBE: &str = include_str!("probe.sh");

/// One snapshot of a proto dataset or replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// `pool/proto@name`
    pub full: String,
    pub name: String,
    pub guid: String,
    pub creation: u64,
    /// The pool's transaction group when it was taken (received): the order snapshots were
    /// taken in, which a clock set back cannot change.
    #[serde(skip)]
    pub createtxg: u64,
    /// How many holds it has (`userrefs`): zfs refuses to destroy it while there are any.
    pub userrefs: u32,
    /// The tags of those holds, where zfs can list them (see [`ZfsInfo::holds_listed`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
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

/// A snapshot `lab snapshot` took of a clone: its `lab:snapshot` is set on it (not inherited)
/// and names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CloneSnapshot {
    /// `pool/clone@name`
    pub full: String,
    /// The part after `@`: the lab snapshot's name.
    pub name: String,
    pub creation: u64,
    /// The pool's transaction group when it was taken: the order of a clone's snapshots.
    #[serde(skip)]
    pub createtxg: u64,
    /// The space only it holds, in bytes.
    pub used: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Domain {
    pub name: String,
    /// `running`, `shut off`, `paused` ...
    pub state: String,
    /// `lab`'s marker in the domain's metadata: the lab and node that defined it.
    pub marker: MarkerRead,
}

impl Domain {
    /// Whether its QEMU process lives (running, paused, shutting down, suspended): it holds
    /// its wires' ports and its network, and must be stopped before it is replaced.
    pub fn active(&self) -> bool {
        !matches!(self.state.as_str(), "shut off" | "crashed")
    }
}

/// What reading a domain's marker gave.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub enum MarkerRead {
    /// The domain has none: `lab` did not define it.
    #[default]
    None,
    Some(DomainMarker),
    /// It could not be read: whose the domain is, is unknown.
    Unreadable,
}

/// What `lab` records in a domain it defines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainMarker {
    pub lab: String,
    pub node: String,
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
    /// A cut resumable receive left this token (`receive_resume_token`): the send that
    /// resumes it continues where it stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// The proto is encrypted: it is replicated with raw sends, never decrypted on the way.
    pub encrypted: bool,
}

/// What the hypervisor's zfs can do, and the tools beside it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ZfsInfo {
    /// The pool's `version`: `-` for a pool with feature flags (OpenZFS), a number for an
    /// older pool (zfs-fuse's is 23).
    pub pool_version: String,
    /// `pv`, `mbuffer`: what a bandwidth limit or byte progress can use there.
    pub tools: Vec<String>,
    /// Whether `zfs holds` could list the tags of the proto's holds (zfs-fuse cannot; its
    /// holds are still counted in `userrefs`).
    pub holds_listed: bool,
}

impl ZfsInfo {
    /// OpenZFS with feature flags: resumable receives (`recv -s`, `send -t`), compressed and
    /// raw sends, `volmode`.
    pub fn modern(&self) -> bool {
        self.pool_version == "-" || self.pool_version.parse::<u32>().is_ok_and(|v| v >= 5000)
    }

    pub fn has_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == tool)
    }
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
    /// The clone's own lab snapshots (`lab snapshot`): they pin nothing more than the clone
    /// does, and go with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
}

/// A libvirt network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Network {
    pub name: String,
    pub active: bool,
    /// A redefinition keeps it (libvirt refuses a second network of one name).
    pub uuid: Option<String>,
    /// `lab`'s ownership mark in the network's metadata (read for `lab-*` networks only).
    pub marker: Option<NetworkMarker>,
    /// Its Linux bridge.
    pub bridge: Option<String>,
    /// How many interfaces are plugged into its bridge (running domains' taps).
    pub ports: usize,
    /// An operator's network (not `lab-*`): its IPv4 prefixes and DHCP reservations.
    pub dhcp: Option<crate::dhcp::NetworkDhcp>,
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
    /// Also every domain's NICs with their link state (each domain's definition, read with
    /// its marker by one virsh for up to 250 domains): for `lab link` and `reconcile`.
    Nics,
    /// The NICs, without the snapshots `lab snapshot` took of clones (which `status` does not
    /// show): [`HostState::clone_snapshots`] stays empty.
    Status,
}

/// A row of `virsh -q list --all` (under `LC_ALL=C`): the domain's name and state. The states
/// virsh prints are known, so a name with spaces in it (`r2 old`) cannot pass for another
/// domain (`r2`, state `old shut off`); a state it does not know is the row's last word.
fn domain_row(line: &str) -> Option<(&str, &str)> {
    const STATES: [&str; 7] = [
        "running",
        "idle",
        "paused",
        "in shutdown",
        "shut off",
        "crashed",
        "pmsuspended",
    ];
    let line = line.trim();
    let (_id, rest) = line.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let state = STATES
        .into_iter()
        .find(|s| {
            rest.strip_suffix(s)
                .is_some_and(|name| name.ends_with(char::is_whitespace))
        })
        .or_else(|| rest.rsplit(char::is_whitespace).next())?;
    let name = rest[..rest.len() - state.len()].trim_end();
    (!name.is_empty()).then_some((name, state))
}

/// What one hypervisor holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostState {
    pub proto: ProtoState,
    pub zfs: ZfsInfo,
    /// Every filesystem and volume of the proto's pool, by name.
    pub datasets: BTreeMap<String, Dataset>,
    /// Dataset → the snapshots `lab snapshot` took of it, oldest first (not read with
    /// [`Detail::Status`]).
    pub clone_snapshots: BTreeMap<String, Vec<CloneSnapshot>>,
    pub domains: BTreeMap<String, Domain>,
    pub networks: BTreeMap<String, Network>,
    /// Domain → the MACs of its NICs, in order (with [`Detail::Nics`] or [`Detail::Status`] only).
    pub nics: BTreeMap<String, Vec<String>>,
    /// `DOMAIN/MAC` (lower case) → how the frames that NIC sends are impaired (`lab link
    /// set`'s relays that run; with [`Detail::Nics`] or [`Detail::Status`] only).
    pub impairments: BTreeMap<String, Impairment>,
    /// `DOMAIN/MAC` (lower case) → a UDP wire's `LOCAL_ADDRESS:PORT>REMOTE_ADDRESS:PORT`, as
    /// the domain has it (with [`Detail::Nics`] or [`Detail::Status`] only).
    pub wires: BTreeMap<String, String>,
    /// `DOMAIN/MAC` of the NICs `create` plugged into a running domain through QEMU's monitor
    /// (libvirt cannot hot-plug a udp interface): libvirt's live definition does not list
    /// them; its metadata does, until the domain stops (with [`Detail::Nics`] or [`Detail::Status`] only).
    pub hot_nics: BTreeSet<String>,
    /// Domain → the MACs of its NICs whose link is down (`lab link down`; with
    /// [`Detail::Nics`] or [`Detail::Status`] only).
    pub links_down: BTreeMap<String, BTreeSet<String>>,
    /// The domains, among those `status` asked about, that run and whose node answered with
    /// an ssh banner ([`probe_looking`]).
    pub ready: BTreeSet<String>,
    /// Why libvirt could not be read, when it could not: nothing about domains is known then.
    pub libvirt_error: Option<String>,
    /// The UDP ports something on the host has bound; `None` when they could not be read.
    pub udp_ports: Option<BTreeSet<u16>>,
    /// The host's IPv4 addresses with their interfaces; `None` when they could not be read.
    pub ipv4: Option<Vec<(String, Ipv4Net)>>,
}

impl HostState {
    /// Whether the domain's QEMU process lives (see [`Domain::active`]).
    pub fn domain_running(&self, name: &str) -> bool {
        self.domains.get(name).is_some_and(Domain::active)
    }

    /// The snapshots `lab snapshot` took of `dataset`, oldest first.
    pub fn snapshots_of(&self, dataset: &str) -> &[CloneSnapshot] {
        self.clone_snapshots.get(dataset).map_or(&[], Vec::as_slice)
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
                    snapshots: self
                        .snapshots_of(&ds.name)
                        .iter()
                        .map(|s| s.name.clone())
                        .collect(),
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
    probe_cmd_looking(hv, detail, &[])
}

/// The probe, which also looks (with [`Detail::Status`]) whether each `(domain, address)` runs
/// and answers with an ssh banner: `status` in one round trip.
pub fn probe_cmd_looking(hv: &Hypervisor, detail: Detail, ready: &[(&str, &str)]) -> Cmd {
    let pairs: Vec<String> = ready.iter().map(|(d, a)| format!("{d} {a}")).collect();
    let pairs = if pairs.is_empty() {
        "none".to_owned()
    } else {
        pairs.join(" ")
    };
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
            Detail::Status => "status",
        },
        crate::own::DOMAIN_NS,
        &pairs,
        &nonce(),
    ])
}

/// 64 random bits in hex: the probe's section marks, unknown to anything it reads.
pub(crate) fn nonce() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom: the clock and the pid, which no property value can predict either.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = ((t as u64) ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// For scripted executors: an answer to the probe command `line`, written with plain marks
/// (`#section`, `#rc N`, `#end`), given the nonce that command line carries.
pub fn scripted_answer(line: &str, text: &str) -> String {
    let nonce = line.rsplit(' ').next().unwrap_or_default();
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) => format!("#{nonce} {rest}\n"),
            None => format!("{l}\n"),
        })
        .collect()
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
    probe_by(exec, hv, &probe_cmd(hv, detail)).await
}

/// Reads `hv` in one round trip, with its NICs, and looks whether each `(domain, address)`
/// is ready (see [`probe_cmd_looking`]).
pub async fn probe_looking(
    exec: &Executor,
    hv: &Hypervisor,
    ready: &[(&str, &str)],
) -> Result<HostState, ExecError> {
    probe_by(exec, hv, &probe_cmd_looking(hv, Detail::Status, ready)).await
}

async fn probe_by(exec: &Executor, hv: &Hypervisor, cmd: &Cmd) -> Result<HostState, ExecError> {
    // The same probe, already read in the lock's exchange (see `lock::lock`): all its words
    // but the nonce are this one's. Read again when that answer does not parse.
    let same = |argv: &[String]| {
        argv.len() == cmd.argv.len() && argv[..argv.len() - 1] == cmd.argv[..cmd.argv.len() - 1]
    };
    if let Some((argv, out)) = exec.take_answer(&hv.name, same) {
        let nonce = argv.last().map(String::as_str).unwrap_or_default();
        if let Ok(state) = parse(&hv.proto, &out.stdout, nonce) {
            return Ok(state);
        }
    }
    // A dataset another run destroys between `zfs list` and `zfs get` fails the read: that is
    // a moment on a shared hypervisor, not a state, so it is read again (at most twice).
    let mut tries = 0;
    loop {
        let out = exec.run(&hv.name, cmd).await?;
        let nonce = cmd.argv.last().map(String::as_str).unwrap_or_default();
        match parse(&hv.proto, &out.stdout, nonce) {
            Ok(state) => return Ok(state),
            Err(message) if tries == 2 || !exec.is_live() => {
                return Err(ExecError::BadAnswer {
                    host: hv.name.clone(),
                    command: "the probe (sh -c ... lab-probe)".to_owned(),
                    message,
                });
            }
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }
    }
}

/// Splits the probe's output into its sections; `proto` is the hypervisor's proto dataset.
/// Anything odd is an error, never a guess: a section whose command failed, output that ends
/// early, a dataset row with other than four fields, for a dataset `zfs list` did not name, or
/// twice. Only locally set `lab:` properties count (an inherited one is someone else's).
pub fn parse(proto: &str, text: &str, nonce: &str) -> Result<HostState, String> {
    let mut state = HostState {
        proto: ProtoState {
            dataset: proto.to_owned(),
            ..ProtoState::default()
        },
        ..HostState::default()
    };
    let snapshot_prefix = format!("{proto}@");
    let mut snapshots: Vec<Snapshot> = Vec::new();
    let mut names: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut seen: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
    let mut rc: BTreeMap<&str, &str> = BTreeMap::new();
    let mut snap_names: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // Per snapshot: its mark (value, source), and what else was read of it.
    type Mark<'t> = Option<(&'t str, &'t str)>;
    let mut snap_rows: BTreeMap<&str, (Mark<'_>, CloneSnapshot)> = BTreeMap::new();
    let mut markers: Vec<(&str, &str)> = Vec::new();
    let mut holds: Vec<(String, String)> = Vec::new();
    let mut udp = BTreeSet::new();
    let mut addrs = Vec::new();
    let mut addrs_odd = false;
    let mut udp_odd = false;
    let mut section = "";
    let mut ended = false;
    let mark = format!("#{nonce} ");
    for line in text.lines() {
        // Only a line with the nonce is a mark; anything else is data of the section.
        if let Some(control) = line.strip_prefix(&mark) {
            if let Some(status) = control.strip_prefix("rc ") {
                rc.insert(section, status.trim());
                continue;
            }
            section = match control {
                "snapshots" | "zfs" | "holds" | "names" | "datasets" | "labsnaps"
                | "labsnapprops" | "domains" | "markers" | "networks" | "addrs" | "udp"
                | "nics" | "ready" | "relays" => control,
                "end" => {
                    ended = true;
                    ""
                }
                _ => return Err(format!("an unknown section `{control}`")),
            };
            continue;
        }
        if ended {
            return Err("data after the end of the answer".to_owned());
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
                            createtxg: 0,
                            userrefs: 0,
                            holds: Vec::new(),
                        });
                        snapshots.len() - 1
                    }
                };
                match property {
                    "guid" => snapshots[i].guid = value.to_owned(),
                    "creation" => snapshots[i].creation = value.parse().unwrap_or(0),
                    "createtxg" => snapshots[i].createtxg = value.parse().unwrap_or(0),
                    "userrefs" => snapshots[i].userrefs = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            "zfs" => {
                let mut f = line.splitn(3, '\t');
                match (f.next(), f.next(), f.next()) {
                    (Some("version"), Some(v), None) => state.zfs.pool_version = v.to_owned(),
                    (Some("tool"), Some(t), None) => state.zfs.tools.push(t.to_owned()),
                    (Some("prop"), Some("receive_resume_token"), Some(v)) if v != "-" => {
                        state.proto.resume_token = Some(v.to_owned());
                    }
                    (Some("prop"), Some("encryption"), Some(v)) => {
                        state.proto.encrypted = v != "off" && v != "-";
                    }
                    _ => {}
                }
            }
            "holds" => {
                // NAME TAB TAG TAB TIMESTAMP: a tag with a tab or a newline (anyone with `zfs
                // allow hold` can set one) breaks a row, and the whole answer is refused.
                let fields: Vec<&str> = line.split('\t').collect();
                let [name, tag, _when] = fields[..] else {
                    return Err(format!(
                        "a hold row with {} fields (a tag with a tab or a newline?): {line:?}",
                        fields.len()
                    ));
                };
                holds.push((name.trim().to_owned(), tag.trim().to_owned()));
            }
            "names" => {
                names.insert(line);
            }
            "datasets" => {
                let fields: Vec<&str> = line.split('\t').collect();
                let [name, property, value, source] = fields[..] else {
                    return Err(format!(
                        "a dataset row with {} fields (a property value with a tab or a newline?): {line:?}",
                        fields.len()
                    ));
                };
                if !names.contains(name) {
                    return Err(format!(
                        "a row for `{name}`, which `zfs list` did not name (a property value with a newline?)"
                    ));
                }
                if !seen.insert((name, property)) {
                    return Err(format!(
                        "`{name}` `{property}` twice (a property value with a newline?)"
                    ));
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
                    // Only what was set on this dataset itself is its own.
                    (p, v) if source == "local" => {
                        ds.props.insert(p.to_owned(), v.to_owned());
                    }
                    _ => {}
                }
            }
            "labsnaps" => {
                snap_names.insert(line);
            }
            "labsnapprops" => {
                let fields: Vec<&str> = line.split('\t').collect();
                let [full, property, value, source] = fields[..] else {
                    return Err(format!(
                        "a clone snapshot row with {} fields (a property value with a tab or a newline?): {line:?}",
                        fields.len()
                    ));
                };
                if !snap_names.contains(full) {
                    return Err(format!(
                        "a row for `{full}`, which `zfs list` did not name (a property value with a newline?)"
                    ));
                }
                let Some((_, short)) = full.split_once('@') else {
                    return Err(format!("`{full}` is not a snapshot"));
                };
                let (mark, snap) = snap_rows.entry(full).or_insert_with(|| {
                    (
                        None,
                        CloneSnapshot {
                            full: full.to_owned(),
                            name: short.to_owned(),
                            creation: 0,
                            createtxg: 0,
                            used: 0,
                        },
                    )
                });
                match property {
                    prop::SNAPSHOT if mark.is_some() => {
                        return Err(format!("`{full}` `{property}` twice"));
                    }
                    prop::SNAPSHOT => *mark = Some((value, source)),
                    "creation" => snap.creation = value.parse().unwrap_or(0),
                    "createtxg" => snap.createtxg = value.parse().unwrap_or(0),
                    "used" => snap.used = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            "domains" => {
                // " 3    vpp0-1   running" or " -    vpp0-2   shut off"; a name may hold
                // spaces (libvirt refuses only newlines), so the state is read from the end.
                let Some((name, domain_state)) = domain_row(line) else {
                    continue;
                };
                state.domains.insert(
                    name.to_owned(),
                    Domain {
                        name: name.to_owned(),
                        state: domain_state.to_owned(),
                        // Until the markers section says: a domain it does not name (its
                        // answer did not come) is not known to be unmarked.
                        marker: MarkerRead::Unreadable,
                    },
                );
            }
            "markers" => {
                if let Some((domain, marker)) = line.split_once('\t') {
                    markers.push((domain, marker));
                }
            }
            "networks" => {
                let mut f = line.splitn(7, '\t');
                let (Some(name), Some(active)) = (f.next(), f.next()) else {
                    continue;
                };
                let uuid = f.next().filter(|u| !u.is_empty()).map(str::to_owned);
                let marker = f.next().and_then(parse_network_marker);
                let bridge = f.next().filter(|b| !b.is_empty()).map(str::to_owned);
                let ports = f.next().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
                let dhcp = (!name.starts_with("lab-"))
                    .then(|| crate::dhcp::parse_network(f.next().unwrap_or_default()));
                state.networks.insert(
                    name.to_owned(),
                    Network {
                        name: name.to_owned(),
                        active: active == "active",
                        uuid,
                        marker,
                        bridge,
                        ports,
                        dhcp,
                    },
                );
            }
            "addrs" => match line
                .split_once('\t')
                .and_then(|(i, a)| Some((i, host_net(a)?)))
            {
                Some((iface, net)) => addrs.push((iface.to_owned(), net)),
                None => addrs_odd = true,
            },
            "udp" => match u16::from_str_radix(line.trim(), 16) {
                Ok(port) => {
                    udp.insert(port);
                }
                Err(_) => udp_odd = true,
            },
            "relays" => {
                // `lab link set`'s relays, from their command lines: `BIN relay --socket S
                // --to ADDR --label DOMAIN/MAC --delay-us N ...`.
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(at) = words.iter().position(|w| *w == "--label")
                    && let Some((domain, mac)) = words.get(at + 1).and_then(|l| l.split_once('/'))
                    && let Some(how) = Impairment::from_relay_args(&words[at + 2..])
                {
                    state
                        .impairments
                        .insert(format!("{domain}/{}", mac.to_ascii_lowercase()), how);
                }
            }
            "ready" => {
                state.ready.insert(line.to_owned());
            }
            "nics" => {
                // DOMAIN, MAC, `up` or `down`, the wire (`LOCAL>REMOTE` or `-`), and `hot`
                // for a NIC plugged in through QEMU's monitor.
                let mut fields = line.split('\t');
                // A MAC that is not one (the metadata's words are anyone's who can write
                // a domain's metadata) is left out: it would reach the monitor and scripts.
                if let (Some(domain), Some(mac)) = (fields.next(), fields.next())
                    && lab_model::names::mac(&mac.to_ascii_lowercase()).is_ok()
                {
                    let mac = mac.to_ascii_lowercase();
                    let key = format!("{domain}/{mac}");
                    if fields.next() == Some("down") {
                        state
                            .links_down
                            .entry(domain.to_owned())
                            .or_default()
                            .insert(mac.clone());
                    }
                    if let Some(wire) = fields.next().filter(|w| *w != "-" && !w.is_empty()) {
                        state.wires.insert(key.clone(), wire.to_owned());
                    }
                    if fields.next() == Some("hot") {
                        state.hot_nics.insert(key);
                    }
                    // Every NIC, a MAC twice included: two NICs with one MAC is drift.
                    state.nics.entry(domain.to_owned()).or_default().push(mac);
                }
            }
            _ => {}
        }
    }
    if !ended {
        return Err("the answer ended early".to_owned());
    }
    match rc.get("snapshots") {
        Some(&"0") | Some(&"absent") => {}
        other => {
            return Err(format!(
                "reading the proto's snapshots failed ({})",
                status(other)
            ));
        }
    }
    if rc.get("zfs") != Some(&"0") {
        return Err(format!(
            "reading what zfs can do failed ({})",
            status(rc.get("zfs"))
        ));
    }
    match rc.get("holds") {
        Some(&"0") => state.zfs.holds_listed = true,
        Some(&"unsupported") => state.zfs.holds_listed = false,
        other => {
            return Err(format!(
                "listing the proto's holds failed ({})",
                status(other)
            ));
        }
    }
    for (name, tag) in holds {
        match snapshots.iter_mut().find(|s| s.full == name) {
            Some(s) => s.holds.push(tag),
            None => {
                return Err(format!(
                    "a hold on `{name}`, which is no snapshot the probe listed (a tag with a \
                     newline?)"
                ));
            }
        }
    }
    for section in ["names", "datasets"] {
        if rc.get(section) != Some(&"0") {
            return Err(format!(
                "reading the pool's datasets failed (`zfs` {}, section {section})",
                status(rc.get(section))
            ));
        }
    }
    // `skipped`: a status probe, which does not read them (both or neither).
    let skipped = |section| rc.get(section) == Some(&"skipped");
    for section in ["labsnaps", "labsnapprops"] {
        if rc.get(section) != Some(&"0") && !(skipped("labsnaps") && skipped("labsnapprops")) {
            return Err(format!(
                "reading the clones' snapshots failed (`zfs` {}, section {section})",
                status(rc.get(section))
            ));
        }
    }
    // Only a snapshot whose mark was set on it and names it is one `lab snapshot` took.
    for (full, (mark, snap)) in snap_rows {
        if mark != Some((snap.name.as_str(), "local")) {
            continue;
        }
        // Their order decides what a restore drops: never guessed.
        if snap.createtxg == 0 {
            return Err(format!("`{full}` without its createtxg"));
        }
        let dataset = full.split_once('@').map_or(full, |(d, _)| d);
        state
            .clone_snapshots
            .entry(dataset.to_owned())
            .or_default()
            .push(snap);
    }
    for snaps in state.clone_snapshots.values_mut() {
        snaps.sort_by_key(|s| (s.createtxg, s.creation));
    }
    for section in ["domains", "markers", "networks"] {
        if state.libvirt_error.is_none() && rc.get(section) != Some(&"0") {
            state.libvirt_error = Some(format!(
                "reading libvirt's {section} failed (status {})",
                rc.get(section).unwrap_or(&"unknown")
            ));
        }
    }
    if rc.get("addrs") == Some(&"0") && !addrs_odd {
        state.ipv4 = Some(addrs);
    }
    if rc.get("udp") == Some(&"0") && !udp_odd {
        state.udp_ports = Some(udp);
    }
    for (domain, marker) in markers {
        if let Some(d) = state.domains.get_mut(domain) {
            d.marker = match marker {
                "" => MarkerRead::None,
                "?" => MarkerRead::Unreadable,
                text => parse_domain_marker(text).map_or(MarkerRead::Unreadable, MarkerRead::Some),
            };
        }
    }
    // Oldest first: by transaction group (a clock set back on the hypervisor cannot reorder
    // it, second-round review #12b), by creation where a probe did not read it.
    snapshots.sort_by_key(|s| (s.createtxg, s.creation));
    state.proto.snapshots = snapshots;
    if let Some(ds) = state.datasets.get(proto) {
        state.proto.exists = true;
        state.proto.synced = ds.prop(prop::SYNCED).and_then(|v| v.parse().ok());
        state.proto.last_error = ds.prop(prop::SYNC_ERROR).map(str::to_owned);
    }
    Ok(state)
}

/// The value of attribute `key` in an XML element's text, single- or double-quoted.
pub(crate) fn attribute(text: &str, key: &str) -> Option<String> {
    for quote in ['"', '\''] {
        let open = format!(" {key}={quote}");
        if let Some(start) = text.find(&open) {
            let rest = &text[start + open.len()..];
            return rest.find(quote).map(|end| rest[..end].to_owned());
        }
    }
    None
}

/// `<lab lab="LAB" node="NODE"/>` (with or without a namespace prefix), as libvirt prints it.
fn parse_domain_marker(text: &str) -> Option<DomainMarker> {
    Some(DomainMarker {
        lab: attribute(text, "lab")?,
        node: attribute(text, "node")?,
    })
}

/// `<lab:net xmlns:lab="..." lab="LAB" sha256="HEX"/>` as read back from libvirt.
fn parse_network_marker(text: &str) -> Option<NetworkMarker> {
    Some(NetworkMarker {
        lab: attribute(text, "lab")?,
        sha256: attribute(text, "sha256")?,
    })
}

/// An interface's address as `ip -o addr` shows it: `a.b.c.d/len`, or a point-to-point
/// `a.b.c.d` (its own address only).
fn host_net(text: &str) -> Option<Ipv4Net> {
    text.parse::<Ipv4Net>()
        .ok()
        .or_else(|| Some(Ipv4Net::from(text.parse::<std::net::Ipv4Addr>().ok()?)))
}

/// `name TAB property TAB value`.
fn row(line: &str) -> Option<(&str, &str, &str)> {
    let mut fields = line.splitn(3, '\t');
    Some((fields.next()?, fields.next()?, fields.next()?))
}

/// A section's recorded exit status, for messages.
fn status(rc: Option<&&str>) -> String {
    match rc {
        Some(code) if code.bytes().all(|b| b.is_ascii_digit()) => format!("exit status {code}"),
        Some(other) => (*other).to_owned(),
        None => "no exit status: the section is missing".to_owned(),
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
