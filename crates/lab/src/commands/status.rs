//! `lab status`: one probe per hypervisor, every selected node explained against the build.

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
        lab_hv::status(exec, &lab, &nodes, &expected, lab_hv::now()).await
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
