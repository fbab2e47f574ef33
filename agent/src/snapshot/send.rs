//! The sending side. A reader thread turns files into checksummed chunks (and computes each
//! file's digest), [`WORKERS`] encoder threads drop their zero pages and compress them
//! chunk-parallel, and the sender thread puts them, in order, on a bounded channel that the gRPC
//! request stream drains ([`Parts`]).
//!
//! zstd or raw is decided from measurement ([`Policy`]): after a warm-up, one window of chunks
//! goes out compressed and the next raw, each timed where the transport takes them (so the
//! figure is what the whole path moves: encoders, network, the receiver); the faster one is kept
//! until the next pair of windows, every [`REPROBE`] chunks. Raw wins when the link (and the
//! receiver) move raw bytes clearly faster ([`RAW_MARGIN`]) than the encoders compress them.

use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_proto::agent as pb;
use tokio::sync::mpsc;

use super::{Entry, CHUNK_SIZE, SEND_QUEUE, ZERO_RUN, ZSTD_LEVEL};

/// Encoder threads (zero pages and zstd), chunk-parallel.
pub const WORKERS: usize = 2;
/// Chunks between two measurements of both codecs.
pub const REPROBE: u64 = 1024;
/// Chunks sent before the first measurement (HTTP/2 windows fill up meanwhile).
const WARMUP: u64 = 16;
/// Chunks per measurement window, for each codec.
const WINDOW: u64 = 32;
/// Chunks at the start of a window not timed (the other codec's chunks still drain).
const SKIP: u64 = 2;

/// Test-only faults of the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendFault {
    #[default]
    None,
    /// Flip one payload byte of the chunk with this index, after its checksum was computed.
    CorruptChunk(u64),
    /// Sleep this long before each chunk.
    Slow(std::time::Duration),
}

/// Counters shared with the caller while the stream runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub chunks: AtomicU64,
    pub bytes_raw: AtomicU64,
    pub bytes_wire: AtomicU64,
    /// Raw bytes in zero pages, which did not travel.
    pub bytes_zero: AtomicU64,
    /// How chunks were encoded, and why (the codec measurements).
    pub codec: Mutex<String>,
}

impl Progress {
    /// Counts a chunk handed to the transport: its raw bytes, its bytes on the wire (payload and
    /// zero-page bitmap) and the bytes of its zero pages, which did not travel.
    pub fn count(&self, c: &pb::Chunk) {
        let raw_len = c.raw_len as usize;
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes_raw.fetch_add(raw_len as u64, Ordering::Relaxed);
        let wire = c.payload.len() + c.zero_pages.len();
        self.bytes_wire.fetch_add(wire as u64, Ordering::Relaxed);
        let zeros = raw_len - super::nonzero_len(raw_len, &c.zero_pages);
        self.bytes_zero.fetch_add(zeros as u64, Ordering::Relaxed);
    }
}

/// A codec a chunk can be sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Zstd,
    Raw,
}

/// The probe window chunk `seq` belongs to: its codec and its first chunk.
fn probe(seq: u64) -> Option<(Mode, u64)> {
    if seq < WARMUP {
        return None;
    }
    let p = (seq - WARMUP) % REPROBE;
    match p {
        p if p < WINDOW => Some((Mode::Zstd, seq - p)),
        p if p < 2 * WINDOW => Some((Mode::Raw, seq - p + WINDOW)),
        _ => None,
    }
}

/// One window being timed.
#[derive(Default)]
struct Timing {
    begin: Option<Instant>,
    bytes: u64,
    /// Raw bytes per second of the latest complete window, zstd then raw.
    rates: [Option<f64>; 2],
}

/// How much faster raw must move the data than zstd to be chosen. A near tie goes to zstd: it
/// sends fewer bytes, which the measurement does not see the cost of (the receiver's decryption
/// and copies, on cores a local link shares). Taking raw at a 1% lead measured a 1 GiB
/// stop-and-copy's downtime at 812 ms, against 648 to 678 for zstd in the same run.
const RAW_MARGIN: f64 = 1.1;

