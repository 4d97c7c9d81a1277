//! `status`: per hypervisor, its newest release, whether it has the source's, how far behind,
//! what pins old snapshots, and the last sync's error.

use std::collections::HashSet;

use lab_exec::Executor;
use lab_hv::{Pin, ProtoState, Snapshot};

use crate::Fleet;

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub host: String,
    pub role: &'static str,
    pub dataset: String,
    /// The newest release snapshot there.
    pub newest: Option<String>,
    /// Whether its newest release is the source's newest release (same GUID).
    pub in_sync: bool,
    /// Source releases it does not have yet (unknown when the source could not be read).
    pub behind: Option<usize>,
    /// Seconds between the source's newest release and this host's.
    pub lag_seconds: Option<u64>,
    pub pinned: Vec<Pin>,
    /// Its proto's snapshots with holds (`lab-sync:<target>` keeps a target's next base).
    pub held: Vec<crate::prune::Held>,
    /// When its newest release was taken (seconds since the epoch).
    pub newest_created: Option<u64>,
    pub synced: Option<u64>,
    /// Whether the hypervisor answered.
    pub reachable: bool,
    pub last_error: Option<String>,
}

pub async fn status(exec: &Executor, fleet: &Fleet<'_>) -> Vec<HostStatus> {
    let all: Vec<_> = crate::read_all(exec, &fleet.all())
        .await
        .into_iter()
        .map(|(hv, state)| {
            (
                hv,
                state.map(|s| (s.proto.clone(), s.pins(), crate::prune::held(&s))),
            )
        })
        .collect();
    let source = all[0].1.as_ref().ok().map(|(p, _, _)| p.clone());
    let newest_of = |h: &ProtoState| -> Option<Snapshot> {
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
                behind: None,
                lag_seconds: None,
                pinned: Vec::new(),
                held: Vec::new(),
                newest_created: None,
                synced: None,
                reachable: false,
                last_error: None,
            };
            match have {
                Err(e) => s.last_error = Some(e.to_string()),
                Ok((h, pins, held)) => {
                    s.reachable = true;
                    let newest = newest_of(h);
                    s.newest = newest.as_ref().map(|n| n.name.clone());
                    s.newest_created = newest.as_ref().map(|n| n.creation);
                    s.pinned = pins.clone();
                    s.held = held.clone();
                    s.synced = h.synced;
                    s.last_error = h.last_error.clone();
                    if let (Some(src), Some(sn)) = (&source, &src_newest) {
                        let guids: HashSet<&str> =
                            h.snapshots.iter().map(|x| x.guid.as_str()).collect();
                        s.in_sync = newest.as_ref().is_some_and(|n| n.guid == sn.guid);
                        s.behind = Some(
                            src.snapshots
                                .iter()
                                .filter(|x| fleet.is_release(&x.name))
                                .rev()
                                .take_while(|x| !guids.contains(x.guid.as_str()))
                                .count(),
                        );
                        // Only between two releases: a host with none has no lag to speak of.
                        s.lag_seconds = newest
                            .as_ref()
                            .map(|n| sn.creation.saturating_sub(n.creation));
                    }
                }
            }
            s
        })
        .collect()
}
