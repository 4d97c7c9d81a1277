//! Reading an overlay directory: what is a template, what is copied, what is refused.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::GenerateError;
use crate::modes::ModeRule;

/// Top-level names of an overlay that are not part of the guest's tree.
pub const BLOBS_DIR: &str = "blobs";
pub const DOMAIN_TEMPLATE: &str = "domain.xml.j2";
/// Renders a hypervisor's management network (libvirt network XML), once per hypervisor.
pub const NETWORK_TEMPLATE: &str = "network.xml.j2";
/// Owners and modes of guest paths (see `modes.rs`).
pub const MODES_FILE: &str = "modes";
/// The guest paths `lab save` copies out of every node (see [`save_paths`]).
pub const SAVE_FILE: &str = "save";

/// One entry of a guest tree, by path relative to the tree's root.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path inside the guest tree (template suffix stripped).
    pub rel: PathBuf,
    pub mode: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    /// A template; the string is its name in the template environment.
    Template(String),
    /// A file copied as is; its bytes are read once.
    Verbatim(Arc<[u8]>),
    Symlink(PathBuf),
}

/// A scanned overlay: the guest tree's entries in path order, and the templates' sources.
#[derive(Debug)]
pub struct Overlay {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
    pub templates: Vec<(String, String)>,
    pub has_domain: bool,
    pub has_network: bool,
    pub modes: Vec<ModeRule>,
}

impl Overlay {
    pub fn scan(dir: &Path) -> Result<Overlay, GenerateError> {
        let meta = fs::metadata(dir).map_err(|source| GenerateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(GenerateError::Overlay {
                path: dir.to_path_buf(),
                message: "is not a directory".to_owned(),
            });
        }
        let mut entries = Vec::new();
        let mut templates = Vec::new();
        let skip_top = |rel: &Path| {
            [
                BLOBS_DIR,
                DOMAIN_TEMPLATE,
                NETWORK_TEMPLATE,
                MODES_FILE,
                SAVE_FILE,
            ]
            .iter()
            .any(|top| rel == Path::new(top))
        };
        for item in walk(dir, &skip_top)? {
            let (rel, kind, mode) = item;
            match kind {
                RawKind::Dir => entries.push(Entry {
                    rel,
                    mode,
                    kind: Kind::Dir,
                }),
                RawKind::Symlink(target) => entries.push(Entry {
                    rel,
                    mode,
                    kind: Kind::Symlink(target),
                }),
                RawKind::File => {
                    let path = dir.join(&rel);
                    if rel.extension().is_some_and(|e| e == "j2") {
                        let name = rel.to_string_lossy().into_owned();
                        let source =
                            fs::read_to_string(&path).map_err(|source| GenerateError::Io {
                                path: path.clone(),
                                source,
                            })?;
                        templates.push((name.clone(), source));
                        entries.push(Entry {
                            rel: rel.with_extension(""),
                            mode,
                            kind: Kind::Template(name),
                        });
                    } else {
                        let bytes =
                            fs::read(&path).map_err(|source| GenerateError::Io { path, source })?;
                        entries.push(Entry {
                            rel,
                            mode,
                            kind: Kind::Verbatim(bytes.into()),
                        });
                    }
                }
            }
        }
        // The templates beside the guest tree: rendered into the build, not into the guest.
        let mut beside = |name: &str| -> Result<bool, GenerateError> {
            let path = dir.join(name);
            refuse_symlink(&path)?;
            if !path.is_file() {
                return Ok(false);
            }
            let source = fs::read_to_string(&path).map_err(|source| GenerateError::Io {
                path: path.clone(),
                source,
            })?;
            templates.push((name.to_owned(), source));
            Ok(true)
        };
        let has_domain = beside(DOMAIN_TEMPLATE)?;
        let has_network = beside(NETWORK_TEMPLATE)?;
        let modes_path = dir.join(MODES_FILE);
        refuse_symlink(&modes_path)?;
        let modes = if modes_path.is_file() {
            let text = fs::read_to_string(&modes_path).map_err(|source| GenerateError::Io {
                path: modes_path.clone(),
                source,
            })?;
            crate::modes::parse(&modes_path, &text)?
        } else {
            Vec::new()
        };
        entries.sort_by(|a, b| a.rel.cmp(&b.rel));
        // A line of `modes` must name a path the overlay or some host's blobs have (a typo
        // would otherwise do nothing, silently).
        let hosts: Vec<PathBuf> = if modes.is_empty() {
            Vec::new()
        } else {
            fs::read_dir(dir.join(BLOBS_DIR))
                .map(|d| d.flatten().map(|h| h.path()).collect())
                .unwrap_or_default()
        };
        for rule in &modes {
            let path = &rule.setting.path;
            let in_tree = entries.iter().any(|e| e.rel == Path::new(path));
            let in_blobs = || {
                hosts
                    .iter()
                    .any(|h| fs::symlink_metadata(h.join(path)).is_ok())
            };
            if !in_tree && !in_blobs() {
                return Err(GenerateError::Modes {
                    file: modes_path.clone(),
                    line: rule.line,
                    message: format!(
                        "`{path}` is neither in the overlay's tree nor in any host's blobs"
                    ),
                });
            }
        }
        if let Some(pair) = entries.windows(2).find(|w| w[0].rel == w[1].rel) {
            return Err(GenerateError::Overlay {
                path: dir.join(&pair[0].rel),
                message: "is produced twice (a file and a template of the same name)".to_owned(),
            });
        }
        Ok(Overlay {
            dir: dir.to_path_buf(),
            entries,
            templates,
            has_domain,
            has_network,
            modes,
        })
    }

