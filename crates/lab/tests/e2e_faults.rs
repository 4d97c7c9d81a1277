//! Faults, end to end on the test bed: a hypervisor that is down, a connection cut in the
//! middle of a create, a pool that fills up, `lab` killed with SIGKILL or interrupted with
//! SIGINT, a lock held by someone else, and hostile arguments over real ssh.
//!
//! These tests stop daemons and cut links, so they run one at a time (and in their own test
//! binary, which cargo never runs beside the other end-to-end tests).
//!
//! Long: every fault that must not run beside another lives here, for that reason.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use lab_testbed::{Testbed, UpOptions, require};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Brings back whatever a test broke, even when it fails half-way.
struct Restore<'a>(&'a Testbed);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for k in 0..self.0.hypervisors {
            let _ = self.0.set_link(k, true);
        }
        let _ = self.0.up(&UpOptions::default(), &mut |_| {});
    }
}

/// A running `lab -v`'s progress lines; the rest is drained in the background once a line
/// matching `stop_at` was read.
fn progress_until(child: &mut Child, stop_at: impl Fn(&str) -> bool) -> Vec<String> {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let hit = stop_at(&line);
        seen.push(line);
        if hit {
            std::thread::spawn(move || lines.for_each(drop));
            return seen;
        }
    }
    panic!("`lab` ended before the awaited progress line: {seen:#?}");
}

/// Waits for `child`, killing it and failing the test if it runs longer than `limit`: a hang
/// detector, not a speed check.
fn wait_bounded(child: &mut Child, limit: Duration) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("`lab` did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Neither clone, nor domain, nor staging directory, nor mount of any of `nodes` is left.
fn assert_nothing_left(bed: &Testbed, nodes: &[(&str, &str)]) {
    for (hv, node) in nodes {
        assert!(
            !exists(bed, hv, &format!("{}/{node}", bed.pool)),
            "{node}: clone left"
        );
        assert!(!domain_exists(bed, hv, node), "{node}: domain left");
        assert!(!staging_exists(bed, hv, node), "{node}: staging left");
        assert!(!mounted_anything_of(bed, hv, node), "{node}: mount left");
    }
}

/// `lab status` explains every node: no node is unknown, and every clone is lab's own with an
/// owner and a state.
fn assert_status_explains_everything(dir: &Path, file: &str) {
    let run = lab(dir, &["--format", "json", "status", "--lab", file]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for n in run.json()["nodes"].as_array().unwrap() {
        assert!(n.get("error").is_none(), "{n}");
        assert!(
            ["running", "shut off", "absent"].contains(&n["domain"].as_str().unwrap()),
            "{n}"
        );
        if n["clone"] == true {
            assert!(n.get("foreign").is_none(), "{n}");
            assert!(n["owner"].as_str().unwrap().contains('@'), "{n}");
            assert!(
                ["ready", "filling"].contains(&n["state"].as_str().unwrap()),
                "{n}"
            );
        }
    }
}

#[test]
fn a_hypervisor_that_is_down_fails_its_nodes_and_the_others_are_created() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-down",
        50,
        "nodes:\n  dn-0: {hypervisor: hv0, id: 50}\n  dn-2: {hypervisor: hv2, id: 51}\n",
    );
    let f = file.to_str().unwrap();
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);

    let restore = Restore(&bed);
    bed.stop_sshd(2);
    let run = lab(dir.path(), &["--format", "json", "create", "--lab", f]);
    drop(restore);

    assert_eq!(run.code, 3, "partial: {}", run.stderr);
    let nodes = by_node(&run.json());
    assert_eq!(nodes["dn-0"]["result"], "done", "{}", nodes["dn-0"]);
    assert_eq!(nodes["dn-2"]["result"], "failed");
    let error = nodes["dn-2"]["error"].as_str().unwrap();
    assert!(error.starts_with("hv2: cannot connect to `hv2`"), "{error}");
    assert!(!exists(&bed, "hv2", &format!("{}/dn-2", bed.pool)));

    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_nothing_left(&bed, &[("hv0", "dn-0"), ("hv2", "dn-2")]);
}

