//! Command plans of `lab proto sync` and `prune` for each transport and each path, against
//! scripted hypervisors: the exact commands are what is checked. The OpenZFS-only paths also
//! run for real on the bed's OpenZFS pair (`e2e_openzfs.rs`), each named below; what has no
//! twin there says why.
//!
//! Long: most of it is the scripted fleet (what each hypervisor holds and can do) and the
//! table of scenarios.

use std::path::{Path, PathBuf};

use lab_exec::{Executor, Mode, Out};
use lab_model::Lab;
use lab_proto::Fleet;

const FLEET: &str = r#"
hypervisors:
  src: {id: 0, pool: tank, proto: tank/proto, snapshot: "*-release"}
  behind: {id: 1, ssh: "root@behind.example:2222", pool: tank, proto: tank/proto, snapshot: "*-release"}
  empty: {id: 2, peer_ssh: "replica@10.0.0.2", pool: ssd, proto: ssd/replica/proto, snapshot: "*-release"}
  rogue: {id: 3, pool: tank, proto: tank/proto, snapshot: "*-release"}
proto: {source: src, keep: 1, TRANSPORT}
"#;

fn fleet(transport: &str, edits: &[(&str, &str)]) -> Lab {
    let mut text = FLEET.replace("TRANSPORT", transport);
    for (from, to) in edits {
        text = text.replace(from, to);
    }
    let (tree, files) = (
        lab_model::tree::parse(&text, Path::new("fleet.yaml")).unwrap(),
        vec![PathBuf::from("fleet.yaml")],
    );
    // As `load_fleet` does: a lab named `fleet` with no nodes.
    let mut base = lab_model::tree::parse(
        "lab: {name: fleet, id: 0}\nnodes: {}\n",
        Path::new("(fleet)"),
    )
    .unwrap();
    base.merge(tree);
    Lab::from_tree(base, files).unwrap()
}

/// The source's answer to `zfs send -n -t TOKEN`.
#[derive(Default, Clone, Copy)]
enum Token {
    /// It can send what the token asks for.
    Good,
    /// It refuses the token: the snapshot is gone.
    #[default]
    Refused,
    /// It fails for another reason (a suspended pool): nothing is known of the token.
    SourceTrouble,
}

/// What the scripted fleet is and can do, beyond the snapshots every scenario starts from.
#[derive(Default, Clone, Copy)]
struct World {
    /// Pools with feature flags (OpenZFS) everywhere; else zfs-fuse's version 23.
    modern: bool,
    /// Tools on every hypervisor.
    tools: &'static [&'static str],
    /// `behind` has a cut receive's token.
    token: bool,
    /// What the source says of the token.
    token_answer: Token,
    /// The source's proto is encrypted.
    encrypted: bool,
    /// `behind` already holds its base (and the source holds it for `behind`), and an old
    /// source snapshot carries a stale hold of `behind`'s.
    held: bool,
    /// zrepl delivers within the wait.
    zrepl_delivers: bool,
    /// `empty` has a cut full receive: its dataset, no snapshot, a token.
    cut_full: bool,
    /// `rogue` (diverged) has releases of its own that the source never had.
    rogue_releases: bool,
}

