//! The proto's commands: snapshots on the source, streams between hypervisors (send, receive,
//! resume, the direct pipe, rate limits), holds, zrepl, and what a sync records on a replica.

use std::time::Duration;

use lab_exec::Cmd;
use lab_model::Hypervisor;

use crate::own::prop;

/// A snapshot of the proto: `zfs snapshot <proto>@<name>`.
pub fn snapshot_proto(hv: &Hypervisor, name: &str) -> Cmd {
    Cmd::change([
        "zfs".to_owned(),
        "snapshot".to_owned(),
        format!("{}@{name}", hv.proto),
    ])
}

/// Rolls the proto back to its newest snapshot `name` (never `-r`: nothing newer may exist).
pub fn rollback_proto(hv: &Hypervisor, name: &str) -> Cmd {
    Cmd::change([
        "zfs".to_owned(),
        "rollback".to_owned(),
        format!("{}@{name}", hv.proto),
    ])
}

/// Destroys exactly one snapshot of the proto (zfs refuses one that has clones).
pub fn destroy_proto_snapshot(hv: &Hypervisor, name: &str) -> Cmd {
    Cmd::change([
        "zfs".to_owned(),
        "destroy".to_owned(),
        format!("{}@{name}", hv.proto),
    ])
}

/// How long a stream may stall, and a receive or a direct send may take at most: a day, so
/// that a big first send under a rate limit finishes (a stalled stream through the controller
/// is caught after `SEND_STALL` anyway).
pub const SEND_STALL: Duration = Duration::from_secs(300);
pub const TRANSFER_DEADLINE: Duration = Duration::from_secs(86_400);

/// How a proto stream is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// `-c`: blocks as they are compressed on disk (both ends OpenZFS).
    pub compressed: bool,
    /// `-w`: an encrypted proto as it is on disk, never decrypted on the way.
    pub raw: bool,
    /// A rate limit, through the limiter on the source.
    pub limit: Option<(Limiter, String)>,
}

/// What limits a stream's rate on the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    Pv,
    Mbuffer,
}

impl Limiter {
    fn word(self) -> &'static str {
        match self {
            Limiter::Pv => "pv",
            Limiter::Mbuffer => "mbuffer",
        }
    }
}

/// How a proto stream is received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// `-s`: a cut receive keeps what it got and leaves a resume token.
    pub resumable: bool,
    /// `-o volmode=none`: a zvol replica gets no device nodes.
    pub volmode_none: bool,
}

/// The `zfs send` arguments after `send`: flags, then what to send. `Resume` continues a cut
/// receive from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream<'a> {
    Full { to: &'a str },
    Incremental { from: &'a str, to: &'a str },
    Resume { token: &'a str },
}

fn send_args(src: &Hypervisor, stream: &Stream<'_>, opts: &SendOptions) -> Vec<String> {
    let mut argv = Vec::new();
    if let Stream::Resume { token } = stream {
        // A resumed stream has the flags of the send it continues.
        argv.extend(["-t".to_owned(), (*token).to_owned()]);
        return argv;
    }
    if opts.raw {
        argv.push("-w".to_owned());
    } else if opts.compressed {
        argv.push("-c".to_owned());
    }
    match stream {
        Stream::Full { to } => argv.push(format!("{}@{to}", src.proto)),
        Stream::Incremental { from, to } => {
            argv.push("-I".to_owned());
            argv.push(format!("{}@{from}", src.proto));
            argv.push(format!("{}@{to}", src.proto));
        }
        Stream::Resume { .. } => unreachable!("returned above"),
    }
    argv
}

/// On the source: `zfs send ARGS`, through the rate limiter when there is one, with the
/// status of `zfs send` (not of the limiter) as the script's.
const SEND_LIMITED: &str = r#"tool=$1 rate=$2; shift 2
{ rc=$( { { zfs send "$@" 3>&- 4>&-; echo $? >&3; } | case $tool in
    pv) pv -q -L "$rate" ;;
    mbuffer) mbuffer -q -r "$rate" ;;
  esac >&4 3>&-; } 3>&1); } 4>&1
exit "${rc:-1}""#;

/// `zfs send` of the proto (see [`Stream`]), on the source.
pub fn send(src: &Hypervisor, stream: &Stream<'_>, opts: &SendOptions) -> Cmd {
    let args = send_args(src, stream, opts);
    let argv: Vec<String> = match &opts.limit {
        None => ["zfs", "send"]
            .map(String::from)
            .into_iter()
            .chain(args)
            .collect(),
        Some((tool, rate)) => ["sh", "-c", SEND_LIMITED, "lab-send", tool.word(), rate]
            .map(String::from)
            .into_iter()
            .chain(args)
            .collect(),
    };
    Cmd::query(argv).timeout(SEND_STALL)
}

