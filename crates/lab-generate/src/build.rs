//! The build directory, both ways: where `generate` writes a node and what `create` and
//! `status` read back. One typed manifest is shared by the writer and the readers.
//!
//! ```text
//! <build>/<overlay>/<hypervisor>/<hostname>/                     the guest's root filesystem
//! <build>/<overlay>/<hypervisor>/_meta/<hostname>.manifest.json  sha256 of every entry, modes, digest
//! <build>/<overlay>/<hypervisor>/_meta/<hostname>.domain.xml     when there is domain.xml.j2
//! <build>/<overlay>/_networks/<hypervisor>/<network>.xml         a management network lab owns
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lab_model::LabNode;

use crate::GenerateError;

/// Where one node's output lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub tree: PathBuf,
    pub manifest: PathBuf,
    pub domain_xml: PathBuf,
}

impl NodePaths {
    pub fn of(build_dir: &Path, overlay: &str, node: &LabNode) -> NodePaths {
        let parent = build_dir.join(overlay).join(&node.hypervisor);
        // `_meta` cannot be a hostname (no `_` in DNS labels): a hostname such as
        // `r2.manifest.json` never meets node `r2`'s manifest.
        let meta = parent.join("_meta");
        NodePaths {
            tree: parent.join(&node.hostname),
            manifest: meta.join(format!("{}.manifest.json", node.hostname)),
            domain_xml: meta.join(format!("{}.domain.xml", node.hostname)),
        }
    }
}

/// Where a hypervisor's management network definition lives: beside the node trees, under a
/// name no hypervisor can have (`_networks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPaths {
    pub xml: PathBuf,
}

impl NetworkPaths {
    pub fn of(build_dir: &Path, overlay: &str, hypervisor: &str, network: &str) -> NetworkPaths {
        NetworkPaths {
            xml: build_dir
                .join(overlay)
                .join("_networks")
                .join(hypervisor)
                .join(format!("{network}.xml")),
        }
    }
}

/// A management network as `create` needs it.
#[derive(Debug, Clone)]
pub struct NetworkBuild {
    pub name: String,
    pub xml: Vec<u8>,
    /// Recorded in the network's ownership mark: a changed definition is seen by its digest.
    pub sha256: String,
}

/// Reads back the management network `generate` rendered for `hv`, when lab owns it there.
pub fn read_network(
    build_dir: &Path,
    overlay: &str,
    hv: &lab_model::Hypervisor,
    trust: Trust,
) -> Result<Option<NetworkBuild>, GenerateError> {
    let (true, Some(name)) = (hv.mgmt.owned, &hv.mgmt.network) else {
        return Ok(None);
    };
    let path = NetworkPaths::of(build_dir, overlay, &hv.name, name).xml;
    if trust == Trust::Copy
        && let Err(message) = path
            .parent()
            .map_or(Ok(()), check_held)
            .and(check_held(&path))
    {
        return Err(GenerateError::Build { path, message });
    }
    let xml = std::fs::read(&path).map_err(|e| GenerateError::Build {
        path: path.clone(),
        message: format!("{e} (run `lab generate` first, or drop --no-generate)"),
    })?;
    Ok(Some(NetworkBuild {
        name: name.clone(),
        sha256: crate::write::sha256_hex(&xml),
        xml,
    }))
}

/// What kind of path a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
        }
    }
}

/// One path of a node's tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Octal, four digits.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The owner, group and mode the overlay's `modes` gives one path of a node's tree; applied
/// in the clone after the copy (`None` keeps what the image or the copy made).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathMode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl PathMode {
    /// `[path, mode, owner, group]` as the clone's `modes` step takes them, `-` for "keep".
    pub fn args(&self) -> [&str; 4] {
        fn keep(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("-")
        }
        [
            self.path.as_str(),
            keep(&self.mode),
            keep(&self.owner),
            keep(&self.group),
        ]
    }

    /// Whether this setting may reach root's shell on a hypervisor: a plain path that is a
    /// file or directory of the tree (so every directory above it is one too, and checked
    /// against the image's symlinks before the copy), an octal mode, ids `modes` accepts.
    fn check(&self, entries: &BTreeMap<String, ManifestEntry>) -> Result<(), String> {
        use crate::modes::{plain_path, valid_id, valid_mode};
        let in_tree = |p: &str| entries.get(p).map(|e| e.kind);
        if !plain_path(&self.path) {
            return Err(format!("`{}` is not a plain relative path", self.path));
        }
        if !matches!(in_tree(&self.path), Some(EntryKind::Dir | EntryKind::File)) {
            return Err(format!(
                "`{}` is not a file or directory of the tree",
                self.path
            ));
        }
        let mut parent = std::path::Path::new(&self.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if in_tree(&p.to_string_lossy()) != Some(EntryKind::Dir) {
                return Err(format!("`{}` is not a directory of the tree", p.display()));
            }
            parent = p.parent();
        }
        if self.mode.as_deref().is_some_and(|m| !valid_mode(m)) {
            return Err(format!(
                "`{}` has a mode that is not four octal digits",
                self.path
            ));
        }
        if [&self.owner, &self.group]
            .iter()
            .any(|id| id.as_deref().is_some_and(|id| !valid_id(id)))
        {
            return Err(format!(
                "`{}` has an owner or group that is not a name or number",
                self.path
            ));
        }
        Ok(())
    }
}

