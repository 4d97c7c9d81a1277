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

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("lab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}
