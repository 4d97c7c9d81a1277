//! Opening a host's master connection.

use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};

use crate::MASTER_IDLE;

/// `[user@]host[:port]` → (`[user@]host`, port).
pub(crate) fn split_port(dest: &str) -> (&str, Option<&str>) {
    match dest.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => (h, Some(p)),
        _ => (dest, None),
    }
}

pub(crate) async fn connect(dest: &str, timeout: Duration) -> Result<Session, String> {
    let (host, port) = split_port(dest);
    let mut builder = SessionBuilder::default();
    builder
        .known_hosts_check(KnownHosts::Add)
        .connect_timeout(timeout)
        .server_alive_interval(Duration::from_secs(5))
        .control_directory(std::env::temp_dir())
        .control_persist(ControlPersist::IdleFor(
            std::num::NonZeroUsize::new(MASTER_IDLE).expect("non-zero"),
        ));
    if let Some(p) = port {
        builder.port(p.parse().map_err(|_| format!("bad port in {dest}"))?);
    }
    let (user, host) = match host.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, host),
    };
    if let Some(u) = user {
        builder.user(u.to_owned());
    }
    tokio::time::timeout(timeout + Duration::from_secs(5), builder.connect_mux(host))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            message
        })
}
