//! `lab start`, `stop` and `restart`: a node's domain only; its clone, its network and the
//! wires of its links stay as they are (a restarted node's wires bind their ports again).

use lab_exec::{Cmd, Executor};
use lab_hv::own::{CloneFacts, inspect};
use lab_hv::plan::Work;
use lab_hv::run::failed;
use lab_hv::{Events, HostState, NodeReport, Outcome, cmd};
use lab_model::{Hypervisor, Lab, LabNode, Storage};

/// What to do with the nodes' domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    /// Asks the guest to shut down (ACPI) and powers the domain off when it has not within
    /// the grace time (at once with no grace).
    Stop,
    Restart,
}

/// Starts, stops or restarts every node whose domain `lab` defined for it; any other node is
/// skipped, and one already as asked is unchanged. A stop gives each guest `grace` seconds to
/// shut down by itself (0: powered off at once).
pub async fn power(
    exec: &Executor,
    lab: &Lab,
    nodes: &[&LabNode],
    what: Power,
    grace: u64,
    events: Events<'_>,
) -> Vec<NodeReport> {
    let states = lab_hv::run::probe_nodes(exec, lab, nodes).await;
    // Each hypervisor's nodes in one exchange (`lab_hv::plan`), all hypervisors at once.
    lab_hv::plan::each_hypervisor(
        exec,
        lab,
        nodes,
        &states,
        events,
        |hv, node, state| steps_for(hv, &lab.name, node, state, what, grace),
        |node, powered_off, result| match result {
            Err((step, e)) => failed(node, step, &e, false),
            Ok(printed) => {
                let note = match cmd::ShutDown::read(&printed.join("\n")) {
                    Some(cmd::ShutDown::Guest(secs)) => {
                        Some(format!("the guest shut down in {secs} s"))
                    }
                    Some(cmd::ShutDown::Forced) => Some(format!(
                        "powered off: the guest did not shut down within {grace} s"
                    )),
                    None if powered_off => Some("powered off".to_owned()),
                    // a dry run, or nothing to say
                    None => None,
                };
                NodeReport {
                    note,
                    ..NodeReport::new(node, Outcome::Done)
                }
            }
        },
    )
    .await
}

/// What `what` needs done to the node's domain (and whether it is powered off at once), or its
/// report when nothing is (not this lab's, no complete clone, wires taken, already as asked).
fn steps_for(
    hv: &Hypervisor,
    lab: &str,
    node: &LabNode,
    state: &HostState,
    what: Power,
    grace: u64,
) -> Work<bool> {
    let ends = |report: NodeReport| Work::Ends(Box::new(report));
    let facts = match inspect(hv, lab, node, state) {
        Ok(f) => f,
        Err(e) => return ends(failed(node, "inspect", &e, false)),
    };
    let skip = |reason: String| ends(NodeReport::new(node, Outcome::Skipped { reason }));
    if !facts.domain.ours() {
        return skip(format!(
            "domain {} was not defined by lab for this node (create it first)",
            node.domain
        ));
    }
    if !matches!(facts.clone, CloneFacts::Ours { filling: false, .. }) {
        return skip(format!(
            "no complete clone {} of this lab (create it first)",
            node.dataset
        ));
    }
    let running = facts.domain.running();
    if matches!(what, Power::Start | Power::Restart)
        && !running
        && let Some(why) = facts.wires.refusal()
    {
        return skip(why);
    }
    let mut steps: Vec<(&'static str, Cmd)> = Vec::new();
    let powered_off = matches!(what, Power::Stop | Power::Restart) && running && grace == 0;
    if matches!(what, Power::Stop | Power::Restart) && running {
        if grace == 0 {
            steps.push(("stop", cmd::stop(node)));
        } else {
            steps.push(("shut down", cmd::shut_down(node, grace)));
        }
    }
    if matches!(what, Power::Start | Power::Restart) && (!running || what == Power::Restart) {
        match hv.storage {
            Storage::Dataset => steps.push(("mount", cmd::attach(hv, node))),
            // A zvol a cut run left mounted on the hypervisor (`push`) is let go first: the
            // guest's kernel mounts it.
            Storage::Zvol => steps.push(("unmount", cmd::detach(hv, node))),
        }
        steps.push(("start", cmd::start(hv, node)));
    }
    if steps.is_empty() {
        let how = if running { "running" } else { "stopped" };
        return ends(NodeReport::new(
            node,
            Outcome::Unchanged {
                reason: format!("already {how}"),
            },
        ));
    }
    Work::Steps(steps, powered_off)
}