#[test]
fn a_connection_cut_mid_create_ends_and_the_next_create_converges() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-cut",
        51,
        "nodes:\n  cut-0: {hypervisor: hv0, id: 52}\n  cut-1: {hypervisor: hv1, id: 53}\n  \
         cut-2: {hypervisor: hv1, id: 54}\n  cut-3: {hypervisor: hv1, id: 55}\n  cut-4: {hypervisor: hv1, id: 56}\n",
    );
    let f = file.to_str().unwrap();
    let all = [
        ("hv0", "cut-0"),
        ("hv1", "cut-1"),
        ("hv1", "cut-2"),
        ("hv1", "cut-3"),
        ("hv1", "cut-4"),
    ];
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);

    let restore = Restore(&bed);
    let mut child = spawn_lab(dir.path(), &["-v", "create", "--lab", f]);
    progress_until(&mut child, |l| {
        l.contains("hv1/cut-") && l.ends_with(": copy")
    });
    bed.set_link(1, false).unwrap();
    // ssh notices a dead link after 3 missed keep-alives 5 s apart.
    let code = wait_bounded(&mut child, Duration::from_secs(120));
    drop(restore);
    assert_ne!(
        code, 0,
        "the cut hypervisor's nodes cannot all have been created"
    );

    assert_status_explains_everything(dir.path(), f);

    // The remote lock of the cut run lapses once its heartbeat stops: wait for it.
    let run = lab(
        dir.path(),
        &[
            "--format",
            "json",
            "create",
            "--lab",
            f,
            "--lock-wait",
            "90",
        ],
    );
    assert_eq!(run.code, 0, "converges: {}\n{}", run.stdout, run.stderr);
    assert_guests_boot(&bed, &all);

    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_nothing_left(&bed, &all);
}

#[test]
fn lab_killed_mid_create_converges_on_the_next_create_and_destroy_leaves_nothing() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-kill",
        52,
        "nodes:\n  kl-1: {hypervisor: hv0, id: 57}\n  kl-2: {hypervisor: hv0, id: 58}\n  \
         kl-3: {hypervisor: hv2, id: 59}\n  kl-4: {hypervisor: hv2, id: 60}\n",
    );
    let f = file.to_str().unwrap();
    let all = [
        ("hv0", "kl-1"),
        ("hv0", "kl-2"),
        ("hv2", "kl-3"),
        ("hv2", "kl-4"),
    ];
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);

    let mut child = spawn_lab(dir.path(), &["-v", "create", "--lab", f]);
    progress_until(&mut child, |l| l.ends_with(": copy"));
    child.kill().unwrap(); // SIGKILL: no cleanup, no unlock
    child.wait().unwrap();

    assert_status_explains_everything(dir.path(), f);
    // No --lock-wait: the lock died with its holder.
    let run = lab(dir.path(), &["--format", "json", "create", "--lab", f]);
    assert_eq!(run.code, 0, "converges: {}\n{}", run.stdout, run.stderr);
    assert_guests_boot(&bed, &all);
    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_nothing_left(&bed, &all);
}

/// Ctrl-C in the middle of a create: the run stops where it is, says so, exits 130, and
/// leaves nothing of itself on the controller (its ssh masters are closed); status explains
/// every node and destroy removes what was half-made.
#[test]
fn lab_interrupted_mid_create_stops_cleanly() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-int",
        54,
        "nodes:\n  in-1: {hypervisor: hv0, id: 63}\n  in-2: {hypervisor: hv1, id: 64}\n",
    );
    let f = file.to_str().unwrap();
    let all = [("hv0", "in-1"), ("hv1", "in-2")];
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["-v", "create", "--lab", f])
        .env("LAB_BUILD", dir.path())
        .env("TMPDIR", &tmp)
        .env_remove("LAB_FORMAT")
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // Its own process group, signalled as a whole below: what a terminal's Ctrl-C does
        // (rsync and the ssh masters get it too).
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let copying = line.ends_with(": copy");
        said.push(line);
        if copying {
            break;
        }
    }
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &format!("-{}", child.id())])
            .status()
            .unwrap()
            .success()
    );
    said.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let said = said.join("\n");
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(
        said.contains("error: interrupted by SIGINT: the run stopped where it was"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the run's ssh control directories are gone"
    );
    assert_status_explains_everything(dir.path(), f);
    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_nothing_left(&bed, &all);
}

