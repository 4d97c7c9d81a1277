//! Reconcile: `create` run again on a lab whose nodes exist brings their links in line with
//! the lab file without recreating them. Per node of this lab (its clone complete and ours,
//! its domain defined by `lab` for it), the NICs the file names and the domain lacks are
//! plugged in (into the running domain and its definition, see [`lab_hv::cmd::plug_nic`]);
//! a NIC the file no longer names, or wires differently, is reported, and taken out (and
//! for a rewired one, plugged in again as the file says) only with `--prune`. A node whose
//! NICs changed then gets its new build as `lab push` brings it (changed files, then its
//! reload hook), so the guest can use the new link at once. Nodes of this lab that the file
//! no longer names are listed ([`Gone`]); `create --prune` destroys them through `destroy`.
//!
//! In three steps around `create` ([`Reconcile::plan`], [`Reconcile::take_out`],
//! [`Reconcile::put_in`]): what goes (and every change to a domain that is not running, so
//! that `create` starts it as the file says) before `create` makes new nodes; what comes into
//! running domains after, once every port a removed NIC or node held is free.

use std::collections::{BTreeSet, HashMap};

use lab_exec::Executor;
use lab_generate::NodeBuild;
use lab_hv::own::Owners;
use lab_hv::state::Detail;
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
    /// Whether `--prune` destroys it: only a node with a clone of this lab there, whose
    /// names are names.
    pub prunable: bool,
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
    /// Whether anything it did failed, or a node whose NICs changed did not get its new
    /// build (a push skipped counts: the guest does not know its new NIC).
    pub fn failed(&self) -> bool {
        self.nics.iter().any(|n| n.result == "failed")
            || self.pushed.iter().any(|p| {
                !matches!(
                    p.report.outcome,
                    lab_hv::Outcome::Done | lab_hv::Outcome::Unchanged { .. }
                )
            })
    }
}

/// One node's NIC work, decided from its hypervisor's state.
struct Work<'a> {
    node: &'a LabNode,
    running: bool,
    /// (change, MAC, the file's interface, plugged in through the monitor)
    nics: Vec<(Change, String, Option<&'a Interface>, bool)>,
}

/// A reconcile under way (see the module's doc).
pub struct Reconcile<'r, 'a> {
    req: &'r ReconcileRequest<'a>,
    works: Vec<Work<'a>>,
    /// Each hypervisor read (the UDP ports bound there, its NICs' wires).
    states: HashMap<String, HostState>,
    /// `NODE/MAC` of the NICs whose first half failed: their second is not tried.
    failed: BTreeSet<String>,
    report: ReconcileReport,
}

impl<'r, 'a> Reconcile<'r, 'a> {
    /// Reads every hypervisor of the selected nodes once (with their domains' NICs) and
    /// decides each node's NIC changes; changes nothing. When `known` (a reading of the same
    /// hypervisors) shows nothing of this lab on any of them, there is nothing to reconcile
    /// and nothing is read.
    pub async fn plan(
        exec: &Executor,
        req: &'r ReconcileRequest<'a>,
        known: &lab_hv::run::States<'_>,
    ) -> Reconcile<'r, 'a> {
        let lab = req.lab;
        let hypervisors = lab.hypervisors_of(&req.nodes);
        let there = known.values().any(|s| match s {
            Ok(state) => holds_lab(lab, state),
            Err(_) => false,
        });
        let states = if there {
            lab_hv::run::probe_all(exec, &hypervisors, Detail::Nics).await
        } else {
            HashMap::new()
        };
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
        let states: HashMap<String, HostState> = states
            .into_iter()
            .filter_map(|(hv, state)| Some((hv.to_owned(), state.ok()?)))
            .collect();
        for hv in &hypervisors {
            if let Some(state) = states.get(&hv.name) {
                report.gone.extend(gone(lab, &hv.name, state));
            }
        }
        Reconcile {
            req,
            works,
            states,
            failed: BTreeSet::new(),
            report,
        }
    }

