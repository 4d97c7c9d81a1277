//! `lab create`: generate (unless told not to) into a directory of this run's own, read it
//! back, take the lab's lock and create every selected node; then refresh `build/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lab_hv::Outcome;
use lab_model::{Lab, LabNode};

use crate::commands::Verb;
use crate::commands::generate::BuildLock;
use crate::exit::Failure;
use crate::remote::change_nodes;
use crate::render;
use crate::settings::{Create, Format, Output};

pub fn run(out: &Output, s: &Create) -> Result<(), Failure> {
    let started_at = std::time::Instant::now();
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let overlay = lab_generate::resolve_overlay(&lab, s.build.overlay.as_deref())?
        .name
        .clone();
    // This run copies from a tree only it writes: another create (one that is about to be
    // refused, say) re-rendering `build/` never swaps a tree under this run's rsync.
    let own = RunDir::new(&s.build.dir);
    // Copied from `build/` as it is: no tree there is swapped until this run ends.
    let _reading = if s.generate {
        None
    } else {
        Some(BuildLock::shared(&s.build.dir)?)
    };
    let source = if s.generate {
        generate(out, &lab, &nodes, &overlay, &own.dir)?;
        own.dir.as_path()
    } else {
        s.build.dir.as_path()
    };
    let mut request = request(s, &lab, &nodes, &overlay, source)?;
    let (created, published, impaired, reconciled, pruned) = change_nodes(
        out,
        &lab,
        &nodes,
        Verb::Create,
        s.mode,
        s.lock_wait,
        async |exec, events| {
            // What create would refuse is refused before anything changes.
            let states = match lab_create::check(exec, &request).await {
                Ok(states) => states,
                Err(e) => {
                    let none = lab_change::ReconcileReport::default();
                    return (Err(e), Ok(()), Ok(Vec::new()), none, Vec::new());
                }
            };
            // The nodes that exist: their links as the file says, and what it no longer names
            // listed or, with --prune, taken out, around create, which makes what is missing
            // (see `lab_change::reconcile`). A lab with nothing on its hypervisors yet has
            // nothing to reconcile, and costs no reading more.
            let builds = request.builds.clone();
            let reconcile_req = lab_change::ReconcileRequest {
                lab: &lab,
                nodes: nodes.clone(),
                builds: &builds,
                owners: request.owners.clone(),
                prune: s.prune,
            };
            let mut reconcile =
                lab_change::reconcile::Reconcile::plan(exec, &reconcile_req, &states).await;
            reconcile.take_out(exec).await;
            let gone: Vec<LabNode> = if s.prune {
                reconcile
                    .gone()
                    .iter()
                    .filter_map(|g| lab_change::reconcile::gone_node(&lab, g))
                    .collect()
            } else {
                Vec::new()
            };
            let pruned = if gone.is_empty() {
                Vec::new()
            } else {
                let req = lab_destroy::DestroyRequest {
                    lab: &lab,
                    nodes: gone.iter().collect(),
                    owners: request.owners.clone(),
                };
                lab_destroy::destroy(exec, &req, events).await.nodes
            };
            request.reconciled = reconcile.reconciled();
            // The reading `check` made holds unless something changed since (a dry run
            // changes nothing).
            let changed = !s.mode.is_dry_run() && (reconcile.touched() || !pruned.is_empty());
            let created = if changed {
                for hv in lab.hypervisors_of(&nodes) {
                    exec.forget_answers(&hv.name);
                }
                lab_create::create(exec, &request, events).await
            } else {
                lab_create::create_from(exec, &request, states, events).await
            };
            let reconciled = reconcile.put_in(exec, events).await;
            // The lab file's impairments on the nodes started now, under the same lock.
            let impaired = match &created {
                Ok(r) if !s.mode.is_dry_run() && s.start => {
                    crate::commands::link::apply_declared(exec, &lab, &nodes, &r.nodes, events)
                        .await
                }
                _ => Ok(Vec::new()),
            };
            // `build/` shows what was created (and what `status` compares with): this run's
            // own build, moved there while the lock is held, so a `--no-generate` create of
            // this lab, which copies from `build/`, never meets a tree being swapped.
            // A dry run changes nothing, `build/` included; and a tree another run is
            // copying from (`--no-generate`) is not swapped under it: `build/` then keeps
            // its older trees, and says so.
            let published = if s.generate && created.is_ok() && !s.mode.is_dry_run() {
                publish(out, &own, &s.build.dir, &overlay, &lab, &nodes)
            } else {
                Ok(())
            };
            (created, published, impaired, reconciled, pruned)
        },
    )?;
    let reports = created?;
    published?;
    let impaired = impaired.and_then(|r| crate::commands::link::declared_exit(out, &r));
    // Waited for after the lock is released: waiting changes nothing.
    let waits = match &s.wait {
        Some(until) if !s.mode.is_dry_run() => {
            // Nodes created now or already as built; not skipped or failed ones.
            let started: Vec<&LabNode> = nodes
                .iter()
                .copied()
                .filter(|n| {
                    reports.nodes.iter().any(|r| {
                        r.node == n.name
                            && matches!(r.outcome, Outcome::Done | Outcome::Unchanged { .. })
                    })
                })
                .collect();
            crate::commands::reach::wait_for(out, &lab, &started, until)?
        }
        _ => Vec::new(),
    };
    // Validated after the report on a terminal; with --format json before it, so that the one
    // document holds both.
    let validate_after = s.validate.filter(|_| !s.mode.is_dry_run());
    let made = reports
        .nodes
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Done | Outcome::Unchanged { .. }))
        && waits.iter().all(|w| w.ready);
    let validate = |print: bool, timeout: u64| {
        crate::commands::validate::check(
            out,
            &lab,
            &nodes,
            &s.build.dir,
            &overlay,
            timeout,
            Some(started_at.elapsed()),
            print,
        )
    };
    let early = match validate_after {
        Some(timeout) if out.format == Format::Json && made => Some(validate(false, timeout)?),
        _ => None,
    };
    let created = render::node_reports(
        out,
        &lab,
        Verb::Create,
        &reports.networks,
        &reports.nodes,
        s.mode,
        &render::Then {
            waits: &waits,
            validation: early.as_ref(),
            reconcile: Some(&reconciled),
            pruned: &pruned,
        },
    );
    let created = created
        .and(impaired)
        .and(crate::commands::reach::wait_exit(&waits));
    match (early, validate_after) {
        (Some(v), _) => created.and(crate::commands::validate::judge(&v)),
        (None, Some(timeout)) if created.is_ok() && out.format != Format::Json => {
            crate::commands::validate::judge(&validate(true, timeout)?)
        }
        _ => created,
    }
}

