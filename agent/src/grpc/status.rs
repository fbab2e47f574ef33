//! The one place agent errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::AgentError;

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let code = match &err {
            AgentError::InvalidSpec(_)
            | AgentError::ProgramNotFound { .. }
            | AgentError::ProgramNotExecutable { .. }
            | AgentError::BadCwd { .. } => Code::InvalidArgument,
            AgentError::Spawn(crate::sys::spawn::SpawnError::Exec { .. })
            | AgentError::Spawn(crate::sys::spawn::SpawnError::Cwd { .. }) => Code::InvalidArgument,
            AgentError::NotFound { .. } => Code::NotFound,
            AgentError::AlreadyExists { .. } => Code::AlreadyExists,
            AgentError::BadState { .. } => Code::FailedPrecondition,
            AgentError::Spawn(_)
            | AgentError::Signal { .. }
            | AgentError::Io { .. }
            | AgentError::Internal(_) => {
                tracing::error!(%err, "request failed");
                Code::Internal
            }
        };
        Status::new(code, err.to_string())
    }
}
