//! The sending side: a blocking reader thread turns files into checksummed, compressed chunks and
//! feeds a bounded channel that the gRPC request stream drains.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_proto::agent as pb;
use tokio::sync::mpsc;

use super::{Entry, CHUNK_SIZE, SEND_QUEUE, ZSTD_LEVEL};

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
}

/// Starts the reader thread. The receiver yields the manifest, the chunks and the trailer; an
/// error (a file that cannot be read) ends the stream early, which the target treats as a failed
/// transfer, and is returned by the thread.
pub fn start(
    manifest: pb::Manifest,
    entries: Vec<Entry>,
    fault: SendFault,
    progress: Arc<Progress>,
) -> (mpsc::Receiver<pb::SnapshotPart>, std::thread::JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let handle = std::thread::Builder::new()
        .name("snapshot-send".into())
        .spawn(move || produce(manifest, entries, fault, &progress, &tx))
        .expect("spawn snapshot sender thread");
    (rx, handle)
}

fn part(p: pb::snapshot_part::Part) -> pb::SnapshotPart {
    pb::SnapshotPart { part: Some(p) }
}

fn produce(
    manifest: pb::Manifest,
    entries: Vec<Entry>,
    fault: SendFault,
    progress: &Progress,
    tx: &mpsc::Sender<pb::SnapshotPart>,
) -> std::io::Result<()> {
    let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "snapshot stream closed");
    tx.blocking_send(part(pb::snapshot_part::Part::Manifest(manifest))).map_err(|_| gone())?;
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    let mut digests = Vec::with_capacity(entries.len());
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut index = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let mut hasher = blake3::Hasher::new();
        if e.file.kind == pb::FileKind::Regular as i32 {
            let mut f = std::fs::File::open(&e.path)?;
            let mut offset = 0u64;
            while offset < e.file.size {
                let want = ((e.file.size - offset) as usize).min(CHUNK_SIZE);
                f.read_exact(&mut buf[..want]).map_err(|err| {
                    std::io::Error::new(err.kind(), format!("{:?} at {offset}: {err}", e.path))
                })?;
                let raw = &buf[..want];
                hasher.update(raw);
                let checksum = crc32c::crc32c(raw);
                let compressed = compressor.compress(raw)?;
                let (codec, mut payload) = if compressed.len() < raw.len() {
                    (pb::Codec::Zstd, compressed)
                } else {
                    (pb::Codec::Raw, raw.to_vec())
                };
                match fault {
                    SendFault::CorruptChunk(n) if n == index => {
                        if let Some(b) = payload.last_mut() {
                            *b ^= 0x5a;
                        }
                    }
                    SendFault::Slow(d) => std::thread::sleep(d),
                    _ => {}
                }
                progress.chunks.fetch_add(1, Ordering::Relaxed);
                progress.bytes_raw.fetch_add(want as u64, Ordering::Relaxed);
                progress.bytes_wire.fetch_add(payload.len() as u64, Ordering::Relaxed);
                let chunk = pb::Chunk {
                    file_index: i as u32,
                    offset,
                    raw_len: want as u32,
                    codec: codec as i32,
                    payload,
                    checksum,
                };
                tx.blocking_send(part(pb::snapshot_part::Part::Chunk(chunk)))
                    .map_err(|_| gone())?;
                offset += want as u64;
                index += 1;
            }
        }
        digests.push(hasher.finalize().to_hex().to_string());
    }
    let trailer = pb::Trailer {
        files: entries.len() as u64,
        chunks: progress.chunks.load(Ordering::Relaxed),
        bytes_raw: progress.bytes_raw.load(Ordering::Relaxed),
        bytes_wire: progress.bytes_wire.load(Ordering::Relaxed),
        file_digests: digests,
    };
    tx.blocking_send(part(pb::snapshot_part::Part::Trailer(trailer))).map_err(|_| gone())?;
    Ok(())
}
