//! Command-line arguments: the raw flags, before they are checked against a lab.
//!
//! Long: every verb's flags with their help, which is the reference users read (`lab help`,
//! the man pages), one verb after the other.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "lab",
    version,
    about = "Pristine network labs on ZFS + libvirt hypervisors, in seconds",
    after_help = "Exit codes: 0 success (including nothing to do), 1 failure, 2 invalid input or usage, \
                  3 partial (some nodes failed or were skipped), 4 lock held by another run, \
                  128 + N stopped by signal N (129 SIGHUP, 130 SIGINT, 143 SIGTERM)."
)]
pub struct Cli {
    /// Output format of the result on stdout: text or json for every verb but `graph` (dot,
    /// mermaid or svg) and the interactive `ssh` and `console`; `inventory` also takes
    /// ssh-config, ansible and hosts, `proto status` prometheus. Logs and progress always go
    /// to stderr.
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
    SshConfig,
    Ansible,
    Hosts,
    Dot,
    Mermaid,
    Svg,
    /// The Prometheus text format (`lab proto status`), for node_exporter's textfile collector.
    Prometheus,
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
    /// Wait until the nodes are ready (checked on their hypervisors).
    Wait(WaitArgs),
    /// Before a first create: check every hypervisor of the lab (ssh, ZFS and its features,
    /// the proto and its snapshot, space, libvirt, QEMU, KVM, dnsmasq, tools, the lab's
    /// management prefixes and wire ports, UDP between the hypervisors links cross) and say
    /// what to fix. Exits 1 when a check fails.
    Doctor(DoctorArgs),
    /// Start the selected nodes' domains (their clones and links as they are).
    Start(PowerArgs),
    /// Power the selected nodes' domains off; their clones and links stay.
    Stop(PowerArgs),
    /// Power the selected nodes off and start them again.
    Restart(PowerArgs),
    /// Generate, then bring each selected node's changed files into it without recreating it
    /// (into its clone, or through its running guest) and run its reload hook
    /// (`/etc/lab/reload`, from the overlay) with the changed paths.
    Push(PushArgs),
    /// Copy chosen paths (the overlay's `save` file, or --path) out of every selected node as
    /// it has them now, into DIR/<node>/...: e.g. the routers' configs, to commit.
    Save(SaveArgs),
    /// Snapshot the selected nodes' disks (their clones) as NAME, all at once: one `zfs
    /// snapshot` per hypervisor; `--delete NAME` deletes one. `lab restore NAME` goes back.
    Snapshot(SnapshotArgs),
    /// The lab's snapshots: name, when taken, nodes, space held.
    Snapshots(SnapshotsArgs),
    /// Roll the selected nodes back to snapshot NAME: each is powered off, its clone rolled
    /// back, and started again if it ran.
    Restore(RestoreArgs),
    /// A node's serial console, through its hypervisor (escape: Ctrl+]).
    Console(ConsoleArgs),
    /// ssh into a node through its hypervisor, or run CMD there; exits with CMD's status.
    Ssh(SshArgs),
    /// Run CMD on many nodes at once, one result per node.
    Exec(ExecArgs),
    /// The lab's links with both ends' state (no subcommand), or take a link down, up or
    /// flap it: the guests' NICs on both ends lose or get back their carrier.
    #[command(subcommand_negates_reqs = true)]
    Link(LinkArgs),
    /// A link end's frames as a pcap stream: `lab capture r1 eth1 | wireshark -k -i -`, or
    /// `-w FILE`; both directions, Ethernet, as the guest sees them.
    Capture(CaptureArgs),
    #[command(hide = true)]
    Relay(RelayArgs),
    /// Check that the lab works, again until it does or time is up: every link's BGP session
    /// Established and OSPF neighbour Full (where the build runs FRR or BIRD), every link's
    /// peer answering a ping, and the lab file's `validate:` checks. Exits 0 when all pass, 1
    /// when some fail, 3 when a node cannot be reached.
    Validate(ValidateArgs),
    /// How to reach the nodes, for ssh, Ansible or /etc/hosts (from the lab files alone).
    Inventory(ExportArgs),
    /// The topology: nodes per hypervisor, links with interfaces and prefixes.
    Graph(ExportArgs),
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
    /// Print the man page (roff): `lab man > lab.1`; `lab man create > lab-create.1` for a
    /// verb's own page (`lab man proto sync` for a proto verb's).
    Man {
        /// The verb (and sub-verb) whose page to print; none for `lab` itself.
        verb: Vec<String>,
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
    /// Only this node, or the nodes a glob such as `vpp0-*` matches (repeatable).
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

/// `ssh`, `console:REGEX` or `tcp:PORT`.
fn readiness(s: &str) -> Result<lab_hv::reach::Readiness, String> {
    use lab_hv::reach::Readiness;
    match s.split_once(':') {
        None if s == "ssh" => Ok(Readiness::Ssh),
        Some(("console", re)) if !re.is_empty() => {
            // The hypervisor runs `grep -E`; a pattern it cannot read is said now, before
            // anything waits. (grep here exits 1 for no match, 2 for a bad pattern.)
            let argv = ["grep", "-E", "-e", re].map(String::from);
            match lab_exec::local::filter(&argv, b"") {
                Err(lab_exec::ExecError::Failed {
                    status: 2, stderr, ..
                }) => Err(format!(
                    "`{re}` is not an extended regular expression: {}",
                    stderr.trim().trim_start_matches("grep: ")
                )),
                _ => Ok(Readiness::Console(re.to_owned())),
            }
        }
        Some(("tcp", port)) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(Readiness::Tcp)
            .ok_or_else(|| format!("`{port}` is not a TCP port (1-65535)")),
        _ => Err("expected ssh, console:REGEX or tcp:PORT".to_owned()),
    }
}

#[derive(Args, Debug)]
pub struct WaitTimeout {
    /// Give up on a node that is not ready after this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait_timeout: u64,
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
    /// Start each hypervisor's nodes N at a time (over its `start_batch`), in the order of
    /// the lab's links and `start_after`; each batch starts when the one before it has.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub start_batch: Option<u32>,
    /// Seconds between two batches of starts (over a hypervisor's `start_interval`).
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub start_interval: Option<u64>,
    /// Replace running domains and existing clones (only ones lab made for this lab); a
    /// replaced clone's snapshots (`lab snapshot`) go with it.
    #[arg(long)]
    pub force: bool,
    /// Take out what the lab file no longer names: NICs of nodes that exist (unplugged from
    /// running domains), and this lab's nodes (destroyed). Without it they are only reported.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub owners: OwnerArgs,
    /// Clone, fill and define every node, but start none (`lab start` starts them later).
    #[arg(long, conflicts_with_all = ["wait", "validate"])]
    pub no_start: bool,
    /// Then wait until every node is ready: its ssh server answers (`ssh`, the default), a
    /// console line matches (`console:REGEX`) or a port accepts (`tcp:PORT`).
    #[arg(long, value_name = "HOW", num_args = 0..=1, require_equals = true,
          default_missing_value = "ssh", value_parser = readiness)]
    pub wait: Option<lab_hv::reach::Readiness>,
    #[command(flatten)]
    pub wait_timeout: WaitTimeout,
    /// Then validate the lab (as `lab validate`), reporting seconds from the create's start to
    /// converged.
    #[arg(long)]
    pub validate: bool,
    #[command(flatten)]
    pub validate_timeout: ValidateTimeout,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print each node's decision and the exact commands; change nothing on the hypervisors.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct OwnerArgs {
    /// Also change (replace, destroy, push into, snapshot, restore) clones of this lab that
    /// OWNER made (`lab status` shows each clone's owner, user@controller); without it,
    /// another user's lab of the same name is left alone. Repeatable.
    #[arg(long = "owner", value_name = "OWNER")]
    pub owner: Vec<String>,
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
    /// Do not ask for confirmation on a terminal. Without a terminal on stdin (cron, CI,
    /// scripts) nothing is asked: every selected node is destroyed.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub owners: OwnerArgs,
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

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// What ready means: `ssh` (its ssh server answers), `console:REGEX`, `tcp:PORT`.
    #[arg(long = "for", value_name = "HOW", default_value = "ssh", value_parser = readiness)]
    pub how: lab_hv::reach::Readiness,
    #[command(flatten)]
    pub timeout: WaitTimeout,
}

