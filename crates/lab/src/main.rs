//! The `lab` command: parses arguments, calls the library crates, prints results and maps
//! errors to exit codes. The only crate that prints.

mod cli;
mod progress;
mod proto;

use std::io::Write;
use std::process::ExitCode;

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal};
use std::path::Path;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, ConfigCommand, Format};
use lab_generate::GenerateError;
use lab_model::{Lab, LabNode, ModelError};
use lab_ops::{NodeReport, Outcome};

/// Exit codes, documented in the README and `lab --help`.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Exit {
    Failure = 1,
    Invalid = 2,
    Partial = 3,
    Locked = 4,
}

/// An error on its way to the user: the message and the exit code.
pub(crate) struct Failure {
    code: Exit,
    message: String,
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        let code = match e {
            ModelError::Io { .. } => Exit::Failure,
            _ => Exit::Invalid,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<GenerateError> for Failure {
    fn from(e: GenerateError) -> Self {
        let code = match e {
            GenerateError::Io { .. } => Exit::Failure,
            _ => Exit::Invalid,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code as u8)
        }
    }
}

pub(crate) fn invalid(message: String) -> Failure {
    Failure {
        code: Exit::Invalid,
        message,
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Create(args) => create(cli, args),
        Command::Destroy(args) => destroy(cli, args),
        Command::Status(args) => status(cli, args),
        Command::Generate(args) => {
            let lab = lab_model::load(&args.lab.files)?;
            let progress = progress::Progress::new(cli.quiet);
            let request = lab_generate::Request {
                lab: &lab,
                overlay: args.out.overlay.as_deref(),
                build_dir: &args.out.build,
                hosts: &args.select.hosts,
                nodes: &args.select.nodes,
            };
            let result = lab_generate::generate(&request, &|e| progress.on_event(e));
            progress.finish();
            let output = result?;
            match cli.format {
                Format::Json => print_json(&output),
                Format::Text if !cli.quiet => {
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
        Command::Config(ConfigCommand::Show { lab, explain }) => {
            let lab = lab_model::load(&lab.files)?;
            match cli.format {
                Format::Json => print_json(&lab.effective.to_json()),
                Format::Text => print!("{}", lab_model::to_yaml(&lab.effective, *explain)),
            }
            Ok(())
        }
        Command::Proto(cmd) => proto::run(cli, cmd),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "lab", &mut std::io::stdout());
            Ok(())
        }
    }
}

pub(crate) fn print_json(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// A current-thread runtime: the work is waiting on ssh, not computing.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: Exit::Failure,
            message: format!("cannot start the async runtime: {e}"),
        })
}

/// Runs `work` with the executor on a fresh runtime, then closes its ssh masters.
pub(crate) fn drive<T>(
    exec: lab_exec::Executor,
    work: impl AsyncFnOnce(&lab_exec::Executor) -> T,
) -> Result<T, Failure> {
    Ok(runtime()?.block_on(async {
        let out = work(&exec).await;
        exec.close().await;
        out
    }))
}

/// The lock a verb that changes something takes: its name, and the hypervisors it is taken
/// on, in that order.
pub(crate) struct Lock<'a> {
    pub name: String,
    pub on: Vec<&'a lab_model::Hypervisor>,
    /// Recorded as the holder's verb: one word.
    pub verb: &'a str,
    pub wait: u64,
}

/// Like [`drive`], for a verb that changes something: takes `lock` first and releases it after
/// `work`. Under `--dry-run` nothing is locked, but the guard is set, so the commands printed
/// are the ones a real run sends.
pub(crate) fn drive_locked<T>(
    exec: lab_exec::Executor,
    lock: &Lock<'_>,
    dry_run: bool,
    work: impl AsyncFnOnce(&lab_exec::Executor) -> T,
) -> Result<Result<T, lab_ops::LockError>, Failure> {
    let me = lab_ops::Holder {
        owner: lab_ops::owner(),
        pid: std::process::id(),
        verb: lock.verb.to_owned(),
        since: lab_ops::now(),
    };
    let waiting = |host: &str, holder: &lab_ops::Holder| {
        eprintln!(
            "lab: waiting up to {} s for the lock of lab `{}` on {host}, held by {holder}",
            lock.wait, lock.name
        );
    };
    drive(exec, async |exec| {
        let locks = if dry_run {
            lab_ops::lock::guard_only(exec, &lock.name, &lock.on);
            None
        } else {
            Some(lab_ops::lock(exec, &lock.name, &lock.on, &me, lock.wait, &waiting).await?)
        };
        let out = work(exec).await;
        if let Some(locks) = locks {
            locks.release().await;
        }
        Ok(out)
    })
}

/// The lab's own lock, on the hypervisors that carry `nodes`.
fn lab_lock<'a>(lab: &'a Lab, nodes: &[&LabNode], verb: &'a str, args: &cli::LockArgs) -> Lock<'a> {
    Lock {
        name: lab.name.clone(),
        on: lab_ops::hypervisors_of(lab, nodes),
        verb,
        wait: args.lock_wait,
    }
}

