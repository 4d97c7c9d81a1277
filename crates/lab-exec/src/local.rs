//! Programs run on the controller itself: an interactive session handed the terminal
//! (`lab console`, `lab ssh`), and a filter fed from memory (`dot -Tsvg`). Still the executor:
//! no other crate spawns a process.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::ExecError;

/// What a local program is called in errors.
const CONTROLLER: &str = "controller";

fn local_error(argv: &[String], message: String) -> ExecError {
    ExecError::Local {
        host: CONTROLLER.to_owned(),
        command: crate::quote_line(argv),
        message,
    }
}

/// Runs `argv` on the controller with this process's terminal (stdin, stdout, stderr) and
/// returns its exit status (128 + the signal when a signal ended it).
pub fn interactive(argv: &[String]) -> Result<i32, ExecError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| local_error(argv, "nothing to run".to_owned()))?;
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| local_error(argv, e.to_string()))?;
    Ok(status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    }))
}

/// Runs `argv` on the controller with `input` on its stdin and returns its stdout; a program
/// that is not installed, or that fails, is an error with its stderr.
pub fn filter(argv: &[String], input: &[u8]) -> Result<Vec<u8>, ExecError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| local_error(argv, "nothing to run".to_owned()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| local_error(argv, e.to_string()))?;
    let mut stdin = child.stdin.take().expect("piped");
    // Written from a thread: a large input would otherwise block on a full output pipe.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| local_error(argv, e.to_string()))?;
    let _ = writer.join();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(ExecError::Failed {
            host: CONTROLLER.to_owned(),
            command: crate::quote_line(argv),
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
