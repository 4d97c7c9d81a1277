//! The management network of each hypervisor, before its nodes: lab's own network is defined
//! and started when it is absent, started when it is stopped, redefined when its definition
//! changed; an operator's network is used as it is, never changed.

use lab_exec::{Cmd, ExecError};
use lab_generate::NetworkBuild;
use lab_hv::own::{NetworkFacts, network_facts};
use lab_hv::{HostState, NetworkReport, Outcome, cmd};
use lab_model::{Hypervisor, LabNode, MgmtMode};

/// What `create` does with a hypervisor's management network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkDecision {
    /// No management network (mode `none`).
    Nothing,
    /// An operator's network, active: used as it is.
    Use,
    /// Cannot go on: nothing is changed anywhere (a foreign network of lab's name, an
    /// operator's network that is missing or stopped, no definition in the build).
    Refuse(String),
    /// lab's own network, as it should be.
    Unchanged,
    /// `define`: (re)define from the build; `start`: start it; `restart`: stop it first (it runs
    /// an older definition and no node of the lab uses it).
    Apply {
        define: bool,
        restart: bool,
        start: bool,
    },
    /// lab's own network runs an older definition while nodes of the lab use it: the new
    /// definition is saved and takes effect when the network next starts; meanwhile the DHCP
    /// reservations of nodes that have no domain yet (`new_macs`) are added to the running
    /// network, so that a node added to a running lab gets its address.
    DefinePending { new_macs: Vec<String> },
}

/// Decides from the network's facts, the build's definition, and whether nodes of the lab run
/// on the hypervisor.
pub fn decide_network(
    mode: MgmtMode,
    name: &str,
    facts: &NetworkFacts,
    active_if_existing: Option<bool>,
    build: Option<&NetworkBuild>,
    lab_running: bool,
) -> NetworkDecision {
    match mode {
        MgmtMode::None => NetworkDecision::Nothing,
        MgmtMode::Existing => match active_if_existing {
            None => NetworkDecision::Refuse(format!(
                "network {name} does not exist (mgmt mode `existing` uses it, never makes it)"
            )),
            Some(false) => NetworkDecision::Refuse(format!(
                "network {name} is not active, and lab never starts a network it did not make"
            )),
            Some(true) => NetworkDecision::Use,
        },
        MgmtMode::Isolated | MgmtMode::Nat | MgmtMode::Bridge => {
            let Some(build) = build else {
                return NetworkDecision::Refuse(format!(
                    "no definition of network {name} in the build (run `lab generate`)"
                ));
            };
            match facts {
                NetworkFacts::Foreign(why) => NetworkDecision::Refuse(format!(
                    "{why}; lab never changes a network it did not make"
                )),
                NetworkFacts::Absent => NetworkDecision::Apply {
                    define: true,
                    restart: false,
                    start: true,
                },
                NetworkFacts::Ours { active, sha256 } if *sha256 == build.sha256 => {
                    if *active {
                        NetworkDecision::Unchanged
                    } else {
                        NetworkDecision::Apply {
                            define: false,
                            restart: false,
                            start: true,
                        }
                    }
                }
                NetworkFacts::Ours { active: true, .. } if lab_running => {
                    NetworkDecision::DefinePending {
                        new_macs: Vec::new(),
                    }
                }
                NetworkFacts::Ours { active, .. } => NetworkDecision::Apply {
                    define: true,
                    restart: *active,
                    start: true,
                },
            }
        }
    }
}

