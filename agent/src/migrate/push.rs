//! The target's side of a migration: receive a snapshot, verify all of it, install the working
//! directory and log, restore the workload stopped, and hold it until the source commits.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ferry_proto::agent as pb;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::snapshot::receive::{declared_size, decode, Decoded, ReceiveError, Receiver};
use crate::workload::{valid_id, Engine};

/// What the target reports back to the source.
pub struct Pushed {
    pub status: crate::workload::Status,
    pub verify_ms: i64,
    pub restore_ms: i64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
}

impl Agent {
    pub async fn receive_snapshot(
        self: &Arc<Self>,
        mut parts: impl futures_core_stream::PartStream,
    ) -> Result<Pushed> {
        let first = parts.next_part().await?.ok_or_else(|| {
            AgentError::InvalidRequest("empty snapshot stream: the manifest must come first".into())
        })?;
        let Some(pb::snapshot_part::Part::Manifest(manifest)) = first.part else {
            return Err(AgentError::InvalidRequest(
                "the first part of a snapshot must be its manifest".into(),
            ));
        };
        let mid = manifest.migration_id.clone();
        if !valid_id(&mid) {
            return Err(AgentError::InvalidRequest(format!(
                "migration id {mid:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )));
        }
        let spec_pb = manifest.spec.clone().ok_or_else(|| {
            AgentError::InvalidRequest("the manifest carries no workload spec".into())
        })?;
        let spec = crate::grpc::spec_from_pb(spec_pb);
        let info = manifest.restore.clone().unwrap_or_default();
        if !valid_id(&spec.id) {
            return Err(AgentError::InvalidRequest(format!(
                "workload id {:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                spec.id
            )));
        }
        if spec.engine == Engine::Criu && !(self.is_root() && self.criu().check_passed) {
            return Err(AgentError::InvalidRequest(format!(
                "node {} cannot restore a CRIU snapshot: {}",
                self.config().node,
                self.criu().check_error
            )));
        }
        // Its user and group must exist here before anything is received, and its protection
        // must be one this node can give.
        spec.check_limits()?;
        self.check_protection(&spec)?;
        let creds = self.credentials(&spec)?;
        if let Ok(w) = self.get(&spec.id) {
            if w.exit_info().is_none() {
                return Err(AgentError::AlreadyExists { id: spec.id });
            }
            self.remove(&spec.id);
        }
        let migrations = self.config().data_dir.join("migrations");
        let scratch = migrations.join(&mid);
        // The scratch directory is this push's own: an id already in use (a migration in flight
        // or kept for inspection) is refused, and its files are left alone.
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AgentError::Io { path, source }
        };
        crate::sys::fsmode::dir(&migrations, crate::sys::fsmode::TRAVERSE)
            .map_err(io(&migrations))?;
        // Root's alone, but for a cooperative workload with a user, which reads its state below
        // it: then others may pass through, never list it.
        let scratch_mode = if spec.engine == Engine::Cooperative {
            crate::workload::start::dir_mode(creds.as_ref())
        } else {
            crate::sys::fsmode::DIR
        };
        match crate::sys::fsmode::new_dir(&scratch, scratch_mode) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(AgentError::MigrationExists { id: mid });
            }
            Err(e) => return Err(io(&scratch)(e)),
        }
        let recv_dir = scratch.join("recv");
        let received = self.receive_files(&mut parts, &recv_dir, &manifest).await;
        let (totals, verify_ms) = match received {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e);
            }
        };
        tracing::info!(
            migration = mid,
            id = spec.id,
            bytes = totals.bytes_raw,
            "snapshot received and verified"
        );

        let restore_start = Instant::now();
        let dir = self.workload_dir(&spec.id);
        let dir_mode = crate::workload::start::dir_mode(creds.as_ref());
        let installed =
            install(&recv_dir, &dir, dir_mode, &info, spec.cwd.as_deref()).and_then(|()| {
                match &creds {
                    // Received files are root's: the shipped working directory goes back to the
                    // workload's user (CRIU restores the processes' own credentials).
                    Some(c) if info.ships_workdir => {
                        crate::workload::start::chown(&dir.join("work"), c)
                    }
                    _ => Ok(()),
                }
            });
        if let Err(e) = installed {
            let _ = std::fs::remove_dir_all(&scratch);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        if let Some(sent) = &info.page_stream {
            // The memory pages came ahead (PushPages): they must all be here, as the source sent
            // them, and join the other images.
            let claimed = match self.take_page_stream(&mid) {
                None => Err(AgentError::InvalidRequest(format!(
                    "the snapshot of migration {mid} names a page stream that did not arrive \
                     whole on node {}",
                    self.config().node
                ))),
                Some(got) if got != *sent => {
                    Err(AgentError::Snapshot(ReceiveError::Corrupt(format!(
                        "the page stream of migration {mid} is not the one the snapshot names \
                         ({} bytes, {} here; {} bytes, {} at the source)",
                        got.bytes, got.digest, sent.bytes, sent.digest
                    ))))
                }
                Some(_) => {
                    super::pages::claim(&super::pages::dir(self, &mid), &recv_dir.join("images"))
                        .map_err(|e| {
                            AgentError::Internal(format!(
                                "cannot take the pages of migration {mid}: {e}"
                            ))
                        })
                }
            };
            if let Err(e) = claimed {
                let _ = std::fs::remove_dir_all(&scratch);
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(super::pages::dir(self, &mid));
                return Err(e);
            }
        }
        let req = crate::engine::RestoreRequest {
            migration_id: &mid,
            workload: spec.clone(),
            images: &recv_dir.join("images"),
            work: &scratch.join("criu"),
            info: &info,
            source_node: &manifest.source_node,
        };
        let restored = crate::engine::restore(spec.engine, self, req).await;
        let w = match restored {
            Ok(w) => w,
            Err(source) => {
                // Keep CRIU's log (scratch/criu); drop what was received and installed.
                let _ = std::fs::remove_dir_all(&recv_dir);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(AgentError::Restore { node: self.config().node.clone(), source });
            }
        };
        let restore_ms = restore_start.elapsed().as_millis() as i64;
        if self.was_aborted(&mid) {
            // The source gave up waiting (its restore deadline) and resumed the original: this
            // copy would wait for a commit that never comes.
            self.discard(&w).await?;
            self.remove_migration_dir(&mid);
            tracing::warn!(
                migration = mid,
                id = spec.id,
                restore_ms,
                "restored after the source aborted the migration; copy discarded"
            );
            return Err(AgentError::Precondition(format!(
                "migration {mid} was aborted by its source while node {} restored it (after \
                 {restore_ms} ms); the copy was discarded",
                self.config().node
            )));
        }
        tracing::info!(
            migration = mid,
            id = spec.id,
            verify_ms,
            restore_ms,
            "workload restored, waiting for commit"
        );
        if spec.engine == Engine::Criu
            && !self.config().keep_scratch
            && self.lazy_daemon(&mid).is_none()
        {
            // CRIU has read the images; the cooperative program may read its state until commit.
            // (A lazy restore's daemon reads them until it is done; they go with it.)
            let _ = std::fs::remove_dir_all(recv_dir.join("images"));
        }
        Ok(Pushed {
            status: self.status_of(&w),
            verify_ms,
            restore_ms,
            bytes_raw: totals.bytes_raw,
            bytes_wire: totals.bytes_wire,
        })
    }

    /// Receives the chunks and the trailer: chunks are decoded (decompressed, checksummed) on
    /// up to [`DECODE_AHEAD`] blocking threads while one writer thread writes them in order, so
    /// receiving, decoding and writing overlap; memory stays bounded by those queues.
    async fn receive_files(
        &self,
        parts: &mut impl futures_core_stream::PartStream,
        root: &Path,
        manifest: &pb::Manifest,
    ) -> Result<(crate::snapshot::receive::Totals, i64)> {
        // Declared sizes: at most --max-snapshot-mib (checked by the receiver), and together with
        // the snapshots being received meanwhile, at most the free space. Actual bytes never
        // exceed the declared ones: the receiver refuses a file longer than announced.
        let declared = declared_size(manifest);
        let max = self.config().max_snapshot_bytes;
        if declared > max {
            return Err(AgentError::Snapshot(ReceiveError::TooLarge {
                size: declared,
                limit: max,
                what: "this agent's limit (--max-snapshot-mib)",
            }));
        }
        let free = crate::sys::host::free_bytes(&self.config().data_dir);
        let _reserved = Reserved::take(self.receiving(), declared, free)?;
        let receiver = Receiver::new(root, manifest, self.config().max_snapshot_bytes)?;
        let (to_writer, mut writer_rx) = tokio::sync::mpsc::channel::<Decoded>(DECODE_AHEAD);
        let writer = tokio::task::spawn_blocking(move || {
            let mut receiver = receiver;
            while let Some(d) = writer_rx.blocking_recv() {
                receiver.write(d)?;
            }
            Ok::<_, crate::snapshot::receive::ReceiveError>(receiver)
        });
        let mut ahead = DecodeAhead::new();
        let result: Result<pb::Trailer> = async {
            loop {
                let part = parts.next_part().await?.ok_or_else(|| {
                    AgentError::StreamBroken(
                        "the source closed the stream before the trailer".into(),
                    )
                })?;
                match part.part {
                    Some(pb::snapshot_part::Part::Chunk(c)) => {
                        if ahead.push((), Some(c)) {
                            forward(&mut ahead, &to_writer).await?;
                        }
                    }
                    Some(pb::snapshot_part::Part::Trailer(t)) => {
                        while forward(&mut ahead, &to_writer).await? {}
                        return Ok(t);
                    }
                    Some(pb::snapshot_part::Part::Manifest(_)) => {
                        return Err(AgentError::InvalidRequest(
                            "a second manifest in one snapshot".into(),
                        ))
                    }
                    None => {
                        return Err(AgentError::InvalidRequest("an empty snapshot part".into()))
                    }
                }
            }
        }
        .await;
        drop(to_writer);
        let written = writer.await.map_err(|e| AgentError::Internal(e.to_string()))?;
        // A writer error explains a closed channel better than the send that found it closed.
        let receiver = match (written, result) {
            (Err(e), _) => return Err(e.into()),
            (Ok(_), Err(e)) => return Err(e),
            (Ok(r), Ok(trailer)) => (r, trailer),
        };
        let start = Instant::now();
        let (receiver, trailer) = receiver;
        let totals = tokio::task::spawn_blocking(move || receiver.finish(&trailer))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        Ok((totals, start.elapsed().as_millis() as i64))
    }
}

