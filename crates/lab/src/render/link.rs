//! `lab link`'s table, `lab capture`'s summary, and the commands of a dry run that has no
//! node reports (a capture's).

use std::io::Write;

use crate::render::print_json;
use crate::settings::{Format, Output};

/// `lab link`: a line per link, its two ends (node:interface, hypervisor, state), the UDP
/// ports its wire's ends bind and each direction's impairment; or one JSON document.
pub fn links(out: &Output, links: &[lab_reach::link::LinkState]) {
    if out.format == Format::Json {
        print_json(&serde_json::json!({ "links": links }));
        return;
    }
    let end =
        |e: &lab_reach::link::EndState| format!("{}:{} ({})", e.node, e.interface, e.hypervisor);
    let width = links
        .iter()
        .flat_map(|l| l.ends.iter().map(|e| end(e).len()))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "{:<4}  {:<width$}  {:<7}  {:<width$}  {:<7}  WIRE",
        "LINK", "A", "STATE", "B", "STATE"
    );
    for l in links {
        let [a, b] = &l.ends;
        let impaired: Vec<String> = [(a, b), (b, a)]
            .iter()
            .filter_map(|(from, to)| {
                from.impaired
                    .map(|how| format!("  {} -> {}: {how}", from.node, to.node))
            })
            .collect();
        let _ = writeln!(
            stdout,
            "{:<4}  {:<width$}  {:<7}  {:<width$}  {:<7}  {}:{} <-> {}:{}{}",
            l.link,
            end(a),
            a.state,
            end(b),
            b.state,
            a.address,
            a.port,
            b.address,
            b.port,
            impaired.concat()
        );
    }
}

/// `lab capture`'s summary: on stderr after a capture to stdout or a file (JSON on stdout
/// with -w).
pub fn capture(out: &Output, r: &lab_reach::link::CaptureReport, to_file: bool) {
    if out.format == Format::Json && to_file {
        print_json(r);
        return;
    }
    if out.quiet {
        return;
    }
    let why = match r.ended {
        "count" => "count reached",
        "duration" => "duration over",
        "stopped" => "stopped",
        "limit" => "its longest: a day",
        _ => "ended on the hypervisor",
    };
    if let Some(w) = &r.warning {
        eprintln!("lab: {} says: {w}", r.hypervisor);
    }
    eprintln!(
        "lab: {} frame(s), {} bytes of pcap, from {}:{} on {} in {} s ({why})",
        r.frames, r.bytes, r.node, r.interface, r.hypervisor, r.seconds
    );
}

/// What a dry run would send, one line per command, `HOST $ LINE`; or one JSON document.
pub fn recorded(out: &Output, commands: &[lab_exec::Recorded]) {
    if out.format == Format::Json {
        print_json(&serde_json::json!({ "dry_run": true, "commands": commands }));
        return;
    }
    let mut stdout = std::io::stdout().lock();
    for c in commands {
        let _ = writeln!(stdout, "{} $ {}", c.host, c.line);
    }
}
