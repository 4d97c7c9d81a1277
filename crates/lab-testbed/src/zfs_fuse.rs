//! zfs-fuse 0.7.0's mount deadlock: prevented, detected, recovered from.
//!
//! zfs-fuse announces each new mount to its FUSE listener threads with two `write()`s to one
//! pipe. Two mounts at once interleave those writes; a listener then blocks reading the pipe
//! while it holds the listener mutex, and every FUSE request of that hypervisor waits for ever
//! (processes sit in D state in `fuse_get_req`). The test bed prevents it with a lock around
//! the real `zfs` ([`serialize_mounting_zfs_calls`]), detects it anyway ([`zfs_health`]) so
//! that nothing waits ten minutes on a bed that cannot answer, and recovers from it without a
//! reboot ([`free_hung_hypervisor`]).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::up::wait_until;
use crate::{Result, Testbed, msg, read, run, write_file};

/// How long a probe may take before the hypervisor counts as hung.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The state of one hypervisor's zfs-fuse.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum ZfsHealth {
    /// `zfs list` and a lookup in a mounted dataset both answered.
    Answers,
    /// The daemon runs but a probe did not answer within [`PROBE_TIMEOUT`].
    Hung(String),
    /// The hypervisor or its zfs-fuse is not running.
    Down,
}

impl std::fmt::Display for ZfsHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZfsHealth::Answers => f.write_str("ok"),
            ZfsHealth::Hung(why) => write!(f, "HUNG ({why})"),
            ZfsHealth::Down => f.write_str("down"),
        }
    }
}

/// One FUSE mount of a hypervisor, from its holder's mountinfo.
#[derive(Debug, Clone)]
pub(crate) struct FuseMount {
    /// The connection's number under `/sys/fs/fuse/connections` (the mount's device minor).
    pub connection: u32,
    pub mount_point: String,
}

/// Probes hypervisor `k`: `zfs list` of its pool (the daemon's ioctl path) and a lookup of a
/// name that cannot exist in its first mounted dataset (the FUSE path, never served from the
/// kernel's cache). Each probe is killed after [`PROBE_TIMEOUT`].
pub fn zfs_health(bed: &Testbed, k: u32) -> ZfsHealth {
    if bed.alive(k, "holder", "sleep").is_none() || bed.alive(k, "zfs-fuse", "zfs-fuse").is_none() {
        return ZfsHealth::Down;
    }
    if let Err(why) = probe(bed, k, &["zfs", "list", "-H", "-o", "name", &bed.pool]) {
        return ZfsHealth::Hung(format!("`zfs list` {why}"));
    }
    if let Some(mount) = fuse_mounts(bed, k).into_iter().next() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = format!(
            "{}/.lab-testbed-probe-{}-{nanos}",
            mount.mount_point.trim_end_matches('/'),
            std::process::id()
        );
        // The name does not exist: stat fails at once on a healthy bed. Only "no answer" counts.
        if let Err(why) = probe(bed, k, &["stat", "-c", "%n", &path]).or_else(|why| {
            if why.starts_with("exited") {
                Ok(())
            } else {
                Err(why)
            }
        }) {
            return ZfsHealth::Hung(format!("a lookup in {} {why}", mount.mount_point));
        }
    }
    ZfsHealth::Answers
}

/// Runs a probe inside hypervisor `k` under `timeout -s KILL`, and never waits on it longer
/// than the timeout plus a second (a process stuck in the kernel is left to the kernel).
fn probe(bed: &Testbed, k: u32, args: &[&str]) -> Result<(), String> {
    let Ok(mut c) = bed.command(k, "timeout") else {
        return Err("could not start: the hypervisor is not running".to_owned());
    };
    let secs = PROBE_TIMEOUT.as_secs().to_string();
    c.args(["-s", "KILL", &secs])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().map_err(|e| format!("could not start: {e}"))?;
    let deadline = Instant::now() + PROBE_TIMEOUT + Duration::from_secs(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            // timeout's own code when it had to kill, or the signal if it was killed itself.
            Ok(Some(status)) if matches!(status.code(), Some(124 | 137) | None) => {
                return Err(format!(
                    "did not answer within {}s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                return Err(format!(
                    "did not answer within {}s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("could not be waited for: {e}")),
        }
    }
}

/// The FUSE mounts in hypervisor `k`'s mount namespace, outermost first.
pub(crate) fn fuse_mounts(bed: &Testbed, k: u32) -> Vec<FuseMount> {
    let Some(holder) = bed.alive(k, "holder", "sleep") else {
        return vec![];
    };
    let info = std::fs::read_to_string(format!("/proc/{holder}/mountinfo")).unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options ... - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            if !right.starts_with("fuse") {
                return None;
            }
            let fields: Vec<&str> = left.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            (major == "0").then_some(())?;
            Some(FuseMount {
                connection: minor.parse().ok()?,
                mount_point: fields.get(4)?.to_string(),
            })
        })
        .collect()
}

