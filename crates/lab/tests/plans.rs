//! Command plans of create, destroy, start, stop and restart, asserted exactly, against scripted hypervisor state.
//!
//! The executor runs nothing here: queries are answered from a script of what the hypervisor
//! holds, and every command is recorded: the exact commands, byte for byte, and the refusals.
//! The zvol paths also run for real on the bed's OpenZFS hypervisors (`e2e_openzfs.rs`:
//! create, re-create, `--force`, destroy, a partition that never appears).
//!
//! Long: most of it is the table of scenarios and the hypervisor states they start from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lab_exec::{Executor, Mode, Out};
use lab_generate::NodeBuild;
use lab_model::Lab;

const LAB: &str = r#"
lab: {name: plan, id: 3}
hypervisors:
  hvd: {id: 0, pool: tank, proto: tank/proto, snapshot: "*-release"}
  hvz: {id: 1, ssh: "ops@hvz.example:2222", pool: ssd, proto: ssd/proto-disk0, snapshot: 20261101-release,
        storage: zvol, partition: 2, staging: /srv/lab, clones: ssd/labs}
nodes:
  d1: {hypervisor: hvd, id: 1}
  z1: {hypervisor: hvz, id: 1}
"#;

fn lab(edits: &[(&str, &str)]) -> Lab {
    let mut text = LAB.to_owned();
    for (from, to) in edits {
        text = text.replace(from, to);
    }
    let tree = lab_model::tree::parse(&text, Path::new("plan.yaml")).unwrap();
    Lab::from_tree(tree, vec![PathBuf::from("plan.yaml")]).unwrap()
}

/// What the scripted hypervisors hold: the probe's answer per host. `extra_datasets` are
/// `name TAB property TAB value` rows (`lab:` properties count as set locally).
fn probe_answer(
    host: &str,
    extra_datasets: &str,
    domains: &str,
    markers: &HashMap<String, String>,
    networks: &str,
    addrs: &str,
) -> String {
    let (proto, parent) = if host == "hvd" {
        ("tank/proto", "tank")
    } else {
        ("ssd/proto-disk0", "ssd/labs")
    };
    let mut names = vec![parent.to_owned()];
    let mut rows = format!("{parent}\torigin\t-\t-\n");
    // Rows of a snapshot (`clone@name`) are the clones' lab snapshots.
    let (mut snap_names, mut snap_rows) = (Vec::<String>::new(), String::new());
    for line in extra_datasets.lines() {
        let name = line.split('\t').next().unwrap();
        let (listed, read) = if name.contains('@') {
            (&mut snap_names, &mut snap_rows)
        } else {
            (&mut names, &mut rows)
        };
        if !listed.iter().any(|n| n == name) {
            listed.push(name.to_owned());
        }
        let source = if line.contains("\tlab:") {
            "local"
        } else {
            "-"
        };
        read.push_str(&format!("{line}\t{source}\n"));
    }
    let snap_names: String = snap_names.iter().map(|n| format!("{n}\n")).collect();
    let marker_rows: String = domains
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|d| format!("{d}\t{}\n", markers.get(d).map_or("", String::as_str)))
        .collect();
    format!(
        "#snapshots\n{proto}@20261001-release\tguid\t111\n{proto}@20261001-release\tcreation\t100\n\
         {proto}@20261101-release\tguid\t222\n{proto}@20261101-release\tcreation\t200\n\
         {proto}@20261102-before\tguid\t333\n{proto}@20261102-before\tcreation\t300\n#rc 0\n\
         #zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n#names\n{}\n#rc 0\n#datasets\n{rows}#rc 0\n#labsnaps\n{snap_names}#rc 0\n#labsnapprops\n{snap_rows}#rc 0\n#domains\n{domains}#rc 0\n\
         #markers\n{marker_rows}#rc 0\n#networks\n{networks}#rc 0\n#addrs\n{addrs}#rc 0\n#udp\n#rc 0\n#end\n",
        names.join("\n")
    )
}

struct Scenario {
    name: &'static str,
    verb: &'static str,
    force: bool,
    /// Extra probe rows per host.
    datasets: &'static [(&'static str, &'static str)],
    domains: &'static [(&'static str, &'static str)],
    /// Answers to `virsh metadata` reads per node (the lab marker), when the domain exists.
    markers: &'static [(&'static str, &'static str)],
    /// `#networks` rows per host.
    networks: &'static [(&'static str, &'static str)],
    /// `#addrs` rows (`interface TAB address/len`) per host.
    addrs: &'static [(&'static str, &'static str)],
    /// Text replacements in the lab file.
    lab_edit: &'static [(&'static str, &'static str)],
}

const OURS_D1: &str = "tank/d1\torigin\ttank/proto@20261001-release\ntank/d1\tlab:lab\tplan\ntank/d1\tlab:node\td1\n\
    tank/d1\tlab:overlay-sha256\tdigest-of-d1\n";
/// Another lab's node d1, unprefixed, on hvd.
const OTHER_LABS_D1: &str = "tank/d1\torigin\ttank/proto@20261001-release\ntank/d1\tlab:lab\tother\n\
    tank/d1\tlab:node\td1\n";
const ELSEWHERE_D1: &str = "tank/elsewhere\torigin\t-\ntank/elsewhere/d1\torigin\ttank/proto@20261001-release\n\
    tank/elsewhere/d1\tlab:lab\tplan\ntank/elsewhere/d1\tlab:node\td1\n";
/// Ours, but filled from an older build than the scenarios'.
const OLDER_D1: &str = "tank/d1\torigin\ttank/proto@20261001-release\ntank/d1\tlab:lab\tplan\ntank/d1\tlab:node\td1\n\
    tank/d1\tlab:overlay-sha256\tdigest-of-an-older-build\n";
