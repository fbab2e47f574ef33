//! ferry's REST gateway over the coordinator: JSON in camelCase, errors as
//! `{"error":{"code","message"}}`, live events as server-sent events, Prometheus metrics and an
//! OpenAPI document (`openapi.json`, kept next to this crate and checked against the routes by
//! the tests). The dashboard will be served from here too.

mod api;
mod observe;
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
