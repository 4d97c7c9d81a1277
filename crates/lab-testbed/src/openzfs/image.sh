#!/usr/bin/env bash
# Builds the root image of the test bed's OpenZFS hypervisors: Debian with Debian's own
# zfs-dkms, sshd, rsync, libvirt and QEMU. Run by lab-testbed (src/openzfs.rs) as root, one
# phase per call, so that `testbed up` can time each:
#
#   image.sh resolve DIR ZFS_SUITE   print "KERNEL_PACKAGE ZFS_VERSION" as the chroot will see them
#   image.sh bootstrap DIR           mmdebstrap the tree into DIR/rootfs
#   image.sh zfs DIR ZFS_SUITE       build zfs-dkms in the tree, for the tree's kernel
#   image.sh finish DIR              configure the tree, write DIR/root.raw, DIR/vmlinuz, DIR/initrd.img
#
# The Debian archive is the one the host's apt uses (never a name written here), with contrib
# added for zfs-dkms; DIR/apt is a private apt state so that the host's lists stay as they are.
set -euo pipefail
phase=$1 dir=$2
mkdir -p "$dir"
cd "$dir"

sources() {
  local codename
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  local main security
  main=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v s="$codename" '$2 == s { print $1; exit }')
  security=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v s="$codename-security" '$2 == s { print $1; exit }')
  [ -n "$main" ] || { echo "the host's apt has no $codename source to build from" >&2; exit 1; }
  local deb="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
  echo "$deb $main $codename main contrib"
  echo "$deb $main $codename-updates main contrib"
  [ -z "$security" ] || echo "$deb $security $codename-security main contrib"
  echo "$deb $main $codename-backports main contrib"
}

case $phase in
resolve)
  suite=$3
  mkdir -p apt/lists/partial apt/cache/archives/partial apt/etc/apt.conf.d apt/etc/preferences.d
  sources > apt/etc/sources.list
  cat > apt/apt.conf <<CONF
Dir::State "$dir/apt";
Dir::State::status "/var/lib/dpkg/status";
Dir::Cache "$dir/apt/cache";
Dir::Etc "$dir/apt/etc";
Dir::Etc::sourcelist "$dir/apt/etc/sources.list";
Dir::Etc::sourceparts "-";
APT::Default-Release "";
CONF
  export APT_CONFIG=$dir/apt/apt.conf
  apt-get -q update >/dev/null
  kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
  if [ "$suite" = stable ]; then
    zfs=$(apt-cache madison zfs-dkms | awk -F'|' '$3 !~ /backports/ { gsub(/ /, "", $2); print $2; exit }')
  else
    zfs=$(apt-cache madison zfs-dkms | awk -F'|' '$3 ~ /backports/ { gsub(/ /, "", $2); print $2; exit }')
  fi
  [ -n "$kernel" ] && [ -n "$zfs" ] || { echo "cannot resolve the kernel ($kernel) or zfs-dkms ($zfs)" >&2; exit 1; }
  echo "$kernel $zfs"
  ;;
bootstrap)
  rm -rf rootfs rootfs.tmp
  sources | grep -v -- '-backports ' > sources.list
  mmdebstrap --quiet --variant=minbase --aptopt='APT::Install-Recommends "false"' \
    --include=systemd-sysv,udev,kmod,iproute2,iputils-ping,openssh-server,rsync,gdisk,e2fsprogs,procps,pv,mbuffer,zstd,linux-image-amd64,linux-headers-amd64,initramfs-tools,dkms,libvirt-daemon-system,libvirt-daemon-driver-qemu,libvirt-clients,qemu-system-x86,dnsmasq-base,iptables,dbus \
    "$(. /etc/os-release && echo "$VERSION_CODENAME")" rootfs.tmp sources.list
  mv rootfs.tmp rootfs
  ;;
