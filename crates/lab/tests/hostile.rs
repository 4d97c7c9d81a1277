//! A property over generated lab files, hostile names included: every file the model accepts
//! yields only remote commands whose arguments are plain words (no shell syntax, no option
//! where a name goes), and `generate` never writes outside `build/`.
//!
//! The lab files are built from fragments that mix ordinary names with shell metacharacters,
//! spaces, newlines, `..`, leading dashes and look-alike letters. Commands come from the real
//! create and destroy code, run against a scripted hypervisor.

use std::path::{Path, PathBuf};

use lab_exec::{Executor, Mode, Out};
use lab_generate::NodeBuild;
use lab_model::Lab;
use proptest::prelude::*;

/// Pieces names are made of: ordinary ones and hostile ones.
const PIECES: &[&str] = &[
    "r1", "hv0", "tank", "a", "x-y", "0", "z.z", "_", "pro", // ordinary
    " ", ";", "$(", ")", "`", "'", "\"", "\n", "|", "&", ">", "<", "*", "?", "..", "/", "-", "--",
    "\\", "~", "#", "=", ",", ":", "@", "\u{430}", "\u{200b}", "\t", "%", "!",
];

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 1..5).prop_map(|v| v.concat())
}

/// One value: usually ordinary (so files get accepted), sometimes made of random pieces.
fn value(ordinary: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(ordinary).prop_map(str::to_owned),
        1 => name(),
    ]
}

#[derive(Debug, Clone)]
struct Spec {
    lab: String,
    hv: String,
    ssh: String,
    pool: String,
    proto_leaf: String,
    snapshot: String,
    staging: String,
    nodes: Vec<(String, String, Option<String>)>, // name, hostname, dataset leaf
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        value(&["lab1", "t"]),
        value(&["hv0", "h-1"]),
        value(&["hv0", "ops@hv0.example:2222"]),
        value(&["tank", "ssd-vol0"]),
        value(&["proto", "proto-disk0"]),
        value(&["base", "*-release", "2026????-*"]),
        value(&["/var/lib/lab/staging", "/srv/lab"]),
        prop::collection::vec(
            (
                value(&["r1", "r2", "vpp0-1"]),
                value(&["r1", "r1.example", "host"]),
                prop::option::of(value(&["labs", "c"])),
            ),
            1..4,
        ),
    )
        .prop_map(
            |(lab, hv, ssh, pool, proto_leaf, snapshot, staging, nodes)| Spec {
                lab,
                hv,
                ssh,
                pool,
                proto_leaf,
                snapshot,
                staging,
                nodes,
            },
        )
}

/// A JSON string is a valid double-quoted YAML scalar.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn lab_file(s: &Spec, overlay: &Path) -> String {
    let mut text = format!(
        "lab: {{name: {}, id: 1}}\noverlay: o\noverlays:\n  o: {{dir: {}}}\nhypervisors:\n  {}: {{id: 0, ssh: {}, pool: {}, proto: {}, snapshot: {}, staging: {}}}\nnodes:\n",
        q(&s.lab),
        q(&overlay.display().to_string()),
        q(&s.hv),
        q(&s.ssh),
        q(&s.pool),
        q(&format!("{}/{}", s.pool, s.proto_leaf)),
        q(&s.snapshot),
        q(&s.staging),
    );
    for (i, (name, hostname, dataset)) in s.nodes.iter().enumerate() {
        text.push_str(&format!(
            "  {}: {{hypervisor: {}, id: {}, hostname: {}",
            q(name),
            q(&s.hv),
            i + 1,
            q(hostname)
        ));
        if let Some(d) = dataset {
            text.push_str(&format!(
                ", dataset: {}",
                q(&format!("{}/{d}/{name}", s.pool))
            ));
        }
        text.push_str("}\n");
    }
    text
}

/// Arguments that are `lab`'s own constant text: shell scripts and flags.
fn constant(arg: &str) -> bool {
    const FLAGS: &[&str] = &[
        "-c",
        "-o",
        "-H",
        "-p",
        "-q",
        "-s",
        "-k",
        "-d",
        "-r",
        "-x",
        "-w",
        "-rltDH",
        "--executability",
        "--ignore-times",
        "--inplace",
        "--omit-dir-times",
        "umask",
        "022",
        "&&",
        "--uri",
        "--key",
        "--set",
        "--config",
        "--protect-args",
        "--timeout=30",
    ];
    FLAGS.contains(&arg)
        || arg == HOLDER
        || arg.contains('\n')
        || arg.starts_with("[ \"$(zfs get")
        || arg.starts_with("if ")
}

