//! Remote commands that run for a while: ones whose output is read as it comes (`stream`),
//! ones that run as long as their handle lives (`hold`, what `lab`'s locks stand on), and one
//! host's output piped into another's (`pipe`).
//!
//! A held command's stdin gets a newline every `beat`; a remote side that stops hearing them
//! (the controller died or the network went away) can give up on its own, and a released or
//! dropped handle closes stdin so the remote side reads end-of-file at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openssh::{ChildStdout, Session};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{Cmd, Effect, ExecError, Executor, Mode, Out, c_locale, lost, quote_line};

/// A running remote command; see the module documentation.
pub struct Holding {
    host: String,
    line: String,
    live: Option<Live>,
    /// Scripted and dry-run modes: the lines and the end the script gave.
    canned: VecDeque<String>,
    canned_end: Out,
}

struct Live {
    /// `None` once [`Holding::watch`] handed the output to its watcher.
    lines: Option<BufReader<ChildStdout>>,
    child: openssh::Child<Arc<Session>>,
    beat: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Cleared when the remote side ends or the heartbeat cannot be written.
    alive: Arc<AtomicBool>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            live.beat.abort();
            if let Some(w) = &live.watcher {
                w.abort();
            }
        }
    }
}

/// The next line of `from` without its newline, bytes that are not UTF-8 replaced (a
/// hypervisor's answer may hold any byte); `None` at its end.
async fn line_lossy(from: &mut BufReader<ChildStdout>) -> std::io::Result<Option<String>> {
    let mut bytes = Vec::new();
    if from.read_until(b'\n', &mut bytes).await? == 0 {
        return Ok(None);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

impl Holding {
    /// The next line the command printed, or `None` once it closed its output. Waits at most
    /// `within` for it.
    pub async fn next_line(&mut self, within: Duration) -> Result<Option<String>, ExecError> {
        let Some(live) = &mut self.live else {
            return Ok(self.canned.pop_front());
        };
        let Some(lines) = &mut live.lines else {
            return Ok(None);
        };
        match tokio::time::timeout(within, line_lossy(lines)).await {
            Err(_) => Err(ExecError::Timeout {
                host: self.host.clone(),
                command: self.line.clone(),
                after: within,
            }),
            Ok(Err(_)) => Err(ExecError::Disconnected {
                host: self.host.clone(),
                command: self.line.clone(),
            }),
            Ok(Ok(line)) => Ok(line),
        }
    }

    /// From now on, watches the command in the background: the returned flag turns false when
    /// the remote side ends (its output closes) or its heartbeat can no longer be written. What
    /// a held lock's holder uses to know it still holds it.
    pub fn watch(&mut self) -> Arc<AtomicBool> {
        let Some(live) = &mut self.live else {
            return Arc::new(AtomicBool::new(true));
        };
        if let Some(mut lines) = live.lines.take() {
            let alive = Arc::clone(&live.alive);
            live.watcher = Some(tokio::spawn(async move {
                while let Ok(Some(_)) = line_lossy(&mut lines).await {}
                alive.store(false, Ordering::SeqCst);
            }));
        }
        Arc::clone(&live.alive)
    }

    /// Waits for a command that ended on its own and returns its exit status and stderr.
    pub async fn finish(mut self) -> Result<Out, ExecError> {
        let Some(mut live) = self.live.take() else {
            return Ok(self.canned_end.clone());
        };
        live.beat.abort();
        if let Some(w) = &live.watcher {
            w.abort();
        }
        let mut stderr = String::new();
        if let Some(mut err) = live.child.stderr().take() {
            let _ = err.read_to_string(&mut stderr).await;
        }
        let status = live
            .child
            .wait()
            .await
            .map_err(|e| lost(&self.host, &self.line, e))?;
        Ok(Out {
            status: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr,
        })
    }

    /// Ends the command: its stdin closes, so it reads end-of-file; waits a moment for it.
    pub async fn release(mut self) {
        if let Some(live) = self.live.take() {
            live.beat.abort();
            if let Some(w) = &live.watcher {
                w.abort();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), live.child.wait()).await;
        }
    }
}

impl Executor {
    /// Runs `cmd` on `host`, handing each line of its stdout to `on_line` as it comes; returns
    /// how it ended. For long commands that report progress (`lab wait`, a direct proto send).
    /// Scripted mode answers from the script, line by line; dry-run runs a query and records
    /// a change, as [`Executor::output`] does.
    pub async fn stream(
        &self,
        host: &str,
        cmd: &Cmd,
        on_line: &(dyn Fn(&str) + Sync),
    ) -> Result<Out, ExecError> {
        let h = self.host(host)?;
        let cmd = &*self.guarded(h, cmd);
        let line = quote_line(&cmd.argv);
        if let Some(out) = self.canned(host, cmd, &line) {
            out.stdout.lines().for_each(on_line);
            return Ok(out);
        }
        let _global = self.global.acquire().await.expect("never closed");
        let _local = h.limit.acquire().await.expect("never closed");
        if cmd.effect == Effect::Change {
            self.check_lock(h)?;
        }
        let session = self.session(h).await?;
        let lost = |e: openssh::Error| lost(host, &cmd.line(), e);
        let work = async {
            let mut command = session.raw_command(c_locale(&line));
            command
                .stdin(if cmd.stdin.is_some() {
                    openssh::Stdio::piped()
                } else {
                    openssh::Stdio::null()
                })
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped());
            let mut child = command.spawn().await.map_err(lost)?;
            let stdout = child.stdout().take().expect("piped");
            let mut stderr = child.stderr().take().expect("piped");
            // Fed beside the reading: a script read as it runs answers before it is all sent.
            let stdin = child.stdin().take();
            let feed = async {
                if let (Some(bytes), Some(mut pipe)) = (&cmd.stdin, stdin) {
                    // A remote side that stops reading early says why in its status.
                    let _ = pipe.write_all(bytes).await;
                    let _ = pipe.shutdown().await;
                }
            };
            // Lines as they come (any bytes: a console line need not be UTF-8), and stderr
            // drained beside them, so that neither pipe can fill and stall the other.
            let read_out = async {
                let mut reader = tokio::io::BufReader::new(stdout);
                let mut all = String::new();
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf).await {
                        Ok(0) => return Ok(all),
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&buf);
                            let l = text.trim_end_matches(['\n', '\r']);
                            on_line(l);
                            all.push_str(l);
                            all.push('\n');
                        }
                        Err(_) => {
                            return Err(ExecError::Disconnected {
                                host: host.to_owned(),
                                command: cmd.line(),
                            });
                        }
                    }
                }
            };
            let read_err = async {
                let mut bytes = Vec::new();
                let _ = stderr.read_to_end(&mut bytes).await;
                bytes
            };
            let (all, err, ()) = tokio::join!(read_out, read_err, feed);
            let all = all?;
            let status = child.wait().await.map_err(lost)?;
            Ok(Out {
                status: status.code().unwrap_or(-1),
                stdout: all,
                stderr: String::from_utf8_lossy(&err).into_owned(),
            })
        };
        match tokio::time::timeout(cmd.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ExecError::Timeout {
                host: host.to_owned(),
                command: cmd.line(),
                after: cmd.timeout,
            }),
        }
    }

    /// Starts `cmd` on `host` and keeps it running, outside the command limits, until the
    /// returned handle is released or dropped; its stdin receives a newline every `beat`.
    /// Scripted mode answers from the script and dry-run mode pretends (both record it).
    pub async fn hold(&self, host: &str, cmd: &Cmd, beat: Duration) -> Result<Holding, ExecError> {
        let h = self.host(host)?;
        let line = quote_line(&cmd.argv);
        let mut holding = Holding {
            host: host.to_owned(),
            line: cmd.line(),
            live: None,
            canned: VecDeque::new(),
            canned_end: Out::ok(""),
        };
        match &self.mode {
            Mode::Scripted(script) => {
                self.note(host, Effect::Change, cmd.line(), &cmd.argv);
                let out = script(host, &line).unwrap_or_else(|| Out::ok(""));
                holding.canned = out.stdout.lines().map(str::to_owned).collect();
                holding.canned_end = Out {
                    stdout: String::new(),
                    ..out
                };
                return Ok(holding);
            }
            Mode::DryRun => {
                self.note(host, Effect::Change, cmd.line(), &cmd.argv);
                return Ok(holding);
            }
            Mode::Live => {}
        }
        let session = self.session(h).await?;
        let mut command = Session::arc_raw_command(session, c_locale(&line));
        command
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = command
            .spawn()
            .await
            .map_err(|e| lost(host, &holding.line, e))?;
        let stdout = child.stdout().take().expect("piped");
        let mut stdin = child.stdin().take().expect("piped");
        let alive = Arc::new(AtomicBool::new(true));
        let beating = Arc::clone(&alive);
        let beat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(beat);
            loop {
                tick.tick().await;
                if stdin.write_all(b"\n").await.is_err() || stdin.flush().await.is_err() {
                    beating.store(false, Ordering::SeqCst);
                    return;
                }
            }
        });
        holding.live = Some(Live {
            lines: Some(BufReader::new(stdout)),
            child,
            beat,
            watcher: None,
            alive,
        });
        Ok(holding)
    }

    /// From now on, every change on `host` first checks `alive` (a held lock's flag, from
    /// [`Holding::watch`]) and fails with [`ExecError::LockLost`] once it is false.
    pub fn require_lock(&self, host: &str, alive: Arc<AtomicBool>) {
        if let Ok(h) = self.host(host) {
            *h.lock_alive.lock().expect("lock flag") = Some(alive);
        }
    }

    /// Makes every later command to `host` fail as unreachable, with `why`: for a host whose
    /// lock could not be taken, so that nothing runs there unlocked.
    pub async fn fence(&self, host: &str, why: String) {
        if let Ok(h) = self.host(host) {
            *h.session.lock().await = Some(Err(why));
        }
    }
}

