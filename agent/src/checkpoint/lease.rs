//! The node's lease: the promise that keeps a protected workload from running twice.
//!
//! The coordinator restores the protected workloads of a node it has not heard from for its
//! failover grace. The node's agent holds a shorter lease (the coordinator says how long; half
//! the grace): each heartbeat the coordinator answers renews it until the moment that heartbeat
//! was *sent* plus the lease. When it runs out, the agent kills every protected workload it runs
//! and marks it lost ("fenced"): by the time the coordinator acts, the node runs none of them.
//!
//! The lease outlives the agent twice over: its deadline is written to `<data dir>/lease` (on the
//! boot clock, with the boot's id) so that a restarted agent fences what an earlier one could not,
//! and the fd store — a process beside the agent that survives it — is told the deadline and the
//! protected workloads' pids (and start times) with every renewal, and kills them itself
//! [`FD_STORE_SLACK`] after the deadline if no agent renewed it. Only if the agent and its fd store
//! are both killed while the workloads live, and no agent starts again, is the promise broken;
//! docs/failover.md says so.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent::Agent;

/// The fd store kills this long after the deadline (the agent, if it lives, fences first and
/// says why).
pub const FD_STORE_SLACK: Duration = Duration::from_secs(2);
/// How often the agent checks its lease.
const WATCH: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Lease {
    inner: Mutex<Inner>,
}

#[derive(Default, Clone, Copy)]
struct Inner {
    /// The lease the coordinator gives (0: none; nothing is fenced).
    lease_ms: u64,
    /// Boot-clock deadline; None while no lease is held.
    until: Option<u64>,
}

impl Lease {
    /// Takes the deadline an earlier agent of this boot recorded.
    pub fn load(&self, data_dir: &Path) {
        let Ok(text) = std::fs::read_to_string(data_dir.join("lease")) else { return };
        let mut it = text.split_whitespace();
        if let (Some(boot), Some(until)) = (it.next(), it.next().and_then(|u| u.parse().ok())) {
            if boot == crate::sys::boot_id() {
                self.inner.lock().expect("lease poisoned").until = Some(until);
            }
        }
    }

    /// The deadline, if a lease is held.
    pub fn until(&self) -> Option<u64> {
        self.inner.lock().expect("lease poisoned").until
    }

    /// Whether the lease ran out (false when none is held).
    pub fn expired(&self, now_boot_ms: u64) -> bool {
        self.until().is_some_and(|u| now_boot_ms > u)
    }

    /// The coordinator answered a request sent at `sent_boot_ms`, giving a lease of `lease_ms`
    /// (0: no lease from now on). Returns the new deadline.
    fn renew(&self, data_dir: &Path, sent_boot_ms: u64, lease_ms: u64) -> Option<u64> {
        let mut l = self.inner.lock().expect("lease poisoned");
        l.lease_ms = lease_ms;
        if lease_ms == 0 {
            l.until = None;
            let _ = std::fs::remove_file(data_dir.join("lease"));
            return None;
        }
        let until = sent_boot_ms + lease_ms;
        // Never shortened by an answer to an older request that came late.
        let until = l.until.map_or(until, |u| u.max(until));
        l.until = Some(until);
        let line = format!("{} {until}\n", crate::sys::boot_id());
        let tmp = data_dir.join("lease.tmp");
        if let Err(e) = crate::sys::fsmode::write(&tmp, line.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, data_dir.join("lease")))
        {
            tracing::warn!(%e, "cannot record the lease; a restarted agent would not know it");
        }
        Some(until)
    }
}

impl Agent {
    /// The coordinator answered a request this agent sent at `sent_boot_ms` (boot clock) with a
    /// lease of `lease_ms`: renewed here, on disk and in the fd store.
    pub fn renew_lease(&self, sent_boot_ms: u64, lease_ms: u64) {
        let until = self.checkpoints.lease.renew(&self.config().data_dir, sent_boot_ms, lease_ms);
        self.tell_fd_store(until);
    }