/// A plain word: nothing a shell or a program's option parser would read as syntax.
fn plain(arg: &str) -> bool {
    !arg.is_empty()
        && !arg.starts_with('-')
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/@:=+,-".contains(&b))
}

/// rsync's remote command (`umask 022 &&`, the guard, then `rsync`): each word a flag or a plain word.
fn rsync_path_ok(arg: &str) -> Option<bool> {
    let words = arg.strip_prefix("--rsync-path=")?;
    // The guard's check (a constant script) and this run's holder line, quoted.
    let words = match (words.find(" sh -c '"), words.find("' lab-guard ")) {
        (Some(from), Some(to)) => format!("{} sh -c SCRIPT{}", &words[..from], &words[to + 1..]),
        _ => words.to_owned(),
    };
    let words = words.replace(&format!("'{HOLDER}'"), "HOLDER");
    Some(words.split(' ').all(|w| constant(w) || plain(w)))
}

/// The holder line of the runs here (not from the lab file).
const HOLDER: &str = "ops@ctl 4242 run 1700000000";

/// The libvirt marker is the one argument with XML in it: its names must be plain words.
fn marker_ok(arg: &str) -> Option<bool> {
    let rest = arg.strip_prefix("<lab lab=\"")?;
    let (lab, rest) = rest.split_once("\" node=\"")?;
    let node = rest.strip_suffix("\"/>")?;
    Some(plain(lab) && plain(node))
}