const FOREIGN_D1: &str = "tank/d1\torigin\t-\ntank/d1\tmounted\tyes\n";
const OTHER_LAB_Z1: &str = "ssd/labs/z1\torigin\tssd/proto-disk0@20261101-release\nssd/labs/z1\tlab:lab\tother\nssd/labs/z1\tlab:node\tz1\n";
/// Left by a run that died between the clone and the end of the copy.
const FILLING_D1: &str = "tank/d1\torigin\ttank/proto@20261001-release\ntank/d1\tlab:lab\tplan\ntank/d1\tlab:node\td1\ntank/d1\tlab:state\tfilling\ntank/d1\tmounted\tyes\n";
const OURS_Z1: &str = "ssd/labs/z1\torigin\tssd/proto-disk0@20261101-release\nssd/labs/z1\tlab:lab\tplan\nssd/labs/z1\tlab:node\tz1\n\
    ssd/labs/z1\tlab:overlay-sha256\tdigest-of-z1\n";

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "create_fresh",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // --no-start: cloned, filled and defined; no start, no wires.lock.
        name: "create_no_start_fresh",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // --no-start: d1 runs, z1's complete clone is stopped: both left as they are.
        name: "create_no_start_leaves_complete_clones",
        verb: "create",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // d1 runs: unchanged. z1's complete clone is stopped: started as it is.
        name: "create_converges_on_existing_clones",
        verb: "create",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // d1 runs on a clone filled from an older build: drift, left for --force. z1's domain
        // was defined by lab for another lab: never touched, --force or not.
        name: "create_reports_drift_and_never_touches_another_labs_domain",
        verb: "create",
        force: false,
        datasets: &[("hvd", OLDER_D1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " 5 z1 running\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"other\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // With prefixed names, another lab's d1 on the same hypervisor is another domain and
        // another clone; our own go by `plan-d1`.
        name: "create_prefixes_names_with_the_lab",
        verb: "create",
        force: false,
        datasets: &[("hvd", OTHER_LABS_D1)],
        domains: &[("hvd", " 4 d1 running\n")],
        markers: &[("d1", "<lab lab=\"other\" node=\"d1\"/>")],
        networks: &[],
        addrs: &[],
        lab_edit: &[(
            "lab: {name: plan, id: 3}",
            "lab: {name: plan, id: 3, prefix_names: true}",
        )],
    },
    Scenario {
        name: "create_force_replaces_ours",
        verb: "create",
        force: true,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // d1's clone was never finished: made again without --force. z1 lost its definition.
        name: "create_redoes_interrupted_clone",
        verb: "create",
        force: false,
        datasets: &[("hvd", FILLING_D1), ("hvz", OURS_Z1)],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        name: "create_force_never_touches_foreign",
        verb: "create",
        force: true,
        datasets: &[("hvd", FOREIGN_D1), ("hvz", OTHER_LAB_Z1)],
        domains: &[("hvz", " - z1 shut off\n")],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // hvz has nothing that matches: refused before d1 on hvd is touched.
        name: "create_refused_when_a_snapshot_matches_nothing",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[("snapshot: 20261101-release", "snapshot: \"2027*-release\"")],
    },
    Scenario {
        // Only a domain lab defined for this lab, on a complete clone, is stopped: d1 is;
        // z1's domain is another lab's.
        name: "stop_only_this_labs_domains",
        verb: "stop",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OTHER_LAB_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " 7 z1 running\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"other\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // A link's two ends: d1 runs (its NIC now, and its definition for the next start),
        // z1 is stopped (its definition only).
        name: "link_down_sets_both_ends_in_the_domain_and_its_definition",
        verb: "link-down",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &LINKED,
    },
    Scenario {
        // Each direction on the hypervisor of the end that sends it: the relay (fed on
        // stdin, checked by its sha256) and QEMU's redirection of that NIC's frames.
        name: "link_set_impairs_each_direction_where_it_is_sent",
        verb: "link-set",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " 5 z1 running\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &LINKED,
    },
    Scenario {
        // The far end's domain is another lab's: neither end is changed (a link up on one
        // side only is no state anyone asked for), and that is said.
        name: "link_up_changes_neither_end_when_one_is_another_labs",
        verb: "link-up",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OTHER_LAB_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " 7 z1 running\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"other\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &LINKED,
    },
    Scenario {
        // Each hypervisor's clones in one command, the running domains paused around it
        // (`--consistent`); OpenZFS takes them in one `zfs snapshot`.
        name: "snapshot_takes_each_hypervisors_clones_in_one_command",
        verb: "snapshot",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // d1 runs and has a later snapshot (dropped, as asked); z1 is stopped and stays so.
        name: "restore_rolls_each_clone_back_and_starts_what_ran",
        verb: "restore",
        force: false,
        datasets: &[("hvd", D1_SNAPSHOTS), ("hvz", Z1_SNAPSHOTS)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // Without --drop-newer, d1's later snapshot refuses the whole restore.
        name: "restore_refuses_to_lose_a_later_snapshot",
        verb: "restore-keep",
        force: false,
        datasets: &[("hvd", D1_SNAPSHOTS), ("hvz", Z1_SNAPSHOTS)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // A clone's lab snapshots go one by one before it (never `zfs destroy -r`).
        name: "destroy_removes_a_clones_lab_snapshots_first",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", D1_SNAPSHOTS), ("hvz", Z1_SNAPSHOTS)],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // A dataset clone is mounted for its domain before it starts (a zvol needs nothing);
        // a clone an interrupted create left is not started.
        name: "start_mounts_a_dataset_clone_first",
        verb: "start",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " - d1 shut off\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        name: "start_skips_an_incomplete_clone",
        verb: "start",
        force: false,
        datasets: &[("hvd", FILLING_D1)],
        domains: &[("hvd", " - d1 shut off\n")],
        markers: &[("d1", "<lab lab=\"plan\" node=\"d1\"/>")],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        name: "restart_running_and_stopped",
        verb: "restart",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        name: "destroy_ours",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " - z1 shut off\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        name: "destroy_refuses_foreign",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", FOREIGN_D1), ("hvz", OTHER_LAB_Z1)],
        domains: &[("hvd", " 4 d1 running\n")],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // An interrupted run left lab's domain for d1 but no clone; z1's domain is someone else's.
        name: "destroy_leftover_domain_without_clone",
        verb: "destroy",
        force: false,
        datasets: &[],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " 7 z1 running\n")],
        markers: &[("d1", "<lab lab=\"plan\" node=\"d1\"/>")],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // A node's dataset set outside the clones' parent is read like any other: destroyed.
        name: "destroy_sees_a_dataset_outside_the_clones_parent",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", ELSEWHERE_D1)],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[(
            "d1: {hypervisor: hvd, id: 1}",
            "d1: {hypervisor: hvd, id: 1, dataset: tank/elsewhere/d1}",
        )],
    },
    Scenario {
        name: "destroy_nothing_there",
        verb: "destroy",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // hvd: the lab's own isolated network is made before the node; hvz: the operator's
        // network `default` is only used.
        name: "create_makes_and_uses_networks",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[("hvz", "default\tactive\tuuid-of-default\t\n")],
        addrs: &[],
        lab_edit: &[MGMT_HVD, MGMT_HVZ],
    },
    Scenario {
        // Our network from an older build, d1 running on it: redefined, not restarted.
        name: "create_redefines_a_changed_network_without_cutting_running_nodes",
        verb: "create",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " 5 z1 running\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[
            ("hvd", OLD_NETWORK),
            ("hvz", "default\tactive\tuuid-of-default\t\n"),
        ],
        addrs: &[],
        lab_edit: &[MGMT_HVD, MGMT_HVZ],
    },
    Scenario {
        name: "create_refuses_a_network_lab_did_not_make",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[
            ("hvd", "lab-plan\tactive\tuuid-of-lab-plan\t\n"),
            ("hvz", "default\tactive\tuuid-of-default\t\n"),
        ],
        addrs: &[],
        lab_edit: &[MGMT_HVD, MGMT_HVZ],
    },
    Scenario {
        // Another lab's network serves hvd's management prefix: libvirt would define ours and
        // then refuse to start it. Refused before anything changes, saying whose it is.
        name: "create_refuses_a_management_prefix_another_network_serves",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[
            (
                "hvd",
                "lab-other\tactive\tuuid-of-lab-other\t<lab:net xmlns:lab=\"https://lab.invalid/schema/1\" lab=\"other\" sha256=\"x\"/>\tlab7\n",
            ),
            ("hvz", "default\tactive\tuuid-of-default\t\n"),
        ],
        addrs: &[("hvd", "lo\t127.0.0.1/8\nlab7\t10.9.0.254/24\n")],
        lab_edit: &[MGMT_HVD, MGMT_HVZ],
    },
    Scenario {
        // Another lab with this lab's id runs its network on hvd: same bridge name, refused.
        name: "create_refuses_a_bridge_another_labs_network_has",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[
            (
                "hvd",
                "lab-twin\tactive\tuuid-of-lab-twin\t<lab:net xmlns:lab=\"https://lab.invalid/schema/1\" lab=\"twin\" sha256=\"x\"/>\tlab3\n",
            ),
            ("hvz", "default\tactive\tuuid-of-default\t\n"),
        ],
        addrs: &[("hvd", "lab3\t10.8.0.254/24\n")],
        lab_edit: &[MGMT_HVD, MGMT_HVZ],
    },
    Scenario {
        name: "create_refuses_an_operator_network_that_is_stopped",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[("hvz", "default\tinactive\tuuid-of-default\t\n")],
        addrs: &[],
        lab_edit: &[MGMT_HVD, MGMT_HVZ],
    },
    Scenario {
        // The lab's network goes after its last node; the operator's stays.
        name: "destroy_removes_the_labs_network_after_its_nodes",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", OURS_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n")],
        markers: &[("d1", "<lab lab=\"plan\" node=\"d1\"/>")],
        networks: &[
            ("hvd", OLD_NETWORK),
            ("hvz", "default\tactive\tuuid-of-default\t\n"),
        ],
        addrs: &[],
        lab_edit: &[MGMT_HVD, MGMT_HVZ],
    },
    Scenario {
        // A network of the lab's network name that lab did not make (hvd: no mark) or that
        // another lab marked: the nodes go, the networks stay, and destroy says why.
        name: "destroy_leaves_a_network_of_its_name_it_did_not_make",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", OURS_D1)],
        domains: &[],
        markers: &[],
        networks: &[("hvd", "lab-plan\tactive\tuuid-of-lab-plan\t\n")],
        addrs: &[],
        lab_edit: &[MGMT_HVD],
    },
    Scenario {
        name: "destroy_leaves_another_labs_network_of_its_name",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", OURS_D1)],
        domains: &[],
        markers: &[],
        networks: &[(
            "hvd",
            "lab-plan\tactive\tuuid-of-lab-plan\t<lab:net xmlns:lab=\"https://lab.invalid/schema/1\" lab=\"other\" sha256=\"x\"/>\tlab9\n",
        )],
        addrs: &[],
        lab_edit: &[MGMT_HVD],
    },
    Scenario {
        // Review 3, N11: x9 was removed from the lab file without being destroyed (status
        // lists it as an orphan); its domain still runs on the lab's network, which stays.
        name: "destroy_keeps_the_network_under_an_orphan",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", ORPHAN_X9)],
        domains: &[("hvd", " 4 x9 running\n")],
        markers: &[("x9", "<lab lab=\"plan\" node=\"x9\"/>")],
        networks: &[("hvd", OLD_NETWORK)],
        addrs: &[],
        lab_edit: &[MGMT_HVD],
    },
    Scenario {
        // Review 3, N11: the lab's network runs an older definition and none of the lab's
        // nodes runs, but something is plugged into its bridge (another lab on `mode:
        // existing`, an orphan): it is redefined for its next start, never restarted; and
        // (N14) d1, new, gets its DHCP reservation in the running network.
        name: "create_never_restarts_a_network_in_use",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[("hvd", IN_USE_NETWORK)],
        addrs: &[],
        lab_edit: &[MGMT_HVD],
    },
    Scenario {
        // Review 3, N12: in bridge mode the bridge is the host's, and an operator's network
        // (or another lab's) forwarding onto it too is no conflict: the network is made.
        name: "create_bridge_mode_beside_another_network_on_that_bridge",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[(
            "hvd",
            "host-bridge\tactive\tuuid-of-host-bridge\t\tbr0\t3\n",
        )],
        addrs: &[],
        lab_edit: &[(
            "pool: tank, proto: tank/proto, snapshot: \"*-release\"}",
            "pool: tank, proto: tank/proto, snapshot: \"*-release\", mgmt: {mode: bridge, bridge: br0}}",
        )],
    },
    Scenario {
        // Review 3, N10: lab `other` has lab id 3 too, and a clone on hvd: the two labs
        // would share MACs and wire ports, so nothing is made anywhere.
        name: "create_refuses_a_second_lab_with_this_id",
        verb: "create",
        force: false,
        datasets: &[("hvd", OTHER_LAB_WITH_THIS_ID)],
        domains: &[],
        markers: &[],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // Second review, #12e: a lab named `plan` that another user made from another
        // controller: destroy leaves its clone and domain, and says whose it is.
        name: "destroy_leaves_another_owners_lab_of_this_name",
        verb: "destroy",
        force: false,
        datasets: &[("hvd", ANOTHER_OWNERS_D1)],
        domains: &[("hvd", " 4 d1 running\n")],
        markers: &[("d1", "<lab lab=\"plan\" node=\"d1\"/>")],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // ... and `create --force` does not replace it.
        name: "create_force_leaves_another_owners_lab_of_this_name",
        verb: "create",
        force: true,
        datasets: &[("hvd", ANOTHER_OWNERS_D1)],
        domains: &[("hvd", " 4 d1 running\n")],
        markers: &[("d1", "<lab lab=\"plan\" node=\"d1\"/>")],
        networks: &[],
        addrs: &[],
        lab_edit: &[],
    },
    Scenario {
        // Mode existing with `mgmt_ipv4`: z1's reservation goes into the operator's network
        // `default` before its domain starts, and its clone claims it; the hand-made one for
        // `web` is no business of lab's.
        name: "create_reserves_in_an_operators_network",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[("hvz", OPERATORS_DEFAULT)],
        addrs: &[],
        lab_edit: &RESERVE_HVZ,
    },
    Scenario {
        // Someone else's reservation holds z1's address: nothing changes anywhere.
        name: "create_refuses_a_reservation_someone_else_made_for_the_node",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[(
            "hvz",
            "default\tactive\tuuid-of-default\t\tvirbr0\t1\t<ip address='192.168.122.1' \
             netmask='255.255.255.0'><host mac='52:54:00:aa:bb:cc' name='db' ip='192.168.122.5'/>\n",
        )],
        addrs: &[],
        lab_edit: &RESERVE_HVZ,
    },
    Scenario {
        // z1's clone claims its reservation: it goes before the clone, and `web`'s stays.
        name: "destroy_releases_only_the_reservation_its_clone_claims",
        verb: "destroy",
        force: false,
        datasets: &[("hvz", CLAIMING_Z1)],
        domains: &[("hvz", " 5 z1 running\n")],
        markers: &[("z1", "<lab lab=\"plan\" node=\"z1\"/>")],
        networks: &[("hvz", DEFAULT_WITH_Z1)],
        addrs: &[],
        lab_edit: &RESERVE_HVZ,
    },
    Scenario {
        // z1's very reservation, made by hand: used as it is, never claimed (so destroy
        // leaves it).
        name: "create_uses_an_identical_reservation_made_by_hand_unclaimed",
        verb: "create",
        force: false,
        datasets: &[],
        domains: &[],
        markers: &[],
        networks: &[("hvz", DEFAULT_WITH_Z1)],
        addrs: &[],
        lab_edit: &RESERVE_HVZ,
    },
    Scenario {
        // z1 was id 4 when lab reserved .4 for it; now id 5. `--force`: the old reservation
        // goes before the old clone (its claim), the new one is claimed and added.
        name: "create_force_replaces_the_reservation_of_an_older_plan",
        verb: "create",
        force: true,
        datasets: &[("hvz", CLAIMING_Z1_AS_ID_4)],
        domains: &[("hvz", " 5 z1 running\n")],
        markers: &[("z1", "<lab lab=\"plan\" node=\"z1\"/>")],
        networks: &[(
            "hvz",
            "default\tactive\tuuid-of-default\t\tvirbr0\t1\t<ip address='192.168.122.1' \
             netmask='255.255.255.0'><host mac='52:54:00:03:01:04' name='z1' ip='192.168.122.4'/>\n",
        )],
        addrs: &[],
        lab_edit: &RESERVE_HVZ,
    },
];

