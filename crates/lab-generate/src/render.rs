//! Rendering: the minijinja environment of an overlay, the context every template sees, and
//! one node's tree (or one hypervisor's network) rendered and written.

use std::path::Path;
use std::sync::Arc;

use lab_model::Lab;
use minijinja::value::{Serde, ValueKind};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::{Map, Value as Json};

use crate::overlay::{self, DOMAIN_TEMPLATE, NETWORK_TEMPLATE};
use crate::{
    GenerateError, NetworkOutput, NetworkPaths, NodeOutput, NodePaths, Request, filters, write,
};

/// The management network's definition for an overlay without `network.xml.j2`: a bridge of
/// the lab's own, forwarding as its mode says, and a DHCP host for every node.
const BUILTIN_NETWORK: &str = include_str!("network.xml.j2");

pub(crate) fn environment(
    overlay: &overlay::Overlay,
) -> Result<Environment<'static>, GenerateError> {
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
            .map_err(|e| template_error(&overlay.dir, name, "", &e, None))?;
    }
    if !overlay.has_network {
        env.add_template(NETWORK_TEMPLATE, BUILTIN_NETWORK)
            .expect("the built-in network definition is a valid template");
    }
    Ok(env)
}

/// A template error with the template's file:line; for a name the context lacks, the closest
/// name it has (`ctx`, the context the template was rendered with).
fn template_error(
    dir: &Path,
    name: &str,
    node: &str,
    err: &minijinja::Error,
    ctx: Option<&Value>,
) -> GenerateError {
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
        let missing = detail
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix("` is undefined"));
        if let (Some(expr), Some(ctx), minijinja::ErrorKind::UndefinedError) =
            (missing, ctx, err.kind())
            && let Some(closest) = closest_name(ctx, expr)
        {
            message = format!("{message} (did you mean `{closest}`?)");
        }
    }
    GenerateError::Template {
        template: dir.join(template),
        line,
        node: node.to_owned(),
        message,
    }
}

/// The name closest to `expr` (`node.lnks`, `nodez`, `l.peer_ipv5`) that the context has: a
/// sibling of the missing part when its parent exists, or for a name under a loop variable
/// (whose parent the context cannot know) any key the context has at any depth.
fn closest_name(ctx: &Value, expr: &str) -> Option<String> {
    let parts: Vec<&str> = expr.split('.').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        return None;
    }
    let mut value = ctx.clone();
    for (i, part) in parts.iter().enumerate() {
        let next = value.get_attr(part).unwrap_or_default();
        if next.is_undefined() {
            let candidates: Vec<String> = if i == 0 && parts.len() > 1 {
                let mut all = Vec::new();
                keys_anywhere(ctx, 4, &mut all);
                all
            } else {
                keys(&value)
            };
            let last = parts[parts.len() - 1];
            let word = if i == 0 && parts.len() > 1 {
                last
            } else {
                part
            };
            let hint = lab_model::Hint::closest(word, candidates.iter().map(String::as_str)).0?;
            let mut fixed: Vec<&str> = parts.clone();
            let at = if i == 0 && parts.len() > 1 {
                parts.len() - 1
            } else {
                i
            };
            fixed[at] = &hint;
            fixed.truncate(at + 1);
            return Some(fixed.join("."));
        }
        value = next;
    }
    None
}

