//! What the executor runs and what it gives back: a [`Cmd`] (an argument vector with its
//! [`Effect`], stdin and timeout) and its [`Out`].

use std::time::Duration;

use crate::quote_line;

/// Does a command change anything? Queries may be repeated and run even under `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Query,
    Change,
}

/// A remote command: program and arguments, never a shell string.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub effect: Effect,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Run at most once: never repeated after a lost connection, and ended on the remote side
    /// at its timeout (a user's command on a node, which may not be safe to repeat).
    pub once: bool,
}

impl Cmd {
    fn new<I, S>(effect: Effect, argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            argv: argv.into_iter().map(Into::into).collect(),
            effect,
            stdin: None,
            timeout: Duration::from_secs(60),
            once: false,
        }
    }

    /// See [`Cmd::once`](field@Cmd::once).
    pub fn once(mut self) -> Cmd {
        self.once = true;
        self
    }

    pub fn query<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Cmd {
        Cmd::new(Effect::Query, argv)
    }

    pub fn change<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Cmd {
        Cmd::new(Effect::Change, argv)
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    /// The command line as the remote shell receives it.
    pub fn line(&self) -> String {
        let mut line = quote_line(&self.argv);
        if self.stdin.is_some() {
            line.push_str(" <<< (stdin)");
        }
        line
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Out {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(stdout: impl Into<String>) -> Out {
        Out {
            status: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    pub fn fail(status: i32, stderr: impl Into<String>) -> Out {
        Out {
            status,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    pub fn success(&self) -> bool {
        self.status == 0
    }
}