#[test]
fn a_held_lock_stops_changes_names_its_holder_and_can_be_waited_for() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-lock",
        53,
        "nodes:\n  lk-0: {hypervisor: hv0, id: 61}\n  lk-1: {hypervisor: hv1, id: 62}\n",
    );
    let f = file.to_str().unwrap();
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);

    // Someone else's run holds the lock on hv1, as lab's lock script would leave it, until
    // told to let go.
    let release = "/tmp/lab-e2e-lock-release";
    let _ = bed.exec(1, &["rm", "-f", release]);
    let mut holder = bed
        .command(1, "sh")
        .unwrap()
        .args([
            "-c",
            "mkdir -p -m 0700 /run/lab && echo 'ana@ctl2 4242 destroy 1795000000' > /run/lab/e2e-lock.lock \
             && exec flock -o /run/lab/e2e-lock.lock sh -c 'while [ ! -e \"$0\" ]; do sleep 0.1; done' \"$0\"",
            release,
        ])
        .spawn()
        .unwrap();
    let held = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        bed.exec(1, &["flock", "-n", "/run/lab/e2e-lock.lock", "true"])
            .is_err()
    });
    assert!(held, "the stand-in holder did not take the lock");

    for verb in ["create", "destroy"] {
        let run = lab(dir.path(), &[verb, "--lab", f]);
        assert_eq!(run.code, 4, "{verb}: {}", run.stderr);
        assert!(
            run.stderr.contains(
                "lab `e2e-lock` is locked on hv1 by ana@ctl2 (pid 4242, `lab destroy`) since 2026-11-18 11:06:40 UTC"
            ),
            "{}",
            run.stderr
        );
    }
    // Nothing changed, not even on hv0, whose lock was free; and the refused create did not
    // render a tree another run might be copying: it renders only once it holds the lock.
    assert!(!exists(&bed, "hv0", &format!("{}/lk-0", bed.pool)));
    assert!(
        !dir.path().join("bird").exists(),
        "the refused create wrote the build"
    );
    // Read-only verbs take no lock.
    let run = lab(dir.path(), &["status", "--lab", f]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = lab(dir.path(), &["create", "--lab", f, "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // --lock-wait: the holder goes after a moment, the run goes on.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let _ = Testbed::default().exec(1, &["touch", release]);
        holder.wait().unwrap();
    });
    let run = lab(dir.path(), &["create", "--lab", f, "--lock-wait", "60"]);
    releaser.join().unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("waiting up to 60 s for the lock of lab `e2e-lock` on hv1, held by ana@ctl2"),
        "{}",
        run.stderr
    );
    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_nothing_left(&bed, &[("hv0", "lk-0"), ("hv1", "lk-1")]);
}

