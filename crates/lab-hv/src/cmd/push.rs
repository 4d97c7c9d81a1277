//! `lab push` and `lab save`: a node's files reached where that is safe. A push brings its
//! new build into its running (or stopped) node without recreating it: into the clone on the
//! hypervisor (a dataset clone, which the guest sees through 9p; a zvol clone whose domain is
//! off, mounted as `create` mounts it), or through the guest itself over ssh where its disk is
//! in use (a running zvol node). Each prints `CHANGED PATH` for every file it changed; with
//! `check`, for every file it would change, changing nothing (`--dry-run`: the tree then
//! comes on stdin). A save reads files the same two ways, as a tar stream.

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::LabNode;

use super::{SET_MODES, staging_dir};
use crate::own::prop;

/// Whether a push step changes files or only says which it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// From the node's tree in the plan's trees directory.
    Copy,
    /// From a tar archive of the node's tree on stdin (under the node's name), into a
    /// directory of its own; nothing changed.
    Check,
}

impl PushMode {
    fn word(self) -> &'static str {
        match self {
            PushMode::Copy => "copy",
            PushMode::Check => "check",
        }
    }
}

/// The files of the node's tree (in `trees`, see [`crate::plan::Trees`]) that differ from the
/// mounted clone's, by content, copied in as `create` copies (the image's own owner and mode
/// kept, the execute bit the overlay's, symlinks as symlinks; times not kept), each said.
pub fn push_tree(node: &LabNode, trees: &str, mode: PushMode, archive: Option<Vec<u8>>) -> Cmd {
    let argv = [
        "sh",
        "-c",
        PUSH_TREE,
        "lab-push",
        mode.word(),
        &format!("{trees}/{}/", node.name),
        &node.name,
        &format!("{}/", staging_dir(node).trim_end_matches('/')),
    ];
    match (mode, archive) {
        (PushMode::Check, Some(tar)) => Cmd::query(argv).stdin(tar),
        _ => Cmd::change(argv),
    }
    .timeout(Duration::from_secs(600))
}

const PUSH_TREE: &str = r#"mode=$1 src=$2 name=$3 dst=$4 n=
if [ "$mode" = check ]; then
  lab_tmp=$(mktemp -d) || exit 1
  trap 'rm -rf "$lab_tmp"' EXIT
  tar -C "$lab_tmp" -xf - || exit 1
  src=$lab_tmp/$name/ n=-n
fi
umask 022
# Content compared (--checksum), times not kept: a file is written only when it differs, and
# every line rsync itemizes is a change (content, a new file or link, the execute bit).
out=$(rsync -rlDH $n --checksum --executability --inplace --out-format='%i %n' "$src" "$dst") || exit 1
printf '%s\n' "$out" | awk '$1 ~ /^[<>ch.][fLd]/ && $1 !~ /^\.d/ { sub(/^[^ ]+ /, ""); print "CHANGED " $0 }'
"#;

/// The files of the node's tree that differ from what its running guest has, written into
/// the guest through ssh from the hypervisor (`address`: its management address): an
/// existing file is rewritten in place (its owner and mode kept, the execute bit the
/// overlay's), a new one made, a symlink set; then the overlay's `modes`, with the names of
/// the guest's own users and groups.
pub fn push_into_guest<'a>(
    node: &LabNode,
    address: &str,
    trees: &str,
    mode: PushMode,
    archive: Option<Vec<u8>>,
    modes: impl IntoIterator<Item = [&'a str; 4]>,
) -> Cmd {
    let mut guest: Vec<String> = ["sh", "-c", &format!("{GUEST_PUSH}{SET_MODES}"), "lab-push"]
        .map(String::from)
        .to_vec();
    guest.push(mode.word().to_owned());
    // SET_MODES's root: the guest's own.
    guest.push(String::new());
    guest.extend(modes.into_iter().flatten().map(str::to_owned));
    let mut argv: Vec<String> = ["sh", "-c", TAR_TO, "lab-push-guest"]
        .map(String::from)
        .to_vec();
    argv.push(mode.word().to_owned());
    argv.push(format!("{trees}/{}", node.name));
    argv.push(node.name.clone());
    argv.extend(crate::reach::ssh_from_hypervisor(node, address, &guest));
    match (mode, archive) {
        (PushMode::Check, Some(tar)) => Cmd::query(argv).stdin(tar),
        _ => Cmd::change(argv),
    }
    .timeout(Duration::from_secs(600))
}

/// On the hypervisor: the node's tree as a tar stream into the command after it (ssh).
const TAR_TO: &str = r#"mode=$1 src=$2 name=$3; shift 3
if [ "$mode" = check ]; then
  lab_tmp=$(mktemp -d) || exit 1
  trap 'rm -rf "$lab_tmp"' EXIT
  tar -C "$lab_tmp" -xf - || exit 1
  src=$lab_tmp/$name
fi
# (dash has no pipefail: tar's own failure is kept aside, or the guest would read an empty
# tree as "nothing changed".)
st=$(mktemp) || exit 1
{ tar -C "$src" -cf - . || echo failed >"$st"; } | "$@"; r=$?
if [ -s "$st" ]; then rm -f "$st"; echo "reading the tree $src failed" >&2; exit 1; fi
rm -f "$st"
exit $r
"#;

