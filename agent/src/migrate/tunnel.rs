//! Post-copy's page tunnel: the memory pages of a workload travel between the source's CRIU page
//! server and the target's `criu lazy-pages` daemon inside the agents' own gRPC connection
//! (`PageTunnel`, mutual TLS), not over a port CRIU opens on the network.
//!
//! ```text
//!  source                                                   target
//!  criu dump --lazy-pages ══ socketpair ══ agent ═ PageTunnel (gRPC, TLS) ═ agent ══ socketpair ══ criu lazy-pages
//!  (page server, --ps-socket)                                                      (--page-server --ps-socket)
//! ```
//!
//! Both CRIU processes take one end of a UNIX socketpair as their page-server connection
//! (`ps-socket`); each agent copies the bytes between its other end and the stream, unchanged, in
//! both directions: page requests (32-byte headers) toward the source, pages toward the target.
//! Requests are sent the moment they are read (a page fault waits on them); nothing is batched.
//!
//! Closing: when either side's socket or stream ends, that direction ends; when the stream from
//! the peer ends (or breaks), the local socket is closed whole, so CRIU sees the page server (or
//! its client) hang up. A lost source therefore fails the target's daemon at once, which kills
//! the workload there and marks it lost (engine::lazy).

use std::os::unix::net::UnixStream as StdUnixStream;

use ferry_proto::agent as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc::Sender;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// The most bytes one tunnel message carries (CRIU answers a request of up to 4 MiB of pages).
const PIECE: usize = 256 << 10;

/// What crossed a tunnel, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Carried {
    /// Bytes from the local CRIU into the stream.
    pub sent: u64,
    /// Bytes from the stream into the local CRIU.
    pub received: u64,
}

/// The sending half of a tunnel and the stream it feeds (the request or response stream).
pub fn outgoing() -> (Sender<pb::TunnelBytes>, ReceiverStream<pb::TunnelBytes>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (tx, ReceiverStream::new(rx))
}

/// Copies bytes between `sock` (one end of a CRIU page-server socketpair) and a tunnel whose
/// other side sends `inbound` and receives what goes into `tx`. Ends as described in the module
/// doc; returns what was carried, or why the tunnel broke.
pub fn pump<S>(
    sock: StdUnixStream,
    mut inbound: S,
    tx: Sender<pb::TunnelBytes>,
    label: String,
) -> std::io::Result<tokio::task::JoinHandle<Result<Carried, String>>>
where
    S: tokio_stream::Stream<Item = Result<pb::TunnelBytes, tonic::Status>> + Unpin + Send + 'static,
{
    sock.set_nonblocking(true)?;
    let sock = UnixStream::from_std(sock)?;
    let (mut rd, mut wr) = sock.into_split();
    let outward = tokio::spawn(async move {
        let mut sent = 0u64;
        let mut buf = vec![0u8; PIECE];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent += n as u64;
                    let piece =
                        pb::TunnelBytes { migration_id: String::new(), data: buf[..n].to_vec() };
                    if tx.send(piece).await.is_err() {
                        break;
                    }
                }
            }
        }
        sent
    });
    Ok(tokio::spawn(async move {
        let mut received = 0u64;
        let mut broke = None;
        loop {
            match inbound.next().await {
                None => break,
                Some(Err(s)) => {
                    broke = Some(format!("the tunnel broke: {}", s.message()));
                    break;
                }
                Some(Ok(piece)) => {
                    if let Err(e) = wr.write_all(&piece.data).await {
                        broke = Some(format!("the local criu closed its page socket: {e}"));
                        break;
                    }
                    received += piece.data.len() as u64;
                }
            }
        }
        // The peer is gone (or done): close the local socket whole, so CRIU sees the hang-up.
        outward.abort();
        let sent = outward.await.unwrap_or(0);
        drop(wr);
        let carried = Carried { sent, received };
        match &broke {
            None => tracing::info!(tunnel = label, sent, received, "page tunnel closed"),
            Some(why) => tracing::warn!(tunnel = label, sent, received, why, "page tunnel broke"),
        }
        broke.map_or(Ok(carried), Err)
    }))
}