#[derive(Args, Debug)]
pub struct PowerArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    /// stop, restart: ask each guest to shut down (ACPI) and power it off when it has not
    /// after this long; 0 powers it off at once [default: 30].
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub grace: Option<u64>,
    /// Print each node's decision and the exact commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// The node.
    pub node: String,
    /// Take the console over from whoever is on it.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct SshArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// The node.
    pub node: String,
    /// A command to run instead of a login shell: one word is a shell line
    /// (`'ip a | grep UP'`), several are one command with exactly those arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ValidateTimeout {
    /// Keep checking for this long before calling a check failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub validate_timeout: u64,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// The build whose routing daemons are checked (the overlay the lab was created with).
    #[command(flatten)]
    pub out: BuildArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub timeout: ValidateTimeout,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub out: BuildArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Bring the files in, but run no reload hook.
    #[arg(long)]
    pub no_reload: bool,
    #[command(flatten)]
    pub owners: OwnerArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    /// List each node's files that would change and the commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Where to write (default: `saved/<lab>-<UTC time>`, made new).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// A path to copy, relative to the guests' `/` (repeatable); instead of the overlay's
    /// `save` file.
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// The overlay whose `save` file names the paths (default: the lab's `overlay:`).
    #[arg(long, value_name = "NAME")]
    pub overlay: Option<String>,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// The snapshot's name: [a-z0-9][a-z0-9_.-]*, at most 40 characters.
    pub name: String,
    /// Delete the snapshot NAME instead of taking it.
    #[arg(long, conflicts_with = "consistent")]
    pub delete: bool,
    /// Suspend each hypervisor's running nodes while it takes its share (their disks are
    /// still, as after a clean pause, not as after a power cut); they resume at once after.
    #[arg(long)]
    pub consistent: bool,
    #[command(flatten)]
    pub owners: OwnerArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print each hypervisor's command; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// The snapshot to go back to (`lab snapshots` lists them).
    pub name: String,
    /// Destroy the node's snapshots taken after NAME (a clone rolled back loses them);
    /// without it, restore refuses when there are any.
    #[arg(long)]
    pub drop_newer: bool,
    #[command(flatten)]
    pub owners: OwnerArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print each node's steps; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Give up on a node whose command has not ended after this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// The command (after `--`): one word is a shell line (`'ip a | grep UP'`), several are
    /// one command with exactly those arguments (`sh -c 'a; b'`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
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
    /// Send every target the snapshots it misses (incremental, by GUID; resumable on OpenZFS).
    Sync {
        #[command(flatten)]
        lab: LabArgs,
        /// Print what would be sent; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        bwlimit: BwLimit,
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
    /// HV left the fleet for good: release its sync holds (`lab-sync:HV`) on every hypervisor
    /// of the fleet, so that prune may take the snapshots they kept.
    Forget {
        #[command(flatten)]
        lab: LabArgs,
        /// The hypervisor that left (it must not be in the fleet file any more).
        #[arg(value_name = "HV")]
        hypervisor: String,
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
        #[command(flatten)]
        bwlimit: BwLimit,
        /// After every run, write `lab proto status` in the Prometheus text format to PATH
        /// (atomically: node_exporter's textfile collector never reads half a file).
        #[arg(long, value_name = "PATH")]
        status_file: Option<PathBuf>,
    },
}

