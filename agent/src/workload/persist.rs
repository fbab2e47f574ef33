//! A workload's record on disk, `<workload dir>/state.json`, rewritten whenever its state
//! changes (adopted, paused, resumed, exited). A restarted agent reads these records back and
//! re-adopts every workload still running (same pid *and* same start time, so a reused pid is
//! never mistaken for it), taking its output pipes back from the fd store (`sys::fdstore`).
//! Workloads that ended while the agent was down are listed as exited with an unknown status:
//! only their parent, the old agent, could have read it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Adopt, Engine, ExitInfo, ExitWatch, Workload, WorkloadSpec};
use crate::agent::Agent;
use crate::logs::LogStore;

pub const STATE_FILE: &str = "state.json";

#[derive(Serialize, Deserialize)]
struct Record {
    id: String,
    name: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    spec_cwd: Option<PathBuf>,
    engine: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    /// Protection interval in seconds (WorkloadSpec::checkpoint_interval).
    #[serde(default)]
    checkpoint_interval_secs: Option<u64>,
    cwd: PathBuf,
    init_pid: i32,
    init_start_ticks: u64,
    main_ns_pid: i32,
    own_pid_namespace: bool,
    started_at_ms: i64,
    stdio_keys: [String; 2],
    paused: bool,
    pending_migration: Option<String>,
    /// (code, signal, at_ms) once it has exited.
    exit: Option<(Option<i32>, Option<i32>, i64)>,
    #[serde(default)]
    post_copy: bool,
    #[serde(default)]
    lazy_fill: Option<super::LazyFill>,
    #[serde(default)]
    lost: Option<String>,
    #[serde(default)]
    moved_out: Option<String>,
    #[serde(default)]
    self_stopped: Vec<i32>,
    #[serde(default)]
    address: Option<String>,
    /// Where its own address is attached on this node.
    #[serde(default)]
    net: Option<crate::sys::net::Attachment>,
}

fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Auto => "auto",
        Engine::Criu => "criu",
        Engine::Cooperative => "cooperative",
    }
}

impl Workload {
    /// Rewrites the record (atomically: a temporary file renamed over it). A workload whose
    /// directory is gone (migrated away, removed) is not recreated.
    pub(crate) fn persist(&self) {
        if !self.dir.is_dir() {
            return;
        }
        let state = self.state.lock().expect("workload state poisoned");
        let r = Record {
            id: self.spec.id.clone(),
            name: self.spec.name.clone(),
            argv: self.spec.argv.clone(),
            env: self.spec.env.clone(),
            spec_cwd: self.spec.cwd.clone(),
            engine: engine_name(self.spec.engine).into(),
            labels: self.spec.labels.clone(),
            user: self.spec.user.clone(),
            group: self.spec.group.clone(),
            cwd: self.cwd.clone(),
            init_pid: self.init_pid,
            init_start_ticks: self.init_start_ticks,
            main_ns_pid: self.main_ns_pid,
            own_pid_namespace: self.own_pid_namespace,
            started_at_ms: self.started_at_ms,
            stdio_keys: self.stdio_keys.clone(),
            paused: state.paused,
            pending_migration: state.pending_migration.clone(),
            exit: self.exit_info().map(|e| (e.code, e.signal, e.at_ms)),
            post_copy: state.post_copy,
            lazy_fill: state.lazy_fill.clone(),
            lost: state.lost.clone(),
            moved_out: state.moved_out.clone(),
            self_stopped: state.self_stopped.clone(),
            address: self.spec.address.clone(),
            checkpoint_interval_secs: self.spec.checkpoint_interval.map(|d| d.as_secs()),
            net: self.net.clone(),
        };
        drop(state);
        let (path, tmp) = (self.dir.join(STATE_FILE), self.dir.join("state.json.tmp"));
        let written = serde_json::to_vec_pretty(&r)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::sys::fsmode::write(&tmp, &b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(id = self.spec.id, path = %path.display(), %e, "cannot write the workload record");
        }
    }
}

