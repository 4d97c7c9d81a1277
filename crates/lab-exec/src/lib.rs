//! The one way `lab` reaches a hypervisor: an async executor over `ssh`.
//!
//! One multiplexed master connection per hypervisor (the `openssh` crate, native mux), opened on
//! first use and shared by every task for that host; commands run in parallel within a
//! per-host and a global limit. Every command is a [`Cmd`]: an argument vector that is quoted
//! for the remote shell here, and only here, so what `--dry-run` prints is exactly what is sent.
//!
//! [`Mode::DryRun`] runs read-only queries and records changes without running them;
//! [`Mode::Scripted`] runs nothing and answers queries from a script, for command-plan tests.
//!
//! Architecture invariant: this is the only crate of `lab` that spawns processes.

mod hold;
mod quote;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

pub use hold::Holding;
pub use quote::{quote, quote_line};

/// Does a command change anything? Queries may be repeated and run even under `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Query,
    Change,
}

/// A remote command: program and arguments, never a shell string.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub effect: Effect,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Cmd {
    fn new<I, S>(effect: Effect, argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            argv: argv.into_iter().map(Into::into).collect(),
            effect,
            stdin: None,
            timeout: Duration::from_secs(60),
        }
    }

    pub fn query<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Cmd {
        Cmd::new(Effect::Query, argv)
    }

    pub fn change<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Cmd {
        Cmd::new(Effect::Change, argv)
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    /// The command line as the remote shell receives it.
    pub fn line(&self) -> String {
        let mut line = quote_line(&self.argv);
        if self.stdin.is_some() {
            line.push_str(" <<< (stdin)");
        }
        line
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Out {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(stdout: impl Into<String>) -> Out {
        Out {
            status: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    pub fn fail(status: i32, stderr: impl Into<String>) -> Out {
        Out {
            status,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    pub fn success(&self) -> bool {
        self.status == 0
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error("{host}: cannot connect to `{ssh}`: {message}")]
    Connect {
        host: String,
        ssh: String,
        message: String,
    },
    #[error("{host}: `{command}` exited with status {status}: {stderr}")]
    Failed {
        host: String,
        command: String,
        status: i32,
        stderr: String,
    },
    #[error("{host}: `{command}` did not finish within {after:?}")]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },
    #[error("{host}: the connection was lost while running `{command}`")]
    Disconnected { host: String, command: String },
    #[error("{host}: `{command}`: {message}")]
    Local {
        host: String,
        command: String,
        message: String,
    },
    #[error("{host}: not a hypervisor of this lab")]
    UnknownHost { host: String },
}

impl ExecError {
    pub fn host(&self) -> &str {
        match self {
            Self::Connect { host, .. }
            | Self::Failed { host, .. }
            | Self::Timeout { host, .. }
            | Self::Disconnected { host, .. }
            | Self::Local { host, .. }
            | Self::UnknownHost { host } => host,
        }
    }

    /// True when the hypervisor itself could not be reached (as opposed to a command failing).
    pub fn unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Disconnected { .. })
    }
}

/// A hypervisor as the executor sees it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The name in the lab (`hv0`): used in messages.
    pub name: String,
    /// The ssh destination: an alias or `[user@]host[:port]`.
    pub ssh: String,
    /// At most this many commands at once on this host (sshd allows 10 sessions per connection).
    pub parallel: usize,
}

/// One command as recorded by [`Mode::DryRun`] and [`Mode::Scripted`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recorded {
    pub host: String,
    pub effect: Effect,
    pub line: String,
    /// The arguments before quoting.
    pub argv: Vec<String>,
}

/// Answers queries in [`Mode::Scripted`]: `(host, command line)` → output.
pub type Script = Box<dyn Fn(&str, &str) -> Option<Out> + Send + Sync>;

pub enum Mode {
    /// Run everything.
    Live,
    /// Run queries; record changes and pretend they succeeded.
    DryRun,
    /// Run nothing: queries are answered by the script (no answer: exit status 1), changes are
    /// recorded and succeed unless the script answers them.
    Scripted(Script),
}

struct Host {
    target: Target,
    limit: Semaphore,
    /// The master connection, or why it could not be opened (so a dead host fails fast).
    session: tokio::sync::Mutex<Option<Result<Arc<Session>, String>>>,
    /// Argument words put before every change on this host (see [`Executor::guard`]).
    guard: Mutex<Vec<String>>,
}

pub struct Executor {
    mode: Mode,
    hosts: HashMap<String, Host>,
    global: Semaphore,
    record: Mutex<Vec<Recorded>>,
    connect_timeout: Duration,
}

/// How long an idle master outlives a killed `lab` (seconds).
const MASTER_IDLE: usize = 30;

impl Executor {
    /// An executor for `targets`, running at most `global` commands at once overall.
    pub fn new(mode: Mode, targets: Vec<Target>, global: usize) -> Executor {
        let hosts = targets
            .into_iter()
            .map(|t| {
                let limit = Semaphore::new(t.parallel.max(1));
                (
                    t.name.clone(),
                    Host {
                        target: t,
                        limit,
                        session: tokio::sync::Mutex::new(None),
                        guard: Mutex::new(Vec::new()),
                    },
                )
            })
            .collect();
        Executor {
            mode,
            hosts,
            global: Semaphore::new(global.max(1)),
            record: Mutex::new(Vec::new()),
            connect_timeout: Duration::from_secs(10),
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self.mode, Mode::Live)
    }

    /// Every command recorded so far (dry-run and scripted modes), in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.record.lock().expect("record lock").clone()
    }

    fn host(&self, name: &str) -> Result<&Host, ExecError> {
        self.hosts.get(name).ok_or_else(|| ExecError::UnknownHost {
            host: name.to_owned(),
        })
    }

    fn note(&self, host: &str, effect: Effect, line: String, argv: &[String]) {
        self.record.lock().expect("record lock").push(Recorded {
            host: host.to_owned(),
            effect,
            line,
            argv: argv.to_vec(),
        });
    }

    /// From now on, every change on `host` runs as `prefix... timeout -k 5 SECS program args...`
    /// (and the remote side of rsync as `prefix... rsync`): how `lab` makes each change hold a
    /// shared lock while it runs, and never longer than its deadline.
    pub fn guard(&self, host: &str, prefix: Vec<String>) {
        if let Ok(h) = self.host(host) {
            *h.guard.lock().expect("guard lock") = prefix;
        }
    }

    fn guard_of(&self, h: &Host) -> Vec<String> {
        h.guard.lock().expect("guard lock").clone()
    }

    /// Runs `cmd` on `host` and returns its output whatever its exit status.
    pub async fn output(&self, host: &str, cmd: &Cmd) -> Result<Out, ExecError> {
        let h = self.host(host)?;
        let guard = self.guard_of(h);
        let guarded;
        let cmd = if cmd.effect == Effect::Change && !guard.is_empty() {
            // A guarded change also ends on the remote side at its deadline, so that one
            // whose connection was cut does not keep holding the guard's lock.
            let deadline = ["timeout", "-k", "5"].map(String::from);
            guarded = Cmd {
                argv: guard
                    .into_iter()
                    .chain(deadline)
                    .chain([cmd.timeout.as_secs().max(1).to_string()])
                    .chain(cmd.argv.iter().cloned())
                    .collect(),
                ..cmd.clone()
            };
            &guarded
        } else {
            cmd
        };
        let line = quote_line(&cmd.argv);
        match (&self.mode, cmd.effect) {
            (Mode::Scripted(script), effect) => {
                self.note(host, effect, cmd.line(), &cmd.argv);
                return Ok(match (script(host, &line), effect) {
                    (Some(out), _) => out,
                    (None, Effect::Query) => Out::fail(1, "no scripted answer"),
                    (None, Effect::Change) => Out::ok(""),
                });
            }
            (Mode::DryRun, Effect::Change) => {
                self.note(host, Effect::Change, cmd.line(), &cmd.argv);
                return Ok(Out::ok(""));
            }
            _ => {}
        }
        let _global = self.global.acquire().await.expect("never closed");
        let _local = h.limit.acquire().await.expect("never closed");
        match self.run_live(h, cmd, &line).await {
            // A lost connection is reopened once for commands that are safe to repeat.
            Err(ExecError::Disconnected { .. }) if cmd.effect == Effect::Query => {
                *h.session.lock().await = None;
                self.run_live(h, cmd, &line).await
            }
            other => other,
        }
    }

    /// Runs `cmd` and insists on exit status 0.
    pub async fn run(&self, host: &str, cmd: &Cmd) -> Result<Out, ExecError> {
        let out = self.output(host, cmd).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(ExecError::Failed {
                host: host.to_owned(),
                command: cmd.line(),
                status: out.status,
                stderr: out.stderr.trim().to_owned(),
            })
        }
    }

    /// Opens `host`'s master connection now (commands open it on first use anyway).
    pub async fn connect(&self, host: &str) -> Result<(), ExecError> {
        if !self.is_live() {
            return Ok(());
        }
        self.session(self.host(host)?).await.map(drop)
    }

    async fn session(&self, h: &Host) -> Result<Arc<Session>, ExecError> {
        let mut slot = h.session.lock().await;
        if let Some(result) = slot.as_ref() {
            return result.clone().map_err(|message| ExecError::Connect {
                host: h.target.name.clone(),
                ssh: h.target.ssh.clone(),
                message,
            });
        }
        let result = connect(&h.target.ssh, self.connect_timeout)
            .await
            .map(Arc::new);
        *slot = Some(result.clone());
        result.map_err(|message| ExecError::Connect {
            host: h.target.name.clone(),
            ssh: h.target.ssh.clone(),
            message,
        })
    }

    async fn run_live(&self, h: &Host, cmd: &Cmd, line: &str) -> Result<Out, ExecError> {
        let session = self.session(h).await?;
        let host = &h.target.name;
        let lost = |e: openssh::Error| lost(host, &cmd.line(), e);
        let work = async {
            let mut command = session.raw_command(line);
            command
                .stdin(if cmd.stdin.is_some() {
                    openssh::Stdio::piped()
                } else {
                    openssh::Stdio::null()
                })
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped());
            let mut child = command.spawn().await.map_err(lost)?;
            if let (Some(bytes), Some(mut stdin)) = (&cmd.stdin, child.stdin().take()) {
                stdin.write_all(bytes).await.map_err(|e| ExecError::Local {
                    host: host.clone(),
                    command: cmd.line(),
                    message: format!("writing stdin: {e}"),
                })?;
                drop(stdin);
            }
            let output = child.wait_with_output().await.map_err(lost)?;
            Ok(Out {
                status: output.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        };
        match tokio::time::timeout(cmd.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ExecError::Timeout {
                host: host.clone(),
                command: cmd.line(),
                after: cmd.timeout,
            }),
        }
    }

    /// Copies the contents of `local` into `remote` on `host` with rsync over the host's master
    /// connection: `-aH --numeric-ids`, owned by root on the guest, never `--delete` (the
    /// target is a clone of the proto image), never `-X`.
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
        let mut c = tokio::process::Command::new("rsync");
        c.arg("-e").arg(remote_shell(&socket)).args(&args);
        c.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(600), c.output())
            .await
            .map_err(|_| ExecError::Timeout {
                host: host.to_owned(),
                command: shown.clone(),
                after: Duration::from_secs(600),
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

    /// Closes every master connection.
    pub async fn close(self) {
        for (_, h) in self.hosts {
            if let Some(Ok(session)) = h.session.into_inner()
                && let Ok(session) = Arc::try_unwrap(session)
            {
                let _ = session.close().await;
            }
        }
    }
}

/// An ssh-level error as an executor error: a lost connection, or a local problem.
fn lost(host: &str, command: &str, e: openssh::Error) -> ExecError {
    match e {
        openssh::Error::Disconnected
        | openssh::Error::RemoteProcessTerminated
        | openssh::Error::SshMux(_)
        | openssh::Error::Master(_) => ExecError::Disconnected {
            host: host.to_owned(),
            command: command.to_owned(),
        },
        other => ExecError::Local {
            host: host.to_owned(),
            command: command.to_owned(),
            message: other.to_string(),
        },
    }
}

fn rsync_args(local: &Path, host: &str, remote: &str, guard: &[String]) -> Vec<String> {
    let mut src: PathBuf = local.to_path_buf();
    src.push(""); // trailing slash: the directory's contents
    let mut args = vec![
        "-aH".to_owned(),
        "--numeric-ids".to_owned(),
        "--chown=0:0".to_owned(),
        "--protect-args".to_owned(),
        // Both ends give up after this long without I/O (a cut connection).
        "--timeout=30".to_owned(),
    ];
    if !guard.is_empty() {
        // The remote shell runs this as the rsync command.
        args.push(format!("--rsync-path={} rsync", quote_line(guard)));
    }
    args.push(src.to_string_lossy().into_owned());
    args.push(format!("{host}:{}/", remote.trim_end_matches('/')));
    args
}

/// `[user@]host[:port]` → (`[user@]host`, port).
fn split_port(dest: &str) -> (&str, Option<&str>) {
    match dest.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => (h, Some(p)),
        _ => (dest, None),
    }
}

async fn connect(dest: &str, timeout: Duration) -> Result<Session, String> {
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
