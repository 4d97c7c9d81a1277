# lab doctor's look at one hypervisor, in one round trip. Positional: nonce, pool, proto, the
# libvirt network of the lab's management NICs (or -), then the underlay checks: `listen
# ADDR PORT MESSAGE` waits for MESSAGE on that UDP port, `send ADDR PORT MESSAGE` sends it
# there for a few seconds. Every line it prints starts with the nonce.
n=$1 pool=$2 proto=$3 net=$4
shift 4
export LC_ALL=C
say() { printf '%s %s\n' "$n" "$*"; }
# The UDP ports bound here, before this probe's own listeners bind any.
for f in /proc/net/udp /proc/net/udp6; do
  [ -r "$f" ] && awk -v n="$n" 'NR > 1 { split($2, a, ":"); print n, "udp", a[2] }' "$f"
done
# Then the underlay checks: every hypervisor's probe runs at once, but sshd and the shell
# start sooner on some hosts than on others, so senders keep at it for 12 s and listeners
# wait 15 s.
bg=
while [ $# -ge 4 ]; do
  what=$1 addr=$2 port=$3 msg=$4
  shift 4
  if ! command -v perl >/dev/null 2>&1; then say "$what" "$addr" "$port" noperl; continue; fi
  case $what in
  listen)
    ( out=$(perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], LocalPort => $ARGV[1], Proto => "udp")
          or do { print "bind\n"; exit 0 };
        $SIG{ALRM} = sub { print "silent\n"; exit 0 };
        alarm 15;
        while (1) { $s->recv(my $m, 512); if ($m eq $ARGV[2]) { print "heard\n"; exit 0 } }
      ' "$addr" "$port" "$msg" 2>/dev/null)
      say listen "$addr" "$port" "${out:-error}" ) &
    bg="$bg $!" ;;
  send)
    ( perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], Proto => "udp") or exit 1;
        for (1 .. 60) { $s->send($ARGV[2]); select(undef, undef, undef, 0.2) }
      ' "$addr" "$port" "$msg" 2>/dev/null
      say send "$addr" "$port" "rc=$?" ) &
    bg="$bg $!" ;;
  esac
done
for t in zfs zpool rsync flock timeout ip virsh awk; do
  if command -v "$t" >/dev/null 2>&1; then say tool "$t" yes; else say tool "$t" no; fi
done
if dnsmasq --version >/dev/null 2>&1; then say tool dnsmasq yes; else say tool dnsmasq no; fi
q=-
for c in qemu-system-x86_64 kvm /usr/libexec/qemu-kvm; do
  if command -v "$c" >/dev/null 2>&1; then q=$(command -v "$c"); break; fi
done
say qemu "$q"
v=$(zfs version 2>/dev/null | head -n 1)
say zfs_version "${v:--}"
# exact bytes where zpool has -p; zfs-fuse's has neither -p nor `get -H`
p=$(zpool list -H -p -o health,size,free "$pool" 2>/dev/null) || p=$(zpool list -H -o health,size,free "$pool" 2>&1)
say pool "$?" $p
v=$(zpool get version "$pool" 2>/dev/null | awk 'NR > 1 { print $3; exit }')
say pool_version "${v:-?}"
zpool get all "$pool" 2>/dev/null | awk -v n="$n" 'NR > 1 && $2 ~ /^feature@/ { sub(/^feature@/, "", $2); print n, "feature", $2, $3 }'
t=$(zfs get -H -o value type "$proto" 2>/dev/null)
say proto "$?" "${t:--}"
zfs list -H -o name -t snapshot -d 1 "$proto" 2>/dev/null | awk -v n="$n" -F@ '{ print n, "snap", $2 }'
out=$(virsh -q -c qemu:///system version 2>&1)
say libvirt "$?" $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)
virsh -q -c qemu:///system list --name 2>/dev/null | awk -v n="$n" 'NF { print n, "domain", $1 }'
k=none
[ -c /dev/kvm ] && k=dev
[ -d /sys/module/kvm_pvm ] && k=pvm
virsh -q -c qemu:///system domcapabilities --virttype kvm >/dev/null 2>&1 && caps=yes || caps=no
say kvm "$k" "$caps"
ip -o -4 addr show 2>/dev/null | awk -v n="$n" '{ print n, "addr", $2, $4 }'
if [ "$net" != - ]; then
  b=$(virsh -q -c qemu:///system net-info "$net" 2>/dev/null | awk '$1 == "Bridge:" { print $2 }')
  say netbridge "${b:--}"
fi
for p in $bg; do wait "$p"; done
say end
