//! Stopping a workload: SIGTERM to every task, SIGKILL after the grace period.

use std::time::Duration;

use super::{signal_task, signal_tree, Status};
use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::sys::signal::Sig;

/// How long to wait for the tree to go once SIGKILL was sent.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Agent {
    pub async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<Status> {
        let w = self.get(id)?;
        if w.exit_info().is_some() {
            return Ok(self.status_of(&w));
        }
        crate::checkpoint::wait_checkpoint(&w).await;
        w.require_not_migrating("stop")?;
        let grace = grace.unwrap_or(self.config().stop_grace);
        let paused = w.is_paused();
        signal_tree(&w, Sig::SIGTERM)?;
        if paused {
            // A stopped task only handles SIGTERM once it runs again.
            signal_tree(&w, Sig::SIGCONT)?;
            w.set_paused(false);
        }
        tracing::info!(id, ?grace, "workload stopping");
        if !w.wait_exit(grace).await {
            tracing::info!(id, "grace period over; SIGKILL");
            if w.own_pid_namespace {
                // SIGKILL to PID 1 of a namespace kills every process in it.
                signal_task(&w, w.init_pid, Sig::SIGKILL)?;
            } else {
                signal_tree(&w, Sig::SIGKILL)?;
            }
            if !w.wait_exit(KILL_WAIT).await {
                return Err(AgentError::Internal(format!(
                    "workload {id} (pid {}) did not exit {KILL_WAIT:?} after SIGKILL",
                    w.init_pid
                )));
            }
        }
        Ok(self.status_of(&w))
    }
}
