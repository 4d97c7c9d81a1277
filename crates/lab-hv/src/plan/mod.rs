//! One exchange per hypervisor: every node's steps there go in one remote command (see
//! [`script`]: a boot script fed the plan's script, then the nodes' trees), and come back as
//! one stream of lines: a step starting, a node done, a node failed with its step, status and
//! error. Each node's steps run in order and a failed step ends that node only; `parallel`
//! nodes run at once; a step zfs calls "busy" is tried again, as [`crate::run::run_patiently`]
//! does. The whole command runs behind the executor's guard, and each step looks again that
//! the lab's lock is still this run's (else that node fails, lock lost, and so does every
//! step after it). The plan travels on stdin, so its size has no limit (a command line does:
//! 128 KiB per argument on Linux). [`each`] runs a verb's per-node decisions through plans on
//! every hypervisor at once.

mod each;
mod script;

pub use each::{Work, each_hypervisor, each_hypervisor_then};
use script::{HYPERVISOR, HYPERVISOR_LAST, step_line, step_lines};
pub use script::{plan_cmd, plan_script, shown_step};

use std::collections::HashMap;
use std::sync::Mutex;

use lab_exec::{Cmd, ExecError, Executor, quote_line};
use lab_model::{Hypervisor, LabNode};

use crate::{Event, Events};

/// One node's steps in its hypervisor's plan, in order. The steps from `last_wave` on run in
/// the plan's last wave: after every node's earlier steps, for every node at once, while the
/// plan holds the hypervisor's `wires.lock` (starting nodes whose wires' ports are looked at
/// first: see [`crate::cmd::start_under_wires_lock`]).
pub struct NodePlan<'a> {
    pub node: &'a LabNode,
    pub steps: Vec<(&'static str, Cmd)>,
    pub last_wave: usize,
    /// Its batch in the last wave (from 0): each batch starts after the one before it has,
    /// [`Extras::start_interval`] seconds later.
    pub batch: usize,
}

impl<'a> NodePlan<'a> {
    /// Every step in the first wave.
    pub fn new(node: &'a LabNode, steps: Vec<(&'static str, Cmd)>) -> NodePlan<'a> {
        let last_wave = steps.len();
        NodePlan {
            node,
            steps,
            last_wave,
            batch: 0,
        }
    }

    fn waits(&self) -> bool {
        self.last_wave < self.steps.len()
    }

    /// The index of its domain's definition when the plan's define wave runs it (see
    /// [`script::plan_script`]): a `virsh define` fed the definition, as the last step of
    /// its first wave.
    fn defined_in_wave(&self) -> Option<usize> {
        let i = self.last_wave.checked_sub(1)?;
        let (_, cmd) = &self.steps[i];
        (cmd.argv == crate::cmd::DEFINE_ARGV && cmd.stdin.is_some()).then_some(i)
    }

    /// The index of its clone's ready mark when the plan's ready wave sets it (see
    /// [`script::plan_script`]): a [`crate::cmd::mark_ready`] right before the steps the
    /// waves run (its definition, or its last wave).
    fn ready_in_wave(&self) -> Option<usize> {
        let i = self
            .defined_in_wave()
            .unwrap_or(self.last_wave)
            .checked_sub(1)?;
        let (_, cmd) = &self.steps[i];
        let ready =
            cmd.argv.len() == 4 && cmd.argv[..3] == crate::cmd::READY_ARGV && cmd.stdin.is_none();
        ready.then_some(i)
    }

    /// The node as functions of the plan script: `n<index>` its first wave, `r<index>` its
    /// ready mark after the ready wave, `d<index>` its definition after the define wave (when
    /// the waves take them), `f<index>` its last wave (when it has one), each ended by a
    /// failure; `DONE` after the last step.
    fn function(&self, index: usize) -> String {
        let (ready, define) = (self.ready_in_wave(), self.defined_in_wave());
        let mut body = format!("n{index}() {{\n");
        let first_end = ready.or(define).unwrap_or(self.last_wave);
        body.push_str(&step_lines(&self.node.name, &self.steps, 0..first_end));
        let name = quote_line(std::slice::from_ref(&self.node.name));
        if ready.is_some() {
            body.push_str(&format!("  : >\"$_tmp/rdy/{index}\"\n"));
        }
        if let Some(define) = define {
            // Written now, left for the define wave (gone again if the ready mark fails: see
            // `plan_script`).
            let xml =
                String::from_utf8_lossy(self.steps[define].1.stdin.as_deref().unwrap_or_default());
            let write = quote_line(&["printf".to_owned(), "%s".to_owned(), xml.into_owned()]);
            body.push_str(&format!("  {write} >\"$_tmp/def/{index}.xml\"\n"));
        }
        if let Some(r) = ready {
            // Passed when the ready wave's `zfs set` did; else its own, as any step.
            let (step, cmd) = &self.steps[r];
            let line = step_line("_readied", &self.node.name, r, step, cmd);
            body.push_str(&format!("}}\nr{index}() {{\n{line}"));
        }
        if let Some(define) = define {
            let step = quote_line(&[self.steps[define].0.to_owned()]);
            body.push_str(&format!(
                "}}\nd{index}() {{\n  _defined {name} {index} {define} {step} || return\n"
            ));
        }
        if self.waits() {
            body.push_str(&format!("  : >\"$_ok/{index}\"\n}}\nf{index}() {{\n"));
            let wave = self.last_wave..self.steps.len();
            body.push_str(&step_lines(&self.node.name, &self.steps, wave));
        }
        // Also counted in `$_done` (the plan's steps after every node's ask).
        body.push_str(&format!(
            "  echo {}\n  : >\"$_done/{index}\"\n}}\n",
            quote_line(&[format!("DONE {}", self.node.name)])
        ));
        body
    }

    /// The steps as they run on the hypervisor (inside the runner), for `--dry-run`.
    pub fn shown(&self) -> Vec<String> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, (_, cmd))| {
                let held = if i >= self.last_wave {
                    "(the plan's last wave, holding wires.lock) "
                } else {
                    ""
                };
                if Some(i) == self.defined_in_wave() {
                    return DEFINE_WAVE.to_owned();
                }
                if Some(i) == self.ready_in_wave() {
                    return format!(
                        "(the plan's ready wave: one zfs set for the hypervisor's nodes) {}",
                        shown_step(cmd)
                    );
                }
                format!("{held}{}", shown_step(cmd))
            })
            .collect()
    }
}

