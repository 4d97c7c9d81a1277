//! `lab generate`: renders an overlay for each selected node into `build/`.
//!
//! For a node, the output is `<build>/<overlay>/<hypervisor>/<hostname>/`, a tree that mirrors
//! the guest's root filesystem, and beside it `<hostname>.manifest.json` (sha256 of every entry
//! and one digest) and, when the overlay has `domain.xml.j2`, `<hostname>.domain.xml`.
//! Each node is rendered aside and swapped into place, so a re-run leaves no stale files.
//! This crate never prints: progress goes out as [`Event`]s.

mod build;
mod filters;
mod overlay;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lab_model::{Hint, Lab, LabNode};
use minijinja::value::{Serde, ValueKind};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::{Map, Value as Json};

pub use build::{EntryKind, Manifest, ManifestEntry, NodeBuild, NodePaths, read_node};
pub use overlay::{BLOBS_DIR, DOMAIN_TEMPLATE};

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
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Output {
    pub overlay: String,
    pub build_dir: PathBuf,
    pub nodes: Vec<NodeOutput>,
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
    let overlay = overlay::Overlay::scan(&overlay_def.dir)?;
    let env = environment(&overlay)?;
    let shared = Shared::new(req.lab, &overlay_def.name);
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
                    let result = render_node(req, &overlay, &env, &shared, index);
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
    Ok(Output {
        overlay: overlay_def.name.clone(),
        build_dir: req.build_dir.to_path_buf(),
        nodes,
    })
}

