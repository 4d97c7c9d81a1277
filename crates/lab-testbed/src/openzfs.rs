//! The test bed's OpenZFS hypervisors: QEMU VMs running Debian with Debian's own `zfs-dkms`,
//! on the bed's bridge with addresses of their own, each with sshd, libvirtd and a pool.
//!
//! Why VMs, and two of them: OpenZFS is a kernel module, and the host's kernel has none (and
//! loads none). One VM holding two hypervisors in namespaces would share one ZFS: both pools in
//! every `zfs list`, one `/dev/zvol`, one module to hang. Two VMs from one cached root image
//! are two real fleet members (resume and holds need OpenZFS at both ends) for the price of
//! a second boot, which runs beside the first.
//!
//! - The root image is built once (mmdebstrap, then zfs-dkms compiled in a chroot for the
//!   image's kernel: `openzfs/image.sh`) and cached under `<dir>/openzfs/images/<abi>_<zfs>`,
//!   keyed by the kernel ABI and the zfs-dkms version the archive offers now; a change of
//!   either builds a new one and drops the old.
//! - Each VM boots a qcow2 overlay of that image, a sparse pool disk and a small *seed* disk
//!   (an ext4 image made without a loop device) that gives it its name, address, host key,
//!   ssh files and the bed's guest kernel. Its NIC is a tap on the bed's bridge.
//! - KVM only where a stock kernel really boots under it: probed once with the bed's own
//!   guest, the verdict cached (`<dir>/openzfs/accel`). Here `/dev/kvm` is a paravirtual KVM
//!   that hangs a stock kernel, so the VMs run under TCG.
//!
//! Long: the image, the KVM verdict, the VMs' disks and their boot are one life cycle, read
//! together from top to bottom.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::up::{stop, wait_until};
use crate::{Error, PROTO, Result, Testbed, bash, mkdir, msg, read, run, write_file};

/// The image build, one phase per call.
const IMAGE_SCRIPT: &str = include_str!("openzfs/image.sh");

/// Memory of each OpenZFS VM, in MiB: the ARC is capped at 256 MiB inside.
const VM_MEMORY: &str = "2048";
/// Sparse size of each VM's pool disk.
const POOL_SIZE: &str = "4G";
/// How long a booting VM may take until its sshd answers (TCG, two VMs on two cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Which OpenZFS the VMs run: Debian stable's (the default) or bookworm-backports'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZfsSuite {
    Stable,
    Backports,
}

impl ZfsSuite {
    pub fn parse(s: &str) -> Option<ZfsSuite> {
        match s {
            "stable" => Some(ZfsSuite::Stable),
            "backports" => Some(ZfsSuite::Backports),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            ZfsSuite::Stable => "stable",
            ZfsSuite::Backports => "backports",
        }
    }
}

/// How the VMs are accelerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Emulated, with the reason KVM was not used.
    Tcg(String),
}

impl Testbed {
    /// Hypervisor numbers of the OpenZFS VMs: after the namespace hypervisors.
    pub fn openzfs_range(&self) -> std::ops::Range<u32> {
        self.hypervisors..self.hypervisors + self.openzfs
    }
    /// Whether hypervisor `k` is an OpenZFS VM (else a namespace with zfs-fuse).
    pub fn is_vm(&self, k: u32) -> bool {
        self.openzfs_range().contains(&k)
    }
    /// Every hypervisor of the bed: namespaces, then VMs.
    pub fn all(&self) -> std::ops::Range<u32> {
        0..self.hypervisors + self.openzfs
    }
    fn openzfs_dir(&self) -> PathBuf {
        self.dir.join("openzfs")
    }
    fn tap(&self, k: u32) -> String {
        self.veth(k)
    }
}

/// The cached root image the VMs boot.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub key: String,
    pub dir: PathBuf,
}

impl Image {
    fn raw(&self) -> PathBuf {
        self.dir.join("root.raw")
    }
    fn complete(&self) -> PathBuf {
        self.dir.join("complete")
    }
}

fn script(args: &[&str]) -> Result<String> {
    let mut c = Command::new("bash");
    c.arg("-c").arg(IMAGE_SCRIPT).arg("image.sh").args(args);
    run(&mut c)
}

