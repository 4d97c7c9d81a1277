//! How the host reaches the hypervisors: a bridge with a veth into each network namespace,
//! and ssh keys, known hosts and a client config (so that `ssh hvK` works from the host and
//! between hypervisors).

use std::path::Path;
use std::process::Command;

use crate::up::include_line;
use crate::{Error, Result, Testbed, bash, mkdir, run, write_file};

pub(crate) fn ssh_setup(bed: &Testbed) -> Result<()> {
    let ssh = bed.dir.join("ssh");
    run(Command::new("chmod").args(["700", &ssh.to_string_lossy()]))?;
    let key = ssh.join("id_ed25519");
    if !key.exists() {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "lab-testbed", "-f"])
            .arg(&key))?;
    }
    let public =
        std::fs::read_to_string(key.with_extension("pub")).map_err(|source| Error::Io {
            path: key.clone(),
            source,
        })?;
    write_file(&ssh.join("authorized_keys"), &public)?;
    let mut known = String::new();
    let mut config = String::from("# written by `cargo xtask testbed up`\n");
    for k in bed.all() {
        let host_key = bed.hv_dir(k).join("ssh_host_ed25519_key");
        if !host_key.exists() {
            mkdir(&bed.hv_dir(k))?;
            run(Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    &format!("hv{k}"),
                    "-f",
                ])
                .arg(&host_key))?;
        }
        let pubkey = std::fs::read_to_string(host_key.with_extension("pub")).map_err(|source| {
            Error::Io {
                path: host_key.clone(),
                source,
            }
        })?;
        let fields: Vec<&str> = pubkey.split_whitespace().take(2).collect();
        known.push_str(&format!("hv{k},{} {}\n", bed.address(k), fields.join(" ")));
        config.push_str(&format!("Host hv{k}\n  HostName {}\n", bed.address(k)));
    }
    config.push_str(&format!(
        "Host hv*\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  \
         StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n",
        key = key.display(),
        known = ssh.join("known_hosts").display()
    ));
    write_file(&ssh.join("known_hosts"), &known)?;
    // `cargo xtask bench create --rtt` puts its far-away aliases (hvK-wan) in wan*.config.
    write_file(
        &bed.ssh_config(),
        &format!("Include {}/wan*.config\n{config}", ssh.display()),
    )?;
    // Hypervisor-to-hypervisor ssh (replication) uses the same key and config, from inside.
    let hv_config = config
        .replace(&key.display().to_string(), "~/.ssh/id_ed25519")
        .replace(
            &ssh.join("known_hosts").display().to_string(),
            "~/.ssh/known_hosts",
        );
    // (an OpenZFS VM gets the same files through its seed disk)
    for k in bed.all() {
        let dot_ssh = bed.host_path(k, "/root/.ssh");
        mkdir(&dot_ssh)?;
        for (name, text) in [
            ("config", hv_config.clone()),
            ("known_hosts", known.clone()),
            ("authorized_keys", public.clone()),
        ] {
            write_file(&dot_ssh.join(name), &text)?;
        }
        std::fs::copy(&key, dot_ssh.join("id_ed25519")).map_err(|source| Error::Io {
            path: key.clone(),
            source,
        })?;
        run(Command::new("chmod").args(["-R", "go-rwx"]).arg(&dot_ssh))?;
    }
    // `ssh hvK` from the host: include our config from root's.
    let root_config = Path::new("/root/.ssh/config");
    let current = std::fs::read_to_string(root_config).unwrap_or_default();
    let line = include_line(bed);
    if !current.lines().any(|l| l == line) {
        mkdir(Path::new("/root/.ssh"))?;
        // Include must come before any Host block to apply globally.
        write_file(root_config, &format!("{line}\n{current}"))?;
        run(Command::new("chmod").args(["600", "/root/.ssh/config"]))?;
    }
    Ok(())
}

pub(crate) fn network(bed: &Testbed) -> Result<()> {
    let br = &bed.bridge;
    let net = &bed.net;
    let mut script = format!(
        "ip link show {br} >/dev/null 2>&1 || ip link add {br} type bridge\n\
         ip -o addr show dev {br} | grep -F 'inet {net}.1/24' >/dev/null || ip addr add {net}.1/24 dev {br}\n\
         ip link set {br} up\n"
    );
    for k in 0..bed.hypervisors {
        let (ns, veth, addr) = (bed.netns(k), bed.veth(k), bed.address(k));
        script.push_str(&format!(
            "ip netns list | grep -w '^{ns}' >/dev/null || ip netns add {ns}\n\
             if ! ip link show {veth} >/dev/null 2>&1; then ip -n {ns} link del eth0 2>/dev/null || true; ip link add {veth} type veth peer name eth0 netns {ns}; fi\n\
             ip link set {veth} master {br}; ip link set {veth} up\n\
             ip -n {ns} link set lo up\n\
             ip -n {ns} -o addr show dev eth0 | grep -F 'inet {addr}/24' >/dev/null || ip -n {ns} addr add {addr}/24 dev eth0\n\
             ip -n {ns} link set eth0 up\n"
        ));
    }
    bash(&script).map(|_| ())
}
