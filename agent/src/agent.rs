//! The agent: its configuration, the workload table, and the reaper every child goes through.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::AgentConfig;
use crate::criu::CriuInfo;
use crate::error::{AgentError, Result};
use crate::sys::reaper::Reaper;
use crate::workload::Workload;

pub struct Agent {
    config: AgentConfig,
    reaper: Reaper,
    root: bool,
    criu: CriuInfo,
    workloads: RwLock<HashMap<String, Arc<Workload>>>,
    /// `criu lazy-pages` daemons of post-copy restores into this node, by migration id (kept a
    /// while after they ended, for GetMigration).
    lazy_daemons: std::sync::Mutex<HashMap<String, Arc<crate::engine::lazy::LazyPages>>>,
    /// Page streams received for a stop-and-copy migration, verified, waiting for its
    /// PushSnapshot (migrate::pages).
    pub(crate) page_streams: std::sync::Mutex<HashMap<String, ferry_proto::agent::PageStreamEnd>>,
    /// Migrations whose pages directory ReservePages made, waiting for their PushPages.
    pub(crate) page_reservations: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Migrations committed into this node: migration id → workload id, so that a repeated
    /// CommitMigration (its first answer lost) is answered again rather than refused.
    committed: std::sync::Mutex<HashMap<String, String>>,
    /// Migrations their source aborted here, and when: a restore still running when the abort
    /// came discards its copy once it is done (migrate::finish).
    pub(crate) aborted: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Migrations this node started (as source): None while running, then the report.
    /// Each with when it was last recorded: the oldest finished ones go first.
    migrations:
        std::sync::Mutex<HashMap<String, (crate::migrate::MigrationState, std::time::Instant)>>,
    /// Holds a copy of every workload's output pipes across agent restarts (`sys::fdstore`).
    fd_store: Option<crate::sys::fdstore::FdStore>,
    /// Bytes declared by the snapshots being received (PushSnapshot), reserved against the
    /// data dir's free space.
    receiving: std::sync::atomic::AtomicU64,
    /// The hold device of moving workloads' packets (sys::net), opened on first use.
    pub(crate) hold: std::sync::Mutex<Option<Arc<crate::sys::net::Hold>>>,
    /// Woken whenever a lazy-pages daemon is recorded (a page tunnel waits for its own).
    lazy_started: tokio::sync::Notify,
    /// Network namespaces laid out for incoming migrations before their freeze (PrepareNetwork),
    /// by migration id, taken by their restore.
    pub(crate) prepared_nets: std::sync::Mutex<HashMap<String, crate::workload::network::Prepared>>,
    /// Protected workloads' checkpoints, replicas' peers, the lease (checkpoint/).
    pub(crate) checkpoints: crate::checkpoint::Checkpoints,
    /// The cluster key that seals checkpoint objects (--cluster-key-file).
    cluster_key: Option<Arc<crate::checkpoint::object::ClusterKey>>,
    /// The S3-compatible store checkpoints also go to (--checkpoint-store).
    object_store: Option<crate::objstore::S3Store>,
}

