//! The commands that reach a lab's nodes on day two: a command run on them from their
//! hypervisor, waiting until they are ready, and the controller's command lines for their
//! console and for ssh into them.

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::{Hypervisor, LabNode};

/// How a node is ready: a line on its console, its ssh server answering, or a TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// A line of the console log matches this extended regular expression.
    Console(String),
    /// Its ssh server answers on port 22 with an `SSH-` banner.
    Ssh,
    /// Something accepts a connection on this TCP port of its management address.
    Tcp(u16),
}

/// The `-o` options and login of a node's ssh settings, for an `ssh` command line.
fn ssh_login(node: &LabNode) -> Vec<String> {
    let mut argv = Vec::new();
    for option in &node.ssh.options {
        argv.push("-o".to_owned());
        argv.push(option.clone());
    }
    argv.push("-l".to_owned());
    argv.push(node.ssh.user.clone());
    argv
}

/// The command line the node's shell reads for `words`: one word is a shell line as it is
/// (`'ip -br a | grep UP'`, `'exit 7'`); several are one command whose arguments arrive
/// exactly as given (`sh -c 'a; b'`).
pub fn node_line(words: &[String]) -> String {
    match words {
        [line] => line.clone(),
        words => lab_exec::quote_line(words),
    }
}

/// `words` run on the node, from its hypervisor: `ssh ... ADDRESS -- LINE` (see
/// [`node_line`]). Run once (never repeated after a lost connection) and ended on the
/// hypervisor at `timeout`.
/// When ssh cannot reach the node (255), the domain's state says why, as the last line of
/// stderr: `lab: domain NAME is shut off`.
pub fn exec_on_node(node: &LabNode, address: &str, words: &[String], timeout: Duration) -> Cmd {
    let mut argv: Vec<String> = ["sh", "-c", SSH_OR_SAY_WHY, "lab-exec", &node.domain]
        .map(String::from)
        .to_vec();
    argv.extend(ssh_from_hypervisor(node, address, words));
    Cmd::query(argv).timeout(timeout).once()
}

/// `ssh ... ADDRESS -- LINE`: `words` run on the node by its hypervisor (see [`node_line`]),
/// never asking for a password or waiting long for a node that is down.
pub fn ssh_from_hypervisor(node: &LabNode, address: &str, words: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        .map(String::from)
        .to_vec();
    argv.extend(ssh_login(node));
    argv.push(address.to_owned());
    argv.push("--".to_owned());
    argv.push(node_line(words));
    argv
}

/// `ssh ...` (after the domain's name), and when it could not connect, whether the domain runs.
const SSH_OR_SAY_WHY: &str = r#"d=$1; shift
"$@"; s=$?
if [ "$s" -eq 255 ]; then
  state=$(virsh -q domstate "$d" 2>/dev/null | head -n 1)
  [ "$state" = running ] || echo "lab: domain $d is ${state:-not defined}" >&2
fi
exit "$s""#;

/// The state of the node's domain (`running`, `shut off` ...; nothing when it is not defined).
pub fn domain_state(node: &LabNode) -> Cmd {
    Cmd::query(["virsh", "-q", "domstate", node.domain.as_str()])
}

/// What [`exec_on_node`] said about a node ssh could not reach, if anything.
pub fn unreachable_because(stderr: &str) -> Option<&str> {
    stderr.lines().last()?.strip_prefix("lab: ")
}

/// Waits on the hypervisor for each `(node, domain, address)` to be ready, all at once, at most
/// `secs` (0: look once). Prints `READY <node> <seconds>` or `NOT-READY <node> [why]` followed
/// by `LOG <node> <line>` for the last lines of its console, as each ends; `ERROR <why>` when
/// the check itself is wrong (a console pattern grep cannot read).
pub fn wait_nodes(how: &Readiness, secs: u64, nodes: &[(&str, &str, &str)]) -> Cmd {
    let (kind, arg) = match how {
        Readiness::Console(re) => ("console", re.clone()),
        Readiness::Ssh => ("ssh", "22".to_owned()),
        Readiness::Tcp(port) => ("tcp", port.to_string()),
    };
    let mut argv: Vec<String> = ["sh", "-c", WAIT, "lab-wait", kind, &arg, &secs.to_string()]
        .map(String::from)
        .to_vec();
    for (node, domain, address) in nodes {
        argv.extend([node, domain, address].map(|s| s.to_string()));
    }
    Cmd::query(argv).timeout(Duration::from_secs(secs + 30))
}

