//! Reconcile: `create` run again on a lab whose nodes exist brings their links in line with
//! the lab file without recreating them. Per node of this lab (its clone complete and ours,
//! its domain defined by `lab` for it), the NICs the file names and the domain lacks are
//! plugged in (into the running domain and its definition, see [`lab_hv::cmd::plug_nic`]);
//! a NIC the file no longer names, or wires differently, is reported, and taken out (and
//! for a rewired one, plugged in again as the file says) only with `--prune`. A node whose
//! NICs changed then gets its new build as `lab push` brings it (changed files, then its
//! reload hook), so the guest can use the new link at once. Nodes of this lab that the file
//! no longer names are listed ([`Gone`]); `create --prune` destroys them through `destroy`.

use std::collections::{BTreeSet, HashMap};

use lab_exec::Executor;
use lab_generate::NodeBuild;
use lab_hv::own::{CloneFacts, Owners, inspect, prop};
use lab_hv::state::{Detail, MarkerRead};
use lab_hv::{Events, HostState, cmd};
use lab_model::{Interface, Lab, LabNode};

use crate::push::{PushReport, PushRequest, push};

/// What `create` reconciles.
pub struct ReconcileRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// Each node's new build (its domain's `<interface>` elements come from here).
    pub builds: &'a HashMap<String, NodeBuild>,
    pub owners: Owners,
    /// `--prune`: take out NICs the file no longer names (or wires differently).
    pub prune: bool,
}

/// One NIC's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The file names it; the domain lacks it.
    Add,
    /// The domain has it; the file no longer names it.
    Remove,
    /// Both have it, wired differently (the file's links moved).
    Rewire,
}

/// What happened to one NIC of one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NicReport {
    pub node: String,
    pub hypervisor: String,
    pub mac: String,
    /// Its name in the guest, when the lab file names it (`eth3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The link's other end (`rt-4 eth1`), when the lab file names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub change: Change,
    /// `done`, `planned` (dry run), `kept` (without `--prune`) or `failed`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The commands, in a dry run: what would run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

/// A node of this lab on a hypervisor that the lab file no longer names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gone {
    pub node: String,
    pub hypervisor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// What reconcile found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileReport {
    pub nics: Vec<NicReport>,
    /// The push into each node whose NICs changed.
    pub pushed: Vec<PushReport>,
    pub gone: Vec<Gone>,
    /// The hypervisors it changed something on.
    #[serde(skip)]
    pub changed_on: BTreeSet<String>,
}

impl ReconcileReport {
    /// The nodes whose NICs changed (or, in a dry run, would change) and whose new build
    /// was pushed (or would be): their running domains are as their build says.
    pub fn reconciled_nodes(&self) -> std::collections::HashSet<String> {
        let pushed_ok = |node: &str| {
            self.pushed.iter().any(|p| {
                p.report.node == node && !matches!(p.report.outcome, lab_hv::Outcome::Failed { .. })
            })
        };
        self.nics
            .iter()
            .filter(|n| n.result == "planned" || (n.result == "done" && pushed_ok(&n.node)))
            .map(|n| n.node.clone())
            .collect()
    }

    /// Whether anything it did failed.
    pub fn failed(&self) -> bool {
        self.nics.iter().any(|n| n.result == "failed")
            || self
                .pushed
                .iter()
                .any(|p| matches!(p.report.outcome, lab_hv::Outcome::Failed { .. }))
    }
}

/// One node's NIC work, decided from its hypervisor's state.
struct Work<'a> {
    node: &'a LabNode,
    running: bool,
    /// (change, MAC, the file's interface, plugged in through the monitor)
    nics: Vec<(Change, String, Option<&'a Interface>, bool)>,
}

