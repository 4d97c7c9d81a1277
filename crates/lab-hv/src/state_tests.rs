//! The probe's parser: every section, and everything odd refused.

use super::*;

fn read(text: &str) -> Result<HostState, String> {
    parse(
        "p/proto",
        &scripted_answer("a probe with the nonce n", text),
        "n",
    )
}

const GOOD: &str = "#snapshots\n\
    p/proto\tguid\t99\np/proto@b\tguid\t22\np/proto@b\tcreation\t200\np/proto@a\tguid\t11\np/proto@a\tcreation\t100\n#rc 0\n\
    #zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n#names\np\np/proto\np/r1\n#rc 0\n\
    #datasets\n\
    p\torigin\t-\t-\np/proto\tlab:synced\t1234\tlocal\np/proto\tlab:sync-error\t-\t-\n\
    p/r1\torigin\tp/proto@a\t-\np/r1\tmounted\tno\t-\np/r1\tlab:lab\tdemo\tlocal\np/r1\tlab:node\t-\t-\n\
    p/r1\tlab:owner\tops@ctl\tlocal\n#rc 0\n\
    #labsnaps\np/r1@two\np/r1@one\np/r1@hand\n#rc 0\n\
    #labsnapprops\np/r1@two\tlab:snapshot\ttwo\tlocal\np/r1@two\tcreatetxg\t90\t-\n\
    p/r1@one\tlab:snapshot\tone\tlocal\np/r1@one\tcreatetxg\t80\t-\np/r1@one\tcreation\t300\t-\np/r1@one\tused\t4096\t-\n\
    p/r1@hand\tlab:snapshot\tone\tlocal\n#rc 0\n\
    #domains\n 3    r1   running\n -    r2   shut off\n#rc 0\n\
    #markers\nr1\t<lab:lab xmlns:lab=\"https://lab.invalid/schema/1\" lab=\"demo\" node=\"r1\"/>\nr2\t\n#rc 0\n\
    #networks\nlab-demo\tactive\tu-1\t<lab:net xmlns:lab='https://lab.invalid/schema/1' lab='demo' sha256='ab12'/>\ndefault\tinactive\tu-2\t\tvirbr0\n#rc 0\n\
    #addrs\nlo\t127.0.0.1/8\nlab2\t192.168.20.254/24\nptp0\t10.9.9.1\n#rc 0\n\
    #udp\n0035\n4F60\n4F60\n#rc 0\n\
    #nics\nr1\t52:54:00:01:00:01\tup\t-\nr1\t52:54:01:01:00:01\tdown\t10.0.0.1:20000>10.0.0.2:20001\n\
    r1\t52:54:02:01:00:01\tup\t10.0.0.1:20002>10.0.0.2:20003\thot\n#relays\n/run/lab/demo.relay.77 relay --socket /run/lab/demo.relay.77.sock --to 10.0.0.2:20001 --label r1/52:54:01:01:00:01 --delay-us 50000 --loss-ppm 10000\n#rc 0\n#end\n";

