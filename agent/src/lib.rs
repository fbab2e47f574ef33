//! ferry's node agent: spawns workloads as PID 1 trees of their own PID namespaces, supervises
//! them (state, CPU, memory, output), pauses, resumes and stops them, migrates them to other
//! agents (CRIU or cooperative), checkpoints protected ones, and serves all of it over gRPC. See ARCHITECTURE.md for the map and its invariants.

pub mod agent;
pub mod checkpoint;
pub mod config;
pub mod criu;
pub mod datadir;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod health;
pub mod logs;
pub mod migrate;
pub mod objstore;
pub mod register;
pub mod snapshot;
pub mod sys;
pub mod workload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use agent::Agent;
pub use config::AgentConfig;

/// Grace given to in-flight requests once shutdown is asked for.
const DRAIN: Duration = Duration::from_secs(5);
/// The largest HTTP/2 frame the agent takes (the most HTTP/2 allows is 16 MiB - 1).
const MAX_FRAME: u32 = 4 << 20;

/// Serves the agent on an already-bound listener until `shutdown` resolves, then drains.
/// Workloads keep running when the agent exits.
pub async fn serve(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // TCP_NODELAY on every accepted connection: small messages (a page request, a commit's
    // answer) must not wait for the previous segment's ACK. Server::tcp_nodelay applies only
    // to listeners tonic binds itself.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // A migration's chunk buffers are reused rather than faulted in afresh (sys::mem).
    sys::mem::keep_freed_memory();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = agent
        .config()
        .wire
        .server()?
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        // A chunk in one DATA frame rather than 64 of HTTP/2's default 16 KiB: a fifth less
        // downtime for a 1 GiB stop-and-copy here (fewer frames, records, wake-ups per byte).
        .max_frame_size(MAX_FRAME)
        .add_service(
            grpc::AgentServer::new(grpc::Service::new(agent))
                .max_decoding_message_size(snapshot::MAX_PAYLOAD * 2)
                .max_encoding_message_size(snapshot::MAX_PAYLOAD * 2),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = drain_tx.send(());
        });
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => Ok(res?),
        _ = async { let _ = drain_rx.await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("drain grace of {DRAIN:?} over; closing remaining connections");
            Ok(())
        }
    }
}