/// The codec choice, from the throughput of each codec on this very stream.
pub struct Policy {
    /// 0: zstd (also before any measurement), 1: raw.
    chosen: AtomicU8,
    timing: Mutex<Timing>,
    progress: Arc<Progress>,
    /// The zstd level the encoders use (for the notes).
    level: i32,
    /// Chunks the transport has taken so far (the next one's sequence number).
    taken: std::sync::atomic::AtomicU64,
    /// zstd for every chunk, unmeasured: a checkpoint written to a file and shipped later,
    /// where bytes at rest and on the replicas' links count, not the write's speed.
    always_zstd: bool,
}

impl Policy {
    pub(crate) fn new(progress: Arc<Progress>, level: i32) -> Policy {
        *progress.codec.lock().expect("codec note poisoned") =
            format!("zstd level {level} on {WORKERS} threads (not measured: a short stream)");
        Policy {
            chosen: AtomicU8::new(0),
            timing: Mutex::default(),
            progress,
            level,
            taken: Default::default(),
            always_zstd: false,
        }
    }

    /// The transport took the next chunk, of `raw` bytes, now (chunks are taken in order).
    pub fn took(&self, raw: u64) {
        let seq = self.taken.fetch_add(1, Ordering::Relaxed);
        self.taken(seq, raw, Instant::now());
    }

    /// The codec for chunk `seq`: its probe window's, else the one chosen last.
    pub fn mode_for(&self, seq: u64) -> Mode {
        if self.always_zstd {
            return Mode::Zstd;
        }
        match probe(seq) {
            Some((m, _)) => m,
            None if self.chosen.load(Ordering::Relaxed) == 1 => Mode::Raw,
            None => Mode::Zstd,
        }
    }

    /// The transport took chunk `seq` of `raw` bytes at `now`.
    pub fn taken(&self, seq: u64, raw: u64, now: Instant) {
        let Some((mode, start)) = probe(seq) else { return };
        let mut t = self.timing.lock().expect("codec timing poisoned");
        let pos = seq - start;
        if pos == SKIP {
            t.begin = Some(now);
            t.bytes = 0;
            return;
        }
        if pos < SKIP {
            return;
        }
        t.bytes += raw;
        if pos + 1 < WINDOW {
            return;
        }
        let Some(begin) = t.begin.take() else { return };
        let secs = now.duration_since(begin).as_secs_f64().max(1e-6);
        t.rates[mode as usize] = Some(t.bytes as f64 / secs);
        if let (Mode::Raw, [Some(zstd), Some(raw)]) = (mode, t.rates) {
            let pick = if raw > zstd * RAW_MARGIN { Mode::Raw } else { Mode::Zstd };
            self.chosen.store(pick as u8, Ordering::Relaxed);
            let note = format!(
                "{} (measured at chunk {seq}: zstd level {} on {WORKERS} threads moved {:.0} MB/s \
                 of raw data, raw {:.0} MB/s)",
                if pick == Mode::Raw { "raw" } else { "zstd" },
                self.level,
                zstd / 1e6,
                raw / 1e6
            );
            tracing::debug!(note, "snapshot codec chosen");
            *self.progress.codec.lock().expect("codec note poisoned") = note;
        }
    }
}

/// A chunk as it travels: codec, payload, and the bitmap of its zero pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub codec: pb::Codec,
    pub payload: Vec<u8>,
    pub zero_pages: Vec<u8>,
}

/// Encodes `raw`: its zero pages left out (see [`super::zero_pages`]), the rest compressed with
/// `zstd` when given and when that shrinks it, else raw.
pub fn encode(
    raw: &[u8],
    zstd: Option<&mut zstd::bulk::Compressor<'_>>,
    zero_run: usize,
) -> std::io::Result<Encoded> {
    let map = super::zero_pages(raw, zero_run);
    let data: std::borrow::Cow<'_, [u8]> = match &map {
        Some(m) => super::without_zero_pages(raw, m).into(),
        None => raw.into(),
    };
    let zero_pages = map.unwrap_or_default();
    if let (Some(z), false) = (zstd, data.is_empty()) {
        let compressed = z.compress(&data)?;
        if compressed.len() < data.len() {
            return Ok(Encoded { codec: pb::Codec::Zstd, payload: compressed, zero_pages });
        }
    }
    Ok(Encoded { codec: pb::Codec::Raw, payload: data.into_owned(), zero_pages })
}

