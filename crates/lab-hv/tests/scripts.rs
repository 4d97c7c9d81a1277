//! The shell `lab` sends to hypervisors, run here as a hypervisor runs it (`sh`, `flock`,
//! `/proc/net/udp`), on scratch directories: the checks that stand between a change and what
//! it must not touch (review 3: N5, N10, N19).
//! Long: each test stands up its own scratch hypervisor directory and runs the real scripts
//! there; split by subject they would share that setup through a module of their own.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lab_model::Lab;

/// A lab with one link between two nodes on one hypervisor whose staging and lock directories
/// are under `root`.
fn lab(root: &Path) -> Lab {
    let text = format!(
        "lab: {{name: t, id: 7, wire_port_base: 19000, p2p_ipv4: 100.64.7.0/24}}\n\
         hypervisors:\n  hv0: {{id: 0, pool: tank, proto: tank/proto, snapshot: base, \
         staging: {root}/staging, lock_dir: {root}/lock}}\n\
         nodes:\n  r1: {{hypervisor: hv0, id: 1}}\n  r2: {{hypervisor: hv0, id: 2}}\n\
         links:\n  - [r1, r2]\n",
        root = root.display()
    );
    let file = PathBuf::from("t.yaml");
    Lab::from_tree(lab_model::tree::parse(&text, &file).unwrap(), vec![file]).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lab-scripts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(argv: &[String]) -> (Option<i32>, String) {
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// N10: the last look before a wired start finds a port of the node's wires that someone
/// bound, and the domain is not started (`virsh` is never reached).
#[test]
fn a_bound_wire_port_stops_a_wired_start() {
    let root = scratch("start");
    std::fs::create_dir_all(root.join("lock")).unwrap();
    let lab = lab(&root);
    let (hv, r1) = (&lab.hypervisors[0], &lab.nodes[0]);
    let port = r1.links().next().unwrap().wire.unwrap().local_port;
    let _taken = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let cmd = lab_hv::cmd::start(hv, r1);
    let (code, stderr) = run(&cmd.argv);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(code, Some(lab_hv::cmd::WIRE_PORT_TAKEN), "{stderr}");
    assert!(
        stderr.starts_with(&format!("UDP port(s) {port} of its wires are bound")),
        "{stderr}"
    );
}

/// N5: `modes` on a clone whose directory `a` is a symlink out of it is refused, and what the
/// link points to keeps its mode.
#[test]
fn modes_refuse_a_symlinked_directory_along_the_path() {
    let root = scratch("modes");
    let lab = lab(&root);
    let r1 = &lab.nodes[0];
    let clone = PathBuf::from(lab_hv::cmd::staging_dir(r1));
    let outside = root.join("outside");
    std::fs::create_dir_all(&clone).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("shadow");
    std::fs::write(&victim, "secret").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&outside, clone.join("a")).unwrap();
    let cmd = lab_hv::cmd::set_modes(r1, [["a/shadow", "0666", "-", "-"]]);
    let (code, stderr) = run(&cmd.argv);
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/a is a symlink in the clone"), "{stderr}");
    assert_eq!(mode, 0o600);
}

/// `modes` names owners and groups as the image's own /etc/passwd and /etc/group say (a name
/// found once serves the paths after it), takes numbers as they are, leaves `-` alone, and
/// refuses a name the image does not have.
#[test]
fn modes_take_owners_and_groups_from_the_images_files() {
    use std::os::unix::fs::MetadataExt;
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    if uid != b"0\n" {
        eprintln!("skipped: chown needs root");
        return;
    }
    let root = scratch("owners");
    let lab = lab(&root);
    let r1 = &lab.nodes[0];
    let clone = PathBuf::from(lab_hv::cmd::staging_dir(r1));
    std::fs::create_dir_all(clone.join("etc/bird")).unwrap();
    std::fs::write(
        clone.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nbird:x:101:102::/run/bird:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        clone.join("etc/group"),
        "root:x:0:\nbird:x:102:\nfrr:x:103:\n",
    )
    .unwrap();
    for f in ["etc/bird/bird.conf", "a", "b"] {
        std::fs::write(clone.join(f), "x").unwrap();
    }
    let cmd = lab_hv::cmd::set_modes(
        r1,
        [
            ["etc/bird", "0750", "bird", "bird"],
            ["etc/bird/bird.conf", "0640", "bird", "bird"],
            ["a", "-", "7", "frr"],
            ["b", "0600", "-", "-"],
        ],
    );
    let (code, stderr) = run(&cmd.argv);
    let got = |f: &str| {
        let m = std::fs::metadata(clone.join(f)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    let table = [
        got("etc/bird"),
        got("etc/bird/bird.conf"),
        got("a"),
        got("b"),
    ];
    let missing = lab_hv::cmd::set_modes(r1, [["a", "-", "named", "-"]]);
    let (missing_code, missing_err) = run(&missing.argv);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        table,
        [
            (101, 102, 0o750),
            (101, 102, 0o640),
            (7, 103, 0o644),
            (0, 0, 0o600)
        ]
    );
    assert_eq!(missing_code, Some(1));
    assert!(
        missing_err.contains("modes: /a: user named is not in the image's /etc/passwd"),
        "{missing_err}"
    );
}

/// N19: a change that reaches the hypervisor after another run took the lab's lock (its name
/// in the lock file) does not run, and says so with `LOCK_GONE`; while the file names this
/// run, it runs.
#[test]
fn a_guarded_change_runs_only_while_the_lock_names_its_run() {
    let root = scratch("guard");
    std::fs::create_dir_all(root.join("lock")).unwrap();
    let lab = lab(&root);
    let hv = &lab.hypervisors[0];
    let me = lab_hv::Holder {
        owner: "ops@ctl".into(),
        pid: 42,
        verb: "create".into(),
        since: 1_700_000_000,
    };
    let marker = root.join("ran");
    let attempt = |holder: &str| {
        std::fs::write(root.join("lock/t.lock"), format!("{holder}\n")).unwrap();
        let mut argv = lab_hv::lock::guard(hv, "t", &me, None);
        argv.extend(["touch".to_owned(), marker.display().to_string()]);
        (run(&argv).0, marker.exists())
    };
    let theirs = attempt("lee@other 7 destroy 1700000100");
    let ours = attempt("ops@ctl 42 create 1700000000");
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(theirs, (Some(lab_exec::LOCK_GONE), false));
    assert_eq!(ours, (Some(0), true));
}

/// Issue 24: a hypervisor's plan runs its own steps first, unpacks the trees it carries,
/// runs each node's steps in order, ends a node at its failed step (status and error said),
/// and lets the other nodes finish; a failed step of the hypervisor's runs no node's.
#[test]
fn a_plan_runs_each_nodes_steps_and_a_failure_ends_that_node_only() {
    let root = scratch("plan");
    let lab = lab(&root);
    let (hv, r1, r2) = (&lab.hypervisors[0], &lab.nodes[0], &lab.nodes[1]);
    let marker = root.join("r2-ran");
    let plans = [
        lab_hv::plan::NodePlan::new(
            r1,
            vec![
                ("first", lab_exec::Cmd::change(["true"])),
                (
                    "second step",
                    lab_exec::Cmd::change(["sh", "-c", "echo 'it broke' >&2; exit 3"]),
                ),
                ("never", lab_exec::Cmd::change(["false"])),
            ],
        ),
        lab_hv::plan::NodePlan::new(
            r2,
            vec![
                (
                    "touch",
                    lab_exec::Cmd::change(["touch", &marker.display().to_string()]),
                ),
                // A command line with newlines in it, and what it prints.
                (
                    "say",
                    lab_exec::Cmd::change(["sh", "-c", "echo 'it is'\necho \"$1\"", "x", "a 'b'"]),
                ),
                // A step fed data (a definition), which reads it and nothing of the plan.
                (
                    "fed",
                    lab_exec::Cmd::change(["sed", "s/^/got /"]).stdin("<domain a='1'/>\n$x\n"),
                ),
                // The last wave: after every node's first, holding the hypervisor's wires.lock.
                (
                    "held",
                    lab_exec::Cmd::change([
                        "sh",
                        "-c",
                        "flock -n \"$1\" true && echo free || echo held",
                        "x",
                        &lab_hv::cmd::wires_lock(hv),
                    ]),
                ),
            ],
        ),
    ];
    let mut plans = plans;
    plans[1].last_wave = 3;
    // r2's tree, sent with the plan and unpacked before any step, where r2's step reads it.
    // Where the plan unpacks them: `<lock_dir>/<lab>.plan/trees`.
    let trees = root.join("lock/t.plan/trees");
    std::fs::create_dir_all(root.join("src/r2")).unwrap();
    std::fs::write(root.join("src/r2/motd"), "hello from the tree\n").unwrap();
    let archive = Command::new("tar")
        .args(["-c", "-C", &root.join("src").display().to_string(), "r2"])
        .output()
        .unwrap()
        .stdout;
    plans[1].steps.insert(
        0,
        (
            "read tree",
            lab_exec::Cmd::change(["cat", &trees.join("r2/motd").display().to_string()]),
        ),
    );
    plans[1].last_wave += 1;
    let extras = lab_hv::plan::Extras {
        first: vec![(
            "network",
            lab_exec::Cmd::change(["echo", "network defined"]),
        )],
        // Not run: r1 fails.
        last: vec![("after", lab_exec::Cmd::change(["echo", "after"]))],
        trees: Some(lab_hv::plan::Trees { archive }),
        start_interval: 0,
    };
    std::fs::create_dir_all(root.join("lock")).unwrap();
    let lines = run_plan(hv, &plans, &extras);
    let ran = marker.exists();
    // The trees went with the plan.
    assert!(!root.join("lock/t.plan").exists());
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        lines,
        [
            "DONE -hypervisor",
            "DONE r2",
            "ERR r1 it broke",
            "FAIL r1 3 1 second step",
            "OUT -hypervisor network defined",
            "OUT r2 a 'b'",
            "OUT r2 got $x",
            "OUT r2 got <domain a='1'/>",
            "OUT r2 held",
            "OUT r2 hello from the tree",
            "OUT r2 it is",
            "STEP -hypervisor 0 network",
            "STEP r1 0 first",
            "STEP r1 1 second step",
            "STEP r2 0 read tree",
            "STEP r2 1 touch",
            "STEP r2 2 say",
            "STEP r2 3 fed",
            "STEP r2 4 held",
        ]
    );
    assert!(ran);

    // When the hypervisor's own step fails, no node's step runs.
    let failing = lab_hv::plan::Extras {
        first: vec![("network", lab_exec::Cmd::change(["false"]))],
        last: Vec::new(),
        trees: None,
        start_interval: 0,
    };
    std::fs::create_dir_all(root.join("lock")).unwrap();
    let lines = run_plan(hv, &plans, &failing);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        lines,
        ["FAIL -hypervisor 1 0 network", "STEP -hypervisor 0 network"]
    );

    // The hypervisor's last steps run when every node's passed (r1's failed above).
    let after = lab_hv::plan::Extras {
        last: vec![("after", lab_exec::Cmd::change(["echo", "after the nodes"]))],
        ..Default::default()
    };
    let passing = [lab_hv::plan::NodePlan::new(
        r1,
        vec![("first", lab_exec::Cmd::change(["true"]))],
    )];
    std::fs::create_dir_all(root.join("lock")).unwrap();
    let lines = run_plan(hv, &passing, &after);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        lines,
        [
            "DONE -hypervisor-last",
            "DONE r1",
            "OUT -hypervisor-last after the nodes",
            "STEP -hypervisor-last 0 after",
            "STEP r1 0 first",
        ]
    );
}