#[test]
fn a_full_pool_rolls_the_node_back_says_no_space_and_leaves_the_pool_as_it_was() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    // A 64 MB pool on hv2 with a small proto of its own.
    let (pool, vdev) = ("e2etiny", "/var/lib/lab-testbed/e2etiny.img");
    let _ = bed.exec(2, &["zpool", "destroy", "-f", pool]);
    let _ = std::fs::remove_file(vdev);
    assert!(
        Command::new("truncate")
            .args(["-s", "64M", vdev])
            .status()
            .unwrap()
            .success()
    );
    bed.exec(2, &["zpool", "create", "-m", "none", pool, vdev])
        .unwrap();
    bed.exec(
        2,
        &[
            "zfs",
            "create",
            "-o",
            "mountpoint=/var/lib/lab-e2etiny-proto",
            &format!("{pool}/proto"),
        ],
    )
    .unwrap();
    bed.exec(2, &["sh", "-c", "mkdir -p /var/lib/lab-e2etiny-proto/etc"])
        .unwrap();
    bed.exec(2, &["zfs", "snapshot", &format!("{pool}/proto@base")])
        .unwrap();
    let listing = || {
        bed.exec(
            2,
            &["zfs", "list", "-H", "-t", "all", "-o", "name", "-r", pool],
        )
        .unwrap()
    };
    let before = listing();

    // An overlay with an incompressible 96 MB blob for the node.
    let overlay = copy_overlay(dir.path(), "overlay");
    let blobs = overlay.join("blobs/full-1");
    std::fs::create_dir_all(&blobs).unwrap();
    assert!(
        Command::new("head")
            .args(["-c", "96M", "/dev/urandom"])
            .stdout(std::fs::File::create(blobs.join("big.bin")).unwrap())
            .status()
            .unwrap()
            .success()
    );
    let file = write_lab(
        dir.path(),
        "e2e-full",
        54,
        &format!(
            "overlay: full\noverlays:\n  full: {{dir: {}}}\n\
             hypervisors:\n  hv2: {{pool: {pool}, proto: {pool}/proto, snapshot: base}}\n\
             nodes:\n  full-1: {{hypervisor: hv2, id: 63}}\n",
            overlay.display()
        ),
    );
    let f = file.to_str().unwrap();
    let run = lab(dir.path(), &["--format", "json", "create", "--lab", f]);
    let cleanup = || {
        // zfs-fuse may call the pool busy for a moment after the rollback's destroy.
        let gone = (0..20).any(|_| {
            bed.exec(2, &["zpool", "destroy", "-f", pool]).is_ok() || {
                std::thread::sleep(std::time::Duration::from_millis(500));
                false
            }
        });
        assert!(gone, "the test's pool {pool} could not be destroyed");
        let _ = std::fs::remove_file(vdev);
        let _ = std::fs::remove_dir("/var/lib/lab-e2etiny-proto");
    };
    let node = by_node(&run.json())["full-1"].clone();
    let after = listing();
    let staging = staging_exists(&bed, "hv2", "full-1");
    let domain = domain_exists(&bed, "hv2", "full-1");
    cleanup();

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(node["result"], "failed", "{node}");
    assert_eq!(node["step"], "copy", "{node}");
    assert_eq!(node["rolled_back"], true, "{node}");
    assert!(
        node["error"]
            .as_str()
            .unwrap()
            .starts_with("no space left on pool e2etiny: "),
        "{node}"
    );
    assert_eq!(after, before, "the pool holds what it held before");
    assert!(!staging && !domain);
}