/// What each hypervisor holds: snapshots (name, guid) oldest first, and clones.
fn listing(host: &str, w: &World) -> String {
    let rows: &[(&str, &str)] = match host {
        "src" => &[
            ("20261001-release", "1"),
            ("20261101-before", "2"),
            ("20261101-release", "3"),
            ("20261120-release", "4"),
        ],
        "behind" => &[("20261001-release", "1")],
        "empty" => &[],
        _ if w.rogue_releases => &[
            ("20261001-release", "1"),
            ("hand-made", "99"),
            ("local1-release", "97"),
            ("local2-release", "98"),
        ],
        _ => &[("20261001-release", "1"), ("hand-made", "99")],
    };
    let dataset = if host == "empty" {
        "ssd/replica/proto"
    } else {
        "tank/proto"
    };
    let exists = host != "empty" || w.cut_full;
    let tag = "lab-sync:behind";
    // (snapshot, tags) held on this host.
    let holds: Vec<(&str, Vec<&str>)> = match (w.held, host) {
        (true, "src") => vec![
            ("20261001-release", vec![tag]),
            ("20261101-before", vec![tag, "ops-keep"]),
        ],
        (true, "behind") => vec![("20261001-release", vec![tag])],
        _ => Vec::new(),
    };
    // The probe's answer: the proto's snapshots, what zfs can do, the holds, the pool's
    // datasets, no domains.
    let mut out = String::from("#snapshots\n");
    if exists {
        out.push_str(&format!("{dataset}\tguid\t1000\n"));
    }
    for (i, (name, guid)) in rows.iter().enumerate() {
        let refs = holds
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, t)| t.len());
        out.push_str(&format!(
            "{dataset}@{name}\tguid\t{guid}\n{dataset}@{name}\tcreation\t{}\n{dataset}@{name}\tuserrefs\t{refs}\n",
            100 + i
        ));
    }
    out.push_str(if exists { "#rc 0\n" } else { "#rc absent\n" });
    out.push_str(&format!(
        "#zfs\nversion\t{}\n",
        if w.modern { "-" } else { "23" }
    ));
    for t in w.tools {
        out.push_str(&format!("tool\t{t}\n"));
    }
    if w.modern && exists {
        if (w.token && host == "behind") || (w.cut_full && host == "empty") {
            out.push_str("prop\treceive_resume_token\t1-abc123-d8-789c\n");
        }
        let encrypted = w.encrypted && host == "src";
        out.push_str(&format!(
            "prop\tencryption\t{}\n",
            if encrypted { "aes-256-gcm" } else { "off" }
        ));
    }
    out.push_str("#rc 0\n#holds\n");
    if w.modern {
        for (name, tags) in &holds {
            for t in tags {
                out.push_str(&format!("{dataset}@{name}\t{t}\tTue Dec  1 10:00 2026\n"));
            }
        }
        out.push_str("#rc 0\n");
    } else if holds.is_empty() {
        out.push_str("#rc 0\n");
    } else {
        out.push_str("#rc unsupported\n");
    }
    let pool = dataset.split('/').next().unwrap();
    let mut names = vec![pool.to_owned()];
    let mut datasets = format!("{pool}\torigin\t-\t-\n");
    if exists {
        names.push(dataset.to_owned());
        datasets.push_str(&format!("{dataset}\torigin\t-\t-\n"));
    }
    if host == "src" {
        // A lab's node still runs on the oldest release.
        names.push("tank/r1".to_owned());
        datasets.push_str(
            "tank/r1\torigin\ttank/proto@20261001-release\t-\ntank/r1\tlab:lab\tvpp\tlocal\ntank/r1\tlab:node\tr1\tlocal\n",
        );
    }
    out.push_str(&format!(
        "#names\n{}\n#rc 0\n#datasets\n{datasets}#rc 0\n#labsnaps\n#rc 0\n#labsnapprops\n#rc 0\n#domains\n#rc 0\n#markers\n#rc 0\n\
         #networks\n#rc 0\n#udp\n#rc 0\n#end\n",
        names.join("\n")
    ));
    out
}