/// The image for today's kernel ABI and zfs version, built when it is not cached.
pub(crate) fn image(bed: &Testbed, step: &mut dyn FnMut(&str)) -> Result<Image> {
    let images = bed.openzfs_dir().join("images");
    mkdir(&images)?;
    let resolve = bed.openzfs_dir().join("resolve");
    let wanted = match script(&["resolve", &resolve.to_string_lossy(), bed.zfs.as_str()]) {
        Ok(out) => {
            let mut words = out.split_whitespace();
            let kernel = words.next().unwrap_or_default();
            let zfs = words.next().unwrap_or_default();
            let abi = kernel.trim_start_matches("linux-image-");
            format!("{abi}_{zfs}")
        }
        Err(e) => {
            // Offline: any complete image of the same suite beats none.
            let cached = cached_images(&images)
                .into_iter()
                .find(|k| k.contains("bpo") == (bed.zfs == ZfsSuite::Backports));
            match cached {
                Some(key) => {
                    step(&format!(
                        "openzfs: cannot ask the archive for the current kernel and zfs ({e}); using the cached image {key}"
                    ));
                    key
                }
                None => return Err(e),
            }
        }
    };
    let image = Image {
        dir: images.join(&wanted),
        key: wanted.clone(),
    };
    if !image.complete().exists() {
        build(&image, bed.zfs, step)?;
    }
    for old in cached_images(&images)
        .into_iter()
        .filter(|k| *k != wanted && k.contains("bpo") == (bed.zfs == ZfsSuite::Backports))
    {
        let _ = std::fs::remove_dir_all(images.join(&old));
        step(&format!("openzfs: removed the outdated image {old}"));
    }
    Ok(image)
}

fn cached_images(images: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(images)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("complete").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys.reverse();
    keys
}

fn build(image: &Image, suite: ZfsSuite, step: &mut dyn FnMut(&str)) -> Result<()> {
    mkdir(&image.dir)?;
    let dir = image.dir.to_string_lossy().into_owned();
    let rootfs = image.dir.join("rootfs");
    step(&format!(
        "openzfs: building the image {} (about 8 minutes, once)",
        image.key
    ));
    if !rootfs.exists() {
        script(&["bootstrap", &dir])?;
        step("openzfs: root tree bootstrapped (mmdebstrap)");
    }
    let built = bash(&format!(
        "ls {}/lib/modules/*/updates/dkms/zfs.ko 2>/dev/null",
        rootfs.display()
    ))
    .is_ok();
    if !built {
        script(&["zfs", &dir, suite.as_str()])?;
        step("openzfs: zfs-dkms built for the image's kernel");
    }
    script(&["finish", &dir])?;
    let _ = std::fs::remove_dir_all(&rootfs);
    write_file(&image.complete(), &format!("{}\n", image.key))?;
    step("openzfs: root image written");
    Ok(())
}

/// Whether a stock kernel boots under this machine's KVM: asked once, the answer kept.
pub(crate) fn accel(bed: &Testbed, step: &mut dyn FnMut(&str)) -> Result<Accel> {
    let cache = bed.openzfs_dir().join("accel");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        return Ok(match text.trim().strip_prefix("tcg: ") {
            Some(why) => Accel::Tcg(why.to_owned()),
            None => Accel::Kvm,
        });
    }
    let verdict = probe_kvm(bed);
    let text = match &verdict {
        Accel::Kvm => "kvm\n".to_owned(),
        Accel::Tcg(why) => format!("tcg: {why}\n"),
    };
    write_file(&cache, &text)?;
    step(&format!("openzfs: KVM probe: {}", text.trim()));
    Ok(verdict)
}

