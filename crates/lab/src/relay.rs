//! `lab relay` (hidden): the impairment relay, run on a hypervisor by `lab link set`. QEMU's
//! `filter-redirector` hands it the frames one NIC sends onto its wire, over a Unix socket (a
//! 4-byte big-endian length before each frame); it delays, drops, duplicates, reorders and
//! paces them, then sends each as the UDP datagram the wire would have carried, to the far
//! end's port. One direction of one link per relay. It serves one connection and ends with
//! it: when the filter is taken away, or the domain stops, its QEMU closes the socket and the
//! relay is gone, leaving nothing (its socket file goes once QEMU is connected).

use std::collections::BinaryHeap;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lab_model::impair::Impairment;

/// The frames waiting, and whether the reader is done; the sender waits on the condition.
type Queue = (Mutex<(BinaryHeap<Due>, bool)>, Condvar);

/// A frame due to leave at `at` (earliest first; in arrival order among equals).
struct Due {
    at: Instant,
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// xorshift64*: enough randomness for loss and jitter, no dependency.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Random((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// True with probability `ppm` per million.
    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.next() % 1_000_000) < u64::from(ppm)
    }
}

/// Runs the relay: listens on `socket`, takes one connection (within 30 s), and relays until
/// it closes. Returns why it could not start.
pub fn run(socket: &str, to: SocketAddr, how: Impairment) -> Result<(), String> {
    let listener = UnixListener::bind(socket).map_err(|e| format!("bind {socket}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{socket}: {e}"))?;
    let started = Instant::now();
    let (mut conn, _) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = std::fs::remove_file(socket);
                    return Err("QEMU did not connect within 30 s".to_owned());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    // Connected: the socket's name is no longer needed.
    let _ = std::fs::remove_file(socket);
    drop(listener);
    let _ = conn.set_nonblocking(false);
    let out = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .map_err(|e| format!("udp: {e}"))?;
    let queue: Arc<Queue> = Arc::new((Mutex::new((BinaryHeap::new(), false)), Condvar::new()));
    let sender = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || send_when_due(&queue, &out, to))
    };
    let mut random = Random::new();
    let (mut seq, mut line_free) = (0u64, Instant::now());
    let mut len = [0u8; 4];
    loop {
        if conn.read_exact(&mut len).is_err() {
            break;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > 256 * 1024 {
            break;
        }
        let mut frame = vec![0u8; n];
        if conn.read_exact(&mut frame).is_err() {
            break;
        }
        if random.chance(how.loss_ppm) {
            continue;
        }
        let now = Instant::now();
        // The rate: a frame leaves the "line" once the ones before it have.
        let mut at = now;
        if let Some(nanos) = (n as u64 * 8)
            .saturating_mul(1_000_000_000)
            .checked_div(how.rate_bps)
        {
            line_free = line_free.max(now) + Duration::from_nanos(nanos);
            at = line_free;
        }
        if !random.chance(how.reorder_ppm) {
            let jitter = if how.jitter_us > 0 {
                (random.next() % (2 * how.jitter_us + 1)) as i64 - how.jitter_us as i64
            } else {
                0
            };
            let delay = (how.delay_us as i64 + jitter).max(0) as u64;
            at += Duration::from_micros(delay);
        }
        let copies = if random.chance(how.duplicate_ppm) {
            2
        } else {
            1
        };
        let (lock, ready) = &*queue;
        let mut q = lock.lock().expect("queue");
        for _ in 0..copies {
            seq += 1;
            q.0.push(Due {
                at,
                seq,
                frame: frame.clone(),
            });
        }
        ready.notify_one();
    }
    let (lock, ready) = &*queue;
    lock.lock().expect("queue").1 = true;
    ready.notify_one();
    let _ = sender.join();
    Ok(())
}

/// Sends each queued frame when it is due; ends when the reader is done.
fn send_when_due(queue: &Queue, out: &UdpSocket, to: SocketAddr) {
    let (lock, ready) = queue;
    let mut q = lock.lock().expect("queue");
    loop {
        if q.1 {
            return;
        }
        let now = Instant::now();
        match q.0.peek().map(|d| d.at) {
            Some(at) if at <= now => {
                let due = q.0.pop().expect("peeked");
                drop(q);
                let _ = out.send_to(&due.frame, to);
                q = lock.lock().expect("queue");
            }
            Some(at) => q = ready.wait_timeout(q, at - now).expect("queue").0,
            None => q = ready.wait(q).expect("queue"),
        }
    }
}
