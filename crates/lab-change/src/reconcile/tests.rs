//! Reconcile's decisions from forged hypervisor states: which NICs of which node change.

use super::*;
use lab_hv::HostState;
use std::path::{Path, PathBuf};

const LAB: &str = "lab: {name: demo, id: 3, p2p_ipv4: 100.64.3.0/24}\n\
    hypervisors:\n  hvd: {id: 0, pool: p, proto: p/proto, snapshot: a, clones: p}\n\
    nodes:\n  r1: {hypervisor: hvd, id: 1}\n  r2: {hypervisor: hvd, id: 2}\n  r3: {hypervisor: hvd, id: 3}\n\
    links: [[r1, r2], [r1, r2]]\n";

fn lab() -> Lab {
    let tree = lab_model::tree::parse(LAB, Path::new("demo.yaml")).unwrap();
    Lab::from_tree(tree, vec![PathBuf::from("demo.yaml")]).unwrap()
}

/// The hypervisor as the probe reads it: r1, r2 and r3 this lab's running nodes, and `old`,
/// a node of this lab the file no longer names; `nics` the `#nics` rows.
fn state(nics: &str) -> HostState {
    let mut datasets = String::from("p\torigin\t-\t-\n");
    let mut names = String::from("p\np/proto\n");
    let mut markers = String::new();
    let mut domains = String::new();
    for (i, n) in ["r1", "r2", "r3", "old"].iter().enumerate() {
        names.push_str(&format!("p/{n}\n"));
        datasets.push_str(&format!(
            "p/{n}\torigin\tp/proto@a\t-\np/{n}\tlab:lab\tdemo\tlocal\np/{n}\tlab:node\t{n}\tlocal\n"
        ));
        domains.push_str(&format!(" {}    {n}   running\n", i + 1));
        markers.push_str(&format!(
            "{n}\t<lab:lab xmlns:lab=\"https://lab.invalid/schema/1\" lab=\"demo\" node=\"{n}\"/>\n"
        ));
    }
    let text = format!(
        "#snapshots\np/proto@a\tguid\t11\np/proto@a\tcreation\t100\n#rc 0\n\
         #zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n#names\n{names}#rc 0\n#datasets\n{datasets}#rc 0\n\
         #labsnaps\n#rc 0\n#labsnapprops\n#rc 0\n#domains\n{domains}#rc 0\n#markers\n{markers}#rc 0\n\
         #networks\n#rc 0\n#addrs\n#rc 0\n#udp\n#rc 0\n#nics\n{nics}#relays\n#rc 0\n#end\n"
    );
    lab_hv::state::parse(
        "p/proto",
        &lab_hv::state::scripted_answer("probe n", &text),
        "n",
    )
    .unwrap()
}

fn row(domain: &str, iface: &Interface) -> String {
    format!(
        "{domain}\t{}\tup\t{}\n",
        iface.mac,
        iface.wire.unwrap().text()
    )
}

fn changes(lab: &Lab, state: &HostState, node: &str) -> Vec<String> {
    let node = lab.node(node).unwrap();
    decide(lab, node, state, &Owners::default())
        .map(|w| {
            w.nics
                .iter()
                .map(|(c, mac, i, hot)| {
                    let name = i.map_or("-", |i| i.name.as_str());
                    format!("{c:?} {mac} {name}{}", if *hot { " hot" } else { "" })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn each_nic_is_added_removed_or_rewired_as_the_file_says() {
    let lab = lab();
    let (r1, r2, r3) = (
        lab.node("r1").unwrap(),
        lab.node("r2").unwrap(),
        lab.node("r3").unwrap(),
    );
    let l1: Vec<&Interface> = r1.links().collect();
    let l2: Vec<&Interface> = r2.links().collect();
    let mut moved = *l2[0].wire.as_ref().unwrap();
    moved.remote_port += 100;
    // r1: its first link as the file says, the second missing, a link's NIC the file no
    // longer names (plugged in through the monitor), and a NIC of another kind.
    let nics = [
        row("r1", l1[0]),
        format!("r1\t{}\tup\t-\n", r1.mac),
        "r1\t52:54:99:00:00:01\tup\t127.0.0.1:1>127.0.0.1:2\thot\n".to_owned(),
        "r1\t52:54:aa:00:00:01\tup\t-\n".to_owned(),
        format!("r2\t{}\tup\t{}\n", l2[0].mac, moved.text()),
        row("r2", l2[1]),
        format!("r3\t{}\tup\t-\n", r3.mac),
    ]
    .concat();
    let state = state(&nics);
    assert_eq!(
        changes(&lab, &state, "r1"),
        [
            format!("Add {} eth2", l1[1].mac),
            "Remove 52:54:99:00:00:01 - hot".to_owned()
        ]
    );
    assert_eq!(
        changes(&lab, &state, "r2"),
        [format!("Rewire {} eth1", l2[0].mac)]
    );
    // As the file says: nothing to do.
    assert!(changes(&lab, &state, "r3").is_empty());
    // The node the file no longer names is listed, and rebuilt for destroy.
    let gone = gone(&lab, "hvd", &state);
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (
            gone[0].node.as_str(),
            gone[0].dataset.as_deref(),
            gone[0].domain.as_deref()
        ),
        ("old", Some("p/old"), Some("old"))
    );
    assert!(gone[0].prunable);
    let node = gone_node(&lab, &gone[0]).unwrap();
    assert_eq!(
        (node.dataset.as_str(), node.domain.as_str()),
        ("p/old", "old")
    );
}

#[test]
fn a_node_whose_domain_is_not_labs_is_left_alone() {
    let lab = lab();
    let r1 = lab.node("r1").unwrap();
    let mut state = state(&format!("r1\t{}\tup\t-\n", r1.mac));
    assert_eq!(changes(&lab, &state, "r1").len(), 2);
    state.domains.get_mut("r1").unwrap().marker = lab_hv::state::MarkerRead::None;
    assert!(changes(&lab, &state, "r1").is_empty());
}

#[test]
fn a_gone_node_with_a_name_that_is_not_one_is_not_rebuilt() {
    let lab = lab();
    let bad = Gone {
        node: "x;rm -rf /".to_owned(),
        hypervisor: "hvd".to_owned(),
        dataset: Some("p/x".to_owned()),
        domain: None,
        prunable: false,
    };
    assert!(gone_node(&lab, &bad).is_none());
}
