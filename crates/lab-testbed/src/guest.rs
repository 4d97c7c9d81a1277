//! The test guests: Debian's generic kernel and a busybox initramfs that mounts the clone
//! over 9p (tag `labroot`), or a zvol clone's first partition when the domain has a disk
//! (`/dev/vda1`, ext4), and prints its hostname on the serial console. A root with
//! `/sbin/lab-init` (the bed's router image, `router.rs`) then boots itself; for any other,
//! the initramfs configures the NICs from the node's `/etc/lab/interfaces`, runs dropbear
//! (trusting the test bed's key) and a shell on the console, and powers off on the ACPI power
//! button.

use std::process::Command;

use crate::{Error, Result, Testbed, bash, msg, run, write_file};

/// Bumped whenever the initramfs changes, so that `up` rebuilds an older one.
const GUEST_VERSION: &str = "6: virtio-net, interfaces, DHCP, pings, dropbear, console shell, ACPI power button, \
     a root on a virtio disk, hands over to the image's /sbin/lab-init";

/// The guest's /init. Kernel arguments: `lab.tag=<9p tag>` (default labroot).
///
/// With the clone mounted, it reads the node's own `/etc/lab/interfaces` (one line per NIC:
/// `NAME MAC ADDRESS PEER`, management first; ADDRESS is `dhcp`, `-` or `a.b.c.d/len`, PEER
/// `-` or the link peer's address), names each NIC after the plan by its MAC, takes the
/// management address by DHCP and the link addresses as written, and prints one line per check:
/// `LAB-GUEST-MGMT: <ip>` and `LAB-GUEST-PING: <peer> ok|fail`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /run /var/run /tmp
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p failover net_failover virtio_net evdev button virtio_blk crc16 mbcache jbd2 crc32c_generic ext4; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
tag=labroot
for arg in $(cat /proc/cmdline); do
  case $arg in lab.tag=*) tag=${arg#lab.tag=} ;; esac
done
echo "LAB-GUEST: up after $(cut -d' ' -f1 /proc/uptime)s"
# A domain with a disk (a zvol clone) boots off its first partition; others off the 9p share.
if [ -b /dev/vda ]; then
  n=0; while [ ! -b /dev/vda1 ] && [ $n -lt 20 ]; do sleep 0.1; n=$((n+1)); done
  root() { mount -t ext4 -o ro /dev/vda1 /root; }
  what="the disk's partition /dev/vda1"
else
  root() { mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=none "$tag" /root; }
  what="the 9p share $tag"
fi
if root; then
  echo "LAB-GUEST-HOSTNAME: $(cat /root/etc/hostname 2>&1)"
  [ -f /root/etc/lab-guest-marker ] && echo "LAB-GUEST-MARKER: $(cat /root/etc/lab-guest-marker)"
  # The bed's router image boots itself: its /sbin/lab-init takes over as PID 1.
  if [ -x /root/sbin/lab-init ]; then
    umount /proc /sys
    mount --move /dev /root/dev
    exec switch_root /root /sbin/lab-init
  fi
else
  echo "LAB-GUEST: cannot mount $what"
fi
plan=/root/etc/lab/interfaces
if [ -f "$plan" ]; then
  ip link set lo up
  # NICs come up as eth0, eth1 ... in PCI order: find each by its MAC, then name it after the plan.
  i=0
  while read -r name mac addr peer; do
    for d in /sys/class/net/*; do
      [ "$(cat "$d/address")" = "$mac" ] && ip link set "${d##*/}" name "lab$i" && break
    done
    i=$((i+1))
  done < "$plan"
  i=0
  while read -r name mac addr peer; do
    if ip link set "lab$i" name "$name" 2>/dev/null; then
      ip link set "$name" up
      case $addr in
        dhcp) udhcpc -i "$name" -n -q -t 20 -T 1 -s /bin/lab-dhcp >/dev/null 2>&1
              echo "LAB-GUEST-MGMT: $(ip -4 -o addr show dev "$name" | awk '{ split($4, a, "/"); print a[1] }')" ;;
        -) ;;
        *) ip addr add "$addr" dev "$name" ;;
      esac
    else
      echo "LAB-GUEST-NIC: $name ($mac) is missing"
    fi
    i=$((i+1))
  done < "$plan"
  # Every link peer, at once, in the background: each has a minute to come up.
  while read -r name mac addr peer; do
    [ "$peer" = - ] && continue
    ( n=0; while [ $n -lt 60 ]; do
        if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then echo "LAB-GUEST-PING: $peer ok"; exit; fi
        n=$((n+1)); sleep 1
      done; echo "LAB-GUEST-PING: $peer fail" ) &
  done < "$plan"
