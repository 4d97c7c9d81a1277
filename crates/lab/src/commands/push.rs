//! `lab push`: generate into a directory of this run's own, read it back, take the lab's
//! lock and bring each node's changed files into it; then refresh `build/`.

use std::collections::HashMap;
use std::io::Write;

use lab_change::{PushReport, PushRequest};
use lab_hv::Outcome;

use crate::commands::Verb;
use crate::commands::create::{RunDir, generate, publish};
use crate::exit::{Exit, Failure};
use crate::remote::change_nodes;
use crate::render::print_json;
use crate::settings::{Format, Output, Push};

pub fn run(out: &Output, s: &Push) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let overlay = lab_generate::resolve_overlay(&lab, s.build.overlay.as_deref())?
        .name
        .clone();
    let own = RunDir::new(&s.build.dir);
    generate(out, &lab, &nodes, &overlay, &own.dir)?;
    let mut builds = HashMap::new();
    for node in &nodes {
        let build = lab_generate::read_node(
            &own.dir,
            &lab.name,
            &overlay,
            node,
            lab_generate::Trust::Manifest,
        )?;
        builds.insert(node.name.clone(), build);
    }
    let request = PushRequest {
        lab: &lab,
        nodes: nodes.clone(),
        builds,
        owners: lab_hv::own::Owners {
            me: lab_hv::owner(),
            also: s.owners.clone(),
        },
        reload: s.reload,
    };
    let (reports, published) = change_nodes(
        out,
        &lab,
        &nodes,
        Verb::Push,
        s.mode,
        s.lock_wait,
        async |exec, events| {
            let reports = lab_change::push::push(exec, &request, events).await;
            // `build/` shows what the clones now hold: published under the same lock.
            let pushed = reports
                .iter()
                .any(|r| matches!(r.report.outcome, Outcome::Done | Outcome::Unchanged { .. }));
            let published = if pushed && !s.mode.is_dry_run() {
                publish(out, &own, &s.build.dir, &overlay, &lab, &nodes)
            } else {
                Ok(())
            };
            (reports, published)
        },
    )?;
    published?;
    render(out, &lab.name, &reports, s.mode.is_dry_run())?;
    let failed = reports
        .iter()
        .filter(|r| !matches!(r.report.outcome, Outcome::Done | Outcome::Unchanged { .. }))
        .count();
    if failed == 0 {
        return Ok(());
    }
    Err(Failure::new(
        Exit::Partial,
        format!("push: {failed} node(s) failed or were skipped"),
    ))
}

fn render(out: &Output, lab: &str, reports: &[PushReport], dry_run: bool) -> Result<(), Failure> {
    let summary = lab_hv::summary(&reports.iter().map(|r| r.report.clone()).collect::<Vec<_>>());
    if out.format == Format::Json {
        print_json(&serde_json::json!({
            "lab": lab,
            "verb": "push",
            "dry_run": dry_run,
            "summary": summary,
            "nodes": reports,
        }));
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    for r in reports {
        let n = &r.report;
        let what = match (&n.outcome, &r.files) {
            (Outcome::Done, None) => "not compared (a dry run does not mount its clone)".to_owned(),
            (Outcome::Done, Some(f)) if f.is_empty() => "no file changed".to_owned(),
            (Outcome::Done, Some(f)) => format!(
                "{} file(s) {}: {}",
                f.len(),
                if dry_run { "would change" } else { "changed" },
                f.join(", ")
            ),
            (Outcome::Skipped { reason } | Outcome::Unchanged { reason }, _) => reason.clone(),
            (Outcome::Failed { step, error, .. }, _) => format!("{step}: {error}"),
        };
        let word = match &n.outcome {
            Outcome::Done if dry_run => "planned",
            Outcome::Done => "pushed",
            other => other.word(),
        };
        let _ = writeln!(
            stdout,
            "{:<8} {:<16} {word:<10} {what}",
            n.hypervisor, n.node
        );
        if let Some(reload) = &r.reload {
            let how = match (reload.hook, reload.ok) {
                (false, _) => "no /etc/lab/reload on the node",
                (true, true) => "/etc/lab/reload ran",
                (true, false) => "/etc/lab/reload failed",
            };
            let _ = writeln!(stdout, "{:<8} {:<16} reload     {how}", "", "");
            for line in reload.output.iter().filter(|l| *l != lab_hv::cmd::NO_HOOK) {
                let _ = writeln!(stdout, "    | {line}");
            }
        }
        for c in &n.commands {
            let _ = writeln!(stdout, "    $ {c}");
        }
    }
    let _ = writeln!(
        stdout,
        "push {lab}{}: {} done, {} unchanged, {} skipped, {} failed",
        if dry_run { " (dry run)" } else { "" },
        summary.done,
        summary.unchanged,
        summary.skipped,
        summary.failed
    );
    Ok(())
}