fn run_with(
    transport: &str,
    verb: &str,
    w: World,
    edits: &[(&str, &str)],
    bwlimit: Option<&str>,
) -> String {
    let lab = fleet(transport, edits);
    let fleet = Fleet::of(&lab).unwrap();
    let script: lab_exec::Script = Box::new(move |host, line| {
        if line.contains(" lab-probe ") {
            return Some(Out::ok(lab_hv::state::scripted_answer(
                line,
                &listing(host, &w),
            )));
        }
        if line.contains(" lab-token ") {
            return Some(match w.token_answer {
                Token::Good => Out::ok(""),
                Token::Refused => Out::fail(
                    3,
                    "cannot resume send: 'tank/proto@20261101-release' used in the initial send no longer exists",
                ),
                Token::SourceTrouble => Out::fail(
                    1,
                    "cannot open 'tank/proto': pool I/O is currently suspended",
                ),
            });
        }
        if line.contains("lab-zrepl-wait") {
            return Some(if w.zrepl_delivers {
                Out::ok("")
            } else {
                Out::fail(3, "")
            });
        }
        None
    });
    let targets = lab
        .hypervisors
        .iter()
        .map(|h| lab_exec::Target {
            name: h.name.clone(),
            ssh: h.ssh.clone(),
            parallel: 4,
        })
        .collect();
    let exec = Executor::new(Mode::Scripted(script), targets, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = lab_proto::SyncOptions {
        bwlimit: bwlimit.map(str::to_owned),
    };
    let report = rt.block_on(async {
        if verb == "sync" {
            match lab_proto::sync(&exec, &fleet, &opts, 1_800_000_000, &|_| {}).await {
                Ok(r) => serde_json::to_string_pretty(&r).unwrap(),
                Err(e) => format!("refused: {e}"),
            }
        } else if verb == "forget" {
            serde_json::to_string_pretty(&lab_proto::forget(&exec, &fleet, "behind").await).unwrap()
        } else {
            serde_json::to_string_pretty(&lab_proto::prune(&exec, &fleet, 1).await.unwrap())
                .unwrap()
        }
    });
    let mut out = format!("{report}\n");
    for r in exec.recorded() {
        if r.effect == lab_exec::Effect::Change
            || r.line.starts_with("zfs send")
            || r.line.contains("lab-send")
            || r.line.contains("lab-zrepl-wait")
            || r.line.contains(" lab-token ")
        {
            out.push_str(&format!("{} $ {}\n", r.host, r.line));
        }
    }
    out
}

fn run(transport: &str, verb: &str) -> String {
    run_with(transport, verb, World::default(), &[], None)
}

#[test]
fn sync_through_the_controller() {
    insta::assert_snapshot!(run("transport: controller", "sync"));
}

#[test]
fn sync_direct_from_the_source() {
    insta::assert_snapshot!(run("transport: direct", "sync"));
}

#[test]
fn prune_keeps_pinned_snapshots_and_increment_bases() {
    insta::assert_snapshot!(run("transport: controller", "prune"));
}

const MODERN: World = World {
    modern: true,
    tools: &[],
    token: false,
    token_answer: Token::Refused,
    encrypted: false,
    held: false,
    zrepl_delivers: false,
    cut_full: false,
    rogue_releases: false,
};

/// On OpenZFS: compressed streams, resumable receives, holds moved to the new base; with a
/// zvol target, no device nodes for the replica. Twins: `a_cut_send_resumes_...` (`-c`,
/// `recv -s`, `volmode=none`) and `holds_keep_the_next_base_...`.
#[test]
fn sync_on_openzfs_compresses_resumes_and_holds() {
    insta::assert_snapshot!(run_with(
        "transport: controller",
        "sync",
        MODERN,
        &[(
            "proto: ssd/replica/proto,",
            "proto: ssd/replica/proto, storage: zvol, partition: 1,"
        )],
        None
    ));
}

/// OpenZFS, and `behind` has a cut receive whose token the source accepts.
const RESUMABLE: World = World {
    token: true,
    token_answer: Token::Good,
    ..MODERN
};

/// A cut receive's token that the source accepts: resumed, then the rest sent. Twin:
/// `a_cut_send_resumes_from_its_token_and_moves_less_than_a_full_send`.
#[test]
fn sync_resumes_a_cut_receive_from_its_token() {
    insta::assert_snapshot!(run_with(
        "transport: controller",
        "sync",
        RESUMABLE,
        &[],
        None
    ));
}

/// A zvol replica whose cut receive is resumed to its end gets no device nodes either. Twin:
/// the same e2e test checks `volmode=none` and no `/dev/zvol` link after the resume.
#[test]
fn a_resumed_zvol_replica_stays_without_device_nodes() {
    let plan = run_with(
        "transport: controller",
        "sync",
        RESUMABLE,
        &[(
            "root@behind.example:2222\", pool: tank",
            "root@behind.example:2222\", storage: zvol, partition: 1, pool: tank",
        )],
        None,
    );
    let resumed = plan.find("send -t").expect("a resumed send");
    let volmode = plan
        .find("zfs set volmode=none tank/proto")
        .expect("volmode=none set");
    assert!(resumed < volmode, "{plan}");
}

/// A token the source refuses (its snapshot is gone): the partial receive is aborted, said so,
/// and the send starts again. Twin: `a_token_the_source_refuses_is_thrown_away_and_said`.
#[test]
fn sync_aborts_a_partial_receive_only_when_its_token_is_refused() {
    insta::assert_snapshot!(run_with(
        "transport: controller",
        "sync",
        World {
            token: true,
            token_answer: Token::Refused,
            ..MODERN
        },
        &[],
        None
    ));
}

/// A cut full receive (a dataset with no snapshot, and a token): resumed when the source can,
/// else aborted and sent in full again; never taken for a diverged replica. Twins: both e2e
/// tests above cut the first (full) send of a new proto.
#[test]
fn sync_treats_a_cut_full_receive_as_no_replica_yet() {
    let cut = |token_answer| {
        run_with(
            "transport: controller",
            "sync",
            World {
                cut_full: true,
                token_answer,
                ..MODERN
            },
            &[("rogue:", "x-rogue:"), ("behind:", "x-behind:")],
            None,
        )
    };
    insta::assert_snapshot!("cut_full_resumed", cut(Token::Good));
    insta::assert_snapshot!("cut_full_aborted", cut(Token::Refused));
}

/// The source fails the token check for a reason of its own (a suspended pool): the partial
/// receive is kept for the next sync, never aborted (review 3, N6).
#[test]
fn a_source_in_trouble_never_costs_a_partial_receive() {
    let plan = run_with(
        "transport: controller",
        "sync",
        World {
            token: true,
            token_answer: Token::SourceTrouble,
            ..MODERN
        },
        &[],
        None,
    );
    assert!(!plan.contains("zfs recv -A"), "{plan}");
    assert!(plan.contains("pool I/O is currently suspended"), "{plan}");
}

/// A fleet file that leaves a hypervisor out (`behind`, down for maintenance) changes nothing
/// about it: prune keeps its held bases and lists them (review 3, N1); a human's hold stays.
/// No twin: the bed has no hypervisor to lose; the plan is the whole of it.
#[test]
fn prune_keeps_and_lists_the_holds_of_a_hypervisor_the_file_leaves_out() {
    let plan = run_with(
        "transport: controller",
        "prune",
        World {
            held: true,
            ..MODERN
        },
        &[("  behind: {", "  gone: {")],
        None,
    );
    assert!(!plan.contains("lab-hold release"), "{plan}");
    assert!(!plan.contains("@20261001-release\n"), "{plan}");
    insta::assert_snapshot!(plan);
}

/// A diverged target's own releases (the source never had them) may be the only copies: prune
/// leaves them, whatever `keep` says (review 3, N7). No twin: the plan is the whole of it.
#[test]
fn prune_never_destroys_what_only_a_diverged_target_has() {
    let plan = run_with(
        "transport: controller",
        "prune",
        World {
            rogue_releases: true,
            ..MODERN
        },
        &[],
        None,
    );
    assert!(!plan.contains("local1-release\n"), "{plan}");
    assert!(!plan.contains("rogue $"), "{plan}");
}

/// `lab proto forget behind`: its sync holds go, on every hypervisor of the fleet; nothing else.
#[test]
fn forget_releases_the_holds_of_a_hypervisor_that_left() {
    let plan = run_with(
        "transport: controller",
        "forget",
        World {
            held: true,
            ..MODERN
        },
        &[("  behind: {", "  gone: {")],
        None,
    );
    assert!(!plan.contains("zfs destroy"), "{plan}");
    insta::assert_snapshot!(plan);
}

/// An encrypted proto goes raw (`-w`), never decrypted on the way. Twin:
/// `an_encrypted_proto_is_sent_raw_and_arrives_still_encrypted`.
#[test]
fn sync_sends_an_encrypted_proto_raw() {
    insta::assert_snapshot!(run_with(
        "transport: controller",
        "sync",
        World {
            encrypted: true,
            ..MODERN
        },
        &[],
        None
    ));
}

/// Where zfs lists holds, this target's stale hold is released by tag and a human's hold is
/// left alone; an up-to-date target whose base is held changes nothing. Twin (the moving
/// hold): `holds_keep_the_next_base_on_both_sides_and_move_with_each_sync`.
#[test]
fn sync_moves_listed_holds_and_leaves_others_alone() {
    insta::assert_snapshot!(run_with(
        "transport: controller",
        "sync",
        World {
            held: true,
            ..MODERN
        },
        &[],
        None
    ));
}

/// zfs-fuse (pool version 23): plain streams, a note per target, holds released by trying.
#[test]
fn sync_on_an_old_pool_degrades_and_says_so() {
    insta::assert_snapshot!(run_with(
        "transport: controller",
        "sync",
        World {
            held: true,
            ..World::default()
        },
        &[],
        None
    ));
}

/// A rate limit goes through pv (preferred) or mbuffer on the source, in both transports.
#[test]
fn sync_limits_the_rate_through_pv_or_mbuffer() {
    let with = |tools: &'static [&'static str], transport: &str| {
        run_with(
            transport,
            "sync",
            World {
                tools,
                ..World::default()
            },
            &[("rogue:", "x-rogue:"), ("empty:", "x-empty:")],
            Some("20M"),
        )
    };
    insta::assert_snapshot!(
        "bwlimit_pv_controller",
        with(&["pv", "mbuffer"], "transport: controller")
    );
    insta::assert_snapshot!(
        "bwlimit_mbuffer_controller",
        with(&["mbuffer"], "transport: controller")
    );
    insta::assert_snapshot!("bwlimit_pv_direct", with(&["pv"], "transport: direct"));
    // Neither: refused before anything is sent.
    let refused = with(&[], "transport: controller");
    assert!(
        refused.starts_with("refused: src: a rate limit (20M) needs `pv` or `mbuffer`"),
        "{refused}"
    );
    assert!(!refused.contains(" $ "), "nothing ran: {refused}");
}

