//! libvirt inside each hypervisor: its own configuration, and a hook that mounts a domain's
//! dataset when the domain starts.

use std::process::Command;

use crate::{Result, Testbed, mkdir, read, run, write_file};

/// libvirt's configuration inside hypervisor `k`: a copy of the host's, made to run QEMU as
/// root without cgroups or per-VM mount namespaces, plus a hook that mounts a domain's 9p
/// source dataset when it starts.
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
    let hook = etc.join("hooks/qemu");
    write_file(&hook, HOOK)?;
    run(Command::new("chmod").arg("755").arg(&hook))?;
    Ok(())
}

/// A libvirt qemu hook: "attach the disk". On start, `zfs mount` each unmounted dataset whose
/// mountpoint is a `<filesystem>` source of the domain; on release, unmount what it mounted.
const HOOK: &str = r#"#!/bin/sh
# lab-testbed: mount the dataset behind a domain's 9p <filesystem> when the domain starts.
dom=$1 op=$2 sub=$3
state=/run/libvirt/lab-testbed-$dom.mounted
case "$op/$sub" in
  prepare/begin)
    : > "$state"
    for dir in $(sed -n "s/.*<source dir=['\"]\([^'\"]*\)['\"].*/\1/p"); do
      ds=$(zfs list -H -o name,mountpoint -t filesystem | awk -F'\t' -v d="$dir" '$2 == d { print $1; exit }')
      [ -n "$ds" ] || continue
      if [ "$(zfs get -H -o value mounted "$ds")" = no ]; then
        zfs mount "$ds" || { echo "lab-testbed hook: cannot mount $ds" >&2; exit 1; }
        echo "$ds" >> "$state"
      fi
    done ;;
  release/end)
    [ -f "$state" ] && while read -r ds; do zfs umount "$ds" 2>/dev/null; done < "$state"
    rm -f "$state" ;;
esac
exit 0
"#;