/// The decision for `hv`, from its probed state.
pub(crate) fn decide_for(
    lab: &str,
    hv: &Hypervisor,
    nodes_here: &[&LabNode],
    state: &HostState,
    build: Option<&NetworkBuild>,
) -> NetworkDecision {
    let Some(name) = hv.mgmt.network.as_deref() else {
        return NetworkDecision::Nothing;
    };
    let facts = network_facts(state, name, lab);
    let existing = state.networks.get(name).map(|n| n.active);
    // A network something is plugged into (this lab's nodes, or domains the lab file does
    // not name) is never restarted under them.
    let lab_running = nodes_here.iter().any(|n| state.domain_running(&n.domain))
        || matches!(hv.mgmt.mode, MgmtMode::Isolated | MgmtMode::Nat)
            && state
                .networks
                .get(name)
                .is_some_and(|n| n.active && n.ports > 0);
    match decide_network(hv.mgmt.mode, name, &facts, existing, build, lab_running) {
        NetworkDecision::DefinePending { .. } => NetworkDecision::DefinePending {
            new_macs: nodes_here
                .iter()
                .filter(|n| !state.domains.contains_key(&n.domain))
                .map(|n| n.mac.to_ascii_lowercase())
                .collect(),
        },
        decision @ NetworkDecision::Apply { start: true, .. } => {
            match prefix_in_use(hv, name, state) {
                Some(why) => NetworkDecision::Refuse(why),
                None => decision,
            }
        }
        decision => decision,
    }
}

/// Why the lab's network cannot start on `hv`, as libvirt would find out only after defining
/// it: its bridge is already another network's (another lab with this lab id), or an interface
/// other than its own bridge already has its management prefix (another lab's network on the
/// same fleet prefix). `None` when nothing is known against it (the addresses unread: libvirt
/// still refuses, in its own words).
pub fn prefix_in_use(hv: &Hypervisor, network: &str, state: &HostState) -> Option<String> {
    let whose = |n: &lab_hv::state::Network| match &n.marker {
        Some(m) => format!("network {}, lab `{}`", n.name, m.lab),
        None => format!("network {}", n.name),
    };
    // Only a bridge lab makes (`lab<id>`, modes isolated and nat) must be no one else's; in
    // bridge mode it is the host's bridge, which any number of networks may forward onto (as
    // libvirt itself allows).
    if let Some(bridge) = hv.mgmt.bridge.as_deref()
        && matches!(hv.mgmt.mode, MgmtMode::Isolated | MgmtMode::Nat)
        && let Some(other) = state
            .networks
            .values()
            .find(|n| n.name != network && n.bridge.as_deref() == Some(bridge))
    {
        return Some(format!(
            "bridge {bridge} of network {network} is already that of {} (another lab with \
             this lab id?): give one of the labs another `lab.id`",
            whose(other)
        ));
    }
    let ours = hv.mgmt.gateway_ipv4?.trunc();
    let own_bridge = state
        .networks
        .get(network)
        .and_then(|n| n.bridge.as_deref());
    // As libvirt judges it: the same prefix, not any overlap.
    let (iface, net) = state
        .ipv4
        .as_ref()?
        .iter()
        .find(|(iface, net)| Some(iface.as_str()) != own_bridge && net.trunc() == ours)?;
    let whose = state
        .networks
        .values()
        .find(|n| n.bridge.as_deref() == Some(iface.as_str()))
        .map(|n| format!(" (the bridge of {})", whose(n)))
        .unwrap_or_default();
    Some(format!(
        "{net} on interface {iface}{whose} is the management prefix {ours} of network \
         {network}, so libvirt would not start it: give this lab a prefix of its own on {hv} \
         (`hypervisors: {{{hv}: {{mgmt_ipv4: ...}}}}` in the lab file) or `mgmt: {{mode: none}}`",
        hv = hv.name
    ))
}

