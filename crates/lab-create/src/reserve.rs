//! A node's DHCP reservation in an operator's network (management mode `existing` with
//! `reserve`), decided on the controller before anything changes: add it, use one that is
//! there, replace the one `lab` added for an older plan of the node, or refuse because someone
//! else's reservation holds the node's MAC, name or address.

use lab_hv::HostState;
use lab_hv::dhcp::{Claim, DhcpHost};
use lab_hv::own::prop;
use lab_model::{Hypervisor, LabNode};

/// What `create` does with a node's reservation, when it makes or starts the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservation {
    /// The reservation `lab` added for an older plan of the node (its clone claims it): it
    /// goes first.
    pub release: Option<Claim>,
    /// The reservation to add.
    pub add: Option<Claim>,
    /// What the node's clone claims afterwards (`None`: an operator's reservation, identical
    /// to the node's, is used and never claimed).
    pub claim: Option<Claim>,
    /// What the node's clone claims now.
    pub claimed: Option<Claim>,
}

/// Decides the node's reservation from its hypervisor's state; `Err` is a refusal before
/// anything changes. `Ok(None)`: nothing to reserve (another mode, no planned address, or the
/// network is missing, which the network's own decision refuses).
pub fn decide(
    lab: &str,
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
) -> Result<Option<Reservation>, String> {
    let (true, Some(network), Some(ip)) = (
        hv.mgmt.reserve,
        hv.mgmt.network.as_deref(),
        node.mgmt_ipv4.map(|n| n.addr()),
    ) else {
        return Ok(None);
    };
    let Some(net) = state.networks.get(network).and_then(|n| n.dhcp.as_ref()) else {
        return Ok(None);
    };
    if !net.ipv4.iter().any(|p| p.contains(&ip)) {
        let has = if net.ipv4.is_empty() {
            "it has no IPv4 address".to_owned()
        } else {
            let list: Vec<String> = net.ipv4.iter().map(|p| p.trunc().to_string()).collect();
            format!("it has {}", list.join(", "))
        };
        return Err(format!(
            "node {}'s address {ip} is not in network {network} ({has}), so libvirt would not \
             reserve it: set `mgmt_ipv4` of {} to the network's prefix, or `mgmt: {{reserve: \
             false}}`",
            node.name, hv.name
        ));
    }
    if net.ipv4.iter().any(|p| p.addr() == ip) {
        return Err(format!(
            "node {}'s address {ip} is network {network}'s own (the hypervisor's): give the \
             node another `id`",
            node.name
        ));
    }
    let want = DhcpHost::new(&node.mac, &node.domain, ip);
    // Only what the clone lab made for this node claims is lab's.
    let claimed = state
        .datasets
        .get(&node.dataset)
        .filter(|ds| lab_hv::own::not_ours(ds, lab, node, hv).is_none())
        .and_then(|ds| ds.prop(prop::DHCP_HOST))
        .and_then(Claim::parse);
    let ours_there = claimed
        .as_ref()
        .filter(|c| c.network == network && net.hosts.contains(&c.host));
    let new = Claim {
        network: network.to_owned(),
        host: want.clone(),
    };
    let release = ours_there.filter(|c| c.host != want).cloned();
    let clashing: Vec<&DhcpHost> = net
        .hosts
        .iter()
        .filter(|h| h.clashes(&want))
        .filter(|h| release.as_ref().is_none_or(|r| r.host != **h))
        .collect();
    let (add, claim) = match clashing.as_slice() {
        [] => (Some(new.clone()), Some(new)),
        [there] if **there == want => {
            // lab's from before when the clone claims it; else the operator's, used as it is.
            let ours = ours_there.is_some_and(|c| c.host == want);
            (None, ours.then_some(new))
        }
        [other, ..] => {
            let element = other.element();
            return Err(format!(
                "network {network} has the DHCP reservation {element}, which lab did not add, \
                 for node {}'s MAC, name or address ({}): lab never changes a reservation it \
                 did not make; remove it (virsh net-update {network} delete ip-dhcp-host \
                 \"{element}\" --live --config) or give the node another `id` or `mac`",
                node.name,
                want.element()
            ));
        }
    };
    Ok(Some(Reservation {
        release,
        add,
        claim,
        claimed,
    }))
}
