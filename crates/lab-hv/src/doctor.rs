//! `lab doctor`: what a hypervisor needs before a lab's first create, asked in one round trip
//! per hypervisor, all at once, and judged here: ok, warn or fail, each failure with its fix.
//!
//! The underlay is checked for real: for every pair of hypervisors a link crosses, the far
//! end listens on the UDP port its end of the wire will use while the near end sends to it,
//! both inside their own probe (the probes run at the same time, so no extra round trip).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use lab_exec::{Cmd, Executor};
use lab_model::{Hypervisor, Lab, LabNode, MgmtMode, Storage};

const SCRIPT: &str = include_str!("doctor.sh");

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check on one hypervisor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a warning or a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check of one hypervisor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostDoctor {
    pub host: String,
    pub checks: Vec<Check>,
}

impl HostDoctor {
    pub fn worst(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DoctorReport {
    pub hypervisors: Vec<HostDoctor>,
}

impl DoctorReport {
    pub fn failed(&self) -> usize {
        self.hypervisors
            .iter()
            .flat_map(|h| &h.checks)
            .filter(|c| c.verdict == Verdict::Fail)
            .count()
    }
}

/// One UDP check of the underlay, as the probe script takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    listen: bool,
    addr: Ipv4Addr,
    port: u16,
    message: String,
}

/// The underlay checks of a lab: per hypervisor, what it listens for and what it sends, one
/// per ordered pair of hypervisors that a link crosses (the first such wire).
fn underlay_probes(
    lab: &Lab,
    hosts: &[&Hypervisor],
    run: &str,
) -> BTreeMap<String, Vec<(Probe, String)>> {
    let mut probes: BTreeMap<String, Vec<(Probe, String)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let on = |name: &str| lab.nodes.iter().find(|n| n.name == name);
    for node in &lab.nodes {
        for i in &node.interfaces {
            let (Some(wire), Some(peer)) = (i.wire, i.peer.as_deref().and_then(on)) else {
                continue;
            };
            let (here, there) = (&node.hypervisor, &peer.hypervisor);
            if here == there
                || !hosts.iter().any(|h| &h.name == here)
                || !hosts.iter().any(|h| &h.name == there)
                || !seen.insert((there.clone(), here.clone()))
            {
                continue;
            }
            // `there` sends to this end of the wire, where `here` listens.
            let message = format!("lab-doctor {run} {there} {here}");
            let probe = |listen| Probe {
                listen,
                addr: wire.local_address,
                port: wire.local_port,
                message: message.clone(),
            };
            probes
                .entry(here.clone())
                .or_default()
                .push((probe(true), there.clone()));
            probes
                .entry(there.clone())
                .or_default()
                .push((probe(false), here.clone()));
        }
    }
    probes
}

/// The probe command for `hv`.
fn command(hv: &Hypervisor, nonce: &str, probes: &[(Probe, String)]) -> Cmd {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        SCRIPT.into(),
        "lab-doctor".into(),
        nonce.into(),
        hv.pool.clone(),
        hv.proto.clone(),
        hv.mgmt
            .network
            .clone()
            .filter(|_| hv.mgmt.owned)
            .unwrap_or_else(|| "-".into()),
    ];
    for (p, _) in probes {
        argv.push(if p.listen { "listen" } else { "send" }.into());
        argv.push(p.addr.to_string());
        argv.push(p.port.to_string());
        argv.push(p.message.clone());
    }
    Cmd::query(argv).timeout(Duration::from_secs(60)).once()
}

/// Checks the hypervisors of `nodes` (every hypervisor of the lab when it has no nodes).
pub async fn doctor(exec: &Executor, lab: &Lab, nodes: &[&LabNode]) -> DoctorReport {
    let hosts: Vec<&Hypervisor> = if lab.nodes.is_empty() {
        lab.hypervisors.iter().collect()
    } else {
        lab.hypervisors_of(nodes)
    };
    let run = crate::state::nonce();
    let probes = underlay_probes(lab, &hosts, &run);
    let looks: Vec<_> = hosts.iter().map(|hv| {
        let nonce = crate::state::nonce();
        let mine = probes.get(&hv.name).cloned().unwrap_or_default();
        let cmd = command(hv, &nonce, &mine);
        async move {
            let checks = match exec.output(&hv.name, &cmd).await {
                Ok(out) => judge(lab, hv, &parse(&out.stdout, &nonce), &mine),
                Err(e) => vec![Check {
                    check: "ssh".into(),
                    verdict: Verdict::Fail,
                    detail: e.to_string(),
                    fix: Some(format!(
                        "make `ssh {}` work from here without a password (key, known_hosts; the \
                         hypervisor's `ssh:` in the lab file)",
                        hv.ssh
                    )),
                }],
            };
            HostDoctor {
                host: hv.name.clone(),
                checks,
            }
        }
    }).collect();
    DoctorReport {
        hypervisors: crate::run::join_all(looks).await,
    }
}

