//! Benchmarks: run the real binary on synthetic input and print figures.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::{Result, cargo, say};

/// `lab generate` of a synthetic lab: `nodes` nodes over 10 hypervisors, a ring of links,
/// the example `bird` overlay. Prints wall time and the process's peak memory.
pub fn generate(root: &Path, nodes: u32) -> Result {
    cargo(&["build", "--release", "--quiet", "-p", "lab"])?;
    let dir = tempdir()?;
    let hypervisors = 10u32;
    let per_hv = nodes.div_ceil(hypervisors);
    let mut lab = format!(
        "lab: {{name: bench, id: 9, p2p_ipv4: 100.64.0.0/16, p2p_ipv6: \"2001:db8:ff09::/48\"}}\n\
         overlay: bird\noverlays:\n  bird: {{dir: {}}}\n\
         vars: {{domain: bench.example, dns: [192.0.2.53]}}\n\
         defaults:\n  hypervisor:\n    pool: tank\n    proto: tank/proto\n    snapshot: \"*-release\"\n    \
         vars: {{guest_kernel: /boot/vmlinux, guest_initrd: /boot/initrd, domain_type: kvm}}\n  \
         node:\n    vars: {{vpp_workers: 2, ospf_area: 0}}\nhypervisors:\n",
        root.join("overlays/bird").display()
    );
    for h in 0..hypervisors {
        let _ = writeln!(
            lab,
            "  hv{h}: {{id: {h}, mgmt_ipv4: 10.{h}.0.0/16, mgmt_ipv6: \"2001:db8:{h}::/64\"}}"
        );
    }
    lab.push_str("nodes:\n");
    let names: Vec<String> = (0..nodes)
        .map(|i| format!("n{}-{}", i / per_hv, i % per_hv + 1))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(
            lab,
            "  {name}: {{hypervisor: hv{}, id: {}}}",
            i as u32 / per_hv,
            i as u32 % per_hv + 1
        );
    }
    lab.push_str("links:\n");
    for i in 0..names.len() {
        let _ = writeln!(lab, "  - [{}, {}]", names[i], names[(i + 1) % names.len()]);
    }
    let file = dir.join("bench.yaml");
    std::fs::write(&file, lab).map_err(|e| e.to_string())?;

    let lab_bin = root.join("target/release/lab");
    // One warm-up, then three timed runs into fresh directories; the median is the figure.
    let mut runs = Vec::new();
    for run in 0..4 {
        // Earlier runs' dirty pages would otherwise be flushed on this run's clock.
        let _ = Command::new("sync").status();
        let start = Instant::now();
        let child = Command::new(&lab_bin)
            .args(["--quiet", "generate", "--lab"])
            .arg(&file)
            .arg("--build")
            .arg(dir.join(format!("build{run}")))
            .spawn()
            .map_err(|e| e.to_string())?;
        let (code, usage) = wait_with_usage(child.id())?;
        let wall = start.elapsed().as_secs_f64();
        if code != 0 {
            return Err(format!("lab generate failed (wait status {code})"));
        }
        if run > 0 {
            say(&format!(
                "  run {run}: {wall:.3} s wall, {:.3} s user, {:.3} s system, {:.1} MB peak",
                seconds(usage.ru_utime),
                seconds(usage.ru_stime),
                usage.ru_maxrss as f64 / 1024.0
            ));
            runs.push((wall, usage.ru_maxrss));
        }
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (wall, _) = runs[runs.len() / 2];
    let peak_kib = runs.iter().map(|r| r.1).max().unwrap_or(0);
    let files = walk_count(&dir.join("build1"));
    if std::env::var_os("LAB_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        say(&format!("kept {}", dir.display()));
    }
    say(&format!(
        "bench generate: {nodes} nodes over {hypervisors} hypervisors, {files} paths written"
    ));
    println!("wall time (median of 3): {wall:.3} s (target < 2 s)");
    println!(
        "peak memory (max of 3): {:.1} MB (target < 200 MB)",
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Waits for one child and returns its wait status and resource usage, from wait4: the
/// figures of that process alone, not of earlier children such as the cargo build.
fn wait_with_usage(pid: u32) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: wait4 writes only the status and the rusage struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if rc < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    Ok((status, usage))
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        1 + walk_count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

pub(crate) fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("lab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// `lab create` and `lab destroy` of the example lab on the test bed, beside a floor: the same
/// clone/copy/unmount/define/start steps run directly inside the hypervisors (no ssh), four
/// nodes at a time per hypervisor like `lab`.
pub fn create(root: &Path) -> Result {
    use lab_testbed::{Testbed, UpOptions};
    let bed = Testbed::default();
    bed.up(&UpOptions::default(), &mut |l| say(l))
        .map_err(|e| e.to_string())?;
    cargo(&["build", "--release", "--quiet", "-p", "lab"])?;
    let lab_bin = root.join("target/release/lab");
    // Under the test bed's directory, which the hypervisors see too (the floor reads the build
    // from inside them; a checkout under /tmp would be hidden by their private /tmp).
    let build = bed.dir.join("bench/build");
    let lab = |args: &[&str]| run_timed(&lab_bin, root, &build, args);
    let nodes: Vec<(u32, String)> = (0..3)
        .flat_map(|k| (1..=4).map(move |n| (k, format!("vpp{k}-{n}"))))
        .collect();
    // Whatever an earlier, failed run left: the floor's clones (marked as such) and the lab.
    remove_floor_leftovers(&bed, &nodes);
    lab(&["-q", "destroy", "--lab", "labs/vpp.yaml", "--yes"])?;
    lab(&["-q", "generate", "--lab", "labs/vpp.yaml"])?;
    let result = create_and_time(&bed, &nodes, &build, &lab);
    if result.is_err() {
        say("bench create failed: removing what it made");
        remove_floor_leftovers(&bed, &nodes);
        let _ = lab(&["-q", "destroy", "--lab", "labs/vpp.yaml", "--yes"]);
    }
    result
}

/// Runs `lab ARGS` from `root` with `build` as its build directory; its wall time. Any exit
/// but 0 is a failure here (3, partial, too: the bench wants every node).
pub(crate) fn run_timed(lab_bin: &Path, root: &Path, build: &Path, args: &[&str]) -> Result<f64> {
    let start = Instant::now();
    let status = Command::new(lab_bin)
        .args(args)
        .current_dir(root)
        .env("LAB_BUILD", build)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("lab {} failed ({status})", args.join(" ")));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Removes the floor's domains and clones on every hypervisor: only a clone that carries the
/// floor's mark (`lab-bench:floor=yes`), and the domain of the same name beside it.
pub(crate) fn remove_floor_leftovers(bed: &lab_testbed::Testbed, nodes: &[(u32, String)]) {
    // The floor's networks are transient; lab only ever defines persistent ones.
    for k in 0..bed.hypervisors {
        let info = bed
            .exec(k, &["virsh", "-q", "net-info", "lab-vpp"])
            .unwrap_or_default();
        if info
            .lines()
            .any(|l| l.starts_with("Persistent:") && l.ends_with("no"))
            && bed
                .exec(k, &["virsh", "-q", "net-destroy", "lab-vpp"])
                .is_ok()
        {
            say(&format!("hv{k}: removed the floor's network lab-vpp"));
        }
    }
    for (k, node) in nodes {
        let ds = format!("{}/{node}", bed.pool);
        let marked = bed
            .exec(
                *k,
                &["zfs", "get", "-H", "-o", "value", "lab-bench:floor", &ds],
            )
            .is_ok_and(|v| v.trim() == "yes");
        if !marked {
            continue;
        }
        let _ = bed.exec(*k, &["virsh", "-q", "destroy", node]);
        let _ = bed.exec(*k, &["virsh", "-q", "undefine", node]);
        let _ = bed.exec(*k, &["zfs", "umount", &ds]);
        // zfs-fuse says "busy" for a moment after an unmount.
        for _ in 0..20 {
            if bed.exec(*k, &["zfs", "destroy", &ds]).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = bed.exec(*k, &["rmdir", &format!("/var/lib/lab/staging/vpp/{node}")]);
        say(&format!("hv{k}: removed the floor's {ds}"));
    }
}

/// Waits until the guests' consoles report `expected` successful link pings in all, and
/// returns when; a failed ping, or none for three minutes, is an error.
fn wait_for_pings(
    bed: &lab_testbed::Testbed,
    nodes: &[(u32, String)],
    expected: usize,
) -> Result<Instant> {
    let deadline = Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (mut ok, mut failed) = (0, Vec::new());
        for (k, node) in nodes {
            let log = std::fs::read_to_string(bed.console_log(*k, node)).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("LAB-GUEST-PING:")) {
                if line.trim_end().ends_with(" ok") {
                    ok += 1;
                } else {
                    failed.push(format!("hv{k}/{node}: {}", line.trim()));
                }
            }
        }
        if !failed.is_empty() {
            return Err(format!(
                "links that did not pass traffic: {}",
                failed.join("; ")
            ));
        }
        if ok >= expected {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("only {ok} of {expected} link pings after 180 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The timed part of `bench create`: the floor, then `lab create` until every guest booted,
/// then `lab destroy`.
fn create_and_time(
    bed: &lab_testbed::Testbed,
    nodes: &[(u32, String)],
    build: &Path,
    lab: &dyn Fn(&[&str]) -> Result<f64>,
) -> Result {
    let (floor_create, floor_destroy) = floor(bed, nodes, build, true)?;
    timed_lab(bed, nodes, lab, floor_create, floor_destroy)
}

/// The floor: the same operations as `lab create` and `lab destroy`, directly on the
/// hypervisors (no ssh), all nodes at once; seconds for create and for destroy.
pub(crate) fn floor(
    bed: &lab_testbed::Testbed,
    nodes: &[(u32, String)],
    build: &Path,
    start: bool,
) -> Result<(f64, f64)> {
    use lab_testbed::PROTO;
    let pool = &bed.pool;

    // The floor: the same operations, directly on the hypervisors, in parallel.
    let floor_step = |script: &str| -> Result<f64> {
        let start = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..3u32)
                .map(|k| {
                    let mine: Vec<String> = nodes
                        .iter()
                        .filter(|(h, _)| *h == k)
                        .map(|(_, n)| n.clone())
                        .collect();
                    s.spawn(move || -> Result {
                        std::thread::scope(|inner| {
                            let jobs: Vec<_> = mine
                                .iter()
                                .map(|node| {
                                    inner.spawn(move || {
                                        let tree = build.join(format!("bird/hv{k}/{node}"));
                                        let xml = build
                                            .join(format!("bird/hv{k}/_meta/{node}.domain.xml"));
                                        bed.exec(
                                            k,
                                            &[
                                                "sh",
                                                "-c",
                                                script,
                                                "floor",
                                                pool,
                                                node,
                                                &tree.to_string_lossy(),
                                                &xml.to_string_lossy(),
                                                &format!("{pool}/{PROTO}@base"),
                                            ],
                                        )
                                        .map(|_| ())
                                        .map_err(|e| e.to_string())
                                    })
                                })
                                .collect();
                            jobs.into_iter()
                                .map(|j| j.join().expect("no panics"))
                                .collect::<Result<Vec<_>>>()
                                .map(|_| ())
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panics"))
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(start.elapsed().as_secs_f64())
    };
    // The management network of each hypervisor, transient (gone with net-destroy), from the
    // same definition lab uses; made before the nodes and removed after them, as lab does.
    let floor_networks = |up: bool| -> Result<f64> {
        let start = Instant::now();
        for k in 0..3u32 {
            let xml = build.join(format!("bird/_networks/hv{k}/lab-vpp.xml"));
            let args: Vec<String> = if up {
                vec![
                    "virsh".into(),
                    "-q".into(),
                    "net-create".into(),
                    xml.to_string_lossy().into_owned(),
                ]
            } else {
                vec![
                    "virsh".into(),
                    "-q".into(),
                    "net-destroy".into(),
                    "lab-vpp".into(),
                ]
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bed.exec(k, &args).map_err(|e| e.to_string())?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let floor_net_up = floor_networks(true)?;
    let floor_create = floor_net_up
        + floor_step(&format!(
            r#"set -e; st=/var/lib/lab/staging/vpp/$2
zfs clone -o mountpoint=$st -o setuid=off -o devices=off -o lab-bench:floor=yes "$5" "$1/$2"
umask 022; rsync -rltDH --executability --ignore-times --inplace --omit-dir-times "$3/" "$st/"
virsh -q define "$4" >/dev/null
{}"#,
            if start {
                r#"virsh -q start "$2" >/dev/null"#
            } else {
                ":"
            }
        ))?;
    let stop = if start {
        r#"virsh -q destroy "$2" >/dev/null"#
    } else {
        ":"
    };
    let floor_destroy = floor_step(&format!(
        r#"set -e; {stop}; virsh -q undefine "$2" >/dev/null
if [ "$(zfs get -H -o value mounted "$1/$2")" = yes ]; then zfs umount "$1/$2"; fi
# zfs-fuse calls a dataset busy for a moment after its domain ended (lab retries too)
n=0; until zfs destroy "$1/$2" 2>/dev/null; do n=$((n+1)); [ $n -lt 50 ] || {{ zfs destroy "$1/$2"; break; }}; sleep 0.1; done
rmdir /var/lib/lab/staging/vpp/$2"#
    ))? + floor_networks(false)?;
    Ok((floor_create, floor_destroy))
}

/// `lab create` until every guest booted and pinged, day two, then `lab destroy`, beside the
/// floor.
fn timed_lab(
    bed: &lab_testbed::Testbed,
    nodes: &[(u32, String)],
    lab: &dyn Fn(&[&str]) -> Result<f64>,
    floor_create: f64,
    floor_destroy: f64,
) -> Result {
    // lab itself, counting the ssh connections each hypervisor's sshd accepts.
    let accepted = |k: u32| {
        std::fs::read_to_string(bed.sshd_log(k))
            .map(|t| t.matches("Accepted publickey").count())
            .unwrap_or(0)
    };
    let before: Vec<usize> = (0..3).map(accepted).collect();
    for (k, node) in nodes {
        let _ = std::fs::remove_file(bed.console_log(*k, node));
    }
    let start = Instant::now();
    let create = lab(&["-q", "create", "--lab", "labs/vpp.yaml", "--no-generate"])?;
    let create_conns: Vec<usize> = (0..3).map(|k| accepted(k) - before[k as usize]).collect();
    for (k, node) in nodes {
        bed.wait_for_console(
            *k,
            node,
            "LAB-GUEST-HOSTNAME:",
            std::time::Duration::from_secs(180),
        )
        .map_err(|e| e.to_string())?;
    }
    let booted = start.elapsed().as_secs_f64();
    let pinged = wait_for_pings(bed, nodes, 30)?;
    let pinged = pinged.duration_since(start).as_secs_f64();
    // Day two on the running lab: ready (ssh answers), then exec and ssh, best of 3.
    let ready = lab(&["-q", "wait", "--lab", "labs/vpp.yaml"])?;
    let before_exec: Vec<usize> = (0..3).map(accepted).collect();
    let exec = best_of(3, || {
        lab(&["-q", "exec", "--lab", "labs/vpp.yaml", "--", "hostname"])
    })?;
    let exec_conns: Vec<usize> = (0..3)
        .map(|k| accepted(k) - before_exec[k as usize])
        .collect();
    let ssh = best_of(3, || {
        lab(&[
            "-q",
            "ssh",
            "--lab",
            "labs/vpp.yaml",
            "vpp1-2",
            "--",
            "true",
        ])
    })?;
    let mid: Vec<usize> = (0..3).map(accepted).collect();
    let destroy = lab(&["-q", "destroy", "--lab", "labs/vpp.yaml", "--yes"])?;
    let destroy_conns: Vec<usize> = (0..3).map(|k| accepted(k) - mid[k as usize]).collect();

    println!("bench create: example lab, 12 nodes over 3 hypervisors");
    println!(
        "lab create:  {create:.2} s wall (floor without ssh: {floor_create:.2} s, ratio {:.2}, target <= 1.5)",
        create / floor_create
    );
    println!("lab destroy: {destroy:.2} s wall (floor without ssh: {floor_destroy:.2} s)");
    println!("every guest printed its hostname {booted:.2} s after create started");
    println!(
        "every link pinged both ways (30 pings over 15 links) {pinged:.2} s after create started"
    );
    println!(
        "ssh connections accepted per hypervisor: create {create_conns:?}, destroy {destroy_conns:?} (target 1 each)"
    );
    println!("lab wait (ssh) right after the pings: {ready:.2} s");
    println!(
        "lab exec -- hostname on 12 nodes: {exec:.2} s wall, best of 3 (target < 1.5); ssh connections per hypervisor for the 3 runs {exec_conns:?} (1 per run)"
    );
    println!("lab ssh vpp1-2 -- true: {ssh:.2} s wall, best of 3 (target < 1)");
    Ok(())
}

/// The shortest of `n` timed runs.
fn best_of(n: usize, mut run: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..n {
        best = best.min(run()?);
    }
    Ok(best)
}
