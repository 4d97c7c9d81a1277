//! `lab validate` (and `create --validate`): the checks of `lab_reach::validate`, a progress
//! line on a terminal, a table per node and check kind, and the exit status.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lab_generate::Trust;
use lab_model::{Lab, LabNode};
use lab_reach::validate::{Daemons, NodePlan, Pace, Validation};

use crate::exit::{Exit, Failure};
use crate::remote::{drive, executor_for};
use crate::render;
use crate::settings::{Mode, Output, Validate};

pub fn run(out: &Output, s: &Validate) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let overlay = lab_generate::resolve_overlay(&lab, s.build.overlay.as_deref())?
        .name
        .clone();
    let result = check(
        out,
        &lab,
        &nodes,
        &s.build.dir,
        &overlay,
        s.timeout_secs,
        None,
        true,
    )?;
    judge(&result)
}

/// Validates `nodes`, whose builds are in `build` under `overlay`; `since` is how long ago the
/// run started (create's start), added to the time to converged. `print`: the table (or JSON
/// document) goes to stdout.
#[allow(clippy::too_many_arguments)] // one call from each verb; a struct would only rename them
pub fn check(
    out: &Output,
    lab: &Lab,
    nodes: &[&LabNode],
    build: &std::path::Path,
    overlay: &str,
    timeout_secs: u64,
    since: Option<Duration>,
    print: bool,
) -> Result<Validation, Failure> {
    let mut plans = Vec::with_capacity(nodes.len());
    for node in nodes {
        let built = lab_generate::read_node(build, &lab.name, overlay, node, Trust::Manifest)
            .map_err(|e| {
                Failure::invalid(format!(
                    "{e} (validate reads which routing daemons a node runs from its build: \
                     `lab generate` or `lab create` with overlay {overlay} first)"
                ))
            })?;
        plans.push(NodePlan {
            node,
            daemons: Daemons::of_tree(&built.tree),
        });
    }
    let bar = (!out.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("validate [{bar:30}] {pos}/{len} checks passed {msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        b.enable_steady_tick(Duration::from_millis(500));
        b
    });
    let pace = Pace {
        timeout: Duration::from_secs(timeout_secs),
        interval: Duration::from_secs(2),
    };
    let executor = executor_for(&lab.hypervisors_of(nodes), Mode::Live);
    let mut result = drive(executor, async |e| {
        lab_reach::validate::validate(e, lab, &plans, pace, &|passed, total| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(passed as u64);
            }
        })
        .await
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let (Some(since), Some(after)) = (since, result.converged_after_secs.as_mut()) {
        *after += since.as_secs_f64();
    }
    if print {
        render::validation(out, &result, since.is_some());
    }
    Ok(result)
}

/// 0 when every check passed; 1 when one failed; 3 when every check that ran passed but a node
/// could not be reached.
pub fn judge(v: &Validation) -> Result<(), Failure> {
    let failed: Vec<String> = v
        .checks
        .iter()
        .filter(|c| !c.ok && !v.unreachable.iter().any(|(n, _)| *n == c.node))
        .map(|c| match &c.peer {
            Some(peer) => format!("{} {} {} ({peer}): {}", c.node, c.kind, c.name, c.seen),
            None => format!("{} {} {}: {}", c.node, c.kind, c.name, c.seen),
        })
        .collect();
    if !failed.is_empty() {
        let more = if failed.len() > 5 {
            format!(" and {} more", failed.len() - 5)
        } else {
            String::new()
        };
        return Err(Failure::new(
            Exit::Failure,
            format!(
                "validate: {} of {} check(s) failed: {}{more}",
                failed.len(),
                v.checks.len(),
                failed[..failed.len().min(5)].join("; ")
            ),
        ));
    }
    if !v.unreachable.is_empty() {
        return Err(Failure::new(
            Exit::Partial,
            format!(
                "validate: not reached: {}",
                v.unreachable
                    .iter()
                    .map(|(n, why)| format!("{n} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(())
}
