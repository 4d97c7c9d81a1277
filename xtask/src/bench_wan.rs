//! `cargo xtask bench create --rtt`: the example lab's create, status and destroy from far
//! away, beside the floor, with the round trips per hypervisor (see `relay.rs` for the WAN).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::bench::{floor, remove_floor_leftovers, run_timed};
use crate::{Result, cargo, say};

/// What `bench generate` and `bench create --rtt` measure.
#[derive(clap::Args)]
pub struct Shape {
    /// Nodes in the synthetic lab (`generate`: 1000 by default; `create --rtt`: spread
    /// over the bed's three namespace hypervisors instead of the example lab's 12).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// `create` only: round-trip times (ms) to put between lab and the hypervisors, each
    /// measured in turn (e.g. `--rtt 0,50,200`).
    #[arg(long, value_delimiter = ',')]
    pub rtt: Vec<u64>,
    /// `create --rtt` only: clone, fill and define, start nothing (the control path alone).
    #[arg(long, requires = "rtt")]
    pub no_start: bool,
    /// `create --rtt` only: how many times the floor and each figure are measured; the
    /// median is printed (two busy cores make single runs vary by a second).
    #[arg(long, default_value_t = 3, requires = "rtt")]
    pub runs: u32,
    /// `create --rtt` only: this many clones of another lab (defined, not started) on the
    /// same hypervisors, made first and removed at the end: what a shared hypervisor
    /// holds besides, and what `status` reads (at most 750).
    #[arg(long, default_value_t = 0, requires = "rtt")]
    pub others: u32,
}

