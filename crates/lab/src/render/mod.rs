//! Results on stdout: text tables or `--format json`. Renderers see the data and [`Output`],
//! never the command line.

mod link;
pub mod proto;
mod reconcile;
mod status;

pub use link::{capture, links, recorded};
pub(crate) use status::age;
pub use status::status;

use std::io::Write;

use lab_hv::{NetworkReport, NodeReport, Outcome};
use lab_model::{Lab, LabNode};
use lab_reach::{ExecReport, WaitReport};

use crate::commands::Verb;
use crate::exit::{Exit, Failure};
use crate::settings::Format;
use crate::settings::{Mode, Output};

/// Whether a JSON document went to stdout in this run (then an error adds none).
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn printed_json() -> bool {
    PRINTED_JSON.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn print_json(value: &impl serde::Serialize) {
    PRINTED_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// `(node, hypervisor)` of each node, for the progress display.
pub fn pairs<'a>(nodes: &[&'a LabNode]) -> Vec<(&'a str, &'a str)> {
    nodes
        .iter()
        .map(|n| (n.name.as_str(), n.hypervisor.as_str()))
        .collect()
}

/// One result line: what happened, and why or to what.
fn outcome_text(outcome: &Outcome, done: &str, detail: String) -> (String, String) {
    match outcome {
        Outcome::Done => (done.to_owned(), detail),
        Outcome::Unchanged { reason } => ("unchanged".to_owned(), reason.clone()),
        Outcome::Skipped { reason } => ("skipped".to_owned(), reason.clone()),
        Outcome::Failed {
            step,
            error,
            rolled_back,
        } => (
            "failed".to_owned(),
            format!(
                "{step}: {error}{}",
                if *rolled_back { " (rolled back)" } else { "" }
            ),
        ),
    }
}

/// What a create did after its nodes, for its report: waited until they were ready,
/// validated the lab.
#[derive(Default, Clone, Copy)]
pub struct Then<'a> {
    pub waits: &'a [WaitReport],
    pub validation: Option<&'a lab_reach::validate::Validation>,
    /// What reconcile found and did before the create, and the nodes `--prune` destroyed.
    pub reconcile: Option<&'a lab_change::ReconcileReport>,
    pub pruned: &'a [NodeReport],
}

