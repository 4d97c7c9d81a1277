//! Template filters and functions for the address work labs need.
//!
//! Addresses travel through templates as strings (`"192.168.20.5/24"`); every filter accepts an
//! address with or without a prefix length.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use lab_model::addr;
use minijinja::{Environment, Error, ErrorKind};

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

/// Parses `a.b.c.d/len`, `a.b.c.d`, or the IPv6 forms (a bare address is a host route).
fn net(s: &str) -> Result<IpNet, Error> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| bad(format!("{s:?} is not an IP address or prefix")))
}

/// `"10.0.0.5/24" | ipaddr` → `"10.0.0.5"`. Hot in /etc/hosts-style loops: it checks the
/// address part and hands it back as written instead of re-formatting it.
fn ipaddr(s: &str) -> Result<String, Error> {
    let (address, len) = s.split_once('/').unwrap_or((s, ""));
    if address.parse::<IpAddr>().is_ok() && (len.is_empty() || len.parse::<u8>().is_ok()) {
        Ok(address.to_owned())
    } else {
        Err(bad(format!("{s:?} is not an IP address or prefix")))
    }
}

/// `"10.0.0.5/24" | prefixlen` → `24`.
fn prefixlen(s: &str) -> Result<u8, Error> {
    Ok(net(s)?.prefix_len())
}

/// `"10.0.0.5/24" | network` → `"10.0.0.0/24"`.
fn network(s: &str) -> Result<String, Error> {
    Ok(net(s)?.trunc().to_string())
}

/// `"10.0.0.5/24" | netmask` → `"255.255.255.0"`.
fn netmask(s: &str) -> Result<String, Error> {
    Ok(net(s)?.netmask().to_string())
}

/// `"10.0.0.0/24" | nth_host(5)` → `"10.0.0.5/24"`.
fn nth_host(s: &str, n: u64) -> Result<String, Error> {
    addr::nth_host(net(s)?, u128::from(n))
        .map(|n| n.to_string())
        .map_err(bad)
}

/// `"100.64.0.0/24" | subnet(31, 2)` → `"100.64.0.4/31"`.
fn subnet(s: &str, len: u8, n: u64) -> Result<String, Error> {
    match net(s)? {
        IpNet::V4(v4) => {
            let n = u32::try_from(n).map_err(|_| bad(format!("subnet number {n} is too large")))?;
            addr::nth_subnet4(v4, len, n).map(|s| s.to_string())
        }
        IpNet::V6(v6) => addr::nth_subnet6(v6, len, u128::from(n)).map(|s| s.to_string()),
    }
    .map_err(bad)
}

/// `"10.0.0.5/24" | ipv4_to_ipv6("2001:db8::/96")` → `"2001:db8::a00:5/96"`: the IPv4 address
/// in the low 32 bits of the IPv6 prefix.
fn ipv4_to_ipv6(s: &str, prefix: &str) -> Result<String, Error> {
    let IpAddr::V4(v4) = net(s)?.addr() else {
        return Err(bad(format!("{s:?} is not an IPv4 address")));
    };
    let IpNet::V6(p6) = net(prefix)? else {
        return Err(bad(format!("{prefix:?} is not an IPv6 prefix")));
    };
    if p6.prefix_len() > 96 {
        return Err(bad(format!("{prefix:?} leaves no room for 32 bits")));
    }
    let bits = u128::from(p6.trunc().network()) | u128::from(u32::from(v4));
    Ok(Ipv6Net::new(bits.into(), p6.prefix_len())
        .expect("prefix length is unchanged")
        .to_string())
}

/// `"2001:db8::/64" | eui64(node.mac)` → the SLAAC address of that MAC.
fn eui64(prefix: &str, mac: &str) -> Result<String, Error> {
    let IpNet::V6(p6) = net(prefix)? else {
        return Err(bad(format!("{prefix:?} is not an IPv6 prefix")));
    };
    addr::eui64(p6, mac).map(|n| n.to_string()).map_err(bad)
}

/// `"10.0.0.5/24" | reverse_pointer` → `"5.0.0.10.in-addr.arpa"`.
fn reverse_pointer(s: &str) -> Result<String, Error> {
    Ok(match net(s)?.addr() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let hex = format!("{:032x}", u128::from(v6));
            let mut labels: Vec<String> = hex.chars().rev().map(String::from).collect();
            labels.push("ip6.arpa".to_owned());
            labels.join(".")
        }
    })
}

/// `mac(lab.id, hypervisor.id, node.id)` → `"52:54:00:02:01:0a"`.
fn mac(a: u8, b: u8, c: u8) -> String {
    addr::mac([a, b, c])
}

/// Installs the filters and functions on `env`.
pub fn install(env: &mut Environment<'_>) {
    env.add_filter("ipaddr", ipaddr);
    env.add_filter("prefixlen", prefixlen);
    env.add_filter("network", network);
    env.add_filter("netmask", netmask);
    env.add_filter("nth_host", nth_host);
    env.add_filter("subnet", subnet);
    env.add_filter("ipv4_to_ipv6", ipv4_to_ipv6);
    env.add_filter("eui64", eui64);
    env.add_filter("reverse_pointer", reverse_pointer);
    env.add_function("mac", mac);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: template expression, expected output (or `ERR` + part of the error).
    const CASES: &[(&str, &str)] = &[
        ("'10.0.0.5/24' | ipaddr", "10.0.0.5"),
        ("'2001:db8::1/64' | ipaddr", "2001:db8::1"),
        ("'10.0.0.5' | ipaddr", "10.0.0.5"),
        ("'10.0.0.5/24' | prefixlen", "24"),
        ("'10.0.0.5' | prefixlen", "32"),
        ("'10.0.0.5/24' | network", "10.0.0.0/24"),
        ("'10.0.0.5/22' | netmask", "255.255.252.0"),
        ("'192.168.21.0/24' | nth_host(4)", "192.168.21.4/24"),
        ("'2001:db8:21::/64' | nth_host(4)", "2001:db8:21::4/64"),
        ("'10.0.0.0/30' | nth_host(4)", "ERR outside"),
        ("'100.64.0.0/24' | subnet(31, 2)", "100.64.0.4/31"),
        ("'100.64.0.0/24' | subnet(31, 200)", "ERR no room"),
        (
            "'10.0.0.5/24' | ipv4_to_ipv6('2001:db8::/96')",
            "2001:db8::a00:5/96",
        ),
        (
            "'2001:db8:1::/64' | eui64('52:54:00:02:01:0a')",
            "2001:db8:1:0:5054:ff:fe02:10a/64",
        ),
        ("'10.0.0.5/24' | reverse_pointer", "5.0.0.10.in-addr.arpa"),
        (
            "'2001:db8::1' | reverse_pointer",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        ),
        ("mac(2, 1, 10)", "52:54:00:02:01:0a"),
        ("'not-an-ip' | ipaddr", "ERR not an IP"),
    ];

    #[test]
    fn filters_do_what_they_say() {
        let mut env = Environment::new();
        install(&mut env);
        for (expr, want) in CASES {
            let got = env.render_str(&format!("{{{{ {expr} }}}}"), ());
            match (want.strip_prefix("ERR "), got) {
                (None, Ok(out)) => assert_eq!(&out, want, "{expr}"),
                (Some(part), Err(e)) => assert!(e.to_string().contains(part), "{expr}: {e}"),
                (_, other) => panic!("{expr}: expected {want}, got {other:?}"),
            }
        }
    }
}
