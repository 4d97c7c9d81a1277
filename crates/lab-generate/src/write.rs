//! Writing one node's output: staged beside the final tree, then swapped in.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use lab_model::LabNode;
use sha2::{Digest, Sha256};

use crate::GenerateError;
use crate::build::{EntryKind, Manifest, ManifestEntry};
use crate::modes::ModeRule;

pub enum Content {
    Dir,
    /// Shared between nodes where it is the same (a verbatim file is read once, never copied
    /// per node).
    File(std::sync::Arc<[u8]>),
    Symlink(PathBuf),
}

pub struct Item {
    pub rel: PathBuf,
    pub mode: u32,
    pub content: Content,
}

pub struct NodeWrite<'a> {
    pub lab: &'a str,
    pub overlay: &'a str,
    pub node: &'a LabNode,
    pub tree: &'a Path,
    pub manifest: &'a Path,
    pub domain_xml: &'a Path,
    /// Overlay entries, then blobs: later items win.
    pub items: Vec<Item>,
    pub domain: Option<Vec<u8>>,
    /// The overlay's `modes`: those for paths of this tree apply.
    pub modes: &'a [ModeRule],
    pub modes_file: &'a Path,
}

pub struct Written {
    pub digest: String,
    pub entries: usize,
    /// What the guest gets that it probably should not (see [`secret_warnings`]).
    pub warnings: Vec<String>,
}

