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
    /// Inspect the merged lab configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
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

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// The overlay to render (default: the lab's `overlay:`).
    #[arg(long, value_name = "NAME")]
    pub overlay: Option<String>,
    /// Where to write the output.
    #[arg(long, value_name = "DIR", default_value = "build", env = "LAB_BUILD")]
    pub build: PathBuf,
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
