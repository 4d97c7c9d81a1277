//! The commands on libvirt networks: lab's own (define with its mark, start, stop only when
//! nothing is plugged in, undefine) and a DHCP reservation added to a running one.

use lab_exec::Cmd;
use lab_model::{Hypervisor, MgmtMode};

use super::with_marker;

/// Defines a network from `xml` with `lab`'s ownership mark put into it, in one step: the mark
/// and the definition cannot be separated by a crash. `xml` comes from `generate`, which
/// refuses a template that renders `<metadata>` of its own.
/// `uuid`: the existing network's, when this redefines it (libvirt refuses a second network
/// of the same name with another UUID).
pub fn define_network(xml: &[u8], lab: &str, sha256: &str, uuid: Option<&str>) -> Cmd {
    let mut marked = with_marker(
        &String::from_utf8_lossy(xml),
        "network",
        &crate::own::network_marker(lab, sha256),
    );
    use lab_model::xml::find_start;
    if let (Some(uuid), None) = (uuid, find_start(&marked, "uuid", 1))
        && let Some(name) = find_start(&marked, "name", 1)
        && let Some(end) = marked[name.end..]
            .find("</name>")
            .map(|at| name.end + at + "</name>".len())
    {
        marked.insert_str(end, &format!("\n  <uuid>{uuid}</uuid>"));
    }
    Cmd::change(["virsh", "-q", "net-define", "/dev/stdin"]).stdin(marked.into_bytes())
}

/// Adds a DHCP reservation (`<host mac name ip/>`) to a running network, as the new definition
/// already has it. The very same element already there is fine; one that shares only its MAC,
/// name or address with it is an error (libvirt refuses the new one, and the node would get
/// no lease).
pub fn add_dhcp_host(network: &str, host: &str) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        r#"virsh -q net-dumpxml "$1" | grep -qF -- "$2" && exit 0
virsh -q net-update "$1" add-last ip-dhcp-host "$2" --live"#,
        "lab-dhcp-host",
        network,
        host,
    ])
}

pub fn start_network(name: &str) -> Cmd {
    Cmd::change(["virsh", "-q", "net-start", name])
}

/// Stops the hypervisor's management network. One whose bridge `lab` made (modes isolated
/// and nat) is stopped only when nothing is plugged into that bridge at that moment (exit 3,
/// naming the domains): a domain the lab file does not name (an orphan, another lab's on
/// `mode: existing`) would lose its network. (In bridge mode the bridge is the host's, with
/// its own ports, and stays up.)
pub fn stop_network(hv: &Hypervisor) -> Cmd {
    let name = hv.mgmt.network.as_deref().unwrap_or_default();
    match hv.mgmt.mode {
        MgmtMode::Isolated | MgmtMode::Nat => {
            Cmd::change(["sh", "-c", STOP_NETWORK, "lab-net-stop", name])
        }
        _ => Cmd::change(["virsh", "-q", "net-destroy", name]),
    }
}

/// The exit status of [`stop_network`] when the network is in use.
pub const NETWORK_IN_USE: i32 = 3;

const STOP_NETWORK: &str = r#"br=$(virsh -q net-info "$1" | awk '$1 == "Bridge:" { print $2 }')
if [ -n "$br" ] && [ -d "/sys/class/net/$br/brif" ]; then
  # (older libvirt keeps a dummy <bridge>-nic on every bridge it makes: no one's)
  taps=$(ls "/sys/class/net/$br/brif" | grep -vx -- "$br-nic")
  if [ -n "$taps" ]; then
    users=$(virsh -q list --name | while read -r d; do
      [ -n "$d" ] && virsh -q domiflist "$d" | awk -v d="$d" -v t=" $(echo $taps) " 'index(t, " " $1 " ") { print d; exit }'
    done)
    echo "network $1 is in use: $(echo $taps) on its bridge $br (domain(s): $(echo $users)); left as it is" >&2
    exit 3
  fi
fi
virsh -q net-destroy "$1""#;

pub fn undefine_network(name: &str) -> Cmd {
    Cmd::change(["virsh", "-q", "net-undefine", name])
}
