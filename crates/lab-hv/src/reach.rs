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

/// `words` run on the node, from its hypervisor: `ssh ... ADDRESS -- WORDS`. As with ssh, the
/// words are joined with spaces and the node's login shell reads the line: `exit 7` and
/// `ip -br a | grep UP` work as one word or several.
pub fn exec_on_node(node: &LabNode, address: &str, words: &[String], timeout: Duration) -> Cmd {
    let mut argv: Vec<String> = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        .map(String::from)
        .to_vec();
    argv.extend(ssh_login(node));
    argv.push(address.to_owned());
    argv.push("--".to_owned());
    argv.push(words.join(" "));
    Cmd::query(argv).timeout(timeout)
}

/// Waits on the hypervisor for each `(node, domain, address)` to be ready, all at once, at most
/// `secs` (0: look once). Prints `READY <node> <seconds>` or `NOT-READY <node>` followed by
/// `LOG <node> <line>` for the last lines of its console, as each ends.
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
ready() { # node domain address log
  case $how in
    console) [ -n "$4" ] && grep -Eq -- "$arg" "$4" ;;
    ssh) [ "$3" != - ] && timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && read -r -t 2 l <&3 && case $l in SSH-*) ;; *) exit 1 ;; esac' "$3" "$arg" 2>/dev/null ;;
    tcp) [ "$3" != - ] && timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$3" "$arg" 2>/dev/null ;;
  esac
}
while [ $# -ge 3 ]; do
  node=$1 dom=$2 ip=$3; shift 3
  (
    log=$(virsh -q dumpxml "$dom" 2>/dev/null | sed -n "s/.*<log file='\([^']*\)'.*/\1/p; s/.*<source path='\([^']*console[^']*\)'.*/\1/p" | head -n 1)
    while ! ready "$node" "$dom" "$ip" "$log"; do
      if [ $(( $(date +%s) - start )) -ge "$secs" ]; then
        echo "NOT-READY $node"
        [ -n "$log" ] && tail -n 5 -- "$log" 2>/dev/null | tr -d '\r' | sed "s/^/LOG $node /"
        exit 0
      fi
      sleep 1
    done
    echo "READY $node $(( $(date +%s) - start ))"
  ) &
done
wait"#;

/// The controller's command line for a node's serial console, through its hypervisor.
pub fn console_argv(hv: &Hypervisor, node: &LabNode) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned(), "-t".to_owned()];
    argv.extend(ssh_destination(&hv.ssh));
    argv.push("--".to_owned());
    argv.push(lab_exec::quote_line(&[
        "virsh".to_owned(),
        "console".to_owned(),
        "--force".to_owned(),
        node.domain.clone(),
    ]));
    argv
}

/// The controller's command line for an ssh session on a node (or `words` run there, read by
/// its shell as ssh does), jumping through its hypervisor to its management address.
pub fn ssh_argv(hv: &Hypervisor, node: &LabNode, address: &str, words: &[String]) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned(), "-J".to_owned(), hv.ssh.clone()];
    argv.extend(ssh_login(node));
    if words.is_empty() {
        argv.push(address.to_owned());
    } else {
        argv.push(address.to_owned());
        argv.push("--".to_owned());
        argv.push(words.join(" "));
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