/// Files whose names say they hold a private key (`ssh_host_*_key`, `id_ed25519`, `*.key`)
/// that every user of the guest could read: the overlay's `modes` gives them none. New files
/// in a clone get the build's mode under umask 022, so a 0644 key stays 0644 (and sshd refuses
/// a host key others can read). Review 3, N23.
fn secret_warnings(entries: &BTreeMap<String, ManifestEntry>) -> Vec<String> {
    entries
        .iter()
        .filter(|(_, e)| e.kind == EntryKind::File)
        .filter(|(path, _)| {
            let name = path.rsplit('/').next().unwrap_or(path);
            !name.ends_with(".pub")
                && (name.ends_with("_key")
                    || name.ends_with(".key")
                    || ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"].contains(&name))
        })
        .filter(|(_, e)| u32::from_str_radix(&e.mode, 8).is_ok_and(|m| m & 0o044 != 0))
        .map(|(path, e)| {
            format!(
                "/{path} looks like a private key and every user of the guest can read it \
                 (mode {}): give it 0600 in the overlay's `modes`",
                e.mode
            )
        })
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The sha256 of `bytes`, in lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn node(w: &NodeWrite<'_>) -> Result<Written, GenerateError> {
    // `modes` cannot give a symlink a mode (it is its target's); checked before anything is
    // written. The last item of a path is the one the tree gets.
    for rule in w.modes {
        let last = w
            .items
            .iter()
            .rev()
            .find(|i| i.rel == Path::new(&rule.setting.path));
        if let Some(Item {
            content: Content::Symlink(_),
            ..
        }) = last
        {
            return Err(GenerateError::Modes {
                file: w.modes_file.to_path_buf(),
                line: rule.line,
                message: format!(
                    "`{}` is a symlink in node `{}`'s tree: its mode is its target's",
                    rule.setting.path, w.node.name
                ),
            });
        }
    }
    let parent = w
        .tree
        .parent()
        .expect("a node's tree has a parent directory");
    hypervisor_dir(parent)?;
    let pid = std::process::id();
    let hostname = &w.node.hostname;
    let stage = parent.join(format!(".{hostname}.new-{pid}"));
    if fs::symlink_metadata(&stage).is_ok() {
        remove_tree(&stage)?;
    }
    fs::create_dir(&stage).map_err(io(&stage))?;

    let escape = |rel: &Path, message: &str| GenerateError::Escape {
        node: w.node.name.clone(),
        path: rel.to_path_buf(),
        message: message.to_owned(),
    };
    let mut entries: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    let mut dir_modes: BTreeMap<PathBuf, u32> = BTreeMap::new();
    for item in &w.items {
        if item.rel.as_os_str().is_empty()
            || !item
                .rel
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(escape(&item.rel, "outside the node's directory"));
        }
        // Never write through a symlink, even one that stays inside the tree.
        let mut ancestor = PathBuf::new();
        let parents: Vec<_> = item.rel.components().collect();
        for c in &parents[..parents.len() - 1] {
            ancestor.push(c);
            match entries.get(&key(&ancestor)).map(|e| e.kind) {
                Some(EntryKind::Dir) => {}
                Some(_) => {
                    return Err(escape(
                        &item.rel,
                        &format!("through {}, which is not a directory", ancestor.display()),
                    ));
                }
                None => {
                    let path = stage.join(&ancestor);
                    fs::create_dir(&path).map_err(io(&path))?;
                    dir_modes.insert(ancestor.clone(), 0o755);
                    entries.insert(key(&ancestor), dir_entry(0o755));
                }
            }
        }
        let path = stage.join(&item.rel);
        let existing = entries.get(&key(&item.rel)).map(|e| e.kind);
        match &item.content {
            Content::Dir => {
                match existing {
                    Some(EntryKind::Dir) => {}
                    Some(_) => {
                        return Err(escape(
                            &item.rel,
                            "as a directory over a file of the overlay",
                        ));
                    }
                    None => fs::create_dir(&path).map_err(io(&path))?,
                }
                dir_modes.insert(item.rel.clone(), item.mode);
                entries.insert(key(&item.rel), dir_entry(item.mode));
            }
            Content::File(bytes) => {
                if existing == Some(EntryKind::Dir) {
                    return Err(escape(
                        &item.rel,
                        "as a file over a directory of the overlay",
                    ));
                }
                if existing.is_some() {
                    fs::remove_file(&path).map_err(io(&path))?;
                }
                let mut f = fs::File::create(&path).map_err(io(&path))?;
                f.write_all(bytes).map_err(io(&path))?;
                f.set_permissions(fs::Permissions::from_mode(on_disk(item.mode)))
                    .map_err(io(&path))?;
                entries.insert(
                    key(&item.rel),
                    ManifestEntry {
                        kind: EntryKind::File,
                        mode: format!("{:04o}", item.mode),
                        sha256: Some(sha256_hex(bytes)),
                        size: Some(bytes.len() as u64),
                        target: None,
                    },
                );
            }
            Content::Symlink(target) => {
                if existing == Some(EntryKind::Dir) {
                    return Err(escape(
                        &item.rel,
                        "as a symlink over a directory of the overlay",
                    ));
                }
                if existing.is_some() {
                    fs::remove_file(&path).map_err(io(&path))?;
                }
                std::os::unix::fs::symlink(target, &path).map_err(io(&path))?;
                entries.insert(
                    key(&item.rel),
                    ManifestEntry {
                        kind: EntryKind::Symlink,
                        mode: "0777".to_owned(),
                        sha256: None,
                        size: None,
                        target: Some(target.to_string_lossy().into_owned()),
                    },
                );
            }
        }
    }
    // The overlay's `modes`, for the paths this tree has: the build shows the mode the guest
    // gets; owners are set in the clone, where the image's users are known.
    let mut modes = Vec::new();
    for ModeRule { setting, .. } in w.modes {
        let Some(entry) = entries.get_mut(&setting.path) else {
            continue;
        };
        if let Some(mode) = &setting.mode {
            // The build keeps what its owner needs to read it (rsync runs as this user); the
            // clone gets the exact mode from the `modes` step.
            let bits = u32::from_str_radix(mode, 8).expect("modes.rs checked the octal");
            entry.mode = mode.clone();
            let path = stage.join(&setting.path);
            if entry.kind == EntryKind::Dir {
                dir_modes.insert(PathBuf::from(&setting.path), bits | 0o700);
            } else {
                fs::set_permissions(&path, fs::Permissions::from_mode(on_disk(bits | 0o600)))
                    .map_err(io(&path))?;
            }
        }
        modes.push(setting.clone());
    }
    modes.sort_by(|a, b| a.path.cmp(&b.path));
    // Directory modes last (deepest first), so a read-only directory does not block its children.
    for (rel, mode) in dir_modes.iter().rev() {
        let path = stage.join(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(on_disk(*mode)))
            .map_err(io(&path))?;
    }
    // The tree's root becomes the guest's `/`: always 0755, whatever the checkout's umask did.
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o755)).map_err(io(&stage))?;

    let domain_sha256 = w.domain.as_deref().map(sha256_hex);
    let mut digest_input = String::new();
    for (path, e) in &entries {
        let content = e.sha256.as_deref().or(e.target.as_deref()).unwrap_or("-");
        digest_input.push_str(&format!(
            "{} {} {} {}\n",
            e.kind.as_str(),
            e.mode,
            content,
            path
        ));
    }
    for m in &modes {
        let [path, mode, owner, group] = m.args();
        digest_input.push_str(&format!("modes {mode} {owner}:{group} {path}\n"));
    }
    if let Some(d) = &domain_sha256 {
        digest_input.push_str(&format!("domain {d}\n"));
    }
    let digest = sha256_hex(digest_input.as_bytes());
    let count = entries.len();
    let warnings = secret_warnings(&entries);
    let manifest = Manifest {
        lab: w.lab.to_owned(),
        overlay: w.overlay.to_owned(),
        node: w.node.name.clone(),
        hypervisor: w.node.hypervisor.clone(),
        hostname: hostname.clone(),
        digest: digest.clone(),
        domain_sha256,
        entries,
        modes,
    };
    let mut manifest_text = serde_json::to_string_pretty(&manifest).expect("manifests serialize");
    manifest_text.push('\n');

    // Swap: the new tree takes the old one's place, then the files beside it follow.
    swap_in(&stage, w.tree)?;
    replace_file(w.manifest, manifest_text.as_bytes())?;
    match &w.domain {
        Some(xml) => replace_file(w.domain_xml, xml)?,
        None => remove_if_present(w.domain_xml)?,
    }
    Ok(Written {
        digest,
        entries: count,
        warnings,
    })
}

