//! Behaviour of the `lab` command, driven through the real binary.
//!
//! Offline tests only (no hypervisor): loading, `config show`, `generate`. Each test works in
//! its own temporary copy of the repository's `labs/` and `overlays/`.
//!
//! Long: one test binary for all offline CLI behaviour (each binary costs a link), and most of
//! its length is tables of inputs and the errors they must give.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A scratch copy of the example labs and overlays.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["labs", "overlays"] {
            copy_tree(&repo().join(sub), &dir.path().join(sub));
        }
        Scratch { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    fn lab(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("LAB_FILE")
            .env_remove("LAB_BUILD")
            .env_remove("LAB_FORMAT")
            .output()
            .unwrap()
    }

    /// `nowhere.yaml`: the example's hypervisors at an address nothing listens on, so that a
    /// test that gets as far as connecting never reaches the live bed.
    fn nowhere(&self) {
        self.write(
            "nowhere.yaml",
            "hypervisors:\n  hv0: {ssh: \"root@127.0.0.1:1\"}\n  hv1: {ssh: \"root@127.0.0.1:1\"}\n  hv2: {ssh: \"root@127.0.0.1:1\"}\n",
        );
    }

    /// Runs `lab` and insists on success.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.lab(args);
        assert!(
            out.status.success(),
            "lab {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::metadata(from).unwrap().permissions()).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every entry below `dir` as `path (mode)` headers followed by file contents, in path order.
fn dump(dir: &Path) -> String {
    let mut out = String::new();
    let mut paths: Vec<PathBuf> = walk(dir);
    paths.sort();
    for p in paths {
        let rel = p.strip_prefix(dir).unwrap().display().to_string();
        let meta = fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            out.push_str(&format!("=== {rel}/ ({mode:04o})\n"));
        } else if meta.file_type().is_symlink() {
            out.push_str(&format!(
                "=== {rel} -> {}\n",
                fs::read_link(&p).unwrap().display()
            ));
        } else {
            out.push_str(&format!(
                "=== {rel} ({mode:04o})\n{}",
                fs::read_to_string(&p).unwrap()
            ));
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

const EXAMPLE: &str = "labs/vpp.yaml";

#[test]
fn example_lab_renders_every_file_as_in_the_snapshots() {
    let s = Scratch::new();
    s.ok(&["generate", "--lab", EXAMPLE]);
    s.ok(&[
        "generate",
        "--lab",
        EXAMPLE,
        "--overlay",
        "frr",
        "--host",
        "hv0",
    ]);
    for (overlay, hv, node) in [
        ("bird", "hv0", "vpp0-1"),
        ("bird", "hv0", "vpp0-2"),
        ("bird", "hv0", "vpp0-3"),
        ("bird", "hv0", "vpp0-4"),
        ("bird", "hv1", "vpp1-1"),
        ("bird", "hv1", "vpp1-2"),
        ("bird", "hv1", "vpp1-3"),
        ("bird", "hv1", "vpp1-4"),
        ("bird", "hv2", "vpp2-1"),
        ("bird", "hv2", "vpp2-2"),
        ("bird", "hv2", "vpp2-3"),
        ("bird", "hv2", "vpp2-4"),
        ("frr", "hv0", "vpp0-1"),
    ] {
        let base = s.path(&format!("build/{overlay}/{hv}"));
        let mut text = dump(&base.join(node));
        text.push_str(&format!("=== ../_meta/{node}.domain.xml\n"));
        text.push_str(&fs::read_to_string(base.join(format!("_meta/{node}.domain.xml"))).unwrap());
        insta::assert_snapshot!(format!("{overlay}-{node}"), text);
    }
    // One management network per hypervisor, with a DHCP host for each of its nodes.
    for (overlay, hv) in [
        ("bird", "hv0"),
        ("bird", "hv1"),
        ("bird", "hv2"),
        ("frr", "hv0"),
    ] {
        let path = s.path(&format!("build/{overlay}/_networks/{hv}/lab-vpp.xml"));
        let text = fs::read_to_string(&path).unwrap();
        insta::assert_snapshot!(format!("{overlay}-{hv}-network"), text);
    }
    // frr was asked for hv0 only
    assert!(!s.path("build/frr/hv1").exists());
    assert!(!s.path("build/frr/_networks/hv1").exists());
}

#[test]
fn output_is_deterministic_and_reruns_leave_nothing_stale() {
    let s = Scratch::new();
    s.ok(&["generate", "--lab", EXAMPLE, "--build", "one"]);
    s.ok(&["generate", "--lab", EXAMPLE, "--build", "two"]);
    assert_eq!(dump(&s.path("one")), dump(&s.path("two")));

    // A stale file in the output, and a file dropped from the overlay: both gone after a re-run.
    s.write("one/bird/hv0/vpp0-1/etc/stale", "left over\n");
    fs::remove_file(s.path("overlays/bird/etc/resolv.conf.j2")).unwrap();
    s.ok(&["generate", "--lab", EXAMPLE, "--build", "one"]);
    assert!(!s.path("one/bird/hv0/vpp0-1/etc/stale").exists());
    assert!(!s.path("one/bird/hv0/vpp0-1/etc/resolv.conf").exists());
    assert!(s.path("one/bird/hv0/vpp0-1/etc/hostname").exists());
    // Nothing but the trees, manifests and domain XML: no staging leftovers.
    let names: Vec<String> = fs::read_dir(s.path("one/bird/hv0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "leftovers: {names:?}");
}

#[test]
fn manifest_digest_changes_with_content_and_json_reports_what_was_written() {
    let s = Scratch::new();
    let json = s.ok(&[
        "--format", "json", "generate", "--lab", EXAMPLE, "--node", "vpp0-2",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["overlay"], "bird");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node"], "vpp0-2");
    let first = nodes[0]["digest"].as_str().unwrap().to_owned();

    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(s.path("build/bird/hv0/_meta/vpp0-2.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["digest"], first.as_str());
    assert_eq!(manifest["entries"]["etc/hostname"]["size"], 7);

    s.write("overlays/bird/etc/motd", "welcome\n");
    let json = s.ok(&[
        "--format", "json", "generate", "--lab", EXAMPLE, "--node", "vpp0-2",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_ne!(v["nodes"][0]["digest"].as_str().unwrap(), first);
}

#[test]
fn modes_come_from_the_overlay_and_blobs_win() {
    let s = Scratch::new();
    fs::set_permissions(
        s.path("overlays/bird/etc/bird"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let script = s.write("overlays/bird/usr/local/bin/hello", "#!/bin/sh\necho hi\n");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    s.write("overlays/bird/blobs/vpp0-1/etc/hostname", "from-a-blob\n");
    // The overlay root's own mode never leaks onto the guest's `/`.
    fs::set_permissions(s.path("overlays/bird"), fs::Permissions::from_mode(0o700)).unwrap();
    s.ok(&["generate", "--lab", EXAMPLE, "--host", "hv0"]);
    let mode = |rel: &str| fs::metadata(s.path(rel)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("build/bird/hv0/vpp0-1"), 0o755);
    assert_eq!(mode("build/bird/hv0/vpp0-1/etc/bird"), 0o750);
    assert_eq!(mode("build/bird/hv0/vpp0-1/usr/local/bin/hello"), 0o755);
    assert_eq!(mode("build/bird/hv0/vpp0-1/usr/local"), 0o755);
    assert_eq!(
        fs::read_to_string(s.path("build/bird/hv0/vpp0-1/etc/hostname")).unwrap(),
        "from-a-blob\n"
    );
    assert_eq!(
        fs::read_to_string(s.path("build/bird/hv0/vpp0-2/etc/hostname")).unwrap(),
        "vpp0-2\n"
    );
}

#[test]
fn later_lab_files_and_includes_override_earlier_ones() {
    let s = Scratch::new();
    s.write(
        "labs/override.yaml",
        "lab: {id: 7}\nhypervisors:\n  hv1: {snapshot: \"*-release\"}\nnodes:\n  vpp0-1: {vars: {vpp_workers: 4}}\nvars: {dns: [9.9.9.9]}\n",
    );
    let out = s.ok(&[
        "--format",
        "json",
        "config",
        "show",
        "--lab",
        EXAMPLE,
        "--lab",
        "labs/override.yaml",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["lab"]["id"], 7, "scalars are replaced");
    assert_eq!(v["lab"]["name"], "vpp", "maps merge deeply");
    assert_eq!(v["hypervisors"]["hv1"]["snapshot"], "*-release");
    assert_eq!(
        v["hypervisors"]["hv1"]["pool"], "ssd-vol0",
        "defaults apply beneath entries"
    );
    assert_eq!(v["hypervisors"]["hv0"]["snapshot"], "base");
    assert_eq!(v["nodes"]["vpp0-1"]["vars"]["vpp_workers"], 4);
    assert_eq!(
        v["nodes"]["vpp0-1"]["vars"]["ospf_area"], 0,
        "node defaults survive an override"
    );
    assert_eq!(
        v["vars"]["dns"],
        serde_json::json!(["9.9.9.9"]),
        "lists are replaced"
    );

    // `include` is merged first, the including file on top.
    s.write(
        "labs/base.yaml",
        "lab: {name: base, id: 1}\nvars: {a: from-base, b: from-base}\n",
    );
    s.write(
        "labs/top.yaml",
        "include: [base.yaml, vpp.yaml]\nvars: {b: from-top}\n",
    );
    let out = s.ok(&[
        "--format",
        "json",
        "config",
        "show",
        "--lab",
        "labs/top.yaml",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["lab"]["name"], "vpp",
        "a later include overrides an earlier one"
    );
    assert_eq!(v["vars"]["b"], "from-top");
    assert_eq!(v["vars"]["domain"], "lab.example");
}

#[test]
fn explain_names_the_file_and_line_of_every_value() {
    let s = Scratch::new();
    s.write(
        "labs/override.yaml",
        "hypervisors:\n  hv1:\n    snapshot: \"*-release\"\n",
    );
    let out = s.ok(&[
        "config",
        "show",
        "--explain",
        "--lab",
        EXAMPLE,
        "--lab",
        "labs/override.yaml",
    ]);
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in\n{out}"))
            .to_owned()
    };
    assert!(
        line("snapshot: \"*-release\"").ends_with("# labs/override.yaml:3"),
        "{out}"
    );
    assert!(line("name: vpp").ends_with("# labs/vpp.yaml:7"), "{out}");
    assert!(
        out.contains("pool: ssd-vol0  # labs/testbed.yaml:18"),
        "defaults are explained: {out}"
    );
    insta::assert_snapshot!("explain", out);
}

/// One bad input: files to write over the example, the command, and what stderr must say.
struct Bad {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    code: i32,
    says: &'static [&'static str],
}

const BAD: &[Bad] = &[
    Bad {
        name: "a link end with an interface the node lacks",
        files: &[],
        args: &["link", "down", "--lab", "labs/vpp.yaml", "vpp0-1:eth9"],
        code: 2,
        says: &[
            "node vpp0-1 has no interface `eth9`",
            "its links: eth1, eth2, eth3",
        ],
    },
    Bad {
        name: "a link end that is the management interface",
        files: &[],
        args: &["link", "up", "--lab", "labs/vpp.yaml", "vpp0-1:eth0"],
        code: 2,
        says: &["vpp0-1:eth0 is the management interface, not a link"],
    },
    Bad {
        name: "two ends of different links",
        files: &[],
        args: &[
            "link",
            "flap",
            "--lab",
            "labs/vpp.yaml",
            "vpp0-1:eth1",
            "vpp0-3:eth1",
        ],
        code: 2,
        says: &[
            "are not the two ends of one link",
            "vpp0-1:eth1 is wired to vpp0-2:eth1",
        ],
    },
    Bad {
        name: "a link end that is not NODE:IFACE",
        files: &[],
        args: &["link", "down", "--lab", "labs/vpp.yaml", "vpp0-1"],
        code: 2,
        says: &["`vpp0-1` is not NODE:IFACE"],
    },
    Bad {
        name: "a capture of a node the lab lacks",
        files: &[],
        args: &[
            "capture",
            "--lab",
            "labs/vpp.yaml",
            "vpp0-9",
            "eth1",
            "-w",
            "x.pcap",
        ],
        code: 2,
        says: &["no node `vpp0-9`", "did you mean `vpp0-1`?"],
    },
    Bad {
        name: "a node started after one on another hypervisor",
        files: &[(
            "labs/v.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-2:\n    start_after: [vpp1-1]\n",
        )],
        args: &["generate", "--lab", "labs/v.yaml"],
        code: 2,
        says: &[
            "labs/v.yaml:4",
            "nodes.vpp0-2.start_after.0",
            "`vpp1-1`, which is on hv1 and not on hv0",
        ],
    },
    Bad {
        name: "start_after in a circle",
        files: &[(
            "labs/v.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-2: {start_after: [vpp0-3]}\n  vpp0-3: {start_after: [vpp0-2]}\n",
        )],
        args: &["generate", "--lab", "labs/v.yaml"],
        code: 2,
        says: &["start_after makes a cycle through node `vpp0-2`"],
    },
    Bad {
        name: "a batch of no node",
        files: &[],
        args: &[
            "create",
            "--lab",
            "labs/vpp.yaml",
            "--start-batch",
            "0",
            "--dry-run",
        ],
        code: 2,
        says: &["--start-batch"],
    },
    Bad {
        name: "a save path that leaves the guest's root",
        files: &[],
        args: &["save", "--lab", "labs/vpp.yaml", "--path", "../etc"],
        code: 2,
        says: &["--path `../etc` must be relative to the guests' `/`"],
    },
    Bad {
        name: "a snapshot name with a slash",
        files: &[],
        args: &["snapshot", "--lab", "labs/vpp.yaml", "a/b"],
        code: 2,
        says: &["`a/b` is not a snapshot name", "[a-z0-9][a-z0-9_.-]*"],
    },
    Bad {
        name: "a restore to a name that looks like an option",
        files: &[],
        args: &["restore", "--lab", "labs/vpp.yaml", "--", "-r"],
        code: 2,
        says: &["`-r` is not a snapshot name"],
    },
    Bad {
        name: "a deletion that would pause the nodes",
        files: &[],
        args: &[
            "snapshot",
            "--lab",
            "labs/vpp.yaml",
            "--delete",
            "--consistent",
            "x",
        ],
        code: 2,
        says: &["--consistent"],
    },
    Bad {
        name: "an impairment of nothing",
        files: &[],
        args: &["link", "set", "--lab", "labs/vpp.yaml", "vpp0-1:eth1"],
        code: 2,
        says: &["needs at least one of --delay"],
    },
    Bad {
        name: "a loss over 100%",
        files: &[],
        args: &[
            "link",
            "set",
            "--lab",
            "labs/vpp.yaml",
            "vpp0-1:eth1",
            "--loss",
            "150%",
        ],
        code: 2,
        says: &["`150%` is not between 0% and 100%"],
    },
    Bad {
        name: "more jitter than delay",
        files: &[],
        args: &[
            "link",
            "set",
            "--lab",
            "labs/vpp.yaml",
            "vpp0-1:eth1",
            "--delay",
            "5ms",
            "--jitter",
            "10ms",
        ],
        code: 2,
        says: &["--jitter (10 ms) is more than --delay (5 ms)"],
    },
    Bad {
        name: "an impairment from a node the link does not end at",
        files: &[],
        args: &[
            "link",
            "set",
            "--lab",
            "labs/vpp.yaml",
            "vpp0-1:eth1",
            "--from",
            "vpp2-1",
            "--delay",
            "5ms",
        ],
        code: 2,
        says: &["--from vpp2-1: the link is vpp0-1:eth1 -- vpp0-2:eth1"],
    },
    Bad {
        name: "a capture filter word that is an option",
        files: &[],
        args: &[
            "capture",
            "--lab",
            "labs/vpp.yaml",
            "vpp0-1",
            "eth1",
            "-w",
            "x.pcap",
            "--",
            "-c",
            "5",
        ],
        code: 2,
        says: &["`-c` is not part of a capture filter"],
    },
    Bad {
        name: "a declared impairment with a value that is not a time",
        files: &[(
            "labs/v.yaml",
            "include: vpp.yaml\nlinks:\n  - ends: [vpp0-1, vpp0-2]\n    impair: {delay: 5, loss: 1%}\n",
        )],
        args: &["generate", "--lab", "labs/v.yaml"],
        code: 2,
        says: &["labs/v.yaml:4", "links.0.impair.delay", "`5` is not a time"],
    },
    Bad {
        name: "a declared impairment from a node the link does not end at",
        files: &[(
            "labs/v.yaml",
            "include: vpp.yaml\nlinks:\n  - [vpp0-1, vpp0-3]\n  - ends: [vpp0-1, vpp0-2]\n    impair:\n      from: vpp0-3\n      delay: 5ms\n",
        )],
        args: &["generate", "--lab", "labs/v.yaml"],
        code: 2,
        says: &[
            "labs/v.yaml:6",
            "links.1.impair.from",
            "`vpp0-3` is not an end of this link",
        ],
    },
    Bad {
        name: "a capture without its interface",
        files: &[],
        args: &[
            "capture",
            "--lab",
            "labs/vpp.yaml",
            "vpp0-1",
            "-w",
            "x.pcap",
        ],
        code: 2,
        says: &["which interface of vpp0-1?"],
    },
    Bad {
        name: "a declared check with a bad regex",
        files: &[(
            "labs/v.yaml",
            "include: vpp.yaml\nvalidate:\n  frr-up:\n    command: vtysh -c 'show version'\n    regex: \"FRRouting (\"\n",
        )],
        args: &["validate", "--lab", "labs/v.yaml"],
        code: 2,
        says: &[
            "labs/v.yaml:5",
            "validate.frr-up.regex",
            "is not a regular expression",
        ],
    },
    Bad {
        name: "a declared check on a node the lab lacks",
        files: &[(
            "labs/v.yaml",
            "include: vpp.yaml\nvalidate:\n  up:\n    command: uptime\n    nodes: [vpp0-1, vpp9-1]\n",
        )],
        args: &["validate", "--lab", "labs/v.yaml"],
        code: 2,
        says: &[
            "labs/v.yaml:5",
            "validate.up.nodes",
            "`vpp9-1` names no node of the lab",
            "did you mean `vpp0-1`?",
        ],
    },
    Bad {
        name: "a declared check without a command",
        files: &[(
            "labs/v.yaml",
            "include: vpp.yaml\nvalidate:\n  up:\n    contains: load average\n",
        )],
        args: &["validate", "--lab", "labs/v.yaml"],
        code: 2,
        says: &["labs/v.yaml:", "validate.up", "missing field `command`"],
    },
    Bad {
        name: "validate without a build says how to make one",
        files: &[],
        args: &["validate", "--lab", "labs/vpp.yaml", "--node", "vpp0-1"],
        code: 2,
        says: &["lab generate` or `lab create` with overlay bird first"],
    },
    Bad {
        name: "a gateway outside the management prefix",
        files: &[(
            "labs/gw.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv1:\n    mgmt: {gateway: 192.168.99.1}\n",
        )],
        args: &["generate", "--lab", "labs/gw.yaml"],
        code: 2,
        says: &[
            "labs/gw.yaml:4",
            "hypervisors.hv1.mgmt.gateway",
            "192.168.99.1 is not a host of 192.168.21.0/24",
        ],
    },
    Bad {
        name: "a gateway that is neither a number nor an address",
        files: &[(
            "labs/gw.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv1:\n    mgmt: {gateway: first}\n",
        )],
        args: &["generate", "--lab", "labs/gw.yaml"],
        code: 2,
        says: &["labs/gw.yaml:4", "\"first\" is neither a host number"],
    },
    Bad {
        name: "a gateway on a network lab does not serve",
        files: &[(
            "labs/gw.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv1:\n    mgmt: {mode: existing, network: default, gateway: 1}\n",
        )],
        args: &["generate", "--lab", "labs/gw.yaml"],
        code: 2,
        says: &[
            "labs/gw.yaml:4",
            "in mode existing it is not lab's to choose",
        ],
    },
    Bad {
        name: "reservations on lab's own network",
        files: &[(
            "labs/rs.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv1:\n    mgmt: {mode: isolated, reserve: true}\n",
        )],
        args: &["generate", "--lab", "labs/rs.yaml"],
        code: 2,
        says: &[
            "labs/rs.yaml:4",
            "lab's own network already has every node's reservation",
        ],
    },
    Bad {
        name: "reservations without planned addresses",
        files: &[(
            "labs/rs.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv1:\n    mgmt_ipv4: null\n    mgmt: {network: default, reserve: true}\n",
        )],
        args: &["generate", "--lab", "labs/rs.yaml"],
        code: 2,
        says: &[
            "labs/rs.yaml:5",
            "`reserve` needs the hypervisor's `mgmt_ipv4`",
        ],
    },
    Bad {
        name: "a node on the address the gateway setting took",
        files: &[(
            "labs/gw.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv1:\n    mgmt: {gateway: 1}\n",
        )],
        args: &["generate", "--lab", "labs/gw.yaml"],
        code: 2,
        says: &[
            "vpp.yaml:",
            "nodes.vpp1-1.id",
            "id 1 gives 192.168.21.1, the management gateway of `hv1`",
        ],
    },
    Bad {
        name: "a name the template context lacks, with the closest it has",
        files: &[(
            "overlays/bird/etc/typo.j2",
            "first line\n{% for l in node.lnks %}{{ l.name }}\n{% endfor %}",
        )],
        args: &["generate", "--lab", "labs/vpp.yaml"],
        code: 2,
        says: &[
            "overlays/bird/etc/typo.j2:2",
            "`node.lnks` is undefined (did you mean `node.links`?)",
        ],
    },
    Bad {
        name: "a loop variable's missing key, with the closest key the context has",
        files: &[(
            "overlays/bird/etc/typo.j2",
            "{% for l in node.links %}{{ l.peer_ipv5 }}\n{% endfor %}",
        )],
        args: &["generate", "--lab", "labs/vpp.yaml"],
        code: 2,
        says: &[
            "overlays/bird/etc/typo.j2:1",
            "`l.peer_ipv5` is undefined (did you mean `l.peer_ipv4`?)",
        ],
    },
    Bad {
        name: "broken YAML names file and line",
        files: &[("labs/bad.yaml", "lab:\n  name: x\n  id: [1, 2\nnodes: {}\n")],
        args: &["config", "show", "--lab", "labs/bad.yaml"],
        code: 2,
        says: &["labs/bad.yaml:", "invalid YAML"],
    },
    Bad {
        name: "unknown key with a suggestion",
        files: &[(
            "labs/typo.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv0:\n    poool: tank\n",
        )],
        args: &["generate", "--lab", "labs/typo.yaml"],
        code: 2,
        says: &[
            "labs/typo.yaml:4",
            "hypervisors.hv0.poool",
            "unknown key `poool`",
            "did you mean `pool`?",
        ],
    },
    Bad {
        name: "unknown top-level key",
        files: &[("labs/typo.yaml", "include: vpp.yaml\nnode: {}\n")],
        args: &["generate", "--lab", "labs/typo.yaml"],
        code: 2,
        says: &[
            "labs/typo.yaml:2",
            "unknown key `node`",
            "did you mean `nodes`?",
        ],
    },
    Bad {
        name: "wrong type",
        files: &[(
            "labs/t.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-1: {id: one}\n",
        )],
        args: &["generate", "--lab", "labs/t.yaml"],
        code: 2,
        says: &["labs/t.yaml:3", "nodes.vpp0-1.id", "invalid type"],
    },
    Bad {
        name: "node name with shell metacharacters",
        files: &[(
            "labs/n.yaml",
            "include: vpp.yaml\nnodes:\n  \"x;touch /tmp/pwned\": {hypervisor: hv0, id: 9}\n",
        )],
        args: &["generate", "--lab", "labs/n.yaml"],
        code: 2,
        says: &["labs/n.yaml:3", "is not a valid node name"],
    },
    Bad {
        name: "an ssh option that runs a program (review 3, N9)",
        files: &[(
            "labs/o.yaml",
            "include: vpp.yaml\ndefaults:\n  node:\n    ssh:\n      options: [User=root, ProxyCommand=/usr/sbin/reboot]\n",
        )],
        args: &["generate", "--lab", "labs/o.yaml"],
        code: 2,
        says: &[
            "labs/o.yaml:5",
            "ProxyCommand=/usr/sbin/reboot",
            "never *Command",
        ],
    },
    Bad {
        name: "dataset with a leading dash",
        files: &[(
            "labs/d.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv0: {proto: \"ssd-vol0/-rf\"}\n",
        )],
        args: &["generate", "--lab", "labs/d.yaml"],
        code: 2,
        says: &[
            "labs/d.yaml:3",
            "hypervisors.hv0.proto",
            "is not a valid dataset name",
        ],
    },
    Bad {
        name: "hostname with a space",
        files: &[(
            "labs/h.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-1: {hostname: \"a b\"}\n",
        )],
        args: &["generate", "--lab", "labs/h.yaml"],
        code: 2,
        says: &[
            "labs/h.yaml:3",
            "nodes.vpp0-1.hostname",
            "is not a valid hostname",
        ],
    },
    Bad {
        name: "undefined hypervisor",
        files: &[(
            "labs/u.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-1: {hypervisor: hv9}\n",
        )],
        args: &["generate", "--lab", "labs/u.yaml"],
        code: 2,
        says: &[
            "labs/u.yaml:3",
            "hypervisor `hv9` is not defined",
            "did you mean `hv0`?",
        ],
    },
    Bad {
        name: "duplicate node names",
        files: &[(
            "labs/dup.yaml",
            "include: vpp.yaml\nnodes:\n  r9: {hypervisor: hv0, id: 90}\n  r9: {hypervisor: hv1, id: 91}\n",
        )],
        args: &["generate", "--lab", "labs/dup.yaml"],
        code: 2,
        says: &["labs/dup.yaml:4", "r9"],
    },
    Bad {
        name: "proto verbs without a proto section",
        files: &[(
            "labs/np.yaml",
            "hypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\n",
        )],
        args: &["proto", "status", "--lab", "labs/np.yaml"],
        code: 2,
        says: &["no `proto:` section"],
    },
    Bad {
        name: "proto source that is not a hypervisor",
        files: &[(
            "labs/ps.yaml",
            "hypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\nproto: {source: hv9}\n",
        )],
        args: &["proto", "sync", "--lab", "labs/ps.yaml"],
        code: 2,
        says: &[
            "labs/ps.yaml:3",
            "proto.source",
            "hypervisor `hv9` is not defined",
            "did you mean `hv0`?",
        ],
    },
    Bad {
        name: "two nodes on one dataset",
        files: &[(
            "labs/s.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-2: {dataset: ssd-vol0/vpp0-1}\n",
        )],
        args: &["generate", "--lab", "labs/s.yaml"],
        code: 2,
        says: &["nodes.vpp0-2.dataset", "already used by node `vpp0-1`"],
    },
    Bad {
        name: "include cycle",
        files: &[
            ("labs/a.yaml", "include: b.yaml\n"),
            ("labs/b.yaml", "include: a.yaml\n"),
        ],
        args: &["config", "show", "--lab", "labs/a.yaml"],
        code: 2,
        says: &["labs/b.yaml:1", "loops back"],
    },
    Bad {
        name: "missing lab file",
        files: &[],
        args: &["generate", "--lab", "labs/nope.yaml"],
        code: 1,
        says: &["cannot read labs/nope.yaml"],
    },
    Bad {
        name: "undefined template variable names template, line and node",
        files: &[(
            "overlays/bird/etc/motd.j2",
            "hello\n{{ node.no_such_key }}\n",
        )],
        args: &["generate", "--lab", "labs/vpp.yaml"],
        code: 2,
        says: &["overlays/bird/etc/motd.j2:2", "node `vpp", "undefined"],
    },
    Bad {
        name: "template syntax error",
        files: &[("overlays/bird/etc/motd.j2", "{% for x in %}\n")],
        args: &["generate", "--lab", "labs/vpp.yaml"],
        code: 2,
        says: &["overlays/bird/etc/motd.j2:1", "syntax error"],
    },
    Bad {
        name: "unknown overlay",
        files: &[],
        args: &["generate", "--lab", "labs/vpp.yaml", "--overlay", "brid"],
        code: 2,
        says: &["overlay `brid` is not defined", "did you mean `bird`?"],
    },
    Bad {
        name: "a MAC twice in the lab names both places",
        files: &[(
            "labs/m.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-2: {mac: \"52:54:00:02:00:01\"}\n",
        )],
        args: &["generate", "--lab", "labs/m.yaml"],
        code: 2,
        says: &[
            "labs/m.yaml:3",
            "MAC 52:54:00:02:00:01",
            "is also the MAC of `vpp0-1` eth0 (set at labs/vpp.yaml:25)",
        ],
    },
    Bad {
        name: "a MAC in another hypervisor's range",
        files: &[(
            "labs/m.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-2:\n    interfaces: {eth1: {mac: \"52:54:07:02:01:09\"}}\n",
        )],
        args: &["generate", "--lab", "labs/m.yaml"],
        code: 2,
        says: &[
            "labs/m.yaml:4",
            "is in hypervisor `hv1`'s range",
            "runs on `hv0`",
        ],
    },
    Bad {
        name: "a MAC set for an interface the node does not have",
        files: &[(
            "labs/m.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-2:\n    interfaces: {eth7: {mac: \"02:00:00:00:00:07\"}}\n",
        )],
        args: &["generate", "--lab", "labs/m.yaml"],
        code: 2,
        says: &[
            "labs/m.yaml:4",
            "has no interface `eth7` (it has eth0..eth2)",
        ],
    },
    Bad {
        name: "a multicast MAC",
        files: &[(
            "labs/m.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-2: {mac: \"01:00:5e:00:00:01\"}\n",
        )],
        args: &["generate", "--lab", "labs/m.yaml"],
        code: 2,
        says: &["labs/m.yaml:3", "is not a valid MAC address", "unicast"],
    },
    Bad {
        name: "a link to an unknown node",
        files: &[(
            "labs/l.yaml",
            "include: vpp.yaml\nlinks:\n  - [vpp0-1, vpp9-1]\n",
        )],
        args: &["generate", "--lab", "labs/l.yaml"],
        code: 2,
        says: &[
            "labs/l.yaml:3",
            "node `vpp9-1` is not defined under `nodes`",
        ],
    },
    Bad {
        name: "more links than the node's maximum",
        files: &[(
            "labs/x.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-1: {max_links: 3}\n",
        )],
        args: &["generate", "--lab", "labs/x.yaml"],
        code: 2,
        says: &[
            "labs/x.yaml:3",
            "`vpp0-1` has 4 links, more than its `max_links` (3)",
        ],
    },
    Bad {
        name: "wire ports beyond 65535",
        files: &[(
            "labs/p.yaml",
            "include: vpp.yaml\nlab: {wire_port_base: 65530}\n",
        )],
        args: &["generate", "--lab", "labs/p.yaml"],
        code: 2,
        says: &[
            "link 3 would need UDP port 65536",
            "set `lab.wire_port_base` lower",
        ],
    },
    Bad {
        // An overlay that names a file: said with the line that names it.
        name: "an overlay dir that is a file",
        files: &[
            (
                "labs/o.yaml",
                "include: vpp.yaml\noverlays:\n  bird: {dir: ../README.md}\n",
            ),
            ("README.md", "not an overlay\n"),
        ],
        args: &["generate", "--lab", "labs/o.yaml"],
        code: 2,
        says: &["is not a directory (overlay `bird`, set at labs/o.yaml:3"],
    },
    Bad {
        // Review 3, N16: QEMU would bind random ports, and every link would be dead.
        name: "wire ports from port 0",
        files: &[(
            "labs/p.yaml",
            "include: vpp.yaml\nlab: {wire_port_base: 0}\n",
        )],
        args: &["generate", "--lab", "labs/p.yaml"],
        code: 2,
        says: &["labs/p.yaml:2", "wire_port_base 0 is below 1024"],
    },
    Bad {
        name: "wire ports in another lab id's range",
        files: &[(
            "labs/p.yaml",
            "include: vpp.yaml\nlab: {wire_port_base: 20000}\n",
        )],
        args: &["generate", "--lab", "labs/p.yaml"],
        code: 2,
        says: &[
            "labs/p.yaml:2",
            "wire ports 20000-20029 would take lab id 0's (20000-20159)",
        ],
    },
    Bad {
        name: "wire ports that reach into the next lab id's range",
        files: &[(
            "labs/p.yaml",
            "include: vpp.yaml\nlab: {wire_port_base: 20460}\n",
        )],
        args: &["generate", "--lab", "labs/p.yaml"],
        code: 2,
        says: &[
            "labs/p.yaml:2",
            "would take lab id 3's (20480-20639)",
            "choose a base below 20000 or from 60960 on",
        ],
    },
    Bad {
        name: "a cross-hypervisor link without underlay addresses",
        files: &[(
            "labs/u.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv1: {underlay: null}\n",
        )],
        args: &["generate", "--lab", "labs/u.yaml"],
        code: 2,
        says: &[
            "link 12 crosses from `hv0` to `hv1`",
            "`hv1` needs `underlay`",
        ],
    },
    Bad {
        name: "a node on the management gateway address",
        files: &[(
            "labs/g.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-9: {hypervisor: hv0, id: 254}\n",
        )],
        args: &["generate", "--lab", "labs/g.yaml"],
        code: 2,
        says: &["labs/g.yaml:3", "the management gateway of `hv0`"],
    },
    Bad {
        name: "an existing network needs its name",
        files: &[(
            "labs/e.yaml",
            "include: vpp.yaml\nhypervisors:\n  hv0: {mgmt: {mode: existing}}\n",
        )],
        args: &["generate", "--lab", "labs/e.yaml"],
        code: 2,
        says: &["labs/e.yaml:3", "mode `existing` needs `network`"],
    },
    Bad {
        name: "an empty overlay dir",
        files: &[(
            "labs/o.yaml",
            "include: vpp.yaml\noverlays:\n  bird: {dir: \"\"}\n",
        )],
        args: &["generate", "--lab", "labs/o.yaml"],
        code: 2,
        says: &["labs/o.yaml:3", "an overlay's `dir` cannot be empty"],
    },
    Bad {
        name: "a missing overlay dir names where it was set",
        files: &[(
            "labs/o.yaml",
            "include: vpp.yaml\noverlays:\n  bird: {dir: ../overlays/nowhere}\n",
        )],
        args: &["generate", "--lab", "labs/o.yaml"],
        code: 2,
        says: &["overlays/nowhere: does not exist", "set at labs/o.yaml:3"],
    },
    Bad {
        name: "an overlay that holds the build directory",
        files: &[],
        args: &[
            "generate",
            "--lab",
            "labs/vpp.yaml",
            "--build",
            "overlays/bird/build",
        ],
        code: 2,
        says: &[
            "holds the build directory overlays/bird/build",
            "labs/testbed.yaml:",
        ],
    },
    Bad {
        name: "a node on its prefix's broadcast address",
        files: &[(
            "labs/b.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-9: {hypervisor: hv0, id: 255}\n",
        )],
        args: &["generate", "--lab", "labs/b.yaml"],
        code: 2,
        says: &["labs/b.yaml:3", "not the network or broadcast address"],
    },
    Bad {
        name: "a node on its prefix's network address",
        files: &[(
            "labs/n.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-9: {hypervisor: hv0, id: 0}\n",
        )],
        args: &["generate", "--lab", "labs/n.yaml"],
        code: 2,
        says: &["labs/n.yaml:3", "not the network or broadcast address"],
    },
    Bad {
        name: "a node's dataset outside its hypervisor's pool",
        files: &[(
            "labs/d.yaml",
            "include: vpp.yaml\nnodes:\n  vpp0-1: {dataset: elsewhere/vpp0-1}\n",
        )],
        args: &["generate", "--lab", "labs/d.yaml"],
        code: 2,
        says: &["labs/d.yaml:3", "dataset `elsewhere/vpp0-1` is not in pool"],
    },
    Bad {
        name: "a console pattern grep cannot read",
        files: &[],
        args: &["wait", "--lab", "labs/vpp.yaml", "--for", "console:("],
        code: 2,
        says: &["`(` is not an extended regular expression"],
    },
    Bad {
        name: "a refresh jitter beyond a day",
        files: &[],
        args: &[
            "proto",
            "refresh",
            "--lab",
            "labs/vpp.yaml",
            "--jitter",
            "18446744073709551615",
        ],
        code: 2,
        says: &["--jitter"],
    },
    Bad {
        name: "two lab files that name different labs",
        files: &[("labs/other.yaml", "lab: {name: other, id: 9}\n")],
        args: &[
            "generate",
            "--lab",
            "labs/vpp.yaml",
            "--lab",
            "labs/other.yaml",
        ],
        code: 2,
        says: &[
            "labs/other.yaml:1",
            "names lab `other`, but labs/vpp.yaml:",
            "names lab `vpp`",
        ],
    },
    Bad {
        name: "a lock wait beyond a day",
        files: &[],
        args: &[
            "create",
            "--lab",
            "labs/vpp.yaml",
            "--lock-wait",
            "18446744073709551615",
        ],
        code: 2,
        says: &["--lock-wait"],
    },
    Bad {
        name: "an impossible subnet in a template",
        files: &[(
            "overlays/bird/etc/x.j2",
            "{{ '10.0.0.0/24' | subnet(99, 0) }}\n",
        )],
        args: &["generate", "--lab", "labs/vpp.yaml"],
        code: 2,
        says: &[
            "overlays/bird/etc/x.j2:1",
            "/99 is not an IPv4 prefix length",
        ],
    },
    Bad {
        name: "unknown node in a filter",
        files: &[],
        args: &["generate", "--lab", "labs/vpp.yaml", "--node", "vpp0-9"],
        code: 2,
        says: &["node `vpp0-9` is not in the lab", "did you mean"],
    },
    Bad {
        name: "a node pattern that matches nothing",
        files: &[],
        args: &["generate", "--lab", "labs/vpp.yaml", "--node", "vpp9-*"],
        code: 2,
        says: &["no node of the lab is named like `vpp9-*`"],
    },
    Bad {
        name: "a grace time for start",
        files: &[],
        args: &["start", "--lab", "labs/vpp.yaml", "--grace", "5"],
        code: 2,
        says: &["--grace is for stop and restart"],
    },
];

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    for case in BAD {
        let s = Scratch::new();
        for (rel, text) in case.files {
            s.write(rel, text);
        }
        let out = s.lab(case.args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(case.code),
            "{}: {stderr}",
            case.name
        );
        for part in case.says {
            assert!(
                stderr.contains(part),
                "{}: expected {part:?} in: {stderr}",
                case.name
            );
        }
        assert!(!s.path("build").exists(), "{}: wrote output", case.name);
        // Asked for JSON, a script gets the error as a document on stdout too, usage errors
        // included.
        {
            let json = s.lab(&[&["--format", "json"], case.args].concat());
            let doc: serde_json::Value = serde_json::from_slice(&json.stdout)
                .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e})", case.name));
            assert_eq!(doc["exit_code"], case.code, "{}", case.name);
            assert!(
                doc["error"].as_str().unwrap().contains(case.says[0]),
                "{}: {doc}",
                case.name
            );
        }
    }
}

#[test]
fn the_gateway_setting_node_links_and_the_built_in_network() {
    let s = Scratch::new();
    // hv0's gateway is host 100, so a node may take the last host; the overlay's template
    // loops over node.links.
    s.write(
        "labs/gw.yaml",
        "include: vpp.yaml\nhypervisors:\n  hv0:\n    mgmt: {gateway: 100}\n\
         nodes:\n  vpp0-9: {hypervisor: hv0, id: 254}\n",
    );
    s.write(
        "overlays/bird/etc/links.j2",
        "{% for l in node.links %}{{ l.name }} {{ l.ipv4 }} {{ l.peer }}\n{% endfor %}",
    );
    let out = s.lab(&["generate", "--lab", "labs/gw.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "network lab-vpp of hv0: lab's built-in definition (the overlay has no network.xml.j2)"
        ),
        "{stderr}"
    );
    let network = fs::read_to_string(s.path("build/bird/_networks/hv0/lab-vpp.xml")).unwrap();
    assert!(
        network.contains("<ip address='192.168.20.100' netmask='255.255.255.0'>"),
        "{network}"
    );
    assert!(
        network.contains("name='vpp0-9' ip='192.168.20.254'"),
        "{network}"
    );
    let links = fs::read_to_string(s.path("build/bird/hv0/vpp0-1/etc/links")).unwrap();
    assert_eq!(
        links,
        "eth1 100.64.2.0/31 vpp0-2\neth2 100.64.2.7/31 vpp0-4\neth3 100.64.2.24/31 vpp1-1\n\
         eth4 100.64.2.29/31 vpp2-1\n"
    );
    // An overlay's own definition wins, and the build says so.
    s.write(
        "overlays/bird/network.xml.j2",
        &fs::read_to_string(repo().join("crates/lab-generate/src/network.xml.j2")).unwrap(),
    );
    let out = s.lab(&["generate", "--lab", "labs/gw.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("network lab-vpp of hv0: the overlay's network.xml.j2"),
        "{stderr}"
    );
}

#[test]
fn a_lab_file_that_is_not_utf8_is_bad_input_with_its_line() {
    let s = Scratch::new();
    // Latin-1 `café` on line 2.
    fs::write(s.path("labs/u.yaml"), b"include: vpp.yaml\n# caf\xe9\n").unwrap();
    let out = s.lab(&["generate", "--lab", "labs/u.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("labs/u.yaml:2") && stderr.contains("not UTF-8"),
        "{stderr}"
    );
    assert!(!s.path("build").exists());
}

#[test]
fn a_lab_with_more_links_than_its_port_block_is_refused() {
    let s = Scratch::new();
    let mut text = String::from("include: vpp.yaml\nlinks:\n");
    for i in 0..81 {
        let (a, b) = (["vpp0-1", "vpp0-2"][i % 2], ["vpp1-1", "vpp1-2"][i % 2]);
        text.push_str(&format!("  - [{a}, {b}]\n"));
    }
    text.push_str("nodes:\n  vpp0-1: {max_links: 64}\n  vpp0-2: {max_links: 64}\n  vpp1-1: {max_links: 64}\n  vpp1-2: {max_links: 64}\n");
    s.write("labs/many.yaml", &text);
    let out = s.lab(&["generate", "--lab", "labs/many.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("81 links need more than the 160 UDP ports")
            && stderr.contains("collide with the next lab id's"),
        "{stderr}"
    );
    // With a base of its own, the same lab is fine.
    text.push_str("lab: {wire_port_base: 61000}\n");
    s.write("labs/many.yaml", &text);
    s.ok(&["generate", "--lab", "labs/many.yaml"]);
}

#[test]
fn a_rendered_domain_must_be_named_after_its_node() {
    let template = fs::read_to_string(repo().join("overlays/bird/domain.xml.j2")).unwrap();
    let named = "<name>{{ node.domain }}</name>";
    assert!(template.contains(named));
    for (name, edit, says) in [
        (
            "another name",
            "<name>router-{{ node.id }}</name>",
            "renders the domain name `router-1` for node `vpp0-1`: it must be `vpp0-1`",
        ),
        (
            "the right name only in a comment",
            "<!-- <name>{{ node.domain }}</name> --><name>x</name>",
            "renders the domain name `x`",
        ),
        (
            "the right name in what libxml2 reads as a comment",
            "<!--><name>{{ node.domain }}</name>--><name>y</name>",
            "renders the domain name `y`",
        ),
        ("no name", "", "renders no <name> for node `vpp0-1`"),
    ] {
        let s = Scratch::new();
        s.write(
            "overlays/bird/domain.xml.j2",
            &template.replace(named, edit),
        );
        let out = s.lab(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(!s.path("build/bird/hv0/vpp0-1").exists(), "{name}");
    }
    // Review 3, N15: a DTD whose entity holds a decoy domain named after the node, while
    // libxml2 reads the real root's name; and a network definition named after another.
    let s = Scratch::new();
    let decoy = "<!DOCTYPE domain [ <!ENTITY decoy \"x> <domain><name>{{ node.domain }}</name></domain> \"> ]>\n";
    s.write(
        "overlays/bird/domain.xml.j2",
        &format!("{decoy}{}", template.replace(named, "<name>victim</name>")),
    );
    let out = s.lab(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("renders a <!DOCTYPE> for node `vpp0-1`"),
        "{stderr}"
    );
    let s = Scratch::new();
    // The example overlays use the built-in definition: an overlay's own copy of it.
    let network =
        fs::read_to_string(repo().join("crates/lab-generate/src/network.xml.j2")).unwrap();
    let network_name = "<name>{{ network.network }}</name>";
    assert!(network.contains(network_name));
    s.write(
        "overlays/bird/network.xml.j2",
        &network.replace(network_name, "<name>default</name>"),
    );
    let out = s.lab(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("renders the network name `default` for `hv0`: it must be `lab-vpp`"),
        "{stderr}"
    );
}

#[test]
fn an_overlays_modes_are_checked_line_by_line() {
    for (modes, line, says) in [
        (
            "root/.ssh 0700\netc/nowhere 0600\n",
            2,
            "`etc/nowhere` is neither in the overlay's tree nor in any host's blobs",
        ),
        (
            "# comment\n\netc 0700 bird:bird extra\n",
            3,
            "one line per path",
        ),
        ("etc 0900\n", 1, "mode `0900` is not octal"),
        ("../etc 0700\n", 1, "without `..`"),
        (
            "etc/link 0700\n",
            1,
            "`etc/link` is a symlink in node `vpp0-1`'s tree",
        ),
    ] {
        let s = Scratch::new();
        s.write("overlays/bird/modes", modes);
        std::os::unix::fs::symlink("hostname", s.path("overlays/bird/etc/link")).unwrap();
        let out = s.lab(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{modes}: {stderr}");
        assert!(
            stderr.contains(&format!("overlays/bird/modes:{line}: ")) && stderr.contains(says),
            "{modes}: {stderr}"
        );
        assert!(!s.path("build/bird/hv0/vpp0-1").exists(), "{modes}");
    }
    // What applies is in the node's manifest, and changes its digest.
    let s = Scratch::new();
    s.ok(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    let manifest = s.path("build/bird/hv0/_meta/vpp0-1.manifest.json");
    let read =
        || -> serde_json::Value { serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap() };
    let before = read();
    assert_eq!(
        before["modes"],
        serde_json::json!([
            {"path": "etc/bird", "mode": "0750", "owner": "bird", "group": "bird"},
            {"path": "etc/bird/bird.conf", "mode": "0640", "owner": "bird", "group": "bird"},
            {"path": "root/.ssh", "mode": "0700", "owner": "0", "group": "0"},
            {"path": "root/.ssh/authorized_keys", "mode": "0600", "owner": "0", "group": "0"},
        ])
    );
    s.write(
        "overlays/bird/modes",
        "etc/bird 0750 bird:bird\netc/bird/bird.conf 0640 bird:bird\n\
         root/.ssh 0700 0:0\nroot/.ssh/authorized_keys 0600 0:1\n",
    );
    s.ok(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    assert_ne!(
        read()["digest"],
        before["digest"],
        "an owner is part of the build"
    );
    // What reaches root's shell is checked again when the build is read back: an edited
    // manifest is refused before any hypervisor is asked.
    for (path, mode, owner) in [
        ("../../etc/shadow", "0600", "0"),
        ("etc/nowhere", "0600", "0"),
        ("root/.ssh", "0600; reboot", "0"),
        ("root/.ssh", "0700", "$(id)"),
    ] {
        let mut m = read();
        m["modes"] = serde_json::json!([{"path": path, "mode": mode, "owner": owner}]);
        fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
        let out = s.lab(&[
            "create",
            "--lab",
            EXAMPLE,
            "--node",
            "vpp0-1",
            "--no-generate",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{path} {mode} {owner}: {stderr}"
        );
        assert!(stderr.contains("its `modes`"), "{stderr}");
    }
}

/// Review 3, N5: `--no-generate` copies, as root, a build anyone who can write it could have
/// changed; the tree on disk is checked against its manifest, entry by entry, and the build
/// must be writable by this user alone. Each tampering is refused (exit 2) before any
/// hypervisor is asked, and the victim is untouched.
#[test]
fn a_tampered_build_is_refused_by_no_generate() {
    use std::os::unix::fs::PermissionsExt;
    const TREE: &str = "build/bird/hv0/vpp0-1";
    const MANIFEST: &str = "build/bird/hv0/_meta/vpp0-1.manifest.json";
    type Tamper = fn(&Scratch, &Path);
    let cases: [(&str, Tamper, &str); 5] = [
        (
            "a symlink where the manifest has a directory, with modes under it",
            |s, victim| {
                std::os::unix::fs::symlink(victim, s.path(&format!("{TREE}/evil"))).unwrap();
                let path = s.path(MANIFEST);
                let mut m: serde_json::Value =
                    serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
                m["entries"]["evil"] = serde_json::json!({"type": "dir", "mode": "0755"});
                m["entries"]["evil/shadow"] =
                    serde_json::json!({"type": "file", "mode": "0644", "sha256": "0", "size": 0});
                m["modes"] = serde_json::json!([{"path": "evil/shadow", "mode": "0666"}]);
                fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
            },
            "`evil` is a symlink on disk but a dir in the manifest",
        ),
        (
            "a file the manifest does not list",
            |s, _| {
                s.write(&format!("{TREE}/etc/planted"), "x");
            },
            "`etc/planted` is not in the manifest",
        ),
        (
            "a group-writable file of the tree",
            |s, _| {
                let p = s.path(&format!("{TREE}/etc/hostname"));
                fs::set_permissions(&p, fs::Permissions::from_mode(0o664)).unwrap();
            },
            "`etc/hostname` is writable by group or others",
        ),
        (
            "a manifest others can write",
            |s, _| {
                fs::set_permissions(s.path(MANIFEST), fs::Permissions::from_mode(0o646)).unwrap();
            },
            "is writable by group or others",
        ),
        (
            "a world-writable hypervisor directory of the build",
            |s, _| {
                fs::set_permissions(s.path("build/bird/hv0"), fs::Permissions::from_mode(0o777))
                    .unwrap();
            },
            "is writable by group or others",
        ),
    ];
    for (what, tamper, expected) in cases {
        let s = Scratch::new();
        s.ok(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
        let victim = s.write("victim/shadow", "secret");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        tamper(&s, &s.path("victim"));
        let out = s.lab(&[
            "create",
            "--lab",
            EXAMPLE,
            "--node",
            "vpp0-1",
            "--no-generate",
            "--dry-run",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        let mode = fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{what}");
    }
}

#[test]
fn overlays_cannot_reach_outside_the_node_directory() {
    type Setup = dyn Fn(&Scratch);
    let cases: &[(&str, &Setup)] = &[
        ("absolute symlink", &|s| {
            std::os::unix::fs::symlink("/etc/passwd", s.path("overlays/bird/etc/pw")).unwrap()
        }),
        ("climbing symlink", &|s| {
            std::os::unix::fs::symlink("../../../x", s.path("overlays/bird/etc/up")).unwrap()
        }),
        ("named pipe", &|s| {
            assert!(
                Command::new("mkfifo")
                    .arg(s.path("overlays/bird/etc/fifo"))
                    .status()
                    .unwrap()
                    .success()
            )
        }),
        ("blob through a symlinked directory", &|s| {
            std::os::unix::fs::symlink("etc", s.path("overlays/bird/link")).unwrap();
            s.write("overlays/bird/blobs/vpp0-1/link/x", "through\n");
        }),
        (
            "a node's blobs as a symlink to the controller's files",
            &|s| {
                let elsewhere = s.path("elsewhere");
                fs::create_dir_all(elsewhere.join("etc")).unwrap();
                fs::write(elsewhere.join("etc/x"), "the controller's\n").unwrap();
                fs::remove_dir_all(s.path("overlays/bird/blobs/vpp0-1")).unwrap();
                std::os::unix::fs::symlink(&elsewhere, s.path("overlays/bird/blobs/vpp0-1"))
                    .unwrap();
            },
        ),
        ("blobs/ as a symlink", &|s| {
            let elsewhere = s.path("elsewhere");
            fs::create_dir_all(elsewhere.join("vpp0-1/etc")).unwrap();
            fs::write(elsewhere.join("vpp0-1/etc/x"), "the controller's\n").unwrap();
            fs::remove_dir_all(s.path("overlays/bird/blobs")).unwrap();
            std::os::unix::fs::symlink(&elsewhere, s.path("overlays/bird/blobs")).unwrap();
        }),
        ("domain.xml.j2 as a symlink", &|s| {
            fs::remove_file(s.path("overlays/bird/domain.xml.j2")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", s.path("overlays/bird/domain.xml.j2"))
                .unwrap();
        }),
        ("network.xml.j2 as a symlink", &|s| {
            let _ = fs::remove_file(s.path("overlays/bird/network.xml.j2"));
            std::os::unix::fs::symlink("/etc/passwd", s.path("overlays/bird/network.xml.j2"))
                .unwrap();
        }),
        ("modes as a symlink", &|s| {
            fs::remove_file(s.path("overlays/bird/modes")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", s.path("overlays/bird/modes")).unwrap();
        }),
    ];
    for (name, setup) in cases {
        let s = Scratch::new();
        setup(&s);
        let out = s.lab(&["generate", "--lab", EXAMPLE]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(!s.path("build/bird/hv0/vpp0-1/etc/x").exists(), "{name}");
        assert!(!s.path("build/bird/hv0/vpp0-1/etc/pw").exists(), "{name}");
    }
    // A node's build directory planted as a symlink is replaced, never followed.
    let s = Scratch::new();
    let victim = s.path("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("keep"), "mine\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(s.path("build/bird/hv0")).unwrap();
    std::os::unix::fs::symlink(&victim, s.path("build/bird/hv0/vpp0-1")).unwrap();
    s.ok(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    assert_eq!(fs::read_to_string(victim.join("keep")).unwrap(), "mine\n");
    assert_eq!(
        fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
        0o700,
        "the symlink's target was walked"
    );
    assert!(
        !fs::symlink_metadata(s.path("build/bird/hv0/vpp0-1"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A symlink that stays inside is copied as a symlink, never followed.
    let s = Scratch::new();
    std::os::unix::fs::symlink("hostname", s.path("overlays/bird/etc/name")).unwrap();
    s.ok(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    assert_eq!(
        fs::read_link(s.path("build/bird/hv0/vpp0-1/etc/name")).unwrap(),
        Path::new("hostname")
    );
}

#[test]
fn completions_and_the_man_page_are_printed() {
    let s = Scratch::new();
    let out = s.ok(&["completions", "bash"]);
    assert!(out.contains("generate"));
    let man = s.ok(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH lab"), "{man}");
    for verb in ["console", "exec", "inventory", "graph", "wait"] {
        assert!(man.contains(verb), "the man page lacks {verb}");
    }
    // Every page `lab`'s page refers to (`lab-create(1)` ...) is there too.
    for verb in ["create", "destroy", "wait", "proto"] {
        assert!(man.contains(&format!("lab\\-{verb}(1)")), "{man}");
        let page = s.ok(&["man", verb]);
        assert!(page.contains(&format!(".TH lab-{verb} 1")), "{page}");
    }
    let sync = s.ok(&["man", "proto", "sync"]);
    assert!(
        sync.contains(".TH lab-proto-sync 1") && sync.contains("bwlimit"),
        "{sync}"
    );
    let out = s.lab(&["man", "creat"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`lab` has no verb `creat`"));
}

/// Inventories and graphs come from the lab files alone: pinned as snapshots.
#[test]
fn inventories_and_graphs_of_the_example_lab() {
    let s = Scratch::new();
    for format in ["ssh-config", "ansible", "hosts"] {
        let out = s.ok(&["--format", format, "inventory", "--lab", EXAMPLE]);
        insta::assert_snapshot!(format!("inventory-{format}"), out);
    }
    let out = s.ok(&[
        "--format",
        "json",
        "inventory",
        "--lab",
        EXAMPLE,
        "--node",
        "vpp0-1",
    ]);
    insta::assert_snapshot!("inventory-json", out);
    // Text is ssh-config for inventory and dot for graph.
    assert_eq!(
        s.ok(&["inventory", "--lab", EXAMPLE]),
        s.ok(&["--format", "ssh-config", "inventory", "--lab", EXAMPLE])
    );
    let dot = s.ok(&["graph", "--lab", EXAMPLE]);
    insta::assert_snapshot!("graph-dot", dot);
    let mermaid = s.ok(&["--format", "mermaid", "graph", "--lab", EXAMPLE]);
    insta::assert_snapshot!("graph-mermaid", mermaid);
    // A glob selects nodes; links to nodes left out are left out.
    let part = s.ok(&[
        "--format", "mermaid", "graph", "--lab", EXAMPLE, "--node", "vpp1-*",
    ]);
    assert!(!part.contains("vpp0-"), "{part}");
    assert_eq!(
        part.matches("---").count() + part.matches("===").count(),
        4,
        "{part}"
    );
    // svg without Graphviz: said, with what to do, and nothing half-written on stdout.
    let no_dot = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["--format", "svg", "graph", "--lab", EXAMPLE])
        .current_dir(s.dir.path())
        .env("PATH", s.path("no-tools"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&no_dot.stderr);
    assert_eq!(no_dot.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--format svg needs Graphviz's `dot`")
            && stderr.contains("apt install graphviz"),
        "{stderr}"
    );
    assert!(no_dot.stdout.is_empty());
}

/// The README's picture of the example lab is what `lab graph --format mermaid` draws.
#[test]
fn the_readme_shows_the_example_lab_as_drawn() {
    let s = Scratch::new();
    let mermaid = s.ok(&["--format", "mermaid", "graph", "--lab", EXAMPLE]);
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let block = format!("```mermaid\n{mermaid}```");
    assert!(
        readme.contains(&block),
        "README.md's mermaid block differs from `lab graph --format mermaid --lab {EXAMPLE}`:\n{block}"
    );
}

/// Day-two verbs refuse what makes no sense before reaching any hypervisor: exit 2.
#[test]
fn day_two_usage_errors() {
    let s = Scratch::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--format", "dot", "status", "--lab", EXAMPLE],
            "--format dot is not for this verb",
        ),
        (
            &["--format", "svg", "inventory", "--lab", EXAMPLE],
            "`lab inventory` does not print --format svg",
        ),
        (
            &["--format", "json", "graph", "--lab", EXAMPLE],
            "`lab graph` does not print --format json",
        ),
        (&["exec", "--lab", EXAMPLE], "CMD"),
        (
            &["create", "--lab", EXAMPLE, "--wait=tcp:0"],
            "not a TCP port",
        ),
        (
            &["create", "--lab", EXAMPLE, "--wait=http"],
            "expected ssh, console:REGEX or tcp:PORT",
        ),
        (
            &["create", "--lab", EXAMPLE, "--no-start", "--validate"],
            "cannot be used with",
        ),
        (
            &["wait", "--lab", EXAMPLE, "--for", "console:"],
            "expected ssh, console:REGEX or tcp:PORT",
        ),
        (
            &["console", "--lab", EXAMPLE, "vpp0-*"],
            "`vpp0-*` matches 4 nodes",
        ),
        (&["ssh", "--lab", EXAMPLE, "vpp0-9"], "vpp0-9"),
        (
            &["exec", "--lab", EXAMPLE, "--node", "nope-*", "--", "true"],
            "nope-*",
        ),
        (
            &[
                "exec", "--lab", EXAMPLE, "--host", "hv0", "--node", "vpp1-*", "--", "true",
            ],
            "no node of the lab is on hv0 and named vpp1-*",
        ),
    ];
    for (args, want) in cases {
        let out = s.lab(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "lab {args:?}: {stderr}");
        assert!(stderr.contains(want), "lab {args:?}: {stderr}");
    }
}

/// The proto verbs refuse what would hurt before they reach a hypervisor: forgetting a
/// hypervisor that is still in the fleet, a name that is no hypervisor's, and a status file in
/// a directory others may write without the sticky bit (review 3, N1 and N2).
#[test]
fn proto_refusals_come_before_any_hypervisor_is_reached() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Scratch::new();
    let shared = s.path("shared");
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let status_file = shared.join("lab.prom");
    let status_file = status_file.to_str().unwrap();
    let fleet = "labs/testbed.yaml";
    let cases: &[(&[&str], &str)] = &[
        (
            &["proto", "forget", "hv1", "--lab", fleet],
            "hv1 is in the fleet file",
        ),
        (
            &["proto", "forget", "a;b", "--lab", fleet],
            "is not a hypervisor name",
        ),
        (
            &[
                "proto",
                "refresh",
                "--lab",
                fleet,
                "--status-file",
                status_file,
            ],
            "is writable by others (mode 0777) without the sticky bit",
        ),
    ];
    for (args, want) in cases {
        let out = s.lab(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "lab {args:?}: {stderr}");
        assert!(stderr.contains(want), "lab {args:?}: {stderr}");
    }
    assert!(!fs::exists(status_file).unwrap());
}

/// Hostile values for every field that reaches a command or a path: each one, alone, in an
/// otherwise valid lab file, is refused at load time with the field and its file:line.
#[test]
fn hostile_names_in_every_field_are_refused_with_field_and_line() {
    const HOSTILE: &[&str] = &[
        "x;touch /tmp/lab-pwned",
        "x$(touch /tmp/lab-pwned)",
        "x`id`",
        "x y",
        "x\ny",
        "x\ttab",
        "../x",
        "x/../y",
        "-x",
        "--force",
        "\u{440}1",   // Cyrillic er: looks like "p1"
        "x\u{200b}y", // zero-width space
        "x'y",
        "x\"y",
        "x|y",
        "x&y",
        "x>y",
        "x*y",
        "",
    ];
    let long = "a".repeat(300);
    // (field as the error names it, line, the lab file with `@` where the value goes)
    let fields: &[(&str, u32, &str)] = &[
        (
            "lab.name",
            1,
            "lab: {name: @, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  @: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.ssh",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, ssh: @, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.peer_ssh",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, peer_ssh: @, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.pool",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: @, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.proto",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: @, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.snapshot",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: @}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.staging",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base, staging: @}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.lock_dir",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base, lock_dir: @}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.clones",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base, clones: @}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "nodes",
            5,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  @: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "nodes.r1.hostname",
            5,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1, hostname: @}\n",
        ),
        (
            "nodes.r1.dataset",
            5,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1, dataset: @}\n",
        ),
        (
            "nodes.r1.mac",
            5,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base}\nnodes:\n  r1: {hypervisor: hv0, id: 1, mac: @}\n",
        ),
        (
            "hypervisors.hv0.mgmt.network",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base, mgmt: {network: @}}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
        (
            "hypervisors.hv0.mgmt.bridge",
            3,
            "lab: {name: t, id: 1}\nhypervisors:\n  hv0: {id: 0, pool: tank, proto: tank/proto, snapshot: base, mgmt: {bridge: @}}\nnodes:\n  r1: {hypervisor: hv0, id: 1}\n",
        ),
    ];
    let s = Scratch::new();
    // The template itself is fine.
    let ok = fields[0].2.replace('@', "fine");
    s.write("labs/h.yaml", &ok);
    s.ok(&["config", "show", "--lab", "labs/h.yaml"]);
    for (field, line, template) in fields {
        for value in HOSTILE.iter().copied().chain([long.as_str()]) {
            if *field == "hypervisors.hv0.snapshot" && value == "x*y" {
                continue; // a pattern: only ever matched, the matching name is what runs
            }
            // A JSON string is a valid double-quoted YAML scalar.
            let quoted = serde_json::to_string(value).unwrap();
            s.write("labs/h.yaml", &template.replace('@', &quoted));
            let out = s.lab(&["config", "show", "--lab", "labs/h.yaml"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{field} = {value:?}: {stderr}");
            assert!(
                stderr.contains(&format!("labs/h.yaml:{line}")) && stderr.contains(field),
                "{field} = {value:?}: expected the field and labs/h.yaml:{line} in: {stderr}"
            );
            assert!(
                !s.path("build").exists(),
                "{field} = {value:?}: wrote output"
            );
        }
    }
}

/// Review 3, N13: a dry run changes nothing, `build/` included (what `status` compares with,
/// and what `--no-generate` copies): its own rendering goes with it.
#[test]
fn a_dry_run_leaves_the_build_as_it_was() {
    let s = Scratch::new();
    s.nowhere();
    let out = s.lab(&[
        "create",
        "--lab",
        EXAMPLE,
        "--lab",
        "nowhere.yaml",
        "--node",
        "vpp0-1",
        "--dry-run",
    ]);
    assert_ne!(out.status.code(), Some(2), "{out:?}");
    assert!(
        !s.path("build/bird/hv0/vpp0-1").exists(),
        "a dry run published its build"
    );
}

/// Review 3, N21: a closed terminal (SIGHUP) stops a run as SIGINT and SIGTERM do: its ssh
/// connections closed, exit 128 + 1. The hypervisor here accepts the connection and never
/// answers, so `status` is still connecting when the signal comes.
#[test]
fn a_hangup_ends_a_run_with_129() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let s = Scratch::new();
    s.write(
        "silent.yaml",
        &format!("hypervisors:\n  hv0: {{ssh: \"root@127.0.0.1:{port}\"}}\n"),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args([
            "status",
            "--lab",
            EXAMPLE,
            "--lab",
            "silent.yaml",
            "--host",
            "hv0",
        ])
        .current_dir(s.dir.path())
        .env_remove("LAB_FILE")
        .env_remove("LAB_BUILD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(129), "{stderr}");
    assert!(stderr.contains("interrupted by SIGHUP"), "{stderr}");
    drop(silent);
}

/// Review 3, N23: a private key the guest's users could all read is warned about, naming the
/// file and the fix; `modes` giving it 0600 silences it. The build's per-hypervisor directory
/// (trees, manifests, domain XML) is this user's alone.
#[test]
fn a_private_key_others_could_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let key = s.write(
        "overlays/bird/blobs/vpp0-1/etc/ssh/ssh_host_ed25519_key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = s.lab(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "warning: vpp0-1: /etc/ssh/ssh_host_ed25519_key looks like a private key and every \
             user of the guest can read it (mode 0644)"
        ),
        "{stderr}"
    );
    let json = s.ok(&[
        "--format", "json", "generate", "--lab", EXAMPLE, "--node", "vpp0-1",
    ]);
    assert!(
        json.contains("ssh_host_ed25519_key looks like a private key"),
        "{json}"
    );
    let hv_dir = fs::metadata(s.path("build/bird/hv0")).unwrap();
    assert_eq!(hv_dir.permissions().mode() & 0o777, 0o700);
    let modes = fs::read_to_string(s.path("overlays/bird/modes")).unwrap();
    s.write(
        "overlays/bird/modes",
        &format!("{modes}etc/ssh/ssh_host_ed25519_key 0600\n"),
    );
    let out = s.lab(&["generate", "--lab", EXAMPLE, "--node", "vpp0-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Under a umask of 002 (the default for users with a group of their own), the build
/// `generate` writes is still this user's alone: `create --no-generate` takes it.
#[test]
fn a_build_made_under_umask_002_is_trusted_by_no_generate() {
    let s = Scratch::new();
    s.nowhere();
    let out = Command::new("sh")
        .args(["-c", "umask 002; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_lab"))
        .args([
            "generate",
            "--lab",
            EXAMPLE,
            "--lab",
            "nowhere.yaml",
            "--node",
            "vpp0-1",
        ])
        .current_dir(s.dir.path())
        .env_remove("LAB_FILE")
        .env_remove("LAB_BUILD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.lab(&[
        "create",
        "--lab",
        EXAMPLE,
        "--lab",
        "nowhere.yaml",
        "--node",
        "vpp0-1",
        "--no-generate",
        "--dry-run",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("writable by group"), "{stderr}");
}