fn probe_kvm(bed: &Testbed) -> Accel {
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg("no /dev/kvm".to_owned());
    }
    let dir = bed.openzfs_dir();
    let log = dir.join("kvm-probe.log");
    let _ = std::fs::remove_file(&log);
    // The bed's own guest: Debian's stock kernel, booted the ordinary way (bzImage).
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(bed.dir.join("guest/vmlinuz"))
        .arg("-initrd")
        .arg(bed.guest_initrd())
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Accel::Tcg(format!("cannot run qemu-system-x86_64: {e}")),
    };
    let start = Instant::now();
    let verdict = loop {
        if read(&log).contains("LAB-GUEST: up") {
            break Accel::Kvm;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            break Accel::Tcg(format!(
                "a stock kernel under KVM: qemu exited ({status}) {first}"
            ));
        }
        if start.elapsed() > Duration::from_secs(30) {
            break Accel::Tcg(
                "a stock kernel under KVM printed nothing in 30 s (a paravirtual KVM such as kvm_pvm?)"
                    .to_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    verdict
}

/// Starts every OpenZFS VM that is not running, all at once, and waits for their sshd.
pub(crate) fn start_all(
    bed: &Testbed,
    image: &Image,
    accel: &Accel,
    step: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut booting = Vec::new();
    for k in bed.openzfs_range() {
        if bed.alive(k, "qemu", "qemu-system-x86").is_some() {
            continue;
        }
        start_vm(bed, k, image, accel)?;
        step(&format!(
            "hv{k}: OpenZFS VM started ({}, {})",
            image.key,
            match accel {
                Accel::Kvm => "KVM".to_owned(),
                Accel::Tcg(_) => "TCG".to_owned(),
            }
        ));
        booting.push(k);
    }
    // Every VM, not only those started now: one whose kernel panicked reboots in its own
    // QEMU, and is configured again (its pool imported, /run/lab) once its sshd answers.
    for k in bed.openzfs_range() {
        wait_until(BOOT_TIMEOUT, || ssh_ok(bed, k)).map_err(|_| {
            let console = read(&bed.hv_dir(k).join("log/console.log"));
            let tail: Vec<&str> = console.lines().rev().take(8).collect();
            msg(format!(
                "hv{k}: the OpenZFS VM's sshd did not answer within {BOOT_TIMEOUT:?}; console: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        })?;
        if booting.contains(&k) {
            step(&format!("hv{k}: sshd up"));
        }
    }
    for k in bed.openzfs_range() {
        configure(bed, k)?;
    }
    Ok(())
}

fn start_vm(bed: &Testbed, k: u32, image: &Image, accel: &Accel) -> Result<()> {
    let hv = bed.hv_dir(k);
    for d in ["run", "log", "disks", "seed"] {
        mkdir(&hv.join(d))?;
    }
    let disks = hv.join("disks");
    let overlay = disks.join("root.qcow2");
    let base_of = disks.join("base");
    if read(&base_of).trim() != image.key || !overlay.exists() {
        // A new image is a new root: the pool disk stays and is imported again.
        let _ = std::fs::remove_file(&overlay);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image.raw())
            .arg(&overlay))?;
        write_file(&base_of, &format!("{}\n", image.key))?;
    }
    let pool = disks.join("pool0.raw");
    if !pool.exists() {
        run(Command::new("truncate").args(["-s", POOL_SIZE]).arg(&pool))?;
    }
    let seed = write_seed(bed, k)?;
    let tap = bed.tap(k);
    bash(&format!(
        "ip link show {tap} >/dev/null 2>&1 || ip tuntap add dev {tap} mode tap\n\
         ip link set {tap} master {br}\nip link set {tap} up",
        br = bed.bridge
    ))?;
    let accel_args: &[&str] = match accel {
        Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        // tb-size: QEMU's default code buffer makes each VM's process grow by a GiB
        Accel::Tcg(_) => &["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"],
    };
    let pidfile = bed.pidfile(k, "qemu");
    let _ = std::fs::remove_file(&pidfile);
    let drive = |file: &Path, id: &str, format: &str, serial: Option<&str>| {
        let mut d = vec![
            "-drive".to_owned(),
            format!(
                "file={},if=none,id={id},format={format},cache=unsafe,discard=unmap",
                file.display()
            ),
            "-device".to_owned(),
        ];
        d.push(match serial {
            Some(s) => format!("virtio-blk-pci,drive={id},serial={s}"),
            None => format!("virtio-blk-pci,drive={id}"),
        });
        d
    };
    let mut c = Command::new("qemu-system-x86_64");
    c.args(accel_args)
        .args(["-machine", "q35", "-smp", "2", "-m", VM_MEMORY])
        .args(["-name", &format!("lab-testbed-hv{k}")])
        .arg("-kernel")
        .arg(image.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.dir.join("initrd.img"))
        // `panic=10`: a kernel that panics (nested KVM on the emulated CPU now and then
        // overflows a KVM thread's stack) reboots by itself in 10 s, and `up` configures it
        // again, instead of hanging until someone kills its QEMU.
        .args([
            "-append",
            "root=/dev/vda rw console=ttyS0 quiet panic=10 zfs.zfs_arc_max=268435456",
        ])
        .args(drive(&overlay, "root", "qcow2", None))
        .args(drive(&pool, "pool0", "raw", Some("pool0")))
        .args(drive(&seed, "seed", "raw", Some("seed")))
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac=52:54:00:7b:00:{k:02x}"),
            "-display",
            "none",
            "-daemonize",
        ])
        .arg("-serial")
        .arg(format!("file:{}", hv.join("log/console.log").display()))
        .arg("-pidfile")
        .arg(&pidfile);
    run(&mut c)?;
    Ok(())
}

/// The VM's identity on a small ext4 disk: name, address, host key, ssh files, guest kernel.
fn write_seed(bed: &Testbed, k: u32) -> Result<PathBuf> {
    let hv = bed.hv_dir(k);
    let tree = hv.join("seed");
    let _ = std::fs::remove_dir_all(&tree);
    mkdir(&tree.join("ssh"))?;
    mkdir(&tree.join("guest"))?;
    write_file(&tree.join("hostname"), &format!("hv{k}\n"))?;
    write_file(&tree.join("address"), &format!("{}/24\n", bed.address(k)))?;
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(drop)
            .map_err(|source| Error::Io {
                path: from.to_path_buf(),
                source,
            })
    };
    let key = hv.join("ssh_host_ed25519_key");
    copy(&key, &tree.join("ssh_host_ed25519_key"))?;
    copy(
        &key.with_extension("pub"),
        &tree.join("ssh_host_ed25519_key.pub"),
    )?;
    // The same ssh files the namespace hypervisors get: hvK to hvJ works from inside.
    let dot_ssh = bed.host_path(k, "/root/.ssh");
    for f in ["authorized_keys", "config", "known_hosts", "id_ed25519"] {
        copy(&dot_ssh.join(f), &tree.join("ssh").join(f))?;
    }
    copy(&bed.guest_kernel(), &tree.join("guest/vmlinux"))?;
    copy(&bed.guest_initrd(), &tree.join("guest/initrd.cpio.gz"))?;
    let seed = hv.join("disks/seed.raw");
    let _ = std::fs::remove_file(&seed);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "labseed", "-d"])
        .arg(&tree)
        .arg(&seed)
        .arg("256M"))?;
    Ok(seed)
}

