//! One exchange per hypervisor: every node's steps there go in one remote command, a constant
//! runner script whose arguments are the steps themselves (each a quoted command line, as the
//! executor would send it on its own), and come back as one stream of lines: a step starting,
//! a node done, a node failed with its step, status and error. Each node's steps run in order
//! and a failed step ends that node only; `parallel` nodes run at once; a step zfs calls
//! "busy" is tried again, as [`crate::run::run_patiently`] does. The whole command runs behind
//! the executor's guard, once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lab_exec::{Cmd, ExecError, Executor, quote_line};
use lab_model::{Hypervisor, Lab, LabNode};

use crate::run::{States, failed};
use crate::{Event, Events, HostState, NodeReport};

/// One node's steps in its hypervisor's plan, in order.
pub struct NodePlan<'a> {
    pub node: &'a LabNode,
    pub steps: Vec<(&'static str, Cmd)>,
}

impl NodePlan<'_> {
    /// The node as the runner gets it: its name, how many steps, then each step's name,
    /// timeout in seconds and quoted command line (which may hold newlines: each is an
    /// argument of its own).
    fn args(&self) -> Vec<String> {
        let mut args = vec![self.node.name.clone(), self.steps.len().to_string()];
        for (name, cmd) in &self.steps {
            args.push((*name).to_owned());
            args.push(cmd.timeout.as_secs().max(1).to_string());
            args.push(quote_line(&cmd.argv));
        }
        args
    }

    /// The steps as they run on the hypervisor (inside the runner), for `--dry-run`.
    pub fn shown(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|(_, cmd)| {
                format!(
                    "timeout -k 5 {} {}",
                    cmd.timeout.as_secs().max(1),
                    quote_line(&cmd.argv)
                )
            })
            .collect()
    }
}

/// The runner. Arguments: how many nodes at once, then for each node its name, its number of
/// steps K, and K times a step's name, timeout in seconds and quoted command line. Prints
/// `STEP node name`, a step's output as `OUT node line` lines, then `DONE node`, or
/// `FAIL node status name` and the error as `ERR node line` lines.
const RUNNER: &str = r#"par=$1; shift
run_node() { # node, K, then this node's K steps (and whatever follows, unread)
  node=$1 k=$2; shift 2
  err=$(mktemp) || return 1
  while [ "$k" -gt 0 ]; do
    step=$1 t=$2 cmd=$3; shift 3; k=$((k - 1))
    echo "STEP $node $step"
    tries=0
    while :; do
      out=$(eval "timeout -k 5 $t $cmd" </dev/null 2>"$err"); rc=$?
      if [ $rc -eq 0 ]; then
        [ -z "$out" ] || printf '%s\n' "$out" | sed "s/^/OUT $node /"
        break
      fi
      case $(cat "$err") in *busy*) tries=$((tries + 1)); if [ $tries -lt 10 ]; then sleep 0.5; continue; fi ;; esac
      echo "FAIL $node $rc $step"
      sed "s/^/ERR $node /" "$err"
      rm -f "$err"
      return 1
    done
  done
  rm -f "$err"
  echo "DONE $node"
}
running=0
while [ $# -ge 2 ]; do
  run_node "$@" &
  k=$2; shift $((2 + 3 * k))
  running=$((running + 1))
  if [ "$running" -ge "$par" ]; then wait; running=0; fi
done
wait"#;

/// The one command that carries out `plans` on `hv`.
pub fn plan_cmd(hv: &Hypervisor, plans: &[NodePlan<'_>]) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", RUNNER, "lab-plan"].map(String::from).to_vec();
    argv.push(hv.parallel.max(1).to_string());
    for plan in plans {
        argv.extend(plan.args());
    }
    // A deadline for the whole: every step's, each node after the other, with its retries.
    let secs: u64 = plans
        .iter()
        .flat_map(|p| &p.steps)
        .map(|(_, c)| c.timeout.as_secs().max(1) + 5)
        .sum();
    Cmd::change(argv).timeout(Duration::from_secs(secs.max(60)))
}

/// What the runner said of a node: the failed step (its index) and status, or none when it
/// is done; and the error's lines.
type Ended = (Option<(usize, i32)>, Vec<String>);

/// How one node's steps ended: done, with what they printed (a line each), or the step that
/// failed and why.
pub type StepsResult = Result<Vec<String>, (&'static str, ExecError)>;

/// Runs `plans` on `hv` in one exchange; a result per plan, in order, with a `Step` event as
/// each step starts. Without a live executor (dry run, plan tests) the command is recorded
/// and every node counts as done.
pub async fn run(
    exec: &Executor,
    hv: &Hypervisor,
    plans: &[NodePlan<'_>],
    events: Events<'_>,
) -> Vec<StepsResult> {
    if plans.is_empty() {
        return Vec::new();
    }
    let cmd = plan_cmd(hv, plans);
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
        return plans.iter().map(|_| Ok(Vec::new())).collect();
    }
    let ended = ended.into_inner().expect("plan results");
    let mut printed = printed.into_inner().expect("plan output");
    plans
        .iter()
        .map(|plan| match (ended.get(&plan.node.name), &outcome) {
            (Some((None, _)), _) => Ok(printed.remove(&plan.node.name).unwrap_or_default()),
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
        .collect()
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
    let done = |report: &NodeReport| crate::run::report_done(events, report);
    let (decide, finish, done) = (&decide, &finish, &done);
    let jobs = lab.hypervisors_of(nodes).into_iter().map(|hv| async move {
        let here = nodes.iter().copied().filter(|n| n.hypervisor == hv.name);
        let state = match &states[hv.name.as_str()] {
            Err(e) => {
                let reports: Vec<NodeReport> =
                    here.map(|n| failed(n, "connect", e, false)).collect();
                reports.iter().for_each(done);
                return reports;
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
                    plans.push(NodePlan { node, steps });
                    kept.push(keep);
                }
            }
        }
        let results = run(exec, hv, &plans, events).await;
        for ((plan, keep), result) in plans.iter().zip(kept).zip(results) {
            let mut report = finish(plan.node, keep, result);
            if !exec.is_live() {
                report.commands = plan.shown();
            }
            done(&report);
            reports.push(report);
        }
        reports
    });
    let mut by_node: HashMap<String, NodeReport> = if exec.is_live() {
        crate::run::join_all(jobs.collect()).await
    } else {
        let mut all = Vec::new();
        for job in jobs {
            all.push(job.await);
        }
        all
    }
    .into_iter()
    .flatten()
    .map(|r| (r.node.clone(), r))
    .collect();
    nodes
        .iter()
        .filter_map(|n| by_node.remove(&n.name))
        .collect()
}