/// `50M`, `800k`: bytes per second.
fn rate(s: &str) -> Result<String, String> {
    lab_model::names::rate(s)
        .map(|()| s.to_owned())
        .map_err(|rule| rule.to_string())
}

#[derive(Args, Debug)]
pub struct BwLimit {
    /// Limit each stream to RATE bytes per second (`50M`, `800k`), through `pv` or `mbuffer`
    /// on the source; overrides `proto.bwlimit`.
    #[arg(long, value_name = "RATE", value_parser = rate)]
    pub bwlimit: Option<String>,
}

#[derive(Args, Debug)]
pub struct LinkArgs {
    #[command(subcommand)]
    pub action: Option<LinkCommand>,
    #[command(flatten)]
    pub list: LinkListArgs,
}

#[derive(Args, Debug)]
pub struct LinkListArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Subcommand, Debug)]
pub enum LinkCommand {
    /// Take a link down: both ends' NICs lose their carrier (in the running domains and their
    /// definitions, so a restart keeps it) until `lab link up`.
    Down(LinkStateArgs),
    /// Bring a link back up on both ends.
    Up(LinkStateArgs),
    /// Take a link down and up again, COUNT times, INTERVAL seconds apart; it ends up.
    Flap(LinkFlapArgs),
    /// Impair a link: delay, jitter, loss, duplication, reordering, rate, in both directions
    /// or the one `--from` a node (replacing what it had). Until `lab link reset`, or the
    /// node stops.
    Set(LinkSetArgs),
    /// Take a link's impairment away (both directions, or the one `--from` a node).
    Reset(LinkResetArgs),
}

