//! What `create` does with one node, decided from its facts alone: a pure function, so that
//! every case (`--force`, running, half-filled, foreign) is a row of a table test.

use lab_hv::own::{CloneFacts, NodeFacts};

/// What `create` does with one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Left alone on purpose (a foreign dataset or domain, a running domain without --force).
    Skip(String),
    /// Already as asked.
    Unchanged(String),
    /// This lab's complete clone whose domain is stopped: define the domain when it is missing,
    /// then start it. Nothing is rolled back on failure: this run did not make the clone.
    Start { define: bool },
    /// Make the node anew: stop its running domain, remove this lab's old clone and old
    /// definition (each only when there is one), then clone, fill, define and start.
    Make {
        stop: bool,
        remove_clone: bool,
        undefine: bool,
    },
}

/// The request's side of a decision.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// `--force`: replace this lab's running domains and complete clones.
    pub force: bool,
    /// The overlay renders a domain definition for the node.
    pub has_domain_xml: bool,
    /// The overlay digest of the node's current build.
    pub digest: &'a str,
    /// Reconcile changed (or, in a dry run, would change) the node's NICs and pushed its new
    /// build into it: a different digest is no drift then.
    pub reconciled: bool,
}

/// Decides what `create` does with a node (see [`Decision`]): first by whose its clone and
/// domain are, then, for a domain that would be started, whether its wires' ports are free.
pub fn decide(facts: &NodeFacts, node: &str, dataset: &str, ask: Ask<'_>) -> Decision {
    match by_ownership(facts, node, dataset, ask) {
        // A running domain (stopped first) holds its own ports: only a fresh start asks.
        d @ (Decision::Start { .. } | Decision::Make { .. }) if !facts.domain.running() => {
            facts.wires.refusal().map_or(d, Decision::Skip)
        }
        d => d,
    }
}

