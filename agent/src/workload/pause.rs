//! Pausing and resuming the whole tree with SIGSTOP / SIGCONT.

use std::collections::HashSet;
use std::time::Duration;

use super::status::tree_tasks;
use super::{signal_task, signal_tree, Status, Workload};
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
        if !w.is_paused() {
            let w2 = w.clone();
            tokio::task::spawn_blocking(move || stop_tree(&w2))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))??;
            w.set_paused(true);
            tracing::info!(id, "workload paused");
        }
        Ok(self.status_of(&w))
    }

    pub async fn resume(&self, id: &str) -> Result<Status> {
        let w = self.get(id)?;
        self.require_alive(&w, "resume")?;
        let w2 = w.clone();
        tokio::task::spawn_blocking(move || continue_tree(&w2))
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
    settle(w, super::status::holds_still);
    Ok(())
}

/// SIGCONT to every task of the tree.
pub(crate) fn continue_tree(w: &Workload) -> Result<()> {
    signal_tree(w, Sig::SIGCONT)?;
    settle(w, |state| state != 'T');
    Ok(())
}

fn settle(w: &Workload, done: impl Fn(char) -> bool) {
    let deadline = std::time::Instant::now() + SETTLE;
    while std::time::Instant::now() < deadline {
        if tree_tasks(w, &proc::scan()).iter().all(|t| done(t.info.state)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let late: Vec<String> = tree_tasks(w, &proc::scan())
        .iter()
        .filter(|t| !done(t.info.state))
        .map(|t| format!("{} ({}, {})", t.info.pid, t.info.comm, t.info.state))
        .collect();
    tracing::warn!(id = w.id(), tasks = ?late, "tree did not settle in {SETTLE:?}");
}