/// `20ms`, `1.5ms`, `1s`.
fn time_us(s: &str) -> Result<u64, String> {
    lab_model::impair::duration_us(s)
}

/// `1%`, `0.5%`.
fn ppm(s: &str) -> Result<u32, String> {
    lab_model::impair::percent_ppm(s)
}

/// `10mbit`, `512kbit`.
fn bps(s: &str) -> Result<u64, String> {
    lab_model::impair::rate_bps(s)
}

#[derive(Args, Debug)]
pub struct LinkSetArgs {
    #[command(flatten)]
    pub link: LinkStateArgs,
    /// Only the frames this end of the link sends (default: both directions).
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
    /// Added to every frame (one way: a ping's round trip gains it twice in both directions).
    #[arg(long, value_name = "TIME", value_parser = time_us)]
    pub delay: Option<u64>,
    /// The delay varies by up to this much either way.
    #[arg(long, value_name = "TIME", value_parser = time_us)]
    pub jitter: Option<u64>,
    /// Frames dropped.
    #[arg(long, value_name = "PERCENT", value_parser = ppm)]
    pub loss: Option<u32>,
    /// Frames sent twice.
    #[arg(long, value_name = "PERCENT", value_parser = ppm)]
    pub duplicate: Option<u32>,
    /// Frames sent at once, without the delay (so they overtake the ones before them).
    #[arg(long, value_name = "PERCENT", value_parser = ppm)]
    pub reorder: Option<u32>,
    /// The most the link carries (`10mbit`, `512kbit`); frames queue for it.
    #[arg(long, value_name = "RATE", value_parser = bps)]
    pub rate: Option<u64>,
}

#[derive(Args, Debug)]
pub struct LinkResetArgs {
    #[command(flatten)]
    pub link: LinkStateArgs,
    /// Only the frames this end sends (default: both directions).
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
}

/// `lab relay` (hidden): what `lab link set` runs on a hypervisor; not for people.
#[derive(Args, Debug)]
pub struct RelayArgs {
    #[arg(long)]
    pub socket: String,
    #[arg(long)]
    pub to: std::net::SocketAddr,
    #[arg(long)]
    pub label: String,
    #[arg(long, default_value_t = 0)]
    pub delay_us: u64,
    #[arg(long, default_value_t = 0)]
    pub jitter_us: u64,
    #[arg(long, default_value_t = 0)]
    pub loss_ppm: u32,
    #[arg(long, default_value_t = 0)]
    pub duplicate_ppm: u32,
    #[arg(long, default_value_t = 0)]
    pub reorder_ppm: u32,
    #[arg(long, default_value_t = 0)]
    pub rate_bps: u64,
}

#[derive(Args, Debug)]
pub struct LinkStateArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// One end of the link, NODE:IFACE (e.g. r1:eth1).
    #[arg(value_name = "A")]
    pub end: String,
    /// Its other end, checked against the lab file (optional).
    #[arg(value_name = "B")]
    pub other: Option<String>,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print the exact commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct LinkFlapArgs {
    #[command(flatten)]
    pub link: LinkStateArgs,
    /// How many times the link goes down and up.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Seconds down, and seconds up between two flaps.
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub interval: u64,
}

#[derive(Args, Debug)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// The node (or NODE:IFACE alone).
    pub node: String,
    /// Its interface (a link's: eth1, eth2 ...).
    #[arg(value_name = "IFACE")]
    pub interface: Option<String>,
    /// Write the pcap to FILE instead of stdout (`-` is stdout).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after this many frames.
    #[arg(short = 'c', long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: Option<u64>,
    /// Print the exact command; capture nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A tcpdump filter (after `--`: `-- icmp or arp`), applied on the hypervisor, which
    /// needs tcpdump for it.
    #[arg(last = true, value_name = "FILTER")]
    pub filter: Vec<String>,
}
