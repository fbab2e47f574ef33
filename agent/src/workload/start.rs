//! Starting a workload: validate, lay out its directory, spawn ferry-init with the agent owning
//! the output pipes, and watch for its exit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{ExitInfo, Mutable, Status, Workload, WorkloadSpec};
use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::logs::{self, LogStore, Stream};
use crate::sys::spawn::{self, SpawnRequest};

impl Agent {
    pub async fn start(&self, mut spec: WorkloadSpec) -> Result<Status> {
        if spec.id.is_empty() {
            spec.id = new_id();
        }
        if self.get(&spec.id).is_ok() {
            return Err(AgentError::AlreadyExists { id: spec.id });
        }
        let dir = self.workload_dir(&spec.id);
        let cwd = spec.cwd.clone().unwrap_or_else(|| dir.join("work"));
        if spec.cwd.is_none() {
            create_dir(&cwd)?;
        }
        let env = match spec.validate(&cwd) {
            Ok(env) => env,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        create_dir(&dir)?;
        let log = LogStore::open(&dir.join("output.log"))
            .map_err(|source| AgentError::Io { path: dir.join("output.log"), source })?;
        let io = |source| AgentError::Io { path: dir.clone(), source };
        let (out_r, out_w) = spawn::pipe().map_err(io)?;
        let (err_r, err_w) = spawn::pipe().map_err(io)?;

        let init = self.config().init_path.clone();
        let new_pid_ns = self.is_root();
        let reaper = self.reaper().clone();
        let argv = spec.argv.clone();
        let cwd2 = cwd.clone();
        let spawned = tokio::task::spawn_blocking(move || {
            spawn::spawn(
                SpawnRequest {
                    init: &init,
                    argv: &argv,
                    env: &env,
                    cwd: &cwd2,
                    new_pid_ns,
                    stdout: out_w,
                    stderr: err_w,
                },
                &reaper,
            )
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?;
        let (spawned, exit_rx) = match spawned {
            Ok(s) => s,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err.into());
            }
        };

        logs::capture(out_r, Stream::Stdout, log.clone());
        logs::capture(err_r, Stream::Stderr, log.clone());

        let (exit_tx, exit) = watch::channel(None);
        let workload = Arc::new(Workload {
            spec,
            dir,
            cwd,
            init_pid: spawned.pid,
            main_ns_pid: spawned.main_ns_pid,
            own_pid_namespace: new_pid_ns,
            started_at_ms: crate::sys::now_ms(),
            log,
            state: Mutex::new(Mutable::default()),
            exit,
        });
        tracing::info!(
            id = workload.id(),
            pid = spawned.pid,
            argv = ?workload.spec.argv,
            pid_namespace = new_pid_ns,
            "workload started"
        );
        let id = workload.id().to_string();
        tokio::spawn(async move {
            if let Ok(status) = exit_rx.await {
                let info = ExitInfo::from_init(status, crate::sys::now_ms());
                tracing::info!(id, %info, "workload ended");
                let _ = exit_tx.send(Some(info));
            }
        });
        self.insert(workload.clone());
        Ok(self.status_of(&workload))
    }

    fn workload_dir(&self, id: &str) -> PathBuf {
        self.config().data_dir.join("workloads").join(id)
    }
}

fn create_dir(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| AgentError::Io { path: path.into(), source })
}

/// A fresh workload id: `w-` and 12 hex digits from the kernel's random source.
fn new_id() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("w-{hex}")
}
