//! `lab snapshot`, `lab snapshot --delete`, `lab restore` (under the lab's lock) and `lab
//! snapshots` (read only).

use std::io::Write;

use lab_change::{Refused, SnapshotAsk};
use lab_hv::own::Owners;

use crate::commands::Verb;
use crate::exit::{Exit, Failure};
use crate::remote::{change_nodes, drive, executor_for};
use crate::render::{self, print_json};
use crate::settings::{Format, LabFiles, Mode, Output, Selection, Snapshot, SnapshotAction};

pub fn run(out: &Output, s: &Snapshot) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let verb = match s.action {
        SnapshotAction::Take { .. } => Verb::Snapshot,
        SnapshotAction::Delete => Verb::SnapshotDelete,
        SnapshotAction::Restore { .. } => Verb::Restore,
    };
    let ask = SnapshotAsk {
        lab: &lab,
        nodes: nodes.clone(),
        name: &s.name,
        owners: Owners {
            me: lab_hv::owner(),
            also: s.owners.clone(),
        },
    };
    let ran = change_nodes(
        out,
        &lab,
        &nodes,
        verb,
        s.mode,
        s.lock_wait,
        async |exec, events| -> Result<_, Refused> {
            Ok(match s.action {
                SnapshotAction::Take { consistent } => (
                    lab_change::snapshot::take(exec, &ask, consistent, events).await?,
                    Ok(Vec::new()),
                ),
                SnapshotAction::Delete => (
                    lab_change::snapshot::delete(exec, &ask, events).await?,
                    Ok(Vec::new()),
                ),
                SnapshotAction::Restore { drop_newer } => {
                    let done =
                        lab_change::snapshot::restore(exec, &ask, drop_newer, events).await?;
                    // A started node's QEMU is new: the lab file's impairments on its links.
                    let started: Vec<_> = nodes
                        .iter()
                        .copied()
                        .filter(|n| done.started.contains(&n.name))
                        .collect();
                    let impaired = crate::commands::link::apply_declared(
                        exec,
                        &lab,
                        &started,
                        &done.reports,
                        events,
                    )
                    .await;
                    (done.reports, impaired)
                }
            })
        },
    )?;
    let (reports, impaired) = ran.map_err(|refused| {
        Failure::new(
            Exit::Failure,
            format!(
                "{} {}: nothing was changed:\n  {}",
                verb.as_str(),
                s.name,
                refused.0.join("\n  ")
            ),
        )
    })?;
    crate::commands::link::reports_then_declared(out, &lab, verb, &reports, s.mode, impaired)
}

/// `lab snapshots`: exits 3 when a hypervisor could not be read (its nodes' snapshots are not
/// known).
pub fn list(out: &Output, files: &LabFiles, select: &Selection) -> Result<(), Failure> {
    let lab = lab_model::load(&files.0)?;
    let nodes = lab.select(&select.hosts, &select.nodes)?;
    let exec = executor_for(&lab.hypervisors_of(&nodes), Mode::Live);
    let listing = drive(exec, async |exec| {
        lab_change::snapshot::list(exec, &lab, &nodes).await
    })?;
    match out.format {
        Format::Json => print_json(&serde_json::json!({
            "lab": lab.name,
            "snapshots": listing.snapshots,
            "unreadable": listing.unreadable,
        })),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            if listing.snapshots.is_empty() {
                let _ = writeln!(stdout, "no snapshots of lab {}", lab.name);
            } else {
                let _ = writeln!(
                    stdout,
                    "{:<24} {:>8} {:>6} {:>9}",
                    "NAME", "TAKEN", "NODES", "USED"
                );
            }
            let now = lab_hv::now();
            for s in &listing.snapshots {
                let missing = if s.missing.is_empty() {
                    String::new()
                } else {
                    format!("  not on: {}", s.missing.join(", "))
                };
                let _ = writeln!(
                    stdout,
                    "{:<24} {:>8} {:>6} {:>9}{missing}",
                    s.name,
                    format!("{} ago", render::age(now.saturating_sub(s.created))),
                    s.nodes.len(),
                    size(s.used),
                );
            }
        }
    }
    if listing.unreadable.is_empty() {
        return Ok(());
    }
    let why: Vec<String> = listing
        .unreadable
        .iter()
        .map(|u| format!("{}: {}", u.hypervisor, u.error))
        .collect();
    Err(Failure::new(
        Exit::Partial,
        format!(
            "these hypervisors could not be read; their nodes' snapshots are not listed:\n  {}",
            why.join("\n  ")
        ),
    ))
}

/// Bytes as people read them: `0`, `12K`, `3.4M`, `1.2G`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}