const WAIT: &str = r#"how=$1 arg=$2 secs=$3; shift 3
start=$(date +%s)
if [ "$how" = console ]; then
  grep -Eq -- "$arg" </dev/null 2>/dev/null
  if [ $? -eq 2 ]; then echo "ERROR not an extended regular expression: $arg"; exit 0; fi
fi
quick=3; [ "$secs" -eq 0 ] && quick=1
ready() { # address log
  case $how in
    console) grep -Eq -- "$arg" "$2" 2>/dev/null ;;
    ssh) timeout "$quick" bash -c 'exec 3<>"/dev/tcp/$0/$1" && read -r -t 2 l <&3 && case $l in SSH-*) ;; *) exit 1 ;; esac' "$1" "$arg" 2>/dev/null ;;
    tcp) timeout "$quick" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$arg" 2>/dev/null ;;
  esac
}
# The last lines of a console log (after a kernel panic's own line, when there is one), without
# terminal escapes or control characters, each a line of its own (the log need not end in one).
tail_log() {
  [ -r "$2" ] || return 0
  { grep -a -m 1 'Kernel panic' -- "$2"; tail -n 6 -- "$2"; } |
    sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' | LC_ALL=C tr -d '\000-\010\013-\037\177' |
    awk -v n="$1" '!seen[$0]++ { print "LOG " n " " $0 }'
}
while [ $# -ge 3 ]; do
  node=$1 dom=$2 ip=$3; shift 3
  (
    log=$(virsh -q dumpxml "$dom" 2>/dev/null | sed -n "s/.*<log file='\([^']*\)'.*/\1/p; s/.*<source path='\([^']*console[^']*\)'.*/\1/p" | head -n 1)
    if [ "$how" = console ] && [ -z "$log" ]; then
      echo "NOT-READY $node the domain has no console log (a <log file=...> on its serial)"; exit 0
    fi
    # The domain's state first: a stopped domain's console log is its last boot's.
    while :; do
      state=$(virsh -q domstate "$dom" 2>/dev/null | head -n 1)
      if [ "$state" != running ]; then
        echo "NOT-READY $node the domain is ${state:-not defined}"; tail_log "$node" "$log"; exit 0
      fi
      ready "$ip" "$log" && break
      if [ $(( $(date +%s) - start )) -ge "$secs" ]; then
        echo "NOT-READY $node"; tail_log "$node" "$log"; exit 0
      fi
      sleep 1
    done
    echo "READY $node $(( $(date +%s) - start ))"
  ) &
done
wait"#;

/// The controller's command line for a node's serial console, through its hypervisor;
/// `take_over` disconnects whoever else is on it (`virsh console --force`).
pub fn console_argv(hv: &Hypervisor, node: &LabNode, take_over: bool) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned(), "-t".to_owned()];
    argv.extend(ssh_destination(&hv.ssh));
    argv.push("--".to_owned());
    let mut virsh = vec!["virsh".to_owned(), "console".to_owned()];
    if take_over {
        virsh.push("--force".to_owned());
    }
    virsh.push(node.domain.clone());
    argv.push(lab_exec::quote_line(&virsh));
    argv
}

/// The controller's command line for an ssh session on a node (or `words` run there, see
/// [`node_line`]), jumping through its hypervisor to its management address.
pub fn ssh_argv(hv: &Hypervisor, node: &LabNode, address: &str, words: &[String]) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned(), "-J".to_owned(), hv.ssh.clone()];
    argv.extend(ssh_login(node));
    // After the lab file's options, which win: a node that is down is said in seconds.
    argv.extend(["-o".to_owned(), "ConnectTimeout=10".to_owned()]);
    if words.is_empty() {
        argv.push(address.to_owned());
    } else {
        argv.push(address.to_owned());
        argv.push("--".to_owned());
        argv.push(node_line(words));
    }
    argv
}

/// An ssh destination `[user@]host[:port]` as `ssh` arguments (`-p PORT` when there is one).
fn ssh_destination(dest: &str) -> Vec<String> {
    match dest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            vec!["-p".to_owned(), port.to_owned(), host.to_owned()]
        }
        _ => vec![dest.to_owned()],
    }
}
