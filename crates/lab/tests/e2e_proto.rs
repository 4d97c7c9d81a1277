//! The proto lifecycle end to end on the test bed: release on hv0, replicate to hv1 and hv2
//! through the controller, prune, from the real `lab proto` verbs. Each test has a proto
//! dataset of its own (`ssd-vol0/pe-*`), so they can run in parallel.
//!
//! Long: one binary for every proto scenario on the bed (each binary is a link of the whole
//! stack), with a strict reader of the Prometheus text format for the status file.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use lab_testbed::{Testbed, require};

/// Runs `lab --format json proto ARGS --lab FLEET`.
fn proto(dir: &Path, fleet: &str, args: &[&str]) -> Run {
    let mut full = vec!["--format", "json", "proto"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--lab", fleet]);
    lab(dir, &full)
}

/// Removes `ds`, its snapshots and anything cloned from them (a test's own datasets only) from
/// every hypervisor; zfs-fuse may call a dataset busy for a moment after an unmount.
fn drop_everywhere(bed: &Testbed, ds: &str) {
    for k in 0..bed.hypervisors {
        // The holds sync leaves on increment bases (zfs would refuse to destroy those).
        for (snap, _) in snapshots(bed, k, ds) {
            for t in 0..bed.hypervisors {
                let _ = bed.exec(k, &["zfs", "release", &format!("lab-sync:hv{t}"), &snap]);
            }
        }
        let gone = (0..20).any(|_| {
            let _ = bed.exec(k, &["zfs", "destroy", "-R", "-f", ds]);
            let gone = bed
                .exec(k, &["zfs", "list", "-H", "-o", "name", ds])
                .is_err();
            if !gone {
                std::thread::sleep(Duration::from_millis(250));
            }
            gone
        });
        assert!(gone, "hv{k}: cannot remove {ds}");
    }
}

/// A fresh proto `ssd-vol0/<name>` on hv0 holding `mib` MiB of random data; no replica on
/// hv1 or hv2.
fn fresh_proto(bed: &Testbed, name: &str, mib: u32) -> String {
    let ds = format!("{}/{name}", bed.pool);
    drop_everywhere(bed, &ds);
    bed.exec(0, &["zfs", "create", &ds]).unwrap();
    grow(bed, &ds, "image", mib);
    ds
}

/// Writes `mib` MiB of random data into a new file of the proto on hv0.
fn grow(bed: &Testbed, ds: &str, file: &str, mib: u32) {
    let mountpoint = bed
        .exec(0, &["zfs", "get", "-H", "-o", "value", "mountpoint", ds])
        .unwrap();
    bed.exec(
        0,
        &[
            "sh",
            "-c",
            &format!("head -c {mib}M /dev/urandom > {}/{file}", mountpoint.trim()),
        ],
    )
    .unwrap();
}

/// A fleet file: the test bed with `ds` as the proto, `proto:` settings from `extra`.
fn fleet(dir: &Path, ds: &str, extra: &str) -> PathBuf {
    let path = dir.join("fleet.yaml");
    std::fs::write(
        &path,
        format!(
            "include: {}\ndefaults:\n  hypervisor:\n    proto: {ds}\n    snapshot: \"*-release\"\n\
             proto: {{source: hv0{extra}}}\n",
            repo().join("labs/testbed.yaml").display()
        ),
    )
    .unwrap();
    path
}

fn snapshots(bed: &Testbed, k: u32, ds: &str) -> Vec<(String, String)> {
    guid_listing(bed, k, ds)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains('@'))
        .map(|l| {
            let (n, g) = l.split_once('\t').unwrap();
            (n.to_owned(), g.to_owned())
        })
        .collect()
}

fn by_host(v: &serde_json::Value) -> std::collections::HashMap<String, serde_json::Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| (t["host"].as_str().unwrap().to_owned(), t.clone()))
        .collect()
}

const MIB: u64 = 1024 * 1024;

