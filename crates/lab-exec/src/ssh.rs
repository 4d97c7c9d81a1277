//! What goes over ssh besides commands: rsync through a host's master connection, and opening
//! that master.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};

use crate::{Effect, ExecError, Executor, MASTER_IDLE, Mode, quote, quote_line};

impl Executor {
    /// Copies the contents of `local` into `remote` on `host` with rsync over the host's master
    /// connection. The image keeps what it has: a directory or file it already holds keeps its
    /// owner, group and mode (a file is written in place: only its content and execute bit
    /// change), and its directories keep their times; what the overlay adds is root's, with its
    /// mode under umask 022 (so a controller's umask 002 checkout makes no group-writable
    /// `/etc`). Never `--delete` (the target is a clone of the proto image), never `-X`.
    pub async fn rsync(&self, host: &str, local: &Path, remote: &str) -> Result<(), ExecError> {
        let h = self.host(host)?;
        let (dest_host, port) = split_port(&h.target.ssh);
        let args = rsync_args(local, dest_host, remote, &self.guard_of(h));
        let remote_shell = |socket: &str| {
            let mut e = format!("ssh -S {socket} -o ControlMaster=no -o BatchMode=yes");
            if let Some(p) = port {
                e.push_str(&format!(" -p {p}"));
            }
            e
        };
        let show = |socket: &str| {
            format!(
                "rsync -e {} {}",
                quote(&remote_shell(socket)),
                quote_line(&args)
            )
        };
        if !matches!(self.mode, Mode::Live) {
            let mut argv = vec!["rsync".to_owned()];
            argv.extend(args.iter().cloned());
            self.note(host, Effect::Change, show("<master socket>"), &argv);
            return Ok(());
        }
        let session = self.session(h).await?;
        let socket = quote(&session.control_socket().to_string_lossy());
        let shown = show(&socket);
        let _global = self.global.acquire().await.expect("never closed");
        let _local = h.limit.acquire().await.expect("never closed");
        self.check_lock(h)?;
        let mut c = tokio::process::Command::new("rsync");
        c.arg("-e").arg(remote_shell(&socket)).args(&args);
        c.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(RSYNC_DEADLINE, c.output())
            .await
            .map_err(|_| ExecError::Timeout {
                host: host.to_owned(),
                command: shown.clone(),
                after: RSYNC_DEADLINE,
            })?
            .map_err(|e| ExecError::Local {
                host: host.to_owned(),
                command: shown.clone(),
                message: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ExecError::Failed {
                host: host.to_owned(),
                command: shown,
                status: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// How long a copy may take at most. A copy that stops moving ends much sooner: rsync's own
/// `--timeout=30` ends it after 30 s without I/O. This bounds only one that keeps moving, so it
/// is large: an overlay with big blobs on a slow link must not fail at an arbitrary size
/// (review 3, N20; it was 600 s).
const RSYNC_DEADLINE: Duration = Duration::from_secs(6 * 3600);

fn rsync_args(local: &Path, host: &str, remote: &str, guard: &[String]) -> Vec<String> {
    let mut src: PathBuf = local.to_path_buf();
    src.push(""); // trailing slash: the directory's contents
    let mut args = vec![
        // -a without -p, -o, -g: recursive, links, times, devices and specials; hard links.
        "-rltDH".to_owned(),
        // The execute bit of an existing file follows the overlay's; its other bits stay.
        "--executability".to_owned(),
        // Every file of the tree is written: an image's file of the same size and time as
        // the overlay's is not taken for it.
        "--ignore-times".to_owned(),
        // Into the image's own file, which so keeps its owner, group and mode (a daemon's
        // `root:bird 0640` config stays readable by the daemon).
        "--inplace".to_owned(),
        "--omit-dir-times".to_owned(),
        "--protect-args".to_owned(),
        // Both ends give up after this long without I/O (a cut connection).
        "--timeout=30".to_owned(),
    ];
    // The remote shell runs this as the rsync command: new files' modes under umask 022,
    // whatever the ssh session's umask is.
    let mut path = "umask 022 && ".to_owned();
    if !guard.is_empty() {
        path.push_str(&quote_line(guard));
        path.push(' ');
    }
    path.push_str("rsync");
    args.push(format!("--rsync-path={path}"));
    args.push(src.to_string_lossy().into_owned());
    args.push(format!("{host}:{}/", remote.trim_end_matches('/')));
    args
}

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