    /// The verbatim entries of `blobs/<hostname>/`, or none when the node has no blobs.
    pub fn blobs(&self, hostname: &str) -> Result<Vec<Entry>, GenerateError> {
        let top = self.dir.join(BLOBS_DIR);
        let dir = top.join(hostname);
        // Neither `blobs/` nor `blobs/<host>` may lead elsewhere: the controller's own files
        // would end up in a guest image.
        for path in [&top, &dir] {
            refuse_symlink(path)?;
        }
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (rel, kind, mode) in walk(&dir, &|_| false)? {
            let kind = match kind {
                RawKind::Dir => Kind::Dir,
                RawKind::Symlink(t) => Kind::Symlink(t),
                RawKind::File => {
                    let path = dir.join(&rel);
                    let bytes =
                        fs::read(&path).map_err(|source| GenerateError::Io { path, source })?;
                    Kind::Verbatim(bytes.into())
                }
            };
            out.push(Entry { rel, mode, kind });
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }
}

enum RawKind {
    Dir,
    File,
    Symlink(PathBuf),
}

/// Every entry below `dir` (not `dir` itself), refusing what cannot be part of a guest tree.
fn walk(
    dir: &Path,
    skip_top: &dyn Fn(&Path) -> bool,
) -> Result<Vec<(PathBuf, RawKind, u32)>, GenerateError> {
    let mut out = Vec::new();
    let mut it = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(item) = it.next() {
        let item = item.map_err(|e| GenerateError::Io {
            path: e.path().unwrap_or(dir).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
        })?;
        let rel = item
            .path()
            .strip_prefix(dir)
            .expect("walkdir stays below its root")
            .to_path_buf();
        if item.depth() == 1 && skip_top(&rel) {
            if item.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let refuse = |message: String| GenerateError::Overlay {
            path: item.path().to_path_buf(),
            message,
        };
        // Paths go to the hypervisors one per line (the directory check before a copy).
        if rel.to_string_lossy().chars().any(char::is_control) {
            return Err(refuse(
                "has a control character (a newline, a tab ...) in its name: name it plainly"
                    .to_owned(),
            ));
        }
        let meta = item.metadata().map_err(|e| refuse(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = item.file_type();
        let kind = if ft.is_dir() {
            RawKind::Dir
        } else if ft.is_file() {
            RawKind::File
        } else if ft.is_symlink() {
            let target = fs::read_link(item.path()).map_err(|e| refuse(e.to_string()))?;
            if !stays_inside(&rel, &target) {
                return Err(refuse(format!(
                    "is a symlink to {} which points outside the tree (use a relative target that stays inside)",
                    target.display()
                )));
            }
            RawKind::Symlink(target)
        } else {
            let what = if ft.is_block_device() || ft.is_char_device() {
                "a device file"
            } else if ft.is_fifo() {
                "a named pipe"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file, directory or symlink"
            };
            return Err(refuse(format!(
                "is {what}; overlays may only hold files, directories and symlinks"
            )));
        };
        out.push((rel, kind, mode));
    }
    Ok(out)
}

/// An error when `path` is a symlink (a missing path is fine).
fn refuse_symlink(path: &Path) -> Result<(), GenerateError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(GenerateError::Overlay {
            path: path.to_path_buf(),
            message: "is a symlink; lab reads overlays only through real directories and files"
                .to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Whether a symlink at `rel` (inside a tree) with `target` resolves, lexically, inside the tree.
pub fn stays_inside(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The guest paths an overlay's `save` file names (one per line, relative to the guest's
/// `/`, `#` comments), in order; none when it has no such file.
pub fn save_paths(dir: &Path) -> Result<Vec<String>, GenerateError> {
    let file = dir.join(SAVE_FILE);
    refuse_symlink(&file)?;
    if !file.is_file() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(&file).map_err(|source| GenerateError::Io {
        path: file.clone(),
        source,
    })?;
    let mut paths: Vec<String> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let path = raw
            .split('#')
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches('/');
        if path.is_empty() {
            continue;
        }
        let bad = |message: String| GenerateError::Modes {
            file: file.clone(),
            line: i + 1,
            message,
        };
        if !crate::modes::plain_path(path) || path.contains(char::is_whitespace) {
            return Err(bad(format!(
                "path `{path}` must be relative to the guest's `/`, without `..`, `.` or spaces"
            )));
        }
        if paths.iter().any(|p| p == path) {
            return Err(bad(format!("`{path}` is named twice")));
        }
        paths.push(path.to_owned());
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_containment() {
        assert!(stays_inside(Path::new("etc/a"), Path::new("b")));
        assert!(stays_inside(Path::new("etc/a"), Path::new("../usr/b")));
        assert!(!stays_inside(Path::new("etc/a"), Path::new("../../b")));
        assert!(!stays_inside(Path::new("a"), Path::new("/etc/passwd")));
        assert!(!stays_inside(Path::new("a"), Path::new("x/../../y")));
    }
}
