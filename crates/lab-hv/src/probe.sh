# The probe of a hypervisor (see PROBE in state.rs). Arguments: pool, proto dataset,
# detail (`nics` or not), the marker namespace, `domain address` pairs to look at for an ssh
# banner (one word list, with `nics` only; `none`: one word, no pair), a nonce.
pool=$1 proto=$2 detail=$3 ns=$4 ready=$5 m="#$6" nonce=$6
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
# The pool's datasets and snapshots, from one listing (each listing walks the whole pool,
# which costs zfs-fuse about a millisecond per dataset): names only, which hold no tab or
# newline, so a property value read after them cannot invent one.
echo "$m names"
all=$(zfs list -H -o name -t filesystem,volume,snapshot -r "$pool"); rc=$?
names=$(printf '%s\n' "$all" | grep -v '@')
snaps=$(printf '%s\n' "$all" | grep '@')
if [ -n "$names" ]; then printf '%s\n' "$names"; fi
echo "$m rc $rc"
echo "$m datasets"
if [ -n "$names" ]; then
  printf '%s\n' "$names" | xargs -d '\n' zfs get -H -p -o name,property,value,source origin,mounted,type,lab:lab,lab:id,lab:node,lab:owner,lab:origin,lab:origin-guid,lab:overlay-sha256,lab:created,lab:state,lab:dhcp-host,lab:synced,lab:sync-error
  echo "$m rc $?"
else
  echo "$m rc 0"
fi
# Every snapshot with its `lab:snapshot`, read as datasets are: those `lab snapshot` took
# of clones carry one.
echo "$m labsnaps"
if [ -n "$snaps" ]; then printf '%s\n' "$snaps"; fi
echo "$m rc $rc"
echo "$m labsnapprops"
if [ -n "$snaps" ]; then
  printf '%s\n' "$snaps" | xargs -d '\n' zfs get -H -p -o name,property,value,source lab:snapshot,creation,createtxg,used
  echo "$m rc $?"
else
  echo "$m rc 0"
fi
echo "$m domains"
virsh -q list --all; echo "$m rc $?"
echo "$m markers"
uuids=$(virsh -q list --all --uuid); rc=$?
# `each_domain CMD ARGS`: every domain's name and what `virsh CMD UUID ARGS` says (errors
# too), from one virsh: one connection to libvirtd for them all (a virsh of its own costs
# 0.1 s on a busy host, so a thousand domains cost seconds). Domains go by UUID: no name
# reaches virsh's command line. Around each answer, lines of the nonce's own: `lab-NONCE
# UUID` and the domain's name before it, `lab-NONCE -` right before it, `lab-NONCE .` after
# it (virsh keeps its output and errors in order). `answers` then prints `NAME<TAB>LINE` for
# each line of an answer and `NAME<TAB>lab-NONCE .` at its end: a domain without that end
# was not answered whole.
# (Two hundred domains per virsh: its command line stays far below the 128 KiB an argument
# may have.)
each_domain() {
  batch= n=0
  for u in $uuids; do
    batch="$batch echo lab-$nonce $u; domname $u; echo lab-$nonce -; $1 $u $2; echo lab-$nonce .;"
    n=$((n + 1))
    if [ $n -eq 200 ]; then virsh "$batch" 2>&1; batch= n=0; fi
  done
  [ -z "$batch" ] || virsh "$batch" 2>&1
}
answers() {
  awk -v sep="lab-$nonce" '
    $1 == sep && $2 == "-" { state = "answer"; next }
    $1 == sep && $2 == "." { if (ok) print name "\t" sep " ."; state = ""; next }
    $1 == sep { name = ""; ok = 0; state = "name"; next }
    state == "name" { if (name == "" && $0 != "") name = $0; ok = name !~ /^error: /; next }
    state == "answer" && ok { print name "\t" $0 }
  '
}
# A domain's marker: what `metadata` printed; none when it says "metadata not found"; `?`
# (unknown) for any other error, or an answer that did not end. A domain gone since the list
# is left out (its `domname` failed).
each_domain metadata "--uri '$ns' --config" | answers | awk -F '\t' -v end="lab-$nonce ." '
  { name = $1; sub(/^[^\t]*\t/, "") }
  !(name in seen) { seen[name] = 1; order[++n] = name; text[name] = "" }
  $0 == end { done[name] = 1; next }
  /metadata not found/ { nf[name] = 1; next }
  /^error: / { bad[name] = 1; next }
  { text[name] = text[name] $0 }
  END {
    for (i = 1; i <= n; i++) {
      d = order[i]
      if (!done[d] || bad[d] || (nf[d] && text[d] != "")) print d "\t?"
      else print d "\t" text[d]
    }
  }'
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
  # Each domain's NICs, in order, from its definition (live when it runs): MAC, link state
  # (`lab link down` sets it; a NIC without a <link state=...> is up) and a UDP wire's
  # `LOCAL>REMOTE`; then the NICs `create` plugged in through QEMU's monitor (libvirt cannot
  # hot-plug a udp interface), which the live definition's metadata names, marked `hot`.
  each_domain dumpxml "" | answers | awk -F '\t' '
    function attr(s, a) { return match(s, " " a "=.[^\047\"]*") ? substr(s, RSTART + length(a) + 3, RLENGTH - length(a) - 3) : "" }
    $2 ~ /^ *<interface / { nic = 1; udp = $2 ~ /type=.udp./; mac = ""; link = "up"; src = ""; loc = ""; next }
    nic && match($2, /<mac address=.[0-9a-fA-F:]+/) { mac = substr($2, RSTART + 14, RLENGTH - 14) }
    nic && $2 ~ /<link state=.down./ { link = "down" }
    nic && udp && $2 ~ /<source address=/ { src = attr($2, "address") ":" attr($2, "port") }
    nic && udp && $2 ~ /<local address=/ { loc = attr($2, "address") ":" attr($2, "port") }
    nic && $2 ~ /^ *<\/interface>/ { nic = 0; if (mac != "") print $1 "\t" mac "\t" link "\t" (src == "" ? "-" : loc ">" src) }
    $2 ~ /<([a-z]+:)?nic .*local=/ {
      s = $2
      while (match(s, /<([a-z]+:)?nic [^>]*>/)) {
        e = substr(s, RSTART, RLENGTH); s = substr(s, RSTART + RLENGTH)
        print $1 "\t" attr(e, "mac") "\t" (attr(e, "link") == "down" ? "down" : "up") "\t" attr(e, "local") ">" attr(e, "remote") "\thot"
      }
    }'
  # `lab link set`'s relays (each one direction of one link, labelled DOMAIN/MAC).
  echo "$m relays"
  ps -eo args= | awk '$2 == "relay" && $3 == "--socket" && / --label /'; echo "$m rc 0"
  # `status`'s readiness, in this same round trip: the running domains among these whose
  # node answers with an ssh banner within two seconds (an emulated guest's sshd may take
  # one to fork), all at once.
  echo "$m ready"
  # The running domains, from one virsh (not one per pair: a thousand of them cost seconds).
  running=" $(virsh -q list --name | tr '\n' ' ') "
  set -f; set -- $ready; set +f
  while [ $# -ge 2 ]; do
    dom=$1 ip=$2; shift 2
    case $running in *" $dom "*) ;; *) continue ;; esac
    (
      timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/22" && read -r -t 2 l <&3 && case $l in SSH-*) ;; *) exit 1 ;; esac' "$ip" 2>/dev/null &&
        printf '%s\n' "$dom"
    ) &
  done
  wait
  echo "$m rc 0"
fi
echo "$m end"