/// This run's own build moved to `build` (what `status` compares with), unless another run
/// is copying from `build` (`--no-generate`): `build` then keeps its older trees, and says so.
pub(crate) fn publish(
    out: &Output,
    own: &RunDir,
    build: &Path,
    overlay: &str,
    lab: &Lab,
    nodes: &[&LabNode],
) -> Result<(), Failure> {
    match BuildLock::try_exclusive(build) {
        Some(_lock) => {
            lab_generate::publish(&own.dir, build, overlay, lab, nodes).map_err(Failure::from)
        }
        None => {
            if !out.quiet {
                eprintln!(
                    "lab: {} not refreshed: another run is copying from it \
                     (`lab generate` refreshes it)",
                    build.display()
                );
            }
            Ok(())
        }
    }
}

/// `<build>/.run-<pid>`: this run's own build, removed when the run ends. Beside it,
/// `.run-<pid>.lock` stays locked (`flock`) for as long as the run lives, whoever and wherever
/// it is (another PID namespace sharing the build directory, say).
pub(crate) struct RunDir {
    pub(crate) dir: PathBuf,
    lock: Option<(PathBuf, std::fs::File)>,
}

impl RunDir {
    /// This run's directory; those of runs that no longer hold their lock (killed before they
    /// could remove theirs) go first.
    pub(crate) fn new(build: &Path) -> RunDir {
        if let Ok(entries) = std::fs::read_dir(build) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_prefix(".run-")) else {
                    continue;
                };
                if id.ends_with(".lock") || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let lock_path = build.join(format!(".run-{id}.lock"));
                let stale = match std::fs::File::open(&lock_path) {
                    // Lockable: its run is gone.
                    Ok(f) => f.try_lock().is_ok(),
                    // No lock file (a run of an older lab): gone when its process is.
                    Err(_) => id
                        .parse::<u32>()
                        .is_ok_and(|pid| !Path::new("/proc").join(pid.to_string()).exists()),
                };
                if stale {
                    let _ = lab_generate::remove_tree(&entry.path());
                    let _ = std::fs::remove_file(&lock_path);
                }
            }
        }
        let id = std::process::id();
        let lock_path = build.join(format!(".run-{id}.lock"));
        let lock = std::fs::create_dir_all(build)
            .and_then(|()| create_new_no_follow(&lock_path))
            .and_then(|f| f.lock().map(|()| f))
            .ok()
            .map(|f| (lock_path, f));
        RunDir {
            dir: build.join(format!(".run-{id}")),
            lock,
        }
    }
}

/// Creates `path` as a new file, never through a symlink: whatever is at that name (a stale
/// lock of a process that had this pid, or a link someone planted) is removed first, itself,
/// and the file is then made with `O_CREAT|O_EXCL|O_NOFOLLOW`.
fn create_new_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = lab_generate::remove_tree(&self.dir);
        if let Some((path, _file)) = self.lock.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(crate) fn generate(
    out: &Output,
    lab: &Lab,
    nodes: &[&LabNode],
    overlay: &str,
    dir: &Path,
) -> Result<(), Failure> {
    let request = lab_generate::Request {
        lab,
        overlay: Some(overlay),
        build_dir: dir,
        nodes,
    };
    let output = lab_generate::generate(&request, &|_| {})?;
    if !out.quiet {
        crate::commands::generate::warn(&output);
    }
    Ok(())
}

/// What every node and network needs, read back from `dir`.
fn request<'a>(
    s: &Create,
    lab: &'a Lab,
    nodes: &[&'a LabNode],
    overlay: &str,
    dir: &Path,
) -> Result<lab_create::CreateRequest<'a>, Failure> {
    // A build `create` just rendered into a directory of its own is read as written; one it
    // is told to trust (`--no-generate`) is checked on disk first (review 3, N5).
    let trust = if s.generate {
        lab_generate::Trust::Manifest
    } else {
        lab_generate::Trust::Copy
    };
    let mut builds = HashMap::new();
    for node in nodes {
        let build = lab_generate::read_node(dir, &lab.name, overlay, node, trust)?;
        builds.insert(node.name.clone(), build);
    }
    let mut networks = HashMap::new();
    for hv in lab.hypervisors_of(nodes) {
        if let Some(net) = lab_generate::read_network(dir, overlay, hv, trust)? {
            networks.insert(hv.name.clone(), net);
        }
    }
    Ok(lab_create::CreateRequest {
        lab,
        nodes: nodes.to_vec(),
        builds,
        networks,
        force: s.force,
        start: s.start,
        owners: lab_hv::own::Owners {
            me: lab_hv::owner(),
            also: s.owners.clone(),
        },
        now: lab_hv::now(),
        start_batch: s.start_batch,
        start_interval: s.start_interval,
        reconciled: Default::default(),
    })
}