/// Prints the result of create or destroy (networks and nodes) and turns it into the exit
/// code: any node or network failed or skipped is "partial" (3), every node failed is a
/// failure (1).
pub fn node_reports(
    out: &Output,
    lab: &Lab,
    verb: Verb,
    networks: &[NetworkReport],
    reports: &[NodeReport],
    mode: Mode,
    then: &Then<'_>,
) -> Result<(), Failure> {
    let Then {
        waits,
        validation,
        reconcile,
        pruned,
    } = *then;
    let summary = lab_hv::summary(reports);
    let dry_run = mode.is_dry_run();
    let networks_failed = networks
        .iter()
        .filter(|n| matches!(n.outcome, Outcome::Failed { .. }))
        .count();
    match out.format {
        Format::Json => print_json(&serde_json::json!({
            "lab": lab.name,
            "verb": verb.as_str(),
            "dry_run": dry_run,
            "summary": summary,
            "networks": networks,
            "nodes": reports,
            "ready": (!waits.is_empty()).then_some(waits),
            "validation": validation,
            "reconcile": reconcile.map(|r| serde_json::json!({
                "nics": r.nics,
                "pushed": r.pushed,
                "gone": r.gone,
                "pruned": pruned,
            })),
            "wires": if verb == Verb::Create {
                reports
                    .iter()
                    .flat_map(|r| lab.node(&r.node))
                    .flat_map(|n| n.links().map(move |i| (n, i)))
                    .map(|(n, i)| serde_json::json!({
                        "node": n.name,
                        "interface": i.name,
                        "peer": i.peer,
                        "peer_interface": i.peer_interface,
                        "wire": i.wire,
                    }))
                    .collect::<Vec<_>>()
            } else {
                Vec::new()
            },
        })),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            let print_network = |stdout: &mut std::io::StdoutLock<'_>, n: &NetworkReport| {
                let action = if dry_run {
                    "planned"
                } else {
                    n.action.as_deref().unwrap_or("done")
                };
                let (word, detail) = outcome_text(&n.outcome, action, String::new());
                let name = format!("net {}", n.network);
                row(stdout, &n.hypervisor, &name, &word, &detail, &n.commands);
            };
            // Networks exist before the nodes that use them, and go after them.
            if verb == Verb::Create {
                networks.iter().for_each(|n| print_network(&mut stdout, n));
            }
            if let Some(r) = reconcile {
                reconcile::lines(&mut stdout, r, pruned, dry_run);
            }
            for r in reports {
                let (word, detail) = match &r.outcome {
                    Outcome::Done if dry_run => {
                        ("planned".to_owned(), r.note.clone().unwrap_or_default())
                    }
                    outcome => outcome_text(
                        outcome,
                        match verb {
                            Verb::Destroy => "destroyed",
                            Verb::Start => "started",
                            Verb::Stop => "stopped",
                            Verb::Restart => "restarted",
                            Verb::Link => "set",
                            Verb::Snapshot => "taken",
                            Verb::SnapshotDelete => "deleted",
                            Verb::Restore => "restored",
                            _ => "created",
                        },
                        match (&r.snapshot, &r.note) {
                            (Some(s), Some(n)) => format!("{s} ({n})"),
                            (s, n) => s.clone().or_else(|| n.clone()).unwrap_or_default(),
                        },
                    ),
                };
                row(
                    &mut stdout,
                    &r.hypervisor,
                    &r.node,
                    &word,
                    &detail,
                    &r.commands,
                );
                if dry_run && verb == Verb::Create {
                    for w in wires(lab, &r.node) {
                        let _ = writeln!(stdout, "    wire {w}");
                    }
                }
            }
            if verb != Verb::Create {
                networks.iter().for_each(|n| print_network(&mut stdout, n));
            }
            wait_lines(&mut stdout, waits);
            if !out.quiet {
                eprintln!(
                    "{} {}{}: {} {}, {} unchanged, {} skipped, {} failed",
                    verb.as_str(),
                    lab.name,
                    if dry_run { " (dry run)" } else { "" },
                    summary.done,
                    if dry_run { "planned" } else { "done" },
                    summary.unchanged,
                    summary.skipped,
                    summary.failed
                );
            }
        }
    }
    let verb = verb.as_str();
    let reconcile_failed = reconcile.is_some_and(|r| r.failed())
        || pruned
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed { .. }));
    if summary.failed > 0 && summary.failed == reports.len() {
        Err(Failure::new(
            Exit::Failure,
            format!("{verb}: every node failed"),
        ))
    } else if summary.failed + summary.skipped + networks_failed > 0 {
        Err(Failure::new(
            Exit::Partial,
            format!(
                "{verb}: {} node(s) skipped, {} failed; {networks_failed} network(s) failed",
                summary.skipped, summary.failed
            ),
        ))
    } else if reconcile_failed {
        Err(Failure::new(
            Exit::Partial,
            format!("{verb}: changing the links of nodes that exist failed (see above)"),
        ))
    } else {
        Ok(())
    }
}

/// One row of a verb's report: hypervisor, node (or `net NAME`), result, detail; then the
/// commands of a dry run, a line each.
fn row(
    out: &mut impl Write,
    hypervisor: &str,
    name: &str,
    word: &str,
    detail: &str,
    commands: &[String],
) {
    let _ = writeln!(out, "{hypervisor:<8} {name:<16} {word:<10} {detail}");
    for c in commands {
        let _ = writeln!(out, "    $ {c}");
    }
}

/// A node's wires, one line each: `eth1: udp 127.0.0.1:20320 -> 127.0.0.1:20321 (vpp0-2 eth1)`.
fn wires(lab: &Lab, node: &str) -> Vec<String> {
    let Some(node) = lab.node(node) else {
        return Vec::new();
    };
    node.links()
        .filter_map(|i| {
            let w = i.wire?;
            Some(format!(
                "{}: udp {}:{} -> {}:{} ({} {})",
                i.name,
                w.local_address,
                w.local_port,
                w.remote_address,
                w.remote_port,
                i.peer.as_deref().unwrap_or("?"),
                i.peer_interface.as_deref().unwrap_or("?")
            ))
        })
        .collect()
}

/// One line per waited-for node; a late one's last console lines under it.
fn wait_lines(stdout: &mut impl Write, waits: &[WaitReport]) {
    for w in waits {
        let how = match (w.ready, w.seconds) {
            (true, Some(s)) => format!("ready      after {s} s"),
            (true, None) => "ready".to_owned(),
            (false, _) => format!(
                "NOT READY  {}",
                w.error
                    .as_deref()
                    .unwrap_or("in time; its last console lines:")
            ),
        };
        let _ = writeln!(stdout, "{:<8} {:<16} {how}", w.hypervisor, w.node);
        for line in &w.console {
            let _ = writeln!(stdout, "    | {line}");
        }
    }
}

/// `lab wait`: one line per node.
pub fn waits(out: &Output, waits: &[WaitReport]) {
    match out.format {
        Format::Json => print_json(&serde_json::json!({ "nodes": waits })),
        _ => wait_lines(&mut std::io::stdout().lock(), waits),
    }
}

