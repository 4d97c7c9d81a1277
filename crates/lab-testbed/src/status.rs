//! What the test bed looks like right now.

use serde::Serialize;

use crate::{PROTO, Testbed, ZfsHealth};

#[derive(Debug, Serialize)]
pub struct Status {
    pub dir: String,
    pub hypervisors: Vec<HypervisorStatus>,
}

#[derive(Debug, Serialize)]
pub struct HypervisorStatus {
    pub name: String,
    /// `zfs-fuse` (a namespace on this machine) or `openzfs` (a QEMU VM).
    pub kind: &'static str,
    pub address: String,
    /// An OpenZFS VM's QEMU process.
    pub qemu: Option<u32>,
    /// What `zfs version` says on an OpenZFS VM.
    pub zfs_version: Option<String>,
    /// Daemon name → pid, or none when it is down.
    pub holder: Option<u32>,
    pub zfs_fuse: Option<u32>,
    pub libvirtd: Option<u32>,
    pub sshd: Option<u32>,
    /// Whether zfs-fuse answers within a few seconds (`hung` when it does not).
    pub zfs: ZfsHealth,
    pub pool_health: Option<String>,
    pub proto_snapshots: Vec<String>,
    /// Datasets with an origin (clones), as `name origin`.
    pub clones: Vec<String>,
    /// Domains as `name state`.
    pub domains: Vec<String>,
}

pub fn status(bed: &Testbed) -> Status {
    let hypervisors = bed
        .all()
        .map(|k| {
            let vm = bed.is_vm(k);
            let qemu = bed.alive(k, "qemu", "qemu-system-x86");
            let zfs_version = qemu.and_then(|_| crate::openzfs::zfs_version(bed, k));
            let holder = bed.alive(k, "holder", "sleep");
            let zfs_fuse = bed.alive(k, "zfs-fuse", "zfs-fuse");
            let libvirtd = bed.alive(k, "libvirtd", "libvirtd");
            let lines = |args: &[&str]| -> Vec<String> {
                bed.exec(k, args)
                    .map(|s| {
                        s.lines()
                            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                            .filter(|l| !l.is_empty())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let zfs = match (vm, &zfs_version) {
                (false, _) => bed.zfs_health(k),
                (true, Some(_)) => ZfsHealth::Answers,
                (true, None) => ZfsHealth::Down,
            };
            // A hung zfs-fuse would make every further zfs call wait: ask it nothing more.
            let zfs_up = zfs == ZfsHealth::Answers;
            let proto = format!("{}/{PROTO}", bed.pool);
            HypervisorStatus {
                name: format!("hv{k}"),
                kind: if vm { "openzfs" } else { "zfs-fuse" },
                address: bed.address(k),
                qemu,
                zfs_version: zfs_version.clone(),
                holder,
                zfs_fuse,
                libvirtd,
                sshd: bed.alive(k, "sshd", "sshd"),
                zfs,
                pool_health: if zfs_up {
                    lines(&["zpool", "list", "-H", "-o", "health", &bed.pool])
                        .into_iter()
                        .next()
                } else {
                    None
                },
                proto_snapshots: if zfs_up {
                    lines(&[
                        "zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", &proto,
                    ])
                } else {
                    vec![]
                },
                clones: if zfs_up {
                    lines(&[
                        "zfs",
                        "list",
                        "-H",
                        "-o",
                        "name,origin",
                        "-t",
                        "filesystem,volume",
                        "-r",
                        &bed.pool,
                    ])
                    .into_iter()
                    .filter(|l| !l.ends_with(" -"))
                    .collect()
                } else {
                    vec![]
                },
                domains: if (holder.is_some() && libvirtd.is_some()) || zfs_up && vm {
                    let names = lines(&[
                        "virsh",
                        "-q",
                        "-c",
                        "qemu:///system",
                        "list",
                        "--all",
                        "--name",
                    ]);
                    names
                        .into_iter()
                        .map(|n| {
                            let state = bed
                                .exec(k, &["virsh", "-q", "-c", "qemu:///system", "domstate", &n])
                                .unwrap_or_default();
                            format!("{n} {}", state.trim())
                        })
                        .collect()
                } else {
                    vec![]
                },
            }
        })
        .collect();
    Status {
        dir: bed.dir.display().to_string(),
        hypervisors,
    }
}
