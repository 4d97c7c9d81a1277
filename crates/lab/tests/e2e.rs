//! End to end on the local test bed: real ssh, zfs, rsync, libvirt and guests.
//!
//! Needs `cargo xtask testbed up` (or `cargo xtask ci`); fails with that advice otherwise.
//! Each test uses its own lab and node names, so they can run in parallel.
//!
//! Long: one binary for the lifecycle tests that may run side by side (each test binary is a
//! link of the whole stack, and the faults and the proto tests have binaries of their own).

mod common;

use std::time::Duration;

use common::*;
use lab_testbed::{PROTO, require};

#[test]
fn example_lab_lifecycle() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let file = "labs/vpp.yaml";
    let before = proto_fingerprint(&bed);
    lab(b, &["destroy", "--lab", file, "--yes", "-q"]);
    let model = lab_model::load(&[repo().join(file)]).unwrap();
    // An operator's network and domain on hv0, beside the lab: lab must never touch them.
    let operator = OperatorObjects::make(&bed);

    // create: the management networks first, then every node; every guest shows its own
    // hostname from the overlay
    for k in 0..3 {
        let _ = std::fs::remove_file(bed.console_log(k, "x"));
    }
    // --wait=ssh: create returns once every guest's ssh server answers, so exec works at once
    let run = lab(
        b,
        &["--format", "json", "create", "--lab", file, "--wait=ssh"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["summary"]["done"], 12);
    let ready = run.json()["ready"].as_array().unwrap().clone();
    assert_eq!(ready.len(), 12, "{ready:?}");
    assert!(ready.iter().all(|r| r["ready"] == true), "{ready:?}");
    let names = lab(
        b,
        &["--format", "json", "exec", "--lab", file, "--", "hostname"],
    );
    assert_eq!(names.code, 0, "{}", names.stderr);
    let names: Vec<(String, String)> = names.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_owned(),
                n["stdout"].as_str().unwrap().trim().to_owned(),
            )
        })
        .collect();
    assert_eq!(names.len(), 12);
    assert!(names.iter().all(|(node, name)| node == name), "{names:?}");
    // --host: only that hypervisor's nodes
    let on_hv1 = lab(
        b,
        &[
            "--format", "json", "exec", "--lab", file, "--host", "hv1", "--", "hostname",
        ],
    );
    assert_eq!(on_hv1.code, 0, "{}", on_hv1.stderr);
    let mut hv1: Vec<String> = on_hv1.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["stdout"].as_str().unwrap().trim().to_owned())
        .collect();
    hv1.sort();
    assert_eq!(hv1, ["vpp1-1", "vpp1-2", "vpp1-3", "vpp1-4"]);
    // readiness by console line, checked on the hypervisors
    let waited = lab(
        b,
        &[
            "wait",
            "--lab",
            file,
            "--for",
            "console:LAB-GUEST-HOSTNAME: vpp",
            "--wait-timeout",
            "60",
        ],
    );
    assert_eq!(waited.code, 0, "{}{}", waited.stdout, waited.stderr);
    assert_eq!(
        waited.stdout.matches(" ready ").count(),
        12,
        "{}",
        waited.stdout
    );
    let networks = run.json()["networks"].as_array().unwrap().clone();
    assert_eq!(networks.len(), 3, "{networks:?}");
    for n in &networks {
        assert_eq!(n["result"], "done", "{n}");
        assert_eq!(n["network"], "lab-vpp", "{n}");
    }
    let nodes: Vec<(String, String)> = by_node(&run.json())
        .values()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_owned(),
                n["hypervisor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = nodes
        .iter()
        .map(|(n, h)| (h.as_str(), n.as_str()))
        .collect();
    assert_guests_boot(&bed, &pairs);

    // networks for real: every guest got its planned address by DHCP, and every link passes
    // traffic both ways (each end pings the other), on one hypervisor and across them
    let mut pings = 0;
    for node in &model.nodes {
        let k = k_of(&node.hypervisor);
        let mgmt = node.mgmt_ipv4.unwrap().addr();
        let line = bed
            .wait_for_console(k, &node.name, "LAB-GUEST-MGMT:", Duration::from_secs(300))
            .unwrap();
        assert_eq!(line, format!("LAB-GUEST-MGMT: {mgmt}"), "{}", node.name);
        for link in node.links() {
            let peer = link.peer_ipv4.unwrap();
            let line = bed
                .wait_for_console(
                    k,
                    &node.name,
                    &format!("LAB-GUEST-PING: {peer} "),
                    Duration::from_secs(300),
                )
                .unwrap();
            assert_eq!(
                line,
                format!("LAB-GUEST-PING: {peer} ok"),
                "{} {} to {:?}",
                node.name,
                link.name,
                link.peer
            );
            pings += 1;
        }
    }
    assert_eq!(pings, 30, "15 links, both ends");
    let nics_before: Vec<String> = nodes.iter().map(|(n, h)| nics(&bed, h, n)).collect();

    // status: all there, ours, no drift, no orphans. "ready" is an ssh banner read within 2 s
    // at the moment of the probe: an emulated guest on a loaded machine can miss one, so status
    // is asked again (for a while) until every node is ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        let run = lab(b, &["--format", "json", "status", "--lab", file]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let status = run.json();
        let all_ready = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["phase"] == "ready");
        if all_ready || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["domain"], "running", "{n}");
        assert_eq!(n["phase"], "ready", "{n}");
        assert_eq!(n["clone"], true, "{n}");
        assert_eq!(n["origin"], format!("{}/{PROTO}@base", bed.pool), "{n}");
        assert_eq!(n["overlay_drift"], false, "{n}");
        assert!(n["owner"].as_str().unwrap().contains('@'), "{n}");
        assert!(n.get("foreign").is_none(), "{n}");
        assert!(n.get("nic_drift").is_none(), "{n}");
    }
    assert_eq!(status["orphans"].as_array().unwrap().len(), 0);
    for n in status["networks"].as_array().unwrap() {
        assert_eq!(
            (&n["state"], &n["ours"]),
            (&"active".into(), &true.into()),
            "{n}"
        );
        assert_eq!(n["definition_drift"], false, "{n}");
    }

    day_two(&bed, b, file, &model);
    a_second_lab_cannot_take_the_wires_or_the_prefix(&bed, b, file, &model);

    // create again: every node unchanged (running), exit 0, nothing recreated
    let guid = |hv: &str, node: &str| {
        bed.exec(
            k_of(hv),
            &[
                "zfs",
                "get",
                "-H",
                "-o",
                "value",
                "guid",
                &format!("{}/{node}", bed.pool),
            ],
        )
        .unwrap()
    };
    let guids: Vec<String> = nodes.iter().map(|(n, h)| guid(h, n)).collect();
    let run = lab(b, &["--format", "json", "create", "--lab", file]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["summary"]["unchanged"], 12);
    for n in run.json()["networks"].as_array().unwrap() {
        assert_eq!(n["result"], "unchanged", "{n}");
    }
    assert_eq!(
        guids,
        nodes.iter().map(|(n, h)| guid(h, n)).collect::<Vec<_>>(),
        "nothing was recreated"
    );
    assert_eq!(
        nics_before,
        nodes
            .iter()
            .map(|(n, h)| nics(&bed, h, n))
            .collect::<Vec<_>>(),
        "same NICs, same MACs"
    );

    // A NIC added by hand (the classic `attach-interface` twice, same MAC) is drift in status
    bed.exec(0, &["virsh", "-q", "destroy", "vpp0-3"]).unwrap();
    bed.exec(
        0,
        &[
            "virsh",
            "-q",
            "attach-interface",
            "vpp0-3",
            "network",
            "lab-vpp",
            "--mac",
            "52:54:00:02:00:03",
            "--model",
            "virtio",
            "--config",
        ],
    )
    .unwrap();
    let run = lab(
        b,
        &[
            "--format", "json", "status", "--lab", file, "--node", "vpp0-3",
        ],
    );
    let drift = run.json()["nodes"][0]["nic_drift"].clone();
    assert!(
        drift
            .as_str()
            .is_some_and(|d| d.contains("4 NICs where the build has 3")),
        "{drift}"
    );
    let run = lab(b, &["create", "--lab", file, "--node", "vpp0-3", "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = lab(
        b,
        &[
            "--format", "json", "status", "--lab", file, "--node", "vpp0-3",
        ],
    );
    assert!(
        run.json()["nodes"][0].get("nic_drift").is_none(),
        "{}",
        run.stdout
    );

    // --force recreates (a new clone is a new dataset) and the guest boots again
    let log = bed.console_log(0, "vpp0-2");
    let _ = std::fs::remove_file(&log);
    let old = guid("hv0", "vpp0-2");
    let run = lab(b, &["create", "--lab", file, "--node", "vpp0-2", "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_ne!(guid("hv0", "vpp0-2"), old);
    bed.wait_for_console(
        0,
        "vpp0-2",
        "LAB-GUEST-HOSTNAME: vpp0-2",
        Duration::from_secs(300),
    )
    .unwrap();

    // destroy: no clone, no domain, no mount, no staging directory; the proto untouched
    let run = lab(b, &["--format", "json", "destroy", "--lab", file, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["summary"]["done"], 12);
    for (node, hv) in &nodes {
        assert!(
            !exists(&bed, hv, &format!("{}/{node}", bed.pool)),
            "{node}: clone left"
        );
        assert!(!domain_exists(&bed, hv, node), "{node}: domain left");
        assert!(
            !staging_exists(&bed, hv, node),
            "{node}: staging directory left"
        );
        assert!(!mounted_anything_of(&bed, hv, node), "{node}: mount left");
    }
    assert_eq!(
        proto_fingerprint(&bed),
        before,
        "the proto and its snapshots are untouched"
    );
    // no network and no tunnel: none of the lab's wire ports is bound any more
    let ports: std::collections::HashSet<u16> = model
        .nodes
        .iter()
        .flat_map(|n| {
            n.interfaces
                .iter()
                .filter_map(|i| i.wire.map(|w| w.local_port))
        })
        .collect();
    assert_eq!(ports.len(), 30);
    for k in 0..3 {
        let nets = bed
            .exec(k, &["virsh", "-q", "net-list", "--all", "--name"])
            .unwrap();
        assert!(
            !nets.contains("lab-vpp"),
            "hv{k}: the lab's network is left: {nets}"
        );
        let bound = bed.exec(k, &["cat", "/proc/net/udp"]).unwrap();
        let left: Vec<u16> = bound
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.rsplit_once(':'))
            .filter_map(|(_, port)| u16::from_str_radix(port, 16).ok())
            .filter(|p| ports.contains(p))
            .collect();
        assert!(left.is_empty(), "hv{k}: wire ports still bound: {left:?}");
    }
    operator.assert_untouched_and_remove(&bed);

    // destroy again: nothing to do, exit 0
    let run = lab(b, &["--format", "json", "destroy", "--lab", file, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["summary"]["unchanged"], 12);
}

/// Another lab with the example lab's id would get the same MACs and UDP ports for its wires
/// on hv0. QEMU would bind them anyway (`SO_REUSEADDR`) and take the running lab's frames:
/// refused before anything changes, since the example lab's clones there record its id
/// (review 3, N10), and the running lab's link keeps passing traffic. Another lab that wants
/// hv0's management prefix for a network of its own is refused before anything changes.
fn a_second_lab_cannot_take_the_wires_or_the_prefix(
    bed: &lab_testbed::Testbed,
    b: &std::path::Path,
    file: &str,
    model: &lab_model::Lab,
) {
    let dir = tempfile::tempdir().unwrap();
    let twin = dir.path().join("twin.yaml");
    std::fs::write(
        &twin,
        format!(
            "include: {}\nlab: {{name: e2e-twin, id: {}, p2p_ipv4: 100.64.99.0/24}}\n\
             overlay: bird\nvars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
             defaults:\n  node:\n    vars: {{vpp_workers: 1, ospf_area: 0}}\n\
             \x20 hypervisor:\n    mgmt: {{mode: none}}\n\
             nodes:\n  tw-1: {{hypervisor: hv0, id: 31}}\n  tw-2: {{hypervisor: hv0, id: 32}}\n\
             links:\n  - [tw-1, tw-2]\n",
            repo().join("labs/testbed.yaml").display(),
            model.id
        ),
    )
    .unwrap();
    let t = twin.to_str().unwrap();
    let run = lab(b, &["--format", "json", "create", "--lab", t]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "hv0: lab `vpp` (clone {}/vpp0-1) has lab id {} there too",
            bed.pool, model.id
        )) && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
    for node in ["tw-1", "tw-2"] {
        assert!(
            !exists(bed, "hv0", &format!("{}/{node}", bed.pool)),
            "{node}"
        );
        assert!(!domain_exists(bed, "hv0", node), "{node}");
    }
    let vpp01 = model.nodes.iter().find(|n| n.name == "vpp0-1").unwrap();
    let peer = vpp01.links().next().unwrap().peer_ipv4.unwrap();
    let run = lab(
        b,
        &[
            "exec",
            "--lab",
            file,
            "--node",
            "vpp0-1",
            "--",
            &format!("ping -c 2 -W 2 {peer}"),
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    // A lab with a management network of its own on hv0's prefix, which the example lab's
    // network serves: refused before anything changes, naming whose network it is.
    let file = write_lab(
        dir.path(),
        "e2e-mg",
        33,
        "# mgmt: the fleet's (isolated, hv0's prefix)\nnodes:\n  mg-1: {hypervisor: hv0, id: 33}\n",
    );
    let run = lab(b, &["create", "--lab", file.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(
            "on interface lab2 (the bridge of network lab-vpp, lab `vpp`) is the management \
             prefix 192.168.20.0/24 of network lab-e2e-mg"
        ) && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
    let nets = bed
        .exec(0, &["virsh", "-q", "net-list", "--all", "--name"])
        .unwrap();
    assert!(!nets.contains("lab-e2e-mg"), "{nets}");
    assert!(!exists(bed, "hv0", &format!("{}/mg-1", bed.pool)));
}

/// Day two on the running example lab: ssh and its exit status, the console in a terminal,
/// one node stopped and started with its clone and its peers' links intact, the ssh-config
/// inventory used by ssh itself, the graph drawn by Graphviz.
fn day_two(bed: &lab_testbed::Testbed, b: &std::path::Path, file: &str, model: &lab_model::Lab) {
    // ssh: a command's exit status comes back; one word is a shell line, several words are
    // one command's exact arguments
    let run = lab(
        b,
        &["ssh", "--lab", file, "vpp1-3", "--", "hostname; exit 7"],
    );
    assert_eq!(
        (run.code, run.stdout.trim()),
        (7, "vpp1-3"),
        "{}",
        run.stderr
    );
    let run = lab(
        b,
        &[
            "ssh",
            "--lab",
            file,
            "vpp1-3",
            "sh",
            "-c",
            "echo a; echo 'b c'",
        ],
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "a\nb c\n"),
        "{}",
        run.stderr
    );
    // a command the node does not have: its shell's 127 and message come back (ssh and the
    // shell exit 255 and 127 for reasons of their own, not as a lost connection)
    let run = lab(
        b,
        &[
            "--format",
            "json",
            "exec",
            "--lab",
            file,
            "--node",
            "vpp1-3",
            "--",
            "lab-no-such-command",
        ],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let node = &run.json()["nodes"][0];
    assert_eq!(node["status"], 127, "{node}");
    assert!(
        node["stderr"].as_str().unwrap().contains("not found"),
        "{node}"
    );
    let run = lab(
        b,
        &[
            "exec",
            "--lab",
            file,
            "--node",
            "vpp0-*",
            "--timeout",
            "2",
            "--",
            // blocks for ever whatever the guest's clock says (a TCG guest's clock can run
            // fast, and a `sleep 30` there once ended within 2 s)
            "tail -f /dev/null",
        ],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        // (on the hypervisor at 2 s, or, on a machine this busy, locally a little later)
        run.stderr.matches("did not finish within").count(),
        4,
        "{}",
        run.stderr
    );

    // wait: a node that is not ready in time is a failure with its last console lines
    let run = lab(
        b,
        &[
            "wait",
            "--lab",
            file,
            "--node",
            "vpp0-1",
            "--for",
            "console:no such line",
            "--wait-timeout",
            "2",
        ],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("vpp0-1           NOT READY"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("    | "),
        "the console's last lines: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("not ready: vpp0-1 (not in time)"),
        "{}",
        run.stderr
    );
    let run = lab(
        b,
        &["wait", "--lab", file, "--for", "tcp:22", "--host", "hv1"],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.matches(" ready ").count(), 4, "{}", run.stdout);

    // console: in a terminal multiplexer, Enter shows the guest's prompt and a command runs
    let tmux = Tmux::new(&format!(
        "{} console --lab {file} vpp2-4",
        env!("CARGO_BIN_EXE_lab")
    ));
    let screen = tmux.until("Escape character", Duration::from_secs(20));
    assert!(screen.contains("leave with Ctrl+]"), "{screen}");
    tmux.keys(&["Enter"]);
    tmux.keys(&["echo sum-$((40+2))", "Enter"]);
    let screen = tmux.until("sum-42", Duration::from_secs(20));
    assert!(screen.contains("root@vpp2-4:"), "{screen}");

    // stop and start one node: its clone stays, its peers keep running with their NICs, and
    // its links carry traffic again once it is back
    let guid = |node: &str| {
        bed.exec(
            0,
            &[
                "zfs",
                "get",
                "-H",
                "-o",
                "value",
                "guid",
                &format!("{}/{node}", bed.pool),
            ],
        )
        .unwrap()
    };
    let before = (
        guid("vpp0-2"),
        nics(bed, "hv0", "vpp0-1"),
        nics(bed, "hv0", "vpp0-3"),
    );
    let run = lab(
        b,
        &[
            "--format", "json", "stop", "--lab", file, "--node", "vpp0-2",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["summary"]["done"], 1);
    // by default the guest is asked (the ACPI power button) and shuts itself down
    let note = run.json()["nodes"][0]["note"].clone();
    assert!(
        note.as_str()
            .is_some_and(|n| n.starts_with("the guest shut down in")),
        "{note}"
    );
    let console = std::fs::read_to_string(bed.console_log(0, "vpp0-2")).unwrap();
    assert!(console.contains("LAB-GUEST: ACPI power off"), "{console}");
    let run = lab(
        b,
        &[
            "--format", "json", "status", "--lab", file, "--node", "vpp0-*",
        ],
    );
    let phases: Vec<String> = run.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["node"].as_str().unwrap(),
                n["phase"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            "vpp0-1 ready",
            "vpp0-2 defined",
            "vpp0-3 ready",
            "vpp0-4 ready"
        ],
        "{}",
        run.stdout
    );
    // waiting for a stopped node ends at once, saying why
    let wait_for_stopped = |how: &[&str]| {
        let run = lab(
            b,
            &[&["wait", "--lab", file, "--node", "vpp0-2"], how].concat(),
        );
        assert_eq!(run.code, 1, "{how:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("vpp0-2 (the domain is shut off)"),
            "{how:?}: {}",
            run.stderr
        );
    };
    wait_for_stopped(&["--wait-timeout", "300"]);
    // exec on it says why it cannot reach it, not ssh's own words alone
    let run = lab(
        b,
        &[
            "--format", "json", "exec", "--lab", file, "--node", "vpp0-2", "--", "true",
        ],
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        run.json()["nodes"][0]["error"],
        "unreachable: domain vpp0-2 is shut off",
        "{}",
        run.stdout
    );
    // ... also when its console log still has the line of its last boot
    wait_for_stopped(&["--for", "console:LAB-GUEST-HOSTNAME"]);
    let run = lab(b, &["start", "--lab", file, "--node", "vpp0-2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = lab(
        b,
        &[
            "wait",
            "--lab",
            file,
            "--node",
            "vpp0-2",
            "--wait-timeout",
            "120",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        before,
        (
            guid("vpp0-2"),
            nics(bed, "hv0", "vpp0-1"),
            nics(bed, "hv0", "vpp0-3")
        )
    );
    // a guest that does not act on the power button is powered off when its grace is over
    let run = lab(
        b,
        &[
            "exec",
            "--lab",
            file,
            "--node",
            "vpp1-4",
            "--",
            // the image runs busybox's acpid (the pattern does not match this shell's own line)
            "pkill -f 'busybox acp[i]d'",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = lab(
        b,
        &[
            "--format", "json", "restart", "--lab", file, "--node", "vpp1-4", "--grace", "1",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.json()["nodes"][0]["note"],
        "powered off: the guest did not shut down within 1 s",
        "{}",
        run.stdout
    );
    let vpp02 = model.node("vpp0-2").unwrap();
    for link in vpp02.links() {
        let peer = link.peer.as_deref().unwrap();
        let address = link.ipv4.unwrap().addr().to_string();
        let run = lab(
            b,
            &[
                "exec", "--lab", file, "--node", peer, "--", "ping", "-c", "1", "-W", "3", &address,
            ],
        );
        assert_eq!(
            run.code, 0,
            "{peer} to vpp0-2 {}: {}{}",
            link.name, run.stdout, run.stderr
        );
    }

    // the ssh-config inventory, as ssh reads it (after the test bed's own config for the hops)
    let run = lab(b, &["inventory", "--lab", file]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let config = b.join("ssh_config");
    let bed_config = std::fs::read_to_string(bed.ssh_config()).unwrap();
    std::fs::write(&config, format!("{bed_config}\n{}", run.stdout)).unwrap();
    let out = std::process::Command::new("ssh")
        .args(["-F", config.to_str().unwrap(), "vpp2-1", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "vpp2-1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // the graph, drawn by Graphviz: every node and the cross-hypervisor links are there
    let run = lab(b, &["--format", "svg", "graph", "--lab", file]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("<svg"), "{}", run.stdout);
    for node in &model.nodes {
        let text = node.name.replace('-', "&#45;");
        assert!(
            run.stdout.contains(&format!(">{text}</text>")),
            "{} missing",
            node.name
        );
    }
}

/// A detached tmux session of its own (its own server socket) running one command.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("lab-e2e-{}", std::process::id()),
        };
        let shell = format!("cd {} && {command}; sleep 600", repo().display());
        tmux.run(&["new-session", "-d", "-x", "160", "-y", "40", &shell]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("LAB_FILE")
            .output()
            .expect("tmux is installed (cargo xtask testbed up installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend(keys);
        self.run(&args);
    }

    /// The screen once it shows `needle` (panics with the screen after `timeout`).
    fn until(&self, needle: &str, timeout: Duration) -> String {
        let start = std::time::Instant::now();
        loop {
            let screen = self.run(&["capture-pane", "-p"]);
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} on the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The MACs of a domain's NICs, in order.
fn nics(bed: &lab_testbed::Testbed, hv: &str, node: &str) -> String {
    let list = bed
        .exec(k_of(hv), &["virsh", "-q", "domiflist", node])
        .unwrap();
    list.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A network and a domain an operator made on hv0, by hand.
struct OperatorObjects;

impl OperatorObjects {
    const NETWORK: &str = "<network><name>operator-net</name><bridge name='opbr0'/></network>";
    const DOMAIN: &str = "<domain type='qemu'><name>operator-vm</name><memory unit='MiB'>64</memory>\
        <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>";

    fn make(bed: &lab_testbed::Testbed) -> OperatorObjects {
        for (what, xml) in [("net-define", Self::NETWORK), ("define", Self::DOMAIN)] {
            let _ = bed.exec(
                0,
                &[
                    "sh",
                    "-c",
                    &format!("echo \"$1\" | virsh -q {what} /dev/stdin"),
                    "op",
                    xml,
                ],
            );
        }
        bed.exec(0, &["virsh", "-q", "net-start", "operator-net"])
            .ok();
        OperatorObjects
    }

    fn assert_untouched_and_remove(&self, bed: &lab_testbed::Testbed) {
        let net = bed
            .exec(0, &["virsh", "-q", "net-info", "operator-net"])
            .unwrap();
        assert!(net.contains("Active:         yes"), "{net}");
        bed.exec(0, &["virsh", "-q", "dominfo", "operator-vm"])
            .unwrap();
        for c in [
            ["virsh", "-q", "net-destroy", "operator-net"],
            ["virsh", "-q", "net-undefine", "operator-net"],
        ] {
            let _ = bed.exec(0, &c);
        }
        let _ = bed.exec(0, &["virsh", "-q", "undefine", "operator-vm"]);
    }
}

#[test]
fn a_dataset_lab_did_not_make_survives_create_force_and_destroy() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-foreign",
        42,
        "nodes:\n  fx-1: {hypervisor: hv2, id: 42}\n",
    );
    let f = file.to_str().unwrap();
    let ds = format!("{}/fx-1", bed.pool);
    // What an earlier, failed run may have left (zfs-fuse says "busy" for a moment after umount).
    let _ = bed.exec(2, &["zfs", "umount", &ds]);
    for _ in 0..20 {
        if bed.exec(2, &["zfs", "destroy", &ds]).is_ok() || !exists(&bed, "hv2", &ds) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bed.exec(
        2,
        &[
            "zfs",
            "create",
            "-o",
            "mountpoint=/var/lib/lab-foreign-fx-1",
            &ds,
        ],
    )
    .unwrap();
    bed.exec(
        2,
        &["sh", "-c", "echo precious > /var/lib/lab-foreign-fx-1/data"],
    )
    .unwrap();

    for args in [
        vec!["create", "--lab", f],
        vec!["create", "--lab", f, "--force"],
        vec!["destroy", "--lab", f, "--yes"],
    ] {
        let mut full = vec!["--format", "json"];
        full.extend(args.iter());
        let run = lab(dir.path(), &full);
        assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
        let node = &by_node(&run.json())["fx-1"];
        assert_eq!(node["result"], "skipped", "{args:?}: {node}");
        assert!(
            node["reason"].as_str().unwrap().contains("not made by lab"),
            "{node}"
        );
        assert_eq!(
            bed.exec(2, &["cat", "/var/lib/lab-foreign-fx-1/data"])
                .unwrap(),
            "precious\n"
        );
    }
    assert!(!domain_exists(&bed, "hv2", "fx-1"));
    // zfs-fuse may call a just-unmounted dataset busy for a moment.
    let gone = (0..20).any(|_| {
        let _ = bed.exec(2, &["zfs", "umount", &ds]);
        let ok = bed.exec(2, &["zfs", "destroy", &ds]).is_ok();
        if !ok {
            std::thread::sleep(Duration::from_millis(250));
        }
        ok
    });
    assert!(gone, "could not clean up {ds}");
    let _ = bed.exec(2, &["rmdir", "/var/lib/lab-foreign-fx-1"]);
}

#[test]
fn a_failing_step_rolls_that_node_back_and_leaves_the_others_created() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    // An overlay whose domain for `fl-bad` names a kernel that does not exist: start fails
    // after clone, copy and define.
    let overlay = copy_overlay(dir.path(), "overlay");
    let domain = overlay.join("domain.xml.j2");
    let text = std::fs::read_to_string(&domain).unwrap().replace(
        "<kernel>{{ hypervisor.guest_kernel }}</kernel>",
        "<kernel>{% if node.name == \"fl-bad\" %}/nonexistent/vmlinux{% else %}{{ hypervisor.guest_kernel }}{% endif %}</kernel>",
    );
    std::fs::write(&domain, text).unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-fail",
        43,
        &format!(
            "overlay: failing\noverlays:\n  failing: {{dir: {}}}\n\
             hypervisors:\n  hv0: {{snapshot: no-such-snapshot}}\n\
             nodes:\n  fl-good: {{hypervisor: hv1, id: 43}}\n  fl-bad: {{hypervisor: hv1, id: 44}}\n  fl-nosnap: {{hypervisor: hv0, id: 45}}\n",
            overlay.display()
        ),
    );
    let f = file.to_str().unwrap();
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);

    // hv0 has no snapshot that matches: refused before anything changes, on any hypervisor.
    let run = lab(dir.path(), &["create", "--lab", f]);
    assert_eq!(run.code, 2, "invalid: {}", run.stderr);
    assert!(
        run.stderr.contains("hv0: no snapshot of") && run.stderr.contains("no-such-snapshot"),
        "{}",
        run.stderr
    );
    let pool = &bed.pool;
    assert!(!exists(&bed, "hv1", &format!("{pool}/fl-good")));

    let run = lab(
        dir.path(),
        &["--format", "json", "create", "--lab", f, "--host", "hv1"],
    );
    assert_eq!(run.code, 3, "partial: {}", run.stderr);
    let nodes = by_node(&run.json());
    assert_eq!(nodes["fl-good"]["result"], "done", "{}", nodes["fl-good"]);
    assert_eq!(nodes["fl-bad"]["result"], "failed");
    assert_eq!(nodes["fl-bad"]["step"], "start");
    assert_eq!(nodes["fl-bad"]["rolled_back"], true);

    assert!(exists(&bed, "hv1", &format!("{pool}/fl-good")));
    let node = "fl-bad";
    assert!(
        !exists(&bed, "hv1", &format!("{pool}/{node}")),
        "{node}: clone left"
    );
    assert!(!domain_exists(&bed, "hv1", node), "{node}: domain left");
    assert!(!staging_exists(&bed, "hv1", node), "{node}: staging left");
    bed.wait_for_console(
        1,
        "fl-good",
        "LAB-GUEST-HOSTNAME: fl-good",
        Duration::from_secs(300),
    )
    .unwrap();

    let run = lab(
        dir.path(),
        &["destroy", "--lab", f, "--yes", "--host", "hv1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!exists(&bed, "hv1", &format!("{pool}/fl-good")));
}

/// `create --no-start` clones, fills and defines a node and starts nothing; run again it
/// leaves the complete clone as it is; `lab start` then starts it.
#[test]
fn no_start_defines_the_node_and_lab_start_starts_it() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-nostart",
        58,
        "nodes:\n  ns-1: {hypervisor: hv2, id: 48}\n",
    );
    let f = file.to_str().unwrap();
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);
    let state = || {
        bed.exec(2, &["virsh", "-q", "domstate", "ns-1"])
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let run = lab(
        dir.path(),
        &["--format", "json", "create", "--lab", f, "--no-start"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let node = &by_node(&run.json())["ns-1"];
    assert_eq!(node["result"], "done", "{node}");
    assert_eq!(state(), "shut off");
    assert!(exists(&bed, "hv2", &format!("{}/ns-1", bed.pool)));
    let run = lab(
        dir.path(),
        &["--format", "json", "create", "--lab", f, "--no-start"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(by_node(&run.json())["ns-1"]["result"], "unchanged");
    assert_eq!(state(), "shut off");
    let run = lab(dir.path(), &["start", "--lab", f]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(state(), "running");
    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!domain_exists(&bed, "hv2", "ns-1"));
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-dry",
        44,
        "nodes:\n  dr-1: {hypervisor: hv0, id: 46}\n",
    );
    let f = file.to_str().unwrap();
    let run = lab(
        dir.path(),
        &["--format", "json", "create", "--lab", f, "--dry-run"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let node = &by_node(&run.json())["dr-1"];
    let commands: Vec<&str> = node["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // The steps as they run inside the hypervisor's plan (the plan runs behind the guard:
    // plans.rs shows that command), the tree's copy from the trees the plan carries among them.
    assert!(
        commands[0].starts_with(
            "timeout -k 5 60 zfs clone -o mountpoint=/var/lib/lab/staging/e2e-dry/dr-1 -o setuid=off -o devices=off -o lab:lab=e2e-dry"
        ),
        "{commands:?}"
    );
    // One step mounts, checks, copies, sets the modes and marks the clone complete.
    let fill = commands.iter().find(|c| c.contains(" lab-fill ")).unwrap();
    assert!(
        fill.contains(&format!(
            " lab-fill /var/lib/lab/staging/e2e-dry/dr-1 {}/dr-1 /run/lab/e2e-dry.plan/trees/dr-1/ ",
            bed.pool
        )),
        "{fill}"
    );
    let last = commands.last().unwrap();
    assert_eq!(
        *last,
        "(the plan's last wave, holding wires.lock) timeout -k 5 120 virsh -q start dr-1"
    );
    assert!(!exists(&bed, "hv0", &format!("{}/dr-1", bed.pool)));
    assert!(!domain_exists(&bed, "hv0", "dr-1"));

    // With a link (a second lab file merged over the first), the text plan shows each wire.
    let linked = dir.path().join("linked.yaml");
    std::fs::write(
        &linked,
        "lab: {name: e2e-dry, p2p_ipv4: 100.64.44.0/24}\n\
         nodes:\n  dr-2: {hypervisor: hv0, id: 47}\nlinks:\n  - [dr-1, dr-2]\n",
    )
    .unwrap();
    let run = lab(
        dir.path(),
        &[
            "create",
            "--lab",
            f,
            "--lab",
            linked.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for wire in [
        "    wire eth1: udp 127.0.0.1:27040 -> 127.0.0.1:27041 (dr-2 eth1)",
        "    wire eth1: udp 127.0.0.1:27041 -> 127.0.0.1:27040 (dr-1 eth1)",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == wire),
            "{wire}\n{}",
            run.stdout
        );
    }
    assert!(!exists(&bed, "hv0", &format!("{}/dr-2", bed.pool)));

    let run = lab(
        dir.path(),
        &["--format", "json", "destroy", "--lab", f, "--dry-run"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(by_node(&run.json())["dr-1"]["result"], "unchanged");
}

#[test]
fn an_unsafe_lock_directory_or_a_symlinked_lock_file_is_refused() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    let locks = "/var/lib/lab/e2e-locks";
    let file = write_lab(
        dir.path(),
        "e2e-unsafe",
        46,
        &format!(
            "hypervisors:\n  hv2: {{lock_dir: {locks}}}\nnodes:\n  us-1: {{hypervisor: hv2, id: 46}}\n"
        ),
    );
    let f = file.to_str().unwrap();
    // Anybody may create files in a 1777 directory: lab must not take its lock there.
    bed.exec(
        2,
        &[
            "sh",
            "-c",
            &format!("rm -rf {locks}; mkdir -m 1777 {locks}"),
        ],
    )
    .unwrap();
    let run = lab(dir.path(), &["create", "--lab", f]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("lock directory /var/lib/lab/e2e-locks belongs to uid 0 with mode 1777")
            && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
    // A lock file planted as a symlink is never opened (its target would be truncated).
    bed.exec(
        2,
        &[
            "sh",
            "-c",
            &format!(
                "chmod 700 {locks} && echo precious > {locks}/target && ln -s {locks}/target {locks}/e2e-unsafe.lock"
            ),
        ],
    )
    .unwrap();
    let run = lab(dir.path(), &["create", "--lab", f]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("lock file /var/lib/lab/e2e-locks/e2e-unsafe.lock is a symlink"),
        "{}",
        run.stderr
    );
    assert_eq!(
        bed.exec(2, &["cat", &format!("{locks}/target")]).unwrap(),
        "precious\n"
    );
    // The same for the busy file, a directory of another user, and a symlinked directory.
    for (setup, says) in [
        (
            format!(
                "rm -f {locks}/e2e-unsafe.lock && ln -s {locks}/target {locks}/e2e-unsafe.busy"
            ),
            format!("lock file {locks}/e2e-unsafe.busy is a symlink"),
        ),
        (
            format!("rm -rf {locks} && mkdir -m 700 {locks} && chown 65534 {locks}"),
            format!("lock directory {locks} belongs to uid 65534 with mode 700"),
        ),
        (
            format!(
                "rm -rf {locks} {locks}.real && mkdir -m 700 {locks}.real && ln -s {locks}.real {locks}"
            ),
            format!("lock directory {locks} is a symlink"),
        ),
    ] {
        bed.exec(2, &["sh", "-c", &setup]).unwrap();
        let run = lab(dir.path(), &["create", "--lab", f]);
        assert_eq!(run.code, 1, "{setup}: {}", run.stderr);
        assert!(run.stderr.contains(&says), "{setup}: {}", run.stderr);
    }
    assert_eq!(
        bed.exec(2, &["ls", "-A", &format!("{locks}.real")])
            .unwrap(),
        "",
        "nothing was written through the symlinked directory"
    );
    assert!(!exists(&bed, "hv2", &format!("{}/us-1", bed.pool)));
    bed.exec(2, &["rm", "-rf", locks, &format!("{locks}.real")])
        .unwrap();
}

#[test]
fn a_directory_the_image_has_as_a_symlink_is_refused_and_the_image_kept() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    // A proto of our own with a merged-/usr layout, `lib -> usr/lib`, and an absolute link.
    let proto = format!("{}/e2e-kd-proto", bed.pool);
    let clone = format!("{}/kd-1", bed.pool);
    for ds in [&clone, &proto] {
        let _ = bed.exec(1, &["zfs", "umount", ds]);
        let _ = bed.exec(1, &["zfs", "destroy", "-r", ds]);
    }
    bed.exec(
        1,
        &[
            "sh",
            "-c",
            &format!(
                "zfs create {proto} && cd /{proto} && mkdir -p usr/lib etc var && ln -s usr/lib lib \
                 && ln -s /run var/run && zfs snapshot {proto}@base"
            ),
        ],
    )
    .unwrap();
    let overlay = copy_overlay(dir.path(), "kd");
    // This image has no `bird` user for the overlay's modes to name.
    std::fs::write(
        overlay.join("modes"),
        "root/.ssh 0700 0:0\nroot/.ssh/authorized_keys 0600 0:0\n",
    )
    .unwrap();
    for (rel, text) in [
        ("lib/lab-marker", "through lib\n"),
        ("var/run/x", "through /run\n"),
    ] {
        let path = overlay.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let file = write_lab(
        dir.path(),
        "e2e-kd",
        48,
        &format!(
            "overlay: kd\noverlays:\n  kd: {{dir: {}}}\n\
             hypervisors:\n  hv1: {{proto: {proto}, snapshot: base}}\n\
             nodes:\n  kd-1: {{hypervisor: hv1, id: 48}}\n",
            overlay.display()
        ),
    );
    let f = file.to_str().unwrap();
    // rsync would replace `lib` with a directory (the guest does not boot), or, told to keep
    // directory links, follow `var/run -> /run` onto the hypervisor itself: neither happens.
    let run = lab(dir.path(), &["create", "--lab", f]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("the image has symlinks where the overlay has directories")
            && run.stdout.contains("lib -> usr/lib")
            && run.stdout.contains("var/run -> /run")
            && run.stdout.contains("(rolled back)"),
        "{}",
        run.stdout
    );
    assert!(!exists(&bed, "hv1", &clone), "rolled back");
    assert!(
        bed.exec(1, &["test", "-e", "/run/x"]).is_err(),
        "nothing was written on the hypervisor"
    );
    // With the files where the links point, the node is created and the links are kept.
    std::fs::remove_dir_all(overlay.join("lib")).unwrap();
    std::fs::remove_dir_all(overlay.join("var")).unwrap();
    std::fs::create_dir_all(overlay.join("usr/lib")).unwrap();
    std::fs::write(overlay.join("usr/lib/lab-marker"), "in usr/lib\n").unwrap();
    let run = lab(dir.path(), &["create", "--lab", f]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let staging = "/var/lib/lab/staging/e2e-kd/kd-1";
    assert_eq!(
        bed.exec(1, &["readlink", &format!("{staging}/lib")])
            .unwrap()
            .trim(),
        "usr/lib"
    );
    assert_eq!(
        bed.exec(1, &["cat", &format!("{staging}/lib/lab-marker")])
            .unwrap(),
        "in usr/lib\n"
    );
    assert_guests_boot(&bed, &[("hv1", "kd-1")]);
    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for _ in 0..20 {
        if bed.exec(1, &["zfs", "destroy", "-r", &proto]).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!exists(&bed, "hv1", &proto));
}

#[test]
fn the_image_keeps_the_owners_and_modes_it_has() {
    let bed = require();
    let dir = tempfile::tempdir().unwrap();
    // A proto of our own whose directories and one file have owners and modes of their own.
    let proto = format!("{}/e2e-pm-proto", bed.pool);
    let clone = format!("{}/pm-1", bed.pool);
    let make_proto = || {
        bed.exec(
            2,
            &[
                "sh",
                "-c",
                &format!(
                    "zfs create {proto} && cd /{proto} && mkdir -p root etc tmp var/spool/cron/crontabs \
                     && chmod 700 root && chmod 1777 tmp && chown 0:102 var/spool/cron/crontabs \
                     && chmod 1730 var/spool/cron/crontabs && echo old > etc/issue \
                     && chown 0:42 etc/issue && chmod 640 etc/issue \
                     && echo 'frr:x:101:102::/nonexistent:/bin/false' > etc/passwd \
                     && echo 'frr:x:102:' > etc/group && mkdir -m 2775 etc/pm-sgid \
                     && zfs snapshot {proto}@base"
                ),
            ],
        )
        .unwrap();
    };
    // An overlay checked out as if under umask 000, with files where the image has directories
    // of its own, and new ones.
    let overlay = copy_overlay(dir.path(), "pm");
    use std::os::unix::fs::PermissionsExt;
    let chmod = |rel: &str, mode: u32| {
        std::fs::set_permissions(overlay.join(rel), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for (rel, mode) in [
        ("root/.profile", 0o666),
        ("tmp/lab-x", 0o666),
        ("var/spool/cron/crontabs/root", 0o600),
        ("etc/issue", 0o666),
        ("etc/pm-new/f", 0o666),
        ("usr/local/bin/tool", 0o777),
        ("etc/pm-owned/conf", 0o666),
        ("etc/pm-sgid/x", 0o644),
    ] {
        let path = overlay.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "new\n").unwrap();
        chmod(rel, mode);
    }
    for rel in [
        "root",
        "tmp",
        "etc",
        "etc/pm-new",
        "var",
        "var/spool/cron/crontabs",
    ] {
        chmod(rel, 0o777);
    }
    // ... and owners and modes the overlay declares, with names from the image's passwd.
    std::fs::write(
        overlay.join("modes"),
        "etc/pm-owned 2750 frr:frr\netc/pm-owned/conf 0640 :frr # group only\n\
         etc/pm-sgid 0750 # the image's setgid bit goes too\n",
    )
    .unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-pm",
        47,
        &format!(
            "overlay: pm\noverlays:\n  pm: {{dir: {}}}\n\
             hypervisors:\n  hv2: {{proto: {proto}, snapshot: base}}\n\
             nodes:\n  pm-1: {{hypervisor: hv2, id: 47}}\n",
            overlay.display()
        ),
    );
    let f = file.to_str().unwrap();
    // What a failed run may have left.
    lab(dir.path(), &["destroy", "--lab", f, "--yes", "-q"]);
    for ds in [&clone, &proto] {
        let _ = bed.exec(2, &["zfs", "umount", ds]);
        let _ = bed.exec(2, &["zfs", "destroy", "-r", ds]);
    }
    make_proto();
    // The build of a run that was killed goes (its lock file unlocked, or without one, its
    // process gone); one whose lock is held, or of a live process, stays.
    let run_dir = |id: &str| dir.path().join(format!(".run-{id}"));
    let (dead, dead_locked, held, live) = (
        run_dir("4194303"),
        run_dir("4194302"),
        run_dir("4194301"),
        run_dir(&std::process::id().to_string()),
    );
    for d in [&dead, &dead_locked, &held, &live] {
        std::fs::create_dir_all(d.join("pm/hv2/pm-1")).unwrap();
    }
    std::fs::File::create(dir.path().join(".run-4194302.lock")).unwrap();
    let holder = std::fs::File::create(dir.path().join(".run-4194301.lock")).unwrap();
    holder.lock().unwrap();
    let run = lab(dir.path(), &["create", "--lab", f]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        !dead.exists() && !dead_locked.exists() && held.exists() && live.exists(),
        "dead runs' builds are removed, live ones' kept"
    );
    assert!(
        !dir.path().join(".run-4194302.lock").exists(),
        "with their lock files"
    );
    drop(holder);
    // What was created is the build everyone sees now, and the run's own directory is gone.
    assert!(dir.path().join("pm/hv2/pm-1/etc/pm-owned/conf").is_file());
    assert!(dir.path().join("pm/hv2/_meta/pm-1.manifest.json").is_file());
    let mut runs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".run-"))
        .collect();
    runs.sort();
    let mut expected = vec![
        ".run-4194301".to_owned(),
        ".run-4194301.lock".to_owned(),
        format!(".run-{}", std::process::id()),
    ];
    expected.sort();
    assert_eq!(
        runs, expected,
        "the run's own directory and lock file are gone"
    );
    let staging = "/var/lib/lab/staging/e2e-pm/pm-1";
    let stat = bed
        .exec(
            2,
            &[
                "sh",
                "-c",
                "cd \"$0\" && stat -c '%n %a %u:%g' root tmp var/spool/cron/crontabs etc \
                 etc/issue root/.profile tmp/lab-x var/spool/cron/crontabs/root etc/pm-new \
                 etc/pm-new/f usr/local/bin/tool etc/pm-owned etc/pm-owned/conf etc/pm-sgid \
                 && cat etc/issue",
                staging,
            ],
        )
        .unwrap();
    assert_eq!(
        stat,
        // what the image had keeps its owner and mode ...
        "root 700 0:0\ntmp 1777 0:0\nvar/spool/cron/crontabs 1730 0:102\netc 755 0:0\n\
         etc/issue 640 0:42\n\
         root/.profile 644 0:0\ntmp/lab-x 644 0:0\nvar/spool/cron/crontabs/root 600 0:0\n\
         etc/pm-new 755 0:0\netc/pm-new/f 644 0:0\nusr/local/bin/tool 755 0:0\n\
         etc/pm-owned 2750 101:102\netc/pm-owned/conf 640 0:102\netc/pm-sgid 750 0:0\nnew\n",
        "... what the overlay adds is root's, under umask 022, unless its `modes` says \
         otherwise, and a file's content is replaced"
    );
    let run = lab(dir.path(), &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for _ in 0..20 {
        if bed.exec(2, &["zfs", "destroy", "-r", &proto]).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!exists(&bed, "hv2", &proto));
}

/// A lab's own management network on hv2, changed while it serves a running node.
/// Review 3, N14: a node added to the running lab gets its DHCP reservation in the running
/// network (the new definition waits for the next start), so it answers on its address.
/// N11: a node removed from the lab file without being destroyed still runs on the network,
/// so destroying the rest keeps the network, saying why.
#[test]
fn a_running_labs_network_serves_added_nodes_and_outlives_removed_ones() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    // One file per version of the lab (write_lab names the file after the lab).
    let lab_file = |nodes: &str, version: &str| {
        let written = write_lab(
            dir.path(),
            "e2e-grow",
            34,
            &format!(
                "# mgmt: a network of the lab's own on hv2\n\
                 hypervisors:\n  hv2: {{mgmt_ipv4: 192.168.34.0/24}}\nnodes:\n{nodes}"
            ),
        );
        let path = dir.path().join(format!("{version}.yaml"));
        std::fs::rename(written, &path).unwrap();
        path
    };
    let one = lab_file("  gr-1: {hypervisor: hv2, id: 1}\n", "one");
    let two = lab_file(
        "  gr-1: {hypervisor: hv2, id: 1}\n  gr-2: {hypervisor: hv2, id: 2}\n",
        "two",
    );
    let without = lab_file("  gr-2: {hypervisor: hv2, id: 2}\n", "without");
    lab(
        b,
        &["destroy", "--lab", two.to_str().unwrap(), "--yes", "-q"],
    );
    let f = one.to_str().unwrap();
    let run = lab(
        b,
        &["create", "--lab", f, "--wait", "--wait-timeout", "420"],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    let f = two.to_str().unwrap();
    let run = lab(
        b,
        &[
            "create",
            "--lab",
            f,
            "--node",
            "gr-2",
            "--wait",
            "--wait-timeout",
            "180",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("DHCP reservations are added") || run.stdout.contains("DHCP"),
        "{}{}",
        run.stdout,
        run.stderr
    );

    // gr-1 leaves the lab file, still running: destroying the lab keeps the network.
    let f = without.to_str().unwrap();
    let run = lab(b, &["--format", "json", "destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("gr-1 (not in the lab file)"),
        "{}",
        run.stdout
    );
    let nets = bed.exec(2, &["virsh", "-q", "net-list", "--name"]).unwrap();
    assert!(nets.contains("lab-e2e-grow"), "{nets}");
    assert!(domain_exists(&bed, "hv2", "gr-1"));

    // Back in the file, it goes, and the network with it.
    let f = two.to_str().unwrap();
    let run = lab(b, &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let nets = bed
        .exec(2, &["virsh", "-q", "net-list", "--all", "--name"])
        .unwrap();
    assert!(!nets.contains("lab-e2e-grow"), "{nets}");
}

/// Review 3, N8: hv2 is installed in German (its sshd gives every session
/// `LANG=de_DE.UTF-8`, as pam_env does with `/etc/default/locale`), so its `virsh` says
/// "ausgeschaltet" where `lab` reads "shut off". Every command `lab` runs there is under
/// `LC_ALL=C`: a stopped node reads as stopped, starts, and the lab goes.
#[test]
fn a_hypervisor_installed_in_another_language_is_read_in_english() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-de",
        35,
        "nodes:\n  de-1: {hypervisor: hv2, id: 35}\n",
    );
    let f = file.to_str().unwrap();
    lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    let run = lab(b, &["create", "--lab", f]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = lab(b, &["stop", "--lab", f, "--grace", "0"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // The bed really speaks German there, over ssh as `lab` reaches it.
    let said = std::process::Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "hv2",
            "virsh",
            "-q",
            "domstate",
            "de-1",
        ])
        .env_remove("LC_ALL")
        .env_remove("LANG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&said.stdout).trim().to_owned();
    assert!(!said.is_empty() && said != "shut off", "hv2 says {said:?}");

    let run = lab(b, &["--format", "json", "status", "--lab", f]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        by_node(&run.json())["de-1"]["domain"],
        "shut off",
        "{}",
        run.stdout
    );
    let run = lab(b, &["--format", "json", "start", "--lab", f]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        by_node(&run.json())["de-1"]["result"],
        "done",
        "{}",
        run.stdout
    );
    let run = lab(b, &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!domain_exists(&bed, "hv2", "de-1"));
    assert!(!exists(&bed, "hv2", &format!("{}/de-1", bed.pool)));
}

/// Three FRR routers in a triangle across two hypervisors: `create --validate` waits until every
/// BGP session is Established and every OSPF neighbour Full; with one router's bgpd stopped
/// `validate` exits 1 and names exactly the sessions that dropped; started again, it passes.
#[test]
fn frr_routers_converge_and_validate_names_the_sessions_that_drop() {
    let _bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rt.yaml");
    std::fs::write(
        &file,
        format!(
            "include: {}\nlab: {{name: e2e-rt, id: 61, p2p_ipv4: 100.64.61.0/24}}\noverlay: frr\n\
             vars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
             defaults: {{node: {{vars: {{ospf_area: 0, vpp_workers: 1}}}}}}\n\
             hypervisors:\n  hv0: {{mgmt_ipv4: 192.168.61.0/24}}\n  hv1: {{mgmt_ipv4: 192.168.62.0/24}}\n\
             nodes:\n  rt-1: {{hypervisor: hv0, id: 1}}\n  rt-2: {{hypervisor: hv0, id: 2}}\n  \
             rt-3: {{hypervisor: hv1, id: 1}}\n\
             links: [[rt-1, rt-2], [rt-2, rt-3], [rt-3, rt-1]]\n\
             validate:\n  hostname:\n    command: cat /etc/hostname\n    regex: '^rt-[123]$'\n",
            repo().join("labs/testbed.yaml").display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    lab(b, &["destroy", "--lab", file, "--yes", "-q"]);

    // one JSON document: the create's report with its validation inside
    let created = lab(
        b,
        &[
            "--format",
            "json",
            "create",
            "--lab",
            file,
            "--validate",
            // FRR under emulation on a loaded 2-core machine has taken over 300 s to converge
            "--validate-timeout",
            "900",
        ],
    );
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);
    let doc = created.json();
    assert_eq!(doc["summary"]["done"], 3, "{doc}");
    let checks = doc["validation"]["checks"].as_array().unwrap();
    // 3 links: 6 BGP sessions, 6 OSPF neighbours, 6 pings; 3 declared
    assert_eq!(checks.len(), 21, "{doc}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{doc}");
    let converged = doc["validation"]["converged_after_secs"].as_f64().unwrap();
    assert!(converged > 0.0, "{doc}");

    // bgpd stopped on rt-2 (watchfrr first, or it starts bgpd again)
    let stopped = lab(
        b,
        &[
            "exec",
            "--lab",
            file,
            "--node",
            "rt-2",
            "--",
            "pkill watchfrr; pkill bgpd; true",
        ],
    );
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    let failing = lab(
        b,
        &[
            "--format",
            "json",
            "validate",
            "--lab",
            file,
            "--validate-timeout",
            "15",
        ],
    );
    assert_eq!(failing.code, 1, "{}{}", failing.stdout, failing.stderr);
    let mut dropped: Vec<String> = failing.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| format!("{} {} {}", c["node"], c["kind"], c["name"]).replace('"', ""))
        .collect();
    dropped.sort();
    // rt-2's two sessions, and its peers' ends of them; OSPF and pings are untouched
    assert_eq!(
        dropped,
        [
            "rt-1 bgp 100.64.61.1",
            "rt-2 bgp 100.64.61.0",
            "rt-2 bgp 100.64.61.3",
            "rt-3 bgp 100.64.61.2",
        ],
        "{}",
        failing.stdout
    );
    assert!(
        failing.stderr.contains("validate: 4 of 21 check(s) failed"),
        "{}",
        failing.stderr
    );

    let started = lab(
        b,
        &[
            "exec",
            "--lab",
            file,
            "--node",
            "rt-2",
            "--",
            "/usr/lib/frr/frrinit.sh start >/dev/null 2>&1; true",
        ],
    );
    assert_eq!(started.code, 0, "{}", started.stderr);
    let again = lab(b, &["validate", "--lab", file, "--validate-timeout", "600"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);

    let gone = lab(b, &["destroy", "--lab", file, "--yes", "-q"]);
    assert_eq!(gone.code, 0, "{}", gone.stderr);
}

/// Issue 20: an operator's network (`mode: existing`) gains the lab's DHCP reservations, and
/// loses only those on destroy: the reservation made by hand for another machine, and one made
/// by hand identical to a node's, both survive. One that someone else made for a node's
/// address refuses the create before anything changes.
#[test]
fn an_operators_network_gets_the_labs_reservations_and_keeps_its_own() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    let network = "e2e-ops";
    let virsh = |args: &[&str]| {
        let mut argv = vec!["virsh", "-q"];
        argv.extend_from_slice(args);
        bed.exec(1, &argv)
    };
    let hosts = || virsh(&["net-dumpxml", network]).unwrap();
    // The operator's network on hv1, as an operator would have it: a DHCP range, and a
    // reservation for a machine of their own.
    let _ = virsh(&["net-destroy", network]);
    let _ = virsh(&["net-undefine", network]);
    let xml = "<network><name>e2e-ops</name><bridge name='e2eops' stp='off'/>\
        <ip address='192.168.63.1' netmask='255.255.255.0'><dhcp>\
        <range start='192.168.63.100' end='192.168.63.200'/>\
        <host mac='52:54:00:ee:00:01' name='by-hand' ip='192.168.63.50'/></dhcp></ip></network>";
    bed.exec(
        1,
        &[
            "sh",
            "-c",
            "printf '%s' \"$1\" | virsh -q net-define /dev/stdin && virsh -q net-start \"$2\"",
            "sh",
            xml,
            network,
        ],
    )
    .unwrap();
    let file = write_lab(
        dir.path(),
        "e2e-rsv",
        63,
        "hypervisors:\n  hv1: {mgmt_ipv4: 192.168.63.0/24, mgmt: {network: e2e-ops}}\n\
         nodes:\n  rs-1: {hypervisor: hv1, id: 11}\n  rs-2: {hypervisor: hv1, id: 12}\n",
    );
    let model = lab_model::load(std::slice::from_ref(&file)).unwrap();
    let element = |node: &str| {
        let n = model.nodes.iter().find(|n| n.name == node).unwrap();
        format!(
            "<host mac='{}' name='{node}' ip='{}'/>",
            n.mac.to_ascii_lowercase(),
            n.mgmt_ipv4.unwrap().addr()
        )
    };
    let f = file.to_str().unwrap();
    lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    let update = |verb: &str, host: &str| {
        virsh(&[
            "net-update",
            network,
            verb,
            "ip-dhcp-host",
            host,
            "--live",
            "--config",
        ])
        .unwrap();
    };

    // Someone else's reservation on rs-2's address: refused, nothing made.
    let squatter = "<host mac='52:54:00:ee:00:02' name='squatter' ip='192.168.63.12'/>";
    update("add-last", squatter);
    let run = lab(b, &["create", "--lab", f]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("squatter") && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
    assert!(!domain_exists(&bed, "hv1", "rs-1"));
    assert!(!hosts().contains(&element("rs-1")));
    update("delete", squatter);

    // rs-2's very reservation, made by hand: used, never claimed.
    update("add-last", &element("rs-2"));
    let run = lab(
        b,
        &["create", "--lab", f, "--wait", "--wait-timeout", "420"],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let now = hosts();
    for node in ["rs-1", "rs-2"] {
        assert!(now.contains(&element(node)), "{node}: {now}");
    }
    // Each node took its planned address by DHCP (the image's init says so only for a
    // lease; the network's range starts at .100).
    for (node, ip) in [("rs-1", "192.168.63.11"), ("rs-2", "192.168.63.12")] {
        let line = bed
            .wait_for_console(1, node, "LAB-GUEST-MGMT:", Duration::from_secs(300))
            .unwrap();
        assert_eq!(line, format!("LAB-GUEST-MGMT: {ip}"), "{node}");
    }
    let persistent = virsh(&["net-dumpxml", "--inactive", network]).unwrap();
    assert!(persistent.contains(&element("rs-1")), "{persistent}");

    let run = lab(b, &["destroy", "--lab", f, "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let after = hosts();
    assert!(!after.contains(&element("rs-1")), "{after}");
    assert!(after.contains(&element("rs-2")), "{after}");
    assert!(after.contains("name='by-hand'"), "{after}");
    let persistent = virsh(&["net-dumpxml", "--inactive", network]).unwrap();
    assert!(!persistent.contains(&element("rs-1")), "{persistent}");
    // The network itself is the operator's: still there, still running.
    let nets = virsh(&["net-list", "--name"]).unwrap();
    assert!(nets.lines().any(|l| l.trim() == network), "{nets}");
    let _ = virsh(&["net-destroy", network]);
    let _ = virsh(&["net-undefine", network]);
}

/// Issue 22: a link across two hypervisors, captured while its ends ping (the pcap holds
/// the echo requests and replies between the link's addresses, from the two NICs' planned
/// MACs), taken down (both guests lose the carrier, the ping and `validate` fail, `status`
/// and `lab link` say so) and up again (all of it comes back), flapped, delayed (the round
/// trip grows by both directions' delay), made to lose every reply, and reset; destroy
/// leaves no capture and no relay behind.
#[test]
fn a_link_is_captured_taken_down_and_brought_back() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lk.yaml");
    std::fs::write(
        &file,
        format!(
            "include: {}\nlab: {{name: e2e-lk, id: 66, p2p_ipv4: 100.64.66.0/24}}\noverlay: bird\n\
             vars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
             defaults: {{node: {{vars: {{ospf_area: 0, vpp_workers: 1}}}}}}\n\
             hypervisors:\n  hv0: {{mgmt_ipv4: 192.168.66.0/24}}\n  hv1: {{mgmt_ipv4: 192.168.67.0/24}}\n\
             nodes:\n  lk-1: {{hypervisor: hv0, id: 1}}\n  lk-2: {{hypervisor: hv1, id: 1}}\n\
             links:\n  - [lk-1, lk-2]\n  - ends: [lk-1, lk-2]\n    impair: {{from: lk-1, delay: 20ms}}\n",
            repo().join("labs/testbed.yaml").display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let model = lab_model::load(std::slice::from_ref(&file)).unwrap();
    let eth1 = |node: &str| {
        model
            .node(node)
            .unwrap()
            .interfaces
            .iter()
            .find(|i| i.name == "eth1")
            .unwrap()
            .clone()
    };
    let (one, two) = (eth1("lk-1"), eth1("lk-2"));
    let peer = two.ipv4.unwrap().addr().to_string();
    lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    let created = lab(
        b,
        &["create", "--lab", f, "--wait", "--wait-timeout", "420"],
    );
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);

    // The lab file's impairment (20 ms on what lk-1 sends on its second link) is in place
    // after create, and again after lk-1 restarts (its QEMU is new).
    let declared = || {
        let links = lab(b, &["--format", "json", "link", "--lab", f]).json();
        let ends = links["links"][1]["ends"].as_array().unwrap().clone();
        (
            ends[0]["impaired"]["delay_us"].clone(),
            ends[1].get("impaired").cloned(),
            links,
        )
    };
    let (delay, other, links) = declared();
    assert_eq!(delay, 20_000, "{links}");
    assert_eq!(other, None, "{links}");
    let restarted = lab(
        b,
        &["restart", "--lab", f, "--node", "lk-1", "--grace", "0"],
    );
    assert_eq!(
        restarted.code, 0,
        "{}{}",
        restarted.stdout, restarted.stderr
    );
    assert!(
        restarted.stderr.contains("impaired as the lab file says"),
        "{}",
        restarted.stderr
    );
    let (delay, _, links) = declared();
    assert_eq!(delay, 20_000, "{links}");
    let waited = lab(
        b,
        &[
            "wait",
            "--lab",
            f,
            "--node",
            "lk-1",
            "--wait-timeout",
            "240",
        ],
    );
    assert_eq!(waited.code, 0, "{}{}", waited.stdout, waited.stderr);

    // Bad ends are said before anything is asked of a hypervisor.
    let bad = lab(b, &["link", "down", "--lab", f, "lk-1:eth7"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("no interface `eth7`"), "{}", bad.stderr);
    let bad = lab(b, &["link", "down", "--lab", f, "lk-1:eth0"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("management interface"),
        "{}",
        bad.stderr
    );

    // The capture, while lk-1 pings lk-2 across the link.
    let pcap = dir.path().join("lk.pcap");
    let capture = spawn_lab(
        b,
        &[
            "capture",
            "--lab",
            f,
            "lk-1",
            "eth1",
            "-w",
            pcap.to_str().unwrap(),
            "--duration",
            "12",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let ping = |count: &str| {
        lab(
            b,
            &[
                "exec",
                "--lab",
                f,
                "--node",
                "lk-1",
                "--",
                &format!("ping -n -c {count} -W 2 -i 0.5 {peer}"),
            ],
        )
    };
    let pinged = ping("5");
    assert_eq!(pinged.code, 0, "{}{}", pinged.stdout, pinged.stderr);
    let captured = capture.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&captured.stderr);
    assert!(captured.status.success(), "{said}");
    assert!(said.contains("duration over"), "{said}");
    let read = std::process::Command::new("tcpdump")
        .args(["-nn", "-e", "-r"])
        .arg(&pcap)
        .arg("icmp")
        .output()
        .expect("tcpdump (apt install tcpdump) reads the capture");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let frames = String::from_utf8_lossy(&read.stdout);
    let from = |mac: &str, what: &str| {
        frames
            .lines()
            .filter(|l| l.contains(&format!("{mac} >")) && l.contains(what))
            .count()
    };
    let (mine, its) = (one.mac.to_ascii_lowercase(), two.mac.to_ascii_lowercase());
    assert!(from(&mine, "echo request") >= 5, "{frames}");
    assert!(from(&its, "echo reply") >= 5, "{frames}");
    assert!(
        frames.contains(&format!("{} > {peer}", one.ipv4.unwrap().addr())),
        "{frames}"
    );

    // A count and a filter, to stdout.
    let counted = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args([
            "capture",
            "--lab",
            f,
            "lk-2:eth1",
            "--count",
            "3",
            "--",
            "icmp",
        ])
        .env("LAB_BUILD", b)
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ping("4").code, 0);
    let counted = counted.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&counted.stderr);
    assert!(
        said.contains("3 frame(s)") && said.contains("count reached"),
        "{said}"
    );
    // the pcap header and three frames of 98 bytes (an ICMP echo), each with its header
    assert_eq!(counted.stdout.len(), 24 + 3 * (16 + 98), "{said}");

    // Down: both guests lose the carrier; ping, validate, status and `lab link` say so.
    let carrier = |node: &str| {
        lab(
            b,
            &[
                "exec",
                "--lab",
                f,
                "--node",
                node,
                "--",
                "cat /sys/class/net/eth1/carrier",
            ],
        )
        .stdout
    };
    let down = lab(b, &["link", "down", "--lab", f, "lk-1:eth1", "lk-2:eth1"]);
    assert_eq!(down.code, 0, "{}{}", down.stdout, down.stderr);
    assert!(
        carrier("lk-1").trim_end().ends_with('0'),
        "{}",
        carrier("lk-1")
    );
    assert!(
        carrier("lk-2").trim_end().ends_with('0'),
        "{}",
        carrier("lk-2")
    );
    assert_ne!(ping("2").code, 0);
    let links = lab(b, &["--format", "json", "link", "--lab", f]).json();
    let states: Vec<&str> = links["links"][0]["ends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["down", "down"], "{links}");
    let status = lab(b, &["--format", "json", "status", "--lab", f]).json();
    assert_eq!(
        by_node(&status)["lk-2"]["links_down"][0],
        "eth1",
        "{status}"
    );
    let failing = lab(b, &["validate", "--lab", f, "--validate-timeout", "5"]);
    assert_eq!(failing.code, 1, "{}{}", failing.stdout, failing.stderr);

    // Up: it all comes back; a flap ends up too.
    let up = lab(b, &["link", "up", "--lab", f, "lk-2:eth1"]);
    assert_eq!(up.code, 0, "{}{}", up.stdout, up.stderr);
    let flap = lab(
        b,
        &[
            "link",
            "flap",
            "--lab",
            f,
            "lk-1:eth1",
            "--count",
            "2",
            "--interval",
            "1",
        ],
    );
    assert_eq!(flap.code, 0, "{}{}", flap.stdout, flap.stderr);
    assert!(
        carrier("lk-1").trim_end().ends_with('1'),
        "{}",
        carrier("lk-1")
    );
    assert!(
        carrier("lk-2").trim_end().ends_with('1'),
        "{}",
        carrier("lk-2")
    );
    let status = lab(b, &["--format", "json", "status", "--lab", f]).json();
    assert!(
        by_node(&status)["lk-2"].get("links_down").is_none(),
        "{status}"
    );
    let passing = lab(b, &["validate", "--lab", f, "--validate-timeout", "420"]);
    assert_eq!(passing.code, 0, "{}{}", passing.stdout, passing.stderr);

    // Impaired: 50 ms each way adds about 100 ms to a ping's round trip; 100% loss drops
    // it; reset gives the link back as it was. The shortest of ten round trips is compared:
    // a delay is a floor under every one, while a busy machine makes some of them longer.
    let rtt = || {
        let out = ping("10").stdout;
        let min = out
            .lines()
            .find_map(|l| l.split(" = ").nth(1))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse::<f64>().ok());
        min.unwrap_or_else(|| panic!("no round trip in: {out}"))
    };
    let before = rtt();
    // The declared 20 ms, one way, on the second link.
    let peer2 = model
        .node("lk-2")
        .unwrap()
        .interfaces
        .iter()
        .find(|i| i.name == "eth2")
        .unwrap()
        .ipv4
        .unwrap()
        .addr()
        .to_string();
    let rtt2 = || {
        let out = lab(
            b,
            &[
                "exec",
                "--lab",
                f,
                "--node",
                "lk-1",
                "--",
                &format!("ping -n -c 10 -i 0.3 {peer2}"),
            ],
        )
        .stdout;
        out.lines()
            .find_map(|l| l.split(" = ").nth(1))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no round trip in: {out}"))
    };
    let slow = rtt2();
    assert!(
        slow >= 20.0 && slow > before && slow < before + 60.0,
        "{before} ms on the first link, {slow} ms on the one delayed 20 ms one way"
    );
    let set = lab(
        b,
        &["link", "set", "--lab", f, "lk-1:eth1", "--delay", "50ms"],
    );
    assert_eq!(set.code, 0, "{}{}", set.stdout, set.stderr);
    let delayed = rtt();
    assert!(
        delayed >= 100.0 && delayed < before + 150.0,
        "{before} ms, then {delayed} ms with 50 ms each way"
    );
    // The other link between the same two guests keeps its own round trip.
    let other = rtt2();
    assert!(
        other >= 20.0 && (other - slow).abs() < 15.0,
        "the second link's round trip went from {slow} to {other} ms when the first was delayed"
    );
    let links = lab(b, &["--format", "json", "link", "--lab", f]).json();
    for end in links["links"][0]["ends"].as_array().unwrap() {
        assert_eq!(end["impaired"]["delay_us"], 50_000, "{links}");
    }
    let set = lab(
        b,
        &[
            "link",
            "set",
            "--lab",
            f,
            "lk-1:eth1",
            "--from",
            "lk-2",
            "--loss",
            "100%",
        ],
    );
    assert_eq!(set.code, 0, "{}{}", set.stdout, set.stderr);
    assert_ne!(ping("3").code, 0, "replies dropped, yet the ping passed");
    let reset = lab(b, &["link", "reset", "--lab", f, "lk-2:eth1"]);
    assert_eq!(reset.code, 0, "{}{}", reset.stdout, reset.stderr);
    let after = rtt();
    assert!(
        after < before + 30.0,
        "{before} ms, then {after} ms after reset"
    );
    // ... and destroy takes an impaired lab away with its relays.
    let set = lab(
        b,
        &["link", "set", "--lab", f, "lk-1:eth1", "--delay", "5ms"],
    );
    assert_eq!(set.code, 0, "{}{}", set.stdout, set.stderr);

    let gone = lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    assert_eq!(gone.code, 0, "{}", gone.stderr);
    for k in [0, 1] {
        let left = bed
            .exec(
                k,
                &[
                    "sh",
                    "-c",
                    "ls -d /var/tmp/lab-capture.* /run/lab/e2e-lk.relay* 2>/dev/null; \
                     ps -eo args= | grep -e ' --label lk-[12]/' | grep -v grep; true",
                ],
            )
            .unwrap();
        assert_eq!(left.trim(), "", "hv{k} keeps a capture or a relay");
    }
}

#[test]
fn a_lab_is_snapshotted_changed_and_restored_and_another_users_run_cannot_touch_it() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sn.yaml");
    std::fs::write(
        &file,
        format!(
            "include: {}\nlab: {{name: e2e-sn, id: 67, p2p_ipv4: 100.64.67.0/24}}\noverlay: bird\n\
             vars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
             defaults: {{node: {{vars: {{ospf_area: 0, vpp_workers: 1}}}}}}\n\
             hypervisors:\n  hv0: {{mgmt_ipv4: 192.168.68.0/24}}\n  hv1: {{mgmt_ipv4: 192.168.69.0/24}}\n\
             nodes:\n  sn-1: {{hypervisor: hv0, id: 1}}\n  sn-2: {{hypervisor: hv1, id: 1}}\n\
             links:\n  - [sn-1, sn-2]\n",
            repo().join("labs/testbed.yaml").display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let model = lab_model::load(std::slice::from_ref(&file)).unwrap();
    let nodes: Vec<lab_model::LabNode> = model.nodes.clone();
    // What the guests wrote: the bed's dataset guests see their clone through a read-only 9p
    // mount, so the hypervisor writes into each clone for them; the guests read it back.
    let write = |text: &str| {
        for n in &nodes {
            bed.ssh_script(
                k_of(&n.hypervisor),
                &format!("echo {text} > {}/root/mark && sync", n.staging),
            )
            .unwrap();
        }
    };
    let read = |node: &str| {
        let r = lab(
            b,
            &[
                "exec",
                "--lab",
                f,
                "--node",
                node,
                "--",
                "cat",
                "/root/mark",
            ],
        );
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        r.stdout
    };
    let listed = || {
        let l = lab(b, &["--format", "json", "snapshots", "--lab", f]);
        assert_eq!(l.code, 0, "{}{}", l.stdout, l.stderr);
        l.json()["snapshots"].as_array().unwrap().clone()
    };
    let names = |l: &[serde_json::Value]| -> Vec<String> {
        l.iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    let created = lab(
        b,
        &["create", "--lab", f, "--wait", "--wait-timeout", "420"],
    );
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);
    write("before");

    // A dry run prints each hypervisor's one command and takes nothing.
    let dry = lab(b, &["snapshot", "--lab", f, "base", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert_eq!(
        dry.stdout.matches("lab-snapshot base").count(),
        2,
        "{}",
        dry.stdout
    );
    assert!(listed().is_empty());

    let taken = lab(
        b,
        &[
            "--format",
            "json",
            "snapshot",
            "--lab",
            f,
            "--consistent",
            "base",
        ],
    );
    assert_eq!(taken.code, 0, "{}{}", taken.stdout, taken.stderr);
    let taken = taken.json();
    assert_eq!(taken["summary"]["done"], 2, "{taken}");
    for n in taken["nodes"].as_array().unwrap() {
        assert!(n["note"].as_str().unwrap().contains("paused"), "{n}");
    }
    // The same name again: refused, and nothing changed.
    let again = lab(b, &["snapshot", "--lab", f, "base"]);
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("has a snapshot base already"),
        "{}",
        again.stderr
    );

    write("after");
    assert!(read("sn-1").contains("after"));
    let later = lab(b, &["snapshot", "--lab", f, "later"]);
    assert_eq!(later.code, 0, "{}{}", later.stdout, later.stderr);
    let l = listed();
    assert_eq!(names(&l), ["base", "later"]);
    assert_eq!(l[0]["nodes"], serde_json::json!(["sn-1", "sn-2"]));

    // Another user's run of a lab of the same name: their lab is not this one.
    let theirs = [("USER", "someone-else")];
    let gone = lab_with(b, &theirs, &["snapshot", "--delete", "--lab", f, "base"]);
    assert_ne!(gone.code, 0, "{}{}", gone.stdout, gone.stderr);
    let back = lab_with(b, &theirs, &["restore", "--lab", f, "base", "--drop-newer"]);
    assert_eq!(back.code, 1, "{}{}", back.stdout, back.stderr);
    assert!(back.stderr.contains("someone-else"), "{}", back.stderr);
    assert_eq!(names(&listed()), ["base", "later"]);
    assert!(read("sn-2").contains("after"));

    // A restore that would lose a later snapshot asks for --drop-newer, and changes nothing.
    let refused = lab(b, &["restore", "--lab", f, "base"]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("--drop-newer"),
        "{}",
        refused.stderr
    );
    let restored = lab(
        b,
        &[
            "--format",
            "json",
            "restore",
            "--lab",
            f,
            "base",
            "--drop-newer",
        ],
    );
    assert_eq!(restored.code, 0, "{}{}", restored.stdout, restored.stderr);
    assert_eq!(restored.json()["summary"]["done"], 2, "{}", restored.stdout);
    let ready = lab(b, &["wait", "--lab", f, "--wait-timeout", "420"]);
    assert_eq!(ready.code, 0, "{}{}", ready.stdout, ready.stderr);
    for n in ["sn-1", "sn-2"] {
        assert!(read(n).contains("before"), "{n}");
    }
    assert_eq!(names(&listed()), ["base"]);

    // Deleted, then one more taken: destroy takes it with the clones.
    let deleted = lab(b, &["snapshot", "--delete", "--lab", f, "base"]);
    assert_eq!(deleted.code, 0, "{}{}", deleted.stdout, deleted.stderr);
    assert!(listed().is_empty());
    let last = lab(b, &["snapshot", "--lab", f, "last"]);
    assert_eq!(last.code, 0, "{}{}", last.stdout, last.stderr);
    let destroyed = lab(b, &["destroy", "--lab", f, "--yes"]);
    assert_eq!(
        destroyed.code, 0,
        "{}{}",
        destroyed.stdout, destroyed.stderr
    );
    for n in &nodes {
        assert!(!exists(&bed, &n.hypervisor, &n.dataset), "{}", n.dataset);
    }
}

#[test]
fn a_push_brings_a_changed_template_into_running_nodes_and_save_copies_their_files_out() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    // The overlay's own template of a lab file value, and a hook that says what it was given.
    let overlay = copy_overlay(dir.path(), "pu");
    std::fs::write(overlay.join("etc/lab-note.j2"), "NOTE={{ node.note }}\n").unwrap();
    let hook = overlay.join("etc/lab/reload");
    std::fs::write(&hook, "#!/bin/sh\necho \"hook: $*\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("pu.yaml");
    let write = |note: &str| {
        std::fs::write(
            &file,
            format!(
                "include: {}\nlab: {{name: e2e-pu, id: 69, p2p_ipv4: 100.64.69.0/24}}\n\
                 overlay: pu\noverlays: {{pu: {{dir: {}}}}}\n\
                 vars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
                 defaults: {{node: {{vars: {{ospf_area: 0, vpp_workers: 1, note: {note}}}}}}}\n\
                 hypervisors:\n  hv0: {{mgmt_ipv4: 192.168.72.0/24}}\n  hv1: {{mgmt_ipv4: 192.168.73.0/24}}\n\
                 nodes:\n  pu-1: {{hypervisor: hv0, id: 1}}\n  pu-2: {{hypervisor: hv1, id: 1}}\n\
                 links:\n  - [pu-1, pu-2]\n",
                repo().join("labs/testbed.yaml").display(),
                overlay.display()
            ),
        )
        .unwrap();
    };
    write("one");
    let f = file.to_str().unwrap();
    let on_nodes = |words: &[&str]| -> Vec<String> {
        let mut args = vec!["exec", "--lab", f, "--"];
        args.extend(words);
        let r = lab(b, &args);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let mut lines: Vec<String> = r.stdout.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let uptimes = || -> Vec<f64> {
        on_nodes(&["cut", "-d", " ", "-f", "1", "/proc/uptime"])
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    let created = lab(
        b,
        &["create", "--lab", f, "--wait", "--wait-timeout", "420"],
    );
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);
    assert_eq!(
        on_nodes(&["cat", "/etc/lab-note"]),
        ["pu-1 | NOTE=one", "pu-2 | NOTE=one"]
    );
    let before = uptimes();

    // The lab file changes: the dry run names the one file and changes nothing.
    write("two");
    let files_of = |report: &serde_json::Value| -> Vec<serde_json::Value> {
        report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["files"].clone())
            .collect()
    };
    let dry = lab(b, &["--format", "json", "push", "--lab", f, "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    let one = serde_json::json!(["etc/lab-note"]);
    assert_eq!(
        files_of(&dry.json()),
        [one.clone(), one.clone()],
        "{}",
        dry.stdout
    );
    assert_eq!(
        on_nodes(&["cat", "/etc/lab-note"]),
        ["pu-1 | NOTE=one", "pu-2 | NOTE=one"]
    );

    let pushed = lab(b, &["--format", "json", "push", "--lab", f]);
    assert_eq!(pushed.code, 0, "{}{}", pushed.stdout, pushed.stderr);
    let pushed = pushed.json();
    assert_eq!(files_of(&pushed), [one.clone(), one], "{pushed}");
    for n in pushed["nodes"].as_array().unwrap() {
        assert_eq!(n["reload"]["hook"], true, "{n}");
        assert_eq!(
            n["reload"]["output"],
            serde_json::json!(["hook: etc/lab-note"]),
            "{n}"
        );
    }
    assert_eq!(
        on_nodes(&["cat", "/etc/lab-note"]),
        ["pu-1 | NOTE=two", "pu-2 | NOTE=two"]
    );
    // The guests ran on (no restart), their other files and modes as they were, and
    // `status` sees the clones hold the build.
    let after = uptimes();
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        on_nodes(&["stat", "-c", "%a %U", "/etc/bird/bird.conf"]),
        ["pu-1 | 640 bird", "pu-2 | 640 bird"]
    );
    let status = lab(b, &["--format", "json", "status", "--lab", f]).json();
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["overlay_drift"], false, "{n}");
    }
    // Again: nothing to bring, no hook run.
    let again = lab(b, &["--format", "json", "push", "--lab", f]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(again.json()["summary"]["unchanged"], 2, "{}", again.stdout);

    // `save` copies what the nodes have now: pu-1's note changed since (its hypervisor writes
    // into the clone for it: the bed's dataset guests' root is read-only), and the overlay's
    // `save` file's etc/bird.
    let model = lab_model::load(std::slice::from_ref(&file)).unwrap();
    let one = model.node("pu-1").unwrap();
    bed.ssh_script(
        0,
        &format!("echo NOTE=edited > {}/etc/lab-note", one.staging),
    )
    .unwrap();
    let saved_dir = tempfile::tempdir().unwrap();
    let to = saved_dir.path().join("configs");
    let saved = lab(
        b,
        &[
            "--format",
            "json",
            "save",
            "--lab",
            f,
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(saved.code, 0, "{}{}", saved.stdout, saved.stderr);
    let noted = lab(
        b,
        &[
            "save",
            "--lab",
            f,
            "--to",
            to.to_str().unwrap(),
            "--path",
            "etc/lab-note",
            "--path",
            "etc/none",
        ],
    );
    assert_eq!(noted.code, 0, "{}{}", noted.stdout, noted.stderr);
    assert!(
        noted.stdout.contains("it has no etc/none"),
        "{}",
        noted.stdout
    );
    let read = |rel: &str| std::fs::read_to_string(to.join(rel)).unwrap();
    assert_eq!(read("pu-1/etc/lab-note"), "NOTE=edited\n");
    assert_eq!(read("pu-2/etc/lab-note"), "NOTE=two\n");
    for node in ["pu-1", "pu-2"] {
        assert!(
            read(&format!("{node}/etc/bird/bird.conf")).contains("router id"),
            "{node}"
        );
    }
    let destroyed = lab(b, &["destroy", "--lab", f, "--yes"]);
    assert_eq!(
        destroyed.code, 0,
        "{}{}",
        destroyed.stdout, destroyed.stderr
    );
    let _ = &bed;
}

#[test]
fn create_starts_a_hypervisors_nodes_in_batches_in_the_order_of_links_and_start_after() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("st.yaml");
    // Along the links st-1, st-2, st-3; but st-2 waits for st-3.
    std::fs::write(
        &file,
        format!(
            "include: {}\nlab: {{name: e2e-st, id: 70, p2p_ipv4: 100.64.70.0/24}}\noverlay: bird\n\
             vars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
             defaults: {{node: {{vars: {{ospf_area: 0, vpp_workers: 1}}}}}}\n\
             hypervisors:\n  hv2: {{mgmt_ipv4: 192.168.74.0/24}}\n\
             nodes:\n  st-1: {{hypervisor: hv2, id: 1}}\n  st-2: {{hypervisor: hv2, id: 2, start_after: [st-3]}}\n\
             \x20 st-3: {{hypervisor: hv2, id: 3}}\n\
             links:\n  - [st-1, st-2]\n  - [st-2, st-3]\n",
            repo().join("labs/testbed.yaml").display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    let created = lab(
        b,
        &[
            "--format",
            "json",
            "create",
            "--lab",
            f,
            "--start-batch",
            "1",
            "--start-interval",
            "4",
        ],
    );
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);
    let nodes = by_node(&created.json());
    for (node, batch) in [("st-1", 1), ("st-3", 2), ("st-2", 3)] {
        let note = nodes[node]["note"].as_str().unwrap_or_default().to_owned();
        assert!(
            note.contains(&format!("started in batch {batch} of 3 on hv2")),
            "{node}: {note}"
        );
    }
    // When each domain's QEMU started, by libvirt's own process on hv2: one at a time, at
    // least the interval apart, in the order above.
    let started = |domain: &str| -> f64 {
        let out = bed
            .ssh_script(
                2,
                &format!(
                    "pid=$(pgrep -f -- 'guest={domain},' | head -n 1) && \
                     echo $(( $(date +%s) - $(ps -o etimes= -p \"$pid\") ))"
                ),
            )
            .unwrap();
        out.trim().parse().unwrap()
    };
    let (one, three, two) = (started("st-1"), started("st-3"), started("st-2"));
    assert!(
        three - one >= 3.0 && two - three >= 3.0,
        "{one} {three} {two}"
    );
    let destroyed = lab(b, &["destroy", "--lab", f, "--yes"]);
    assert_eq!(
        destroyed.code, 0,
        "{}{}",
        destroyed.stdout, destroyed.stderr
    );
}

/// Issue 23, reconcile: a node and two links added to the file of a running lab. `create`
/// again makes the node, plugs the new links' NICs into the running ends (across two
/// hypervisors too), pushes their new configuration, and the ends ping across the new links
/// while the old nodes run on. Taken out of the file again, the links and the node are only
/// reported; with `--prune` their NICs are unplugged and the node destroyed.
#[test]
fn create_again_adds_a_node_and_links_to_a_running_lab_and_prune_takes_them_out() {
    let bed = require();
    let build = tempfile::tempdir().unwrap();
    let b = build.path();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rc.yaml");
    let write = |more_nodes: &str, more_links: &str| {
        std::fs::write(
            &file,
            format!(
                "include: {}\nlab: {{name: e2e-rc, id: 71, p2p_ipv4: 100.64.71.0/24}}\noverlay: bird\n\
                 vars: {{domain: e2e.example, dns: [192.0.2.53]}}\n\
                 defaults: {{node: {{vars: {{ospf_area: 0, vpp_workers: 1}}}}}}\n\
                 hypervisors:\n  hv0: {{mgmt_ipv4: 192.168.75.0/24}}\n  hv1: {{mgmt_ipv4: 192.168.76.0/24}}\n\
                 nodes:\n  rc-1: {{hypervisor: hv0, id: 1}}\n  rc-2: {{hypervisor: hv1, id: 1}}\n{more_nodes}\
                 links:\n  - [rc-1, rc-2]\n{more_links}",
                repo().join("labs/testbed.yaml").display(),
            ),
        )
        .unwrap();
    };
    write("", "");
    let f = file.to_str().unwrap();
    let on = |node: &str, words: &[&str]| -> Run {
        let mut args = vec!["exec", "--lab", f, "--node", node, "--"];
        args.extend(words);
        lab(b, &args)
    };
    let uptime = |node: &str| -> f64 {
        let r = on(node, &["cut", "-d", " ", "-f", "1", "/proc/uptime"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        r.stdout.trim().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let nic_names = |node: &str| -> String {
        let r = on(node, &["ls", "/sys/class/net"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        r.stdout
            .split_whitespace()
            .filter(|w| w.starts_with("eth"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    let created = lab(
        b,
        &["create", "--lab", f, "--wait", "--wait-timeout", "420"],
    );
    assert_eq!(created.code, 0, "{}{}", created.stdout, created.stderr);
    let before = (uptime("rc-1"), uptime("rc-2"));

    // A new node rc-3 on hv0 linked to rc-1, and a second link between rc-1 (hv0) and rc-2
    // (hv1): the dry run plans the NICs and changes nothing.
    write(
        "  rc-3: {hypervisor: hv0, id: 2}\n",
        "  - [rc-1, rc-3]\n  - [rc-2, rc-1]\n",
    );
    let dry = lab(b, &["--format", "json", "create", "--lab", f, "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    let planned: Vec<String> = dry.json()["reconcile"]["nics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{} {} {} {}",
                n["node"], n["interface"], n["change"], n["result"]
            )
            .replace('"', "")
        })
        .collect();
    assert_eq!(
        planned,
        [
            "rc-1 eth2 add planned",
            "rc-1 eth3 add planned",
            "rc-2 eth2 add planned"
        ],
        "{}",
        dry.stdout
    );
    assert_eq!(nics(&bed, "hv0", "rc-1").split(' ').count(), 2);
    assert!(!domain_exists(&bed, "hv0", "rc-3"));

    let started = std::time::Instant::now();
    let again = lab(
        b,
        &[
            "--format",
            "json",
            "create",
            "--lab",
            f,
            "--wait",
            "--wait-timeout",
            "420",
        ],
    );
    eprintln!(
        "reconcile with one new node and two new links: {:?}",
        started.elapsed()
    );
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let doc = again.json();
    let nodes = by_node(&doc);
    assert_eq!(nodes["rc-3"]["result"], "done", "{doc}");
    assert_eq!(nodes["rc-1"]["result"], "unchanged", "{doc}");
    assert_eq!(nodes["rc-2"]["result"], "unchanged", "{doc}");
    let nics_done = doc["reconcile"]["nics"].as_array().unwrap();
    assert!(nics_done.iter().all(|n| n["result"] == "done"), "{doc}");
    let pushed = doc["reconcile"]["pushed"].as_array().unwrap();
    assert_eq!(pushed.len(), 2, "{doc}");
    for p in pushed {
        assert_eq!(p["reload"]["ok"], true, "{p}");
    }
    // Both ends of each new link have the NIC, named by the plan, and ping across it.
    assert_eq!(nic_names("rc-1"), "eth0 eth1 eth2 eth3");
    assert_eq!(nic_names("rc-2"), "eth0 eth1 eth2");
    let model = lab_model::load(std::slice::from_ref(&file)).unwrap();
    let peer_of = |node: &str, iface: &str| -> String {
        let n = model.node(node).unwrap();
        let i = n.interfaces.iter().find(|i| i.name == iface).unwrap();
        i.peer_ipv4.unwrap().to_string()
    };
    for (node, iface) in [
        ("rc-1", "eth3"),
        ("rc-2", "eth2"),
        ("rc-3", "eth1"),
        ("rc-1", "eth2"),
    ] {
        let peer = peer_of(node, iface);
        let ping = on(node, &["ping", "-c", "2", "-W", "3", &peer]);
        assert_eq!(
            ping.code, 0,
            "{node} {iface} to {peer}: {}{}",
            ping.stdout, ping.stderr
        );
    }
    // The old nodes ran on; status sees the lab as the file says.
    let after = (uptime("rc-1"), uptime("rc-2"));
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{before:?} -> {after:?}"
    );
    let status = lab(b, &["--format", "json", "status", "--lab", f]).json();
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["overlay_drift"], false, "{n}");
        assert!(n.get("nic_drift").is_none(), "{n}");
    }

    // Out of the file again: reported, nothing changed...
    write("", "");
    let kept = lab(b, &["--format", "json", "create", "--lab", f]);
    assert_eq!(kept.code, 3, "{}{}", kept.stdout, kept.stderr);
    let doc = kept.json();
    let gone: Vec<&str> = doc["reconcile"]["gone"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["node"].as_str().unwrap())
        .collect();
    assert_eq!(gone, ["rc-3"], "{doc}");
    assert!(
        doc["reconcile"]["nics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["result"] == "kept"),
        "{doc}"
    );
    assert_eq!(nic_names("rc-1"), "eth0 eth1 eth2 eth3");
    assert!(domain_exists(&bed, "hv0", "rc-3"));
    // ... and with --prune, taken out: NICs unplugged, rc-3 destroyed, the first link untouched.
    let pruned = lab(b, &["--format", "json", "create", "--lab", f, "--prune"]);
    assert_eq!(pruned.code, 0, "{}{}", pruned.stdout, pruned.stderr);
    let doc = pruned.json();
    assert!(
        doc["reconcile"]["nics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["result"] == "done"),
        "{doc}"
    );
    assert_eq!(doc["reconcile"]["pruned"][0]["result"], "done", "{doc}");
    assert!(!domain_exists(&bed, "hv0", "rc-3"));
    assert!(!exists(&bed, "hv0", &format!("{}/rc-3", bed.pool)));
    assert_eq!(nic_names("rc-1"), "eth0 eth1");
    assert_eq!(nic_names("rc-2"), "eth0 eth1");
    assert_eq!(nics(&bed, "hv0", "rc-1").split(' ').count(), 2);
    let first = peer_of("rc-1", "eth1");
    let ping = on("rc-1", &["ping", "-c", "2", "-W", "3", &first]);
    assert_eq!(ping.code, 0, "{}{}", ping.stdout, ping.stderr);

    let gone = lab(b, &["destroy", "--lab", f, "--yes", "-q"]);
    assert_eq!(gone.code, 0, "{}", gone.stderr);
}
