//! The topology as a graph: nodes grouped by hypervisor, one edge per link labelled with both
//! interfaces and the link's prefix; links across hypervisors drawn bold.

use std::fmt::Write as _;

use lab_model::{InterfaceKind, Lab, LabNode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    /// Graphviz (`dot -Tsvg` draws it).
    Dot,
    /// Mermaid (GitHub and many wikis draw it).
    Mermaid,
}

/// One link, once: (a, a's interface, b, b's interface, the link's IPv4 prefix).
struct Edge<'a> {
    a: &'a LabNode,
    a_if: &'a str,
    b: &'a LabNode,
    b_if: &'a str,
    prefix: Option<String>,
}

fn edges<'a>(lab: &'a Lab, nodes: &[&'a LabNode]) -> Vec<Edge<'a>> {
    let mut out = Vec::new();
    for a in nodes {
        for i in a
            .interfaces
            .iter()
            .filter(|i| i.kind == InterfaceKind::Link)
        {
            let (Some(peer), Some(peer_if)) = (&i.peer, &i.peer_interface) else {
                continue;
            };
            let Some(b) = nodes.iter().find(|n| &n.name == peer) else {
                continue;
            };
            // Each link once: from the end that is listed first in the link.
            let first = lab
                .nodes
                .iter()
                .position(|n| n.name == a.name)
                .lt(&lab.nodes.iter().position(|n| &n.name == peer));
            let same = a.name == *peer;
            if !first && !same {
                continue;
            }
            out.push(Edge {
                a,
                a_if: &i.name,
                b,
                b_if: peer_if,
                prefix: i.ipv4.map(|p| p.trunc().to_string()),
            });
        }
    }
    out
}

fn address(node: &LabNode) -> String {
    node.mgmt_ipv4
        .map_or_else(String::new, |a| a.addr().to_string())
}

/// The graph of `nodes` and the links between them.
pub fn graph(lab: &Lab, nodes: &[&LabNode], format: GraphFormat) -> String {
    let mut out = String::new();
    let edges = edges(lab, nodes);
    let hypervisors = lab.hypervisors_of(nodes);
    match format {
        GraphFormat::Dot => {
            let _ = writeln!(out, "graph \"{}\" {{", lab.name);
            let _ = writeln!(
                out,
                "  label=\"lab {}\"; labelloc=t; fontname=\"sans\";",
                lab.name
            );
            let _ = writeln!(out, "  node [shape=box, style=rounded, fontname=\"sans\"];");
            let _ = writeln!(out, "  edge [fontname=\"sans\", fontsize=9];");
            for (i, hv) in hypervisors.iter().enumerate() {
                let _ = writeln!(out, "  subgraph cluster_{i} {{");
                let _ = writeln!(out, "    label=\"{}\"; style=dashed;", hv.name);
                for n in nodes.iter().filter(|n| n.hypervisor == hv.name) {
                    let _ = writeln!(
                        out,
                        "    \"{}\" [label=\"{}\\n{}\"];",
                        n.name,
                        n.name,
                        address(n)
                    );
                }
                let _ = writeln!(out, "  }}");
            }
            for e in &edges {
                let across = e.a.hypervisor != e.b.hypervisor;
                let _ = writeln!(
                    out,
                    "  \"{}\" -- \"{}\" [taillabel=\"{}\", headlabel=\"{}\", label=\"{}\"{}];",
                    e.a.name,
                    e.b.name,
                    e.a_if,
                    e.b_if,
                    e.prefix.as_deref().unwrap_or(""),
                    if across {
                        ", style=bold, color=\"#1f5fbf\""
                    } else {
                        ""
                    }
                );
            }
            let _ = writeln!(out, "}}");
        }
        GraphFormat::Mermaid => {
            let _ = writeln!(out, "graph LR");
            // Mermaid ids are the nodes' positions: names may hold characters it reads as syntax.
            let id = |n: &LabNode| {
                let i = lab.nodes.iter().position(|m| m.name == n.name).unwrap_or(0);
                format!("n{i}")
            };
            for (i, hv) in hypervisors.iter().enumerate() {
                let _ = writeln!(out, "  subgraph h{i}[\"{}\"]", hv.name);
                for n in nodes.iter().filter(|n| n.hypervisor == hv.name) {
                    let _ = writeln!(out, "    {}[\"{}<br/>{}\"]", id(n), n.name, address(n));
                }
                let _ = writeln!(out, "  end");
            }
            for e in &edges {
                let arrow = if e.a.hypervisor != e.b.hypervisor {
                    "==="
                } else {
                    "---"
                };
                let _ = writeln!(
                    out,
                    "  {} {arrow}|\"{} {} {}\"| {}",
                    id(e.a),
                    e.a_if,
                    e.prefix.as_deref().unwrap_or(""),
                    e.b_if,
                    id(e.b)
                );
            }
        }
    }
    out
}
