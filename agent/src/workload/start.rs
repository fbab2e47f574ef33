//! Starting a workload: validate, lay out its directory, spawn ferry-init with the agent owning
//! the output pipes, and adopt the tree.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Adopt, Engine, Status, Workload, WorkloadSpec};
use crate::agent::Agent;
use crate::engine::coop::Control;
use crate::error::{AgentError, Result};
use crate::logs::LogStore;
use crate::sys::fsmode;
use crate::sys::spawn::{self, SpawnRequest};
use crate::sys::user::Credentials;

/// Extra facts for a launch that is a cooperative restore on a migration target.
pub(crate) struct Restoring {
    /// Directory holding the state the program saved (FERRY_RESTORE).
    pub state_dir: PathBuf,
    pub migration_id: String,
    pub started_at_ms: i64,
}

impl Agent {
    pub async fn start(&self, mut spec: WorkloadSpec) -> Result<Status> {
        if spec.id.is_empty() {
            spec.id = new_id();
        }
        spec.engine = self.resolve_engine(spec.engine)?;
        self.check_protection(&spec)?;
        let w = self.launch(spec, None).await?;
        Ok(self.status_of(&w))
    }

    /// CRIU when usable (root and `criu check` passing), else cooperative.
    fn resolve_engine(&self, asked: Engine) -> Result<Engine> {
        let criu_usable = self.is_root() && self.criu().check_passed;
        match asked {
            Engine::Auto if criu_usable => Ok(Engine::Criu),
            Engine::Auto | Engine::Cooperative => Ok(Engine::Cooperative),
            Engine::Criu if criu_usable => Ok(Engine::Criu),
            Engine::Criu => Err(AgentError::InvalidSpec(format!(
                "engine criu is not usable on node {}: {}",
                self.config().node,
                if self.is_root() {
                    self.criu().check_error.clone()
                } else {
                    "the agent does not run as root".to_string()
                }
            ))),
        }
    }