    /// Whether [`Reconcile::take_out`] changed (or tried to change) anything.
    pub fn touched(&self) -> bool {
        self.report
            .nics
            .iter()
            .any(|n| n.result == "done" || n.result == "failed")
    }

    /// This lab's nodes on the hypervisors read that the lab file no longer names.
    pub fn gone(&self) -> &[Gone] {
        &self.report.gone
    }

    /// The nodes whose NICs this reconcile changes (or, in a dry run, would change): their
    /// new build goes in by push, so a digest that differs from it is no drift.
    pub fn reconciled(&self) -> std::collections::HashSet<String> {
        self.works
            .iter()
            .filter(|w| {
                w.nics
                    .iter()
                    .any(|(change, ..)| *change == Change::Add || self.req.prune)
            })
            .map(|w| w.node.name.clone())
            .collect()
    }

    /// Before `create`: with `--prune`, every NIC that goes out of a running domain (removed,
    /// or the old half of a rewired one); and every change to a domain that is not running.
    pub async fn take_out(&mut self, exec: &Executor) {
        let nics = self.run(exec, Phase::Before).await;
        self.failed = nics
            .iter()
            .filter(|n| n.result == "failed")
            .map(|n| format!("{}/{}", n.node, n.mac))
            .collect();
        self.report.nics.extend(nics);
    }