fn keys(value: &Value) -> Vec<String> {
    if value.kind() != ValueKind::Map {
        return Vec::new();
    }
    value
        .try_iter()
        .map(|it| it.filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn keys_anywhere(value: &Value, depth: usize, out: &mut Vec<String>) {
    if depth == 0 {
        return;
    }
    match value.kind() {
        ValueKind::Map => {
            for k in keys(value) {
                if let Ok(v) = value.get_attr(&k) {
                    keys_anywhere(&v, depth - 1, out);
                }
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        // Lists hold alike items: the first one tells their keys.
        ValueKind::Seq => {
            if let Ok(first) = value.get_item(&Value::from(0)) {
                keys_anywhere(&first, depth - 1, out);
            }
        }
        _ => {}
    }
}

/// Context values shared by every node, converted once.
pub(crate) struct Shared {
    overlay_name: String,
    lab: Value,
    overlay: Value,
    nodes: Vec<Value>,
    nodes_list: Value,
    hypervisors: Vec<(String, Value)>,
    hypervisors_list: Value,
}

impl Shared {
    pub(crate) fn new(lab: &Lab, overlay: &str) -> Shared {
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
            .map(|n| Value::from(Serde(node_json(n))))
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

/// A node as templates see it: its model fields, its vars, and `links`, the interfaces of its
/// links in link order (`interfaces` without management), the loop a router config wants.
fn node_json(node: &lab_model::LabNode) -> Json {
    let mut json = flatten_vars(node);
    if let Json::Object(map) = &mut json {
        let links: Vec<Json> = node
            .links()
            .map(|i| serde_json::to_value(i).expect("model types serialize"))
            .collect();
        map.insert("links".into(), Json::from(links));
    }
    json
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

/// A hypervisor's management network, rendered from `network.xml.j2` with the DHCP host of
/// every node of the lab on that hypervisor (selected or not: the network is the lab's).
pub(crate) fn render_network(
    req: &Request<'_>,
    overlay: &overlay::Overlay,
    env: &Environment<'_>,
    shared: &Shared,
    hv: &lab_model::Hypervisor,
) -> Result<NetworkOutput, GenerateError> {
    let name = hv
        .mgmt
        .network
        .clone()
        .expect("a network lab owns has a name");
    let hosts: Vec<Json> = req
        .lab
        .nodes
        .iter()
        .filter(|n| n.hypervisor == hv.name)
        .filter_map(|n| {
            let ip = n.mgmt_ipv4?;
            Some(serde_json::json!({
                "name": n.name,
                "hostname": n.hostname,
                "mac": n.mac,
                "ipv4": ip.addr().to_string(),
            }))
        })
        .collect();
    let hypervisor = shared
        .hypervisors
        .iter()
        .find(|(n, _)| *n == hv.name)
        .map(|(_, v)| v.clone())
        .expect("every hypervisor is in the shared context");
    let ctx = minijinja::context! {
        lab => shared.lab.clone(),
        overlay => shared.overlay.clone(),
        hypervisor => hypervisor,
        network => Value::from(Serde(&hv.mgmt)),
        hosts => Value::from(Serde(&hosts)),
    };
    let xml = env
        .get_template(NETWORK_TEMPLATE)
        .and_then(|t| t.render(&ctx))
        .map_err(|e| template_error(&overlay.dir, NETWORK_TEMPLATE, &hv.name, &e, Some(&ctx)))?;
    if lab_model::xml::has_doctype(&xml) {
        return Err(GenerateError::Overlay {
            path: overlay.dir.join(NETWORK_TEMPLATE),
            message: format!(
                "renders a <!DOCTYPE> for `{}`: libvirt needs none, and its entities could make \
                 libvirt read another network than the one lab checks",
                hv.name
            ),
        });
    }
    if lab_model::xml::find_start(&xml, "network", 0).is_none_or(|n| n.empty) {
        return Err(GenerateError::Overlay {
            path: overlay.dir.join(NETWORK_TEMPLATE),
            message: format!("renders no <network> element for `{}`", hv.name),
        });
    }
    match lab_model::xml::child_text(&xml, "name") {
        Some(n) if n == name => {}
        other => {
            return Err(GenerateError::Overlay {
                path: overlay.dir.join(NETWORK_TEMPLATE),
                message: format!(
                    "renders the network name `{}` for `{}`: it must be `{name}` \
                     (`network.network`)",
                    other.unwrap_or_default(),
                    hv.name
                ),
            });
        }
    }
    if lab_model::xml::find_start(&xml, "metadata", 1).is_some() {
        return Err(GenerateError::Overlay {
            path: overlay.dir.join(NETWORK_TEMPLATE),
            message: "renders a <metadata> element: lab puts its own ownership mark there"
                .to_owned(),
        });
    }
    let path = NetworkPaths::of(req.build_dir, &shared.overlay_name, &hv.name, &name).xml;
    write::replace_file(&path, xml.as_bytes())?;
    Ok(NetworkOutput {
        hypervisor: hv.name.clone(),
        network: name,
        path,
        sha256: write::sha256_hex(xml.as_bytes()),
        builtin: !overlay.has_network,
    })
}

pub(crate) fn render_node(
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
            .map_err(|e| template_error(&overlay.dir, name, &node.name, &e, None))?;
        template
            .render(&ctx)
            .map(String::into_bytes)
            .map_err(|e| template_error(&overlay.dir, name, &node.name, &e, Some(&ctx)))
    };

    // Overlay entries first, then the node's blobs on top (blobs are never templates).
    let blobs = overlay.blobs(&node.hostname)?;
    let mut files: Vec<write::Item> = Vec::with_capacity(overlay.entries.len() + blobs.len());
    for entry in overlay.entries.iter().chain(&blobs) {
        let content = match &entry.kind {
            overlay::Kind::Dir => write::Content::Dir,
            overlay::Kind::Symlink(t) => write::Content::Symlink(t.clone()),
            overlay::Kind::Verbatim(bytes) => write::Content::File(Arc::clone(bytes)),
            overlay::Kind::Template(name) => write::Content::File(render(name)?.into()),
        };
        files.push(write::Item {
            rel: entry.rel.clone(),
            mode: entry.mode,
            content,
        });
    }
    let domain = if overlay.has_domain {
        let xml = render(DOMAIN_TEMPLATE)?;
        check_domain(&overlay.dir, node, &xml)?;
        Some(xml)
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
        modes: &overlay.modes,
        modes_file: &overlay.dir.join(crate::MODES_FILE),
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
        warnings: written.warnings,
    })
}

/// A rendered domain must be named after its node (lab starts, stops and undefines it by that
/// name) and must leave lab's metadata namespace to lab.
fn check_domain(dir: &Path, node: &lab_model::LabNode, xml: &[u8]) -> Result<(), GenerateError> {
    let text = String::from_utf8_lossy(xml);
    let bad = |message: String| GenerateError::Overlay {
        path: dir.join(DOMAIN_TEMPLATE),
        message,
    };
    if lab_model::xml::has_doctype(&text) {
        return Err(bad(format!(
            "renders a <!DOCTYPE> for node `{}`: libvirt needs none, and its entities could \
             make libvirt read another domain than the one lab checks",
            node.name
        )));
    }
    if lab_model::xml::find_start(&text, "domain", 0).is_none_or(|d| d.empty) {
        return Err(bad(format!(
            "renders no <domain> element for node `{}`",
            node.name
        )));
    }
    match lab_model::xml::child_text(&text, "name") {
        Some(n) if n == node.domain => {}
        Some(n) => {
            return Err(bad(format!(
                "renders the domain name `{n}` for node `{}`: it must be `{}` (`node.domain`)",
                node.name, node.domain
            )));
        }
        None => {
            return Err(bad(format!(
                "renders no <name> for node `{}`: a domain is named after its node",
                node.name
            )));
        }
    }
    if text.contains(lab_model::LAB_XML_NS) {
        return Err(bad(format!(
            "uses lab's own metadata namespace ({}): lab puts its marker there itself",
            lab_model::LAB_XML_NS
        )));
    }
    Ok(())
}