fi
# The ACPI power button (`virsh shutdown`, `lab stop`) powers the guest off, saying so.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/busybox sh\necho "LAB-GUEST: ACPI power off" > /dev/console\nsync\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod 755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /dev/null
# ssh for `lab ssh` and `lab exec`: the test bed's key, and the image's own keys.
hostname "$(cat /root/etc/hostname 2>/dev/null || echo guest)"
mkdir -p /home/root/.ssh /etc/dropbear
cat /etc/lab-testbed.pub /root/root/.ssh/authorized_keys > /home/root/.ssh/authorized_keys 2>/dev/null
chmod 700 /home/root/.ssh; chmod 600 /home/root/.ssh/authorized_keys
if dropbear -R -s -E -p 22 2>/dev/null; then echo "LAB-GUEST-SSH: up"; fi
# A shell on the serial console, for `lab console`.
export PS1='lab-guest:\h# '
while true; do setsid cttyhack sh; sleep 1; done
"#;

/// udhcpc's script: set the address it was offered.
const DHCP_SCRIPT: &str = r#"#!/bin/busybox sh
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface" ;;
esac
"#;

/// Kernel modules the initramfs loads, relative to the kernel's module tree.
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "fs/netfs/netfs",
    "fs/fscache/fscache",
    "net/9p/9pnet",
    "net/9p/9pnet_virtio",
    "fs/9p/9p",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "drivers/input/evdev",
    "drivers/acpi/button",
    "drivers/block/virtio_blk",
    "lib/crc16",
    "fs/mbcache",
    "fs/jbd2/jbd2",
    "crypto/crc32c_generic",
    "fs/ext4/ext4",
];

