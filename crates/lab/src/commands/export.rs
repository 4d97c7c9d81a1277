//! `lab inventory` and `lab graph`: the lab as other tools read it, from the lab files alone.

use std::io::Write;

use lab_export::InventoryFormat;

use crate::exit::{Exit, Failure};
use crate::settings::{Export, GraphFormat};

pub fn inventory(s: &Export<InventoryFormat>) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    print!("{}", lab_export::inventory(&lab, &nodes, s.format));
    Ok(())
}

pub fn graph(s: &Export<GraphFormat>) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let format = match s.format {
        GraphFormat::Mermaid => lab_export::GraphFormat::Mermaid,
        GraphFormat::Dot | GraphFormat::Svg => lab_export::GraphFormat::Dot,
    };
    let text = lab_export::graph(&lab, &nodes, format);
    if s.format != GraphFormat::Svg {
        print!("{text}");
        return Ok(());
    }
    let argv = ["dot".to_owned(), "-Tsvg".to_owned()];
    let svg = lab_exec::local::filter(&argv, text.as_bytes()).map_err(|e| match e {
        lab_exec::ExecError::Local { .. } => Failure::new(
            Exit::Failure,
            format!(
                "--format svg needs Graphviz's `dot` ({e}); install graphviz (apt install graphviz), \
                 or print --format dot and draw it elsewhere"
            ),
        ),
        other => other.into(),
    })?;
    let _ = std::io::stdout().lock().write_all(&svg);
    Ok(())
}
