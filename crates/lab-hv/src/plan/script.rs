//! The plan as the hypervisor runs it: the runner's shell functions, the plan script built
//! from the nodes' steps (each step's quoted command line, the line `--dry-run` prints), and
//! the boot command that reads the script and the trees from stdin.

use std::time::Duration;

use lab_exec::{Cmd, quote_line};
use lab_model::Hypervisor;

use super::{Extras, NodePlan};

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

/// The runner's lines for `steps[range]` of `who` (a node, or [`HYPERVISOR`]), each with its
/// index in `steps`, each ending the function when it fails.
pub(super) fn step_lines(
    who: &str,
    steps: &[(&'static str, Cmd)],
    range: std::ops::Range<usize>,
) -> String {
    let mut body = String::new();
    for (i, (name, cmd)) in steps.iter().enumerate().take(range.end).skip(range.start) {
        let verb = if cmd.stdin.is_some() { "feed" } else { "step" };
        body.push_str(&step_line(verb, who, i, name, cmd));
    }
    body
}

/// The runner's line for step `i` (`name`, `cmd`) of `who`, run by the runner's function
/// `verb` (`step`, `feed`, or `_readied`), ending the function when it fails.
pub(super) fn step_line(verb: &str, who: &str, i: usize, name: &str, cmd: &Cmd) -> String {
    let secs = cmd.timeout.as_secs().max(1).to_string();
    let mut words = vec![
        verb.to_owned(),
        who.to_owned(),
        i.to_string(),
        name.to_owned(),
        secs,
    ];
    if let Some(bytes) = &cmd.stdin {
        words.push(String::from_utf8_lossy(bytes).into_owned());
    }
    words.extend(cmd.argv.iter().cloned());
    format!("  {} || return\n", quote_line(&words))
}

/// The names the runner gives the hypervisor's own steps, before and after the nodes': no
/// node is called so (a hostname never starts with `-`).
pub(super) const HYPERVISOR: &str = "-hypervisor";
pub(super) const HYPERVISOR_LAST: &str = "-hypervisor-last";

/// The runner's functions. `step NODE INDEX NAME SECS COMMAND...` prints `STEP node index
/// name`, runs the command under `timeout` (tried again while zfs says "busy"), passes its
/// output on as `OUT node line` lines, and on failure prints `FAIL node status index name` and
/// the error as `ERR node line` lines and fails; `feed NODE INDEX NAME SECS DATA COMMAND...`
/// is the same with DATA on the command's stdin. `$_tmp` is the plan's directory (see
/// [`BOOT`]); it goes when the plan ends, by a signal too.
const RUNNER: &str = r#"trap 'rm -rf -- "$_tmp"' EXIT; trap 'exit 1' HUP INT TERM PIPE
_ok=$_tmp/ok _done=$_tmp/done; mkdir "$_ok" "$_done" "$_tmp/err" "$_tmp/def" "$_tmp/rdy" || exit 1
_held() {
  case ${LAB_LOCK_PID:-none} in
    none) ! flock -n "$LAB_LOCK" true ;;
    *) for _f in "/proc/$LAB_LOCK_PID/fd/"*; do [ "$_f" -ef "$LAB_LOCK" ] && return 0; done
       return 1 ;;
  esac
}
_lost() {
  [ -n "${LAB_LOCK:-}" ] || return 1
  _h=; read -r _h <"$LAB_LOCK"
  [ "$_h" != "$LAB_HOLDER" ] || ! _held
}
# `_readies SECS COMMAND...`: the ready wave. One `zfs set` marks every clone named on
# COMMAND's line ready; rdy/ok says it passed.
_readies() {
  _t=$1; shift
  [ $# -gt 3 ] || return 0
  _lost && return 0
  timeout -k 5 "$_t" "$@" </dev/null >"$_tmp/rdy/out" 2>&1 && : >"$_tmp/rdy/ok"
}
# `_readied NODE INDEX NAME SECS COMMAND...`: node's ready mark, as the ready wave left it:
# passed, or run again on its own as any step (its failure its own, the lock looked at).
_readied() {
  if [ -e "$_tmp/rdy/ok" ]; then echo "STEP $1 $2 $3"; return 0; fi
  step "$@"
}
# `_defs COMMANDS SECS`: the define wave. One virsh runs COMMANDS in $_tmp/def, where node
# I's definition is I.xml, and says what it has of node I between `lab-def-PID I` and
# `lab-def-PID .`: into I.out, with I.bad when a line of it is an error and I.end once it
# ended. (virsh goes on after a command that fails; only a number names a node's files.)
_defs() {
  [ -n "$1" ] || return 0
  if _lost; then : >"$_tmp/def/lost"; return 0; fi
  (cd "$_tmp/def" && exec timeout -k 5 "$2" virsh "$1") </dev/null >"$_tmp/def/out" 2>&1
  _c=
  while IFS= read -r _l || [ -n "$_l" ]; do
    case $_l in
      "lab-def-$$ .") [ -z "$_c" ] || : >"$_tmp/def/$_c.end"; _c= ;;
      "lab-def-$$ "*) _c=${_l#"lab-def-$$ "}; case $_c in "" | *[!0-9]*) _c= ;; esac ;;
      *) [ -n "$_c" ] || continue
         printf '%s\n' "$_l" >>"$_tmp/def/$_c.out"
         case $_l in error:*) : >"$_tmp/def/$_c.bad" ;; esac ;;
    esac
  done <"$_tmp/def/out"
}
# `_defined NODE I INDEX NAME`: node I's step INDEX (NAME), its definition, as the define
# wave left it: passed, or said failed as `step` says a failure.
_defined() {
  echo "STEP $1 $3 $4"
  if [ -e "$_tmp/def/lost" ]; then
    echo "FAIL $1 77 $3 $4"
    echo "ERR $1 the lab's lock on this hypervisor is no longer this run's: nothing more is changed"
    return 1
  fi
  [ ! -e "$_tmp/def/$2.end" ] || [ -e "$_tmp/def/$2.bad" ] || return 0
  echo "FAIL $1 1 $3 $4"
  if [ -e "$_tmp/def/$2.bad" ]; then
    grep -v '^$' "$_tmp/def/$2.out" | sed "s/^/ERR $1 /"
  else
    echo "ERR $1 virsh ended before it defined this domain; its last words:"
    grep -v '^$' "$_tmp/def/out" | tail -n 3 | sed "s/^/ERR $1 /"
  fi
  return 1
}
step() { _n=$1 _i=$2 _s=$3 _t=$4; shift 4; _run "" "$@"; }
feed() { _n=$1 _i=$2 _s=$3 _t=$4 _d=$5; shift 5; _run fed "$@"; }
_run() {
  _fed=$1; shift
  # Behind the guard, each step looks again: the lock file still names this run and its
  # holder still holds it (a lock nobody holds is free to anyone): the holder's shell still
  # has the lock file open (on fd 9, which the shell moves while a command runs without it),
  # or, with no pid known, `flock` finds it taken.
  # (Builtins where they do: every step pays for what runs here.)
  if _lost; then
    echo "FAIL $_n 77 $_i $_s"
    echo "ERR $_n the lab's lock on this hypervisor is no longer this run's: nothing more is changed"
    return 1
  fi
  echo "STEP $_n $_i $_s"
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
    echo "FAIL $_n $_rc $_i $_s"
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
            step_lines(who, steps, 0..steps.len()),
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
    // The ready wave: the clones of every node whose steps up to its ready mark passed,
    // marked by one `zfs set` (one per clone cost zfs-fuse three times as much, each behind
    // the others); then each such node's mark passed, or is tried again on its own.
    // (Each mark is `READY_ARGV` and its dataset: see `NodePlan::ready_in_wave`.)
    let ready: Vec<(usize, &Cmd)> = plans
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, &p.steps[p.ready_in_wave()?].1)))
        .collect();
    if let Some((_, cmd)) = ready.first() {
        script.push_str(&format!(
            "_rw() {{\n  set -- {}\n",
            quote_line(&crate::cmd::READY_ARGV.map(str::to_owned))
        ));
        for (i, mark) in &ready {
            let dataset = quote_line(&mark.argv[3..]);
            script.push_str(&format!(
                "  [ ! -e \"$_tmp/rdy/{i}\" ] || set -- \"$@\" {dataset}\n"
            ));
        }
        let secs = cmd.timeout.as_secs().max(1) + ready.len() as u64;
        script.push_str(&format!("  _readies {secs} \"$@\"\n}}\n_rw\n"));
        for (i, _) in &ready {
            // A node whose mark failed has no definition for the define wave.
            script.push_str(&format!(
                "[ ! -e \"$_tmp/rdy/{i}\" ] || r{i} || rm -f -- \"$_tmp/def/{i}.xml\"\n"
            ));
        }
    }
    // The define wave: the domains of every node whose steps up to its definition passed,
    // defined by one virsh (a virsh of its own per node costs each about 20 ms of CPU).
    let defined: Vec<usize> = plans
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.defined_in_wave().map(|_| i))
        .collect();
    if !defined.is_empty() {
        script.push_str("_b=\n");
        for i in &defined {
            script.push_str(&format!(
                "[ ! -e \"$_tmp/def/{i}.xml\" ] || _b=\"$_b echo lab-def-$$ {i}; define {i}.xml; echo lab-def-$$ .;\"\n"
            ));
        }
        script.push_str(&format!("_defs \"$_b\" {}\n", 60 + 2 * defined.len()));
        for i in &defined {
            script.push_str(&format!("[ ! -e \"$_tmp/def/{i}.xml\" ] || d{i}\n"));
        }
    }
    if waits {
        // The last wave: every node whose first wave passed, at once (or batch after batch,
        // `start_interval` seconds apart), holding the lock while a batch starts.
        let lock = quote_line(&[crate::cmd::wires_lock(hv)]);
        let batches = plans
            .iter()
            .filter(|p| p.waits())
            .map(|p| p.batch)
            .max()
            .unwrap_or(0);
        for batch in 0..=batches {
            let here: Vec<(usize, &NodePlan<'_>)> = plans
                .iter()
                .enumerate()
                .filter(|(_, p)| p.waits() && p.batch == batch)
                .collect();
            if here.is_empty() {
                continue;
            }
            if batch > 0 && extras.start_interval > 0 {
                script.push_str(&format!(
                    "sleep {}
",
                    extras.start_interval
                ));
            }
            script.push_str(&format!(
                "if exec 8>>{lock} && flock -w 60 8; then
"
            ));
            for (i, _) in &here {
                script.push_str(&format!("  [ -e \"$_ok/{i}\" ] && f{i} &\n"));
            }
            script.push_str("  wait\n  exec 8>&-\nelse\n");
            for (i, plan) in &here {
                let (name, _) = &plan.steps[plan.last_wave];
                let fail = quote_line(&[format!(
                    "FAIL {} 1 {} {name}",
                    plan.node.name, plan.last_wave
                )]);
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
script=$(head -c "$size"; echo .)
[ "${#script}" -eq $((size + 1)) ] || { echo "the plan's script came short" >&2; exit 1; }
rm -rf -- "$_tmp" && mkdir -m 0700 -- "$_tmp" || exit 1
if [ "$tarred" -gt 0 ]; then
  mkdir -- "$_tmp/trees" && head -c "$tarred" | tar -x -i --no-same-owner -f - -C "$_tmp/trees" ||
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
        .sum::<u64>()
        + extras.start_interval * plans.iter().map(|p| p.batch as u64).max().unwrap_or(0);
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