/// Bytes of snapshots being received, held from the manifest until every file is written.
struct Reserved<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
}

impl<'a> Reserved<'a> {
    /// Reserves `bytes`, refusing when they and what is already reserved exceed `free`.
    fn take(counter: &'a AtomicU64, bytes: u64, free: u64) -> Result<Reserved<'a>> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(bytes).filter(|total| *total <= free)
            })
            .map_err(|held| {
                AgentError::Snapshot(ReceiveError::TooLarge {
                    size: bytes,
                    limit: free.saturating_sub(held),
                    what: "the data dir's free space less the snapshots being received",
                })
            })?;
        Ok(Reserved { counter, bytes })
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Chunks decoded ahead of the writer.
pub(super) const DECODE_AHEAD: usize = 4;

/// Chunks being decoded on blocking threads (sizes checked first, then decompressed and
/// checksummed), at most [`DECODE_AHEAD`] at a time, taken back in the order they came, each
/// with what came with it (`T`). Used by the snapshot stream and the page stream.
pub(super) struct DecodeAhead<T> {
    queue: std::collections::VecDeque<(T, Option<tokio::task::JoinHandle<Decoding>>)>,
}

type Decoding = std::result::Result<Decoded, ReceiveError>;

impl<T> DecodeAhead<T> {
    pub(super) fn new() -> Self {
        DecodeAhead { queue: Default::default() }
    }

