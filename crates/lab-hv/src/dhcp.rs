//! DHCP reservations in an operator's network (management mode `existing` with `reserve`):
//! what the probe reads of such a network, the claim `lab` records on the clone of each node
//! whose reservation it added, and the two commands that add and remove one.
//!
//! The claim is the proof of ownership: a reservation is removed only when the clone `lab`
//! made for that node says `lab` added it, and only while the network has exactly that element.
//! A reservation someone made by hand, even one identical to the node's, is never claimed.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use lab_exec::Cmd;

/// A DHCP reservation of a libvirt network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DhcpHost {
    /// Lower case, as libvirt prints it.
    pub mac: Option<String>,
    pub name: Option<String>,
    pub ip: Option<Ipv4Addr>,
}

impl DhcpHost {
    /// The reservation `lab` makes for a node.
    pub fn new(mac: &str, name: &str, ip: Ipv4Addr) -> DhcpHost {
        DhcpHost {
            mac: Some(mac.to_ascii_lowercase()),
            name: Some(name.to_owned()),
            ip: Some(ip),
        }
    }

    /// The element as libvirt prints it (attributes in its order, single quotes), so that the
    /// text `lab` adds is the text it later finds.
    pub fn element(&self) -> String {
        let mut out = "<host".to_owned();
        if let Some(mac) = &self.mac {
            out.push_str(&format!(" mac='{mac}'"));
        }
        if let Some(name) = &self.name {
            out.push_str(&format!(" name='{name}'"));
        }
        if let Some(ip) = &self.ip {
            out.push_str(&format!(" ip='{ip}'"));
        }
        out.push_str("/>");
        out
    }

    /// Whether the two would be one reservation to libvirt (it refuses a second host with the
    /// MAC, the name or the address of one it has).
    pub fn clashes(&self, other: &DhcpHost) -> bool {
        fn same<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            a.is_some() && a == b
        }
        same(&self.mac, &other.mac) || same(&self.name, &other.name) || same(&self.ip, &other.ip)
    }
}

/// What the probe read of an operator's network: its IPv4 prefixes and DHCP reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetworkDhcp {
    pub ipv4: Vec<Ipv4Net>,
    pub hosts: Vec<DhcpHost>,
}

/// Reads the `<ip ...>` and `<host ... mac=...>` elements the probe prints on one line.
pub(crate) fn parse_network(text: &str) -> NetworkDhcp {
    let mut out = NetworkDhcp::default();
    for (at, _) in text.match_indices('<') {
        let element = &text[at..];
        let element = &element[..element.find('>').map_or(element.len(), |e| e + 1)];
        let attr = |key: &str| crate::state::attribute(element, key);
        if element.starts_with("<ip ") {
            if attr("family").is_some_and(|f| f != "ipv4") {
                continue;
            }
            let Some(address) = attr("address").and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let len = match (attr("prefix"), attr("netmask")) {
                (Some(p), _) => p.parse::<u8>().ok(),
                (None, Some(m)) => m
                    .parse::<Ipv4Addr>()
                    .ok()
                    .map(|m| u32::from(m).leading_ones() as u8),
                (None, None) => Some(24),
            };
            if let Some(net) = len.and_then(|l| Ipv4Net::new(address, l).ok()) {
                out.ipv4.push(net);
            }
        } else if element.starts_with("<host ") {
            out.hosts.push(DhcpHost {
                mac: attr("mac").map(|m| m.to_ascii_lowercase()),
                name: attr("name"),
                ip: attr("ip").and_then(|i| i.parse().ok()),
            });
        }
    }
    out
}

/// The claim on a clone: `lab` added this reservation to this network for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub network: String,
    pub host: DhcpHost,
}

impl Claim {
    /// The value of [`crate::own::prop::DHCP_HOST`]: `network mac name ip`.
    pub fn value(&self) -> String {
        let field = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        format!(
            "{} {} {} {}",
            self.network,
            field(self.host.mac.clone()),
            field(self.host.name.clone()),
            field(self.host.ip.map(|i| i.to_string()))
        )
    }