    /// The fd store's copy of the lease: its deadline plus [`FD_STORE_SLACK`] and the protected
    /// workloads' inits (pid and start time), or none.
    fn tell_fd_store(&self, until: Option<u64>) {
        let Some(store) = self.fd_store() else { return };
        let pids: Vec<(i32, u64)> = self
            .workloads()
            .iter()
            .filter(|w| w.spec.checkpoint_interval.is_some() && w.exit_info().is_none())
            .map(|w| (w.init_pid, w.init_start_ticks))
            .collect();
        let deadline = match until {
            Some(u) if !pids.is_empty() => u + FD_STORE_SLACK.as_millis() as u64,
            _ => 0,
        };
        if let Err(e) = store.lease(deadline, &pids) {
            tracing::warn!(%e, "cannot give the fd store the lease");
        }
    }

    /// Kills every protected workload that runs here and marks it lost with `why`: the
    /// coordinator restores it from its latest checkpoint (on another node, or here).
    pub fn fence(&self, why: &str) -> usize {
        let protected =
            self.workloads().into_iter().filter(|w| w.spec.checkpoint_interval.is_some());
        protected.filter(|w| self.fence_one(w, why)).count()
    }

    /// Kills `w` if it runs (a held copy never does) and marks it lost, `fenced: why`; whether
    /// it did.
    fn fence_one(&self, w: &crate::workload::Workload, why: &str) -> bool {
        if w.exit_info().is_some() || w.pending_migration().is_some() {
            return false;
        }
        if let Err(e) = self.kill_workload(w) {
            tracing::error!(id = w.id(), pid = w.init_pid, %e, "cannot kill a workload to fence it");
            return false;
        }
        w.set_lost(format!("fenced: {why}"));
        tracing::warn!(id = w.id(), "workload killed (fenced): {why}");
        true
    }

    /// Kills workloads the coordinator says run elsewhere now (restored there after this node
    /// was silent past its grace): the heartbeat's `fence` list.
    pub fn fence_ids(&self, ids: &[String]) {
        let why =
            "the coordinator restored this workload on another node while this node was silent";
        for w in ids.iter().filter_map(|id| self.get(id).ok()) {
            if self.fence_one(&w, why) {
                tracing::error!(id = w.id(), "a copy restored elsewhere still ran here");
            }
        }
    }

    /// Checks the lease at once (a restarted agent whose lease ran out while it was down fences
    /// what it adopted) and then every [`WATCH`].
    pub(crate) fn spawn_lease_watch(self: &Arc<Self>) {
        self.check_lease();
        self.explain_adopted_deaths();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH).await;
                let Some(agent) = weak.upgrade() else { return };
                agent.check_lease();
            }
        });
    }

    /// At start, after a lease that ran out while no agent ran: the protected workloads found
    /// dead were killed by the fd store for it; they are marked lost as fenced, so the
    /// coordinator knows to restore them (the same as those this agent fences itself).
    fn explain_adopted_deaths(&self) {
        let now = crate::sys::boottime_ms();
        let Some(until) = self.checkpoints.lease.until().filter(|u| now > *u) else { return };
        for w in self.workloads() {
            if w.spec.checkpoint_interval.is_some()
                && w.exit_info().is_some()
                && w.lost().is_none()
                && w.pending_migration().is_none()
            {
                w.set_lost(format!(
                    "fenced: node {}'s lease ran out {} ms before its agent started again; the \
                     fd store killed the workload then",
                    self.config().node,
                    now - until
                ));
            }
        }
    }

    fn check_lease(&self) {
        let now = crate::sys::boottime_ms();
        let lease = &self.checkpoints.lease;
        if !lease.expired(now) {
            return;
        }
        let until = lease.until().unwrap_or(now);
        let why = format!(
            "node {} had no heartbeat answered by the coordinator for its lease (expired {} ms \
             ago); the coordinator restores it from its latest checkpoint",
            self.config().node,
            now - until
        );
        if self.fence(&why) > 0 {
            self.tell_fd_store(None);
        }
    }
}
