//! `prune`: per hypervisor, release snapshots beyond the newest `keep` and `-before`
//! snapshots older than the newest release; never one with clones, never one with holds
//! (`lab-sync:<target>` keeps a target's next base, and a human's hold is respected), never a
//! target's base for its next increment. A `lab-sync:` hold of a hypervisor the fleet file does
//! not name protects its snapshot like any other and is listed: only `lab proto forget HV`
//! (see [`forget`]) says that hypervisor left for good and releases its holds.

use std::collections::HashSet;

use lab_exec::Executor;
use lab_hv::{HostState, Pin, cmd};

use crate::{Fleet, ProtoError};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    pub host: String,
    pub destroyed: Vec<String>,
    /// Old snapshots kept because clones use them.
    pub pinned: Vec<Pin>,
    /// Old snapshots kept because they have holds.
    pub held: Vec<Held>,
    /// Sync holds of hypervisors this fleet file does not name (`lab-sync:<hv>` on
    /// `proto@snapshot`): kept, with their snapshots, until `lab proto forget <hv>`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<Departed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A sync hold of a hypervisor the fleet file does not name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Departed {
    pub hypervisor: String,
    pub snapshot: String,
}

/// A snapshot with holds: their tags where zfs lists them (zfs-fuse cannot), and how many.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    pub snapshot: String,
    pub tags: Vec<String>,
    pub count: u32,
}

/// Every snapshot of `have`'s proto that has holds.
pub fn held(have: &HostState) -> Vec<Held> {
    have.proto
        .snapshots
        .iter()
        .filter(|s| s.userrefs > 0)
        .map(|s| Held {
            snapshot: s.name.clone(),
            tags: s.holds.clone(),
            count: s.userrefs,
        })
        .collect()
}

/// Every `lab-sync:<hv>` hold whose hypervisor is not a target of this fleet file (only where
/// zfs lists holds by tag). The file may leave a hypervisor out for a while (down for
/// maintenance): its holds stay, and so does the base of its next increment.
pub fn departed_holds(fleet: &Fleet<'_>, have: &HostState) -> Vec<Departed> {
    if !have.zfs.holds_listed {
        return Vec::new();
    }
    have.proto
        .snapshots
        .iter()
        .flat_map(|s| s.holds.iter().map(move |t| (s, t)))
        .filter_map(|(s, t)| {
            let hv = t.strip_prefix("lab-sync:")?;
            (!fleet.targets.iter().any(|h| h.name == hv)).then(|| Departed {
                hypervisor: hv.to_owned(),
                snapshot: s.name.clone(),
            })
        })
        .collect()
}

/// What prune would destroy on one hypervisor, what it keeps because clones pin it, and what
/// it keeps because it is held.
/// Candidates: release snapshots beyond the newest `keep`, and `-before` snapshots older than
/// the newest release. Never the newest common base with the source (`protected`); on a
/// target, never a snapshot newer than its newest one the source has (`replicated`: the source's
/// GUIDs) that the source does not have: a diverged replica's own snapshots may be the only
/// copies there are (review 3, N7). Older ones the source has pruned already may go.
pub fn prune_plan(
    fleet: &Fleet<'_>,
    have: &HostState,
    keep: usize,
    protected: &HashSet<String>,
    replicated: Option<&HashSet<&str>>,
) -> (Vec<String>, Vec<Pin>, Vec<Held>) {
    let snapshots = &have.proto.snapshots;
    let all_pins = have.pins();
    let releases: Vec<usize> = snapshots
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
            snapshots[i].name.ends_with("-before") && !fleet.is_release(&snapshots[i].name)
        }));
    }
    candidates.sort_unstable();
    let mut destroy = Vec::new();
    let mut pinned = Vec::new();
    let mut kept_held = Vec::new();
    let holds = held(have);
    // A target's snapshot after its newest one in common with the source, that the source does
    // not have: history of its own (all of them, with nothing in common).
    let common = replicated.map(|r| snapshots.iter().rposition(|s| r.contains(s.guid.as_str())));
    let own_history = |i: usize| match (replicated, common) {
        (Some(r), Some(base)) => {
            !r.contains(snapshots[i].guid.as_str()) && base.is_none_or(|b| i > b)
        }
        _ => false,
    };
    for i in candidates {
        let s = &snapshots[i];
        let pins: Vec<Pin> = all_pins
            .iter()
            .filter(|p| p.snapshot == s.name)
            .cloned()
            .collect();
        if !pins.is_empty() {
            pinned.extend(pins);
        } else if let Some(h) = holds.iter().find(|h| h.snapshot == s.name) {
            kept_held.push(h.clone());
        } else if !protected.contains(&s.guid) && !own_history(i) {
            destroy.push(s.name.clone());
        }
    }
    (destroy, pinned, kept_held)
}