impl Executor {
    /// Streams the stdout of `from` on `src` into the stdin of `to` on `dst`, through this
    /// controller (so the two hosts need no trust between them); `on_bytes` hears the running
    /// total. Returns the bytes moved. Either side failing fails the pipe, naming that side.
    /// Dry-run and scripted modes record both commands and move nothing.
    pub async fn pipe(
        &self,
        (src, from): (&str, &Cmd),
        (dst, to): (&str, &Cmd),
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, ExecError> {
        let (hs, hd) = (self.host(src)?, self.host(dst)?);
        let (from, to) = (&*self.guarded(hs, from), &*self.guarded(hd, to));
        if !self.is_live() {
            self.note(src, from.effect, from.line(), &from.argv);
            self.note(dst, to.effect, to.line(), &to.argv);
            return Ok(0);
        }
        let _global = self.global.acquire().await.expect("never closed");
        let _src_slot = hs.limit.acquire().await.expect("never closed");
        let _dst_slot = hd.limit.acquire().await.expect("never closed");
        self.check_lock(hd)?;
        let (ss, ds) = (self.session(hs).await?, self.session(hd).await?);
        let (from_line, to_line) = (from.line(), to.line());
        let mut sender = Session::arc_raw_command(ss, c_locale(&quote_line(&from.argv)));
        sender
            .stdin(openssh::Stdio::null())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut sender = sender.spawn().await.map_err(|e| lost(src, &from_line, e))?;
        let mut receiver = Session::arc_raw_command(ds, c_locale(&quote_line(&to.argv)));
        receiver
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::null())
            .stderr(openssh::Stdio::piped());
        let mut receiver = receiver.spawn().await.map_err(|e| lost(dst, &to_line, e))?;
        let mut out = sender.stdout().take().expect("piped");
        let mut sink = receiver.stdin().take().expect("piped");
        let mut moved: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        let stalled = |host: &str, command: &str| ExecError::Timeout {
            host: host.to_owned(),
            command: command.to_owned(),
            after: from.timeout,
        };
        let copy: Result<(), ExecError> = async {
            loop {
                let n = tokio::time::timeout(from.timeout, out.read(&mut buf))
                    .await
                    .map_err(|_| stalled(src, &from_line))?
                    .map_err(|_| ExecError::Disconnected {
                        host: src.to_owned(),
                        command: from_line.clone(),
                    })?;
                if n == 0 {
                    return Ok(());
                }
                // A receiver that stopped reading shows up as a write error; its own exit
                // status and stderr say why, below. One that stalls without failing is a
                // timeout of its own.
                match tokio::time::timeout(from.timeout, sink.write_all(&buf[..n])).await {
                    Err(_) => return Err(stalled(dst, &to_line)),
                    Ok(Err(_)) => return Ok(()),
                    Ok(Ok(())) => {}
                }
                moved += n as u64;
                on_bytes(moved);
            }
        }
        .await;
        drop(sink);
        drop(out);
        let status_of = |host: &str, line: &str, child: openssh::Child<Arc<Session>>| {
            let (host, line) = (host.to_owned(), line.to_owned());
            let limit = from.timeout;
            async move {
                // A side that neither ends nor answers is bounded too: the run (and the proto
                // lock it holds) must end, with that target's failure.
                let output = tokio::time::timeout(limit, child.wait_with_output())
                    .await
                    .map_err(|_| ExecError::Timeout {
                        host: host.clone(),
                        command: line.clone(),
                        after: limit,
                    })?
                    .map_err(|e| lost(&host, &line, e))?;
                Ok::<_, ExecError>(Out {
                    status: output.status.code().unwrap_or(-1),
                    stdout: String::new(),
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                })
            }
        };
        // A stalled side is the cause: say so, whatever the other side says once cut off.
        if let Err(e @ ExecError::Timeout { .. }) = copy {
            let _ = status_of(src, &from_line, sender).await;
            let _ = status_of(dst, &to_line, receiver).await;
            return Err(e);
        }
        // The receiver first: a sender cut off by a receiver that died (SIGPIPE) is not the
        // cause.
        let received = status_of(dst, &to_line, receiver).await;
        let sent = status_of(src, &from_line, sender).await;
        let received = received?;
        if !received.success() {
            return Err(ExecError::Failed {
                host: dst.to_owned(),
                command: to_line.clone(),
                status: received.status,
                stderr: received.stderr,
            });
        }
        let sent = sent?;
        copy?;
        for (host, line, out) in [(src, &from_line, sent), (dst, &to_line, received)] {
            if !out.success() {
                return Err(ExecError::Failed {
                    host: host.to_owned(),
                    command: line.clone(),
                    status: out.status,
                    stderr: out.stderr,
                });
            }
        }
        Ok(moved)
    }
}
