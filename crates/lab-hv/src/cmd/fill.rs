//! A new clone filled in one step of its plan: every step costs a node a `timeout`, a shell
//! and a look at the lock on the hypervisor, which add up at a hundred nodes (issue 24).

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::{Hypervisor, LabNode, Storage};

use super::{SET_MODES, SYMLINKED_DIRS, staging_dir};

/// Fills a new clone with its node's tree, as `attach`, `refuse_symlinked_dirs` and
/// `set_modes` would one after the other with the copy between them, in one command:
/// - a dataset is mounted when it is not (a zvol's partition is mounted before, by `attach`);
/// - directories of the tree (on stdin) that are symlinks in the image are refused;
/// - the tree, unpacked by its plan under `trees` (see [`crate::plan::Trees`]), is copied in:
///   into the image's own files, which so keep their owner, group and mode (a daemon's
///   `root:bird 0640` config stays readable by the daemon); the execute bit follows the
///   overlay's; new files and directories get the overlay's modes under umask 022; every file
///   of the tree is written, whatever its size and time; symlinks stay symlinks;
/// - paths get the owner, group and mode `modes` says (`[path, mode, owner, group]`).
///
/// [`super::mark_ready`] marks the clone complete after it: the plan does so for all its
/// nodes' clones with one `zfs set` (a zvol's once its partition is let go).
///
/// The first part that fails ends it, with its own message.
pub fn fill<'a>(
    hv: &Hypervisor,
    node: &LabNode,
    trees: &str,
    dirs: &[String],
    modes: impl IntoIterator<Item = [&'a str; 4]>,
) -> Cmd {
    let dataset = hv.storage == Storage::Dataset;
    let mut script = String::from("_ds=$2 _from=$3\n");
    if dataset {
        script.push_str(
            "awk -v d=\"$_ds\" '$1 == d { f = 1 } END { exit !f }' /proc/self/mounts ||\n  \
             zfs mount \"$_ds\" || exit\n",
        );
    }
    script.push_str(SYMLINKED_DIRS);
    script.push_str(
        "\numask 022\n\
         rsync -rltDH --executability --ignore-times --inplace --omit-dir-times \"$_from\" \"$1/\" || exit\n\
         _r=$1; shift 3; set -- \"$_r\" \"$@\"\n",
    );
    script.push_str(SET_MODES);
    let list: String = dirs.iter().map(|d| format!("{d}\n")).collect();
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        script,
        "lab-fill".into(),
        staging_dir(node).trim_end_matches('/').to_owned(),
        node.dataset.clone(),
        format!("{trees}/{}/", node.name),
    ];
    argv.extend(modes.into_iter().flatten().map(str::to_owned));
    Cmd::change(argv)
        .stdin(list.into_bytes())
        .timeout(Duration::from_secs(660))
}
