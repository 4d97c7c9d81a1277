//! The order in which a hypervisor's nodes start, in batches (`start_batch`,
//! `start_after`): a boot storm of many emulated routers at once is what times out.

use std::collections::{HashMap, VecDeque};

use lab_hv::plan::NodePlan;
use lab_hv::{NodeReport, Outcome};
use lab_model::LabNode;

/// Each of `starting` (one hypervisor's nodes that start now) with its batch, from 0: `size`
/// at a time (`None`: as many as the order allows), in the order of the lab's links (breadth
/// first from the first node in lab order, so that linked nodes come up close together), a
/// node always in a later batch than the nodes it `start_after`s. All in batch 0 when
/// neither a size nor any `start_after` is given.
pub fn start_batches(starting: &[&LabNode], size: Option<u32>) -> HashMap<String, usize> {
    let names: Vec<&str> = starting.iter().map(|n| n.name.as_str()).collect();
    let of = |name: &str| starting.iter().copied().find(|n| n.name == name);
    // Breadth first along the links, among the nodes that start.
    let mut order: Vec<&LabNode> = Vec::new();
    for first in starting {
        if order.iter().any(|n| n.name == first.name) {
            continue;
        }
        let mut queue = VecDeque::from([*first]);
        while let Some(node) = queue.pop_front() {
            if order.iter().any(|n| n.name == node.name) {
                continue;
            }
            order.push(node);
            for peer in node.interfaces.iter().filter_map(|i| i.peer.as_deref()) {
                if let Some(p) = of(peer).filter(|p| !order.iter().any(|n| n.name == p.name)) {
                    queue.push_back(p);
                }
            }
        }
    }
    let cap = size.map_or(usize::MAX, |s| s.max(1) as usize);
    let mut batch: HashMap<String, usize> = HashMap::new();
    let mut filled: Vec<usize> = Vec::new();
    // Each pass places the nodes whose `start_after`s are placed (the lab file has no cycle).
    while batch.len() < order.len() {
        let before = batch.len();
        for node in &order {
            if batch.contains_key(&node.name) {
                continue;
            }
            let deps: Vec<&str> = node
                .start_after
                .iter()
                .map(String::as_str)
                .filter(|d| names.contains(d))
                .collect();
            if deps.iter().any(|d| !batch.contains_key(*d)) {
                continue;
            }
            let mut b = deps.iter().map(|d| batch[*d] + 1).max().unwrap_or(0);
            while filled.get(b).is_some_and(|n| *n >= cap) {
                b += 1;
            }
            if filled.len() <= b {
                filled.resize(b + 1, 0);
            }
            filled[b] += 1;
            batch.insert(node.name.clone(), b);
        }
        if batch.len() == before {
            // A cycle would stop here; the lab file refuses one, so this is never reached.
            for node in &order {
                batch.entry(node.name.clone()).or_insert(0);
            }
        }
    }
    batch
}

/// Puts every plan that starts its node (a last wave) into its batch; how many batches.
pub(crate) fn assign(plans: &mut [NodePlan<'_>], size: Option<u32>) -> usize {
    let starting: Vec<&LabNode> = plans
        .iter()
        .filter(|p| p.last_wave < p.steps.len())
        .map(|p| p.node)
        .collect();
    let batches = start_batches(&starting, size);
    for plan in plans.iter_mut() {
        plan.batch = batches.get(&plan.node.name).copied().unwrap_or(0);
    }
    batches.values().max().map_or(0, |b| b + 1)
}

/// A started node's report with the batch that started it, when there were several.
pub(crate) fn noted(report: NodeReport, batch: usize, count: usize, hv: &str) -> NodeReport {
    let started = report
        .note
        .as_deref()
        .is_none_or(|n| !n.contains("--no-start"));
    if count < 2 || !matches!(report.outcome, Outcome::Done) || !started {
        return report;
    }
    let phase = format!("started in batch {} of {count} on {hv}", batch + 1);
    NodeReport {
        note: Some(match report.note {
            Some(n) => format!("{n}; {phase}"),
            None => phase,
        }),
        ..report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(text: &str) -> lab_model::Lab {
        let tree = lab_model::tree::parse(text, std::path::Path::new("t.yaml")).unwrap();
        lab_model::Lab::from_tree(tree, vec!["t.yaml".into()]).unwrap()
    }

    const LAB: &str = "lab: {name: t, id: 1, p2p_ipv4: 100.64.1.0/24}\n\
        hypervisors:\n  h: {id: 0, pool: p, proto: p/proto, snapshot: s, underlay: 10.0.0.1}\n\
        nodes:\n  a: {hypervisor: h, id: 1}\n  b: {hypervisor: h, id: 2}\n  c: {hypervisor: h, id: 3}\n\
        \x20 d: {hypervisor: h, id: 4}\n  e: {hypervisor: h, id: 5}\n\
        links: [[a, d], [d, e], [b, c]]\n";

    fn batches(lab: &lab_model::Lab, size: Option<u32>) -> Vec<(String, usize)> {
        let nodes: Vec<&LabNode> = lab.nodes.iter().collect();
        let b = start_batches(&nodes, size);
        let mut v: Vec<(String, usize)> = b.into_iter().collect();
        v.sort_by_key(|(n, b)| (*b, n.clone()));
        v
    }

    #[test]
    fn batches_follow_the_links_and_start_after() {
        let l = lab(LAB);
        // No size, no start_after: one batch, as before.
        assert!(batches(&l, None).iter().all(|(_, b)| *b == 0));
        // Two at a time, along the links from a: a d | e b | c.
        let two = batches(&l, Some(2));
        assert_eq!(
            two,
            [("a", 0), ("d", 0), ("b", 1), ("e", 1), ("c", 2)].map(|(n, b)| (n.to_owned(), b))
        );
        // c after e, e after a: without a size, by depth only.
        let ordered = lab(&LAB
            .replace(
                "c: {hypervisor: h, id: 3}",
                "c: {hypervisor: h, id: 3, start_after: [e]}",
            )
            .replace(
                "e: {hypervisor: h, id: 5}",
                "e: {hypervisor: h, id: 5, start_after: [a]}",
            ));
        let b: HashMap<String, usize> = batches(&ordered, None).into_iter().collect();
        assert_eq!((b["a"], b["e"], b["c"]), (0, 1, 2));
        assert_eq!((b["b"], b["d"]), (0, 0));
    }
}
