//! `lab validate`: does the lab work? Checks run on the nodes through the reach path of
//! `lab exec` (one ssh command per node per round, from its hypervisor), again and again until
//! every check passes or the time is up.
//!
//! Built-in checks come from the lab plan and the node's build: every link's peer answers a
//! ping; where the build runs FRR (`/etc/frr/daemons`, its unit not masked) every link's BGP
//! session is Established (`bgpd=yes`) and its OSPF neighbour Full (`ospfd=yes`); where it runs
//! BIRD (`/etc/bird/bird.conf`, not masked) every link's BGP session is Established. Declared
//! checks (`validate:` in the lab file) run a command and judge its exit status and output.
//!
//! Long: the checks, the one script per node that runs them, and the readers of what FRR and
//! BIRD say, kept together because each check is all three.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lab_exec::{Executor, quote};
use lab_model::{Check, Lab, LabNode};

/// The routing daemons a node's build starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Daemons {
    pub frr_bgp: bool,
    pub frr_ospf: bool,
    pub bird: bool,
}

impl Daemons {
    /// What the node's tree (`build/<overlay>/<hv>/<node>/`) starts: a daemon's files are there
    /// and its systemd unit is not masked (`/etc/systemd/system/<unit> -> /dev/null`).
    pub fn of_tree(tree: &Path) -> Daemons {
        let masked = |unit: &str| {
            std::fs::read_link(tree.join("etc/systemd/system").join(unit))
                .is_ok_and(|t| t.ends_with("dev/null"))
        };
        let frr = std::fs::read_to_string(tree.join("etc/frr/daemons"))
            .ok()
            .filter(|_| !masked("frr.service"));
        let on = |daemon: &str| {
            frr.as_deref().is_some_and(|text| {
                text.lines()
                    .any(|l| l.trim().replace(' ', "") == format!("{daemon}=yes"))
            })
        };
        Daemons {
            frr_bgp: on("bgpd"),
            frr_ospf: on("ospfd"),
            bird: tree.join("etc/bird/bird.conf").is_file() && !masked("bird.service"),
        }
    }
}

/// One check of one node, and how it stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub node: String,
    pub hypervisor: String,
    /// `bgp`, `ospf`, `ping` or `declared`.
    pub kind: &'static str,
    /// What is checked: the peer address, or the declared check's name.
    pub name: String,
    /// For link checks: the link's other end (`vpp0-2 eth1`) and this end's interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub ok: bool,
    /// What was seen last: a session state, the output's first line, why it could not run.
    pub seen: String,
    /// Seconds from the start of validation to its first pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed_after_secs: Option<f64>,
}

/// The whole validation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Validation {
    pub checks: Vec<CheckResult>,
    /// Nodes that could not be reached (or refused) in the last round, with why.
    pub unreachable: Vec<(String, String)>,
    /// Seconds from the start to the moment the last check passed, when all did.
    pub converged_after_secs: Option<f64>,
    pub rounds: u32,
    pub elapsed_secs: f64,
}

impl Validation {
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.ok).count()
    }
    pub fn all_ok(&self) -> bool {
        self.unreachable.is_empty() && self.checks.iter().all(|c| c.ok)
    }
}

/// What to check on one node.
pub struct NodePlan<'a> {
    pub node: &'a LabNode,
    pub daemons: Daemons,
}

/// How long to go on, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub timeout: Duration,
    pub interval: Duration,
}

/// FRR's checks share one section: only the vtysh commands of checks still failing run (each
/// costs about a second of CPU in an emulated guest).
const FRR: &str = "frr";
const BIRD_BGP: &str = "bird-bgp";

/// The checks of one node, in report order, each with the section of the node's script whose
/// output judges it.
fn node_checks(lab: &Lab, plan: &NodePlan<'_>) -> Vec<(CheckResult, String)> {
    let node = plan.node;
    let mut out = Vec::new();
    let row = |kind: &'static str, name: String, peer: Option<String>| CheckResult {
        node: node.name.clone(),
        hypervisor: node.hypervisor.clone(),
        kind,
        name,
        peer,
        ok: false,
        seen: "not checked yet".to_owned(),
        passed_after_secs: None,
    };
    for l in node.links() {
        let (Some(peer_ip), Some(peer)) = (l.peer_ipv4, &l.peer) else {
            continue;
        };
        let far = format!(
            "{} {} (from {})",
            peer,
            l.peer_interface.as_deref().unwrap_or("?"),
            l.name
        );
        if plan.daemons.frr_bgp {
            out.push((
                row("bgp", peer_ip.to_string(), Some(far.clone())),
                FRR.to_owned(),
            ));
        }
        if plan.daemons.bird {
            out.push((
                row("bgp", peer_ip.to_string(), Some(far.clone())),
                BIRD_BGP.to_owned(),
            ));
        }
        if plan.daemons.frr_ospf {
            out.push((
                row("ospf", peer_ip.to_string(), Some(far.clone())),
                FRR.to_owned(),
            ));
        }
        out.push((
            row("ping", peer_ip.to_string(), Some(far)),
            format!("ping:{peer_ip}"),
        ));
    }
    for c in lab.validate.iter().filter(|c| c.nodes.contains(&node.name)) {
        out.push((
            row("declared", c.name.clone(), None),
            format!("check:{}", c.name),
        ));
    }
    out
}

