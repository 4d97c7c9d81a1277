# The probe of a hypervisor (see PROBE in state.rs). Arguments: pool, proto dataset,
# detail (`nics` or not), the marker namespace, `domain address` pairs to look at for an ssh
# banner (one word list, with `nics` only; `none`: one word, no pair), a nonce.
pool=$1 proto=$2 detail=$3 ns=$4 ready=$5 m="#$6"
echo "$m snapshots"
out=$(zfs list -H -o name "$proto" 2>&1); r=$?
if [ $r -eq 0 ]; then
  zfs get -H -p -o name,property,value guid,creation,createtxg,userrefs -r "$proto"; echo "$m rc $?"
elif printf '%s' "$out" | grep -q 'dataset does not exist'; then
  echo "$m rc absent"
else
  echo "$m rc $r"
fi
# What this zfs can do: a pool with feature flags (version `-`) is OpenZFS (resumable and
# compressed sends, raw sends, volmode); a numbered one (zfs-fuse: 23) can do none of that.
echo "$m zfs"
version=$(zpool get version "$pool" 2>/dev/null | awk 'NR == 2 { print $3 }')
printf 'version\t%s\n' "$version"
for tool in pv mbuffer; do
  command -v "$tool" >/dev/null 2>&1 && printf 'tool\t%s\n' "$tool"
done
if [ "$version" = - ] && [ $r -eq 0 ]; then
  # Each on its own: an OpenZFS without encryption (before 0.8) has no such property.
  for p in receive_resume_token encryption; do
    v=$(zfs get -H -o value "$p" "$proto" 2>/dev/null) && printf 'prop\t%s\t%s\n' "$p" "$v"
  done
fi
echo "$m rc 0"
# The holds on the proto's held snapshots; zfs-fuse cannot list them (its `zfs holds` needs
# pyzfs), though it can take and release them: `rc unsupported`, the counts stand.
echo "$m holds"
held=
[ $r -eq 0 ] && held=$(zfs get -H -p -o name,value userrefs -r "$proto" | awk -F '\t' 'index($1, "@") && $2 > 0 { print $1 }')
if [ -n "$held" ]; then
  out=$(printf '%s\n' "$held" | xargs -d '\n' zfs holds -H 2>&1); hr=$?
  if [ $hr -eq 0 ]; then
    printf '%s\n' "$out"
    echo "$m rc 0"
  elif printf '%s' "$out" | grep -q 'pyzfs'; then
    echo "$m rc unsupported"
  else
    printf '%s\n' "$out" >&2
    echo "$m rc $hr"
  fi
else
  echo "$m rc 0"
fi
echo "$m names"
names=$(zfs list -H -o name -t filesystem,volume -r "$pool"); rc=$?
if [ -n "$names" ]; then printf '%s\n' "$names"; fi
echo "$m rc $rc"
echo "$m datasets"
if [ -n "$names" ]; then
  printf '%s\n' "$names" | xargs -d '\n' zfs get -H -p -o name,property,value,source origin,mounted,type,lab:lab,lab:id,lab:node,lab:owner,lab:origin,lab:origin-guid,lab:overlay-sha256,lab:created,lab:state,lab:dhcp-host,lab:synced,lab:sync-error
  echo "$m rc $?"
else
  echo "$m rc 0"
