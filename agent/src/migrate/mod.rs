//! Migration as a transaction.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Pending
//!     Pending --> Preflight
//!     Preflight --> Freezing
//!     Freezing --> Checkpointing
//!     Checkpointing --> Freezing: cooperative (checkpoint, then freeze)
//!     Checkpointing --> Transferring
//!     Transferring --> Restoring
//!     Restoring --> Committing
//!     Committing --> Completed
//!     Preflight --> RollingBack
//!     Freezing --> RollingBack
//!     Checkpointing --> RollingBack
//!     Transferring --> RollingBack
//!     Restoring --> RollingBack
//!     RollingBack --> RolledBack
//!     Committing --> RollingBack: post-copy, the target surely did not resume its copy
//!     Committing --> PostCopy: post-copy (pages follow the resumed workload)
//!     PostCopy --> Completed
//!     Committing --> Failed: target did not confirm the resume
//!     PostCopy --> Failed: the page transfer broke
//! ```
//!
//! The source keeps its frozen original until the target holds a verified, restored (stopped)
//! copy; then it kills the original and tells the target to resume (commit). Any failure before
//! that resumes the original and tells the target to discard its copy (roll back): at every
//! moment at most one copy runs, and at least one exists. Post-copy differs after the commit:
//! the original only serves its memory and never runs again, and if that memory stops arriving
//! the workload is lost (docs/migration.md).

mod finish;
mod layout;
pub(crate) mod ledger;
mod out;
pub mod pages;
pub mod preflight;
pub(crate) mod push;
pub(crate) mod recovery;
pub mod tunnel;

pub(crate) use out::source_chain;
pub use out::{MigrateOut, MigrationReport};

use crate::snapshot::send::SendFault;

/// Test-only faults of a migration, honoured only by an agent started with
/// `--enable-fault-injection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// A fault of the snapshot sender.
    Send(SendFault),
    /// Wait this long between the restore on the target and the commit.
    HoldBeforeCommit(std::time::Duration),
    /// Post-copy: stop the page server (SIGSTOP) this long once the target resumed.
    StallPageServer(std::time::Duration),
    /// Send CommitMigration once and drop the answer (the commit may have been delivered).
    LoseCommitAnswer,
    /// Ask the target to wait this long once CRIU restored the tree, before it takes the copy on
    /// (as a slow or hung restore would).
    HoldRestore(std::time::Duration),
    /// The source agent kills itself at this step (see `CrashPoint`).
    CrashAt(CrashPoint),
}

/// Where a test-only crash of the source agent happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the freeze.
    Frozen,
    /// The target holds its restored copy; the commit is not yet recorded.
    Restored,
    /// The commit is recorded and not yet sent.
    CommitRecorded,
    /// The target confirmed the commit; the original is not yet killed (nor, in post-copy, the
    /// resume recorded).
    CommitConfirmed,
}

impl CrashPoint {
    pub fn from_arg(arg: u32) -> Option<CrashPoint> {
        Some(match arg {
            1 => CrashPoint::Frozen,
            2 => CrashPoint::Restored,
            3 => CrashPoint::CommitRecorded,
            4 => CrashPoint::CommitConfirmed,
            _ => return None,
        })
    }
}

/// Test-only: this agent SIGKILLs itself, as a crash would, at step `at` of `migration`.
pub(crate) fn die_here(at: &str, migration: &str) {
    tracing::warn!(migration, at, "fault injection: this agent kills itself");
    let _ = crate::sys::signal::send(std::process::id() as i32, crate::sys::signal::Sig::SIGKILL);
    std::thread::sleep(std::time::Duration::from_secs(60));
}

impl Fault {
    /// Test-only: the agent dies here, as a crash would, if the fault says so.
    pub(crate) fn crash_at(self, at: CrashPoint, migration: &str) {
        if self == Fault::CrashAt(at) {
            die_here(&format!("{at:?}"), migration);
        }
    }

    pub fn send(self) -> SendFault {
        match self {
            Fault::Send(f) => f,
            _ => SendFault::None,
        }
    }
}

/// A migration a source agent knows about.
#[derive(Clone)]
pub enum MigrationState {
    Running(std::sync::Arc<Live>),
    Done(Box<MigrationReport>),
}

/// A running migration's progress, readable while it runs.
pub struct Live {
    pub workload_id: String,
    /// Every phase entered so far, with its start (ms).
    pub phases: std::sync::Mutex<Vec<(Phase, i64)>>,
    pub progress: std::sync::Arc<crate::snapshot::send::Progress>,
    /// Post-copy: the target's last count of the workload's memory pages (see
    /// `engine::lazy::PageCount`), once known.
    pub post_copy_pages: std::sync::Mutex<Option<crate::engine::lazy::PageCount>>,
}

