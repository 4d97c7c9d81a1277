//! `cargo xtask relay`: a TCP relay between stdin/stdout and HOST:PORT that holds every chunk
//! for half the round-trip time in each direction, for ssh's `ProxyCommand`. The bench puts a
//! WAN between `lab` and the test bed's hypervisors with it (the bed's kernel has no netem).
//! It also counts round trips: each time bytes go out again after an answer came back, it
//! appends a byte to the count file.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Result;

/// Relays until either side ends; `count` (a file) gets a byte per round trip.
pub fn relay(host: &str, port: u16, rtt: Duration, count: Option<String>) -> Result {
    let stream = TcpStream::connect((host, port)).map_err(|e| format!("{host}:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let back = stream.try_clone().map_err(|e| e.to_string())?;
    let half = rtt / 2;
    // true while the last bytes went towards the server; a flip back to it is a round trip.
    let outbound = Arc::new(AtomicBool::new(false));
    let up = {
        let outbound = Arc::clone(&outbound);
        let mut server = stream;
        std::thread::spawn(move || {
            pump(std::io::stdin(), half, |chunk| match chunk {
                Some(bytes) => {
                    if !outbound.swap(true, Ordering::SeqCst)
                        && let Some(file) = &count
                    {
                        let _ = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(file)
                            .and_then(|mut f| f.write_all(b"."));
                    }
                    server.write_all(bytes)
                }
                None => server.shutdown(Shutdown::Write),
            })
        })
    };
    let mut stdout = std::io::stdout().lock();
    pump(back, half, |chunk| match chunk {
        Some(bytes) => {
            outbound.store(false, Ordering::SeqCst);
            stdout.write_all(bytes).and_then(|()| stdout.flush())
        }
        None => Ok(()),
    })
    .map_err(|e| e.to_string())?;
    // The server is done: whatever ssh still sends goes nowhere.
    drop(up);
    Ok(())
}

/// Reads `from` in chunks and hands each to `send` `delay` after it arrived, in order; `None`
/// once `from` ends.
fn pump(
    mut from: impl Read + Send,
    delay: Duration,
    mut send: impl FnMut(Option<&[u8]>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = from.read(&mut buf).unwrap_or(0);
                let due = Instant::now() + delay;
                if tx.send((due, buf[..n].to_vec())).is_err() || n == 0 {
                    break;
                }
            }
        });
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if bytes.is_empty() {
                return send(None);
            }
            send(Some(&bytes))?;
        }
        Ok(())
    })
}
