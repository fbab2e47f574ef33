//! ferry's coordinator: the node registry (agents register and heartbeat with their host facts
//! and workloads; a node is offline after missed heartbeats), the workload table, migrations,
//! placement, cordons and drains, workloads' own addresses, checkpoints and failover, and the
//! events, all in SQLite (`<data dir>/ferry.db`), so a restart forgets nothing. The REST gateway
//! builds on it. See ARCHITECTURE.md for the map.

pub mod agents;
mod drain;
pub mod error;
pub mod failover;
#[cfg(test)]
mod fake_agent;
pub mod network;
mod ops;
pub mod placement;
pub mod registry;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::agent::HealthCheckResponse;
use ferry_proto::coordinator as pb;
use pb::coordinator_server::{Coordinator as CoordinatorApi, CoordinatorServer};
use prost::Message;
use tonic::{Request, Response, Status};

pub use drain::MAX_DEADLINE_SECS;
pub use error::CoordError;
pub use network::{Network, WorkloadRange};
pub use ops::{MigrationMode, AUTO_POST_COPY_BYTES};
pub use store::{
    Cursor, DrainItem, DrainRow, Event, MigrationQuery, MigrationRow, Reported, Retention, Store,
    StoreError,
};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub data_dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// How gRPC is secured (the agents' API and this coordinator's): mutual TLS, or plain TCP.
    pub wire: ferry_proto::tls::Wire,
    /// How long an ended workload (exited, failed, lost) is kept after it ended; then it is
    /// pruned from the store and no longer recorded when its agent reports it again.
    pub keep_ended: Duration,
    /// Forget the nodes (and their workloads) of an earlier run at start: every live agent
    /// registers again. `ferry up` uses it: its earlier cluster died with it.
    pub forget_nodes: bool,
    /// The cluster's workload address range (`--workload-cidr`): workloads with a network of
    /// their own get an address from it. `None`: none can.
    pub workload_range: Option<WorkloadRange>,
    /// The network of a workload started without saying which (`--default-network`).
    pub default_network: Network,
    /// How many migrations a drain runs at a time (`--drain-concurrency`).
    pub drain_concurrency: usize,
    /// Test only: a fault to ask of every migration's source agent (honoured only by agents
    /// started with --enable-fault-injection), as (Fault, fault_arg).
    pub migration_fault: Option<(ferry_proto::agent::Fault, u32)>,
    /// Test only: the coordinator dies (abort) at this step of every migration it starts.
    pub test_crash_at: Option<CoordCrash>,
    /// How long a node may be silent before its protected workloads are restored elsewhere
    /// from their checkpoints (`--failover-grace-secs`); agents' lease is half of it. Zero:
    /// no failover and no lease.
    pub failover_grace: Duration,
    /// Finished migrations kept (`--keep-migrations`, `--keep-migrations-secs`): one goes once
    /// it is both older than the age and not among the newest `keep`.
    pub keep_migrations: Retention,
    /// Events kept (`--keep-events`, `--keep-events-secs`), by the same rule.
    pub keep_events: Retention,
}

/// Finished migrations kept by default: the newest 10,000, and any younger than 30 days.
pub const DEFAULT_KEEP_MIGRATIONS: Retention =
    Retention { keep: 10_000, max_age_ms: 30 * 24 * 3600 * 1000 };

/// Events kept by default: the newest 100,000, and any younger than 30 days.
pub const DEFAULT_KEEP_EVENTS: Retention =
    Retention { keep: 100_000, max_age_ms: 30 * 24 * 3600 * 1000 };

/// How often the history (finished migrations, events) is pruned; again at the next sweep while
/// a prune deleted a whole batch.
const PRUNE_EVERY_MS: i64 = 60_000;

/// Where a coordinator dies in a migration it starts (test only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordCrash {
    /// The migration is recorded and announced; the source was not asked yet.
    Accepted,
    /// The source answered with the outcome; it is not recorded yet.
    Answered,
}

impl CoordinatorConfig {
    /// A configuration with the defaults: heartbeats every second, ended workloads kept 24 h.
    pub fn new(data_dir: PathBuf, wire: ferry_proto::tls::Wire) -> CoordinatorConfig {
        CoordinatorConfig {
            data_dir,
            heartbeat_interval: Duration::from_secs(1),
            wire,
            keep_ended: DEFAULT_KEEP_ENDED,
            forget_nodes: false,
            workload_range: None,
            default_network: Network::Node,
            drain_concurrency: DEFAULT_DRAIN_CONCURRENCY,
            migration_fault: None,
            test_crash_at: None,
            failover_grace: DEFAULT_FAILOVER_GRACE,
            keep_migrations: DEFAULT_KEEP_MIGRATIONS,
            keep_events: DEFAULT_KEEP_EVENTS,
        }
    }

    /// The agents' lease: half the failover grace (zero when failover is off).
    pub fn lease(&self) -> Duration {
        self.failover_grace / 2
    }

    /// Refuses a failover grace too short for the heartbeat interval: a node must be able to
    /// miss three heartbeats (offline) and its lease run out before anything is restored.
    pub fn check(&self) -> Result<(), String> {
        let min = self.heartbeat_interval * 3 + Duration::from_secs(2);
        if !self.failover_grace.is_zero() && self.failover_grace < min {
            return Err(format!(
                "--failover-grace-secs {} is too short for heartbeats every {} ms: it must be at \
                 least 3 heartbeat intervals + 2 s ({} s, rounded up), so that a node is offline \
                 and its agents' lease (half the grace) has fenced its workloads before they are \
                 restored elsewhere; give a longer grace, a shorter --heartbeat-ms, or 0 to turn \
                 failover off",
                self.failover_grace.as_secs_f64(),
                self.heartbeat_interval.as_millis(),
                min.as_secs_f64().ceil()
            ));
        }
        Ok(())
    }
}

/// How long a silent node's protected workloads wait before failover, by default.
pub const DEFAULT_FAILOVER_GRACE: Duration = Duration::from_secs(30);

/// How many migrations a drain runs at a time by default.
pub const DEFAULT_DRAIN_CONCURRENCY: usize = 2;

/// How long ended workloads are kept by default.
pub const DEFAULT_KEEP_ENDED: Duration = Duration::from_secs(24 * 3600);

pub struct Coordinator {
    config: CoordinatorConfig,
    store: Store,
    /// Liveness as of the last sweep, to log each change once.
    last_sweep: Mutex<HashMap<String, bool>>,
    agents: agents::AgentPool,
    /// Serializes the "already migrating?" check with the insert.
    migrating: Mutex<()>,
    /// Serializes the "already draining?" check with the insert.
    draining: Mutex<()>,
    /// Every event, live, for the gateway's event stream.
    events: tokio::sync::broadcast::Sender<Event>,
    /// Address conflicts already announced: (address, holder, reporter).
    conflicts: Mutex<std::collections::HashSet<(String, String, String)>>,
    /// When this coordinator started: a node's silence counts from here at the earliest.
    started_ms: i64,
    /// Failover's memory between sweeps (workloads warned about, attempts backed off).
    failover: Mutex<failover::Memory>,
    /// When the history was last pruned (0: not yet, or again at the next sweep).
    last_prune_ms: std::sync::atomic::AtomicI64,
    /// Figures computed from the whole store, by name: (the key they were computed for, them).
    memo: Mutex<HashMap<&'static str, (u64, Memoized)>>,
}

