//! Bringing the test bed up (idempotently) and down (only what it started).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::libvirt::libvirt_config;
use crate::net::{network, ssh_setup};
use crate::zfs_fuse::{ZfsHealth, free_hung_hypervisor, serialize_mounting_zfs_calls, zfs_health};
use crate::{Error, PROTO, Result, Testbed, bash, mkdir, msg, read, run, write_file};

/// Apt packages the test bed needs.
const PACKAGES: &[&str] = &[
    "zfs-fuse",
    "openssh-server",
    "openssh-client",
    "rsync",
    "libvirt-daemon-system",
    "libvirt-daemon-system-sysv",
    "libvirt-clients",
    "qemu-system-x86",
    "busybox-static",
    // lab networks: libvirt runs dnsmasq for DHCP and sets firewall rules for them
    "dnsmasq-base",
    "iptables",
    // the guests' ssh server (`lab ssh`, `lab exec`), a terminal for `lab console` tests, and
    // Graphviz for `lab graph --format svg`
    "dropbear-bin",
    "tmux",
    "graphviz",
    // `lab capture`'s filter on the hypervisors, and the tests' reading of a capture
    "tcpdump",
    // proto sync's rate limit and byte progress on the source (`pv`)
    "pv",
    "iproute2",
    // the OpenZFS hypervisors: their image (mmdebstrap, mkfs.ext4 -d) and disks (qemu-img)
    "mmdebstrap",
    "qemu-utils",
    "e2fsprogs",
    // a hypervisor installed in another language: virsh's translations, and a German locale
    // (made with `localedef`) that ssh sessions bring along (`AcceptEnv LANG LC_*`)
    "libvirt-l10n",
    "locales",
];

/// The locale a test can give an ssh session to a hypervisor, as a German install would.
pub const FOREIGN_LOCALE: &str = "de_DE.UTF-8";

/// Directories each hypervisor gets its own copy of, bind-mounted in its mount namespace.
const PRIVATE_DIRS: &[&str] = &[
    "/run/zfs",
    "/run/lock/zfs",
    "/var/lib/zfs",
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
    "/root/.ssh",
    "/tmp",
    "/var/lib/lab",
    "/run/lab",
];

/// The line `up` adds to `/root/.ssh/config` (and `down --purge` removes).
pub(crate) fn include_line(bed: &Testbed) -> String {
    format!("Include {}   # lab-testbed", bed.ssh_config().display())
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Sparse size of each pool's backing file.
    pub pool_size: String,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            pool_size: "2G".to_owned(),
        }
    }
}

pub fn up(bed: &Testbed, options: &UpOptions, log: &mut dyn FnMut(&str)) -> Result<()> {
    preflight()?;
    let t0 = Instant::now();
    let mut step = |what: &str| log(&format!("[{:6.2}s] {what}", t0.elapsed().as_secs_f64()));
    install_packages(&mut step)?;
    foreign_locale(&mut step)?;
    for d in ["ssh", "guest", "run"] {
        mkdir(&bed.dir.join(d))?;
    }
    for d in PRIVATE_DIRS {
        mkdir(Path::new(d))?;
    }
    ssh_setup(bed)?;
    crate::guest::prepare(bed, &mut step)?;
    crate::router::prepare(bed, &mut step)?;
    network(bed)?;
    for k in 0..bed.hypervisors {
        start_hypervisor(bed, k, options, &mut step)?;
    }
    seed(bed, &mut step)?;
    if bed.openzfs > 0 {
        let image = crate::openzfs::image(bed, &mut step)?;
        let accel = crate::openzfs::accel(bed, &mut step)?;
        crate::openzfs::start_all(bed, &image, &accel, &mut step)?;
        crate::openzfs::seed(bed, &mut step)?;
    }
    step(&format!(
        "up: {}",
        bed.names().collect::<Vec<_>>().join(" ")
    ));
    Ok(())
}