/// d1's and z1's clones with their lab snapshots: `base` on both, `later` on d1 after it.
const D1_SNAPSHOTS: &str = "tank/d1\torigin\ttank/proto@20261001-release\ntank/d1\tlab:lab\tplan\n\
    tank/d1\tlab:node\td1\ntank/d1\tlab:overlay-sha256\tdigest-of-d1\n\
    tank/d1@base\tlab:snapshot\tbase\ntank/d1@base\tcreatetxg\t10\n\
    tank/d1@later\tlab:snapshot\tlater\ntank/d1@later\tcreatetxg\t20\n";
const Z1_SNAPSHOTS: &str = "ssd/labs/z1\torigin\tssd/proto-disk0@20261101-release\nssd/labs/z1\tlab:lab\tplan\n\
    ssd/labs/z1\tlab:node\tz1\nssd/labs/z1\tlab:overlay-sha256\tdigest-of-z1\n\
    ssd/labs/z1@base\tlab:snapshot\tbase\nssd/labs/z1@base\tcreatetxg\t11\n";

/// d1 and z1 linked (eth1 on both).
const LINKED: [(&str, &str); 3] = [
    (
        "lab: {name: plan, id: 3}",
        "lab: {name: plan, id: 3, p2p_ipv4: 100.64.3.0/24}\nlinks: [[d1, z1]]",
    ),
    ("hvd: {id: 0,", "hvd: {id: 0, underlay: 10.0.0.1,"),
    ("hvz: {id: 1,", "hvz: {id: 1, underlay: 10.0.0.2,"),
];
/// hvz's nodes on the operator's `default`, with planned addresses (z1: 192.168.122.5).
const RESERVE_HVZ: [(&str, &str); 2] = [
    (
        "clones: ssd/labs}",
        "clones: ssd/labs, mgmt_ipv4: 192.168.122.0/24, mgmt: {network: default}}",
    ),
    (
        "z1: {hypervisor: hvz, id: 1}",
        "z1: {hypervisor: hvz, id: 5}",
    ),
];
/// libvirt's `default` with a reservation made by hand (the probe's 7th field).
const OPERATORS_DEFAULT: &str = "default\tactive\tuuid-of-default\t\tvirbr0\t1\t<ip address='192.168.122.1' \
    netmask='255.255.255.0'><host mac='52:54:00:aa:bb:cc' name='web' ip='192.168.122.10'/>\n";
