//! Taking back a domain definition that a failed run may have made.

use lab_exec::Cmd;
use lab_model::LabNode;

/// Undefines the node's domain when there is one and its marker (read now, on the
/// hypervisor) names `lab` and this node; succeeds with nothing done when libvirt lists no
/// domain of that name. For a node that failed after its clone: its definition may have been
/// made before anyone heard (a `virsh` killed by its deadline, a plan cut in its define
/// wave), and without its clone it serves nothing.
pub fn undefine_if_marked(node: &LabNode, lab: &str) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        UNDEFINE_IF_MARKED,
        "lab-undefine",
        &node.domain,
        crate::own::DOMAIN_NS,
        lab,
        &node.name,
    ])
}

/// Arguments: domain, marker namespace, lab, node. Absence is read from libvirt's list (an
/// exit status that says it was read, a whole line that is the name), not from a failed
/// lookup, which a lost connection fails too. libvirt prints a marker's attributes as they
/// were written (see [`crate::own`]); lab and node names hold no quote.
const UNDEFINE_IF_MARKED: &str = r#"names=$(virsh -q list --all --name) || exit 1
printf '%s\n' "$names" | grep -qxF -- "$1" || exit 0
m=$(virsh -q metadata "$1" --uri "$2" --config 2>&1) || {
  case $m in *"metadata not found"*) exit 0 ;; esac
  printf '%s\n' "$m" >&2; exit 1
}
case $m in *" lab=\"$3\" node=\"$4\""*) exec virsh -q undefine "$1" ;; esac"#;
