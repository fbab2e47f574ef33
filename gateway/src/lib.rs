//! ferry's REST gateway: JSON in camelCase, errors as `{"error":{"code","message"}}`. Today it
//! serves the read side of the coordinator's state (nodes and the workloads their heartbeats
//! report); the mutating endpoints, migrations, events and the dashboard build on it.

mod api;
mod time;

use std::future::Future;
use std::sync::Arc;

use ferry_coordinator::Coordinator;

pub use api::router;

/// Serves the gateway on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(coordinator)).with_graceful_shutdown(shutdown).await
}
