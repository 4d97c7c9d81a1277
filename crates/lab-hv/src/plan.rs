//! One exchange per hypervisor: every node's steps there go in one remote command, `sh -s`
//! fed a script: the runner's functions, then each node's steps (each the quoted command line
//! the executor would send on its own, and what it is fed, if anything), and come back as one
//! stream of lines: a step starting, a node done, a node failed with its step, status and
//! error. Each node's steps run in order and a failed step ends that node only; `parallel`
//! nodes run at once; a step zfs calls "busy" is tried again, as [`crate::run::run_patiently`]
//! does. The whole command runs behind the executor's guard, and each step looks again that
//! the lab's lock is still this run's (else that node fails, lock lost, and so does every
//! step after it). The plan travels on stdin,
//! so its size has no limit (a command line does: 128 KiB per argument on Linux).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lab_exec::{Cmd, ExecError, Executor, quote_line};
use lab_model::{Hypervisor, Lab, LabNode};

use crate::run::{States, failed};
use crate::{Event, Events, HostState, NodeReport};

/// One node's steps in its hypervisor's plan, in order. The steps from `last_wave` on run in
/// the plan's last wave: after every node's earlier steps, for every node at once, while the
/// plan holds the hypervisor's `wires.lock` (starting nodes whose wires' ports are looked at
/// first: see [`crate::cmd::start_under_wires_lock`]).
pub struct NodePlan<'a> {
    pub node: &'a LabNode,
    pub steps: Vec<(&'static str, Cmd)>,
    pub last_wave: usize,
}

impl<'a> NodePlan<'a> {
    /// Every step in the first wave.
    pub fn new(node: &'a LabNode, steps: Vec<(&'static str, Cmd)>) -> NodePlan<'a> {
        let last_wave = steps.len();
        NodePlan {
            node,
            steps,
            last_wave,
        }
    }

    fn waits(&self) -> bool {
        self.last_wave < self.steps.len()
    }

    /// The node as functions of the plan script: `n<index>` its first wave, `f<index>` its
    /// last (when it has one), each ended by a failure; `DONE` after the last step.
    fn function(&self, index: usize) -> String {
        // Also counted in `$_done` (the plan's steps after every node's ask).
        let done = format!(
            "  echo {}\n  : >\"$_done/{index}\"\n",
            quote_line(&[format!("DONE {}", self.node.name)])
        );
        let mut body = format!("n{index}() {{\n");
        body.push_str(&self.lines(&self.steps[..self.last_wave]));
        if self.waits() {
            body.push_str(&format!("  : >\"$_ok/{index}\"\n}}\nf{index}() {{\n"));
            body.push_str(&self.lines(&self.steps[self.last_wave..]));
        }
        body.push_str(&done);
        body.push_str("}\n");
        body
    }

    fn lines(&self, steps: &[(&'static str, Cmd)]) -> String {
        step_lines(&self.node.name, steps)
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
                format!("{held}{}", shown_step(cmd))
            })
            .collect()
    }
}

/// A step as the runner runs it, for `--dry-run`.
pub fn shown_step(cmd: &Cmd) -> String {
    let fed = if cmd.stdin.is_some() {
        " <<< (stdin)"
    } else {
        ""
    };
    format!(
        "timeout -k 5 {} {}{fed}",
        cmd.timeout.as_secs().max(1),
        quote_line(&cmd.argv)
    )
}

