# The probe of a hypervisor (see PROBE in state.rs). Arguments: pool, proto dataset,
# detail (`normal`, `nics`, or `status`: NICs without the clones' snapshots), the marker
# namespace, `domain address` pairs to look at for an ssh banner (one word list, with
# `status` only; `none`: one word, no pair), a nonce.
pool=$1 proto=$2 detail=$3 ns=$4 ready=$5 m="#$6" nonce=$6
nics= snaps=yes
case $detail in
  nics) nics=yes ;;
  status) nics=yes snaps= ;;
esac
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
# `status` shows no clone's snapshots, and listing them costs zfs-fuse a third more.
echo "$m names"
all=$(zfs list -H -o name -t "filesystem,volume${snaps:+,snapshot}" -r "$pool"); rc=$?
names=$(printf '%s\n' "$all" | grep -v '@')
snapnames=$(printf '%s\n' "$all" | grep '@')
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
if [ -z "$snaps" ]; then
  echo "$m rc skipped"
  echo "$m labsnapprops"
  echo "$m rc skipped"
else
  if [ -n "$snapnames" ]; then printf '%s\n' "$snapnames"; fi
  echo "$m rc $rc"
  echo "$m labsnapprops"
  if [ -n "$snapnames" ]; then
    printf '%s\n' "$snapnames" | xargs -d '\n' zfs get -H -p -o name,property,value,source lab:snapshot,creation,createtxg,used
    echo "$m rc $?"
  else
    echo "$m rc 0"
  fi