/// The parts of a snapshot as the transport takes them (telling the [`Policy`] when).
pub struct Parts {
    rx: mpsc::Receiver<pb::SnapshotPart>,
    policy: Arc<Policy>,
}

impl Parts {
    fn saw(&mut self, p: &pb::SnapshotPart) {
        if let Some(pb::snapshot_part::Part::Chunk(c)) = &p.part {
            self.policy.took(c.raw_len.into());
        }
    }

    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<pb::SnapshotPart>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(p)) = &polled {
            self.saw(p);
        }
        polled
    }

    pub fn blocking_recv(&mut self) -> Option<pb::SnapshotPart> {
        let p = self.rx.blocking_recv();
        if let Some(p) = &p {
            self.saw(p);
        }
        p
    }
}

/// A chunk read, waiting for an encoder.
struct Job {
    seq: u64,
    file_index: u32,
    offset: u64,
    raw: Vec<u8>,
    checksum: u32,
    done: SyncSender<std::io::Result<(Job, Encoded)>>,
}

/// What the sender thread takes next, in stream order.
enum Next {
    Chunk(Receiver<std::io::Result<(Job, Encoded)>>),
    End(Vec<String>),
    Failed(std::io::Error),
}

/// Starts the threads. The receiver yields the manifest, the chunks and the trailer; an error
/// (a file that cannot be read) ends the stream early, which the target treats as a failed
/// transfer, and is returned by the thread. `free_images`: the checkpoint images ("images/...")
/// are scratch, and their memory is given back as each chunk is read (a hole is punched).
pub fn start(
    manifest: pb::Manifest,
    entries: Vec<Entry>,
    fault: SendFault,
    progress: Arc<Progress>,
    free_images: bool,
) -> (Parts, std::thread::JoinHandle<std::io::Result<()>>) {
    start_with(manifest, entries, fault, progress, free_images, false)
}

/// [`start`], with every chunk zstd-compressed when `always_zstd` (no codec measurement).
pub fn start_with(
    manifest: pb::Manifest,
    entries: Vec<Entry>,
    fault: SendFault,
    progress: Arc<Progress>,
    free_images: bool,
    always_zstd: bool,
) -> (Parts, std::thread::JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let mut policy = Policy::new(progress.clone(), ZSTD_LEVEL);
    policy.always_zstd = always_zstd;
    let policy = Arc::new(policy);
    let p2 = policy.clone();
    let handle = std::thread::Builder::new()
        .name("snapshot-send".into())
        .spawn(move || produce(manifest, entries, fault, &progress, &p2, &tx, free_images))
        .expect("spawn snapshot sender thread");
    (Parts { rx, policy }, handle)
}

fn part(p: pb::snapshot_part::Part) -> pb::SnapshotPart {
    pb::SnapshotPart { part: Some(p) }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "snapshot stream closed")
}

