//! A link's NIC added to a node that exists, or taken out of it (`create` reconciling a lab
//! whose file gained or lost links). libvirt 9 cannot hot-plug an `<interface type='udp'>`
//! (its hotplug code refuses the type), so a running domain gets the NIC through QEMU's own
//! monitor: the wire as a `socket` netdev (what libvirt gives QEMU for a udp interface), then
//! a virtio NIC with the plan's MAC; the live definition's metadata names it (the probe reads
//! it back from there), and the persistent definition gets the interface as the overlay
//! rendered it, so the next start has it through libvirt. A NIC libvirt knows is taken out
//! through libvirt; one plugged in through the monitor, through the monitor.

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::{Interface, LabNode};

/// The namespace of the metadata that names the NICs plugged in through the monitor.
pub const HOT_NICS_URI: &str = "https://lab.invalid/nics/1";

/// Adds the link NIC `iface` to the node's domain: into the running domain when `running`,
/// and into its definition. `xml` is the `<interface>` element of the node's built domain.
/// Undone on the hypervisor when a later part fails.
pub fn plug_nic(node: &LabNode, iface: &Interface, xml: &str, running: bool) -> Option<Cmd> {
    let wire = iface.wire.as_ref()?;
    let argv = [
        "sh".to_owned(),
        "-c".to_owned(),
        PLUG.to_owned(),
        "lab-nic-plug".to_owned(),
        node.domain.clone(),
        iface.mac.to_ascii_lowercase(),
        wire.local_address.to_string(),
        wire.local_port.to_string(),
        wire.remote_address.to_string(),
        wire.remote_port.to_string(),
        yes(running).to_owned(),
        HOT_NICS_URI.to_owned(),
    ];
    Some(
        Cmd::change(argv)
            .stdin(format!("{}\n", xml.trim()).into_bytes())
            .timeout(Duration::from_secs(120)),
    )
}

/// Takes the NIC `mac` out of the node's domain: out of the running domain when `running`
/// (through the monitor when it was plugged in that way, `hot`), then out of its definition.
pub fn unplug_nic(node: &LabNode, mac: &str, running: bool, hot: bool) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        UNPLUG,
        "lab-nic-unplug",
        &node.domain,
        &mac.to_ascii_lowercase(),
        yes(running),
        yes(hot),
        HOT_NICS_URI,
    ])
    .timeout(Duration::from_secs(120))
}

