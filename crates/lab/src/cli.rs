//! Command-line arguments: the raw flags, before they are checked against a lab.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "lab",
    version,
    about = "Pristine network labs on ZFS + libvirt hypervisors, in seconds",
    after_help = "Exit codes: 0 success (including nothing to do), 1 failure, 2 invalid input or usage, \
                  3 partial (some nodes failed or were skipped), 4 lock held by another run."
)]
pub struct Cli {
    /// Output format of the result on stdout. Logs and progress always go to stderr.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text, env = "LAB_FORMAT")]
    pub format: Format,

    /// Print nothing on stderr but errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Log every step of every node (plain lines on stderr, also on a terminal).
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render the overlay for each node into the build directory.
    Generate(GenerateArgs),
    /// Generate, then clone, fill and start every selected node on its hypervisor.
    Create(CreateArgs),
    /// Stop the nodes and destroy their clones (only what lab made for this lab).
    Destroy(DestroyArgs),
    /// Per node: domain state, clone, origin, age, owner, drift; and orphaned clones.
    Status(StatusArgs),
    /// Inspect the merged lab configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The proto image: release, replicate to the fleet, prune (`proto:` in the lab files).
    #[command(subcommand)]
    Proto(ProtoCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug, Clone)]
pub struct LabArgs {
    /// A lab file; repeat to merge several, later ones overriding earlier ones.
    #[arg(
        long = "lab",
        short = 'l',
        value_name = "FILE",
        required = true,
        env = "LAB_FILE",
        value_delimiter = ':'
    )]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    /// Only nodes on this hypervisor (repeatable).
    #[arg(long = "host", value_name = "HV")]
    pub hosts: Vec<String>,
    /// Only this node (repeatable).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
}

/// Which overlay, and where its build lives.
#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// The overlay (default: the lab's `overlay:`).
    #[arg(long, value_name = "NAME")]
    pub overlay: Option<String>,
    /// Where the generated trees are written and read.
    #[arg(long, value_name = "DIR", default_value = "build", env = "LAB_BUILD")]
    pub build: PathBuf,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub out: BuildArgs,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the merged lab, defaults applied (YAML, or JSON with --format json).
    Show {
        #[command(flatten)]
        lab: LabArgs,
        /// Say which file:line set each value.
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub out: BuildArgs,
    /// Use the existing build instead of generating first.
    #[arg(long)]
    pub no_generate: bool,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Replace running domains and existing clones (only ones lab made for this lab).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print each node's decision and the exact commands; change nothing on the hypervisors.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// When another run holds the lab's lock, wait up to this long for it instead of exiting 4.
    #[arg(long, value_name = "SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub lock_wait: u64,
}

#[derive(Args, Debug)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Do not ask for confirmation on a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print each node's decision and the exact commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// The build compared with the clones (overlay drift).
    #[command(flatten)]
    pub out: BuildArgs,
}

#[derive(Subcommand, Debug)]
pub enum ProtoCommand {
    /// Snapshot the proto on the source (`YYYYMMDD-release`; a second one that day gets `-2-`).
    Release {
        #[command(flatten)]
        lab: LabArgs,
        /// The snapshot name instead of the default.
        #[arg(long)]
        name: Option<String>,
        /// Even while the proto's domain runs.
        #[arg(long)]
        force: bool,
    },
    /// Snapshot the proto as `YYYYMMDD-before` ahead of a maintenance, for `rollback`.
    Begin {
        #[command(flatten)]
        lab: LabArgs,
        #[arg(long)]
        force: bool,
    },
    /// Roll the source's proto back to the `-before` snapshot of the last `begin`.
    Rollback {
        #[command(flatten)]
        lab: LabArgs,
        #[arg(long)]
        force: bool,
    },
    /// Send every target the snapshots it misses (incremental, by GUID).
    Sync {
        #[command(flatten)]
        lab: LabArgs,
        /// Print what would be sent; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Destroy old snapshots that no clone uses, on every hypervisor.
    Prune {
        #[command(flatten)]
        lab: LabArgs,
        /// Release snapshots to keep per hypervisor (default: `proto.keep`).
        #[arg(long)]
        keep: Option<u32>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Per hypervisor: newest release, in sync with the source or not, lag, pins, last error.
    Status {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// `sync` then `prune`, for cron: one run at a time (a second exits 0), quiet on success.
    Refresh {
        #[command(flatten)]
        lab: LabArgs,
        /// Sleep a random 0..SECONDS first, so a fleet's controllers do not all start at once.
        #[arg(long, value_name = "SECONDS", default_value_t = 0,
              value_parser = clap::value_parser!(u64).range(0..=86_400))]
        jitter: u64,
    },
}