/// ... with z1's reservation in it too.
const DEFAULT_WITH_Z1: &str = "default\tactive\tuuid-of-default\t\tvirbr0\t1\t<ip address='192.168.122.1' \
    netmask='255.255.255.0'><host mac='52:54:00:aa:bb:cc' name='web' ip='192.168.122.10'/>\
    <host mac='52:54:00:03:01:05' name='z1' ip='192.168.122.5'/>\n";
/// z1's clone, which claims the reservation lab added for it.
const CLAIMING_Z1: &str = "ssd/labs/z1\torigin\tssd/proto-disk0@20261101-release\nssd/labs/z1\tlab:lab\tplan\n\
    ssd/labs/z1\tlab:node\tz1\nssd/labs/z1\tlab:dhcp-host\tdefault 52:54:00:03:01:05 z1 192.168.122.5\n";

/// z1's clone from when it was id 4, claiming that reservation.
const CLAIMING_Z1_AS_ID_4: &str = "ssd/labs/z1\torigin\tssd/proto-disk0@20261101-release\nssd/labs/z1\tlab:lab\tplan\n\
    ssd/labs/z1\tlab:node\tz1\nssd/labs/z1\tlab:overlay-sha256\tdigest-of-z1\n\
    ssd/labs/z1\tlab:dhcp-host\tdefault 52:54:00:03:01:04 z1 192.168.122.4\n";

