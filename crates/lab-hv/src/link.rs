//! The commands of `lab link` and `lab capture`, run on the hypervisor that holds a link's
//! end: the link state of a node's NIC (libvirt's, which QEMU turns into the guest's carrier)
//! and a capture of the frames of the NIC's netdev (QEMU's `filter-dump`, added and removed
//! through the monitor; the NIC and its wire stay as they are).

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::LabNode;

/// The steps that take the link of the node's NIC `mac` down or up: in the running domain
/// (when it runs), then in its definition, so that a restart keeps it.
pub fn set_link(node: &LabNode, mac: &str, up: bool, running: bool) -> Vec<(&'static str, Cmd)> {
    let state = if up { "up" } else { "down" };
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
const CAPTURE: &str = r#"dom=$1 mac=$2; shift 2
info=$(virsh qemu-monitor-command --hmp "$dom" 'info network' 2>&1) || {
  printf 'cannot read the NICs of domain %s: %s\n' "$dom" "$info" >&2; exit 3; }
netdev=$(printf '%s\n' "$info" | awk -v mac="macaddr=$mac" '
  f { sub(/^[ \t\\]+/, ""); sub(/:.*/, ""); print; exit }
  index(tolower($0), mac) { f = 1 }')
[ -n "$netdev" ] || { echo "domain $dom has no NIC with MAC $mac" >&2; exit 3; }
if [ $# -gt 0 ] && ! command -v tcpdump >/dev/null 2>&1; then
  echo "a capture filter needs tcpdump on the hypervisor (apt install tcpdump)" >&2; exit 3
fi
dir=$(mktemp -d /var/tmp/lab-capture.XXXXXX) || exit 3
id=lab-capture-$$ file=$dir/frames.pcap
end() {
  virsh qemu-monitor-command --hmp "$dom" "object_del $id" >/dev/null 2>&1
  rm -rf -- "$dir"
}
trap 'end; exit 0' HUP INT TERM PIPE
chmod 711 "$dir" && : >"$file" && chmod 600 "$file" || { rm -rf -- "$dir"; exit 3; }
pid=$(cat "/run/libvirt/qemu/$dom.pid" 2>/dev/null)
uid=$(awk '$1 == "Uid:" { print $2 }' "/proc/$pid/status" 2>/dev/null)
[ -z "$uid" ] || chown "$uid" "$file"
said=$(virsh qemu-monitor-command --hmp "$dom" "object_add filter-dump,id=$id,netdev=$netdev,file=$file" 2>&1)
if [ $? -ne 0 ] || [ -n "$said" ]; then
  printf 'QEMU did not start the capture on %s of %s: %s\n' "$netdev" "$dom" "$said" >&2
  rm -rf -- "$dir"; exit 3
fi
# The filter, checked against the file's own link type (its header is written).
if [ $# -gt 0 ] && ! said=$(tcpdump -r "$file" -d "$@" 2>&1 >/dev/null); then
  printf 'tcpdump cannot read the filter: %s\n' "$said" >&2; end; exit 3
fi
if [ $# -gt 0 ]; then
  tail -c +1 --pid=$$ -f "$file" | tcpdump -U -r - -w - "$@" 2>/dev/null &
else
  tail -c +1 --pid=$$ -f "$file" &
fi
cat >/dev/null
end"#;