/// The `<host .../>` elements of a rendered network definition whose `mac` is one of `macs`
/// (as the overlay's template wrote them: libvirt reads the same text).
fn dhcp_hosts(xml: &[u8], macs: &[String]) -> Vec<String> {
    let xml = String::from_utf8_lossy(xml);
    // Only the `<dhcp>` elements' hosts (a `<dns>` has `<host>` elements of its own).
    let dhcp: String = xml
        .split("<dhcp>")
        .skip(1)
        .filter_map(|rest| rest.split("</dhcp>").next())
        .collect();
    dhcp.match_indices("<host ")
        .filter_map(|(at, _)| {
            let element = &dhcp[at..at + dhcp[at..].find("/>")? + 2];
            let lower = element.to_ascii_lowercase();
            macs.iter()
                .any(|m| {
                    lower.contains(&format!("mac='{m}'")) || lower.contains(&format!("mac=\"{m}\""))
                })
                .then(|| element.to_owned())
        })
        .collect()
}

/// What a hypervisor's management network needs in this run: nothing, a report already
/// (used or unchanged), or steps for the hypervisor's plan.
pub(crate) enum NetworkWork {
    Report(NetworkReport),
    Steps {
        name: String,
        steps: Vec<(&'static str, Cmd)>,
        action: &'static str,
    },
}

/// The steps that carry out `decision` for `hv`'s management network (defined with `uuid`
/// when it replaces a network of that name).
pub(crate) fn plan(
    lab: &str,
    hv: &Hypervisor,
    decision: &NetworkDecision,
    build: Option<&NetworkBuild>,
    uuid: Option<&str>,
) -> Option<NetworkWork> {
    let name = hv.mgmt.network.clone()?;
    let unchanged = |reason: &str, action: &str| {
        NetworkWork::Report(report(
            hv,
            &name,
            Outcome::Unchanged {
                reason: reason.to_owned(),
            },
            action,
        ))
    };
    let (define, restart, start) = match decision {
        NetworkDecision::Nothing | NetworkDecision::Refuse(_) => return None,
        NetworkDecision::Use => {
            return Some(unchanged("the operator's network, used as it is", "used"));
        }
        NetworkDecision::Unchanged => return Some(unchanged("active, as defined", "unchanged")),
        NetworkDecision::DefinePending { .. } => (true, false, false),
        NetworkDecision::Apply {
            define,
            restart,
            start,
        } => (*define, *restart, *start),
    };
    let build = build.expect("the decision needed a definition");
    let mut steps: Vec<(&str, Cmd)> = Vec::new();
    if define {
        steps.push((
            "define",
            cmd::define_network(&build.xml, lab, &build.sha256, uuid),
        ));
    }
    if restart {
        steps.push(("restart", cmd::stop_network(hv)));
    }
    if start {
        steps.push(("start", cmd::start_network(&name)));
    }
    if let NetworkDecision::DefinePending { new_macs } = decision {
        for host in dhcp_hosts(&build.xml, new_macs) {
            steps.push(("add a DHCP host", cmd::add_dhcp_host(&name, &host)));
        }
    }
    let action = match decision {
        NetworkDecision::DefinePending { .. } => {
            "redefined; nodes of the lab use it, so it keeps its old definition until it \
             restarts (new nodes' DHCP reservations are added to it as it runs)"
        }
        _ if restart => "redefined and restarted",
        _ if define => "defined and started",
        _ => "started",
    };
    Some(NetworkWork::Steps {
        name,
        steps,
        action,
    })
}

/// The report of `hv`'s network `name`.
pub(crate) fn report(hv: &Hypervisor, name: &str, outcome: Outcome, action: &str) -> NetworkReport {
    NetworkReport {
        hypervisor: hv.name.clone(),
        network: name.to_owned(),
        outcome,
        action: Some(action.to_owned()),
        commands: Vec::new(),
    }
}

/// How the network's steps in the plan ended, as its report.
pub(crate) fn ended(
    hv: &Hypervisor,
    name: &str,
    action: &str,
    result: &Result<(), (&'static str, ExecError)>,
) -> NetworkReport {
    let outcome = match result {
        Ok(()) => Outcome::Done,
        Err((step, e)) => Outcome::Failed {
            step: format!("network {step}"),
            error: e.to_string(),
            rolled_back: false,
        },
    };
    report(hv, name, outcome, action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(sha: &str) -> NetworkBuild {
        NetworkBuild {
            name: "lab-x".into(),
            xml: b"<network/>".to_vec(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn every_case_of_a_network() {
        use NetworkDecision as D;
        let ours = |active, sha: &str| NetworkFacts::Ours {
            active,
            sha256: sha.into(),
        };
        let apply = |define, restart, start| D::Apply {
            define,
            restart,
            start,
        };
        let foreign = NetworkFacts::Foreign("network lab-x exists and was not made by lab".into());
        let b = build("new");
        // (mode, facts, existing active?, build, lab running) -> decision
        type Row<'a> = (
            MgmtMode,
            NetworkFacts,
            Option<bool>,
            Option<&'a NetworkBuild>,
            bool,
            D,
        );
        let table: Vec<Row> = vec![
            (MgmtMode::None, NetworkFacts::Absent, None, None, false, D::Nothing),
            (MgmtMode::Isolated, NetworkFacts::Absent, None, Some(&b), false, apply(true, false, true)),
            (MgmtMode::Nat, ours(true, "new"), Some(true), Some(&b), true, D::Unchanged),
            (MgmtMode::Isolated, ours(false, "new"), Some(false), Some(&b), false, apply(false, false, true)),
            // A changed definition: restarted only while no node of the lab runs on it.
            (MgmtMode::Isolated, ours(true, "old"), Some(true), Some(&b), false, apply(true, true, true)),
            (MgmtMode::Isolated, ours(true, "old"), Some(true), Some(&b), true, D::DefinePending { new_macs: vec![] }),
            (MgmtMode::Bridge, ours(false, "old"), Some(false), Some(&b), false, apply(true, false, true)),
            (
                MgmtMode::Isolated,
                foreign.clone(),
                Some(true),
                Some(&b),
                false,
                D::Refuse("network lab-x exists and was not made by lab; lab never changes a network it did not make".into()),
            ),
            (
                MgmtMode::Isolated,
                NetworkFacts::Absent,
                None,
                None,
                false,
                D::Refuse("no definition of network lab-x in the build (run `lab generate`)".into()),
            ),
            // An operator's network: used when active, never started or made.
            (MgmtMode::Existing, foreign.clone(), Some(true), None, false, D::Use),
            (
                MgmtMode::Existing,
                foreign.clone(),
                Some(false),
                None,
                false,
                D::Refuse("network lab-x is not active, and lab never starts a network it did not make".into()),
            ),
            (
                MgmtMode::Existing,
                NetworkFacts::Absent,
                None,
                None,
                false,
                D::Refuse("network lab-x does not exist (mgmt mode `existing` uses it, never makes it)".into()),
            ),
        ];
        for (i, (mode, facts, existing, build, running, expected)) in table.into_iter().enumerate()
        {
            let got = decide_network(mode, "lab-x", &facts, existing, build, running);
            assert_eq!(got, expected, "row {i}: {mode:?} {facts:?}");
        }
    }
}

/// The reservations a running network gets for new nodes come from its `<dhcp>` alone.
#[cfg(test)]
#[test]
fn dhcp_hosts_are_read_from_dhcp_only() {
    let xml = b"<network><dns><host ip='10.9.0.9'><hostname>x</hostname></host></dns>\
        <ip address='10.9.0.254' netmask='255.255.255.0'><dhcp>\
        <host mac='52:54:00:03:00:01' name='d1' ip='10.9.0.1'/>\
        <host mac='52:54:00:03:00:02' name='d2' ip='10.9.0.2'/></dhcp></ip></network>";
    assert_eq!(
        dhcp_hosts(xml, &["52:54:00:03:00:02".to_owned()]),
        ["<host mac='52:54:00:03:00:02' name='d2' ip='10.9.0.2'/>"]
    );
    assert!(dhcp_hosts(xml, &["52:54:00:03:00:09".to_owned()]).is_empty());
}