/// `bench create --rtt MS,...`: the example lab's create, status and destroy with a WAN between
/// `lab` and the hypervisors (a relay that holds every chunk for half the round trip each way,
/// as ssh's `ProxyCommand`), beside the floor: the same work done on the hypervisors directly,
/// plus what any remote tool pays at that distance (ssh's connection and one exchange per
/// hypervisor, all at once). Round trips per hypervisor are counted by the relay.
///
/// With `nodes`, a synthetic lab of that many nodes (no links) spread over the three namespace
/// hypervisors replaces the example lab; without `start`, nodes are cloned, filled and
/// defined but not started (`lab create --no-start`, and the floor likewise).
///
/// The floor and every figure of `lab` are measured `runs` times; the medians are printed
/// (round trips: of the last run). `status` has a floor of its own: one listing of the pool's
/// datasets with lab's properties and one of the domains, per hypervisor at once.
pub fn distance(root: &Path, shape: &Shape) -> Result {
    let (rtts, nodes, boot) = (&shape.rtt, shape.nodes, !shape.no_start);
    let (runs, others) = (shape.runs.max(1), shape.others);
    use lab_testbed::{Testbed, UpOptions};
    let bed = Testbed::default();
    bed.up(&UpOptions::default(), &mut |l| say(l))
        .map_err(|e| e.to_string())?;
    cargo(&["build", "--release", "--quiet", "-p", "lab"])?;
    let lab_bin = root.join("target/release/lab");
    let relay = std::env::current_exe().map_err(|e| e.to_string())?;
    let build = bed.dir.join("bench/build");
    let wan = bed.dir.join("bench/wan");
    std::fs::create_dir_all(&wan).map_err(|e| e.to_string())?;
    let wan_lab = wan.join("wan.yaml");
    let hvs = 0..3u32;
    let wan_text: String = hvs
        .clone()
        .map(|k| format!("  hv{k}: {{ssh: hv{k}-wan}}\n"))
        .collect();
    std::fs::write(&wan_lab, format!("hypervisors:\n{wan_text}")).map_err(|e| e.to_string())?;
    let wan_lab = wan_lab.to_string_lossy().into_owned();
    let ssh_config = bed.dir.join("ssh/wan.config");
    let count = |k: u32| wan.join(format!("hv{k}.trips"));
    let trips = |k: u32| std::fs::metadata(count(k)).map_or(0, |m| m.len());
    // The example lab (4 nodes per hypervisor), or `nodes` of the same lab's kind.
    let per_hv = |k: u32| match nodes {
        None => 4,
        Some(n) => n / 3 + u32::from(k < n % 3),
    };
    let nodes: Vec<(u32, String)> = hvs
        .clone()
        .flat_map(|k| (1..=per_hv(k)).map(move |n| (k, format!("vpp{k}-{n}"))))
        .collect();
    if nodes.iter().any(|(k, _)| per_hv(*k) > 250) || others > 750 {
        return Err(
            "--nodes, --others: at most 750 (250 per hypervisor: a lab's MAC and address plan)"
                .into(),
        );
    }
    let lab_file = match nodes.len() {
        12 if per_hv(0) == 4 && per_hv(2) == 4 && boot => "labs/vpp.yaml".to_owned(),
        _ => {
            let file = wan.join("nodes.yaml");
            let text = synthetic_lab(root, "vpp", 2, &nodes, "");
            std::fs::write(&file, text).map_err(|e| e.to_string())?;
            file.to_string_lossy().into_owned()
        }
    };
    let lab = |args: &[&str]| -> Result<f64> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--lab", &lab_file, "--lab", &wan_lab]);
        run_timed(&lab_bin, root, &build, &full)
    };
    let set_rtt = |ms: u64| -> Result {
        let text: String = hvs
            .clone()
            .map(|k| {
                format!(
                    "Host hv{k}-wan\n  HostName {addr}\n  HostKeyAlias hv{k}\n  \
                     ProxyCommand {relay} relay --rtt-ms {ms} --count {count} {addr} 22\n",
                    addr = bed.address(k),
                    relay = relay.display(),
                    count = count(k).display(),
                )
            })
            .collect();
        std::fs::write(&ssh_config, text).map_err(|e| e.to_string())
    };
    set_rtt(0)?;
    remove_floor_leftovers(&bed, &nodes);
    lab(&["-q", "destroy", "--yes"])?;
    lab(&["-q", "generate"])?;
    // The other lab's clones, on the hypervisors directly (its own build and management
    // prefixes): made once, removed at the end whatever happened.
    let others_file = wan.join("others.yaml");
    let others_lab = |args: &[&str]| -> Result<f64> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--lab", others_file.to_str().unwrap_or_default()]);
        run_timed(&lab_bin, root, &bed.dir.join("bench/build-others"), &full)
    };
    if others > 0 {
        let names: Vec<(u32, String)> = (0..others)
            .map(|i| (i % 3, format!("other{}-{}", i % 3, i / 3 + 1)))
            .collect();
        let mgmt: String = hvs
            .clone()
            .map(|k| format!("  hv{k}: {{mgmt_ipv4: 192.168.{}.0/24}}\n", 40 + k))
            .collect();
        let text = synthetic_lab(root, "others", 3, &names, &format!("hypervisors:\n{mgmt}"));
        std::fs::write(&others_file, text).map_err(|e| e.to_string())?;
        others_lab(&["-q", "destroy", "--yes"])?;
        others_lab(&["-q", "create", "--no-start"])?;
    }
    let result = (|| -> Result<(f64, f64, Vec<String>)> {
        let mut floors = Vec::new();
        for _ in 0..runs {
            floors.push(floor(&bed, &nodes, &build, boot)?);
        }
        let floor_create = median(floors.iter().map(|f| f.0).collect());
        let floor_destroy = median(floors.iter().map(|f| f.1).collect());
        let mut rows = Vec::new();
        for &ms in rtts.iter() {
            set_rtt(ms)?;
            // What any remote tool pays at this distance: a connection and one exchange per
            // hypervisor, all at once.
            let reach = on_all_at_once("true")?;
            // Status's floor: the pool's datasets with lab's properties and the domains.
            let read = format!(
                "zfs get -r -H -p -o name,property,value lab:lab,lab:node,origin {} >/dev/null \
                 && virsh -q list --all >/dev/null",
                bed.pool
            );
            let per_hv = |before: &[u64]| -> Vec<u64> {
                hvs.clone().map(|k| trips(k) - before[k as usize]).collect()
            };
            let (mut creates, mut statuses, mut destroys) = (Vec::new(), Vec::new(), Vec::new());
            let mut status_floors = Vec::new();
            let mut counted = ([0; 3].to_vec(), [0; 3].to_vec(), [0; 3].to_vec());
            for _ in 0..runs {
                let before: Vec<u64> = hvs.clone().map(trips).collect();
                creates.push(if boot {
                    lab(&["-q", "create", "--no-generate"])?
                } else {
                    lab(&["-q", "create", "--no-generate", "--no-start"])?
                });
                counted.0 = per_hv(&before);
                status_floors.push(on_all_at_once(&read)?);
                let before: Vec<u64> = hvs.clone().map(trips).collect();
                statuses.push(lab(&["-q", "status"])?);
                counted.1 = per_hv(&before);
                let before: Vec<u64> = hvs.clone().map(trips).collect();
                destroys.push(lab(&["-q", "destroy", "--yes"])?);
                counted.2 = per_hv(&before);
            }
            let (create, status, destroy) = (median(creates), median(statuses), median(destroys));
            let status_floor = median(status_floors);
            let (create_trips, status_trips, destroy_trips) = counted;
            rows.push(format!(
                "{ms:>5} ms | create {create:6.2} s vs floor {:6.2} s (+{:5.2}, {:.2}x) | destroy {destroy:6.2} s vs floor {:6.2} s (+{:5.2}) | status {status:5.2} s vs floor {status_floor:5.2} s | round trips per hypervisor: create {create_trips:?}, status {status_trips:?}, destroy {destroy_trips:?}",
                floor_create + reach,
                create - floor_create - reach,
                create / (floor_create + reach),
                floor_destroy + reach,
                destroy - floor_destroy - reach,
            ));
        }
        Ok((floor_create, floor_destroy, rows))
    })();
    let _ = std::fs::remove_file(&ssh_config);
    if others > 0 {
        others_lab(&["-q", "destroy", "--yes"])?;
    }
    let (floor_create, floor_destroy, rows) = match result {
        Ok(rows) => rows,
        Err(e) => {
            say("bench create --rtt failed: removing what it made");
            remove_floor_leftovers(&bed, &nodes);
            return Err(e);
        }
    };
    let mut what = match (nodes.len(), boot) {
        (12, true) if lab_file == "labs/vpp.yaml" => "example lab, 12 nodes".to_owned(),
        (n, true) => format!("{n} nodes"),
        (n, false) => format!("{n} nodes, not started (--no-start)"),
    };
    if others > 0 {
        what.push_str(&format!(
            " beside {others} clones of another lab ({} clones in all)",
            nodes.len() + others as usize
        ));
    }
    println!(
        "bench create --rtt: {what} over 3 hypervisors, medians of {runs} runs; floor = the work on the \
         hypervisors directly ({floor_create:.2} s create, {floor_destroy:.2} s destroy) + one \
         connection and exchange per hypervisor at that distance"
    );
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// A lab like the example lab (its overlay and variables) named `name` with `nodes`, no
/// links, and `extra` lines at the end.
fn synthetic_lab(root: &Path, name: &str, id: u8, nodes: &[(u32, String)], extra: &str) -> String {
    let mut text = format!(
        "include: {}\n\
         lab: {{name: {name}, id: {id}, p2p_ipv4: 100.64.{id}.0/24, p2p_ipv6: \"2001:db8:ff0{id}::/48\"}}\n\
         overlay: bird\n\
         vars: {{domain: lab.example, dns: [192.168.20.254]}}\n\
         defaults: {{node: {{vars: {{vpp_workers: 1, ospf_area: 0}}}}}}\n\
         nodes:\n",
        root.join("labs/testbed.yaml").display()
    );
    for (k, name) in nodes {
        let id = name.rsplit('-').next().unwrap_or("1");
        text.push_str(&format!("  {name}: {{hypervisor: hv{k}, id: {id}}}\n"));
    }
    text.push_str(extra);
    text
}

/// How long `command` takes over ssh on the three namespace hypervisors at once, through
/// the bench's WAN.
fn on_all_at_once(command: &str) -> Result<f64> {
    let start = Instant::now();
    all_at_once(|k| {
        Command::new("ssh")
            .args([&format!("hv{k}-wan"), command])
            .status()
            .map_err(|e| e.to_string())
            .map(|_| ())
    })?;
    Ok(start.elapsed().as_secs_f64())
}

/// Runs `job` for each of the three namespace hypervisors at once.
fn all_at_once(job: impl Fn(u32) -> Result + Sync) -> Result {
    std::thread::scope(|s| {
        let job = &job;
        let jobs: Vec<_> = (0..3u32).map(|k| s.spawn(move || job(k))).collect();
        jobs.into_iter()
            .map(|j| j.join().expect("no panics"))
            .collect::<Result<Vec<_>>>()
            .map(|_| ())
    })
}

/// The middle of `figures` (of the two middle ones, the mean).
fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    let n = figures.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => figures[n / 2],
        _ => (figures[n / 2 - 1] + figures[n / 2]) / 2.0,
    }
}
