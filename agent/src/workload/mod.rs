//! Workloads: what the agent runs, and the operations on them. One operation per file.

mod adopt;
pub(crate) mod network;
mod pause;
mod persist;
mod spec;
pub(crate) mod start;
mod status;
mod stop;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

pub use adopt::{Adopt, ExitWatch};
pub(crate) use pause::{all_stopped, continue_tree, stop_tree, stopped_tasks, task_pids};
pub use persist::recorded_live_pids;
pub use spec::{valid_id, Engine, WorkloadSpec};
pub use status::{State, Status, Task};

use crate::logs::LogStore;
use crate::sys::reaper::ExitStatus;

/// How a workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at_ms: i64,
}

impl ExitInfo {
    /// ferry-init exits with the status of the last process of the workload, encoding "killed by
    /// signal N" as 128 + N (as shells do); ferry-init itself may also be killed (SIGKILL on stop).
    pub fn from_init(status: ExitStatus, at_ms: i64) -> ExitInfo {
        match status {
            ExitStatus::Exited(c) if c > 128 && c <= 128 + 64 => {
                ExitInfo { code: None, signal: Some(c - 128), at_ms }
            }
            ExitStatus::Exited(c) => ExitInfo { code: Some(c), signal: None, at_ms },
            ExitStatus::Signaled(s) => ExitInfo { code: None, signal: Some(s), at_ms },
        }
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "exited (status unknown: it ended under an earlier agent)"),
        }
    }
}

/// The `criu lazy-pages` daemon filling a restored workload's memory after its resume, as
/// recorded in its state (so that an agent restarted meanwhile can tell whether it finished).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LazyFill {
    pub migration_id: String,
    pub pid: i32,
    /// The daemon's start time (a reused pid is never taken for it).
    pub start_ticks: u64,
    /// Its log, which counts the pages it has to fill and those it filled.
    pub log: std::path::PathBuf,
}

#[derive(Debug, Default)]
struct Mutable {
    paused: bool,
    /// Last CPU sample of the tree: when, and total ticks.
    cpu_sample: Option<(Instant, u64)>,
    /// On a migration target: restored, stopped, waiting for CommitMigration of this id.
    pending_migration: Option<String>,
    /// On a migration target: restored by a post-copy migration (its memory follows it).
    post_copy: bool,
    /// On a migration target: the lazy-pages daemon still filling its memory (None once every
    /// page arrived). A restarted agent finds out from it whether the memory is complete.
    lazy_fill: Option<LazyFill>,
    /// Killed by the agent because it could not run correctly: what was lost, and why.
    lost: Option<String>,
    /// On a post-copy source: the target resumed this workload (migration id); the original only
    /// serves its memory from now on and never runs here again.
    moved_out: Option<String>,
    /// On a migration's source, while it runs: the migration id and its target.
    migration_out: Option<(String, String)>,
    /// How many hold the workload for a migration: the migration itself, then a recovery that
    /// resolves it (migrate::recovery). Every operation is refused while any does.
    migration_holds: u32,
    /// Pids (in its PID namespace) of tasks the workload had stopped itself when ferry stopped
    /// it (pause, freeze): resuming it leaves them stopped.
    self_stopped: Vec<i32>,
}

/// A workload supervised by this agent.
pub struct Workload {
    pub spec: WorkloadSpec,
    /// `<data dir>/workloads/<id>`: its log and (by default) its working directory.
    pub dir: PathBuf,
    pub cwd: PathBuf,
    /// Host pid of its ferry-init.
    pub init_pid: i32,
    /// Its ferry-init's start time (clock ticks after boot), naming it with `init_pid` for good.
    pub init_start_ticks: u64,
    /// Its main process's pid as ferry-init sees it.
    pub main_ns_pid: i32,
    pub own_pid_namespace: bool,
    pub started_at_ms: i64,
    pub log: LogStore,
    /// CRIU `inherit_fd` keys of its stdout and stderr pipes ("pipe:[INODE]").
    pub stdio_keys: [String; 2],
    /// The cooperative engine's control socket, for workloads using it.
    pub coop: Option<std::sync::Arc<crate::engine::coop::Control>>,
    /// Where its own address is attached on this node (sys::net), if it has one.
    pub net: Option<crate::sys::net::Attachment>,
    state: Mutex<Mutable>,
    exit: watch::Receiver<Option<ExitInfo>>,
}

impl Workload {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    pub fn is_paused(&self) -> bool {
        self.state.lock().expect("workload state poisoned").paused
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.state.lock().expect("workload state poisoned").paused = paused;
        self.persist();
    }

    pub fn pending_migration(&self) -> Option<String> {
        self.state.lock().expect("workload state poisoned").pending_migration.clone()
    }

    pub(crate) fn set_pending_migration(&self, id: Option<String>) {
        self.state.lock().expect("workload state poisoned").pending_migration = id;
        self.persist();
    }

    pub fn is_post_copy(&self) -> bool {
        self.state.lock().expect("workload state poisoned").post_copy
    }

