//! Stop-and-copy's overlapped page stream. The source's CRIU dump sends the workload's memory
//! pages to its agent over a socketpair (RPC `ps.fd`, CRIU's page-server protocol) instead of
//! writing page images; the agent answers the protocol itself and forwards it to the target while
//! the dump runs (`PushPages`), the page data in the snapshot's chunk encoding (zero pages left
//! out, zstd or raw as measured, crc32c each) and the whole byte stream under a blake3 digest.
//! The target replays the stream into a local `criu page-server`, which writes the pagemap and
//! pages images; PushSnapshot then brings the rest, naming the stream's length and digest, and
//! the target restores only if its own count matches.
//!
//! ```text
//! source: criu dump ══ps.fd══ agent ─ reader ─ encoders (2) ─ PushPages ─▶ target agent ─ decode ─▶ criu page-server ─▶ images
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::agent as pb;
use pb::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::agent::Agent;
use crate::error::AgentError;
use crate::snapshot::receive::decode;
use crate::snapshot::receive::ReceiveError;
use crate::snapshot::send::{encode, Mode, Policy, Progress, SendFault, WORKERS};
use crate::snapshot::{CHUNK_SIZE, DIGEST, PAGE, SEND_QUEUE, ZSTD_LEVEL};

/// A page-server command header, CRIU 4.2's `struct page_server_iov` in host order: u32 cmd,
/// 4 bytes of padding, u64 nr_pages, u64 vaddr, u64 dst_id (CRIU 4.1 had a u32 nr_pages and a
/// 24-byte header; ferry requires CRIU >= 4.2).
const HEADER: usize = 32;
const PS_IOV_OPEN2: u32 = 4;
const PS_IOV_PARENT: u32 = 5;
const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
/// Pagemap flag: the entry's pages follow the header.
const PE_PRESENT: u32 = 4;
/// How long a received page stream waits for its PushSnapshot before it is thrown away.
const UNCLAIMED: Duration = Duration::from_secs(300);

/// The source's side, running: CRIU's end of the socketpair goes into the dump request.
pub struct Outgoing {
    pub criu_end: UnixStream,
    /// Ends once the target holds the whole stream: its length and digest.
    pub done: tokio::task::JoinHandle<Result<pb::PageStreamEnd, String>>,
}

/// A piece of page data read from CRIU, waiting for an encoder.
struct Job {
    seq: u64,
    offset: u64,
    raw: Vec<u8>,
    done: SyncSender<std::io::Result<pb::Chunk>>,
}

/// What goes out next, in stream order.
enum Next {
    /// Commands, then (when the receiver is given) the chunk an encoder is making.
    Part(Vec<u8>, Option<Receiver<std::io::Result<pb::Chunk>>>),
    End(pb::PageStreamEnd),
}

/// Starts the page stream of migration `mid` to `client`'s agent: threads that read CRIU's
/// protocol from the socketpair, encode the page data and hand it to the PushPages call.
pub fn start(
    mut client: AgentClient<Channel>,
    mid: String,
    target_node: String,
    fault: SendFault,
    progress: Arc<Progress>,
) -> std::io::Result<Outgoing> {
    let (ours, criu_end) = UnixStream::pair()?;
    let policy = Arc::new(Policy::new(progress.clone()));
    let (order_tx, order_rx) = sync_channel::<Next>(SEND_QUEUE);
    let (job_tx, job_rx) = sync_channel::<Job>(SEND_QUEUE);
    let jobs = Arc::new(Mutex::new(job_rx));
    for i in 0..WORKERS {
        let (jobs, policy) = (jobs.clone(), policy.clone());
        std::thread::Builder::new()
            .name(format!("pages-encode-{i}"))
            .spawn(move || encode_jobs(&jobs, &policy, fault))?;
    }
    let reader = std::thread::Builder::new()
        .name("pages-read".into())
        .spawn(move || read_criu(ours, &order_tx, &job_tx))?;
    let (part_tx, part_rx) = tokio::sync::mpsc::channel::<pb::PagePart>(SEND_QUEUE);
    let first = pb::PagePart { migration_id: mid.clone(), ..Default::default() };
    let progress2 = progress.clone();
    let sender = std::thread::Builder::new()
        .name("pages-send".into())
        .spawn(move || order_out(first, &order_rx, &part_tx, fault, &progress2))?;
    let stream = PartStream { rx: part_rx, policy, seq: 0 };
    let done = tokio::spawn(async move {
        let call = client.push_pages(stream).await;
        let read = tokio::task::spawn_blocking(move || {
            let sent = sender.join();
            (reader.join(), sent)
        })
        .await
        .map_err(|e| e.to_string())?;
        let end = match read {
            (Ok(Ok(end)), _) => Some(end),
            // The reader's failure comes first: it ended the stream the target then refused.
            (Ok(Err(e)), _) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(format!("cannot read the pages CRIU sends: {e}"))
            }
            _ => None,
        };
        match (call, end) {
            (Ok(_), Some(end)) => Ok(end),
            (Ok(_), None) => Err("the page stream thread failed".into()),
            (Err(s), _) => {
                Err(format!("node {target_node} refused the memory pages: {}", s.message()))
            }
        }
    });
    Ok(Outgoing { criu_end, done })
}

