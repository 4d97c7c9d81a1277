//! What `doctor.sh` said about one hypervisor, read line by line (only lines with its nonce).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

/// What the probe said, line by line (only lines with its nonce).
#[derive(Debug, Default)]
pub struct Facts {
    pub tools: BTreeMap<String, bool>,
    pub qemu: Option<String>,
    pub zfs_version: Option<String>,
    /// exit status, health, size, free
    pub pool: Option<(i32, String, u64, u64)>,
    pub pool_error: Option<String>,
    pub pool_version: String,
    pub features: BTreeMap<String, String>,
    pub proto_type: Option<String>,
    pub snapshots: Vec<String>,
    pub libvirt: Option<(i32, String)>,
    pub domains: BTreeSet<String>,
    pub kvm: (String, bool),
    pub addrs: Vec<(String, Ipv4Net)>,
    pub udp: BTreeSet<u16>,
    pub net_bridge: Option<String>,
    /// (addr, port) → what the listener heard: heard, silent, bind, noperl, error
    pub listened: BTreeMap<(String, u16), String>,
    pub sent: BTreeMap<(String, u16), String>,
    pub complete: bool,
}

pub(crate) fn parse(text: &str, nonce: &str) -> Facts {
    let mut f = Facts::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(nonce).and_then(|r| r.strip_prefix(' ')) else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        match w.as_slice() {
            ["tool", t, yes] => {
                f.tools.insert((*t).into(), *yes == "yes");
            }
            ["qemu", q] => f.qemu = (*q != "-").then(|| (*q).into()),
            ["zfs_version", v @ ..] => {
                let v = v.join(" ");
                f.zfs_version = (v != "-" && !v.is_empty()).then_some(v);
            }
            ["pool", "0", health, size, free] => {
                f.pool = Some((0, (*health).into(), bytes(size), bytes(free)));
            }
            ["pool", _, err @ ..] => f.pool_error = Some(err.join(" ")),
            ["pool_version", v] => f.pool_version = (*v).into(),
            ["feature", name, state] => {
                f.features.insert((*name).into(), (*state).into());
            }
            ["proto", "0", t] => f.proto_type = Some((*t).into()),
            ["snap", s] => f.snapshots.push((*s).into()),
            ["libvirt", rc, text @ ..] => {
                f.libvirt = Some((rc.parse().unwrap_or(1), text.join(" ")));
            }
            ["domain", d] => {
                f.domains.insert((*d).into());
            }
            ["kvm", k, caps] => f.kvm = ((*k).into(), *caps == "yes"),
            ["addr", iface, net] => {
                if let Ok(n) = net.parse() {
                    f.addrs.push(((*iface).into(), n));
                }
            }
            ["udp", hex] => {
                if let Ok(p) = u16::from_str_radix(hex, 16) {
                    f.udp.insert(p);
                }
            }
            ["netbridge", b] => f.net_bridge = (*b != "-").then(|| (*b).into()),
            ["listen", addr, port, what] => {
                if let Ok(p) = port.parse() {
                    f.listened.insert(((*addr).into(), p), (*what).into());
                }
            }
            ["send", addr, port, what] => {
                if let Ok(p) = port.parse() {
                    f.sent.insert(((*addr).into(), p), (*what).into());
                }
            }
            ["end"] => f.complete = true,
            _ => {}
        }
    }
    f
}

/// A size as zpool prints it: bytes (`-p`), or `1.98G` where zpool has no `-p`.
pub(crate) fn bytes(text: &str) -> u64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let scale: u64 = match unit {
        "" | "B" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        "P" => 1 << 50,
        _ => 0,
    };
    number
        .parse::<f64>()
        .map_or(0, |n| (n * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_without_the_nonce_are_not_facts() {
        let text = "N tool rsync yes\nX tool flock yes\nN udp 4E20\nN listen 10.0.0.1 20000 heard\n\
                    N pool 0 ONLINE 100 50\nN zfs_version zfs-2.1.11-1\nN end\n";
        let f = parse(text, "N");
        assert_eq!(f.tools.get("rsync"), Some(&true));
        assert!(!f.tools.contains_key("flock"));
        assert!(f.udp.contains(&20000));
        assert_eq!(
            f.listened
                .get(&("10.0.0.1".to_owned(), 20000))
                .map(String::as_str),
            Some("heard")
        );
        assert_eq!(f.pool.as_ref().map(|p| p.3), Some(50));
        assert_eq!(f.zfs_version.as_deref(), Some("zfs-2.1.11-1"));
        assert!(f.complete);
        assert_eq!(bytes("1.98G"), (1.98 * (1u64 << 30) as f64) as u64);
        assert_eq!(bytes("4026531840"), 4026531840);
    }
}
