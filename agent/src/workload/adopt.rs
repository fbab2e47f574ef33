//! Taking a running (spawned or restored) tree under supervision: its table entry, output capture
//! and exit watch. Shared by start and by restore on a migration target.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};

use super::{ExitInfo, Mutable, Workload, WorkloadSpec};
use crate::agent::Agent;
use crate::logs::{self, LogStore, Stream};
use crate::sys::reaper::ExitStatus;

pub struct Adopt {
    pub spec: WorkloadSpec,
    pub dir: PathBuf,
    pub cwd: PathBuf,
    pub init_pid: i32,
    pub main_ns_pid: i32,
    pub own_pid_namespace: bool,
    pub started_at_ms: i64,
    pub log: LogStore,
    /// Read ends of its stdout and stderr pipes (none for a recovered workload that has ended).
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub stdio_keys: [String; 2],
    pub coop: Option<Arc<crate::engine::coop::Control>>,
    pub exit: ExitWatch,
    pub paused: bool,
    pub pending_migration: Option<String>,
    /// Tasks (PID namespace pids) the workload stopped itself: resumes leave them stopped.
    pub self_stopped: Vec<i32>,
    /// Where its own address is attached on this node (sys::net), if it has one.
    pub net: Option<crate::sys::net::Attachment>,
}

/// How the agent learns that a workload ended.
pub enum ExitWatch {
    /// Its init is this agent's child: the reaper reports the status.
    Reaper(oneshot::Receiver<ExitStatus>),
    /// Recovered from an earlier agent: not our child, so its end is seen (every half second)
    /// but its status is not.
    Poll { start_ticks: u64 },
    /// Already ended.
    Ended(ExitInfo),
}

impl Agent {
    pub(crate) fn adopt(&self, a: Adopt) -> Arc<Workload> {
        for (fd, stream, tag) in
            [(a.stdout, Stream::Stdout, "out"), (a.stderr, Stream::Stderr, "err")]
        {
            let Some(fd) = fd else { continue };
            if let Some(store) = self.fd_store() {
                if let Err(e) = store.put(&format!("{}:{tag}", a.spec.id), fd.as_fd()) {
                    tracing::warn!(id = a.spec.id, %e, "cannot hand the output pipe to the fd store");
                }
            }
            // The log stays open for appends while a capture runs, and closes after the last.
            match a.log.writer() {
                Ok(writer) => {
                    logs::capture(fd, stream, writer);
                }
                Err(e) => {
                    tracing::warn!(id = a.spec.id, path = ?a.log.path(), %e, "cannot open the workload's log; its output is lost");
                }
            }
        }
        let init_start_ticks = crate::sys::proc::start_ticks(a.init_pid).unwrap_or(0);
        let (exit_tx, exit) = watch::channel(None);
        let w = Arc::new(Workload {
            spec: a.spec,
            dir: a.dir,
            cwd: a.cwd,
            init_pid: a.init_pid,
            init_start_ticks,
            main_ns_pid: a.main_ns_pid,
            own_pid_namespace: a.own_pid_namespace,
            started_at_ms: a.started_at_ms,
            log: a.log,
            stdio_keys: a.stdio_keys,
            coop: a.coop,
            net: a.net,
            state: Mutex::new(Mutable {
                paused: a.paused,
                pending_migration: a.pending_migration,
                self_stopped: a.self_stopped,
                ..Default::default()
            }),
            exit,
        });
        let id = w.id().to_string();
        let coop = w.coop.clone();
        let (exit_watch, pid) = (a.exit, a.init_pid);
        let record = w.clone();
        let reaper = self.reaper().clone();
        tokio::spawn(async move {
            let info = match exit_watch {
                ExitWatch::Reaper(rx) => {
                    rx.await.ok().map(|s| ExitInfo::from_init(s, crate::sys::now_ms()))
                }
                ExitWatch::Ended(info) => Some(info),
                ExitWatch::Poll { start_ticks } => {
                    while crate::sys::proc::start_ticks(pid) == Some(start_ticks) {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Some(ExitInfo { code: None, signal: None, at_ms: crate::sys::now_ms() })
                }
            };
            if let Some(info) = info {
                tracing::info!(id, %info, "workload ended");
                let _ = exit_tx.send(Some(info));
                record.persist();
                // Its address is no longer answered here (its namespace went with it).
                if let Some(net) = record.net.clone() {
                    let _ =
                        tokio::task::spawn_blocking(move || crate::sys::net::cut(&reaper, &net))
                            .await;
                }
            }
            if let Some(c) = coop {
                c.close();
            }
        });
        self.insert(w.clone());
        w.persist();
        w
    }
}