/// Reads CRIU's side of the page-server protocol, answers it (no parent images; every close
/// acknowledged), and queues commands and page data in order. Returns the stream's end.
fn read_criu(
    mut sock: UnixStream,
    order: &SyncSender<Next>,
    jobs: &SyncSender<Job>,
) -> std::io::Result<pb::PageStreamEnd> {
    let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "page stream closed");
    let mut hasher = blake3::Hasher::new();
    let (mut total, mut data_at, mut seq) = (0u64, 0u64, 0u64);
    let mut commands = Vec::new();
    loop {
        let mut h = [0u8; HEADER];
        sock.read_exact(&mut h).map_err(|e| {
            std::io::Error::new(e.kind(), format!("CRIU ended the page stream early: {e}"))
        })?;
        hasher.update(&h);
        total += HEADER as u64;
        commands.extend_from_slice(&h);
        let cmd = u32::from_ne_bytes(h[0..4].try_into().expect("4 bytes"));
        let nr_pages = u64::from_ne_bytes(h[8..16].try_into().expect("8 bytes"));
        match cmd & 0xffff {
            PS_IOV_OPEN2 => sock.write_all(&[0u8])?,
            PS_IOV_PARENT => sock.write_all(&0i32.to_ne_bytes())?,
            PS_IOV_ADD_F if (cmd >> 16) & PE_PRESENT == 0 => {}
            PS_IOV_ADD_F => {
                let mut left =
                    usize::try_from(nr_pages).ok().and_then(|n| n.checked_mul(PAGE)).ok_or_else(
                        || std::io::Error::other(format!("{nr_pages} pages in one entry")),
                    )?;
                while left > 0 {
                    let n = left.min(CHUNK_SIZE);
                    let mut raw = vec![0u8; n];
                    sock.read_exact(&mut raw)?;
                    hasher.update(&raw);
                    let (done, result) = sync_channel(1);
                    let next = Next::Part(std::mem::take(&mut commands), Some(result));
                    order.send(next).map_err(|_| gone())?;
                    jobs.send(Job { seq, offset: data_at, raw, done }).map_err(|_| gone())?;
                    seq += 1;
                    data_at += n as u64;
                    total += n as u64;
                    left -= n;
                }
            }
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                sock.write_all(&0i32.to_ne_bytes())?;
                order.send(Next::Part(commands, None)).map_err(|_| gone())?;
                let end = pb::PageStreamEnd {
                    bytes: total,
                    digest: hasher.finalize().to_hex().to_string(),
                };
                order.send(Next::End(end.clone())).map_err(|_| gone())?;
                return Ok(end);
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "CRIU sent page-server command {other:#x}, which a dump does not send"
                )))
            }
        }
    }
}

