//! What a hypervisor holds, read in one round trip: proto snapshots, datasets beside the
//! clones and their `lab:` properties, and libvirt domains.

use std::collections::BTreeMap;

use lab_exec::{Cmd, ExecError, Executor};
use lab_model::Hypervisor;

/// ZFS user properties `lab` records on every clone it makes.
pub mod prop {
    pub const LAB: &str = "lab:lab";
    pub const NODE: &str = "lab:node";
    pub const OWNER: &str = "lab:owner";
    pub const ORIGIN: &str = "lab:origin";
    pub const ORIGIN_GUID: &str = "lab:origin-guid";
    pub const OVERLAY: &str = "lab:overlay-sha256";
    pub const CREATED: &str = "lab:created";
    /// `filling` from the clone until its tree is copied in and it is unmounted, then `ready`.
    pub const STATE: &str = "lab:state";
    pub const ALL: &[&str] = &[
        LAB,
        NODE,
        OWNER,
        ORIGIN,
        ORIGIN_GUID,
        OVERLAY,
        CREATED,
        STATE,
    ];
    /// The value of [`STATE`] while a clone is being filled.
    pub const FILLING: &str = "filling";
}

/// The namespace of the libvirt metadata `lab` puts on domains it defines.
pub const DOMAIN_NS: &str = "https://lab.invalid/schema/1";

/// The probe: constant text, dataset names passed as positional arguments (quoted like any
/// other argument), sections marked so the output can be split.
const PROBE: &str = r#"echo '#snapshots'
zfs get -H -p -o name,property,value guid,creation -r "$1" 2>/dev/null || true
echo '#datasets'
zfs get -H -p -o name,property,value origin,mounted,type,lab:lab,lab:node,lab:owner,lab:origin,lab:origin-guid,lab:overlay-sha256,lab:created,lab:state -d 1 "$2" 2>/dev/null || true
echo '#domains'
virsh -q list --all 2>/dev/null || true
echo '#end'
"#;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// `pool/proto@name`
    pub full: String,
    pub name: String,
    pub guid: String,
    pub creation: u64,
}

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

/// One hypervisor's state.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostState {
    /// Proto snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    pub datasets: BTreeMap<String, Dataset>,
    pub domains: BTreeMap<String, Domain>,
}

impl HostState {
    pub fn domain_running(&self, name: &str) -> bool {
        self.domains.get(name).is_some_and(|d| d.state == "running")
    }
}

pub fn probe_cmd(hv: &Hypervisor) -> Cmd {
    Cmd::query([
        "sh",
        "-c",
        PROBE,
        "lab-probe",
        hv.proto.as_str(),
        hv.clones.as_str(),
    ])
}

pub async fn probe(exec: &Executor, hv: &Hypervisor) -> Result<HostState, ExecError> {
    let out = exec.run(&hv.name, &probe_cmd(hv)).await?;
    Ok(parse(&out.stdout))
}

/// Splits the probe's output into its sections.
pub fn parse(text: &str) -> HostState {
    let mut state = HostState::default();
    let mut section = "";
    let mut snaps: BTreeMap<String, Snapshot> = BTreeMap::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix('#') {
            section = match s {
                "snapshots" => "snapshots",
                "datasets" => "datasets",
                "domains" => "domains",
                _ => "",
            };
            continue;
        }
        match section {
            "snapshots" | "datasets" => {
                let mut fields = line.splitn(3, '\t');
                let (Some(name), Some(property), Some(value)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                // Snapshots are the rows whose *name* has an `@` (values may have one too).
                if name.contains('@') != (section == "snapshots") {
                    continue;
                }
                if section == "snapshots" {
                    let entry = snaps.entry(name.to_owned()).or_insert_with(|| Snapshot {
                        full: name.to_owned(),
                        name: name.rsplit('@').next().unwrap_or(name).to_owned(),
                        guid: String::new(),
                        creation: 0,
                    });
                    match property {
                        "guid" => entry.guid = value.to_owned(),
                        "creation" => entry.creation = value.parse().unwrap_or(0),
                        _ => {}
                    }
                } else {
                    let ds = state
                        .datasets
                        .entry(name.to_owned())
                        .or_insert_with(|| Dataset {
                            name: name.to_owned(),
                            ..Dataset::default()
                        });
                    match (property, value) {
                        ("origin", "-") | (_, "-") => {}
                        ("origin", v) => ds.origin = Some(v.to_owned()),
                        ("mounted", v) => ds.mounted = v == "yes",
                        ("type", _) => {}
                        (p, v) => {
                            ds.props.insert(p.to_owned(), v.to_owned());
                        }
                    }
                }
            }
            "domains" => {
                // " 3    vpp0-1   running" or " -    vpp0-2   shut off"
                let mut words = line.split_whitespace();
                let (Some(_id), Some(name)) = (words.next(), words.next()) else {
                    continue;
                };
                let state_text = words.collect::<Vec<_>>().join(" ");
                state.domains.insert(
                    name.to_owned(),
                    Domain {
                        name: name.to_owned(),
                        state: state_text,
                    },
                );
            }
            _ => {}
        }
    }
    let mut snapshots: Vec<Snapshot> = snaps.into_values().collect();
    snapshots.sort_by(|a, b| a.creation.cmp(&b.creation).then(a.name.cmp(&b.name)));
    state.snapshots = snapshots;
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section() {
        let text = "#snapshots\n\
            p/proto\tguid\t99\np/proto@b\tguid\t22\np/proto@b\tcreation\t200\np/proto@a\tguid\t11\np/proto@a\tcreation\t100\n\
            #datasets\n\
            p\torigin\t-\np/r1\torigin\tp/proto@a\np/r1\tmounted\tno\np/r1\tlab:lab\tdemo\np/r1\tlab:node\t-\np/r1\tlab:owner\tops@ctl\np/r1@s\tlab:lab\tx\n\
            #domains\n 3    r1   running\n -    r2   shut off\n#end\n";
        let s = parse(text);
        assert_eq!(
            s.snapshots
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.snapshots[1].guid, "22");
        let r1 = &s.datasets["p/r1"];
        assert_eq!(r1.origin.as_deref(), Some("p/proto@a"));
        assert_eq!(r1.prop(prop::LAB), Some("demo"));
        assert_eq!(r1.prop(prop::NODE), None);
        assert_eq!(r1.prop(prop::OWNER), Some("ops@ctl"));
        assert!(!s.datasets.contains_key("p/r1@s"));
        assert_eq!(s.snapshots.len(), 2);
        assert!(s.domain_running("r1"));
        assert_eq!(s.domains["r2"].state, "shut off");
    }
}
