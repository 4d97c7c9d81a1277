//! The local test bed: real hypervisors on one machine, for the demo and the end-to-end tests.
//!
//! Each hypervisor `hvK` is a network + mount + UTS namespace held open by a holder process,
//! with its own zfs-fuse daemon and pool, libvirtd and sshd. The host reaches them with
//! `ssh hvK` through a client config included from `/root/.ssh/config`.
//!
//! This crate is test infrastructure: it spawns processes freely and is never a dependency of
//! the `lab` binary. `cargo xtask testbed` is its command line; tests call [`require`].

mod down;
mod guest;
mod libvirt;
mod net;
mod openzfs;
mod router;
mod status;
mod up;
mod zfs_fuse;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use openzfs::{Accel, ZfsSuite};
pub use status::{HypervisorStatus, Status};
pub use up::{FOREIGN_LOCALE, UpOptions};
pub use zfs_fuse::{PROBE_TIMEOUT, ZfsHealth};

/// Where everything lives, and how big the bed is. Overridable by environment for the rare
/// machine where the defaults collide with something.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// State directory: pidfiles, logs, pool images, keys, guest kernel.
    pub dir: PathBuf,
    /// Namespace hypervisors with zfs-fuse: hv0..hv{n-1}.
    pub hypervisors: u32,
    /// OpenZFS hypervisors (QEMU VMs) after them: hv{n}..hv{n+m-1}.
    pub openzfs: u32,
    /// Which OpenZFS the VMs run.
    pub zfs: ZfsSuite,
    pub pool: String,
    /// First three octets of the bridge's /24.
    pub net: String,
    pub bridge: String,
}

/// The proto dataset every hypervisor gets, with snapshot `@base`.
pub const PROTO: &str = "proto-disk0";

impl Default for Testbed {
    fn default() -> Self {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Testbed {
            dir: PathBuf::from(env("LAB_TESTBED_DIR", "/var/lib/lab-testbed")),
            hypervisors: env("LAB_TESTBED_HYPERVISORS", "3").parse().unwrap_or(3),
            openzfs: env("LAB_TESTBED_OPENZFS", "2").parse().unwrap_or(2),
            zfs: ZfsSuite::parse(&env("LAB_TESTBED_ZFS", "stable")).unwrap_or(ZfsSuite::Stable),
            pool: env("LAB_TESTBED_POOL", "ssd-vol0"),
            net: env("LAB_TESTBED_NET", "10.251.0"),
            bridge: env("LAB_TESTBED_BRIDGE", "labtb0"),
        }
    }
}

/// A test bed error: what failed, with the command and its output when there was one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Msg(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn msg(s: impl Into<String>) -> Error {
    Error::Msg(s.into())
}

