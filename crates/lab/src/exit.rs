//! Exit codes, and errors on their way to the user: each library error becomes a message and
//! the documented code here, in one place.

use lab_generate::GenerateError;
use lab_model::ModelError;

/// Exit codes, documented in the README and `lab --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Failure,
    Invalid,
    Partial,
    Locked,
    /// The status of a program `lab` ran for the user (`lab ssh NODE -- CMD`), passed on.
    Passthrough(u8),
    /// Stopped by a signal (SIGHUP, SIGINT, SIGTERM): 128 + its number, as a shell reports it.
    Interrupted(u8),
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Failure => 1,
            Exit::Invalid => 2,
            Exit::Partial => 3,
            Exit::Locked => 4,
            Exit::Passthrough(code) => code,
            Exit::Interrupted(signal) => 128 + signal,
        }
    }
}

/// An error on its way to the user: the message and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(code: Exit, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Exits with a program's own status, saying nothing (it has said what it had to).
    pub fn passthrough(status: i32) -> Failure {
        Failure::new(
            Exit::Passthrough(u8::try_from(status).unwrap_or(1)),
            String::new(),
        )
    }

    /// Bad input or usage: nothing was changed.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Invalid, message)
    }
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        let code = match e {
            ModelError::Io { .. } => Exit::Failure,
            _ => Exit::Invalid,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<GenerateError> for Failure {
    fn from(e: GenerateError) -> Self {
        let code = match e {
            GenerateError::Io { .. } => Exit::Failure,
            _ => Exit::Invalid,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<lab_hv::LockError> for Failure {
    fn from(e: lab_hv::LockError) -> Self {
        let code = match e {
            lab_hv::LockError::Held { .. } => Exit::Locked,
            lab_hv::LockError::Unsafe { .. } | lab_hv::LockError::Failed { .. } => Exit::Failure,
        };
        Failure::new(code, format!("{e}; nothing was changed"))
    }
}

impl From<lab_create::PlanError> for Failure {
    fn from(e: lab_create::PlanError) -> Self {
        Failure::invalid(e.to_string())
    }
}

impl From<lab_proto::ProtoError> for Failure {
    fn from(e: lab_proto::ProtoError) -> Self {
        use lab_proto::ProtoError;
        let code = match e {
            ProtoError::NotConfigured
            | ProtoError::Exists { .. }
            | ProtoError::NothingReleased { .. }
            | ProtoError::NotAfterBegin { .. }
            | ProtoError::NoDataset { .. } => Exit::Invalid,
            ProtoError::Exec(_)
            | ProtoError::DomainRunning { .. }
            | ProtoError::NoLimiter { .. } => Exit::Failure,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<lab_exec::ExecError> for Failure {
    fn from(e: lab_exec::ExecError) -> Self {
        Failure::new(Exit::Failure, e.to_string())
    }
}

impl From<lab_reach::link::CaptureError> for Failure {
    fn from(e: lab_reach::link::CaptureError) -> Self {
        Failure::new(Exit::Failure, e.to_string())
    }
}
