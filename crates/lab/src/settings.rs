//! The command line turned into settings, once: every command works from these and never
//! sees the raw flags; renderers see only [`Output`].
//!
//! Long: one settings type per verb and the one mapping from flags to them, read side by side.

use std::path::PathBuf;

use lab_export::InventoryFormat;
use lab_hv::reach::Readiness;
use lab_proto::{IfRunning, SnapshotKind};
use lab_reach::Power;

use crate::cli::{self, Cli};
use crate::exit::Failure;

/// How results are printed on stdout by every verb but `inventory` and `graph` (which read
/// their own formats from `--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

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
    /// Unplug NICs and destroy nodes the lab file no longer names (reconcile).
    pub prune: bool,
    /// Start the nodes (`--no-start`: only clone, fill and define them).
    pub start: bool,
    /// Other owners whose clones may be replaced (`--owner`).
    pub owners: Vec<String>,
    pub mode: Mode,
    /// How long to wait for another run's lock, in seconds (0: exit 4 at once).
    pub lock_wait: u64,
    /// Then wait until the nodes are ready.
    pub wait: Option<WaitFor>,
    /// Then validate, for this many seconds at most.
    pub validate: Option<u64>,
    /// `--start-batch`, `--start-interval`: over every hypervisor's own.
    pub start_batch: Option<u32>,
    pub start_interval: Option<u64>,
}

/// `validate`.
#[derive(Debug)]
pub struct Validate {
    pub lab: LabFiles,
    pub build: Build,
    pub select: Selection,
    pub timeout_secs: u64,
}

/// What ready means, and how long a node has to get there.
#[derive(Debug, Clone)]
pub struct WaitFor {
    pub how: Readiness,
    pub timeout_secs: u64,
}

#[derive(Debug)]
pub struct Wait {
    pub lab: LabFiles,
    pub select: Selection,
    pub until: WaitFor,
}

/// `start`, `stop` and `restart`.
#[derive(Debug)]
pub struct PowerNodes {
    pub lab: LabFiles,
    pub select: Selection,
    pub what: Power,
    /// `stop`, `restart`: seconds a guest may take to shut down before it is powered off.
    pub grace: u64,
    pub mode: Mode,
    pub lock_wait: u64,
}

/// `push`.
#[derive(Debug)]
pub struct Push {
    pub lab: LabFiles,
    pub build: Build,
    pub select: Selection,
    /// Run the reload hooks (`--no-reload`: not).
    pub reload: bool,
    pub owners: Vec<String>,
    pub mode: Mode,
    pub lock_wait: u64,
}

/// `save`.
#[derive(Debug)]
pub struct Save {
    pub lab: LabFiles,
    pub select: Selection,
    pub to: Option<PathBuf>,
    /// Given on the command line; empty: the overlay's `save` file.
    pub paths: Vec<String>,
    pub overlay: Option<String>,
}

/// `snapshot`, `snapshot --delete` and `restore`.
#[derive(Debug)]
pub struct Snapshot {
    pub lab: LabFiles,
    pub select: Selection,
    pub name: String,
    pub action: SnapshotAction,
    /// `--owner`: whose clones besides this user's may be changed.
    pub owners: Vec<String>,
    pub mode: Mode,
    pub lock_wait: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    Take { consistent: bool },
    Delete,
    Restore { drop_newer: bool },
}

/// `console` and `ssh`: one node, interactive (or one command).
#[derive(Debug)]
pub struct Reach {
    pub lab: LabFiles,
    pub node: String,
    /// The command `ssh` runs instead of a login shell.
    pub command: Vec<String>,
    /// `console --force`: take the console over.
    pub force: bool,
}

#[derive(Debug)]
pub struct Exec {
    pub lab: LabFiles,
    pub select: Selection,
    pub command: Vec<String>,
    pub timeout_secs: u64,
}