fi
echo "$m domains"
virsh -q list --all; echo "$m rc $?"
echo "$m markers"
doms=$(virsh -q list --all --name); rc=$?
# `each_domain F`: F DOMAIN for every domain, sixteen at a time (each virsh is a connection to
# libvirtd: 0.1 s on a busy host); F writes its answer in one short write, whole on the pipe.
each_domain() {
  n=0
  while read -r dom; do
    [ -n "$dom" ] || continue
    "$1" "$dom" &
    n=$((n + 1)); [ $((n % 16)) -ne 0 ] || wait
  done <<EOF_DOMS
$doms
EOF_DOMS
  wait
}
marker() {
  out=$(virsh -q metadata "$1" --uri "$ns" --config 2>&1); r=$?
  if [ $r -eq 0 ]; then
    printf '%s\t%s\n' "$1" "$(printf '%s' "$out" | tr -d '\n')"
  elif printf '%s' "$out" | grep -q 'metadata not found'; then
    printf '%s\t\n' "$1"
  else
    printf '%s\t?\n' "$1"
  fi
}
each_domain marker
echo "$m rc $rc"
echo "$m networks"
nets=$(virsh -q net-list --all); rc=$?
printf '%s\n' "$nets" | while read -r name state rest; do
  [ -n "$name" ] || continue
  info=$(virsh -q net-info "$name" 2>/dev/null)
  uuid=$(printf '%s\n' "$info" | awk '$1 == "UUID:" { print $2 }')
  bridge=$(printf '%s\n' "$info" | awk '$1 == "Bridge:" { print $2 }')
  # lab's own networks: the mark; an operator's: its IPv4 prefixes and DHCP reservations
  # (`reserve` adds to them, never over someone else's).
  dhcp=
  case $name in
    lab-*) mark=$(virsh -q net-dumpxml "$name" 2>/dev/null | grep -o '<lab:net [^>]*>' | head -n 1) ;;
    *) mark= dhcp=$(virsh -q net-dumpxml "$name" 2>/dev/null | grep -o -e '<ip [^>]*>' -e '<host [^>]*mac=[^>]*>' | tr -d '\n') ;;
  esac
  # What is plugged into its bridge (a running domain's tap): a network in use is never
  # restarted or removed under it, whoever's it is.
  ports=0
  # (older libvirt keeps a dummy <bridge>-nic on every bridge it makes: no one's)
  [ -n "$bridge" ] && [ -d "/sys/class/net/$bridge/brif" ] && ports=$(ls "/sys/class/net/$bridge/brif" | grep -cvx -- "$bridge-nic")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$state" "$uuid" "$mark" "$bridge" "$ports" "$dhcp"
done
echo "$m rc $rc"
# The host's IPv4 addresses: a management prefix already on an interface cannot be served again.
echo "$m addrs"
out=$(ip -4 -o addr show); r=$?
printf '%s\n' "$out" | awk 'NF >= 4 { print $2 "\t" $4 }'; echo "$m rc $r"
# The UDP ports bound on this host (hex, as the kernel lists them): a wire's port that someone
# else holds would hand that one this lab's frames (QEMU binds with SO_REUSEADDR).
echo "$m udp"
f=/proc/net/udp; [ -r /proc/net/udp6 ] && f="$f /proc/net/udp6"
# Unconnected sockets only (state 07): a client's connected socket is no one's wire.
awk 'FNR > 1 && $4 == "07" { n = split($2, a, ":"); print a[n] }' $f; echo "$m rc $?"
if [ "$detail" = nics ]; then
  echo "$m nics"
  # Each domain's NICs in one write (their order matters).
  nics() {
    out=$(virsh -q domiflist "$1" 2>/dev/null | while read -r _ _ _ _ mac; do printf '%s\t%s\n' "$1" "$mac"; done)
    [ -z "$out" ] || printf '%s\n' "$out"
  }
  each_domain nics
  # `status`'s readiness, in this same round trip: the running domains among these whose
  # node answers with an ssh banner within two seconds (an emulated guest's sshd may take
  # one to fork), all at once.
  echo "$m ready"
  set -f; set -- $ready; set +f
  while [ $# -ge 2 ]; do
    dom=$1 ip=$2; shift 2
    (
      [ "$(virsh -q domstate "$dom" 2>/dev/null | head -n 1)" = running ] || exit 0
      timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/22" && read -r -t 2 l <&3 && case $l in SSH-*) ;; *) exit 1 ;; esac' "$ip" 2>/dev/null &&
        printf '%s\n' "$dom"
    ) &
  done
  wait
  echo "$m rc 0"
fi
echo "$m end"
