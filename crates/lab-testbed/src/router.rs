//! The bed's proto image: a Debian root filesystem with FRR, BIRD 2, ifupdown, OpenSSH,
//! tcpdump and ping, built from Debian's packages with mmdebstrap and kept as a tarball
//! (`<dir>/image/rootfs.tar`, rebuilt when its package set, its init or the bed's key changes).
//!
//! Guests boot it through the bed's initramfs, which mounts the clone read-only and hands over
//! to the image's `/sbin/lab-init`: a small init in place of systemd, because systemd costs
//! about 20 s per boot under TCG. It reads the ordinary Debian files an overlay writes
//! (`/etc/hostname`, the udev rule naming each NIC by its MAC, `/etc/network/interfaces`,
//! `/etc/frr/*`, `/etc/bird/bird.conf`) and starts what systemd would: the interfaces as
//! ifupdown would set them up (read by the init itself: `ifup` costs about 3 s per interface
//! under TCG), sshd, and FRR and BIRD when their units are enabled and not masked, the way an
//! overlay turns one off on a systemd image (`/etc/systemd/system/bird.service -> /dev/null`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result, Testbed, msg, run, write_file};

/// What the image holds, beyond Debian's minbase.
const PACKAGES: &[&str] = &[
    "frr",
    "bird2",
    "iproute2",
    "ifupdown",
    "udhcpc",
    "busybox-static",
    "openssh-server",
    "tcpdump",
    "iputils-ping",
    "procps",
];

/// Bumped when the way the image is built changes.
const IMAGE_VERSION: &str = "2";

/// PID 1 of the image. Prints the same `LAB-GUEST-*` lines as the bed's plain guests, which
/// the tests and the demo read, and `LAB-GUEST-ROUTING:` per daemon it starts.
const LAB_INIT: &str = r##"#!/bin/sh
# PID 1 of the lab test bed's router image: what systemd would do, from the usual files.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
bb=/bin/busybox
mount -t proc proc /proc
mount -t sysfs sys /sys
[ -c /dev/null ] || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
# The root is read-only (a clone is the lab's, not the guest's): the usual writable places.
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=1777 tmp /var/tmp
mount -t tmpfs -o mode=755 log /var/log
mkdir -p /run/lock /run/sshd /run/network /run/frr /run/bird /var/log/frr /var/log/bird
chown frr:frr /run/frr /var/log/frr
chown bird:bird /run/bird /var/log/bird
$bb hostname -F /etc/hostname 2>/dev/null
ip link set lo up
say() { echo "$*" > /dev/console; }

# NIC names, as udev would give them from the overlay's rule (ATTR{address}=="..", NAME="..").
rules=/etc/udev/rules.d/70-lab-interfaces.rules
sed -n 's/.*ATTR{address}=="\([0-9a-fA-F:]*\)".*NAME="\([^"]*\)".*/\1 \2/p' "$rules" 2>/dev/null > /run/lab-nics
# Renamed through temporary names (two NICs may swap names), in one `ip -batch`; shell
# builtins only in the loops (a program costs about 0.1 s to start under TCG).
: > /run/lab-rename
i=0
while read -r mac name; do
  for d in /sys/class/net/*; do
    read -r a < "$d/address" || continue
    [ "$a" = "$mac" ] && echo "link set dev ${d##*/} name lab$i" >> /run/lab-rename && break
  done
  i=$((i+1))
done < /run/lab-nics
i=0
while read -r mac name; do
  echo "link set dev lab$i name $name" >> /run/lab-rename
  i=$((i+1))
done < /run/lab-nics
ip -force -batch /run/lab-rename 2>/dev/null
while read -r mac name; do
  [ -e "/sys/class/net/$name" ] || say "LAB-GUEST-NIC: $name ($mac) is missing"
done < /run/lab-nics

# /etc/network/interfaces, as `ifup -a` reads it, but in one `ip -batch` (ifup execs a dozen
# programs per interface, about 3 s each under TCG): static addresses (DAD skipped), links up,
# `up` lines, and DHCP on the interfaces that ask for it.
awk '
  $1 == "auto" || $1 == "allow-hotplug" { for (i = 2; i <= NF; i++) print "link set dev " $i " up" }
  $1 == "iface" { dev = $2; fam = $3; method = $4
                  if (method == "dhcp" && fam == "inet") print "#dhcp " dev }
  $1 == "address" && method == "static" { print "addr add " $2 " dev " dev (fam == "inet6" ? " nodad" : "") }
  ($1 == "up" || $1 == "post-up") { $1 = ""; print "#up " dev " " $0 }