/// The one script a node runs per round: each section prints a marker line, its output and its
/// exit status. Pings run in the background meanwhile, so a dead link costs its 2 s once.
fn script(lab: &Lab, sections: &[String], kinds: &[&str]) -> String {
    let mut s = String::from(
        "m() { echo \"@@lab-check $1\"; }\nr() { echo \"@@lab-rc $?\"; }\nd=$(mktemp -d)\n",
    );
    let mut seen = std::collections::HashSet::new();
    let mut pings = Vec::new();
    for section in sections {
        if !seen.insert(section.as_str()) {
            continue;
        }
        let body = if section == FRR {
            // One vtysh per daemon asked: vtysh runs none of its commands when one of the
            // daemons it would ask is down.
            let mut vtysh = Vec::new();
            if kinds.contains(&"bgp") {
                vtysh.push("vtysh -c 'show bgp summary json' 2>&1");
            }
            if kinds.contains(&"ospf") {
                vtysh.push("vtysh -c 'show ip ospf neighbor json' 2>&1");
            }
            vtysh.join("; ")
        } else if section == BIRD_BGP {
            "birdc show protocols all 2>&1".to_owned()
        } else if let Some(peer) = section.strip_prefix("ping:") {
            let i = pings.len();
            s.push_str(&format!(
                "( ping -c 1 -W 2 {}; echo $? > \"$d/{i}.rc\" ) > \"$d/{i}\" 2>&1 &\n",
                quote(peer)
            ));
            pings.push((section, i));
            continue;
        } else if let Some(name) = section.strip_prefix("check:") {
            let c = lab
                .validate
                .iter()
                .find(|c| c.name == name)
                .expect("a section names a declared check");
            format!(
                "timeout {} sh -c {} 2>&1",
                c.timeout_secs,
                quote(&c.command)
            )
        } else {
            continue;
        };
        s.push_str(&format!("m {}; {body}; r\n", quote(section)));
    }
    s.push_str("wait\n");
    for (section, i) in pings {
        s.push_str(&format!(
            "m {}; cat \"$d/{i}\"; (exit $(cat \"$d/{i}.rc\")); r\n",
            quote(section)
        ));
    }
    s.push_str("rm -rf \"$d\"\n");
    s
}

/// Splits a node's answer into its sections: output and exit status by section name.
fn sections(stdout: &str) -> HashMap<String, (String, i32)> {
    let mut out = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("@@lab-check ") {
            current = Some((name.to_owned(), String::new()));
        } else if let Some(rc) = line.strip_prefix("@@lab-rc ") {
            if let Some((name, text)) = current.take() {
                out.insert(name, (text, rc.trim().parse().unwrap_or(-1)));
            }
        } else if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// Judges one check from its section's output: passed, and what was seen.
fn judge(lab: &Lab, check: &CheckResult, section: &str, text: &str, rc: i32) -> (bool, String) {
    let first_line = || {
        text.lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no output)")
            .trim()
            .to_owned()
    };
    match section {
        FRR => {
            let docs = json_documents(text);
            let (key, missing) = if check.kind == "bgp" {
                ("ipv4Unicast", "no such BGP neighbour")
            } else {
                ("neighbors", "no OSPF neighbour")
            };
            let Some(doc) = docs.iter().find(|d| d.get(key).is_some()).or_else(|| {
                // `{}`: the daemon runs without that instance.
                docs.iter()
                    .find(|d| d.as_object().is_some_and(|m| m.is_empty()))
            }) else {
                let daemon = if check.kind == "bgp" { "bgpd" } else { "ospfd" };
                let said = text
                    .lines()
                    .find(|l| l.contains(daemon))
                    .map_or_else(first_line, |l| l.trim().to_owned());
                return (false, format!("vtysh: {said}"));
            };
            if check.kind == "bgp" {
                match doc["ipv4Unicast"]["peers"][&check.name]["state"].as_str() {
                    Some("Established") => (true, "Established".to_owned()),
                    Some(state) => (false, state.to_owned()),
                    None => (false, missing.to_owned()),
                }
            } else {
                let states: Vec<String> = doc["neighbors"]
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.values())
                    .filter_map(|v| v.as_array())
                    .flatten()
                    .filter(|n| n["ifaceAddress"].as_str() == Some(check.name.as_str()))
                    .filter_map(|n| n["nbrState"].as_str().map(str::to_owned))
                    .collect();
                match states.first() {
                    Some(s) if s.starts_with("Full") => (true, s.clone()),
                    Some(s) => (false, s.clone()),
                    None => (false, missing.to_owned()),
                }
            }
        }
        BIRD_BGP => match bird_state(text, &check.name) {
            Some(state) => (state == "Established", state),
            None if rc != 0 => (false, format!("birdc: {}", first_line())),
            None => (false, "no such BGP protocol".to_owned()),
        },
        s if s.starts_with("ping:") => {
            if rc == 0 {
                (true, "answers".to_owned())
            } else {
                (false, "no answer".to_owned())
            }
        }
        s => {
            let name = s.strip_prefix("check:").unwrap_or(s);
            let Some(c) = lab.validate.iter().find(|c| c.name == name) else {
                return (false, "unknown check".to_owned());
            };
            declared(c, text, rc)
        }
    }
}