/// `lab exec`: each node's output lines prefixed with its name (stdout on stdout, stderr on
/// stderr), then a line for each node the command failed on; or one JSON document.
pub fn exec(out: &Output, reports: &[ExecReport]) {
    if out.format == Format::Json {
        print_json(&serde_json::json!({ "nodes": reports }));
        return;
    }
    let width = reports.iter().map(|r| r.node.len()).max().unwrap_or(0);
    let mut stdout = std::io::stdout().lock();
    for r in reports {
        for line in r.stdout.lines() {
            let _ = writeln!(stdout, "{:<width$} | {line}", r.node);
        }
        for line in r.stderr.lines() {
            eprintln!("{:<width$} ! {line}", r.node);
        }
    }
    for r in reports.iter().filter(|r| r.failed()) {
        let why = match (&r.error, r.status) {
            (Some(e), _) => e.clone(),
            (None, Some(status)) => format!("exit status {status}"),
            (None, None) => "no status".to_owned(),
        };
        eprintln!("{:<width$} failed: {why}", r.node);
    }
}

/// `lab doctor`: a table per hypervisor, every warning and failure with its fix.
pub fn doctor(out: &Output, report: &lab_hv::doctor::DoctorReport) {
    if out.format == Format::Json {
        print_json(report);
        return;
    }
    let mut stdout = std::io::stdout().lock();
    for (i, host) in report.hypervisors.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(stdout);
        }
        let _ = writeln!(stdout, "{}: {}", host.host, host.worst().as_str());
        for c in &host.checks {
            let _ = writeln!(
                stdout,
                "  {:<4} {:<22} {}",
                c.verdict.as_str(),
                c.check,
                c.detail
            );
            if let Some(fix) = &c.fix {
                let _ = writeln!(stdout, "  {:<4} {:<22} fix: {fix}", "", "");
            }
        }
    }
}

/// `lab validate`: a row per node with each kind of check as passed/total, then a line per
/// failing check (what it expected and what was seen), then the time to converged; or one
/// JSON document.
pub fn validation(out: &Output, v: &lab_reach::validate::Validation, from_create: bool) {
    if out.format == Format::Json {
        print_json(v);
        return;
    }
    let kinds = ["bgp", "ospf", "ping", "declared"];
    let present: Vec<&str> = kinds
        .into_iter()
        .filter(|k| v.checks.iter().any(|c| c.kind == *k))
        .collect();
    let mut nodes: Vec<(&str, &str)> = Vec::new();
    for c in &v.checks {
        if !nodes.iter().any(|(n, _)| *n == c.node) {
            nodes.push((&c.node, &c.hypervisor));
        }
    }
    let width = nodes.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(4);
    let mut stdout = std::io::stdout().lock();
    let mut header = format!("{:<8} {:<width$}", "HV", "NODE");
    for k in &present {
        header.push_str(&format!(" {:>8}", k.to_uppercase()));
    }
    let _ = writeln!(stdout, "{header}  RESULT");
    for (node, hv) in &nodes {
        let mut line = format!("{hv:<8} {node:<width$}");
        let mine: Vec<_> = v.checks.iter().filter(|c| c.node == *node).collect();
        for k in &present {
            let of: Vec<_> = mine.iter().filter(|c| c.kind == *k).collect();
            let cell = if of.is_empty() {
                "-".to_owned()
            } else {
                format!("{}/{}", of.iter().filter(|c| c.ok).count(), of.len())
            };
            line.push_str(&format!(" {cell:>8}"));
        }
        let result = if let Some((_, why)) = v.unreachable.iter().find(|(n, _)| n == node) {
            format!("NOT REACHED ({why})")
        } else if mine.iter().all(|c| c.ok) {
            "ok".to_owned()
        } else {
            "FAILED".to_owned()
        };
        let _ = writeln!(stdout, "{line}  {result}");
    }
    for c in v.checks.iter().filter(|c| !c.ok) {
        let what = match &c.peer {
            Some(peer) => format!("{} {} to {peer}", c.kind, c.name),
            None => format!("{} {}", c.kind, c.name),
        };
        let _ = writeln!(stdout, "  {}: {what}: {}", c.node, c.seen);
    }
    let since = if from_create {
        "create's start"
    } else {
        "the start"
    };
    match v.converged_after_secs {
        Some(s) => {
            let _ = writeln!(
                stdout,
                "converged: {} of {} checks passed, the last {s:.1} s after {since} ({} rounds)",
                v.passed(),
                v.checks.len(),
                v.rounds
            );
        }
        None => {
            let _ = writeln!(
                stdout,
                "not converged: {} of {} checks passed after {:.1} s ({} rounds)",
                v.passed(),
                v.checks.len(),
                v.elapsed_secs,
                v.rounds
            );
        }
    }
}