/// The runner's lines for `steps` of `who` (a node, or [`HYPERVISOR`]), each ending the
/// function when it fails.
fn step_lines(who: &str, steps: &[(&'static str, Cmd)]) -> String {
    let mut body = String::new();
    for (name, cmd) in steps {
        let secs = cmd.timeout.as_secs().max(1).to_string();
        let mut words = match &cmd.stdin {
            None => vec!["step".to_owned()],
            Some(_) => vec!["feed".to_owned()],
        };
        words.extend([who.to_owned(), (*name).to_owned(), secs]);
        if let Some(bytes) = &cmd.stdin {
            words.push(String::from_utf8_lossy(bytes).into_owned());
        }
        words.extend(cmd.argv.iter().cloned());
        let line = quote_line(&words);
        body.push_str(&format!("  {line} || return\n"));
    }
    body
}

/// The names the runner gives the hypervisor's own steps, before and after the nodes': no
/// node is called so (a hostname never starts with `-`).
const HYPERVISOR: &str = "-hypervisor";
const HYPERVISOR_LAST: &str = "-hypervisor-last";

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
}

/// A tar archive that the plan unpacks into [`crate::lock::trees_dir`] before any step runs,
/// and removes when it ends; steps copy from there.
pub struct Trees {
    pub archive: Vec<u8>,
}

/// The runner's functions. `step NODE NAME SECS COMMAND...` prints `STEP node name`, runs the
/// command under `timeout` (tried again while zfs says "busy"), passes its output on as
/// `OUT node line` lines, and on failure prints `FAIL node status name` and the error as
/// `ERR node line` lines and fails; `feed NODE NAME SECS DATA COMMAND...` is the same with
/// DATA on the command's stdin.
const RUNNER: &str = r#"trap 'rm -rf -- "$_tmp"' EXIT
_ok=$_tmp/ok _done=$_tmp/done; mkdir "$_ok" "$_done" "$_tmp/err" || exit 1
step() { _n=$1 _s=$2 _t=$3; shift 3; _run "" "$@"; }
feed() { _n=$1 _s=$2 _t=$3 _d=$4; shift 4; _run fed "$@"; }
_run() {
  _fed=$1; shift
  # Behind the guard, each step looks again: the lock file still names this run and its
  # holder still holds it (a lock nobody holds is free to anyone).
  # (`read`, not `cat`: a builtin; every step pays for what runs here.)
  _h=; [ -z "${LAB_LOCK:-}" ] || read -r _h <"$LAB_LOCK"
  if [ -n "${LAB_LOCK:-}" ] && { [ "$_h" != "$LAB_HOLDER" ] || flock -n "$LAB_LOCK" true; }; then
    echo "FAIL $_n 77 $_s"
    echo "ERR $_n the lab's lock on this hypervisor is no longer this run's: nothing more is changed"
    return 1
  fi
  echo "STEP $_n $_s"
  _err=$_tmp/err/$_n
  _tries=0
  while :; do
    if [ -n "$_fed" ]; then
      _out=$(printf '%s' "$_d" | timeout -k 5 "$_t" "$@" 2>"$_err"); _rc=$?
    else
      _out=$(timeout -k 5 "$_t" "$@" </dev/null 2>"$_err"); _rc=$?
    fi
    if [ $_rc -eq 0 ]; then
      [ -z "$_out" ] || printf '%s\n' "$_out" | sed "s/^/OUT $_n /"
      return 0
    fi
    # zfs's "busy" lasts a moment (a dataset's last users letting go): up to 5 s.
    case $(cat "$_err") in *busy*) _tries=$((_tries + 1)); if [ $_tries -lt 50 ]; then sleep 0.1; continue; fi ;; esac
    echo "FAIL $_n $_rc $_s"
    sed "s/^/ERR $_n /" "$_err"
    return 1
  done
}
"#;