/// Decides and carries out every node's NIC changes, then pushes into the nodes that
/// changed; lists the nodes the file no longer names.
pub async fn reconcile(
    exec: &Executor,
    req: &ReconcileRequest<'_>,
    events: Events<'_>,
) -> ReconcileReport {
    let lab = req.lab;
    let hypervisors = lab.hypervisors_of(&req.nodes);
    let states = lab_hv::run::probe_all(exec, &hypervisors, Detail::Nics).await;
    let mut report = ReconcileReport::default();
    let mut works = Vec::new();
    for node in &req.nodes {
        let Some(Ok(state)) = states.get(node.hypervisor.as_str()) else {
            continue;
        };
        if let Some(work) = decide(lab, node, state, &req.owners) {
            works.push(work);
        }
    }
    for hv in &hypervisors {
        if let Some(Ok(state)) = states.get(hv.name.as_str()) {
            report.gone.extend(gone(lab, &hv.name, state));
        }
    }
    let live = exec.is_live();
    let jobs = works.iter().map(|work| async move {
        let mut out = Vec::new();
        let build = req.builds.get(&work.node.name);
        for (change, mac, iface, hot) in &work.nics {
            let mut nic = NicReport {
                node: work.node.name.clone(),
                hypervisor: work.node.hypervisor.clone(),
                mac: mac.clone(),
                interface: iface.map(|i| i.name.clone()),
                peer: iface.and_then(|i| {
                    Some(format!(
                        "{} {}",
                        i.peer.as_ref()?,
                        i.peer_interface.as_ref()?
                    ))
                }),
                change: *change,
                result: "kept",
                error: None,
                commands: Vec::new(),
            };
            if *change != Change::Add && !req.prune {
                out.push(nic);
                continue;
            }
            let mut steps = Vec::new();
            if *change != Change::Add {
                steps.push(cmd::unplug_nic(work.node, mac, work.running, *hot));
            }
            if *change != Change::Remove {
                let xml = build
                    .and_then(|b| b.domain_xml.as_ref())
                    .map(|x| String::from_utf8_lossy(x).into_owned())
                    .and_then(|x| cmd::interface_xml(&x, mac));
                match (xml, iface) {
                    (Some(xml), Some(i)) => {
                        steps.extend(cmd::plug_nic(work.node, i, &xml, work.running));
                    }
                    _ => {
                        nic.result = "failed";
                        nic.error = Some(format!(
                            "the overlay's domain.xml.j2 renders no <interface> with MAC {mac} \
                             for {}",
                            work.node.name
                        ));
                        out.push(nic);
                        continue;
                    }
                }
            }
            nic.result = if live { "done" } else { "planned" };
            let before = exec.recorded().len();
            for step in steps {
                if let Err(e) = exec.run(&work.node.hypervisor, &step).await {
                    nic.result = "failed";
                    // The script's own words say what went wrong; its text would drown them.
                    nic.error = Some(match e {
                        lab_exec::ExecError::Failed {
                            host,
                            status,
                            stderr,
                            ..
                        } => format!("{host}: {} (status {status})", stderr.trim()),
                        e => e.to_string(),
                    });
                    break;
                }
            }
            if !live {
                nic.commands = exec.recorded()[before..]
                    .iter()
                    .map(|c| c.line.clone())
                    .collect();
            }
            out.push(nic);
        }
        out
    });
    let per_node = lab_hv::run::at_once_when_live(exec, jobs.collect()).await;
    report.nics = per_node.into_iter().flatten().collect();
    // The nodes whose NICs changed get their new build: the guest's configuration of the link.
    let changed: Vec<&LabNode> = works
        .iter()
        .filter(|w| {
            report
                .nics
                .iter()
                .any(|n| n.node == w.node.name && n.result == "done")
        })
        .map(|w| w.node)
        .collect();
    report.changed_on = report
        .nics
        .iter()
        .filter(|n| n.result != "kept")
        .map(|n| n.hypervisor.clone())
        .collect();
    if !changed.is_empty() {
        let builds = changed
            .iter()
            .filter_map(|n| Some((n.name.clone(), req.builds.get(&n.name)?.clone())))
            .collect();
        let push_req = PushRequest {
            lab,
            nodes: changed,
            builds,
            owners: req.owners.clone(),
            reload: true,
        };
        report.pushed = push(exec, &push_req, events).await;
    }
    report
}

/// A node's NIC work: only for a complete clone of this lab that this run may change, with
/// a domain `lab` defined for the node; nothing when its NICs are as the file says.
fn decide<'a>(
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
fn gone(lab: &Lab, hv: &str, state: &HostState) -> Vec<Gone> {
    let named = |node: &str| lab.nodes.iter().any(|n| n.name == node);
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
            })
            .domain = Some(name.clone());
    }
    found.into_values().collect()
}

/// A node of the lab that the file no longer names, as `destroy` needs it to find (and judge
/// again, on the hypervisor) its clone and domain: no links, no management address. Its
/// names come from the hypervisor, not from a lab file, so they are checked here as a lab
/// file's are (`None`: a name that is not one).
pub fn gone_node(lab: &Lab, gone: &Gone) -> Option<LabNode> {
    use lab_model::names;
    let hv = lab.hypervisor(&gone.hypervisor)?;
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

#[cfg(test)]
mod tests;
