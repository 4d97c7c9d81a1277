//! Taking the test bed down: only what `up` started, found by pidfile; a hung zfs-fuse freed
//! first; `--purge` also deletes the data.

use std::path::Path;
use std::process::Command;

use crate::up::{include_line, stop};
use crate::zfs_fuse::{ZfsHealth, free_hung_hypervisor, zfs_health};
use crate::{Error, Result, Testbed, run, write_file};

pub fn down(bed: &Testbed, purge: bool, log: &mut dyn FnMut(&str)) -> Result<()> {
    for k in bed.openzfs_range() {
        crate::openzfs::stop_vm(bed, k, log);
    }
    for k in 0..bed.hypervisors {
        if let Some(pid) = bed.alive(k, "zfs-fuse", "zfs-fuse")
            && let ZfsHealth::Hung(why) = zfs_health(bed, k)
        {
            // Unmounting or exporting would wait for ever: free it first.
            let aborted = free_hung_hypervisor(bed, k, pid)?;
            log(&format!(
                "hv{k}: zfs-fuse was hung ({why}): aborted {aborted} FUSE connection(s), killed it"
            ));
        }
        if bed.alive(k, "holder", "sleep").is_some() {
            if bed.alive(k, "libvirtd", "libvirtd").is_some() {
                let running = bed
                    .exec(
                        k,
                        &["virsh", "-q", "-c", "qemu:///system", "list", "--name"],
                    )
                    .unwrap_or_default();
                for d in running.lines().filter(|l| !l.trim().is_empty()) {
                    if bed
                        .exec(
                            k,
                            &["virsh", "-q", "-c", "qemu:///system", "destroy", d.trim()],
                        )
                        .is_ok()
                    {
                        log(&format!("hv{k}: stopped domain {}", d.trim()));
                    }
                }
                // Active networks hold a dnsmasq each: stop them with their daemon.
                let networks = bed
                    .exec(
                        k,
                        &["virsh", "-q", "-c", "qemu:///system", "net-list", "--name"],
                    )
                    .unwrap_or_default();
                for n in networks.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    if bed
                        .exec(
                            k,
                            &["virsh", "-q", "-c", "qemu:///system", "net-destroy", n],
                        )
                        .is_ok()
                    {
                        log(&format!("hv{k}: stopped network {n}"));
                    }
                }
            }
            if bed.alive(k, "zfs-fuse", "zfs-fuse").is_some() {
                let _ = bed.exec(k, &["zfs", "umount", "-a"]);
                if bed.exec(k, &["zpool", "export", &bed.pool]).is_ok() {
                    log(&format!("hv{k}: exported pool {}", bed.pool));
                }
            }
        }
        // Stop by pidfile only, and only a process with the expected name.
        for (daemon, comm) in [
            ("sshd", "sshd"),
            ("libvirtd", "libvirtd"),
            ("zfs-fuse", "zfs-fuse"),
            ("holder", "sleep"),
        ] {
            if let Some(pid) = bed.alive(k, daemon, comm) {
                stop(pid);
                log(&format!("hv{k}: stopped {daemon} ({pid})"));
            }
            let _ = std::fs::remove_file(bed.pidfile(k, daemon));
        }
        let _ = run(Command::new("ip").args(["link", "del", &bed.veth(k)]));
        let _ = run(Command::new("ip").args(["netns", "del", &bed.netns(k)]));
    }
    if run(Command::new("ip").args(["link", "del", &bed.bridge])).is_ok() {
        log(&format!("removed bridge {}", bed.bridge));
    }
    if purge {
        if bed.dir.exists() {
            std::fs::remove_dir_all(&bed.dir).map_err(|source| Error::Io {
                path: bed.dir.clone(),
                source,
            })?;
            log(&format!("removed {}", bed.dir.display()));
        }
        let root_config = Path::new("/root/.ssh/config");
        let line = include_line(bed);
        let current = std::fs::read_to_string(root_config).unwrap_or_default();
        if current.lines().any(|l| l == line) {
            let kept: String = current
                .lines()
                .filter(|l| *l != line)
                .map(|l| format!("{l}\n"))
                .collect();
            write_file(root_config, &kept)?;
            log("removed the Include line from /root/.ssh/config");
        }
    }
    Ok(())
}
