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
            let hypervisors = lab.hypervisors_of(&nodes);
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
            let reports = change_nodes(
                out,
                &lab,
                &nodes,
                Verb::Link,
                *mode,
                *lock_wait,
                async |exec, events| match *action {
                    LinkAction::Down => link::set_state(exec, &lab, &ends, false, events).await,
                    LinkAction::Up => link::set_state(exec, &lab, &ends, true, events).await,
                    LinkAction::Flap { count, interval } => {
                        flap(exec, &lab, &ends, count, interval, events).await
                    }
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
    let mut last = Vec::new();
    for round in 0..count {
        for up in [false, true] {
            last = link::set_state(exec, lab, ends, up, events).await;
            keep(&last);
            if last
                .iter()
                .any(|r| matches!(r.outcome, lab_hv::Outcome::Failed { .. }))
                || (up && round + 1 == count)
            {
                break;
            }
            pause().await;
        }
        if last
            .iter()
            .any(|r| matches!(r.outcome, lab_hv::Outcome::Failed { .. }))
        {
            break;
        }
    }
    for (r, all) in last.iter_mut().zip(commands) {
        r.commands = all;
        if matches!(r.outcome, lab_hv::Outcome::Done) {
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
    let mut writer: Box<dyn Write + Send> = match (&s.write, s.dry_run) {
        (_, true) => Box::new(std::io::sink()),
        (Some(path), false) => Box::new(std::fs::File::create(path).map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot write {}: {e}", path.display()),
            )
        })?),
        (None, false) => Box::new(std::io::stdout()),
    };
    let mut write_error = None;
    let mut sink = |bytes: &[u8]| match writer.write_all(bytes).and_then(|()| writer.flush()) {
        Ok(()) => true,
        // The reader went away (`| head`, Wireshark closed): the capture ends, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(e) => {
            write_error = Some(e);
            false
        }
    };
    let hv = lab.hypervisor_of(end.node);
    let (report, recorded) = drive_stoppable(executor_for(&[hv], s.mode()), async |e, stop| {
        let report = link::capture(e, &lab, end, &s.ask, &mut sink, stop).await;
        (report, e.recorded())
    })?;
    let report = report?;
    if let Some(e) = write_error {
        return Err(Failure::new(
            Exit::Failure,
            format!("the capture could not be written: {e}"),
        ));
    }
    if s.dry_run {
        render::recorded(out, &recorded);
        return Ok(());
    }
    render::capture(out, &report, s.write.is_some());
    Ok(())
}
