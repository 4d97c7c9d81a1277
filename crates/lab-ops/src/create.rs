//! `lab create`: per node, clone the proto snapshot, fill the clone with the node's generated
//! tree, define and start the domain; roll the node back if a step fails after the clone.

use std::collections::HashMap;
use std::path::PathBuf;

use lab_exec::Executor;
use lab_model::{Hypervisor, Lab, LabNode};

use crate::probe::{HostState, Snapshot, prop};
use crate::steps::{self, Ownership};
use crate::{Events, NodeReport, Outcome, failed, not_ours, resolve_snapshot};

/// What to create, after `generate` has written the build.
pub struct CreateRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// Per node name: its generated tree, overlay digest and rendered domain XML.
    pub builds: HashMap<String, NodeBuild>,
    pub force: bool,
    pub owner: String,
    pub now: u64,
}

#[derive(Debug, Clone)]
pub struct NodeBuild {
    pub tree: PathBuf,
    pub digest: String,
    pub domain_xml: Option<Vec<u8>>,
}

/// Why a create cannot start: found before any change on any hypervisor.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{host}: no snapshot of {proto} matches `{spec}` (found: {found}); nothing was changed"
    )]
    NoSnapshot {
        host: String,
        proto: String,
        spec: String,
        found: String,
    },
}

/// Creates the nodes. Every reachable hypervisor must have a snapshot that matches its setting
/// before anything changes anywhere; an unreachable one fails its own nodes only.
pub async fn create(
    exec: &Executor,
    req: &CreateRequest<'_>,
    events: Events<'_>,
) -> Result<Vec<NodeReport>, PlanError> {
    let states = crate::probe_nodes(exec, req.lab, &req.nodes).await;
    let mut picked: HashMap<&str, Snapshot> = HashMap::new();
    for hv in crate::hypervisors_of(req.lab, &req.nodes) {
        let Some(Ok(state)) = states.get(hv.name.as_str()) else {
            continue;
        };
        match resolve_snapshot(&hv.snapshot, &state.snapshots) {
            Some(snap) => {
                picked.insert(&hv.name, snap.clone());
            }
            None => {
                return Err(PlanError::NoSnapshot {
                    host: hv.name.clone(),
                    proto: hv.proto.clone(),
                    spec: spec_text(&hv.snapshot).to_owned(),
                    found: names(&state.snapshots),
                });
            }
        }
    }
    let picked = &picked;
    Ok(crate::each_node(
        exec,
        req.lab,
        &req.nodes,
        &states,
        events,
        |hv, node, state| async move {
            let snap = &picked[hv.name.as_str()];
            create_node(exec, req, hv, node, &state, snap, events).await
        },
    )
    .await)
}

fn spec_text(spec: &lab_model::SnapshotSpec) -> &str {
    match spec {
        lab_model::SnapshotSpec::Exact(s) | lab_model::SnapshotSpec::Newest(s) => s,
    }
}

