//! `lab push`: each node's new build brought into it without recreating it, then its reload
//! hook. Where the guest's disk is not in use by another kernel (a dataset clone, shared with
//! the guest through 9p; a zvol clone whose domain is off) the hypervisor copies into the
//! clone as `create` does; a running zvol node is written through its own guest, over ssh
//! from the hypervisor. One plan per hypervisor carries every node's tree and steps; the
//! clone then records the build's digest, so `status` sees no drift. Nodes whose files
//! changed and that run get their hook (`/etc/lab/reload`, from the overlay) with the changed
//! paths, in a second exchange.

use std::collections::HashMap;

use lab_exec::{ExecError, Executor};
use lab_generate::NodeBuild;
use lab_hv::cmd::{self, PushMode};
use lab_hv::own::Owners;
use lab_hv::plan::{Extras, NodePlan, Trees, run_with, tree_archive};
use lab_hv::run::failed;
use lab_hv::{Events, HostState, NodeReport, Outcome};
use lab_model::{Hypervisor, Lab, LabNode, Storage};

use crate::snapshot::judged;

/// What `push` brings where.
pub struct PushRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// Each node's new build, read back after `generate`.
    pub builds: HashMap<String, NodeBuild>,
    /// Whose clones may be changed.
    pub owners: Owners,
    /// Run the nodes' reload hooks after (`--no-reload`: not).
    pub reload: bool,
}

/// What `push` did with one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    #[serde(flatten)]
    pub report: NodeReport,
    /// The paths it changed (or, in a dry run, would change), relative to the root; a new
    /// directory ends with `/`. `None`: not known (a dry run does not mount a clone to look
    /// into it: a zvol whose domain is off, a dataset not mounted).
    pub files: Option<Vec<String>>,
    /// How the reload hook went, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<Reload>,
}

/// How a node's reload hook went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reload {
    /// Whether the node has one (`/etc/lab/reload`, executable).
    pub hook: bool,
    pub ok: bool,
    /// What it printed (stdout, then stderr), a line each.
    pub output: Vec<String>,
}

/// How a node's files are reached.
#[derive(Clone)]
enum Way {
    /// In its clone, on the hypervisor (`attach`: a zvol, mounted for the push only).
    Clone { attach: bool },
    /// Through its running guest, at this address.
    Guest(String),
}

/// Pushes every node's build (see the module's doc). A node this run may not change (not a
/// complete clone of this lab, another owner's, a foreign domain on it) is skipped.
pub async fn push(exec: &Executor, req: &PushRequest<'_>, events: Events<'_>) -> Vec<PushReport> {
    let lab = req.lab;
    let states = lab_hv::run::probe_nodes(exec, lab, &req.nodes).await;
    let jobs = lab.hypervisors_of(&req.nodes).into_iter().map(|hv| {
        let states = &states;
        async move {
            let here: Vec<&LabNode> = req
                .nodes
                .iter()
                .copied()
                .filter(|n| n.hypervisor == hv.name)
                .collect();
            let state = match &states[hv.name.as_str()] {
                Ok(s) => s.as_ref(),
                Err(e) => {
                    return here
                        .iter()
                        .map(|n| unpushed(failed(n, "connect", e, false)))
                        .collect();
                }
            };
            let mut reports = Vec::new();
            let mut todo = Vec::new();
            for node in here {
                match way(hv, node, state, req, states) {
                    Ok(way) => todo.push((node, way)),
                    Err(report) => reports.push(unpushed(*report)),
                }
            }
            reports.extend(hypervisor(exec, req, hv, state, &todo, events).await);
            reports
        }
    });
    let per_hv = lab_hv::run::at_once_when_live(exec, jobs.collect()).await;
    let mut reports: Vec<PushReport> = per_hv.into_iter().flatten().collect();
    if req.reload && exec.is_live() {
        reload_all(exec, lab, &states, &mut reports).await;
    }
    for r in &reports {
        lab_hv::run::report_done(events, &r.report);
    }
    req.nodes
        .iter()
        .filter_map(|n| {
            let i = reports.iter().position(|r| r.report.node == n.name)?;
            Some(reports.swap_remove(i))
        })
        .collect()
}

/// A node's report with no files it is known to have changed.
fn unpushed(report: NodeReport) -> PushReport {
    let files = match report.outcome {
        Outcome::Failed { .. } => None,
        _ => Some(Vec::new()),
    };
    PushReport {
        report,
        files,
        reload: None,
    }
}

