//! What reconcile decides from one hypervisor's state: a node's NIC changes, and this lab's
//! nodes that the lab file no longer names.

use lab_hv::HostState;
use lab_hv::own::{CloneFacts, Owners, inspect, prop};
use lab_hv::state::MarkerRead;
use lab_model::{Lab, LabNode};

use super::{Change, Gone, Work};

/// A node's NIC work: only for a complete clone of this lab that this run may change, with
/// a domain `lab` defined for the node; nothing when its NICs are as the file says.
pub(super) fn decide<'a>(
    lab: &Lab,
    node: &'a LabNode,
    state: &HostState,
    owners: &Owners,
) -> Option<Work<'a>> {
    let hv = lab.hypervisor_of(node);
    let facts = inspect(hv, &lab.name, node, state).ok()?;
    if !matches!(facts.clone, CloneFacts::Ours { filling: false, .. })
        || owners.refusal(state, node).is_some()
        || !facts.domain.ours()
    {
        return None;
    }
    let have = state.nics.get(&node.domain)?;
    let key = |mac: &str| format!("{}/{mac}", node.domain);
    let mgmt = node.mac.to_ascii_lowercase();
    let mut nics = Vec::new();
    for iface in node.links() {
        let mac = iface.mac.to_ascii_lowercase();
        let want = iface.wire.as_ref().map(|w| w.text());
        if !have.contains(&mac) {
            nics.push((Change::Add, mac, Some(iface), false));
        } else if want.is_some() && state.wires.get(&key(&mac)) != want.as_ref() {
            let hot = state.hot_nics.contains(&key(&mac));
            nics.push((Change::Rewire, mac, Some(iface), hot));
        }
    }
    // Only a link's NIC is ever taken out: one with a UDP wire (what a lab's link is); a NIC
    // an overlay's domain adds of another kind is not the lab file's to remove.
    for mac in have {
        let link = state.wires.contains_key(&key(mac));
        if link && *mac != mgmt && !node.links().any(|i| i.mac.eq_ignore_ascii_case(mac)) {
            let hot = state.hot_nics.contains(&key(mac));
            nics.push((Change::Remove, mac.clone(), None, hot));
        }
    }
    if nics.is_empty() {
        return None;
    }
    Some(Work {
        node,
        running: facts.domain.running(),
        nics,
    })
}

/// This lab's nodes on `hv` that the lab file does not name: by their clones (`lab:lab`,
/// `lab:node`) and by their domains' markers.
pub(super) fn gone(lab: &Lab, hv: &str, state: &HostState) -> Vec<Gone> {
    // On this hypervisor: a node the file moved elsewhere left its old copy here.
    let named = |node: &str| {
        lab.nodes
            .iter()
            .any(|n| n.name == node && n.hypervisor == hv)
    };
    let mut found: std::collections::BTreeMap<String, Gone> = Default::default();
    for ds in state.datasets.values() {
        if ds.prop(prop::LAB) != Some(lab.name.as_str()) {
            continue;
        }
        let Some(node) = ds.prop(prop::NODE).filter(|n| !named(n)) else {
            continue;
        };
        found.entry(node.to_owned()).or_insert_with(|| Gone {
            node: node.to_owned(),
            hypervisor: hv.to_owned(),
            dataset: None,
            domain: None,
            prunable: false,
        });
        found.get_mut(node).expect("just put").dataset = Some(ds.name.clone());
    }
    for (name, domain) in &state.domains {
        let MarkerRead::Some(m) = &domain.marker else {
            continue;
        };
        if m.lab != lab.name || named(&m.node) {
            continue;
        }
        found
            .entry(m.node.clone())
            .or_insert_with(|| Gone {
                node: m.node.clone(),
                hypervisor: hv.to_owned(),
                dataset: None,
                domain: None,
                prunable: false,
            })
            .domain = Some(name.clone());
    }
    let mut found: Vec<Gone> = found.into_values().collect();
    for g in &mut found {
        g.prunable = gone_node(lab, g).is_some();
    }
    found
}

/// A node of the lab that the file no longer names, as `destroy` needs it to find (and judge
/// again, on the hypervisor) its clone and domain: no links, no management address. Its
/// names come from the hypervisor, not from a lab file, so they are checked here as a lab
/// file's are (`None`: a name that is not one, or no clone of this lab).
pub fn gone_node(lab: &Lab, gone: &Gone) -> Option<LabNode> {
    use lab_model::names;
    let hv = lab.hypervisor(&gone.hypervisor)?;
    // Only a node with a clone of this lab is pruned: a domain alone proves less (destroy
    // would undefine it on its marker's word).
    gone.dataset.as_ref()?;
    let domain = gone.domain.clone().or_else(|| {
        gone.dataset
            .as_deref()
            .and_then(|d| d.rsplit('/').next())
            .map(str::to_owned)
    })?;
    names::ident(&gone.node).ok()?;
    // `<lab>-<node>` with `lab.prefix_names`: longer than a node name may be.
    let plain = domain.len() <= 80
        && domain.starts_with(|c: char| c.is_ascii_lowercase())
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !plain {
        return None;
    }
    if let Some(d) = &gone.dataset {
        names::dataset(d).ok()?;
    }
    Some(LabNode {
        name: gone.node.clone(),
        hostname: gone.node.clone(),
        hypervisor: hv.name.clone(),
        id: 0,
        dataset: gone
            .dataset
            .clone()
            .unwrap_or_else(|| format!("{}/{domain}", hv.clones.trim_end_matches('/'))),
        domain,
        staging: format!(
            "{}/{}/{}",
            hv.staging.trim_end_matches('/'),
            lab.name,
            gone.node
        ),
        mac: String::new(),
        mgmt_ipv4: None,
        mgmt_ipv6: None,
        interfaces: Vec::new(),
        ssh: lab_model::NodeSsh {
            user: "root".to_owned(),
            options: Vec::new(),
        },
        start_after: Vec::new(),
        vars: Default::default(),
    })
}

/// Whether anything of `lab` is on the hypervisor: a clone or a domain of it.
pub(super) fn holds_lab(lab: &Lab, state: &HostState) -> bool {
    state
        .datasets
        .values()
        .any(|ds| ds.prop(prop::LAB) == Some(lab.name.as_str()))
        || state.domains.values().any(|d| match &d.marker {
            MarkerRead::Some(m) => m.lab == lab.name,
            // Whose it is is unknown: look.
            MarkerRead::Unreadable => true,
            MarkerRead::None => false,
        })
}