/// A value [`Coordinator::memo`] keeps.
type Memoized = Arc<dyn std::any::Any + Send + Sync>;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Coordinator {
    pub fn open(config: CoordinatorConfig) -> Result<Arc<Coordinator>, StoreError> {
        // Root's alone (mode 0700): the database holds every workload's command line and
        // environment. An existing directory is tightened.
        ferry_proto::tls::private_dir(&config.data_dir).map_err(|e| StoreError::Open {
            path: config.data_dir.display().to_string(),
            source: rusqlite::Error::InvalidPath(format!("cannot create it mode 0700: {e}").into()),
        })?;
        let store = Store::open(&config.data_dir.join("ferry.db"))?;
        if config.forget_nodes {
            let why =
                "the coordinator was started with --forget-nodes (a new cluster on this data \
                       dir); this migration's outcome was not recorded";
            let gone = store.forget_nodes(why, now_ms())?;
            if !gone.is_empty() {
                tracing::info!(nodes = ?gone, "forgot the nodes of an earlier run (--forget-nodes)");
            }
        }
        // Start from what the database says, so a restart does not re-announce every node.
        let interval = config.heartbeat_interval.as_millis() as i64;
        let now = now_ms();
        let last_sweep = store
            .nodes()?
            .into_iter()
            .map(|n| (n.node.clone(), registry::online(n.last_seen_ms, now, interval)))
            .collect();
        let wire = config.wire.clone();
        // A drain is driven by the coordinator that started it: one left running by an earlier
        // run ends failed (its migrations resolve as any other; the operator drains again).
        let interrupted = store.interrupt_drains(drain::INTERRUPTED, now_ms())?;
        let c = Arc::new(Coordinator {
            config,
            store,
            last_sweep: Mutex::new(last_sweep),
            agents: agents::AgentPool::new(wire),
            migrating: Mutex::new(()),
            draining: Mutex::new(()),
            events: tokio::sync::broadcast::channel(1024).0,
            conflicts: Mutex::default(),
            started_ms: now_ms(),
            failover: Mutex::default(),
            last_prune_ms: std::sync::atomic::AtomicI64::new(0),
            memo: Mutex::default(),
        });
        for id in interrupted {
            tracing::warn!(drain = id, "a drain left running by a restart ends failed");
            let node = c.store.drains()?.into_iter().find(|d| d.id == id).map(|d| d.node);
            let node = node.unwrap_or_default();
            let msg = format!("drain {id} of {node} failed: {}", drain::INTERRUPTED);
            let data = format!(r#"{{"drainId":"{id}","node":"{node}","status":"failed"}}"#);
            c.emit_with("drain_ended", "error", &node, "", msg, data)?;
        }
        Ok(c)
    }

    fn interval_ms(&self) -> i64 {
        self.config.heartbeat_interval.as_millis() as i64
    }

    /// Every node with its liveness now.
    pub fn nodes(&self) -> Result<Vec<pb::NodeInfo>, StoreError> {
        let now = now_ms();
        Ok(self
            .store
            .nodes()?
            .into_iter()
            .map(|n| pb::NodeInfo {
                online: registry::online(n.last_seen_ms, now, self.interval_ms()),
                health: HealthCheckResponse::decode(n.health.as_slice()).ok(),
                node: n.node,
                address: n.address,
                registered_at_ms: n.registered_at_ms,
                last_seen_ms: n.last_seen_ms,
                workload_count: n.workload_count,
            })
            .collect())
    }

    /// The earliest end an ended workload may have and still be kept.
    pub(crate) fn keep_ended_since(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.config.keep_ended.as_millis().min(i64::MAX as u128) as i64)
    }

    /// How long ended workloads are kept.
    pub fn keep_ended(&self) -> Duration {
        self.config.keep_ended
    }

    /// Records nodes that went offline or came back since the last sweep, and prunes ended
    /// workloads kept long enough.
    pub fn sweep(&self) -> Result<(), StoreError> {
        let pruned = self.store.prune_ended(self.keep_ended_since(now_ms()))?;
        if pruned > 0 {
            tracing::info!(pruned, "forgot workloads that ended long enough ago");
        }
        self.release_addresses()?;
        let now: Vec<(String, bool)> =
            self.nodes()?.into_iter().map(|n| (n.node, n.online)).collect();
        let mut last = self.last_sweep.lock().expect("sweep state poisoned");
        for (node, online) in registry::changes(&last, &now) {
            let (kind, msg) = if online {
                ("node_online", format!("node {node} is online"))
            } else {
                (
                    "node_offline",
                    format!("node {node} missed {} heartbeats; offline", registry::MISSED_BEATS),
                )
            };
            tracing::info!(node, online, "{msg}");
            self.emit(kind, if online { "info" } else { "warn" }, node, "", msg)?;
        }
        *last = now.into_iter().collect();
        Ok(())
    }

    /// Forgets finished migrations and events beyond their retention (`--keep-migrations`,
    /// `--keep-events` and their ages), at most [`store::PRUNE_BATCH`] of each at a time: at most
    /// once a minute, or at once again while the last prune deleted a whole batch. Returns how
    /// many of each went.
    pub fn prune_history(&self) -> Result<(usize, usize), StoreError> {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        if now - self.last_prune_ms.load(Ordering::Relaxed) < PRUNE_EVERY_MS {
            return Ok((0, 0));
        }
        let m = self.store.prune_migrations(self.config.keep_migrations, now)?;
        let e = self.store.prune_events(self.config.keep_events, now)?;
        let full = store::PRUNE_BATCH as usize;
        self.last_prune_ms.store(if m >= full || e >= full { 0 } else { now }, Ordering::Relaxed);
        if m + e > 0 {
            tracing::info!(migrations = m, events = e, "pruned history beyond its retention");
        }
        Ok((m, e))
    }

    /// `compute`'s value for `key`, computed again only when `key` changed since the last call
    /// under `name` (figures read from the whole store, keyed by [`Store::generation`] and
    /// whatever else they depend on). The cache's lock is held while computing: concurrent
    /// callers wait for one computation rather than repeat it, and `compute` must not call
    /// `memo` itself (the lock is not reentrant).
    pub fn memo<T: Send + Sync + 'static, E>(
        &self,
        name: &'static str,
        key: u64,
        compute: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut memo = self.memo.lock().expect("memo poisoned");
        if let Some((k, v)) = memo.get(name) {
            if *k == key {
                if let Ok(v) = v.clone().downcast::<T>() {
                    return Ok(v);
                }
            }
        }
        let v = Arc::new(compute()?);
        memo.insert(name, (key, v.clone()));
        Ok(v)
    }

    /// A key that changes whenever the store is written (see [`Store::generation`]), mixed with
    /// `extra`.
    pub fn store_key(&self, extra: &impl std::hash::Hash) -> Result<u64, StoreError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.store.generation()?.hash(&mut h);
        extra.hash(&mut h);
        Ok(h.finish())
    }

    /// Records an event and sends it to live subscribers.
    pub fn emit(
        &self,
        kind: &str,
        level: &str,
        node: &str,
        process: &str,
        message: String,
    ) -> Result<(), StoreError> {
        self.emit_with(kind, level, node, process, message, "{}".into())
    }

    /// Records an event with structured details (a JSON object) and sends it to live subscribers.
    pub fn emit_with(
        &self,
        kind: &str,
        level: &str,
        node: &str,
        process: &str,
        message: String,
        data: String,
    ) -> Result<(), StoreError> {
        let e = self.store.event(Event {
            id: 0,
            at_ms: now_ms(),
            kind: kind.into(),
            level: level.into(),
            node: node.into(),
            process: process.into(),
            message,
            data,
        })?;
        let _ = self.events.send(e);
        Ok(())
    }

    /// A node's fresh figures (CPU, memory, its workloads' load), sent to live subscribers only:
    /// too frequent to keep in the event log.
    pub fn pulse(&self, node: &str) {
        self.send_live("node_heartbeat", node, "", "{}".into());
    }

    /// An event for live subscribers only (not kept in the event log): figures that change too
    /// often to log, such as a node's load or a migration's bytes in flight.
    pub fn send_live(&self, kind: &str, node: &str, process: &str, data: String) {
        let _ = self.events.send(Event {
            id: 0,
            at_ms: now_ms(),
            kind: kind.into(),
            level: "info".into(),
            node: node.into(),
            process: process.into(),
            message: String::new(),
            data,
        });
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cluster's workload address range, if it has one.
    pub fn workload_range(&self) -> Option<WorkloadRange> {
        self.config.workload_range
    }

    /// How long a fresh allocation is kept without a record of its workload: a start being
    /// answered, or a workload started since its node's last heartbeat.
    fn address_settle_ms(&self) -> i64 {
        (self.interval_ms() * 10).max(30_000)
    }

    /// Frees the addresses of workloads that ended or are no longer recorded (not those of a
    /// workload that is migrating: the address moves with it).
    pub(crate) fn release_addresses(&self) -> Result<(), StoreError> {
        let settled_before = now_ms() - self.address_settle_ms();
        for (address, workload) in self.store.release_ended_addresses(settled_before)? {
            tracing::info!(address, workload, "address released: its workload is over");
        }
        Ok(())
    }

    /// Records the addresses live reports carry that the table does not hold (a coordinator on
    /// a fresh database), so none is handed out twice; one another workload holds is a warning
    /// event naming both, once.
    pub(crate) fn claim_reported(
        &self,
        node: &str,
        reports: &[ferry_proto::agent::ProcessStatus],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for s in reports.iter().filter(|s| s.exit.is_none()) {
            let Some(spec) = s.spec.as_ref().filter(|x| !x.address.is_empty()) else { continue };
            let Some(holder) = self.store.claim_address(&spec.address, &spec.id, now)? else {
                continue;
            };
            let key = (spec.address.clone(), holder.clone(), spec.id.clone());
            if !self.conflicts.lock().expect("conflicts poisoned").insert(key) {
                continue;
            }
            let msg = format!(
                "address {} is reported by process {} on {node} but is allocated to process                  {holder}: two workloads claim one address",
                spec.address, spec.id
            );
            tracing::warn!(address = spec.address, holder, reporter = spec.id, node, "{msg}");
            self.emit("address_conflict", "warn", node, &spec.id, msg)?;
        }
        Ok(())
    }

    /// One workload as its node last reported it: (node, status); `None` when not recorded.
    pub fn workload(
        &self,
        id: &str,
    ) -> Result<Option<(String, ferry_proto::agent::ProcessStatus)>, StoreError> {
        Ok(self.store.workload(id)?.and_then(|(node, blob)| {
            Some((node, ferry_proto::agent::ProcessStatus::decode(blob.as_slice()).ok()?))
        }))
    }

    /// A page of the workloads by id (see [`Store::workloads_page`]): (node, status).
    pub fn workloads_page(
        &self,
        after: &str,
        limit: u32,
        ended: bool,
    ) -> Result<Vec<(String, ferry_proto::agent::ProcessStatus)>, StoreError> {
        Ok(self
            .store
            .workloads_page(after, limit, ended)?
            .into_iter()
            .filter_map(|(_, node, blob)| {
                Some((node, ferry_proto::agent::ProcessStatus::decode(blob.as_slice()).ok()?))
            })
            .collect())
    }

    /// Every workload as its node last reported it: (node, status).
    pub fn workloads(
        &self,
    ) -> Result<Vec<(String, ferry_proto::agent::ProcessStatus)>, StoreError> {
        Ok(self
            .store
            .workloads()?
            .into_iter()
            .filter_map(|(_, node, blob)| {
                Some((node, ferry_proto::agent::ProcessStatus::decode(blob.as_slice()).ok()?))
            })
            .collect())
    }
}