/// Aborts every FUSE connection of hypervisor `k` (its zfs-fuse mounts): each waiting request
/// fails with ENOTCONN, so stuck processes end and the mounts can be detached. Returns how
/// many were aborted.
pub(crate) fn abort_fuse_connections(bed: &Testbed, k: u32) -> Result<usize, String> {
    let control = std::path::Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(control).map_or(true, |mut d| d.next().is_none()) {
        // fusectl is not mounted (nothing to list) or empty: mount it; "already mounted" is fine.
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(control)
            .stderr(Stdio::null())
            .status();
    }
    let mut aborted = 0;
    for mount in fuse_mounts(bed, k) {
        let abort = control.join(mount.connection.to_string()).join("abort");
        if abort.exists() {
            std::fs::write(&abort, "1")
                .map_err(|e| format!("cannot abort FUSE connection {}: {e}", abort.display()))?;
            aborted += 1;
        }
    }
    Ok(aborted)
}

/// Where Debian's zfs-fuse package puts the `zfs` command.
const ZFS: &str = "/usr/sbin/zfs";

/// Inside hypervisor `k` only, `/usr/sbin/zfs` becomes a short script that runs every `zfs`
/// call that may mount or unmount (clone, create, mount, set, rename, rollback, promote,
/// inherit, upgrade, receive without `-u`; umount and destroy, since the daemon once aborted
/// in CI with unmounts racing mounts) under one `flock` per hypervisor, then execs the real binary,
/// which the script reaches through a second bind mount. zfs-fuse 0.7.0 deadlocks when two
/// mounts are announced at once (see above); real OpenZFS has no such bug, so `lab`
/// itself keeps mounting in parallel and this lock lives in the test bed alone. Idempotent.
pub(crate) fn serialize_mounting_zfs_calls(bed: &Testbed, k: u32) -> Result<()> {
    let holder = bed.alive(k, "holder", "sleep").expect("the holder runs");
    let mounts = read(Path::new(&format!("/proc/{holder}/mountinfo")));
    if mounts.lines().any(|l| l.split(' ').nth(4) == Some(ZFS)) {
        return Ok(());
    }
    let hv = bed.hv_dir(k);
    let (wrapper, real) = (hv.join("zfs-serialized"), hv.join("zfs.real"));
    write_file(
        &wrapper,
        &ZFS_WRAPPER
            .replace("@HV@", &format!("hv{k}"))
            .replace("@REAL@", &real.to_string_lossy()),
    )?;
    run(Command::new("chmod").arg("755").arg(&wrapper))?;
    write_file(&real, "")?;
    bed.exec(
        k,
        &[
            "sh",
            "-c",
            r#"mount --bind "$1" "$2" && mount --bind "$3" "$1""#,
            "bind",
            ZFS,
            &real.to_string_lossy(),
            &wrapper.to_string_lossy(),
        ],
    )?;
    Ok(())
}

/// The script bound over `zfs` in each hypervisor; `@HV@` and `@REAL@` are filled in.
const ZFS_WRAPPER: &str = r#"#!/bin/sh
# lab-testbed, @HV@: zfs-fuse 0.7.0 deadlocks when two mounts are announced at once, so every
# zfs call that may mount or unmount waits for this hypervisor's lock. The real zfs (bound at @REAL@)
# does all the work.
real=@REAL@
lock=/run/zfs/lab-testbed-mount.lock
case "$1" in
  clone|create|mount|set|rename|rollback|promote|inherit|upgrade|umount|unmount|destroy)
    exec flock "$lock" "$real" "$@" ;;
  receive|recv)
    for arg; do case "$arg" in -*u*) exec "$real" "$@" ;; esac; done
    exec flock "$lock" "$real" "$@" ;;
esac
exec "$real" "$@"
"#;

/// Frees hypervisor `k` whose zfs-fuse (`pid`) no longer answers: aborts its FUSE connections
/// so that every stuck request fails, then kills the daemon (it cannot stop by itself: a
/// listener thread waits on its own pipe). Returns how many connections were aborted.
pub(crate) fn free_hung_hypervisor(bed: &Testbed, k: u32, pid: u32) -> Result<usize> {
    let aborted = abort_fuse_connections(bed, k).map_err(|e| msg(format!("hv{k}: {e}")))?;
    let _ = run(Command::new("kill").args(["-9", &pid.to_string()]));
    let _ = wait_until(Duration::from_secs(10), || {
        bed.alive(k, "zfs-fuse", "zfs-fuse").is_none()
    });
    let _ = std::fs::remove_file(bed.pidfile(k, "zfs-fuse"));
    Ok(aborted)
}
