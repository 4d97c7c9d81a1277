//! `lab status`: one probe per hypervisor, every selected node explained against the build.

use std::time::Duration;

use crate::exit::{Exit, Failure};
use crate::remote::{drive, executor_for};
use crate::render;
use crate::settings::{Mode, Output, Status};

pub fn run(out: &Output, s: &Status) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    // Drift is only known where there is a build to compare with.
    let overlay = lab_generate::resolve_overlay(&lab, s.build.overlay.as_deref())
        .ok()
        .map(|o| o.name.clone());
    let mut expected = lab_hv::Expected::default();
    if let Some(o) = &overlay {
        for n in &nodes {
            if let Ok(build) = lab_generate::read_node(
                &s.build.dir,
                &lab.name,
                o,
                n,
                lab_generate::Trust::Manifest,
            ) {
                if let Some(macs) = build.domain_macs() {
                    expected.macs.insert(n.name.clone(), macs);
                }
                expected.digests.insert(n.name.clone(), build.digest);
            }
        }
        for hv in lab.hypervisors_of(&nodes) {
            if let Ok(Some(net)) =
                lab_generate::read_network(&s.build.dir, o, hv, lab_generate::Trust::Manifest)
            {
                expected.networks.insert(hv.name.clone(), net.sha256);
            }
        }
    }
    let exec = executor_for(&lab.hypervisors_of(&nodes), Mode::Live);
    let report = drive(exec, async |exec| {
        let mut report = lab_hv::status(exec, &lab, &nodes, &expected, lab_hv::now()).await;
        ready_phase(exec, &lab, &nodes, &mut report).await;
        report
    })?;
    render::status(out, &report);
    let unreachable = report.nodes.iter().filter(|n| n.error.is_some()).count();
    if unreachable > 0 {
        return Err(Failure::new(
            Exit::Partial,
            format!("{unreachable} node(s) could not be inspected"),
        ));
    }
    Ok(())
}

/// A running node of this lab (its domain marked for it) whose ssh server answers is
/// `ready` (one look, no waiting).
async fn ready_phase(
    exec: &lab_exec::Executor,
    lab: &lab_model::Lab,
    nodes: &[&lab_model::LabNode],
    report: &mut lab_hv::StatusReport,
) {
    let running: Vec<&lab_model::LabNode> = nodes
        .iter()
        .copied()
        .filter(|n| {
            report.nodes.iter().any(|s| {
                s.node == n.name
                    && s.phase.as_deref() == Some("running")
                    && s.foreign.is_none()
                    && s.foreign_domain.is_none()
            })
        })
        .collect();
    if running.is_empty() {
        return;
    }
    let how = lab_hv::reach::Readiness::Ssh;
    let looks = lab_reach::wait_owned(exec, lab, &running, &how, Duration::ZERO, &|_| {}).await;
    for look in looks.iter().filter(|l| l.ready) {
        if let Some(s) = report.nodes.iter_mut().find(|s| s.node == look.node) {
            s.phase = Some("ready".to_owned());
        }
    }
}