/// How the node's files are reached, or its report when they are not.
fn way(
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
    req: &PushRequest<'_>,
    states: &lab_hv::run::States<'_>,
) -> Result<Way, Box<NodeReport>> {
    let skip = |reason: String| Box::new(NodeReport::new(node, Outcome::Skipped { reason }));
    judged(req.lab, node, states, &req.owners).map_err(skip)?;
    if !req.builds.contains_key(&node.name) {
        return Err(skip("no build of it".to_owned()));
    }
    let running = state.domain_running(&node.domain);
    match hv.storage {
        Storage::Dataset => Ok(Way::Clone { attach: false }),
        Storage::Zvol if !running => Ok(Way::Clone { attach: true }),
        Storage::Zvol => match node.mgmt_address() {
            Some(address) => Ok(Way::Guest(address)),
            None => Err(skip(
                "its disk is in use by its running guest, and it has no management address \
                 to reach the guest at (stop it, then push)"
                    .to_owned(),
            )),
        },
    }
}

/// One hypervisor's nodes: their trees and steps in one plan (or, in a dry run, one look
/// per node at what would change).
async fn hypervisor(
    exec: &Executor,
    req: &PushRequest<'_>,
    hv: &Hypervisor,
    state: &HostState,
    todo: &[(&LabNode, Way)],
    events: Events<'_>,
) -> Vec<PushReport> {
    let trees = lab_hv::lock::trees_dir(hv, &req.lab.name);
    let mut reports = Vec::new();
    let mut archive = Vec::new();
    let mut plans = Vec::new();
    let mut ways = Vec::new();
    for (node, way) in todo {
        let build = &req.builds[&node.name];
        let tar = match tree_archive(&node.name, &build.tree) {
            Ok(tar) => tar,
            Err(e) => {
                let error = ExecError::Local {
                    host: hv.name.clone(),
                    command: format!("reading the tree {}", build.tree.display()),
                    message: e.to_string(),
                };
                reports.push(unpushed(failed(node, "copy", &error, false)));
                continue;
            }
        };
        let plan = NodePlan::new(node, steps(hv, node, build, way, &trees));
        if !exec.is_live() {
            let files = look(exec, hv, state, node, build, way, &trees, tar).await;
            reports.push(match files {
                Ok(files) => PushReport {
                    report: NodeReport {
                        commands: plan.shown(),
                        ..NodeReport::new(node, files.as_deref().map_or(Outcome::Done, pushed))
                    },
                    files,
                    reload: None,
                },
                Err(e) => unpushed(failed(node, "check", &e, false)),
            });
            continue;
        }
        archive.extend(tar);
        plans.push(plan);
        ways.push(way);
    }
    if plans.is_empty() {
        return reports;
    }
    let extras = Extras {
        trees: Some(Trees { archive }),
        ..Extras::default()
    };
    let ran = run_with(exec, hv, &req.lab.name, &plans, &extras, events).await;
    for ((plan, way), result) in plans.iter().zip(ways).zip(ran.nodes) {
        let node = plan.node;
        reports.push(match result {
            Ok(printed) => {
                let files = changed(&printed);
                PushReport {
                    report: NodeReport::new(node, pushed(&files)),
                    files: Some(files),
                    reload: None,
                }
            }
            Err((step, e)) => {
                // A zvol mounted for the push is let go: its domain may start.
                if matches!(way, Way::Clone { attach: true }) {
                    let _ =
                        lab_hv::run::run_patiently(exec, &hv.name, &cmd::detach(hv, node)).await;
                    let _ = exec.run(&hv.name, &cmd::remove_staging(node)).await;
                }
                unpushed(failed(node, step, &e, false))
            }
        });
    }
    reports
}

/// A node's steps: its files copied in, then the clone's record of the build.
fn steps(
    hv: &Hypervisor,
    node: &LabNode,
    build: &NodeBuild,
    way: &Way,
    trees: &str,
) -> Vec<(&'static str, lab_exec::Cmd)> {
    let modes = || build.modes.iter().map(lab_generate::PathMode::args);
    let mut steps = Vec::new();
    match way {
        Way::Clone { attach } => {
            // A zvol only while its domain is off, looked at again right before.
            if *attach {
                steps.push(("mount", cmd::refuse_running(node)));
            }
            // A dataset clone is mounted while its node lives, but not after a hypervisor's
            // reboot: never a copy into the empty mountpoint.
            steps.push(("mount", cmd::attach(hv, node)));
            steps.push(("copy", cmd::refuse_symlinked_dirs(node, &build.dirs)));
            steps.push(("copy", cmd::push_tree(node, trees, PushMode::Copy, None)));
            if !build.modes.is_empty() {
                steps.push(("copy", cmd::set_modes(node, modes())));
            }
            if *attach {
                steps.push(("unmount", cmd::detach(hv, node)));
                steps.push(("unmount", cmd::remove_staging(node)));
            }
        }
        Way::Guest(address) => steps.push((
            "copy",
            cmd::push_into_guest(node, address, trees, PushMode::Copy, None, modes()),
        )),
    }
    steps.push(("record", cmd::record_digest(node, &build.digest)));
    steps
}

