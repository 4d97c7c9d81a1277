//! libvirt inside each hypervisor: its own configuration.

use std::process::Command;

use crate::{Result, Testbed, mkdir, read, run, write_file};

/// libvirt's configuration inside hypervisor `k`: a copy of the host's, made to run QEMU as
/// root without cgroups or per-VM mount namespaces.
pub(crate) fn libvirt_config(bed: &Testbed, k: u32) -> Result<()> {
    let etc = bed.host_path(k, "/etc/libvirt");
    let marker = etc.join(".lab-testbed");
    if !marker.exists() {
        run(Command::new("cp").args(["-a", "/etc/libvirt/."]).arg(&etc))?;
        let qemu_conf = etc.join("qemu.conf");
        let mut text = read(&qemu_conf);
        text.push_str(
            "\n# lab-testbed: QEMU as root, no cgroups, and in the hypervisor's own mount namespace\n\
             # (a private per-VM namespace keeps a copy of the zfs-fuse mount and leaves the clone busy)\n\
             user = \"root\"\ngroup = \"root\"\ncgroup_controllers = [ ]\nstdio_handler = \"file\"\nnamespaces = [ ]\n",
        );
        write_file(&qemu_conf, &text)?;
        write_file(&marker, "")?;
    }
    let var_lib = bed.host_path(k, "/var/lib/libvirt");
    if !var_lib.join(".lab-testbed").exists() {
        run(Command::new("cp")
            .args(["-a", "/var/lib/libvirt/."])
            .arg(&var_lib))?;
        write_file(&var_lib.join(".lab-testbed"), "")?;
    }
    mkdir(&bed.host_path(k, "/var/log/libvirt/qemu"))?;
    mkdir(&bed.host_path(k, "/var/cache/libvirt/qemu"))?;
    // Reuse another hypervisor's probed QEMU capabilities: the first probe costs ~8 s.
    let caps = bed.host_path(k, "/var/cache/libvirt/qemu/capabilities");
    if !caps.exists() {
        for other in (0..bed.hypervisors).filter(|o| *o != k) {
            let theirs = bed.host_path(other, "/var/cache/libvirt/qemu/capabilities");
            if theirs.exists() {
                run(Command::new("cp").arg("-a").arg(&theirs).arg(&caps))?;
                break;
            }
        }
    }
    // No hook: lab keeps a dataset clone mounted for its domain's life, as on a real
    // hypervisor. An older bed's hook goes.
    let _ = std::fs::remove_file(etc.join("hooks/qemu"));
    Ok(())
}
