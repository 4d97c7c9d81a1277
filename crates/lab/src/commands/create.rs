//! `lab create`: take the lab's lock, generate (unless told not to) and read the build back
//! under it, then create every selected node.

use std::collections::HashMap;

use lab_model::{Lab, LabNode};

use crate::commands::Verb;
use crate::exit::Failure;
use crate::remote::change_nodes;
use crate::render;
use crate::settings::{Create, Output};

pub fn run(out: &Output, s: &Create) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let overlay = lab_generate::resolve_overlay(&lab, s.build.overlay.as_deref())?
        .name
        .clone();
    // The build is written and read under the lab's lock: a second create that is about to be
    // refused (exit 4) must not swap trees under this run's rsync.
    let reports = change_nodes(
        out,
        &lab,
        &nodes,
        Verb::Create,
        s.mode,
        s.lock_wait,
        async |exec, events| -> Result<_, Failure> {
            let request = request(s, &lab, &nodes, &overlay)?;
            Ok(lab_create::create(exec, &request, events).await?)
        },
    )??;
    render::node_reports(
        out,
        &lab,
        Verb::Create,
        &reports.networks,
        &reports.nodes,
        s.mode,
    )
}

/// Generates (unless `--no-generate`) and reads back what every node and network needs.
fn request<'a>(
    s: &Create,
    lab: &'a Lab,
    nodes: &[&'a LabNode],
    overlay: &str,
) -> Result<lab_create::CreateRequest<'a>, Failure> {
    if s.generate {
        let request = lab_generate::Request {
            lab,
            overlay: Some(overlay),
            build_dir: &s.build.dir,
            nodes,
        };
        lab_generate::generate(&request, &|_| {})?;
    }
    let mut builds = HashMap::new();
    for node in nodes {
        let build = lab_generate::read_node(&s.build.dir, &lab.name, overlay, node)?;
        builds.insert(node.name.clone(), build);
    }
    let mut networks = HashMap::new();
    for hv in lab.hypervisors_of(nodes) {
        if let Some(net) = lab_generate::read_network(&s.build.dir, overlay, hv)? {
            networks.insert(hv.name.clone(), net);
        }
    }
    Ok(lab_create::CreateRequest {
        lab,
        nodes: nodes.to_vec(),
        builds,
        networks,
        force: s.force,
        owner: lab_hv::owner(),
        now: lab_hv::now(),
    })
}