/// This lab's d1 by name, made by another user on another controller.
const ANOTHER_OWNERS_D1: &str = "tank/d1\torigin\ttank/proto@20261001-release\ntank/d1\tlab:lab\tplan\n\
    tank/d1\tlab:node\td1\ntank/d1\tlab:owner\tlee@other-ctl\n";
/// Lab `other`'s clone on hvd, made with lab id 3 (this lab's).
const OTHER_LAB_WITH_THIS_ID: &str = "tank/o1\torigin\ttank/proto@20261001-release\ntank/o1\tlab:lab\tother\n\
    tank/o1\tlab:id\t3\ntank/o1\tlab:node\to1\n";
/// A node of this lab that the lab file no longer names: its clone on hvd.
const ORPHAN_X9: &str =
    "tank/x9\torigin\ttank/proto@20261001-release\ntank/x9\tlab:lab\tplan\ntank/x9\tlab:node\tx9\n";
/// The lab's network on hvd, from an older build, with two interfaces on its bridge.
const IN_USE_NETWORK: &str = "lab-plan\tactive\tuuid-of-lab-plan\t<lab:net xmlns:lab=\"https://lab.invalid/schema/1\" lab=\"plan\" sha256=\"older\"/>\tlab3\t2\n";

/// hvd gets an isolated network of the lab's own, hvz uses the operator's `default`.
const MGMT_HVD: (&str, &str) = (
    "pool: tank, proto: tank/proto, snapshot: \"*-release\"}",
    "pool: tank, proto: tank/proto, snapshot: \"*-release\", mgmt_ipv4: 10.9.0.0/24}",
);
const MGMT_HVZ: (&str, &str) = (
    "clones: ssd/labs}",
    "clones: ssd/labs, mgmt: {network: default}}",
);
/// The lab's network on hvd, defined from an older build than the scenarios' (`sha-of-hvd`).
const OLD_NETWORK: &str = "lab-plan\tactive\tuuid-of-lab-plan\t<lab:net xmlns:lab=\"https://lab.invalid/schema/1\" lab=\"plan\" sha256=\"older\"/>\n";

/// An executor that answers `s`'s probe, and records everything else.
fn scripted(s: &Scenario, lab: &Lab) -> Executor {
    let datasets: HashMap<&str, &str> = s.datasets.iter().copied().collect();
    let domains: HashMap<&str, &str> = s.domains.iter().copied().collect();
    let networks: HashMap<&str, &str> = s.networks.iter().copied().collect();
    let addrs: HashMap<&str, &str> = s.addrs.iter().copied().collect();
    let markers: HashMap<String, String> = s
        .markers
        .iter()
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect();
    let script: lab_exec::Script = Box::new(move |host, line| {
        // The image has no symlinked directories where the tree has directories.
        if line.contains("lab-dirlinks") {
            return Some(Out::ok(""));
        }
        // A push's look at what would change (a dry run's).
        if line.contains(" lab-push check ") || line.contains(" lab-push-guest check ") {
            return Some(Out::ok("CHANGED etc/hostname\n"));
        }
        line.contains(" lab-probe ").then(|| {
            let answer = probe_answer(
                host,
                datasets.get(host).unwrap_or(&""),
                domains.get(host).unwrap_or(&""),
                &markers,
                networks.get(host).unwrap_or(&""),
                addrs.get(host).unwrap_or(&""),
            );
            Out::ok(lab_hv::state::scripted_answer(line, &answer))
        })
    });
    Executor::new(
        Mode::Scripted(script),
        lab_hv::targets(lab, &lab.nodes.iter().collect::<Vec<_>>()),
        8,
    )
}

