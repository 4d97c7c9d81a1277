//! Snapshots of a lab's clones (`lab snapshot`, `lab restore`): taken, checked, rolled back to
//! and destroyed, each as one command. A lab snapshot is `<clone>@<name>` with `lab:snapshot`
//! set on it to `<name>`; its other `lab:` properties are its clone's.

use std::time::Duration;

use lab_exec::Cmd;

use crate::own::prop;

/// Takes snapshot `name` of every one of `datasets` (one hypervisor's clones), with `props` set
/// on each. `atomic`: in one `zfs snapshot` (OpenZFS: all or none, at one moment); otherwise
/// one at a time (zfs-fuse takes one per call), and those taken are destroyed again when one
/// fails. `pause`: domains suspended first and resumed after, whatever happened, so that the
/// disks are still while the snapshots are taken. Prints `paused MS` when it paused.
pub fn take_snapshot(
    name: &str,
    props: &[(&str, String)],
    pause: &[&str],
    datasets: &[&str],
    atomic: bool,
) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", TAKE, "lab-snapshot", name]
        .map(String::from)
        .to_vec();
    argv.push(if atomic { "atomic" } else { "each" }.to_owned());
    for (k, v) in props {
        argv.push("-o".to_owned());
        argv.push(format!("{k}={v}"));
    }
    argv.extend(pause.iter().map(|d| format!("pause:{d}")));
    argv.extend(datasets.iter().map(|d| format!("clone:{d}")));
    Cmd::change(argv).timeout(Duration::from_secs(300))
}

const TAKE: &str = r#"snap=$1 how=$2; shift 2
# Names are validated (no whitespace); what is left in "$@" is zfs's options.
doms= sets=
for a do
  shift
  case $a in
    pause:*) doms="$doms ${a#pause:}" ;;
    clone:*) sets="$sets ${a#clone:}" ;;
    *) set -- "$@" "$a" ;;
  esac
done
paused=
resume() {
  for d in $paused; do
    virsh -q resume "$d" >/dev/null || echo "could not resume domain $d: virsh resume $d" >&2
  done
  paused=
}
t0=$(date +%s%N)
for d in $doms; do
  if ! virsh -q suspend "$d" >/dev/null; then resume; exit 1; fi
  paused="$paused $d"
done
r=0
if [ "$how" = atomic ]; then
  for ds in $sets; do set -- "$@" "$ds@$snap"; done
  zfs snapshot "$@" || r=1
else
  made=
  for ds in $sets; do
    if zfs snapshot "$@" "$ds@$snap"; then made="$made $ds"; else r=1; break; fi
  done
  if [ $r -ne 0 ]; then
    for ds in $made; do zfs destroy "$ds@$snap" || echo "could not destroy $ds@$snap again" >&2; done
  fi
fi
if [ -n "$doms" ]; then
  resume
  echo "paused $(( ($(date +%s%N) - t0) / 1000000 ))"
fi
exit $r
"#;

/// Destroys the lab snapshot `dataset@name`, after looking on the hypervisor, at that moment,
/// that it carries `lab`'s mark for that name (set on it, not inherited): never anyone else's.
pub fn destroy_snapshot(dataset: &str, name: &str) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        DESTROY,
        "lab-unsnapshot",
        &format!("{dataset}@{name}"),
        prop::SNAPSHOT,
        name,
    ])
}

const DESTROY: &str = r#"mark=$(zfs get -H -o value,source "$2" "$1") || exit 1
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
"#;

/// Rolls `dataset` back to `@name`: never `-r` (a later snapshot makes it fail). zfs-fuse
/// sometimes answers a rollback right after an unmount with "I/O error" and does it a moment
/// later: tried up to three times on that answer alone.
pub fn rollback(dataset: &str, name: &str) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        ROLLBACK,
        "lab-rollback",
        &format!("{dataset}@{name}"),
    ])
    .timeout(Duration::from_secs(300))
}

const ROLLBACK: &str = r#"i=0
while :; do
  out=$(zfs rollback "$1" 2>&1) && exit 0
  i=$((i + 1))
  case $out in *"I/O error"*) [ $i -lt 3 ] && { sleep 1; continue; } ;; esac
  printf '%s\n' "$out" >&2; exit 1
done
"#;

/// How long a [`take_snapshot`] kept its domains paused, from what it printed.
pub fn paused_ms(printed: &[String]) -> Option<u64> {
    printed
        .iter()
        .find_map(|l| l.strip_prefix("paused ")?.trim().parse().ok())
}