#[test]
fn parses_every_section() {
    let s = read(GOOD).unwrap();
    assert_eq!(
        s.proto
            .snapshots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(s.proto.snapshots[1].guid, "22");
    assert!(s.proto.exists);
    assert_eq!(s.proto.synced, Some(1234));
    assert_eq!(s.proto.last_error, None);
    let r1 = &s.datasets["p/r1"];
    assert_eq!(r1.origin.as_deref(), Some("p/proto@a"));
    assert_eq!(r1.prop(prop::LAB), Some("demo"));
    assert_eq!(r1.prop(prop::NODE), None);
    assert_eq!(r1.prop(prop::OWNER), Some("ops@ctl"));
    assert!(s.domain_running("r1"));
    assert_eq!(s.domains["r2"].state, "shut off");
    assert_eq!(
        s.domains["r1"].marker,
        MarkerRead::Some(DomainMarker {
            lab: "demo".into(),
            node: "r1".into()
        })
    );
    assert_eq!(s.domains["r2"].marker, MarkerRead::None);
    // The snapshots `lab snapshot` took, oldest first; one whose mark names another is not.
    let snaps = s.snapshots_of("p/r1");
    assert_eq!(
        snaps.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!((snaps[0].used, snaps[0].creation), (4096, 300));
    assert!(s.snapshots_of("p/proto").is_empty());
    // A mark inherited from the clone is no snapshot of lab's.
    let inherited = read(&GOOD.replace("two\tlocal", "two\tinherited from p/r1")).unwrap();
    assert_eq!(inherited.snapshots_of("p/r1").len(), 1);
    assert_eq!(
        s.networks["lab-demo"].marker,
        Some(NetworkMarker {
            lab: "demo".into(),
            sha256: "ab12".into()
        })
    );
    assert!(s.networks["lab-demo"].active);
    assert!(!s.networks["default"].active && s.networks["default"].marker.is_none());
    assert_eq!(
        s.nics["r1"],
        [
            "52:54:00:01:00:01",
            "52:54:01:01:00:01",
            "52:54:02:01:00:01"
        ]
    );
    // Each UDP wire as the domain has it, and the NIC plugged in through the monitor.
    assert_eq!(
        s.wires
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>(),
        [
            "r1/52:54:01:01:00:01 10.0.0.1:20000>10.0.0.2:20001",
            "r1/52:54:02:01:00:01 10.0.0.1:20002>10.0.0.2:20003"
        ]
    );
    assert_eq!(s.hot_nics, ["r1/52:54:02:01:00:01".to_owned()].into());
    assert_eq!(s.links_down["r1"], ["52:54:01:01:00:01".to_owned()].into());
    assert_eq!(
        s.impairments["r1/52:54:01:01:00:01"].to_string(),
        "delay 50ms, loss 1%"
    );
    assert_eq!(s.udp_ports, Some([53, 20320].into()));
    let addrs: Vec<String> = s
        .ipv4
        .as_ref()
        .unwrap()
        .iter()
        .map(|(i, a)| format!("{i} {a}"))
        .collect();
    assert_eq!(
        addrs,
        [
            "lo 127.0.0.1/8",
            "lab2 192.168.20.254/24",
            "ptp0 10.9.9.1/32"
        ]
    );
    assert!(s.libvirt_error.is_none());
    assert_eq!(
        s.pins(),
        [Pin {
            snapshot: "a".into(),
            dataset: "p/r1".into(),
            lab: Some("demo".into()),
            node: None,
            snapshots: vec!["one".into(), "two".into()],
        }]
    );
}

#[test]
fn a_missing_proto_is_absent_not_an_error() {
    let text = "#snapshots\n#rc absent\n#zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n#names\np\n#rc 0\n#datasets\np\torigin\t-\t-\n#rc 0\n#labsnaps\n#rc 0\n#labsnapprops\n#rc 0\n\
                #domains\n#rc 0\n#markers\n#rc 0\n#networks\n#rc 0\n#end\n";
    let s = read(text).unwrap();
    assert!(!s.proto.exists);
    assert!(s.proto.snapshots.is_empty());
}

#[test]
fn only_locally_set_properties_make_ownership() {
    // Someone set lab:lab on the pool: every dataset inherits it, none is lab's for that.
    let text = GOOD.replace(
        "p/r1\tlab:lab\tdemo\tlocal",
        "p/r1\tlab:lab\tdemo\tinherited from p",
    );
    let s = read(&text).unwrap();
    assert_eq!(s.datasets["p/r1"].prop(prop::LAB), None);
}

#[test]
fn anything_odd_is_an_error_never_a_guess() {
    let cases = [
        // A value with a newline and tabs forging a row for a dataset zfs did not list.
        GOOD.replace(
            "p/r1\tlab:owner\tops@ctl\tlocal\n",
            "p/r1\tlab:owner\tx\tlocal\np/fake\tlab:lab\tdemo\tlocal\n",
        ),
        // ... or a second row for a real one.
        GOOD.replace(
            "p/r1\tlab:owner\tops@ctl\tlocal\n",
            "p/r1\tlab:owner\tx\tlocal\np/r1\tlab:lab\tother\tlocal\n",
        ),
        // A row with a tab in its value.
        GOOD.replace(
            "p/r1\tlab:owner\tops@ctl\tlocal",
            "p/r1\tlab:owner\tops\t@ctl\tlocal",
        ),
        // zfs failed: that is not "no datasets".
        GOOD.replace("p/r1\tlab:owner\tops@ctl\tlocal\n#rc 0", "#rc 1"),
        GOOD.replace(
            "p/proto@a\tcreation\t100\n#rc 0",
            "p/proto@a\tcreation\t100\n#rc 2",
        ),
        // The answer was cut short.
        GOOD.replace("#end\n", ""),
        // Listing the clones' snapshots failed: that is not "none".
        GOOD.replace("p/r1@hand\n#rc 0", "p/r1@hand\n#rc 1"),
        // A snapshot row for one the list did not name.
        GOOD.replace("p/r1@hand\tlab:snapshot", "p/r1@forged\tlab:snapshot"),
    ];
    for (i, text) in cases.iter().enumerate() {
        assert!(read(text).is_err(), "case {i} was accepted");
    }
    // libvirt failing is not fatal to zfs's part, but it is known.
    let s = read(&GOOD.replace(
        "shut off
#rc 0",
        "shut off
#rc 1",
    ))
    .unwrap();
    assert!(s.libvirt_error.is_some());
    // A value with a newline and section headers of its own: without the nonce they are only
    // data, and a bad row at that.
    let forged = scripted_answer("n", GOOD).replace(
        "p/r1\tlab:owner\tops@ctl\tlocal\n",
        "p/r1\tlab:owner\tx\n#datasets\np/r1\tlab:lab\tother\tlocal\n#rc 0\n#labsnaps\n#rc 0\n#labsnapprops\n#rc 0\n#domains\tlocal\n",
    );
    assert!(parse("p/proto", &forged, "n").is_err());
    // A marker that could not be read is "unknown", never "none".
    let s = read(&GOOD.replace("r2\t\n#rc 0", "r2\t?\n#rc 0")).unwrap();
    assert_eq!(s.domains["r2"].marker, MarkerRead::Unreadable);
}

#[test]
fn reads_what_zfs_can_do_and_the_holds() {
    // OpenZFS: feature flags, a resume token, encryption, holds listed by tag.
    let modern = GOOD
        .replace(
            "p/proto@b\tcreation\t200\n",
            "p/proto@b\tcreation\t200\np/proto@b\tuserrefs\t2\n",
        )
        .replace(
            "#zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n",
            "#zfs\nversion\t-\ntool\tpv\nprop\treceive_resume_token\t1-abc-def\nprop\tencryption\taes-256-gcm\n#rc 0\n\
             #holds\np/proto@b\tlab-sync:hv1\tTue Dec  1 10:00 2026\np/proto@b\tlab-sync:hv2\tTue Dec  1 10:00 2026\n#rc 0\n",
        );
    let s = read(&modern).unwrap();
    assert!(s.zfs.modern() && s.zfs.holds_listed && s.zfs.has_tool("pv"));
    assert!(!s.zfs.has_tool("mbuffer"));
    assert_eq!(s.proto.resume_token.as_deref(), Some("1-abc-def"));
    assert!(s.proto.encrypted);
    let b = &s.proto.snapshots[1];
    assert_eq!(
        (b.userrefs, b.holds.clone()),
        (
            2,
            vec!["lab-sync:hv1".to_owned(), "lab-sync:hv2".to_owned()]
        )
    );

    // zfs-fuse: pool version 23, holds counted but not listable; no token, not encrypted.
    let old = GOOD
        .replace(
            "p/proto@a\tcreation\t100\n",
            "p/proto@a\tcreation\t100\np/proto@a\tuserrefs\t1\n",
        )
        .replace(
            "#zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n",
            "#zfs\nversion\t23\n#rc 0\n#holds\n#rc unsupported\n",
        );
    let s = read(&old).unwrap();
    assert!(!s.zfs.modern() && !s.zfs.holds_listed);
    assert_eq!(s.proto.snapshots[0].userrefs, 1);
    assert!(s.proto.resume_token.is_none() && !s.proto.encrypted);

    // Holds that could not be listed for another reason, or no zfs section: refused.
    let failed = GOOD.replace("#holds\n#rc 0\n", "#holds\n#rc 1\n");
    assert!(read(&failed).unwrap_err().contains("holds"));
    let missing = GOOD.replace("#zfs\nversion\t-\n#rc 0\n", "");
    assert!(read(&missing).unwrap_err().contains("zfs"));
}

#[test]
fn bound_udp_ports_unread_or_odd_are_unknown() {
    let unread = GOOD.replace("#udp\n0035\n4F60\n4F60\n#rc 0\n", "#udp\n#rc 2\n");
    assert_eq!(read(&unread).unwrap().udp_ports, None);
    let odd = GOOD.replace("#udp\n0035\n", "#udp\n0035\nnot-a-port\n");
    assert_eq!(read(&odd).unwrap().udp_ports, None);
    let missing = GOOD.replace("#udp\n0035\n4F60\n4F60\n#rc 0\n", "");
    assert_eq!(read(&missing).unwrap().udp_ports, None);
}

#[test]
fn host_addresses_unread_or_odd_are_unknown() {
    let unread = GOOD.replace("ptp0\t10.9.9.1\n#rc 0", "ptp0\t10.9.9.1\n#rc 1");
    assert_eq!(read(&unread).unwrap().ipv4, None);
    let odd = GOOD.replace("ptp0\t10.9.9.1\n", "ptp0\tnot-an-address\n");
    assert_eq!(read(&odd).unwrap().ipv4, None);
    let s = read(GOOD).unwrap();
    assert_eq!(s.networks["default"].bridge.as_deref(), Some("virbr0"));
    assert_eq!(s.networks["lab-demo"].bridge, None);
}

#[test]
fn a_paused_or_stopping_domain_is_active() {
    let text = GOOD.replace(
        "#domains\n 3    r1   running\n",
        "#domains\n 3    r1   running\n 5 r3 paused\n 6 r4 in shutdown\n - r5 crashed\n",
    );
    let s = read(&text).unwrap();
    let active: Vec<&str> = ["r1", "r2", "r3", "r4", "r5"]
        .into_iter()
        .filter(|d| s.domain_running(d))
        .collect();
    assert_eq!(active, ["r1", "r3", "r4"]);
}

/// Review 3, N18: a domain whose name has a space does not shadow another: `r2 old` is its
/// own domain, shut off, and `r2` stays as it is.
#[test]
fn a_domain_name_with_a_space_is_one_name() {
    let spaced = GOOD
        .replace(
            " -    r2   shut off\n",
            " -    r2   shut off\n -    r2 old   shut off\n 7    r3 x   in shutdown\n",
        )
        .replace("r2\t\n", "r2\t\nr2 old\t\nr3 x\t\n");
    let s = read(&spaced).unwrap();
    assert_eq!(s.domains["r2"].state, "shut off");
    assert_eq!(s.domains["r2 old"].state, "shut off");
    assert_eq!(s.domains["r3 x"].state, "in shutdown");
    assert!(!s.domain_running("r2"));
}

/// Review 3, N22: a hold tag with a newline cannot forge a hold: the broken row makes the
/// answer untrusted, and so does a hold on a snapshot the probe did not list.
#[test]
fn a_hold_row_that_is_not_three_fields_is_an_error() {
    let with = |rows: &str| {
        GOOD.replace(
            "#zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n",
            &format!("#zfs\nversion\t-\n#rc 0\n#holds\n{rows}#rc 0\n"),
        )
    };
    let forged = with("p/proto@b\tx\np/proto@a\tlab-sync:hv9\tTue Dec  1 10:00 2026\n");
    assert!(
        read(&forged)
            .unwrap_err()
            .contains("a hold row with 2 fields")
    );
    let elsewhere = with("p/other@a\tlab-sync:hv9\tTue Dec  1 10:00 2026\n");
    assert!(
        read(&elsewhere)
            .unwrap_err()
            .contains("a hold on `p/other@a`")
    );
    let good = with("p/proto@a\tlab-sync:hv1\tTue Dec  1 10:00 2026\n");
    assert_eq!(
        read(&good).unwrap().proto.snapshots[0].holds,
        ["lab-sync:hv1"]
    );
}

/// Second review #12b: snapshots are ordered by transaction group, so a clock set back on the
/// hypervisor (b taken after a, with an earlier `creation`) does not make `a` the newest.
#[test]
fn snapshots_are_ordered_as_taken_whatever_the_clock_said() {
    let clock_back = GOOD
        .replace(
            "p/proto@b\tcreation\t200\n",
            "p/proto@b\tcreation\t50\np/proto@b\tcreatetxg\t9\n",
        )
        .replace(
            "p/proto@a\tcreation\t100\n",
            "p/proto@a\tcreation\t100\np/proto@a\tcreatetxg\t7\n",
        );
    let s = read(&clock_back).unwrap();
    let order: Vec<&str> = s.proto.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["a", "b"]);
}

/// `status`'s readiness comes in the same answer: the domains whose node answered.
#[test]
fn the_ready_section_names_the_nodes_that_answered() {
    let looked = GOOD.replace("#end\n", "#ready\nr1\n#rc 0\n#end\n");
    let s = read(&looked).unwrap();
    assert!(s.ready.contains("r1") && !s.ready.contains("r2"));
    assert!(read(GOOD).unwrap().ready.is_empty());
}

#[test]
fn a_status_probe_skips_the_clones_snapshots_both_or_neither() {
    let (before, rest) = GOOD.split_once("#labsnaps\n").unwrap();
    let (_, after) = rest.split_once("#domains\n").unwrap();
    let probe = |labsnaps: &str, labsnapprops: &str| {
        format!(
            "{before}#labsnaps\n#rc {labsnaps}\n#labsnapprops\n#rc {labsnapprops}\n#domains\n{after}"
        )
    };
    let s = read(&probe("skipped", "skipped")).unwrap();
    assert!(s.clone_snapshots.is_empty());
    assert!(s.domain_running("r1"));
    assert!(read(&probe("0", "0")).is_ok());
    // One read and the other skipped is no probe this reader wrote.
    let one = read(&probe("skipped", "0")).unwrap_err();
    assert!(one.contains("clones' snapshots"), "{one}");
}
