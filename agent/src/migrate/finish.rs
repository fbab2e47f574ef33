//! The end of a migration on either side: commit or abort on the target, discarding a workload's
//! copy on both.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::sys::signal::Sig;
use crate::workload::{continue_tree, Status, Workload};

/// How long a killed workload may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an aborted migration's id is remembered.
const ABORTED_KEPT: Duration = Duration::from_secs(3600);

impl Agent {
    /// Resumes the workload restored for `migration_id`: the source has killed its original.
    pub async fn commit_migration(&self, migration_id: &str) -> Result<Status> {
        let w = match self.pending(migration_id) {
            Ok(w) => w,
            // Committed already (the source did not get the first answer): the same answer.
            Err(e) => match self.committed_workload(migration_id).and_then(|id| self.get(&id).ok())
            {
                Some(w) if w.exit_info().is_none() => return Ok(self.status_of(&w)),
                _ => return Err(e),
            },
        };
        let lazy = self.lazy_daemon(migration_id);
        if let Some(lp) = &lazy {
            // Post-copy: a copy whose memory stopped arriving never runs.
            if let Some(Err(why)) = lp.ended() {
                return Err(AgentError::PostCopyLost {
                    id: w.id().to_string(),
                    migration: migration_id.to_string(),
                    reason: why,
                });
            }
            lp.mark_committed();
        }
        if !w.is_paused() {
            let w2 = w.clone();
            tokio::task::spawn_blocking(move || continue_tree(&w2))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))??;
        }
        w.set_pending_migration(None);
        self.record_commit(migration_id, w.id());
        match &lazy {
            // The lazy-pages daemon still reads its images and work dir; they go when it is done.
            Some(lp) if lp.ended().is_none() => {}
            _ => self.remove_migration_dir(migration_id),
        }
        tracing::info!(
            id = w.id(),
            migration = migration_id,
            "migration committed; workload runs here"
        );
        Ok(self.status_of(&w))
    }

    /// Discards the workload restored for `migration_id`: the source has resumed its original.
    /// Idempotent: an unknown migration only has its scratch files removed.
    pub async fn abort_migration(&self, migration_id: &str) -> Result<()> {
        self.note_aborted(migration_id);
        self.kill_lazy_daemon(migration_id);
        if let Ok(w) = self.pending(migration_id) {
            self.discard(&w).await?;
            tracing::info!(
                id = w.id(),
                migration = migration_id,
                "migration aborted; copy discarded"
            );
        }
        self.remove_migration_dir(migration_id);
        Ok(())
    }

    /// Remembers (for an hour) that the source aborted `migration_id`: a PushSnapshot still
    /// restoring it here discards its copy when done, rather than hold it stopped for a commit
    /// that will never come (the source gave up waiting and resumed the original).
    fn note_aborted(&self, migration_id: &str) {
        let mut aborted = self.aborted.lock().expect("aborted migrations poisoned");
        let now = std::time::Instant::now();
        aborted.retain(|_, at| now.duration_since(*at) < ABORTED_KEPT);
        aborted.insert(migration_id.to_string(), now);
    }

    /// Whether the source aborted `migration_id` (see `note_aborted`).
    pub(crate) fn was_aborted(&self, migration_id: &str) -> bool {
        self.aborted.lock().expect("aborted migrations poisoned").contains_key(migration_id)
    }

    fn pending(&self, migration_id: &str) -> Result<Arc<Workload>> {
        self.workloads()
            .into_iter()
            .find(|w| w.pending_migration().as_deref() == Some(migration_id))
            .ok_or_else(|| AgentError::NoSuchMigration { id: migration_id.to_string() })
    }

    pub(crate) fn remove_migration_dir(&self, migration_id: &str) {
        if !self.config().keep_scratch && crate::snapshot::safe_relative(migration_id).is_some() {
            let _ = std::fs::remove_dir_all(
                self.config().data_dir.join("migrations").join(migration_id),
            );
        }
        if crate::workload::valid_id(migration_id) {
            self.page_streams.lock().expect("page streams poisoned").remove(migration_id);
            self.page_reservations.lock().expect("page reservations poisoned").remove(migration_id);
            let _ = std::fs::remove_dir_all(super::pages::dir(self, migration_id));
        }
    }

    /// SIGKILL to a workload's whole tree (its PID namespace's init takes the rest with it).
    pub(crate) fn kill_workload(&self, w: &Workload) -> Result<()> {
        if w.own_pid_namespace {
            crate::workload::signal_task(w, w.init_pid, Sig::SIGKILL)
        } else {
            crate::workload::signal_tree(w, Sig::SIGKILL)
        }
    }

    /// Kills a workload's whole tree, waits until it is reaped, and forgets it and its directory.
    pub(crate) async fn discard(&self, w: &Arc<Workload>) -> Result<()> {
        if w.exit_info().is_none() {
            self.kill_workload(w)?;
            if !w.wait_exit(KILL_WAIT).await {
                return Err(AgentError::Internal(format!(
                    "workload {} (pid {}) was not reaped {KILL_WAIT:?} after SIGKILL",
                    w.id(),
                    w.init_pid
                )));
            }
        }
        self.remove(w.id());
        let _ = std::fs::remove_dir_all(&w.dir);
        Ok(())
    }
}
