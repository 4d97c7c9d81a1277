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
use lab_model::{Hypervisor, LabNode};

use crate::{Event, Events};

/// One node's steps in its hypervisor's plan, in order.
pub struct NodePlan<'a> {
    pub node: &'a LabNode,
    pub steps: Vec<(&'static str, Cmd)>,
}

impl NodePlan<'_> {
    /// Each step as the runner gets it: `name TAB seconds TAB command line`.
    fn lines(&self) -> String {
        self.steps
            .iter()
            .map(|(name, cmd)| {
                format!(
                    "{name}\t{}\t{}\n",
                    cmd.timeout.as_secs().max(1),
                    quote_line(&cmd.argv)
                )
            })
            .collect()
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

/// The runner. Arguments: how many nodes at once, then a node's name and its steps (one per
/// line: name, a tab, the timeout in seconds, a tab, the quoted command line) for each node.
/// Prints `STEP node name`, then `DONE node`, or `FAIL node status name` and the error as
/// `ERR node line` lines.
const RUNNER: &str = r#"par=$1; shift
tab=$(printf '\t')
run_node() {
  printf '%s' "$2" | while IFS="$tab" read -r step t cmd; do
    echo "STEP $1 $step"
    tries=0
    while :; do
      out=$(eval "timeout -k 5 $t $cmd" </dev/null 2>&1) && break
      rc=$?
      case $out in *busy*) tries=$((tries + 1)); if [ $tries -lt 10 ]; then sleep 0.5; continue; fi ;; esac
      echo "FAIL $1 $rc $step"
      printf '%s\n' "$out" | sed "s/^/ERR $1 /"
      exit 1
    done
  done && echo "DONE $1"
}
running=0
while [ $# -ge 2 ]; do
  run_node "$1" "$2" &
  shift 2
  running=$((running + 1))
  if [ "$running" -ge "$par" ]; then wait; running=0; fi
done
wait"#;

/// The one command that carries out `plans` on `hv`.
pub fn plan_cmd(hv: &Hypervisor, plans: &[NodePlan<'_>]) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", RUNNER, "lab-plan"].map(String::from).to_vec();
    argv.push(hv.parallel.max(1).to_string());
    for plan in plans {
        argv.push(plan.node.name.clone());
        argv.push(plan.lines());
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

/// How one node's steps ended: done, or the step that failed and why.
pub type StepsResult = Result<(), (&'static str, ExecError)>;

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
            _ => {}
        }
    };
    let outcome = exec.stream(&hv.name, &cmd, &on_line).await;
    if !exec.is_live() {
        return plans.iter().map(|_| Ok(())).collect();
    }
    let ended = ended.into_inner().expect("plan results");
    plans
        .iter()
        .map(|plan| match (ended.get(&plan.node.name), &outcome) {
            (Some((None, _)), _) => Ok(()),
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
