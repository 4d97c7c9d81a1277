//! The demo's look at links: `lab link` for one node, and a capture of one of its links
//! across hypervisors while it pings, read back by tcpdump.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{Result, root, say};

/// The links of the example lab, and 20 frames of one that crosses hypervisors (vpp0-1 on
/// hv0 to vpp1-1 on hv1) while vpp0-1 pings its peer there, summarised by tcpdump.
pub fn capture(lab: &Path) -> Result {
    let vpp = ["--lab", "labs/vpp.yaml"];
    say("Links: every one with both ends' state; then 20 frames of vpp0-1:eth3 (to vpp1-1 on");
    say("another hypervisor), captured while vpp0-1 pings its peer there:");
    say("$ lab link --lab labs/vpp.yaml --node vpp0-1");
    let status = Command::new(lab)
        .args(["link", "--lab", "labs/vpp.yaml", "--node", "vpp0-1"])
        .current_dir(root())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("`lab link` failed ({status})"));
    }
    let pcap = std::env::temp_dir().join("lab-demo-vpp0-1-eth3.pcap");
    let file = pcap.to_str().ok_or("a temporary path that is not UTF-8")?;
    say(&format!(
        "$ lab capture --lab labs/vpp.yaml vpp0-1 eth3 --count 20 --duration 60 -w {file}"
    ));
    let capture = Command::new(lab)
        .arg("capture")
        .args(vpp)
        .args([
            "vpp0-1",
            "eth3",
            "--count",
            "20",
            "--duration",
            "60",
            "-w",
            file,
        ])
        .current_dir(root())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(3));
    // The peer of a /31 is the other address of the pair.
    let ping = "a=$(ip -4 -o addr show dev eth3 | awk '{ split($4, p, \"/\"); print p[1] }'); \
                ping -n -q -c 8 -i 0.5 \"${a%.*}.$(( ${a##*.} ^ 1 ))\"";
    let _ = Command::new(lab)
        .args(["-q", "exec"])
        .args(vpp)
        .args(["--node", "vpp0-1", "--", ping])
        .current_dir(root())
        .status();
    let captured = capture.wait_with_output().map_err(|e| e.to_string())?;
    if !captured.status.success() {
        return Err(format!("`lab capture` failed ({})", captured.status));
    }
    say(&format!("$ tcpdump -nn -e -r {file}"));
    let read = Command::new("tcpdump")
        .args(["-nn", "-e", "-r", file])
        .output()
        .map_err(|e| format!("tcpdump: {e}"))?;
    for line in String::from_utf8_lossy(&read.stdout).lines() {
        say(&format!("  {line}"));
    }
    let _ = std::fs::remove_file(&pcap);
    Ok(())
}