fn ssh_ok(bed: &Testbed, k: u32) -> bool {
    run(Command::new("ssh").arg("-F").arg(bed.ssh_config()).args([
        "-o",
        "ConnectTimeout=3",
        &format!("hv{k}"),
        "true",
    ]))
    .is_ok()
}

/// The pool (imported, or made on first boot), lab's directories, and a warm libvirtd.
fn configure(bed: &Testbed, k: u32) -> Result<()> {
    let pool = &bed.pool;
    bed.ssh_script(
        k,
        &format!(
            "zpool list -H -o name {pool} >/dev/null 2>&1 || zpool import -f -d /dev/disk/by-id {pool} >/dev/null 2>&1 \
               || zpool create -f -o ashift=12 -O compression=lz4 {pool} /dev/disk/by-id/virtio-pool0\n\
             mkdir -p /run/lab /var/lib/lab/staging && chmod 700 /run/lab\n\
             # nested guests write AMD's performance-counter MSRs, which KVM here does not\n\
             # emulate: ignored rather than a #GP in the guest's early boot\n\
             echo 1 > /sys/module/kvm/parameters/ignore_msrs 2>/dev/null || true\n\
             echo 0 > /sys/module/kvm/parameters/report_ignored_msrs 2>/dev/null || true\n\
             virsh -q -c qemu:///system version >/dev/null"
        ),
    )
    .map(drop)
}