/// In the guest (root): the tree from stdin, compared and written; SET_MODES follows.
const GUEST_PUSH: &str = r#"mode=$1; shift
# (SET_MODES, which follows, has variables of its own: `d` among them.)
lab_tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$lab_tmp"' EXIT
tar --no-same-owner -C "$lab_tmp" -xf - || exit 1
cd "$lab_tmp" || exit 1
umask 022
find . -mindepth 1 -type d | sed 's|^\./||' | LC_ALL=C sort | while IFS= read -r p; do
  [ -d "/$p" ] && continue
  echo "CHANGED $p/"
  [ "$mode" = check ] || mkdir -p "/$p" || exit 1
done || exit 1
find . -mindepth 1 ! -type d | sed 's|^\./||' | LC_ALL=C sort | while IFS= read -r p; do
  t=/$p
  if [ -L "$p" ]; then
    l=$(readlink "$p")
    [ -L "$t" ] && [ "$(readlink "$t")" = "$l" ] && continue
    echo "CHANGED $p"
    [ "$mode" = check ] || { rm -f "$t" && ln -s "$l" "$t"; } || exit 1
    continue
  fi
  x=; [ -x "$p" ] && x=1
  xt=; [ -x "$t" ] && xt=1
  if [ -f "$t" ] && [ ! -L "$t" ] && cmp -s "$p" "$t" && [ "$x" = "$xt" ]; then continue; fi
  echo "CHANGED $p"
  [ "$mode" = check ] && continue
  if [ -f "$t" ] && [ ! -L "$t" ]; then
    cat "$p" > "$t" || exit 1
  else
    rm -f "$t" && cp "$p" "$t" || exit 1
  fi
  if [ -n "$x" ]; then chmod a+x "$t"; else chmod a-x "$t"; fi || exit 1
done || exit 1
cd / && rm -rf "$lab_tmp" && trap - EXIT || exit 1
[ "$mode" = check ] && exit 0
"#;

/// Fails unless the node's domain is off (or not defined): right before a zvol clone is
/// mounted on the hypervisor, which a running guest's kernel has mounted too.
pub fn refuse_running(node: &LabNode) -> Cmd {
    Cmd::query(["sh", "-c", REFUSE_RUNNING, "lab-off", &node.domain])
}

const REFUSE_RUNNING: &str = r#"s=$(virsh -q domstate "$1" 2>/dev/null | head -n 1)
case $s in
  "shut off" | "") ;;
  *) echo "domain $1 is $s now: its disk is its guest's, not mounted here" >&2; exit 1 ;;
esac
"#;

/// Records that the clone now holds the build with `digest` (`status` then sees no drift).
pub fn record_digest(node: &LabNode, digest: &str) -> Cmd {
    Cmd::change([
        "zfs",
        "set",
        &format!("{}={digest}", prop::OVERLAY),
        &node.dataset,
    ])
}

/// The node's reload hook, run in the guest through ssh from its hypervisor: its executable
/// `/etc/lab/reload` (an overlay file), given the changed paths; prints `lab-no-hook` and
/// succeeds when there is none.
pub fn reload(node: &LabNode, address: &str, files: &[String]) -> Cmd {
    let mut guest: Vec<String> = ["sh", "-c", RELOAD, "lab-reload"]
        .map(String::from)
        .to_vec();
    guest.extend(files.iter().cloned());
    Cmd::change(crate::reach::ssh_from_hypervisor(node, address, &guest))
        .timeout(Duration::from_secs(300))
        .once()
}

/// What [`reload`] prints when the node has no hook.
pub const NO_HOOK: &str = "lab-no-hook";

const RELOAD: &str = r#"if [ -x /etc/lab/reload ]; then exec /etc/lab/reload "$@"; fi
echo lab-no-hook
"#;

/// `lab save`: a tar stream (stdout) of `paths` (relative to the guest's `/`) as the node has
/// them: read from its mounted clone on the hypervisor (`Some(root)`), or in its running
/// guest through ssh from the hypervisor (`None`, at `address`). A path the node lacks is
/// said on stderr (`missing PATH`); one under a symlinked directory is refused (it would be
/// read from wherever the link leads: on the hypervisor, outside the clone).
pub fn save_tree(node: &LabNode, root: Option<&str>, address: &str, paths: &[String]) -> Cmd {
    let mut words: Vec<String> = ["sh", "-c", SAVE_TREE, "lab-save", root.unwrap_or("/")]
        .map(String::from)
        .to_vec();
    words.extend(paths.iter().cloned());
    let argv = match root {
        Some(_) => words,
        None => crate::reach::ssh_from_hypervisor(node, address, &words),
    };
    Cmd::query(argv).timeout(Duration::from_secs(600)).once()
}

const SAVE_TREE: &str = r#"cd "$1" || exit 1; shift
for p do
  shift
  d=. rest=$p bad=
  while :; do
    case $rest in */*) ;; *) break ;; esac
    d=$d/${rest%%/*} rest=${rest#*/}
    if [ -L "$d" ]; then bad=$d; break; fi
  done
  if [ -n "$bad" ]; then echo "refused $p (${bad#./} is a symlink)" >&2; continue; fi
  if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; else echo "missing $p" >&2; fi
done
[ $# -gt 0 ] || exit 0
exec tar --hard-dereference -cf - -- "$@"
"#;
