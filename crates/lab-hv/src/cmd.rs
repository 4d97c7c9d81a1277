//! Every remote command `lab` runs on a hypervisor (but the probe, in `state.rs`, and the lock,
//! in `lock.rs`), as pure functions of the model: what `--dry-run` prints and the plan tests
//! assert is exactly what runs. Commands take names as arguments, never as shell text.

mod fill;
mod network;
mod nic;
mod proto;
mod push;
mod snapshot;
mod undefine;

pub use fill::*;
pub use network::*;
pub use nic::*;
pub use proto::*;
pub use push::*;
pub use snapshot::*;
pub use undefine::*;

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::{Hypervisor, LabNode, Storage};

use crate::own::{domain_marker, prop};
use crate::state::{Snapshot, ZfsInfo};

/// Where a node's root filesystem is reachable while `lab` fills it.
pub fn staging_dir(node: &LabNode) -> &str {
    &node.staging
}

/// The block device of a zvol clone's root partition.
pub fn zvol_partition(hv: &Hypervisor, node: &LabNode) -> String {
    format!(
        "/dev/zvol/{}-part{}",
        node.dataset,
        hv.partition.unwrap_or(1)
    )
}

/// What `lab` records on a clone.
pub struct Ownership<'a> {
    pub lab: &'a str,
    pub lab_id: u8,
    pub owner: &'a str,
    pub overlay_digest: &'a str,
    pub created: u64,
    /// The DHCP reservation this run adds for the node to an operator's network, or finds
    /// that an earlier run of `lab` added ([`crate::dhcp::Claim`]).
    pub dhcp_claim: Option<&'a crate::dhcp::Claim>,
}

pub fn clone(
    hv: &Hypervisor,
    node: &LabNode,
    snap: &Snapshot,
    own: &Ownership<'_>,
    zfs: &ZfsInfo,
) -> Cmd {
    let mut argv = vec!["zfs".to_owned(), "clone".to_owned()];
    let mut set = |k: &str, v: &str| {
        argv.push("-o".to_owned());
        argv.push(format!("{k}={v}"));
    };
    match hv.storage {
        // Mounted on the hypervisor for the domain's life: its setuid binaries and device
        // files mean nothing there (review 3, N4).
        Storage::Dataset => {
            set("mountpoint", staging_dir(node));
            set("setuid", "off");
            set("devices", "off");
        }
        // A replica is received with volmode=none (no device nodes for its snapshots); the
        // clone a domain boots from needs its device and its partitions: `full`, never `dev`,
        // which hides the partitions (where zfs has volmode at all).
        Storage::Zvol if zfs.modern() => set("volmode", "full"),
        Storage::Zvol => {}
    }
    set(prop::LAB, own.lab);
    set(prop::LAB_ID, &own.lab_id.to_string());
    set(prop::NODE, &node.name);
    set(prop::OWNER, own.owner);
    set(prop::ORIGIN, &snap.full);
    set(prop::ORIGIN_GUID, &snap.guid);
    set(prop::OVERLAY, own.overlay_digest);
    set(prop::CREATED, &own.created.to_string());
    set(prop::STATE, prop::FILLING);
    if let Some(claim) = own.dhcp_claim {
        set(prop::DHCP_HOST, &claim.value());
    }
    argv.push(snap.full.clone());
    argv.push(node.dataset.clone());
    Cmd::change(argv)
}

/// Records on an existing clone what DHCP reservation `lab` added for its node (`None`: none).
pub fn claim_dhcp(node: &LabNode, claim: Option<&crate::dhcp::Claim>) -> Cmd {
    match claim {
        Some(c) => Cmd::change([
            "zfs".to_owned(),
            "set".to_owned(),
            format!("{}={}", prop::DHCP_HOST, c.value()),
            node.dataset.clone(),
        ]),
        None => Cmd::change(["zfs", "inherit", prop::DHCP_HOST, &node.dataset]),
    }
}

