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
//!
//! Long: the executor, its modes and the one wrapper every remote line goes through (status
//! trailer, locale) are read together, with the wrapper's tests beside them.

mod cmd;
mod hold;
pub mod local;
mod quote;
mod ssh;
mod tap;

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh::Session;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

pub use cmd::{Cmd, Effect, Out};
pub use hold::Holding;
pub use quote::{quote, quote_line};

/// The exit status of a guard (see [`Executor::guard`]) whose lock is no longer this run's:
/// the change did not run, and [`Executor::run`] says [`ExecError::LockLost`].
pub const LOCK_GONE: i32 = 77;

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
    /// A command answered something that cannot be trusted (truncated, or rows a value
    /// could have forged): nothing is decided from it.
    #[error("{host}: `{command}` answered something lab cannot trust: {message}")]
    BadAnswer {
        host: String,
        command: String,
        message: String,
    },
    /// The lab's lock on the host ended (its holder was killed, or lost its heartbeat) while
    /// this run still had changes to make.
    #[error(
        "{host}: the lab's lock there was lost (its holder ended); no further change is made there"
    )]
    LockLost { host: String },
}

impl ExecError {
    pub fn host(&self) -> &str {
        match self {
            Self::Connect { host, .. }
            | Self::Failed { host, .. }
            | Self::Timeout { host, .. }
            | Self::Disconnected { host, .. }
            | Self::Local { host, .. }
            | Self::BadAnswer { host, .. }
            | Self::LockLost { host }
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
    /// What the command was fed (a hypervisor's plan script, a definition), when anything.
    pub stdin: Option<Vec<u8>>,
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
    /// The flag of the lock every change here needs (see [`Executor::require_lock`]).
    lock_alive: Mutex<Option<Arc<std::sync::atomic::AtomicBool>>>,
    /// Answers to queries that another exchange already carried (see
    /// [`Executor::keep_answer`]).
    answers: Mutex<Vec<(Vec<String>, Out)>>,
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
                        lock_alive: Mutex::new(None),
                        answers: Mutex::new(Vec::new()),
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

    /// `--dry-run`: changes are recorded, not made, so what a change would leave behind cannot
    /// be read back. (Scripted mode answers as the script says, as a live host would.)
    pub fn is_dry_run(&self) -> bool {
        matches!(self.mode, Mode::DryRun)
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
            stdin: None,
        });
    }

    /// Records `cmd` with what it is fed.
    fn note_cmd(&self, host: &str, effect: Effect, cmd: &Cmd) {
        self.record.lock().expect("record lock").push(Recorded {
            host: host.to_owned(),
            effect,
            line: cmd.line(),
            argv: cmd.argv.clone(),
            stdin: cmd.stdin.clone(),
        });
    }

    /// From now on, every change on `host` runs as `prefix... timeout -k 5 SECS program args...`
    /// (and the remote side of rsync as `prefix... rsync`): how `lab` makes each change hold a
    /// shared lock while it runs.
    pub fn guard(&self, host: &str, prefix: Vec<String>) {
        if let Ok(h) = self.host(host) {
            *h.guard.lock().expect("guard lock") = prefix;
        }
    }

    /// Keeps `out` as the answer of the query `argv` on `host`, which another exchange (the
    /// lock's, say) already ran: [`Executor::take_answer`] hands it out once, so the query
    /// costs no round trip of its own. It replaces any answer kept before on `host`, which is
    /// older than this one (a lock let go and taken again, say).
    pub fn keep_answer(&self, host: &str, argv: Vec<String>, out: Out) {
        if let Ok(h) = self.host(host) {
            *h.answers.lock().expect("answers") = vec![(argv, out)];
        }
    }

    /// Forgets the answers kept on `host` (its lock was let go: they may be stale).
    pub fn forget_answers(&self, host: &str) {
        if let Ok(h) = self.host(host) {
            h.answers.lock().expect("answers").clear();
        }
    }

