//! `lab start`, `stop` and `restart`: the selected nodes' domains, under the lab's lock.

use crate::commands::Verb;
use crate::exit::Failure;
use crate::remote::change_nodes;
use crate::settings::{Output, PowerNodes};

pub fn run(out: &Output, s: &PowerNodes) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let verb = match s.what {
        lab_reach::Power::Start => Verb::Start,
        lab_reach::Power::Stop => Verb::Stop,
        lab_reach::Power::Restart => Verb::Restart,
    };
    let (reports, impaired) = change_nodes(
        out,
        &lab,
        &nodes,
        verb,
        s.mode,
        s.lock_wait,
        async |exec, events| {
            let reports = lab_reach::power(exec, &lab, &nodes, s.what, s.grace, events).await;
            // A started node's QEMU is new: the lab file's impairments on its links again.
            let impaired = if s.what != lab_reach::Power::Stop && !s.mode.is_dry_run() {
                crate::commands::link::apply_declared(exec, &lab, &nodes, &reports, events).await
            } else {
                Ok(Vec::new())
            };
            (reports, impaired)
        },
    )?;
    crate::commands::link::reports_then_declared(out, &lab, verb, &reports, s.mode, impaired)
}
