//! Validators for every name that reaches a shell command or a path.
//!
//! They are deliberately narrow: ASCII only, no leading dash, no whitespace, no shell
//! metacharacters, bounded length. Each returns the rule it enforces, for the error message.

pub type Rule = &'static str;

/// A name validator: `Ok` or the rule the name breaks.
pub type Validator = fn(&str) -> Result<(), Rule>;

fn check(ok: bool, rule: Rule) -> Result<(), Rule> {
    if ok { Ok(()) } else { Err(rule) }
}

fn lower_alnum_dash(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn starts_lower(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
}

/// A lab name: `[a-z][a-z0-9-]*`, at most 24 characters (it is part of lock and property names).
pub fn lab(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "[a-z][a-z0-9-]*, at most 24 characters";
    check(
        starts_lower(s) && lower_alnum_dash(s) && s.len() <= 24,
        RULE,
    )
}

/// A node, hypervisor or overlay name: `[a-z][a-z0-9-]*`, at most 48 characters.
/// Node names are also libvirt domain names and the last component of the clone's dataset.
pub fn ident(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "[a-z][a-z0-9-]*, at most 48 characters";
    check(
        starts_lower(s) && lower_alnum_dash(s) && s.len() <= 48,
        RULE,
    )
}

/// A libvirt network name: a letter, then `[A-Za-z0-9_.-]`, at most 48 characters.
pub fn network(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "a letter then [A-Za-z0-9_.-], at most 48 characters";
    check(
        s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && s.len() <= 48,
        RULE,
    )
}

/// A Linux interface name (a host bridge): `[A-Za-z0-9_.-]`, 1 to 15 characters, no leading dash.
pub fn ifname(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "[A-Za-z0-9_.-], 1 to 15 characters, not starting with a dash";
    check(
        (1..=15).contains(&s.len())
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
        RULE,
    )
}

/// A unicast MAC address: six lower-case hex pairs joined by colons, the multicast bit clear.
pub fn mac(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "six lower-case hex pairs joined by `:` (aa:bb:cc:dd:ee:ff), unicast";
    let pairs: Vec<&str> = s.split(':').collect();
    let hex = |p: &&str| {
        p.len() == 2
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let unicast = pairs
        .first()
        .and_then(|p| u8::from_str_radix(p, 16).ok())
        .is_some_and(|b| b & 1 == 0);
    check(pairs.len() == 6 && pairs.iter().all(hex) && unicast, RULE)
}

/// A login name: `[a-z_][a-z0-9_-]*`, at most 32 characters.
pub fn user(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "[a-z_][a-z0-9_-]*, at most 32 characters";
    check(
        s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && s.len() <= 32,
        RULE,
    )
}

/// The ssh options a lab file may set for reaching its nodes: how to authenticate, which host
/// keys to trust, timeouts and algorithms. Nothing that runs a program or loads a library
/// (`ProxyCommand`, `LocalCommand`, `KnownHostsCommand`, `*Provider`), reads another file of
/// options (`Include`, `Match`), or opens a forward or a control socket: `lab exec` runs ssh as
/// root on every hypervisor (review 3, N9). Case does not matter to ssh, nor here.
pub const SSH_OPTION_KEYS: &[&str] = &[
    "AddressFamily",
    "BatchMode",
    "CASignatureAlgorithms",
    "CertificateFile",
    "CheckHostIP",
    "Ciphers",
    "Compression",
    "ConnectionAttempts",
    "ConnectTimeout",
    "FingerprintHash",
    "GlobalKnownHostsFile",
    "HashKnownHosts",
    "HostKeyAlgorithms",
    "HostKeyAlias",
    "HostbasedAcceptedAlgorithms",
    "IdentitiesOnly",
    "IdentityFile",
    "IPQoS",
    "KbdInteractiveAuthentication",
    "KexAlgorithms",
    "LogLevel",
    "MACs",
    "NumberOfPasswordPrompts",
    "PasswordAuthentication",
    "Port",
    "PreferredAuthentications",
    "PubkeyAcceptedAlgorithms",
    "PubkeyAuthentication",
    "RekeyLimit",
    "ServerAliveCountMax",
    "ServerAliveInterval",
    "StrictHostKeyChecking",
    "TCPKeepAlive",
    "UpdateHostKeys",
    "User",
    "UserKnownHostsFile",
    "VerifyHostKeyDNS",
];

/// An ssh option: `Key=Value`, the key one of [`SSH_OPTION_KEYS`], the value
/// `[A-Za-z0-9_./@:,+~-]`.
pub fn ssh_option(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "Key=Value: a key of the allowed list (IdentityFile, User, Port, \
        StrictHostKeyChecking, UserKnownHostsFile, ConnectTimeout, ServerAlive*, LogLevel, \
        algorithms...; never *Command, *Provider, Include, Match, forwards or ControlPath), a \
        value of [A-Za-z0-9_./@:,+~-]";
    let ok = s.split_once('=').is_some_and(|(k, v)| {
        SSH_OPTION_KEYS.iter().any(|a| a.eq_ignore_ascii_case(k))
            && !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./@:,+~-".contains(&b))
    });
    check(ok && s.len() <= 256, RULE)
}

/// A transfer rate for `pv -L` or `mbuffer -r`: digits and an optional unit, `50M`, `800k`.
pub fn rate(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "a number of bytes per second with an optional unit (k, M, G): 50M, 800k";
    let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    check(
        !digits.is_empty()
            && digits.len() + 1 >= s.len()
            && digits.len() <= 12
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.bytes().any(|b| b != b'0'),
        RULE,
    )
}

/// A hostname: dot-separated labels of `[a-z0-9-]`, not starting or ending with `-`.
pub fn hostname(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "lower-case DNS labels ([a-z0-9-], no leading or trailing dash) joined by dots, at most 253 characters";
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && lower_alnum_dash(l)
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    check(s.len() <= 253 && s.split('.').all(label_ok), RULE)
}

/// A ZFS pool name: a letter, then `[A-Za-z0-9_.-]`, at most 64 characters.
pub fn pool(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "a letter then [A-Za-z0-9_.-], at most 64 characters";
    check(
        s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && s.bytes().all(zfs_char)
            && s.len() <= 64,
        RULE,
    )
}

fn zfs_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':')
}

