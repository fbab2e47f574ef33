//! Taking a running (spawned or restored) tree under supervision: its table entry, output capture
//! and exit watch. Shared by start and by restore on a migration target.

use std::os::fd::OwnedFd;
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
    /// Read ends of its stdout and stderr pipes.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub stdio_keys: [String; 2],
    pub coop: Option<Arc<crate::engine::coop::Control>>,
    pub exit: oneshot::Receiver<ExitStatus>,
    pub paused: bool,
    pub pending_migration: Option<String>,
}

impl Agent {
    pub(crate) fn adopt(&self, a: Adopt) -> Arc<Workload> {
        logs::capture(a.stdout, Stream::Stdout, a.log.clone());
        logs::capture(a.stderr, Stream::Stderr, a.log.clone());
        let (exit_tx, exit) = watch::channel(None);
        let w = Arc::new(Workload {
            spec: a.spec,
            dir: a.dir,
            cwd: a.cwd,
            init_pid: a.init_pid,
            main_ns_pid: a.main_ns_pid,
            own_pid_namespace: a.own_pid_namespace,
            started_at_ms: a.started_at_ms,
            log: a.log,
            stdio_keys: a.stdio_keys,
            coop: a.coop,
            migrating: Default::default(),
            state: Mutex::new(Mutable {
                paused: a.paused,
                pending_migration: a.pending_migration,
                ..Default::default()
            }),
            exit,
        });
        let id = w.id().to_string();
        let coop = w.coop.clone();
        let exit_rx = a.exit;
        tokio::spawn(async move {
            if let Ok(status) = exit_rx.await {
                let info = ExitInfo::from_init(status, crate::sys::now_ms());
                tracing::info!(id, %info, "workload ended");
                let _ = exit_tx.send(Some(info));
            }
            if let Some(c) = coop {
                c.close();
            }
        });
        self.insert(w.clone());
        w
    }
}
