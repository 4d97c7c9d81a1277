//! `lab save`: chosen paths (an overlay's `save` file, or the user's) copied out of every
//! node into `<dir>/<node>/...`, as the node has them now: read from its clone on the
//! hypervisor where the guest's root is that directory (a dataset clone), through the running
//! guest where its disk is the guest's own (a zvol node). Read only: no lock, nothing changed
//! on a hypervisor.

use std::path::{Component, Path, PathBuf};

use lab_exec::{ExecError, Executor};
use lab_hv::own::{CloneFacts, inspect};
use lab_hv::run::failed;
use lab_hv::{Events, HostState, NodeReport, Outcome, cmd};
use lab_model::{Hypervisor, Lab, LabNode, Storage};

/// What `save` copies where.
pub struct SaveRequest<'a> {
    pub lab: &'a Lab,
    pub nodes: Vec<&'a LabNode>,
    /// Relative to the guests' `/`.
    pub paths: Vec<String>,
    /// Each node's files go under `<to>/<node>/`.
    pub to: PathBuf,
}

/// What `save` copied from one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaveReport {
    #[serde(flatten)]
    pub report: NodeReport,
    /// Where its files went.
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<String>,
    /// Symbolic links the node has among them, `PATH -> TARGET` (listed, not made).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// Asked-for paths the node does not have.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Asked-for paths not read: under a symlinked directory of the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    pub bytes: u64,
}

/// Copies `req.paths` out of every node, all at once; a node that cannot be read (no
/// complete clone of this lab, another lab's domain, a zvol node that is off) is skipped.
pub async fn save(exec: &Executor, req: &SaveRequest<'_>, events: Events<'_>) -> Vec<SaveReport> {
    let lab = req.lab;
    let states = lab_hv::run::probe_nodes(exec, lab, &req.nodes).await;
    let jobs = req.nodes.iter().map(|node| {
        let states = &states;
        async move {
            let hv = lab.hypervisor_of(node);
            let dir = req.to.join(&node.name);
            let blank = |report: NodeReport| SaveReport {
                report,
                dir: dir.clone(),
                files: Vec::new(),
                links: Vec::new(),
                missing: Vec::new(),
                refused: Vec::new(),
                bytes: 0,
            };
            let state = match &states[hv.name.as_str()] {
                Ok(s) => s.as_ref(),
                Err(e) => return blank(failed(node, "connect", e, false)),
            };
            let read = match source(hv, lab, node, state, &req.paths) {
                Ok(cmd) => cmd,
                Err(reason) => {
                    return blank(NodeReport::new(node, Outcome::Skipped { reason }));
                }
            };
            events(lab_hv::Event::Step {
                node: node.name.clone(),
                hypervisor: hv.name.clone(),
                step: "save",
            });
            let mut stream = Vec::new();
            let out = exec
                .tap(
                    &hv.name,
                    &read,
                    &mut |bytes| {
                        stream.extend_from_slice(bytes);
                        (stream.len() as u64) <= MAX_BYTES
                    },
                    std::future::pending(),
                )
                .await;
            if stream.len() as u64 > MAX_BYTES {
                let e = ExecError::Local {
                    host: hv.name.clone(),
                    command: read.line(),
                    message: format!(
                        "more than {} MiB: save is for configs, not disks",
                        MAX_BYTES >> 20
                    ),
                };
                return blank(failed(node, "save", &e, false));
            }
            let out = match out {
                Ok(out) if out.success() => out,
                Ok(out) => {
                    let e = ExecError::Failed {
                        host: hv.name.clone(),
                        command: read.line(),
                        status: out.status,
                        stderr: out.stderr.trim().to_owned(),
                    };
                    return blank(failed(node, "save", &e, false));
                }
                Err(e) => return blank(failed(node, "save", &e, false)),
            };
            let said = |word: &str| -> Vec<String> {
                out.stderr
                    .lines()
                    .filter_map(|l| l.strip_prefix(word).map(str::to_owned))
                    .collect()
            };
            let mut report = blank(NodeReport::new(node, Outcome::Done));
            report.missing = said("missing ");
            report.refused = said("refused ");
            report.bytes = stream.len() as u64;
            match unpack(&stream, &dir) {
                Ok((files, links)) => {
                    report.files = files;
                    report.links = links;
                }
                Err(e) => {
                    let e = ExecError::Local {
                        host: hv.name.clone(),
                        command: format!("writing into {}", dir.display()),
                        message: e.to_string(),
                    };
                    report.report = failed(node, "save", &e, false);
                }
            }
            lab_hv::run::report_done(events, &report.report);
            report
        }
    });
    lab_hv::run::join_all(jobs.collect()).await
}

