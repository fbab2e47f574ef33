//! Stop-and-copy's overlapped page stream. The source's CRIU dump sends the workload's memory
//! pages to its agent over a socketpair (RPC `ps.fd`, CRIU's page-server protocol) instead of
//! writing page images; the agent answers the protocol itself and forwards it to the target while
//! the dump runs (`PushPages`), the page data in the snapshot's chunk encoding (every zero page
//! left out, zstd level -3 or raw as measured, crc32c each) and the whole stream under a blake3
//! digest of its commands and its chunks' offsets, lengths and checksums. The target writes the
//! stream as CRIU's pagemap and pages images, as CRIU's own page server would but with zero
//! pages left as holes; PushSnapshot then brings the rest, naming the stream's length and digest,
//! and the target restores only if its own count matches.
//!
//! ```text
//! source: criu dump ══ps.fd══ agent ─ reader ─ encoders (2) ─ PushPages ─▶ target agent ─ decode ─▶ pagemap-*.img, pages-*.img
//! ```

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::agent as pb;
use pb::agent_client::AgentClient;
use tonic::transport::Channel;

use super::push::{DecodeAhead, DECODE_AHEAD};
use crate::agent::Agent;
use crate::error::AgentError;
use crate::snapshot::receive::{Decoded, ReceiveError};
use crate::snapshot::send::{encode, Mode, Policy, Progress, SendFault, WORKERS};
use crate::snapshot::{CHUNK_SIZE, DIGEST, PAGE, SEND_QUEUE};

/// The page stream's zstd level. Memory pages are compressed under a freeze on cores the two
/// agents, CRIU and the network share, so speed counts more than ratio: on the benchmark's mixed
/// pages level -1 (no Huffman-coded literals) compressed 1 GiB in 292 ms where level 1 took 572,
/// to the same 347 MB; level -3 compresses as fast again and decompresses those pages at 13.8
/// GB/s where -1 did 7.7 (`zstd -b`, 4 MiB blocks, same size), which the target pays inside the
/// freeze. On shared libraries (a tar of /usr/lib) -3 is 14% faster to compress than -1 and 12%
/// larger.
const ZSTD_LEVEL: i32 = -3;

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
/// The socketpair's buffer on each side (set as root, past net.core.[rw]mem_max).
const SOCKET_BUFFER: usize = 4 * CHUNK_SIZE;
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
    /// The stream's length in bytes (commands and page data).
    End(u64),
}

/// The page stream's digest: its commands as they came, and each chunk's place, length and
/// checksum (the chunk's bytes are the checksum's to vouch for; hashing them all again on both
/// sides cost a quarter of a second per GiB under the freeze).
#[derive(Default)]
struct Digest(blake3::Hasher);

impl Digest {
    fn commands(&mut self, c: &[u8]) {
        self.0.update(c);
    }

    fn chunk(&mut self, offset: u64, raw_len: u32, checksum: u32) {
        self.0.update(&offset.to_le_bytes());
        self.0.update(&raw_len.to_le_bytes());
        self.0.update(&checksum.to_le_bytes());
    }

    fn end(&self, bytes: u64) -> pb::PageStreamEnd {
        pb::PageStreamEnd { bytes, digest: self.0.finalize().to_hex().to_string() }
    }
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
    // Room for CRIU to run ahead of the reader by a few chunks (a socket's default is ~200 KiB,
    // so CRIU stopped whenever the reader was off the CPU).
    crate::sys::force_socket_buffers(&criu_end, &ours, SOCKET_BUFFER);
    let policy = Arc::new(Policy::new(progress.clone(), ZSTD_LEVEL));
    let (order_tx, order_rx) = sync_channel::<Next>(SEND_QUEUE);
    let (job_tx, job_rx) = sync_channel::<Job>(SEND_QUEUE);
    let jobs = Arc::new(Mutex::new(job_rx));
    // Buffers go back to the reader once encoded: reused memory, not freshly faulted pages.
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(SEND_QUEUE + WORKERS + 2);
    for i in 0..WORKERS {
        let (jobs, policy, free) = (jobs.clone(), policy.clone(), free_tx.clone());
        std::thread::Builder::new()
            .name(format!("pages-encode-{i}"))
            .spawn(move || encode_jobs(&jobs, &policy, fault, &free))?;
    }
    drop(free_tx);
    let reader = std::thread::Builder::new()
        .name("pages-read".into())
        .spawn(move || read_criu(ours, &order_tx, &job_tx, &free_rx))?;
    let (part_tx, part_rx) = tokio::sync::mpsc::channel::<pb::PagePart>(SEND_QUEUE);
    let first = pb::PagePart { migration_id: mid.clone(), ..Default::default() };
    let progress2 = progress.clone();
    let sender = std::thread::Builder::new()
        .name("pages-send".into())
        .spawn(move || order_out(first, &order_rx, &part_tx, fault, &progress2))?;
    let stream = PartStream { rx: part_rx, policy };
    let done = tokio::spawn(async move {
        let call = client.push_pages(stream).await;
        let read = tokio::task::spawn_blocking(move || {
            let sent = sender.join();
            (reader.join(), sent)
        })
        .await
        .map_err(|e| e.to_string())?;
        let end = match read {
            (Ok(Ok(())), Ok(Ok(end))) => Some(end),
            // The reader's failure comes first: it ended the stream the target then refused.
            (Ok(Err(e)), _) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(format!("cannot read the pages CRIU sends: {e}"))
            }
            _ => None,
        };
        match (call, end) {
            (Ok(_), Some(end)) => Ok(end),
            (Ok(_), None) => Err("the page stream thread failed".into()),
            (Err(s), _) => Err(super::target_failed(&target_node, "the memory pages", &s)),
        }
    });
    Ok(Outgoing { criu_end, done })
}