/// Puts the tree `stage` where `tree` is (both in one filesystem): the old tree is renamed
/// aside, the new one renamed in, the old one removed.
pub(crate) fn swap_in(stage: &Path, tree: &Path) -> Result<(), GenerateError> {
    let parent = tree.parent().expect("a node's tree has a parent directory");
    hypervisor_dir(parent)?;
    let name = tree
        .file_name()
        .expect("a node's tree has a name")
        .to_string_lossy();
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = fs::symlink_metadata(tree).is_ok();
    if had_old {
        fs::rename(tree, &old).map_err(io(tree))?;
    }
    fs::rename(stage, tree).map_err(io(tree))?;
    if had_old {
        // The old tree (or a symlink planted in its place) goes; a symlink is never followed.
        remove_tree(&old)?;
    }
    Ok(())
}

/// Removes the file `path`; one that is not there is fine.
fn remove_if_present(path: &Path) -> Result<(), GenerateError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// Moves the file `from` to `to`, replacing it at once; a missing `from` removes `to`.
pub(crate) fn move_file(from: &Path, to: &Path) -> Result<(), GenerateError> {
    if fs::symlink_metadata(from).is_err() {
        return remove_if_present(to);
    }
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
        tighten_up(Some(parent), 1);
    }
    fs::rename(from, to).map_err(io(to))
}

fn key(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

fn dir_entry(mode: u32) -> ManifestEntry {
    ManifestEntry {
        kind: EntryKind::Dir,
        mode: format!("{mode:04o}"),
        sha256: None,
        size: None,
        target: None,
    }
}

/// Writes `path` atomically: a temporary file beside it, then a rename (which replaces a
/// symlink at `path` itself, never what it points to).
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), GenerateError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
        tighten_up(Some(parent), 1);
    }
    let dir = path.parent().expect("output files are in a directory");
    // A random name made with O_EXCL|O_NOFOLLOW: nothing planted beside it is written through.
    let mut tmp = tempfile::Builder::new()
        .prefix(".lab-tmp-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io(tmp.path()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io(path))?;
    tmp.persist(path).map(drop).map_err(|e| io(path)(e.error))
}

/// Removes a tree, first making its directories writable (an overlay may hold 0555 ones). A
/// symlink is removed itself, never walked.
pub fn remove_tree(dir: &Path) -> Result<(), GenerateError> {
    if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return fs::remove_file(dir).map_err(io(dir));
    }
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
    fs::remove_dir_all(dir).map_err(io(dir))
}

/// The mode a build file gets on the controller: the manifest's, with no write bit for group
/// or others (whatever the checkout's umask did), so that no other user can change what root
/// copies into clones. The clone never sees it: rsync creates files under umask 022 and the
/// overlay's `modes` sets exact modes there.
fn on_disk(mode: u32) -> u32 {
    mode & !0o022
}

/// Makes a hypervisor's directory of the build (`<build>/<overlay>/<hv>`), which holds the
/// node trees, their manifests and domain XML: keys and configs the guests get, for this user
/// only (review 3, N23; the trees inside keep the modes the guests get), with no one else
/// writing the directories above it either.
fn hypervisor_dir(dir: &Path) -> Result<(), GenerateError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    tighten_up(dir.parent(), 1);
    Ok(())
}

/// Takes the group and other write bits off `dir` and the `levels` directories above it, where
/// they are this user's: the build's directories are made under the user's umask (002 on many
/// systems), and `create --no-generate` copies only from a build no one else can write.
fn tighten_up(dir: Option<&Path>, levels: usize) {
    use std::os::unix::fs::MetadataExt;
    let me = my_uid();
    for d in dir.into_iter().flat_map(Path::ancestors).take(levels + 1) {
        if let Ok(meta) = fs::symlink_metadata(d)
            && meta.is_dir()
            && meta.uid() == me
            && meta.mode() & 0o022 != 0
        {
            let _ = fs::set_permissions(d, fs::Permissions::from_mode(meta.mode() & 0o7755));
        }
    }
}

/// This process's effective uid: whose the build is.
pub(crate) fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
