//! `sync`: every target gets what it misses of the source's releases, in one `zfs send -I`
//! (a full send only when it has no replica), at most `proto.parallel` targets at once. The
//! newest common snapshot is found by GUID; a target whose history does not continue the
//! source's is left alone.
//!
//! On OpenZFS (pools with feature flags) a receive is resumable: a cut one is continued from
//! its token by the next sync, or thrown away (`zfs recv -A`) only when the source refuses
//! the token. Streams are compressed (`-c`) or raw (`-w`, an encrypted proto), zvol replicas
//! have no device nodes (`volmode=none`). After each good sync the base of the target's next
//! increment is held on both sides (`lab-sync:<target>`) and the previous base released.
//!
//! Long: the per-target flow (resume, plan, send, holds) reads best in one place; the plan
//! itself is the pure [`plan`].

use std::collections::HashMap;

use lab_exec::{ExecError, Executor};
use lab_hv::cmd::{self, Limiter, ReceiveOptions, SendOptions, Stream};
use lab_hv::{Event, Events, HostState, ProtoState};
use lab_model::{Hypervisor, Storage, Transport};
use tokio::sync::Semaphore;

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
        /// Bytes sent: through the controller, or counted by `pv` on the source (direct).
        bytes: Option<u64>,
        /// How: `full`, `incremental`, and `resumed` first when a cut receive was continued.
        path: Vec<&'static str>,
    },
    /// zrepl was asked to pull, and delivered the source's newest release.
    Woken {
        job: String,
        snapshot: String,
        waited_seconds: u64,
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
    /// What the run had to do differently there, once each: a pool that cannot resume, a
    /// token the source refused, holds that could not be taken.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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

/// How a sync moves its streams, for every target: from the lab files and the command line.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// A rate limit per stream (`50M`), overriding `proto.bwlimit`.
    pub bwlimit: Option<String>,
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
    // A cut full receive leaves a dataset with no snapshot (and a token): still nothing there.
    if !target.exists || (target.snapshots.is_empty() && target.resume_token.is_some()) {
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

/// The limiter for `rate` on the source: `pv`, else `mbuffer`; an error naming the source
/// when it has neither (checked before anything is sent).
fn limiter(fleet: &Fleet<'_>, source: &HostState, rate: &str) -> Result<Limiter, ProtoError> {
    if source.zfs.has_tool("pv") {
        Ok(Limiter::Pv)
    } else if source.zfs.has_tool("mbuffer") {
        Ok(Limiter::Mbuffer)
    } else {
        Err(ProtoError::NoLimiter {
            host: fleet.source.name.clone(),
            rate: rate.to_owned(),
        })
    }
}

/// Sends every target what it misses, at most `proto.parallel` at once.
pub async fn sync(
    exec: &Executor,
    fleet: &Fleet<'_>,
    opts: &SyncOptions,
    now: u64,
    events: Events<'_>,
) -> Result<Vec<TargetReport>, ProtoError> {
    // Source and targets are read in one round, all at once.
    let mut all = crate::read_all(exec, &fleet.all()).await;
    let targets = all.split_off(1);
    let source = all.pop().expect("the source").1?;
    let rate = opts.bwlimit.as_ref().or(fleet.cfg.bwlimit.as_ref());
    let limit = match rate {
        Some(rate) if fleet.cfg.transport != Transport::Zrepl => {
            Some((limiter(fleet, &source, rate)?, rate.clone()))
        }
        _ => None,
    };
    let slots = Semaphore::new(fleet.cfg.parallel.max(1) as usize);
    let jobs = targets.into_iter().map(|(dst, have)| {
        let (slots, source, limit) = (&slots, &source, &limit);
        async move {
            let _slot = slots.acquire().await.expect("never closed");
            let mut one = One {
                exec,
                fleet,
                source,
                dst,
                limit: limit.clone(),
                now,
                events,
                notes: Vec::new(),
            };
            let outcome = one.run(have).await;
            events(Event::Done {
                node: "proto".to_owned(),
                hypervisor: dst.name.clone(),
                outcome: outcome_word(&outcome),
            });
            TargetReport {
                host: dst.name.clone(),
                outcome,
                notes: one.notes,
            }
        }
    });
    Ok(lab_hv::run::join_all(jobs.collect()).await)
}

fn outcome_word(outcome: &SyncOutcome) -> String {
    match outcome {
        SyncOutcome::UpToDate { .. } => "up to date".to_owned(),
        SyncOutcome::Sent { bytes, path, .. } => format!(
            "sent {} ({})",
            bytes.map_or("?".to_owned(), human_bytes),
            path.join(", ")
        ),
        SyncOutcome::Woken { .. } => "delivered by zrepl".to_owned(),
        SyncOutcome::Diverged { .. } => "diverged".to_owned(),
        SyncOutcome::Failed { .. } => "failed".to_owned(),
    }
}

/// What became of a cut receive.
enum Resumed {
    /// Continued to its end; the bytes, when known.
    Done(Option<u64>),
    /// The source refused the token: the partial receive was thrown away.
    Aborted,
}

/// One target's sync.
struct One<'r, 'a> {
    exec: &'r Executor,
    fleet: &'r Fleet<'a>,
    source: &'r HostState,
    dst: &'a Hypervisor,
    limit: Option<(Limiter, String)>,
    now: u64,
    events: Events<'r>,
    notes: Vec<String>,
}

impl One<'_, '_> {
    fn step(&self, step: &'static str) {
        (self.events)(Event::Step {
            node: "proto".to_owned(),
            hypervisor: self.dst.name.clone(),
            step,
        });
    }

    async fn run(&mut self, have: Result<HostState, ExecError>) -> SyncOutcome {
        let failed = |e: &dyn std::fmt::Display| SyncOutcome::Failed {
            error: e.to_string(),
        };
        let mut have = match have {
            Ok(h) => h,
            Err(e) => return failed(&e),
        };
        if self.fleet.cfg.transport == Transport::Zrepl {
            return self.zrepl(&have).await;
        }
        let mut path = Vec::new();
        // What a resumed stream moved, when that is known.
        let mut bytes_before: Option<u64> = Some(0);
        // A receive a cut left behind: continue it, or throw it away if the source cannot.
        if let Some(token) = have.proto.resume_token.clone() {
            match self.resume(&token).await {
                Ok(Resumed::Done(bytes)) => {
                    path.push("resumed");
                    bytes_before = bytes;
                }
                Ok(Resumed::Aborted) => path.push("aborted partial receive"),
                Err(e) => {
                    self.record_error(&have.proto, &e.to_string()).await;
                    return failed(&e);
                }
            }
            if !self.exec.is_dry_run() {
                // What is there now decides the rest.
                have = match lab_hv::state::probe(self.exec, self.dst).await {
                    Ok(h) => h,
                    Err(e) => return failed(&e),
                };
            } else if path == ["resumed"] {
                // A dry run resumed nothing: what the target needs after it is not known yet.
                self.notes.push(
                    "what the target needs after the resumed receive is planned by the real run"
                        .to_owned(),
                );
                return SyncOutcome::Sent {
                    from: None,
                    to: "(what the token continues)".to_owned(),
                    snapshots: 0,
                    bytes: None,
                    path,
                };
            } else {
                // A dry run aborted nothing: plan as if the abort had run.
                have.proto.resume_token = None;
                if have.proto.snapshots.is_empty() {
                    have.proto.exists = false;
                }
            }
        }
        let plan = match plan(self.fleet, &self.source.proto, &have.proto) {
            Ok(p) => p,
            Err(e) => return failed(&e),
        };
        let (from, to, count) = match plan {
            Plan::UpToDate(snapshot) => {
                if path.is_empty() {
                    self.hold_base(&have, &snapshot, None).await;
                    return SyncOutcome::UpToDate { snapshot };
                }
                // A resumed stream brought the target up to date.
                if let Err(e) = self.after(&have, &snapshot, None).await {
                    return failed(&e);
                }
                return SyncOutcome::Sent {
                    from: None,
                    to: snapshot,
                    snapshots: 0,
                    bytes: bytes_before,
                    path,
                };
            }
            Plan::Diverged(detail) => {
                self.record_error(&have.proto, &format!("diverged: {detail}"))
                    .await;
                return SyncOutcome::Diverged { detail };
            }
            Plan::Full { to } => (None, to, 1),
            Plan::Incremental { from, to, count } => (Some(from), to, count),
        };
        let stream = match &from {
            None => Stream::Full { to: &to },
            Some(f) => Stream::Incremental { from: f, to: &to },
        };
        let send = match self.send_options(&have) {
            Ok(s) => s,
            Err(e) => return failed(&e),
        };
        if !have.zfs.modern() {
            self.notes.push(format!(
                "pool version {} cannot resume a cut receive (no resume tokens): a cut send \
                 starts again from the beginning",
                have.zfs.pool_version
            ));
        }
        self.step("sending");
        let receive = self.receive_options(&have);
        let bytes = match self.transfer(&stream, &send, receive).await {
            Ok(b) => b,
            Err(e) => {
                self.record_error(&have.proto, &e.to_string()).await;
                return failed(&e);
            }
        };
        path.push(if from.is_some() {
            "incremental"
        } else {
            "full"
        });
        if let Err(e) = self.after(&have, &to, from.as_deref()).await {
            return failed(&e);
        }
        SyncOutcome::Sent {
            from,
            to,
            snapshots: count,
            bytes: bytes.zip(bytes_before).map(|(b, before)| b + before),
            path,
        }
    }

    /// Compressed where both ends are OpenZFS; raw for an encrypted proto (which an old pool
    /// cannot receive).
    fn send_options(&self, have: &HostState) -> Result<SendOptions, String> {
        let modern = self.source.zfs.modern() && have.zfs.modern();
        if self.source.proto.encrypted && !have.zfs.modern() {
            return Err(format!(
                "the proto is encrypted and {}'s pool (version {}) cannot receive a raw stream",
                self.dst.name, have.zfs.pool_version
            ));
        }
        Ok(SendOptions {
            compressed: self.fleet.cfg.compressed && modern,
            raw: self.source.proto.encrypted,
            limit: self.limit.clone(),
        })
    }

    fn receive_options(&self, have: &HostState) -> ReceiveOptions {
        ReceiveOptions {
            // Resuming takes `zfs send -t` on the source as well.
            resumable: have.zfs.modern() && self.source.zfs.modern(),
            volmode_none: have.zfs.modern() && self.dst.storage == Storage::Zvol,
        }
    }

    /// Sends `stream` to the target; the bytes sent when they are known.
    async fn transfer(
        &self,
        stream: &Stream<'_>,
        send: &SendOptions,
        receive: ReceiveOptions,
    ) -> Result<Option<u64>, ExecError> {
        let on_bytes = |bytes: u64| {
            (self.events)(Event::Bytes {
                node: "proto".to_owned(),
                hypervisor: self.dst.name.clone(),
                bytes,
            })
        };
        match self.fleet.cfg.transport {
            Transport::Direct => {
                // pv on the source counts the bytes, one number a line.
                let meter = self.source.zfs.has_tool("pv");
                let c = cmd::send_direct(self.fleet.source, self.dst, stream, send, receive, meter);
                let last = std::sync::atomic::AtomicU64::new(0);
                // When the bytes last grew, and when pv last said anything, in seconds since
                // the send started.
                use std::sync::atomic::Ordering::Relaxed;
                let started = tokio::time::Instant::now();
                let (grew, heard) = (
                    std::sync::atomic::AtomicU64::new(0),
                    std::sync::atomic::AtomicU64::new(0),
                );
                let on_line = |line: &str| {
                    if let Ok(b) = line.trim().parse::<u64>() {
                        let now = started.elapsed().as_secs();
                        heard.store(now, Relaxed);
                        if b > last.swap(b, Relaxed) {
                            grew.store(now, Relaxed);
                        }
                        on_bytes(b);
                    }
                };
                // pv prints the count every second while the stream runs, moving or not: counts
                // that keep coming and stay put for SEND_STALL are a stalled stream. Once pv
                // is done (the receive may take its time to finish), nothing is counted; a lost
                // network is for ssh's keepalives to find.
                let stalled = async {
                    if !meter {
                        return std::future::pending().await;
                    }
                    loop {
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                        let still = heard.load(Relaxed).saturating_sub(grew.load(Relaxed));
                        if still >= cmd::SEND_STALL.as_secs() {
                            return;
                        }
                    }
                };
                let out = tokio::select! {
                    out = self.exec.stream(&self.fleet.source.name, &c, &on_line) => out?,
                    () = stalled => {
                        return Err(ExecError::Timeout {
                            host: self.fleet.source.name.clone(),
                            command: format!("{} (no byte moved)", c.line()),
                            after: cmd::SEND_STALL,
                        });
                    }
                };
                if !out.success() {
                    return Err(ExecError::Failed {
                        host: self.fleet.source.name.clone(),
                        command: c.line(),
                        status: out.status,
                        stderr: out.stderr.trim().to_owned(),
                    });
                }
                Ok(meter.then(|| last.load(std::sync::atomic::Ordering::Relaxed)))
            }
            _ => self
                .exec
                .pipe(
                    (
                        &self.fleet.source.name,
                        &cmd::send(self.fleet.source, stream, send),
                    ),
                    (&self.dst.name, &cmd::receive(self.dst, receive)),
                    &on_bytes,
                )
                .await
                .map(Some),
        }
    }

    /// Continues a cut receive from its token, or throws the partial receive away when the
    /// source refuses the token (its snapshot is gone, say); any other error (the source
    /// unreachable) leaves the partial receive for the next sync.
    async fn resume(&mut self, token: &str) -> Result<Resumed, ExecError> {
        self.step("checking the resume token");
        let src = &self.fleet.source.name;
        let refused = match self.exec.run(src, &cmd::check_resume_token(token)).await {
            Ok(_) => false,
            Err(ExecError::Failed { status, .. }) if status == cmd::TOKEN_REFUSED => true,
            // Any other failure leaves the partial receive for the next sync.
            Err(e) => return Err(e),
        };
        if refused {
            self.step("aborting the partial receive");
            self.exec
                .run(&self.dst.name, &cmd::abort_receive(self.dst))
                .await?;
            self.notes.push(
                "the source refused the resume token of a cut receive: the partial receive was \
                 aborted (zfs recv -A) and the send starts again"
                    .to_owned(),
            );
            return Ok(Resumed::Aborted);
        }
        self.step("resuming");
        // A resumed stream keeps the flags and properties of the send it continues; only the
        // limit applies, and the receive stays resumable.
        let send = SendOptions {
            limit: self.limit.clone(),
            ..SendOptions::default()
        };
        let receive = ReceiveOptions {
            resumable: true,
            volmode_none: false,
        };
        let bytes = self
            .transfer(&Stream::Resume { token }, &send, receive)
            .await?;
        // The cut receive may have been the full one that made the replica: a zvol replica
        // gets no device nodes, whichever receive finished it.
        if self.dst.storage == Storage::Zvol {
            self.exec
                .run(&self.dst.name, &cmd::replica_volmode_none(self.dst))
                .await?;
        }
        self.notes
            .push("a cut receive was resumed from its token".to_owned());
        Ok(Resumed::Done(bytes))
    }

    /// After a good sync: the replica read-only, the sync recorded, the holds moved to `to`.
    async fn after(
        &mut self,
        have: &HostState,
        to: &str,
        from: Option<&str>,
    ) -> Result<(), ExecError> {
        for c in &cmd::after_sync(self.dst, self.now) {
            self.exec.run(&self.dst.name, c).await?;
        }
        self.hold_base(have, to, from).await;
        Ok(())
    }

    /// Holds `base` for this target on the source and on the target, and releases this
    /// target's holds on other snapshots (`previous`, the base this sync moved from, included).
    /// A hold that fails is a note: the sync itself succeeded, and prune protects bases anyway.
    async fn hold_base(&mut self, have: &HostState, base: &str, previous: Option<&str>) {
        let tag = cmd::sync_tag(self.dst);
        let sides = [
            (self.fleet.source, &self.source.proto, &self.source.zfs),
            (self.dst, &have.proto, &have.zfs),
        ];
        for (hv, proto, zfs) in sides {
            let held = proto
                .snapshots
                .iter()
                .find(|s| s.name == base)
                .is_some_and(|s| s.holds.contains(&tag));
            // Where tags are not listed, hold again (an existing hold is taken as done).
            if !held && let Err(e) = self.exec.run(&hv.name, &cmd::hold(hv, &tag, base)).await {
                self.notes
                    .push(format!("the hold {tag} on {}@{base} failed: {e}", hv.proto));
                continue;
            }
            // This target's holds elsewhere: by tag where zfs lists them, else on every other
            // held snapshot (releasing a tag that is not there is taken as done).
            let stale: Vec<String> = proto
                .snapshots
                .iter()
                .filter(|s| s.name != base)
                .filter(|s| {
                    if zfs.holds_listed {
                        s.holds.contains(&tag)
                    } else {
                        s.userrefs > 0 || previous == Some(s.name.as_str())
                    }
                })
                .map(|s| s.name.clone())
                .collect();
            for name in stale {
                if let Err(e) = self
                    .exec
                    .run(&hv.name, &cmd::release(hv, &tag, &name))
                    .await
                {
                    self.notes.push(format!(
                        "releasing {tag} on {}@{name} failed: {e}",
                        hv.proto
                    ));
                }
            }
        }
    }

    /// zrepl pulls on its own: wake it, then wait until the target has the source's newest
    /// release (by GUID), at most `proto.zrepl_wait` seconds. The result is recorded on the
    /// replica like any sync's (`lab:synced`, `lab:sync-error`), for `proto status`.
    async fn zrepl(&mut self, have: &HostState) -> SyncOutcome {
        let job = self
            .fleet
            .cfg
            .zrepl_job
            .clone()
            .expect("the model checked it");
        if self.limit.is_some() {
            self.notes.push(
                "--bwlimit does not apply to zrepl transport: zrepl's own job settings limit it"
                    .to_owned(),
            );
        }
        let Some(newest) = self
            .source
            .proto
            .snapshots
            .iter()
            .rev()
            .find(|s| self.fleet.is_release(&s.name))
        else {
            return SyncOutcome::Failed {
                error: format!(
                    "{}: {} has no snapshot matching `{}`",
                    self.fleet.source.name, self.source.proto.dataset, self.fleet.cfg.pattern
                ),
            };
        };
        self.step("zrepl wakeup");
        if let Err(e) = self
            .exec
            .run(&self.dst.name, &cmd::zrepl_wakeup(&job))
            .await
        {
            self.record_error(&have.proto, &e.to_string()).await;
            return SyncOutcome::Failed {
                error: e.to_string(),
            };
        }
        if self.exec.is_dry_run() {
            // A dry run woke nothing: there is nothing to wait for.
            return SyncOutcome::Woken {
                job,
                snapshot: newest.name.clone(),
                waited_seconds: 0,
            };
        }
        self.step("waiting for zrepl");
        let secs = self.fleet.cfg.zrepl_wait;
        let start = std::time::Instant::now();
        let wait = cmd::zrepl_wait(self.dst, &newest.guid, secs);
        let error = match self.exec.output(&self.dst.name, &wait).await {
            Ok(out) if out.success() => {
                for c in cmd::after_zrepl(self.dst, self.now) {
                    if let Err(e) = self.exec.run(&self.dst.name, &c).await {
                        self.notes.push(format!("recording the sync failed: {e}"));
                    }
                }
                return SyncOutcome::Woken {
                    job,
                    snapshot: newest.name.clone(),
                    waited_seconds: start.elapsed().as_secs(),
                };
            }
            Ok(out) if out.status == 3 => format!(
                "zrepl job {job} did not deliver {} (guid {}) within {secs} s",
                newest.full, newest.guid
            ),
            Ok(out) => format!(
                "waiting for zrepl failed (status {}): {}",
                out.status,
                out.stderr.trim()
            ),
            Err(e) => e.to_string(),
        };
        self.record_error(&have.proto, &error).await;
        SyncOutcome::Failed { error }
    }

    /// Leaves the last error on the replica, where `lab proto status` finds it.
    async fn record_error(&self, have: &ProtoState, error: &str) {
        if have.exists {
            let _ = self
                .exec
                .run(&self.dst.name, &cmd::record_sync_error(self.dst, error))
                .await;
        }
    }
}

pub fn human_bytes(b: u64) -> String {
    match b {
        b if b < 10 * 1024 => format!("{b} B"),
        b if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        b => format!("{:.1} MiB", b as f64 / 1048576.0),
    }
}