fn names(snaps: &[Snapshot]) -> String {
    if snaps.is_empty() {
        "none".to_owned()
    } else {
        snaps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn create_node(
    exec: &Executor,
    req: &CreateRequest<'_>,
    hv: &Hypervisor,
    node: &LabNode,
    state: &HostState,
    snap: &Snapshot,
    events: Events<'_>,
) -> NodeReport {
    let step = crate::step_events(events, hv, node);
    let skip = |reason: String| NodeReport::new(node, Outcome::Skipped { reason });
    let lab = &req.lab.name;
    let build = &req.builds[&node.name];
    let clone = state.datasets.get(&node.dataset);

    // A dataset lab did not make is never touched, --force or not.
    if let Some(problem) = clone.and_then(|ds| not_ours(ds, lab, node, hv)) {
        return skip(format!("{problem}; lab never touches it, --force or not"));
    }
    // A domain of the node's name is ours when lab's marker says so.
    let domain_exists = state.domains.contains_key(&node.name);
    let domain_ours = if domain_exists {
        match crate::domain_is_ours(exec, hv, lab, node).await {
            Ok(ours) => ours,
            Err(e) => return failed(node, "inspect domain", &e, false),
        }
    } else {
        false
    };
    // A domain lab did not define is never redefined over (without a definition of our own,
    // an existing, pre-provisioned domain is only stopped and started).
    if domain_exists && !domain_ours && build.domain_xml.is_some() {
        return skip(format!(
            "domain {} exists and was not defined by lab; lab will not redefine it",
            node.name
        ));
    }
    let running = state.domain_running(&node.name);
    // A clone still `filling` was left by an interrupted run: it is made again, no --force needed.
    let interrupted = clone.is_some_and(|ds| ds.prop(prop::STATE) == Some(prop::FILLING));

    // 1. Our complete clone and no --force: converge by starting what is there.
    if clone.is_some() && !interrupted && !req.force {
        if running {
            return NodeReport::new(
                node,
                Outcome::Unchanged {
                    reason: format!("running on {} (--force recreates it)", node.dataset),
                },
            );
        }
        return resume(exec, hv, node, build, domain_exists, lab, &step).await;
    }
    // 2. A running domain: stopped only with --force, or when it runs on our interrupted clone.
    if running {
        if !req.force && !interrupted {
            return skip(format!(
                "domain {} is running (use --force to replace it)",
                node.name
            ));
        }
        step("stop");
        if let Err(e) = exec.run(&hv.name, &steps::stop(node)).await {
            return failed(node, "stop", &e, false);
        }
    }
    // 3. Our old clone (with --force, or interrupted) goes, and our old definition with it.
    if clone.is_some() {
        step("remove old clone");
        for cmd in [steps::detach(hv, node), steps::destroy_dataset(node)] {
            if let Err(e) = crate::run_patiently(exec, &hv.name, &cmd).await {
                return failed(node, "remove old clone", &e, false);
            }
        }
    }
    if domain_ours && build.domain_xml.is_some() {
        step("undefine old domain");
        if let Err(e) = exec.run(&hv.name, &steps::undefine(node)).await {
            return failed(node, "undefine old domain", &e, false);
        }
    }

    // 4. Clone. From here on a failure rolls the node back.
    step("clone");
    let own = Ownership {
        lab,
        owner: &req.owner,
        overlay_digest: &build.digest,
        created: req.now,
    };
    if let Err(e) = exec
        .run(&hv.name, &steps::clone(hv, node, snap, &own))
        .await
    {
        return failed(node, "clone", &e, false);
    }
    let mut defined = false;
    let result: Result<(), (&'static str, lab_exec::ExecError)> = async {
        step("mount");
        exec.run(&hv.name, &steps::attach(hv, node))
            .await
            .map_err(|e| ("mount", e))?;
        step("copy");
        exec.rsync(&hv.name, &build.tree, &steps::staging_dir(hv, node))
            .await
            .map_err(|e| ("copy", e))?;
        step("unmount");
        exec.run(&hv.name, &steps::detach(hv, node))
            .await
            .map_err(|e| ("unmount", e))?;
        if hv.storage == lab_model::Storage::Zvol {
            exec.run(&hv.name, &steps::remove_staging(hv, node))
                .await
                .map_err(|e| ("unmount", e))?;
        }
        exec.run(&hv.name, &steps::mark_ready(node))
            .await
            .map_err(|e| ("unmount", e))?;
        if let Some(xml) = &build.domain_xml {
            step("define");
            exec.run(&hv.name, &steps::define(xml))
                .await
                .map_err(|e| ("define", e))?;
            defined = true;
            exec.run(&hv.name, &steps::mark_domain(lab, node))
                .await
                .map_err(|e| ("define", e))?;
        }
        step("start");
        exec.run(&hv.name, &steps::start(node))
            .await
            .map_err(|e| ("start", e))?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut report = NodeReport::new(node, Outcome::Done);
            report.snapshot = Some(snap.full.clone());
            report
        }
        Err((failed_step, err)) => {
            step("roll back");
            let rollback = rollback(exec, hv, node, defined).await;
            let mut report = failed(node, failed_step, &err, rollback.is_ok());
            if let (Err(e), Outcome::Failed { error, .. }) = (rollback, &mut report.outcome) {
                error.push_str(&format!("; rollback incomplete: {e}"));
            }
            report
        }
    }
}

/// Starts a complete clone left by an earlier run, defining its domain first if it has none.
/// Nothing is rolled back on failure: the clone was not made by this run.
async fn resume(
    exec: &Executor,
    hv: &Hypervisor,
    node: &LabNode,
    build: &NodeBuild,
    domain_exists: bool,
    lab: &str,
    step: &impl Fn(&'static str),
) -> NodeReport {
    let mut plan = Vec::new();
    if let (Some(xml), false) = (&build.domain_xml, domain_exists) {
        plan.push(("define", steps::define(xml)));
        plan.push(("define", steps::mark_domain(lab, node)));
    }
    plan.push(("start", steps::start(node)));
    for (name, cmd) in plan {
        step(name);
        if let Err(e) = exec.run(&hv.name, &cmd).await {
            return failed(node, name, &e, false);
        }
    }
    NodeReport::new(node, Outcome::Done)
}

/// Removes what this run made for a node: its domain definition (if this run defined it),
/// the mount, the clone and the staging directory. Returns the first thing that would not go.
async fn rollback(
    exec: &Executor,
    hv: &Hypervisor,
    node: &LabNode,
    defined: bool,
) -> Result<(), lab_exec::ExecError> {
    let mut first = Ok(());
    let mut cmds = Vec::new();
    if defined {
        cmds.push(steps::undefine(node));
    }
    cmds.extend([
        steps::detach(hv, node),
        steps::destroy_dataset(node),
        steps::remove_staging(hv, node),
    ]);
    for cmd in cmds {
        if let Err(e) = crate::run_patiently(exec, &hv.name, &cmd).await
            && first.is_ok()
        {
            first = Err(e);
        }
    }
    first
}
