//! `lab proto ...` results: text tables or JSON.

use std::io::Write;

use lab_exec::Recorded;
use lab_proto::{SyncOutcome, TargetReport};

use crate::render::print_json;
use crate::settings::Format;
use crate::settings::{Mode, Output};

pub fn snapshot(out: &Output, what: &str, done: &lab_proto::Snapshotted) {
    match out.format {
        Format::Json => print_json(done),
        Format::Text => println!("{what} {} on {}", done.snapshot, done.host),
    }
}

pub fn sync_text(o: &SyncOutcome, mode: Mode) -> String {
    let dry_run = mode.is_dry_run();
    match o {
        SyncOutcome::UpToDate { snapshot } => format!("up to date ({snapshot})"),
        SyncOutcome::Sent {
            from,
            to,
            snapshots,
            bytes,
        } if dry_run => format!(
            "would send {snapshots} snapshot(s), {}{to}",
            from.as_ref()
                .map_or("full: ".to_owned(), |f| format!("{f} .. "))
        ),
        SyncOutcome::Sent {
            from,
            to,
            snapshots,
            bytes,
        } => format!(
            "sent {} ({} snapshot(s), {}{to})",
            bytes.map_or("? bytes".to_owned(), lab_proto::sync::human_bytes),
            snapshots,
            from.as_ref()
                .map_or("full: ".to_owned(), |f| format!("{f} .. "))
        ),
        SyncOutcome::Woken { job } => format!("asked zrepl job `{job}` to pull"),
        SyncOutcome::Diverged { detail } => format!("DIVERGED, left alone: {detail}"),
        SyncOutcome::Failed { error } => format!("FAILED: {error}"),
    }
}

/// `commands`: what a dry run recorded (empty otherwise).
pub fn sync(out: &Output, reports: &[TargetReport], commands: &[Recorded], mode: Mode) {
    let dry_run = mode.is_dry_run();
    match out.format {
        Format::Json => print_json(&serde_json::json!({
            "dry_run": dry_run,
            "targets": reports,
            "commands": commands,
        })),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            for r in reports {
                let _ = writeln!(stdout, "{:<8} {}", r.host, sync_text(&r.outcome, mode));
            }
            if dry_run {
                for c in commands {
                    let _ = writeln!(stdout, "  {} $ {}", c.host, c.line);
                }
            }
        }
    }
}

pub fn prune(out: &Output, reports: &[lab_proto::PruneReport], commands: &[Recorded], mode: Mode) {
    let dry_run = mode.is_dry_run();
    match out.format {
        Format::Json => print_json(&serde_json::json!({
            "dry_run": dry_run,
            "hosts": reports,
            "commands": commands,
        })),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            for r in reports {
                let destroyed = if r.destroyed.is_empty() {
                    "nothing to prune".to_owned()
                } else {
                    format!(
                        "{} {}",
                        if dry_run {
                            "would destroy"
                        } else {
                            "destroyed"
                        },
                        r.destroyed.join(", ")
                    )
                };
                let _ = writeln!(stdout, "{:<8} {destroyed}", r.host);
                for p in &r.pinned {
                    let _ = writeln!(
                        stdout,
                        "{:<8}   kept @{}: clone {} (lab {}, node {})",
                        "",
                        p.snapshot,
                        p.dataset,
                        p.lab.as_deref().unwrap_or("? not made by lab"),
                        p.node.as_deref().unwrap_or("?")
                    );
                }
                if let Some(e) = &r.error {
                    let _ = writeln!(stdout, "{:<8}   error: {e}", "");
                }
            }
        }
    }
}

pub fn status(out: &Output, hosts: &[lab_proto::HostStatus]) {
    match out.format {
        Format::Json => print_json(&hosts),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "{:<8} {:<7} {:<24} {:<8} {:>6} {:>8} {:<6} LAST ERROR",
                "HV", "ROLE", "NEWEST", "IN SYNC", "BEHIND", "LAG", "PINS"
            );
            for h in hosts {
                let _ = writeln!(
                    stdout,
                    "{:<8} {:<7} {:<24} {:<8} {:>6} {:>8} {:<6} {}",
                    h.host,
                    h.role,
                    h.newest.as_deref().unwrap_or("-"),
                    if h.in_sync { "yes" } else { "no" },
                    h.behind,
                    h.lag_seconds.map_or("-".to_owned(), |s| format!("{s}s")),
                    h.pinned.len(),
                    h.last_error.as_deref().unwrap_or("-")
                );
            }
        }
    }
}