fn by_ownership(facts: &NodeFacts, node: &str, dataset: &str, ask: Ask<'_>) -> Decision {
    let domain = &facts.domain;
    let (filling, digest) = match &facts.clone {
        // A dataset lab did not make is never touched, --force or not.
        CloneFacts::Foreign(why) => {
            return Decision::Skip(format!("{why}; lab never touches it, --force or not"));
        }
        CloneFacts::Ours { filling, digest } => (Some(*filling), digest.as_deref()),
        CloneFacts::Absent => (None, None),
    };
    // A domain another lab defined is never started, stopped or redefined, --force or not.
    if let Some(who) = domain.other() {
        return Decision::Skip(format!(
            "domain {node} is marked for {who}; lab never touches it, --force or not"
        ));
    }
    // A domain lab did not define is never redefined over (without a definition of our own,
    // an existing, pre-provisioned domain is only stopped and started).
    if domain.exists() && !domain.ours() && ask.has_domain_xml {
        return Decision::Skip(format!(
            "domain {node} exists and was not defined by lab; lab will not redefine it"
        ));
    }
    // Our complete clone and no --force: converge by starting what is there, unless it was
    // filled from another build than the current one (that is drift, not "unchanged").
    if filling == Some(false) && !ask.force {
        if digest != Some(ask.digest) && !ask.reconciled {
            let how = if domain.running() {
                "running"
            } else {
                "stopped"
            };
            return Decision::Skip(format!(
                "{how} on {dataset}, filled from an older build than the current one \
                 (overlay changed): --force recreates it"
            ));
        }
        if domain.running() {
            return Decision::Unchanged(format!("running on {dataset} (--force recreates it)"));
        }
        return Decision::Start {
            define: ask.has_domain_xml && !domain.exists(),
        };
    }
    // A running domain is stopped only with --force, or when it runs on our half-filled clone.
    if domain.running() && !ask.force && filling != Some(true) {
        return Decision::Skip(format!(
            "domain {node} is running (use --force to replace it)"
        ));
    }
    Decision::Make {
        stop: domain.running(),
        remove_clone: filling.is_some(),
        undefine: domain.ours() && ask.has_domain_xml,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_hv::own::{DomainFacts, Marker, WireFacts};

    fn facts(clone: CloneFacts, domain: DomainFacts) -> NodeFacts {
        NodeFacts {
            clone,
            domain,
            wires: WireFacts::Free,
        }
    }

    fn ours() -> CloneFacts {
        CloneFacts::Ours {
            filling: false,
            digest: Some("d".into()),
        }
    }
    fn filling() -> CloneFacts {
        CloneFacts::Ours {
            filling: true,
            digest: Some("d".into()),
        }
    }
    fn older() -> CloneFacts {
        CloneFacts::Ours {
            filling: false,
            digest: Some("old".into()),
        }
    }
    const NO_DOMAIN: DomainFacts = DomainFacts::Absent;

    fn dom(running: bool, ours: bool) -> DomainFacts {
        DomainFacts::Present {
            running,
            marker: if ours { Marker::Ours } else { Marker::None },
        }
    }
    fn other_lab(running: bool) -> DomainFacts {
        DomainFacts::Present {
            running,
            marker: Marker::Other("lab `b`, node `n`".into()),
        }
    }

    fn make(stop: bool, remove_clone: bool, undefine: bool) -> Decision {
        Decision::Make {
            stop,
            remove_clone,
            undefine,
        }
    }

    #[test]
    fn every_case_of_a_node() {
        let foreign =
            || CloneFacts::Foreign("dataset tank/n exists and was not made by lab".into());
        let skip = |s: &str| Decision::Skip(s.to_owned());
        let running_ours = "running on tank/n (--force recreates it)";
        let foreign_skip =
            "dataset tank/n exists and was not made by lab; lab never touches it, --force or not";
        let not_ours_domain =
            "domain n exists and was not defined by lab; lab will not redefine it";
        let running_skip = "domain n is running (use --force to replace it)";
        let other_skip =
            "domain n is marked for lab `b`, node `n`; lab never touches it, --force or not";
        let drift = |how: &str| {
            format!(
                "{how} on tank/n, filled from an older build than the current one (overlay \
                 changed): --force recreates it"
            )
        };
        // (clone, domain, force, has domain xml) -> decision
        let table: Vec<(CloneFacts, DomainFacts, bool, bool, Decision)> = vec![
            (
                CloneFacts::Absent,
                NO_DOMAIN,
                false,
                true,
                make(false, false, false),
            ),
            (
                CloneFacts::Absent,
                NO_DOMAIN,
                true,
                true,
                make(false, false, false),
            ),
            // A foreign dataset is never touched, whatever else holds.
            (foreign(), NO_DOMAIN, false, true, skip(foreign_skip)),
            (foreign(), dom(true, true), true, true, skip(foreign_skip)),
            // Our complete clone: converge.
            (
                ours(),
                dom(true, true),
                false,
                true,
                Decision::Unchanged(running_ours.into()),
            ),
            (
                ours(),
                dom(false, true),
                false,
                true,
                Decision::Start { define: false },
            ),
            (
                ours(),
                NO_DOMAIN,
                false,
                true,
                Decision::Start { define: true },
            ),
            (
                ours(),
                NO_DOMAIN,
                false,
                false,
                Decision::Start { define: false },
            ),
            // --force replaces our clone and our definition.
            (ours(), dom(true, true), true, true, make(true, true, true)),
            (
                ours(),
                dom(false, true),
                true,
                true,
                make(false, true, true),
            ),
            (ours(), NO_DOMAIN, true, true, make(false, true, false)),
            // A half-filled clone is made again without --force, its domain stopped.
            (filling(), NO_DOMAIN, false, true, make(false, true, false)),
            (
                filling(),
                dom(true, true),
                false,
                true,
                make(true, true, true),
            ),
            // A domain lab did not define: never redefined over ...
            (
                CloneFacts::Absent,
                dom(false, false),
                true,
                true,
                skip(not_ours_domain),
            ),
            (ours(), dom(true, false), true, true, skip(not_ours_domain)),
            // ... but without a definition of our own it is used: started, or with --force stopped.
            (
                CloneFacts::Absent,
                dom(false, false),
                false,
                false,
                make(false, false, false),
            ),
            (
                CloneFacts::Absent,
                dom(true, false),
                false,
                false,
                skip(running_skip),
            ),
            (
                CloneFacts::Absent,
                dom(true, false),
                true,
                false,
                make(true, false, false),
            ),
            // A domain another lab defined: never touched, --force or not.
            (
                CloneFacts::Absent,
                other_lab(true),
                true,
                true,
                skip(other_skip),
            ),
            (
                CloneFacts::Absent,
                other_lab(false),
                false,
                false,
                skip(other_skip),
            ),
            (ours(), other_lab(true), true, false, skip(other_skip)),
            // Our clone filled from an older build: drift, recreated only with --force.
            (
                older(),
                dom(true, true),
                false,
                true,
                skip(&drift("running")),
            ),
            (
                older(),
                dom(false, true),
                false,
                true,
                skip(&drift("stopped")),
            ),
            (older(), dom(true, true), true, true, make(true, true, true)),
            // Our domain running without a clone: replaced only with --force.
            (
                CloneFacts::Absent,
                dom(true, true),
                false,
                true,
                skip(running_skip),
            ),
            (
                CloneFacts::Absent,
                dom(true, true),
                true,
                true,
                make(true, false, true),
            ),
        ];
        for (i, (clone, domain, force, has_domain_xml, expected)) in table.into_iter().enumerate() {
            let f = facts(clone, domain);
            let got = decide(
                &f,
                "n",
                "tank/n",
                Ask {
                    force,
                    has_domain_xml,
                    digest: "d",
                    reconciled: false,
                },
            );
            assert_eq!(
                got, expected,
                "row {i}: {f:?}, force {force}, xml {has_domain_xml}"
            );
        }
    }

    #[test]
    fn a_domain_is_started_only_on_free_wire_ports() {
        let taken = WireFacts::Taken(vec![20320, 20322]);
        let with = |clone, domain, wires: &WireFacts, force| {
            let f = NodeFacts {
                clone,
                domain,
                wires: wires.clone(),
            };
            let ask = Ask {
                force,
                has_domain_xml: true,
                digest: "d",
                reconciled: false,
            };
            decide(&f, "n", "tank/n", ask)
        };
        for force in [false, true] {
            // With free ports: made, or (our stopped clone, without --force) started.
            let free = &WireFacts::Free;
            assert_eq!(
                with(CloneFacts::Absent, NO_DOMAIN, free, force),
                make(false, false, false)
            );
            let stopped = if force {
                make(false, true, true)
            } else {
                Decision::Start { define: false }
            };
            assert_eq!(with(ours(), dom(false, true), free, force), stopped);
            for wires in [&taken, &WireFacts::Unknown] {
                let refused = Decision::Skip(wires.refusal().unwrap());
                // a fresh node, a stopped one started or made again: each would bind anew
                assert_eq!(with(CloneFacts::Absent, NO_DOMAIN, wires, force), refused);
                assert_eq!(with(ours(), dom(false, true), wires, force), refused);
            }
        }
        // a running domain holds its own ports: replaced with --force as ever, else unchanged
        assert_eq!(
            with(ours(), dom(true, true), &taken, true),
            make(true, true, true)
        );
        assert!(matches!(
            with(ours(), dom(true, true), &taken, false),
            Decision::Unchanged(_)
        ));
        assert!(taken.refusal().unwrap().contains("20320, 20322"));
        assert_eq!(WireFacts::Free.refusal(), None);
    }
}
