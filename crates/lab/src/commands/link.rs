//! `lab link` (the links and their state; down, up, flap) and `lab capture` (a link end's
//! frames as pcap, on stdout or into a file).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use lab_hv::NodeReport;
use lab_model::LabNode;
use lab_reach::link::{self, End};

use crate::commands::Verb;
use crate::exit::{Exit, Failure};
use crate::remote::{change_nodes, drive, drive_stoppable, executor_for};
use crate::render;
use crate::settings::{Capture, Format, Link, LinkAction, Mode, Output};

pub fn run(out: &Output, s: &Link) -> Result<(), Failure> {
    match s {
        Link::List { lab, select } => {
            let lab = lab_model::load(&lab.0)?;
            let nodes = lab.select(&select.hosts, &select.nodes)?;
            let hypervisors = lab.hypervisors_of(&link::with_peers(&lab, &nodes));
            let links = drive(executor_for(&hypervisors, Mode::Live), async |e| {
                link::links(e, &lab, &nodes).await
            })?;
            render::links(out, &links);
            Ok(())
        }
        Link::Set {
            lab,
            end,
            other,
            action,
            mode,
            lock_wait,
        } => {
            let lab = lab_model::load(&lab.0)?;
            let ends = link::link_of(&lab, end, other.as_deref()).map_err(Failure::invalid)?;
            let nodes: Vec<&LabNode> = ends.iter().map(|e| e.node).collect();
            // An impairment's directions and the relay, before anything is asked.
            let impairing = match action {
                LinkAction::Impair { how, from } => {
                    let directions = directions(&ends, from.as_deref(), *how)?;
                    let relay = if how.is_none() || mode.is_dry_run() {
                        link::Relay {
                            bytes: Vec::new(),
                            sha256: "SHA256-OF-LAB".to_owned(),
                            arch: std::env::consts::ARCH.to_owned(),
                        }
                    } else {
                        own_binary()?
                    };
                    Some((directions, relay))
                }
                _ => None,
            };
            let reports = change_nodes(
                out,
                &lab,
                &nodes,
                Verb::Link,
                *mode,
                *lock_wait,
                async |exec, events| match (action, &impairing) {
                    (_, Some((directions, relay))) => {
                        link::impair(exec, &lab, directions, relay, events).await
                    }
                    (LinkAction::Down, None) => {
                        link::set_state(exec, &lab, &ends, false, events).await
                    }
                    (LinkAction::Up, None) => {
                        link::set_state(exec, &lab, &ends, true, events).await
                    }
                    (LinkAction::Flap { count, interval }, None) => {
                        flap(exec, &lab, &ends, *count, *interval, events).await
                    }
                    (LinkAction::Impair { .. }, None) => unreachable!("decided above"),
                },
            )?;
            render::node_reports(
                out,
                &lab,
                Verb::Link,
                &[],
                &reports,
                *mode,
                &render::Then::default(),
            )
        }
    }
}

/// Down and up `count` times, `interval` seconds each (not waited under `--dry-run`); stops
/// at the first round that does not go through on every end. The reports are the last
/// round's, with every round's commands.
async fn flap(
    exec: &lab_exec::Executor,
    lab: &lab_model::Lab,
    ends: &[End<'_>],
    count: u32,
    interval: u64,
    events: lab_hv::Events<'_>,
) -> Vec<NodeReport> {
    let pause = async || {
        if exec.is_live() {
            tokio::time::sleep(Duration::from_secs(interval)).await;
        }
    };
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut keep = |reports: &[NodeReport]| {
        commands.resize(reports.len(), Vec::new());
        for (all, r) in commands.iter_mut().zip(reports) {
            all.extend(r.commands.iter().cloned());
        }
    };
    let failed = |reports: &[NodeReport]| {
        reports
            .iter()
            .any(|r| !matches!(r.outcome, lab_hv::Outcome::Done))
    };
    let (mut last, mut went_up) = (Vec::new(), true);
    'rounds: for round in 0..count {
        for up in [false, true] {
            last = link::set_state(exec, lab, ends, up, events).await;
            keep(&last);
            went_up = up;
            if failed(&last) {
                break 'rounds;
            }
            if !(up && round + 1 == count) {
                pause().await;
            }
        }
    }
    // A flap ends up: a round that failed after the link went down still brings it back.
    if !went_up {
        let up = link::set_state(exec, lab, ends, true, events).await;
        keep(&up);
        if failed(&up) {
            last = up;
        }
    }
    for (r, all) in last.iter_mut().zip(commands) {
        r.commands = all;
        if matches!(r.outcome, lab_hv::Outcome::Done) && went_up {
            r.note = Some(format!("flapped {count} time(s), {interval} s apart; up"));
        }
    }
    last
}

