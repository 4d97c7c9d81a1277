//! `lab status` on stdout: a line per node, then the orphans and the networks.

use std::io::Write;

use lab_hv::StatusReport;

use super::print_json;
use crate::settings::{Format, Output};

/// `lab status`: one line per node, then the orphans.
pub fn status(out: &Output, report: &StatusReport) {
    if out.format == Format::Json {
        print_json(report);
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "{:<8} {:<16} {:<10} {:<8} {:<6} {:<36} {:>8} {:<20} DRIFT",
        "HV", "NODE", "DOMAIN", "PHASE", "CLONE", "ORIGIN", "AGE", "OWNER"
    );
    for n in &report.nodes {
        let mut drift = Vec::new();
        match n.overlay_drift {
            Some(true) => drift.push("overlay changed".to_owned()),
            None if n.clone && n.foreign.is_none() => {
                drift.push("overlay unknown: no build to compare (lab generate)".to_owned())
            }
            _ => {}
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
        if let Some(f) = &n.foreign_domain {
            drift.push(format!("NOT OURS: {f}"));
        }
        if let Some(d) = &n.nic_drift {
            drift.push(format!("NICs: {d}"));
        }
        if !n.links_down.is_empty() {
            drift.push(format!("link down: {}", n.links_down.join(", ")));
        }
        if let Some(e) = &n.error {
            drift.push(e.clone());
        }
        let _ = writeln!(
            stdout,
            "{:<8} {:<16} {:<10} {:<8} {:<6} {:<36} {:>8} {:<20} {}",
            n.hypervisor,
            n.node,
            n.domain,
            n.phase.as_deref().unwrap_or("-"),
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
    for n in &report.networks {
        let whose = match (n.state, n.ours) {
            ("absent", _) => "",
            (_, true) => " (lab's)",
            (_, false) => " (operator's)",
        };
        let drift = match n.definition_drift {
            Some(true) => {
                "; runs an older definition than the build (create redefines it; it takes the new one when it next starts)"
            }
            _ => "",
        };
        let _ = writeln!(
            stdout,
            "network: {} {} {}{whose}{drift}",
            n.hypervisor, n.network, n.state
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

pub(crate) fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
