//! One module per verb: each loads what it needs, calls a library crate and hands the result
//! to [`crate::render`].

mod create;
mod destroy;
mod doctor;
mod export;
mod generate;
mod link;
mod power;
mod proto;
mod push;
mod reach;
mod save;
mod snapshot;
mod status;
mod validate;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit::Failure;
use crate::render::print_json;
use crate::settings::Format;
use crate::settings::{Command, Settings};

/// The verbs that change hypervisors: what a lock holder records and what a result line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Destroy,
    Start,
    Stop,
    Restart,
    Link,
    Push,
    Snapshot,
    SnapshotDelete,
    Restore,
    ProtoRelease,
    ProtoBegin,
    ProtoRollback,
    ProtoSync,
    ProtoPrune,
    ProtoForget,
    ProtoRefresh,
}

impl Verb {
    /// One word, as recorded by a lock holder and shown in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Destroy => "destroy",
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Link => "link",
            Verb::Push => "push",
            Verb::Snapshot => "snapshot",
            Verb::SnapshotDelete => "snapshot-delete",
            Verb::Restore => "restore",
            Verb::ProtoRelease => "proto-release",
            Verb::ProtoBegin => "proto-begin",
            Verb::ProtoRollback => "proto-rollback",
            Verb::ProtoSync => "proto-sync",
            Verb::ProtoPrune => "proto-prune",
            Verb::ProtoForget => "proto-forget",
            Verb::ProtoRefresh => "proto-refresh",
        }
    }
}

pub fn run(settings: &Settings) -> Result<(), Failure> {
    let out = &settings.output;
    match &settings.command {
        Command::Generate(s) => generate::run(out, s),
        Command::Create(s) => create::run(out, s),
        Command::Destroy(s) => destroy::run(out, s),
        Command::Status(s) => status::run(out, s),
        Command::Doctor(s) => doctor::run(out, s),
        Command::Wait(s) => reach::wait(out, s),
        Command::Power(s) => power::run(out, s),
        Command::Push(s) => push::run(out, s),
        Command::Save(s) => save::run(out, s),
        Command::Snapshot(s) => snapshot::run(out, s),
        Command::Snapshots { lab, select } => snapshot::list(out, lab, select),
        Command::Console(s) => reach::console(out, s),
        Command::Ssh(s) => reach::ssh(out, s),
        Command::Exec(s) => reach::exec(out, s),
        Command::Link(s) => link::run(out, s),
        Command::Capture(s) => link::capture(out, s),
        Command::Relay(a) => link::relay(a),
        Command::Validate(s) => validate::run(out, s),
        Command::Inventory(s) => export::inventory(s),
        Command::Graph(s) => export::graph(s),
        Command::Proto { lab, verb } => proto::run(out, lab, verb),
        Command::ConfigShow { lab, explain } => {
            let lab = lab_model::load(&lab.0)?;
            match out.format {
                Format::Json => print_json(&lab.effective.to_json()),
                Format::Text => print!("{}", lab_model::to_yaml(&lab.effective, *explain)),
            }
            Ok(())
        }
        Command::Completions(shell) => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "lab", &mut std::io::stdout());
            Ok(())
        }
        Command::Man(verb) => {
            // `lab man create` is the page `lab-create(1)` that `lab`'s page refers to.
            let mut cmd = Cli::command();
            cmd.build();
            let mut name = "lab".to_owned();
            for v in verb {
                let Some(sub) = cmd.find_subcommand(v).cloned() else {
                    let known: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
                    return Err(crate::exit::Failure::new(
                        crate::exit::Exit::Invalid,
                        format!("`{name}` has no verb `{v}` (it has {})", known.join(", ")),
                    ));
                };
                name = format!("{name}-{v}");
                cmd = sub;
            }
            let page = clap_mangen::Man::new(cmd);
            match page.render(&mut std::io::stdout()) {
                // `lab man | head`: the reader has what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                result => result.map_err(|e| {
                    crate::exit::Failure::new(
                        crate::exit::Exit::Failure,
                        format!("cannot write the man page: {e}"),
                    )
                }),
            }
        }
    }
}
