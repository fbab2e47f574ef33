//! The agent is a child subreaper: every process it spawns or restores, and every orphan of
//! those, ends up as its child. One reaper owns `waitpid` for the whole agent and hands each exit
//! status to whoever registered interest in that pid. Nothing else in the agent may wait for a
//! child (so no `std::process::Child::wait`, no `tokio::process`): use [`crate::sys::command`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Statuses of children nobody has asked for yet are kept this long, so a pid registered just
/// after it exited still gets its status.
const UNCLAIMED_TTL: Duration = Duration::from_secs(120);

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    unclaimed: HashMap<i32, (ExitStatus, Instant)>,
}

#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl Reaper {
    /// Makes this process a child subreaper and starts reaping on SIGCHLD (and every 500 ms, as a
    /// safety net for coalesced signals). Must be called inside a tokio runtime.
    pub fn start() -> std::io::Result<Reaper> {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let reaper = Reaper::default();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    /// A receiver that resolves with `pid`'s exit status. Register right after spawning.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock().expect("reaper state poisoned");
        if let Some((status, _)) = st.unclaimed.remove(&pid) {
            let _ = tx.send(status);
        } else {
            st.waiters.insert(pid, tx);
        }
        rx
    }

    /// Reaps every child that has exited and dispatches its status.
    pub fn reap_all(&self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    (pid.as_raw(), ExitStatus::Signaled(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            self.dispatch(status.0, status.1);
        }
    }

    fn dispatch(&self, pid: i32, status: ExitStatus) {
        let mut st = self.state.lock().expect("reaper state poisoned");
        match st.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(status);
            }
            None => {
                tracing::debug!(pid, ?status, "reaped a child nobody watches");
                let now = Instant::now();
                st.unclaimed.retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
                st.unclaimed.insert(pid, (status, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reaped_before_registration_is_kept() {
        let r = Reaper::default();
        r.dispatch(4242, ExitStatus::Exited(3));
        let mut rx = r.watch(4242);
        assert_eq!(rx.try_recv().unwrap(), ExitStatus::Exited(3));
    }

    #[test]
    fn status_goes_to_the_registered_waiter() {
        let r = Reaper::default();
        let mut rx = r.watch(77);
        assert!(rx.try_recv().is_err());
        r.dispatch(77, ExitStatus::Signaled(9));
        assert_eq!(rx.try_recv().unwrap(), ExitStatus::Signaled(9));
    }
}