pub fn capture(out: &Output, s: &Capture) -> Result<(), Failure> {
    let lab = lab_model::load(&s.lab.0)?;
    let end = link::end(&lab, &s.node, &s.interface).map_err(Failure::invalid)?;
    if s.write.is_none() && !s.dry_run {
        if std::io::stdout().is_terminal() {
            return Err(Failure::invalid(
                "a capture is pcap, not text: pipe it (`| wireshark -k -i -`, `| tcpdump -nr -`) \
                 or write it with -w FILE",
            ));
        }
        if out.format == Format::Json {
            return Err(Failure::invalid(
                "--format json prints the capture's summary on stdout, where the pcap goes \
                 without -w FILE: add -w FILE",
            ));
        }
    }
    // The pcap is written by a thread of its own, so that a reader that pauses (a pager,
    // Wireshark) never stalls the capture's clock or a Ctrl-C; a file is made with the first
    // frames, so a capture that never starts leaves an existing file as it was.
    let (chunks, pending) = std::sync::mpsc::channel::<Vec<u8>>();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, dry_run, closed) = (s.write.clone(), s.dry_run, closed.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut out: Option<Box<dyn Write>> = None;
            for chunk in pending {
                if dry_run {
                    continue;
                }
                if out.is_none() {
                    out = Some(match &path {
                        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| {
                            closed.store(true, std::sync::atomic::Ordering::SeqCst);
                            format!("cannot write {}: {e}", p.display())
                        })?),
                        None => Box::new(std::io::stdout()),
                    });
                }
                let w = out.as_mut().expect("opened");
                match w.write_all(&chunk).and_then(|()| w.flush()) {
                    Ok(()) => {}
                    // The reader went away (`| head`, Wireshark closed): the capture ends.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        closed.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Ok(());
                    }
                    Err(e) => {
                        closed.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Err(format!("the capture could not be written: {e}"));
                    }
                }
            }
            Ok(())
        })
    };
    let mut sink = |bytes: &[u8]| {
        !closed.load(std::sync::atomic::Ordering::SeqCst) && chunks.send(bytes.to_vec()).is_ok()
    };
    let hv = lab.hypervisor_of(end.node);
    let (report, recorded) = drive_stoppable(executor_for(&[hv], s.mode()), async |e, stop| {
        let report = link::capture(e, &lab, end, &s.ask, &mut sink, stop).await;
        (report, e.recorded())
    })?;
    drop(chunks);
    let written = writer
        .join()
        .unwrap_or_else(|_| Err("the writer failed".to_owned()));
    let report = report?;
    written.map_err(|e| Failure::new(Exit::Failure, e))?;
    if s.dry_run {
        render::recorded(out, &recorded);
        return Ok(());
    }
    render::capture(out, &report, s.write.is_some());
    Ok(())
}

/// Which ends' sent frames an impairment is for: both, or the one at `from` (a node of the
/// link).
fn directions<'a>(
    ends: &[End<'a>; 2],
    from: Option<&str>,
    how: lab_model::impair::Impairment,
) -> Result<Vec<(End<'a>, Option<lab_model::impair::Impairment>)>, Failure> {
    let picked: Vec<End<'a>> = match from {
        None => ends.to_vec(),
        Some(node) => {
            let end = ends.iter().find(|e| e.node.name == node).ok_or_else(|| {
                Failure::invalid(format!(
                    "--from {node}: the link is {} -- {}, which does not end at {node}",
                    ends[0].name(),
                    ends[1].name()
                ))
            })?;
            vec![*end]
        }
    };
    Ok(picked.into_iter().map(|e| (e, Some(how))).collect())
}