/// What the probe said, line by line (only lines with its nonce).
#[derive(Debug, Default)]
pub struct Facts {
    pub tools: BTreeMap<String, bool>,
    pub qemu: Option<String>,
    pub zfs_version: Option<String>,
    /// exit status, health, size, free
    pub pool: Option<(i32, String, u64, u64)>,
    pub pool_error: Option<String>,
    pub pool_version: String,
    pub features: BTreeMap<String, String>,
    pub proto_type: Option<String>,
    pub snapshots: Vec<String>,
    pub libvirt: Option<(i32, String)>,
    pub domains: BTreeSet<String>,
    pub kvm: (String, bool),
    pub addrs: Vec<(String, Ipv4Net)>,
    pub udp: BTreeSet<u16>,
    pub net_bridge: Option<String>,
    /// (addr, port) → what the listener heard: heard, silent, bind, noperl, error
    pub listened: BTreeMap<(String, u16), String>,
    pub sent: BTreeMap<(String, u16), String>,
    pub complete: bool,
}

pub fn parse(text: &str, nonce: &str) -> Facts {
    let mut f = Facts::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(nonce).and_then(|r| r.strip_prefix(' ')) else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        match w.as_slice() {
            ["tool", t, yes] => {
                f.tools.insert((*t).into(), *yes == "yes");
            }
            ["qemu", q] => f.qemu = (*q != "-").then(|| (*q).into()),
            ["zfs_version", v @ ..] => {
                let v = v.join(" ");
                f.zfs_version = (v != "-" && !v.is_empty()).then_some(v);
            }
            ["pool", "0", health, size, free] => {
                f.pool = Some((0, (*health).into(), bytes(size), bytes(free)));
            }
            ["pool", _, err @ ..] => f.pool_error = Some(err.join(" ")),
            ["pool_version", v] => f.pool_version = (*v).into(),
            ["feature", name, state] => {
                f.features.insert((*name).into(), (*state).into());
            }
            ["proto", "0", t] => f.proto_type = Some((*t).into()),
            ["snap", s] => f.snapshots.push((*s).into()),
            ["libvirt", rc, text @ ..] => {
                f.libvirt = Some((rc.parse().unwrap_or(1), text.join(" ")));
            }
            ["domain", d] => {
                f.domains.insert((*d).into());
            }
            ["kvm", k, caps] => f.kvm = ((*k).into(), *caps == "yes"),
            ["addr", iface, net] => {
                if let Ok(n) = net.parse() {
                    f.addrs.push(((*iface).into(), n));
                }
            }
            ["udp", hex] => {
                if let Ok(p) = u16::from_str_radix(hex, 16) {
                    f.udp.insert(p);
                }
            }
            ["netbridge", b] => f.net_bridge = (*b != "-").then(|| (*b).into()),
            ["listen", addr, port, what] => {
                if let Ok(p) = port.parse() {
                    f.listened.insert(((*addr).into(), p), (*what).into());
                }
            }
            ["send", addr, port, what] => {
                if let Ok(p) = port.parse() {
                    f.sent.insert(((*addr).into(), p), (*what).into());
                }
            }
            ["end"] => f.complete = true,
            _ => {}
        }
    }
    f
}

/// A size as zpool prints it: bytes (`-p`), or `1.98G` where zpool has no `-p`.
fn bytes(text: &str) -> u64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let scale: u64 = match unit {
        "" | "B" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        "P" => 1 << 50,
        _ => 0,
    };
    number
        .parse::<f64>()
        .map_or(0, |n| (n * scale as f64) as u64)
}