/// Every remote command of a create and a destroy of `lab`, with what it is fed.
fn plans(lab: &Lab, build: &Path) -> Vec<(Vec<String>, Option<String>)> {
    let nodes: Vec<_> = lab.nodes.iter().collect();
    let hv = &lab.hypervisors[0];
    // Whatever the snapshot setting, the proto has a snapshot it matches.
    let snap = match &hv.snapshot {
        lab_model::SnapshotSpec::Exact(s) | lab_model::SnapshotSpec::Newest(s) => {
            s.replace('*', "x").replace('?', "y")
        }
    };
    let ours: String = nodes
        .iter()
        .map(|n| {
            format!(
                "{d}\torigin\t{p}@{snap}\t-\n{d}\tlab:lab\t{l}\tlocal\n{d}\tlab:node\t{n}\tlocal\n",
                d = n.dataset,
                p = hv.proto,
                l = lab.name,
                n = n.name
            )
        })
        .collect();
    let mut all = Vec::new();
    for (verb, datasets) in [("create", String::new()), ("destroy", ours)] {
        let (proto, snap, datasets) = (hv.proto.clone(), snap.clone(), datasets.clone());
        let script: lab_exec::Script = Box::new(move |_, line| {
            line.contains(" lab-probe ").then(|| {
                let names: String = datasets
                    .lines()
                    .map(|l| l.split('\t').next().unwrap())
                    .fold(String::new(), |mut acc, n| {
                        if !acc.lines().any(|l| l == n) {
                            acc.push_str(n);
                            acc.push('\n');
                        }
                        acc
                    });
                Out::ok(lab_hv::state::scripted_answer(line, &format!(
                    "#snapshots\n{proto}@{snap}\tguid\t1\n{proto}@{snap}\tcreation\t1\n#rc 0\n\
                     #zfs\nversion\t-\n#rc 0\n#holds\n#rc 0\n#names\n{names}#rc 0\n#datasets\n{datasets}#rc 0\n#labsnaps\n#rc 0\n#labsnapprops\n#rc 0\n#domains\n#rc 0\n\
                     #markers\n#rc 0\n#networks\n#rc 0\n#udp\n#rc 0\n#end\n"
                )))
            })
        });
        let exec = Executor::new(Mode::Scripted(script), lab_hv::targets(lab, &nodes), 4);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            lab_hv::lock::guard_only(
                &exec,
                &lab.name,
                &lab.hypervisors.iter().collect::<Vec<_>>(),
                &lab_hv::Holder {
                    owner: "ops@ctl".into(),
                    pid: 4242,
                    verb: "run".into(),
                    since: 1_700_000_000,
                },
            );
            if verb == "create" {
                let builds = nodes
                    .iter()
                    .map(|n| {
                        let tree = lab_generate::NodePaths::of(build, "o", n).tree;
                        let b = NodeBuild {
                            tree,
                            digest: "d".into(),
                            domain_xml: Some(b"<domain/>".to_vec()),
                            dirs: vec!["etc".into()],
                            modes: Vec::new(),
                        };
                        (n.name.clone(), b)
                    })
                    .collect();
                let req = lab_create::CreateRequest {
                    reconciled: Default::default(),
                    lab,
                    nodes: nodes.clone(),
                    builds,
                    networks: Default::default(),
                    force: true,
                    start: true,
                    owners: lab_hv::own::Owners {
                        me: "ops@ctl".into(),
                        also: Vec::new(),
                    },
                    now: 1,
                    start_batch: None,
                    start_interval: None,
                };
                lab_create::create(&exec, &req, &|_| {}).await.unwrap();
            } else {
                let req = lab_destroy::DestroyRequest {
                    lab,
                    nodes: nodes.clone(),
                    owners: lab_hv::own::Owners::default(),
                };
                lab_destroy::destroy(&exec, &req, &|_| {}).await;
            }
        });
        all.extend(exec.recorded().into_iter().map(|r| {
            (
                r.argv,
                r.stdin.map(|b| String::from_utf8_lossy(&b).into_owned()),
            )
        }));
    }
    all
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn accepted_lab_files_yield_only_plain_arguments_and_write_only_under_build(s in spec()) {
        let overlay = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(overlay.path().join("etc")).unwrap();
        std::fs::write(overlay.path().join("etc/hostname.j2"), "{{ node.hostname }}\n").unwrap();
        std::fs::write(overlay.path().join("etc/lab.j2"), "{{ lab.name }} {{ node.name }} {{ node.dataset }}\n").unwrap();
        std::fs::create_dir_all(overlay.path().join("blobs/r1")).unwrap();
        std::fs::write(overlay.path().join("blobs/r1/blob"), "b\n").unwrap();

        let text = lab_file(&s, overlay.path());
        let file = PathBuf::from("hostile.yaml");
        let Ok(tree) = lab_model::tree::parse(&text, &file) else { return Ok(()) };
        let Ok(lab) = Lab::from_tree(tree, vec![file]) else { return Ok(()) };

        // generate writes under build/ and nowhere else in its working directory
        let work = tempfile::tempdir().unwrap();
        let build = work.path().join("build");
        let nodes: Vec<_> = lab.nodes.iter().collect();
        let request = lab_generate::Request {
            lab: &lab,
            overlay: None,
            build_dir: &build,
            nodes: &nodes,
        };
        lab_generate::generate(&request, &|_| {}).unwrap();
        for path in files_under(work.path()) {
            prop_assert!(path.starts_with(&build), "{} is outside build/", path.display());
        }
        for path in files_under(overlay.path()) {
            prop_assert!(
                ["etc", "etc/hostname.j2", "etc/lab.j2", "blobs", "blobs/r1", "blobs/r1/blob"]
                    .iter()
                    .any(|p| path == overlay.path().join(p)),
                "generate wrote {} into the overlay", path.display()
            );
        }

        // every argument of every remote command is a constant or a plain word
        for (argv, fed) in plans(&lab, &build) {
            // A hypervisor's plan: its steps' command lines are checked word by word.
            let steps = split_plan(&argv, fed.as_deref());
            for arg in argv.iter().chain(&steps) {
                let ok = constant(arg)
                    || plain(arg)
                    || marker_ok(arg) == Some(true)
                    || rsync_path_ok(arg) == Some(true);
                prop_assert!(ok, "argument {arg:?} of {argv:?} from lab file:\n{text}");
            }
        }
    }
}