/// `<hostname>.manifest.json`: what was generated for a node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub lab: String,
    pub overlay: String,
    pub node: String,
    pub hypervisor: String,
    pub hostname: String,
    /// sha256 over every entry (type, mode, path, content) and the domain XML: what a clone
    /// records as `lab:overlay-sha256`, and what `status` compares for drift.
    pub digest: String,
    /// The domain XML's sha256, when the overlay renders one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_sha256: Option<String>,
    pub entries: BTreeMap<String, ManifestEntry>,
    /// What the overlay's `modes` gives paths of this tree, in path order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<PathMode>,
}

/// A node's build as `create` needs it.
#[derive(Debug, Clone)]
pub struct NodeBuild {
    /// The tree copied into the clone.
    pub tree: PathBuf,
    pub digest: String,
    /// The rendered libvirt domain, when the overlay has one.
    pub domain_xml: Option<Vec<u8>>,
    /// The tree's directories, relative, parents first.
    pub dirs: Vec<String>,
    /// Owners and modes to set in the clone after the copy.
    pub modes: Vec<PathMode>,
}

impl NodeBuild {
    /// The MACs of the NICs in the built domain definition, in order (`<mac address=.../>`).
    pub fn domain_macs(&self) -> Option<Vec<String>> {
        let xml = String::from_utf8_lossy(self.domain_xml.as_ref()?);
        Some(
            xml.split("<mac address=")
                .skip(1)
                .filter_map(|rest| {
                    let quote = rest.chars().next()?;
                    let rest = &rest[1..];
                    Some(rest[..rest.find(quote)?].to_ascii_lowercase())
                })
                .collect(),
        )
    }
}

/// How far [`read_node`] trusts a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Read the manifest (what `status` compares clones with).
    Manifest,
    /// The build will be copied into clones as root: its directories and files must be this
    /// user's (or root's) and writable by no one else, and the tree on disk must be exactly
    /// what the manifest says, entry by entry (`lstat`, never following a link).
    Copy,
}