    /// Spawns `spec` (already given an id and a resolved engine) and adopts it.
    pub(crate) async fn launch(
        &self,
        spec: WorkloadSpec,
        restoring: Option<Restoring>,
    ) -> Result<Arc<Workload>> {
        if let Ok(old) = self.get(&spec.id) {
            if old.exit_info().is_none() {
                return Err(AgentError::AlreadyExists { id: spec.id });
            }
        }
        spec.check_limits()?;
        let creds = self.credentials(&spec)?;
        let dir = self.workload_dir(&spec.id);
        let cwd = spec.cwd.clone().unwrap_or_else(|| dir.join("work"));
        // Its directory only the agent lists; a workload running as another user passes
        // through it to its working directory and control socket (docs/security.md).
        let dir_mode = dir_mode(creds.as_ref());
        if spec.cwd.is_none() {
            create_dir(&dir, dir_mode)?;
            create_dir(&cwd, fsmode::DIR)?;
            // The default working directory belongs to the workload's user (a given one is
            // the caller's to prepare), and to nobody else.
            if let Some(c) = &creds {
                chown(&cwd, c)?;
            }
        }
        let cleanup = |dir: &Path| {
            if restoring.is_none() {
                let _ = std::fs::remove_dir_all(dir);
            }
        };
        let mut env = match spec.validate(&cwd) {
            Ok(env) => env,
            Err(err) => {
                cleanup(&dir);
                return Err(err);
            }
        };
        create_dir(&dir, dir_mode)?;
        let coop = if spec.engine == Engine::Cooperative {
            let sock = dir.join("control.sock");
            let c = Control::listen(&sock)
                .map_err(|source| AgentError::Io { path: sock.clone(), source })?;
            // Connecting needs write permission on the socket.
            if let Some(creds) = &creds {
                chown(&sock, creds)?;
            }
            env.push(("FERRY_CONTROL".into(), sock.to_string_lossy().into_owned()));
            Some(c)
        } else {
            None
        };
        if let Some(r) = &restoring {
            if let Some(c) = &creds {
                chown(&r.state_dir, c)?;
            }
            env.push(("FERRY_RESTORE".into(), r.state_dir.to_string_lossy().into_owned()));
        }
        let log = LogStore::open(&dir.join("output.log"))
            .map_err(|source| AgentError::Io { path: dir.join("output.log"), source })?;
        let io = |source| AgentError::Io { path: dir.clone(), source };
        let (out_r, out_w) = spawn::pipe().map_err(io)?;
        let (err_r, err_w) = spawn::pipe().map_err(io)?;
        let stdio_keys = [pipe_key(&out_r).map_err(io)?, pipe_key(&err_r).map_err(io)?];

        // Its own address: the namespace and pair laid out, and answered for on this node before
        // the program runs (a restored copy's is answered for only at its commit).
        let placed = match self
            .place_network(&spec, restoring.as_ref().map(|r| r.migration_id.as_str()))
            .await
        {
            Ok(p) => p,
            Err(err) => {
                cleanup(&dir);
                return Err(err);
            }
        };
        if let Some(p) = placed.as_ref().filter(|_| restoring.is_none()) {
            if let Err(e) = self.attach_network(&p.net).await {
                self.cut_network(&p.net).await;
                cleanup(&dir);
                return Err(AgentError::Internal(format!(
                    "cannot route address {} to the workload on node {}: {e}",
                    p.net.address,
                    self.config().node
                )));
            }
        }
        let netns = placed.as_ref().map(|p| p.netns.as_raw_fd());
        let init = self.config().init_path.clone();
        let new_pid_ns = self.is_root();
        let reaper = self.reaper().clone();
        let argv = spec.argv.clone();
        let cwd2 = cwd.clone();
        let creds2 = creds.clone();
        let spawned = tokio::task::spawn_blocking(move || {
            spawn::spawn(
                SpawnRequest {
                    init: &init,
                    argv: &argv,
                    env: &env,
                    cwd: &cwd2,
                    new_pid_ns,
                    creds: creds2.as_ref(),
                    netns,
                    stdout: out_w,
                    stderr: err_w,
                },
                &reaper,
            )
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?;
        let (spawned, exit) = match spawned {
            Ok(s) => s,
            Err(err) => {
                if let Some(p) = &placed {
                    self.cut_network(&p.net).await;
                }
                cleanup(&dir);
                return Err(err.into());
            }
        };
        let net = placed.map(|p| p.net);
        tracing::info!(
            id = spec.id,
            pid = spawned.pid,
            argv = ?spec.argv,
            engine = ?spec.engine,
            pid_namespace = new_pid_ns,
            restoring = restoring.is_some(),
            "workload started"
        );
        Ok(self.adopt(Adopt {
            spec,
            dir,
            cwd,
            init_pid: spawned.pid,
            main_ns_pid: spawned.main_ns_pid,
            own_pid_namespace: new_pid_ns,
            started_at_ms: restoring
                .as_ref()
                .map(|r| r.started_at_ms)
                .unwrap_or_else(crate::sys::now_ms),
            log,
            stdout: Some(out_r),
            stderr: Some(err_r),
            stdio_keys,
            coop,
            exit: crate::workload::ExitWatch::Reaper(exit),
            paused: false,
            pending_migration: restoring.map(|r| r.migration_id),
            self_stopped: Vec::new(),
            net,
        }))
    }

    pub(crate) fn workload_dir(&self, id: &str) -> PathBuf {
        self.config().data_dir.join("workloads").join(id)
    }

    /// The credentials `spec` runs with on this node (None: the agent's own).
    pub(crate) fn credentials(&self, spec: &WorkloadSpec) -> Result<Option<Credentials>> {
        let creds = crate::sys::user::resolve(
            spec.user.as_deref(),
            spec.group.as_deref(),
            &self.config().node,
        )?;
        if creds.is_some() && !self.is_root() {
            return Err(AgentError::InvalidSpec(format!(
                "running as user {:?}, group {:?} needs an agent running as root; node {}'s is not",
                spec.user.as_deref().unwrap_or(""),
                spec.group.as_deref().unwrap_or(""),
                self.config().node
            )));
        }
        Ok(creds)
    }
}

/// Gives `path` (and everything below it) to the workload's user and group.
pub(crate) fn chown(path: &Path, c: &Credentials) -> Result<()> {
    crate::sys::user::chown_tree(path, c.uid, c.gid)
        .map_err(|source| AgentError::Io { path: path.to_path_buf(), source })
}

/// CRIU's name for a pipe, used to hand a new pipe to a restored process (`inherit_fd`).
pub(crate) fn pipe_key(fd: &impl AsRawFd) -> std::io::Result<String> {
    Ok(format!("pipe:[{}]", crate::sys::swrk::inode(fd.as_raw_fd())?))
}

/// Makes `path` a directory of exactly `mode` (creating it and missing parents, or tightening).
pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<()> {
    fsmode::dir(path, mode).map_err(|source| AgentError::Io { path: path.into(), source })
}

/// The mode of a workload's directory: traversable when it runs as another user (its working
/// directory and control socket are below it), else the agent's alone.
pub(crate) fn dir_mode(creds: Option<&Credentials>) -> u32 {
    if creds.is_some() {
        fsmode::TRAVERSE
    } else {
        fsmode::DIR
    }
}

/// A fresh id: `prefix-` and 12 hex digits from the kernel's random source.
pub(crate) fn new_id_with(prefix: &str) -> String {
    ferry_proto::ids::new_id(prefix)
}

fn new_id() -> String {
    new_id_with("w")
}
