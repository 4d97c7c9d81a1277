//! What `create`'s reconcile did, in its text report: a line per NIC, per push, per node the
//! lab file no longer names.

use lab_hv::{NodeReport, Outcome};

/// Reconcile's lines: each NIC plugged in or out (or kept, without `--prune`), each push
/// into a node whose NICs changed, each node the lab file no longer names.
pub(super) fn lines(
    stdout: &mut std::io::StdoutLock<'_>,
    r: &lab_change::ReconcileReport,
    pruned: &[NodeReport],
    dry_run: bool,
) {
    use lab_change::Change;
    for n in &r.nics {
        let what = match (n.change, &n.interface, &n.peer) {
            (Change::Add, Some(i), Some(p)) => format!("{i} ({}) to {p}: plugged in", n.mac),
            (Change::Rewire, Some(i), Some(p)) => {
                format!("{i} ({}) to {p}: wired as the lab file says", n.mac)
            }
            (Change::Remove, ..) | (_, None, _) | (_, _, None) => {
                format!("NIC {}: not in the lab file any more", n.mac)
            }
        };
        let detail = match (n.result, &n.error) {
            ("failed", Some(e)) => format!("{what}; failed: {e}"),
            ("kept", _) if n.change == Change::Rewire => {
                format!(
                    "NIC {} is wired differently in the lab file: --prune rewires it",
                    n.mac
                )
            }
            ("kept", _) => format!("{what} (--prune takes it out)"),
            ("done", _) if n.change == Change::Remove => format!("{what}: taken out"),
            _ => what,
        };
        let word = if n.result == "planned" {
            "planned"
        } else {
            "nic"
        };
        super::row(stdout, &n.hypervisor, &n.node, word, &detail, &n.commands);
    }
    for p in &r.pushed {
        let files = p.files.as_ref().map_or(0, Vec::len);
        let reload = match &p.reload {
            Some(l) if l.ok => "; reload hook ok".to_owned(),
            Some(l) => format!("; reload hook failed: {}", l.output.join(" / ")),
            None => String::new(),
        };
        let detail = match &p.report.outcome {
            Outcome::Failed { step, error, .. } => format!("push failed at {step}: {error}"),
            _ => format!("{files} file(s) of its new build pushed{reload}"),
        };
        super::row(
            stdout,
            &p.report.hypervisor,
            &p.report.node,
            "pushed",
            &detail,
            &[],
        );
    }
    for g in &r.gone {
        let result = pruned.iter().find(|p| p.node == g.node);
        let detail = match result.map(|p| &p.outcome) {
            None if g.prunable => "not in the lab file any more (--prune destroys it)".to_owned(),
            None => "not in the lab file any more (no clone of this lab there: lab leaves it)"
                .to_owned(),
            Some(Outcome::Done) if dry_run => {
                "not in the lab file any more: destroyed by --prune (planned)".to_owned()
            }
            Some(Outcome::Done) => "not in the lab file any more: destroyed (--prune)".to_owned(),
            Some(o) => {
                let (word, detail) = super::outcome_text(o, "destroyed", String::new());
                format!("not in the lab file any more; --prune: {word} {detail}")
            }
        };
        super::row(stdout, &g.hypervisor, &g.node, "gone", &detail, &[]);
    }
}