/// Makes the clone's root filesystem reachable in the staging directory.
pub fn attach(hv: &Hypervisor, node: &LabNode) -> Cmd {
    match hv.storage {
        // A clone with a mountpoint is normally mounted already (the kernel's mount table
        // says so without asking zfs); mount it when it is not.
        Storage::Dataset => Cmd::change([
            "sh",
            "-c",
            r#"awk -v d="$1" '$1 == d { f = 1 } END { exit !f }' /proc/self/mounts ||
  zfs mount "$1""#,
            "lab-attach",
            &node.dataset,
        ]),
        // udev creates the partition's device node a moment after the clone.
        Storage::Zvol => Cmd::change([
            "sh",
            "-c",
            r#"i=0; while [ ! -b "$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -b "$1" ] || { echo "$1 did not appear within 30 s: is it in the partition table of the proto (hypervisor setting: partition)?" >&2; exit 1; }
mkdir -p "$2" && mount -o nosuid,nodev "$1" "$2""#,
            "lab-attach",
            &zvol_partition(hv, node),
            staging_dir(node),
        ])
        .timeout(Duration::from_secs(60)),
    }
}

/// Refuses (exit 1, naming them) directories of the tree that are symlinks in the image, such
/// as `lib -> usr/lib` on a merged-/usr Debian: rsync would replace the link with a directory
/// and break the image, and following it (`--keep-dirlinks`) would let an absolute link such as
/// `/var/run -> /run` lead the copy out of the clone onto the hypervisor itself.
/// The directories go on stdin, one per line (an overlay path has no control characters):
/// an overlay with thousands of them would not fit in one argument (review 3, N20).
pub fn refuse_symlinked_dirs(node: &LabNode, dirs: &[String]) -> Cmd {
    let list: String = dirs.iter().map(|d| format!("{d}\n")).collect();
    Cmd::query([
        "sh",
        "-c",
        SYMLINKED_DIRS,
        "lab-dirlinks",
        staging_dir(node),
    ])
    .stdin(list.into_bytes())
}

pub(crate) const SYMLINKED_DIRS: &str = r#"root=$1; bad=
while IFS= read -r d; do
  if [ -L "$root/$d" ]; then bad="$bad $d -> $(readlink -- "$root/$d");"; fi
done
if [ -n "$bad" ]; then
  echo "the image has symlinks where the overlay has directories:$bad put the overlay's files where they point" >&2
  exit 1
fi"#;

/// Gives paths of the filled clone the owner, group and mode the overlay's `modes` says; each
/// of `modes` is `[path, mode, owner, group]`, `-` for "keep". Names are looked up in the
/// image's own `/etc/passwd` and `/etc/group`, never the hypervisor's; a path that is a symlink
/// in the clone is refused (`chmod` would follow it).
pub fn set_modes<'a>(node: &LabNode, modes: impl IntoIterator<Item = [&'a str; 4]>) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", SET_MODES, "lab-modes", staging_dir(node)]
        .map(String::from)
        .to_vec();
    argv.extend(modes.into_iter().flatten().map(str::to_owned));
    Cmd::change(argv)
}

