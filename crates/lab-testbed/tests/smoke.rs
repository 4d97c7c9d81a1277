//! The test bed's smoke test: every operation `lab` relies on, by hand, against the real
//! hypervisors. Needs `cargo xtask testbed up`; fails (never skips) without it.

use std::process::Command;
use std::time::Duration;

use lab_testbed::{PROTO, Testbed, require, run};

fn ssh(bed: &Testbed, hv: &str, script: &str) -> String {
    run(Command::new("ssh")
        .arg("-F")
        .arg(bed.ssh_config())
        .args([hv, script]))
    .unwrap_or_else(|e| panic!("ssh {hv} {script}: {e}"))
}

fn ssh_fails(bed: &Testbed, hv: &str, script: &str) -> bool {
    run(Command::new("ssh")
        .arg("-F")
        .arg(bed.ssh_config())
        .args([hv, script]))
    .is_err()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[test]
fn every_hypervisor_is_isolated_and_reachable() {
    let bed = require();
    for (k, name) in bed.names().enumerate() {
        let out = ssh(
            &bed,
            &name,
            "hostname; zpool list -H -o name; virsh -q list --all | wc -l",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], name, "hv{k} has its own hostname");
        assert_eq!(lines[1], bed.pool, "hv{k} has its own pool");
        let base = ssh(
            &bed,
            &name,
            &format!("zfs list -H -o name {}/{PROTO}@base", bed.pool),
        );
        assert_eq!(base.trim(), format!("{}/{PROTO}@base", bed.pool));
    }
}

#[test]
fn clone_fill_boot_and_destroy_a_guest_by_hand() {
    let bed = require();
    let node = unique("smoke");
    let hv = "hv1";
    let pool = &bed.pool;
    let staging = format!("/var/lib/lab/staging/{node}");
    let clone = format!("{pool}/{node}");

    // The overlay: a guest root with the hostname and a marker.
    let overlay = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(overlay.path().join("etc")).unwrap();
    std::fs::write(overlay.path().join("etc/hostname"), format!("{node}\n")).unwrap();
    std::fs::write(overlay.path().join("etc/lab-guest-marker"), "smoke\n").unwrap();
    run(Command::new("chmod").arg("755").arg(overlay.path())).unwrap();

    assert!(
        ssh_fails(&bed, hv, &format!("zfs list {clone}")),
        "no clone yet"
    );
    ssh(
        &bed,
        hv,
        &format!(
            "zfs clone -o mountpoint={staging} -o lab:node={node} {pool}/{PROTO}@base {clone}"
        ),
    );
    run(Command::new("rsync")
        .args(["-aH", "--numeric-ids", "-e"])
        .arg(format!("ssh -F {}", bed.ssh_config().display()))
        .arg(format!("{}/", overlay.path().display()))
        .arg(format!("{hv}:{staging}/")))
    .unwrap();
    // The clone stays mounted for the domain's life: its 9p share is that directory.
    ssh(&bed, hv, &format!("test -f {staging}/etc/proto-release"));

    let xml = format!(
        "<domain type='qemu'><name>{node}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>\
         <cmdline>console=ttyS0 quiet panic=-1 lab.tag=labroot</cmdline></os>\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><devices>\
         <filesystem type='mount' accessmode='passthrough'><source dir='{staging}'/><target dir='labroot'/><readonly/></filesystem>\
         <serial type='file'><source path='/var/log/libvirt/qemu/{node}.console.log'/><target port='0'/></serial>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        kernel = bed.guest_kernel().display(),
        initrd = bed.guest_initrd().display(),
    );
    let k = 1;
    std::fs::write(bed.host_path(k, &format!("/tmp/{node}.xml")), xml).unwrap();
    ssh(
        &bed,
        hv,
        &format!("virsh -q define /tmp/{node}.xml && rm /tmp/{node}.xml && virsh -q start {node}"),
    );
    let line = bed
        .wait_for_console(k, &node, "LAB-GUEST-HOSTNAME:", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        line,
        format!("LAB-GUEST-HOSTNAME: {node}"),
        "the guest booted off the clone"
    );
    let marker = bed
        .wait_for_console(k, &node, "LAB-GUEST-MARKER:", Duration::from_secs(5))
        .unwrap();
    assert_eq!(marker, "LAB-GUEST-MARKER: smoke");
    assert_eq!(
        ssh(&bed, hv, &format!("virsh domstate {node}")).trim(),
        "running"
    );
    assert_eq!(
        ssh(&bed, hv, &format!("zfs get -H -o value origin {clone}")).trim(),
        format!("{pool}/{PROTO}@base")
    );
    assert_eq!(
        ssh(&bed, hv, &format!("zfs get -H -o value lab:node {clone}")).trim(),
        node
    );

    ssh(
        &bed,
        hv,
        &format!("virsh -q destroy {node} && virsh -q undefine {node}"),
    );
    // zfs refuses to destroy a mounted dataset: unmount it first (zfs-fuse may say "busy" for a
    // moment after the unmount).
    ssh(
        &bed,
        hv,
        &format!(
            "zfs umount {clone} 2>/dev/null; for i in $(seq 20); do zfs destroy {clone} 2>/dev/null && exit 0; sleep 0.25; done; zfs destroy {clone}"
        ),
    );
    assert!(
        ssh_fails(&bed, hv, &format!("zfs list {clone}")),
        "clone gone"
    );
    assert!(
        ssh_fails(&bed, hv, &format!("virsh domstate {node}")),
        "domain gone"
    );
    let _ = std::fs::remove_file(bed.console_log(k, &node));
    let _ = ssh(&bed, hv, &format!("rmdir {staging} 2>/dev/null; true"));
}

#[test]
fn incremental_replication_from_hv0_to_hv1() {
    let bed = require();
    let proto = format!("{}/{PROTO}", bed.pool);
    let snap = unique("smoke");
    // A change on the source, snapshotted, then sent as an increment over hv0 → hv1 ssh.
    ssh(
        &bed,
        "hv0",
        &format!(
            "echo {snap} > $(zfs get -H -o value mountpoint {proto})/etc/smoke-release && zfs snapshot {proto}@{snap}"
        ),
    );
    let last_common = ssh(
        &bed,
        "hv1",
        &format!("zfs list -H -o name -t snapshot -s creation -r {proto} | tail -1"),
    );
    let from = last_common.trim().rsplit('@').next().unwrap().to_owned();
    ssh(
        &bed,
        "hv0",
        &format!("zfs send -i @{from} {proto}@{snap} | ssh hv1 zfs recv -u -F {proto}"),
    );
    let guid = |hv: &str| {
        ssh(
            &bed,
            hv,
            &format!("zfs get -H -p -o value guid {proto}@{snap}"),
        )
    };
    assert_eq!(guid("hv0"), guid("hv1"), "the same snapshot on both sides");
    // Leave the proto as the other tests expect it: only @base.
    for hv in ["hv0", "hv1"] {
        ssh(&bed, hv, &format!("zfs destroy {proto}@{snap}"));
    }
    for hv in ["hv0", "hv1"] {
        ssh(&bed, hv, &format!("zfs rollback {proto}@base"));
    }
}