fn run(s: &Scenario) -> String {
    let lab = lab(s.lab_edit);
    let exec = scripted(s, &lab);
    let nodes: Vec<_> = lab.nodes.iter().collect();
    // As a real run after taking the lab's lock (and as --dry-run): every change guarded.
    let me = lab_hv::Holder {
        owner: "ops@ctl".into(),
        pid: 4242,
        verb: s.verb.into(),
        since: 1_700_000_000,
    };
    lab_hv::lock::guard_only(&exec, &lab.name, &lab.hypervisors_of(&nodes), &me);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reports = rt.block_on(async {
        if s.verb == "create" {
            // Each node's tree, which its plan carries: one file.
            let trees = tempfile::tempdir().unwrap();
            let builds = nodes
                .iter()
                .map(|n| {
                    let tree = trees.path().join(&n.hypervisor).join(&n.hostname);
                    std::fs::create_dir_all(tree.join("etc")).unwrap();
                    std::fs::write(tree.join("etc/hostname"), format!("{}\n", n.hostname))
                        .unwrap();
                    let build = NodeBuild {
                        tree,
                        digest: format!("digest-of-{}", n.name),
                        domain_xml: Some(b"<domain/>".to_vec()),
                        dirs: vec!["etc".into(), "root".into()],
                        // The overlay's `modes`, for one node: set after the copy.
                        modes: if n.name == "d1" {
                            vec![
                                lab_generate::PathMode {
                                    path: "etc/frr".into(),
                                    mode: None,
                                    owner: Some("frr".into()),
                                    group: Some("frr".into()),
                                },
                                lab_generate::PathMode {
                                    path: "root".into(),
                                    mode: Some("0700".into()),
                                    owner: Some("0".into()),
                                    group: None,
                                },
                            ]
                        } else {
                            Vec::new()
                        },
                    };
                    (n.name.clone(), build)
                })
                .collect();
            let networks = lab
                .hypervisors
                .iter()
                .filter(|h| h.mgmt.owned)
                .map(|h| {
                    let build = lab_generate::NetworkBuild {
                        name: h.mgmt.network.clone().unwrap(),
                        xml: b"<network>\n  <name>lab-plan</name>\n  <ip address='10.9.0.254' netmask='255.255.255.0'>\n    <dhcp>\n      <host mac='52:54:00:03:00:01' name='d1' ip='10.9.0.1'/>\n    </dhcp>\n  </ip>\n</network>\n".to_vec(),
                        sha256: format!("sha-of-{}", h.name),
                    };
                    (h.name.clone(), build)
                })
                .collect();
            let req = lab_create::CreateRequest {
                reconciled: Default::default(),
                lab: &lab,
                nodes: nodes.clone(),
                builds,
                networks,
                force: s.force,
                start: !s.name.contains("no_start"),
                owners: lab_hv::own::Owners {
                    me: "ops@ctl".into(),
                    also: Vec::new(),
                },
                now: 1_700_000_000,
                start_batch: None,
                start_interval: None,
            };
            lab_create::create(&exec, &req, &|_| {})
                .await
                .map(|r| (r.networks, r.nodes))
                .map_err(|e| e.to_string())
        } else if s.verb == "snapshot" || s.verb.starts_with("restore") {
            let ask = lab_change::SnapshotAsk {
                lab: &lab,
                nodes: nodes.clone(),
                name: "base",
                owners: lab_hv::own::Owners {
                    me: "ops@ctl".into(),
                    also: Vec::new(),
                },
            };
            let r = if s.verb == "snapshot" {
                lab_change::snapshot::take(&exec, &ask, true, &|_| {}).await
            } else {
                lab_change::snapshot::restore(&exec, &ask, s.verb == "restore", &|_| {})
                    .await
                    .map(|r| r.reports)
            };
            r.map(|r| (Vec::new(), r)).map_err(|e| e.to_string())
        } else if s.verb == "link-set" {
            let ends = lab_reach::link::link_of(&lab, "d1:eth1", None).unwrap();
            let how = lab_model::impair::Impairment {
                delay_us: 20_000,
                loss_ppm: 10_000,
                ..Default::default()
            };
            let relay = lab_reach::link::Relay {
                bytes: b"the relay".to_vec(),
                sha256: "sha-of-the-relay".into(),
                arch: "x86_64".into(),
            };
            let directions: Vec<_> = ends.iter().map(|e| (*e, Some(how))).collect();
            let r = lab_reach::link::impair(&exec, &lab, &directions, &relay, &|_| {}).await;
            Ok((Vec::new(), r))
        } else if let Some(up) = s.verb.strip_prefix("link-").map(|w| w == "up") {
            let ends = lab_reach::link::link_of(&lab, "d1:eth1", Some("z1:eth1")).unwrap();
            let r = lab_reach::link::set_state(&exec, &lab, &ends, up, &|_| {}).await;
            Ok((Vec::new(), r))
        } else if let Some(what) = match s.verb {
            "start" => Some(lab_reach::Power::Start),
            "stop" => Some(lab_reach::Power::Stop),
            "restart" => Some(lab_reach::Power::Restart),
            _ => None,
        } {
            // the default grace of `stop` and `restart`
            let r = lab_reach::power(&exec, &lab, &nodes, what, 30, &|_| {}).await;
            Ok((Vec::new(), r))
        } else {
            let r = lab_destroy::destroy(
                &exec,
                &lab_destroy::DestroyRequest {
                    lab: &lab,
                    nodes: nodes.clone(),
                    owners: lab_hv::own::Owners {
                        me: "ops@ctl".into(),
                        also: Vec::new(),
                    },
                },
                &|_| {},
            )
            .await;
            Ok((r.networks, r.nodes))
        }
    });
    // Reading a hypervisor is one command, whatever the number of nodes or domains there:
    // the probe, and no query before it decides (the only other query checks the clone's
    // directory links right before a copy).
    for host in ["hvd", "hvz"] {
        let queries: Vec<String> = exec
            .recorded()
            .into_iter()
            .filter(|r| r.host == host && r.effect == lab_exec::Effect::Query)
            .map(|r| r.line)
            .filter(|l| !l.contains("lab-dirlinks"))
            .collect();
        assert_eq!(queries.len(), 1, "{}: {host} was asked {queries:?}", s.name);
    }
    let (networks, reports) = match reports {
        Ok(r) => r,
        Err(e) => {
            let changes: Vec<String> = exec
                .recorded()
                .into_iter()
                .filter(|r| r.effect == lab_exec::Effect::Change)
                .map(|r| r.line)
                .collect();
            return format!(
                "refused: {e}
changes: {changes:?}
"
            );
        }
    };
    let mut out = String::new();
    let mut network_lines = String::new();
    for n in &networks {
        network_lines.push_str(&format!(
            "network {} on {}: {} ({})\n",
            n.network,
            n.hypervisor,
            serde_json::to_string(&n.outcome).unwrap(),
            n.action.as_deref().unwrap_or("-")
        ));
        for c in &n.commands {
            network_lines.push_str(&format!("  $ {c}\n"));
        }
    }
    if s.verb == "create" {
        out.push_str(&network_lines);
    }
    for r in &reports {
        out.push_str(&format!(
            "{} on {}: {}\n",
            r.node,
            r.hypervisor,
            serde_json::to_string(&r.outcome).unwrap()
        ));
        for c in &r.commands {
            out.push_str(&format!("  $ {c}\n"));
        }
    }
    if s.verb == "destroy" {
        out.push_str(&network_lines);
    }
    // Each hypervisor's plans, behind the guard: the command, byte for byte (and for destroy
    // what it is fed: create's steps are listed per node above).
    for r in exec.recorded() {
        if r.line.contains(" lab-plan ") && (s.verb == "destroy" || s.verb == "create") {
            out.push_str(&format!("plan on {}:\n  $ {}\n", r.host, r.line));
            if s.verb == "destroy" {
                let script = String::from_utf8_lossy(r.stdin.as_deref().unwrap_or_default());
                out.push_str(&format!("  fed:\n{script}"));
            }
        }
    }
    out
}