impl From<lab_ops::LockError> for Failure {
    fn from(e: lab_ops::LockError) -> Self {
        Failure {
            code: match e {
                lab_ops::LockError::Held { .. } => Exit::Locked,
                lab_ops::LockError::Failed { .. } => Exit::Failure,
            },
            message: format!("{e}; nothing was changed"),
        }
    }
}

fn executor(lab: &Lab, nodes: &[&LabNode], dry_run: bool) -> lab_exec::Executor {
    executor_for(&lab_ops::hypervisors_of(lab, nodes), dry_run)
}

/// An executor for `hypervisors`: live, or recording changes under `--dry-run`.
pub(crate) fn executor_for(
    hypervisors: &[&lab_model::Hypervisor],
    dry_run: bool,
) -> lab_exec::Executor {
    let mode = if dry_run {
        lab_exec::Mode::DryRun
    } else {
        lab_exec::Mode::Live
    };
    lab_exec::Executor::new(
        mode,
        hypervisors.iter().map(|h| lab_ops::target(h)).collect(),
        32,
    )
}

/// What generate left for each node: its tree, digest and domain XML.
fn read_builds(
    build_dir: &Path,
    overlay: &str,
    nodes: &[&LabNode],
) -> Result<HashMap<String, lab_ops::create::NodeBuild>, Failure> {
    let mut builds = HashMap::new();
    for node in nodes {
        let (tree, manifest, domain) = lab_generate::node_paths(build_dir, overlay, node);
        let text = std::fs::read_to_string(&manifest).map_err(|e| {
            invalid(format!(
                "{}: {e} (run `lab generate` first, or drop --no-generate)",
                manifest.display()
            ))
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("{}: not a manifest: {e}", manifest.display())))?;
        let digest = json["digest"].as_str().unwrap_or_default().to_owned();
        let domain_xml = std::fs::read(&domain).ok();
        builds.insert(
            node.name.clone(),
            lab_ops::create::NodeBuild {
                tree,
                digest,
                domain_xml,
            },
        );
    }
    Ok(builds)
}

fn create(cli: &Cli, args: &cli::CreateArgs) -> Result<(), Failure> {
    let lab = lab_model::load(&args.lab.files)?;
    let nodes = lab_generate::select(&lab, &args.select.hosts, &args.select.nodes)?;
    let overlay = lab_generate::resolve_overlay(&lab, args.out.overlay.as_deref())?
        .name
        .clone();
    if !args.no_generate {
        let request = lab_generate::Request {
            lab: &lab,
            overlay: Some(&overlay),
            build_dir: &args.out.build,
            hosts: &args.select.hosts,
            nodes: &args.select.nodes,
        };
        lab_generate::generate(&request, &|_| {})?;
    }
    let builds = read_builds(&args.out.build, &overlay, &nodes)?;
    let exec = executor(&lab, &nodes, args.dry_run);
    let request = lab_ops::CreateRequest {
        lab: &lab,
        nodes: nodes.clone(),
        builds,
        force: args.force,
        owner: lab_ops::owner(),
        now: lab_ops::now(),
    };
    let progress =
        progress::NodeProgress::new(cli.quiet || args.dry_run, cli.verbose, &pairs(&nodes));
    let lock = lab_lock(&lab, &nodes, "create", &args.lock);
    let reports = drive_locked(exec, &lock, args.dry_run, async |exec| {
        lab_ops::create(exec, &request, &|e| progress.on_event(e)).await
    })??;
    progress.finish();
    let reports = reports.map_err(|e| invalid(e.to_string()))?;
    finish(cli, &lab, "create", &reports, args.dry_run)
}

fn destroy(cli: &Cli, args: &cli::DestroyArgs) -> Result<(), Failure> {
    let lab = lab_model::load(&args.lab.files)?;
    let nodes = lab_generate::select(&lab, &args.select.hosts, &args.select.nodes)?;
    if nodes.len() > 1 && !args.yes && !args.dry_run && std::io::stdin().is_terminal() {
        let hosts: Vec<&str> = lab_ops::hypervisors_of(&lab, &nodes)
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
            return Err(Failure {
                code: Exit::Failure,
                message: "not confirmed; nothing was changed".to_owned(),
            });
        }
    }
    let exec = executor(&lab, &nodes, args.dry_run);
    let request = lab_ops::DestroyRequest {
        lab: &lab,
        nodes: nodes.clone(),
    };
    let progress =
        progress::NodeProgress::new(cli.quiet || args.dry_run, cli.verbose, &pairs(&nodes));
    let lock = lab_lock(&lab, &nodes, "destroy", &args.lock);
    let reports = drive_locked(exec, &lock, args.dry_run, async |exec| {
        lab_ops::destroy(exec, &request, &|e| progress.on_event(e)).await
    })??;
    progress.finish();
    finish(cli, &lab, "destroy", &reports, args.dry_run)
}

fn pairs<'a>(nodes: &[&'a LabNode]) -> Vec<(&'a str, &'a str)> {
    nodes
        .iter()
        .map(|n| (n.name.as_str(), n.hypervisor.as_str()))
        .collect()
}