/// The plan script for `plans` on `hv`: the runner, the hypervisor's own steps and each node
/// as functions, then (when the hypervisor's steps passed) the nodes started `parallel` at a
/// time.
pub fn plan_script(hv: &Hypervisor, plans: &[NodePlan<'_>], extras: &Extras) -> String {
    let mut script = RUNNER.to_owned();
    let waits = plans.iter().any(NodePlan::waits);
    let function = |name: &str, who: &str, steps: &[(&'static str, Cmd)]| {
        format!(
            "{name}() {{\n{}  echo {}\n}}\n",
            step_lines(who, steps),
            quote_line(&[format!("DONE {who}")])
        )
    };
    if !extras.first.is_empty() {
        script.push_str(&function("h", HYPERVISOR, &extras.first));
        script.push_str("h || exit 0\n");
    }
    if !extras.last.is_empty() {
        script.push_str(&function("z", HYPERVISOR_LAST, &extras.last));
    }
    for (i, plan) in plans.iter().enumerate() {
        script.push_str(&plan.function(i));
    }
    // `parallel` nodes at a time, the next one starting as soon as one ends: a FIFO holds a
    // line per free slot.
    if !plans.is_empty() {
        script.push_str(&format!(
            "mkfifo \"$_tmp/slots\" && exec 7<>\"$_tmp/slots\" || exit 1\n\
             for _i in $(seq {}); do echo >&7; done\n",
            hv.parallel.max(1)
        ));
        // The node runs in a subshell of its own: when it dies (its output gone with the
        // controller: SIGPIPE), its slot still comes back, and the plan ends.
        for (i, _) in plans.iter().enumerate() {
            script.push_str(&format!("read -r _ <&7; {{ (n{i}); echo >&7; }} &\n"));
        }
        script.push_str("wait\nexec 7>&-\n");
    }
    if waits {
        // The last wave: every node whose first wave passed, at once, holding the lock.
        let lock = quote_line(&[crate::cmd::wires_lock(hv)]);
        script.push_str(&format!("if exec 8>>{lock} && flock -w 60 8; then\n"));
        for (i, plan) in plans.iter().enumerate().filter(|(_, p)| p.waits()) {
            let _ = plan;
            script.push_str(&format!("  [ -e \"$_ok/{i}\" ] && f{i} &\n"));
        }
        script.push_str("  wait\n  exec 8>&-\nelse\n");
        for (i, plan) in plans.iter().enumerate().filter(|(_, p)| p.waits()) {
            let (name, _) = &plan.steps[plan.last_wave];
            let fail = quote_line(&[format!("FAIL {} 1 {name}", plan.node.name)]);
            let err = quote_line(&[format!(
                "ERR {} the hypervisor's {} was not free within 60 s",
                plan.node.name,
                crate::cmd::wires_lock(hv)
            )]);
            script.push_str(&format!(
                "  [ -e \"$_ok/{i}\" ] && {{ echo {fail}; echo {err}; }}\n"
            ));
        }
        script.push_str("fi\n");
    }
    if !extras.last.is_empty() {
        // After every node's steps, when every node is done.
        script.push_str(&format!(
            "[ \"$(ls -- \"$_done\" | wc -l)\" -eq {} ] && z\n",
            plans.len()
        ));
    }
    script
}

/// How the plan starts on the hypervisor: it reads its script (the first `$1` bytes of
/// stdin), makes its directory `$2` anew ([`crate::lock::plan_dir`]), unpacks the trees that
/// follow the script (`$3` bytes, a tar archive) into `$2/trees`, and runs the script, which
/// removes the directory when it ends.
const BOOT: &str = r#"size=$1 _tmp=$2 tarred=$3
script=$(head -c "$size"; echo .) || exit 1
rm -rf -- "$_tmp" && mkdir -m 0700 -- "$_tmp" || exit 1
if [ "$tarred" -gt 0 ]; then
  mkdir -- "$_tmp/trees" && head -c "$tarred" | tar -x --no-same-owner -f - -C "$_tmp/trees" ||
    { echo "the nodes' trees could not be unpacked into $_tmp/trees" >&2; rm -rf -- "$_tmp"; exit 1; }
fi
eval "${script%.}""#;

/// The one command that carries out `plans` on `hv` with `extras`: [`BOOT`], fed
/// [`plan_script`] and the trees.
pub fn plan_cmd(hv: &Hypervisor, lab: &str, plans: &[NodePlan<'_>], extras: &Extras) -> Cmd {
    // A deadline for the whole: every step's, each node after the other, with its retries,
    // and a second per MiB of trees.
    let secs: u64 = plans
        .iter()
        .flat_map(|p| &p.steps)
        .chain(&extras.first)
        .chain(&extras.last)
        .map(|(_, c)| c.timeout.as_secs().max(1) + 5)
        .sum();
    let script = plan_script(hv, plans, extras);
    let archive: &[u8] = extras.trees.as_ref().map_or(&[], |t| &t.archive);
    let dir = crate::lock::plan_dir(hv, lab);
    let mut stdin = script.clone().into_bytes();
    stdin.extend_from_slice(archive);
    Cmd::change([
        "sh",
        "-c",
        BOOT,
        "lab-plan",
        &script.len().to_string(),
        &dir,
        &archive.len().to_string(),
    ])
    .stdin(stdin)
    .timeout(Duration::from_secs(
        secs.max(60) + (archive.len() as u64 >> 20),
    ))
}

/// What the runner said of a node: the failed step (its index) and status, or none when it
/// is done; and the error's lines.
type Ended = (Option<(usize, i32)>, Vec<String>);

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
        };
    }
    let cmd = plan_cmd(hv, lab, plans, extras);
    // The hypervisor's own steps, before and after the nodes': how each ended.
    let own: Mutex<HashMap<&str, Ended>> = Mutex::new(HashMap::new());
    let by_name: HashMap<&str, &NodePlan<'_>> =
        plans.iter().map(|p| (p.node.name.as_str(), p)).collect();
    // Per node: the failed step (its index), status and error lines, or done.
    let ended: Mutex<HashMap<String, Ended>> = Mutex::new(HashMap::new());
    let printed: Mutex<HashMap<String, Vec<String>>> = Mutex::new(HashMap::new());
    let on_line = |line: &str| {
        let mut words = line.splitn(3, ' ');
        let (kind, node, rest) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
        );
        let own_steps = match node {
            HYPERVISOR => Some((HYPERVISOR, &extras.first)),
            HYPERVISOR_LAST => Some((HYPERVISOR_LAST, &extras.last)),
            _ => None,
        };
        if let Some((who, steps)) = own_steps {
            let mut own = own.lock().expect("plan results");
            match kind {
                "DONE" => {
                    own.insert(who, (None, Vec::new()));
                }
                "FAIL" => {
                    let (status, name) = rest.split_once(' ').unwrap_or(("1", rest));
                    let i = steps.iter().position(|(n, _)| *n == name).unwrap_or(0);
                    own.insert(who, (Some((i, status.parse().unwrap_or(1))), Vec::new()));
                }
                "ERR" => {
                    if let Some((_, lines)) = own.get_mut(who) {
                        lines.push(rest.to_owned());
                    }
                }
                _ => {}
            }
            return;
        }
        let Some(plan) = by_name.get(node) else {
            return;
        };
        let step_index = |name: &str| plan.steps.iter().position(|(n, _)| *n == name);
        let mut ended = ended.lock().expect("plan results");
        match kind {
            "STEP" => {
                if let Some(i) = step_index(rest) {
                    events(Event::Step {
                        node: plan.node.name.clone(),
                        hypervisor: hv.name.clone(),
                        step: plan.steps[i].0,
                    });
                }
            }
            "DONE" => {
                ended.insert(node.to_owned(), (None, Vec::new()));
            }
            "FAIL" => {
                let (status, name) = rest.split_once(' ').unwrap_or(("1", rest));
                let i = step_index(name).unwrap_or(0);
                ended.insert(
                    node.to_owned(),
                    (Some((i, status.parse().unwrap_or(1))), Vec::new()),
                );
            }
            "ERR" => {
                if let Some((_, lines)) = ended.get_mut(node) {
                    lines.push(rest.to_owned());
                }
            }
            "OUT" => printed
                .lock()
                .expect("plan output")
                .entry(node.to_owned())
                .or_default()
                .push(rest.to_owned()),
            _ => {}
        }
    };
    let outcome = exec.stream(&hv.name, &cmd, &on_line).await;
    if !exec.is_live() {
        return Ran {
            first: (!extras.first.is_empty()).then_some(Ok(())),
            last: (!extras.last.is_empty()).then_some(Ok(())),
            nodes: plans.iter().map(|_| Ok(Vec::new())).collect(),
        };
    }
    let mut own = own.into_inner().expect("plan results");
    let failed_step =
        |steps: &[(&'static str, Cmd)], (i, status): (usize, i32), lines: Vec<String>| {
            let (name, cmd) = &steps[i];
            let e = if status == lab_exec::LOCK_GONE {
                ExecError::LockLost {
                    host: hv.name.clone(),
                }
            } else {
                ExecError::Failed {
                    host: hv.name.clone(),
                    command: cmd.line(),
                    status,
                    stderr: lines.join("\n"),
                }
            };
            Err((*name, e))
        };
    let first = match (own.remove(HYPERVISOR), &outcome) {
        _ if extras.first.is_empty() => None,
        (Some((None, _)), _) => Some(Ok(())),
        (Some((Some(failed), lines)), _) => Some(failed_step(&extras.first, failed, lines)),
        (None, Err(e)) => Some(Err((extras.first[0].0, e.clone()))),
        (None, Ok(out)) => Some(Err((
            extras.first[0].0,
            ExecError::Failed {
                host: hv.name.clone(),
                command: "the hypervisor's plan (sh -c ... lab-plan)".to_owned(),
                status: out.status,
                stderr: out.stderr.trim().to_owned(),
            },
        ))),
    };
    // Not run (a node failed, or the exchange ended before): `None`.
    let last = match own.remove(HYPERVISOR_LAST) {
        Some((None, _)) => Some(Ok(())),
        Some((Some(failed), lines)) => Some(failed_step(&extras.last, failed, lines)),
        None => None,
    };
    if let Some(Err((_, e))) = &first {
        let nodes = plans.iter().map(|p| Err((p.steps[0].0, e.clone())));
        return Ran {
            first: first.clone(),
            last,
            nodes: nodes.collect(),
        };
    }
    let ended = ended.into_inner().expect("plan results");
    let mut printed = printed.into_inner().expect("plan output");
    let results = plans
        .iter()
        .map(|plan| match (ended.get(&plan.node.name), &outcome) {
            (Some((None, _)), _) => Ok(printed.remove(&plan.node.name).unwrap_or_default()),
            (Some((Some((i, lab_exec::LOCK_GONE)), _)), _) => Err((
                plan.steps[*i].0,
                ExecError::LockLost {
                    host: hv.name.clone(),
                },
            )),
            (Some((Some((i, status)), lines)), _) => {
                let (name, cmd) = &plan.steps[*i];
                Err((
                    *name,
                    ExecError::Failed {
                        host: hv.name.clone(),
                        command: cmd.line(),
                        status: *status,
                        stderr: lines.join("\n"),
                    },
                ))
            }
            // No word about this node: the exchange itself failed.
            (None, Err(e)) => Err((plan.steps[0].0, e.clone())),
            (None, Ok(out)) if out.status == lab_exec::LOCK_GONE => Err((
                plan.steps[0].0,
                ExecError::LockLost {
                    host: hv.name.clone(),
                },
            )),
            (None, Ok(out)) => Err((
                plan.steps[0].0,
                ExecError::Failed {
                    host: hv.name.clone(),
                    command: "the hypervisor's plan (sh -c ... lab-plan)".to_owned(),
                    status: out.status,
                    stderr: out.stderr.trim().to_owned(),
                },
            )),
        })
        .collect();
    Ran {
        first,
        last,
        nodes: results,
    }
}

