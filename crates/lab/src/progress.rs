//! Progress display: bars on a terminal, nothing (or plain lines with -v later) otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use lab_generate::Event;

/// Renders generator events. On a terminal it draws a bar; elsewhere (cron, CI, pipes) it stays
/// quiet, as a successful `generate` has nothing to say.
pub struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            bar: Mutex::new(None),
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    pub fn on_event(&self, event: Event) {
        if !self.enabled {
            return;
        }
        let mut bar = self.bar.lock().expect("progress lock");
        match event {
            Event::Started { overlay, nodes } => {
                let b = ProgressBar::new(nodes as u64);
                b.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                        .expect("the template is valid")
                        .progress_chars("=> "),
                );
                b.set_prefix(format!("generate {overlay}"));
                *bar = Some(b);
            }
            Event::NodeDone { node, hypervisor } => {
                if let Some(b) = bar.as_ref() {
                    b.set_message(format!("{hypervisor}/{node}"));
                    b.inc(1);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }
}

/// Renders create/destroy events: a line per node with its current step on a terminal, plain
/// log lines on stderr otherwise (cron, CI), every step with timestamps with --verbose,
/// nothing with --quiet.
pub struct NodeProgress {
    bars: Option<Bars>,
    plain: bool,
    /// With --verbose: when the run started, for the timestamps.
    steps: Option<std::time::Instant>,
}

type Bars = (
    indicatif::MultiProgress,
    Mutex<std::collections::HashMap<String, ProgressBar>>,
);

impl NodeProgress {
    pub fn new(quiet: bool, verbose: bool, nodes: &[(&str, &str)]) -> NodeProgress {
        if quiet {
            return NodeProgress {
                bars: None,
                plain: false,
                steps: None,
            };
        }
        if verbose || !std::io::stderr().is_terminal() {
            return NodeProgress {
                bars: None,
                plain: true,
                steps: verbose.then(std::time::Instant::now),
            };
        }
        let multi = indicatif::MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner} {prefix:<24} {msg}")
            .expect("the template is valid");
        let mut map = std::collections::HashMap::new();
        for (node, hv) in nodes {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(format!("{hv}/{node}"));
            bar.set_message("waiting");
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            map.insert(format!("{hv}/{node}"), bar);
        }
        NodeProgress {
            bars: Some((multi, Mutex::new(map))),
            plain: false,
            steps: None,
        }
    }

    pub fn on_event(&self, event: lab_hv::Event) {
        let stamp = || {
            self.steps
                .map(|t0| format!("[{:7.3}s] ", t0.elapsed().as_secs_f64()))
                .unwrap_or_default()
        };
        if let Some((_, bars)) = &self.bars {
            let (lab_hv::Event::Step {
                node, hypervisor, ..
            }
            | lab_hv::Event::Bytes {
                node, hypervisor, ..
            }
            | lab_hv::Event::Done {
                node, hypervisor, ..
            }) = &event;
            let bars = bars.lock().expect("progress lock");
            let Some(bar) = bars.get(&format!("{hypervisor}/{node}")) else {
                return;
            };
            match event {
                lab_hv::Event::Step { step, .. } => bar.set_message(step),
                lab_hv::Event::Bytes { bytes, .. } => {
                    bar.set_message(format!("sent {}", lab_proto::sync::human_bytes(bytes)))
                }
                lab_hv::Event::Done { outcome, .. } => bar.finish_with_message(outcome),
            }
            return;
        }
        match event {
            lab_hv::Event::Step {
                node,
                hypervisor,
                step,
            } if self.steps.is_some() => {
                eprintln!("{}{hypervisor}/{node}: {step}", stamp());
            }
            lab_hv::Event::Done {
                node,
                hypervisor,
                outcome,
            } if self.plain => {
                eprintln!("{}{hypervisor}/{node}: {outcome}", stamp());
            }
            _ => {}
        }
    }

    pub fn finish(&self) {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
    }
}