fn encode_jobs(jobs: &Mutex<Receiver<Job>>, policy: &Policy, fault: SendFault) {
    let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
    loop {
        let job = match jobs.lock().expect("page jobs poisoned").recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let z = match policy.mode_for(job.seq) {
            Mode::Zstd => zstd.as_mut(),
            Mode::Raw => None,
        };
        let chunk = encode(&job.raw, z).map(|e| pb::Chunk {
            file_index: 0,
            offset: job.offset,
            raw_len: job.raw.len() as u32,
            codec: e.codec as i32,
            payload: e.payload,
            checksum: crc32c::crc32c(&job.raw)
                ^ u32::from(fault == SendFault::CorruptChunk(job.seq)),
            zero_pages: e.zero_pages,
        });
        let _ = job.done.send(chunk);
    }
}

/// Sends the parts in stream order (the first names the migration).
fn order_out(
    first: pb::PagePart,
    order: &Receiver<Next>,
    out: &tokio::sync::mpsc::Sender<pb::PagePart>,
    fault: SendFault,
    progress: &Progress,
) -> std::io::Result<()> {
    let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "PushPages closed");
    out.blocking_send(first).map_err(|_| gone())?;
    while let Ok(next) = order.recv() {
        let part = match next {
            Next::End(end) => pb::PagePart { end: Some(end), ..Default::default() },
            Next::Part(commands, chunk) => {
                let chunk = match chunk {
                    Some(rx) => Some(rx.recv().map_err(|_| gone())??),
                    None => None,
                };
                if let (Some(_), SendFault::Slow(d)) = (&chunk, fault) {
                    std::thread::sleep(d);
                }
                if let Some(c) = &chunk {
                    use std::sync::atomic::Ordering::Relaxed;
                    progress.chunks.fetch_add(1, Relaxed);
                    progress.bytes_raw.fetch_add(c.raw_len.into(), Relaxed);
                    let wire = (c.payload.len() + c.zero_pages.len()) as u64;
                    progress.bytes_wire.fetch_add(wire, Relaxed);
                    let zeros: u32 = c.zero_pages.iter().map(|b| b.count_ones()).sum();
                    progress.bytes_zero.fetch_add(u64::from(zeros) * PAGE as u64, Relaxed);
                }
                pb::PagePart { commands, chunk, ..Default::default() }
            }
        };
        out.blocking_send(part).map_err(|_| gone())?;
    }
    Ok(())
}

/// The parts as the transport takes them, telling the codec policy when.
struct PartStream {
    rx: tokio::sync::mpsc::Receiver<pb::PagePart>,
    policy: Arc<Policy>,
    seq: u64,
}

impl tokio_stream::Stream for PartStream {
    type Item = pb::PagePart;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<pb::PagePart>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(p)) = &polled {
            if let Some(c) = &p.chunk {
                let seq = self.seq;
                self.policy.taken(seq, c.raw_len.into(), Instant::now());
                self.seq += 1;
            }
        }
        polled
    }
}