/// What a verb has for one node: steps for its hypervisor's plan, with what the verb wants to
/// know again when they have run (`T`), or its report already (skipped, unchanged, not
/// inspectable).
pub enum Work<T> {
    Steps(Vec<(&'static str, Cmd)>, T),
    Ends(Box<NodeReport>),
}

/// Every node of `nodes`, decided by `decide` from its hypervisor's probed state; each
/// hypervisor's steps then go in one exchange, all hypervisors at once (one after the other
/// without a live executor, so that each recorded plan is its own), and `finish` makes each
/// node's report from what `decide` kept for it and how its steps ended. Reports in the order of `nodes`, with a
/// `Done` event as each is known; with `--dry-run`, each carries the lines its steps run.
pub async fn each_hypervisor<'a, T, D, F>(
    exec: &Executor,
    lab: &'a Lab,
    nodes: &[&'a LabNode],
    states: &States<'_>,
    events: Events<'_>,
    decide: D,
    finish: F,
) -> Vec<NodeReport>
where
    D: Fn(&'a Hypervisor, &'a LabNode, &HostState) -> Work<T>,
    F: Fn(&'a LabNode, T, StepsResult) -> NodeReport,
{
    let after = |_: &Hypervisor| Vec::new();
    each_hypervisor_then(exec, lab, nodes, states, events, decide, finish, after)
        .await
        .0
}

/// [`each_hypervisor`], with steps of each hypervisor's own (`after`) that its plan runs after
/// every node's, when every node's steps passed; and how they ended, per hypervisor that had
/// any (`None`: not run).
#[allow(clippy::too_many_arguments)]
pub async fn each_hypervisor_then<'a, T, D, F, A>(
    exec: &Executor,
    lab: &'a Lab,
    nodes: &[&'a LabNode],
    states: &States<'_>,
    events: Events<'_>,
    decide: D,
    finish: F,
    after: A,
) -> (
    Vec<NodeReport>,
    Vec<(&'a Hypervisor, FirstResult, Vec<String>)>,
)
where
    D: Fn(&'a Hypervisor, &'a LabNode, &HostState) -> Work<T>,
    F: Fn(&'a LabNode, T, StepsResult) -> NodeReport,
    A: Fn(&'a Hypervisor) -> Vec<(&'static str, Cmd)>,
{
    let done = |report: &NodeReport| crate::run::report_done(events, report);
    let (decide, finish, done, after) = (&decide, &finish, &done, &after);
    let jobs = lab.hypervisors_of(nodes).into_iter().map(|hv| async move {
        let here = nodes.iter().copied().filter(|n| n.hypervisor == hv.name);
        let state = match &states[hv.name.as_str()] {
            Err(e) => {
                let reports: Vec<NodeReport> =
                    here.map(|n| failed(n, "connect", e, false)).collect();
                reports.iter().for_each(done);
                return (reports, None);
            }
            Ok(state) => state,
        };
        let mut reports = Vec::new();
        let (mut plans, mut kept) = (Vec::new(), Vec::new());
        for node in here {
            match decide(hv, node, state) {
                Work::Ends(report) => {
                    done(&report);
                    reports.push(*report);
                }
                Work::Steps(steps, keep) => {
                    plans.push(NodePlan::new(node, steps));
                    kept.push(keep);
                }
            }
        }
        let extras = Extras {
            last: after(hv),
            ..Extras::default()
        };
        let shown: Vec<String> = if exec.is_live() {
            Vec::new()
        } else {
            extras.last.iter().map(|(_, c)| shown_step(c)).collect()
        };
        let ran = run_with(exec, hv, &lab.name, &plans, &extras, events).await;
        for ((plan, keep), result) in plans.iter().zip(kept).zip(ran.nodes) {
            let mut report = finish(plan.node, keep, result);
            if !exec.is_live() {
                report.commands = plan.shown();
            }
            done(&report);
            reports.push(report);
        }
        let last = (!extras.last.is_empty()).then_some((hv, ran.last, shown));
        (reports, last)
    });
    let per_hypervisor = crate::run::at_once_when_live(exec, jobs.collect()).await;
    let (reports, lasts): (Vec<_>, Vec<_>) = per_hypervisor.into_iter().unzip();
    (
        crate::run::in_node_order(nodes, reports),
        lasts.into_iter().flatten().collect(),
    )
}
