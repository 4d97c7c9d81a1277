//! Links: each `[a, b]` becomes an interface on both nodes (`eth1`, `eth2` ... in link order),
//! numbered from the lab's point-to-point pools.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::error::{Hint, ModelError};
use crate::model::{Interface, LabNode};
use crate::resolve::{path_of, schema_error};
use crate::schema::LabSchema;
use crate::tree::Tree;

pub(crate) fn resolve_links(
    root: &Tree,
    links: &[[String; 2]],
    lab: &LabSchema,
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
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next_if = |node: usize| {
        let n = counts.entry(node).or_insert(0);
        *n += 1;
        format!("eth{n}")
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
        let (name_a, name_b) = (nodes[a].name.clone(), nodes[b].name.clone());
        nodes[a].links.push(Interface {
            name: if_a.clone(),
            peer: name_b,
            peer_interface: if_b.clone(),
            ipv4: addr4(0),
            peer_ipv4: addr4(1).map(|n| n.addr()),
            ipv6: addr6(0),
            peer_ipv6: addr6(1).map(|n| n.addr()),
            link: li,
        });
        nodes[b].links.push(Interface {
            name: if_b,
            peer: name_a,
            peer_interface: if_a,
            ipv4: addr4(1),
            peer_ipv4: addr4(0).map(|n| n.addr()),
            ipv6: addr6(1),
            peer_ipv6: addr6(0).map(|n| n.addr()),
            link: li,
        });
    }
    Ok(())
}
