//! `sync`: every target gets what it misses of the source's releases, in one `zfs send -I`
//! (a full send only when it has no replica), all targets at once. The newest common snapshot
//! is found by GUID; a target whose history does not continue the source's is left alone.

use std::collections::HashMap;

use lab_exec::{ExecError, Executor};
use lab_hv::{Event, Events, HostState, ProtoState, cmd};
use lab_model::{Hypervisor, Transport};

use crate::{Fleet, ProtoError};

/// What sync did (or would do) for one target.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SyncOutcome {
    UpToDate {
        snapshot: String,
    },
    /// `from` is `None` for a full send (the target had no replica).
    Sent {
        from: Option<String>,
        to: String,
        snapshots: usize,
        /// Bytes that went through the controller (`None` for direct transport).
        bytes: Option<u64>,
    },
    /// zrepl was asked to pull.
    Woken {
        job: String,
    },
    /// The target's history does not continue the source's: left alone.
    Diverged {
        detail: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetReport {
    pub host: String,
    #[serde(flatten)]
    pub outcome: SyncOutcome,
}

impl TargetReport {
    pub fn failed(&self) -> bool {
        matches!(
            self.outcome,
            SyncOutcome::Failed { .. } | SyncOutcome::Diverged { .. }
        )
    }
}

/// The plan for one target, decided from both sides' snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    UpToDate(String),
    Full {
        to: String,
    },
    Incremental {
        from: String,
        to: String,
        count: usize,
    },
    Diverged(String),
}

/// Decides what a target needs: the newest common snapshot is found by GUID; the target must
/// not have anything after it (that would be a diverged history, never rolled back).
pub fn plan(
    fleet: &Fleet<'_>,
    source: &ProtoState,
    target: &ProtoState,
) -> Result<Plan, ProtoError> {
    let newest = source
        .snapshots
        .iter()
        .rposition(|s| fleet.is_release(&s.name))
        .ok_or_else(|| ProtoError::NothingReleased {
            host: fleet.source.name.clone(),
            dataset: source.dataset.clone(),
            pattern: fleet.cfg.pattern.clone(),
        })?;
    let to = source.snapshots[newest].name.clone();
    if !target.exists {
        return Ok(Plan::Full { to });
    }
    let guids: HashMap<&str, usize> = source
        .snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.guid.as_str(), i))
        .collect();
    let common = target
        .snapshots
        .iter()
        .enumerate()
        .rev()
        .find_map(|(ti, s)| guids.get(s.guid.as_str()).map(|&si| (ti, si)));
    let Some((ti, si)) = common else {
        return Ok(Plan::Diverged(if target.snapshots.is_empty() {
            format!("{} exists but has no snapshot", target.dataset)
        } else {
            format!(
                "no snapshot of {} has a GUID the source has",
                target.dataset
            )
        }));
    };
    let extra: Vec<&str> = target.snapshots[ti + 1..]
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    if !extra.is_empty() {
        return Ok(Plan::Diverged(format!(
            "{} has snapshots the source does not: {}",
            target.dataset,
            extra.join(", ")
        )));
    }
    if si >= newest {
        return Ok(Plan::UpToDate(source.snapshots[si].name.clone()));
    }
    Ok(Plan::Incremental {
        from: source.snapshots[si].name.clone(),
        to,
        count: newest - si,
    })
}

/// Sends every target what it misses, all targets at once.
pub async fn sync(
    exec: &Executor,
    fleet: &Fleet<'_>,
    now: u64,
    events: Events<'_>,
) -> Result<Vec<TargetReport>, ProtoError> {
    // Source and targets are read in one round, all at once.
    let mut all = crate::read_all(exec, &fleet.all()).await;
    let targets = all.split_off(1);
    let source = all.pop().expect("the source").1?;
    let jobs = targets
        .into_iter()
        .map(|(dst, have)| sync_one(exec, fleet, &source, dst, have, now, events));
    Ok(lab_hv::run::join_all(jobs.collect()).await)
}

