//! The verdicts: each fact of a hypervisor judged ok, warn or fail, every warning and failure
//! with what to do about it.

use std::collections::BTreeSet;

use lab_model::{Hypervisor, Lab, LabNode, MgmtMode, Storage};

use super::facts::Facts;
use super::{Check, Probe, Verdict};

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
pub(super) fn judge(
    lab: &Lab,
    hv: &Hypervisor,
    f: &Facts,
    probes: &[(Probe, String)],
) -> Vec<Check> {
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