/// Destroys, on every hypervisor, the snapshots no lab uses any more (see [`prune_plan`]).
pub async fn prune(
    exec: &Executor,
    fleet: &Fleet<'_>,
    keep: usize,
) -> Result<Vec<PruneReport>, ProtoError> {
    let all = crate::read_all(exec, &fleet.all()).await;
    let source = match &all[0].1 {
        Ok(h) => h.clone(),
        Err(e) => return Err(e.clone().into()),
    };
    let source_guids: HashSet<&str> = source
        .proto
        .snapshots
        .iter()
        .map(|s| s.guid.as_str())
        .collect();
    // Each target's newest snapshot the source also has: the base of its next increment.
    let mut bases: HashSet<String> = HashSet::new();
    let mut every_target_known = true;
    for (_, have) in &all[1..] {
        match have {
            Ok(h) => {
                if let Some(b) = h
                    .proto
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
        let source_guids = &source_guids;
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
            report.departed = departed_holds(fleet, have);
            let replicated = (i > 0).then_some(source_guids);
            let (destroy, pinned, held) = prune_plan(fleet, have, keep, bases, replicated);
            report.pinned = pinned;
            report.held = held;
            for name in destroy {
                match exec.run(&hv.name, &cmd::destroy_proto_snapshot(hv, &name)).await {
                    Ok(_) => report.destroyed.push(format!("{}@{name}", hv.proto)),
                    Err(e) => {
                        report.error = Some(e.to_string());
                        break;
                    }
                }
            }
            report
        }
    });
    Ok(lab_hv::run::join_all(jobs.collect()).await)
}

/// What `forget` released on one hypervisor.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ForgetReport {
    pub host: String,
    /// `proto@snapshot` whose `lab-sync:<gone>` hold was released.
    pub released: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `lab proto forget HV`: `gone` left the fleet for good; its `lab-sync:` holds are released on
/// every hypervisor of the fleet, so that prune may take what they kept. Where zfs cannot list
/// holds (zfs-fuse), the release is tried on every held snapshot (a missing tag is no error).
pub async fn forget(exec: &Executor, fleet: &Fleet<'_>, gone: &str) -> Vec<ForgetReport> {
    let tag = format!("lab-sync:{gone}");
    let all = crate::read_all(exec, &fleet.all()).await;
    let jobs = all.iter().map(|(hv, have)| {
        let tag = &tag;
        async move {
            let mut report = ForgetReport {
                host: hv.name.clone(),
                ..ForgetReport::default()
            };
            let have = match have {
                Ok(h) => h,
                Err(e) => {
                    report.error = Some(e.to_string());
                    return report;
                }
            };
            let snapshots = have.proto.snapshots.iter().filter(|s| {
                if have.zfs.holds_listed {
                    s.holds.iter().any(|t| t == tag)
                } else {
                    s.userrefs > 0
                }
            });
            for s in snapshots {
                match exec.run(&hv.name, &cmd::release(hv, tag, &s.name)).await {
                    Ok(_) => report.released.push(format!("{}@{}", hv.proto, s.name)),
                    Err(e) => {
                        report.error = Some(e.to_string());
                        break;
                    }
                }
            }
            report
        }
    });
    lab_hv::run::join_all(jobs.collect()).await
}
