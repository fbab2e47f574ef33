//! The coordinator's errors; the gateway maps them to HTTP in one place.

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// Every address of the workload range is in use.
    #[error("{0}")]
    NoAddress(String),
    /// No node can take it, or the node asked for is cordoned.
    #[error("{0}")]
    Unschedulable(String),
    /// The process has a migration that has not ended: the operation is refused (not queued).
    #[error("{0}")]
    Migrating(String),
    #[error("node {node}: {}", status.message())]
    Agent { node: String, status: tonic::Status },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
