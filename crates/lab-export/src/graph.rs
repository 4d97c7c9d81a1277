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

/// One link, once: each end's node, interface and address, and the link's IPv4 prefix.
struct Edge<'a> {
    a: &'a LabNode,
    a_if: &'a str,
    a_addr: Option<String>,
    b: &'a LabNode,
    b_if: &'a str,
    b_addr: Option<String>,
    prefix: Option<String>,
}

impl Edge<'_> {
    /// `eth1 100.64.2.0` (or just the interface when the link has no addresses).
    fn a_end(&self) -> String {
        end(self.a_if, self.a_addr.as_deref())
    }

    fn b_end(&self) -> String {
        end(self.b_if, self.b_addr.as_deref())
    }
}

fn end(interface: &str, address: Option<&str>) -> String {
    match address {
        Some(a) => format!("{interface} {a}"),
        None => interface.to_owned(),
    }
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
            // A link from a node to itself: once, from its lower interface.
            let same = a.name == *peer;
            if (!first && !same) || (same && i.name.as_str() > peer_if.as_str()) {
                continue;
            }
            out.push(Edge {
                a,
                a_if: &i.name,
                a_addr: i.ipv4.map(|p| p.addr().to_string()),
                b,
                b_if: peer_if,
                b_addr: i.peer_ipv4.map(|p| p.to_string()),
                prefix: i.ipv4.map(|p| p.trunc().to_string()),
            });
        }
    }
    out
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
                        n.mgmt_address().unwrap_or_default()
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
                    e.a_end(),
                    e.b_end(),
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
                    let _ = writeln!(
                        out,
                        "    {}[\"{}<br/>{}\"]",
                        id(n),
                        n.name,
                        n.mgmt_address().unwrap_or_default()
                    );
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
                    "  {} {arrow}|\"{} — {}\"| {}",
                    id(e.a),
                    e.a_end(),
                    e.b_end(),
                    id(e.b)
                );
            }
        }
    }
    out
}