/// A dry run's look at what a node's push would change (`None`: a zvol that is not mounted
/// cannot be looked into without mounting it).
#[allow(clippy::too_many_arguments)]
async fn look(
    exec: &Executor,
    hv: &Hypervisor,
    state: &HostState,
    node: &LabNode,
    build: &NodeBuild,
    way: &Way,
    trees: &str,
    tar: Vec<u8>,
) -> Result<Option<Vec<String>>, ExecError> {
    let mounted = |s: &HostState| s.datasets.get(&node.dataset).is_some_and(|d| d.mounted);
    let check = match way {
        Way::Clone { attach: true } => return Ok(None),
        Way::Clone { attach: false } if !mounted(state) => return Ok(None),
        Way::Clone { attach: false } => cmd::push_tree(node, trees, PushMode::Check, Some(tar)),
        Way::Guest(address) => cmd::push_into_guest(
            node,
            address,
            trees,
            PushMode::Check,
            Some(tar),
            build.modes.iter().map(lab_generate::PathMode::args),
        ),
    };
    let out = exec.run(&hv.name, &check).await?;
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    Ok(Some(changed(&lines)))
}

/// A node's outcome from the files its push changed (or would change).
fn pushed(files: &[String]) -> Outcome {
    if files.is_empty() {
        Outcome::Unchanged {
            reason: "no file changed".to_owned(),
        }
    } else {
        Outcome::Done
    }
}

/// The paths of a push's `CHANGED PATH` lines.
fn changed(printed: &[String]) -> Vec<String> {
    printed
        .iter()
        .filter_map(|l| l.strip_prefix("CHANGED "))
        .map(str::to_owned)
        .collect()
}

/// Runs the reload hook of every pushed node that changed and runs, all at once.
async fn reload_all(
    exec: &Executor,
    lab: &Lab,
    states: &lab_hv::run::States<'_>,
    reports: &mut [PushReport],
) {
    let wanted: Vec<(usize, &LabNode, String)> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.report.outcome, Outcome::Done))
        .filter(|(_, r)| r.files.as_ref().is_some_and(|f| !f.is_empty()))
        .filter_map(|(i, r)| {
            let node = lab.node(&r.report.node)?;
            let hv = lab.hypervisor_of(node);
            let running =
                matches!(&states[hv.name.as_str()], Ok(s) if s.domain_running(&node.domain));
            Some((i, node, node.mgmt_address().filter(|_| running)?))
        })
        .collect();
    let runs = wanted.iter().map(|(i, node, address)| {
        let files = reports[*i].files.clone().unwrap_or_default();
        async move {
            let hv = lab.hypervisor_of(node);
            let out = exec
                .run(&hv.name, &cmd::reload(node, address, &files))
                .await;
            (*i, out)
        }
    });
    for (i, out) in lab_hv::run::join_all(runs.collect()).await {
        let reload = match out {
            Ok(out) => Reload {
                hook: !out.stdout.lines().any(|l| l == cmd::NO_HOOK),
                ok: true,
                output: out
                    .stdout
                    .lines()
                    .chain(out.stderr.lines())
                    .map(str::to_owned)
                    .collect(),
            },
            Err(ExecError::Failed { stderr, .. }) => Reload {
                hook: true,
                ok: false,
                output: stderr.lines().map(str::to_owned).collect(),
            },
            Err(e) => Reload {
                hook: true,
                ok: false,
                output: vec![e.to_string()],
            },
        };
        if !reload.ok {
            reports[i].report.outcome = Outcome::Failed {
                step: "reload".to_owned(),
                error: format!(
                    "the files are in, and its reload hook failed: {}",
                    reload.output.join(" / ")
                ),
                rolled_back: false,
            };
        }
        reports[i].reload = Some(reload);
    }
}