' /etc/network/interfaces 2>/dev/null > /run/lab-net
grep -v '^#' /run/lab-net | ip -batch - 2>/run/lab-net.err || say "LAB-GUEST: interfaces: $(head -n 3 /run/lab-net.err | tr '\n' ' ')"
grep '^#up ' /run/lab-net | while read -r _ dev line; do IFACE=$dev sh -c "$line"; done
for dev in $(sed -n 's/^#dhcp //p' /run/lab-net); do
  $bb udhcpc -i "$dev" -n -q -t 20 -T 1 -s /etc/udhcpc/default.script >/dev/null 2>&1
done
mgmt=$(head -n 1 /run/lab-nics | cut -d' ' -f2)
if [ -n "$mgmt" ] && grep -q "^#dhcp $mgmt$" /run/lab-net; then
  say "LAB-GUEST-MGMT: $(ip -4 -o addr show dev "$mgmt" | awk '{ split($4, a, "/"); print a[1] }')"
fi

# Each link's peer: the other address of its /31, given a minute to answer.
ip -4 -o addr show | awk '$4 ~ /\/31$/ { print $4 }' | while read -r cidr; do
  a=${cidr%/*}; last=${a##*.}; peer=${a%.*}.$((last ^ 1))
  ( n=0; while [ $n -lt 60 ]; do
      if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then say "LAB-GUEST-PING: $peer ok"; exit; fi
      n=$((n+1)); sleep 1
    done; say "LAB-GUEST-PING: $peer fail" ) &
done

# A service runs when its unit is enabled and not masked.
enabled() {
  [ -e "/etc/systemd/system/multi-user.target.wants/$1.service" ] || return 1
  [ "$(readlink -f "/etc/systemd/system/$1.service")" != /dev/null ]
}
# sshd -r: no re-exec per connection, which costs a second before the banner under TCG.
if enabled ssh; then
  mkdir -p /run/ssh && ssh-keygen -q -t ed25519 -N '' -f /run/ssh/host_ed25519 \
    && /usr/sbin/sshd -r -h /run/ssh/host_ed25519 \
         -o 'AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/lab-testbed.pub' \
    && say "LAB-GUEST-SSH: up"
fi
if enabled frr; then
  /usr/lib/frr/frrinit.sh start >/var/log/frr/init.log 2>&1 \
    && say "LAB-GUEST-ROUTING: frr started" || say "LAB-GUEST-ROUTING: frr failed"
fi
if enabled bird; then
  bird -c /etc/bird/bird.conf -s /run/bird/bird.ctl -u bird -g bird >/var/log/bird/init.log 2>&1 \
    && say "LAB-GUEST-ROUTING: bird started" || say "LAB-GUEST-ROUTING: bird failed"
fi

# The ACPI power button (`virsh shutdown`, `lab stop`) powers the guest off, saying so.
mkdir -p /run/acpi/PWRF
printf '#!/bin/sh\necho "LAB-GUEST: ACPI power off" > /dev/console\nsync\n/bin/busybox poweroff -f\n' \
  > /run/acpi/PWRF/00000080
chmod 755 /run/acpi/PWRF/00000080
$bb acpid -c /run/acpi -l /dev/null
# A shell on the serial console, for `lab console`; PID 1 reaps what ends.

while true; do $bb setsid $bb cttyhack /bin/bash -l; sleep 1; done
"##;

/// Where the image's tarball is kept.
pub(crate) fn tarball(bed: &Testbed) -> PathBuf {
    bed.dir.join("image/rootfs.tar")
}

/// A short name for what the image holds now, recorded on the proto (`lab-testbed:image`): a
/// proto of another version is made again.
pub(crate) fn version(bed: &Testbed) -> Result<String> {
    let key = std::fs::read_to_string(bed.dir.join("ssh/id_ed25519.pub")).map_err(|source| {
        Error::Io {
            path: bed.dir.join("ssh/id_ed25519.pub"),
            source,
        }
    })?;
    let text = format!("{IMAGE_VERSION}\n{}\n{LAB_INIT}\n{key}", PACKAGES.join(","));
    // FNV-1a: a label for a cache, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// Builds the image's tarball unless the one there is of this version.
pub(crate) fn prepare(bed: &Testbed, step: &mut dyn FnMut(&str)) -> Result<()> {
    let dir = bed.dir.join("image");
    let stamp = dir.join("version");
    let version = version(bed)?;
    if tarball(bed).exists() && std::fs::read_to_string(&stamp).is_ok_and(|v| v.trim() == version) {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    step("image: mmdebstrap of Debian bookworm with FRR, BIRD 2, ifupdown and OpenSSH");
    let init = dir.join("lab-init");
    write_file(&init, LAB_INIT)?;
    let key = bed.dir.join("ssh/id_ed25519.pub");
    let tmp = dir.join("rootfs.tmp.tar");
    let _ = std::fs::remove_file(&tmp);
    let mut c = Command::new("mmdebstrap");
    c.args([
        "--variant=minbase",
        "--format=tar",
        "--mode=root",
        "--aptopt=APT::Install-Recommends \"false\"",
    ]);
    // Documentation, manuals and translations: a third of the image, read by no guest.
    for path in [
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/info/*",
        "/usr/share/locale/*",
    ] {
        c.arg(format!("--dpkgopt=path-exclude={path}"));
    }
    c.arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!(
            "--customize-hook=install -m 755 {} \"$1/sbin/lab-init\"",
            init.display()
        ))
        .arg(format!(
            "--customize-hook=install -m 644 {} \"$1/etc/ssh/lab-testbed.pub\"",
            key.display()
        ))
        .arg("--customize-hook=echo proto > \"$1/etc/hostname\"")
        .args(["bookworm"])
        .arg(&tmp);
    let started = std::time::Instant::now();
    run(&mut c)?;
    std::fs::rename(&tmp, tarball(bed)).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    write_file(&stamp, &format!("{version}\n"))?;
    let size = std::fs::metadata(tarball(bed)).map_or(0, |m| m.len());
    step(&format!(
        "image: {} MiB in {:.1} s",
        size >> 20,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs `script` with `sh -c` on hypervisor `k`, its stdin read from `file`.
pub(crate) fn feed(bed: &Testbed, k: u32, script: &str, file: &Path) -> Result<()> {
    let stdin = std::fs::File::open(file).map_err(|source| Error::Io {
        path: file.to_owned(),
        source,
    })?;
    let script = format!("set -eu\n{script}");
    let mut c = bed.command(k, "sh")?;
    if bed.is_vm(k) {
        c.args(["-c", &lab_exec::quote(&script)]);
    } else {
        c.args(["-c", &script]);
    }
    let out = c
        .stdin(Stdio::from(stdin))
        .output()
        .map_err(|e| msg(format!("hv{k}: cannot run sh: {e}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("hv{k}: {script}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Destroys hypervisor `k`'s proto (and its clones) when it was made from another version of
/// the image than `version`: it is the bed's own, and `seed` makes it again.
pub(crate) fn forget_stale(
    bed: &Testbed,
    k: u32,
    proto: &str,
    version: &str,
    step: &mut dyn FnMut(&str),
) -> Result<()> {
    let Ok(have) = bed.exec(
        k,
        &[
            "zfs",
            "get",
            "-H",
            "-o",
            "value",
            "lab-testbed:image",
            proto,
        ],
    ) else {
        return Ok(());
    };
    if have.trim() == version {
        return Ok(());
    }
    // zfs-fuse can call a dataset it has just unmounted busy for a moment.
    bed.ssh_script(
        k,
        &format!(
            "n=0; until zfs destroy -R -f {proto}; do n=$((n+1)); [ $n -lt 5 ] || exit 1; \
             zfs unmount -f {proto} 2>/dev/null || true; sleep 1; done"
        ),
    )?;
    step(&format!(
        "seed: hv{k}'s {proto} was made from another image ({}): destroyed with its clones",
        have.trim()
    ));
    Ok(())
}
