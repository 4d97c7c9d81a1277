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
    let range = |from: &Option<String>, to: &str| {
        from.as_ref()
            .map_or(format!("full: {to}"), |f| format!("{f} .. {to}"))
    };
    match o {
        SyncOutcome::UpToDate { snapshot } => format!("up to date ({snapshot})"),
        SyncOutcome::Sent {
            from,
            to,
            snapshots,
            ..
        } if dry_run => format!("would send {snapshots} snapshot(s), {}", range(from, to)),
        SyncOutcome::Sent {
            from: None,
            to,
            snapshots: 0,
            bytes,
            path,
        } => format!(
            "{} a cut receive up to {to} ({})",
            path.join(" then "),
            bytes.map_or("? bytes".to_owned(), lab_proto::sync::human_bytes),
        ),
        SyncOutcome::Sent {
            from,
            to,
            snapshots,
            bytes,
            path,
        } => format!(
            "sent {} ({} snapshot(s), {}; {})",
            bytes.map_or("? bytes".to_owned(), lab_proto::sync::human_bytes),
            snapshots,
            range(from, to),
            path.join(" then ")
        ),
        SyncOutcome::Woken {
            job,
            snapshot,
            waited_seconds,
        } => format!("zrepl job `{job}` delivered {snapshot} after {waited_seconds} s"),
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
            // A note is said once, with the hypervisors it concerns (an old pool is the same
            // news for every target that has one).
            let mut notes: Vec<(&str, Vec<&str>)> = Vec::new();
            for r in reports {
                for n in &r.notes {
                    match notes.iter_mut().find(|(text, _)| text == n) {
                        Some((_, hosts)) => hosts.push(&r.host),
                        None => notes.push((n, vec![&r.host])),
                    }
                }
            }
            for (text, hosts) in notes {
                let _ = writeln!(stdout, "note ({}): {text}", hosts.join(", "));
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
                        "{:<8}   kept @{}: clone {} (lab {}, node {}){}",
                        "",
                        p.snapshot,
                        p.dataset,
                        p.lab.as_deref().unwrap_or("? not made by lab"),
                        p.node.as_deref().unwrap_or("?"),
                        if p.snapshots.is_empty() {
                            String::new()
                        } else {
                            format!(", with its snapshots {}", p.snapshots.join(", "))
                        }
                    );
                }
                for h in &r.held {
                    let _ = writeln!(stdout, "{:<8}   kept @{}: {}", "", h.snapshot, held_text(h));
                }
                for d in &r.departed {
                    let _ = writeln!(
                        stdout,
                        "{:<8}   kept @{}: held for {}, which this fleet file does not name \
                         (`lab proto forget {}` if it left for good)",
                        "", d.snapshot, d.hypervisor, d.hypervisor
                    );
                }
                if let Some(e) = &r.error {
                    let _ = writeln!(stdout, "{:<8}   error: {e}", "");
                }
            }
        }
    }
}

pub fn forget(
    out: &Output,
    gone: &str,
    reports: &[lab_proto::ForgetReport],
    commands: &[Recorded],
    mode: Mode,
) {
    let dry_run = mode.is_dry_run();
    match out.format {
        Format::Json => print_json(&serde_json::json!({
            "dry_run": dry_run,
            "forgotten": gone,
            "hosts": reports,
            "commands": commands,
        })),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            for r in reports {
                let what = match (r.released.is_empty(), dry_run) {
                    (true, _) => format!("no hold of {gone}"),
                    (false, true) => {
                        format!("would release {gone}'s holds on {}", r.released.join(", "))
                    }
                    (false, false) => {
                        format!("released {gone}'s holds on {}", r.released.join(", "))
                    }
                };
                let _ = writeln!(stdout, "{:<8} {what}", r.host);
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
                "{:<8} {:<7} {:<24} {:<8} {:>6} {:>8} {:<5} {:<5} LAST ERROR",
                "HV", "ROLE", "NEWEST", "IN SYNC", "BEHIND", "LAG", "PINS", "HELD"
            );
            for h in hosts {
                let _ = writeln!(
                    stdout,
                    "{:<8} {:<7} {:<24} {:<8} {:>6} {:>8} {:<5} {:<5} {}",
                    h.host,
                    h.role,
                    h.newest.as_deref().unwrap_or("-"),
                    if h.in_sync { "yes" } else { "no" },
                    h.behind.map_or("-".to_owned(), |b| b.to_string()),
                    h.lag_seconds.map_or("-".to_owned(), |s| format!("{s}s")),
                    h.pinned.len(),
                    h.held.len(),
                    h.last_error.as_deref().unwrap_or("-")
                );
            }
            for h in hosts {
                for held in &h.held {
                    let _ = writeln!(
                        stdout,
                        "held: {} @{}: {}",
                        h.host,
                        held.snapshot,
                        held_text(held)
                    );
                }
            }
        }
    }
}