/// Reads back what `generate` wrote for `node`. A missing or foreign manifest, or a domain
/// XML that does not match it, is an error: nothing is guessed.
pub fn read_node(
    build_dir: &Path,
    lab: &str,
    overlay: &str,
    node: &LabNode,
    trust: Trust,
) -> Result<NodeBuild, GenerateError> {
    let paths = NodePaths::of(build_dir, overlay, node);
    let bad = |path: &Path, message: String| GenerateError::Build {
        path: path.to_path_buf(),
        message,
    };
    if trust == Trust::Copy {
        // The directories above the node's files, then its manifest and domain XML: a user
        // who could write any of them could make root copy or define what they like.
        let hv_dir = paths.tree.parent().expect("a node tree has a parent");
        let mut held = vec![
            build_dir.to_path_buf(),
            build_dir.join(overlay),
            hv_dir.to_path_buf(),
        ];
        held.extend(paths.manifest.parent().map(Path::to_path_buf));
        held.push(paths.manifest.clone());
        if paths.domain_xml.exists() {
            held.push(paths.domain_xml.clone());
        }
        for path in &held {
            check_held(path).map_err(|message| bad(path, message))?;
        }
        check_ancestors(build_dir).map_err(|message| bad(build_dir, message))?;
    }
    let text = std::fs::read_to_string(&paths.manifest).map_err(|e| {
        bad(
            &paths.manifest,
            format!("{e} (run `lab generate` first, or drop --no-generate)"),
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        bad(
            &paths.manifest,
            format!("not a manifest of lab generate: {e}"),
        )
    })?;
    let written_for = [
        &manifest.lab,
        &manifest.node,
        &manifest.hypervisor,
        &manifest.overlay,
    ];
    if written_for != [lab, node.name.as_str(), node.hypervisor.as_str(), overlay] {
        return Err(bad(
            &paths.manifest,
            format!(
                "written for lab `{}`, node `{}` on `{}` with overlay `{}`, not for lab `{lab}`, \
                 node `{}` on `{}` with `{overlay}` (generate again)",
                manifest.lab,
                manifest.node,
                manifest.hypervisor,
                manifest.overlay,
                node.name,
                node.hypervisor
            ),
        ));
    }
    let domain_xml = match &manifest.domain_sha256 {
        None => None,
        Some(expected) => {
            let xml = std::fs::read(&paths.domain_xml)
                .map_err(|e| bad(&paths.domain_xml, e.to_string()))?;
            if crate::write::sha256_hex(&xml) != *expected {
                return Err(bad(
                    &paths.domain_xml,
                    "changed since it was generated: its sha256 differs from the manifest's \
                     (generate again)"
                        .to_owned(),
                ));
            }
            Some(xml)
        }
    };
    // What goes to root's shell is checked again: the manifest is a file anyone with write
    // access to the build could have edited.
    for m in &manifest.modes {
        m.check(&manifest.entries).map_err(|e| {
            bad(
                &paths.manifest,
                format!("its `modes`: {e} (generate again)"),
            )
        })?;
    }
    if trust == Trust::Copy {
        check_tree(&paths.tree, &manifest.entries).map_err(|message| bad(&paths.tree, message))?;
    }
    let dirs = manifest
        .entries
        .iter()
        .filter(|(_, e)| e.kind == EntryKind::Dir)
        .map(|(path, _)| path.clone())
        .collect();
    Ok(NodeBuild {
        tree: paths.tree,
        digest: manifest.digest,
        domain_xml,
        dirs,
        modes: manifest.modes,
    })
}

/// Whether `path` (not followed) is this user's or root's, and writable by no one else.
fn check_held(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let me = crate::write::my_uid();
    if meta.file_type().is_symlink() {
        return Err(
            "is a symlink; a build copied into clones is never reached through one \
                    (generate again, or drop --no-generate)"
                .to_owned(),
        );
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "is owned by uid {}, not by you (uid {me}): root would copy what another user \
             wrote; generate it as this user, or drop --no-generate",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {:04o}): anyone who can write it could make \
             root copy or define what they like; `chmod go-w` it, or drop --no-generate",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Whether every directory above the build is root's or this user's, and writable by no one
/// else (or sticky, as /tmp): who can write a directory above `build/` could swap it for
/// another between the check and the copy (as sshd's StrictModes judges a home directory).
fn check_ancestors(build_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let real = build_dir.canonicalize().map_err(|e| e.to_string())?;
    let me = crate::write::my_uid();
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if (meta.uid() != me && meta.uid() != 0) || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "is inside {}, which {} (mode {:04o}): whoever can write it could swap the \
                 build under the copy; drop --no-generate, or move the build",
                dir.display(),
                if meta.uid() != me && meta.uid() != 0 {
                    format!("uid {} owns", meta.uid())
                } else {
                    "others can write".to_owned()
                },
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Whether the tree on disk is exactly the manifest's, by kind and link target, and held by
/// this user alone: `modes` and the copy act on the tree as it is, not as the manifest says.
fn check_tree(tree: &Path, entries: &BTreeMap<String, ManifestEntry>) -> Result<(), String> {
    let mut seen = 0usize;
    for entry in walkdir::WalkDir::new(tree).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| e.to_string())?;
        let rel = entry
            .path()
            .strip_prefix(tree)
            .expect("under the tree")
            .to_string_lossy()
            .into_owned();
        let kind = if entry.path_is_symlink() {
            EntryKind::Symlink
        } else if entry.file_type().is_dir() {
            EntryKind::Dir
        } else if entry.file_type().is_file() {
            EntryKind::File
        } else {
            return Err(format!(
                "`{rel}` is neither a file, a directory nor a symlink"
            ));
        };
        let Some(listed) = entries.get(&rel) else {
            return Err(format!(
                "`{rel}` is not in the manifest: the tree changed since it was generated \
                 (generate again)"
            ));
        };
        if listed.kind != kind {
            return Err(format!(
                "`{rel}` is a {} on disk but a {} in the manifest: the tree changed since it \
                 was generated (generate again)",
                kind.as_str(),
                listed.kind.as_str()
            ));
        }
        if kind == EntryKind::Symlink {
            let target = std::fs::read_link(entry.path()).map_err(|e| e.to_string())?;
            if listed.target.as_deref() != Some(&*target.to_string_lossy()) {
                return Err(format!(
                    "`{rel}` points to {} on disk, not where the manifest says (generate again)",
                    target.display()
                ));
            }
        } else {
            check_held(entry.path()).map_err(|e| format!("`{rel}` {e}"))?;
        }
        seen += 1;
    }
    if seen != entries.len() {
        return Err(format!(
            "holds {seen} entries and its manifest {}: the tree changed since it was generated \
             (generate again)",
            entries.len()
        ));
    }
    Ok(())
}