/// The phases of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Pending,
    Preflight,
    Freezing,
    Checkpointing,
    Transferring,
    Restoring,
    Committing,
    /// Post-copy only: the workload runs on the target while its pages still arrive.
    PostCopy,
    Completed,
    RollingBack,
    RolledBack,
    Failed,
    /// A restarted source agent (or one whose commit went unanswered) resolving the migration
    /// from its ledger record (`recovery`).
    Recovering,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Preflight => "preflight",
            Phase::Freezing => "freeze",
            Phase::Checkpointing => "checkpoint",
            Phase::Transferring => "transfer",
            Phase::Restoring => "restore",
            Phase::Committing => "commit",
            Phase::PostCopy => "post_copy",
            Phase::Completed => "completed",
            Phase::RollingBack => "rollback",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
            Phase::Recovering => "recovering",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Phase::Completed | Phase::RolledBack | Phase::Failed)
    }

    /// Whether the source still holds the original, so a failure now rolls back.
    pub fn can_roll_back(self) -> bool {
        matches!(
            self,
            Phase::Pending
                | Phase::Preflight
                | Phase::Freezing
                | Phase::Checkpointing
                | Phase::Transferring
                | Phase::Restoring
        )
    }

    /// The next phase on success. `cooperative`: the program checkpoints before it is frozen.
    pub fn next(self, cooperative: bool) -> Option<Phase> {
        Some(match (self, cooperative) {
            (Phase::Pending, _) => Phase::Preflight,
            (Phase::Preflight, false) => Phase::Freezing,
            (Phase::Freezing, false) => Phase::Checkpointing,
            (Phase::Checkpointing, false) => Phase::Transferring,
            (Phase::Preflight, true) => Phase::Checkpointing,
            (Phase::Checkpointing, true) => Phase::Freezing,
            (Phase::Freezing, true) => Phase::Transferring,
            (Phase::Transferring, _) => Phase::Restoring,
            (Phase::Restoring, _) => Phase::Committing,
            (Phase::Committing, _) => Phase::Completed,
            (Phase::RollingBack, _) => Phase::RolledBack,
            _ => return None,
        })
    }

    /// Where a failure in this phase leads.
    pub fn on_failure(self) -> Phase {
        if self.can_roll_back() {
            Phase::RollingBack
        } else if matches!(self, Phase::RollingBack | Phase::Committing | Phase::PostCopy) {
            Phase::Failed
        } else {
            self
        }
    }
}

/// When each phase started and ended.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub phases: Vec<(Phase, i64, i64)>,
}

impl Timeline {
    pub fn begin(&mut self, p: Phase) {
        self.phases.push((p, crate::sys::now_ms(), 0));
    }

    pub fn end(&mut self) {
        if let Some(last) = self.phases.last_mut() {
            if last.2 == 0 {
                last.2 = crate::sys::now_ms();
            }
        }
    }

    pub fn current(&self) -> Phase {
        self.phases.last().map(|p| p.0).unwrap_or(Phase::Pending)
    }

    pub fn duration_ms(&self, p: Phase) -> i64 {
        self.phases.iter().filter(|x| x.0 == p).map(|x| (x.2 - x.1).max(0)).sum()
    }

    pub fn start_of(&self, p: Phase) -> Option<i64> {
        self.phases.iter().find(|x| x.0 == p).map(|x| x.1)
    }

    pub fn end_of(&self, p: Phase) -> Option<i64> {
        self.phases.iter().rev().find(|x| x.0 == p).map(|x| x.2)
    }
}

/// What a failed call to the target means, for the error a person reads: the target refused
/// `what` (it answered with an error), stopped answering (an HTTP/2 ping went unanswered: host
/// frozen, agent stopped, packets dropped), or the connection broke (with the causes).
pub(crate) fn target_failed(node: &str, what: &str, s: &tonic::Status) -> String {
    let Some(cause) = std::error::Error::source(s) else {
        return format!("node {node} refused {what}: {}", s.message());
    };
    let chain = out::source_chain(cause);
    if chain.contains("keep-alive timed out") {
        format!(
            "node {node} stopped answering while it was sent {what} (no answer to a ping within \
             {} s: its host frozen, its agent stopped, or the network dropping packets)",
            out::PING_TIMEOUT.as_secs()
        )
    } else {
        format!("the connection to node {node} broke while it was sent {what}: {chain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(cooperative: bool) -> Vec<Phase> {
        let mut p = Phase::Pending;
        let mut out = vec![p];
        while let Some(n) = p.next(cooperative) {
            out.push(n);
            p = n;
        }
        out
    }

    #[test]
    fn criu_freezes_before_checkpointing() {
        use Phase::*;
        assert_eq!(
            walk(false),
            [
                Pending,
                Preflight,
                Freezing,
                Checkpointing,
                Transferring,
                Restoring,
                Committing,
                Completed
            ]
        );
    }

    #[test]
    fn cooperative_checkpoints_before_freezing() {
        use Phase::*;
        assert_eq!(
            walk(true),
            [
                Pending,
                Preflight,
                Checkpointing,
                Freezing,
                Transferring,
                Restoring,
                Committing,
                Completed
            ]
        );
    }

    #[test]
    fn failures_roll_back_until_commit() {
        for p in [
            Phase::Preflight,
            Phase::Freezing,
            Phase::Checkpointing,
            Phase::Transferring,
            Phase::Restoring,
        ] {
            assert_eq!(p.on_failure(), Phase::RollingBack, "{p:?}");
        }
        assert_eq!(Phase::Committing.on_failure(), Phase::Failed);
        assert_eq!(Phase::RollingBack.on_failure(), Phase::Failed);
        assert_eq!(Phase::RollingBack.next(false), Some(Phase::RolledBack));
        assert!(Phase::RolledBack.is_final() && Phase::Completed.is_final());
        assert_eq!(Phase::Completed.next(false), None);
    }

    #[test]
    fn timeline_durations() {
        let mut t = Timeline::default();
        t.phases.push((Phase::Freezing, 100, 130));
        t.phases.push((Phase::Checkpointing, 130, 400));
        assert_eq!(t.duration_ms(Phase::Freezing), 30);
        assert_eq!(t.duration_ms(Phase::Transferring), 0);
        assert_eq!(t.start_of(Phase::Checkpointing), Some(130));
        assert_eq!(t.current(), Phase::Checkpointing);
    }
}