/// The command that reads the node's paths, or why it cannot be read.
fn source(
    hv: &Hypervisor,
    lab: &Lab,
    node: &LabNode,
    state: &HostState,
    paths: &[String],
) -> Result<lab_exec::Cmd, String> {
    let facts = inspect(hv, &lab.name, node, state).map_err(|e| e.to_string())?;
    if !matches!(facts.clone, CloneFacts::Ours { filling: false, .. }) {
        return Err(format!(
            "no complete clone {} of this lab (create it first)",
            node.dataset
        ));
    }
    if let Some(why) = facts.domain.other() {
        return Err(format!("domain {} belongs to {why}", node.domain));
    }
    match hv.storage {
        Storage::Dataset => {
            if !state.datasets.get(&node.dataset).is_some_and(|d| d.mounted) {
                return Err(format!(
                    "its clone {} is not mounted (lab start --node {} mounts it)",
                    node.dataset, node.name
                ));
            }
            Ok(cmd::save_tree(node, Some(&node.staging), "", paths))
        }
        Storage::Zvol if facts.domain.running() && facts.domain.ours() => {
            let address = node
                .mgmt_address()
                .ok_or("its guest has no management address to be reached at")?;
            Ok(cmd::save_tree(node, None, &address, paths))
        }
        Storage::Zvol => Err(format!(
            "its disk is a zvol and its domain is off: its files are read through its guest \
             (lab start --node {})",
            node.name
        )),
    }
}

/// Writes a tar stream's regular files and directories under `dir` (made as needed): plain
/// relative paths only, never through a link (none is made: links are listed). Returns the
/// files written and the links seen.
fn unpack(stream: &[u8], dir: &Path) -> std::io::Result<(Vec<String>, Vec<String>)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let (mut files, mut links) = (Vec::new(), Vec::new());
    if stream.is_empty() {
        return Ok((files, links));
    }
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        let plain: PathBuf = rel
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        if plain.as_os_str().is_empty() {
            continue;
        }
        if !plain
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(std::io::Error::other(format!(
                "the stream names {}, outside the node's directory",
                rel.display()
            )));
        }
        let target = dir.join(&plain);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                no_link_above(dir, &plain)?;
                std::fs::create_dir_all(&target)?;
            }
            tar::EntryType::Regular => {
                no_link_above(dir, &plain)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                // Never through a link that was in the directory before (`--to` an existing
                // one): the file itself is opened without following one.
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)?;
                std::io::copy(&mut entry, &mut file)?;
                let mode = if executable { 0o755 } else { 0o644 };
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                files.push(plain.display().to_string());
            }
            tar::EntryType::Symlink => {
                let to = entry
                    .link_name()?
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                links.push(format!("{} -> {to}", plain.display()));
            }
            _ => {}
        }
    }
    Ok((files, links))
}

/// Fails when a directory of `rel` under `dir` is a symbolic link (made before this run:
/// `unpack` makes none), so that nothing is written where it leads.
fn no_link_above(dir: &Path, rel: &Path) -> std::io::Result<()> {
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link: nothing is written through it",
                at.display()
            )));
        }
    }
    Ok(())
}

/// The most a node's stream may hold: configs, not disks.
pub const MAX_BYTES: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o640);
            header.set_entry_type(tar::EntryType::Regular);
            // `append_data` refuses `..`; a hostile stream need not.
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            tar.append(&header, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn files_land_under_the_nodes_directory_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let (files, links) =
            unpack(&stream(&[("./etc/bird/bird.conf", b"x")]), dir.path()).unwrap();
        assert_eq!(files, ["etc/bird/bird.conf"]);
        assert!(links.is_empty());
        assert_eq!(
            std::fs::read(dir.path().join("etc/bird/bird.conf")).unwrap(),
            b"x"
        );
        for hostile in ["../escape", "/etc/passwd", "etc/../../escape"] {
            let into = dir.path().join("node");
            let e = unpack(&stream(&[(hostile, b"x")]), &into).unwrap_err();
            assert!(e.to_string().contains("outside"), "{hostile}: {e}");
        }
        assert!(!dir.path().join("escape").exists());
        // A link already in the directory is not written through.
        let into = dir.path().join("linked");
        std::fs::create_dir_all(&into).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), into.join("etc")).unwrap();
        let e = unpack(&stream(&[("etc/x", b"x")]), &into).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink(dir.path().join("target"), into.join("f")).unwrap();
        assert!(unpack(&stream(&[("f", b"x")]), &into).is_err());
        assert!(!dir.path().join("target").exists());
    }
}