impl Agent {
    /// Sets the agent up: subreaper, data dir, kernel knobs, CRIU detection. Must run inside a
    /// tokio runtime.
    pub async fn new(config: AgentConfig) -> Result<Arc<Agent>> {
        let reaper = Reaper::start()
            .map_err(|e| AgentError::Internal(format!("cannot become a child subreaper: {e}")))?;
        crate::datadir::prepare(&config.data_dir)?;
        if !config.init_path.is_file() {
            return Err(AgentError::Internal(format!(
                "ferry-init not found at {:?}; build it (cargo build) or pass --init-path",
                config.init_path
            )));
        }
        let root = crate::sys::is_root();
        if root {
            crate::sys::host::raise_pipe_max_size();
        }
        let criu = {
            let (reaper, path) = (reaper.clone(), config.criu_path.clone());
            tokio::task::spawn_blocking(move || CriuInfo::detect(&reaper, path.as_deref()))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?
        };
        tracing::info!(
            node = config.node,
            data_dir = ?config.data_dir,
            root,
            criu_version = criu.version,
            criu_check = criu.check_passed,
            "agent ready"
        );
        let cluster_key = match &config.cluster_key_file {
            None => None,
            Some(path) => Some(Arc::new(
                crate::checkpoint::object::ClusterKey::load(path).map_err(AgentError::Internal)?,
            )),
        };
        let object_store = match &config.checkpoint_store {
            None => None,
            Some(url) => {
                let cfg = crate::objstore::S3Config::from_url(url)
                    .map_err(|e| AgentError::Internal(format!("--checkpoint-store: {e}")))?;
                let store = crate::objstore::S3Store::new(&cfg)
                    .map_err(|e| AgentError::Internal(format!("--checkpoint-store: {e}")))?;
                // A wrong endpoint, key or bucket is said now, not at the first checkpoint.
                if let Err(e) = store.check().await {
                    tracing::warn!(%e, "the checkpoint store does not answer yet; checkpoints go to the replicas meanwhile");
                }
                Some(store)
            }
        };
        let (fd_store, pipes) = start_fd_store(&config.data_dir);
        let agent = Arc::new(Agent {
            config,
            reaper,
            root,
            criu,
            workloads: RwLock::default(),
            lazy_daemons: Default::default(),
            page_streams: Default::default(),
            page_reservations: Default::default(),
            committed: Default::default(),
            aborted: Default::default(),
            migrations: Default::default(),
            fd_store,
            receiving: Default::default(),
            hold: Default::default(),
            prepared_nets: Default::default(),
            lazy_started: tokio::sync::Notify::new(),
            checkpoints: Default::default(),
            cluster_key,
            object_store,
        });
        // The lease an earlier agent held on this boot: protected workloads it outlived die
        // before they are adopted again (checkpoint::lease).
        agent.checkpoints.lease.load(&agent.config.data_dir);
        agent.recover(pipes);
        // Migrations this node was in the middle of when an earlier agent stopped: finished or
        // undone, asking their target (migrate::recovery).
        crate::migrate::recovery::start(&agent);
        crate::migrate::ledger::prune_in(&agent.config.data_dir);
        // Ended workloads go once they have been kept `keep_ended`: the table, the agent's
        // memory and the data dir stay bounded however many workloads come and go.
        let sweeper = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                let Some(agent) = sweeper.upgrade() else { return };
                agent.forget_ended();
                let every = agent
                    .config
                    .keep_ended
                    .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
                drop(agent);
                tokio::time::sleep(every).await;
            }
        });
        // Page streams live in memory until their PushSnapshot claims them: none survives a
        // restart, so what an earlier agent received goes (it may be a workload's memory).
        crate::migrate::pages::remove_stale(&agent);
        agent.recover_interrupted_checkpoints();
        agent.spawn_protection();
        agent.spawn_lease_watch();
        Ok(agent)
    }

    pub(crate) fn fd_store(&self) -> Option<&crate::sys::fdstore::FdStore> {
        self.fd_store.as_ref()
    }

    pub(crate) fn cluster_key(&self) -> Option<&Arc<crate::checkpoint::object::ClusterKey>> {
        self.cluster_key.as_ref()
    }

    pub(crate) fn object_store(&self) -> Option<&crate::objstore::S3Store> {
        self.object_store.as_ref()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    pub fn criu(&self) -> &CriuInfo {
        &self.criu
    }

    pub(crate) fn receiving(&self) -> &std::sync::atomic::AtomicU64 {
        &self.receiving
    }

    pub fn get(&self, id: &str) -> Result<Arc<Workload>> {
        self.workloads
            .read()
            .expect("workload table poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound { id: id.to_string() })
    }

    pub(crate) fn insert(&self, w: Arc<Workload>) {
        self.workloads.write().expect("workload table poisoned").insert(w.id().to_string(), w);
    }

    pub(crate) fn remove(&self, id: &str) {
        self.workloads.write().expect("workload table poisoned").remove(id);
    }

    /// A migration this node started (None: never started here, or before this agent's start).
    pub fn migration(&self, id: &str) -> Option<crate::migrate::MigrationState> {
        if let Some((m, _)) = self.migrations.lock().expect("migrations poisoned").get(id).cloned()
        {
            return Some(m);
        }
        // Ended before this agent started: its ledger record says how (kept an hour).
        let rec = crate::migrate::ledger::read_out(&self.config.data_dir, id)
            .filter(|r| r.step == crate::migrate::ledger::OutStep::Ended)?;
        let engine = self.get(&rec.workload_id).map(|w| w.spec.engine).unwrap_or_default();
        let report = crate::migrate::recovery::report_of(&rec, &self.config.node, engine);
        Some(crate::migrate::MigrationState::Done(Box::new(report)))
    }

    pub(crate) fn record_migration(&self, id: &str, state: crate::migrate::MigrationState) {
        let mut m = self.migrations.lock().expect("migrations poisoned");
        // Bounded: the 100 oldest finished ones go (their ledger records still answer for an
        // hour); a fresh report stays until the coordinator has had time to ask for it.
        if m.len() >= 1000 {
            let mut done: Vec<(std::time::Instant, String)> = m
                .iter()
                .filter(|(_, (s, _))| matches!(s, crate::migrate::MigrationState::Done(_)))
                .map(|(k, (_, at))| (*at, k.clone()))
                .collect();
            done.sort();
            for (_, k) in done.into_iter().take(100) {
                m.remove(&k);
            }
        }
        m.insert(id.to_string(), (state, std::time::Instant::now()));
    }

    pub(crate) fn set_lazy_daemon(
        &self,
        migration_id: &str,
        lp: Arc<crate::engine::lazy::LazyPages>,
    ) {
        let mut m = self.lazy_daemons.lock().expect("lazy daemons poisoned");
        // Bounded: some that ended go first.
        if m.len() >= 200 {
            let ended: Vec<String> = m
                .iter()
                .filter(|(_, l)| l.ended().is_some())
                .map(|(k, _)| k.clone())
                .take(50)
                .collect();
            for k in ended {
                m.remove(&k);
            }
        }
        m.insert(migration_id.to_string(), lp);
        drop(m);
        self.lazy_started.notify_waiters();
    }

    /// Waits until a lazy-pages daemon is known for `migration_id`, until `deadline`.
    pub(crate) async fn wait_lazy_daemon(
        &self,
        migration_id: &str,
        deadline: tokio::time::Instant,
    ) -> Option<Arc<crate::engine::lazy::LazyPages>> {
        loop {
            // Made before the look: a daemon set between the look and the wait still wakes it.
            let started = self.lazy_started.notified();
            if let Some(lp) = self.lazy_daemon(migration_id) {
                return Some(lp);
            }
            if tokio::time::timeout_at(deadline, started).await.is_err() {
                return self.lazy_daemon(migration_id);
            }
        }
    }

    pub(crate) fn record_commit(&self, migration_id: &str, workload_id: &str) {
        let mut m = self.committed.lock().expect("commits poisoned");
        if m.len() >= 1000 {
            m.clear();
        }
        m.insert(migration_id.to_string(), workload_id.to_string());
    }

    /// The workload a migration into this node was committed for, if it was.
    pub(crate) fn committed_workload(&self, migration_id: &str) -> Option<String> {
        self.committed.lock().expect("commits poisoned").get(migration_id).cloned()
    }

    /// The lazy-pages daemon of a post-copy restore into this node (running or ended).
    pub fn lazy_daemon(&self, migration_id: &str) -> Option<Arc<crate::engine::lazy::LazyPages>> {
        self.lazy_daemons.lock().expect("lazy daemons poisoned").get(migration_id).cloned()
    }

    /// Kills a migration's lazy-pages daemon (its restore failed or was aborted) and forgets it.
    pub(crate) fn kill_lazy_daemon(&self, migration_id: &str) {
        if let Some(lp) =
            self.lazy_daemons.lock().expect("lazy daemons poisoned").remove(migration_id)
        {
            lp.abandon();
        }
    }

    /// Forgets the workloads that ended more than `keep_ended` ago, with their directories.
    fn forget_ended(&self) {
        let keep = self.config.keep_ended.as_millis() as i64;
        let now = crate::sys::now_ms();
        for w in self.workloads() {
            let old = w.exit_info().is_some_and(|e| now - e.at_ms > keep);
            if old && w.pending_migration().is_none() {
                tracing::info!(id = w.id(), "forgetting a workload that ended over {keep} ms ago");
                self.remove(w.id());
                let _ = std::fs::remove_dir_all(&w.dir);
            }
        }
    }

    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        self.workloads.read().expect("workload table poisoned").values().cloned().collect()
    }
}

/// Connects to the fd store an earlier agent left on `data_dir` (taking back the pipes it kept)
/// or starts one. Without a store the agent still works; its workloads' output then ends with it.
fn start_fd_store(
    data_dir: &std::path::Path,
) -> (Option<crate::sys::fdstore::FdStore>, HashMap<String, std::os::fd::OwnedFd>) {
    let path = data_dir.join("fdstore.sock");
    let started = std::env::current_exe()
        .and_then(|exe| crate::sys::fdstore::FdStore::connect_or_start(&path, &exe));
    match started {
        Ok((store, earlier)) => {
            let pipes = if earlier {
                store.list().map(|v| v.into_iter().collect()).unwrap_or_else(|e| {
                    tracing::warn!(%e, "the earlier fd store did not hand its pipes back");
                    HashMap::new()
                })
            } else {
                HashMap::new()
            };
            tracing::info!(path = %path.display(), earlier, pipes = pipes.len(), "fd store connected");
            (Some(store), pipes)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), %e, "no fd store: workloads' output will not survive an agent restart");
            (None, HashMap::new())
        }
    }
}