/// Reads CRIU's side of the page-server protocol, answers it (no parent images; every close
/// acknowledged), and queues commands and page data in order, then the stream's end.
fn read_criu(
    mut sock: UnixStream,
    order: &SyncSender<Next>,
    jobs: &SyncSender<Job>,
    free: &Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "page stream closed");
    let (mut total, mut data_at, mut seq) = (0u64, 0u64, 0u64);
    let mut commands = Vec::new();
    loop {
        let mut h = [0u8; HEADER];
        sock.read_exact(&mut h).map_err(|e| {
            std::io::Error::new(e.kind(), format!("CRIU ended the page stream early: {e}"))
        })?;
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
                    let mut raw = free.try_recv().unwrap_or_default();
                    raw.resize(n, 0);
                    sock.read_exact(&mut raw)?;
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
                order.send(Next::End(total)).map_err(|_| gone())?;
                return Ok(());
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "CRIU sent page-server command {other:#x}, which a dump does not send"
                )))
            }
        }
    }
}

fn encode_jobs(
    jobs: &Mutex<Receiver<Job>>,
    policy: &Policy,
    fault: SendFault,
    free: &SyncSender<Vec<u8>>,
) {
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
        let chunk = encode(&job.raw, z, 1).map(|e| pb::Chunk {
            file_index: 0,
            offset: job.offset,
            raw_len: job.raw.len() as u32,
            codec: e.codec as i32,
            payload: e.payload.into(),
            checksum: crc32c::crc32c(&job.raw)
                ^ u32::from(fault == SendFault::CorruptChunk(job.seq)),
            zero_pages: e.zero_pages,
        });
        let _ = job.done.send(chunk);
        let _ = free.try_send(job.raw);
    }
}

/// Sends the parts in stream order (the first names the migration), the digest last. Returns
/// the stream's end.
fn order_out(
    first: pb::PagePart,
    order: &Receiver<Next>,
    out: &tokio::sync::mpsc::Sender<pb::PagePart>,
    fault: SendFault,
    progress: &Progress,
) -> std::io::Result<pb::PageStreamEnd> {
    let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "PushPages closed");
    out.blocking_send(first).map_err(|_| gone())?;
    let mut digest = Digest::default();
    while let Ok(next) = order.recv() {
        let part = match next {
            Next::End(bytes) => {
                let end = digest.end(bytes);
                out.blocking_send(pb::PagePart { end: Some(end.clone()), ..Default::default() })
                    .map_err(|_| gone())?;
                return Ok(end);
            }
            Next::Part(commands, chunk) => {
                digest.commands(&commands);
                let chunk = match chunk {
                    Some(rx) => Some(rx.recv().map_err(|_| gone())??),
                    None => None,
                };
                if let Some(c) = &chunk {
                    digest.chunk(c.offset, c.raw_len, c.checksum);
                }
                if let (Some(_), SendFault::Slow(d)) = (&chunk, fault) {
                    std::thread::sleep(d);
                }
                if let Some(c) = &chunk {
                    progress.count(c);
                }
                pb::PagePart { commands, chunk, ..Default::default() }
            }
        };
        out.blocking_send(part).map_err(|_| gone())?;
    }
    Err(gone())
}

