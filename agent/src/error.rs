//! The agent's errors. Each variant carries the facts a person needs to act on it; the gRPC
//! mapping lives in `grpc::status`.

use std::path::PathBuf;

use crate::sys::spawn::SpawnError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid workload spec: {0}")]
    InvalidSpec(String),
    #[error("program {program:?} not found{}", searched.as_ref().map(|p| format!(" in PATH ({p})")).unwrap_or_default())]
    ProgramNotFound { program: String, searched: Option<String> },
    #[error("program {program:?} is not an executable file: {reason}")]
    ProgramNotExecutable { program: String, reason: String },
    #[error("working directory {path:?} does not exist or is not a directory")]
    BadCwd { path: PathBuf },
    #[error("no workload with id {id:?} on this node")]
    NotFound { id: String },
    #[error("workload {id} is {state}; cannot {op} it{hint}")]
    BadState { id: String, state: String, op: &'static str, hint: &'static str },
    #[error("workload {id:?} already exists on this node")]
    AlreadyExists { id: String },
    #[error("{0}")]
    Credentials(#[from] crate::sys::user::CredError),
    #[error("could not start workload: {0}")]
    Spawn(#[from] SpawnError),
    #[error("could not signal workload {id} (pid {pid}): {source}")]
    Signal { id: String, pid: i32, source: std::io::Error },
    #[error("{path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::receive::ReceiveError),
    #[error("restore failed on node {node}: {source}")]
    Restore { node: String, source: crate::engine::EngineError },
    #[error("the snapshot stream broke: {0}")]
    StreamBroken(String),
    #[error("migration id {id:?} is already in use on this node")]
    MigrationExists { id: String },
    #[error("workload {id} of post-copy migration {migration} cannot run: {reason}")]
    PostCopyLost { id: String, migration: String, reason: String },
    #[error("migration {migration} was already committed on node {node}; its workload {id} has ended or moved on since")]
    AlreadyCommitted { migration: String, id: String, node: String },
    #[error("no pending migration {id} on this node")]
    NoSuchMigration { id: String },
    #[error("{0}")]
    Precondition(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
