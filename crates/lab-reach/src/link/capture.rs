//! `lab capture`: a link end's frames, from QEMU's `filter-dump` on its hypervisor, streamed
//! through the executor's `tap` to whatever the caller writes them to.

use std::future::Future;
use std::time::{Duration, Instant};

use lab_exec::Executor;
use lab_model::Lab;

use super::End;
use crate::pcap::Frames;

/// What `lab capture` is asked for.
#[derive(Debug, Clone, Default)]
pub struct CaptureAsk {
    /// A tcpdump filter expression (its words), applied on the hypervisor.
    pub filter: Vec<String>,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// What a capture got.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureReport {
    pub node: String,
    pub interface: String,
    pub hypervisor: String,
    pub frames: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Why it ended: `count`, `duration`, `stopped` (by the caller: a signal, a closed
    /// output), `limit` (the hypervisor's deadline: a day without `--duration`) or `ended`
    /// (on the hypervisor).
    pub ended: &'static str,
    /// What the hypervisor's side said as it ended (a capture file QEMU did not let go of).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A capture that could not be made or failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("node {node} on {hypervisor}: {why}")]
    Refused {
        node: String,
        hypervisor: String,
        why: String,
    },
    #[error(transparent)]
    Exec(#[from] lab_exec::ExecError),
    #[error("capture on {end} at {hypervisor} failed (exit {status}): {stderr}")]
    Failed {
        end: String,
        hypervisor: String,
        status: i32,
        stderr: String,
    },
}

/// Captures the frames of `end`'s NIC on its hypervisor and hands the pcap stream to `sink`
/// as it comes (which returns false when it cannot take more: its reader went away), until
/// `ask`'s count or duration, or `stop`. The capture is taken away on the hypervisor before
/// this returns (or, should the connection be cut, by the hypervisor's side alone).
pub async fn capture(
    exec: &Executor,
    lab: &Lab,
    end: End<'_>,
    ask: &CaptureAsk,
    sink: &mut (dyn FnMut(&[u8]) -> bool + Send),
    stop: impl Future<Output = ()>,
) -> Result<CaptureReport, CaptureError> {
    let node = end.node;
    let hv = lab.hypervisor_of(node);
    if let Some(why) = crate::refusals(exec, lab, &[node]).await.remove(&node.name) {
        return Err(CaptureError::Refused {
            node: node.name.clone(),
            hypervisor: hv.name.clone(),
            why,
        });
    }
    // Without a duration, a day at most: the hypervisor's own bound, should the controller
    // vanish without closing the connection.
    let limit = ask
        .duration
        .map_or(Duration::from_secs(86_400), |d| d + Duration::from_secs(60));
    let cmd = lab_hv::link::capture(node, &end.interface.mac, &ask.filter, limit);
    let mut frames = Frames::new(ask.count);
    let mut why: &'static str = "ended";
    let started = Instant::now();
    let mut take = |chunk: &[u8]| {
        let n = frames.feed(chunk);
        if !sink(&chunk[..n]) {
            why = "stopped";
            return false;
        }
        if frames.full() {
            why = "count";
            return false;
        }
        true
    };
    let (mut timed_out, mut stopped) = (false, false);
    let until = async {
        match ask.duration {
            Some(d) => tokio::select! {
                () = tokio::time::sleep(d) => timed_out = true,
                () = stop => stopped = true,
            },
            None => {
                stop.await;
                stopped = true;
            }
        }
    };
    let out = exec.tap(&hv.name, &cmd, &mut take, until).await?;
    let seconds = started.elapsed().as_secs_f64();
    if timed_out {
        why = "duration";
    } else if stopped {
        why = "stopped";
    }
    // Ended on the hypervisor, not by anything here: a failure says why.
    // The hypervisor's own deadline (`timeout`): the capture ran its longest.
    if why == "ended" && out.status == 124 {
        why = "limit";
    }
    if why == "ended" && out.status != 0 {
        return Err(CaptureError::Failed {
            end: end.name(),
            hypervisor: hv.name.clone(),
            status: out.status,
            stderr: out.stderr.trim().to_owned(),
        });
    }
    Ok(CaptureReport {
        node: node.name.clone(),
        interface: end.interface.name.clone(),
        hypervisor: hv.name.clone(),
        frames: frames.frames,
        bytes: frames.bytes,
        seconds: (seconds * 10.0).round() / 10.0,
        ended: why,
        warning: Some(out.stderr.trim().to_owned()).filter(|w| !w.is_empty()),
    })
}
