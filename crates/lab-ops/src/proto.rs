//! `lab proto`: the proto image's lifecycle. Release snapshots are taken on the source
//! hypervisor, replicated incrementally to every other hypervisor of the fleet (matched by
//! GUID, never by name alone) into read-only replicas, and pruned once no lab uses them.
//!
//! Running labs are never disturbed: nothing here rolls a replica back, receives with `-F`, or
//! destroys a snapshot that has clones (`zfs destroy` is never recursive, and zfs refuses a
//! snapshot with clones anyway).

use std::collections::{BTreeMap, HashMap, HashSet};

use lab_exec::{Cmd, ExecError, Executor};
use lab_model::names::glob_match;
use lab_model::{Hypervisor, Lab, Proto, Transport};

use crate::{Event, Events, join_all};

/// One snapshot of a proto dataset or replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snap {
    pub name: String,
    pub guid: String,
    pub creation: u64,
}

/// A clone of a proto snapshot: what pins the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pin {
    pub snapshot: String,
    pub dataset: String,
    /// The lab and node, when `lab` made the clone.
    pub lab: Option<String>,
    pub node: Option<String>,
}

/// What one hypervisor holds of the proto.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Holdings {
    pub dataset: String,
    pub exists: bool,
    /// Oldest first.
    pub snapshots: Vec<Snap>,
    pub pins: Vec<Pin>,
    /// `lab:synced` (when the last sync succeeded) and `lab:sync-error` on the replica.
    pub synced: Option<u64>,
    pub last_error: Option<String>,
}

impl Holdings {
    fn has(&self, name: &str) -> bool {
        self.snapshots.iter().any(|s| s.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("the lab files have no `proto:` section (source hypervisor, pattern, keep ...)")]
    NotConfigured,
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{host}: the proto's domain `{domain}` is running; shut it down first (or --force)")]
    DomainRunning { host: String, domain: String },
    #[error("{host}: snapshot {dataset}@{name} already exists")]
    Exists {
        host: String,
        dataset: String,
        name: String,
    },
    #[error("{host}: {dataset} has no snapshot matching `{pattern}`")]
    NothingReleased {
        host: String,
        dataset: String,
        pattern: String,
    },
    #[error(
        "{host}: the newest snapshot of {dataset} is `{newest}`, not a `-before` snapshot: \
         a rollback would lose it (run `lab proto begin` before a maintenance)"
    )]
    NotAfterBegin {
        host: String,
        dataset: String,
        newest: String,
    },
    #[error("{host}: {dataset} does not exist")]
    NoDataset { host: String, dataset: String },
}

/// The source and targets of a fleet's proto, from the lab files.
pub struct Fleet<'a> {
    pub cfg: &'a Proto,
    pub source: &'a Hypervisor,
    pub targets: Vec<&'a Hypervisor>,
}

impl<'a> Fleet<'a> {
    pub fn of(lab: &'a Lab) -> Result<Fleet<'a>, ProtoError> {
        let cfg = lab.proto.as_ref().ok_or(ProtoError::NotConfigured)?;
        let source = lab.hypervisor(&cfg.source).expect("the model checked it");
        let targets = lab
            .hypervisors
            .iter()
            .filter(|h| h.name != source.name)
            .collect();
        Ok(Fleet {
            cfg,
            source,
            targets,
        })
    }

    /// Source first, then the targets.
    pub fn all(&self) -> Vec<&'a Hypervisor> {
        std::iter::once(self.source)
            .chain(self.targets.iter().copied())
            .collect()
    }