/// The QEMU id of the NIC with `mac` that [`plug_nic`] plugged in (its netdev's id is the
/// same without `-dev`).
pub fn hot_nic_device(mac: &str) -> String {
    format!("labnic{}-dev", mac.to_ascii_lowercase().replace(':', ""))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// What both scripts share: the QEMU ids of a MAC's NIC and netdev, the monitor, and the
/// metadata's NICs other than this one (`others`), rewritten by `record`.
macro_rules! nic_prelude {
    () => {
        r#"id=labnic$(printf '%s' "$mac" | tr -d :)
hmp() { virsh qemu-monitor-command --hmp "$dom" "$1" 2>&1; }
others=$(virsh -q metadata "$dom" "$uri" --live 2>/dev/null | grep -o '<[a-z]*:*nic [^>]*>' |
  sed 's/^<[a-z]*:nic /<nic /' | grep -v "mac=.$mac." | tr -d '\n')
# Until QEMU lists no NIC with this MAC (its guest let go of it), at most 60 s.
wait_gone() {
  n=0
  while hmp 'info network' | grep -qi "macaddr=$mac"; do
    n=$((n + 1)); [ $n -le 300 ] || return 1
    sleep 0.2
  done
}
record() {
  if [ -n "$1" ]; then
    virsh -q metadata "$dom" "$uri" --key labnics --set "<nics>$1</nics>" --live
  else
    virsh -q metadata "$dom" "$uri" --remove --live 2>/dev/null || true
  fi
}
"#
    };
}

/// HMP says an error on stdout with status 0: anything it answers to these is a refusal.
const PLUG: &str = concat!(
    r#"dom=$1 mac=$2 la=$3 lp=$4 ra=$5 rp=$6 live=$7 uri=$8
"#,
    nic_prelude!(),
    r#"f=$(mktemp) || exit 3
trap 'rm -f "$f"' EXIT
cat >"$f"
if [ "$live" = yes ]; then
  said=$(hmp "netdev_add socket,id=$id,udp=$ra:$rp,localaddr=$la:$lp")
  [ -z "$said" ] || { printf 'QEMU did not take the wire of NIC %s: %s\n' "$mac" "$said" >&2; exit 3; }
  said=$(hmp "device_add virtio-net-pci,id=$id-dev,netdev=$id,mac=$mac")
  if [ -n "$said" ]; then
    hmp "netdev_del $id" >/dev/null
    printf 'QEMU did not plug in NIC %s: %s\n' "$mac" "$said" >&2; exit 3
  fi
  if ! said=$(record "$others<nic mac='$mac' local='$la:$lp' remote='$ra:$rp'/>" 2>&1); then
    hmp "device_del $id-dev" >/dev/null; wait_gone; hmp "netdev_del $id" >/dev/null
    printf 'the live definition of %s did not take the note of NIC %s: %s\n' "$dom" "$mac" "$said" >&2; exit 3
  fi
fi
if ! said=$(virsh -q attach-device "$dom" "$f" --config 2>&1); then
  if [ "$live" = yes ]; then
    hmp "device_del $id-dev" >/dev/null; wait_gone; hmp "netdev_del $id" >/dev/null
    record "$others" >/dev/null 2>&1
  fi
  printf 'the definition of %s did not take NIC %s: %s\n' "$dom" "$mac" "$said" >&2; exit 3
fi
echo "plugged $mac"
"#
);

/// The guest lets go of a NIC the monitor takes out (ACPI) before its netdev goes; a NIC
/// libvirt knows goes through libvirt, which waits for the guest the same way.
const UNPLUG: &str = concat!(
    r#"dom=$1 mac=$2 live=$3 hot=$4 uri=$5
"#,
    nic_prelude!(),
    r#"let_go() { echo "the guest of $dom did not let go of NIC $mac in 60 s" >&2; exit 3; }
if [ "$live" = yes ] && [ "$hot" = yes ]; then
  # (a NIC an earlier run took out, whose note it could not take away, is not found: done)
  said=$(hmp "device_del $id-dev")
  case $said in
    '' | *"not found"*) ;;
    *) printf 'QEMU did not take out NIC %s: %s\n' "$mac" "$said" >&2; exit 3 ;;
  esac
  wait_gone || let_go
  hmp "netdev_del $id" >/dev/null
  record "$others" >/dev/null || exit 3
elif [ "$live" = yes ]; then
  # libvirt waits a while for the guest, then says the request was sent: QEMU says when.
  said=$(virsh -q detach-interface "$dom" udp --mac "$mac" --live 2>&1) ||
    { printf 'libvirt did not take out NIC %s: %s\n' "$mac" "$said" >&2; exit 3; }
  wait_gone || let_go
fi
if virsh -q dumpxml --inactive "$dom" | grep -qi "<mac address=.$mac./>"; then
  said=$(virsh -q detach-interface "$dom" udp --mac "$mac" --config 2>&1) ||
    { printf 'the definition of %s kept NIC %s: %s\n' "$dom" "$mac" "$said" >&2; exit 3; }
fi
echo "unplugged $mac"
"#
);

/// The `<interface>` element of `xml` (a rendered domain) whose `<mac address=...>` is `mac`.
pub fn interface_xml(xml: &str, mac: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(start) = rest.find("<interface") {
        let tail = &rest[start..];
        let end = tail.find("</interface>")? + "</interface>".len();
        let element = &tail[..end];
        let lower = element.to_ascii_lowercase();
        let mac = mac.to_ascii_lowercase();
        if lower.contains(&format!("address='{mac}'"))
            || lower.contains(&format!("address=\"{mac}\""))
        {
            return Some(element.to_owned());
        }
        rest = &tail[end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_of_a_mac_is_found_in_a_domain() {
        let xml = "<domain><devices>\n<interface type='network'>\n<mac address='52:54:00:00:00:01'/>\n\
                   </interface>\n<interface type='udp'>\n<mac address='52:54:01:00:00:01'/>\n\
                   <source address='127.0.0.1' port='1'/>\n</interface>\n</devices></domain>";
        let found = interface_xml(xml, "52:54:01:00:00:01").unwrap();
        assert!(found.starts_with("<interface type='udp'>"), "{found}");
        assert!(found.ends_with("</interface>"), "{found}");
        assert!(!found.contains("network"), "{found}");
        assert_eq!(interface_xml(xml, "52:54:02:00:00:01"), None);
    }
}
