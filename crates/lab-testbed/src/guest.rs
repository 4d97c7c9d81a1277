//! The test guests: Debian's generic kernel and a busybox initramfs that mounts the clone
//! over 9p (tag `labroot`) and prints its hostname on the serial console.

use std::process::Command;

use crate::{Error, Result, Testbed, bash, msg, run, write_file};

/// The guest's /init. Kernel arguments: `lab.tag=<9p tag>` (default labroot).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
tag=labroot
for arg in $(cat /proc/cmdline); do
  case $arg in lab.tag=*) tag=${arg#lab.tag=} ;; esac
done
echo "LAB-GUEST: up after $(cut -d' ' -f1 /proc/uptime)s"
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=none "$tag" /root; then
  echo "LAB-GUEST-HOSTNAME: $(cat /root/etc/hostname 2>&1)"
  [ -f /root/etc/lab-guest-marker ] && echo "LAB-GUEST-MARKER: $(cat /root/etc/lab-guest-marker)"
else
  echo "LAB-GUEST: cannot mount the 9p share $tag"
fi
while true; do sleep 3600; done
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
];

pub fn prepare(bed: &Testbed, step: &mut dyn FnMut(&str)) -> Result<()> {
    if bed.guest_kernel().exists() && bed.guest_initrd().exists() {
        return Ok(());
    }
    let dir = bed.dir.join("guest");
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
           './lib/modules/*/kernel/net/9p/*' './lib/modules/*/kernel/fs/netfs/*' './lib/modules/*/kernel/fs/fscache/*' './lib/modules/*/kernel/drivers/virtio/*'"
    ))?;
    let mut script = format!(
        "cd {w}\nkm=$(echo kernel/lib/modules/*/kernel)\nmkdir -p initramfs/bin initramfs/proc initramfs/sys initramfs/dev initramfs/root\n"
    );
    for m in MODULES {
        script.push_str(&format!("cp $km/{m}.ko initramfs/lib/modules/\n"));
    }
    script.push_str("cp /bin/busybox initramfs/bin/busybox\n");
    bash(&script)?;
    write_file(&work.join("initramfs/init"), INIT)?;
    bash(&format!(
        "cd {w} && chmod 755 initramfs/init && (cd initramfs && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > {d}/initrd.cpio.gz.tmp\n\
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
    step(&format!("guest: {package} ready"));
    Ok(())
}