    fn is_release(&self, name: &str) -> bool {
        glob_match(&self.cfg.pattern, name)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

const LIST: &str = r#"zfs get -H -p -o name,property,value guid,creation,lab:synced,lab:sync-error -r "$1" 2>/dev/null || true
echo '#clones'
zfs get -H -o name,property,value origin,lab:lab,lab:node -r "$2" 2>/dev/null || true
"#;

/// One round trip: the proto's snapshots and properties, and every clone in its pool.
pub fn list_cmd(hv: &Hypervisor) -> Cmd {
    let pool = hv.proto.split('/').next().unwrap_or_default();
    Cmd::query(["sh", "-c", LIST, "lab-proto-list", &hv.proto, pool])
}

pub fn parse_list(dataset: &str, text: &str) -> Holdings {
    let mut h = Holdings {
        dataset: dataset.to_owned(),
        ..Holdings::default()
    };
    let prefix = format!("{dataset}@");
    let mut snaps: Vec<Snap> = Vec::new();
    // dataset → (origin, lab:lab, lab:node)
    type Props = (Option<String>, Option<String>, Option<String>);
    let mut clones: BTreeMap<String, Props> = BTreeMap::new();
    let mut in_clones = false;
    for line in text.lines() {
        if line == "#clones" {
            in_clones = true;
            continue;
        }
        let mut f = line.splitn(3, '\t');
        let (Some(name), Some(prop), Some(value)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let value = (value != "-").then(|| value.to_owned());
        if in_clones {
            if name.contains('@') {
                continue;
            }
            let entry = clones.entry(name.to_owned()).or_default();
            match prop {
                "origin" => entry.0 = value,
                "lab:lab" => entry.1 = value,
                "lab:node" => entry.2 = value,
                _ => {}
            }
        } else if name == dataset {
            h.exists = true;
            match prop {
                "lab:synced" => h.synced = value.and_then(|v| v.parse().ok()),
                "lab:sync-error" => h.last_error = value,
                _ => {}
            }
        } else if let Some(snap) = name.strip_prefix(&prefix) {
            let i = match snaps.iter().position(|s| s.name == snap) {
                Some(i) => i,
                None => {
                    snaps.push(Snap {
                        name: snap.to_owned(),
                        guid: String::new(),
                        creation: 0,
                    });
                    snaps.len() - 1
                }
            };
            match (prop, value) {
                ("guid", Some(v)) => snaps[i].guid = v,
                ("creation", Some(v)) => snaps[i].creation = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    // zfs lists snapshots in the order they were taken; creation (seconds) only refines it.
    snaps.sort_by_key(|s| s.creation);
    h.snapshots = snaps;
    for (dataset, (origin, lab, node)) in clones {
        if let Some(snap) = origin.as_deref().and_then(|o| o.strip_prefix(&prefix)) {
            h.pins.push(Pin {
                snapshot: snap.to_owned(),
                dataset,
                lab,
                node,
            });
        }
    }
    h
}

async fn holdings(exec: &Executor, hv: &Hypervisor) -> Result<Holdings, ExecError> {
    let out = exec.run(&hv.name, &list_cmd(hv)).await?;
    Ok(parse_list(&hv.proto, &out.stdout))
}

async fn holdings_all<'a>(
    exec: &Executor,
    hvs: &[&'a Hypervisor],
) -> Vec<(&'a Hypervisor, Result<Holdings, ExecError>)> {
    let got = join_all(hvs.iter().map(|h| holdings(exec, h)).collect()).await;
    hvs.iter().copied().zip(got).collect()
}

// ---------------------------------------------------------------------------------------------
// release, begin, rollback

/// The name of a new snapshot: `YYYYMMDD-<kind>`, then `YYYYMMDD-2-<kind>` ... on the same day.
pub fn next_name(existing: &Holdings, day: &str, kind: &str) -> String {
    let first = format!("{day}-{kind}");
    if !existing.has(&first) {
        return first;
    }
    (2..)
        .map(|n| format!("{day}-{n}-{kind}"))
        .find(|n| !existing.has(n))
        .expect("a free name")
}

/// `YYYYMMDD` of a Unix time, UTC.
pub fn day_of(secs: u64) -> String {
    crate::utc(secs)[..10].replace('-', "")
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshotted {
    pub host: String,
    pub snapshot: String,
}

async fn refuse_while_running(exec: &Executor, fleet: &Fleet<'_>) -> Result<(), ProtoError> {
    let Some(domain) = &fleet.cfg.domain else {
        return Ok(());
    };
    let out = exec
        .output(
            &fleet.source.name,
            &Cmd::query(["virsh", "-q", "domstate", domain]),
        )
        .await?;
    if out.success() && out.stdout.trim() == "running" {
        return Err(ProtoError::DomainRunning {
            host: fleet.source.name.clone(),
            domain: domain.clone(),
        });
    }
    Ok(())
}

/// Takes a snapshot of the proto on the source: `kind` is `release` or `before`.
pub async fn snapshot(
    exec: &Executor,
    fleet: &Fleet<'_>,
    kind: &str,
    name: Option<&str>,
    force: bool,
    now: u64,
) -> Result<Snapshotted, ProtoError> {
    let src = fleet.source;
    let have = holdings(exec, src).await?;
    if !have.exists {
        return Err(ProtoError::NoDataset {
            host: src.name.clone(),
            dataset: src.proto.clone(),
        });
    }
    if !force {
        refuse_while_running(exec, fleet).await?;
    }
    let name = match name {
        Some(n) if have.has(n) => {
            return Err(ProtoError::Exists {
                host: src.name.clone(),
                dataset: src.proto.clone(),
                name: n.to_owned(),
            });
        }
        Some(n) => n.to_owned(),
        None => next_name(&have, &day_of(now), kind),
    };
    let full = format!("{}@{name}", src.proto);
    exec.run(&src.name, &Cmd::change(["zfs", "snapshot", &full]))
        .await?;
    Ok(Snapshotted {
        host: src.name.clone(),
        snapshot: full,
    })
}

/// Rolls the source's proto back to the `-before` snapshot `begin` took: only when that is the
/// newest snapshot, so nothing newer (and no clone of anything newer) is lost.
pub async fn rollback(
    exec: &Executor,
    fleet: &Fleet<'_>,
    force: bool,
) -> Result<Snapshotted, ProtoError> {
    let src = fleet.source;
    let have = holdings(exec, src).await?;
    let newest = have.snapshots.last().ok_or_else(|| ProtoError::NoDataset {
        host: src.name.clone(),
        dataset: format!("{}@*-before", src.proto),
    })?;
    if !newest.name.ends_with("-before") {
        return Err(ProtoError::NotAfterBegin {
            host: src.name.clone(),
            dataset: src.proto.clone(),
            newest: newest.name.clone(),
        });
    }
    if !force {
        refuse_while_running(exec, fleet).await?;
    }
    let full = format!("{}@{}", src.proto, newest.name);
    exec.run(&src.name, &Cmd::change(["zfs", "rollback", &full]))
        .await?;
    Ok(Snapshotted {
        host: src.name.clone(),
        snapshot: full,
    })
}

// ---------------------------------------------------------------------------------------------
// sync

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
pub fn plan(fleet: &Fleet<'_>, source: &Holdings, target: &Holdings) -> Result<Plan, ProtoError> {
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

fn send_cmd(src: &Hypervisor, from: Option<&str>, to: &str) -> Cmd {
    let to = format!("{}@{to}", src.proto);
    let argv: Vec<String> = match from {
        None => vec!["zfs".into(), "send".into(), to],
        Some(f) => vec![
            "zfs".into(),
            "send".into(),
            "-I".into(),
            format!("{}@{f}", src.proto),
            to,
        ],
    };
    Cmd::query(argv).timeout(std::time::Duration::from_secs(300))
}

fn recv_cmd(dst: &Hypervisor) -> Cmd {
    Cmd::change(["zfs", "recv", "-u", &dst.proto]).timeout(std::time::Duration::from_secs(300))
}

/// The source pipes straight to the target: `zfs send ... | ssh TARGET zfs recv -u DATASET`.
const DIRECT: &str = r#"dst=$1 ds=$2; shift 2
zfs send "$@" | ssh -o BatchMode=yes -- "$dst" zfs recv -u "$ds""#;

fn direct_cmd(src: &Hypervisor, dst: &Hypervisor, from: Option<&str>, to: &str) -> Cmd {
    let send = send_cmd(src, from, to);
    let mut argv: Vec<String> = ["sh", "-c", DIRECT, "lab-proto-direct"]
        .map(String::from)
        .to_vec();
    argv.push(dst.ssh.clone());
    argv.push(dst.proto.clone());
    argv.extend(send.argv.into_iter().skip(2));
    Cmd::change(argv).timeout(std::time::Duration::from_secs(3600))
}

fn one_line(text: &str) -> String {
    let t: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    t.chars().take(300).collect()
}

/// Sends every target what it misses, all targets at once.
pub async fn sync(
    exec: &Executor,
    fleet: &Fleet<'_>,
    now: u64,
    events: Events<'_>,
) -> Result<Vec<TargetReport>, ProtoError> {
    // Source and targets are read in one round, all at once.
    let mut all = holdings_all(exec, &fleet.all()).await;
    let targets = all.split_off(1);
    let source = all.pop().expect("the source").1?;
    let jobs = targets
        .into_iter()
        .map(|(dst, have)| sync_one(exec, fleet, &source, dst, have, now, events));
    Ok(join_all(jobs.collect()).await)
}

async fn sync_one(
    exec: &Executor,
    fleet: &Fleet<'_>,
    source: &Holdings,
    dst: &Hypervisor,
    have: Result<Holdings, ExecError>,
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
        let cmd = Cmd::change(["zrepl", "signal", "wakeup", &job]);
        return done(match exec.run(&dst.name, &cmd).await {
            Ok(_) => report(SyncOutcome::Woken { job }),
            Err(e) => report(SyncOutcome::Failed {
                error: e.to_string(),
            }),
        });
    }
    let have = match have {
        Ok(h) => h,
        Err(e) => {
            return done(report(SyncOutcome::Failed {
                error: e.to_string(),
            }));
        }
    };
    let plan = match plan(fleet, source, &have) {
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
                &direct_cmd(fleet.source, dst, from.as_deref(), &to),
            )
            .await
            .map(|_| None),
        _ => exec
            .pipe(
                (
                    &fleet.source.name,
                    &send_cmd(fleet.source, from.as_deref(), &to),
                ),
                (&dst.name, &recv_cmd(dst)),
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
    let after = [
        Cmd::change(["zfs", "set", "readonly=on", &dst.proto]),
        Cmd::change([
            "zfs".to_owned(),
            "set".to_owned(),
            format!("lab:synced={now}"),
            dst.proto.clone(),
        ]),
        Cmd::change(["zfs", "inherit", "lab:sync-error", &dst.proto]),
    ];
    for cmd in &after {
        if let Err(e) = exec.run(&dst.name, cmd).await {
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
async fn record_error(exec: &Executor, dst: &Hypervisor, have: &Holdings, error: &str) {
    if have.exists {
        let cmd = Cmd::change([
            "zfs".to_owned(),
            "set".to_owned(),
            format!("lab:sync-error={}", one_line(error)),
            dst.proto.clone(),
        ]);
        let _ = exec.run(&dst.name, &cmd).await;
    }
}

pub fn human_bytes(b: u64) -> String {
    match b {
        b if b < 10 * 1024 => format!("{b} B"),
        b if b < 10 * 1024 * 1024 => format!("{} KiB", b / 1024),
        b => format!("{:.1} MiB", b as f64 / 1048576.0),
    }
}

// ---------------------------------------------------------------------------------------------
// prune

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    pub host: String,
    pub destroyed: Vec<String>,
    /// Old snapshots kept because clones use them.
    pub pinned: Vec<Pin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What prune would destroy on one hypervisor, and what it keeps because clones pin it.
/// Candidates: release snapshots beyond the newest `keep`, and `-before` snapshots older than
/// the newest release. Never the newest common base with the source (`protected`).
pub fn prune_plan(
    fleet: &Fleet<'_>,
    have: &Holdings,
    keep: usize,
    protected: &HashSet<String>,
) -> (Vec<String>, Vec<Pin>) {
    let releases: Vec<usize> = have
        .snapshots
        .iter()
        .enumerate()
        .filter(|(_, s)| fleet.is_release(&s.name))
        .map(|(i, _)| i)
        .collect();
    let newest_release = releases.last().copied();
    let old_releases = releases.len().saturating_sub(keep);
    let mut candidates: Vec<usize> = releases[..old_releases].to_vec();
    if let Some(nr) = newest_release {
        candidates.extend((0..nr).filter(|&i| {
            have.snapshots[i].name.ends_with("-before")
                && !fleet.is_release(&have.snapshots[i].name)
        }));
    }
    candidates.sort_unstable();
    let mut destroy = Vec::new();
    let mut pinned = Vec::new();
    for i in candidates {
        let s = &have.snapshots[i];
        let pins: Vec<Pin> = have
            .pins
            .iter()
            .filter(|p| p.snapshot == s.name)
            .cloned()
            .collect();
        if !pins.is_empty() {
            pinned.extend(pins);
        } else if !protected.contains(&s.guid) {
            destroy.push(s.name.clone());
        }
    }
    (destroy, pinned)
}

/// Destroys, on every hypervisor, the snapshots no lab uses any more (see [`prune_plan`]).
pub async fn prune(
    exec: &Executor,
    fleet: &Fleet<'_>,
    keep: usize,
) -> Result<Vec<PruneReport>, ProtoError> {
    let all = holdings_all(exec, &fleet.all()).await;
    let source = match &all[0].1 {
        Ok(h) => h.clone(),
        Err(e) => return Err(e.clone().into()),
    };
    let source_guids: HashSet<&str> = source.snapshots.iter().map(|s| s.guid.as_str()).collect();
    // Each target's newest snapshot the source also has: the base of its next increment.
    let mut bases: HashSet<String> = HashSet::new();
    let mut every_target_known = true;
    for (_, have) in &all[1..] {
        match have {
            Ok(h) => {
                if let Some(b) = h
                    .snapshots
                    .iter()
                    .rev()
                    .find(|s| source_guids.contains(s.guid.as_str()))
                {
                    bases.insert(b.guid.clone());
                }
            }
            Err(_) => every_target_known = false,
        }
    }
    let jobs = all.iter().enumerate().map(|(i, (hv, have))| {
        let bases = &bases;
        async move {
            let mut report = PruneReport {
                host: hv.name.clone(),
                ..PruneReport::default()
            };
            let have = match have {
                Ok(h) => h,
                Err(e) => {
                    report.error = Some(e.to_string());
                    return report;
                }
            };
            if i == 0 && !every_target_known {
                report.error = Some(
                    "not pruned: a target could not be read, so its next increment's base is unknown"
                        .to_owned(),
                );
                return report;
            }
            let (destroy, pinned) = prune_plan(fleet, have, keep, bases);
            report.pinned = pinned;
            for name in destroy {
                let full = format!("{}@{name}", hv.proto);
                match exec.run(&hv.name, &Cmd::change(["zfs", "destroy", &full])).await {
                    Ok(_) => report.destroyed.push(full),
                    Err(e) => {
                        report.error = Some(e.to_string());
                        break;
                    }
                }
            }
            report
        }
    });
    Ok(join_all(jobs.collect()).await)
}

// ---------------------------------------------------------------------------------------------
// status

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub host: String,
    pub role: &'static str,
    pub dataset: String,
    /// The newest release snapshot there.
    pub newest: Option<String>,
    /// Whether its newest release is the source's newest release (same GUID).
    pub in_sync: bool,
    /// Source releases it does not have yet.
    pub behind: usize,
    /// Seconds between the source's newest release and this host's.
    pub lag_seconds: Option<u64>,
    pub pinned: Vec<Pin>,
    pub synced: Option<u64>,
    pub last_error: Option<String>,
}

pub async fn status(exec: &Executor, fleet: &Fleet<'_>) -> Vec<HostStatus> {
    let all = holdings_all(exec, &fleet.all()).await;
    let source = all[0].1.as_ref().ok().cloned();
    let newest_of = |h: &Holdings| -> Option<Snap> {
        h.snapshots
            .iter()
            .rev()
            .find(|s| fleet.is_release(&s.name))
            .cloned()
    };
    let src_newest = source.as_ref().and_then(newest_of);
    all.iter()
        .enumerate()
        .map(|(i, (hv, have))| {
            let mut s = HostStatus {
                host: hv.name.clone(),
                role: if i == 0 { "source" } else { "target" },
                dataset: hv.proto.clone(),
                newest: None,
                in_sync: false,
                behind: 0,
                lag_seconds: None,
                pinned: Vec::new(),
                synced: None,
                last_error: None,
            };
            match have {
                Err(e) => s.last_error = Some(e.to_string()),
                Ok(h) => {
                    let newest = newest_of(h);
                    s.newest = newest.as_ref().map(|n| n.name.clone());
                    s.pinned = h.pins.clone();
                    s.synced = h.synced;
                    s.last_error = h.last_error.clone();
                    if let (Some(src), Some(sn)) = (&source, &src_newest) {
                        let guids: HashSet<&str> =
                            h.snapshots.iter().map(|x| x.guid.as_str()).collect();
                        s.in_sync = newest.as_ref().is_some_and(|n| n.guid == sn.guid);
                        s.behind = src
                            .snapshots
                            .iter()
                            .filter(|x| fleet.is_release(&x.name))
                            .rev()
                            .take_while(|x| !guids.contains(x.guid.as_str()))
                            .count();
                        s.lag_seconds = Some(
                            sn.creation
                                .saturating_sub(newest.as_ref().map_or(0, |n| n.creation)),
                        );
                    }
                }
            }
            s
        })
        .collect()
}
