//! Address arithmetic shared by the model (derived addresses) and the template filters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Host `n` of a prefix, keeping the prefix length: `10.0.0.0/24`, 5 → `10.0.0.5/24`.
/// Host 0 is the network itself and is refused, as is anything past the prefix.
pub fn nth_host(net: IpNet, n: u128) -> Result<IpNet, String> {
    let size_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let size = if size_bits >= 128 {
        u128::MAX
    } else {
        1u128 << size_bits
    };
    // An IPv4 prefix's last address is its broadcast (but in a /31 or /32, which have none).
    let last = match net {
        IpNet::V4(_) if size_bits >= 2 => size - 2,
        _ => size.saturating_sub(1),
    };
    if n == 0 || n > last {
        return Err(format!(
            "host {n} is outside {} (hosts 1 to {last}: not the network or broadcast address)",
            net.trunc()
        ));
    }
    let addr = match net.trunc() {
        IpNet::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()) + n as u32)),
        IpNet::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6.network()) + n)),
    };
    Ok(IpNet::new(addr, net.prefix_len()).expect("the prefix length is unchanged"))
}

/// Subnet `n` of length `len` inside `pool`: `100.64.0.0/24`, 31, 2 → `100.64.0.4/31`.
pub fn nth_subnet4(pool: Ipv4Net, len: u8, n: u32) -> Result<Ipv4Net, String> {
    let out_of_room = || format!("{pool} has no room for /{len} number {n}");
    if len > 32 {
        return Err(format!("/{len} is not an IPv4 prefix length"));
    }
    let bits = u32::from(len.checked_sub(pool.prefix_len()).ok_or_else(out_of_room)?);
    if bits < 32 && u64::from(n) >= 1u64 << bits {
        return Err(out_of_room());
    }
    let base = u32::from(pool.network());
    let step = 1u32.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let addr = Ipv4Addr::from(base + n * step);
    Ipv4Net::new(addr, len).map_err(|e| e.to_string())
}

/// Subnet `n` of length `len` inside an IPv6 `pool`.
pub fn nth_subnet6(pool: Ipv6Net, len: u8, n: u128) -> Result<Ipv6Net, String> {
    let out_of_room = || format!("{pool} has no room for /{len} number {n}");
    if len > 128 {
        return Err(format!("/{len} is not an IPv6 prefix length"));
    }
    let bits = u32::from(len.checked_sub(pool.prefix_len()).ok_or_else(out_of_room)?);
    if bits < 128 && n >= 1u128 << bits {
        return Err(out_of_room());
    }
    let base = u128::from(pool.network());
    let step = 1u128.checked_shl(128 - u32::from(len)).unwrap_or(0);
    Ipv6Net::new(Ipv6Addr::from(base + n * step), len).map_err(|e| e.to_string())
}

/// A locally administered QEMU MAC from three numbers: `52:54:00:aa:bb:cc`.
pub fn mac(bytes: [u8; 3]) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2]
    )
}

/// The derived MAC of a node's interface: `52:54:<interface>:<lab>:<hypervisor>:<node>`
/// (interface 0, management, gives the QEMU-style `52:54:00:...`).
pub fn interface_mac(interface: u8, lab: u8, hypervisor: u8, node: u8) -> String {
    format!("52:54:{interface:02x}:{lab:02x}:{hypervisor:02x}:{node:02x}")
}

/// The last host address of an IPv4 prefix (`192.168.20.0/24` → `192.168.20.254/24`).
pub fn last_host(net: Ipv4Net) -> Result<Ipv4Net, String> {
    if net.prefix_len() > 30 {
        return Err(format!("{net} has no room for a gateway beside its hosts"));
    }
    let ip = Ipv4Addr::from(u32::from(net.broadcast()) - 1);
    Ipv4Net::new(ip, net.prefix_len()).map_err(|e| e.to_string())
}

/// A gateway given as a host number of `net` or as an address inside it, as an address with
/// `net`'s length.
pub fn gateway(net: Ipv4Net, given: Either<u32, Ipv4Addr>) -> Result<Ipv4Net, String> {
    let ip = match given {
        Either::Left(n) => match nth_host(IpNet::V4(net), u128::from(n))? {
            IpNet::V4(a) => a.addr(),
            IpNet::V6(_) => unreachable!("an IPv4 prefix yields IPv4 hosts"),
        },
        Either::Right(a) => {
            let net = net.trunc();
            if !net.contains(&a) || a == net.network() || a == net.broadcast() {
                return Err(format!(
                    "{a} is not a host of {net}: the gateway is the hypervisor's address there"
                ));
            }
            a
        }
    };
    Ipv4Net::new(ip, net.prefix_len()).map_err(|e| e.to_string())
}

/// One of two ways to say something.
#[derive(Debug, Clone, Copy)]
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// The modified EUI-64 address of `mac` in an IPv6 /64 (SLAAC).
pub fn eui64(prefix: Ipv6Net, mac: &str) -> Result<Ipv6Net, String> {
    let octets: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{mac:?} is not a MAC address"))?;
    let [a, b, c, d, e, f] = octets[..] else {
        return Err(format!("{mac:?} is not a MAC address"));
    };
    let iid = u64::from_be_bytes([a ^ 0x02, b, c, 0xff, 0xfe, d, e, f]);
    let network = u128::from(prefix.trunc().network());
    let addr = Ipv6Addr::from((network & !u128::from(u64::MAX)) | u128::from(iid));
    Ipv6Net::new(addr, prefix.prefix_len()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn hosts() {
        assert_eq!(
            nth_host(net("192.168.20.0/24"), 5).unwrap(),
            net("192.168.20.5/24")
        );
        assert_eq!(
            nth_host(net("2001:db8::/64"), 10).unwrap(),
            net("2001:db8::a/64")
        );
        assert_eq!(nth_host(net("10.0.0.7/24"), 1).unwrap(), net("10.0.0.1/24"));
        assert!(nth_host(net("10.0.0.0/24"), 0).is_err());
        assert!(nth_host(net("10.0.0.0/24"), 256).is_err());
        // The broadcast address is no host; a /31 has none.
        assert!(nth_host(net("10.0.0.0/30"), 3).is_err());
        assert!(nth_host(net("10.0.0.0/30"), 2).is_ok());
        assert!(nth_host(net("10.0.0.0/24"), 255).is_err());
        assert!(nth_host(net("10.0.0.0/31"), 1).is_ok());
    }

    #[test]
    fn subnets() {
        let pool: Ipv4Net = "100.64.0.0/24".parse().unwrap();
        assert_eq!(
            nth_subnet4(pool, 31, 2).unwrap().to_string(),
            "100.64.0.4/31"
        );
        assert!(nth_subnet4(pool, 31, 128).is_err());
        assert!(nth_subnet4(pool, 16, 0).is_err());
        let pool6: Ipv6Net = "2001:db8:ffff::/48".parse().unwrap();
        assert_eq!(
            nth_subnet6(pool6, 127, 1).unwrap().to_string(),
            "2001:db8:ffff::2/127"
        );
    }

    #[test]
    fn macs() {
        assert_eq!(mac([2, 1, 10]), "52:54:00:02:01:0a");
        let p: Ipv6Net = "2001:db8:1::/64".parse().unwrap();
        assert_eq!(
            eui64(p, "52:54:00:02:01:0a").unwrap().to_string(),
            "2001:db8:1:0:5054:ff:fe02:10a/64"
        );
        assert!(eui64(p, "52:54:00").is_err());
    }
}
