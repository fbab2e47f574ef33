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
    #[error("node {node}: {}", status.message())]
    Agent { node: String, status: tonic::Status },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
