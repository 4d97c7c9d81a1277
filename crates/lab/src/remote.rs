//! Running library work against hypervisors from the binary: the executor for a set of
//! hypervisors, a runtime to drive it, and the lock a changing verb holds while it works.

use lab_exec::Executor;
use lab_model::{Hypervisor, Lab, LabNode};

use crate::commands::Verb;
use crate::exit::{Exit, Failure};
use crate::progress::NodeProgress;
use crate::settings::{Mode, Output};

/// An executor for `hypervisors`: live, or recording changes under `--dry-run`.
pub fn executor_for(hypervisors: &[&Hypervisor], mode: Mode) -> Executor {
    let mode = match mode {
        Mode::DryRun => lab_exec::Mode::DryRun,
        Mode::Live => lab_exec::Mode::Live,
    };
    Executor::new(
        mode,
        hypervisors.iter().map(|h| lab_hv::target(h)).collect(),
        32,
    )
}

/// A current-thread runtime: the work is waiting on ssh, not computing.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot start the async runtime: {e}"),
            )
        })
}

/// Runs `work` with the executor on a fresh runtime, then closes its ssh masters. SIGINT or
/// SIGTERM stops the work where it is (as a lost connection would: what is half-made carries
/// its `filling` state and the next run picks it up), still closing the masters, so the lock
/// ends and nothing of the run lingers on the controller.
pub fn drive<T>(exec: Executor, work: impl AsyncFnOnce(&Executor) -> T) -> Result<T, Failure> {
    runtime()?.block_on(async {
        // The signal first: a terminal's Ctrl-C also reaches rsync and the ssh masters, whose
        // failures must not be taken for the run's own.
        let out = tokio::select! {
            biased;
            signal = interrupted() => Err(signal),
            out = work(&exec) => Ok(out),
        };
        if let Err((number, _)) = out {
            // A second signal while the masters close: leave at once.
            tokio::select! {
                biased;
                _ = interrupted() => std::process::exit(128 + i32::from(number)),
                () = exec.close() => {}
            }
        } else {
            exec.close().await;
        }
        out.map_err(|(number, name)| {
            Failure::new(
                Exit::Interrupted(number),
                format!(
                    "interrupted by {name}: the run stopped where it was; `lab status` shows \
                     what it left, and the next run picks it up"
                ),
            )
        })
    })
}

/// Like [`drive`], for work that a signal ends in its own way (`lab capture`: the capture is
/// taken away on the hypervisor, and what it got is kept): `work` gets a future that resolves
/// at the first SIGINT, SIGTERM or SIGHUP; a second one leaves at once.
pub fn drive_stoppable<T>(
    exec: Executor,
    work: impl AsyncFnOnce(&Executor, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> T,
) -> Result<T, Failure> {
    runtime()?.block_on(async {
        // One watcher from the start, so that a signal during the connect is not missed:
        // the first ends the work its way, a second leaves at once.
        let (told, mut heard) = tokio::sync::watch::channel(0u8);
        let watcher = tokio::spawn(async move {
            let mut count = 0u8;
            loop {
                let (number, _) = interrupted().await;
                count += 1;
                if count >= 2 {
                    std::process::exit(128 + i32::from(number));
                }
                let _ = told.send(count);
            }
        });
        let stop = Box::pin(async move {
            let _ = heard.wait_for(|n| *n > 0).await;
        });
        let out = work(&exec, stop).await;
        exec.close().await;
        watcher.abort();
        Ok(out)
    })
}

/// The first SIGINT, SIGTERM or SIGHUP (a closed terminal, a dropped VPN): its number and
/// name. Never, where they cannot be watched.
async fn interrupted() -> (u8, &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(mut int), Ok(mut term), Ok(mut hup)) => tokio::select! {
            _ = int.recv() => (2, "SIGINT"),
            _ = term.recv() => (15, "SIGTERM"),
            _ = hup.recv() => (1, "SIGHUP"),
        },
        _ => std::future::pending().await,
    }
}

/// The lock a verb that changes something takes: its name, and the hypervisors it is taken
/// on, in that order.
pub struct Lock<'a> {
    pub name: String,
    pub on: Vec<&'a Hypervisor>,
    /// Recorded as the holder's verb.
    pub verb: Verb,
    /// Seconds to wait for another holder.
    pub wait: u64,
    /// The verb's work begins by probing the hypervisors: read them in the lock's exchange.
    pub read_state: bool,
}

/// Like [`drive`], for a verb that changes something: takes `lock` first and releases it after
/// `work`. Under `--dry-run` nothing is locked, but the guard is set, so the commands printed
/// are the ones a real run sends.
pub fn drive_locked<T>(
    exec: Executor,
    lock: &Lock<'_>,
    mode: Mode,
    work: impl AsyncFnOnce(&Executor) -> T,
) -> Result<Result<T, lab_hv::LockError>, Failure> {
    let me = lab_hv::Holder {
        owner: lab_hv::owner(),
        pid: std::process::id(),
        verb: lock.verb.as_str().to_owned(),
        since: lab_hv::now(),
    };
    let waiting = |host: &str, holder: &lab_hv::Holder| {
        eprintln!(
            "lab: waiting up to {} s for the lock of lab `{}` on {host}, held by {holder}",
            lock.wait, lock.name
        );
    };
    drive(exec, async |exec| {
        let locks = match mode {
            Mode::DryRun => {
                lab_hv::lock::guard_only(exec, &lock.name, &lock.on, &me);
                None
            }
            Mode::Live => Some(
                lab_hv::lock(
                    exec,
                    &lock.name,
                    &lock.on,
                    &me,
                    lock.wait,
                    lock.read_state,
                    &waiting,
                )
                .await?,
            ),
        };
        let out = work(exec).await;
        if let Some(locks) = locks {
            locks.release().await;
        }
        Ok(out)
    })
}

/// A verb that changes nodes of `lab`: a progress line per node, the lab's lock on the nodes'
/// hypervisors (in lab order), `work` with the executor and the progress events, then the
/// progress closed.
pub fn change_nodes<T>(
    out: &Output,
    lab: &Lab,
    nodes: &[&LabNode],
    verb: Verb,
    mode: Mode,
    lock_wait: u64,
    work: impl AsyncFnOnce(&Executor, lab_hv::Events<'_>) -> T,
) -> Result<T, Failure> {
    let hypervisors = lab.hypervisors_of(nodes);
    let exec = executor_for(&hypervisors, mode);
    let progress = NodeProgress::new(
        out.quiet || mode.is_dry_run(),
        out.verbose,
        &crate::render::pairs(nodes),
    );
    let lock = Lock {
        name: lab.name.clone(),
        on: hypervisors,
        verb,
        wait: lock_wait,
        read_state: true,
    };
    let result = drive_locked(exec, &lock, mode, async |exec| {
        work(exec, &|e| progress.on_event(e)).await
    })?;
    progress.finish();
    Ok(result?)
}