/// A workload's report as the store keeps it (`None` without a spec, hence without an id).
pub(crate) fn reported(
    s: &ferry_proto::agent::ProcessStatus,
    now_ms: i64,
) -> Option<store::Reported> {
    let ended = s.exit.is_some() || s.state == ferry_proto::agent::ProcessState::Exited as i32;
    Some(store::Reported {
        id: s.spec.as_ref()?.id.clone(),
        status: s.encode_to_vec(),
        held_for: s.held_for_migration.clone(),
        ended_at_ms: ended
            .then(|| s.exit.map(|e| e.exited_at_ms).filter(|t| *t > 0).unwrap_or(now_ms)),
    })
}

fn internal(e: StoreError) -> Status {
    tracing::error!(%e, "store failure");
    Status::internal(e.to_string())
}

/// A coordinator error as a gRPC status for an agent.
fn coord_status(e: CoordError) -> Status {
    match e {
        CoordError::Store(e) => internal(e),
        CoordError::Invalid(m) => Status::invalid_argument(m),
        CoordError::NotFound(m) => Status::not_found(m),
        CoordError::Agent { node, status } => {
            Status::unavailable(format!("node {node}: {}", status.message()))
        }
        other => Status::failed_precondition(other.to_string()),
    }
}

struct Service(Arc<Coordinator>);