/// A declared check: its exit status, then its text.
fn declared(c: &Check, text: &str, rc: i32) -> (bool, String) {
    let shown = text.lines().next().unwrap_or("").trim();
    if rc == 124 {
        return (false, format!("did not finish within {} s", c.timeout_secs));
    }
    if rc != c.exit {
        return (false, format!("exit {rc} (want {}): {shown}", c.exit));
    }
    if let Some(want) = &c.contains
        && !text.contains(want.as_str())
    {
        return (false, format!("no {want:?} in: {shown}"));
    }
    if let Some(re) = &c.regex {
        // Output is lines: `^` and `$` match at each line's start and end.
        let re = regex_lite::Regex::new(&format!("(?m){re}")).expect("checked when loaded");
        if !re.is_match(text) {
            return (false, format!("no match for /{re}/ in: {shown}"));
        }
    }
    (true, format!("exit {rc}"))
}

/// The JSON documents in `vtysh` output, which may hold a daemon's complaint between them:
/// each starts with a line that is `{`-first and ends where its braces balance.
fn json_documents(text: &str) -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    for line in text.lines() {
        if depth == 0 && !line.starts_with('{') {
            continue;
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        current.push_str(line);
        current.push('\n');
        if depth <= 0 {
            if let Ok(v) = serde_json::from_str(&current) {
                docs.push(v);
            }
            current.clear();
            depth = 0;
        }
    }
    docs
}

/// The state of the BGP protocol whose neighbour is `peer` in `birdc show protocols all`.
fn bird_state(text: &str, peer: &str) -> Option<String> {
    let mut state: Option<String> = None;
    for line in text.lines() {
        // A protocol's block starts at column 0; its details are indented.
        if !line.starts_with(' ') {
            state = None;
            continue;
        }
        let line = line.trim();
        if let Some(s) = line.strip_prefix("BGP state:") {
            state = Some(s.trim().to_owned());
        } else if let Some(a) = line.strip_prefix("Neighbor address:")
            && a.trim() == peer
        {
            return Some(state.clone().unwrap_or_else(|| "unknown".to_owned()));
        }
    }
    None
}