impl Agent {
    /// The pair and answers of a copy killed at re-adoption (its pair was down: a moved-out
    /// original's since its hold, a held copy's since its restore), taken away off the runtime.
    fn cut_stale_network(&self, net: Option<crate::sys::net::Attachment>) {
        if let Some(net) = net {
            let reaper = self.reaper().clone();
            std::thread::spawn(move || crate::sys::net::cut(&reaper, &net));
        }
    }
}

fn load(path: &Path) -> Option<Record> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), %e, "unreadable workload record; skipped");
            None
        }
    }
}

impl Agent {
    /// Re-adopts the workloads an earlier agent on this data dir left behind; `pipes` are the
    /// output pipes its fd store kept, by `ID:out` / `ID:err`.
    pub(crate) fn recover(&self, mut pipes: HashMap<String, OwnedFd>) {
        let root = self.config().data_dir.join("workloads");
        if let Ok(dirs) = std::fs::read_dir(&root) {
            self.recover_from(dirs, &mut pipes);
        }
        // The store keeps the userfaultfds of workloads whose memory was being filled; those of
        // any other (ended, discarded) go, or they would hold its memory.
        let filling: Vec<String> = self
            .workloads()
            .iter()
            .filter(|w| w.lazy_fill().is_some())
            .map(|w| w.id().to_string())
            .collect();
        if let Some(store) = self.fd_store() {
            for name in pipes.keys().filter(|n| crate::sys::fdstore::is_uffd(n)) {
                let id = name.split(":uffd:").next().unwrap_or_default();
                if !filling.iter().any(|f| f == id) {
                    let _ = store.drop_prefix(&format!("{id}:uffd:"));
                }
            }
        }
    }

