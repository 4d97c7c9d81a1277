//! Results on stdout: text tables or `--format json`. Renderers see the data and [`Output`],
//! never the command line.

pub mod proto;

use std::io::Write;

use lab_hv::{NodeReport, Outcome, StatusReport};
use lab_model::{Lab, LabNode};

use crate::cli::Format;
use crate::commands::Verb;
use crate::exit::{Exit, Failure};
use crate::settings::{Mode, Output};

pub fn print_json(value: &impl serde::Serialize) {
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

/// Prints the per-node result of create or destroy and turns it into the exit code: any node
/// failed or skipped is "partial" (3), every node failed is a failure (1).
pub fn node_reports(
    out: &Output,
    lab: &Lab,
    verb: Verb,
    reports: &[NodeReport],
    mode: Mode,
) -> Result<(), Failure> {
    let summary = lab_hv::summary(reports);
    let dry_run = mode.is_dry_run();
    match out.format {
        Format::Json => print_json(&serde_json::json!({
            "lab": lab.name,
            "verb": verb.as_str(),
            "dry_run": dry_run,
            "summary": summary,
            "nodes": reports,
        })),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            for r in reports {
                let (word, detail) = match &r.outcome {
                    Outcome::Done if dry_run => ("planned", String::new()),
                    Outcome::Done => (
                        match verb {
                            Verb::Destroy => "destroyed",
                            _ => "created",
                        },
                        r.snapshot.clone().unwrap_or_default(),
                    ),
                    Outcome::Unchanged { reason } => ("unchanged", reason.clone()),
                    Outcome::Skipped { reason } => ("skipped", reason.clone()),
                    Outcome::Failed {
                        step,
                        error,
                        rolled_back,
                    } => (
                        "failed",
                        format!(
                            "{step}: {error}{}",
                            if *rolled_back { " (rolled back)" } else { "" }
                        ),
                    ),
                };
                let _ = writeln!(
                    stdout,
                    "{:<8} {:<16} {:<10} {detail}",
                    r.hypervisor, r.node, word
                );
                for c in &r.commands {
                    let _ = writeln!(stdout, "    $ {c}");
                }
            }
            if !out.quiet {
                eprintln!(
                    "{} {}: {} done, {} unchanged, {} skipped, {} failed",
                    verb.as_str(),
                    lab.name,
                    summary.done,
                    summary.unchanged,
                    summary.skipped,
                    summary.failed
                );
            }
        }
    }
    let verb = verb.as_str();
    if summary.failed > 0 && summary.failed == reports.len() {
        Err(Failure::new(
            Exit::Failure,
            format!("{verb}: every node failed"),
        ))
    } else if summary.failed + summary.skipped > 0 {
        Err(Failure::new(
            Exit::Partial,
            format!(
                "{verb}: {} node(s) skipped, {} failed",
                summary.skipped, summary.failed
            ),
        ))
    } else {
        Ok(())
    }
}

/// `lab status`: one line per node, then the orphans.
pub fn status(out: &Output, report: &StatusReport) {
    if out.format == Format::Json {
        print_json(report);
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "{:<8} {:<16} {:<10} {:<6} {:<36} {:>8} {:<20} DRIFT",
        "HV", "NODE", "DOMAIN", "CLONE", "ORIGIN", "AGE", "OWNER"
    );
    for n in &report.nodes {
        let mut drift = Vec::new();
        if n.overlay_drift == Some(true) {
            drift.push("overlay changed".to_owned());
        }
        if let Some(s) = &n.newer_snapshot {
            drift.push(format!("newer {s}"));
        }
        if n.state.as_deref() == Some(lab_hv::own::prop::FILLING) {
            drift.push("INCOMPLETE: an interrupted create left it (create redoes it)".to_owned());
        }
        if let Some(f) = &n.foreign {
            drift.push(format!("NOT OURS: {f}"));
        }
        if let Some(e) = &n.error {
            drift.push(e.clone());
        }
        let _ = writeln!(
            stdout,
            "{:<8} {:<16} {:<10} {:<6} {:<36} {:>8} {:<20} {}",
            n.hypervisor,
            n.node,
            n.domain,
            if n.clone { "yes" } else { "no" },
            n.origin.as_deref().unwrap_or("-"),
            n.age_seconds.map_or("-".to_owned(), age),
            n.owner.as_deref().unwrap_or("-"),
            if drift.is_empty() {
                "-".to_owned()
            } else {
                drift.join("; ")
            }
        );
    }
    for o in &report.orphans {
        let _ = writeln!(
            stdout,
            "orphan: {} {} (node {}, not in the lab file)",
            o.hypervisor, o.dataset, o.node
        );
    }
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