pub(crate) const SET_MODES: &str = r#"root=$1; shift
# `_look FILE NAME`: NAME's id in the image's /etc/FILE (a number is its own) into $_id. The
# last name found in each file is kept: a tree's paths mostly share an owner, and every
# process here costs each node of a create.
_pn= _pi= _gn= _gi=
_look() {
  case $2 in *[!0-9]*) ;; *) _id=$2; return 0 ;; esac
  if [ "$1" = passwd ] && [ "$2" = "$_pn" ]; then _id=$_pi; return 0; fi
  if [ "$1" = group ] && [ "$2" = "$_gn" ]; then _id=$_gi; return 0; fi
  _id=$(awk -F: -v n="$2" '$1 "" == n "" { print $3; found = 1; exit } END { exit !found }' "$root/etc/$1" 2>/dev/null) || return 1
  case $_id in ''|*[!0-9]*) return 1 ;; esac
  if [ "$1" = passwd ]; then _pn=$2 _pi=$_id; else _gn=$2 _gi=$_id; fi
}
while [ $# -ge 4 ]; do
  p=$1 m=$2 o=$3 g=$4; shift 4
  f=$root/$p d=$root rest=$p
  # Every component, not only the last: a directory of the path that is a symlink in the
  # clone would lead chmod and chown out of it.
  while [ -n "$rest" ]; do
    d=$d/${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    if [ -L "$d" ]; then echo "modes: /$p: /${d#"$root"/} is a symlink in the clone" >&2; exit 1; fi
  done
  if [ -L "$f" ] || [ ! -e "$f" ]; then echo "modes: /$p is not a file or directory in the clone" >&2; exit 1; fi
  # Owner and group in one chown (`UID`, `UID:GID` or `:GID`).
  who=
  if [ "$o" != - ]; then
    _look passwd "$o" || { echo "modes: /$p: user $o is not in the image's /etc/passwd" >&2; exit 1; }
    who=$_id
  fi
  if [ "$g" != - ]; then
    _look group "$g" || { echo "modes: /$p: group $g is not in the image's /etc/group" >&2; exit 1; }
    who=$who:$_id
  fi
  if [ -n "$who" ]; then chown -h "$who" "$f" || exit 1; fi
  # Five digits: a directory's set-id bits go too, unless the mode sets them.
  if [ "$m" != - ]; then chmod "0$m" "$f" || exit 1; fi
done"#;

/// Unmounts the clone (tolerates "not mounted", so it serves rollback and destroy too).
pub fn detach(hv: &Hypervisor, node: &LabNode) -> Cmd {
    match hv.storage {
        Storage::Dataset => Cmd::change([
            "sh",
            "-c",
            r#"if [ "$(zfs get -H -o value mounted "$1")" = yes ]; then zfs umount "$1"; fi"#,
            "lab-detach",
            &node.dataset,
        ]),
        Storage::Zvol => Cmd::change([
            "sh",
            "-c",
            r#"if mountpoint -q "$1"; then umount "$1"; fi"#,
            "lab-detach",
            staging_dir(node),
        ]),
    }
}

/// Removes the (empty) staging directory, and the lab's directory above it once empty; `rmdir`
/// never removes anything that is not empty.
pub fn remove_staging(node: &LabNode) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        r#"if [ -d "$1" ]; then rmdir "$1"; fi; rmdir "${1%/*}" 2>/dev/null || true"#,
        "lab-rmdir",
        staging_dir(node),
    ])
}

/// Records that the clone's tree is complete: a later run may start it as it is.
pub fn mark_ready(node: &LabNode) -> Cmd {
    let [zfs, set, ready] = READY_ARGV;
    Cmd::change([zfs, set, ready, &node.dataset])
}

/// The command line of [`mark_ready`] before its dataset (a plan marks its nodes' clones
/// ready with one `zfs set`: see `plan_script`).
pub const READY_ARGV: [&str; 3] = ["zfs", "set", "lab:state=ready"];

/// The command line of [`define_domain`] (a plan defines its nodes' domains in one virsh: see
/// `plan_script`).
pub const DEFINE_ARGV: [&str; 4] = ["virsh", "-q", "define", "/dev/stdin"];

/// Defines a domain from `xml` with `lab`'s marker put into its `<metadata>`, in one step: a
/// domain `lab` defined always carries its marker, whatever happens to the run.
pub fn define_domain(xml: &[u8], lab: &str, node: &LabNode) -> Cmd {
    let marked = with_marker(
        &String::from_utf8_lossy(xml),
        "domain",
        &domain_marker(lab, &node.name),
    );
    Cmd::change(DEFINE_ARGV).stdin(marked.into_bytes())
}

/// `xml` with `mark` as the first child of its `<metadata>` (an empty `<metadata/>` opened up),
/// which is made right after the `<root ...>` tag when there is none. Tags inside comments do
/// not count (see `lab_model::xml`); `generate` checked that the root is there.
fn with_marker(xml: &str, root: &str, mark: &str) -> String {
    use lab_model::xml::find_start;
    match (find_start(xml, "metadata", 1), find_start(xml, root, 0)) {
        (Some(m), _) if m.empty => format!(
            "{}<metadata>\n    {mark}\n  </metadata>{}",
            &xml[..m.start],
            &xml[m.end..]
        ),
        (Some(m), _) => format!("{}\n    {mark}{}", &xml[..m.end], &xml[m.end..]),
        (None, Some(r)) => format!(
            "{}\n  <metadata>\n    {mark}\n  </metadata>{}",
            &xml[..r.end],
            &xml[r.end..]
        ),
        (None, None) => xml.to_owned(),
    }
}