    fn recover_from(&self, dirs: std::fs::ReadDir, pipes: &mut HashMap<String, OwnedFd>) {
        for d in dirs.flatten() {
            let dir = d.path();
            let Some(mut r) = load(&dir.join(STATE_FILE)) else { continue };
            if self.get(&r.id).is_ok() || dir.file_name().and_then(|n| n.to_str()) != Some(&r.id) {
                continue;
            }
            let alive = r.exit.is_none()
                && crate::sys::proc::start_ticks(r.init_pid) == Some(r.init_start_ticks);
            if alive && r.moved_out.is_some() {
                // A post-copy source: the target resumed this workload, so the original (frozen
                // while it served its memory) must never run here again.
                tracing::info!(
                    id = r.id,
                    pid = r.init_pid,
                    migration = r.moved_out,
                    "killing the original of a workload that moved out by post-copy"
                );
                let _ = crate::sys::signal::send(r.init_pid, crate::sys::signal::Sig::SIGKILL);
                let _ = std::fs::remove_dir_all(&dir);
                self.cut_stale_network(r.net.take());
                continue;
            }
            // A copy whose commit was recorded (migrate::ledger) runs, even if the agent died
            // before it could clear `pending_migration`: it is the workload now.
            let committed = r.pending_migration.as_ref().is_some_and(|mid| {
                crate::migrate::ledger::read_in(&self.config().data_dir, mid)
                    .is_some_and(|i| i.step == crate::migrate::ledger::InStep::Committed)
            });
            if committed {
                r.pending_migration = None;
            }
            if let Some(mid) = r.pending_migration.as_ref().filter(|_| r.post_copy || !alive) {
                // A copy restored for a migration that was never committed, whose memory an
                // earlier agent's lazy-pages daemon was filling (or that is gone): it never ran,
                // and without that daemon it never can. It is discarded, not kept as a workload
                // of this node: the workload itself is the source's until its migration says
                // otherwise, and the source learns from "no copy here" (migrate::recovery).
                tracing::warn!(
                    id = r.id,
                    pid = r.init_pid,
                    migration = mid,
                    "discarding the copy of a migration that was not committed when the earlier agent stopped"
                );
                if alive {
                    let _ = crate::sys::signal::send(r.init_pid, crate::sys::signal::Sig::SIGKILL);
                }
                self.cut_stale_network(r.net.take());
                let record = crate::migrate::ledger::Incoming {
                    migration_id: mid.clone(),
                    workload_id: r.id.clone(),
                    step: crate::migrate::ledger::InStep::Discarded,
                    at_ms: crate::sys::now_ms(),
                };
                if let Err(e) = crate::migrate::ledger::write_in(&self.config().data_dir, &record) {
                    tracing::warn!(migration = mid, %e, "cannot record the discarded copy");
                }
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            let exit = match r.exit {
                Some((code, signal, at_ms)) => ExitWatch::Ended(ExitInfo { code, signal, at_ms }),
                None if alive => ExitWatch::Poll { start_ticks: r.init_start_ticks },
                None => ExitWatch::Ended(ExitInfo {
                    code: None,
                    signal: None,
                    at_ms: crate::sys::now_ms(),
                }),
            };
            let log = match LogStore::open(&dir.join("output.log")) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(id = r.id, %e, "cannot open the workload's log; not recovered");
                    continue;
                }
            };
            let engine = match r.engine.as_str() {
                "criu" => Engine::Criu,
                "cooperative" => Engine::Cooperative,
                _ => Engine::Auto,
            };
            let coop = if alive && engine == Engine::Cooperative {
                crate::engine::coop::Control::listen(&dir.join("control.sock")).ok()
            } else {
                None
            };
            let (stdout, stderr) =
                (pipes.remove(&format!("{}:out", r.id)), pipes.remove(&format!("{}:err", r.id)));
            if alive && stdout.is_none() {
                tracing::warn!(
                    id = r.id,
                    "its output pipes were not in the fd store; output from now on is lost"
                );
            }
            tracing::info!(
                id = r.id,
                pid = r.init_pid,
                alive,
                "workload recovered from an earlier agent"
            );
            let (post_copy, lost, lazy_fill) = (r.post_copy, r.lost, r.lazy_fill);
            let w = self.adopt(Adopt {
                spec: WorkloadSpec {
                    id: r.id,
                    name: r.name,
                    argv: r.argv,
                    env: r.env,
                    cwd: r.spec_cwd,
                    engine,
                    labels: r.labels,
                    user: r.user,
                    group: r.group,
                    address: r.address,
                    checkpoint_interval: r
                        .checkpoint_interval_secs
                        .map(std::time::Duration::from_secs),
                },
                dir,
                cwd: r.cwd,
                init_pid: r.init_pid,
                main_ns_pid: r.main_ns_pid,
                own_pid_namespace: r.own_pid_namespace,
                started_at_ms: r.started_at_ms,
                log,
                stdout: if alive { stdout } else { None },
                stderr: if alive { stderr } else { None },
                stdio_keys: r.stdio_keys,
                coop,
                exit,
                paused: alive && r.paused,
                pending_migration: r.pending_migration,
                self_stopped: r.self_stopped,
                net: r.net,
            });
            if let Some(why) = lost {
                w.set_lost(why);
            }
            if post_copy {
                w.set_post_copy(true);
            }
            // Its memory was still being filled when the earlier agent stopped: whether it is
            // complete is settled by migrate::recovery (from the daemon and its log).
            if alive && lazy_fill.is_some() {
                w.set_lazy_fill(lazy_fill);
            }
        }
    }
}

/// The processes the workload records under `data_dir` (an agent's data directory) say are
/// running: each record's init pid, when a process with that pid *and* the recorded start time
/// is alive (a reused pid is never named). For a supervisor tearing down the workloads of an
/// agent that may be dead.
pub fn recorded_live_pids(data_dir: &Path) -> Vec<i32> {
    let Ok(dirs) = std::fs::read_dir(data_dir.join("workloads")) else { return Vec::new() };
    dirs.flatten()
        .filter_map(|d| load(&d.path().join(STATE_FILE)))
        .filter(|r| {
            r.exit.is_none()
                && crate::sys::proc::start_ticks(r.init_pid) == Some(r.init_start_ticks)
        })
        .map(|r| r.init_pid)
        .collect()
}