/// Runs a plan's command here, as the hypervisor would; its lines, sorted.
fn run_plan(
    hv: &lab_model::Hypervisor,
    plans: &[lab_hv::plan::NodePlan<'_>],
    extras: &lab_hv::plan::Extras,
) -> Vec<String> {
    let cmd = lab_hv::plan::plan_cmd(hv, "t", plans, extras);
    let mut child = Command::new(&cmd.argv[0])
        .args(&cmd.argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(cmd.stdin.as_ref().unwrap()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// A plan whose controller went away (its output closed) ends, however many nodes wait for a
/// slot: a node dies at its next line (SIGPIPE) before its next step, and gives its slot
/// back. (It once waited forever for slots that dead nodes held, holding the lab's busy lock.)
#[test]
fn a_plan_ends_when_its_output_closes() {
    let root = scratch("orphan");
    let lab = lab(&root);
    let hv = &lab.hypervisors[0];
    let marker = root.join("late");
    let plans: Vec<_> = (0..12)
        .map(|i| {
            lab_hv::plan::NodePlan::new(
                &lab.nodes[i % 2],
                vec![
                    ("wait", lab_exec::Cmd::change(["sleep", "0.3"])),
                    (
                        "late",
                        lab_exec::Cmd::change(["touch", &marker.display().to_string()]),
                    ),
                ],
            )
        })
        .collect();
    std::fs::create_dir_all(root.join("lock")).unwrap();
    let cmd = lab_hv::plan::plan_cmd(hv, "t", &plans, &lab_hv::plan::Extras::default());
    let mut child = Command::new(&cmd.argv[0])
        .args(&cmd.argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(cmd.stdin.as_ref().unwrap()).unwrap();
    }
    // The first line, then the controller is gone.
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("STEP "), "{line}");
    }
    let mut ended = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            ended = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let late = marker.exists();
    if ended.is_none() {
        let _ = child.kill();
    }
    std::fs::remove_dir_all(&root).unwrap();
    assert!(
        ended.is_some(),
        "the plan still runs 10 s after its output closed"
    );
    assert!(!late, "a step ran after the output closed");
}

/// Staged starts: the last wave's batches run one after the other, `start_interval` seconds
/// apart, the nodes of one batch at once.
#[test]
fn a_plans_last_wave_starts_batch_after_batch() {
    let root = scratch("batches");
    std::fs::create_dir_all(root.join("lock")).unwrap();
    let lab = lab(&root);
    let (hv, r1, r2) = (&lab.hypervisors[0], &lab.nodes[0], &lab.nodes[1]);
    // Each node's last step says when it ran (milliseconds).
    let when = || ("start", lab_exec::Cmd::change(["date", "+%s%3N"]));
    let mut plans = [
        lab_hv::plan::NodePlan::new(r1, vec![("first", lab_exec::Cmd::change(["true"])), when()]),
        lab_hv::plan::NodePlan::new(r2, vec![("first", lab_exec::Cmd::change(["true"])), when()]),
    ];
    for plan in &mut plans {
        plan.last_wave = 1;
    }
    plans[1].batch = 1;
    let extras = lab_hv::plan::Extras {
        start_interval: 2,
        ..Default::default()
    };
    let lines = run_plan(hv, &plans, &extras);
    std::fs::remove_dir_all(&root).unwrap();
    let at = |node: &str| -> u64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("OUT {node} ")))
            .unwrap_or_else(|| panic!("{node} did not start: {lines:?}"))
            .trim()
            .parse()
            .unwrap()
    };
    let gap = at("r2") - at("r1");
    assert!((2000..10_000).contains(&gap), "{gap} ms: {lines:?}");
    assert!(lines.contains(&"DONE r1".to_owned()) && lines.contains(&"DONE r2".to_owned()));
}