#[test]
fn command_plans() {
    for s in SCENARIOS {
        insta::assert_snapshot!(s.name, run(s));
    }
}

/// The README's promise: `status` reads a hypervisor with one command, whatever the number of
/// nodes, domains (their markers and NICs included) and networks there.
#[test]
fn status_asks_each_hypervisor_one_query() {
    for s in SCENARIOS {
        let lab = lab(s.lab_edit);
        let exec = scripted(s, &lab);
        let nodes: Vec<_> = lab.nodes.iter().collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(lab_hv::status(
            &exec,
            &lab,
            &nodes,
            &lab_hv::Expected::default(),
            1_700_000_000,
        ));
        assert_eq!(report.nodes.len(), nodes.len());
        let recorded = exec.recorded();
        assert!(
            recorded.iter().all(|r| r.effect == lab_exec::Effect::Query),
            "{}: status changed something",
            s.name
        );
        for host in ["hvd", "hvz"] {
            let asked = recorded.iter().filter(|r| r.host == host).count();
            assert_eq!(asked, 1, "{}: {host} was asked {asked} times", s.name);
        }
    }
}

/// A `zfs get` that fails on a hypervisor makes what it would have said unknown, never
/// "nothing there": destroy changes nothing there and says why, and the other hypervisor's
/// node goes as usual.
#[test]
fn destroy_changes_nothing_where_the_datasets_cannot_be_read() {
    let lab = lab(&[]);
    let script: lab_exec::Script = Box::new(|host, line| {
        line.contains(" lab-probe ").then(|| {
            let (datasets, domains) = match host {
                "hvd" => (OURS_D1, " 4 d1 running\n"),
                _ => (OURS_Z1, ""),
            };
            let mut answer = probe_answer(host, datasets, domains, &HashMap::new(), "", "");
            if host == "hvd" {
                // `zfs get` failed after printing part of its rows.
                let start = answer.find("#datasets\n").unwrap();
                let end = answer[start..].find("#rc 0\n").unwrap() + start;
                answer.replace_range(
                    start..end + "#rc 0\n".len(),
                    "#datasets\ntank\torigin\t-\t-\n#rc 1\n",
                );
            }
            Out::ok(lab_hv::state::scripted_answer(line, &answer))
        })
    });
    let exec = Executor::new(
        Mode::Scripted(script),
        lab_hv::targets(&lab, &lab.nodes.iter().collect::<Vec<_>>()),
        8,
    );
    let nodes: Vec<_> = lab.nodes.iter().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(lab_destroy::destroy(
        &exec,
        &lab_destroy::DestroyRequest {
            lab: &lab,
            nodes: nodes.clone(),
            owners: lab_hv::own::Owners::default(),
        },
        &|_| {},
    ));
    let changed_on = |host: &str| {
        exec.recorded()
            .into_iter()
            .filter(|r| r.host == host && r.effect == lab_exec::Effect::Change)
            .count()
    };
    assert_eq!(
        changed_on("hvd"),
        0,
        "nothing changes where the datasets are unknown"
    );
    assert!(changed_on("hvz") > 0, "the other hypervisor's node goes");
    let d1 = report.nodes.iter().find(|r| r.node == "d1").unwrap();
    let said = serde_json::to_string(&d1.outcome).unwrap();
    assert!(
        !matches!(
            d1.outcome,
            lab_hv::Outcome::Done | lab_hv::Outcome::Unchanged { .. }
        ),
        "{said}"
    );
    assert!(
        said.contains("reading the pool's datasets failed (`zfs` exit status 1"),
        "{said}"
    );
}