#[test]
fn release_then_refresh_sends_only_the_increment_and_a_second_refresh_does_nothing() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-inc", 16);
    let file = fleet(dir.path(), &ds, "");
    let f = file.to_str().unwrap();

    let run = lab(
        dir.path(),
        &["--format", "json", "proto", "release", "--lab", f],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first = run.json()["snapshot"].as_str().unwrap().to_owned();
    assert!(first.ends_with("-release"), "{first}");
    let run = lab(
        dir.path(),
        &["--format", "json", "proto", "refresh", "--lab", f],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (host, t) in by_host(&run.json()["sync"]) {
        assert_eq!(t["result"], "sent", "{host}: {t}");
        assert_eq!(t["from"], serde_json::Value::Null, "full send: {t}");
        assert!(t["bytes"].as_u64().unwrap() > 16 * MIB, "{t}");
    }

    // A 2 MiB change, released the same day under a distinct name.
    grow(&bed, &ds, "change", 2);
    let run = lab(
        dir.path(),
        &["--format", "json", "proto", "release", "--lab", f],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let second = run.json()["snapshot"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let run = lab(
        dir.path(),
        &["--format", "json", "proto", "refresh", "--lab", f],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (host, t) in by_host(&run.json()["sync"]) {
        assert_eq!(t["result"], "sent", "{host}: {t}");
        let bytes = t["bytes"].as_u64().unwrap();
        assert!(
            (2 * MIB..3 * MIB).contains(&bytes),
            "{host}: {bytes} bytes for a 2 MiB change on a 16 MiB image"
        );
    }
    let source = snapshots(&bed, 0, &ds);
    for k in 1..bed.hypervisors {
        assert_eq!(
            snapshots(&bed, k, &ds),
            source,
            "hv{k}: same snapshots, same GUIDs"
        );
        assert_eq!(
            bed.exec(k, &["zfs", "get", "-H", "-o", "value", "readonly", &ds])
                .unwrap()
                .trim(),
            "on"
        );
    }

    // Nothing new: quiet, exit 0, nothing sent.
    let run = lab(dir.path(), &["proto", "refresh", "--lab", f]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    let run = lab(
        dir.path(),
        &["--format", "json", "proto", "status", "--lab", f],
    );
    for (host, h) in by_host(&run.json()) {
        assert_eq!(h["in_sync"], true, "{host}: {h}");
        assert_eq!(h["behind"], 0, "{host}: {h}");
    }
    drop_everywhere(&bed, &ds);
}

#[test]
fn a_lab_on_an_old_snapshot_keeps_running_through_sync_and_prune() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    // A bootable proto: a copy of the test bed's.
    let ds = format!("{}/pe-pin", bed.pool);
    drop_everywhere(&bed, &ds);
    bed.exec(
        0,
        &[
            "sh",
            "-c",
            &format!(
                "zfs send {pool}/proto-disk0@base | zfs recv -u {ds} && zfs destroy {ds}@base && zfs mount {ds}",
                pool = bed.pool
            ),
        ],
    )
    .unwrap();
    let file = fleet(dir.path(), &ds, ", keep: 1");
    let f = file.to_str().unwrap();
    let step = |args: &[&str]| {
        let run = proto(dir.path(), f, args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        run.json()
    };
    step(&["release", "--name", "20261001-release"]);
    step(&["refresh"]);

    // A lab node on hv1, cloned from 20261001-release.
    let labfile = dir.path().join("pin.yaml");
    std::fs::write(
        &labfile,
        format!(
            "include: {}\nlab: {{name: e2e-pin, id: 55}}\noverlay: bird\nvars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
             defaults:\n  node:\n    vars: {{vpp_workers: 1, ospf_area: 0}}\nnodes:\n  pin-1: {{hypervisor: hv1, id: 64}}\n",
            file.display()
        ),
    )
    .unwrap();
    let l = labfile.to_str().unwrap();
    lab(dir.path(), &["destroy", "--lab", l, "-q"]);
    let run = lab(dir.path(), &["create", "--lab", l]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    bed.wait_for_console(
        1,
        "pin-1",
        "LAB-GUEST-HOSTNAME: pin-1",
        Duration::from_secs(120),
    )
    .unwrap();
    let clone = format!("{}/pin-1", bed.pool);
    let origin = || {
        bed.exec(1, &["zfs", "get", "-H", "-o", "value", "origin", &clone])
            .unwrap()
    };
    assert_eq!(origin().trim(), format!("{ds}@20261001-release"));

    // Two more releases; refresh sends them and prunes down to one release, except the pinned.
    grow(&bed, &ds, "a", 1);
    step(&["release", "--name", "20261101-release"]);
    grow(&bed, &ds, "b", 1);
    step(&["release", "--name", "20261102-release"]);
    let out = step(&["refresh"]);
    let pruned = by_host(&out["prune"]);
    let hv1 = &pruned["hv1"];
    assert_eq!(
        hv1["destroyed"],
        serde_json::json!([format!("{ds}@20261101-release")]),
        "{hv1}"
    );
    assert_eq!(hv1["pinned"][0]["snapshot"], "20261001-release", "{hv1}");
    assert_eq!(hv1["pinned"][0]["lab"], "e2e-pin", "{hv1}");
    assert_eq!(hv1["pinned"][0]["node"], "pin-1", "{hv1}");
    // The running lab did not notice.
    assert_eq!(
        bed.exec(1, &["virsh", "-q", "domstate", "pin-1"])
            .unwrap()
            .trim(),
        "running"
    );
    assert_eq!(origin().trim(), format!("{ds}@20261001-release"));

    // Once the lab is gone, the next prune takes the old snapshot too.
    let run = lab(dir.path(), &["destroy", "--lab", l]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = step(&["prune"]);
    assert_eq!(
        by_host(&out["hosts"])["hv1"]["destroyed"],
        serde_json::json!([format!("{ds}@20261001-release")])
    );
    assert_eq!(
        snapshots(&bed, 1, &ds)
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        [format!("{ds}@20261102-release")]
    );
    drop_everywhere(&bed, &ds);
}

#[test]
fn one_sync_catches_up_fills_an_empty_target_and_leaves_a_diverged_one_alone() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-div", 4);
    let file = fleet(dir.path(), &ds, "");
    let f = file.to_str().unwrap();
    let proto = |args: &[&str]| proto(dir.path(), f, args);
    assert_eq!(proto(&["release", "--name", "20260101-release"]).code, 0);
    assert_eq!(proto(&["sync"]).code, 0);
    grow(&bed, &ds, "b", 1);
    assert_eq!(proto(&["release", "--name", "20260102-release"]).code, 0);
    grow(&bed, &ds, "c", 1);
    assert_eq!(proto(&["release", "--name", "20260103-release"]).code, 0);
    // The base of each target's next increment is held, on the source and on the target:
    // neither a prune nor a human's `zfs destroy` can take it away.
    let base = format!("{ds}@20260101-release");
    let userrefs = |k: u32| {
        bed.exec(k, &["zfs", "get", "-H", "-o", "value", "userrefs", &base])
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        (userrefs(0), userrefs(1), userrefs(2)),
        ("2".into(), "1".into(), "1".into())
    );
    let refused = bed.exec(2, &["zfs", "destroy", "-r", &ds]).unwrap_err();
    assert!(refused.to_string().contains("busy"), "{refused}");
    // An operator who means it releases the hold first: hv2 loses its replica.
    bed.exec(2, &["zfs", "release", "lab-sync:hv2", &base])
        .unwrap();
    bed.exec(2, &["zfs", "destroy", "-r", &ds]).unwrap();

    let run = proto(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = by_host(&run.json()["targets"]);
    assert_eq!(t["hv1"]["from"], "20260101-release", "{}", t["hv1"]);
    assert_eq!(t["hv1"]["snapshots"], 2, "one sync, both missing snapshots");
    assert_eq!(t["hv2"]["from"], serde_json::Value::Null, "full send");
    assert_eq!(snapshots(&bed, 1, &ds), snapshots(&bed, 0, &ds));
    // The holds moved to the new base, hv2's too (it got 20260103 in full): the old base is
    // free on the source and on hv1.
    assert_eq!((userrefs(0), userrefs(1)), ("0".into(), "0".into()));
    let newest = format!("{ds}@20260103-release");
    let refs = |k: u32| {
        bed.exec(k, &["zfs", "get", "-H", "-o", "value", "userrefs", &newest])
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        (refs(0), refs(1), refs(2)),
        ("2".into(), "1".into(), "1".into())
    );
    // zfs-fuse cannot resume a cut receive: said once per target
    let notes = t["hv1"]["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .contains("pool version 23 cannot resume"),
        "{notes:?}"
    );

    // hv2's replica gets a snapshot of its own: its history no longer continues the source's.
    bed.exec(2, &["zfs", "snapshot", &format!("{ds}@hand-made")])
        .unwrap();
    let before = snapshots(&bed, 2, &ds);
    grow(&bed, &ds, "d", 1);
    assert_eq!(proto(&["release", "--name", "20260104-release"]).code, 0);
    let run = proto(&["sync"]);
    assert_eq!(run.code, 3, "partial: {}", run.stderr);
    let t = by_host(&run.json()["targets"]);
    assert_eq!(t["hv1"]["result"], "sent");
    assert_eq!(t["hv2"]["result"], "diverged", "{}", t["hv2"]);
    assert!(t["hv2"]["detail"].as_str().unwrap().contains("hand-made"));
    assert_eq!(
        snapshots(&bed, 2, &ds),
        before,
        "a diverged target is left alone"
    );
    let run = proto(&["status"]);
    let st = by_host(&run.json());
    assert!(
        st["hv2"]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("diverged: "),
        "{}",
        st["hv2"]
    );
    drop_everywhere(&bed, &ds);
}

#[test]
fn overlapping_refreshes_one_works_the_other_exits_0_saying_it_was_locked() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-cron", 96);
    let file = fleet(dir.path(), &ds, "");
    let f = file.to_str().unwrap();
    assert_eq!(lab(dir.path(), &["proto", "release", "--lab", f]).code, 0);

    let mut first = spawn_lab(dir.path(), &["-v", "proto", "refresh", "--lab", f]);
    let stderr = first.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let sending = line.ends_with(": sending");
        seen.push(line);
        if sending {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.ends_with(": sending")),
        "{seen:?}"
    );
    let second = lab(dir.path(), &["proto", "refresh", "--lab", f]);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = first.wait().unwrap();
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second.stderr.contains("is locked on hv0") && second.stderr.contains("nothing to do"),
        "{}",
        second.stderr
    );
    assert!(status.success(), "{seen:?} {rest:?}");
    for k in 1..bed.hypervisors {
        assert_eq!(snapshots(&bed, k, &ds), snapshots(&bed, 0, &ds));
    }
    drop_everywhere(&bed, &ds);
}

#[test]
fn begin_rollback_and_release_refuse_what_would_lose_or_misname_a_snapshot() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-rb", 1);
    // The proto's "VM" is a lab node's domain on hv0, running.
    let file = fleet(dir.path(), &ds, ", domain: rb-vm");
    let f = file.to_str().unwrap();
    let labfile = dir.path().join("rb.yaml");
    std::fs::write(
        &labfile,
        format!(
            "include: {}\nlab: {{name: e2e-rb, id: 56}}\noverlay: bird\nvars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
             defaults:\n  hypervisor:\n    proto: {pool}/proto-disk0\n    snapshot: base\n  node:\n    vars: {{vpp_workers: 1, ospf_area: 0}}\n\
             nodes:\n  rb-vm: {{hypervisor: hv0, id: 65}}\n",
            file.display(),
            pool = bed.pool
        ),
    )
    .unwrap();
    let l = labfile.to_str().unwrap();
    lab(dir.path(), &["destroy", "--lab", l, "-q"]);
    let mountpoint = bed
        .exec(0, &["zfs", "get", "-H", "-o", "value", "mountpoint", &ds])
        .unwrap();
    let marker = format!("{}/maintenance", mountpoint.trim());

    // Nothing to roll back to yet.
    let run = proto(dir.path(), f, &["rollback"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);

    // A release name that exists is refused; nothing changes.
    assert_eq!(
        proto(dir.path(), f, &["release", "--name", "x-release"]).code,
        0
    );
    let before = snapshots(&bed, 0, &ds);
    let run = proto(dir.path(), f, &["release", "--name", "x-release"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("x-release already exists"),
        "{}",
        run.stderr
    );
    assert_eq!(snapshots(&bed, 0, &ds), before);

    // The newest snapshot is a release, not a rollback point: refused.
    let run = proto(dir.path(), f, &["rollback"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("not a `-before` snapshot"),
        "{}",
        run.stderr
    );

    // begin, a maintenance, rollback: the maintenance is gone, the snapshots stay.
    let run = proto(dir.path(), f, &["begin"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let point = run.json()["snapshot"].as_str().unwrap().to_owned();
    assert!(point.ends_with("-before"), "{point}");
    bed.exec(0, &["touch", &marker]).unwrap();
    let before = snapshots(&bed, 0, &ds);
    let run = proto(dir.path(), f, &["rollback"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["snapshot"], point);
    assert!(
        bed.exec(0, &["test", "-e", &marker]).is_err(),
        "rolled back"
    );
    assert_eq!(snapshots(&bed, 0, &ds), before);

    // While the proto's domain runs, release is refused unless --force.
    let run = lab(dir.path(), &["create", "--lab", l]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let before = snapshots(&bed, 0, &ds);
    let run = proto(dir.path(), f, &["release"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("domain `rb-vm` is running"),
        "{}",
        run.stderr
    );
    assert_eq!(snapshots(&bed, 0, &ds), before);
    let run = proto(dir.path(), f, &["release", "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(snapshots(&bed, 0, &ds).len(), before.len() + 1);

    let run = lab(dir.path(), &["destroy", "--lab", l]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    drop_everywhere(&bed, &ds);
}

/// The samples of a Prometheus text-format document, `name{labels}` → value; an error for
/// any line the format does not allow (a sample before its TYPE, a bad label, a bad value).
fn parse_prometheus(text: &str) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = std::collections::BTreeMap::new();
    let name_ok = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("HELP"), Some(n), Some(_)) if name_ok(n) => {}
                (Some("TYPE"), Some(n), Some("gauge" | "counter")) if name_ok(n) => {
                    typed.insert(n.to_owned());
                }
                _ => return Err(format!("a bad comment line: {line}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("a bad value: {line}"))?;
        let name = series.split('{').next().unwrap();
        if !name_ok(name) || !typed.contains(name) {
            return Err(format!(
                "a sample without its TYPE or with a bad name: {line}"
            ));
        }
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .ok_or_else(|| format!("bad braces: {line}"))?;
            // key="value" pairs; a value may hold \" \\ \n escapes and commas.
            let mut rest = inner;
            while !rest.is_empty() {
                let (key, after) = rest
                    .split_once("=\"")
                    .ok_or_else(|| format!("a bad label: {line}"))?;
                if !name_ok(key) {
                    return Err(format!("a bad label name `{key}`: {line}"));
                }
                let mut chars = after.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, '\\' | '"' | 'n')) => {}
                            _ => return Err(format!("a bad escape: {line}")),
                        },
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        '\n' => return Err(format!("a raw newline: {line}")),
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| format!("an open label value: {line}"))?;
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
        }
        if samples.insert(series.to_owned(), value).is_some() {
            return Err(format!("a sample twice: {line}"));
        }
    }
    Ok(samples)
}

fn sample(samples: &std::collections::BTreeMap<String, f64>, name: &str, hv: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(k, _)| k.starts_with(&format!("{name}{{hypervisor=\"{hv}\"")))
        .map(|(_, v)| *v)
}

#[test]
fn refresh_writes_a_prometheus_status_file_that_follows_releases() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-prom", 2);
    let file = fleet(dir.path(), &ds, "");
    let f = file.to_str().unwrap();
    let status_file = dir.path().join("textfile/lab_proto.prom");
    std::fs::create_dir_all(status_file.parent().unwrap()).unwrap();
    let sf = status_file.to_str().unwrap();
    assert_eq!(lab(dir.path(), &["proto", "release", "--lab", f]).code, 0);
    // Review 3, N2 (high): a symlink planted at the file's name, to a root-only file, is
    // replaced by the rename, never written through.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "secret").unwrap();
    std::os::unix::fs::symlink(&victim, &status_file).unwrap();
    let run = lab(
        dir.path(),
        &["proto", "refresh", "--lab", f, "--status-file", sf],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
    assert!(
        std::fs::symlink_metadata(&status_file)
            .unwrap()
            .file_type()
            .is_file()
    );
    let text = std::fs::read_to_string(&status_file).unwrap();
    let s = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The reader is strict: it would catch a sample without its TYPE or a bad escape.
    assert!(parse_prometheus("lab_x 1\n").is_err());
    assert!(parse_prometheus("# TYPE lab_x gauge\nlab_x{a=\"\\q\"} 1\n").is_err());
    for hv in ["hv1", "hv2"] {
        assert_eq!(sample(&s, "lab_proto_in_sync", hv), Some(1.0), "{text}");
        assert_eq!(
            sample(&s, "lab_proto_releases_behind", hv),
            Some(0.0),
            "{text}"
        );
        assert!(
            sample(&s, "lab_proto_last_success_timestamp_seconds", hv).is_some(),
            "{text}"
        );
        assert_eq!(sample(&s, "lab_proto_up", hv), Some(1.0), "{text}");
    }
    // Only the file itself is left in the directory: the temporary one was renamed over it.
    assert_eq!(
        std::fs::read_dir(status_file.parent().unwrap())
            .unwrap()
            .count(),
        1
    );

    // A new release: the targets are one behind until the next refresh.
    grow(&bed, &ds, "b", 1);
    assert_eq!(
        lab(
            dir.path(),
            &["proto", "release", "--lab", f, "--name", "20990101-release"]
        )
        .code,
        0
    );
    let run = lab(
        dir.path(),
        &["--format", "prometheus", "proto", "status", "--lab", f],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = parse_prometheus(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{}", run.stdout));
    for hv in ["hv1", "hv2"] {
        assert_eq!(
            sample(&s, "lab_proto_in_sync", hv),
            Some(0.0),
            "{}",
            run.stdout
        );
        assert_eq!(
            sample(&s, "lab_proto_releases_behind", hv),
            Some(1.0),
            "{}",
            run.stdout
        );
    }
    let run = lab(
        dir.path(),
        &["proto", "refresh", "--lab", f, "--status-file", sf],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = parse_prometheus(&std::fs::read_to_string(&status_file).unwrap()).unwrap();
    assert_eq!(sample(&s, "lab_proto_in_sync", "hv2"), Some(1.0));
    drop_everywhere(&bed, &ds);
}

#[test]
fn a_cut_sync_leaves_nothing_the_next_sync_does_not_finish() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-cut", 1);
    let file = fleet(dir.path(), &ds, "");
    let f = file.to_str().unwrap();
    let proto = |args: &[&str]| proto(dir.path(), f, args);
    assert_eq!(proto(&["release", "--name", "20260101-release"]).code, 0);
    assert_eq!(proto(&["sync"]).code, 0);
    grow(&bed, &ds, "big", 16);
    assert_eq!(proto(&["release", "--name", "20260102-release"]).code, 0);

    // 16 MiB at 1 MiB/s: killed (SIGKILL) a few seconds into the stream.
    let mut cut = spawn_lab(
        dir.path(),
        &["-v", "proto", "sync", "--lab", f, "--bwlimit", "1M"],
    );
    let stderr = cut.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let sending = line.ends_with(": sending");
        seen.push(line);
        if sending {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    cut.kill().unwrap();
    cut.wait().unwrap();
    assert!(seen.iter().any(|l| l.ends_with(": sending")), "{seen:?}");
    assert_ne!(
        snapshots(&bed, 1, &ds),
        snapshots(&bed, 0, &ds),
        "the cut sync did not finish"
    );

    // The next sync finishes (its lock is free once the killed run's channel is gone).
    let mut run = proto(&["sync"]);
    for _ in 0..30 {
        if run.code != 4 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        run = proto(&["sync"]);
    }
    assert_eq!(run.code, 0, "{}", run.stderr);
    let names = |k: u32| {
        bed.exec(
            k,
            &["zfs", "list", "-H", "-t", "all", "-o", "name", "-r", &ds],
        )
        .unwrap()
    };
    for k in [1, 2] {
        assert_eq!(snapshots(&bed, k, &ds), snapshots(&bed, 0, &ds), "hv{k}");
        // Nothing half-received is left anywhere under the replica.
        assert_eq!(names(k), names(0), "hv{k}");
    }
    drop_everywhere(&bed, &ds);
}

#[test]
fn direct_transport_counts_bytes_with_pv_and_takes_a_rate_limit() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-direct", 3);
    let file = fleet(dir.path(), &ds, ", transport: direct, bwlimit: 50M");
    let f = file.to_str().unwrap();
    assert_eq!(proto(dir.path(), f, &["release"]).code, 0);
    let run = proto(dir.path(), f, &["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = by_host(&run.json()["targets"]);
    for hv in ["hv1", "hv2"] {
        assert_eq!(t[hv]["result"], "sent", "{}", t[hv]);
        let bytes = t[hv]["bytes"].as_u64().unwrap_or(0);
        assert!(
            bytes >= 3 * MIB,
            "pv on the source counted {bytes} bytes: {}",
            t[hv]
        );
        assert_eq!(snapshots(&bed, 1, &ds), snapshots(&bed, 0, &ds));
    }
    drop_everywhere(&bed, &ds);
}

/// `--dry-run` with zrepl transport wakes nothing, so it waits for nothing: it says what it
/// would do and ends at once (the test bed has no zrepl: a real wakeup would fail).
#[test]
fn a_zrepl_dry_run_neither_wakes_nor_waits() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-zrepl", 1);
    let file = fleet(dir.path(), &ds, ", transport: zrepl, zrepl_job: lab-proto");
    let f = file.to_str().unwrap();
    assert_eq!(proto(dir.path(), f, &["release"]).code, 0);
    let run = proto(dir.path(), f, &["sync", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let t = by_host(&report["targets"]);
    for hv in ["hv1", "hv2"] {
        assert_eq!(t[hv]["result"], "woken", "{}", t[hv]);
        assert_eq!(t[hv]["waited_seconds"], 0, "{}", t[hv]);
    }
    let commands: Vec<&str> = report["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["effect"] == "change")
        .map(|c| c["line"].as_str().unwrap())
        .collect();
    assert!(
        commands
            .iter()
            .all(|c| c.contains("zrepl signal wakeup lab-proto")),
        "{commands:?}"
    );
    drop_everywhere(&bed, &ds);
}

/// A fleet file of hv0 and hv1 only (hv2 left out, as an operator does with a hypervisor that
/// is down for maintenance), with `ds` as the proto.
fn fleet_without_hv2(dir: &Path, ds: &str) -> PathBuf {
    let bed_file = std::fs::read_to_string(repo().join("labs/testbed.yaml")).unwrap();
    let overlays = repo().join("overlays");
    let two: String = bed_file
        .lines()
        .filter(|l| !l.trim_start().starts_with("hv2:"))
        .map(|l| l.replace("../overlays", overlays.to_str().unwrap()) + "\n")
        .collect();
    std::fs::write(dir.join("two.yaml"), two).unwrap();
    let path = dir.join("partial.yaml");
    std::fs::write(
        &path,
        format!(
            "include: two.yaml\ndefaults:\n  hypervisor:\n    proto: {ds}\n    snapshot: \"*-release\"\n\
             proto: {{source: hv0, keep: 1}}\n"
        ),
    )
    .unwrap();
    path
}

/// Review 3, N1 (high), on the bed: a refresh from a fleet file that leaves a target out
/// keeps that target's increment base on the source (its `lab-sync` hold stays, and the
/// report lists it), so when it is back it catches up with an increment; only `lab proto
/// forget` releases it.
#[test]
fn a_target_left_out_of_the_fleet_file_keeps_its_base_until_forgotten() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let ds = fresh_proto(&bed, "pe-gone", 2);
    let full = fleet(dir.path(), &ds, ", keep: 1");
    let full = full.to_str().unwrap();
    let partial = fleet_without_hv2(dir.path(), &ds);
    let partial = partial.to_str().unwrap();
    let run = proto(dir.path(), full, &["release", "--name", "20990101-release"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = proto(dir.path(), full, &["refresh"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let base = format!("{ds}@20990101-release");
    // hv2 is left out; two more releases, and a refresh that prunes down to one release.
    for name in ["20990102-release", "20990103-release"] {
        grow(&bed, &ds, name, 1);
        let run = proto(dir.path(), partial, &["release", "--name", name]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let run = proto(dir.path(), partial, &["refresh"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let on_source: Vec<String> = snapshots(&bed, 0, &ds)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        on_source.contains(&base),
        "hv2's base went: {on_source:?}\n{report}"
    );
    assert!(
        !on_source.contains(&format!("{ds}@20990102-release")),
        "prune did not run: {on_source:?}"
    );
    // zfs-fuse cannot list hold tags: the base is reported held (OpenZFS names the departed
    // hypervisor: `e2e_openzfs.rs`).
    let source_prune = report["prune"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host"] == "hv0")
        .unwrap();
    assert!(
        source_prune["held"]
            .to_string()
            .contains("20990101-release"),
        "the kept base is not reported: {report}"
    );
    // hv2 is back in the file: it catches up from its base, an increment.
    let run = proto(dir.path(), full, &["refresh"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let hv2 = by_host(&run.json()["sync"])["hv2"].clone();
    assert_eq!(hv2["result"], "sent", "{hv2}");
    assert_eq!(hv2["from"], "20990101-release", "{hv2}");
    // It leaves for good: `forget` releases its hold on the source.
    let newest = format!("{ds}@20990103-release");
    let refs = |snap: &str| {
        bed.exec(0, &["zfs", "get", "-H", "-o", "value", "userrefs", snap])
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let before = refs(&newest);
    let run = proto(dir.path(), partial, &["forget", "hv2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(refs(&newest), before - 1, "{}", run.stdout);
    drop_everywhere(&bed, &ds);
}