    /// Queues `with` and starts decoding its chunk, if it has one. True when the queue is full:
    /// the caller takes the oldest ([`Self::next`]) before it reads on.
    pub(super) fn push(&mut self, with: T, chunk: Option<pb::Chunk>) -> bool {
        let job = chunk.map(|c| tokio::task::spawn_blocking(move || decode(c)));
        self.queue.push_back((with, job));
        self.queue.len() >= DECODE_AHEAD
    }

    /// The oldest queued, its chunk decoded; None when nothing is queued.
    pub(super) async fn next(&mut self) -> Option<Result<(T, Option<Decoded>)>> {
        let (with, job) = self.queue.pop_front()?;
        let decoded = match job {
            Some(j) => match j.await {
                Ok(Ok(d)) => Some(d),
                Ok(Err(e)) => return Some(Err(AgentError::Snapshot(e))),
                Err(e) => return Some(Err(AgentError::Internal(e.to_string()))),
            },
            None => None,
        };
        Some(Ok((with, decoded)))
    }
}

/// Hands the oldest decoded chunk to the writer; false when none was queued.
async fn forward(
    ahead: &mut DecodeAhead<()>,
    to_writer: &tokio::sync::mpsc::Sender<Decoded>,
) -> Result<bool> {
    let Some(next) = ahead.next().await else { return Ok(false) };
    if let ((), Some(d)) = next? {
        // A closed channel means the writer failed; the caller reports the writer's error.
        to_writer
            .send(d)
            .await
            .map_err(|_| AgentError::Internal("the snapshot writer stopped".into()))?;
    }
    Ok(true)
}