    pub fn parse(value: &str) -> Option<Claim> {
        let mut f = value.split(' ');
        let (network, mac, name, ip) = (f.next()?, f.next()?, f.next()?, f.next()?);
        if f.next().is_some() || network.is_empty() {
            return None;
        }
        let field = |v: &str| (v != "-").then(|| v.to_owned());
        Some(Claim {
            network: network.to_owned(),
            host: DhcpHost {
                mac: field(mac),
                name: field(name),
                ip: match ip {
                    "-" => None,
                    ip => Some(ip.parse().ok()?),
                },
            },
        })
    }
}

/// Adds the reservation to the network, running and persistent, where it is not there yet
/// (exactly that element): a step that can run twice.
pub fn reserve(claim: &Claim) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        UPDATE,
        "lab-dhcp-reserve",
        "add-last",
        &claim.network,
        &claim.host.element(),
    ])
}

/// Removes the reservation from the network, running and persistent, where exactly that
/// element is there; a network that is gone has nothing to remove.
pub fn release(claim: &Claim) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        UPDATE,
        "lab-dhcp-release",
        "delete",
        &claim.network,
        &claim.host.element(),
    ])
}

/// `add-last` where the element is missing, `delete` where it is there: in the running
/// network (when it runs) and in its persistent definition, each on its own.
const UPDATE: &str = r#"verb=$1 net=$2 host=$3
if ! live=$(virsh -q net-dumpxml "$net" 2>&1); then
  case $live in *"no network with matching name"*) [ "$verb" = delete ] && exit 0 ;; esac
  printf '%s\n' "$live" >&2; exit 1
fi
saved=$(virsh -q net-dumpxml --inactive "$net") || exit 1
has() { printf '%s\n' "$1" | grep -qF -- "$host"; }
want() { if [ "$verb" = delete ]; then has "$1"; else ! has "$1"; fi; }
set --
virsh -q net-info "$net" | grep -q '^Active: *yes' && want "$live" && set -- --live
want "$saved" && set -- "$@" --config
[ $# -gt 0 ] || exit 0
exec virsh -q net-update "$net" "$verb" ip-dhcp-host "$host" "$@""#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_is_read_as_libvirt_prints_it() {
        let line = "<ip address='192.168.122.1' netmask='255.255.255.0'>\
            <host mac='52:54:00:AA:00:01' name='web' ip='192.168.122.10'/>\
            <ip family='ipv6' address='fd00::1' prefix='64'>\
            <ip address='10.9.0.1' prefix='16'>";
        let net = parse_network(line);
        assert_eq!(
            net.ipv4,
            [
                "192.168.122.1/24".parse::<Ipv4Net>().unwrap(),
                "10.9.0.1/16".parse().unwrap()
            ]
        );
        assert_eq!(
            net.hosts,
            [DhcpHost::new(
                "52:54:00:aa:00:01",
                "web",
                [192, 168, 122, 10].into()
            )]
        );
        assert_eq!(
            net.hosts[0].element(),
            "<host mac='52:54:00:aa:00:01' name='web' ip='192.168.122.10'/>"
        );
    }

    #[test]
    fn a_claim_reads_back_and_clashes_are_any_shared_key() {
        let host = DhcpHost::new("52:54:00:3d:00:01", "r1", [192, 168, 122, 11].into());
        let claim = Claim {
            network: "default".into(),
            host: host.clone(),
        };
        assert_eq!(claim.value(), "default 52:54:00:3d:00:01 r1 192.168.122.11");
        assert_eq!(Claim::parse(&claim.value()), Some(claim));
        assert_eq!(Claim::parse("default 52:54:00:3d:00:01 r1"), None);
        let other = |mac: &str, name: &str, ip: [u8; 4]| DhcpHost::new(mac, name, ip.into());
        assert!(host.clashes(&other("52:54:00:3d:00:01", "x", [1, 1, 1, 1])));
        assert!(host.clashes(&other("52:54:00:00:00:09", "r1", [1, 1, 1, 1])));
        assert!(host.clashes(&other("52:54:00:00:00:09", "x", [192, 168, 122, 11])));
        assert!(!host.clashes(&other("52:54:00:00:00:09", "x", [1, 1, 1, 1])));
    }
}
