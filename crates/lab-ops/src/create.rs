//! `lab create`: per node, clone the proto snapshot, fill the clone with the node's generated
//! tree, define and start the domain; roll the node back if a step fails after the clone.

use std::collections::HashMap;
use std::path::PathBuf;

use lab_exec::Executor;
use lab_model::{Hypervisor, Lab, LabNode};

use crate::probe::{HostState, Snapshot};
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

pub async fn create(
    exec: &Executor,
    req: &CreateRequest<'_>,
    events: Events<'_>,
) -> Vec<NodeReport> {
    crate::each_node(
        exec,
        req.lab,
        &req.nodes,
        events,
        |hv, node, state| async move {
            match resolve_snapshot(&hv.snapshot, &state.snapshots) {
                None => NodeReport::new(
                    node,
                    Outcome::Failed {
                        step: "snapshot".to_owned(),
                        error: format!(
                            "{}: no snapshot of {} matches `{}` (found: {})",
                            hv.name,
                            hv.proto,
                            spec_text(&hv.snapshot),
                            names(&state.snapshots)
                        ),
                        rolled_back: false,
                    },
                ),
                Some(snap) => create_node(exec, req, hv, node, &state, snap, events).await,
            }
        },
    )
    .await
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
    let existing = state.datasets.get(&node.dataset);
    let ownership_problem = existing.and_then(|ds| not_ours(ds, lab, node, hv));

    // 1. A running domain is left alone unless --force (and then only on our own clone).
    if state.domain_running(&node.name) {
        if !req.force {
            return skip(format!(
                "domain {} is running (use --force to replace it)",
                node.name
            ));
        }
        if let Some(problem) = &ownership_problem {
            return skip(format!(
                "domain {} is running on a dataset lab did not make: {problem}",
                node.name
            ));
        }
        step("stop");
        if let Err(e) = exec.run(&hv.name, &steps::stop(node)).await {
            return failed(node, "stop", &e, false);
        }
    }
    // 2. An existing clone: ours and --force → replaced; ours → skipped; not ours → never touched.
    if let Some(ds) = existing {
        if let Some(problem) = ownership_problem {
            return skip(format!("{problem}; lab never touches it, --force or not"));
        }
        if !req.force {
            return skip(format!(
                "clone {} exists (use --force to recreate it)",
                ds.name
            ));
        }
        step("remove old clone");
        for cmd in [steps::detach(hv, node), steps::destroy_dataset(node)] {
            if let Err(e) = exec.run(&hv.name, &cmd).await {
                return failed(node, "remove old clone", &e, false);
            }
        }
    }
    // A domain of that name that lab did not define is never redefined over.
    let domain_exists = state.domains.contains_key(&node.name);
    // Without a definition of our own, an existing (pre-provisioned) domain is only started.
    let domain_is_ours = if domain_exists {
        match crate::domain_is_ours(exec, hv, lab, node).await {
            Ok(ours) => ours,
            Err(e) => return failed(node, "inspect domain", &e, false),
        }
    } else {
        false
    };
    if domain_exists && !domain_is_ours && build.domain_xml.is_some() {
        return skip(format!(
            "domain {} exists and was not defined by lab; lab will not redefine it",
            node.name
        ));
    }
    // Our own stopped definition (from an earlier run) is replaced by the fresh one.
    if domain_is_ours && build.domain_xml.is_some() {
        step("undefine old domain");
        if let Err(e) = exec.run(&hv.name, &steps::undefine(node)).await {
            return failed(node, "undefine old domain", &e, false);
        }
    }

    // 3. Clone. From here on a failure rolls the node back.
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
            let rolled_back = rollback(exec, hv, node, defined).await;
            failed(node, failed_step, &err, rolled_back)
        }
    }
}

/// Removes what this run made for a node: its domain definition (if this run defined it),
/// the mount, the clone and the staging directory. Returns whether all of it went.
async fn rollback(exec: &Executor, hv: &Hypervisor, node: &LabNode, defined: bool) -> bool {
    let mut ok = true;
    if defined {
        ok &= exec.run(&hv.name, &steps::undefine(node)).await.is_ok();
    }
    for cmd in [
        steps::detach(hv, node),
        steps::destroy_dataset(node),
        steps::remove_staging(hv, node),
    ] {
        ok &= exec.run(&hv.name, &cmd).await.is_ok();
    }
    ok
}