zfs)
  suite=$3
  rm -f rootfs/etc/apt/sources.list.d/*.list
  sources > rootfs/etc/apt/sources.list
  printf '#!/bin/sh\nexit 101\n' > rootfs/usr/sbin/policy-rc.d
  chmod +x rootfs/usr/sbin/policy-rc.d
  mounted=()
  cleanup() { for ((i=${#mounted[@]}-1; i>=0; i--)); do umount "${mounted[$i]}" || true; done; }
  trap cleanup EXIT
  for d in proc sys dev dev/pts; do mount --bind "/$d" "rootfs/$d"; mounted+=("rootfs/$d"); done
  target=()
  [ "$suite" = stable ] || target=(-t "$(. /etc/os-release && echo "$VERSION_CODENAME")-backports")
  chroot rootfs env DEBIAN_FRONTEND=noninteractive bash -c \
    "apt-get -q update >/dev/null && apt-get -y -q install --no-install-recommends ${target[*]} zfs-dkms zfsutils-linux zfs-zed >/dev/null"
  ls rootfs/lib/modules/*/updates/dkms/zfs.ko >/dev/null
  chroot rootfs apt-get clean
  rm -f rootfs/usr/sbin/policy-rc.d
  ;;
finish)
  r=rootfs
  echo lab-testbed-openzfs > $r/etc/hostname
  echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' > $r/etc/fstab
  # Each hypervisor's name, address, host key and ssh files come from its seed disk at boot.
  cat > $r/usr/local/sbin/lab-testbed-seed <<'SEED'
#!/bin/sh
# lab-testbed: this hypervisor's identity, from the seed disk `testbed up` wrote for it.
set -eu
i=0
while [ ! -b /dev/disk/by-id/virtio-seed ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /run/lab-seed
mount -o ro /dev/disk/by-id/virtio-seed /run/lab-seed
s=/run/lab-seed
hostname "$(cat $s/hostname)"
cat $s/hostname > /etc/hostname
ip link set lo up
dev=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$dev" up
ip addr add "$(cat $s/address)" dev "$dev"
rm -f /etc/ssh/ssh_host_*
install -m 600 $s/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 644 $s/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /root/.ssh && chmod 700 /root/.ssh
for f in authorized_keys config known_hosts id_ed25519; do install -m 600 $s/ssh/$f /root/.ssh/$f; done
mkdir -p /var/lib/lab-testbed/guest
cp $s/guest/* /var/lib/lab-testbed/guest/
umount /run/lab-seed
SEED
  chmod 755 $r/usr/local/sbin/lab-testbed-seed
  cat > $r/etc/systemd/system/lab-testbed-seed.service <<'UNIT'
[Unit]
Description=lab test bed: this hypervisor's name, address and keys
DefaultDependencies=no
After=systemd-udevd.service local-fs.target
Before=network.target ssh.service
Wants=systemd-udevd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/lab-testbed-seed

[Install]
WantedBy=multi-user.target
UNIT
  ln -sf /etc/systemd/system/lab-testbed-seed.service $r/etc/systemd/system/multi-user.target.wants/
  # Nothing the bed does not use runs at boot (each costs seconds under TCG).
  for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer \
           systemd-timesyncd.service zfs-zed.service zfs-share.service; do
    ln -sf /dev/null "$r/etc/systemd/system/$u"
  done
  # sshd: keys only, and the cheap key exchange (as on the namespace hypervisors).
  printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\nKexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n' \
    > $r/etc/ssh/sshd_config.d/lab-testbed.conf
  # The ARC stays small: the VM has 2 GiB.
  echo 'options zfs zfs_arc_max=268435456' > $r/etc/modprobe.d/lab-testbed-zfs.conf
  # libvirt: QEMU as root, as on the namespace hypervisors.
  printf '\n# lab-testbed\nuser = "root"\ngroup = "root"\n' >> $r/etc/libvirt/qemu.conf
  # the default network is not the bed's: lab makes its own
  rm -f $r/etc/libvirt/qemu/networks/autostart/default.xml
  rm -rf $r/var/cache/apt/* $r/var/lib/apt/lists/* $r/usr/share/doc/* $r/usr/share/man/*
  cp $r/boot/vmlinuz-* vmlinuz.tmp && mv vmlinuz.tmp vmlinuz
  cp $r/boot/initrd.img-* initrd.img.tmp && mv initrd.img.tmp initrd.img
  rm -f root.raw.tmp
  mkfs.ext4 -q -F -L labtbroot -d $r root.raw.tmp 4G
  mv root.raw.tmp root.raw
  ;;
*)
  echo "unknown phase $phase" >&2; exit 2 ;;
esac
