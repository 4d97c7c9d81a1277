//! `release`, `begin` and `rollback`: snapshots of the proto on the source hypervisor.

use lab_exec::Executor;
use lab_hv::{HostState, ProtoState, cmd};

use crate::{Fleet, ProtoError};

/// What a proto snapshot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// `YYYYMMDD-release`: what labs clone and sync replicates.
    Release,
    /// `YYYYMMDD-before`: a rollback point taken ahead of a maintenance.
    Before,
}

impl SnapshotKind {
    /// The suffix of its name.
    pub fn suffix(self) -> &'static str {
        match self {
            SnapshotKind::Release => "release",
            SnapshotKind::Before => "before",
        }
    }
}

/// What to do when the proto's own VM runs on the source (`--force` proceeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfRunning {
    Refuse,
    Proceed,
}

/// A snapshot to take of the proto on the source.
#[derive(Debug, Clone)]
pub struct SnapshotRequest<'a> {
    pub kind: SnapshotKind,
    /// An explicit name instead of `YYYYMMDD[-N]-<kind>`.
    pub name: Option<&'a str>,
    pub if_running: IfRunning,
    /// Seconds since the epoch: the day in the default name.
    pub now: u64,
}

/// The name of a new snapshot: `YYYYMMDD-<kind>`, then `YYYYMMDD-2-<kind>` ... on the same day.
pub fn next_name(existing: &ProtoState, day: &str, kind: SnapshotKind) -> String {
    let kind = kind.suffix();
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
    lab_hv::utc(secs)[..10].replace('-', "")
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshotted {
    pub host: String,
    pub snapshot: String,
}

/// The proto's own VM must be shut down before its disk is snapshotted or rolled back.
fn refuse_while_running(fleet: &Fleet<'_>, source: &HostState) -> Result<(), ProtoError> {
    match &fleet.cfg.domain {
        Some(domain) if source.domain_running(domain) => Err(ProtoError::DomainRunning {
            host: fleet.source.name.clone(),
            domain: domain.clone(),
        }),
        _ => Ok(()),
    }
}

/// Takes a snapshot of the proto on the source.
pub async fn snapshot(
    exec: &Executor,
    fleet: &Fleet<'_>,
    req: &SnapshotRequest<'_>,
) -> Result<Snapshotted, ProtoError> {
    let src = fleet.source;
    let state = lab_hv::state::probe(exec, src).await?;
    let have = &state.proto;
    if !have.exists {
        return Err(ProtoError::NoDataset {
            host: src.name.clone(),
            dataset: src.proto.clone(),
        });
    }
    if req.if_running == IfRunning::Refuse {
        refuse_while_running(fleet, &state)?;
    }
    let name = match req.name {
        Some(n) if have.has(n) => {
            return Err(ProtoError::Exists {
                host: src.name.clone(),
                dataset: src.proto.clone(),
                name: n.to_owned(),
            });
        }
        Some(n) => n.to_owned(),
        None => next_name(have, &day_of(req.now), req.kind),
    };
    exec.run(&src.name, &cmd::snapshot_proto(src, &name))
        .await?;
    Ok(Snapshotted {
        host: src.name.clone(),
        snapshot: format!("{}@{name}", src.proto),
    })
}

/// Rolls the source's proto back to the `-before` snapshot `begin` took: only when that is the
/// newest snapshot, so nothing newer (and no clone of anything newer) is lost.
pub async fn rollback(
    exec: &Executor,
    fleet: &Fleet<'_>,
    if_running: IfRunning,
) -> Result<Snapshotted, ProtoError> {
    let src = fleet.source;
    let state = lab_hv::state::probe(exec, src).await?;
    let newest = state
        .proto
        .snapshots
        .last()
        .ok_or_else(|| ProtoError::NoDataset {
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
    if if_running == IfRunning::Refuse {
        refuse_while_running(fleet, &state)?;
    }
    exec.run(&src.name, &cmd::rollback_proto(src, &newest.name))
        .await?;
    Ok(Snapshotted {
        host: src.name.clone(),
        snapshot: newest.full.clone(),
    })
}