/// Issue 24: a plan's steps check the lock through the pid the lock's shell says it has (no
/// `flock` per step): while that shell holds the lock the steps run; once it is gone, even
/// with the lock file still naming this run, no step runs (status 77).
#[test]
fn a_plans_steps_run_only_while_the_locks_shell_holds_it() {
    use std::io::{BufRead, BufReader};
    let root = scratch("lockpid");
    let lab = lab(&root);
    let (hv, r1) = (&lab.hypervisors[0], &lab.nodes[0]);
    let me = lab_hv::lock::Holder {
        owner: "ops@ctl".into(),
        pid: 42,
        verb: "create".into(),
        since: 1_700_000_000,
    };
    let cmd = lab_hv::lock::lock_cmd(hv, "t", &me, 0, None);
    let mut holder = Command::new(&cmd.argv[0])
        .args(&cmd.argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    let pid: u32 = said
        .trim()
        .strip_prefix("locked ")
        .unwrap()
        .parse()
        .unwrap();
    let marker = root.join("ran");
    let plan_under_guard = || {
        let plans = [lab_hv::plan::NodePlan::new(
            r1,
            vec![(
                "touch",
                lab_exec::Cmd::change(["touch", &marker.display().to_string()]),
            )],
        )];
        let plan = lab_hv::plan::plan_cmd(hv, "t", &plans, &Default::default());
        let mut argv = lab_hv::lock::guard(hv, "t", &me, Some(pid));
        argv.extend(plan.argv);
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(plan.stdin.as_ref().unwrap()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let held = plan_under_guard();
    let ran_held = marker.exists();
    let _ = std::fs::remove_file(&marker);
    // The holder goes (its stdin closes, as when the controller dies); its lock goes with it,
    // and its name stays in the lock file.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let gone = plan_under_guard();
    let ran_gone = marker.exists();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(ran_held && held.contains("DONE r1"), "{held}");
    assert!(!ran_gone, "{gone}");
    assert!(gone.contains("FAIL r1 77 0 touch"), "{gone}");
}