/// `held by lab-sync:hv1, lab-sync:hv2`, or `2 hold(s)` where zfs cannot name them.
fn held_text(h: &lab_proto::Held) -> String {
    if h.tags.is_empty() {
        format!("{} hold(s) (this zfs cannot list their tags)", h.count)
    } else {
        format!("held by {}", h.tags.join(", "))
    }
}

/// `lab proto status` in the Prometheus text format (node_exporter's textfile collector):
/// a gauge family per fact, one sample per hypervisor; a last error is a label of its own
/// gauge, present only while there is one.
pub fn prometheus(hosts: &[lab_proto::HostStatus]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let labels = |h: &lab_proto::HostStatus| {
        format!(
            "hypervisor=\"{}\",role=\"{}\",dataset=\"{}\"",
            escape(&h.host),
            h.role,
            escape(&h.dataset)
        )
    };
    type Value = fn(&lab_proto::HostStatus) -> Option<f64>;
    let families: [(&str, &str, Value); 7] = [
        (
            "lab_proto_up",
            "Whether the hypervisor answered (1) or not (0).",
            |h| Some(f64::from(u8::from(h.reachable))),
        ),
        (
            "lab_proto_in_sync",
            "Whether the hypervisor has the source's newest release (1) or not (0).",
            |h| h.behind.map(|_| f64::from(u8::from(h.in_sync))),
        ),
        (
            "lab_proto_releases_behind",
            "Source releases the hypervisor does not have yet.",
            |h| h.behind.map(|b| b as f64),
        ),
        (
            "lab_proto_lag_seconds",
            "Seconds between the source's newest release and the hypervisor's.",
            |h| h.lag_seconds.map(|s| s as f64),
        ),
        (
            "lab_proto_newest_release_timestamp_seconds",
            "When the hypervisor's newest release was taken.",
            |h| h.newest_created.map(|s| s as f64),
        ),
        (
            "lab_proto_last_success_timestamp_seconds",
            "When the last sync to this hypervisor succeeded.",
            |h| h.synced.map(|s| s as f64),
        ),
        (
            "lab_proto_held_snapshots",
            "The proto's snapshots with holds on this hypervisor.",
            |h| h.reachable.then_some(h.held.len() as f64),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for h in hosts {
            if let Some(v) = value(h) {
                let _ = writeln!(out, "{name}{{{}}} {v}", labels(h));
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP lab_proto_last_error The last sync error on the hypervisor (or why it could not be read), as a label."
    );
    let _ = writeln!(out, "# TYPE lab_proto_last_error gauge");
    for h in hosts {
        if let Some(e) = &h.last_error {
            let one_line: String = e.split_whitespace().collect::<Vec<_>>().join(" ");
            let short: String = one_line.chars().take(200).collect();
            let _ = writeln!(
                out,
                "lab_proto_last_error{{{},error=\"{}\"}} 1",
                labels(h),
                escape(&short)
            );
        }
    }
    out
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> lab_proto::HostStatus {
        lab_proto::HostStatus {
            host: name.to_owned(),
            role: "target",
            dataset: "tank/proto".to_owned(),
            newest: Some("20261101-release".to_owned()),
            in_sync: false,
            behind: Some(2),
            lag_seconds: Some(86_400),
            pinned: Vec::new(),
            held: Vec::new(),
            newest_created: Some(1_700_000_000),
            synced: Some(1_700_003_600),
            reachable: true,
            last_error: None,
        }
    }

    #[test]
    fn every_fact_is_a_sample_and_an_error_is_an_escaped_label() {
        let mut stale = host("hv1");
        stale.last_error = Some("cannot receive:\n\"tank/proto\" \\ busy".to_owned());
        let mut gone = host("hv2");
        gone.reachable = false;
        gone.behind = None;
        gone.lag_seconds = None;
        let text = prometheus(&[stale, gone]);
        let l = |h: &str| format!("hypervisor=\"{h}\",role=\"target\",dataset=\"tank/proto\"");
        for sample in [
            format!("lab_proto_up{{{}}} 1", l("hv1")),
            format!("lab_proto_up{{{}}} 0", l("hv2")),
            format!("lab_proto_in_sync{{{}}} 0", l("hv1")),
            format!("lab_proto_releases_behind{{{}}} 2", l("hv1")),
            format!("lab_proto_lag_seconds{{{}}} 86400", l("hv1")),
            format!(
                "lab_proto_last_success_timestamp_seconds{{{}}} 1700003600",
                l("hv1")
            ),
            format!(
                "lab_proto_last_error{{{},error=\"cannot receive: \\\"tank/proto\\\" \\\\ busy\"}} 1",
                l("hv1")
            ),
        ] {
            assert!(text.lines().any(|line| line == sample), "{sample}\n{text}");
        }
        // What is unknown is left out, not reported as 0.
        assert!(!text.contains(&format!("lab_proto_lag_seconds{{{}}}", l("hv2"))));
        assert!(!text.contains(&format!("lab_proto_in_sync{{{}}}", l("hv2"))));
        // Every line is a comment or `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                series.ends_with('}') && value.parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }
}
