//! The commands of `lab link` and `lab capture`, run on the hypervisor that holds a link's
//! end: the link state of a node's NIC (libvirt's, which QEMU turns into the guest's carrier)
//! and a capture of the frames of the NIC's netdev (QEMU's `filter-dump`, added and removed
//! through the monitor; the NIC and its wire stay as they are), and an impairment of the
//! frames it sends (QEMU's `filter-redirector` into `lab`'s relay).

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::impair::Impairment;
use lab_model::{Hypervisor, LabNode, Wire};

/// The start of [`CAPTURE`] and [`IMPAIR`] (arguments: domain, MAC, then the script's own):
/// the NIC's netdev `$netdev`, found in QEMU's own list by the MAC (the line after the NIC's,
/// when it is a netdev's), not guessed from libvirt's naming; and `give_qemu FILE`, which
/// gives a file to the domain's QEMU user, so that a QEMU that is not root can use it.
macro_rules! nic_of_domain {
    () => {
        r#"dom=$1 mac=$2; shift 2
info=$(virsh qemu-monitor-command --hmp "$dom" 'info network' 2>&1) || {
  printf 'cannot read the NICs of domain %s: %s\n' "$dom" "$info" >&2; exit 3; }
netdev=$(printf '%s\n' "$info" | awk -v mac="macaddr=$mac" '
  f { if ($0 !~ /^ +\\ /) exit; sub(/^[ \t\\]+/, ""); sub(/:.*/, ""); print; exit }
  index(tolower($0), mac) { f = 1 }')
[ -n "$netdev" ] || { echo "domain $dom has no NIC with MAC $mac" >&2; exit 3; }
give_qemu() {
  pid=$(cat "/run/libvirt/qemu/$dom.pid" 2>/dev/null)
  uid=$(awk '$1 == "Uid:" { print $2 }' "/proc/$pid/status" 2>/dev/null)
  [ -z "$uid" ] || chown "$uid" "$1"
}"#
    };
}

/// The steps that take the link of the node's NIC `mac` down or up: in the running domain
/// (when it runs), then in its definition, so that a restart keeps it. A NIC `create`
/// plugged in through QEMU's monitor (`hot`) is unknown to libvirt's running domain: its
/// link is set through the monitor (HMP answers nothing when it did it).
pub fn set_link(
    node: &LabNode,
    mac: &str,
    up: bool,
    running: bool,
    hot: bool,
) -> Vec<(&'static str, Cmd)> {
    let state = if up { "up" } else { "down" };
    if running && hot {
        let hmp = format!(
            "set_link {} {}",
            crate::cmd::hot_nic_device(mac),
            if up { "on" } else { "off" }
        );
        let live = Cmd::change([
            "sh",
            "-c",
            SET_HOT_LINK,
            "lab-set-link",
            &node.domain,
            &hmp,
            &mac.to_ascii_lowercase(),
            if up { "" } else { " link='down'" },
            crate::cmd::HOT_NICS_URI,
        ]);
        let config = Cmd::change([
            "virsh",
            "-q",
            "domif-setlink",
            &node.domain,
            mac,
            state,
            "--config",
        ]);
        return vec![("link", live), ("link definition", config)];
    }
    let argv = |config: bool| {
        let mut argv = vec!["virsh", "-q", "domif-setlink", &node.domain, mac, state];
        if config {
            argv.push("--config");
        }
        Cmd::change(argv)
    };
    let mut steps = Vec::new();
    if running {
        steps.push(("link", argv(false)));
    }
    steps.push(("link definition", argv(true)));
    steps
}

/// A monitor-plugged NIC's link set through QEMU's monitor, then noted on its element in the
/// live definition's metadata (`link='down'`, or none when up), where the probe reads it.
const SET_HOT_LINK: &str = r#"dom=$1 hmp=$2 mac=$3 attr=$4 uri=$5
said=$(virsh qemu-monitor-command --hmp "$dom" "$hmp" 2>&1) && [ -z "$said" ] ||
  { printf '%s\n' "$said" >&2; exit 3; }
nics=$(virsh -q metadata "$dom" "$uri" --live 2>/dev/null | grep -o '<[a-z]*:*nic [^>]*>' |
  sed 's/^<[a-z]*:nic /<nic /' | tr -d '\n' |
  sed "s#<nic mac=.$mac.\( link=.[a-z]*.\)\{0,1\}#<nic mac='$mac'$attr#")
[ -z "$nics" ] || virsh -q metadata "$dom" "$uri" --key labnics --set "<nics>$nics</nics>" --live
"#;

/// The node's NIC `mac`'s frames, as a pcap stream on stdout (both directions, Ethernet, as
/// the guest sees them; through tcpdump with `filter` when there is one), until stdin ends or
/// `limit` passes; then the capture is taken away and its file removed.
pub fn capture(node: &LabNode, mac: &str, filter: &[String], limit: Duration) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", CAPTURE, "lab-capture", &node.domain, mac]
        .map(String::from)
        .to_vec();
    argv.extend(filter.iter().cloned());
    Cmd::change(argv).timeout(limit).once()
}

