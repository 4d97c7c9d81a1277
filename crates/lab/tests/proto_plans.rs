//! Command plans of `lab proto sync` and `prune` for each transport, against scripted
//! hypervisors: zrepl is not installable here and OpenZFS-only behaviour cannot run on the test
//! bed, so the exact commands are what is checked.

use std::path::{Path, PathBuf};

use lab_exec::{Executor, Mode, Out};
use lab_model::Lab;
use lab_proto::Fleet;

const FLEET: &str = r#"
hypervisors:
  src: {id: 0, pool: tank, proto: tank/proto, snapshot: "*-release"}
  behind: {id: 1, ssh: "root@behind.example:2222", pool: tank, proto: tank/proto, snapshot: "*-release"}
  empty: {id: 2, pool: ssd, proto: ssd/replica/proto, snapshot: "*-release"}
  rogue: {id: 3, pool: tank, proto: tank/proto, snapshot: "*-release"}
proto: {source: src, keep: 1, TRANSPORT}
"#;

fn fleet(transport: &str) -> Lab {
    let text = FLEET.replace("TRANSPORT", transport);
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

/// What each hypervisor holds: snapshots (name, guid) oldest first, and clones.
fn listing(host: &str) -> String {
    let rows: &[(&str, &str)] = match host {
        "src" => &[
            ("20261001-release", "1"),
            ("20261101-before", "2"),
            ("20261101-release", "3"),
            ("20261120-release", "4"),
        ],
        "behind" => &[("20261001-release", "1")],
        "empty" => &[],
        _ => &[("20261001-release", "1"), ("hand-made", "99")],
    };
    let dataset = if host == "empty" {
        "ssd/replica/proto"
    } else {
        "tank/proto"
    };
    // The probe's answer: the proto's snapshots, the pool's datasets, no domains.
    let mut out = String::from("#snapshots\n");
    if host != "empty" {
        out.push_str(&format!("{dataset}\tguid\t1000\n"));
    }
    for (i, (name, guid)) in rows.iter().enumerate() {
        out.push_str(&format!(
            "{dataset}@{name}\tguid\t{guid}\n{dataset}@{name}\tcreation\t{}\n",
            100 + i
        ));
    }
    out.push_str(if host == "empty" {
        "#rc absent\n"
    } else {
        "#rc 0\n"
    });
    let pool = dataset.split('/').next().unwrap();
    let mut names = vec![pool.to_owned()];
    let mut datasets = format!("{pool}\torigin\t-\t-\n");
    if host != "empty" {
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
        "#zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n#names\n{}\n#rc 0\n#datasets\n{datasets}#rc 0\n#domains\n#rc 0\n#markers\n#rc 0\n\
         #networks\n#rc 0\n#end\n",
        names.join("\n")
    ));
    out
}

fn run(transport: &str, verb: &str) -> String {
    let lab = fleet(transport);
    let fleet = Fleet::of(&lab).unwrap();
    let script: lab_exec::Script = Box::new(|host, line| {
        line.contains(" lab-probe ")
            .then(|| Out::ok(lab_hv::state::scripted_answer(line, &listing(host))))
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
        .build()
        .unwrap();
    let report = rt.block_on(async {
        if verb == "sync" {
            serde_json::to_string_pretty(
                &lab_proto::sync(&exec, &fleet, 1_800_000_000, &|_| {})
                    .await
                    .unwrap(),
            )
        } else {
            serde_json::to_string_pretty(&lab_proto::prune(&exec, &fleet, 1).await.unwrap())
        }
        .unwrap()
    });
    let mut out = format!("{report}\n");
    for r in exec.recorded() {
        if r.effect == lab_exec::Effect::Change || r.line.starts_with("zfs send") {
            out.push_str(&format!("{} $ {}\n", r.host, r.line));
        }
    }
    out
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
fn sync_wakes_zrepl_on_each_target() {
    insta::assert_snapshot!(run("transport: zrepl, zrepl_job: lab-proto", "sync"));
}

#[test]
fn prune_keeps_pinned_snapshots_and_increment_bases() {
    insta::assert_snapshot!(run("transport: controller", "prune"));
}

#[test]
fn zrepl_without_a_job_is_refused_at_load_time() {
    let text = FLEET.replace("TRANSPORT", "transport: zrepl");
    let tree = lab_model::tree::parse(
        &format!("lab: {{name: f, id: 0}}\nnodes: {{}}\n{text}"),
        Path::new("fleet.yaml"),
    )
    .unwrap();
    let err = Lab::from_tree(tree, vec![]).unwrap_err().to_string();
    assert!(
        err.contains("proto.transport") && err.contains("zrepl_job"),
        "{err}"
    );
}
