//! The remote commands of create and destroy, as pure functions of the model: what `--dry-run`
//! prints and the plan tests assert is exactly what runs.

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::{Hypervisor, LabNode, Storage};

use crate::probe::{DOMAIN_NS, Snapshot, prop};

/// Where a node's root filesystem is reachable while `lab` fills it.
pub fn staging_dir(hv: &Hypervisor, node: &LabNode) -> String {
    format!("{}/{}", hv.staging.trim_end_matches('/'), node.name)
}

/// The block device of a zvol clone's root partition.
pub fn zvol_partition(hv: &Hypervisor, node: &LabNode) -> String {
    format!(
        "/dev/zvol/{}-part{}",
        node.dataset,
        hv.partition.unwrap_or(1)
    )
}

/// What `lab` records on a clone.
pub struct Ownership<'a> {
    pub lab: &'a str,
    pub owner: &'a str,
    pub overlay_digest: &'a str,
    pub created: u64,
}

pub fn clone(hv: &Hypervisor, node: &LabNode, snap: &Snapshot, own: &Ownership<'_>) -> Cmd {
    let mut argv = vec!["zfs".to_owned(), "clone".to_owned()];
    let mut set = |k: &str, v: &str| {
        argv.push("-o".to_owned());
        argv.push(format!("{k}={v}"));
    };
    if hv.storage == Storage::Dataset {
        set("mountpoint", &staging_dir(hv, node));
    }
    set(prop::LAB, own.lab);
    set(prop::NODE, &node.name);
    set(prop::OWNER, own.owner);
    set(prop::ORIGIN, &snap.full);
    set(prop::ORIGIN_GUID, &snap.guid);
    set(prop::OVERLAY, own.overlay_digest);
    set(prop::CREATED, &own.created.to_string());
    set(prop::STATE, prop::FILLING);
    argv.push(snap.full.clone());
    argv.push(node.dataset.clone());
    Cmd::change(argv)
}

/// Makes the clone's root filesystem reachable in the staging directory.
pub fn attach(hv: &Hypervisor, node: &LabNode) -> Cmd {
    match hv.storage {
        // A clone with a mountpoint is normally mounted already; mount it when it is not.
        Storage::Dataset => Cmd::change([
            "sh",
            "-c",
            r#"[ "$(zfs get -H -o value mounted "$1")" = yes ] || zfs mount "$1""#,
            "lab-attach",
            &node.dataset,
        ]),
        // udev creates the partition's device node a moment after the clone.
        Storage::Zvol => Cmd::change([
            "sh",
            "-c",
            r#"i=0; while [ ! -b "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -b "$1" ] || { echo "$1 did not appear within 30 s" >&2; exit 1; }
mkdir -p "$2" && mount "$1" "$2""#,
            "lab-attach",
            &zvol_partition(hv, node),
            &staging_dir(hv, node),
        ])
        .timeout(Duration::from_secs(60)),
    }
}

/// Unmounts the clone (tolerates "not mounted", so it serves rollback and destroy too).
pub fn detach(hv: &Hypervisor, node: &LabNode) -> Cmd {
    match hv.storage {
        Storage::Dataset => Cmd::change([
            "sh",
            "-c",
            r#"if [ "$(zfs get -H -o value mounted "$1")" = yes ]; then zfs umount "$1"; fi"#,
            "lab-detach",
            &node.dataset,
        ]),
        Storage::Zvol => Cmd::change([
            "sh",
            "-c",
            r#"if mountpoint -q "$1"; then umount "$1"; fi"#,
            "lab-detach",
            &staging_dir(hv, node),
        ]),
    }
}

/// Removes the (empty) staging directory; `rmdir` never removes anything that is not empty.
pub fn remove_staging(hv: &Hypervisor, node: &LabNode) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        r#"if [ -d "$1" ]; then rmdir "$1"; fi"#,
        "lab-rmdir",
        &staging_dir(hv, node),
    ])
}

/// Records that the clone's tree is complete: a later run may start it as it is.
pub fn mark_ready(node: &LabNode) -> Cmd {
    Cmd::change([
        "zfs",
        "set",
        &format!("{}=ready", prop::STATE),
        &node.dataset,
    ])
}

pub fn define(xml: &[u8]) -> Cmd {
    Cmd::change(["virsh", "-q", "define", "/dev/stdin"]).stdin(xml.to_vec())
}

/// The libvirt metadata that marks a domain as defined by `lab` for this lab and node.
pub fn domain_marker(lab: &str, node: &str) -> String {
    format!("<lab lab=\"{lab}\" node=\"{node}\"/>")
}

pub fn mark_domain(lab: &str, node: &LabNode) -> Cmd {
    Cmd::change([
        "virsh",
        "-q",
        "metadata",
        &node.name,
        "--uri",
        DOMAIN_NS,
        "--key",
        "lab",
        "--set",
        &domain_marker(lab, &node.name),
        "--config",
    ])
}

/// Reads the marker back (empty or an error when `lab` did not define the domain).
pub fn read_marker(node: &LabNode) -> Cmd {
    Cmd::query([
        "virsh", "-q", "metadata", &node.name, "--uri", DOMAIN_NS, "--config",
    ])
}

/// Whether a marker read back says this lab and node.
pub fn marker_matches(text: &str, lab: &str, node: &str) -> bool {
    text.contains(&format!("lab=\"{lab}\"")) && text.contains(&format!("node=\"{node}\""))
}

pub fn start(node: &LabNode) -> Cmd {
    Cmd::change(["virsh", "-q", "start", &node.name]).timeout(Duration::from_secs(120))
}

pub fn stop(node: &LabNode) -> Cmd {
    Cmd::change(["virsh", "-q", "destroy", &node.name]).timeout(Duration::from_secs(120))
}

pub fn undefine(node: &LabNode) -> Cmd {
    Cmd::change(["virsh", "-q", "undefine", &node.name])
}

/// Destroys exactly one dataset: never `-r`, never `-R`.
pub fn destroy_dataset(node: &LabNode) -> Cmd {
    Cmd::change(["zfs", "destroy", &node.dataset])
}
