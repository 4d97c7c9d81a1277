//! Links: each `[a, b]` becomes an interface on both nodes (`eth1`, `eth2` ... in link order),
//! numbered from the lab's point-to-point pools and wired by a UDP tunnel; then the checks
//! that need every interface of the lab (MACs, ports, links per node).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::error::{Hint, ModelError};
use crate::impair::Impairment;
use crate::model::{Hypervisor, Interface, InterfaceKind, LabNode, Wire};
use crate::resolve::{NodeExtras, path_of, schema_error};
use crate::schema::{LabSchema, LinkMapSchema, LinkSchema};
use crate::tree::Tree;
use serde_json::Value as Json;

pub(crate) fn resolve_links(
    root: &Tree,
    links: &[[String; 2]],
    lab: &LabSchema,
    wire_port_base: u16,
    hypervisors: &[Hypervisor],
    nodes: &mut [LabNode],
) -> Result<(), ModelError> {
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let mut ends = Vec::with_capacity(links.len());
    for (li, [a, b]) in links.iter().enumerate() {
        let mut pair = [0usize; 2];
        for (side, name) in [a, b].into_iter().enumerate() {
            let at = vec!["links".to_owned(), li.to_string(), side.to_string()];
            pair[side] = *index.get(name).ok_or_else(|| {
                schema_error(
                    root,
                    &at,
                    format!("node `{name}` is not defined under `nodes`"),
                    Hint::closest(name, nodes.iter().map(|n| n.name.as_str())),
                )
            })?;
        }
        if pair[0] == pair[1] {
            return Err(schema_error(
                root,
                &["links".to_owned(), li.to_string()],
                format!("link {li} connects `{a}` to itself"),
                Hint::default(),
            ));
        }
        ends.push(pair);
    }
    if !links.is_empty() && lab.p2p_ipv4.is_none() && lab.p2p_ipv6.is_none() {
        return Err(schema_error(
            root,
            &["lab".to_owned()],
            "links need `lab.p2p_ipv4` and/or `lab.p2p_ipv6` to number them".to_owned(),
            Hint::default(),
        ));
    }
    let link_nets = |li: usize| -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), ModelError> {
        let v4 = match lab.p2p_ipv4 {
            Some(pool) => Some(crate::addr::nth_subnet4(pool, 31, li as u32).map_err(|m| {
                schema_error(root, &path_of(&["lab", "p2p_ipv4"]), m, Hint::default())
            })?),
            None => None,
        };
        let v6 =
            match lab.p2p_ipv6 {
                Some(pool) => Some(crate::addr::nth_subnet6(pool, 127, li as u128).map_err(
                    |m| schema_error(root, &path_of(&["lab", "p2p_ipv6"]), m, Hint::default()),
                )?),
                None => None,
            };
        Ok((v4, v6))
    };
    let mut counts: BTreeMap<usize, u8> = BTreeMap::new();
    let mut next_if = |node: usize| {
        let n = counts.entry(node).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let hv_of = |node: &LabNode| {
        hypervisors
            .iter()
            .find(|h| h.name == node.hypervisor)
            .expect("the model checked every node's hypervisor")
    };
    for (li, [a, b]) in ends.into_iter().enumerate() {
        let (v4, v6) = link_nets(li)?;
        let (if_a, if_b) = (next_if(a), next_if(b));
        let addr4 = |side: u32| {
            v4.map(|n| {
                let ip = Ipv4Addr::from(u32::from(n.network()) + side);
                Ipv4Net::new(ip, 31).expect("31 is a valid IPv4 prefix length")
            })
        };
        let addr6 = |side: u128| {
            v6.map(|n| {
                let ip = Ipv6Addr::from(u128::from(n.network()) + side);
                Ipv6Net::new(ip, 127).expect("127 is a valid IPv6 prefix length")
            })
        };
        // The wire: a UDP tunnel, port `base + 2 * link + side`, over loopback on one
        // hypervisor and over the hypervisors' underlay addresses across two.
        let at = vec!["links".to_owned(), li.to_string()];
        let port = |side: usize| -> Result<u16, ModelError> {
            u16::try_from(usize::from(wire_port_base) + 2 * li + side).map_err(|_| {
                schema_error(
                    root,
                    &at,
                    format!(
                        "link {li} would need UDP port {} (base {wire_port_base}): beyond 65535; \
                         set `lab.wire_port_base` lower",
                        usize::from(wire_port_base) + 2 * li + side
                    ),
                    Hint::default(),
                )
            })
        };
        let (hv_a, hv_b) = (hv_of(&nodes[a]), hv_of(&nodes[b]));
        let (addr_a, addr_b) = if hv_a.name == hv_b.name {
            (Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)
        } else {
            let underlay = |hv: &Hypervisor| {
                hv.underlay.ok_or_else(|| {
                    schema_error(
                        root,
                        &at,
                        format!(
                            "link {li} crosses from `{}` to `{}`: hypervisor `{}` needs \
                             `underlay`, the address the other reaches it at",
                            hv_a.name, hv_b.name, hv.name
                        ),
                        Hint::default(),
                    )
                })
            };
            (underlay(hv_a)?, underlay(hv_b)?)
        };
        let (port_a, port_b) = (port(0)?, port(1)?);
        let (name_a, name_b) = (nodes[a].name.clone(), nodes[b].name.clone());
        let end = |node: &LabNode, index: u8, peer: &str, peer_index: u8, side: u32| Interface {
            name: format!("eth{index}"),
            kind: InterfaceKind::Link,
            mac: crate::addr::interface_mac(index, lab.id, hv_of(node).id, node.id),
            ipv4: addr4(side),
            ipv6: addr6(u128::from(side)),
            peer: Some(peer.to_owned()),
            peer_interface: Some(format!("eth{peer_index}")),
            peer_ipv4: addr4(1 - side).map(|n| n.addr()),
            peer_ipv6: addr6(u128::from(1 - side)).map(|n| n.addr()),
            link: Some(li),
            wire: None,
            impair: None,
        };
        let mut end_a = end(&nodes[a], if_a, &name_b, if_b, 0);
        end_a.wire = Some(Wire {
            local_address: addr_a,
            local_port: port_a,
            remote_address: addr_b,
            remote_port: port_b,
        });
        let mut end_b = end(&nodes[b], if_b, &name_a, if_a, 1);
        end_b.wire = Some(Wire {
            local_address: addr_b,
            local_port: port_b,
            remote_address: addr_a,
            remote_port: port_a,
        });
        nodes[a].interfaces.push(end_a);
        nodes[b].interfaces.push(end_b);
    }
    Ok(())
}