/// Removes the page streams an earlier agent received and nobody claimed.
pub fn remove_stale(agent: &Agent) {
    let Ok(dirs) = std::fs::read_dir(agent.config().data_dir.join("migrations")) else { return };
    for e in dirs.flatten() {
        if e.file_name().to_string_lossy().ends_with(".pages") {
            tracing::warn!(path = ?e.path(), "removing a page stream left by an earlier agent");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The directory a migration's page stream is written into, beside its scratch directory.
pub fn dir(agent: &Agent, mid: &str) -> PathBuf {
    agent.config().data_dir.join("migrations").join(format!("{mid}.pages"))
}

impl Agent {
    /// The target's side of PushPages: replays the stream into a local `criu page-server` that
    /// writes the images, verifying every chunk and the whole stream's digest.
    pub async fn receive_pages(
        self: &Arc<Self>,
        mut inbound: tonic::Streaming<pb::PagePart>,
    ) -> Result<pb::PushPagesResult, AgentError> {
        let first = inbound
            .message()
            .await
            .map_err(|s| AgentError::StreamBroken(s.message().to_string()))?
            .ok_or_else(|| {
                AgentError::InvalidRequest(
                    "the page stream closed before naming its migration".into(),
                )
            })?;
        let mid = first.migration_id;
        if !crate::workload::valid_id(&mid) || first.chunk.is_some() || !first.commands.is_empty() {
            return Err(AgentError::InvalidRequest(
                "a page stream's first part names its migration (1-64 letters, digits, '.', '_' \
                 or '-') and carries nothing else"
                    .into(),
            ));
        }
        let criu = self.criu().path.clone().filter(|_| self.is_root() && self.criu().check_passed);
        let Some(criu) = criu else {
            return Err(AgentError::Precondition(format!(
                "node {} cannot take CRIU pages: {}",
                self.config().node,
                self.criu().check_error
            )));
        };
        let dir = dir(self, &mid);
        let made =
            std::fs::create_dir_all(dir.parent().expect("under migrations")).and_then(|_| {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().mode(0o700).create(&dir)
            });
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(AgentError::MigrationExists { id: mid })
            }
            Err(e) => return Err(AgentError::Internal(format!("cannot create {dir:?}: {e}"))),
        }
        let received = self.pages_into(&criu, &dir, &mut inbound).await;
        match received {
            Ok((end, result)) => {
                self.page_streams.lock().expect("page streams poisoned").insert(mid.clone(), end);
                // Claimed by PushSnapshot within moments; a source that never sends it leaves
                // nothing behind for long.
                let (agent, mid2) = (Arc::downgrade(self), mid);
                tokio::spawn(async move {
                    tokio::time::sleep(UNCLAIMED).await;
                    if let Some(agent) = agent.upgrade() {
                        let left =
                            agent.page_streams.lock().expect("page streams poisoned").remove(&mid2);
                        if left.is_some() {
                            tracing::warn!(migration = mid2, "page stream never claimed; removed");
                            let _ = std::fs::remove_dir_all(self::dir(&agent, &mid2));
                        }
                    }
                });
                Ok(result)
            }
            Err(s) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(s)
            }
        }
    }

    async fn pages_into(
        &self,
        criu: &Path,
        dir: &Path,
        inbound: &mut tonic::Streaming<pb::PagePart>,
    ) -> Result<(pb::PageStreamEnd, pb::PushPagesResult), AgentError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| AgentError::Internal(e.to_string()))?;
        let mut cmd = std::process::Command::new(criu);
        cmd.args(["page-server", "--ps-socket"])
            .arg(std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string())
            .args(["-v4", "-o", "page-server.log"])
            .arg("--images-dir")
            .arg(dir)
            .arg("--work-dir")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        crate::sys::swrk::inherit_on_exec(&mut cmd, vec![std::os::fd::AsRawFd::as_raw_fd(&theirs)]);
        let child = cmd
            .spawn()
            .map_err(|e| AgentError::Internal(format!("cannot start criu page-server: {e}")))?;
        let pid = child.id() as i32;
        let exit = self.reaper().watch(pid);
        drop(child);
        drop(theirs);
        let log = dir.join("page-server.log");
        // The page server answers commands the source's agent already answered: drop them.
        let mut replies = ours.try_clone().map_err(|e| AgentError::Internal(e.to_string()))?;
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            while matches!(replies.read(&mut sink), Ok(n) if n > 0) {}
        });
        let (tx, rx) = sync_channel::<pb::PagePart>(SEND_QUEUE);
        let writer = std::thread::Builder::new()
            .name("pages-write".into())
            .spawn(move || write_pages(ours, &rx))
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        let limit = self.config().max_snapshot_bytes;
        let (mut wire, mut data_at) = (0u64, 0u64);
        let kill = || {
            let _ = crate::sys::signal::send(pid, crate::sys::signal::Sig::SIGKILL);
        };
        // The stream's end, or why it broke; the writer's own failure (a corrupt chunk, the page
        // server gone) is the better answer when there is one.
        let end: Result<pb::PageStreamEnd, AgentError> = loop {
            let part = match inbound.message().await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    break Err(AgentError::StreamBroken(
                        "the page stream ended before its last part".into(),
                    ))
                }
                Err(s) => break Err(AgentError::StreamBroken(s.message().to_string())),
            };
            if let Some(end) = part.end {
                break Ok(end);
            }
            let bad =
                |why: String| AgentError::InvalidRequest(format!("invalid page stream: {why}"));
            if !part.migration_id.is_empty() {
                break Err(bad("only the first part names the migration".into()));
            }
            if part.commands.len() % HEADER != 0 {
                break Err(bad(format!("{} bytes of commands", part.commands.len())));
            }
            if let Some(c) = &part.chunk {
                if c.offset != data_at || c.file_index != 0 {
                    break Err(bad(format!(
                        "a chunk at offset {} where {data_at} was due",
                        c.offset
                    )));
                }
                data_at += u64::from(c.raw_len);
                wire += (c.payload.len() + c.zero_pages.len()) as u64;
                if data_at > limit {
                    break Err(AgentError::InvalidRequest(format!(
                        "the pages exceed this node's snapshot limit of {limit} bytes"
                    )));
                }
            }
            if tx.send(part).is_err() {
                break Err(AgentError::StreamBroken("the page writer stopped".into()));
            }
        };
        drop(tx);
        let written = tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
            .map_err(|_| AgentError::Internal("the page writer panicked".into()));
        let (ours, end) = match (written, end) {
            (Ok(Ok(ours)), Ok(end)) => (ours, end),
            (Ok(Err(e)) | Err(e), _) | (_, Err(e)) => {
                kill();
                return Err(e);
            }
        };
        if ours.bytes != end.bytes || ours.digest != end.digest {
            kill();
            return Err(AgentError::Snapshot(ReceiveError::Corrupt(format!(
                "the page stream's {DIGEST} digest or length does not match: {} bytes, {} here; \
                 {} bytes, {} at the source",
                ours.bytes, ours.digest, end.bytes, end.digest
            ))));
        }
        let status = tokio::time::timeout(Duration::from_secs(30), exit).await;
        match status {
            Ok(Ok(crate::sys::reaper::ExitStatus::Exited(0))) => {}
            other => {
                kill();
                return Err(AgentError::Internal(format!(
                    "criu page-server did not write the pages ({other:?}); see {}",
                    log.display()
                )));
            }
        }
        Ok((ours, pb::PushPagesResult { bytes_raw: data_at, bytes_wire: wire }))
    }

    /// The verified page stream of `mid`, once (PushSnapshot claims it).
    pub(crate) fn take_page_stream(&self, mid: &str) -> Option<pb::PageStreamEnd> {
        self.page_streams.lock().expect("page streams poisoned").remove(mid)
    }
}

