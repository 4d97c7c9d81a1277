//! `lab proto`: the proto image's lifecycle. Release snapshots are taken on the source
//! hypervisor ([`release`]), replicated incrementally to every other hypervisor of the fleet,
//! matched by GUID and never by name alone, into read-only replicas ([`sync`]), pruned once no
//! lab uses them ([`prune`]) and reported on ([`status`]). Every hypervisor is read with the
//! one probe of `lab-hv`.
//!
//! Architecture invariant: running labs are never disturbed. Nothing here rolls a replica
//! back, receives with `-F`, or destroys a snapshot that has clones or that a target needs as
//! the base of its next increment (`zfs destroy` is never recursive).

pub mod prune;
pub mod release;
pub mod status;
pub mod sync;

use lab_exec::{ExecError, Executor};
use lab_hv::HostState;
use lab_model::names::glob_match;
use lab_model::{Hypervisor, Lab, Proto};

pub use prune::{Departed, ForgetReport, Held, PruneReport, forget, prune};
pub use release::{IfRunning, SnapshotKind, SnapshotRequest, Snapshotted, rollback, snapshot};
pub use status::{HostStatus, status};
pub use sync::{SyncOptions, SyncOutcome, TargetReport, sync};

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
    #[error(
        "{host}: a rate limit ({rate}) needs `pv` or `mbuffer` on the source (apt install pv); nothing was sent"
    )]
    NoLimiter { host: String, rate: String },
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

    pub fn is_release(&self, name: &str) -> bool {
        glob_match(&self.cfg.pattern, name)
    }
}

/// Reads every hypervisor in `hvs` at once, in that order.
async fn read_all<'a>(
    exec: &Executor,
    hvs: &[&'a Hypervisor],
) -> Vec<(&'a Hypervisor, Result<HostState, ExecError>)> {
    let got =
        lab_hv::run::join_all(hvs.iter().map(|h| lab_hv::state::probe(exec, h)).collect()).await;
    hvs.iter().copied().zip(got).collect()
}

/// What `refresh` did: the sync, then the prune.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refreshed {
    pub sync: Vec<TargetReport>,
    pub prune: Vec<PruneReport>,
}

/// `sync`, then `prune` keeping the configured number of releases: the cron job.
pub async fn refresh(
    exec: &Executor,
    fleet: &Fleet<'_>,
    opts: &SyncOptions,
    now: u64,
    events: lab_hv::Events<'_>,
) -> Result<Refreshed, ProtoError> {
    let sync = sync(exec, fleet, opts, now, events).await?;
    let prune = prune(exec, fleet, fleet.cfg.keep as usize).await?;
    Ok(Refreshed { sync, prune })
}