/// Whether the source can still send what a resume token asks for (`zfs send -n -t`): a
/// dry run that reads nothing but the token and the snapshots it names. Exit 0: it can;
/// [`TOKEN_REFUSED`]: it refuses the token itself (the snapshot is gone or is another one, or
/// the token is corrupt); anything else (a suspended pool, a killed `zfs`) is another failure,
/// after which the partial receive must be kept for a later try (review 3, N6).
pub fn check_resume_token(token: &str) -> Cmd {
    Cmd::query(["sh", "-c", CHECK_TOKEN, "lab-token", token])
}

/// The exit status of [`check_resume_token`] when the source refuses the token.
pub const TOKEN_REFUSED: i32 = 3;

const CHECK_TOKEN: &str = r#"out=$(LC_ALL=C zfs send -n -t "$1" 2>&1) && exit 0
case $out in
  *"no longer exists"*|*"is no longer the same snapshot"*|*"resume token is corrupt"*)
    printf '%s\n' "$out" >&2; exit 3 ;;
esac
printf '%s\n' "$out" >&2
exit 1"#;

fn receive_args(dst: &Hypervisor, opts: ReceiveOptions) -> Vec<String> {
    let mut argv: Vec<String> = ["zfs", "recv", "-u"].map(String::from).to_vec();
    if opts.resumable {
        argv.push("-s".to_owned());
    }
    if opts.volmode_none {
        argv.extend(["-o".to_owned(), "volmode=none".to_owned()]);
    }
    argv.push(dst.proto.clone());
    argv
}

/// `zfs recv -u` into the replica: never mounted, never `-F` (nothing is rolled back).
pub fn receive(dst: &Hypervisor, opts: ReceiveOptions) -> Cmd {
    Cmd::change(receive_args(dst, opts)).timeout(TRANSFER_DEADLINE)
}

/// Throws away what a cut resumable receive kept (`zfs recv -A`), when its token is refused.
pub fn abort_receive(dst: &Hypervisor) -> Cmd {
    Cmd::change(["zfs", "recv", "-A", &dst.proto])
}

/// The source pipes straight to the target: `zfs send ... | [meter|limiter] | ssh TARGET zfs
/// recv ...` (bash, for each side's status: the script fails with the first side that
/// failed). With `pv` as the meter, the bytes sent so far come out on stdout, a number a line,
/// each second. The receive's words are plain (validated names), never globbed.
const DIRECT: &str = r#"set -f
dst=$1 meter=$2 tool=$3 rate=$4; shift 4
recv=()
while [ "$1" != -- ]; do recv+=("$1"); shift; done; shift
limit() {
  case $tool in
    pv) if [ "$meter" = pv ]; then pv -f -n -b -i 1 -L "$rate" 2>&3; else pv -q -L "$rate"; fi ;;
    mbuffer) mbuffer -q -r "$rate" ;;
    *) if [ "$meter" = pv ]; then pv -f -n -b -i 1 2>&3; else cat; fi ;;
  esac
}
{ zfs send "$@" | limit | ssh -o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -- "$dst" "${recv[@]}"; } 3>&1
status=("${PIPESTATUS[@]}")
if [ "${status[0]}" -ne 0 ]; then echo "zfs send failed (status ${status[0]})" >&2; exit "${status[0]}"; fi
if [ "${status[1]}" -ne 0 ]; then echo "$tool failed (status ${status[1]})" >&2; exit "${status[1]}"; fi
exit "${status[2]}""#;

pub fn send_direct(
    src: &Hypervisor,
    dst: &Hypervisor,
    stream: &Stream<'_>,
    send: &SendOptions,
    receive: ReceiveOptions,
    meter: bool,
) -> Cmd {
    let (tool, rate) = match &send.limit {
        Some((tool, rate)) => (tool.word(), rate.as_str()),
        None => ("-", "-"),
    };
    let mut argv: Vec<String> = ["bash", "-c", DIRECT, "lab-proto-direct"]
        .map(String::from)
        .to_vec();
    argv.push(ssh_uri(&dst.peer_ssh));
    argv.push(if meter { "pv" } else { "-" }.to_owned());
    argv.push(tool.to_owned());
    argv.push(rate.to_owned());
    // The receive's words travel to the target's shell through ssh: dataset names are
    // validated plain words.
    argv.extend(receive_args(dst, receive));
    argv.push("--".to_owned());
    argv.extend(send_args(src, stream, send));
    Cmd::change(argv).timeout(TRANSFER_DEADLINE)
}