/// `lab link`: list the links, or change one.
#[derive(Debug)]
pub enum Link {
    List {
        lab: LabFiles,
        select: Selection,
    },
    Set {
        lab: LabFiles,
        /// `NODE:IFACE`, and the other end when given.
        end: String,
        other: Option<String>,
        /// What happens to it: down, up, or `count` flaps `interval` seconds apart.
        action: LinkAction,
        mode: Mode,
        lock_wait: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAction {
    Down,
    Up,
    Flap {
        count: u32,
        interval: u64,
    },
    /// Impair (or with nothing, restore) both directions, or the one from `from`.
    Impair {
        how: lab_model::impair::Impairment,
        from: Option<String>,
    },
}

/// `lab capture`.
#[derive(Debug)]
pub struct Capture {
    pub lab: LabFiles,
    pub node: String,
    pub interface: String,
    /// `None`: stdout.
    pub write: Option<PathBuf>,
    pub ask: lab_reach::link::CaptureAsk,
    pub dry_run: bool,
}

impl Capture {
    pub fn mode(&self) -> Mode {
        Mode::from_flag(self.dry_run)
    }
}

/// What `graph` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    /// Dot drawn by Graphviz.
    Svg,
}

#[derive(Debug)]
pub struct Export<F> {
    pub lab: LabFiles,
    pub select: Selection,
    pub format: F,
}

#[derive(Debug)]
pub struct Destroy {
    pub lab: LabFiles,
    pub select: Selection,
    /// Ask before destroying more than one node (only on a terminal, never with `--yes`).
    pub confirm: bool,
    /// Other owners whose clones may be destroyed (`--owner`).
    pub owners: Vec<String>,
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
pub struct Doctor {
    pub lab: LabFiles,
    pub select: Selection,
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
        bwlimit: Option<String>,
    },
    Prune {
        keep: Option<u32>,
        mode: Mode,
    },
    /// A hypervisor left the fleet for good: its sync holds go.
    Forget {
        hypervisor: String,
        mode: Mode,
    },
    Status {
        prometheus: bool,
    },
    Refresh {
        jitter_secs: u64,
        bwlimit: Option<String>,
        /// Where the Prometheus status goes after every run.
        status_file: Option<PathBuf>,
    },
}

#[derive(Debug)]
pub enum Command {
    Generate(Generate),
    Create(Create),
    Destroy(Destroy),
    Status(Status),
    Doctor(Doctor),
    Wait(Wait),
    Power(PowerNodes),
    Push(Push),
    Save(Save),
    Snapshot(Snapshot),
    Snapshots { lab: LabFiles, select: Selection },
    Console(Reach),
    Ssh(Reach),
    Exec(Exec),
    Link(Link),
    Capture(Capture),
    Relay(cli::RelayArgs),
    Validate(Validate),
    Inventory(Export<InventoryFormat>),
    Graph(Export<GraphFormat>),
    ConfigShow { lab: LabFiles, explain: bool },
    Proto { lab: LabFiles, verb: Proto },
    Completions(clap_complete::Shell),
    Man(Vec<String>),
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

/// The `--format` values `inventory` takes (text: ssh-config).
fn inventory_format(format: cli::Format) -> Result<InventoryFormat, Failure> {
    match format {
        cli::Format::Text | cli::Format::SshConfig => Ok(InventoryFormat::SshConfig),
        cli::Format::Json => Ok(InventoryFormat::Json),
        cli::Format::Ansible => Ok(InventoryFormat::Ansible),
        cli::Format::Hosts => Ok(InventoryFormat::Hosts),
        other => Err(wrong_format(
            other,
            "inventory",
            "ssh-config, ansible, hosts or json",
        )),
    }
}

/// The `--format` values `graph` takes (text: dot).
fn graph_format(format: cli::Format) -> Result<GraphFormat, Failure> {
    match format {
        cli::Format::Text | cli::Format::Dot => Ok(GraphFormat::Dot),
        cli::Format::Mermaid => Ok(GraphFormat::Mermaid),
        cli::Format::Svg => Ok(GraphFormat::Svg),
        other => Err(wrong_format(other, "graph", "dot, mermaid or svg")),
    }
}

fn format_name(format: cli::Format) -> String {
    use clap::ValueEnum;
    format
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
}

fn wrong_format(format: cli::Format, verb: &str, takes: &str) -> Failure {
    Failure::invalid(format!(
        "`lab {verb}` does not print --format {}; it prints {takes}",
        format_name(format)
    ))
}

impl Settings {
    /// The settings of a parsed command line, or why they make no sense together (a
    /// `--format` the verb does not print).
    pub fn from_cli(cli: Cli) -> Result<Settings, Failure> {
        // The formats of `inventory`, `graph` and `proto status` mean nothing to the others.
        let generic = !matches!(
            cli.command,
            cli::Command::Inventory(_) | cli::Command::Graph(_)
        );
        let proto_status = matches!(
            cli.command,
            cli::Command::Proto(cli::ProtoCommand::Status { .. })
        );
        let fits = match cli.format {
            cli::Format::Text | cli::Format::Json => true,
            cli::Format::Prometheus => proto_status,
            _ => !generic,
        };
        if !fits {
            return Err(Failure::invalid(format!(
                "--format {} is not for this verb: text and json are for the others; \
                 ssh-config, ansible and hosts for `lab inventory`; dot, mermaid and svg for \
                 `lab graph`; prometheus for `lab proto status`",
                format_name(cli.format)
            )));
        }
        let output = Output {
            format: match cli.format {
                cli::Format::Json => Format::Json,
                _ => Format::Text,
            },
            quiet: cli.quiet,
            verbose: cli.verbose,
        };
        let (files, select, build) = (LabFiles::from, Selection::from, Build::from);
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
                prune: a.prune,
                start: !a.no_start,
                owners: a.owners.owner,
                mode: Mode::from_flag(a.dry_run),
                lock_wait: a.lock.lock_wait,
                wait: a.wait.map(|how| WaitFor {
                    how,
                    timeout_secs: a.wait_timeout.wait_timeout,
                }),
                validate: a.validate.then_some(a.validate_timeout.validate_timeout),
                start_batch: a.start_batch,
                start_interval: a.start_interval,
            }),
            cli::Command::Validate(a) => Command::Validate(Validate {
                lab: files(a.lab),
                build: build(a.out),
                select: select(a.select),
                timeout_secs: a.timeout.validate_timeout,
            }),
            cli::Command::Wait(a) => Command::Wait(Wait {
                lab: files(a.lab),
                select: select(a.select),
                until: WaitFor {
                    how: a.how,
                    timeout_secs: a.timeout.wait_timeout,
                },
            }),
            cli::Command::Start(a) => power(a, Power::Start)?,
            cli::Command::Stop(a) => power(a, Power::Stop)?,
            cli::Command::Restart(a) => power(a, Power::Restart)?,
            cli::Command::Push(a) => Command::Push(Push {
                lab: files(a.lab),
                build: build(a.out),
                select: select(a.select),
                reload: !a.no_reload,
                owners: a.owners.owner,
                mode: Mode::from_flag(a.dry_run),
                lock_wait: a.lock.lock_wait,
            }),
            cli::Command::Save(a) => Command::Save(Save {
                lab: files(a.lab),
                select: select(a.select),
                to: a.to,
                paths: a.paths,
                overlay: a.overlay,
            }),
            cli::Command::Snapshot(a) => {
                let action = if a.delete {
                    SnapshotAction::Delete
                } else {
                    SnapshotAction::Take {
                        consistent: a.consistent,
                    }
                };
                Command::Snapshot(snapshot(
                    a.lab,
                    a.select,
                    a.name,
                    action,
                    a.owners.owner,
                    a.dry_run,
                    a.lock,
                )?)
            }
            cli::Command::Restore(a) => Command::Snapshot(snapshot(
                a.lab,
                a.select,
                a.name,
                SnapshotAction::Restore {
                    drop_newer: a.drop_newer,
                },
                a.owners.owner,
                a.dry_run,
                a.lock,
            )?),
            cli::Command::Snapshots(a) => Command::Snapshots {
                lab: a.lab.into(),
                select: a.select.into(),
            },
            cli::Command::Console(a) => Command::Console(Reach {
                lab: files(a.lab),
                node: a.node,
                command: Vec::new(),
                force: a.force,
            }),
            cli::Command::Ssh(a) => Command::Ssh(Reach {
                lab: files(a.lab),
                node: a.node,
                command: a.command,
                force: false,
            }),
            cli::Command::Exec(a) => Command::Exec(Exec {
                lab: files(a.lab),
                select: select(a.select),
                command: a.command,
                timeout_secs: a.timeout,
            }),
            cli::Command::Link(a) => Command::Link(link(a)?),
            cli::Command::Relay(a) => Command::Relay(a),
            cli::Command::Capture(a) => Command::Capture(capture(a)?),
            cli::Command::Inventory(a) => Command::Inventory(Export {
                lab: files(a.lab),
                select: select(a.select),
                format: inventory_format(cli.format)?,
            }),
            cli::Command::Graph(a) => Command::Graph(Export {
                lab: files(a.lab),
                select: select(a.select),
                format: graph_format(cli.format)?,
            }),
            cli::Command::Man { verb } => Command::Man(verb),
            cli::Command::Destroy(a) => Command::Destroy(Destroy {
                lab: files(a.lab),
                select: select(a.select),
                confirm: !a.yes && !a.dry_run,
                owners: a.owners.owner,
                mode: Mode::from_flag(a.dry_run),
                lock_wait: a.lock.lock_wait,
            }),
            cli::Command::Status(a) => Command::Status(Status {
                lab: files(a.lab),
                select: select(a.select),
                build: build(a.out),
            }),
            cli::Command::Doctor(a) => Command::Doctor(Doctor {
                lab: files(a.lab),
                select: select(a.select),
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
                    cli::ProtoCommand::Sync {
                        lab,
                        dry_run,
                        bwlimit,
                    } => (
                        lab,
                        Proto::Sync {
                            mode: Mode::from_flag(dry_run),
                            bwlimit: bwlimit.bwlimit,
                        },
                    ),
                    cli::ProtoCommand::Prune { lab, keep, dry_run } => (
                        lab,
                        Proto::Prune {
                            keep,
                            mode: Mode::from_flag(dry_run),
                        },
                    ),
                    cli::ProtoCommand::Forget {
                        lab,
                        hypervisor,
                        dry_run,
                    } => (
                        lab,
                        Proto::Forget {
                            hypervisor,
                            mode: Mode::from_flag(dry_run),
                        },
                    ),
                    cli::ProtoCommand::Status { lab } => (
                        lab,
                        Proto::Status {
                            prometheus: cli.format == cli::Format::Prometheus,
                        },
                    ),
                    cli::ProtoCommand::Refresh {
                        lab,
                        jitter,
                        bwlimit,
                        status_file,
                    } => (
                        lab,
                        Proto::Refresh {
                            jitter_secs: jitter,
                            bwlimit: bwlimit.bwlimit,
                            status_file,
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
        Ok(Settings { output, command })
    }
}

/// How long `stop` and `restart` wait for a guest to shut down by itself, by default.
const GRACE_SECS: u64 = 30;

fn power(a: cli::PowerArgs, what: Power) -> Result<Command, Failure> {
    if what == Power::Start && a.grace.is_some() {
        return Err(Failure::invalid(
            "--grace is for stop and restart (how long a guest may take to shut down)".to_owned(),
        ));
    }
    Ok(Command::Power(PowerNodes {
        lab: a.lab.into(),
        select: a.select.into(),
        what,
        grace: a.grace.unwrap_or(GRACE_SECS),
        mode: Mode::from_flag(a.dry_run),
        lock_wait: a.lock.lock_wait,
    }))
}

fn snapshot(
    lab: cli::LabArgs,
    select: cli::SelectArgs,
    name: String,
    action: SnapshotAction,
    owners: Vec<String>,
    dry_run: bool,
    lock: cli::LockArgs,
) -> Result<Snapshot, Failure> {
    lab_model::names::lab_snapshot(&name)
        .map_err(|rule| Failure::invalid(format!("`{name}` is not a snapshot name: {rule}")))?;
    Ok(Snapshot {
        lab: lab.into(),
        select: select.into(),
        name,
        action,
        owners,
        mode: Mode::from_flag(dry_run),
        lock_wait: lock.lock_wait,
    })
}

fn link(a: cli::LinkArgs) -> Result<Link, Failure> {
    // `lab link --node N down A`: the list's selection, given to a verb that takes none.
    // (`--lab` may come from LAB_FILE for both, so it is not one of them.)
    let list = &a.list.select;
    if a.action.is_some() && (!list.hosts.is_empty() || !list.nodes.is_empty()) {
        return Err(Failure::invalid(
            "--node and --host select the links `lab link` lists; `down`, `up`, `flap`, `set` \
             and `reset` take the link's end instead (`lab link down --lab FILE A:IFACE`)",
        ));
    }
    let (set, action) = match a.action {
        None => {
            return Ok(Link::List {
                lab: a.list.lab.into(),
                select: a.list.select.into(),
            });
        }
        Some(cli::LinkCommand::Set(s)) => {
            let how = lab_model::impair::Impairment {
                delay_us: s.delay.unwrap_or(0),
                jitter_us: s.jitter.unwrap_or(0),
                loss_ppm: s.loss.unwrap_or(0),
                duplicate_ppm: s.duplicate.unwrap_or(0),
                reorder_ppm: s.reorder.unwrap_or(0),
                rate_bps: s.rate.unwrap_or(0),
            };
            if how.is_none() {
                return Err(Failure::invalid(
                    "`lab link set` needs at least one of --delay, --jitter, --loss, \
                     --duplicate, --reorder, --rate (`lab link reset` takes an impairment away)",
                ));
            }
            if how.jitter_us > how.delay_us {
                return Err(Failure::invalid(format!(
                    "--jitter ({} ms) is more than --delay ({} ms): a frame cannot leave before \
                     it came",
                    how.jitter_us as f64 / 1000.0,
                    how.delay_us as f64 / 1000.0
                )));
            }
            (s.link, LinkAction::Impair { how, from: s.from })
        }
        Some(cli::LinkCommand::Reset(s)) => (
            s.link,
            LinkAction::Impair {
                how: lab_model::impair::Impairment::default(),
                from: s.from,
            },
        ),
        Some(cli::LinkCommand::Down(s)) => (s, LinkAction::Down),
        Some(cli::LinkCommand::Up(s)) => (s, LinkAction::Up),
        Some(cli::LinkCommand::Flap(f)) => (
            f.link,
            LinkAction::Flap {
                count: f.count,
                interval: f.interval,
            },
        ),
    };
    Ok(Link::Set {
        lab: set.lab.into(),
        end: set.end,
        other: set.other,
        action,
        mode: Mode::from_flag(set.dry_run),
        lock_wait: set.lock.lock_wait,
    })
}

fn capture(a: cli::CaptureArgs) -> Result<Capture, Failure> {
    // `r1 eth1` or `r1:eth1`.
    let (node, interface) = match (a.interface, a.node.rsplit_once(':')) {
        (Some(i), _) => (a.node, i),
        (None, Some((n, i))) if !n.is_empty() && !i.is_empty() => (n.to_owned(), i.to_owned()),
        (None, _) => {
            return Err(Failure::invalid(format!(
                "which interface of {}? `lab capture {} eth1` (or {}:eth1)",
                a.node, a.node, a.node
            )));
        }
    };
    // A filter is an expression: a word like `-c` or `-w` would be an option of the
    // hypervisor's tcpdump.
    if let Some(w) = a.filter.iter().find(|w| w.starts_with('-')) {
        return Err(Failure::invalid(format!(
            "`{w}` is not part of a capture filter (an expression like `icmp or arp`); \
             lab capture's own flags go before `--`"
        )));
    }
    Ok(Capture {
        lab: a.lab.into(),
        node,
        interface,
        write: a.write.filter(|w| w.as_os_str() != "-"),
        ask: lab_reach::link::CaptureAsk {
            filter: a.filter,
            count: a.count,
            duration: a.duration.map(std::time::Duration::from_secs),
        },
        dry_run: a.dry_run,
    })
}

impl From<cli::LabArgs> for LabFiles {
    fn from(l: cli::LabArgs) -> LabFiles {
        LabFiles(l.files)
    }
}

impl From<cli::SelectArgs> for Selection {
    fn from(s: cli::SelectArgs) -> Selection {
        Selection {
            hosts: s.hosts,
            nodes: s.nodes,
        }
    }
}

impl From<cli::BuildArgs> for Build {
    fn from(b: cli::BuildArgs) -> Build {
        Build {
            overlay: b.overlay,
            dir: b.build,
        }
    }
}