/// The `links:` entries, each `[a, b]` or a mapping (`ends`, `impair`), with an error that
/// names the entry's file:line.
pub(crate) fn parse_links(root: &Tree, links: &[Json]) -> Result<Vec<LinkSchema>, ModelError> {
    links
        .iter()
        .enumerate()
        .map(|(li, v)| {
            let at = vec!["links".to_owned(), li.to_string()];
            let bad = |m: String| schema_error(root, &at, m, Hint::default());
            match v {
                Json::Array(_) => serde_json::from_value::<[String; 2]>(v.clone())
                    .map(LinkSchema::Pair)
                    .map_err(|_| bad("a link is two node names, `[a, b]`".to_owned())),
                Json::Object(_) => serde_json::from_value::<LinkMapSchema>(v.clone())
                    .map(|m| LinkSchema::Map(Box::new(m)))
                    .map_err(|e| {
                        bad(format!(
                            "{e} (a link as a mapping: `ends: [a, b]` and `impair:`)"
                        ))
                    }),
                _ => Err(bad(
                    "a link is `[a, b]`, or a mapping with `ends: [a, b]` (and `impair:`)"
                        .to_owned(),
                )),
            }
        })
        .collect()
}

/// The impairments the lab file declares on links (`impair:` of a mapping entry), each value
/// checked with its file:line, set on the ends whose sent frames they impair.
pub(crate) fn resolve_impairments(
    root: &Tree,
    links: &[LinkSchema],
    nodes: &mut [LabNode],
) -> Result<(), ModelError> {
    for (li, link) in links.iter().enumerate() {
        let LinkSchema::Map(map) = link else {
            continue;
        };
        let Some(spec) = &map.impair else {
            continue;
        };
        let at = |key: &str| {
            vec![
                "links".to_owned(),
                li.to_string(),
                "impair".to_owned(),
                key.to_owned(),
            ]
        };
        let value = |key: &str, v: &Option<Json>, parse: &dyn Fn(&str) -> Result<u64, String>| {
            let text = match v {
                None => return Ok(0),
                Some(Json::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            parse(&text).map_err(|m| schema_error(root, &at(key), m, Hint::default()))
        };
        let ppm = |v: &str| crate::impair::percent_ppm(v).map(u64::from);
        let how = Impairment {
            delay_us: value("delay", &spec.delay, &crate::impair::duration_us)?,
            jitter_us: value("jitter", &spec.jitter, &crate::impair::duration_us)?,
            loss_ppm: value("loss", &spec.loss, &ppm)? as u32,
            duplicate_ppm: value("duplicate", &spec.duplicate, &ppm)? as u32,
            reorder_ppm: value("reorder", &spec.reorder, &ppm)? as u32,
            rate_bps: value("rate", &spec.rate, &crate::impair::rate_bps)?,
        };
        if how.jitter_us > how.delay_us {
            return Err(schema_error(
                root,
                &at("jitter"),
                "the jitter is more than the delay: a frame cannot leave before it came".to_owned(),
                Hint::default(),
            ));
        }
        if let Some(from) = &spec.from
            && !map.ends.contains(from)
        {
            return Err(schema_error(
                root,
                &at("from"),
                format!(
                    "`{from}` is not an end of this link ({} -- {})",
                    map.ends[0], map.ends[1]
                ),
                Hint::closest(from, map.ends.iter().map(String::as_str)),
            ));
        }
        if how.is_none() {
            continue;
        }
        for node in nodes.iter_mut() {
            if spec.from.as_ref().is_some_and(|f| *f != node.name) {
                continue;
            }
            for i in node.interfaces.iter_mut().filter(|i| i.link == Some(li)) {
                i.impair = Some(how);
            }
        }
    }
    Ok(())
}

/// Once every link is known: the lab file's MACs applied, and the checks that need every
/// interface: at most `max_links` links per node, no MAC twice in the lab, no MAC in another
/// hypervisor's derived range. (Wire ports cannot meet within a lab: link `i` side `s` has
/// `base + 2i + s`; see `wire_port_base` for ranges across labs.)
pub(crate) fn finish_interfaces(
    root: &Tree,
    lab_id: u8,
    hypervisors: &[Hypervisor],
    nodes: &mut [LabNode],
    extras: &[NodeExtras],
) -> Result<(), ModelError> {
    for (node, extra) in nodes.iter_mut().zip(extras) {
        if extra.max_links > 64 {
            return Err(schema_error(
                root,
                &path_of(&["nodes", &node.name, "max_links"]),
                format!(
                    "max_links {} is more than 64, the NICs a domain can have here",
                    extra.max_links
                ),
                Hint::default(),
            ));
        }
        let links = node.interfaces.len() - 1;
        if links > extra.max_links as usize {
            return Err(schema_error(
                root,
                &path_of(&["nodes", &node.name, "max_links"]),
                format!(
                    "node `{}` has {links} links, more than its `max_links` ({})",
                    node.name, extra.max_links
                ),
                Hint::default(),
            ));
        }
        for (iface, mac) in &extra.interface_macs {
            let Some(i) = node.interfaces.iter_mut().find(|i| &i.name == iface) else {
                return Err(schema_error(
                    root,
                    &path_of(&["nodes", &node.name, "interfaces", iface]),
                    format!(
                        "node `{}` has no interface `{iface}` (it has eth0..eth{links})",
                        node.name
                    ),
                    Hint::default(),
                ));
            };
            i.mac = mac.clone();
        }
        node.mac = node.interfaces[0].mac.clone();
    }
    // Where each interface's MAC was decided, for messages.
    let mac_origin = |node: &LabNode, iface: &Interface| -> Vec<String> {
        let set_per_interface = ["nodes", &node.name, "interfaces", &iface.name, "mac"];
        if root.lookup(&path_of(&set_per_interface)).is_some() {
            path_of(&set_per_interface)
        } else if iface.kind == InterfaceKind::Mgmt
            && root
                .lookup(&path_of(&["nodes", &node.name, "mac"]))
                .is_some()
        {
            path_of(&["nodes", &node.name, "mac"])
        } else {
            path_of(&["nodes", &node.name, "id"])
        }
    };
    let mut macs: HashMap<&str, (&LabNode, &Interface)> = HashMap::new();
    for node in nodes.iter() {
        let hv_id = hypervisors
            .iter()
            .find(|h| h.name == node.hypervisor)
            .map(|h| h.id);
        for iface in &node.interfaces {
            let at = mac_origin(node, iface);
            if let Some((other, other_iface)) = macs.insert(&iface.mac, (node, iface)) {
                let first = root.closest(&mac_origin(other, other_iface)).origin.clone();
                return Err(schema_error(
                    root,
                    &at,
                    format!(
                        "MAC {} of `{}` {} is also the MAC of `{}` {} (set at {first})",
                        iface.mac, node.name, iface.name, other.name, other_iface.name
                    ),
                    Hint::default(),
                ));
            }
            if let Some(owner) = derived_range_owner(&iface.mac, lab_id, hypervisors)
                && Some(owner.id) != hv_id
            {
                return Err(schema_error(
                    root,
                    &at,
                    format!(
                        "MAC {} of `{}` {} is in hypervisor `{}`'s range \
                         (52:54:xx:{lab_id:02x}:{:02x}:xx), but the node runs on `{}`",
                        iface.mac, node.name, iface.name, owner.name, owner.id, node.hypervisor
                    ),
                    Hint::default(),
                ));
            }
        }
    }
    Ok(())
}

/// The hypervisor whose derived MACs (`52:54:xx:<lab>:<hypervisor>:xx`) include `mac`.
fn derived_range_owner<'a>(
    mac: &str,
    lab_id: u8,
    hypervisors: &'a [Hypervisor],
) -> Option<&'a Hypervisor> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if bytes.len() != 6 || bytes[..2] != [0x52, 0x54] || bytes[3] != lab_id {
        return None;
    }
    hypervisors.iter().find(|h| h.id == bytes[4])
}