/// Issue 24: a plan defines its nodes' domains in one virsh; the one definition libvirt
/// refuses fails its node alone, at `define`, with libvirt's words, and that node is rolled
/// back; the nodes before and after it in the same virsh are defined.
#[test]
fn a_definition_libvirt_refuses_fails_its_node_only_and_rolls_it_back() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let nodes = [("hv1", "df-1"), ("hv1", "df-2"), ("hv1", "df-3")];
    let file = write_lab(
        dir.path(),
        "e2e-define",
        59,
        "nodes:\n  df-1: {hypervisor: hv1, id: 1}\n  \
         df-2: {hypervisor: hv1, id: 2, vars: {memory_mib: lots}}\n  \
         df-3: {hypervisor: hv1, id: 3}\n",
    );
    let f = file.to_str().unwrap();
    let run = lab(
        dir.path(),
        &["--format", "json", "create", "--no-start", "--lab", f],
    );
    let report = by_node(&run.json());
    let defined: Vec<bool> = nodes
        .iter()
        .map(|(hv, n)| domain_exists(&bed, hv, n))
        .collect();
    let bad_clone = exists(&bed, "hv1", &format!("{}/df-2", bed.pool));
    let destroy = lab(dir.path(), &["destroy", "--yes", "--lab", f]);

    // Partial: some nodes failed.
    assert_eq!(run.code, 3, "{}", run.stderr);
    let bad = &report["df-2"];
    assert_eq!(bad["result"], "failed", "{bad}");
    assert_eq!(bad["step"], "define", "{bad}");
    assert_eq!(bad["rolled_back"], true, "{bad}");
    let error = bad["error"].as_str().unwrap();
    assert!(error.contains("lots"), "{bad}");
    assert!(error.contains("the plan's define wave"), "{bad}");
    assert_eq!(report["df-1"]["result"], "done", "{}", report["df-1"]);
    assert_eq!(report["df-3"]["result"], "done", "{}", report["df-3"]);
    assert_eq!(defined, [true, false, true]);
    assert!(!bad_clone, "the refused node's clone was rolled back");
    assert_eq!(destroy.code, 0, "{}", destroy.stderr);
    assert_nothing_left(&bed, &nodes);
}

/// An executor of one command at a time on the bed's hypervisor `hv`, and a runtime for it.
fn live_on(hv: &str) -> (lab_exec::Executor, tokio::runtime::Runtime) {
    let exec = lab_exec::Executor::new(
        lab_exec::Mode::Live,
        vec![lab_exec::Target {
            name: hv.into(),
            ssh: hv.into(),
            parallel: 1,
        }],
        1,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (exec, rt)
}

/// A node whose definition failed may have been defined all the same (a `virsh` killed by
/// its deadline after libvirt took it): its rollback undefines the domain at its name only
/// when the domain's marker names this lab and that node, and finds nothing to do without one.
#[test]
fn a_failed_definitions_rollback_undefines_only_the_labs_own_domain() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-undef",
        60,
        "nodes:\n  ud-1: {hypervisor: hv1, id: 1}\n  ud-2: {hypervisor: hv1, id: 2}\n  \
         ud-3: {hypervisor: hv1, id: 3}\n  ud-4: {hypervisor: hv1, id: 4}\n",
    );
    let model = lab_model::load(std::slice::from_ref(&file)).unwrap();
    let node = |n: &str| model.nodes.iter().find(|x| x.name == n).unwrap();
    // ud-1 is this lab's, ud-2 another lab's, ud-3 no one's; ud-4 has no domain.
    let marker = |lab: &str, n: &str| {
        format!(
            "<metadata><lab:lab xmlns:lab='{}' lab='{lab}' node='{n}'/></metadata>",
            lab_model::LAB_XML_NS
        )
    };
    for (name, metadata) in [
        ("ud-1", marker("e2e-undef", "ud-1")),
        ("ud-2", marker("other", "ud-2")),
        ("ud-3", String::new()),
    ] {
        let xml = format!(
            "<domain type='qemu'><name>{name}</name>{metadata}<memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
        );
        bed.exec(
            1,
            &[
                "sh",
                "-c",
                "printf '%s' \"$1\" | virsh -q define /dev/stdin",
                "d",
                &xml,
            ],
        )
        .unwrap();
    }
    let (exec, rt) = live_on("hv1");
    let results: Vec<_> = rt.block_on(async {
        let mut results = Vec::new();
        for n in ["ud-1", "ud-2", "ud-3", "ud-4"] {
            let cmd = lab_hv::cmd::undefine_if_marked(node(n), "e2e-undef");
            results.push(exec.run("hv1", &cmd).await.map(|_| ()));
        }
        exec.close().await;
        results
    });
    let left: Vec<bool> = ["ud-1", "ud-2", "ud-3", "ud-4"]
        .iter()
        .map(|n| domain_exists(&bed, "hv1", n))
        .collect();
    for n in ["ud-1", "ud-2", "ud-3"] {
        let _ = bed.exec(1, &["virsh", "-q", "undefine", n]);
    }

    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(left, [false, true, true, false]);
}