#[tonic::async_trait]
impl CoordinatorApi for Service {
    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        if req.get_ref().node.is_empty() || req.get_ref().node.len() > 128 {
            return Err(Status::invalid_argument("node name must be 1-128 characters"));
        }
        let identity = ferry_proto::tls::may_act_as(&self.0.config.wire, &req, &req.get_ref().node);
        let r = req.into_inner();
        if !(r.address.starts_with("http://") || r.address.starts_with("https://")) {
            return Err(Status::invalid_argument(format!(
                "address {:?} must be the agent's gRPC URL, e.g. https://10.0.0.2:50051",
                r.address
            )));
        }
        identity?;
        let health = r.health.map(|h| h.encode_to_vec()).unwrap_or_default();
        let new =
            self.0.store.register(&r.node, &r.address, &health, now_ms()).map_err(internal)?;
        if new {
            let msg = format!("node {} registered at {}", r.node, r.address);
            tracing::info!(node = r.node, address = r.address, "{msg}");
            self.0.emit("node_registered", "info", &r.node, "", msg).map_err(internal)?;
        }
        self.0.sweep().map_err(internal)?;
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.0.interval_ms() as u32,
            lease_ms: self.0.lease_ms(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        ferry_proto::tls::may_act_as(&self.0.config.wire, &req, &req.get_ref().node)?;
        let r = req.into_inner();
        let health = r.health.map(|h| h.encode_to_vec()).unwrap_or_default();
        let running = r.workloads.iter().filter(|w| w.exit.is_none()).count() as u32;
        let known =
            self.0.store.heartbeat(&r.node, &health, running, now_ms()).map_err(internal)?;
        if known {
            // Workloads that ended on their own since the last report become events: those now
            // reported with an exit that the previous report had running.
            let exited: std::collections::HashSet<&str> = r
                .workloads
                .iter()
                .filter(|w| w.exit.is_some())
                .filter_map(|w| Some(w.spec.as_ref()?.id.as_str()))
                .collect();
            let was_running: std::collections::HashSet<String> = if exited.is_empty() {
                Default::default()
            } else {
                self.0
                    .store
                    .node_workloads(&r.node)
                    .map_err(internal)?
                    .into_iter()
                    .filter(|(id, _)| exited.contains(id.as_str()))
                    .filter(|(_, st)| {
                        ferry_proto::agent::ProcessStatus::decode(st.as_slice())
                            .is_ok_and(|p| p.exit.is_none())
                    })
                    .map(|(id, _)| id)
                    .collect()
            };
            self.0.claim_reported(&r.node, &r.workloads).map_err(internal)?;
            let now = now_ms();
            let workloads: Vec<store::Reported> =
                r.workloads.iter().filter_map(|w| reported(w, now)).collect();
            self.0
                .store
                .set_workloads(&r.node, &workloads, self.0.keep_ended_since(now), now)
                .map_err(internal)?;
            for w in &r.workloads {
                let (Some(spec), Some(exit)) = (&w.spec, &w.exit) else { continue };
                if was_running.contains(&spec.id) {
                    let clean = exit.code == Some(0);
                    let how = match (exit.code, exit.signal) {
                        (Some(c), _) => format!("exited with code {c}"),
                        (None, Some(s)) => format!("was killed by signal {s}"),
                        (None, None) => "exited (status unknown)".to_string(),
                    };
                    let msg = format!("process {} ({}) {how} on {}", spec.id, spec.name, r.node);
                    let level = if clean { "info" } else { "warn" };
                    self.0
                        .emit("process_exited", level, &r.node, &spec.id, msg)
                        .map_err(internal)?;
                }
            }
            self.0.sweep().map_err(internal)?;
            self.0.pulse(&r.node);
        }
        if !known {
            return Ok(Response::new(pb::HeartbeatResponse { known, ..Default::default() }));
        }
        Ok(Response::new(pb::HeartbeatResponse {
            known,
            peers: self.0.peers_of(&r.node).map_err(coord_status)?,
            fence: self.0.fence(&r.node, &r.workloads).map_err(coord_status)?,
            lease_ms: self.0.lease_ms(),
        }))
    }

    async fn list_nodes(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        Ok(Response::new(pb::ListNodesResponse { nodes: self.0.nodes().map_err(internal)? }))
    }

    async fn report_checkpoint(
        &self,
        req: Request<pb::ReportCheckpointRequest>,
    ) -> Result<Response<pb::ReportCheckpointResponse>, Status> {
        ferry_proto::tls::may_act_as(&self.0.config.wire, &req, &req.get_ref().node)?;
        let r = req.into_inner();
        if r.node.is_empty() {
            return Err(Status::invalid_argument("node is empty: the reporting node's name"));
        }
        let k = r.checkpoint.ok_or_else(|| {
            Status::invalid_argument(format!("node {}: a report without its checkpoint", r.node))
        })?;
        self.0.report_checkpoint(&r.node, &k).map_err(coord_status)?;
        Ok(Response::new(pb::ReportCheckpointResponse {}))
    }
}

