//! Day two on running nodes: `console` and `ssh` (interactive, through the node's hypervisor),
//! `exec` (a command on many nodes at once) and `wait` (until they are ready).

use std::time::Duration;

use lab_model::{Lab, LabNode};
use lab_reach::WaitReport;

use crate::exit::{Exit, Failure};
use crate::progress::NodeProgress;
use crate::remote::{drive, executor_for};
use crate::render;
use crate::settings::{Exec, Mode, Output, Reach, Wait, WaitFor};

/// The one node `name` names (a glob must match exactly one).
fn one_node<'a>(lab: &'a Lab, name: &str) -> Result<&'a LabNode, Failure> {
    match lab.select(&[], &[name.to_owned()])?.as_slice() {
        [node] => Ok(node),
        many => Err(Failure::invalid(format!(
            "`{name}` matches {} nodes ({}); name one",
            many.len(),
            many.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Refuses a node whose domain `lab` did not define for this lab and node: the terminal is
/// handed to no one else's guest (or console).
fn check_owned(lab: &Lab, node: &LabNode) -> Result<(), Failure> {
    let hv = lab.hypervisor_of(node);
    let refused = drive(executor_for(&[hv], Mode::Live), async |e| {
        lab_reach::refusals(e, lab, &[node]).await
    })?;
    match refused.get(&node.name) {
        None => Ok(()),
        Some(why) => Err(Failure::new(
            Exit::Failure,
            format!("node {} on {}: {why}", node.name, hv.name),
        )),
    }
}

pub fn console(out: &Output, s: &Reach) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let node = one_node(&lab, &s.node)?;
    check_owned(&lab, node)?;
    let hv = lab.hypervisor_of(node);
    if !out.quiet {
        eprintln!(
            "lab: console of {} (domain {} on {}); leave with Ctrl+]",
            node.name, node.domain, hv.name
        );
    }
    let argv = lab_hv::reach::console_argv(hv, node, s.force);
    let status = lab_exec::local::interactive(&argv)?;
    passthrough(status)
}

pub fn ssh(out: &Output, s: &Reach) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let node = one_node(&lab, &s.node)?;
    let address = node.mgmt_address().ok_or_else(|| {
        Failure::invalid(format!(
            "node {} has no management address (set `mgmt_ipv4` on its hypervisor)",
            node.name
        ))
    })?;
    check_owned(&lab, node)?;
    let hv = lab.hypervisor_of(node);
    let argv = lab_hv::reach::ssh_argv(hv, node, &address, &s.command);
    let status = lab_exec::local::interactive(&argv)?;
    if status == 255 && !out.quiet {
        // ssh did not get there: one query on the hypervisor says whether the domain runs.
        let state = drive(executor_for(&[hv], Mode::Live), async |e| {
            e.output(&hv.name, &lab_hv::reach::domain_state(node)).await
        })
        .ok()
        .and_then(Result::ok)
        .map(|o| o.stdout.trim().to_owned());
        match state.as_deref() {
            None | Some("running") => {}
            Some("") => eprintln!(
                "lab: domain {} is not defined on {} (lab create --node {})",
                node.domain, hv.name, node.name
            ),
            Some(state) => eprintln!(
                "lab: domain {} is {state} on {} (lab start --node {})",
                node.domain, hv.name, node.name
            ),
        }
    }
    passthrough(status)
}

fn passthrough(status: i32) -> Result<(), Failure> {
    if status == 0 {
        Ok(())
    } else {
        Err(Failure::passthrough(status))
    }
}

pub fn exec(out: &Output, s: &Exec) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let executor = executor_for(&lab.hypervisors_of(&nodes), Mode::Live);
    let timeout = Duration::from_secs(s.timeout_secs);
    let reports = drive(executor, async |e| {
        lab_reach::exec(e, &lab, &nodes, &s.command, timeout).await
    })?;
    render::exec(out, &reports);
    let failed = reports.iter().filter(|r| r.failed()).count();
    match failed {
        0 => Ok(()),
        n => Err(Failure::new(
            Exit::Partial,
            format!(
                "exec: the command failed on {n} of {} node(s)",
                reports.len()
            ),
        )),
    }
}

pub fn wait(out: &Output, s: &Wait) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let reports = wait_for(out, &lab, &nodes, &s.until)?;
    render::waits(out, &reports);
    wait_exit(&reports)
}

/// Waits on the nodes' hypervisors until every node in `nodes` is ready, with a progress line
/// per node (waiting -> ready).
pub fn wait_for(
    out: &Output,
    lab: &Lab,
    nodes: &[&LabNode],
    until: &WaitFor,
) -> Result<Vec<WaitReport>, Failure> {
    let executor = executor_for(&lab.hypervisors_of(nodes), Mode::Live);
    let progress = NodeProgress::new(out.quiet, out.verbose, &render::pairs(nodes));
    let timeout = Duration::from_secs(until.timeout_secs);
    let reports = drive(executor, async |e| {
        lab_reach::wait(e, lab, nodes, &until.how, timeout, &|ev| {
            progress.on_event(ev)
        })
        .await
    })?;
    progress.finish();
    Ok(reports)
}

/// Every node ready: 0; some: partial (3); none: failure (1), as for create and destroy.
pub fn wait_exit(reports: &[WaitReport]) -> Result<(), Failure> {
    let late: Vec<String> = reports
        .iter()
        .filter(|r| !r.ready)
        .map(|r| match &r.error {
            Some(why) => format!("{} ({why})", r.node),
            None => format!("{} (not in time)", r.node),
        })
        .collect();
    if late.is_empty() {
        return Ok(());
    }
    let code = if late.len() == reports.len() {
        Exit::Failure
    } else {
        Exit::Partial
    };
    Err(Failure::new(
        code,
        format!("not ready: {}", late.join(", ")),
    ))
}