#[test]
fn hostile_arguments_reach_the_hypervisor_as_data_never_as_shell() {
    let _serial = serial();
    let bed = require();
    let marker = "/tmp/lab-e2e-marker";
    let _ = bed.exec(0, &["rm", "-f", marker]);
    let hostile: Vec<String> = [
        "$(touch /tmp/lab-e2e-marker)",
        "`touch /tmp/lab-e2e-marker`",
        "; touch /tmp/lab-e2e-marker",
        "| touch /tmp/lab-e2e-marker",
        "&& touch /tmp/lab-e2e-marker",
        "'; touch /tmp/lab-e2e-marker; '",
        "\"; touch /tmp/lab-e2e-marker; \"",
        "a\ntouch /tmp/lab-e2e-marker",
        "--help",
        "-rf",
        "* ?",
        "~root",
        "${IFS}touch${IFS}/tmp/lab-e2e-marker",
        "\\",
        "",
        "ünïcødé",
    ]
    .map(String::from)
    .to_vec();
    let mut argv = vec!["printf".to_owned(), "<%s>\\n".to_owned()];
    argv.extend(hostile.iter().cloned());
    let (exec, rt) = live_on("hv0");
    let out = rt.block_on(async {
        let out = exec.run("hv0", &lab_exec::Cmd::change(argv)).await;
        exec.close().await;
        out
    });
    let expected: String = hostile.iter().map(|h| format!("<{h}>\n")).collect();
    assert_eq!(out.unwrap().stdout, expected);
    assert!(
        bed.exec(0, &["test", "-e", marker]).is_err(),
        "a hostile argument ran as a command"
    );
}

#[test]
fn a_run_that_loses_its_lock_makes_no_further_change_there() {
    let _serial = serial();
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-lost",
        57,
        "hypervisors:\n  hv2: {parallel: 1}\n\
         nodes:\n  lost-1: {hypervisor: hv2, id: 57}\n  lost-2: {hypervisor: hv2, id: 58}\n  \
         lost-3: {hypervisor: hv2, id: 59}\n",
    );
    let f = file.to_str().unwrap();
    let all = [("hv2", "lost-1"), ("hv2", "lost-2"), ("hv2", "lost-3")];
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);

    // hv2's plan clones its nodes one at a time (parallel: 1): the lock goes while the first
    // clone is made, and every step after it looks again first.
    let mut child = spawn_lab(dir.path(), &["-v", "create", "--lab", f]);
    progress_until(&mut child, |l| {
        l.contains("hv2/lost-") && l.ends_with(": clone")
    });
    // The holder of the lab's lock on hv2 dies (killed by someone, or its heartbeat lost).
    bed.exec(2, &["pkill", "-9", "-f", "lab-lock /run/lab/e2e-lost.lock"])
        .unwrap();
    let code = wait_bounded(&mut child, Duration::from_secs(60));
    assert_ne!(
        code, 0,
        "a run without its lock cannot have created every node"
    );
    let run = lab(dir.path(), &["--format", "json", "status", "--lab", f]);
    let nodes = run.json()["nodes"].as_array().unwrap().clone();
    let clones = nodes.iter().filter(|n| n["clone"] == true).count();
    let domains = nodes.iter().filter(|n| n["domain"] != "absent").count();
    assert!(
        clones <= 1 && domains == 0,
        "no clone was made and no domain defined after the lock was lost: {}",
        run.stdout
    );

    // The next run takes the lock again and converges.
    let run = lab(dir.path(), &["create", "--lab", f]);
    assert_eq!(run.code, 0, "converges: {}\n{}", run.stdout, run.stderr);
    assert_guests_boot(&bed, &all);
    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_nothing_left(&bed, &all);
}