/// QEMU writes the capture into a file of a directory of its own (mode 711, the file owned
/// by the domain's QEMU user: a QEMU that is not root can write it), which `tail` follows;
/// the filter's id and the directory are this shell's, so two captures never meet. The NIC's
/// netdev is found in QEMU's own list by the MAC, not guessed from libvirt's naming. HMP says
/// an error on stdout with status 0: anything it says to `object_add` is a refusal.
const CAPTURE: &str = concat!(
    nic_of_domain!(),
    r#"
if [ $# -gt 0 ] && ! command -v tcpdump >/dev/null 2>&1; then
  echo "a capture filter needs tcpdump on the hypervisor (apt install tcpdump)" >&2; exit 3
fi
dir=$(mktemp -d /var/tmp/lab-capture.XXXXXX) || exit 3
id=lab-capture-$$ file=$dir/frames.pcap
# The file goes only once QEMU has let it go: one it still wrote would fill the disk unseen.
end() {
  virsh qemu-monitor-command --hmp "$dom" "object_del $id" >/dev/null 2>&1
  if virsh qemu-monitor-command --hmp "$dom" 'qom-list /objects' 2>/dev/null | grep -q "^$id "; then
    echo "lab: QEMU still captures into $file ($id of $dom); kept" >&2
  else
    rm -rf -- "$dir"
  fi
}
trap 'end; exit 0' HUP INT TERM PIPE
chmod 711 "$dir" && : >"$file" && chmod 600 "$file" || { rm -rf -- "$dir"; exit 3; }
give_qemu "$file"
said=$(virsh qemu-monitor-command --hmp "$dom" "object_add filter-dump,id=$id,netdev=$netdev,file=$file" 2>&1)
if [ $? -ne 0 ] || [ -n "$said" ]; then
  printf 'QEMU did not start the capture on %s of %s: %s\n' "$netdev" "$dom" "$said" >&2
  end; exit 3
fi
# The filter, checked against the file's own link type (its header is written).
if [ $# -gt 0 ] && ! said=$(tcpdump -r "$file" -d -- "$@" 2>&1 >/dev/null); then
  printf 'tcpdump cannot read the filter: %s\n' "$said" >&2; end; exit 3
fi
if [ $# -gt 0 ]; then
  tail -c +1 --pid=$$ -f "$file" | tcpdump -U -r - -w - -- "$@" 2>/dev/null &
else
  tail -c +1 --pid=$$ -f "$file" &
fi
cat >/dev/null
end"#
);

/// The step that impairs the frames the node's NIC `mac` sends onto its wire (`how`), or that
/// takes any impairment of it away (`None`). With `how`, stdin is the relay: `lab`'s own
/// binary, checked on the hypervisor against `sha256` and the machine (`arch`, as `uname -m`
/// says it), started from a file that goes as soon as it runs; QEMU's `filter-redirector`
/// then hands the NIC's outgoing frames to it instead of the wire, and it sends them on to
/// `wire`'s far end. Another impairment of that NIC is taken away first (one at a time).
pub fn impair(
    hv: &Hypervisor,
    lab: &str,
    node: &LabNode,
    mac: &str,
    wire: &Wire,
    how: Option<(&Impairment, &str, &str)>,
) -> Cmd {
    let base = format!("{}/{lab}", hv.lock_dir.trim_end_matches('/'));
    let to = format!("{}:{}", wire.remote_address, wire.remote_port);
    let mut argv: Vec<String> = [
        "sh",
        "-c",
        IMPAIR,
        "lab-impair",
        &node.domain,
        mac,
        &base,
        &to,
    ]
    .map(String::from)
    .to_vec();
    if let Some((how, sha256, arch)) = how {
        argv.extend([sha256.to_owned(), arch.to_owned()]);
        argv.extend(how.relay_args());
    }
    Cmd::change(argv).timeout(Duration::from_secs(120))
}

/// See [`impair`]. The relay's label (`--label DOMAIN/MAC`) is what the probe reads back
/// from its command line. Descriptors 3 to 9 are closed for it: it must not hold the lock the
/// guard took for this command.
const IMPAIR: &str = concat!(
    nic_of_domain!(),
    r#"
base=$1 to=$2; shift 2
hmp() { virsh qemu-monitor-command --hmp "$dom" "$1" 2>&1; }
id=labimp-$netdev
hmp "object_del $id-f" >/dev/null
hmp "chardev-remove $id" >/dev/null
[ $# -gt 0 ] || exit 0
sha=$1 arch=$2; shift 2
[ "$(uname -m)" = "$arch" ] || { echo "the relay is built for $arch; this hypervisor is $(uname -m)" >&2; exit 3; }
bin=$base.relay.$$ sock=$base.relay.$$.sock
trap 'rm -f -- "$bin" "$sock"' EXIT
umask 077
cat >"$bin" || exit 3
got=$(sha256sum <"$bin" | cut -c1-64)
[ "$got" = "$sha" ] || { echo "the relay arrived damaged (sha256 $got, not $sha)" >&2; exit 3; }
chmod 700 "$bin"
(exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- </dev/null >/dev/null 2>&1; exec setsid "$bin" relay --socket "$sock" --to "$to" --label "$dom/$mac" "$@") &
n=0
while [ ! -S "$sock" ]; do
  n=$((n + 1)); [ $n -le 100 ] || { echo "the relay did not start (is $bin runnable here?)" >&2; exit 3; }
  sleep 0.05
done
give_qemu "$sock"
said=$(hmp "chardev-add socket,id=$id,path=$sock")
[ -z "$said" ] || { printf 'QEMU did not connect to the relay: %s\n' "$said" >&2; exit 3; }
said=$(hmp "object_add filter-redirector,id=$id-f,netdev=$netdev,queue=rx,outdev=$id")
if [ -n "$said" ]; then
  hmp "chardev-remove $id" >/dev/null
  printf 'QEMU did not redirect %s of %s: %s\n' "$netdev" "$dom" "$said" >&2; exit 3
fi"#
);