    /// After `create`: the NICs that come into running domains, then the new build of every
    /// node whose NICs changed.
    pub async fn put_in(mut self, exec: &Executor, events: Events<'_>) -> ReconcileReport {
        let nics = self.run(exec, Phase::After).await;
        self.report.nics.extend(nics);
        let req = self.req;
        let changed: Vec<&LabNode> = self
            .works
            .iter()
            .filter(|w| {
                self.report
                    .nics
                    .iter()
                    .any(|n| n.node == w.node.name && n.result == "done")
            })
            .map(|w| w.node)
            .collect();
        self.report.changed_on = self
            .report
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
                lab: req.lab,
                nodes: changed,
                builds,
                owners: req.owners.clone(),
                reload: true,
            };
            self.report.pushed = push(exec, &push_req, events).await;
        }
        self.report
    }

    /// The steps of `phase`, each NIC's in order, the nodes at once; a NIC whose steps all
    /// come in the other phase is left to it.
    async fn run(&self, exec: &Executor, phase: Phase) -> Vec<NicReport> {
        let req = self.req;
        let live = exec.is_live();
        let jobs = self.works.iter().map(|work| async move {
            let mut out = Vec::new();
            let build = req.builds.get(&work.node.name);
            for (change, mac, iface, hot) in &work.nics {
                if self.failed.contains(&format!("{}/{mac}", work.node.name)) {
                    continue;
                }
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
                let goes = *change != Change::Add;
                let comes = *change != Change::Remove;
                if goes && !req.prune {
                    // Reported once, before create.
                    if phase == Phase::Before {
                        out.push(nic);
                    }
                    continue;
                }
                // A domain that is not running changes before create (which may start it);
                // a running one loses NICs before and gets them after.
                let (take, put) = match (work.running, phase) {
                    (false, Phase::Before) => (goes, comes),
                    (false, Phase::After) => (false, false),
                    (true, Phase::Before) => (goes, false),
                    (true, Phase::After) => (false, comes),
                };
                if !take && !put {
                    continue;
                }
                let mut steps = Vec::new();
                if take {
                    steps.push(cmd::unplug_nic(work.node, mac, work.running, *hot));
                }
                if put {
                    match self.plug_step(work, mac, *iface, build) {
                        Ok(step) => steps.push(step),
                        Err(why) => {
                            nic.result = "failed";
                            nic.error = Some(why);
                        }
                    }
                }
                if nic.result != "failed" {
                    nic.result = if live { "done" } else { "planned" };
                    let before = exec.recorded().len();
                    for step in steps {
                        if let Err(e) = exec.run(&work.node.hypervisor, &step).await {
                            nic.result = "failed";
                            nic.error = Some(short(e));
                            break;
                        }
                    }
                    if !live {
                        nic.commands = exec.recorded()[before..]
                            .iter()
                            .map(|c| c.line.clone())
                            .collect();
                    }
                }
                // A running domain's rewired NIC: the report of its second half stands.
                if phase == Phase::After
                    || !(work.running && *change == Change::Rewire)
                    || nic.result == "failed"
                {
                    out.push(nic);
                }
            }
            out
        });
        lab_hv::run::at_once_when_live(exec, jobs.collect())
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The command that plugs the file's NIC `mac` in, or why it cannot: the overlay renders
    /// no such `<interface>`, or its wire's port on this hypervisor is bound by something
    /// that stays (QEMU binds with SO_REUSEADDR: two sockets on one port share its frames).
    fn plug_step(
        &self,
        work: &Work<'_>,
        mac: &str,
        iface: Option<&Interface>,
        build: Option<&NodeBuild>,
    ) -> Result<lab_exec::Cmd, String> {
        let node = work.node;
        let xml = build
            .and_then(|b| b.domain_xml.as_ref())
            .map(|x| String::from_utf8_lossy(x).into_owned())
            .and_then(|x| cmd::interface_xml(&x, mac));
        let (Some(xml), Some(iface)) = (xml, iface) else {
            return Err(format!(
                "the overlay's domain.xml.j2 renders no <interface> with MAC {mac} for {}",
                node.name
            ));
        };
        if work.running
            && let Some(wire) = &iface.wire
            && self
                .states
                .get(&node.hypervisor)
                .and_then(|s| s.udp_ports.as_ref())
                .is_some_and(|b| b.contains(&wire.local_port))
            && !self.frees(&node.hypervisor, wire.local_port)
        {
            return Err(format!(
                "UDP port {} on {} is bound by something this run does not take out (a NIC \
                 the lab file no longer names: --prune takes it out first)",
                wire.local_port, node.hypervisor
            ));
        }
        cmd::plug_nic(node, iface, &xml, work.running)
            .ok_or_else(|| format!("{} {} has no wire", node.name, iface.name))
    }

    /// Whether this run frees `port` on `hv` before it plugs: a running domain's NIC it takes
    /// out with `--prune` had it, or a node the file no longer names that `--prune` destroys.
    fn frees(&self, hv: &str, port: u16) -> bool {
        if !self.req.prune {
            return false;
        }
        let nic_frees = self.works.iter().any(|w| {
            w.node.hypervisor == hv
                && w.nics.iter().any(|(change, mac, ..)| {
                    *change != Change::Add && self.holds(hv, &w.node.domain, Some(mac), port)
                })
        });
        // A node the file no longer names that --prune destroys (before anything is
        // plugged in) frees the ports of its NICs.
        let gone_frees = self.report.gone.iter().any(|g| {
            g.hypervisor == hv
                && g.prunable
                && g.domain
                    .as_deref()
                    .is_some_and(|d| self.holds(hv, d, None, port))
        });
        nic_frees || gone_frees
    }

    /// Whether a NIC of `domain` on `hv` (the one with `mac`, or any) has `port` as its
    /// wire's local port, as read (the probe says a wire as `ADDRESS:PORT>ADDRESS:PORT`).
    fn holds(&self, hv: &str, domain: &str, mac: Option<&str>, port: u16) -> bool {
        let Some(state) = self.states.get(hv) else {
            return false;
        };
        let prefix = format!("{domain}/");
        state.wires.iter().any(|(key, wire)| {
            let local = wire.split('>').next().and_then(|l| l.rsplit(':').next());
            key.strip_prefix(&prefix)
                .is_some_and(|m| mac.is_none_or(|mac| m == mac))
                && local.and_then(|p| p.parse::<u16>().ok()) == Some(port)
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    After,
}

/// A failed command's own words (what the script said), without its text.
fn short(e: lab_exec::ExecError) -> String {
    match e {
        lab_exec::ExecError::Failed {
            host,
            status,
            stderr,
            ..
        } => format!("{host}: {} (status {status})", stderr.trim()),
        e => e.to_string(),
    }
}

mod decide;

pub use decide::gone_node;
use decide::{decide, gone, holds_lab};

#[cfg(test)]
mod tests;
