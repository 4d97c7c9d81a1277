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
    let lab = |args: &[&str]| -> Result<(f64, String)> {
        let start = Instant::now();
        let out = Command::new(&lab_bin)
            .args(args)
            .arg("--lab")
            .arg(&fleet)
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
    };
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