fn produce(
    manifest: pb::Manifest,
    entries: Vec<Entry>,
    fault: SendFault,
    progress: &Progress,
    policy: &Arc<Policy>,
    tx: &mpsc::Sender<pb::SnapshotPart>,
    free_images: bool,
) -> std::io::Result<()> {
    tx.blocking_send(part(pb::snapshot_part::Part::Manifest(manifest))).map_err(|_| gone())?;
    let files = entries.len() as u64;
    // The trailer counts this stream only (the progress may also count a page stream).
    let base = [&progress.chunks, &progress.bytes_raw, &progress.bytes_wire]
        .map(|c| c.load(Ordering::Relaxed));
    let (next_tx, next_rx) = std::sync::mpsc::sync_channel::<Next>(SEND_QUEUE);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(WORKERS);
    let job_rx = Arc::new(Mutex::new(job_rx));
    // Chunk buffers go back to the reader once sent: reused memory, not freshly faulted pages.
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(SEND_QUEUE + WORKERS + 2);
    let reader = std::thread::Builder::new()
        .name("snapshot-read".into())
        .spawn(move || read(entries, &job_tx, &next_tx, &free_rx, free_images))?;
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let (jobs, policy) = (job_rx.clone(), policy.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("snapshot-encode-{i}"))
                .spawn(move || encode_jobs(&jobs, &policy))?,
        );
    }
    let sent = (|| -> std::io::Result<()> {
        let mut index = 0u64;
        loop {
            let encoded = match next_rx.recv().map_err(|_| gone())? {
                Next::Chunk(rx) => rx.recv().map_err(|_| gone())??,
                Next::Failed(e) => return Err(e),
                Next::End(digests) => {
                    let trailer = pb::Trailer {
                        files,
                        chunks: progress.chunks.load(Ordering::Relaxed) - base[0],
                        bytes_raw: progress.bytes_raw.load(Ordering::Relaxed) - base[1],
                        bytes_wire: progress.bytes_wire.load(Ordering::Relaxed) - base[2],
                        file_digests: digests,
                    };
                    return tx
                        .blocking_send(part(pb::snapshot_part::Part::Trailer(trailer)))
                        .map_err(|_| gone());
                }
            };
            let (job, Encoded { codec, mut payload, zero_pages }) = encoded;
            let mut checksum = job.checksum;
            match fault {
                SendFault::CorruptChunk(n) if n == index => match payload.last_mut() {
                    Some(b) => *b ^= 0x5a,
                    None => checksum ^= 1,
                },
                SendFault::Slow(d) => std::thread::sleep(d),
                _ => {}
            }
            let raw_len = job.raw.len() as u64;
            let chunk = pb::Chunk {
                file_index: job.file_index,
                offset: job.offset,
                raw_len: raw_len as u32,
                codec: codec as i32,
                payload: payload.into(),
                checksum,
                zero_pages,
            };
            progress.count(&chunk);
            tx.blocking_send(part(pb::snapshot_part::Part::Chunk(chunk))).map_err(|_| gone())?;
            let _ = free_tx.try_send(job.raw);
            index += 1;
        }
    })();
    // Ends the reader (its queue is gone) and with it the encoders (theirs is).
    drop(next_rx);
    let _ = reader.join();
    for w in workers {
        let _ = w.join();
    }
    sent
}

/// The reader: every regular file in chunks, each checksummed and handed to the encoders, its
/// slot queued in order for the sender; then the file digests.
fn read(
    entries: Vec<Entry>,
    jobs: &SyncSender<Job>,
    next: &SyncSender<Next>,
    free: &Receiver<Vec<u8>>,
    free_images: bool,
) {
    let result = (|| -> std::io::Result<Vec<String>> {
        let mut digests = Vec::with_capacity(entries.len());
        let mut seq = 0u64;
        for (i, e) in entries.iter().enumerate() {
            let mut hasher = blake3::Hasher::new();
            if e.file.kind == pb::FileKind::Regular as i32 {
                // Checkpoint images are scratch: their memory (tmpfs, as large as the workload's)
                // goes back as soon as each chunk is read.
                let scratch = free_images && e.file.name.starts_with("images/");
                let mut f = std::fs::OpenOptions::new().read(true).write(scratch).open(&e.path)?;
                let mut offset = 0u64;
                while offset < e.file.size {
                    let want = ((e.file.size - offset) as usize).min(CHUNK_SIZE);
                    // A sent chunk's buffer when one is back, not zero-filled first: read_to_end
                    // writes every byte it keeps.
                    let mut raw =
                        free.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK_SIZE));
                    raw.clear();
                    let got = (&mut f).take(want as u64).read_to_end(&mut raw);
                    match got {
                        Ok(n) if n == want => {}
                        Ok(n) => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("{:?} at {offset}: {n} of {want} bytes", e.path),
                            ))
                        }
                        Err(err) => {
                            return Err(std::io::Error::new(
                                err.kind(),
                                format!("{:?} at {offset}: {err}", e.path),
                            ))
                        }
                    }
                    if scratch {
                        let _ = crate::sys::host::punch_hole(&f, offset, want as u64);
                    }
                    hasher.update(&raw);
                    let checksum = crc32c::crc32c(&raw);
                    let (done, slot) = std::sync::mpsc::sync_channel(1);
                    next.send(Next::Chunk(slot)).map_err(|_| gone())?;
                    let job = Job { seq, file_index: i as u32, offset, raw, checksum, done };
                    jobs.send(job).map_err(|_| gone())?;
                    offset += want as u64;
                    seq += 1;
                }
            }
            digests.push(hasher.finalize().to_hex().to_string());
        }
        Ok(digests)
    })();
    let _ = next.send(match result {
        Ok(digests) => Next::End(digests),
        Err(e) => Next::Failed(e),
    });
}

