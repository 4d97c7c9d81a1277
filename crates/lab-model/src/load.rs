//! Reading lab files: `include:` resolution and merging in order.

use std::path::{Path, PathBuf};

use crate::error::ModelError;
use crate::model::Lab;
use crate::tree::{self, Tree, Value};

/// Loads, merges and validates the lab described by `files` (later files override earlier ones).
pub fn load(files: &[PathBuf]) -> Result<Lab, ModelError> {
    let (tree, read) = merged_tree(files)?;
    Lab::from_tree(tree, read)
}

/// The merged tree of `files` with every `include:` expanded, and the files read, in order.
/// Loads files that may describe only a fleet (hypervisors and `proto:`, no `lab:` and no
/// `nodes:`), for the `lab proto` verbs. A missing `lab:` reads as a lab named `fleet`.
pub fn load_fleet(files: &[PathBuf]) -> Result<Lab, ModelError> {
    let (tree, read) = merged_tree(files)?;
    let mut base = tree::parse(
        "lab: {name: fleet, id: 0}\nnodes: {}\n",
        Path::new("(fleet)"),
    )?;
    base.merge(tree);
    Lab::from_tree(base, read)
}

pub fn merged_tree(files: &[PathBuf]) -> Result<(Tree, Vec<PathBuf>), ModelError> {
    let mut read = Vec::new();
    let mut merged: Option<Tree> = None;
    // One run works on one lab: files given together may not name different ones.
    let mut named: Option<(String, crate::tree::Origin)> = None;
    for file in files {
        let tree = expand(file, &mut Vec::new(), &mut read)?;
        if let Some(name) = tree.get("lab").and_then(|l| l.get("name"))
            && let Value::Str(n) = &name.value
        {
            match &named {
                Some((first, at)) if first != n => {
                    return Err(ModelError::Schema {
                        at: name.origin.clone(),
                        path: "lab.name".to_owned(),
                        message: format!(
                            "names lab `{n}`, but {at} names lab `{first}`: the files of one run \
                             describe one lab"
                        ),
                        hint: crate::error::Hint::default(),
                    });
                }
                Some(_) => {}
                None => named = Some((n.clone(), name.origin.clone())),
            }
        }
        match &mut merged {
            Some(m) => m.merge(tree),
            None => merged = Some(tree),
        }
    }
    merged.map(|m| (m, read)).ok_or(ModelError::NoLabFile)
}

/// One file with its includes merged beneath it. `stack` holds the files being expanded, to
/// catch include cycles.
fn expand(
    file: &Path,
    stack: &mut Vec<PathBuf>,
    read: &mut Vec<PathBuf>,
) -> Result<Tree, ModelError> {
    let mut tree = tree::parse_file(file)?;
    read.push(file.to_path_buf());
    let identity = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    stack.push(identity);
    let Some(include) = tree.take("include") else {
        stack.pop();
        return Ok(tree);
    };
    let names: Vec<&Tree> = match &include.value {
        Value::Str(_) => vec![&include],
        Value::Seq(items) => items.iter().collect(),
        _ => {
            return Err(ModelError::Schema {
                at: include.origin.clone(),
                path: "include".to_owned(),
                message: format!(
                    "expected a file name or a list of them, found {}",
                    include.kind()
                ),
                hint: Default::default(),
            });
        }
    };
    let mut base: Option<Tree> = None;
    for name in names {
        let Value::Str(s) = &name.value else {
            return Err(ModelError::Schema {
                at: name.origin.clone(),
                path: "include".to_owned(),
                message: format!("expected a file name, found {}", name.kind()),
                hint: Default::default(),
            });
        };
        let path = tree::relative_to(file, s);
        let canonical = std::fs::canonicalize(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        if stack.contains(&canonical) {
            return Err(ModelError::IncludeCycle {
                at: name.origin.clone(),
                file: path,
            });
        }
        let included = expand(&path, stack, read)?;
        match &mut base {
            Some(b) => b.merge(included),
            None => base = Some(included),
        }
    }
    stack.pop();
    Ok(match base {
        Some(mut b) => {
            b.merge(tree);
            b
        }
        None => tree,
    })
}