async fn sync_one(
    exec: &Executor,
    fleet: &Fleet<'_>,
    source: &HostState,
    dst: &Hypervisor,
    have: Result<HostState, ExecError>,
    now: u64,
    events: Events<'_>,
) -> TargetReport {
    let report = |outcome| TargetReport {
        host: dst.name.clone(),
        outcome,
    };
    let step = |step: &'static str| {
        events(Event::Step {
            node: "proto".to_owned(),
            hypervisor: dst.name.clone(),
            step,
        })
    };
    let done = |r: TargetReport| {
        events(Event::Done {
            node: "proto".to_owned(),
            hypervisor: dst.name.clone(),
            outcome: match &r.outcome {
                SyncOutcome::UpToDate { .. } => "up to date".to_owned(),
                SyncOutcome::Sent { bytes, .. } => {
                    format!("sent {}", bytes.map_or("?".to_owned(), human_bytes))
                }
                SyncOutcome::Woken { .. } => "zrepl woken".to_owned(),
                SyncOutcome::Diverged { .. } => "diverged".to_owned(),
                SyncOutcome::Failed { .. } => "failed".to_owned(),
            },
        });
        r
    };
    if fleet.cfg.transport == Transport::Zrepl {
        let job = fleet.cfg.zrepl_job.clone().expect("the model checked it");
        step("zrepl wakeup");
        return done(match exec.run(&dst.name, &cmd::zrepl_wakeup(&job)).await {
            Ok(_) => report(SyncOutcome::Woken { job }),
            Err(e) => report(SyncOutcome::Failed {
                error: e.to_string(),
            }),
        });
    }
    let have = match have {
        Ok(h) => h.proto,
        Err(e) => {
            return done(report(SyncOutcome::Failed {
                error: e.to_string(),
            }));
        }
    };
    let plan = match plan(fleet, &source.proto, &have) {
        Ok(p) => p,
        Err(e) => {
            return done(report(SyncOutcome::Failed {
                error: e.to_string(),
            }));
        }
    };
    let (from, to, count) = match plan {
        Plan::UpToDate(snapshot) => return done(report(SyncOutcome::UpToDate { snapshot })),
        Plan::Diverged(detail) => {
            record_error(exec, dst, &have, &format!("diverged: {detail}")).await;
            return done(report(SyncOutcome::Diverged { detail }));
        }
        Plan::Full { to } => (None, to, 1),
        Plan::Incremental { from, to, count } => (Some(from), to, count),
    };
    step("sending");
    let on_bytes = |bytes: u64| {
        events(Event::Bytes {
            node: "proto".to_owned(),
            hypervisor: dst.name.clone(),
            bytes,
        })
    };
    let sent = match fleet.cfg.transport {
        Transport::Direct => exec
            .run(
                &fleet.source.name,
                &cmd::send_direct(fleet.source, dst, from.as_deref(), &to),
            )
            .await
            .map(|_| None),
        _ => exec
            .pipe(
                (
                    &fleet.source.name,
                    &cmd::send(fleet.source, from.as_deref(), &to),
                ),
                (&dst.name, &cmd::receive(dst)),
                &on_bytes,
            )
            .await
            .map(Some),
    };
    let bytes = match sent {
        Ok(b) => b,
        Err(e) => {
            let error = e.to_string();
            record_error(exec, dst, &have, &error).await;
            return done(report(SyncOutcome::Failed { error }));
        }
    };
    // The replica is kept read-only so it cannot drift; the sync is recorded on it.
    for c in &cmd::after_sync(dst, now) {
        if let Err(e) = exec.run(&dst.name, c).await {
            return done(report(SyncOutcome::Failed {
                error: e.to_string(),
            }));
        }
    }
    done(report(SyncOutcome::Sent {
        from,
        to,
        snapshots: count,
        bytes,
    }))
}

/// Leaves the last error on the replica, where `lab proto status` finds it.
async fn record_error(exec: &Executor, dst: &Hypervisor, have: &ProtoState, error: &str) {
    if have.exists {
        let _ = exec
            .run(&dst.name, &cmd::record_sync_error(dst, error))
            .await;
    }
}

pub fn human_bytes(b: u64) -> String {
    match b {
        b if b < 10 * 1024 => format!("{b} B"),
        b if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        b => format!("{:.1} MiB", b as f64 / 1048576.0),
    }
}
