//! A workload's state as read from /proc: the tree under its ferry-init, CPU, memory, threads.

use std::collections::HashMap;
use std::time::Instant;

use super::{ExitInfo, Workload, WorkloadSpec};
use crate::agent::Agent;
use crate::error::Result;
use crate::sys::proc::{self, ProcInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Sleeping,
    Stopped,
    Exited,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Sleeping => "sleeping",
            State::Stopped => "stopped (paused)",
            State::Exited => "exited",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub info: ProcInfo,
    pub ns_pid: i32,
    pub init: bool,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub spec: WorkloadSpec,
    pub state: State,
    pub pid: i32,
    pub main_pid: i32,
    pub own_pid_namespace: bool,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub threads: u32,
    pub task_count: u32,
    pub tasks: Vec<Task>,
    pub exit: Option<ExitInfo>,
    pub started_at_ms: i64,
    pub node: String,
    /// Why the agent killed it, when it could not run correctly.
    pub lost: Option<String>,
    /// On a migration target: the migration whose commit this stopped copy waits for.
    pub held_for: Option<String>,
}

/// A task state that runs no user code while its tree is paused: stopped (T, t), dead (Z, X), or
/// in uninterruptible sleep (D) with its SIGSTOP pending (see [`aggregate_state`]).
pub(crate) fn holds_still(state: char) -> bool {
    matches!(state, 'T' | 't' | 'D' | 'Z' | 'X')
}

/// The tree's state: stopped when every task is stopped, running when a workload task runs.
///
/// A task in uninterruptible sleep (D) among stopped ones counts as stopped: it stops as soon as
/// it leaves the kernel, with its SIGSTOP pending, and it may never leave before the others run
/// again — a vfork parent (dash, posix_spawn) waits in D until its child execs, and a child
/// stopped before its exec keeps it there. Zombies cannot run either.
pub fn aggregate_state(tasks: &[Task]) -> State {
    if tasks.is_empty() {
        return State::Exited;
    }
    if tasks.iter().any(|t| matches!(t.info.state, 'T' | 't'))
        && tasks.iter().all(|t| holds_still(t.info.state))
    {
        return State::Stopped;
    }
    if tasks.iter().any(|t| !t.init && t.info.state == 'R') {
        return State::Running;
    }
    State::Sleeping
}

impl Agent {
    pub fn status(&self, id: &str) -> Result<Status> {
        let w = self.get(id)?;
        Ok(self.status_of(&w))
    }

    pub fn list(&self) -> Vec<Status> {
        let all = proc::scan();
        let mut out: Vec<Status> =
            self.workloads().iter().map(|w| self.status_from(w, &all)).collect();
        out.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then(a.spec.id.cmp(&b.spec.id)));
        out
    }

    pub(crate) fn status_of(&self, w: &Workload) -> Status {
        self.status_from(w, &proc::scan())
    }

    fn status_from(&self, w: &Workload, all: &HashMap<i32, ProcInfo>) -> Status {
        let exit = w.exit_info();
        let tasks: Vec<Task> = if exit.is_some() { Vec::new() } else { tree_tasks(w, all) };
        let work: Vec<&Task> = tasks.iter().filter(|t| !t.init).collect();
        let main_pid = work
            .iter()
            .find(|t| t.info.ppid == w.init_pid && t.ns_pid == w.main_ns_pid)
            .map(|t| t.info.pid)
            .unwrap_or(0);
        let total_ticks: u64 = work.iter().map(|t| t.info.cpu_ticks).sum();
        let cpu_percent = self.cpu_percent(w, total_ticks);
        Status {
            spec: w.spec.clone(),
            state: if exit.is_some() { State::Exited } else { aggregate_state(&tasks) },
            pid: if exit.is_some() { 0 } else { w.init_pid },
            main_pid,
            own_pid_namespace: w.own_pid_namespace,
            cpu_percent,
            rss_bytes: work.iter().map(|t| t.info.rss_bytes).sum(),
            threads: work.iter().map(|t| t.info.threads).sum(),
            task_count: work.len() as u32,
            tasks,
            exit,
            started_at_ms: w.started_at_ms,
            node: self.config().node.clone(),
            lost: w.lost(),
            held_for: w.pending_migration(),
        }
    }

    /// CPU use of the tree since the previous sample (since the start for the first one).
    fn cpu_percent(&self, w: &Workload, ticks: u64) -> f64 {
        let now = Instant::now();
        let hz = proc::ticks_per_second().max(1) as f64;
        let mut st = w.state.lock().expect("workload state poisoned");
        let (since, before) = st.cpu_sample.unwrap_or_else(|| {
            let age = (crate::sys::now_ms() - w.started_at_ms).max(1) as u64;
            (now - std::time::Duration::from_millis(age), 0)
        });
        st.cpu_sample = Some((now, ticks));
        let secs = now.duration_since(since).as_secs_f64();
        if secs <= 0.0 || ticks < before {
            return 0.0;
        }
        ((ticks - before) as f64 / hz / secs * 100.0 * 10.0).round() / 10.0
    }
}

/// The workload's processes: its ferry-init and every descendant.
pub(crate) fn tree_tasks(w: &Workload, all: &HashMap<i32, ProcInfo>) -> Vec<Task> {
    proc::tree(w.init_pid, all)
        .into_iter()
        .map(|info| {
            let init = info.pid == w.init_pid;
            let ns_pid =
                if w.own_pid_namespace { proc::ns_pid(info.pid).unwrap_or(0) } else { info.pid };
            Task { info, ns_pid, init }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(state: char, init: bool) -> Task {
        Task {
            info: ProcInfo {
                pid: 1,
                ppid: 0,
                comm: "x".into(),
                state,
                threads: 1,
                rss_bytes: 0,
                cpu_ticks: 0,
            },
            ns_pid: 1,
            init,
        }
    }

    #[test]
    fn aggregate() {
        assert_eq!(aggregate_state(&[]), State::Exited);
        assert_eq!(aggregate_state(&[t('T', true), t('T', false)]), State::Stopped);
        // A vfork parent waits in D for its stopped child: the tree is stopped.
        assert_eq!(aggregate_state(&[t('T', true), t('D', false), t('T', false)]), State::Stopped);
        assert_eq!(aggregate_state(&[t('T', true), t('Z', false)]), State::Stopped);
        assert_ne!(aggregate_state(&[t('D', true), t('D', false)]), State::Stopped);
        assert_eq!(aggregate_state(&[t('S', true), t('T', false)]), State::Sleeping);
        assert_eq!(aggregate_state(&[t('S', true), t('R', false)]), State::Running);
        assert_eq!(aggregate_state(&[t('R', true), t('S', false)]), State::Sleeping);
    }
}
