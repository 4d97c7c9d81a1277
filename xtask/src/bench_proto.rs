//! `cargo xtask bench proto`: `lab proto sync` of a real change beside the same send piped by
//! hand.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::bench::tempdir;
use crate::{Result, cargo, say};

/// `lab proto sync` of a 200 MB change to hv1 and hv2 through the controller, beside the floor:
/// `ssh hv0 zfs send -I | ssh hvK zfs recv` by hand, both targets at once, for a second
/// 200 MB change of the same kind.
pub fn proto(root: &Path) -> Result {
    use lab_testbed::{Testbed, UpOptions};
    let bed = Testbed::default();
    bed.up(&UpOptions::default(), &mut |l| say(l))
        .map_err(|e| e.to_string())?;
    cargo(&["build", "--release", "--quiet", "-p", "lab"])?;
    let lab_bin = root.join("target/release/lab");
    let dir = tempdir()?;
    let ds = format!("{}/proto-bench", bed.pool);
    // The holds sync leaves on increment bases go first: zfs refuses to destroy held snapshots.
    let drop_all = || {
        let script = format!(
            "for s in $(zfs list -H -t snapshot -o name -r {ds} 2>/dev/null); do \
             for t in hv0 hv1 hv2; do zfs release lab-sync:$t $s 2>/dev/null; done; done; \
             zfs destroy -r {ds}"
        );
        for k in 0..bed.hypervisors {
            let _ = bed.exec(k, &["sh", "-c", &script]);
        }
    };
    drop_all();
    let exec0 = |script: &str| -> Result<String> {
        bed.exec(0, &["sh", "-c", script])
            .map_err(|e| e.to_string())
    };
    exec0(&format!(
        "zfs create {ds} && head -c 16M /dev/urandom > /{ds}/base"
    ))?;
    let fleet = dir.join("fleet.yaml");
    std::fs::write(
        &fleet,
        format!(
            "include: {}\ndefaults:\n  hypervisor:\n    proto: {ds}\nproto: {{source: hv0}}\n",
            root.join("labs/testbed.yaml").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let lab = |args: &[&str]| run_lab(&lab_bin, &fleet, args);
    lab(&["proto", "release", "--name", "b0-release"])?;
    lab(&["proto", "sync"])?;

    exec0(&format!(
        "head -c 200M /dev/urandom > /{ds}/change1 && sync"
    ))?;
    lab(&["proto", "release", "--name", "b1-release"])?;
    let (wall, json) = lab(&["--format", "json", "proto", "sync"])?;
    let report: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    say(&format!(
        "lab proto sync, 200 MiB change to 2 targets: {wall:.2} s"
    ));
    for t in report["targets"].as_array().into_iter().flatten() {
        let bytes = t["bytes"].as_u64().unwrap_or(0);
        say(&format!(
            "  {}: {} bytes ({:.1} MiB), {} snapshot(s)",
            t["host"].as_str().unwrap_or("?"),
            bytes,
            bytes as f64 / 1048576.0,
            t["snapshots"]
        ));
    }

    // The floor: the same kind of change, piped by hand through this machine.
    exec0(&format!(
        "head -c 200M /dev/urandom > /{ds}/change2 && sync && zfs snapshot {ds}@b2-release"
    ))?;
    let start = Instant::now();
    let pipes = format!(
        "ssh hv0 zfs send -I {ds}@b1-release {ds}@b2-release | ssh hv1 zfs recv -u {ds} & \
         ssh hv0 zfs send -I {ds}@b1-release {ds}@b2-release | ssh hv2 zfs recv -u {ds} & wait"
    );
    lab_testbed::bash(&pipes).map_err(|e| e.to_string())?;
    say(&format!(
        "floor: ssh zfs send -I | ssh zfs recv by hand, 2 targets at once: {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    resumed(&bed, &ds, &lab_bin, &fleet, &lab, &exec0)?;
    drop_all();
    let _ = std::fs::remove_dir_all(&dir);
    if bed.openzfs >= 2 {
        openzfs(root, &bed, &lab_bin)?;
    }
    Ok(())
}

/// MiB written per change on the OpenZFS pair.
const OPENZFS_CHANGE: u32 = 96;

/// The OpenZFS pair (the bed's first two VMs): a zvol proto's full send, an incremental one and
/// one cut and resumed, through `lab proto sync`, each beside `ssh SRC zfs send -c | ssh DST
/// zfs recv` by hand into a second replica (the floor).
fn openzfs(root: &Path, bed: &lab_testbed::Testbed, lab_bin: &Path) -> Result {
    let (src, dst) = (bed.hypervisors, bed.hypervisors + 1);
    let ds = format!("{}/proto-bench", bed.pool);
    let floor_ds = format!("{}/proto-bench-floor", bed.pool);
    let on = |k: u32, script: &str| -> Result<String> {
        bed.ssh_script(k, script).map_err(|e| e.to_string())
    };
    let drop_all = || {
        for (k, d) in [(src, &ds), (dst, &ds), (dst, &floor_ds)] {
            let _ = on(
                k,
                &format!(
                    "for s in $(zfs list -H -t snapshot -o name {d} 2>/dev/null); do zfs release lab-sync:hv{dst} $s 2>/dev/null || true; done\n\
                     zfs recv -A {d} 2>/dev/null || true; zfs destroy -r {d} 2>/dev/null || true"
                ),
            );
        }
    };
    drop_all();
    on(
        src,
        &format!(
            "zfs create -s -V 1G {ds}\n\
             i=0; while [ ! -b /dev/zvol/{ds} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done"
        ),
    )?;
    let change = |n: u32| -> Result<String> {
        on(
            src,
            &format!(
                "head -c {OPENZFS_CHANGE}M /dev/urandom | dd of=/dev/zvol/{ds} bs=1M seek={} oflag=direct status=none",
                n * OPENZFS_CHANGE
            ),
        )
    };
    let dir = tempdir()?;
    let fleet = dir.join("fleet.yaml");
    std::fs::write(
        &fleet,
        format!(
            "include: {}\ndefaults:\n  hypervisor:\n    proto: {ds}\n",
            root.join("labs/testbed-openzfs.yaml").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let lab = |args: &[&str]| -> Result<(f64, serde_json::Value)> {
        let (wall, stdout) = run_lab(lab_bin, &fleet, &[&["--format", "json"], args].concat())?;
        Ok((wall, serde_json::from_str(&stdout).unwrap_or_default()))
    };
    let bytes = |report: &serde_json::Value| report["targets"][0]["bytes"].as_u64().unwrap_or(0);
    let floor = |send: &str| -> Result<f64> {
        let start = Instant::now();
        lab_testbed::bash(&format!(
            "ssh hv{src} zfs send -c {send} | ssh hv{dst} zfs recv -u {floor_ds}"
        ))
        .map_err(|e| e.to_string())?;
        Ok(start.elapsed().as_secs_f64())
    };
    say(&format!(
        "OpenZFS pair hv{src} -> hv{dst} ({}), a zvol proto, {OPENZFS_CHANGE} MiB of new data per release:",
        bed.exec(src, &["zfs", "version"])
            .ok()
            .and_then(|v| v.lines().next().map(str::to_owned))
            .unwrap_or_default()
    ));
    let row = |what: &str, wall: f64, bytes: u64, floor: Option<f64>| {
        let floor = floor.map_or("-".to_owned(), |f| format!("{f:.2} s"));
        say(&format!(
            "  {what:<28} lab {wall:6.2} s {:>12} bytes   floor {floor}",
            bytes
        ));
    };

    change(0)?;
    lab(&["proto", "release", "--name", "o1-release"])?;
    let (wall, report) = lab(&["proto", "sync"])?;
    let f = floor(&format!("{ds}@o1-release"))?;
    row("full send", wall, bytes(&report), Some(f));

    change(1)?;
    lab(&["proto", "release", "--name", "o2-release"])?;
    let (wall, report) = lab(&["proto", "sync"])?;
    let f = floor(&format!("-i {ds}@o1-release {ds}@o2-release"))?;
    row("incremental send", wall, bytes(&report), Some(f));

    // A third change, cut about halfway by a rate limit and SIGINT, then resumed.
    change(2)?;
    lab(&["proto", "release", "--name", "o3-release"])?;
    let mut cut = Command::new(lab_bin)
        .args(["-q", "proto", "sync", "--bwlimit", "16M", "--lab"])
        .arg(&fleet)
        .spawn()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    while on(dst, "pgrep -f '^zfs recv' >/dev/null && echo yes || true")?.trim() != "yes" {
        if start.elapsed().as_secs() > 120 {
            return Err("the cut send never started".to_owned());
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-INT", &cut.id().to_string()])
        .status();
    let _ = cut.wait();
    let (wall, report) = lab(&["proto", "sync"])?;
    let path = report["targets"][0]["path"].to_string();
    row(&format!("resumed send {path}"), wall, bytes(&report), None);
    let full = on(
        src,
        &format!("zfs send -n -P -c -i {ds}@o2-release {ds}@o3-release"),
    )?;
    say(&format!(
        "  (the uncut increment is {} bytes)",
        full.lines()
            .find_map(|l| l.strip_prefix("size\t"))
            .unwrap_or("?")
    ));
    drop_all();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `lab ARGS --lab FLEET`: its wall time and stdout.
type LabRun<'a> = dyn Fn(&[&str]) -> Result<(f64, String)> + 'a;

/// A second send cut halfway, then resumed by the next sync: its bytes and time beside the
/// uncut one. Only where the targets' pools keep resume tokens (OpenZFS); zfs-fuse's cannot.
fn resumed(
    bed: &lab_testbed::Testbed,
    ds: &str,
    lab_bin: &Path,
    fleet: &Path,
    lab: &LabRun<'_>,
    exec0: &dyn Fn(&str) -> Result<String>,
) -> Result {
    let version = bed
        .exec(
            1,
            &[
                "sh",
                "-c",
                &format!(
                    "zpool get version {} | awk 'NR == 2 {{ print $3 }}'",
                    bed.pool
                ),
            ],
        )
        .map_err(|e| e.to_string())?;
    let version = version.trim();
    if version != "-" {
        say(&format!(
            "resumed send after a cut halfway: not measured here: hv1's pool is version {version} \
             (zfs-fuse), which keeps no resume tokens, so a cut send starts again from the beginning \
             and costs what the uncut send above costs"
        ));
        return Ok(());
    }
    // 200 MiB at 50 MiB/s: cut after 2 s, about halfway.
    exec0(&format!(
        "head -c 200M /dev/urandom > /{ds}/change3 && sync"
    ))?;
    lab(&["proto", "release", "--name", "b3-release"])?;
    let mut cut = Command::new(lab_bin)
        .args(["-q", "proto", "sync", "--bwlimit", "50M", "--lab"])
        .arg(fleet)
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _ = cut.kill();
    let _ = cut.wait();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (wall, json) = lab(&["--format", "json", "proto", "sync"])?;
    let report: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    say(&format!(
        "resumed send after a cut halfway (200 MiB change, 2 targets): {wall:.2} s"
    ));
    for t in report["targets"].as_array().into_iter().flatten() {
        say(&format!(
            "  {}: {} bytes after the cut, path {}",
            t["host"].as_str().unwrap_or("?"),
            t["bytes"].as_u64().unwrap_or(0),
            t["path"]
        ));
    }
    Ok(())
}

/// Runs `lab ARGS --lab FLEET`: its wall time and stdout, or its stderr as the error.
fn run_lab(lab_bin: &Path, fleet: &Path, args: &[&str]) -> Result<(f64, String)> {
    let start = Instant::now();
    let out = Command::new(lab_bin)
        .args(args)
        .arg("--lab")
        .arg(fleet)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "lab {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}