fn ok(check: &str, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        verdict: Verdict::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(verdict: Verdict, check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        verdict,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

const MIB: u64 = 1024 * 1024;

/// Judges one hypervisor from what its probe said.
fn judge(lab: &Lab, hv: &Hypervisor, f: &Facts, probes: &[(Probe, String)]) -> Vec<Check> {
    use Verdict::{Fail, Warn};
    let mut c = vec![ok("ssh", format!("reached as {}", hv.ssh))];
    if !f.complete {
        c.push(bad(
            Fail,
            "probe",
            "the probe did not finish (it was cut, or its output is not what lab wrote)",
            "run it again; check that the hypervisor's login shell is a POSIX sh",
        ));
    }
    // zfs: which one, and what it can do, asked of the pool
    let feature = |name: &str| {
        f.features
            .get(name)
            .is_some_and(|s| s == "enabled" || s == "active")
    };
    match (&f.zfs_version, f.pool_version.as_str()) {
        (Some(v), _) => {
            let yes = |b: bool| if b { "yes" } else { "no" };
            c.push(ok(
                "zfs",
                format!(
                    "{v}; pool features: {} (resumable sends {}, raw sends {}, lz4 {})",
                    f.features.len(),
                    yes(feature("extensible_dataset")),
                    yes(feature("encryption")),
                    yes(feature("lz4_compress")),
                ),
            ));
        }
        (None, v) if v.parse::<u32>().is_ok() => c.push(bad(
            Warn,
            "zfs",
            format!(
                "no `zfs version` and a pool of version {v}, without feature flags: zfs-fuse or \
                 an old ZFS (no resumable or compressed sends, holds not listed, no zvol volmode)"
            ),
            "run OpenZFS 2.x where protos are replicated over slow or flaky links",
        )),
        (None, _) if !f.tools.get("zfs").copied().unwrap_or(false) => c.push(bad(
            Fail,
            "zfs",
            "no `zfs` command",
            "install ZFS (Debian: zfsutils-linux and zfs-dkms from contrib)",
        )),
        (None, v) => c.push(bad(
            Warn,
            "zfs",
            format!("`zfs version` says nothing; pool version {v}"),
            "run OpenZFS 2.x",
        )),
    }
    match &f.pool {
        Some((_, health, size, free)) => {
            if health != "ONLINE" {
                c.push(bad(
                    Warn,
                    "pool",
                    format!("{} is {health}", hv.pool),
                    format!("see `zpool status {}`", hv.pool),
                ));
            } else {
                c.push(ok("pool", format!("{} ONLINE", hv.pool)));
            }
            let detail = format!("{} MiB free of {} MiB", free / MIB, size / MIB);
            if *free < 256 * MIB {
                c.push(bad(
                    Fail,
                    "space",
                    detail,
                    "free space in the pool: destroy old labs, prune protos (`lab proto prune`)",
                ));
            } else if free * 10 < *size {
                c.push(bad(
                    Warn,
                    "space",
                    detail,
                    "less than 10% free: clones grow as guests write",
                ));
            } else {
                c.push(ok("space", detail));
            }
        }
        None => c.push(bad(
            Fail,
            "pool",
            format!(
                "{}: {}",
                hv.pool,
                f.pool_error.as_deref().unwrap_or("not found")
            ),
            format!(
                "import or create the pool, or set the hypervisor's `pool:` (now {})",
                hv.pool
            ),
        )),
    }
    // the proto, of the kind `storage:` says, with a snapshot `snapshot:` picks
    match f.proto_type.as_deref() {
        None => c.push(bad(
            Fail,
            "proto",
            format!("{} does not exist", hv.proto),
            "create it, or replicate it here with `lab proto sync`; or set `proto:`",
        )),
        Some(t) => {
            let want = match hv.storage {
                Storage::Dataset => "filesystem",
                Storage::Zvol => "volume",
            };
            if t == want {
                c.push(ok("proto", format!("{} ({t})", hv.proto)));
            } else {
                c.push(bad(
                    Fail,
                    "proto",
                    format!("{} is a {t}, but `storage:` says {want}", hv.proto),
                    "set the hypervisor's `storage:` to match the proto (dataset or zvol)",
                ));
            }
            match f.snapshots.iter().rev().find(|s| hv.snapshot.matches(s)) {
                Some(s) => c.push(ok("snapshot", format!("{}@{s}", hv.proto))),
                None => c.push(bad(
                    Fail,
                    "snapshot",
                    format!(
                        "no snapshot of {} matches `snapshot: {}` ({} snapshot(s) there)",
                        hv.proto,
                        hv.snapshot.text(),
                        f.snapshots.len()
                    ),
                    "release one on the source and replicate it (`lab proto release`, `lab proto \
                     sync`), or change `snapshot:`",
                )),
            }
        }
    }
    // libvirt, QEMU, KVM
    match &f.libvirt {
        Some((0, v)) => c.push(ok("libvirt", v.clone())),
        Some((_, e)) => c.push(bad(
            Fail,
            "libvirt",
            format!("`virsh -c qemu:///system version` failed: {e}"),
            "start libvirtd (or virtqemud), and let the ssh user reach qemu:///system",
        )),
        None => c.push(bad(
            Fail,
            "libvirt",
            "no answer",
            "install libvirt-daemon-system and libvirt-clients",
        )),
    }
    match &f.qemu {
        Some(q) => c.push(ok("qemu", q.clone())),
        None => c.push(bad(
            Fail,
            "qemu",
            "no qemu-system-x86_64",
            "install QEMU (Debian: qemu-system-x86)",
        )),
    }
    let wants_kvm = hv.vars.get("domain_type").and_then(|v| v.as_str()) == Some("kvm");
    let kvm = match (f.kvm.0.as_str(), f.kvm.1) {
        ("dev", true) => ok("kvm", "/dev/kvm, and libvirt offers KVM domains"),
        ("pvm", _) => bad(
            if wants_kvm { Fail } else { Warn },
            "kvm",
            "/dev/kvm is a paravirtual KVM (kvm_pvm): a stock guest kernel hangs under it",
            "use TCG: domain type `qemu` (the `domain_type` var of the bed's overlays)",
        ),
        ("dev", false) => bad(
            if wants_kvm { Fail } else { Warn },
            "kvm",
            "/dev/kvm is there but libvirt offers no KVM domains",
            "check the kvm modules and libvirt's capabilities (`virsh domcapabilities --virttype kvm`)",
        ),
        _ => bad(
            if wants_kvm { Fail } else { Warn },
            "kvm",
            "no /dev/kvm: guests run emulated (TCG), many times slower",
            "enable virtualisation (VT-x/AMD-V) and load kvm_intel or kvm_amd, or use domain type `qemu`",
        ),
    };
    c.push(kvm);
    // the tools lab's commands use
    let missing: Vec<&str> = ["rsync", "flock", "timeout", "ip", "awk", "zpool"]
        .into_iter()
        .filter(|t| !f.tools.get(*t).copied().unwrap_or(false))
        .collect();
    if missing.is_empty() {
        c.push(ok("tools", "rsync, flock, timeout, ip, awk"));
    } else {
        c.push(bad(
            Fail,
            "tools",
            format!("missing: {}", missing.join(", ")),
            "install them (Debian: rsync, util-linux, coreutils, iproute2, mawk)",
        ));
    }
    let dhcp = hv.mgmt.owned && matches!(hv.mgmt.mode, MgmtMode::Isolated | MgmtMode::Nat);
    if dhcp {
        if f.tools.get("dnsmasq").copied().unwrap_or(false) {
            c.push(ok("dnsmasq", "libvirt can serve the lab's DHCP"));
        } else {
            c.push(bad(
                Fail,
                "dnsmasq",
                "no working dnsmasq: libvirt cannot start the lab's management network",
                "install dnsmasq-base (libvirt runs it for DHCP from the lab's plan)",
            ));
        }
    }
    // the management prefix: free, or on the lab's own bridge
    if let (true, Some(prefix)) = (hv.mgmt.owned, hv.mgmt_ipv4) {
        let own = f.net_bridge.as_deref().or(hv.mgmt.bridge.as_deref());
        let taken: Vec<String> = f
            .addrs
            .iter()
            .filter(|(iface, net)| {
                Some(iface.as_str()) != own
                    && (prefix.contains(&net.network()) || net.contains(&prefix.network()))
            })
            .map(|(iface, net)| format!("{net} on {iface}"))
            .collect();
        if taken.is_empty() {
            c.push(ok(
                "mgmt prefix",
                format!("{prefix} is free (or the lab's own)"),
            ));
        } else {
            c.push(bad(
                Fail,
                "mgmt prefix",
                format!("{prefix} overlaps {}", taken.join(", ")),
                "choose another `mgmt_ipv4` for this hypervisor",
            ));
        }
    }
    // the lab's wire ports here: free, or held by the lab's own running domains
    let ours: Vec<&LabNode> = lab
        .nodes
        .iter()
        .filter(|n| n.hypervisor == hv.name)
        .collect();
    let ports: BTreeSet<u16> = ours
        .iter()
        .flat_map(|n| &n.interfaces)
        .filter_map(|i| i.wire.map(|w| w.local_port))
        .collect();
    if !ports.is_empty() {
        let running = ours.iter().any(|n| f.domains.contains(&n.domain));
        let bound: Vec<String> = ports
            .iter()
            .filter(|p| f.udp.contains(p))
            .map(u16::to_string)
            .collect();
        let range = format!(
            "{}-{}",
            ports.first().unwrap_or(&0),
            ports.last().unwrap_or(&0)
        );
        if bound.is_empty() {
            c.push(ok("wire ports", format!("UDP {range} free")));
        } else if running {
            c.push(ok(
                "wire ports",
                format!(
                    "UDP {range}: {} in use, by the lab's running domains",
                    bound.len()
                ),
            ));
        } else {
            c.push(bad(
                Fail,
                "wire ports",
                format!(
                    "UDP port(s) {} of the lab's wires are taken by something else",
                    bound.join(" ")
                ),
                "stop what holds them, or give the lab another `id` (or `wire_port_base`)",
            ));
        }
    }
    // the underlay, for real
    for (p, peer) in probes.iter().filter(|(p, _)| p.listen) {
        let check = format!("underlay from {peer}");
        let what = f
            .listened
            .get(&(p.addr.to_string(), p.port))
            .map(String::as_str)
            .unwrap_or("error");
        c.push(match what {
            "heard" => ok(
                &check,
                format!("{peer} reaches {}:{} over UDP", p.addr, p.port),
            ),
            "silent" => bad(
                Fail,
                &check,
                format!(
                    "nothing from {peer} reached {}:{} (UDP) in 15 s",
                    p.addr, p.port
                ),
                format!(
                    "let UDP from {peer}'s underlay to {} through (firewall, routes), or fix the \
                     hypervisors' `underlay:`",
                    p.addr
                ),
            ),
            "bind" if f.addrs.iter().all(|(_, n)| n.addr() != p.addr) => bad(
                Fail,
                &check,
                format!("{} is not an address of this host", p.addr),
                "set the hypervisor's `underlay:` to one of its own addresses",
            ),
            "bind" => bad(
                Warn,
                &check,
                format!("UDP {}:{} is in use: not tested", p.addr, p.port),
                "run doctor while the lab is down to test the underlay",
            ),
            "noperl" => bad(
                Warn,
                &check,
                "no perl here to listen with: not tested",
                "install perl-base, or check UDP between the hypervisors by hand",
            ),
            other => bad(
                Warn,
                &check,
                format!("the listener failed ({other}): not tested"),
                "run doctor again",
            ),
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_without_the_nonce_are_not_facts() {
        let text = "N tool rsync yes\nX tool flock yes\nN udp 4E20\nN listen 10.0.0.1 20000 heard\n\
                    N pool 0 ONLINE 100 50\nN zfs_version zfs-2.1.11-1\nN end\n";
        let f = parse(text, "N");
        assert_eq!(f.tools.get("rsync"), Some(&true));
        assert!(!f.tools.contains_key("flock"));
        assert!(f.udp.contains(&20000));
        assert_eq!(
            f.listened
                .get(&("10.0.0.1".to_owned(), 20000))
                .map(String::as_str),
            Some("heard")
        );
        assert_eq!(f.pool.as_ref().map(|p| p.3), Some(50));
        assert_eq!(f.zfs_version.as_deref(), Some("zfs-2.1.11-1"));
        assert!(f.complete);
        assert_eq!(bytes("1.98G"), (1.98 * (1u64 << 30) as f64) as u64);
        assert_eq!(bytes("4026531840"), 4026531840);
    }
}