/// Starts the domain. A node with wires starts under the hypervisor's `wires.lock` (in its
/// `lock_dir`), after checking there that no UDP port of its wires is bound: the probe's look
/// came minutes earlier, and two labs with one id starting at once would both bind (QEMU uses
/// `SO_REUSEADDR`) and split each other's frames. Exit 3 names the ports.
pub fn start(hv: &Hypervisor, node: &LabNode) -> Cmd {
    let unlocked = start_under_wires_lock(node);
    if unlocked.argv.first().is_some_and(|p| p == "virsh") {
        return unlocked;
    }
    let mut argv: Vec<String> = ["flock", "-w", "60"].map(String::from).to_vec();
    argv.push(wires_lock(hv));
    argv.extend(unlocked.argv);
    Cmd::change(argv).timeout(Duration::from_secs(180))
}

/// The hypervisor's lock for starting domains with wires (see [`start`]).
pub fn wires_lock(hv: &Hypervisor) -> String {
    format!("{}/wires.lock", hv.lock_dir)
}

/// [`start`] without taking `wires.lock`: for a plan that holds it while it starts several
/// nodes at once (their ports are the lab's own, so they cannot take each other's).
pub fn start_under_wires_lock(node: &LabNode) -> Cmd {
    let ports: Vec<String> = node
        .interfaces
        .iter()
        .filter_map(|i| i.wire.map(|w| format!("{:04X}", w.local_port)))
        .collect();
    if ports.is_empty() {
        return Cmd::change(["virsh", "-q", "start", &node.domain])
            .timeout(Duration::from_secs(120));
    }
    let mut argv: Vec<String> = ["sh", "-c", START_WIRED, "lab-start"]
        .map(String::from)
        .to_vec();
    argv.push(node.domain.clone());
    argv.extend(ports);
    Cmd::change(argv).timeout(Duration::from_secs(120))
}

/// The exit status of [`start`] when a port of the node's wires is bound by something else.
pub const WIRE_PORT_TAKEN: i32 = 3;

const START_WIRED: &str = r#"dom=$1; shift
f=/proc/net/udp; [ -r /proc/net/udp6 ] && f="$f /proc/net/udp6"
taken=$(awk -v want=" $* " 'FNR > 1 && $4 == "07" { n = split($2, a, ":"); if (index(want, " " a[n] " ")) print a[n] }' $f | sort -u)
if [ -n "$taken" ]; then
  echo "UDP port(s) $(for p in $taken; do printf '%d ' "0x$p"; done)of its wires are bound on the hypervisor by something else (another lab with this lab id or wire_port_base?); not started" >&2
  exit 3
fi
virsh -q start "$dom""#;

/// Powers the domain off at once (`virsh destroy`): what `destroy` and `create --force` do.
pub fn stop(node: &LabNode) -> Cmd {
    Cmd::change(["virsh", "-q", "destroy", &node.domain]).timeout(Duration::from_secs(120))
}

/// Asks the guest to shut down (the ACPI power button) and waits up to `grace` seconds for the
/// domain to be off; powers it off when it is not. Prints `acpi SECONDS` or `forced` (see
/// [`ShutDown::read`]).
pub fn shut_down(node: &LabNode, grace: u64) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        SHUT_DOWN,
        "lab-shutdown",
        &node.domain,
        &grace.to_string(),
    ])
    .timeout(Duration::from_secs(grace + 120))
}

const SHUT_DOWN: &str = r#"d=$1 grace=$2 start=$(date +%s)
off() { [ "$(virsh -q domstate "$d" 2>/dev/null | head -n 1)" = "shut off" ]; }
# A guest without ACPI refuses the request: it is powered off at once.
if virsh -q shutdown --mode acpi "$d" >/dev/null 2>&1; then
  while [ $(( $(date +%s) - start )) -lt "$grace" ]; do
    if off; then echo "acpi $(( $(date +%s) - start ))"; exit 0; fi
    sleep 0.5
  done