fn preflight() -> Result<()> {
    let uid = run(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        return Err(msg(
            "the test bed needs root (namespaces, mounts, a bridge): run as root",
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(msg(
            "/dev/fuse is missing: zfs-fuse cannot run on this machine",
        ));
    }
    Ok(())
}

/// Makes [`FOREIGN_LOCALE`] when the machine does not have it.
fn foreign_locale(step: &mut dyn FnMut(&str)) -> Result<()> {
    let have = run(Command::new("locale").arg("-a")).unwrap_or_default();
    if have.lines().any(|l| l.eq_ignore_ascii_case("de_DE.utf8")) {
        return Ok(());
    }
    run(Command::new("localedef").args(["-i", "de_DE", "-f", "UTF-8", FOREIGN_LOCALE]))?;
    step(&format!("locale {FOREIGN_LOCALE} made"));
    Ok(())
}

fn install_packages(step: &mut dyn FnMut(&str)) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !run(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("apt-get install {}", missing.join(" ")));
    // policy-rc.d keeps the packages' scripts from starting the host's own daemons.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made_policy = !policy.exists();
    if made_policy {
        write_file(policy, "#!/bin/sh\nexit 101\n")?;
        run(Command::new("chmod").args(["+x", "/usr/sbin/policy-rc.d"]))?;
    }
    // qemu-utils and qemu-system-x86 must be of one version: a machine that came with a newer
    // qemu-utils (from backports) gets the one that matches the QEMU it can install.
    let apt = format!(
        "export DEBIAN_FRONTEND=noninteractive; A='apt-get -y -q -o DPkg::Lock::Timeout=300'; \
         $A update >/dev/null\n\
         q=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {{ print $2 }}')\n\
         u=$(dpkg-query -W -f='${{Version}}' qemu-utils 2>/dev/null || true)\n\
         pin=; [ -z \"$u\" ] || [ \"$u\" = \"$q\" ] || pin=\"qemu-utils=$q\"\n\
         $A install --allow-downgrades --no-install-recommends {m} $pin >/dev/null",
        m = missing.join(" ")
    );
    let result = bash(&apt);
    if made_policy {
        let _ = std::fs::remove_file(policy);
    }
    result.map(|_| step("packages installed"))
}

fn start_hypervisor(
    bed: &Testbed,
    k: u32,
    options: &UpOptions,
    step: &mut dyn FnMut(&str),
) -> Result<()> {
    let hv = bed.hv_dir(k);
    for d in ["run", "log", "disks"] {
        mkdir(&hv.join(d))?;
    }
    for d in PRIVATE_DIRS {
        mkdir(&bed.host_path(k, d))?;
    }
    run(Command::new("chmod")
        .arg("1777")
        .arg(bed.host_path(k, "/tmp")))?;
    // lab's lock directory must be root's and 0700.
    run(Command::new("chmod")
        .arg("700")
        .arg(bed.host_path(k, "/run/lab")))?;
    libvirt_config(bed, k)?;

    if bed.alive(k, "holder", "sleep").is_none() {
        // ip netns exec → unshare (mount + uts) → bash (hostname, bind mounts) → exec sleep:
        // every step execs, so the spawned pid is the holder's pid.
        let mut binds = String::new();
        for d in PRIVATE_DIRS {
            binds.push_str(&format!(
                "mkdir -p {d} && mount --bind {} {d} && ",
                bed.host_path(k, d).display()
            ));
        }
        // The host's ~/.bashrc (pyenv, cargo ...) would run for every ssh command: about
        // 120 ms each. A hypervisor gets a minimal one of its own.
        let bashrc = hv.join("bashrc");
        write_file(
            &bashrc,
            "# lab-testbed: minimal ~/.bashrc of a test-bed hypervisor\n",
        )?;
        if !Path::new("/root/.bashrc").exists() {
            write_file(Path::new("/root/.bashrc"), "")?;
        }
        binds.push_str(&format!(
            "mount --bind {} /root/.bashrc && ",
            bashrc.display()
        ));
        let script = format!("hostname hv{k} && {binds}exec -a lab-testbed-hv{k} sleep infinity");
        let log = std::fs::File::create(hv.join("log/holder.log")).map_err(|source| Error::Io {
            path: hv.join("log/holder.log"),
            source,
        })?;
        let child = Command::new("setsid")
            .args([
                "ip",
                "netns",
                "exec",
                &bed.netns(k),
                "unshare",
                "-m",
                "-u",
                "--propagation",
                "private",
                "bash",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|source| Error::Io {
                path: hv.join("log"),
                source,
            })?)
            .stderr(log)
            .spawn()
            .map_err(|e| msg(format!("cannot start the hv{k} holder: {e}")))?;
        write_file(&bed.pidfile(k, "holder"), &format!("{}\n", child.id()))?;
        wait_until(Duration::from_secs(5), || {
            bed.alive(k, "holder", "sleep").is_some()
        })
        .map_err(|_| {
            msg(format!(
                "hv{k}: holder did not come up: {}",
                read(&hv.join("log/holder.log"))
            ))
        })?;
        step(&format!("hv{k}: namespaces up"));
    }
    serialize_mounting_zfs_calls(bed, k)?;

    if let Some(pid) = bed.alive(k, "zfs-fuse", "zfs-fuse")
        && let ZfsHealth::Hung(why) = zfs_health(bed, k)
    {
        let aborted = free_hung_hypervisor(bed, k, pid)?;
        // libvirtd and sshd may have been waiting on the dead mounts too: they start afresh
        // below (running domains keep running; a restarted libvirtd finds them again).
        for daemon in ["libvirtd", "sshd"] {
            if let Some(pid) = bed.alive(k, daemon, daemon) {
                stop(pid);
            }
        }
        step(&format!(
            "hv{k}: zfs-fuse was hung ({why}): aborted {aborted} FUSE connection(s), killed it; \
             restarting it, libvirtd and sshd"
        ));
    }

    if bed.alive(k, "zfs-fuse", "zfs-fuse").is_none() {
        // zfs-fuse exits silently when its pidfile exists; a killed one leaves dead FUSE mounts.
        let _ = std::fs::remove_file(bed.pidfile(k, "zfs-fuse"));
        let holder = bed.alive(k, "holder", "sleep").expect("started above");
        let mounts = read(Path::new(&format!("/proc/{holder}/mountinfo")));
        let mut dead: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(" - fuse"))
            .filter_map(|l| l.split_whitespace().nth(4))
            .collect();
        dead.sort_by(|a, b| b.cmp(a));
        for m in dead {
            let _ = bed.exec(k, &["umount", "-l", m]);
        }
        let pidfile = bed.pidfile(k, "zfs-fuse");
        let mut c = bed.command(k, "/usr/sbin/zfs-fuse")?;
        c.args(["--pidfile", &pidfile.to_string_lossy(), "--no-kstat-mount"]);
        run(&mut c)?;
        wait_until(Duration::from_secs(10), || {
            bed.exec(k, &["zpool", "list", "-H"]).is_ok()
        })
        .map_err(|_| msg(format!("hv{k}: zfs-fuse did not come up")))?;
        step(&format!("hv{k}: zfs-fuse up"));
    }
    if bed
        .exec(k, &["zpool", "list", "-H", "-o", "name", &bed.pool])
        .is_err()
    {
        let image = hv.join("disks").join(format!("{}.img", bed.pool));
        if image.exists() {
            // -f: after an unclean stop zfs-fuse thinks the pool is in use elsewhere; it is ours.
            bed.exec(
                k,
                &[
                    "zpool",
                    "import",
                    "-f",
                    "-d",
                    &hv.join("disks").to_string_lossy(),
                    &bed.pool,
                ],
            )?;
        } else {
            run(Command::new("truncate")
                .args(["-s", &options.pool_size])
                .arg(&image))?;
            let mut c = bed.command(k, "zpool")?;
            c.args(["create", &bed.pool, &image.to_string_lossy()]);
            let out = c
                .stdin(Stdio::null())
                .output()
                .map_err(|e| msg(e.to_string()))?;
            if bed
                .exec(k, &["zpool", "list", "-H", "-o", "name", &bed.pool])
                .is_err()
            {
                return Err(msg(format!(
                    "hv{k}: zpool create failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        step(&format!("hv{k}: pool {} ready", bed.pool));
    }
    let _ = bed.exec(k, &["zfs", "mount", "-a"]);

    if bed.alive(k, "libvirtd", "libvirtd").is_none() {
        let _ = std::fs::remove_file(bed.pidfile(k, "libvirtd"));
        let pidfile = bed.pidfile(k, "libvirtd");
        let mut c = bed.command(k, "/usr/sbin/libvirtd")?;
        c.args(["-d", "-p", &pidfile.to_string_lossy()]);
        run(&mut c)?;
        wait_until(Duration::from_secs(20), || {
            bed.exec(k, &["test", "-S", "/run/libvirt/libvirt-sock"])
                .is_ok()
        })
        .map_err(|_| msg(format!("hv{k}: libvirtd did not come up")))?;
        bed.exec(k, &["virsh", "-q", "-c", "qemu:///system", "version"])?;
        step(&format!("hv{k}: libvirtd up"));
    }

    if bed.alive(k, "sshd", "sshd").is_none() {
        let _ = std::fs::remove_file(bed.pidfile(k, "sshd"));
        let config = hv.join("sshd_config");
        write_file(
            &config,
            &format!(
                "# hv{k} of the lab test bed. MaxSessions stays at sshd's default (10), as on real hosts.\n\
                 ListenAddress 0.0.0.0:22\nHostKey {key}\nPidFile {pid}\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 AuthorizedKeysFile {auth}\nLogLevel INFO\n\
                 # as Debian's own sshd: a client's LANG and LC_* reach the hypervisor's commands\n\
                 AcceptEnv LANG LC_*\n{language}\
                 # the default sntrup761 key exchange costs ~85 ms of CPU per connection here\n\
                 KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n",
                // hv2 is installed in German: what pam_env does with /etc/default/locale on
                // such a host, every session gets (review 3, N8)
                language = if k == 2 {
                    format!("SetEnv LANG={FOREIGN_LOCALE}\n")
                } else {
                    String::new()
                },
                key = hv.join("ssh_host_ed25519_key").display(),
                pid = bed.pidfile(k, "sshd").display(),
                auth = bed.dir.join("ssh/authorized_keys").display(),
            ),
        )?;
        mkdir(Path::new("/run/sshd"))?;
        let mut c = bed.command(k, "/usr/sbin/sshd")?;
        c.arg("-f").arg(&config).arg("-E").arg(bed.sshd_log(k));
        run(&mut c)?;
        let probe = || {
            run(Command::new("ssh")
                .arg("-F")
                .arg(bed.ssh_config())
                .args([&format!("hv{k}"), "true"]))
            .is_ok()
        };
        wait_until(Duration::from_secs(5), probe)
            .map_err(|_| msg(format!("hv{k}: `ssh hv{k}` does not work")))?;
        step(&format!("hv{k}: sshd up"));
    }
    Ok(())
}

/// `proto-disk0@base` on hv0, the router image (`router.rs`), replicated to the others with
/// `zfs send | ssh hvK zfs recv`. A proto made from another version of the image is the bed's
/// own and is made again, its clones with it.
fn seed(bed: &Testbed, step: &mut dyn FnMut(&str)) -> Result<()> {
    let proto = format!("{}/{PROTO}", bed.pool);
    let base = format!("{proto}@base");
    let version = crate::router::version(bed)?;
    for k in 0..bed.hypervisors {
        crate::router::forget_stale(bed, k, &proto, &version, step)?;
    }
    let ssh = format!("ssh -F {}", bed.ssh_config().display());
    if bed
        .exec(0, &["zfs", "list", "-H", "-o", "name", &base])
        .is_err()
    {
        bed.ssh_script(
            0,
            &format!("zfs list -H -o name {proto} >/dev/null 2>&1 || zfs create {proto}"),
        )?;
        crate::router::feed(
            bed,
            0,
            &format!(
                "d=$(zfs get -H -o value mountpoint {proto})\n\
                 tar -x --numeric-owner -C \"$d\"\n\
                 echo base > \"$d/etc/proto-release\"\n\
                 zfs set lab:role=proto {proto}\n\
                 zfs set lab-testbed:image={version} {proto}\n\
                 zfs snapshot {base}"
            ),
            &crate::router::tarball(bed),
        )?;
        step(&format!("seed: {base} on hv0 (the router image)"));
    }
    for k in 1..bed.hypervisors {
        if bed
            .exec(k, &["zfs", "list", "-H", "-o", "name", &base])
            .is_err()
        {
            bash(&format!(
                "{ssh} hv0 'zfs send {base} | ssh hv{k} zfs recv -u {proto}'"
            ))?;
            bed.exec(
                k,
                &[
                    "zfs",
                    "set",
                    &format!("lab-testbed:image={version}"),
                    &proto,
                ],
            )?;
            let _ = bed.exec(k, &["zfs", "mount", "-a"]);
            step(&format!("seed: {base} replicated hv0 -> hv{k}"));
        }
    }
    Ok(())
}

/// SIGTERM, up to 10 s, then SIGKILL.
pub(crate) fn stop(pid: u32) {
    let _ = run(Command::new("kill").arg(pid.to_string()));
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    };
    if wait_until(Duration::from_secs(10), gone).is_err() {
        let _ = run(Command::new("kill").args(["-9", &pid.to_string()]));
    }
}

pub(crate) fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if ready() { Ok(()) } else { Err(()) }
}