pub fn prepare(bed: &Testbed, step: &mut dyn FnMut(&str)) -> Result<()> {
    let dir = bed.dir.join("guest");
    let version = dir.join("version");
    // The guests trust the test bed's key: a new key (after `down --purge`) is a new initramfs.
    let key = bed.dir.join("ssh/id_ed25519.pub");
    let public = std::fs::read_to_string(&key).map_err(|source| Error::Io {
        path: key.clone(),
        source,
    })?;
    let wanted = format!("{GUEST_VERSION}\n{public}");
    if bed.guest_kernel().exists()
        && bed.guest_initrd().exists()
        && std::fs::read_to_string(&version).is_ok_and(|v| v == wanted)
    {
        return Ok(());
    }
    step("guest: fetching Debian's generic kernel (the cloud kernel has no 9p)");
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
        })
        .ok_or_else(|| msg("cannot resolve linux-image-amd64 to a versioned kernel package"))?
        .to_owned();
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("initramfs/lib/modules")).map_err(|source| Error::Io {
        path: work.clone(),
        source,
    })?;
    let w = work.display();
    // apt-get download runs as the `_apt` user: the directory must be writable by it.
    bash(&format!(
        "cd {w} && chmod 777 . && {{ apt-get download -q {package} >/dev/null 2>&1 || {{ apt-get update -q >/dev/null && apt-get download -q {package} >/dev/null; }}; }}\n\
         mkdir kernel && dpkg-deb --fsys-tarfile {package}_*.deb | tar -x -C kernel --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/fs/9p/*' \
           './lib/modules/*/kernel/net/9p/*' './lib/modules/*/kernel/fs/netfs/*' './lib/modules/*/kernel/fs/fscache/*' './lib/modules/*/kernel/drivers/virtio/*' \
           './lib/modules/*/kernel/net/core/failover.ko' './lib/modules/*/kernel/drivers/net/net_failover.ko' './lib/modules/*/kernel/drivers/net/virtio_net.ko' \
           './lib/modules/*/kernel/drivers/input/evdev.ko' './lib/modules/*/kernel/drivers/acpi/button.ko' \
           './lib/modules/*/kernel/drivers/block/virtio_blk.ko' './lib/modules/*/kernel/lib/crc16.ko' './lib/modules/*/kernel/fs/mbcache.ko' \
           './lib/modules/*/kernel/fs/jbd2/*' './lib/modules/*/kernel/crypto/crc32c_generic.ko' './lib/modules/*/kernel/fs/ext4/*'"
    ))?;
    let mut script = format!(
        "cd {w}\nkm=$(echo kernel/lib/modules/*/kernel)\nmkdir -p initramfs/bin initramfs/proc initramfs/sys initramfs/dev initramfs/root\n"
    );
    for m in MODULES {
        script.push_str(&format!("cp $km/{m}.ko initramfs/lib/modules/\n"));
    }
    script.push_str("cp /bin/busybox initramfs/bin/busybox\n");
    // dropbear and the libraries it links, for ssh into the guests.
    script.push_str(
        "cp /usr/sbin/dropbear initramfs/bin/dropbear\n\
         for lib in $(ldd /usr/sbin/dropbear | grep -o '/[^ ]*'); do\n\
         \x20 mkdir -p initramfs$(dirname $lib) && cp -L $lib initramfs$lib\n\
         done\n\
         mkdir -p initramfs/etc\n\
         echo 'root:x:0:0:root:/home/root:/bin/sh' > initramfs/etc/passwd\n\
         echo 'root:*:19000:0:99999:7:::' > initramfs/etc/shadow\n\
         echo 'root:x:0:' > initramfs/etc/group\n\
         echo /bin/sh > initramfs/etc/shells\n",
    );
    bash(&script)?;
    write_file(&work.join("initramfs/init"), INIT)?;
    write_file(&work.join("initramfs/etc/lab-testbed.pub"), &public)?;
    write_file(&work.join("initramfs/bin/lab-dhcp"), DHCP_SCRIPT)?;
    bash(&format!(
        "cd {w} && chmod 755 initramfs/init initramfs/bin/lab-dhcp && (cd initramfs && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > {d}/initrd.cpio.gz.tmp\n\
         mv {d}/initrd.cpio.gz.tmp {d}/initrd.cpio.gz\ncp kernel/boot/vmlinuz-* {d}/vmlinuz",
        d = dir.display()
    ))?;
    // QEMU boots an uncompressed ELF vmlinux through PVH, skipping real-mode setup and the
    // decompressor: ~2.3 s instead of ~5 s to the first console line under TCG.
    let unpack = "import lzma, sys\n\
        data = open(sys.argv[1], 'rb').read()\n\
        start = data.find(b'\\xfd7zXZ\\x00')\n\
        assert start > 0, 'no xz stream in the bzImage'\n\
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])\n\
        assert elf[:4] == b'\\x7fELF', 'not an ELF kernel'\n\
        open(sys.argv[2], 'wb').write(elf)\n";
    let kernel = bed.guest_kernel();
    let tmp = kernel.with_extension("tmp");
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| run(Command::new(p).arg("-V")).is_ok());
    let unpacked = python.is_some_and(|p| {
        run(Command::new(p)
            .args(["-c", unpack])
            .arg(dir.join("vmlinuz"))
            .arg(&tmp))
        .is_ok()
    });
    if unpacked {
        std::fs::rename(&tmp, &kernel).map_err(|source| Error::Io {
            path: kernel.clone(),
            source,
        })?;
    } else {
        // Slower to boot, but it boots.
        std::fs::copy(dir.join("vmlinuz"), &kernel).map_err(|source| Error::Io {
            path: kernel.clone(),
            source,
        })?;
    }
    let _ = std::fs::remove_dir_all(&work);
    write_file(&version, &wanted)?;
    step(&format!("guest: {package} ready"));
    Ok(())
}