fi
# It may have gone off in the last moment: that is not a failure to power it off.
if out=$(virsh -q destroy "$d" 2>&1); then echo forced; exit 0; fi
if off; then echo "acpi $(( $(date +%s) - start ))"; exit 0; fi
printf '%s\n' "$out" >&2; exit 1"#;

/// How a [`shut_down`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutDown {
    /// The guest powered itself off, after this many seconds.
    Guest(u64),
    /// It did not in time (or cannot be asked): powered off.
    Forced,
}

impl ShutDown {
    /// From the command's output; `None` for anything else.
    pub fn read(stdout: &str) -> Option<ShutDown> {
        match stdout.trim().split_once(' ') {
            Some(("acpi", secs)) => secs.parse().ok().map(ShutDown::Guest),
            _ if stdout.trim() == "forced" => Some(ShutDown::Forced),
            _ => None,
        }
    }
}

pub fn undefine(node: &LabNode) -> Cmd {
    Cmd::change(["virsh", "-q", "undefine", &node.domain])
}

/// Destroys exactly one dataset: never `-r`, never `-R`.
pub fn destroy_dataset(node: &LabNode) -> Cmd {
    Cmd::change(["zfs", "destroy", &node.dataset])
}

// ---------------------------------------------------------------------------------------------
// Networks

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_mark_sets_the_state_property() {
        assert_eq!(READY_ARGV[2], format!("{}=ready", prop::STATE));
    }

    #[test]
    fn a_shut_down_says_how_it_ended() {
        assert_eq!(ShutDown::read("acpi 3\n"), Some(ShutDown::Guest(3)));
        assert_eq!(ShutDown::read("forced\n"), Some(ShutDown::Forced));
        assert_eq!(ShutDown::read(""), None);
        assert_eq!(ShutDown::read("acpi soon"), None);
    }

    #[test]
    fn the_marker_goes_inside_the_domains_metadata_wherever_the_template_put_it() {
        let mark = "<lab:m/>";
        for (xml, marked) in [
            (
                "<domain type='kvm'>\n  <name>r1</name>\n</domain>",
                "<domain type='kvm'>\n  <metadata>\n    <lab:m/>\n  </metadata>\n  <name>r1</name>\n</domain>",
            ),
            (
                "<domain>\n  <metadata/>\n</domain>",
                "<domain>\n  <metadata>\n    <lab:m/>\n  </metadata>\n</domain>",
            ),
            (
                "<domain>\n  <metadata>\n    <x:y/>\n  </metadata>\n</domain>",
                "<domain>\n  <metadata>\n    <lab:m/>\n    <x:y/>\n  </metadata>\n</domain>",
            ),
            (
                "<!-- no <metadata> here --><domain>\n</domain>",
                "<!-- no <metadata> here --><domain>\n  <metadata>\n    <lab:m/>\n  </metadata>\n</domain>",
            ),
        ] {
            assert_eq!(with_marker(xml, "domain", mark), marked, "{xml}");
        }
    }

    #[test]
    fn a_network_is_defined_with_its_mark_in_one_step() {
        let xml = b"<network>\n  <name>lab-x</name>\n</network>\n";
        let c = define_network(xml, "x", "abc", None);
        let sent = String::from_utf8(c.stdin.clone().unwrap()).unwrap();
        assert_eq!(
            sent,
            "<network>\n  <metadata>\n    <lab:net xmlns:lab=\"https://lab.invalid/schema/1\" \
             lab=\"x\" sha256=\"abc\"/>\n  </metadata>\n  <name>lab-x</name>\n</network>\n"
        );
        assert_eq!(c.argv, ["virsh", "-q", "net-define", "/dev/stdin"]);
        // A redefinition keeps the network's UUID: libvirt refuses a second one of that name.
        let c = define_network(xml, "x", "abc", Some("1234-5678"));
        let sent = String::from_utf8(c.stdin.clone().unwrap()).unwrap();
        assert!(
            sent.contains("<name>lab-x</name>\n  <uuid>1234-5678</uuid>"),
            "{sent}"
        );
    }
}
