//! What happened to each node, and progress while it happens: the vocabulary create and
//! destroy report in, and the binary renders.

use lab_model::LabNode;

/// Progress of one node, for whoever displays it.
#[derive(Debug, Clone)]
pub enum Event {
    Step {
        node: String,
        hypervisor: String,
        step: &'static str,
    },
    Done {
        node: String,
        hypervisor: String,
        outcome: String,
    },
    /// Bytes moved so far (proto sync).
    Bytes {
        node: String,
        hypervisor: String,
        bytes: u64,
    },
}

pub type Events<'a> = &'a (dyn Fn(Event) + Sync);

/// How one node ended.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Outcome {
    /// Created (or destroyed) as asked.
    Done,
    /// Nothing to do: already as asked.
    Unchanged { reason: String },
    /// Left alone on purpose.
    Skipped { reason: String },
    /// A step failed; `rolled_back` says whether what this run made was removed again.
    Failed {
        step: String,
        error: String,
        rolled_back: bool,
    },
}

impl Outcome {
    /// One word for logs and progress lines.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    pub node: String,
    pub hypervisor: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The snapshot a created node was cloned from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// How a node that is done went, when there is more to say (how a stop ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// With `--dry-run`: the commands that would run, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

impl NodeReport {
    pub fn new(node: &LabNode, outcome: Outcome) -> NodeReport {
        NodeReport {
            node: node.name.clone(),
            hypervisor: node.hypervisor.clone(),
            outcome,
            snapshot: None,
            note: None,
            commands: Vec::new(),
        }
    }
}

/// The overall result: what the exit code is made of.
pub fn summary(reports: &[NodeReport]) -> Summary {
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    Summary {
        done: count(|o| matches!(o, Outcome::Done)),
        unchanged: count(|o| matches!(o, Outcome::Unchanged { .. })),
        skipped: count(|o| matches!(o, Outcome::Skipped { .. })),
        failed: count(|o| matches!(o, Outcome::Failed { .. })),
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub done: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub failed: usize,
}

/// What create or destroy did with a hypervisor's management network.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NetworkReport {
    pub hypervisor: String,
    pub network: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// What was done, in words: `defined and started`, `started`, `removed` ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// With `--dry-run`: the commands that would run, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}
