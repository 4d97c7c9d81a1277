//! `lab generate`: render the overlay for the selected nodes into the build directory.

use crate::exit::Failure;
use crate::progress::Progress;
use crate::render::print_json;
use crate::settings::Format;
use crate::settings::{Generate, Output};

pub fn run(out: &Output, s: &Generate) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let progress = Progress::new(out.quiet);
    let request = lab_generate::Request {
        lab: &lab,
        overlay: s.build.overlay.as_deref(),
        build_dir: &s.build.dir,
        nodes: &nodes,
    };
    let result = lab_generate::generate(&request, &|e| progress.on_event(e));
    progress.finish();
    let output = result?;
    match out.format {
        Format::Json => print_json(&output),
        Format::Text if !out.quiet => {
            eprintln!(
                "generated {} node(s) of lab {} with overlay {} in {}",
                output.nodes.len(),
                lab.name,
                output.overlay,
                output.build_dir.join(&output.overlay).display()
            );
        }
        Format::Text => {}
    }
    Ok(())
}