fn zfs_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.starts_with('-') && c.bytes().all(zfs_char)
}

/// A dataset name: `pool/child[/child...]`, components of `[A-Za-z0-9_.:-]`, at most 200 characters.
pub fn dataset(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "pool/name[/name...] with components of [A-Za-z0-9_.:-] (not `.`, `..` or a leading dash), at most 200 characters";
    let mut parts = s.split('/');
    let pool_ok = parts.next().is_some_and(|p| self::pool(p).is_ok());
    check(
        pool_ok && s.contains('/') && s.len() <= 200 && parts.all(zfs_component),
        RULE,
    )
}

/// A snapshot name (the part after `@`).
pub fn snapshot(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "[A-Za-z0-9_.:-] (no leading dash), at most 64 characters";
    check(zfs_component(s) && s.len() <= 64, RULE)
}

/// The name of a lab's snapshot (`lab snapshot NAME`): `[a-z0-9][a-z0-9_.-]*`, at most 40
/// characters; it becomes the part after `@` of each clone's snapshot.
pub fn lab_snapshot(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "[a-z0-9][a-z0-9_.-]*, at most 40 characters";
    check(
        s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
            && s.len() <= 40,
        RULE,
    )
}

/// A snapshot name or a glob pattern over snapshot names (`*` and `?` allowed).
pub fn snapshot_pattern(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "a snapshot name or a pattern of [A-Za-z0-9_.:-*?] (no leading dash), at most 64 characters";
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes().all(|b| zfs_char(b) || b == b'*' || b == b'?');
    check(ok, RULE)
}

/// An absolute path made of plain components (`[A-Za-z0-9_.-]`, no `.`/`..`), at most 200 characters.
pub fn abs_path(s: &str) -> Result<(), Rule> {
    const RULE: Rule = "an absolute path of [A-Za-z0-9_.-] components (no `.`, `..` or empty ones), at most 200 characters";
    let ok = s.len() <= 200
        && s.starts_with('/')
        && s.len() > 1
        && s[1..].split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        });
    check(ok, RULE)
}

/// An ssh destination: an alias from `~/.ssh/config`, or `[user@]host[:port]`.
pub fn ssh_destination(s: &str) -> Result<(), Rule> {
    const RULE: Rule =
        "an ssh config alias or [user@]host[:port] of [A-Za-z0-9._-] (no leading dash)";
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, s),
    };
    let user_ok = user.is_none_or(|u| {
        !u.is_empty()
            && !u.starts_with('-')
            && u.len() <= 32
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    });
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    check(user_ok && host_ok && port_ok, RULE)
}

/// Shell-style glob match with `*` and `?` (for snapshot patterns).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &[&str] = &[
        "",
        "-rf",
        "a b",
        "a;touch x",
        "a$(id)",
        "a`id`",
        "a\nb",
        "a|b",
        "a&b",
        "a>b",
        "../x",
        "a/../b",
        "\u{430}bc", // Cyrillic a
        "a'b",
        "a\"b",
        "a\\b",
        "a*b",
    ];

    #[test]
    fn hostile_names_are_rejected_everywhere() {
        let validators: &[(&str, Validator)] = &[
            ("lab", lab),
            ("ident", ident),
            ("hostname", hostname),
            ("pool", pool),
            ("dataset", dataset),
            ("snapshot", snapshot),
            ("abs_path", abs_path),
            ("ssh", ssh_destination),
        ];
        for (what, f) in validators {
            for bad in HOSTILE {
                assert!(f(bad).is_err(), "{what} accepted {bad:?}");
            }
            assert!(
                f(&"a".repeat(300)).is_err(),
                "{what} accepted a very long name"
            );
        }
    }

    #[test]
    fn ordinary_names_pass() {
        assert!(lab("vpp-lab2").is_ok());
        assert!(ident("r0").is_ok());
        assert!(hostname("r0.lab.example").is_ok());
        assert!(pool("ssd-vol0").is_ok());
        assert!(dataset("ssd-vol0/vpp-proto-disk0").is_ok());
        assert!(dataset("ssd-vol0").is_err());
        assert!(snapshot("20261122-release").is_ok());
        assert!(snapshot_pattern("*-release").is_ok());
        for ok in ["base", "2026-12-06_before.bgp"] {
            assert!(lab_snapshot(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "Base", "a@b", "a b", "a/b", &"x".repeat(41)] {
            assert!(lab_snapshot(bad).is_err(), "{bad}");
        }
        assert!(abs_path("/var/lib/lab/staging").is_ok());
        assert!(abs_path("/").is_err());
        for ok in [
            "hv0",
            "root@hv0",
            "lab@10.0.0.1:2222",
            "ops_1@hv-3.example.net",
        ] {
            assert!(ssh_destination(ok).is_ok(), "{ok}");
        }
        assert!(ssh_destination("root@hv0:0").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*-release", "20261122-release"));
        assert!(!glob_match("*-release", "20261122-before"));
        assert!(glob_match("base", "base"));
        assert!(glob_match("2026????-*", "20261122-release"));
    }
}
