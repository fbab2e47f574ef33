//! ferry's REST gateway over the coordinator: JSON in camelCase, errors as
//! `{"error":{"code","message"}}`, live events as server-sent events, Prometheus metrics and an
//! OpenAPI document (`openapi.json`, kept next to this crate and checked against the routes by
//! the tests), bearer-token roles (`auth`) and the built dashboard at `/` (`web`).

mod api;
pub mod auth;
mod observe;
mod time;
mod web;

use std::future::Future;
use std::sync::Arc;

use ferry_coordinator::Coordinator;

pub use api::{router, GatewayConfig};
pub use web::locate as locate_web_dir;

/// Serves the gateway on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(coordinator, config)).with_graceful_shutdown(shutdown).await
}