/// The parts as the transport takes them, telling the codec policy when.
struct PartStream {
    rx: tokio::sync::mpsc::Receiver<pb::PagePart>,
    policy: Arc<Policy>,
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
                self.policy.took(c.raw_len.into());
            }
        }
        polled
    }
}

/// Removes the page streams an earlier agent received and nobody claimed.
pub fn remove_stale(agent: &Agent) {
    let Ok(dirs) = std::fs::read_dir(agent.config().data_dir.join("pages")) else { return };
    for e in dirs.flatten() {
        tracing::warn!(path = ?e.path(), "removing a page stream left by an earlier agent");
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// The directory a migration's page stream is written into (`<data>/pages/<id>`, apart from
/// the migrations' scratch directories, so no migration id can name it).
pub fn dir(agent: &Agent, mid: &str) -> PathBuf {
    agent.config().data_dir.join("pages").join(mid)
}

/// The most images one ReservePages may name.
const MAX_RESERVED_IMAGES: usize = 4096;

/// How the files set aside by ReservePages begin.
const RESERVED: &str = "reserve-";

/// The name of the file set aside for the pages image of CRIU's image `id`.
fn reserved_name(id: u64) -> String {
    format!("{RESERVED}{id:x}")
}

impl Agent {
    /// Pages are only of use to a CRIU restore here: refused where none can run.
    fn can_take_pages(&self) -> Result<(), AgentError> {
        if self.is_root() && self.criu().check_passed {
            return Ok(());
        }
        Err(AgentError::Precondition(format!(
            "node {} cannot take CRIU pages: {}",
            self.config().node,
            self.criu().check_error
        )))
    }

    /// After [`UNCLAIMED`], removes the pages directory of `mid` if `take` still finds what was
    /// left for a later call (a reservation, a received stream) and takes it.
    fn remove_unclaimed(
        self: &Arc<Self>,
        mid: String,
        why: &'static str,
        take: fn(&Agent, &str) -> bool,
    ) {
        let agent = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(UNCLAIMED).await;
            if let Some(agent) = agent.upgrade().filter(|a| take(a, &mid)) {
                tracing::warn!(migration = mid, "{why}");
                let _ = std::fs::remove_dir_all(self::dir(&agent, &mid));
            }
        });
    }

    /// Creates the pages directory of `mid`; an id in use is refused.
    fn make_pages_dir(&self, mid: &str, dir: &Path) -> Result<(), AgentError> {
        let parent = dir.parent().expect("under pages");
        let made = crate::sys::fsmode::dir(parent, crate::sys::fsmode::DIR)
            .and_then(|_| crate::sys::fsmode::new_dir(dir, crate::sys::fsmode::DIR));
        match made {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(AgentError::MigrationExists { id: mid.to_string() })
            }
            Err(e) => Err(AgentError::Internal(format!("cannot create {dir:?}: {e}"))),
        }
    }

    /// The target's side of ReservePages: before the source freezes the workload, allocates
    /// each pages image the source expects (one file per image, its expected size), so that
    /// writing the page stream under the freeze costs a copy and no allocation (on tmpfs about
    /// half of what the writes cost). Best effort: it stops at the first image that cannot be
    /// allocated and says how much it set aside.
    pub async fn reserve_pages(
        self: &Arc<Self>,
        req: pb::ReservePagesRequest,
    ) -> Result<pb::ReservePagesResult, AgentError> {
        let mid = req.migration_id;
        if !crate::workload::valid_id(&mid) {
            return Err(AgentError::InvalidRequest(
                "a page reservation names its migration (1-64 letters, digits, '.', '_' or '-')"
                    .into(),
            ));
        }
        if req.images.len() > MAX_RESERVED_IMAGES {
            return Err(AgentError::InvalidRequest(format!(
                "a page reservation names {} images; at most {MAX_RESERVED_IMAGES}",
                req.images.len()
            )));
        }
        let limit = self.config().max_snapshot_bytes;
        let total = req.images.iter().try_fold(0u64, |t, i| t.checked_add(i.bytes));
        if total.is_none_or(|t| t > limit) {
            return Err(AgentError::InvalidRequest(format!(
                "a page reservation beyond this node's snapshot limit of {limit} bytes"
            )));
        }
        self.can_take_pages()?;
        let dir = dir(self, &mid);
        self.make_pages_dir(&mid, &dir)?;
        // Claimable at once: a PushPages that comes while a slow node still allocates (the source
        // waits a minute at most) takes the directory as it is.
        self.page_reservations.lock().expect("page reservations poisoned").insert(mid.clone());
        // A source that never sends its pages leaves nothing behind for long.
        self.remove_unclaimed(mid.clone(), "page reservation never used; removed", |a, mid| {
            a.page_reservations.lock().expect("page reservations poisoned").remove(mid)
        });
        let images = req.images;
        let at = dir;
        let reserved = tokio::task::spawn_blocking(move || {
            let mut done = 0u64;
            for image in images.iter().filter(|i| i.bytes > 0) {
                let path = at.join(reserved_name(image.image_id));
                let made = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(crate::sys::fsmode::FILE)
                    .open(&path)
                    .and_then(|f| crate::sys::mem::preallocate(&f, image.bytes));
                if let Err(e) = made {
                    tracing::warn!(
                        ?path,
                        bytes = image.bytes,
                        "cannot set memory aside for pages: {e}"
                    );
                    let _ = std::fs::remove_file(&path);
                    break;
                }
                done += image.bytes;
            }
            done
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?;
        Ok(pb::ReservePagesResult { bytes_reserved: reserved })
    }

    /// The target's side of PushPages: writes the stream as CRIU images, verifying every chunk,
    /// every command's place and the whole stream's digest.
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
        self.can_take_pages()?;
        let dir = dir(self, &mid);
        // ReservePages made the directory (and set memory aside in it), or it is made here.
        let reserved =
            self.page_reservations.lock().expect("page reservations poisoned").remove(&mid);
        if !reserved {
            self.make_pages_dir(&mid, &dir)?;
        }
        let received = self.pages_into(&dir, &mut inbound).await;
        match received {
            Ok((end, result)) => {
                self.page_streams.lock().expect("page streams poisoned").insert(mid.clone(), end);
                // Claimed by PushSnapshot within moments; a source that never sends it leaves
                // nothing behind for long.
                self.remove_unclaimed(mid, "page stream never claimed; removed", |a, mid| {
                    a.page_streams.lock().expect("page streams poisoned").remove(mid).is_some()
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
        dir: &Path,
        inbound: &mut tonic::Streaming<pb::PagePart>,
    ) -> Result<(pb::PageStreamEnd, pb::PushPagesResult), AgentError> {
        // Chunks are decoded (sizes checked first, then decompressed and checksummed) on up to
        // DECODE_AHEAD blocking threads; one writer thread hashes and writes them in order.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(DECODE_AHEAD);
        let out = dir.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("pages-write".into())
            .spawn(move || write_pages(&out, &mut rx))
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        let limit = self.config().max_snapshot_bytes;
        let (mut wire, mut data_at) = (0u64, 0u64);
        let mut ahead = DecodeAhead::new();
        // Hands the oldest piece to the writer: false when none was queued or the writer is gone.
        async fn forward(
            ahead: &mut DecodeAhead<Vec<u8>>,
            tx: &tokio::sync::mpsc::Sender<Piece>,
        ) -> Result<bool, AgentError> {
            let Some(next) = ahead.next().await else { return Ok(false) };
            let (commands, data) = next?;
            Ok(tx.send(Piece { commands, data }).await.is_ok())
        }
        // Hands every piece still decoding to the writer (until the writer is gone).
        async fn flush(
            ahead: &mut DecodeAhead<Vec<u8>>,
            tx: &tokio::sync::mpsc::Sender<Piece>,
        ) -> Result<(), AgentError> {
            while forward(ahead, tx).await? {}
            Ok(())
        }
        // The stream's end, or why it broke; the writer's own failure (a corrupt chunk, a command
        // out of place) is the better answer when there is one.
        let end: Result<pb::PageStreamEnd, AgentError> = loop {
            let part = match inbound.message().await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    // A corrupt chunk among the last ones is the better answer.
                    let ended = || {
                        AgentError::StreamBroken(
                            "the page stream ended before its last part".into(),
                        )
                    };
                    break Err(flush(&mut ahead, &tx).await.err().unwrap_or_else(ended));
                }
                Err(s) => break Err(AgentError::StreamBroken(s.message().to_string())),
            };
            if let Some(end) = part.end {
                break flush(&mut ahead, &tx).await.map(|()| end);
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
            if ahead.push(part.commands, part.chunk) {
                match forward(&mut ahead, &tx).await {
                    Ok(true) => {}
                    Ok(false) => break Err(AgentError::StreamBroken(WRITER_STOPPED.into())),
                    Err(e) => break Err(e),
                }
            }
        };
        drop(tx);
        let written = tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
            .map_err(|_| AgentError::Internal("the page writer panicked".into()));
        // Which failure to report: a part refused or found corrupt here (it never reached the
        // writer), else what the writer refused or could not write, else why the stream ended.
        let (ours, end) = match (written, end) {
            (Ok(Ok(ours)), Ok(end)) => (ours, end),
            (_, Err(e @ (AgentError::InvalidRequest(_) | AgentError::Snapshot(_)))) => {
                return Err(e)
            }
            (
                Ok(Err(
                    w @ (AgentError::InvalidRequest(_)
                    | AgentError::Snapshot(_)
                    | AgentError::Io { .. }),
                )),
                _,
            ) => return Err(w),
            (_, Err(e)) | (Ok(Err(e)) | Err(e), Ok(_)) => return Err(e),
        };
        if ours.bytes != end.bytes || ours.digest != end.digest {
            return Err(AgentError::Snapshot(ReceiveError::Corrupt(format!(
                "the page stream's {DIGEST} digest or length does not match: {} bytes, {} here; \
                 {} bytes, {} at the source",
                ours.bytes, ours.digest, end.bytes, end.digest
            ))));
        }
        Ok((ours, pb::PushPagesResult { bytes_raw: data_at, bytes_wire: wire }))
    }

    /// The verified page stream of `mid`, once (PushSnapshot claims it).
    pub(crate) fn take_page_stream(&self, mid: &str) -> Option<pb::PageStreamEnd> {
        self.page_streams.lock().expect("page streams poisoned").remove(mid)
    }
}

/// Why the receiving loop stopped when the writer did (the writer says why).
const WRITER_STOPPED: &str = "the page writer stopped";

/// What the writer takes, in stream order: commands, then the page data that follows them.
struct Piece {
    commands: Vec<u8>,
    data: Option<Decoded>,
}

/// CRIU's `pagemap_head` (images/pagemap.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct PagemapHead {
    #[prost(uint32, required, tag = "1")]
    pages_id: u32,
}

/// CRIU's `pagemap_entry` (images/pagemap.proto, CRIU 4.2: the page count in `nr_pages`).
#[derive(Clone, PartialEq, prost::Message)]
struct PagemapEntry {
    #[prost(uint64, required, tag = "1")]
    vaddr: u64,
    #[prost(uint32, required, tag = "2")]
    compat_nr_pages: u32,
    #[prost(uint32, optional, tag = "4")]
    flags: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    nr_pages: Option<u64>,
}

/// Every CRIU image but the raw ones starts with these (criu/include/magic.h).
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const PAGEMAP_MAGIC: u32 = 0x5608_4025;

/// The images of one `OPEN2`: a pagemap and its pages file, written as CRIU's page server would
/// write them, except that zero pages are left as holes in the pages file (they read as zeros).
struct Image {
    dst_id: u64,
    pagemap: std::fs::File,
    pages: std::fs::File,
    /// Bytes of the pages file so far (holes included).
    len: u64,
}

/// Writes the page stream as CRIU images into `dir`, hashing the byte stream as it came.
fn write_pages(
    dir: &Path,
    rx: &mut tokio::sync::mpsc::Receiver<Piece>,
) -> Result<pb::PageStreamEnd, AgentError> {
    let mut digest = Digest::default();
    let mut total = 0u64;
    let (mut image, mut pages_id, mut due, mut closed) = (None::<Image>, 0u32, 0u64, false);
    let bad = |why: String| AgentError::InvalidRequest(format!("invalid page stream: {why}"));
    let io = |path: PathBuf| move |source| AgentError::Io { path, source };
    while let Some(piece) = rx.blocking_recv() {
        digest.commands(&piece.commands);
        total += piece.commands.len() as u64;
        for h in piece.commands.chunks(HEADER) {
            if due > 0 || closed {
                return Err(bad("a command where page data was due".into()));
            }
            let word =
                |r: std::ops::Range<usize>| u64::from_ne_bytes(h[r].try_into().expect("8 bytes"));
            let cmd = u32::from_ne_bytes(h[0..4].try_into().expect("4 bytes"));
            let (nr_pages, vaddr, dst_id) = (word(8..16), word(16..24), word(24..32));
            match cmd & 0xffff {
                PS_IOV_OPEN2 => {
                    if let Some(done) = image.take() {
                        finish(done, dir)?;
                    }
                    let name = match dst_id & 0xff {
                        1 => format!("pagemap-{}.img", dst_id >> 8),
                        2 => format!("pagemap-shmem-{}.img", dst_id >> 8),
                        t => return Err(bad(format!("image type {t}"))),
                    };
                    pages_id += 1;
                    let create = |name: &str| {
                        let path = dir.join(name);
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(crate::sys::fsmode::FILE)
                            .open(&path)
                            .map_err(io(path))
                    };
                    let mut pagemap = create(&name)?;
                    let mut head = Vec::new();
                    head.extend_from_slice(&IMG_COMMON_MAGIC.to_ne_bytes());
                    head.extend_from_slice(&PAGEMAP_MAGIC.to_ne_bytes());
                    put(&mut head, &PagemapHead { pages_id });
                    pagemap.write_all(&head).map_err(io(dir.join(&name)))?;
                    let name = format!("pages-{pages_id}.img");
                    // Memory set aside for this image (ReservePages) becomes its pages file.
                    let reserve = dir.join(reserved_name(dst_id));
                    let pages = match std::fs::rename(&reserve, dir.join(&name)) {
                        Ok(()) => std::fs::OpenOptions::new()
                            .write(true)
                            .open(dir.join(&name))
                            .map_err(io(dir.join(&name)))?,
                        Err(_) => create(&name)?,
                    };
                    image = Some(Image { dst_id, pagemap, pages, len: 0 });
                }
                PS_IOV_PARENT => {}
                PS_IOV_ADD_F => {
                    let Some(img) = image.as_mut().filter(|i| i.dst_id == dst_id) else {
                        return Err(bad(format!("pages for image {dst_id:#x}, which is not open")));
                    };
                    let flags = cmd >> 16;
                    let entry = PagemapEntry {
                        vaddr,
                        compat_nr_pages: 0,
                        flags: Some(flags),
                        nr_pages: Some(nr_pages),
                    };
                    let mut buf = Vec::new();
                    put(&mut buf, &entry);
                    img.pagemap.write_all(&buf).map_err(io(dir.join("pagemap")))?;
                    if flags & PE_PRESENT != 0 {
                        due = nr_pages
                            .checked_mul(PAGE as u64)
                            .ok_or_else(|| bad(format!("{nr_pages} pages in one entry")))?;
                    }
                }
                PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => closed = true,
                other => return Err(bad(format!("page-server command {other:#x}"))),
            }
        }
        if let Some(d) = piece.data {
            digest.chunk(d.offset, d.raw_len as u32, d.checksum);
            total += d.raw_len as u64;
            let Some(img) = image.as_mut().filter(|_| d.raw_len as u64 <= due) else {
                return Err(bad("page data no command announced".into()));
            };
            // Every zero page stays a hole (the source leaves each one out).
            d.write_at(&img.pages, img.len, 1)
                .map_err(io(dir.join(format!("pages-{pages_id}.img"))))?;
            img.len += d.raw_len as u64;
            due -= d.raw_len as u64;
        }
    }
    if !closed || due > 0 {
        return Err(AgentError::StreamBroken(
            "the page stream ended before CRIU's close command".into(),
        ));
    }
    if let Some(done) = image.take() {
        finish(done, dir)?;
    }
    // Memory set aside for images the stream did not have.
    for e in std::fs::read_dir(dir).map_err(io(dir.to_path_buf()))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(RESERVED) {
            std::fs::remove_file(e.path()).map_err(io(e.path()))?;
        }
    }
    Ok(digest.end(total))
}

/// Appends `m` as CRIU writes an image entry: its length (u32, host order), then the message.
fn put(buf: &mut Vec<u8>, m: &impl prost::Message) {
    buf.extend_from_slice(&(m.encoded_len() as u32).to_ne_bytes());
    m.encode(buf).expect("a Vec grows");
}

/// The pages file gets its full length (trailing zero pages are a hole too; memory set aside
/// beyond it is given back).
fn finish(img: Image, dir: &Path) -> Result<(), AgentError> {
    img.pages.set_len(img.len).map_err(|source| AgentError::Io { path: dir.to_path_buf(), source })
}

/// Moves the page images of a migration's stream into `images` (the received snapshot's).
/// Refuses a snapshot that carries page images itself.
pub fn claim(dir: &Path, images: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
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