/// Serves the coordinator on an already-bound listener until `shutdown` resolves, sweeping node
/// liveness every heartbeat interval.
pub async fn serve(
    coordinator: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    coordinator.config.check()?;
    if let Err(e) = coordinator.resolve_pending() {
        tracing::error!(%e, "cannot resolve migrations left pending");
    }
    if let Err(e) = coordinator.resolve_restores() {
        tracing::error!(%e, "cannot resolve failovers and restores left pending");
    }
    let sweeper = {
        let c = coordinator.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(c.config.heartbeat_interval);
            loop {
                tick.tick().await;
                if let Err(e) = c.sweep() {
                    tracing::error!(%e, "liveness sweep failed");
                }
                if let Err(e) = c.failover_sweep() {
                    tracing::error!(%e, "failover sweep failed");
                }
                if let Err(e) = c.prune_history() {
                    tracing::error!(%e, "pruning the history failed");
                }
            }
        })
    };
    // TCP_NODELAY on every accepted connection: small messages (a page request, a commit's
    // answer) must not wait for the previous segment's ACK. Server::tcp_nodelay applies only
    // to listeners tonic binds itself.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = match coordinator.config.wire.server() {
        Ok(b) => b,
        Err(e) => {
            sweeper.abort();
            return Err(e.into());
        }
    };
    let result = builder
        .add_service(CoordinatorServer::new(Service(coordinator)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    sweeper.abort();
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::agent as apb;

    fn status(id: &str, held_for: &str, exited_at_ms: Option<i64>) -> apb::ProcessStatus {
        apb::ProcessStatus {
            spec: Some(apb::WorkloadSpec { id: id.into(), ..Default::default() }),
            state: if exited_at_ms.is_some() {
                apb::ProcessState::Exited
            } else {
                apb::ProcessState::Stopped
            } as i32,
            exit: exited_at_ms.map(|t| apb::ExitInfo {
                code: Some(0),
                signal: None,
                exited_at_ms: t,
            }),
            held_for_migration: held_for.into(),
            ..Default::default()
        }
    }

    async fn beat(s: &Service, node: &str, workloads: Vec<apb::ProcessStatus>) {
        let r = s
            .heartbeat(Request::new(pb::HeartbeatRequest {
                node: node.into(),
                workloads,
                ..Default::default()
            }))
            .await
            .unwrap();
        assert!(r.into_inner().known);
    }

    async fn registered(keep_ended: Duration) -> (tempfile::TempDir, Service) {
        let d = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig {
            keep_ended,
            ..CoordinatorConfig::new(d.path().to_path_buf(), ferry_proto::tls::Wire::Insecure)
        };
        let s = Service(Coordinator::open(config).unwrap());
        for node in ["src", "dst"] {
            s.register_node(Request::new(pb::RegisterNodeRequest {
                node: node.into(),
                address: format!("http://{node}:1"),
                health: None,
            }))
            .await
            .unwrap();
        }
        (d, s)
    }

    /// Both agents of a stop-and-copy report the workload while the target holds its copy:
    /// the coordinator's record stays with the source on every heartbeat, in any order.
    #[tokio::test]
    async fn heartbeats_of_a_held_copy_never_move_the_workload() {
        let (_d, s) = registered(DEFAULT_KEEP_ENDED).await;
        for _ in 0..3 {
            beat(&s, "src", vec![status("w-1", "", None)]).await;
            assert_eq!(s.0.workload_node("w-1").unwrap().0, "src");
            beat(&s, "dst", vec![status("w-1", "m-1", None)]).await;
            let (node, st) = s.0.workload_node("w-1").unwrap();
            assert_eq!((node.as_str(), st.held_for_migration.as_str()), ("src", ""));
        }
        // The source killed its original (the commit follows): the held copy is all there is,
        // and says so.
        beat(&s, "src", vec![]).await;
        beat(&s, "dst", vec![status("w-1", "m-1", None)]).await;
        let (node, st) = s.0.workload_node("w-1").unwrap();
        assert_eq!((node.as_str(), st.held_for_migration.as_str()), ("dst", "m-1"));
        // Committed: the target's plain report.
        beat(&s, "dst", vec![status("w-1", "", None)]).await;
        assert_eq!(s.0.workload_node("w-1").unwrap().1.held_for_migration, "");
    }

    /// An ended workload is kept while younger than --keep-ended-secs, then pruned by the sweep
    /// and not recorded again from its agent's next reports.
    #[tokio::test]
    async fn ended_workloads_are_pruned_after_the_bound() {
        let (_d, s) = registered(Duration::from_secs(60)).await;
        let now = now_ms();
        beat(
            &s,
            "src",
            vec![status("w-new", "", Some(now - 1_000)), status("w-old", "", Some(now - 61_000))],
        )
        .await;
        assert!(s.0.workload_node("w-new").is_ok());
        assert!(s.0.workload_node("w-old").is_err(), "ended before the bound: not recorded");
        let (_d2, s2) = registered(Duration::from_millis(200)).await;
        beat(&s2, "src", vec![status("w-1", "", Some(now_ms()))]).await;
        assert!(s2.0.workload_node("w-1").is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
        s2.0.sweep().unwrap();
        assert!(s2.0.workload_node("w-1").is_err(), "pruned by the sweep");
        beat(&s2, "src", vec![status("w-1", "", Some(now_ms() - 300))]).await;
        assert!(s2.0.workload_node("w-1").is_err(), "and not recorded again");
    }

    #[tokio::test]
    async fn forget_nodes_starts_without_an_earlier_runs_nodes() {
        let (d, s) = registered(DEFAULT_KEEP_ENDED).await;
        beat(&s, "src", vec![status("w-1", "", None)]).await;
        drop(s);
        let again = |forget_nodes| {
            let config = CoordinatorConfig {
                forget_nodes,
                ..CoordinatorConfig::new(d.path().to_path_buf(), ferry_proto::tls::Wire::Insecure)
            };
            Coordinator::open(config).unwrap()
        };
        assert_eq!(again(false).nodes().unwrap().len(), 2, "kept without the flag");
        let c = again(true);
        assert!(c.nodes().unwrap().is_empty());
        assert!(c.workloads().unwrap().is_empty());
    }

    /// A heartbeat with `gib` GiB of memory available.
    async fn beat_with_memory(
        s: &Service,
        node: &str,
        gib: u64,
        workloads: Vec<apb::ProcessStatus>,
    ) {
        let health =
            apb::HealthCheckResponse { memory_available_bytes: gib << 30, ..Default::default() };
        let r = s
            .heartbeat(Request::new(pb::HeartbeatRequest {
                node: node.into(),
                health: Some(health),
                workloads,
            }))
            .await
            .unwrap();
        assert!(r.into_inner().known);
    }

    fn running(id: &str, rss_gib: u64) -> apb::ProcessStatus {
        apb::ProcessStatus {
            spec: Some(apb::WorkloadSpec { id: id.into(), ..Default::default() }),
            state: apb::ProcessState::Running as i32,
            rss_bytes: rss_gib << 30,
            ..Default::default()
        }
    }

    /// Placement counts a migration in flight to a node as a workload there, and its memory as
    /// taken; a cordoned node is never chosen, and named it is refused.
    #[tokio::test]
    async fn placement_counts_migrations_in_flight_and_skips_cordoned_nodes() {
        let (_d, s) = registered(DEFAULT_KEEP_ENDED).await;
        beat_with_memory(&s, "src", 8, vec![running("w-1", 1)]).await;
        beat_with_memory(&s, "dst", 4, vec![]).await;
        let c = &s.0;
        assert_eq!(c.place(64 << 20, None).unwrap().node, "dst", "fewer workloads");
        c.store
            .insert_migration(&MigrationRow {
                id: "m-1".into(),
                process_id: "w-1".into(),
                source: "src".into(),
                target: "dst".into(),
                mode: "stop-and-copy".into(),
                status: "transfer".into(),
                error: String::new(),
                result: None,
                started_at_ms: 1,
                finished_at_ms: None,
            })
            .unwrap();
        let dst = c.candidates().unwrap().into_iter().find(|n| n.node == "dst").unwrap();
        assert_eq!((dst.workloads, dst.available_bytes), (1, 3 << 30), "{dst:?}");
        // One workload each now: the one with more memory available.
        assert_eq!(c.place(64 << 20, None).unwrap().node, "src");
        c.set_schedulable("src", false).unwrap();
        assert_eq!(c.place(64 << 20, None).unwrap().node, "dst");
        assert!(matches!(c.place(4 << 30, None), Err(CoordError::Unschedulable(_))));
        let e = c.refuse_cordoned("src", "a new process on it").unwrap_err().to_string();
        assert!(e.contains("node src is cordoned"), "{e}");
        assert!(matches!(c.set_schedulable("nope", false), Err(CoordError::NotFound(_))));
        let kinds: Vec<String> =
            c.store.events("", "", 100).unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds.iter().filter(|k| *k == "node_cordoned").count(), 1, "{kinds:?}");
    }

    /// A drain's refusals, and a drain left running by an earlier run ending failed at start.
    #[tokio::test]
    async fn drains_refuse_bad_input_and_a_restart_ends_a_running_one_failed() {
        let (d, s) = registered(DEFAULT_KEEP_ENDED).await;
        beat_with_memory(&s, "src", 8, vec![]).await;
        let c = s.0.clone();
        for deadline in [0, MAX_DEADLINE_SECS + 1] {
            let e = c.start_drain("src", Some(deadline)).unwrap_err();
            assert!(matches!(e, CoordError::Invalid(_)), "{e}");
        }
        assert!(matches!(c.start_drain("nope", None), Err(CoordError::NotFound(_))));
        assert!(c.store.cordoned().unwrap().is_empty(), "a refused drain cordons nothing");
        let running = store::DrainRow {
            id: "d-1".into(),
            node: "src".into(),
            status: "running".into(),
            deadline_ms: None,
            estimate_ms: 0,
            fits: true,
            concurrency: 2,
            message: String::new(),
            started_at_ms: 1,
            ended_at_ms: None,
            items: vec![],
        };
        c.store.insert_drain(&running).unwrap();
        let e = c.start_drain("src", None).unwrap_err();
        assert!(matches!(e, CoordError::Conflict(_)) && e.to_string().contains("d-1"), "{e}");
        let e = c.set_schedulable("src", true).unwrap_err();
        assert!(matches!(e, CoordError::Conflict(_)) && e.to_string().contains("d-1"), "{e}");
        drop((c, s));
        let config =
            CoordinatorConfig::new(d.path().to_path_buf(), ferry_proto::tls::Wire::Insecure);
        let c = Coordinator::open(config).unwrap();
        let d1 = c.drains().unwrap().into_iter().find(|x| x.id == "d-1").unwrap();
        assert_eq!((d1.status.as_str(), d1.message.as_str()), ("failed", drain::INTERRUPTED));
        let ended = c.store.events("", "error", 10).unwrap();
        assert!(
            ended.iter().any(|e| e.kind == "drain_ended" && e.message.contains("d-1")),
            "{ended:?}"
        );
    }

    #[test]
    fn a_failover_grace_shorter_than_three_heartbeats_and_two_seconds_is_refused() {
        let d = std::path::PathBuf::from("/nonexistent");
        let config = |hb_ms, grace_s| CoordinatorConfig {
            heartbeat_interval: Duration::from_millis(hb_ms),
            failover_grace: Duration::from_secs(grace_s),
            ..CoordinatorConfig::new(d.clone(), ferry_proto::tls::Wire::Insecure)
        };
        assert!(config(1000, 5).check().is_ok());
        assert_eq!(config(1000, 30).lease(), Duration::from_secs(15));
        let e = config(1000, 4).check().unwrap_err();
        assert!(e.contains("--failover-grace-secs 4") && e.contains("5 s"), "{e}");
        assert!(config(3000, 10).check().is_err());
        let off = config(5000, 0);
        assert!(off.check().is_ok(), "0 turns failover off");
        assert_eq!(off.lease(), Duration::ZERO);
    }

    fn checkpoint(id: &str, workload: &str, node: &str, holders: &[&str]) -> apb::CheckpointInfo {
        apb::CheckpointInfo {
            id: id.into(),
            workload_id: workload.into(),
            node: node.into(),
            seq: 1,
            taken_at_ms: now_ms(),
            holders: holders.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    async fn report(s: &Service, node: &str, k: apb::CheckpointInfo) -> Result<(), Status> {
        s.report_checkpoint(Request::new(pb::ReportCheckpointRequest {
            node: node.into(),
            checkpoint: Some(k),
        }))
        .await
        .map(|_| ())
    }

    /// Reports are validated, stored, sent live, and a checkpoint with no copy off its node is
    /// one persisted warning per workload; a node a workload was failed over away from is
    /// refused.
    #[tokio::test]
    async fn checkpoint_reports_are_checked_stored_and_warned_about_once() {
        let (_d, s) = registered(DEFAULT_KEEP_ENDED).await;
        let mut live = s.0.subscribe();
        let e = report(&s, "src", checkpoint("", "w-1", "src", &["src"])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = report(&s, "src", checkpoint("c-1", "w-1", "dst", &["src"])).await.unwrap_err();
        assert!(e.message().contains("dst") && e.message().contains("src"), "{e:?}");
        let e = s
            .report_checkpoint(Request::new(pb::ReportCheckpointRequest {
                node: "src".into(),
                checkpoint: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        report(&s, "src", checkpoint("c-1", "w-1", "src", &["src"])).await.unwrap();
        report(&s, "src", checkpoint("c-2", "w-1", "src", &["src"])).await.unwrap();
        report(&s, "src", checkpoint("c-3", "w-1", "src", &["src", "dst"])).await.unwrap();
        let ids: Vec<String> = s.0.checkpoints("w-1").unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids.len(), 3);
        let taken = live.recv().await.unwrap();
        assert_eq!(taken.kind, "checkpoint_taken");
        let data: serde_json::Value = serde_json::from_str(&taken.data).unwrap();
        assert_eq!(data["checkpointId"], "c-1");
        assert_eq!(data["holders"], serde_json::json!(["src"]));
        let kinds: Vec<String> =
            s.0.store.events("w-1", "", 100).unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["checkpoint_unreplicated"], "only the warning is persisted, once");
        s.0.store
            .set_failed_over(&store::FailedOver {
                workload: "w-1".into(),
                from_node: "src".into(),
                to_node: "dst".into(),
                at_ms: 1,
            })
            .unwrap();
        let e = report(&s, "src", checkpoint("c-4", "w-1", "src", &["src"])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(matches!(s.0.checkpoints("nope"), Err(CoordError::NotFound(_))));
    }

    /// The heartbeat's answer: the lease, the other online nodes, and the workloads this node
    /// runs that were failed over away from it (one error event for each).
    #[tokio::test]
    async fn heartbeats_carry_the_lease_the_peers_and_what_to_fence() {
        let (_d, s) = registered(DEFAULT_KEEP_ENDED).await;
        s.0.store
            .set_failed_over(&store::FailedOver {
                workload: "w-1".into(),
                from_node: "src".into(),
                to_node: "dst".into(),
                at_ms: now_ms(),
            })
            .unwrap();
        let running = |id: &str| status(id, "", None);
        for _ in 0..2 {
            let r = s
                .heartbeat(Request::new(pb::HeartbeatRequest {
                    node: "src".into(),
                    workloads: vec![running("w-1"), running("w-2"), status("w-3", "m-1", None)],
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.lease_ms, 15_000);
            assert_eq!(r.fence, ["w-1"]);
            let peers: Vec<(String, String)> =
                r.peers.into_iter().map(|p| (p.node, p.address)).collect();
            assert_eq!(peers, [("dst".to_string(), "http://dst:1".to_string())]);
        }
        let errors = s.0.store.events("w-1", "error", 10).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("src reported w-1 running after it was restored"));
        // Migrated back onto src, committed, the outcome not recorded yet: not a duplicate.
        let back = MigrationRow {
            id: "m-back".into(),
            process_id: "w-1".into(),
            source: "dst".into(),
            target: "src".into(),
            mode: "stop-and-copy".into(),
            status: "commit".into(),
            error: String::new(),
            result: None,
            started_at_ms: now_ms(),
            finished_at_ms: None,
        };
        s.0.store.insert_migration(&back).unwrap();
        assert!(s.0.fence("src", &[running("w-1")]).unwrap().is_empty());
        s.0.store.finish_migration("m-back", "rolled_back", "", None, now_ms()).unwrap();
        assert_eq!(s.0.fence("src", &[running("w-1")]).unwrap(), ["w-1"]);
        assert!(s.0.workload_node("w-1").is_err(), "its report was not recorded");
        // Killed: reported ended, then no more; the row goes.
        beat(&s, "src", vec![status("w-1", "", Some(now_ms()))]).await;
        beat(&s, "src", vec![]).await;
        assert!(s.0.store.failed_over().unwrap().is_empty());
    }

    fn protected(id: &str) -> apb::ProcessStatus {
        let mut s = running(id, 0);
        s.spec.as_mut().unwrap().checkpoint_interval_secs = 30;
        s
    }

    /// A protected workload on a node silent past the grace, with no checkpoint: one
    /// failover_impossible event, not one a sweep.
    #[tokio::test]
    async fn a_failover_with_no_checkpoint_is_announced_once() {
        let d = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig {
            heartbeat_interval: Duration::from_millis(1),
            failover_grace: Duration::from_millis(20),
            ..CoordinatorConfig::new(d.path().to_path_buf(), ferry_proto::tls::Wire::Insecure)
        };
        let s = Service(Coordinator::open(config).unwrap());
        s.register_node(Request::new(pb::RegisterNodeRequest {
            node: "src".into(),
            address: "http://src:1".into(),
            health: None,
        }))
        .await
        .unwrap();
        beat(&s, "src", vec![protected("w-1"), running("w-2", 0)]).await;
        s.0.failover_sweep().unwrap();
        assert!(s.0.store.events("w-1", "error", 10).unwrap().is_empty(), "within the grace");
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..3 {
            s.0.failover_sweep().unwrap();
        }
        let errors = s.0.store.events("", "error", 10).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (errors[0].kind.as_str(), errors[0].process.as_str()),
            ("failover_impossible", "w-1")
        );
        assert!(errors[0].message.contains("no checkpoint at all"), "{}", errors[0].message);
        assert!(s.0.migrations().unwrap().is_empty(), "nothing recorded");
    }

    /// Restores on demand refuse unknown processes and checkpoints, a running copy on an
    /// offline node, and a process that is migrating.
    #[tokio::test]
    async fn restores_on_demand_refuse_what_they_cannot_do_safely() {
        let (_d, s) = registered(DEFAULT_KEEP_ENDED).await;
        let c = s.0.clone();
        beat(&s, "src", vec![protected("w-1")]).await;
        beat(&s, "dst", vec![]).await;
        assert!(matches!(c.restore_checkpoint("nope", None, None), Err(CoordError::NotFound(_))));
        let e = c.restore_checkpoint("w-1", None, None).unwrap_err();
        assert!(
            matches!(e, CoordError::NotFound(_)) && e.to_string().contains("no checkpoint yet")
        );
        report(&s, "src", checkpoint("c-1", "w-1", "src", &["src", "dst"])).await.unwrap();
        let e = c.restore_checkpoint("w-1", Some("c-9"), None).unwrap_err();
        assert!(matches!(e, CoordError::NotFound(_)) && e.to_string().contains("c-9"), "{e}");
        c.store
            .insert_migration(&MigrationRow {
                id: "m-1".into(),
                process_id: "w-1".into(),
                source: "src".into(),
                target: "dst".into(),
                mode: "stop-and-copy".into(),
                status: "transfer".into(),
                error: String::new(),
                result: None,
                started_at_ms: 1,
                finished_at_ms: None,
            })
            .unwrap();
        let e = c.restore_checkpoint("w-1", Some("c-1"), Some("dst")).unwrap_err();
        assert!(matches!(e, CoordError::Migrating(_)) && e.to_string().contains("m-1"), "{e}");
        c.store.finish_migration("m-1", "failed", "", None, 2).unwrap();
        // src goes silent: its running copy cannot be stopped, so nothing is restored.
        c.store.heartbeat("src", b"", 1, now_ms() - 60_000).unwrap();
        let e = c.restore_checkpoint("w-1", None, Some("dst")).unwrap_err();
        assert!(
            matches!(e, CoordError::Unavailable(_)) && e.to_string().contains("offline"),
            "{e}"
        );
        assert_eq!(c.migrations().unwrap().len(), 1, "no restore recorded");
    }

    async fn settled(c: &Coordinator, id: &str) -> MigrationRow {
        for _ in 0..200 {
            let m = c.migrations().unwrap().into_iter().find(|m| m.id == id).unwrap();
            if m.is_final() {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{id} did not end");
    }

    /// A node goes silent past the grace: its protected workload is recorded as a failover,
    /// refused by the first target (the holder with the most memory), restored on the next from
    /// its newest usable checkpoint, and the node, back, is told to kill its copy. Then a restore
    /// on demand stops the running copy first, a checkpoint is taken on request, and a restart
    /// settles unfinished restores by the target's word.
    #[tokio::test]
    async fn failover_restores_on_the_next_target_and_restores_on_demand_stop_the_copy_first() {
        let d = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig {
            heartbeat_interval: Duration::from_millis(100),
            failover_grace: Duration::from_millis(300),
            ..CoordinatorConfig::new(d.path().to_path_buf(), ferry_proto::tls::Wire::Insecure)
        };
        let s = Service(Coordinator::open(config).unwrap());
        let (bad_url, bad) = fake_agent::spawn("bad", Some("a workload w-1 runs here")).await;
        let (good_url, good) = fake_agent::spawn("good", None).await;
        for (node, address) in
            [("lost", "http://127.0.0.1:1".to_string()), ("bad", bad_url), ("good", good_url)]
        {
            s.register_node(Request::new(pb::RegisterNodeRequest {
                node: node.into(),
                address,
                health: None,
            }))
            .await
            .unwrap();
        }
        beat(&s, "lost", vec![protected("w-1")]).await;
        let now = now_ms();
        let mut older = checkpoint("c-1", "w-1", "lost", &["lost", "good"]);
        older.taken_at_ms = now - 30_000;
        let mut newest = checkpoint("c-2", "w-1", "lost", &["lost", "bad", "good"]);
        newest.taken_at_ms = now - 1_000;
        newest.seq = 2;
        report(&s, "lost", older).await.unwrap();
        report(&s, "lost", newest).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        beat_with_memory(&s, "bad", 16, vec![]).await;
        beat_with_memory(&s, "good", 8, vec![]).await;
        s.0.failover_sweep().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let m = s.0.migrations().unwrap().into_iter().find(|m| m.mode == "failover").unwrap();
        let m = settled(&s.0, &m.id).await;
        assert_eq!(
            (m.status.as_str(), m.source.as_str(), m.target.as_str()),
            ("completed", "lost", "good"),
            "{m:?}"
        );
        assert_eq!(bad.lock().unwrap().restores.len(), 1, "tried first");
        let r = good.lock().unwrap().restores[0].clone();
        assert_eq!(r.restore_id, m.id);
        assert_eq!(r.checkpoint.as_ref().unwrap().id, "c-2");
        let peers: Vec<String> = r.holders.iter().map(|p| p.node.clone()).collect();
        assert_eq!(peers, ["good", "bad"], "the target first, the lost node never");
        assert!(r.reason.starts_with("failover from node lost: "), "{}", r.reason);
        assert_eq!(s.0.workload_node("w-1").unwrap().0, "good");
        let f = s.0.store.failed_over().unwrap();
        assert_eq!((f[0].from_node.as_str(), f[0].to_node.as_str()), ("lost", "good"));
        let events = s.0.store.events("w-1", "", 100).unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert!(kinds.contains(&"failover_started"), "{kinds:?}");
        let done = events.iter().find(|e| e.kind == "failover_completed").unwrap();
        let data: serde_json::Value = serde_json::from_str(&done.data).unwrap();
        assert_eq!((data["to"].as_str(), data["lostSeconds"].as_i64()), (Some("good"), Some(1)));
        assert!(data["downSeconds"].is_i64(), "{data}");
        // Another sweep does nothing more: the record is on good, running.
        s.0.failover_sweep().unwrap();
        assert_eq!(s.0.migrations().unwrap().len(), 1);
        // The lost node comes back with its copy: fenced, and its report does not win.
        let r = s
            .heartbeat(Request::new(pb::HeartbeatRequest {
                node: "lost".into(),
                workloads: vec![protected("w-1")],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.fence, ["w-1"]);
        assert_eq!(s.0.workload_node("w-1").unwrap().0, "good");
        assert!(s.0.migration_in_flight("w-1").unwrap().is_none(), "nothing blocks it now");

        // A restore on demand: the copy on good is stopped, then restored there.
        beat_with_memory(&s, "good", 8, vec![protected("w-1")]).await;
        let m = s.0.restore_checkpoint("w-1", Some("c-1"), None).unwrap();
        assert_eq!((m.mode.as_str(), m.target.as_str()), ("restore", "good"));
        let e = s.0.restore_checkpoint("w-1", None, None).unwrap_err();
        assert!(matches!(e, CoordError::Migrating(_)), "one at a time: {e}");
        let m = settled(&s.0, &m.id).await;
        assert_eq!(m.status, "completed", "{m:?}");
        let calls = good.lock().unwrap().calls.clone();
        let tail: Vec<&str> = calls.iter().rev().take(2).rev().map(|c| c.as_str()).collect();
        assert_eq!(tail, ["StopProcess w-1", "RestoreCheckpoint w-1"]);
        assert_eq!(
            good.lock().unwrap().restores.last().unwrap().checkpoint.as_ref().unwrap().id,
            "c-1"
        );
        let kinds: Vec<String> =
            s.0.store.events("w-1", "", 100).unwrap().into_iter().map(|e| e.kind).collect();
        assert!(kinds.iter().any(|k| k == "restore_completed"), "{kinds:?}");

        // A checkpoint on request is recorded.
        let k = s.0.take_checkpoint("w-1").await.unwrap();
        assert_eq!(k.id, "c-now");
        assert_eq!(s.0.checkpoints("w-1").unwrap()[0].id, "c-now");

        // Unfinished at a restart: settled by the target's word.
        for (id, w) in [("m-run", "w-1"), ("m-none", "w-9")] {
            s.0.store
                .insert_migration(&MigrationRow {
                    id: id.into(),
                    process_id: w.into(),
                    source: "lost".into(),
                    target: "good".into(),
                    mode: "failover".into(),
                    status: "restore".into(),
                    error: String::new(),
                    result: None,
                    started_at_ms: now_ms(),
                    finished_at_ms: None,
                })
                .unwrap();
        }
        s.0.resolve_restores().unwrap();
        assert_eq!(settled(&s.0, "m-run").await.status, "completed");
        let none = settled(&s.0, "m-none").await;
        assert_eq!(none.status, "failed");
        assert!(none.error.contains("interrupted") && none.error.contains("w-9"), "{}", none.error);
    }

    fn with_address(mut s: apb::ProcessStatus, address: &str) -> apb::ProcessStatus {
        s.spec.as_mut().unwrap().address = address.into();
        s
    }

    /// Reports carrying an address the database does not hold (a coordinator on a fresh
    /// database) record it for that workload; another workload reporting it is one warning
    /// event naming both; the address is freed once its workload's end is reported.
    #[tokio::test]
    async fn reported_addresses_are_recorded_conflicts_announced_and_ends_release_them() {
        let (_d, s) = registered(DEFAULT_KEEP_ENDED).await;
        beat(&s, "src", vec![with_address(status("w-1", "", None), "10.9.0.1")]).await;
        assert_eq!(s.0.store.addresses().unwrap(), [("10.9.0.1".into(), "w-1".into())]);
        // An ended workload's address is not claimed again.
        beat(&s, "dst", vec![with_address(status("w-0", "", Some(now_ms())), "10.9.0.9")]).await;
        assert_eq!(s.0.store.addresses().unwrap().len(), 1);
        let range = WorkloadRange::parse("10.9.0.0/29").unwrap();
        let next = s.0.store.allocate_address(&range, "w-2", now_ms()).unwrap().unwrap();
        assert_eq!(next.to_string(), "10.9.0.2", "the reported one is never handed out");
        s.0.store.bind_address("w-2").unwrap();
        for _ in 0..3 {
            beat(&s, "dst", vec![with_address(status("w-3", "", None), "10.9.0.1")]).await;
        }
        let conflicts: Vec<Event> =
            s.0.store
                .events("", "warn", 100)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == "address_conflict")
                .collect();
        assert_eq!(conflicts.len(), 1, "announced once: {conflicts:?}");
        let msg = &conflicts[0].message;
        assert!(msg.contains("10.9.0.1") && msg.contains("w-1") && msg.contains("w-3"), "{msg}");
        assert_eq!(s.0.store.addresses().unwrap()[0], ("10.9.0.1".into(), "w-1".into()));
        // w-1 ends: its address is free at that heartbeat.
        beat(&s, "src", vec![with_address(status("w-1", "", Some(now_ms())), "10.9.0.1")]).await;
        assert_eq!(s.0.store.addresses().unwrap(), [("10.9.0.2".into(), "w-2".into())]);
    }

    #[test]
    fn the_history_is_pruned_by_its_flags_a_batch_at_a_time_at_most_once_a_minute() {
        let d = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig {
            keep_migrations: Retention { keep: 1, max_age_ms: 0 },
            keep_events: Retention { keep: 2, max_age_ms: 0 },
            ..CoordinatorConfig::new(d.path().to_path_buf(), ferry_proto::tls::Wire::Insecure)
        };
        let c = Coordinator::open(config).unwrap();
        let rows: Vec<MigrationRow> = (0..3)
            .map(|i| MigrationRow {
                id: format!("m-{i}"),
                process_id: "w".into(),
                source: "a".into(),
                target: "b".into(),
                mode: "stop-and-copy".into(),
                status: "completed".into(),
                error: String::new(),
                result: None,
                started_at_ms: i,
                finished_at_ms: Some(i + 1),
            })
            .collect();
        c.store.import_migrations(&rows).unwrap();
        for i in 0..4 {
            c.emit("node_online", "info", "a", "", format!("event {i}")).unwrap();
        }
        // Older than the age (0): strictly before now.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.prune_history().unwrap(), (2, 2));
        let left: Vec<String> = c.migrations().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(left, ["m-2"], "the newest kept");
        c.store
            .import_migrations(&[MigrationRow {
                id: "m-3".into(),
                started_at_ms: 3,
                ..rows[0].clone()
            }])
            .unwrap();
        assert_eq!(c.prune_history().unwrap(), (0, 0), "not again within the minute");
    }
}