/// Decodes and writes the parts into the page server's socket, hashing the byte stream.
fn write_pages(
    mut sock: UnixStream,
    rx: &Receiver<pb::PagePart>,
) -> Result<pb::PageStreamEnd, AgentError> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let broken = |e: std::io::Error| {
        AgentError::Internal(format!("criu page-server stopped taking pages: {e}"))
    };
    while let Ok(part) = rx.recv() {
        hasher.update(&part.commands);
        total += part.commands.len() as u64;
        sock.write_all(&part.commands).map_err(broken)?;
        if let Some(c) = part.chunk {
            let d = decode(c).map_err(AgentError::Snapshot)?;
            hasher.update(&d.raw);
            total += d.raw.len() as u64;
            sock.write_all(&d.raw).map_err(broken)?;
        }
    }
    Ok(pb::PageStreamEnd { bytes: total, digest: hasher.finalize().to_hex().to_string() })
}

/// Moves the page images of `mid`'s stream into `images` (the received snapshot's), and the
/// page server's log into `logs`. Refuses a snapshot that carries page images itself.
pub fn claim(dir: &Path, images: &Path, logs: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        if name == "page-server.log" {
            std::fs::create_dir_all(logs)?;
            std::fs::rename(e.path(), logs.join(&name))?;
            continue;
        }
        let to = images.join(&name);
        if std::fs::symlink_metadata(&to).is_ok() {
            return Err(std::io::Error::other(format!(
                "the snapshot already holds {name:?}, which the page stream wrote"
            )));
        }
        std::fs::rename(e.path(), to)?;
    }
    std::fs::remove_dir(dir)
}
