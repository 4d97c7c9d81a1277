//! `lab generate`: renders an overlay for each selected node into `build/`.
//!
//! For a node, the output is `<build>/<overlay>/<hypervisor>/<hostname>/`, a tree that mirrors
//! the guest's root filesystem, and in `_meta/` beside it `<hostname>.manifest.json` (sha256 of
//! every entry and one digest) and, when the overlay has `domain.xml.j2`,
//! `<hostname>.domain.xml` (see `build.rs`).
//! Each node is rendered aside and swapped into place, so a re-run leaves no stale files.
//! This crate never prints: progress goes out as [`Event`]s.

mod build;
mod filters;
mod modes;
mod overlay;
mod render;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lab_model::{Hint, Lab, LabNode};

pub use build::{
    EntryKind, Manifest, ManifestEntry, NetworkBuild, NetworkPaths, NodeBuild, NodePaths, PathMode,
    Trust, read_network, read_node,
};
pub use overlay::{
    BLOBS_DIR, DOMAIN_TEMPLATE, MODES_FILE, NETWORK_TEMPLATE, SAVE_FILE, save_paths,
};
pub use write::remove_tree;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("overlay `{name}` is not defined in the lab (defined: {known}){hint}")]
    UnknownOverlay {
        name: String,
        known: String,
        hint: Hint,
    },

    #[error("no overlay chosen: pass --overlay NAME or set `overlay:` in the lab file")]
    NoOverlay,

    #[error("{}: {message}", path.display())]
    Overlay { path: PathBuf, message: String },

    /// A line of an overlay's `modes` that cannot be applied.
    #[error("{}:{line}: {message}", file.display())]
    Modes {
        file: PathBuf,
        line: usize,
        message: String,
    },

    #[error("{}:{line}: node `{node}`: {message}", template.display())]
    Template {
        template: PathBuf,
        line: usize,
        node: String,
        message: String,
    },

    #[error("node `{node}`: {} would be written {message}", path.display())]
    Escape {
        node: String,
        path: PathBuf,
        message: String,
    },

    /// A request names a node its lab does not have.
    #[error("node `{node}` is not a node of lab `{lab}`")]
    UnknownNode { node: String, lab: String },

    /// What `generate` wrote cannot be read back as it was written.
    #[error("{}: {message}", path.display())]
    Build { path: PathBuf, message: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to generate.
pub struct Request<'a> {
    pub lab: &'a Lab,
    /// The overlay's name; `None` takes the lab's default.
    pub overlay: Option<&'a str>,
    pub build_dir: &'a Path,
    /// The nodes to render (see [`Lab::select`]).
    pub nodes: &'a [&'a LabNode],
}

/// Progress, for whoever displays it.
#[derive(Debug, Clone)]
pub enum Event {
    Started { overlay: String, nodes: usize },
    NodeDone { node: String, hypervisor: String },
}

/// What was written for one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeOutput {
    pub node: String,
    pub hypervisor: String,
    pub hostname: String,
    pub tree: PathBuf,
    pub manifest: PathBuf,
    pub domain_xml: Option<PathBuf>,
    pub digest: String,
    pub entries: usize,
    /// What the guest gets that it probably should not (a private key others can read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What was written for one hypervisor's management network.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NetworkOutput {
    pub hypervisor: String,
    pub network: String,
    pub path: PathBuf,
    pub sha256: String,
    /// Rendered from lab's built-in definition: the overlay has no `network.xml.j2`.
    pub builtin: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Output {
    pub overlay: String,
    pub build_dir: PathBuf,
    pub nodes: Vec<NodeOutput>,
    /// One per hypervisor of the selection whose management network lab defines.
    pub networks: Vec<NetworkOutput>,
}

/// An overlay directory must exist and must not hold the build: every run would copy the
/// build into the guests and grow it. Both are bad input, with the lab file's line.
fn check_overlay_dir(req: &Request<'_>, def: &lab_model::Overlay) -> Result<(), GenerateError> {
    let at = lab_model::origin_of(req.lab, &["overlays", &def.name, "dir"]);
    let bad = |message: String| GenerateError::Overlay {
        path: def.dir.clone(),
        message,
    };
    let Ok(overlay) = def.dir.canonicalize() else {
        return Err(bad(format!(
            "does not exist (overlay `{}`, set at {at})",
            def.name
        )));
    };
    if !overlay.is_dir() {
        return Err(bad(format!(
            "is not a directory (overlay `{}`, set at {at}): an overlay is a directory of \
             templates and files",
            def.name
        )));
    }
    let build = std::path::absolute(req.build_dir).unwrap_or_else(|_| req.build_dir.to_owned());
    // The build directory may not exist yet: compare its deepest existing ancestor.
    let existing = build
        .ancestors()
        .find_map(|a| a.canonicalize().ok())
        .unwrap_or(build);
    if existing.starts_with(&overlay) {
        return Err(bad(format!(
            "holds the build directory {} (overlay `{}`, set at {at}): every run would copy \
             the build into the guests",
            req.build_dir.display(),
            def.name
        )));
    }
    Ok(())
}