    /// The first kept answer on `host` whose query `matches`, with that query's words; it is
    /// handed out only once.
    pub fn take_answer(
        &self,
        host: &str,
        matches: impl Fn(&[String]) -> bool,
    ) -> Option<(Vec<String>, Out)> {
        let h = self.host(host).ok()?;
        let mut answers = h.answers.lock().expect("answers");
        let i = answers.iter().position(|(argv, _)| matches(argv))?;
        Some(answers.remove(i))
    }

    /// An error when a change on `h` needs a lock that was lost.
    fn check_lock(&self, h: &Host) -> Result<(), ExecError> {
        let held = h
            .lock_alive
            .lock()
            .expect("lock flag")
            .as_ref()
            .map(|alive| alive.load(std::sync::atomic::Ordering::SeqCst));
        match held {
            Some(false) => Err(ExecError::LockLost {
                host: h.target.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn guard_of(&self, h: &Host) -> Vec<String> {
        h.guard.lock().expect("guard lock").clone()
    }

    /// `cmd` as it is sent to `h`: every change runs as `[guard...] timeout -k 5 SECS argv...`,
    /// so that it ends on the remote side at its deadline even when its connection was cut,
    /// and, on a guarded host, holds the guard's lock while it runs; a query that runs
    /// [`once`](Cmd::once) gets the deadline only. Other queries go as they are. The local wait
    /// is 10 s longer than the remote deadline, so the remote side's own status (124) says
    /// that it was ended.
    fn guarded<'c>(&self, h: &Host, cmd: &'c Cmd) -> std::borrow::Cow<'c, Cmd> {
        let deadline = ["timeout", "-k", "5"].map(String::from);
        let guard = match (cmd.effect, cmd.once) {
            (Effect::Change, _) => self.guard_of(h),
            (Effect::Query, true) => Vec::new(),
            (Effect::Query, false) => return std::borrow::Cow::Borrowed(cmd),
        };
        std::borrow::Cow::Owned(Cmd {
            argv: guard
                .into_iter()
                .chain(deadline)
                .chain([cmd.timeout.as_secs().max(1).to_string()])
                .chain(cmd.argv.iter().cloned())
                .collect(),
            timeout: cmd.timeout + Duration::from_secs(10),
            ..cmd.clone()
        })
    }

    /// Runs `cmd` on `host` and returns its output whatever its exit status.
    pub async fn output(&self, host: &str, cmd: &Cmd) -> Result<Out, ExecError> {
        let h = self.host(host)?;
        let cmd = &*self.guarded(h, cmd);
        let line = quote_line(&cmd.argv);
        if let Some(out) = self.canned(host, cmd, &line) {
            return Ok(out);
        }
        let _global = self.global.acquire().await.expect("never closed");
        let _local = h.limit.acquire().await.expect("never closed");
        // Checked at the last moment: a change that waited for a slot must not run once the
        // lock it needs is gone.
        if cmd.effect == Effect::Change {
            self.check_lock(h)?;
        }
        match self.run_live(h, cmd, &line).await {
            // A lost connection is reopened once for commands that are safe to repeat.
            Err(ExecError::Disconnected { .. }) if cmd.effect == Effect::Query && !cmd.once => {
                *h.session.lock().await = None;
                self.run_live(h, cmd, &line).await
            }
            other => other,
        }
    }

    /// The answer a command gets without running: from the script (scripted mode), or an
    /// empty success for a change under `--dry-run`; either is recorded. `None`: run it.
    fn canned(&self, host: &str, cmd: &Cmd, line: &str) -> Option<Out> {
        match (&self.mode, cmd.effect) {
            (Mode::Scripted(script), effect) => {
                self.note_cmd(host, effect, cmd);
                Some(match (script(host, line), effect) {
                    (Some(out), _) => out,
                    (None, Effect::Query) => Out::fail(1, "no scripted answer"),
                    (None, Effect::Change) => Out::ok(""),
                })
            }
            (Mode::DryRun, Effect::Change) => {
                self.note_cmd(host, Effect::Change, cmd);
                Some(Out::ok(""))
            }
            _ => None,
        }
    }

    /// Runs `cmd` and insists on exit status 0.
    pub async fn run(&self, host: &str, cmd: &Cmd) -> Result<Out, ExecError> {
        let out = self.output(host, cmd).await?;
        if out.success() {
            Ok(out)
        } else if out.status == LOCK_GONE
            && cmd.effect == Effect::Change
            && self.host(host).is_ok_and(|h| !self.guard_of(h).is_empty())
        {
            Err(ExecError::LockLost {
                host: host.to_owned(),
            })
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
        let result = ssh::connect(&h.target.ssh, self.connect_timeout)
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
            let mut command = session.raw_command(with_status_trailer(line));
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
            let stderr = String::from_utf8_lossy(&output.stderr);
            // No trailer: the shell did not get to the end (its connection was cut).
            let (status, stderr) = split_status_trailer(&stderr)
                .ok_or_else(|| lost(openssh::Error::RemoteProcessTerminated))?;
            Ok(Out {
                status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: stderr.to_owned(),
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

/// The last line a command's stderr gets: its exit status.
const STATUS_TRAILER: &str = "\nlab-exec-status ";

/// `line` run by `sh` on the remote side, which then writes the line's exit status as the last
/// line of stderr and exits 0. The ssh client's own status cannot be trusted to say it: the
/// `openssh` crate reads 255 as a lost connection and 127 as "could not be executed", while
/// `ssh` (to a node) and a shell (a command not found) exit so for reasons of their own.
fn with_status_trailer(line: &str) -> String {
    let script = format!(
        "(\nexport LC_ALL=C\n{line}\n)\ns=$?; printf '{}%s\\n' \"$s\" >&2; exit 0",
        STATUS_TRAILER.replace('\n', "\\n")
    );
    quote_line(&["sh".to_owned(), "-c".to_owned(), script])
}

/// A remote line run in the C locale: `lab` parses what zfs, virsh and ip say, and a
/// hypervisor installed in another language (sshd applies `/etc/default/locale`, ssh forwards
/// `LANG` and `LC_*`) would otherwise translate it (review 3, N8).
pub(crate) fn c_locale(line: &str) -> String {
    format!("LC_ALL=C {line}")
}

/// `(status, stderr without the trailer)`, or `None` when there is no trailer.
fn split_status_trailer(stderr: &str) -> Option<(i32, &str)> {
    let body = stderr.strip_suffix('\n')?;
    let at = body.rfind(STATUS_TRAILER)?;
    let status = body[at + STATUS_TRAILER.len()..].parse().ok()?;
    Some((status, &stderr[..at]))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the remote side would run, run here by the login shell's stand-in.
    fn remote(line: &str) -> (i32, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(with_status_trailer(line))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "the wrapper always exits 0");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let (status, rest) = split_status_trailer(&stderr).unwrap();
        (status, rest.to_owned())
    }

    #[test]
    fn the_exit_status_comes_back_whatever_it_is() {
        assert_eq!(remote("true"), (0, String::new()));
        assert_eq!(remote("echo oops >&2; false"), (1, "oops\n".to_owned()));
        // what the ssh client reports as a lost connection or a command that cannot run
        assert_eq!(remote("sh -c 'exit 255'").0, 255);
        let (status, stderr) = remote("lab-no-such-command-here");
        assert_eq!(status, 127);
        assert!(stderr.contains("not found"), "{stderr}");
        // a line that exits ends its own subshell, not the trailer's
        assert_eq!(remote("exit 3").0, 3);
        assert_eq!(remote("printf 'no newline' >&2").1, "no newline");
    }

    /// Every remote line runs in the C locale, whatever the login environment says: what zfs,
    /// virsh and ip print is parsed as English (review 3, N8).
    #[test]
    fn remote_lines_run_in_the_c_locale() {
        let (status, said) = remote("printf '%s' \"$LC_ALL\" >&2");
        assert_eq!((status, said.as_str()), (0, "C"));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(c_locale("env"))
            .env("LC_ALL", "de_DE.UTF-8")
            .output()
            .unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.lines().any(|l| l == "LC_ALL=C"), "{env}");
    }

    #[test]
    fn no_trailer_is_no_status() {
        assert_eq!(split_status_trailer(""), None);
        assert_eq!(split_status_trailer("ssh: connection closed\n"), None);
        assert_eq!(split_status_trailer("\nlab-exec-status x\n"), None);
    }
}