/// A definition the define wave made, as `--dry-run` shows it and a failure names it.
const DEFINE_WAVE: &str = "(the plan's define wave: one virsh for the hypervisor's nodes) \
                           virsh define {its definition} <<< (stdin)";

/// What the runner said of a node (or of the hypervisor's own steps).
#[derive(Default)]
struct Said {
    /// The step it was at.
    current: Option<usize>,
    /// Its end: done (`None`), or the failed step (its index) and status.
    ended: Option<Option<(usize, i32)>>,
    /// The failed step's error, a line each.
    errors: Vec<String>,
    /// What its steps printed, a line each.
    printed: Vec<String>,
}

/// How one node's steps ended: done, with what they printed (a line each), or the step that
/// failed and why.
pub type StepsResult = Result<Vec<String>, (&'static str, ExecError)>;

/// How a hypervisor's own steps ended: `None` when it had none (or, for the steps after
/// the nodes', when they did not run because a node failed).
pub type FirstResult = Option<Result<(), (&'static str, ExecError)>>;

/// How a hypervisor's plan ended (see [`run_with`]).
pub struct Ran {
    /// The hypervisor's steps before the nodes'.
    pub first: FirstResult,
    /// The hypervisor's steps after the nodes'.
    pub last: FirstResult,
    /// Each node's, in the order of the plans.
    pub nodes: Vec<StepsResult>,
    /// What the hypervisor's steps before the nodes' printed, a line each.
    pub printed_first: Vec<String>,
}

/// Runs `plans` of `lab` on `hv`, with `extras` (the hypervisor's own steps, the nodes'
/// trees), in one exchange; a result per plan, in order, with a `Step` event as each step
/// starts. When the hypervisor's first steps fail, no node's step ran: every node's result is
/// that failure, at its first step. Its last steps run only when every node's passed.
/// Without a live executor (dry run, plan tests) the command is recorded and every node
/// counts as done.
pub async fn run_with(
    exec: &Executor,
    hv: &Hypervisor,
    lab: &str,
    plans: &[NodePlan<'_>],
    extras: &Extras,
    events: Events<'_>,
) -> Ran {
    if plans.is_empty() && extras.first.is_empty() && extras.last.is_empty() {
        return Ran {
            first: None,
            last: None,
            nodes: Vec::new(),
            printed_first: Vec::new(),
        };
    }
    let cmd = plan_cmd(hv, lab, plans, extras);
    // Per node, and for the hypervisor's own steps: what the runner said.
    let said: Mutex<HashMap<String, Said>> = Mutex::new(HashMap::new());
    let by_name: HashMap<&str, &NodePlan<'_>> =
        plans.iter().map(|p| (p.node.name.as_str(), p)).collect();
    let on_line = |line: &str| {
        let mut words = line.splitn(3, ' ');
        let (kind, who, rest) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
        );
        let steps = match who {
            HYPERVISOR => &extras.first,
            HYPERVISOR_LAST => &extras.last,
            node => match by_name.get(node) {
                Some(plan) => &plan.steps,
                None => return,
            },
        };
        // `STEP INDEX NAME`, `FAIL STATUS INDEX NAME`: the index, when it is one of these
        // steps'.
        let index = |word: Option<&str>| {
            word.and_then(|w| w.parse::<usize>().ok())
                .filter(|i| *i < steps.len())
        };
        let mut said = said.lock().expect("plan results");
        let entry = said.entry(who.to_owned()).or_default();
        match kind {
            "STEP" => {
                if let Some(i) = index(rest.split(' ').next()) {
                    entry.current = Some(i);
                    if let Some(plan) = by_name.get(who) {
                        events(Event::Step {
                            node: plan.node.name.clone(),
                            hypervisor: hv.name.clone(),
                            step: steps[i].0,
                        });
                    }
                }
            }
            "DONE" => entry.ended = Some(None),
            "FAIL" => {
                let mut f = rest.splitn(3, ' ');
                let status = f.next().and_then(|s| s.parse().ok()).unwrap_or(1);
                let i = index(f.next()).or(entry.current).unwrap_or(0);
                entry.ended = Some(Some((i, status)));
            }
            "ERR" => entry.errors.push(rest.to_owned()),
            "OUT" => entry.printed.push(rest.to_owned()),
            _ => {}
        }
    };
    let outcome = exec.stream(&hv.name, &cmd, &on_line).await;
    if !exec.is_live() {
        return Ran {
            first: (!extras.first.is_empty()).then_some(Ok(())),
            last: (!extras.last.is_empty()).then_some(Ok(())),
            nodes: plans.iter().map(|_| Ok(Vec::new())).collect(),
            printed_first: Vec::new(),
        };
    }
    let mut said = said.into_inner().expect("plan results");
    // Not run (a node failed): no word of the hypervisor's last steps.
    let last_ran = said.contains_key(HYPERVISOR_LAST);
    let mut result_of = |who: &str, steps: &[(&'static str, Cmd)]| -> StepsResult {
        let s = said.remove(who).unwrap_or_default();
        let lock_lost = || ExecError::LockLost {
            host: hv.name.clone(),
        };
        match (s.ended, &outcome) {
            (Some(None), _) => Ok(s.printed),
            (Some(Some((i, status))), _) => Err((
                steps[i].0,
                if status == lab_exec::LOCK_GONE {
                    lock_lost()
                } else {
                    ExecError::Failed {
                        host: hv.name.clone(),
                        // (Not the step's own `virsh -q define /dev/stdin`: the wave ran it.)
                        command: match by_name.get(who) {
                            Some(plan) if plan.defined_in_wave() == Some(i) => {
                                DEFINE_WAVE.to_owned()
                            }
                            _ => steps[i].1.line(),
                        },
                        status,
                        stderr: s.errors.join("\n"),
                    }
                },
            )),
            // No word of its end: the exchange itself ended, at whatever step it was.
            (None, outcome) => {
                let step = steps[s.current.unwrap_or(0)].0;
                Err((
                    step,
                    match outcome {
                        Err(e) => e.clone(),
                        Ok(out) if out.status == lab_exec::LOCK_GONE => lock_lost(),
                        Ok(out) => ExecError::Failed {
                            host: hv.name.clone(),
                            command: "the hypervisor's plan (sh -c ... lab-plan)".to_owned(),
                            status: out.status,
                            stderr: out.stderr.trim().to_owned(),
                        },
                    },
                ))
            }
        }
    };
    let first = (!extras.first.is_empty()).then(|| result_of(HYPERVISOR, &extras.first));
    let printed_first = match &first {
        Some(Ok(printed)) => printed.clone(),
        _ => Vec::new(),
    };
    let first = first.map(|r| r.map(drop));
    // Not run (a node failed): `None`; begun but not ended: what ended it.
    let last = last_ran.then(|| result_of(HYPERVISOR_LAST, &extras.last).map(drop));
    if let Some(Err((_, e))) = &first {
        let nodes = plans.iter().map(|p| Err((p.steps[0].0, e.clone())));
        return Ran {
            first: first.clone(),
            last,
            nodes: nodes.collect(),
            printed_first,
        };
    }
    let results = plans
        .iter()
        .map(|plan| result_of(&plan.node.name, &plan.steps))
        .collect();
    Ran {
        first,
        last,
        nodes: results,
        printed_first,
    }
}

/// What a hypervisor's plan carries besides its nodes' steps.
#[derive(Default)]
pub struct Extras {
    /// Steps of the hypervisor itself (its management network), run before any node's; when
    /// one fails, no node's step runs.
    pub first: Vec<(&'static str, Cmd)>,
    /// Steps of the hypervisor run after every node's, only when every node's steps passed
    /// (its management network removed after the nodes that used it).
    pub last: Vec<(&'static str, Cmd)>,
    /// The nodes' trees, sent in the same exchange (see [`Trees`]).
    pub trees: Option<Trees>,
    /// Seconds between two batches of the last wave (see [`NodePlan::batch`]).
    pub start_interval: u64,
}

/// A tar archive that the plan unpacks into [`crate::lock::trees_dir`] before any step runs,
/// and removes when it ends; steps copy from there.
pub struct Trees {
    pub archive: Vec<u8>,
}

/// A node's tree as its part of [`Trees`]: a tar archive of `tree` under `name/`, symlinks
/// kept as symlinks. (The plan unpacks the nodes' archives one after the other: `tar -i`.)
pub fn tree_archive(name: &str, tree: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(name, tree)?;
    tar.into_inner()
}
