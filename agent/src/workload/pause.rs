//! Pausing and resuming the whole tree with SIGSTOP / SIGCONT.

use std::collections::HashSet;
use std::time::Duration;

use super::status::tree_tasks;
use super::{signal_task, Status, Workload};
use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::sys::proc;
use crate::sys::signal::Sig;

/// How long to wait for every task to report the new state.
/// How long the tree may take to reach the state asked for. Generous: on a loaded machine a
/// runnable task may wait seconds for a CPU to act on its SIGSTOP.
const SETTLE: Duration = Duration::from_secs(10);

impl Agent {
    pub async fn pause(&self, id: &str) -> Result<Status> {
        let w = self.get(id)?;
        self.require_alive(&w, "pause")?;
        crate::checkpoint::wait_checkpoint(&w).await;
        w.require_not_migrating("pause")?;
        if !w.is_paused() {
            let w2 = w.clone();
            let self_stopped = tokio::task::spawn_blocking(move || {
                let already = stopped_tasks(&w2);
                stop_tree(&w2).map(|()| already)
            })
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
            w.set_self_stopped(self_stopped);
            w.set_paused(true);
            tracing::info!(id, "workload paused");
        }
        Ok(self.status_of(&w))
    }

    pub async fn resume(&self, id: &str) -> Result<Status> {
        let w = self.get(id)?;
        self.require_alive(&w, "resume")?;
        crate::checkpoint::wait_checkpoint(&w).await;
        w.require_not_migrating("resume")?;
        let (w2, keep) = (w.clone(), w.self_stopped());
        tokio::task::spawn_blocking(move || continue_tree(&w2, &keep))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        w.set_paused(false);
        tracing::info!(id, "workload resumed");
        Ok(self.status_of(&w))
    }

    pub(crate) fn require_alive(&self, w: &Workload, op: &'static str) -> Result<()> {
        match w.exit_info() {
            Some(exit) => Err(AgentError::BadState {
                id: w.id().to_string(),
                state: format!("exited ({exit})"),
                op,
                hint: "; start it again instead",
            }),
            None => Ok(()),
        }
    }
}

/// SIGSTOP to every task of the tree, again until no new task appears (a fork may race the
/// first pass), then waits until all of them are stopped.
pub(crate) fn stop_tree(w: &Workload) -> Result<()> {
    let mut sent: HashSet<i32> = HashSet::new();
    for _ in 0..50 {
        let tasks = tree_tasks(w, &proc::scan());
        let fresh: Vec<i32> =
            tasks.iter().map(|t| t.info.pid).filter(|p| !sent.contains(p)).collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            signal_task(w, pid, Sig::SIGSTOP)?;
            sent.insert(pid);
        }
    }
    settle(w, |t| super::status::holds_still(t.info.state));
    Ok(())
}

/// SIGCONT to every task of the tree but those in `keep_stopped` (pids in the workload's PID
/// namespace: tasks it had stopped itself, which stay stopped).
pub(crate) fn continue_tree(w: &Workload, keep_stopped: &[i32]) -> Result<()> {
    let kept = |t: &super::Task| !t.init && keep_stopped.contains(&t.ns_pid);
    for t in tree_tasks(w, &proc::scan()) {
        if !kept(&t) {
            signal_task(w, t.info.pid, Sig::SIGCONT)?;
        }
    }
    settle(w, |t| kept(t) || t.info.state != 'T');
    Ok(())
}

/// The tasks of the tree that are stopped now (pids in its PID namespace), ferry-init aside: before
/// ferry stops a tree, those the workload stopped itself.
pub(crate) fn stopped_tasks(w: &Workload) -> Vec<i32> {
    tree_tasks(w, &proc::scan())
        .iter()
        .filter(|t| !t.init && t.info.state == 'T')
        .map(|t| t.ns_pid)
        .collect()
}

/// Whether every task of the tree is stopped, ferry-init included (which never stops itself: only
/// ferry stops it). False for a tree with no task.
pub(crate) fn all_stopped(w: &Workload) -> bool {
    let tasks = tree_tasks(w, &proc::scan());
    !tasks.is_empty() && tasks.iter().all(|t| t.info.state == 'T')
}

/// Host pids of every task of the tree, ferry-init included.
pub(crate) fn task_pids(w: &Workload) -> Vec<i32> {
    tree_tasks(w, &proc::scan()).iter().map(|t| t.info.pid).collect()
}

fn settle(w: &Workload, done: impl Fn(&super::Task) -> bool) {
    let deadline = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < deadline {
        if tree_tasks(w, &proc::scan()).iter().all(&done) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let late: Vec<String> = tree_tasks(w, &proc::scan())
        .iter()
        .filter(|t| !done(t))
        .map(|t| format!("{} ({}, {})", t.info.pid, t.info.comm, t.info.state))
        .collect();
    tracing::warn!(id = w.id(), tasks = ?late, "tree did not settle in {SETTLE:?}");
}