/// Runs the checks of `plans` round after round, re-running only the failing ones, until all
/// pass or `pace.timeout` is over; rounds come at `pace.interval`, then less often (up to five
/// times it). `progress(passed, total)` after every round.
pub async fn validate(
    exec: &Executor,
    lab: &Lab,
    plans: &[NodePlan<'_>],
    pace: Pace,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Validation {
    let start = Instant::now();
    let per_node: Vec<Vec<(CheckResult, String)>> =
        plans.iter().map(|p| node_checks(lab, p)).collect();
    let mut results: Vec<Vec<CheckResult>> = per_node
        .iter()
        .map(|c| c.iter().map(|(r, _)| r.clone()).collect())
        .collect();
    let total: usize = results.iter().map(Vec::len).sum();
    let mut unreachable: HashMap<String, String> = HashMap::new();
    let mut rounds = 0;
    let mut interval = pace.interval;
    loop {
        rounds += 1;
        let todo: Vec<usize> = (0..plans.len())
            .filter(|&i| {
                unreachable.contains_key(&plans[i].node.name) || results[i].iter().any(|c| !c.ok)
            })
            .collect();
        if todo.is_empty() {
            break;
        }
        let jobs: Vec<(&LabNode, Vec<String>)> = todo
            .iter()
            .map(|&i| {
                // Only what has not passed yet: a check that passed stays passed, and every
                // command costs the guest CPU its neighbours may be booting with.
                let failing: Vec<(&String, &CheckResult)> = per_node[i]
                    .iter()
                    .zip(&results[i])
                    .filter(|(_, r)| !r.ok)
                    .map(|((_, s), r)| (s, r))
                    .collect();
                let sections: Vec<String> = failing.iter().map(|(s, _)| (*s).clone()).collect();
                let kinds: Vec<&str> = failing.iter().map(|(_, r)| r.kind).collect();
                let words = vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    script(lab, &sections, &kinds),
                ];
                (plans[i].node, words)
            })
            .collect();
        let reports = crate::exec_each(exec, lab, &jobs, Duration::from_secs(60)).await;
        let now = start.elapsed().as_secs_f64();
        for (&i, report) in todo.iter().zip(&reports) {
            if let Some(why) = &report.error {
                unreachable.insert(report.node.clone(), why.clone());
                for c in results[i].iter_mut().filter(|c| !c.ok) {
                    c.seen = format!("not reached: {why}");
                }
                continue;
            }
            let answer = sections(&report.stdout);
            if answer.is_empty() && report.status != Some(0) {
                // ssh itself failed (255: refused, a key not accepted): the node is not reached.
                let why = report
                    .stderr
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .map_or_else(
                        || format!("exit status {:?}", report.status),
                        |l| l.trim().to_owned(),
                    );
                for c in results[i].iter_mut().filter(|c| !c.ok) {
                    c.seen = format!("not reached: {why}");
                }
                unreachable.insert(report.node.clone(), why);
                continue;
            }
            unreachable.remove(&report.node);
            for (c, (_, section)) in results[i].iter_mut().zip(&per_node[i]) {
                if c.ok {
                    continue;
                }
                let (ok, seen) = match answer.get(section) {
                    Some((text, rc)) => judge(lab, c, section, text, *rc),
                    None => (false, "the node did not run the check".to_owned()),
                };
                c.ok = ok;
                c.seen = seen;
                if ok {
                    c.passed_after_secs = Some(now);
                }
            }
        }
        let passed = results.iter().flatten().filter(|c| c.ok).count();
        progress(passed, total);
        if passed == total && unreachable.is_empty() {
            break;
        }
        if start.elapsed() + interval >= pace.timeout {
            break;
        }
        tokio::time::sleep(interval).await;
        // Looked at less often as time goes on: a lab still booting is not hurried by it.
        interval = (interval * 3 / 2).min(pace.interval * 5);
    }
    let checks: Vec<CheckResult> = results.into_iter().flatten().collect();
    let all = checks.iter().all(|c| c.ok) && unreachable.is_empty();
    let converged_after_secs = all.then(|| {
        checks
            .iter()
            .filter_map(|c| c.passed_after_secs)
            .fold(0.0, f64::max)
    });
    let mut unreachable: Vec<(String, String)> = unreachable.into_iter().collect();
    unreachable.sort();
    Validation {
        checks,
        unreachable,
        converged_after_secs,
        rounds,
        elapsed_secs: start.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_sessions_are_found_by_neighbour() {
        let text = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            vpp0_2_eth1 BGP        ---        up     00:27:46.184  Established\n\
            \x20 Description:    eth1 to vpp0-2 eth1\n\
            \x20 BGP state:          Established\n\
            \x20   Neighbor address: 100.64.2.1\n\
            \x20   Neighbor AS:      4200131074\n\
            \n\
            vpp0_4_eth2 BGP        ---        start  00:27:44.277  Active        Socket: No route to host\n\
            \x20 BGP state:          Active\n\
            \x20   Neighbor address: 100.64.2.6\n";
        assert_eq!(
            bird_state(text, "100.64.2.1").as_deref(),
            Some("Established")
        );
        assert_eq!(bird_state(text, "100.64.2.6").as_deref(), Some("Active"));
        assert_eq!(bird_state(text, "100.64.2.9"), None);
    }

    #[test]
    fn vtysh_documents_are_found_around_a_daemons_complaint() {
        let text = "bgpd is not running\n{\n  \"neighbors\":{\n    \"1.1.1.1\":[]\n  }\n}\n{\n}\n";
        let docs = json_documents(text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert!(docs[0].get("neighbors").is_some());
    }

    #[test]
    fn a_nodes_answer_splits_into_sections() {
        let s = sections("@@lab-check a\nline 1\nline 2\n@@lab-rc 0\n@@lab-check b\n@@lab-rc 3\n");
        assert_eq!(s["a"], ("line 1\nline 2\n".to_owned(), 0));
        assert_eq!(s["b"], (String::new(), 3));
    }
}
