//! `lab proto ...`: loads the fleet, takes the proto lock, calls `lab_ops::proto`, prints the
//! result and picks the exit code. `refresh` is the cron entry point: quiet on success, a
//! note (and exit 0) when another run holds the lock.

use std::io::Write;

use lab_ops::proto::{self, Fleet, ProtoError, SyncOutcome, TargetReport};

use crate::cli::{Cli, Format, ProtoCommand};
use crate::{Exit, Failure, Lock, drive_locked, print_json, progress};

/// The name of the proto's lock on the source hypervisor: one per proto dataset (lab names
/// cannot start with `_`, so it never meets a lab's lock).
fn lock_name(fleet: &Fleet<'_>) -> String {
    format!("_proto-{}", fleet.source.proto.replace('/', "%"))
}

impl From<ProtoError> for Failure {
    fn from(e: ProtoError) -> Self {
        let code = match e {
            ProtoError::NotConfigured
            | ProtoError::Exists { .. }
            | ProtoError::NothingReleased { .. }
            | ProtoError::NotAfterBegin { .. }
            | ProtoError::NoDataset { .. } => Exit::Invalid,
            ProtoError::Exec(_) | ProtoError::DomainRunning { .. } => Exit::Failure,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub(crate) fn run(cli: &Cli, cmd: &ProtoCommand) -> Result<(), Failure> {
    let (files, dry_run) = match cmd {
        ProtoCommand::Release { lab, .. }
        | ProtoCommand::Begin { lab, .. }
        | ProtoCommand::Rollback { lab, .. }
        | ProtoCommand::Status { lab }
        | ProtoCommand::Refresh { lab, .. } => (&lab.files, false),
        ProtoCommand::Sync { lab, dry_run } | ProtoCommand::Prune { lab, dry_run, .. } => {
            (&lab.files, *dry_run)
        }
    };
    let lab = lab_model::load_fleet(files)?;
    let fleet = Fleet::of(&lab)?;
    if let ProtoCommand::Refresh { jitter, .. } = cmd
        && *jitter > 0
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64 ^ std::process::id() as u64);
        std::thread::sleep(std::time::Duration::from_secs(nanos % (jitter + 1)));
    }
    let exec = crate::executor_for(&fleet.all(), dry_run);
    let verb = match cmd {
        ProtoCommand::Release { .. } => "proto-release",
        ProtoCommand::Begin { .. } => "proto-begin",
        ProtoCommand::Rollback { .. } => "proto-rollback",
        ProtoCommand::Sync { .. } => "proto-sync",
        ProtoCommand::Prune { .. } => "proto-prune",
        ProtoCommand::Status { .. } => "proto-status",
        ProtoCommand::Refresh { .. } => "proto-refresh",
    };
    let work = async |exec: &lab_exec::Executor| work(cli, cmd, exec, &fleet, dry_run).await;
    if let ProtoCommand::Status { .. } = cmd {
        return crate::drive(exec, work)?;
    }
    let lock = Lock {
        name: lock_name(&fleet),
        on: vec![fleet.source],
        verb,
        wait: 0,
    };
    let result = drive_locked(exec, &lock, dry_run, work)?;
    match result {
        Ok(out) => out,
        // Overlapping cron runs are normal: the one that holds the lock does the work.
        Err(e @ lab_ops::LockError::Held { .. }) if matches!(cmd, ProtoCommand::Refresh { .. }) => {
            if !cli.quiet {
                eprintln!("lab: {e}; another refresh is at work, nothing to do");
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn work(
    cli: &Cli,
    cmd: &ProtoCommand,
    exec: &lab_exec::Executor,
    fleet: &Fleet<'_>,
    dry_run: bool,
) -> Result<(), Failure> {
    let now = lab_ops::now();
    match cmd {
        ProtoCommand::Release { name, force, .. } => {
            let done =
                proto::snapshot(exec, fleet, "release", name.as_deref(), *force, now).await?;
            say_snapshot(cli, "released", &done);
            Ok(())
        }
        ProtoCommand::Begin { force, .. } => {
            let done = proto::snapshot(exec, fleet, "before", None, *force, now).await?;
            say_snapshot(cli, "maintenance begins; rollback point", &done);
            Ok(())
        }
        ProtoCommand::Rollback { force, .. } => {
            let done = proto::rollback(exec, fleet, *force).await?;
            say_snapshot(cli, "rolled back to", &done);
            Ok(())
        }
        ProtoCommand::Sync { .. } => {
            let reports = sync(cli, exec, fleet, now, false).await?;
            print_sync(cli, &reports, exec, dry_run);
            sync_exit(&reports)
        }
        ProtoCommand::Prune { keep, .. } => {
            let keep = keep.unwrap_or(fleet.cfg.keep).max(1) as usize;
            let reports = proto::prune(exec, fleet, keep).await?;
            print_prune(cli, &reports, exec, dry_run);
            prune_exit(&reports)
        }
        ProtoCommand::Status { .. } => {
            let hosts = proto::status(exec, fleet).await;
            print_status(cli, &hosts);
            Ok(())
        }
        ProtoCommand::Refresh { .. } => {
            let reports = sync(cli, exec, fleet, now, true).await?;
            let keep = fleet.cfg.keep as usize;
            let pruned = proto::prune(exec, fleet, keep).await?;
            if cli.format == Format::Json {
                print_json(&serde_json::json!({"sync": reports, "prune": pruned}));
            } else if cli.verbose {
                print_sync(cli, &reports, exec, false);
                print_prune(cli, &pruned, exec, false);
            } else {
                // Quiet on success: only what went wrong, on stderr.
                for r in reports.iter().filter(|r| r.failed()) {
                    eprintln!("lab: {}: {}", r.host, sync_text(&r.outcome, false));
                }
                for p in pruned.iter().filter(|p| p.error.is_some()) {
                    eprintln!(
                        "lab: {}: prune: {}",
                        p.host,
                        p.error.as_deref().unwrap_or("")
                    );
                }
            }
            sync_exit(&reports).and(prune_exit(&pruned))
        }
    }
}

async fn sync(
    cli: &Cli,
    exec: &lab_exec::Executor,
    fleet: &Fleet<'_>,
    now: u64,
    cron: bool,
) -> Result<Vec<TargetReport>, Failure> {
    let pairs: Vec<(&str, &str)> = fleet
        .targets
        .iter()
        .map(|t| ("proto", t.name.as_str()))
        .collect();
    let quiet = cli.quiet || (cron && !cli.verbose);
    let progress = progress::NodeProgress::new(quiet, cli.verbose, &pairs);
    let reports = proto::sync(exec, fleet, now, &|e| progress.on_event(e)).await;
    progress.finish();
    Ok(reports?)
}

fn say_snapshot(cli: &Cli, what: &str, done: &proto::Snapshotted) {
    match cli.format {
        Format::Json => print_json(done),
        Format::Text => println!("{what} {} on {}", done.snapshot, done.host),
    }
}

fn sync_text(o: &SyncOutcome, dry_run: bool) -> String {
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
            bytes.map_or("? bytes".to_owned(), proto::human_bytes),
            snapshots,
            from.as_ref()
                .map_or("full: ".to_owned(), |f| format!("{f} .. "))
        ),
        SyncOutcome::Woken { job } => format!("asked zrepl job `{job}` to pull"),
        SyncOutcome::Diverged { detail } => format!("DIVERGED, left alone: {detail}"),
        SyncOutcome::Failed { error } => format!("FAILED: {error}"),
    }
}

fn print_sync(cli: &Cli, reports: &[TargetReport], exec: &lab_exec::Executor, dry_run: bool) {
    match cli.format {
        Format::Json => print_json(&serde_json::json!({
            "dry_run": dry_run,
            "targets": reports,
            "commands": if dry_run { exec.recorded() } else { Vec::new() },
        })),
        Format::Text => {
            let mut out = std::io::stdout().lock();
            for r in reports {
                let _ = writeln!(out, "{:<8} {}", r.host, sync_text(&r.outcome, dry_run));
            }
            if dry_run {
                for c in exec.recorded() {
                    let _ = writeln!(out, "  {} $ {}", c.host, c.line);
                }
            }
        }
    }
}

fn print_prune(
    cli: &Cli,
    reports: &[proto::PruneReport],
    exec: &lab_exec::Executor,
    dry_run: bool,
) {
    match cli.format {
        Format::Json => print_json(&serde_json::json!({
            "dry_run": dry_run,
            "hosts": reports,
            "commands": if dry_run { exec.recorded() } else { Vec::new() },
        })),
        Format::Text => {
            let mut out = std::io::stdout().lock();
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
                let _ = writeln!(out, "{:<8} {destroyed}", r.host);
                for p in &r.pinned {
                    let _ = writeln!(
                        out,
                        "{:<8}   kept @{}: clone {} (lab {}, node {})",
                        "",
                        p.snapshot,
                        p.dataset,
                        p.lab.as_deref().unwrap_or("? not made by lab"),
                        p.node.as_deref().unwrap_or("?")
                    );
                }
                if let Some(e) = &r.error {
                    let _ = writeln!(out, "{:<8}   error: {e}", "");
                }
            }
        }
    }
}

fn print_status(cli: &Cli, hosts: &[proto::HostStatus]) {
    match cli.format {
        Format::Json => print_json(&hosts),
        Format::Text => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<8} {:<7} {:<24} {:<8} {:>6} {:>8} {:<6} LAST ERROR",
                "HV", "ROLE", "NEWEST", "IN SYNC", "BEHIND", "LAG", "PINS"
            );
            for h in hosts {
                let _ = writeln!(
                    out,
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

/// A diverged or failed target is a real failure: partial (3) when others went well.
fn sync_exit(reports: &[TargetReport]) -> Result<(), Failure> {
    let failed = reports.iter().filter(|r| r.failed()).count();
    match failed {
        0 => Ok(()),
        n => Err(Failure {
            code: if n == reports.len() {
                Exit::Failure
            } else {
                Exit::Partial
            },
            message: format!(
                "proto sync: {n} of {} target(s) failed or diverged",
                reports.len()
            ),
        }),
    }
}

fn prune_exit(reports: &[proto::PruneReport]) -> Result<(), Failure> {
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    match failed {
        0 => Ok(()),
        n => Err(Failure {
            code: Exit::Partial,
            message: format!("proto prune: {n} hypervisor(s) not fully pruned"),
        }),
    }
}
