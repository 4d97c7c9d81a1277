//! Snapshots of a lab's clones (`lab snapshot`, `lab restore`): taken, checked, rolled back to
//! and destroyed, each as one command. A lab snapshot is `<clone>@<name>` with `lab:snapshot`
//! set on it to `<name>`; its other `lab:` properties are its clone's.

use std::time::Duration;

use lab_exec::Cmd;

use lab_model::LabNode;

use crate::own::prop;
use crate::state::HostState;

/// Takes snapshot `name` of every one of `clones` (one hypervisor's: each dataset with the
/// overlay digest it holds, recorded on its snapshot so that a restore gives it back), with
/// `props` set on each. `atomic`: in one `zfs snapshot` (OpenZFS: all or none, at one
/// moment); otherwise one at a time (zfs-fuse takes one per call). When anything fails, what
/// it took is destroyed again, and it says `lab-undone` on stderr when nothing of it is left.
/// `pause`: running domains suspended first and resumed however the command ends (one that
/// will not resume is printed `unresumed DOMAIN`), so that the disks are still while the
/// snapshots are taken; then it prints `paused MS`.
pub fn take_snapshot(
    name: &str,
    props: &[(&str, String)],
    pause: &[&str],
    clones: &[(&str, Option<&str>)],
    atomic: bool,
) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", TAKE, "lab-snapshot", name]
        .map(String::from)
        .to_vec();
    argv.push(if atomic { "atomic" } else { "each" }.to_owned());
    argv.push(prop::OVERLAY.to_owned());
    for (k, v) in props {
        argv.push("-o".to_owned());
        argv.push(format!("{k}={v}"));
    }
    argv.extend(pause.iter().map(|d| format!("pause:{d}")));
    argv.extend(
        clones
            .iter()
            .map(|(d, digest)| format!("clone:{d}={}", digest.unwrap_or("-"))),
    );
    Cmd::change(argv).timeout(Duration::from_secs(300))
}

/// What a [`take_snapshot`] says on stderr when nothing of it is left on the hypervisor.
pub const UNDONE: &str = "lab-undone";

const TAKE: &str = r#"snap=$1 how=$2 dprop=$3; shift 3
# Names are validated (no whitespace, no `=`); what is left in "$@" is zfs's options.
doms= sets=
for a do
  shift
  case $a in
    pause:*) doms="$doms ${a#pause:}" ;;
    clone:*) sets="$sets ${a#clone:}" ;;
    *) set -- "$@" "$a" ;;
  esac
done
paused= made=
resume() {
  for d in $paused; do virsh -q resume "$d" >/dev/null || echo "unresumed $d"; done
  paused=
}
trap resume EXIT
trap 'exit 1' HUP INT TERM
undo() {
  for ds in $made; do zfs destroy "$ds@$snap" || return 1; done
  echo "lab-undone: nothing of snapshot $snap is left on this hypervisor" >&2
}
t0=$(date +%s%N)
for d in $doms; do
  virsh -q suspend "$d" >/dev/null || { undo; exit 1; }
  paused="$paused $d"
done
r=0
if [ "$how" = atomic ]; then
  for c in $sets; do set -- "$@" "${c%%=*}@$snap"; done
  if zfs snapshot "$@"; then for c in $sets; do made="$made ${c%%=*}"; done; else r=1; fi
else
  for c in $sets; do
    if zfs snapshot "$@" "${c%%=*}@$snap"; then made="$made ${c%%=*}"; else r=1; break; fi
  done
fi
# Each snapshot keeps the overlay digest its clone holds now.
if [ $r -eq 0 ]; then
  for c in $sets; do
    [ "${c#*=}" = - ] || zfs set "$dprop=${c#*=}" "${c%%=*}@$snap" || { r=1; break; }
  done
fi
if [ $r -ne 0 ]; then undo; exit 1; fi
if [ -n "$doms" ]; then
  resume
  t1=$(date +%s%N)
  case $t0$t1 in *[!0-9]*) ;; *) echo "paused $(( (t1 - t0) / 1000000 ))" ;; esac
fi
"#;

/// Destroys the lab snapshot `dataset@name`, after looking on the hypervisor, at that moment,
/// that it carries `lab`'s mark for that name (set on it, not inherited): never anyone else's.
pub fn destroy_snapshot(dataset: &str, name: &str) -> Cmd {
    destroy_snapshot_cmd(dataset, name, "must")
}

/// [`destroy_snapshot`], or nothing when there is no such snapshot (taking it back after a
/// snapshot that may or may not have been taken).
pub fn destroy_snapshot_if_there(dataset: &str, name: &str) -> Cmd {
    destroy_snapshot_cmd(dataset, name, "if-there")
}

fn destroy_snapshot_cmd(dataset: &str, name: &str, how: &str) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        DESTROY,
        "lab-unsnapshot",
        &format!("{dataset}@{name}"),
        prop::SNAPSHOT,
        name,
        how,
    ])
}