fn environment(overlay: &overlay::Overlay) -> Result<Environment<'static>, GenerateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_debug(true);
    let mut syntax = minijinja::syntax::SyntaxConfig::builder();
    syntax.keep_trailing_newline(true);
    env.set_syntax(syntax.build().expect("the default delimiters are valid"));
    // Config files want `true`/`false`, not Python's `True`/`False`.
    env.set_formatter(|out, state, value| {
        if value.kind() == ValueKind::Bool {
            let text = if value.is_true() { "true" } else { "false" };
            out.write_str(text).map_err(minijinja::Error::from)
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    filters::install(&mut env);
    for (name, source) in &overlay.templates {
        env.add_template_owned(name.clone(), source.clone())
            .map_err(|e| template_error(&overlay.dir, name, "", &e))?;
    }
    Ok(env)
}

fn template_error(dir: &Path, name: &str, node: &str, err: &minijinja::Error) -> GenerateError {
    // The innermost error names the template that failed (an included one, maybe).
    let mut inner: &dyn std::error::Error = err;
    let (mut template, mut line) = (
        err.name().unwrap_or(name).to_owned(),
        err.line().unwrap_or(0),
    );
    while let Some(next) = inner.source() {
        if let Some(e) = next.downcast_ref::<minijinja::Error>() {
            if let Some(n) = e.name() {
                template = n.to_owned();
            }
            if let Some(l) = e.line() {
                line = l;
            }
        }
        inner = next;
    }
    let mut message = err.kind().to_string();
    if let Some(detail) = err.detail() {
        message = format!("{message}: {detail}");
    }
    GenerateError::Template {
        template: dir.join(template),
        line,
        node: node.to_owned(),
        message,
    }
}

/// Context values shared by every node, converted once.
struct Shared {
    overlay_name: String,
    lab: Value,
    overlay: Value,
    nodes: Vec<Value>,
    nodes_list: Value,
    hypervisors: Vec<(String, Value)>,
    hypervisors_list: Value,
}

impl Shared {
    fn new(lab: &Lab, overlay: &str) -> Shared {
        let mut lab_json = Map::new();
        lab_json.insert("name".into(), Json::from(lab.name.clone()));
        lab_json.insert("id".into(), Json::from(lab.id));
        lab_json.insert(
            "p2p_ipv4".into(),
            lab.p2p_ipv4
                .map_or(Json::Null, |n| Json::from(n.to_string())),
        );
        lab_json.insert(
            "p2p_ipv6".into(),
            lab.p2p_ipv6
                .map_or(Json::Null, |n| Json::from(n.to_string())),
        );
        lab_json.extend(lab.vars.clone());
        let nodes: Vec<Value> = lab
            .nodes
            .iter()
            .map(|n| Value::from(Serde(flatten_vars(n))))
            .collect();
        let hypervisors: Vec<(String, Value)> = lab
            .hypervisors
            .iter()
            .map(|h| (h.name.clone(), Value::from(Serde(flatten_vars(h)))))
            .collect();
        Shared {
            overlay_name: overlay.to_owned(),
            lab: Value::from(Serde(&lab_json)),
            overlay: Value::from(Serde(serde_json::json!({ "name": overlay }))),
            nodes_list: Value::from(nodes.clone()),
            nodes,
            hypervisors_list: Value::from(
                hypervisors
                    .iter()
                    .map(|(_, v)| v.clone())
                    .collect::<Vec<_>>(),
            ),
            hypervisors,
        }
    }
}

/// A model struct as JSON with its `vars` lifted to the top level (the model already refused
/// vars that collide with its own keys).
fn flatten_vars(item: &impl serde::Serialize) -> Json {
    let mut json = serde_json::to_value(item).expect("model types serialize");
    if let Json::Object(map) = &mut json
        && let Some(Json::Object(vars)) = map.shift_remove("vars")
    {
        map.extend(vars);
    }
    json
}

fn render_node(
    req: &Request<'_>,
    overlay: &overlay::Overlay,
    env: &Environment<'_>,
    shared: &Shared,
    index: usize,
) -> Result<NodeOutput, GenerateError> {
    let node = &req.lab.nodes[index];
    let hv = shared
        .hypervisors
        .iter()
        .find(|(name, _)| *name == node.hypervisor)
        .map(|(_, v)| v.clone())
        .expect("the model checked the node's hypervisor");
    let ctx = minijinja::context! {
        node => shared.nodes[index].clone(),
        lab => shared.lab.clone(),
        hypervisor => hv,
        overlay => shared.overlay.clone(),
        nodes => shared.nodes_list.clone(),
        hypervisors => shared.hypervisors_list.clone(),
    };
    let render = |name: &str| -> Result<Vec<u8>, GenerateError> {
        let template = env
            .get_template(name)
            .map_err(|e| template_error(&overlay.dir, name, &node.name, &e))?;
        template
            .render(&ctx)
            .map(String::into_bytes)
            .map_err(|e| template_error(&overlay.dir, name, &node.name, &e))
    };

    // Overlay entries first, then the node's blobs on top (blobs are never templates).
    let blobs = overlay.blobs(&node.hostname)?;
    let mut files: Vec<write::Item> = Vec::with_capacity(overlay.entries.len() + blobs.len());
    for entry in overlay.entries.iter().chain(&blobs) {
        let content = match &entry.kind {
            overlay::Kind::Dir => write::Content::Dir,
            overlay::Kind::Symlink(t) => write::Content::Symlink(t.clone()),
            overlay::Kind::Verbatim(bytes) => write::Content::File(bytes.to_vec()),
            overlay::Kind::Template(name) => write::Content::File(render(name)?),
        };
        files.push(write::Item {
            rel: entry.rel.clone(),
            mode: entry.mode,
            content,
        });
    }
    let domain = if overlay.has_domain {
        Some(render(DOMAIN_TEMPLATE)?)
    } else {
        None
    };

    let overlay_name = &shared.overlay_name;
    let NodePaths {
        tree,
        manifest,
        domain_xml,
    } = NodePaths::of(req.build_dir, overlay_name, node);
    let written = write::node(&write::NodeWrite {
        lab: &req.lab.name,
        overlay: overlay_name,
        node,
        tree: &tree,
        manifest: &manifest,
        domain_xml: &domain_xml,
        items: files,
        domain,
    })?;
    Ok(NodeOutput {
        node: node.name.clone(),
        hypervisor: node.hypervisor.clone(),
        hostname: node.hostname.clone(),
        tree,
        manifest,
        domain_xml: overlay.has_domain.then_some(domain_xml),
        digest: written.digest,
        entries: written.entries,
    })
}