/// `proto-disk0@base` as a zvol on the first VM: a GPT with one ext4 partition holding the
/// bed's proto tree; replicated to the other VMs with `zfs send | ssh hvK zfs recv`.
pub(crate) fn seed(bed: &Testbed, step: &mut dyn FnMut(&str)) -> Result<()> {
    let mut vms = bed.openzfs_range();
    let Some(source) = vms.next() else {
        return Ok(());
    };
    let proto = format!("{}/{PROTO}", bed.pool);
    let base = format!("{proto}@base");
    let has_base = |k: u32| {
        bed.exec(k, &["zfs", "list", "-H", "-o", "name", &base])
            .is_ok()
    };
    let version = crate::router::version(bed)?;
    for k in bed.openzfs_range() {
        crate::router::forget_stale(bed, k, &proto, &version, step)?;
    }
    if !has_base(source) {
        crate::router::feed(
            bed,
            source,
            &format!(
                "p={proto}; dev=/dev/zvol/$p\n\
                 zfs list -H -o name $p >/dev/null 2>&1 || zfs create -s -V 1G $p\n\
                 wait_for() {{ i=0; while [ ! -b \"$1\" ] && [ $i -lt 100 ]; do udevadm settle -t 2 2>/dev/null; sleep 0.1; i=$((i+1)); done; [ -b \"$1\" ]; }}\n\
                 wait_for $dev\n\
                 [ -b $dev-part1 ] || sgdisk -n1:0:0 -t1:8300 $dev >/dev/null\n\
                 wait_for $dev-part1\n\
                 mkfs.ext4 -q -F -L proto $dev-part1\n\
                 m=$(mktemp -d); mount $dev-part1 $m\n\
                 tar -x --numeric-owner -C $m\n\
                 echo base > $m/etc/proto-release\n\
                 umount $m; rmdir $m\n\
                 zfs set lab:role=proto $p\n\
                 zfs set lab-testbed:image={version} $p\n\
                 zfs snapshot $p@base"
            ),
            &crate::router::tarball(bed),
        )?;
        step(&format!(
            "seed: {base} (a zvol: GPT, ext4 partition 1, the router image) on hv{source}"
        ));
    }
    for k in vms {
        if !has_base(k) {
            bed.ssh_script(
                source,
                &format!(
                    "zfs send -c {base} | ssh hv{k} zfs recv -u -o volmode=none {proto}\n\
                     ssh hv{k} zfs set lab-testbed:image={version} {proto}"
                ),
            )?;
            step(&format!("seed: {base} replicated hv{source} -> hv{k}"));
        }
    }
    Ok(())
}

/// Powers a VM off (its pool exported cleanly by the shutdown), then stops what is left.
pub(crate) fn stop_vm(bed: &Testbed, k: u32, log: &mut dyn FnMut(&str)) {
    let Some(pid) = bed.alive(k, "qemu", "qemu-system-x86") else {
        let _ = std::fs::remove_file(bed.pidfile(k, "qemu"));
        return;
    };
    let _ = run(Command::new("ssh").arg("-F").arg(bed.ssh_config()).args([
        "-o",
        "ConnectTimeout=3",
        &format!("hv{k}"),
        "systemctl poweroff",
    ]));
    let gone = wait_until(Duration::from_secs(30), || {
        bed.alive(k, "qemu", "qemu-system-x86").is_none()
    });
    if gone.is_err() {
        stop(pid);
    }
    log(&format!("hv{k}: stopped the OpenZFS VM ({pid})"));
    let _ = std::fs::remove_file(bed.pidfile(k, "qemu"));
    let _ = run(Command::new("ip").args(["link", "del", &bed.tap(k)]));
}

/// The OpenZFS version a VM runs (`zfs version`'s first line), when it answers.
pub(crate) fn zfs_version(bed: &Testbed, k: u32) -> Option<String> {
    bed.exec(k, &["zfs", "version"])
        .ok()
        .and_then(|v| v.lines().next().map(str::to_owned))
}