#[test]
fn sync_wakes_zrepl_and_waits_for_the_newest_release() {
    let zrepl = "transport: zrepl, zrepl_job: lab-proto, zrepl_wait: 120";
    insta::assert_snapshot!(
        "zrepl_delivers",
        run_with(
            zrepl,
            "sync",
            World {
                zrepl_delivers: true,
                ..World::default()
            },
            &[],
            None
        )
    );
    insta::assert_snapshot!(
        "zrepl_does_not_deliver",
        run_with(zrepl, "sync", World::default(), &[], None)
    );
}

/// Held snapshots are kept and listed, whoever holds them.
#[test]
fn prune_keeps_held_snapshots_and_lists_them() {
    insta::assert_snapshot!(run_with(
        "transport: controller",
        "prune",
        World {
            held: true,
            ..MODERN
        },
        &[],
        None
    ));
}

#[test]
fn zrepl_without_a_job_and_a_bad_rate_are_refused_at_load_time() {
    for (proto, says) in [
        ("transport: zrepl", "zrepl_job"),
        ("bwlimit: 10 MB/s", "proto.bwlimit"),
        ("parallel: 0", "proto.parallel"),
    ] {
        let text = FLEET.replace("TRANSPORT", proto);
        let tree = lab_model::tree::parse(
            &format!("lab: {{name: f, id: 0}}\nnodes: {{}}\n{text}"),
            Path::new("fleet.yaml"),
        )
        .unwrap();
        let err = Lab::from_tree(tree, vec![]).unwrap_err().to_string();
        assert!(err.contains(says), "{proto}: {err}");
    }
}