/// Runs `zfs hold|release TAG SNAPSHOT`, taking "already held" (hold) or "no such hold"
/// (release) as done.
const HOLD: &str = r#"verb=$1 tag=$2 snap=$3
out=$(LC_ALL=C zfs "$verb" "$tag" "$snap" 2>&1) && exit 0
case $out in
  *"tag already exists"*) [ "$verb" = hold ] && exit 0 ;;
  *"no such tag"*) [ "$verb" = release ] && exit 0 ;;
esac
printf '%s\n' "$out" >&2
exit 1"#;

/// The hold `tag` on the proto's snapshot `name` (see [`sync_tag`]).
pub fn hold(hv: &Hypervisor, tag: &str, name: &str) -> Cmd {
    hold_cmd(hv, "hold", tag, name)
}

pub fn release(hv: &Hypervisor, tag: &str, name: &str) -> Cmd {
    hold_cmd(hv, "release", tag, name)
}

fn hold_cmd(hv: &Hypervisor, verb: &str, tag: &str, name: &str) -> Cmd {
    Cmd::change([
        "sh".to_owned(),
        "-c".to_owned(),
        HOLD.to_owned(),
        "lab-hold".to_owned(),
        verb.to_owned(),
        tag.to_owned(),
        format!("{}@{name}", hv.proto),
    ])
}

/// The tag of the holds that keep `target`'s next increment base, on the source and on the
/// target: `lab-sync:<target>`.
pub fn sync_tag(target: &Hypervisor) -> String {
    format!("lab-sync:{}", target.name)
}

/// Waits on a target until its replica has a snapshot with `guid` (zrepl delivers on its own
/// schedule once woken): exit 0 when it has, 3 after `secs`.
const ZREPL_WAIT: &str = r#"ds=$1 guid=$2 secs=$3 start=$(date +%s)
while :; do
  zfs get -H -p -o value guid -r -d 1 "$ds" 2>/dev/null | grep -qx -- "$guid" && exit 0
  [ $(( $(date +%s) - start )) -ge "$secs" ] && exit 3
  sleep 2
done"#;

pub fn zrepl_wait(dst: &Hypervisor, guid: &str, secs: u64) -> Cmd {
    Cmd::query([
        "sh".to_owned(),
        "-c".to_owned(),
        ZREPL_WAIT.to_owned(),
        "lab-zrepl-wait".to_owned(),
        dst.proto.clone(),
        guid.to_owned(),
        secs.to_string(),
    ])
    .timeout(Duration::from_secs(secs + 30))
}

/// An ssh destination as the `ssh` command takes it: `[user@]host:port` becomes
/// `ssh://[user@]host:port` (plain `ssh` reads `host:port` as a host name).
fn ssh_uri(dest: &str) -> String {
    match dest.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("ssh://{dest}")
        }
        _ => dest.to_owned(),
    }
}

/// A zvol replica without device nodes (what `recv -o volmode=none` gives a receive).
pub fn replica_volmode_none(dst: &Hypervisor) -> Cmd {
    Cmd::change(["zfs", "set", "volmode=none", &dst.proto])
}

/// Asks a target's zrepl to pull now.
pub fn zrepl_wakeup(job: &str) -> Cmd {
    Cmd::change(["zrepl", "signal", "wakeup", job])
}

/// After a good sync: the replica stays read-only, records when, and forgets the last error.
pub fn after_sync(dst: &Hypervisor, now: u64) -> [Cmd; 3] {
    let [synced, forget_error] = after_zrepl(dst, now);
    [
        Cmd::change(["zfs", "set", "readonly=on", &dst.proto]),
        synced,
        forget_error,
    ]
}

/// After zrepl delivered: the sync recorded, the last error forgotten (zrepl keeps the
/// replica as it likes otherwise).
pub fn after_zrepl(dst: &Hypervisor, now: u64) -> [Cmd; 2] {
    [
        Cmd::change([
            "zfs".to_owned(),
            "set".to_owned(),
            format!("{}={now}", prop::SYNCED),
            dst.proto.clone(),
        ]),
        Cmd::change(["zfs", "inherit", prop::SYNC_ERROR, &dst.proto]),
    ]
}

/// Leaves a sync's error on the replica (one line, at most 300 characters).
pub fn record_sync_error(dst: &Hypervisor, error: &str) -> Cmd {
    let one_line: String = error.split_whitespace().collect::<Vec<_>>().join(" ");
    let one_line: String = one_line.chars().take(300).collect();
    Cmd::change([
        "zfs".to_owned(),
        "set".to_owned(),
        format!("{}={one_line}", prop::SYNC_ERROR),
        dst.proto.clone(),
    ])
}