    pub(crate) fn set_post_copy(&self, post_copy: bool) {
        self.state.lock().expect("workload state poisoned").post_copy = post_copy;
        self.persist();
    }

    /// The lazy-pages daemon filling this workload's memory, while it does.
    pub(crate) fn lazy_fill(&self) -> Option<LazyFill> {
        self.state.lock().expect("workload state poisoned").lazy_fill.clone()
    }

    pub(crate) fn set_lazy_fill(&self, fill: Option<LazyFill>) {
        self.state.lock().expect("workload state poisoned").lazy_fill = fill;
        self.persist();
    }

    pub fn lost(&self) -> Option<String> {
        self.state.lock().expect("workload state poisoned").lost.clone()
    }

    pub(crate) fn set_lost(&self, why: String) {
        self.state.lock().expect("workload state poisoned").lost = Some(why);
        self.persist();
    }

    pub fn moved_out(&self) -> Option<String> {
        self.state.lock().expect("workload state poisoned").moved_out.clone()
    }

    pub(crate) fn set_moved_out(&self, migration_id: String) {
        self.state.lock().expect("workload state poisoned").moved_out = Some(migration_id);
        self.persist();
    }

    /// Marks the workload as migrating out (`migration_id` to `target`); false if a migration of
    /// it is already running. Every operation but status reads is refused until
    /// [`Workload::end_migration`].
    pub(crate) fn begin_migration(&self, migration_id: &str, target: &str) -> bool {
        let mut st = self.state.lock().expect("workload state poisoned");
        if st.migration_holds > 0 {
            return false;
        }
        st.migration_holds = 1;
        st.migration_out = Some((migration_id.to_string(), target.to_string()));
        true
    }

    /// One more hold on a workload a migration holds already (its recovery takes over).
    pub(crate) fn hold_migration(&self, migration_id: &str, target: &str) {
        let mut st = self.state.lock().expect("workload state poisoned");
        st.migration_holds += 1;
        st.migration_out = Some((migration_id.to_string(), target.to_string()));
    }

    /// Whether a checkpoint (not a migration) holds the workload now.
    pub(crate) fn checkpointing(&self) -> bool {
        let st = self.state.lock().expect("workload state poisoned");
        st.migration_out.as_ref().is_some_and(|(_, t)| t == crate::checkpoint::HOLDER)
    }

    pub(crate) fn end_migration(&self) {
        let mut st = self.state.lock().expect("workload state poisoned");
        st.migration_holds = st.migration_holds.saturating_sub(1);
        if st.migration_holds == 0 {
            st.migration_out = None;
        }
    }

    pub fn self_stopped(&self) -> Vec<i32> {
        self.state.lock().expect("workload state poisoned").self_stopped.clone()
    }

    pub(crate) fn set_self_stopped(&self, ns_pids: Vec<i32>) {
        self.state.lock().expect("workload state poisoned").self_stopped = ns_pids;
        self.persist();
    }

    /// Refuses `op` while a migration holds the workload: on the source while it migrates out, on
    /// a target while the restored copy waits for its commit. Only the migration decides what
    /// becomes of either (a resume of the frozen original, or of a copy not committed, would be
    /// a second running copy; a stop would lose it).
    pub(crate) fn require_not_migrating(&self, op: &'static str) -> crate::error::Result<()> {
        let st = self.state.lock().expect("workload state poisoned");
        let (state, hint) = if let Some((mid, target)) = &st.migration_out {
            (
                format!("migrating (migration {mid} to {target})"),
                "; wait for the migration to end: it runs on the target then, or here again if \
                 the migration rolls back",
            )
        } else if st.migration_holds > 0 {
            ("migrating".to_string(), "; wait for the migration to end")
        } else if let Some(mid) = &st.pending_migration {
            (
                format!("a copy held stopped for migration {mid}, waiting for its source's commit"),
                "; only that migration's commit resumes it and its abort discards it (the \
                 workload itself runs on the source until then)",
            )
        } else {
            return Ok(());
        };
        Err(crate::error::AgentError::BadState { id: self.id().to_string(), state, op, hint })
    }

    /// Waits until the workload has exited, at most `timeout`. True if it has.
    pub async fn wait_exit(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.exit.clone();
        let exited = tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some())).await.is_ok();
        exited
    }
}

/// Sends `sig` to one task of `w`.
pub(crate) fn signal_task(
    w: &Workload,
    pid: i32,
    sig: crate::sys::signal::Sig,
) -> crate::error::Result<()> {
    crate::sys::signal::send(pid, sig).map_err(|source| crate::error::AgentError::Signal {
        id: w.id().to_string(),
        pid,
        source,
    })
}

/// Sends `sig` to every task of `w`'s tree, ferry-init included.
pub(crate) fn signal_tree(w: &Workload, sig: crate::sys::signal::Sig) -> crate::error::Result<()> {
    for t in status::tree_tasks(w, &crate::sys::proc::scan()) {
        signal_task(w, t.info.pid, sig)?;
    }
    Ok(())
}