/// Moves the received working directory and log into the workload's directory `dir` (made with
/// `dir_mode`; the working directory mode 0700, as on the source, whatever the snapshot said).
fn install(
    recv: &Path,
    dir: &Path,
    dir_mode: u32,
    info: &pb::RestoreInfo,
    cwd: Option<&Path>,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::Io { path, source }
    };
    // symlink_metadata: an "images", "work", "log" or "log/output.log" that is a symlink would
    // make the agent read, write (the log) or hand out (the working directory) a path outside
    // the snapshot. The receiver never follows a symlink, so checking these top levels suffices.
    let kind = |rel: &str| std::fs::symlink_metadata(recv.join(rel)).ok().map(|m| m.file_type());
    let not_a = |rel: &str, what: &str| {
        AgentError::InvalidRequest(format!("{rel:?} in the snapshot is not a {what}"))
    };
    if !kind("images").is_some_and(|t| t.is_dir()) {
        return Err(not_a("images", "directory"));
    }
    for rel in ["work", "log"] {
        if kind(rel).is_some_and(|t| !t.is_dir()) {
            return Err(not_a(rel, "directory"));
        }
    }
    if kind("log/output.log").is_some_and(|t| !t.is_file()) {
        return Err(not_a("log/output.log", "regular file"));
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    crate::sys::fsmode::dir(dir, dir_mode).map_err(io(dir))?;
    if info.ships_workdir {
        let work = recv.join("work");
        if kind("work").is_none() {
            return Err(AgentError::InvalidRequest(
                "the snapshot announces a working directory but has none".into(),
            ));
        }
        // Closed before it is moved in (the receiver created it with the sender's mode).
        crate::sys::fsmode::set(&work, crate::sys::fsmode::DIR).map_err(io(&work))?;
        std::fs::rename(&work, dir.join("work")).map_err(io(&work))?;
    } else if let Some(cwd) = cwd {
        if !cwd.is_dir() {
            return Err(AgentError::BadCwd { path: cwd.to_path_buf() });
        }
    }
    let log = recv.join("log/output.log");
    if kind("log/output.log").is_some() {
        crate::sys::fsmode::tighten(&log, crate::sys::fsmode::FILE).map_err(io(&log))?;
        std::fs::rename(&log, dir.join("output.log")).map_err(io(&log))?;
    }
    Ok(())
}

/// The source of snapshot parts: a tonic request stream in the server, anything in tests.
pub mod futures_core_stream {
    use ferry_proto::agent as pb;

    use crate::error::{AgentError, Result};

    pub trait PartStream: Send {
        fn next_part(
            &mut self,
        ) -> impl std::future::Future<Output = Result<Option<pb::SnapshotPart>>> + Send;
    }

    impl PartStream for tonic::Streaming<pb::SnapshotPart> {
        async fn next_part(&mut self) -> Result<Option<pb::SnapshotPart>> {
            self.message().await.map_err(|s| {
                AgentError::StreamBroken(format!(
                    "the source went away mid-transfer ({})",
                    s.message()
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_snapshots_share_the_free_space() {
        let held = AtomicU64::new(0);
        let a = Reserved::take(&held, 600, 1000).unwrap();
        let err = Reserved::take(&held, 500, 1000).err().unwrap().to_string();
        assert!(err.contains("500 bytes") && err.contains("of 400 bytes"), "{err}");
        assert!(err.contains("free space"), "{err}");
        let b = Reserved::take(&held, 400, 1000).unwrap();
        assert!(Reserved::take(&held, u64::MAX, u64::MAX).is_err(), "no overflow");
        drop((a, b));
        assert_eq!(held.load(Ordering::SeqCst), 0);
        drop(Reserved::take(&held, 1000, 1000).unwrap());
    }
}
