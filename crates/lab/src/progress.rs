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
