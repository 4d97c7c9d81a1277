//! `lab generate`: render the overlay for the selected nodes into the build directory.

use crate::exit::Failure;
use crate::progress::Progress;
use crate::render::print_json;
use crate::settings::Format;
use crate::settings::{Generate, Output};

/// `<build>/.lock`, held while trees in `build/` are swapped (exclusive: `generate`, and
/// `create` when it publishes its run's build) or copied from (shared: `create
/// --no-generate`), so that no copy ever reads a tree being swapped (review 3, N13).
pub(crate) struct BuildLock(#[allow(dead_code)] std::fs::File);

impl BuildLock {
    fn open(build: &std::path::Path) -> Result<std::fs::File, Failure> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = build.join(".lock");
        std::fs::create_dir_all(build)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
            })
            .map_err(|e| {
                Failure::new(
                    crate::exit::Exit::Failure,
                    format!("{}: {e} (the build's lock)", path.display()),
                )
            })
    }

    /// Waits for the build to be no one else's, then holds it; `None` when there is no
    /// build yet (no one can be copying from it, and bad input then leaves nothing behind).
    pub(crate) fn exclusive(build: &std::path::Path) -> Result<Option<BuildLock>, Failure> {
        if !build.is_dir() {
            return Ok(None);
        }
        let f = Self::open(build)?;
        f.lock()
            .map_err(|e| Failure::new(crate::exit::Exit::Failure, e.to_string()))?;
        Ok(Some(BuildLock(f)))
    }

    /// The build, exclusively, if no one is reading or writing it now.
    pub(crate) fn try_exclusive(build: &std::path::Path) -> Option<BuildLock> {
        let f = Self::open(build).ok()?;
        f.try_lock().ok()?;
        Some(BuildLock(f))
    }

    /// Waits until no one swaps trees in the build, then keeps them from doing so.
    pub(crate) fn shared(build: &std::path::Path) -> Result<BuildLock, Failure> {
        let f = Self::open(build)?;
        f.lock_shared()
            .map_err(|e| Failure::new(crate::exit::Exit::Failure, e.to_string()))?;
        Ok(BuildLock(f))
    }
}

pub fn run(out: &Output, s: &Generate) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let nodes = lab.select(&s.select.hosts, &s.select.nodes)?;
    let _lock = BuildLock::exclusive(&s.build.dir)?;
    let progress = Progress::new(out.quiet);
    let request = lab_generate::Request {
        lab: &lab,
        overlay: s.build.overlay.as_deref(),
        build_dir: &s.build.dir,
        nodes: &nodes,
    };
    let result = lab_generate::generate(&request, &|e| progress.on_event(e));
    progress.finish();
    let output = result?;
    if !out.quiet && out.format == Format::Text {
        warn(&output);
    }
    match out.format {
        Format::Json => print_json(&output),
        Format::Text if !out.quiet => {
            eprintln!(
                "generated {} node(s) of lab {} with overlay {} in {}",
                output.nodes.len(),
                lab.name,
                output.overlay,
                output.build_dir.join(&output.overlay).display()
            );
            for n in &output.networks {
                let from = if n.builtin {
                    "lab's built-in definition (the overlay has no network.xml.j2)".to_owned()
                } else {
                    format!("the overlay's {}", lab_generate::NETWORK_TEMPLATE)
                };
                eprintln!("network {} of {}: {from}", n.network, n.hypervisor);
            }
        }
        Format::Text => {}
    }
    Ok(())
}

/// What the guests get that they probably should not, one line per file on stderr.
pub(crate) fn warn(output: &lab_generate::Output) {
    for node in &output.nodes {
        for w in &node.warnings {
            eprintln!("lab: warning: {}: {w}", node.node);
        }
    }
}
