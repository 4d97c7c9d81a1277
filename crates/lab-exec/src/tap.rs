//! A remote command whose binary output is handed over as it comes, until it ends or the
//! caller has enough (`tap`: a packet capture streamed to stdout or a file).

use std::time::Duration;

use openssh::Session;
use tokio::io::AsyncReadExt;

use crate::{Cmd, Effect, ExecError, Executor, Out, c_locale, lost, quote_line};

impl Executor {
    /// Runs `cmd` on `host` and hands its stdout to `on_bytes` as it comes, chunk by chunk
    /// (binary: a packet capture), with its stdin held open. It ends when the command ends,
    /// when `on_bytes` returns false (it has what it wants, or its own writer failed) or when
    /// `stop` resolves: then stdin closes, so the remote side reads end-of-file, cleans up
    /// and ends; its end is awaited for up to 30 s. Returns how the command ended (its stdout
    /// already handed over). Dry-run records a change and runs nothing; scripted mode hands
    /// over the script's answer.
    pub async fn tap(
        &self,
        host: &str,
        cmd: &Cmd,
        on_bytes: &mut (dyn FnMut(&[u8]) -> bool + Send),
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Out, ExecError> {
        let h = self.host(host)?;
        let cmd = &*self.guarded(h, cmd);
        let line = quote_line(&cmd.argv);
        if let Some(out) = self.canned(host, cmd, &line) {
            on_bytes(out.stdout.as_bytes());
            return Ok(Out {
                stdout: String::new(),
                ..out
            });
        }
        if cmd.effect == Effect::Change {
            self.check_lock(h)?;
        }
        let session = self.session(h).await?;
        let lost = |e: openssh::Error| lost(host, &cmd.line(), e);
        let mut command = Session::arc_raw_command(session, c_locale(&line));
        command
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = command.spawn().await.map_err(lost)?;
        let mut out = child.stdout().take().expect("piped");
        let mut err = child.stderr().take().expect("piped");
        let stdin = child.stdin().take();
        let errors = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = err.read_to_end(&mut bytes).await;
            bytes
        });
        let copy = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match out.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if !on_bytes(&buf[..n]) {
                            return;
                        }
                    }
                }
            }
        };
        let ended = tokio::time::timeout(cmd.timeout, async {
            tokio::select! {
                () = copy => {}
                () = stop => {}
            }
        })
        .await;
        // End-of-file on the remote side's stdin: it stops and cleans up.
        drop(stdin);
        drop(out);
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        let stderr = match tokio::time::timeout(Duration::from_secs(5), errors).await {
            Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::new(),
        };
        match (ended, status) {
            (Err(_), _) | (_, Err(_)) => Err(ExecError::Timeout {
                host: host.to_owned(),
                command: cmd.line(),
                after: cmd.timeout,
            }),
            (Ok(()), Ok(Err(e))) => Err(lost(e)),
            (Ok(()), Ok(Ok(status))) => Ok(Out {
                status: status.code().unwrap_or(-1),
                stdout: String::new(),
                stderr,
            }),
        }
    }
}