/// An encoder: zero pages out, then zstd or raw as the policy says for the chunk.
fn encode_jobs(jobs: &Mutex<Receiver<Job>>, policy: &Policy) {
    let Ok(mut z) = zstd::bulk::Compressor::new(ZSTD_LEVEL) else { return };
    loop {
        let job = match jobs.lock().expect("job queue poisoned").recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let zstd = (policy.mode_for(job.seq) == Mode::Zstd).then_some(&mut z);
        let encoded = encode(&job.raw, zstd, ZERO_RUN);
        let done = job.done.clone();
        let _ = done.send(encoded.map(|e| (job, e)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_windows_alternate_after_the_warm_up() {
        assert_eq!(probe(0), None);
        assert_eq!(probe(WARMUP), Some((Mode::Zstd, WARMUP)));
        assert_eq!(probe(WARMUP + WINDOW - 1), Some((Mode::Zstd, WARMUP)));
        assert_eq!(probe(WARMUP + WINDOW), Some((Mode::Raw, WARMUP + WINDOW)));
        assert_eq!(probe(WARMUP + 2 * WINDOW), None);
        assert_eq!(probe(WARMUP + REPROBE + 1), Some((Mode::Zstd, WARMUP + REPROBE)));
    }

    #[test]
    fn the_faster_codec_on_the_wire_wins() {
        let progress = Arc::new(Progress::default());
        let policy = Policy::new(progress.clone(), ZSTD_LEVEL);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        // zstd: 1 MiB every 2 ms; raw: 1 MiB every 1 ms.
        for seq in WARMUP..WARMUP + WINDOW {
            policy.taken(seq, 1 << 20, ms(seq * 2));
        }
        assert_eq!(policy.mode_for(WARMUP + 3 * WINDOW), Mode::Zstd, "not decided yet");
        let base = (WARMUP + WINDOW) * 2;
        for seq in WARMUP + WINDOW..WARMUP + 2 * WINDOW {
            policy.taken(seq, 1 << 20, ms(base + seq - WARMUP - WINDOW));
        }
        assert_eq!(policy.mode_for(WARMUP + 3 * WINDOW), Mode::Raw);
        assert_eq!(policy.mode_for(WARMUP + REPROBE), Mode::Zstd, "the next probe");
        let note = progress.codec.lock().unwrap().clone();
        assert!(note.starts_with("raw (") && note.contains("MB/s"), "{note}");
    }

    #[test]
    fn zero_runs_are_bare_bitmaps_and_the_rest_is_compressed() {
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        let zeros = vec![0u8; CHUNK_SIZE];
        let e = encode(&zeros, Some(&mut z), ZERO_RUN).unwrap();
        assert_eq!((e.codec, e.payload.len(), e.zero_pages), (pb::Codec::Raw, 0, vec![0xff; 32]));
        let page = super::super::PAGE;
        let mut mixed = vec![b'x'; 18 * page];
        mixed[page..17 * page].fill(0);
        let e = encode(&mixed, Some(&mut z), ZERO_RUN).unwrap();
        assert_eq!((e.codec, e.zero_pages.clone()), (pb::Codec::Zstd, vec![0xfe, 0xff, 0x01]));
        let e = encode(&mixed, None, ZERO_RUN).unwrap();
        assert_eq!(e.payload, vec![b'x'; 2 * page]);
        // A lone zero page travels with its neighbours (no bitmap, no copy).
        mixed[page..16 * page].fill(b'x');
        let e = encode(&mixed, None, ZERO_RUN).unwrap();
        assert_eq!((e.zero_pages.len(), e.payload.len()), (0, 18 * page));
        // The page stream leaves out even a lone one.
        let e = encode(&mixed, None, 1).unwrap();
        assert_eq!((e.zero_pages, e.payload.len()), (vec![0, 0, 0x01], 17 * page));
    }
}
