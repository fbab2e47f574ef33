//! The CRIU engine: dump the frozen tree over RPC with `leave_stopped` (the source stays frozen
//! for a rollback), restore as a child of the agent (`rst_sibling`) into the workload's own PID
//! namespace with the agent's new stdout/stderr pipes (`inherit_fd`), left stopped until commit.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use ferry_proto::criu as rpc;

use super::{CheckpointDirs, CheckpointEngine, EngineError, RestoreRequest};
use crate::agent::Agent;
use crate::criu::{failure, rpc as criu_rpc};
use crate::logs::LogStore;
use crate::sys::{spawn, swrk};
use crate::workload::start::pipe_key;
use crate::workload::{Adopt, Workload};

/// CRIU's log verbosity: 4 keeps every step, which is what a failed migration needs.
const LOG_LEVEL: i32 = 4;

pub struct CriuEngine;

fn base_opts(images: &impl AsRawFd, work: &impl AsRawFd, log: &str) -> rpc::CriuOpts {
    rpc::CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: Some(work.as_raw_fd()),
        log_file: Some(log.to_string()),
        log_level: Some(LOG_LEVEL),
        // Cgroups differ between nodes; the workload lives in the agent's.
        manage_cgroups_mode: Some(rpc::CriuCgMode::Ignore as i32),
        // The network namespace is the node's, not the workload's: nothing to lock.
        network_lock: Some(rpc::CriuNetworkLockMethod::Skip as i32),
        ..Default::default()
    }
}

fn criu_path(agent: &Agent) -> Result<std::path::PathBuf, EngineError> {
    agent.criu().path.clone().filter(|_| agent.criu().check_passed).ok_or_else(|| {
        EngineError::Other(format!(
            "CRIU is not usable on node {}: {}",
            agent.config().node,
            agent.criu().check_error
        ))
    })
}

fn open(path: &std::path::Path) -> Result<std::os::fd::OwnedFd, EngineError> {
    std::fs::create_dir_all(path)
        .and_then(|_| swrk::open_dir(path))
        .map_err(|e| EngineError::Other(format!("cannot open {path:?}: {e}")))
}

fn rpc_failure(what: &str, log: std::path::PathBuf, detail: String) -> EngineError {
    EngineError::Criu { message: failure::describe(what, &log, &detail), log }
}

impl CheckpointEngine for CriuEngine {
    fn name(&self) -> &'static str {
        "criu"
    }

    fn freezes_first(&self) -> bool {
        true
    }

    fn checkpoint(
        &self,
        agent: &Agent,
        w: &Workload,
        dirs: &CheckpointDirs<'_>,
    ) -> Result<(), EngineError> {
        let criu = criu_path(agent)?;
        let images = open(dirs.images)?;
        let work = open(dirs.work)?;
        let mut opts = base_opts(&images, &work, "dump.log");
        opts.pid = Some(w.init_pid);
        opts.leave_stopped = Some(true);
        let req = rpc::CriuReq {
            r#type: rpc::CriuReqType::Dump as i32,
            opts: Some(opts),
            ..Default::default()
        };
        let keep = [images.as_raw_fd(), work.as_raw_fd()];
        let log = dirs.work.join("dump.log");
        let resp = criu_rpc::call(&criu, agent.reaper(), &keep, req, |_| {})
            .map_err(|e| rpc_failure("dump", log.clone(), e.to_string()))?;
        if !resp.success {
            let detail = resp
                .cr_errmsg
                .clone()
                .unwrap_or_else(|| format!("errno {}", resp.cr_errno.unwrap_or(0)));
            return Err(rpc_failure("dump", log, detail));
        }
        Ok(())
    }

    async fn restore(
        &self,
        agent: &Arc<Agent>,
        req: RestoreRequest<'_>,
    ) -> Result<Arc<Workload>, EngineError> {
        let criu = criu_path(agent)?;
        let spec = req.workload;
        let dir = agent.workload_dir(&spec.id);
        let cwd = spec.cwd.clone().unwrap_or_else(|| dir.join("work"));
        let log = LogStore::open(&dir.join("output.log")).map_err(|e| {
            EngineError::Other(format!("cannot open the workload log in {dir:?}: {e}"))
        })?;
        let pipes = || spawn::pipe().map_err(|e| EngineError::Other(format!("pipe: {e}")));
        let (out_r, out_w) = pipes()?;
        let (err_r, err_w) = pipes()?;
        let stdio_keys = [
            pipe_key(&out_r).map_err(|e| EngineError::Other(e.to_string()))?,
            pipe_key(&err_r).map_err(|e| EngineError::Other(e.to_string()))?,
        ];
        let images = open(req.images)?;
        let work = open(req.work)?;
        let mut opts = base_opts(&images, &work, "restore.log");
        opts.rst_sibling = Some(true);
        opts.leave_stopped = Some(true);
        opts.inherit_fd = vec![
            rpc::InheritFd { key: req.info.stdout_key.clone(), fd: out_w.as_raw_fd() },
            rpc::InheritFd { key: req.info.stderr_key.clone(), fd: err_w.as_raw_fd() },
        ];
        let creq = rpc::CriuReq {
            r#type: rpc::CriuReqType::Restore as i32,
            opts: Some(opts),
            ..Default::default()
        };
        let keep = [images.as_raw_fd(), work.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        let log_path = req.work.join("restore.log");
        let reaper = agent.reaper().clone();
        let resp = {
            let (criu, log_path) = (criu.clone(), log_path.clone());
            tokio::task::spawn_blocking(move || {
                let r = criu_rpc::call(&criu, &reaper, &keep, creq, |_| {});
                // Our copies of the write ends go now: the restored tree holds its own.
                drop((out_w, err_w, images, work));
                r.map_err(|e| rpc_failure("restore", log_path, e.to_string()))
            })
            .await
            .map_err(|e| EngineError::Other(e.to_string()))??
        };
        if !resp.success {
            let detail = resp
                .cr_errmsg
                .clone()
                .unwrap_or_else(|| format!("errno {}", resp.cr_errno.unwrap_or(0)));
            return Err(rpc_failure("restore", log_path, detail));
        }
        let pid = resp.restore.map(|r| r.pid).unwrap_or(0);
        if pid <= 0 {
            return Err(rpc_failure("restore", log_path, "CRIU reported no pid".into()));
        }
        let exit = agent.reaper().watch(pid);
        tracing::info!(
            id = spec.id,
            pid,
            migration = req.migration_id,
            "workload restored by CRIU (stopped)"
        );
        Ok(agent.adopt(Adopt {
            spec,
            dir,
            cwd,
            init_pid: pid,
            main_ns_pid: req.info.main_ns_pid,
            own_pid_namespace: req.info.own_pid_namespace,
            started_at_ms: req.info.started_at_ms,
            log,
            stdout: out_r,
            stderr: err_r,
            stdio_keys,
            coop: None,
            exit,
            paused: req.info.paused,
            pending_migration: Some(req.migration_id.to_string()),
        }))
    }
}