/// This very binary, the relay `lab link set` starts on the hypervisors: its bytes and their
/// sha256, and the machine it was built for.
fn own_binary() -> Result<link::Relay, Failure> {
    use sha2::Digest;
    let path = std::env::current_exe()
        .map_err(|e| Failure::new(Exit::Failure, format!("cannot find lab's own binary: {e}")))?;
    let bytes = std::fs::read(&path).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot read lab's own binary {}: {e}", path.display()),
        )
    })?;
    let sha256 = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(link::Relay {
        bytes,
        sha256,
        arch: std::env::consts::ARCH.to_owned(),
    })
}

/// `lab relay` (hidden), on a hypervisor: see `crate::relay`.
pub fn relay(a: &crate::cli::RelayArgs) -> Result<(), Failure> {
    let how = lab_model::impair::Impairment {
        delay_us: a.delay_us,
        jitter_us: a.jitter_us,
        loss_ppm: a.loss_ppm,
        duplicate_ppm: a.duplicate_ppm,
        reorder_ppm: a.reorder_ppm,
        rate_bps: a.rate_bps,
    };
    crate::relay::run(&a.socket, a.to, how).map_err(|e| Failure::new(Exit::Failure, e))
}

/// After `create` or `start`: the lab file's impairments (`impair:` on a link) on the links of
/// the `nodes` that `reports` say were started (done), applied on their hypervisors; nothing
/// (and no binary read) when none is declared.
pub async fn apply_declared(
    exec: &lab_exec::Executor,
    lab: &lab_model::Lab,
    nodes: &[&LabNode],
    reports: &[NodeReport],
    events: lab_hv::Events<'_>,
) -> Result<Vec<NodeReport>, Failure> {
    let started: Vec<&LabNode> = nodes
        .iter()
        .copied()
        .filter(|n| {
            reports
                .iter()
                .any(|r| r.node == n.name && matches!(r.outcome, lab_hv::Outcome::Done))
        })
        .collect();
    let directions = link::declared(&started);
    if directions.is_empty() {
        return Ok(Vec::new());
    }
    let relay = own_binary()?;
    Ok(link::impair(exec, lab, &directions, &relay, events).await)
}

/// A verb's node reports, then how the lab file's impairments on the links of the nodes it
/// started went (see [`declared_exit`]).
pub fn reports_then_declared(
    out: &Output,
    lab: &lab_model::Lab,
    verb: crate::commands::Verb,
    reports: &[NodeReport],
    mode: crate::settings::Mode,
    impaired: Result<Vec<NodeReport>, Failure>,
) -> Result<(), Failure> {
    let impaired = impaired.and_then(|r| declared_exit(out, &r));
    crate::render::node_reports(
        out,
        lab,
        verb,
        &[],
        reports,
        mode,
        &crate::render::Then::default(),
    )
    .and(impaired)
}

/// Says how the declared impairments went (stderr), and fails the run as partial when one did
/// not go through.
pub fn declared_exit(out: &Output, reports: &[NodeReport]) -> Result<(), Failure> {
    let mut failed = Vec::new();
    for r in reports {
        match &r.outcome {
            lab_hv::Outcome::Done => {
                if !out.quiet {
                    eprintln!(
                        "lab: {} impaired as the lab file says: {}",
                        r.node,
                        r.note.as_deref().unwrap_or("")
                    );
                }
            }
            other => {
                let why = match other {
                    lab_hv::Outcome::Failed { error, .. } => error.clone(),
                    lab_hv::Outcome::Skipped { reason } => reason.clone(),
                    _ => other.word().to_owned(),
                };
                eprintln!(
                    "lab: {}: the lab file's impairment was not applied: {why}",
                    r.node
                );
                failed.push(r.node.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Partial,
            format!("impairments not applied on {}", failed.join(", ")),
        ))
    }
}
