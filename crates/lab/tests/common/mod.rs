//! Helpers shared by the end-to-end test binaries: run the real `lab`, look at a hypervisor.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use lab_testbed::{PROTO, Testbed};
use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

pub fn lab(build: &Path, args: &[&str]) -> Run {
    lab_with(build, &[], args)
}

/// [`lab`] with environment variables of its own (`USER`: another user's run).
pub fn lab_with(build: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .envs(env.iter().copied())
        .env("LAB_BUILD", build)
        .env_remove("LAB_FILE")
        .env_remove("LAB_FORMAT")
        .current_dir(repo())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn k_of(hv: &str) -> u32 {
    hv.trim_start_matches("hv").parse().unwrap()
}

pub fn exists(bed: &Testbed, hv: &str, dataset: &str) -> bool {
    bed.exec(k_of(hv), &["zfs", "list", "-H", "-o", "name", dataset])
        .is_ok()
}

pub fn domain_exists(bed: &Testbed, hv: &str, name: &str) -> bool {
    bed.exec(k_of(hv), &["virsh", "-q", "domstate", name])
        .is_ok()
}

/// Whether a staging directory of `node` (of any lab: `<staging>/<lab>/<node>`) is left.
pub fn staging_exists(bed: &Testbed, hv: &str, node: &str) -> bool {
    bed.exec(
        k_of(hv),
        &[
            "sh",
            "-c",
            r#"ls -d /var/lib/lab/staging/*/"$0" >/dev/null 2>&1"#,
            node,
        ],
    )
    .is_ok()
}

pub fn mounted_anything_of(bed: &Testbed, hv: &str, node: &str) -> bool {
    let mounts = bed
        .exec(k_of(hv), &["cat", "/proc/self/mountinfo"])
        .unwrap();
    mounts
        .lines()
        .any(|l| l.contains(&format!("/{node} ")) || l.contains(&format!("staging/{node}")))
}

/// `zfs get guid -r` of `ds` on hypervisor `k`: the dataset and its snapshots, name TAB guid.
pub fn guid_listing(bed: &Testbed, k: u32, ds: &str) -> lab_testbed::Result<String> {
    bed.exec(
        k,
        &[
            "zfs",
            "get",
            "-H",
            "-p",
            "-o",
            "name,value",
            "guid",
            "-r",
            ds,
        ],
    )
}

/// Every proto snapshot with its guid, per hypervisor: must never change under create/destroy.
pub fn proto_fingerprint(bed: &Testbed) -> Vec<String> {
    (0..bed.hypervisors)
        .map(|k| guid_listing(bed, k, &format!("{}/{PROTO}", bed.pool)).unwrap())
        .collect()
}

/// Every `(hypervisor, node)` guest boots and prints its own hostname on its console.
pub fn assert_guests_boot(bed: &Testbed, nodes: &[(&str, &str)]) {
    for (hv, node) in nodes {
        let line = bed
            .wait_for_console(
                k_of(hv),
                node,
                "LAB-GUEST-HOSTNAME:",
                // (a guest nested in an emulated OpenZFS VM under load has taken over 120 s)
                std::time::Duration::from_secs(300),
            )
            .unwrap();
        assert_eq!(line, format!("LAB-GUEST-HOSTNAME: {node}"));
    }
}

/// A lab of our own on the test bed's fleet file. Labs that run at once on one hypervisor
/// cannot share its management prefix, so a test lab has no management network unless its
/// `body` says `mgmt`.
pub fn write_lab(dir: &Path, name: &str, id: u8, body: &str) -> PathBuf {
    let text = format!(
        "include: {}\nlab: {{name: {name}, id: {id}}}\nvars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
         defaults:\n  node:\n    vars: {{vpp_workers: 1, ospf_area: 0}}\n{no_mgmt}{default_overlay}{body}",
        repo().join("labs/testbed.yaml").display(),
        no_mgmt = if body.contains("mgmt") {
            ""
        } else {
            "  hypervisor:\n    mgmt: {mode: none}\n"
        },
        default_overlay = if body.contains("overlay:") {
            ""
        } else {
            "overlay: bird\n"
        },
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn by_node(report: &Value) -> std::collections::HashMap<String, Value> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap().to_owned(), n.clone()))
        .collect()
}

/// Starts `lab` with stderr piped (to watch its progress), stdout discarded.
pub fn spawn_lab(build: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(args)
        .env("LAB_BUILD", build)
        .env_remove("LAB_FILE")
        .env_remove("LAB_FORMAT")
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A copy of the repository's `bird` overlay in `dir/<name>`, to be changed by a test.
pub fn copy_overlay(dir: &Path, name: &str) -> PathBuf {
    let overlay = dir.join(name);
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(repo().join("overlays/bird"))
            .arg(&overlay)
            .status()
            .unwrap()
            .success()
    );
    overlay
}