/// Prints the per-node result and turns it into the exit code: any node failed or skipped is
/// "partial" (3), every node failed is a failure (1).
fn finish(
    cli: &Cli,
    lab: &Lab,
    verb: &str,
    reports: &[NodeReport],
    dry_run: bool,
) -> Result<(), Failure> {
    let summary = lab_ops::summary(reports);
    match cli.format {
        Format::Json => print_json(&serde_json::json!({
            "lab": lab.name,
            "verb": verb,
            "dry_run": dry_run,
            "summary": summary,
            "nodes": reports,
        })),
        Format::Text => {
            let mut out = std::io::stdout().lock();
            for r in reports {
                let (word, detail) = match &r.outcome {
                    Outcome::Done if dry_run => ("planned", String::new()),
                    Outcome::Done => (
                        if verb == "create" {
                            "created"
                        } else {
                            "destroyed"
                        },
                        r.snapshot.clone().unwrap_or_default(),
                    ),
                    Outcome::Unchanged { reason } => ("unchanged", reason.clone()),
                    Outcome::Skipped { reason } => ("skipped", reason.clone()),
                    Outcome::Failed {
                        step,
                        error,
                        rolled_back,
                    } => (
                        "failed",
                        format!(
                            "{step}: {error}{}",
                            if *rolled_back { " (rolled back)" } else { "" }
                        ),
                    ),
                };
                let _ = writeln!(
                    out,
                    "{:<8} {:<16} {:<10} {detail}",
                    r.hypervisor, r.node, word
                );
                for c in &r.commands {
                    let _ = writeln!(out, "    $ {c}");
                }
            }
            if !cli.quiet {
                eprintln!(
                    "{verb} {}: {} done, {} unchanged, {} skipped, {} failed",
                    lab.name, summary.done, summary.unchanged, summary.skipped, summary.failed
                );
            }
        }
    }
    if summary.failed > 0 && summary.failed == reports.len() {
        Err(Failure {
            code: Exit::Failure,
            message: format!("{verb}: every node failed"),
        })
    } else if summary.failed + summary.skipped > 0 {
        Err(Failure {
            code: Exit::Partial,
            message: format!(
                "{verb}: {} node(s) skipped, {} failed",
                summary.skipped, summary.failed
            ),
        })
    } else {
        Ok(())
    }
}

fn status(cli: &Cli, args: &cli::StatusArgs) -> Result<(), Failure> {
    let lab = lab_model::load(&args.lab.files)?;
    let nodes = lab_generate::select(&lab, &args.select.hosts, &args.select.nodes)?;
    let overlay = lab_generate::resolve_overlay(&lab, args.out.overlay.as_deref())
        .ok()
        .map(|o| o.name.clone());
    let digests: HashMap<String, String> = match &overlay {
        Some(o) => read_builds(&args.out.build, o, &nodes)
            .map(|b| b.into_iter().map(|(k, v)| (k, v.digest)).collect())
            .unwrap_or_default(),
        None => HashMap::new(),
    };
    let exec = executor(&lab, &nodes, false);
    let report = drive(exec, async |exec| {
        lab_ops::status(exec, &lab, &nodes, &digests, lab_ops::now()).await
    })?;
    match cli.format {
        Format::Json => print_json(&report),
        Format::Text => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<8} {:<16} {:<10} {:<6} {:<36} {:>8} {:<20} DRIFT",
                "HV", "NODE", "DOMAIN", "CLONE", "ORIGIN", "AGE", "OWNER"
            );
            for n in &report.nodes {
                let mut drift = Vec::new();
                if n.overlay_drift == Some(true) {
                    drift.push("overlay changed".to_owned());
                }
                if let Some(s) = &n.newer_snapshot {
                    drift.push(format!("newer {s}"));
                }
                if n.state.as_deref() == Some(lab_ops::probe::prop::FILLING) {
                    drift.push(
                        "INCOMPLETE: an interrupted create left it (create redoes it)".to_owned(),
                    );
                }
                if let Some(f) = &n.foreign {
                    drift.push(format!("NOT OURS: {f}"));
                }
                if let Some(e) = &n.error {
                    drift.push(e.clone());
                }
                let _ = writeln!(
                    out,
                    "{:<8} {:<16} {:<10} {:<6} {:<36} {:>8} {:<20} {}",
                    n.hypervisor,
                    n.node,
                    n.domain,
                    if n.clone { "yes" } else { "no" },
                    n.origin.as_deref().unwrap_or("-"),
                    n.age_seconds.map_or("-".to_owned(), age),
                    n.owner.as_deref().unwrap_or("-"),
                    if drift.is_empty() {
                        "-".to_owned()
                    } else {
                        drift.join("; ")
                    }
                );
            }
            for o in &report.orphans {
                let _ = writeln!(
                    out,
                    "orphan: {} {} (node {}, not in the lab file)",
                    o.hypervisor, o.dataset, o.node
                );
            }
        }
    }
    let unreachable = report.nodes.iter().filter(|n| n.error.is_some()).count();
    if unreachable > 0 {
        return Err(Failure {
            code: Exit::Partial,
            message: format!("{unreachable} node(s) could not be inspected"),
        });
    }
    Ok(())
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
