//! Per-lab locks, held on the hypervisors: two runs that change the same lab never interleave.
//!
//! On each hypervisor a small remote shell takes `flock` on `<lock_dir>/<lab>.lock`, writes
//! who holds it into the file, says `locked` with its process id, and then waits for the controller's heartbeat on
//! its stdin. It ends, and the kernel drops the lock, when the controller releases it, when
//! the controller dies (the ssh channel closes, stdin reads end-of-file) or when the heartbeat
//! stops for [`PATIENCE_SECS`] (the network went away). No lock file ever needs a human.
//!
//! A dead holder's last commands may still be running on the hypervisor when its lock goes.
//! So every change a run makes holds `<lab>.busy` shared while it runs (`flock -s`, put in
//! front of each change by the executor's guard), and a new holder waits for `<lab>.busy`
//! exclusively before it says `locked`.
//!
//! Locks are first tried on every hypervisor at once, without waiting: when no one holds any
//! (the usual case), that is one round trip for the whole lab. When one is held, everything
//! taken is let go and, for a run that may wait (`--lock-wait`), the locks are taken one
//! hypervisor after another in lab order, so two runs that both wait cannot each hold what
//! the other waits for.

use std::fmt;
use std::time::Duration;

use lab_exec::{Cmd, ExecError, Executor, Holding};
use lab_model::Hypervisor;

/// How often the controller tells a lock holder it is still there.
pub const BEAT: Duration = Duration::from_secs(5);
/// How long a lock holder waits for a heartbeat before it gives the lock up.
pub const PATIENCE_SECS: u64 = 20;
/// The exit status of the remote side when the lock is held by someone else.
const HELD_STATUS: i32 = 75;

/// The exit status of the remote side when the lock directory or a lock file is unsafe.
const UNSAFE_STATUS: i32 = 76;

