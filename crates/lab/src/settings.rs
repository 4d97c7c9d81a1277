//! The command line turned into settings, once: every command works from these and never
//! sees the raw flags; renderers see only [`Output`].

use std::path::PathBuf;

use lab_proto::{IfRunning, SnapshotKind};

use crate::cli::{self, Cli, Format};

/// How results, logs and progress are shown.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: Format,
    /// Nothing on stderr but errors.
    pub quiet: bool,
    /// Every step of every node on stderr.
    pub verbose: bool,
}

/// Whether a changing verb changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    /// Queries run, changes are recorded and printed.
    DryRun,
}

impl Mode {
    fn from_flag(dry_run: bool) -> Mode {
        if dry_run { Mode::DryRun } else { Mode::Live }
    }

    pub fn is_dry_run(self) -> bool {
        self == Mode::DryRun
    }
}

/// The lab files, merged in order.
#[derive(Debug, Clone)]
pub struct LabFiles(pub Vec<PathBuf>);

/// `--host` and `--node`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub hosts: Vec<String>,
    pub nodes: Vec<String>,
}

/// Which overlay, and where its build lives.
#[derive(Debug, Clone)]
pub struct Build {
    pub overlay: Option<String>,
    pub dir: PathBuf,
}

#[derive(Debug)]
pub struct Generate {
    pub lab: LabFiles,
    pub build: Build,
    pub select: Selection,
}

#[derive(Debug)]
pub struct Create {
    pub lab: LabFiles,
    pub build: Build,
    pub select: Selection,
    /// Render the overlay first (`--no-generate` uses the build as it is).
    pub generate: bool,
    /// Replace this lab's running domains and complete clones; read by `lab_create::decide`.
    pub force: bool,
    pub mode: Mode,
    /// How long to wait for another run's lock, in seconds (0: exit 4 at once).
    pub lock_wait: u64,
}

#[derive(Debug)]
pub struct Destroy {
    pub lab: LabFiles,
    pub select: Selection,
    /// Ask before destroying more than one node (only on a terminal, never with `--yes`).
    pub confirm: bool,
    pub mode: Mode,
    pub lock_wait: u64,
}

#[derive(Debug)]
pub struct Status {
    pub lab: LabFiles,
    pub select: Selection,
    /// The build the clones are compared with (overlay drift).
    pub build: Build,
}

#[derive(Debug)]
pub enum Proto {
    /// `release` (`kind` release) and `begin` (`kind` before).
    Snapshot {
        kind: SnapshotKind,
        name: Option<String>,
        if_running: IfRunning,
    },
    Rollback {
        if_running: IfRunning,
    },
    Sync {
        mode: Mode,
    },
    Prune {
        keep: Option<u32>,
        mode: Mode,
    },
    Status,
    Refresh {
        jitter_secs: u64,
    },
}

#[derive(Debug)]
pub enum Command {
    Generate(Generate),
    Create(Create),
    Destroy(Destroy),
    Status(Status),
    ConfigShow { lab: LabFiles, explain: bool },
    Proto { lab: LabFiles, verb: Proto },
    Completions(clap_complete::Shell),
}

#[derive(Debug)]
pub struct Settings {
    pub output: Output,
    pub command: Command,
}

/// `--force` of the proto verbs: go on while the proto's VM runs.
fn if_running(force: bool) -> IfRunning {
    if force {
        IfRunning::Proceed
    } else {
        IfRunning::Refuse
    }
}

impl Settings {
    pub fn from_cli(cli: Cli) -> Settings {
        let output = Output {
            format: cli.format,
            quiet: cli.quiet,
            verbose: cli.verbose,
        };
        let files = |l: cli::LabArgs| LabFiles(l.files);
        let select = |s: cli::SelectArgs| Selection {
            hosts: s.hosts,
            nodes: s.nodes,
        };
        let build = |b: cli::BuildArgs| Build {
            overlay: b.overlay,
            dir: b.build,
        };
        let command = match cli.command {
            cli::Command::Generate(a) => Command::Generate(Generate {
                lab: files(a.lab),
                build: build(a.out),
                select: select(a.select),
            }),
            cli::Command::Create(a) => Command::Create(Create {
                lab: files(a.lab),
                build: build(a.out),
                select: select(a.select),
                generate: !a.no_generate,
                force: a.force,
                mode: Mode::from_flag(a.dry_run),
                lock_wait: a.lock.lock_wait,
            }),
            cli::Command::Destroy(a) => Command::Destroy(Destroy {
                lab: files(a.lab),
                select: select(a.select),
                confirm: !a.yes && !a.dry_run,
                mode: Mode::from_flag(a.dry_run),
                lock_wait: a.lock.lock_wait,
            }),
            cli::Command::Status(a) => Command::Status(Status {
                lab: files(a.lab),
                select: select(a.select),
                build: build(a.out),
            }),
            cli::Command::Config(cli::ConfigCommand::Show { lab, explain }) => {
                Command::ConfigShow {
                    lab: files(lab),
                    explain,
                }
            }
            cli::Command::Proto(p) => {
                let (lab, verb) = match p {
                    cli::ProtoCommand::Release { lab, name, force } => (
                        lab,
                        Proto::Snapshot {
                            kind: SnapshotKind::Release,
                            name,
                            if_running: if_running(force),
                        },
                    ),
                    cli::ProtoCommand::Begin { lab, force } => (
                        lab,
                        Proto::Snapshot {
                            kind: SnapshotKind::Before,
                            name: None,
                            if_running: if_running(force),
                        },
                    ),
                    cli::ProtoCommand::Rollback { lab, force } => (
                        lab,
                        Proto::Rollback {
                            if_running: if_running(force),
                        },
                    ),
                    cli::ProtoCommand::Sync { lab, dry_run } => (
                        lab,
                        Proto::Sync {
                            mode: Mode::from_flag(dry_run),
                        },
                    ),
                    cli::ProtoCommand::Prune { lab, keep, dry_run } => (
                        lab,
                        Proto::Prune {
                            keep,
                            mode: Mode::from_flag(dry_run),
                        },
                    ),
                    cli::ProtoCommand::Status { lab } => (lab, Proto::Status),
                    cli::ProtoCommand::Refresh { lab, jitter } => (
                        lab,
                        Proto::Refresh {
                            jitter_secs: jitter,
                        },
                    ),
                };
                Command::Proto {
                    lab: files(lab),
                    verb,
                }
            }
            cli::Command::Completions { shell } => Command::Completions(shell),
        };
        Settings { output, command }
    }
}
