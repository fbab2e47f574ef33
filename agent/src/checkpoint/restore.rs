//! RestoreCheckpoint: a workload brought back on this node from one of its checkpoints — a
//! failover from a lost node, or a rollback in time. The object is opened with the cluster key
//! and fed, part by part, to the same receiver a migration's snapshot goes through (every chunk
//! checksum and file digest verified before anything is restored), restored stopped under the
//! restore's id, and resumed through the same commit a migration ends with (recorded in the
//! ledger before the copy runs).

use std::path::PathBuf;
use std::sync::Arc;

use ferry_proto::agent as pb;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::migrate::push::futures_core_stream::PartStream;
use crate::snapshot::receive::ReceiveError;
use crate::workload::Status;

/// A checkpoint object's parts, read and opened on a thread of their own.
struct ObjectParts {
    rx: tokio::sync::mpsc::Receiver<Result<pb::SnapshotPart>>,
    /// Set when the object itself failed (not the restore): this node's copy is no good.
    bad: Arc<std::sync::atomic::AtomicBool>,
}

impl PartStream for ObjectParts {
    async fn next_part(&mut self) -> Result<Option<pb::SnapshotPart>> {
        self.rx.recv().await.transpose()
    }
}

fn corrupt(info: &pb::CheckpointInfo, e: super::object::ObjectError) -> AgentError {
    AgentError::Snapshot(ReceiveError::Corrupt(format!(
        "checkpoint {} of workload {} (taken on {}): {e}",
        info.id, info.workload_id, info.node
    )))
}

impl Agent {
    pub async fn restore_checkpoint(
        self: &Arc<Self>,
        req: pb::RestoreCheckpointRequest,
    ) -> Result<Status> {
        let info = req.checkpoint.ok_or_else(|| {
            AgentError::InvalidRequest("which checkpoint: `checkpoint` is missing".into())
        })?;
        super::replica::check_info(&info)?;
        let rid = req.restore_id;
        if !crate::workload::valid_id(&rid) {
            return Err(AgentError::InvalidRequest(format!(
                "restore id {rid:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )));
        }
        if self.cluster_key().is_none() {
            return Err(AgentError::Precondition(format!(
                "node {} has no cluster key to open checkpoints with: start its agent with \
                 --cluster-key-file",
                self.config().node
            )));
        }
        // Asked again (the first answer was lost): the same answer.
        if let Some(rec) = crate::migrate::ledger::read_in(&self.config().data_dir, &rid) {
            if let Ok(w) = self.get(&rec.workload_id) {
                if w.exit_info().is_none() && w.pending_migration().is_none() {
                    return Ok(self.status_of(&w));
                }
            }
        }
        if let Ok(w) = self.get(&info.workload_id) {
            if w.exit_info().is_none() {
                return Err(AgentError::Precondition(format!(
                    "workload {} runs on node {}: a restore never makes a second copy; stop it \
                     first",
                    info.workload_id,
                    self.config().node
                )));
            }
        }
        tracing::info!(
            id = info.workload_id,
            checkpoint = info.id,
            restore = rid,
            reason = req.reason,
            "restoring a workload from its checkpoint"
        );
        let path = self.fetch_object(&info, &req.holders).await?;
        let parts = self.open_object(&info, path.clone(), &rid);
        let bad = parts.bad.clone();
        let pushed = match self.receive_snapshot(parts).await {
            Ok(p) => p,
            Err(e) => {
                if bad.load(std::sync::atomic::Ordering::SeqCst) {
                    // Its digest matched, yet it does not open: not a copy to keep or serve.
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(path.with_extension("info"));
                }
                return Err(e);
            }
        };
        tracing::info!(
            id = info.workload_id,
            restore = rid,
            verify_ms = pushed.verify_ms,
            restore_ms = pushed.restore_ms,
            "checkpoint restored; resuming"
        );
        self.commit_migration(&rid).await
    }

    /// The parts of the object at `path`, its manifest renamed to the restore `rid`.
    fn open_object(&self, info: &pb::CheckpointInfo, path: PathBuf, rid: &str) -> ObjectParts {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let bad = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bad2 = bad.clone();
        let key = self.cluster_key().expect("checked").clone();
        let (info, rid) = (info.clone(), rid.to_string());
        std::thread::spawn(move || {
            let file = match std::fs::File::open(&path) {
                Ok(f) => std::io::BufReader::with_capacity(1 << 20, f),
                Err(source) => {
                    let _ = tx.blocking_send(Err(AgentError::Io { path, source }));
                    return;
                }
            };
            let mut reader = match super::object::Reader::open(file, &key) {
                Ok(r) => r,
                Err(e) => {
                    bad2.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = tx.blocking_send(Err(corrupt(&info, e)));
                    return;
                }
            };
            loop {
                let next = match reader.next_part() {
                    Ok(None) => return,
                    Ok(Some(mut p)) => {
                        if let Some(pb::snapshot_part::Part::Manifest(m)) = &mut p.part {
                            m.migration_id = rid.clone();
                        }
                        Ok(p)
                    }
                    Err(e) => {
                        bad2.store(true, std::sync::atomic::Ordering::SeqCst);
                        Err(corrupt(&info, e))
                    }
                };
                let failed = next.is_err();
                if tx.blocking_send(next).is_err() || failed {
                    return;
                }
            }
        });
        ObjectParts { rx, bad }
    }
}