/// The words of a hypervisor's plan's steps (`sh -c BOOT lab-plan SIZE ...` fed the runner, then a
/// function per node whose lines are `step NODE INDEX NAME SECS COMMAND...` or `feed NODE
/// INDEX NAME SECS DATA COMMAND...`, `_readied NODE INDEX NAME SECS COMMAND...` where the
/// ready wave left the node's ready mark, and `_defined NODE I INDEX NAME` where the define
/// wave left the node's definition): the node and the command's words (step names are the code's
/// own, the data is stdin or a file of the plan's, no argument). Nothing for any other
/// command.
fn split_plan(argv: &[String], fed: Option<&str>) -> Vec<String> {
    let Some(at) = argv.iter().position(|a| a == "lab-plan") else {
        return Vec::new();
    };
    let Some(fed) = fed else {
        return Vec::new();
    };
    // The script is the first SIZE bytes fed (`lab-plan SIZE TREES TARRED`); the trees follow.
    let size = argv
        .get(at + 1)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(fed.len());
    let script = fed.get(..size).unwrap_or(fed);
    let mut words_of_steps = Vec::new();
    let mut rest = script;
    // A step's line may hold newlines inside its quotes: read quote-balanced lines.
    while !rest.is_empty() {
        let mut end = 0;
        let mut quoted = false;
        for (i, c) in rest.char_indices() {
            match c {
                '\'' => quoted = !quoted,
                '\n' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
            end = i + c.len_utf8();
        }
        let line = &rest[..end];
        rest = rest[end..].strip_prefix('\n').unwrap_or(&rest[end..]);
        let Some(body) = line
            .strip_prefix("  ")
            .and_then(|l| l.strip_suffix(" || return"))
        else {
            continue;
        };
        // A line that does not read back as words is a word that fails the check.
        let Some(w) = words(body) else {
            words_of_steps.push(body.to_owned());
            continue;
        };
        let skip = match w.first().map(String::as_str) {
            Some("step" | "_readied") => 5,
            Some("feed") => 6,
            // The node; the rest are numbers and the step's name.
            Some("_defined") => w.len(),
            _ => {
                words_of_steps.push(body.to_owned());
                continue;
            }
        };
        words_of_steps.push(w[1].clone());
        words_of_steps.extend(w.into_iter().skip(skip));
    }
    words_of_steps
}

/// The words of a command line as `lab_exec::quote_line` writes it (bare, or in single
/// quotes with `'\''` for a quote); `None` for anything else.
fn words(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('\'', false) => quoted = true,
            ('\'', true) => quoted = false,
            ('\\', false) if chars.peek() == Some(&'\'') => {
                word.push('\'');
                chars.next();
            }
            (' ', false) => out.push(std::mem::take(&mut word)),
            (c, _) => word.push(c),
        }
    }
    (!quoted).then(|| {
        out.push(word);
        out
    })
}

/// The property can fail: a name with shell syntax in it is caught by the argument check.
#[test]
fn the_argument_check_catches_shell_syntax_and_options() {
    let argv: Vec<String> = ["sh", "-c", "boot", "lab-plan"].map(String::from).to_vec();
    let plan = |line: &str| {
        format!("step() {{ :; }}\nn0() {{\n  step r1 0 stop 120 {line} || return\n}}\n")
    };
    let ws = split_plan(&argv, Some(&plan("virsh -q destroy r1")));
    assert_eq!(ws, ["r1", "virsh", "-q", "destroy", "r1"]);
    assert!(ws.iter().all(|w| constant(w) || plain(w)), "{ws:?}");
    let ws = split_plan(&argv, Some(&plan("virsh -q destroy 'r;1'")));
    assert!(!ws.iter().all(|w| constant(w) || plain(w)), "{ws:?}");
    // A quoted newline stays inside its step.
    let ws = split_plan(&argv, Some(&plan("sh -c 'a\nb' x 'r;1'")));
    assert!(ws.contains(&"r;1".to_owned()), "{ws:?}");
    for bad in ["a;b", "$(x)", "a b", "-rf", "a\tb", "`x`", "<x>", "\u{430}"] {
        assert!(!plain(bad), "{bad:?}");
    }
    assert_eq!(marker_ok("<lab lab=\"t\" node=\"r1\"/>"), Some(true));
    assert_eq!(marker_ok("<lab lab=\"t\" node=\"r 1\"/>"), Some(false));
    assert_eq!(
        rsync_path_ok("--rsync-path=flock -s /x;y rsync"),
        Some(false)
    );
}