/// The overlay a request names, or the lab's default.
pub fn resolve_overlay<'a>(
    lab: &'a Lab,
    name: Option<&str>,
) -> Result<&'a lab_model::Overlay, GenerateError> {
    let name = name
        .or(lab.default_overlay.as_deref())
        .ok_or(GenerateError::NoOverlay)?;
    lab.overlay(name)
        .ok_or_else(|| GenerateError::UnknownOverlay {
            name: name.to_owned(),
            known: lab
                .overlays
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            hint: Hint::closest(name, lab.overlays.iter().map(|o| o.name.as_str())),
        })
}

/// Moves what `generate` wrote for `nodes` under `from` to the same places under `to` (one
/// filesystem), each node swapped in as `generate` does: `create` renders into a directory of
/// its own, copies from it, then makes exactly that the build everyone sees.
pub fn publish(
    from: &Path,
    to: &Path,
    overlay: &str,
    lab: &Lab,
    nodes: &[&LabNode],
) -> Result<(), GenerateError> {
    for node in nodes {
        let (a, b) = (
            NodePaths::of(from, overlay, node),
            NodePaths::of(to, overlay, node),
        );
        write::swap_in(&a.tree, &b.tree)?;
        write::move_file(&a.manifest, &b.manifest)?;
        write::move_file(&a.domain_xml, &b.domain_xml)?;
    }
    for hv in lab.hypervisors_of(nodes) {
        if let (true, Some(network)) = (hv.mgmt.owned, &hv.mgmt.network) {
            write::move_file(
                &NetworkPaths::of(from, overlay, &hv.name, network).xml,
                &NetworkPaths::of(to, overlay, &hv.name, network).xml,
            )?;
        }
    }
    Ok(())
}

/// Renders and writes every selected node. Nodes are rendered in parallel; the first error
/// stops the run (nodes already swapped in stay, complete).
pub fn generate(
    req: &Request<'_>,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Output, GenerateError> {
    let overlay_def = resolve_overlay(req.lab, req.overlay)?;
    let index: std::collections::HashMap<&str, usize> = req
        .lab
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let selected: Vec<usize> = req
        .nodes
        .iter()
        .map(|n| {
            index
                .get(n.name.as_str())
                .copied()
                .ok_or_else(|| GenerateError::UnknownNode {
                    node: n.name.clone(),
                    lab: req.lab.name.clone(),
                })
        })
        .collect::<Result<_, _>>()?;
    check_overlay_dir(req, overlay_def)?;
    let overlay = overlay::Overlay::scan(&overlay_def.dir)?;
    let env = render::environment(&overlay)?;
    let shared = render::Shared::new(req.lab, &overlay_def.name);
    on_event(Event::Started {
        overlay: overlay_def.name.clone(),
        nodes: selected.len(),
    });

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<NodeOutput, GenerateError>>>> =
        Mutex::new((0..selected.len()).map(|_| None).collect());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(selected.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = selected.get(i) else { break };
                    let result = render::render_node(req, &overlay, &env, &shared, index);
                    let failed = result.is_err();
                    if let Ok(out) = &result {
                        on_event(Event::NodeDone {
                            node: out.node.clone(),
                            hypervisor: out.hypervisor.clone(),
                        });
                    }
                    results
                        .lock()
                        .expect("no worker panics while holding the lock")[i] = Some(result);
                    if failed {
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut nodes = Vec::with_capacity(selected.len());
    for result in results
        .into_inner()
        .expect("workers are done")
        .into_iter()
        .flatten()
    {
        nodes.push(result?);
    }
    let mut networks = Vec::new();
    for hv in req.lab.hypervisors_of(req.nodes) {
        if hv.mgmt.owned {
            networks.push(render::render_network(req, &overlay, &env, &shared, hv)?);
        }
    }
    Ok(Output {
        overlay: overlay_def.name.clone(),
        build_dir: req.build_dir.to_path_buf(),
        nodes,
        networks,
    })
}