impl Testbed {
    /// Every hypervisor's name: the namespaces, then the OpenZFS VMs.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.all().map(|k| format!("hv{k}"))
    }
    pub fn hv_dir(&self, k: u32) -> PathBuf {
        self.dir.join(format!("hv{k}"))
    }
    pub fn netns(&self, k: u32) -> String {
        format!("labtb-hv{k}")
    }
    pub fn veth(&self, k: u32) -> String {
        format!("ltb{k}")
    }
    pub fn address(&self, k: u32) -> String {
        format!("{}.{}", self.net, 10 + k)
    }
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh/config")
    }
    pub fn pidfile(&self, k: u32, daemon: &str) -> PathBuf {
        self.hv_dir(k).join("run").join(format!("{daemon}.pid"))
    }
    /// The host-side path of a file that hypervisor `k` sees at `path` (its private bind mounts).
    pub fn host_path(&self, k: u32, path: &str) -> PathBuf {
        self.hv_dir(k)
            .join("priv")
            .join(path.trim_start_matches('/'))
    }
    /// The serial console log of domain `node` on hypervisor `k`, as the host sees it (a
    /// namespace hypervisor's; an OpenZFS VM's is read with [`Testbed::console_text`]).
    pub fn console_log(&self, k: u32, node: &str) -> PathBuf {
        self.host_path(k, &format!("/var/log/libvirt/qemu/{node}.console.log"))
    }
    /// The serial console log of domain `node` on hypervisor `k` (empty when there is none).
    pub fn console_text(&self, k: u32, node: &str) -> String {
        if self.is_vm(k) {
            self.exec(
                k,
                &["cat", &format!("/var/log/libvirt/qemu/{node}.console.log")],
            )
            .unwrap_or_default()
        } else {
            std::fs::read(self.console_log(k, node))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        }
    }
    /// The sshd log of hypervisor `k` (one "Accepted publickey" line per connection).
    pub fn sshd_log(&self, k: u32) -> PathBuf {
        self.hv_dir(k).join("log/sshd.log")
    }
    pub fn guest_kernel(&self) -> PathBuf {
        self.dir.join("guest/vmlinux")
    }
    pub fn guest_initrd(&self) -> PathBuf {
        self.dir.join("guest/initrd.cpio.gz")
    }

    /// The pid in a pidfile when that process runs and has the expected command name.
    pub fn alive(&self, k: u32, daemon: &str, comm: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pidfile(k, daemon))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let actual = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (actual.trim() == comm).then_some(pid)
    }

    /// A command run inside hypervisor `k`'s namespaces, as if logged in there (no ssh); on
    /// an OpenZFS VM, through ssh (the arguments then pass through the remote shell).
    pub fn command(&self, k: u32, program: &str) -> Result<Command> {
        if self.is_vm(k) {
            self.alive(k, "qemu", "qemu-system-x86")
                .ok_or_else(|| msg(format!("hv{k} is not running: `cargo xtask testbed up`")))?;
            let mut c = Command::new("ssh");
            c.arg("-F")
                .arg(self.ssh_config())
                .args([&format!("hv{k}"), "--", program]);
            return Ok(c);
        }
        let holder = self
            .alive(k, "holder", "sleep")
            .ok_or_else(|| msg(format!("hv{k} is not running: `cargo xtask testbed up`")))?;
        let mut c = Command::new("nsenter");
        c.args(["-t", &holder.to_string(), "-m", "-u", "-n", "--", program]);
        Ok(c)
    }

    /// Runs a program inside hypervisor `k` and returns its stdout; a non-zero exit is an error.
    pub fn exec(&self, k: u32, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| msg("exec needs a command"))?;
        let mut c = self.command(k, program)?;
        if self.is_vm(k) {
            c.args(rest.iter().map(|a| lab_exec::quote(a)));
        } else {
            c.args(rest);
        }
        run(&mut c)
    }

    /// Runs a shell script (`set -eu`) on hypervisor `k` and returns its stdout.
    pub fn ssh_script(&self, k: u32, script: &str) -> Result<String> {
        self.exec(k, &["sh", "-c", &format!("set -eu\n{script}")])
    }

    /// Waits until the console log of `node` on hypervisor `k` has a line containing `needle`,
    /// and returns that line from the needle on.
    pub fn wait_for_console(
        &self,
        k: u32,
        node: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let start = Instant::now();
        // An OpenZFS VM's log is read over ssh: once a second is enough.
        let every = Duration::from_millis(if self.is_vm(k) { 1000 } else { 50 });
        loop {
            let text = self.console_text(k, node);
            // Whole lines only (the guest may be writing the last one as it is read); from
            // the needle on: a shell prompt may share the line on a busy console.
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(line) = whole
                .lines()
                .find_map(|l| l.find(needle).map(|at| &l[at..]))
            {
                return Ok(line.trim_end_matches('\r').to_owned());
            }
            if start.elapsed() > timeout {
                let tail = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(msg(format!(
                    "hv{k}/{node}: no console line with {needle:?} after {timeout:?} (last lines: {tail})"
                )));
            }
            std::thread::sleep(every);
        }
    }

    /// Whether every hypervisor's daemons (or VM) run.
    pub fn is_up(&self) -> bool {
        self.all().all(|k| {
            if self.is_vm(k) {
                return self.alive(k, "qemu", "qemu-system-x86").is_some();
            }
            self.alive(k, "holder", "sleep").is_some()
                && self.alive(k, "zfs-fuse", "zfs-fuse").is_some()
                && self.alive(k, "libvirtd", "libvirtd").is_some()
                && self.alive(k, "sshd", "sshd").is_some()
        })
    }

    pub fn up(&self, options: &UpOptions, log: &mut dyn FnMut(&str)) -> Result<()> {
        up::up(self, options, log)
    }

    pub fn down(&self, purge: bool, log: &mut dyn FnMut(&str)) -> Result<()> {
        down::down(self, purge, log)
    }

    /// Whether hypervisor `k`'s zfs-fuse answers (see [`ZfsHealth`]); takes at most a few
    /// seconds even when it does not.
    pub fn zfs_health(&self, k: u32) -> ZfsHealth {
        zfs_fuse::zfs_health(self, k)
    }

    pub fn status(&self) -> Status {
        status::status(self)
    }

    /// A fault for tests: stops hypervisor `k`'s sshd (sessions already open live on);
    /// [`Testbed::up`] starts it again.
    pub fn stop_sshd(&self, k: u32) {
        if let Some(pid) = self.alive(k, "sshd", "sshd") {
            up::stop(pid);
        }
    }

    /// A fault for tests: takes hypervisor `k`'s link to the bridge down (`false`) or up again;
    /// packets in flight are lost, connections stall until ssh gives up on them.
    pub fn set_link(&self, k: u32, up: bool) -> Result<()> {
        run(Command::new("ip").args(["link", "set", &self.veth(k), if up { "up" } else { "down" }]))
            .map(drop)
    }
}

/// The test bed for an end-to-end test, or a panic that says how to bring it up, or which
/// hypervisor hangs. Tests never pass silently without it, and never wait on a hung bed.
pub fn require() -> Testbed {
    let bed = Testbed::default();
    if !bed.is_up() {
        panic!(
            "the test bed is not up ({}): run `cargo xtask testbed up` (as root) first, \
             or run everything with `cargo xtask ci`",
            bed.dir.display()
        );
    }
    for k in 0..bed.hypervisors {
        if let ZfsHealth::Hung(why) = bed.zfs_health(k) {
            panic!(
                "hv{k} of the test bed is HUNG: its zfs-fuse does not answer ({why}); \
                 `cargo xtask testbed down && cargo xtask testbed up` recovers it"
            );
        }
    }
    bed
}

/// Runs a command, returning stdout; a failure carries the command line and stderr.
pub fn run(c: &mut Command) -> Result<String> {
    let out = output(c)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: describe(c),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn output(c: &mut Command) -> Result<Output> {
    c.stdin(Stdio::null())
        .output()
        .map_err(|e| msg(format!("cannot run `{}`: {e}", describe(c))))
}

/// Runs a bash snippet with `set -euo pipefail` (for pipelines such as `zfs send | ssh ... recv`).
pub fn bash(script: &str) -> Result<String> {
    run(Command::new("bash").args(["-c", &format!("set -euo pipefail\n{script}")]))
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|source| Error::Io {
        path: p.to_path_buf(),
        source,
    })
}

/// A file's text, or nothing when it cannot be read.
pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
