//! `lab destroy`: confirm on a terminal, take the lab's lock and destroy every selected node.

use std::io::{BufRead, IsTerminal};

use crate::commands::Verb;
use crate::exit::{Exit, Failure};
use crate::remote::change_nodes;
use crate::render;
use crate::settings::{Destroy, Output};

pub fn run(out: &Output, s: &Destroy) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    if nodes.len() > 1 && s.confirm && std::io::stdin().is_terminal() {
        let hosts: Vec<&str> = lab
            .hypervisors_of(&nodes)
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        eprint!(
            "Destroy {} nodes of lab {} on {}? [y/N] ",
            nodes.len(),
            lab.name,
            hosts.join(", ")
        );
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(Failure::new(
                Exit::Failure,
                "not confirmed; nothing was changed",
            ));
        }
    }
    let request = lab_destroy::DestroyRequest {
        lab: &lab,
        nodes: nodes.clone(),
        owners: lab_hv::own::Owners {
            me: lab_hv::owner(),
            also: s.owners.clone(),
        },
    };
    let reports = change_nodes(
        out,
        &lab,
        &nodes,
        Verb::Destroy,
        s.mode,
        s.lock_wait,
        async |exec, events| lab_destroy::destroy(exec, &request, events).await,
    )?;
    render::node_reports(
        out,
        &lab,
        Verb::Destroy,
        &reports.networks,
        &reports.nodes,
        s.mode,
        &render::Then::default(),
    )
}