/// Constant text; the lock file, holder, wait and patience are positional arguments. The lock
/// directory must be this user's and 0700 (made so when it is missing), and no lock file may be
/// a symlink: in a directory others can write, a planted `<lab>.lock -> /etc/shadow` would be
/// truncated by root.
/// Any words after these five are a query run as soon as the lock is taken (the verb's probe),
/// its output then ended by a line of its own, `lab-lock-read NONCE STATUS` (the last word of
/// the query is its nonce, which nothing the probe reads can know): the state read under the
/// lock in the lock's own exchange.
const LOCK: &str = r#"lock=$1 holder=$2 wait=$3 patience=$4 busy=$5; shift 5
dir=${lock%/*}
[ -e "$dir" ] || mkdir -p -m 0700 -- "$dir" || exit 1
if [ -L "$dir" ] || [ ! -d "$dir" ]; then
  echo "lock directory $dir is a symlink or not a directory" >&2; exit 76
fi
owner=$(stat -c %u -- "$dir") mode=$(stat -c %a -- "$dir")
if [ "$owner" != "$(id -u)" ] || [ "$mode" != 700 ]; then
  echo "lock directory $dir belongs to uid $owner with mode $mode: it must be $(id -un)'s and 0700, so that nobody else can put files there" >&2; exit 76
fi
for f in "$lock" "$busy"; do
  if [ -L "$f" ]; then echo "lock file $f is a symlink" >&2; exit 76; fi
done
exec 9>>"$lock" || exit 1
if ! flock -n 9; then
  printf 'held %s\n' "$(cat -- "$lock")"
  { [ "$wait" -gt 0 ] && flock -w "$wait" 9; } || exit 75
fi
printf '%s\n' "$holder" >"$lock"
flock -x -w 600 "$busy" true 9>&- || { echo "changes of an earlier run still run here" >&2; exit 1; }
# (Its pid: the plan's steps check that this shell still holds the lock file, without a
# process of their own for each check.)
echo "locked $$"
if [ $# -gt 0 ]; then
  for nonce; do :; done
  # (Under a deadline: a probe that hangs must not keep the lock.)
  timeout -k 5 240 "$@" </dev/null 9>&-; printf '\nlab-lock-read %s %s\n' "$nonce" $?
fi
while timeout "$patience" sh -c 'read -r _' 9>&-; do :; done
"#;

/// Who holds (or wants) a lab's lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// `user@controller`
    pub owner: String,
    pub pid: u32,
    /// The verb that took it: `create`, `destroy` ...
    pub verb: String,
    /// Seconds since the epoch.
    pub since: u64,
}

impl Holder {
    fn line(&self) -> String {
        format!("{} {} {} {}", self.owner, self.pid, self.verb, self.since)
    }

    fn parse(line: &str) -> Option<Holder> {
        let mut f = line.split_whitespace();
        let h = Holder {
            owner: f.next()?.to_owned(),
            pid: f.next()?.parse().ok()?,
            verb: f.next()?.to_owned(),
            since: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(h)
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pid {}, `lab {}`) since {}",
            self.owner,
            self.pid,
            self.verb,
            crate::utc(self.since)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lab `{lab}` is locked on {host} by {}{}", holder_text(.holder), waited_text(*.waited))]
    Held {
        lab: String,
        host: String,
        /// `None` when the holder had not yet written its name.
        holder: Option<Holder>,
        waited: u64,
    },
    #[error("{host}: the lock of lab `{lab}` is not safe to take: {message}")]
    Unsafe {
        lab: String,
        host: String,
        message: String,
    },
    #[error("{host}: cannot take the lock of lab `{lab}`: {source}")]
    Failed {
        lab: String,
        host: String,
        source: ExecError,
    },
}

fn holder_text(h: &Option<Holder>) -> String {
    h.as_ref().map_or(
        "another run (it has not said who yet)".to_owned(),
        Holder::to_string,
    )
}

fn waited_text(waited: u64) -> String {
    if waited == 0 {
        " (use --lock-wait SECONDS to wait for it)".to_owned()
    } else {
        format!(" (waited {waited} s)")
    }
}

/// The locks of one run; released explicitly, or by the remote side when this process dies.
pub struct Locks {
    held: Vec<Holding>,
}

impl Locks {
    pub async fn release(self) {
        crate::run::join_all(self.held.into_iter().map(Holding::release).collect()).await;
    }
}

fn lock_file(hv: &Hypervisor, lab: &str, ext: &str) -> String {
    format!("{}/{lab}.{ext}", hv.lock_dir.trim_end_matches('/'))
}

/// A plan's own directory for `lab` on `hv` (see [`crate::plan`]): beside the lab's lock, in a
/// directory that is this user's and `0700`, which only the lock's holder writes. Each plan
/// makes it anew and removes it when it ends; one a killed plan left is removed by the next.
pub fn plan_dir(hv: &Hypervisor, lab: &str) -> String {
    lock_file(hv, lab, "plan")
}

/// Where a plan of `lab` on `hv` unpacks the nodes' trees it carries (see
/// [`crate::plan::Trees`]): in [`plan_dir`].
pub fn trees_dir(hv: &Hypervisor, lab: &str) -> String {
    format!("{}/trees", plan_dir(hv, lab))
}

/// The remote command that takes and holds `lab`'s lock on `hv`, then runs `then` (a query
/// without stdin) once it holds it.
pub fn lock_cmd(
    hv: &Hypervisor,
    lab: &str,
    me: &Holder,
    wait_secs: u64,
    then: Option<&Cmd>,
) -> Cmd {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        LOCK.to_owned(),
        "lab-lock".to_owned(),
        lock_file(hv, lab, "lock"),
        me.line(),
        wait_secs.to_string(),
        PATIENCE_SECS.to_string(),
        lock_file(hv, lab, "busy"),
    ];
    if let Some(then) = then {
        argv.extend(then.argv.iter().cloned());
    }
    Cmd::change(argv)
}

/// Runs the rest of its arguments only while the lock file still names this run's holder
/// (exit [`lab_exec::LOCK_GONE`] otherwise). Checked under `<lab>.busy`, which a new holder
/// takes exclusively after writing its name: a change of this run that reaches the
/// hypervisor late (queued in a connection that came back after the lock timed out) either
/// ran before the new holder went on, or does not run at all (review 3, N19).
/// The lock's holder, when known (`none` when not), goes to plans as `LAB_LOCK_PID`.
const STILL_OURS: &str = r#"[ "$(cat -- "$1")" = "$2" ] || exit 77
LAB_LOCK=$1 LAB_HOLDER=$2 LAB_LOCK_PID=$3; export LAB_LOCK LAB_HOLDER LAB_LOCK_PID
shift 3; exec "$@""#;

/// The words in front of every change `me`, holding `lab`'s lock, makes on `hv`; `pid` is
/// the process on `hv` that holds the lock, when known.
pub fn guard(hv: &Hypervisor, lab: &str, me: &Holder, pid: Option<u32>) -> Vec<String> {
    vec![
        "flock".into(),
        "-s".into(),
        lock_file(hv, lab, "busy"),
        "sh".into(),
        "-c".into(),
        STILL_OURS.into(),
        "lab-guard".into(),
        lock_file(hv, lab, "lock"),
        me.line(),
        pid.map_or_else(|| "none".to_owned(), |p| p.to_string()),
    ]
}

/// Puts the guard in front of the changes on every hypervisor without taking any lock: for
/// `--dry-run`, so that it prints what a real run (as `me`) would send.
pub fn guard_only(exec: &Executor, lab: &str, hypervisors: &[&Hypervisor], me: &Holder) {
    for hv in hypervisors {
        exec.guard(&hv.name, guard(hv, lab, me, None));
    }
}

/// Takes `lab`'s lock on every hypervisor in `hypervisors`, waiting up to `wait_secs` for each;
/// `waiting` hears about every holder waited for. All at once first, without waiting; when one
/// is held, everything taken is let go and the locks are taken in `hypervisors`' order (lab
/// order), waiting. A hypervisor that cannot be reached is fenced off (its nodes then fail as
/// unreachable) and the others go on; a lock held elsewhere (after the wait) releases
/// everything taken so far and fails the run before any change.
///
/// With `read_state`, each hypervisor is also probed ([`crate::state::probe`]) in the lock's
/// own exchange, the moment its lock is taken; the verb's probe then takes that answer
/// instead of a round trip of its own.
pub async fn lock(
    exec: &Executor,
    lab: &str,
    hypervisors: &[&Hypervisor],
    me: &Holder,
    wait_secs: u64,
    read_state: bool,
    waiting: &(dyn Fn(&str, &Holder) + Sync),
) -> Result<Locks, LockError> {
    let quiet = |_: &str, _: &Holder| {};
    let ask = Ask {
        exec,
        lab,
        me,
        read_state,
    };
    let tries = hypervisors
        .iter()
        .map(|hv| lock_one(&ask, hv, 0, &quiet))
        .collect();
    let tried = crate::run::join_all(tries).await;
    let mut taken: Vec<(&Hypervisor, Taken)> = Vec::new();
    let mut reachable: Vec<&Hypervisor> = Vec::new();
    let mut held_elsewhere = false;
    let mut refused = None;
    for (hv, result) in hypervisors.iter().copied().zip(tried) {
        match result {
            Ok(t) => {
                taken.push((hv, t));
                reachable.push(hv);
            }
            Err(LockError::Held { .. }) if wait_secs > 0 => {
                held_elsewhere = true;
                reachable.push(hv);
            }
            Err(e) => match keep_going(exec, hv, e).await {
                Ok(()) => {}
                Err(e) => refused = refused.or(Some(e)),
            },
        }
    }
    let mut locks = Locks { held: Vec::new() };
    if refused.is_none() && !held_elsewhere {
        for (hv, mut t) in taken {
            stand_guard(exec, hv, lab, me, &mut t);
            locks.held.push(t.holding);
        }
        return Ok(locks);
    }
    // What was read under the locks let go is stale once they are taken again.
    for (hv, _) in &taken {
        exec.forget_answers(&hv.name);
    }
    locks.held = taken.into_iter().map(|(_, t)| t.holding).collect();
    locks.release().await;
    if let Some(e) = refused {
        return Err(e);
    }
    // Someone holds one of them: in lab order, waiting, as two waiting runs must.
    let mut locks = Locks { held: Vec::new() };
    for hv in reachable {
        match lock_one(&ask, hv, wait_secs, waiting).await {
            Ok(mut t) => {
                stand_guard(exec, hv, lab, me, &mut t);
                locks.held.push(t.holding);
            }
            Err(e) => {
                if let Err(e) = keep_going(exec, hv, e).await {
                    locks.release().await;
                    return Err(e);
                }
            }
        }
    }
    Ok(locks)
}

/// From now on every change on `hv` runs behind the guard, and first checks that this lock
/// is still held.
fn stand_guard(exec: &Executor, hv: &Hypervisor, lab: &str, me: &Holder, taken: &mut Taken) {
    exec.guard(&hv.name, guard(hv, lab, me, taken.pid));
    exec.require_lock(&hv.name, taken.holding.watch());
}

/// A hypervisor that cannot be reached is fenced off and the run goes on without it; any
/// other failure to lock stops the run.
async fn keep_going(exec: &Executor, hv: &Hypervisor, e: LockError) -> Result<(), LockError> {
    match e {
        LockError::Failed { source, .. } if source.unreachable() => {
            let why = match source {
                ExecError::Connect { message, .. } => message,
                other => other.to_string(),
            };
            exec.fence(&hv.name, why).await;
            Ok(())
        }
        e => Err(e),
    }
}

/// What every hypervisor's lock is taken with.
struct Ask<'a> {
    exec: &'a Executor,
    lab: &'a str,
    me: &'a Holder,
    read_state: bool,
}

/// A lock taken: its exchange, and the process id of the shell on the hypervisor that holds
/// it (`None` from a scripted or dry-run executor).
struct Taken {
    holding: Holding,
    pid: Option<u32>,
}

async fn lock_one(
    ask: &Ask<'_>,
    hv: &Hypervisor,
    wait_secs: u64,
    waiting: &(dyn Fn(&str, &Holder) + Sync),
) -> Result<Taken, LockError> {
    let Ask { exec, lab, me, .. } = *ask;
    let failed = |source| LockError::Failed {
        lab: lab.to_owned(),
        host: hv.name.clone(),
        source,
    };
    let probe = ask
        .read_state
        .then(|| crate::state::probe_cmd(hv, crate::state::Detail::Normal));
    let cmd = lock_cmd(hv, lab, me, wait_secs, probe.as_ref());
    let mut holding = exec.hold(&hv.name, &cmd, BEAT).await.map_err(failed)?;
    let mut holder = None;
    // Waiting for the lock, then for a dead holder's changes to end (at most 600 s).
    let within = Duration::from_secs(wait_secs + 660);
    loop {
        match holding.next_line(within).await.map_err(failed)? {
            Some(line) if line == "locked" || line.starts_with("locked ") => {
                let pid = line.strip_prefix("locked ").and_then(|p| p.parse().ok());
                if let Some(probe) = probe {
                    read_after_lock(exec, hv, probe, &mut holding)
                        .await
                        .map_err(failed)?;
                }
                return Ok(Taken { holding, pid });
            }
            Some(line) => {
                if let Some(h) = line.strip_prefix("held ").and_then(Holder::parse) {
                    if wait_secs > 0 {
                        waiting(&hv.name, &h);
                    }
                    holder = Some(h);
                }
            }
            None => {
                let out = holding.finish().await.map_err(failed)?;
                return Err(if out.status == HELD_STATUS {
                    LockError::Held {
                        lab: lab.to_owned(),
                        host: hv.name.clone(),
                        holder,
                        waited: wait_secs,
                    }
                } else if out.status == UNSAFE_STATUS {
                    LockError::Unsafe {
                        lab: lab.to_owned(),
                        host: hv.name.clone(),
                        message: out.stderr.trim().to_owned(),
                    }
                } else {
                    failed(ExecError::Failed {
                        host: hv.name.clone(),
                        command: "the lock (sh -c ... lab-lock)".to_owned(),
                        status: out.status,
                        stderr: out.stderr.trim().to_owned(),
                    })
                });
            }
        }
    }
}

/// Reads what `probe` printed after the lock was taken, up to `lab-lock-read STATUS`, and
/// keeps it as the probe's answer when it ran well (the verb's own probe asks again otherwise).
async fn read_after_lock(
    exec: &Executor,
    hv: &Hypervisor,
    probe: Cmd,
    holding: &mut Holding,
) -> Result<(), ExecError> {
    let nonce = probe.argv.last().cloned().unwrap_or_default();
    let end = format!("lab-lock-read {nonce} ");
    let mut stdout = String::new();
    loop {
        match holding.next_line(Duration::from_secs(300)).await? {
            Some(line) => match line.strip_prefix(&end) {
                Some(status) => {
                    // The line the end's printf put before it.
                    stdout.pop();
                    if status == "0" {
                        exec.keep_answer(&hv.name, probe.argv, lab_exec::Out::ok(stdout));
                    }
                    return Ok(());
                }
                None => {
                    stdout.push_str(&line);
                    stdout.push('\n');
                }
            },
            // The lock's shell ended: the lock went with it.
            None => {
                return Err(ExecError::Disconnected {
                    host: hv.name.clone(),
                    command: "the lock (sh -c ... lab-lock)".to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_round_trips_through_the_lock_file_line() {
        let h = Holder {
            owner: "ana@ctl".into(),
            pid: 4242,
            verb: "create".into(),
            since: 1_795_000_000,
        };
        assert_eq!(Holder::parse(&h.line()), Some(h.clone()));
        assert_eq!(Holder::parse("ana@ctl 12 create"), None);
        assert_eq!(Holder::parse(""), None);
        assert_eq!(
            h.to_string(),
            "ana@ctl (pid 4242, `lab create`) since 2026-11-18 11:06:40 UTC"
        );
    }
}
