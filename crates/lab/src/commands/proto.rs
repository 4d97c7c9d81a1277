//! `lab proto ...`: loads the fleet, takes the proto lock, calls `lab_proto`, renders the
//! result and picks the exit code. `refresh` is the cron entry point: quiet on success, a
//! note (and exit 0) when another run holds the lock.

use lab_exec::Executor;
use lab_proto::{Fleet, PruneReport, TargetReport};

use crate::commands::Verb;
use crate::exit::{Exit, Failure};
use crate::progress::NodeProgress;
use crate::remote::{Lock, drive, drive_locked, executor_for};
use crate::render::{self, print_json};
use crate::settings::Format;
use crate::settings::{LabFiles, Mode, Output, Proto};
use lab_proto::SnapshotKind;

/// The name of the proto's lock on the source hypervisor: one per proto dataset (lab names
/// cannot start with `_`, so it never meets a lab's lock).
fn lock_name(fleet: &Fleet<'_>) -> String {
    format!("_proto-{}", fleet.source.proto.replace('/', "%"))
}

fn verb_of(p: &Proto) -> Option<Verb> {
    Some(match p {
        Proto::Snapshot {
            kind: SnapshotKind::Release,
            ..
        } => Verb::ProtoRelease,
        Proto::Snapshot { .. } => Verb::ProtoBegin,
        Proto::Rollback { .. } => Verb::ProtoRollback,
        Proto::Sync { .. } => Verb::ProtoSync,
        Proto::Prune { .. } => Verb::ProtoPrune,
        Proto::Forget { .. } => Verb::ProtoForget,
        Proto::Refresh { .. } => Verb::ProtoRefresh,
        Proto::Status { .. } => return None,
    })
}

fn mode_of(p: &Proto) -> Mode {
    match p {
        Proto::Sync { mode, .. } | Proto::Prune { mode, .. } | Proto::Forget { mode, .. } => *mode,
        _ => Mode::Live,
    }
}

pub fn run(out: &Output, files: &LabFiles, p: &Proto) -> Result<(), Failure> {
    let lab = lab_model::load_fleet(&files.0)?;
    let fleet = Fleet::of(&lab)?;
    if let Proto::Forget { hypervisor, .. } = p {
        if fleet.all().iter().any(|h| &h.name == hypervisor) {
            return Err(Failure::invalid(format!(
                "{hypervisor} is in the fleet file: `forget` is for a hypervisor that left; take it \
                 out of the file first"
            )));
        }
        if hypervisor.is_empty()
            || !hypervisor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Failure::invalid(format!(
                "{hypervisor:?} is not a hypervisor name (letters, digits, `-`, `_`, `.`)"
            )));
        }
    }
    if let Proto::Refresh { jitter_secs, .. } = p
        && *jitter_secs > 0
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64 ^ std::process::id() as u64);
        std::thread::sleep(std::time::Duration::from_secs(nanos % (jitter_secs + 1)));
    }
    if let Proto::Refresh {
        status_file: Some(path),
        ..
    } = p
    {
        status_dir_is_safe(path)?;
    }
    let mode = mode_of(p);
    let exec = executor_for(&fleet.all(), mode);
    let work = async |exec: &Executor| work(out, p, exec, &fleet, mode).await;
    let Some(verb) = verb_of(p) else {
        return drive(exec, work)?;
    };
    let result = run_locked(out, exec, &fleet, verb, mode, work);
    // For cron and node_exporter: the fleet's state after every refresh, whatever happened.
    if let Proto::Refresh {
        status_file: Some(path),
        ..
    } = p
    {
        // Both are said: the refresh's own result first.
        let written = write_status_file(&fleet, path);
        return match (result, written) {
            (Err(run), Err(write)) => {
                eprintln!("error: {}", write.message);
                Err(run)
            }
            (run, write) => run.and(write),
        };
    }
    result
}