fi
# libvirt's domains and networks, listed by one virsh (not `-q`, which also drops the newline
# of every `echo`): a line of it that starts with `error:` (virsh goes on after a failed
# command, and says so) fails all three lists, so that a failure never reads as absence.
s="lab-$nonce"
lists=$(virsh "echo $s a; list --all; echo $s b; list --all --uuid; echo $s c; net-list --all --uuid" 2>&1); rc=$?
[ $rc -ne 0 ] || ! printf '%s\n' "$lists" | grep -q '^error:' || rc=1
# `part X`: the lines virsh printed after `echo lab-NONCE X`, blank ones left out.
part() { printf '%s\n' "$lists" | awk -v s="$s" -v p="$1" '$1 == s { on = $2 == p; next } on && NF'; }
# The domains' rows, after `list`'s heading and its line of dashes.
doms=$(part a | awk 'rows; /^-+$/ { rows = 1 }')
uuids= netuuids=
[ $rc -ne 0 ] || uuids=$(part b) netuuids=$(part c)
echo "$m domains"
if [ -n "$doms" ]; then printf '%s\n' "$doms"; fi
echo "$m rc $rc"
echo "$m markers"
# `each_domain`: what virsh says of every domain, from one virsh per 250 of them: one
# connection to libvirtd for them all (a virsh of its own costs 20 ms of CPU, more on a busy
# host). Domains go by UUID: no name reaches virsh's command line. Each domain's answers sit
# between lines of the nonce's own (virsh keeps its output and errors in order):
# `lab-NONCE UUID`, its name (`domname`), `lab-NONCE -`, its marker (`metadata`), then for
# `nics` `lab-NONCE +` and its definition (`dumpxml`, live when it runs), and `lab-NONCE .`.
# `status` asks for the definition alone: its <name> names the domain and its <metadata>
# holds the marker, for a third of the calls to libvirtd (the definition it shows is the
# live one, as for the NICs).
# (250 domains per virsh: its command line stays far below the 128 KiB an argument may have.)
each_domain() {
  [ -n "$uuids" ] || return 0
  printf '%s\n' "$uuids" | awk -v s="$s" -v ns="$ns" -v detail="$detail" '
    # (A UUID is 36 of these: nothing else reaches the command line.)
    !/^[0-9a-fA-F-]+$/ || length($0) != 36 { next }
    {
      printf " echo %s %s;", s, $1
      if (detail != "status") printf " domname %s; echo %s -; metadata %s --uri \047%s\047 --config;", $1, s, $1, ns
      if (detail != "normal") printf " echo %s +; dumpxml %s;", s, $1
      printf " echo %s .;", s
      if (++n % 250 == 0) printf "\n"
    }
    END { if (n % 250) printf "\n" }' |
    while IFS= read -r batch; do virsh "$batch" </dev/null 2>&1; done
}
# `answers KIND`: `NAME<TAB>LINE` for each line of every domain's marker (`-`) or definition
# (`+`), and `NAME<TAB>lab-NONCE .` at each domain's end: a domain without that end was not
# answered whole. A domain whose name could not be read (gone since the list) is left out.
# Without a `metadata` answer (`status`), the marker is the first of <metadata>'s own
# elements (not one inside another's) whose prefix is bound to the marker namespace right
# after its tag: what status shows of ownership is a reading, and the verbs that change a
# domain read its marker with `metadata`, which looks the namespace up itself.
answers() {
  printf '%s\n' "$answered" | awk -v sep="$s" -v kind="$1" -v ns="$ns" '
    function marker(line,   t, p, rest) {
      t = substr(line, 6); p = index(t, ":"); rest = index(t, " ")
      if (p < 2 || rest < p) return 0
      rest = substr(t, rest); p = substr(t, 1, p - 1)
      return index(rest, " xmlns:" p "=\"" ns "\"") == 1 || index(rest, " xmlns:" p "=\047" ns "\047") == 1
    }
    function flush(   i, part, line, meta, inner, found) {
      if (named && ok) {
        for (i = 1; i <= n; i++) {
          part = substr(buf[i], 1, 1); line = substr(buf[i], 3)
          if (part == kind) print name "\t" line
          else if (kind == "-" && !asked && part == "+") {
            if (line == "  <metadata>") meta = 1
            else if (line == "  </metadata>") meta = 0
            else if (meta && line ~ /^    <\//) inner = 0
            else if (meta && !inner && line ~ /^    <[^\/!?]/) {
              if (!found && marker(line)) { found = 1; sub(/^ +/, "", line); print name "\t" line }
              # An element that does not end on its line holds others until its end tag.
              if (line !~ /\/>$/ && line !~ /<\/[^<>]*>$/) inner = 1
            }
          }
        }
        print name "\t" sep " ."
      }
      n = 0
    }
    $1 == sep && ($2 == "-" || $2 == "+") { state = $2; if ($2 == "-") asked = 1; next }
    $1 == sep && $2 == "." { flush(); state = ""; next }
    $1 == sep { name = ""; named = 0; ok = 1; asked = 0; n = 0; state = "name"; next }
    state == "name" { if (!named && $0 != "") { name = $0; named = 1; ok = name !~ /^error: / } next }
    state == "+" && !asked && !named && /^  <name>.*<\/name>$/ {
      name = substr($0, 9, length($0) - 15); named = 1
      gsub(/&lt;/, "<", name); gsub(/&gt;/, ">", name); gsub(/&quot;/, "\"", name)
      gsub(/&apos;/, "\047", name); gsub(/&amp;/, "\\&", name)
    }
    state != "" { buf[++n] = state "\t" $0 }
  '
}
answered=$(each_domain)
# A domain's marker: what `metadata` printed; none when it says "metadata not found"; `?`
# (unknown) for any other error, or an answer that did not end. A domain gone since the list
# is left out (its `domname` failed).
answers - | awk -F '\t' -v end="$s ." '
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
nrc=$rc
# Each network's name, state, UUID and bridge (`net-info`) and its definition, from one virsh
# per 200, by UUID and between the nonce's lines like the domains'. lab's own networks: the
# mark; an operator's: its IPv4 prefixes and DHCP reservations (`reserve` adds to them, never
# over someone else's). A network gone since the list is left out; any other error, or a
# network whose answer did not end, fails the section. Fields go out separated by \001,
# which no name or XML holds, so that an empty one stays a field.
nets=$(printf '%s\n' "$netuuids" | awk -v s="$s" '
  !/^[0-9a-fA-F-]+$/ || length($0) != 36 { next }
  {
    printf " echo %s %s; net-info %s; echo %s -; net-dumpxml %s; echo %s .;", s, $1, $1, s, $1, s
    if (++n % 200 == 0) printf "\n"
  }
  END { if (n % 200) printf "\n" }' |
  while IFS= read -r batch; do virsh "$batch" </dev/null 2>&1; done)
want=$(printf '%s\n' "$netuuids" | grep -c .)
rows=$(printf '%s\n' "$nets" | awk -v sep="$s" -v want="$want" '
  $1 == sep && $2 == "-" { part = "xml"; next }
  $1 == sep && $2 == "." {
    ended++
    if (err && !gone) bad = 1
    else if (name != "" && !gone) printf "%s\001%s\001%s\001%s\001%s\001%s\n", name, state, uuid, mark, bridge, dhcp
    part = ""; next
  }
  $1 == sep { part = "info"; name = uuid = bridge = mark = dhcp = ""; state = "inactive"; gone = err = 0; next }
  /^error: / && /Network not found/ { gone = 1; next }
  /^error: / { err = 1; next }
  part == "info" && /^Name: / { sub(/^Name: +/, ""); name = $0 }
  part == "info" && $1 == "UUID:" { uuid = $2 }
  part == "info" && $1 == "Active:" { state = $2 == "yes" ? "active" : "inactive" }
  part == "info" && $1 == "Bridge:" { bridge = $2 }
  part == "xml" && mark == "" && match($0, /<lab:net [^>]*>/) { mark = substr($0, RSTART, RLENGTH) }
  part == "xml" {
    rest = $0
    while (match(rest, /<ip [^>]*>|<host [^>]*mac=[^>]*>/)) {
      dhcp = dhcp substr(rest, RSTART, RLENGTH); rest = substr(rest, RSTART + RLENGTH)
    }
  }
  END { exit bad || ended != want }') || nrc=1
[ -z "$rows" ] || printf '%s\n' "$rows" | while IFS=$(printf '\001') read -r name state uuid mark bridge dhcp; do
  case $name in lab-*) dhcp= ;; *) mark= ;; esac
  # What is plugged into its bridge (a running domain's tap): a network in use is never
  # restarted or removed under it, whoever's it is. (Older libvirt keeps a dummy
  # <bridge>-nic on every bridge it makes: no one's.)
  ports=0
  if [ -n "$bridge" ]; then
    for port in "/sys/class/net/$bridge/brif/"*; do
      [ -e "$port" ] && [ "${port##*/}" != "$bridge-nic" ] && ports=$((ports + 1))
    done
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$state" "$uuid" "$mark" "$bridge" "$ports" "$dhcp"
done
echo "$m rc $nrc"
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
if [ -n "$nics" ]; then
  echo "$m nics"
  # Each domain's NICs, in order, from its definition (live when it runs): MAC, link state
  # (`lab link down` sets it; a NIC without a <link state=...> is up) and a UDP wire's
  # `LOCAL>REMOTE`; then the NICs `create` plugged in through QEMU's monitor (libvirt cannot
  # hot-plug a udp interface), which the live definition's metadata names, marked `hot`.
  answers + | awk -F '\t' '
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
  # The running domains, from the list above ("ID NAME running"; a lab's names hold no space).
  running=" $(printf '%s\n' "$doms" | awk '$NF == "running" && NF == 3 { printf "%s ", $2 }') "
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
