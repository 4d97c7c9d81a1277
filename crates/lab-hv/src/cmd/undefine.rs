//! Taking back a domain definition that a failed run may have made.

use lab_exec::Cmd;
use lab_model::LabNode;

/// Undefines the node's domain when there is one and its marker (read now, on the
/// hypervisor) names `lab` and this node; succeeds with nothing done when there is none.
/// For a node whose definition failed: a `virsh` killed by its deadline may have defined it
/// before anyone heard, and without its clone it serves nothing.
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

/// Arguments: domain, marker namespace, lab, node. libvirt prints a marker's attributes as
/// they were written (see [`crate::own`]); lab and node names hold no quote.
const UNDEFINE_IF_MARKED: &str = r#"out=$(virsh -q domuuid "$1" 2>&1) || {
  case $out in *"failed to get domain"*) exit 0 ;; esac
  printf '%s\n' "$out" >&2; exit 1
}
m=$(virsh -q metadata "$1" --uri "$2" --config 2>&1) || {
  case $m in *"metadata not found"*) exit 0 ;; esac
  printf '%s\n' "$m" >&2; exit 1
}
case $m in *" lab=\"$3\" node=\"$4\""*) exec virsh -q undefine "$1" ;; esac"#;
