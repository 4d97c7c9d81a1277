//! `lab doctor`: every hypervisor of the lab checked in one round trip each, before a first
//! create on a real fleet.

use crate::exit::{Exit, Failure};
use crate::remote::{drive, executor_for};
use crate::render;
use crate::settings::{Doctor, Mode, Output};

pub fn run(out: &Output, s: &Doctor) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let hosts = if lab.nodes.is_empty() {
        lab.hypervisors.iter().collect()
    } else {
        lab.hypervisors_of(&nodes)
    };
    let exec = executor_for(&hosts, Mode::Live);
    let report = drive(exec, async |exec| {
        lab_hv::doctor::doctor(exec, &lab, &nodes).await
    })?;
    render::doctor(out, &report);
    match report.failed() {
        0 => Ok(()),
        n => Err(Failure::new(
            Exit::Failure,
            format!("doctor: {n} check(s) failed; each says what to fix"),
        )),
    }
}
