//! The end of a migration on either side: commit or abort on the target, discarding a workload's
//! copy on both.

use std::sync::Arc;
use std::time::Duration;

use super::ledger::{self, InStep, Incoming};
use crate::agent::Agent;
use crate::config::CommitCrash;
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
            Err(e) => {
                let id = self.committed_workload(migration_id).or_else(|| {
                    ledger::read_in(&self.config().data_dir, migration_id)
                        .filter(|r| r.step == InStep::Committed)
                        .map(|r| r.workload_id)
                });
                return match id {
                    Some(id) => match self.get(&id) {
                        Ok(w) if w.exit_info().is_none() => Ok(self.status_of(&w)),
                        _ => Err(AgentError::AlreadyCommitted {
                            migration: migration_id.to_string(),
                            id,
                            node: self.config().node.clone(),
                        }),
                    },
                    None => Err(e),
                };
            }
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
        // On disk before the copy runs: from here on this node answers "committed" for this
        // migration, even after a restart, and a source that restarted never resumes its original.
        let record = Incoming {
            migration_id: migration_id.to_string(),
            workload_id: w.id().to_string(),
            step: InStep::Committed,
            at_ms: crate::sys::now_ms(),
        };
        ledger::write_in(&self.config().data_dir, &record).map_err(|e| {
            AgentError::Internal(format!(
                "cannot record the commit of migration {migration_id} on node {} (its copy stays \
                 stopped): {e}",
                self.config().node
            ))
        })?;
        self.test_crash_at_commit(CommitCrash::Recorded, migration_id);
        if let Some(net) = &w.net {
            // This node answers for the address from now on; the source lets go of it once it
            // has this answer, and sends on what it held.
            let t = std::time::Instant::now();
            match self.attach_network(net).await {
                Ok(()) => {
                    tracing::info!(id = w.id(), migration = migration_id, address = %net.address, ms = t.elapsed().as_millis() as u64, "this node answers for the workload's address")
                }
                Err(e) => {
                    tracing::error!(id = w.id(), migration = migration_id, address = %net.address, %e, "cannot answer for the workload's address here; it runs unreachable")
                }
            }
        }
        if !w.is_paused() {
            let (w2, keep) = (w.clone(), w.self_stopped());
            tokio::task::spawn_blocking(move || continue_tree(&w2, &keep))
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
        self.test_crash_at_commit(CommitCrash::Resumed, migration_id);
        Ok(self.status_of(&w))
    }

    /// Test-only (`--test-crash-at-commit`, with fault injection): this agent dies at `at`.
    fn test_crash_at_commit(&self, at: CommitCrash, migration_id: &str) {
        let c = self.config();
        if c.fault_injection && c.test_crash_at_commit == Some(at) {
            super::die_here(&format!("commit {at:?}"), migration_id);
        }
    }

    /// Discards the workload restored for `migration_id`: the source has resumed its original.
    /// Idempotent: an unknown migration only has its scratch files removed.
    pub async fn abort_migration(&self, migration_id: &str) -> Result<()> {
        if self.incoming_state(migration_id) == Some(InStep::Committed.into()) {
            return Err(AgentError::Precondition(format!(
                "migration {migration_id} was committed on node {}: its workload runs here, and \
                 an abort cannot undo that",
                self.config().node
            )));
        }
        if crate::workload::valid_id(migration_id) {
            let record = Incoming {
                migration_id: migration_id.to_string(),
                workload_id: self
                    .pending(migration_id)
                    .map(|w| w.id().to_string())
                    .unwrap_or_default(),
                step: InStep::Discarded,
                at_ms: crate::sys::now_ms(),
            };
            if let Err(e) = ledger::write_in(&self.config().data_dir, &record) {
                tracing::warn!(migration = migration_id, %e, "cannot record the abort");
            }
        }
        self.note_aborted(migration_id);
        self.kill_lazy_daemon(migration_id);
        self.forget_prepared_network(migration_id).await;
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

    /// What this node did with the copy of `migration_id` it received, as a source recovering
    /// that migration asks (GetMigration's `incoming_state`): None when it has no record.
    pub fn incoming_state(&self, migration_id: &str) -> Option<IncomingState> {
        if self.pending(migration_id).is_ok() {
            return Some(IncomingState::Held);
        }
        if self.committed_workload(migration_id).is_some() {
            return Some(IncomingState::Committed);
        }
        match ledger::read_in(&self.config().data_dir, migration_id).map(|r| r.step) {
            Some(step) => Some(step.into()),
            None if self.was_aborted(migration_id) => Some(IncomingState::Discarded),
            None => None,
        }
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
        // A held copy's pair goes first: a reset its kernel sends as it dies reaches nobody.
        let live_copy = w.exit_info().is_none() && w.pending_migration().is_some();
        if let Some(net) = w.net.as_ref().filter(|_| live_copy) {
            self.cut_network(net).await;
        }
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

/// What a target did with a migration's copy (see `Agent::incoming_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingState {
    /// Restored, stopped, waiting for the commit: it has never run.
    Held,
    /// Resumed on the commit: the workload runs (or ran) here.
    Committed,
    /// Killed before it ever ran.
    Discarded,
}

impl IncomingState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncomingState::Held => "held",
            IncomingState::Committed => "committed",
            IncomingState::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<IncomingState> {
        match s {
            "held" => Some(IncomingState::Held),
            "committed" => Some(IncomingState::Committed),
            "discarded" => Some(IncomingState::Discarded),
            _ => None,
        }
    }
}

impl From<InStep> for IncomingState {
    fn from(s: InStep) -> IncomingState {
        match s {
            InStep::Committed => IncomingState::Committed,
            InStep::Discarded => IncomingState::Discarded,
        }
    }
}