/// Runs a changing proto verb under the proto's lock on the source.
fn run_locked(
    out: &Output,
    exec: Executor,
    fleet: &Fleet<'_>,
    verb: Verb,
    mode: Mode,
    work: impl AsyncFnOnce(&Executor) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let lock = Lock {
        name: lock_name(fleet),
        on: vec![fleet.source],
        verb,
        wait: 0,
        read_state: false,
    };
    match drive_locked(exec, &lock, mode, work)? {
        Ok(result) => result,
        // Overlapping cron runs are normal: the one that holds the lock does the work.
        Err(e @ lab_hv::LockError::Held { .. }) if verb == Verb::ProtoRefresh => {
            if !out.quiet {
                eprintln!("lab: {e}; another refresh is at work, nothing to do");
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn work(
    out: &Output,
    p: &Proto,
    exec: &Executor,
    fleet: &Fleet<'_>,
    mode: Mode,
) -> Result<(), Failure> {
    let now = lab_hv::now();
    let recorded = || {
        if mode.is_dry_run() {
            exec.recorded()
        } else {
            Vec::new()
        }
    };
    match p {
        Proto::Snapshot {
            kind,
            name,
            if_running,
        } => {
            let req = lab_proto::SnapshotRequest {
                kind: *kind,
                name: name.as_deref(),
                if_running: *if_running,
                now,
            };
            let done = lab_proto::snapshot(exec, fleet, &req).await?;
            let what = match kind {
                SnapshotKind::Release => "released",
                SnapshotKind::Before => "maintenance begins; rollback point",
            };
            render::proto::snapshot(out, what, &done);
            Ok(())
        }
        Proto::Rollback { if_running } => {
            let done = lab_proto::rollback(exec, fleet, *if_running).await?;
            render::proto::snapshot(out, "rolled back to", &done);
            Ok(())
        }
        Proto::Sync { bwlimit, .. } => {
            let progress = target_progress(out, fleet, false);
            let opts = lab_proto::SyncOptions {
                bwlimit: bwlimit.clone(),
            };
            let reports = lab_proto::sync(exec, fleet, &opts, now, &|e| progress.on_event(e)).await;
            progress.finish();
            let reports = reports?;
            render::proto::sync(out, &reports, &recorded(), mode);
            sync_exit(&reports)
        }
        Proto::Prune { keep, .. } => {
            let keep = keep.unwrap_or(fleet.cfg.keep).max(1) as usize;
            let reports = lab_proto::prune(exec, fleet, keep).await?;
            render::proto::prune(out, &reports, &recorded(), mode);
            prune_exit(&reports)
        }
        Proto::Forget { hypervisor, .. } => {
            let reports = lab_proto::forget(exec, fleet, hypervisor).await;
            render::proto::forget(out, hypervisor, &reports, &recorded(), mode);
            match reports.iter().filter(|r| r.error.is_some()).count() {
                0 => Ok(()),
                n => Err(Failure::new(
                    Exit::Partial,
                    format!("forget: {n} hypervisor(s) could not release {hypervisor}'s holds"),
                )),
            }
        }
        Proto::Status { prometheus } => {
            let hosts = lab_proto::status(exec, fleet).await;
            if *prometheus {
                print!("{}", render::proto::prometheus(&hosts));
            } else {
                render::proto::status(out, &hosts);
            }
            Ok(())
        }
        Proto::Refresh { bwlimit, .. } => {
            // Quiet under cron: no progress unless -v.
            let progress = target_progress(out, fleet, !out.verbose);
            let opts = lab_proto::SyncOptions {
                bwlimit: bwlimit.clone(),
            };
            let done = lab_proto::refresh(exec, fleet, &opts, now, &|e| progress.on_event(e)).await;
            progress.finish();
            let done = done?;
            if out.format == Format::Json {
                print_json(&done);
            } else if out.verbose {
                render::proto::sync(out, &done.sync, &[], Mode::Live);
                render::proto::prune(out, &done.prune, &[], Mode::Live);
            } else {
                // Quiet on success: only what went wrong, on stderr.
                for r in done.sync.iter().filter(|r| r.failed()) {
                    eprintln!(
                        "lab: {}: {}",
                        r.host,
                        render::proto::sync_text(&r.outcome, Mode::Live)
                    );
                }
                for p in done.prune.iter().filter(|p| p.error.is_some()) {
                    eprintln!(
                        "lab: {}: prune: {}",
                        p.host,
                        p.error.as_deref().unwrap_or("")
                    );
                }
            }
            sync_exit(&done.sync).and(prune_exit(&done.prune))
        }
    }
}

/// A progress line per target; `cron` keeps it hidden.
fn target_progress(out: &Output, fleet: &Fleet<'_>, cron: bool) -> NodeProgress {
    let pairs: Vec<(&str, &str)> = fleet
        .targets
        .iter()
        .map(|t| ("proto", t.name.as_str()))
        .collect();
    NodeProgress::new(out.quiet || cron, out.verbose, &pairs)
}

/// A diverged or failed target is a real failure: partial (3) when others went well.
fn sync_exit(reports: &[TargetReport]) -> Result<(), Failure> {
    let failed = reports.iter().filter(|r| r.failed()).count();
    match failed {
        0 => Ok(()),
        n => Err(Failure::new(
            if n == reports.len() {
                Exit::Failure
            } else {
                Exit::Partial
            },
            format!(
                "proto sync: {n} of {} target(s) failed or diverged",
                reports.len()
            ),
        )),
    }
}

fn prune_exit(reports: &[PruneReport]) -> Result<(), Failure> {
    match reports.iter().filter(|r| r.error.is_some()).count() {
        0 => Ok(()),
        n => Err(Failure::new(
            Exit::Partial,
            format!("proto prune: {n} hypervisor(s) not fully pruned"),
        )),
    }
}

/// Reads the fleet once more and writes its status for node_exporter's textfile collector:
/// into a temporary file beside `path`, then renamed over it, so a reader never sees half.
/// The status file's directory: one that others may write (group or world) without the
/// sticky bit is refused before anything runs, since they could rename or replace what
/// `lab`, as root, puts there.
/// The directory the status file goes in (`.` for a bare name).
fn status_dir(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    }
}

fn status_dir_is_safe(path: &std::path::Path) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = status_dir(path);
    let meta = std::fs::metadata(dir).map_err(|e| {
        Failure::invalid(format!(
            "--status-file {}: its directory {}: {e}",
            path.display(),
            dir.display()
        ))
    })?;
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(Failure::invalid(format!(
            "--status-file {}: its directory {} is writable by others (mode {:04o}) without the \
             sticky bit; use a directory only its owner can write, or set the sticky bit",
            path.display(),
            dir.display(),
            mode & 0o7777
        )));
    }
    Ok(())
}

fn write_status_file(fleet: &Fleet<'_>, path: &std::path::Path) -> Result<(), Failure> {
    let exec = executor_for(&fleet.all(), Mode::Live);
    let hosts = drive(exec, async |exec| lab_proto::status(exec, fleet).await)?;
    let text = render::proto::prometheus(&hosts);
    let failed = |e: std::io::Error| {
        Failure::new(
            Exit::Failure,
            format!("cannot write the status file {}: {e}", path.display()),
        )
    };
    if path.file_name().is_none() {
        return Err(Failure::invalid(format!(
            "--status-file {} names no file",
            path.display()
        )));
    }
    let dir = status_dir(path);
    // A temporary file of a random name made with O_EXCL|O_NOFOLLOW (the tempfile crate), then
    // a rename: nothing planted in the directory is ever written through.
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let mut f = tempfile::Builder::new()
            .prefix(".lab-status-")
            .tempfile_in(dir)?;
        f.write_all(text.as_bytes())?;
        // node_exporter reads it as another user
        f.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.as_file().sync_all()?;
        f.persist(path).map(drop).map_err(|e| e.error)
    };
    write().map_err(failed)
}
