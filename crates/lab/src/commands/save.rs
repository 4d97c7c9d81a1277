//! `lab save`: the paths to save (the overlay's `save` file, or `--path`), checked before
//! anything is asked; then every node's, into a directory of the run's own by default.

use std::io::Write;
use std::path::PathBuf;

use lab_change::SaveRequest;
use lab_hv::Outcome;

use crate::exit::{Exit, Failure};
use crate::remote::{drive, executor_for};
use crate::render::print_json;
use crate::settings::{Format, Mode, Output, Save};

pub fn run(out: &Output, s: &Save) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let paths = if s.paths.is_empty() {
        let overlay = lab_generate::resolve_overlay(&lab, s.overlay.as_deref())?;
        let paths = lab_generate::save_paths(&overlay.dir)?;
        if paths.is_empty() {
            return Err(Failure::invalid(format!(
                "overlay `{}` names no paths to save: write them into {}, one per line \
                 (e.g. etc/bird), or give --path PATH",
                overlay.name,
                overlay.dir.join(lab_generate::SAVE_FILE).display()
            )));
        }
        paths
    } else {
        for p in &s.paths {
            let plain = !p.is_empty()
                && std::path::Path::new(p)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
                && !p.contains(char::is_whitespace);
            if !plain {
                return Err(Failure::invalid(format!(
                    "--path `{p}` must be relative to the guests' `/` (etc/bird), without `..`, \
                     `.` or spaces"
                )));
            }
        }
        s.paths.clone()
    };
    let to = match &s.to {
        Some(dir) => dir.clone(),
        // A directory of its own, even for two runs in one second.
        None => {
            let base =
                PathBuf::from("saved").join(format!("{}-{}", lab.name, stamp(lab_hv::now())));
            let mut to = base.clone();
            let mut n = 1;
            while to.exists() {
                n += 1;
                to = PathBuf::from(format!("{}-{n}", base.display()));
            }
            to
        }
    };
    let request = SaveRequest {
        lab: &lab,
        nodes: nodes.clone(),
        paths,
        to,
    };
    let exec = executor_for(&lab.hypervisors_of(&nodes), Mode::Live);
    let reports = drive(exec, async |exec| {
        lab_change::save::save(exec, &request, &|_| {}).await
    })?;
    let done = reports
        .iter()
        .filter(|r| matches!(r.report.outcome, Outcome::Done))
        .count();
    match out.format {
        Format::Json => print_json(&serde_json::json!({
            "lab": lab.name,
            "dir": request.to,
            "paths": request.paths,
            "nodes": reports,
        })),
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            for r in &reports {
                let n = &r.report;
                let what = match &n.outcome {
                    Outcome::Done => {
                        let mut what = format!(
                            "{} file(s), {} bytes of tar, in {}",
                            r.files.len(),
                            r.bytes,
                            r.dir.display()
                        );
                        if !r.missing.is_empty() {
                            what.push_str(&format!("; it has no {}", r.missing.join(", ")));
                        }
                        if !r.refused.is_empty() {
                            what.push_str(&format!("; not read: {}", r.refused.join(", ")));
                        }
                        what
                    }
                    Outcome::Skipped { reason } | Outcome::Unchanged { reason } => reason.clone(),
                    Outcome::Failed { step, error, .. } => format!("{step}: {error}"),
                };
                let word = match n.outcome {
                    Outcome::Done => "saved",
                    ref o => o.word(),
                };
                let _ = writeln!(
                    stdout,
                    "{:<8} {:<16} {word:<10} {what}",
                    n.hypervisor, n.node
                );
            }
            let _ = writeln!(
                stdout,
                "save {}: {done} of {} node(s) into {}",
                lab.name,
                reports.len(),
                request.to.display()
            );
        }
    }
    if done == reports.len() {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Partial,
            format!("save: {} node(s) not saved", reports.len() - done),
        ))
    }
}

/// `YYYYMMDD-HHMMSSZ` of a time in seconds since the epoch, in UTC: a directory name.
fn stamp(secs: u64) -> String {
    lab_hv::utc(secs)
        .replace(" UTC", "Z")
        .replace(['-', ':'], "")
        .replace(' ', "-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stamp_is_the_utc_date_and_time() {
        assert_eq!(super::stamp(0), "19700101-000000Z");
        assert_eq!(super::stamp(951_782_400), "20000229-000000Z");
        assert_eq!(super::stamp(1_796_519_330), "20261206-010850Z");
    }
}
