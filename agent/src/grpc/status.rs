//! The one place agent errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::AgentError;
use crate::snapshot::receive::ReceiveError;

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let code = match &err {
            AgentError::InvalidSpec(_)
            | AgentError::ProgramNotFound { .. }
            | AgentError::ProgramNotExecutable { .. }
            | AgentError::BadCwd { .. } => Code::InvalidArgument,
            AgentError::Spawn(crate::sys::spawn::SpawnError::Exec { .. })
            | AgentError::Spawn(crate::sys::spawn::SpawnError::Cwd { .. }) => Code::InvalidArgument,
            AgentError::InvalidRequest(_) => Code::InvalidArgument,
            AgentError::Spawn(crate::sys::spawn::SpawnError::Creds { .. }) => Code::InvalidArgument,
            AgentError::Credentials(crate::sys::user::CredError::Lookup { .. }) => Code::Internal,
            AgentError::Credentials(_) => Code::InvalidArgument,
            AgentError::Snapshot(ReceiveError::Version(_)) => Code::FailedPrecondition,
            AgentError::Snapshot(ReceiveError::Invalid(_) | ReceiveError::TooLarge { .. }) => {
                Code::InvalidArgument
            }
            AgentError::Snapshot(ReceiveError::Corrupt(_)) => Code::DataLoss,
            AgentError::Snapshot(ReceiveError::Io { .. }) => Code::Internal,
            AgentError::Restore { .. } => Code::FailedPrecondition,
            AgentError::StreamBroken(_) => Code::Aborted,
            AgentError::NotFound { .. } | AgentError::NoSuchMigration { .. } => Code::NotFound,
            AgentError::AlreadyExists { .. }
            | AgentError::MigrationExists { .. }
            | AgentError::AlreadyCommitted { .. } => Code::AlreadyExists,
            AgentError::BadState { .. }
            | AgentError::PostCopyLost { .. }
            | AgentError::Precondition(_) => Code::FailedPrecondition,
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