#[test]
fn destroy_never_recurses_and_never_names_the_proto() {
    for s in SCENARIOS {
        let plan = run(s);
        for line in plan
            .lines()
            .filter(|l| l.trim_start().starts_with("$ zfs destroy"))
        {
            assert!(
                !line.contains(" -r") && !line.contains(" -R"),
                "{}: {line}",
                s.name
            );
            assert!(!line.contains("proto"), "{}: {line}", s.name);
        }
    }
}

/// Review 3, N3: `exec` and `wait` reach a node only through a domain `lab` defined for this
/// lab and node. d1's domain on hvd is another lab's (its address is the one this lab file
/// names for d1); z1's is not defined at all. Neither is asked anything but the probe.
#[test]
fn day_two_verbs_reach_only_this_labs_domains() {
    let s = Scenario {
        name: "day_two_foreign",
        verb: "exec",
        force: false,
        datasets: &[("hvd", OTHER_LABS_D1)],
        domains: &[("hvd", " 4 d1 running\n")],
        markers: &[("d1", "<lab lab=\"other\" node=\"d1\"/>")],
        networks: &[],
        addrs: &[],
        lab_edit: &[MGMT_HVD],
    };
    let lab = lab(s.lab_edit);
    let exec = scripted(&s, &lab);
    let nodes: Vec<_> = lab.nodes.iter().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let words = vec!["reboot".to_owned()];
    let execs = rt.block_on(lab_reach::exec(
        &exec,
        &lab,
        &nodes,
        &words,
        std::time::Duration::from_secs(5),
    ));
    let waits = rt.block_on(lab_reach::wait(
        &exec,
        &lab,
        &nodes,
        &lab_hv::reach::Readiness::Ssh,
        std::time::Duration::from_secs(5),
        &|_| {},
    ));
    let errors: Vec<String> = execs
        .iter()
        .map(|r| format!("exec {}: {}", r.node, r.error.clone().unwrap_or_default()))
        .chain(waits.iter().map(|r| {
            format!(
                "wait {} ready={}: {}",
                r.node,
                r.ready,
                r.error.clone().unwrap_or_default()
            )
        }))
        .collect();
    assert_eq!(
        errors,
        [
            "exec d1: domain d1 belongs to lab `other`, node `d1`, not to this lab, so it is not reached",
            "exec z1: domain z1 is not defined (lab create --node z1)",
            "wait d1 ready=false: domain d1 belongs to lab `other`, node `d1`, not to this lab, so it is not reached",
            "wait z1 ready=false: domain z1 is not defined (lab create --node z1)",
        ]
    );
    let asked: Vec<String> = exec
        .recorded()
        .into_iter()
        .map(|r| r.line)
        .filter(|l| !l.contains(" lab-probe "))
        .collect();
    assert!(asked.is_empty(), "asked beyond the probe: {asked:?}");
}

/// Ours, its clone mounted for its domain.
const MOUNTED_D1: &str = "tank/d1\torigin\ttank/proto@20261001-release\ntank/d1\tlab:lab\tplan\n\
    tank/d1\tlab:node\td1\ntank/d1\tlab:overlay-sha256\tdigest-of-d1\ntank/d1\tmounted\tyes\n";

/// `push`'s plan per node: into a dataset clone on its hypervisor, through a running zvol
/// node's guest (its disk is the guest's), each said with the files that would change (the
/// dry run's look, one query per node) and the steps that would run.
#[test]
fn push_copies_into_clones_and_through_running_guests() {
    let s = Scenario {
        name: "push",
        verb: "push",
        force: false,
        datasets: &[("hvd", MOUNTED_D1), ("hvz", OURS_Z1)],
        domains: &[("hvd", " 4 d1 running\n"), ("hvz", " 5 z1 running\n")],
        markers: &[
            ("d1", "<lab lab=\"plan\" node=\"d1\"/>"),
            ("z1", "<lab lab=\"plan\" node=\"z1\"/>"),
        ],
        networks: &[],
        addrs: &[],
        lab_edit: &RESERVE_HVZ,
    };
    let lab = lab(s.lab_edit);
    let exec = scripted(&s, &lab);
    let nodes: Vec<_> = lab.nodes.iter().collect();
    let trees = tempfile::tempdir().unwrap();
    let builds = nodes
        .iter()
        .map(|n| {
            let tree = trees.path().join(&n.name);
            std::fs::create_dir_all(tree.join("etc")).unwrap();
            std::fs::write(tree.join("etc/hostname"), format!("{}\n", n.hostname)).unwrap();
            let build = NodeBuild {
                tree,
                digest: format!("new-digest-of-{}", n.name),
                domain_xml: None,
                dirs: vec!["etc".into()],
                modes: vec![lab_generate::PathMode {
                    path: "etc/hostname".into(),
                    mode: Some("0644".into()),
                    owner: None,
                    group: None,
                }],
            };
            (n.name.clone(), build)
        })
        .collect();
    let req = lab_change::PushRequest {
        lab: &lab,
        nodes: nodes.clone(),
        builds,
        owners: lab_hv::own::Owners {
            me: "ops@ctl".into(),
            also: Vec::new(),
        },
        reload: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reports = rt.block_on(lab_change::push::push(&exec, &req, &|_| {}));
    let mut out = String::new();
    for r in &reports {
        out.push_str(&format!(
            "{} on {}: {} files {}\n",
            r.report.node,
            r.report.hypervisor,
            serde_json::to_string(&r.report.outcome).unwrap(),
            serde_json::to_string(&r.files).unwrap()
        ));
        for c in &r.report.commands {
            out.push_str(&format!("  $ {c}\n"));
        }
    }
    insta::assert_snapshot!("push_copies_into_clones_and_through_running_guests", out);
}