const DESTROY: &str = r#"if [ "$4" = if-there ] && ! zfs list -H -o name "$1" >/dev/null 2>&1; then exit 0; fi
mark=$(zfs get -H -o value,source "$2" "$1") || exit 1
if [ "$mark" != "$3	local" ]; then
  echo "$1 does not carry lab's mark ($2=$3): not destroyed" >&2
  exit 1
fi
zfs destroy "$1"
"#;

/// Looks that `dataset` can be rolled back to `@name` losing nothing but `dropping` (the lab
/// snapshots taken after it, which the plan destroys first): any other snapshot taken after
/// it (someone's own, or one taken since the run looked) fails the node before any change.
pub fn check_rollback(dataset: &str, name: &str, dropping: &[&str]) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", CHECK, "lab-check-rollback", dataset, name]
        .map(String::from)
        .to_vec();
    argv.extend(dropping.iter().map(|d| (*d).to_owned()));
    Cmd::query(argv)
}

const CHECK: &str = r#"ds=$1 snap=$2; shift 2
list=$(zfs list -H -o name -s createtxg -t snapshot -d 1 "$ds") || exit 1
newer=$(printf '%s\n' "$list" | awk -v t="$ds@$snap" 'found { print } $0 == t { found = 1 } END { exit !found }') || {
  echo "$ds has no snapshot $snap" >&2; exit 1
}
for s in $newer; do
  ok=
  for d in "$@"; do [ "$s" = "$ds@$d" ] && ok=1; done
  if [ -z "$ok" ]; then
    echo "$s was taken after $snap and is not one this run drops: rolling back would destroy it" >&2
    exit 1
  fi
done
# ... and each one it drops was taken after it.
for d in "$@"; do
  case " $(echo $newer) " in *" $ds@$d "*) ;; *)
    echo "$ds@$d was not taken after $snap: this run would drop it by mistake" >&2; exit 1 ;;
  esac
done
"#;

/// Fails unless every snapshot of `dataset` is one of `names` (its lab snapshots, which a
/// destroy is about to take with it): one someone else took keeps the clone, and then its lab
/// snapshots too.
pub fn only_lab_snapshots(dataset: &str, names: &[&str]) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", ONLY_LAB, "lab-own-snapshots", dataset]
        .map(String::from)
        .to_vec();
    argv.extend(names.iter().map(|n| (*n).to_owned()));
    Cmd::query(argv)
}

const ONLY_LAB: &str = r#"ds=$1; shift
list=$(zfs list -H -o name -t snapshot -d 1 "$ds") || exit 1
for s in $list; do
  ok=
  for n in "$@"; do [ "$s" = "$ds@$n" ] && ok=1; done
  if [ -z "$ok" ]; then
    echo "$s was not taken by lab: $ds and its lab snapshots stay (destroy $s first, if it may go)" >&2
    exit 1
  fi
done
"#;

/// The commands that take a clone's lab snapshots away before the clone itself (`destroy`,
/// `create --force`): a look that it has no other snapshot, then each lab snapshot, its mark
/// checked; none when it has no lab snapshot.
pub fn destroy_lab_snapshots(node: &LabNode, state: &HostState) -> Vec<Cmd> {
    let snaps: Vec<&str> = state
        .snapshots_of(&node.dataset)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    if snaps.is_empty() {
        return Vec::new();
    }
    let mut cmds = vec![only_lab_snapshots(&node.dataset, &snaps)];
    cmds.extend(snaps.iter().map(|s| destroy_snapshot(&node.dataset, s)));
    cmds
}

/// Rolls `dataset` back to `@name`: never `-r` (a later snapshot makes it fail). zfs-fuse
/// sometimes answers a rollback right after an unmount with "I/O error" and does it a moment
/// later: tried up to three times on that answer alone.
/// The clone's overlay digest goes back to the one its snapshot recorded (`status` then
/// compares the build with what the disk holds again).
pub fn rollback(dataset: &str, name: &str) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        ROLLBACK,
        "lab-rollback",
        &format!("{dataset}@{name}"),
        prop::OVERLAY,
    ])
    .timeout(Duration::from_secs(300))
}

const ROLLBACK: &str = r#"i=0
until out=$(zfs rollback "$1" 2>&1); do
  i=$((i + 1))
  case $out in *"I/O error"*) [ $i -lt 3 ] && { sleep 1; continue; } ;; esac
  printf '%s\n' "$out" >&2; exit 1
done
d=$(zfs get -H -o value,source "$2" "$1") || exit 1
case $d in *"	local") zfs set "$2=${d%	local}" "${1%@*}" ;; esac
"#;

/// How long a [`take_snapshot`] kept its domains paused, from what it printed.
pub fn paused_ms(printed: &[String]) -> Option<u64> {
    printed
        .iter()
        .find_map(|l| l.strip_prefix("paused ")?.trim().parse().ok())
}
