//! The source's side of a migration: the whole transaction, driven from here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::agent as pb;
use ferry_proto::agent::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use super::ledger::{self, OutStep};
use super::preflight::{self, SourceFacts};
use super::{CrashPoint, Fault, Phase, Timeline};
use crate::agent::Agent;
use crate::engine::lazy::PageCount;
use crate::engine::{self, CheckpointDirs};
use crate::error::{AgentError, Result};
use crate::snapshot::send::{self, Progress};
use crate::snapshot::{self as snap, Sources};
use crate::workload::{continue_tree, stop_tree, Engine, Workload};

/// How long to wait for the target to answer a connection or a health check.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the target may take to set memory aside for the pages (before the freeze).
const RESERVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the target may take to lay out a workload's network namespace (before the freeze).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(15);
/// Until the commit, a target that stops answering (its host frozen, a partition that drops
/// packets silently, its agent stopped) must fail the migration, so the original resumes; TCP
/// alone would wait for ever (a stopped process's kernel keeps acknowledging) or about 15
/// minutes. The migration's connection therefore sends HTTP/2 pings this often, and gives up
/// when one is not answered within `PING_TIMEOUT`.
const PING_INTERVAL: Duration = Duration::from_secs(5);
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Commit is retried this many times before the migration is reported failed.
const COMMIT_TRIES: u32 = 3;

/// A request to move one workload to another agent.
#[derive(Debug, Clone)]
pub struct MigrateOut {
    pub workload_id: String,
    pub target: String,
    pub migration_id: Option<String>,
    pub fault: Fault,
    /// Post-copy: resume on the target before the memory pages arrive (CRIU engine only).
    pub post_copy: bool,
}

/// How a migration ended, with its figures.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    pub migration_id: String,
    pub workload_id: String,
    pub source_node: String,
    pub target_node: String,
    pub engine: Engine,
    /// Completed, RolledBack or Failed.
    pub outcome: Phase,
    pub error: Option<String>,
    pub failed_phase: Option<Phase>,
    pub timeline: Timeline,
    pub downtime_ms: i64,
    pub total_ms: i64,
    pub restore_ms: i64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    pub target_status: Option<pb::ProcessStatus>,
    pub criu_log: Option<std::path::PathBuf>,
    pub post_copy: bool,
    /// Post-copy: the workload's memory pages on the target at the end (remaining: those that
    /// never arrived).
    pub post_copy_pages: Option<PageCount>,
    /// How the chunks were encoded, and why.
    pub transfer_codec: String,
    /// Raw bytes of zero pages that did not travel.
    pub bytes_zero: u64,
}

/// Releases the workload's one-migration-at-a-time flag however the migration ends.
struct Busy(Arc<Workload>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end_migration();
    }
}

/// A failure inside the transaction: the phase, what to tell the user, and whether the original
/// may resume (no copy elsewhere can run).
struct Failure {
    phase: Phase,
    message: String,
    criu_log: Option<std::path::PathBuf>,
    roll_back: bool,
}

fn fail(phase: Phase, message: impl Into<String>) -> Failure {
    Failure { phase, message: message.into(), criu_log: None, roll_back: phase.can_roll_back() }
}

/// What became of CommitMigration.
enum Commit {
    Confirmed,
    /// The target said it did not resume its copy, or no attempt reached it: that copy never
    /// runs (it resumes on CommitMigration only).
    NotResumed(String),
    /// No answer, after an attempt that may have reached it: the copy may run there.
    Unknown(String),
}

impl Agent {
    pub async fn migrate_out(self: &Arc<Self>, req: MigrateOut) -> Result<MigrationReport> {
        if req.target.trim().is_empty() {
            return Err(AgentError::InvalidRequest(
                "target address is empty: give the target agent's gRPC address, e.g. http://10.0.0.2:50051".into(),
            ));
        }
        if req.fault != Fault::None && !self.config().fault_injection {
            return Err(AgentError::InvalidRequest(
                "fault injection is disabled on this agent (start it with --enable-fault-injection)".into(),
            ));
        }
        let endpoint = self.config().wire.endpoint(&req.target).map_err(|e| {
            AgentError::InvalidRequest(format!(
                "target address {:?} is not a URI like https://host:port: {e}",
                req.target
            ))
        })?;
        let w = self.get(&req.workload_id)?;
        self.require_alive(&w, "migrate")?;
        if req.post_copy && w.spec.engine != Engine::Criu {
            return Err(AgentError::InvalidRequest(format!(
                "post-copy needs the CRIU engine; workload {} uses the cooperative one",
                w.id()
            )));
        }
        if w.pending_migration().is_some() {
            return Err(AgentError::BadState {
                id: w.id().to_string(),
                state: "arriving by migration (not yet committed)".into(),
                op: "migrate",
                hint: "; wait for its migration to finish",
            });
        }
        let mid =
            req.migration_id.clone().unwrap_or_else(|| crate::workload::start::new_id_with("m"));
        if !crate::workload::valid_id(&mid) {
            return Err(AgentError::InvalidRequest(format!(
                "migration id {mid:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )));
        }
        crate::checkpoint::wait_checkpoint(&w).await;
        if !w.begin_migration(&mid, &req.target) {
            return Err(w.require_not_migrating("migrate").err().unwrap_or(AgentError::BadState {
                id: w.id().to_string(),
                state: "already migrating".into(),
                op: "migrate",
                hint: "; one migration per workload at a time",
            }));
        }
        let _busy = Busy(w.clone());
        let progress = Arc::new(Progress::default());
        let live = Arc::new(super::Live {
            workload_id: w.id().to_string(),
            phases: std::sync::Mutex::new(Vec::new()),
            progress: progress.clone(),
            post_copy_pages: std::sync::Mutex::new(None),
        });
        self.record_migration(&mid, super::MigrationState::Running(live.clone()));
        let started = crate::sys::now_ms();
        let mut run = Run {
            agent: self.clone(),
            w: w.clone(),
            mid: mid.clone(),
            target: req.target.clone(),
            fault: req.fault,
            tl: Timeline::default(),
            client: None,
            tunnel_client: None,
            target_node: String::new(),
            was_paused: w.is_paused(),
            self_stopped: Vec::new(),
            journaled: false,
            frozen: false,
            held_net: false,
            prepared_net: false,
            pushed: false,
            reserved: false,
            progress,
            live,
            layout: None,
            restore_ms: 0,
            target_status: None,
            post_copy: req.post_copy,
            lazy: None,
            tunnel: None,
            pages: None,
        };
        tracing::info!(migration = mid, id = w.id(), target = req.target, "migration starting");
        let result = run.forward(endpoint).await;
        let mut report = MigrationReport {
            migration_id: mid.clone(),
            workload_id: w.id().to_string(),
            source_node: self.config().node.clone(),
            target_node: run.target_node.clone(),
            engine: w.spec.engine,
            outcome: Phase::Completed,
            error: None,
            failed_phase: None,
            timeline: Timeline::default(),
            downtime_ms: 0,
            total_ms: 0,
            restore_ms: run.restore_ms,
            bytes_raw: run.progress.bytes_raw.load(Ordering::Relaxed),
            bytes_wire: run.progress.bytes_wire.load(Ordering::Relaxed),
            target_status: run.target_status.clone(),
            criu_log: None,
            post_copy: req.post_copy,
            post_copy_pages: *run.live.post_copy_pages.lock().expect("live pages poisoned"),
            transfer_codec: run.progress.codec.lock().expect("codec note poisoned").clone(),
            bytes_zero: run.progress.bytes_zero.load(Ordering::Relaxed),
        };
        match result {
            Ok(()) => {
                tracing::info!(migration = mid, id = w.id(), "migration completed");
            }
            Err(f) => {
                report.failed_phase = Some(f.phase);
                report.criu_log = f.criu_log.clone();
                if f.roll_back {
                    match run.roll_back().await {
                        Ok(()) => {
                            report.outcome = Phase::RolledBack;
                            report.error = Some(f.message);
                        }
                        Err(e) => {
                            report.outcome = Phase::Failed;
                            report.error =
                                Some(format!("{}; and the rollback failed too: {e}", f.message));
                        }
                    }
                } else {
                    report.outcome = Phase::Failed;
                    report.error = Some(f.message);
                }
                tracing::warn!(
                    migration = mid,
                    id = w.id(),
                    phase = f.phase.as_str(),
                    outcome = report.outcome.as_str(),
                    error = report.error.as_deref().unwrap_or(""),
                    "migration did not complete"
                );
            }
        }
        // Scratch files go; CRIU's log of a failure stays where the report says.
        if !self.config().keep_scratch {
            let scratch = self.config().data_dir.join("migrations").join(&mid);
            let _ = std::fs::remove_dir_all(scratch.join("images"));
            if report.criu_log.is_none() {
                let _ = std::fs::remove_dir_all(&scratch);
            }
        }
        report.timeline = run.tl.clone();
        let freeze_start = run.tl.start_of(Phase::Freezing);
        // Running again: on the target once the commit was confirmed, else on the source.
        let running_again = run
            .tl
            .end_of(Phase::Committing)
            .filter(|_| report.outcome != Phase::RolledBack)
            .or_else(|| run.tl.phases.last().map(|p| p.2))
            .unwrap_or(started);
        report.downtime_ms = freeze_start.map(|f| running_again - f).unwrap_or(0);
        report.total_ms = crate::sys::now_ms() - started;
        // A commit nobody answered is resolved in the background (migrate::recovery), which
        // records the migration's end for GetMigration once it knows it.
        let handed_over = run.journaled && run.journal_end(&report);
        if !handed_over {
            self.record_migration(&mid, super::MigrationState::Done(Box::new(report.clone())));
        }
        Ok(report)
    }
}

/// One migration in flight on the source.
struct Run {
    agent: Arc<Agent>,
    w: Arc<Workload>,
    mid: String,
    target: String,
    fault: Fault,
    tl: Timeline,
    client: Option<AgentClient<Channel>>,
    /// Post-copy: the page tunnel's own connection, without the pings. After the commit it
    /// carries pages only the source has to a workload running on the target, so a target that
    /// is slow to answer is waited for rather than given up on (which would lose the workload).
    tunnel_client: Option<AgentClient<Channel>>,
    target_node: String,
    was_paused: bool,
    /// Pids (in its PID namespace) of the tasks the workload had stopped itself before the
    /// freeze: they stay stopped on either side.
    self_stopped: Vec<i32>,
    /// A ledger record of this migration was written (migrate::ledger).
    journaled: bool,
    frozen: bool,
    /// The workload's own address is held here (its packets wait in the hold, sys::net): a
    /// rollback takes it back, a commit hands it over.
    held_net: bool,
    /// The target laid out the workload's network namespace (PrepareNetwork): an abort lets it go.
    prepared_net: bool,
    pushed: bool,
    /// The target set memory aside for the pages (ReservePages): an abort gives it back.
    reserved: bool,
    progress: Arc<Progress>,
    restore_ms: i64,
    target_status: Option<pb::ProcessStatus>,
    post_copy: bool,
    lazy: Option<crate::engine::criu::LazyDump>,
    /// Post-copy: the opening of the page tunnel, started with the push.
    tunnel: Option<tokio::task::JoinHandle<std::result::Result<(), String>>>,
    /// Stop-and-copy with CRIU: the memory pages on their way to the target while the dump runs.
    pages: Option<tokio::task::JoinHandle<std::result::Result<pb::PageStreamEnd, String>>>,
    live: Arc<super::Live>,
    /// CRIU: the smaps read before the freeze and their watch (or a do-nothing perf event), kept
    /// until the run ends (closing the counters is slow, and while a task perf event is open CRIU
    /// sets its breakpoints quickly).
    layout: Option<super::layout::Before>,
}

impl Run {
    /// This migration's ledger record at `step`.
    fn record(&self, step: OutStep) -> ledger::Outgoing {
        ledger::Outgoing {
            migration_id: self.mid.clone(),
            workload_id: self.w.id().to_string(),
            target: self.target.clone(),
            target_node: self.target_node.clone(),
            post_copy: self.post_copy,
            was_paused: self.was_paused,
            self_stopped: self.self_stopped.clone(),
            step,
            outcome: None,
            error: None,
            at_ms: crate::sys::now_ms(),
        }
    }

    /// Writes this migration's ledger record at `step` (migrate::ledger).
    fn journal(&mut self, step: OutStep) -> std::io::Result<()> {
        ledger::write_out(&self.agent.config().data_dir, &self.record(step))?;
        self.journaled = true;
        Ok(())
    }

    /// The migration is over: its record says how, for an hour (GetMigration after a restart).
    /// A commit whose answer never came stays `Committing`: the recovery asks the target again
    /// until it answers (migrate::recovery).
    fn journal_end(&mut self, report: &MigrationReport) -> bool {
        // The original is still frozen here and the target has not said what it did.
        let unresolved = report.outcome == Phase::Failed
            && report.failed_phase == Some(Phase::Committing)
            && self.w.exit_info().is_none();
        if unresolved {
            super::recovery::spawn(self.agent.clone(), self.record(OutStep::Committing));
            return true;
        }
        let r = ledger::Outgoing {
            outcome: Some(report.outcome.as_str().to_string()),
            error: report.error.clone(),
            ..self.record(OutStep::Ended)
        };
        if let Err(e) = ledger::write_out(&self.agent.config().data_dir, &r) {
            tracing::warn!(migration = self.mid, %e, "cannot record the end of the migration");
        }
        false
    }

    /// Enters phase `p`: on the timeline and for anyone watching (GetMigration).
    fn begin(&mut self, p: Phase) {
        self.tl.begin(p);
        self.note(p, crate::sys::now_ms());
    }

    /// Tells watchers (GetMigration) that phase `p` began at `at`.
    fn note(&self, p: Phase, at: i64) {
        self.live.phases.lock().expect("live phases poisoned").push((p, at));
    }
    async fn forward(&mut self, endpoint: Endpoint) -> std::result::Result<(), Failure> {
        self.begin(Phase::Preflight);
        self.preflight(endpoint).await?;
        let engine = self.w.spec.engine;
        if engine::freezes_first(engine) {
            // CRIU: its smaps are read now, and used if nothing changed until the freeze.
            let before = self.read_layout().await;
            self.tl.end();
            self.freeze().await?;
            let smaps = before.as_ref().and_then(|b| b.still_holds(&self.w, &self.mid));
            self.layout = before;
            self.checkpoint(smaps).await?;
        } else {
            self.tl.end();
            self.checkpoint(None).await?;
            self.freeze().await?;
        }
        self.transfer().await?;
        self.commit().await
    }

    async fn preflight(&mut self, endpoint: Endpoint) -> std::result::Result<(), Failure> {
        let p = Phase::Preflight;
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20);
        let pinged = endpoint
            .clone()
            .http2_keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true);
        let mut client = self.connect(pinged).await?;
        if self.post_copy {
            // Opened now, before the freeze: its handshake must not delay the restore.
            self.tunnel_client = Some(self.connect(endpoint).await?);
        }
        let health =
            tokio::time::timeout(CONNECT_TIMEOUT, client.health_check(pb::HealthCheckRequest {}))
                .await
                .map_err(|_| {
                    fail(
                        p,
                        format!("target agent at {} did not answer its health check", self.target),
                    )
                })?
                .map_err(|s| {
                    fail(
                        p,
                        format!(
                            "target agent at {} refused its health check: {}",
                            self.target,
                            s.message()
                        ),
                    )
                })?
                .into_inner();
        self.target_node = health.node.clone();
        let agent = self.agent.clone();
        let w = self.w.clone();
        let (host, estimate, images, established) = tokio::task::spawn_blocking(move || {
            let status = agent.status_of(&w);
            let pids: Vec<i32> = status.tasks.iter().map(|t| t.info.pid).collect();
            let established = crate::sys::net::established_tcp(&pids);
            let work = if w.spec.cwd.is_none() { dir_size(&w.cwd) } else { 0 };
            // Each process's pages image: CRIU's image id and its anonymous memory.
            let images: Vec<pb::PageReservation> = status
                .tasks
                .iter()
                .filter(|t| t.ns_pid > 0)
                .map(|t| pb::PageReservation {
                    image_id: (t.ns_pid as u64) << 8 | 1,
                    bytes: crate::sys::proc::anon_bytes(t.info.pid).unwrap_or(0),
                })
                .collect();
            let bytes = status.rss_bytes + work + dir_size(w.log.path());
            (crate::sys::host::facts(), bytes, images, established)
        })
        .await
        .map_err(|e| fail(p, e.to_string()))?;
        // A stock CRIU reads every task's rlimits with prlimit, which for a process of another
        // user needs CAP_SYS_RESOURCE: refuse here rather than fail the dump of a frozen
        // workload. Ferry's build (patch 0007) reads them from /proc/PID/limits instead.
        let criu = self.agent.criu();
        if self.w.spec.engine == Engine::Criu
            && !criu.is_ferry_build()
            && !crate::sys::host::has_cap_sys_resource()
        {
            let creds = self.agent.credentials(&self.w.spec).map_err(|e| fail(p, e.to_string()))?;
            if let Some(c) = creds.filter(|c| c.uid != 0 || c.gid != 0) {
                let git_id = if criu.git_id.is_empty() { "none" } else { criu.git_id.as_str() };
                return Err(fail(
                    p,
                    format!(
                        "node {} cannot checkpoint workload {} with CRIU: it runs as uid {}, gid \
                         {}, and a stock CRIU needs CAP_SYS_RESOURCE to read its resource \
                         limits, which this agent lacks; {} (version {}, GitID {git_id}) is not \
                         ferry's build: install that with scripts/setup.sh (its patch 0007 reads \
                         them from /proc/PID/limits)",
                        self.agent.config().node,
                        self.w.id(),
                        c.uid,
                        c.gid,
                        criu.path.as_deref().unwrap_or(std::path::Path::new("criu")).display(),
                        criu.version,
                    ),
                ));
            }
        }
        let problems = preflight::check(
            &SourceFacts {
                node: &self.agent.config().node,
                kernel: &host.kernel,
                cpu_flags: &host.cpu_flags,
                uses_criu: self.w.spec.engine == Engine::Criu,
                estimated_bytes: estimate + estimate / 10,
                address: self.w.net.as_ref().map(|n| n.address),
                established: &established,
            },
            &health,
        );
        if !problems.is_empty() {
            return Err(fail(
                p,
                format!(
                    "node {} cannot take workload {}: {}",
                    health.node,
                    self.w.id(),
                    problems.join("; ")
                ),
            ));
        }
        // A workload with its own address: the target lays out its namespace now, outside the
        // downtime.
        if let Some(net) = self.w.net.clone() {
            let req = pb::PrepareNetworkRequest {
                migration_id: self.mid.clone(),
                workload_id: self.w.id().to_string(),
                address: net.address.to_string(),
            };
            match tokio::time::timeout(NETWORK_TIMEOUT, client.prepare_network(req)).await {
                Ok(Ok(_)) => self.prepared_net = true,
                // An agent without the call lays it out in the restore.
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {}
                Ok(Err(s)) => {
                    // Laid out or not, an abort lets go of it.
                    self.prepared_net = true;
                    return Err(fail(
                        p,
                        format!(
                            "node {} cannot lay out the network of address {}: {}; the \
                             workload keeps running here",
                            health.node,
                            net.address,
                            s.message()
                        ),
                    ));
                }
                Err(_) => {
                    self.prepared_net = true;
                    return Err(fail(
                        p,
                        format!(
                            "target agent {} did not lay out the network of address {} within \
                             {NETWORK_TIMEOUT:?}; the workload keeps running here",
                            health.node, net.address
                        ),
                    ));
                }
            }
        }
        // Stop-and-copy with CRIU: the target sets memory aside for the pages before the freeze.
        if !self.post_copy && self.w.spec.engine == Engine::Criu {
            let req = pb::ReservePagesRequest { migration_id: self.mid.clone(), images };
            match tokio::time::timeout(RESERVE_TIMEOUT, client.reserve_pages(req)).await {
                Ok(Ok(r)) => {
                    self.reserved = true;
                    tracing::debug!(
                        migration = self.mid,
                        bytes = r.into_inner().bytes_reserved,
                        "target set memory aside for the pages"
                    )
                }
                // The connection broke (the keep-alive pings went unanswered) or the target
                // never answered: it is gone or stopped. Nothing is frozen yet: give up here, as
                // a stream to it would wait on a reconnection that never completes.
                Ok(Err(s)) if is_transport(&s) => {
                    return Err(fail(
                        p,
                        format!(
                            "target agent {} at {} stopped answering before the freeze ({}); the \
                             workload keeps running here",
                            self.target_node,
                            self.target,
                            s.message()
                        ),
                    ))
                }
                Ok(Err(s)) => tracing::warn!(
                    migration = self.mid,
                    "target {} set no memory aside for the pages: {}",
                    self.target_node,
                    s.message()
                ),
                Err(_) => {
                    return Err(fail(
                        p,
                        format!(
                            "target agent {} at {} did not answer within {RESERVE_TIMEOUT:?} \
                             before the freeze; the workload keeps running here",
                            self.target_node, self.target
                        ),
                    ))
                }
            }
        }
        self.client = Some(client);
        Ok(())
    }

    async fn freeze(&mut self) -> std::result::Result<(), Failure> {
        self.begin(Phase::Freezing);
        let w = self.w.clone();
        self.self_stopped = if self.was_paused {
            w.self_stopped()
        } else {
            let w = w.clone();
            tokio::task::spawn_blocking(move || crate::workload::stopped_tasks(&w))
                .await
                .map_err(|e| fail(Phase::Freezing, e.to_string()))?
        };
        // On disk before the first task stops: an agent restarted from here on resumes the
        // original (no commit was sent) and aborts the target's copy (migrate::recovery).
        self.journal(OutStep::Frozen).map_err(|e| {
            fail(
                Phase::Freezing,
                format!("cannot record migration {} before the freeze: {e}", self.mid),
            )
        })?;
        self.frozen = true;
        if let Some(net) = self.w.net.clone() {
            // From here until the target answers for the address, or a rollback, its packets
            // wait in this agent: none reaches the freezing workload, none is answered twice.
            self.held_net = true;
            self.agent.hold_network(&net).await.map_err(|e| {
                fail(
                    Phase::Freezing,
                    format!(
                        "cannot hold the packets of address {} on node {}: {e}",
                        net.address,
                        self.agent.config().node
                    ),
                )
            })?;
        }
        tokio::task::spawn_blocking(move || stop_tree(&w))
            .await
            .map_err(|e| fail(Phase::Freezing, e.to_string()))?
            .map_err(|e| {
                fail(Phase::Freezing, format!("cannot freeze workload {}: {e}", self.w.id()))
            })?;
        self.fault.crash_at(CrashPoint::Frozen, &self.mid);
        self.tl.end();
        Ok(())
    }

    /// A client of the target agent over a connection of its own made from `endpoint`.
    async fn connect(
        &self,
        endpoint: Endpoint,
    ) -> std::result::Result<AgentClient<Channel>, Failure> {
        let channel = endpoint.connect().await.map_err(|e| {
            fail(
                Phase::Preflight,
                format!("target agent at {} is unreachable: {}", self.target, source_chain(&e)),
            )
        })?;
        Ok(AgentClient::new(channel)
            .max_decoding_message_size(snap::MAX_PAYLOAD * 2)
            .max_encoding_message_size(snap::MAX_PAYLOAD * 2))
    }

    /// Reads the workload's smaps before the freeze (migrate::layout).
    async fn read_layout(&self) -> Option<super::layout::Before> {
        let (w, dir, mid) = (self.w.clone(), self.scratch().join("smaps"), self.mid.clone());
        tokio::task::spawn_blocking(move || super::layout::read(&w, &dir, &mid)).await.ok()
    }

    fn scratch(&self) -> std::path::PathBuf {
        self.agent.config().data_dir.join("migrations").join(&self.mid)
    }

    async fn checkpoint(
        &mut self,
        smaps: Option<std::path::PathBuf>,
    ) -> std::result::Result<(), Failure> {
        self.begin(Phase::Checkpointing);
        let (agent, w, scratch) = (self.agent.clone(), self.w.clone(), self.scratch());
        let engine = w.spec.engine;
        let post_copy = self.post_copy;
        // Stop-and-copy with CRIU: the pages go to the target while the dump runs.
        let pages = if !post_copy && engine == Engine::Criu {
            let client = self.client.clone().expect("connected in preflight");
            let (mid, node) = (self.mid.clone(), self.target_node.clone());
            let out =
                super::pages::start(client, mid, node, self.fault.send(), self.progress.clone())
                    .map_err(|e| {
                        fail(Phase::Checkpointing, format!("cannot start the page stream: {e}"))
                    })?;
            self.pages = Some(out.done);
            Some(out.criu_end)
        } else {
            None
        };
        let res = tokio::task::spawn_blocking(move || {
            let dirs = CheckpointDirs {
                images: &scratch.join("images"),
                work: &scratch.join("criu"),
                smaps: smaps.as_deref(),
                survives: false,
            };
            match pages {
                _ if post_copy => crate::engine::criu::start_lazy_dump(&agent, &w, &dirs).map(Some),
                Some(pages) => {
                    crate::engine::criu::dump_to_page_stream(&agent, &w, &dirs, pages).map(|_| None)
                }
                None => engine::checkpoint(engine, &agent, &w, &dirs).map(|_| None),
            }
        })
        .await
        .map_err(|e| fail(Phase::Checkpointing, e.to_string()))?;
        match res {
            Ok(lazy) => self.lazy = lazy,
            Err(e) => {
                let log = e.log().map(|l| l.to_path_buf());
                let mut why = e.to_string();
                // A dump cut short by the page stream: what ended that stream comes first.
                if let Some(t) = self.pages.take() {
                    if let Ok(Ok(Err(stream))) =
                        tokio::time::timeout(Duration::from_secs(5), t).await
                    {
                        why = format!(
                            "the page stream to node {} ended: {stream}; so {why}",
                            self.target_node
                        );
                    }
                }
                return Err(Failure { criu_log: log, ..fail(Phase::Checkpointing, why) });
            }
        }
        self.tl.end();
        Ok(())
    }

    async fn transfer(&mut self) -> std::result::Result<(), Failure> {
        self.begin(Phase::Transferring);
        let p = Phase::Transferring;
        let scratch = self.scratch();
        let w = self.w.clone();
        let ships_workdir = w.spec.cwd.is_none();
        let images = scratch.join("images");
        // The pages went ahead (PushPages): the target must have them all before the rest.
        let page_stream = match self.pages.take() {
            None => None,
            Some(t) => Some(
                t.await
                    .map_err(|e| fail(p, format!("the page stream task failed: {e}")))?
                    .map_err(|e| fail(p, e))?,
            ),
        };
        let pages_codec = page_stream
            .as_ref()
            .map(|_| self.progress.codec.lock().expect("codec note poisoned").clone());
        let entries = {
            let (images, cwd, log) = (images.clone(), w.cwd.clone(), w.log.path().to_path_buf());
            tokio::task::spawn_blocking(move || {
                snap::collect(&Sources {
                    images: &images,
                    work: ships_workdir.then_some(cwd.as_path()),
                    log: Some(&log),
                })
            })
            .await
            .map_err(|e| fail(p, e.to_string()))?
            .map_err(|e| fail(p, format!("cannot read the snapshot's files: {e}")))?
        };
        let manifest = pb::Manifest {
            format_version: snap::FORMAT_VERSION,
            migration_id: self.mid.clone(),
            spec: Some(crate::grpc::spec_to_pb(&w.spec)),
            source_node: self.agent.config().node.clone(),
            files: entries.iter().map(|e| e.file.clone()).collect(),
            digest: snap::DIGEST.into(),
            restore: Some(pb::RestoreInfo {
                paused: self.was_paused,
                stopped_ns_pids: self.self_stopped.clone(),
                ships_workdir,
                lazy_pages: self.lazy.is_some(),
                hold_restore_ms: match self.fault {
                    Fault::HoldRestore(d) => d.as_millis().min(u32::MAX.into()) as u32,
                    _ => 0,
                },
                page_stream,
                ..crate::grpc::restore_info_of(&w)
            }),
        };
        let snapshot_bytes = entries.iter().map(|e| e.file.size).sum::<u64>()
            + manifest.restore.as_ref().and_then(|r| r.page_stream.as_ref()).map_or(0, |p| p.bytes);
        let deadline =
            self.agent.config().restore_deadline.unwrap_or(restore_deadline(snapshot_bytes));
        let (rx, sender) = send::start(
            manifest,
            entries,
            self.fault.send(),
            self.progress.clone(),
            !self.agent.config().keep_scratch,
        );
        let mut client = self.client.clone().expect("connected in preflight");
        self.pushed = true;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<i64>();
        // Marks the moment the trailer left, which ends the transfer and starts the restore.
        let stream = MarkEnd { rx, done: Some(done_tx) };
        self.start_page_tunnel();
        let (push, trailer_at) =
            answer_within(client.push_snapshot(stream), done_rx, deadline).await;
        let sent = tokio::task::spawn_blocking(move || sender.join())
            .await
            .map_err(|e| fail(p, e.to_string()))?;
        let Some(push) = push else {
            self.restoring_since(trailer_at);
            return Err(fail(
                Phase::Restoring,
                format!(
                    "node {} did not answer within {} s of receiving the whole snapshot: its \
                     restore hangs or is too slow (its agent's log and criu/restore.log under its \
                     data dir tell which); the copy there is aborted",
                    self.target_node,
                    deadline.as_secs()
                ),
            ));
        };
        if let Some(note) = pages_codec {
            // The memory pages are what the codec was measured on, not the small rest.
            *self.progress.codec.lock().expect("codec note poisoned") = format!("pages: {note}");
        }
        if !self.agent.config().keep_scratch {
            // Sent: the images (as large as the workload's memory, often on tmpfs) go now rather
            // than after the restore, which needs that memory on a shared machine.
            let _ = std::fs::remove_dir_all(&images);
        }
        // A sender failing because the target hung up is not the story; the target's answer is.
        let send_error = match sent {
            Ok(Err(e)) if e.kind() != std::io::ErrorKind::BrokenPipe => Some(e.to_string()),
            _ => None,
        };
        if let (Some(e), Ok(_)) = (&send_error, &push) {
            return Err(fail(p, format!("cannot send the snapshot: {e}")));
        }
        match push {
            Ok(resp) => {
                let r = resp.into_inner();
                self.restoring_since(trailer_at);
                self.restore_ms = r.restore_ms;
                self.target_status = r.status;
                self.page_tunnel_opened().await
            }
            Err(status) => {
                // Which side failed: the transfer, or the restore on a verified snapshot.
                let phase =
                    if status.code() == tonic::Code::FailedPrecondition && trailer_at.is_some() {
                        Phase::Restoring
                    } else {
                        Phase::Transferring
                    };
                Err(fail(phase, super::target_failed(&self.target_node, "the workload", &status)))
            }
        }
    }

    /// The transfer ended when the trailer left (`at`, else now), and the target restored from
    /// then until now: both on the timeline.
    fn restoring_since(&mut self, at: Option<i64>) {
        let at = at.unwrap_or_else(crate::sys::now_ms);
        if let Some(last) = self.tl.phases.last_mut() {
            last.2 = at;
        }
        self.tl.phases.push((Phase::Restoring, at, crate::sys::now_ms()));
        self.note(Phase::Restoring, at);
    }

    /// Post-copy: connects the page server (CRIU's end of the socketpair) to the target's
    /// lazy-pages daemon through the page tunnel. Opened alongside the push, because the restore
    /// itself may touch lazy pages (CRIU's restorer writes the rseq area); the target answers
    /// once the daemon for this migration runs. The tunnel then lives until the page server or
    /// the target ends it.
    fn start_page_tunnel(&mut self) {
        let Some(sock) = self.lazy.as_mut().and_then(|l| l.tunnel.take()) else { return };
        let mut client = self.tunnel_client.clone().expect("connected in preflight");
        let (mid, node) = (self.mid.clone(), self.target_node.clone());
        self.tunnel = Some(tokio::spawn(async move {
            let (tx, out) = super::tunnel::outgoing();
            let first = pb::TunnelBytes { migration_id: mid.clone(), data: Vec::new() };
            let _ = tx.send(first).await;
            let opened = client
                .page_tunnel(out)
                .await
                .map_err(|s| format!("node {node} refused the page tunnel: {}", s.message()))?;
            super::tunnel::pump(sock, opened.into_inner(), tx, format!("{mid} to {node}"))
                .map_err(|e| format!("cannot carry the page tunnel: {e}"))?;
            Ok(())
        }));
    }

    /// After the restore: the page tunnel must be open (its opening was started with the push).
    async fn page_tunnel_opened(&mut self) -> std::result::Result<(), Failure> {
        let Some(t) = self.tunnel.take() else { return Ok(()) };
        let p = Phase::Restoring;
        match tokio::time::timeout(CONNECT_TIMEOUT, t).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(fail(p, e)),
            Ok(Err(e)) => Err(fail(p, format!("the page tunnel task failed: {e}"))),
            Err(_) => Err(fail(
                p,
                format!("node {} did not open the page tunnel in time", self.target_node),
            )),
        }
    }

    async fn commit(&mut self) -> std::result::Result<(), Failure> {
        self.begin(Phase::Committing);
        if let Fault::HoldBeforeCommit(d) = self.fault {
            tracing::warn!(migration = self.mid, ?d, "fault injection: holding before the commit");
            tokio::time::sleep(d).await;
        }
        self.fault.crash_at(CrashPoint::Restored, &self.mid);
        // On disk before the commit can reach the target: an agent restarted from here on never
        // resumes the original on its own, it asks the target (migrate::recovery).
        // Nothing was sent yet: a failure here rolls back, though it is the commit's.
        self.journal(OutStep::Committing).map_err(|e| Failure {
            roll_back: true,
            ..fail(
                Phase::Committing,
                format!("cannot record migration {} before the commit: {e}", self.mid),
            )
        })?;
        self.fault.crash_at(CrashPoint::CommitRecorded, &self.mid);
        if self.lazy.is_some() {
            return self.commit_post_copy().await;
        }
        // The target holds a verified, restored copy and the original is frozen: it runs again
        // only if the target surely never resumed its copy, and is killed once the target did.
        match self.confirm_commit().await {
            Commit::Confirmed => {}
            Commit::NotResumed(why) => return Err(self.not_resumed(&why)),
            Commit::Unknown(why) => {
                return Err(fail(
                    Phase::Committing,
                    format!(
                        "node {} did not confirm resuming workload {} ({why}), so it may run \
                         there; the original stays frozen on node {} and this agent keeps asking \
                         node {} about migration {}: the original is killed once the target \
                         says it resumed its copy, and resumed if it says it never did",
                        self.target_node,
                        self.w.id(),
                        self.agent.config().node,
                        self.target_node,
                        self.mid
                    ),
                ))
            }
        }
        self.fault.crash_at(CrashPoint::CommitConfirmed, &self.mid);
        self.hand_over_network().await;
        // A SIGKILLed task never runs again; it is reaped and forgotten below.
        if let Err(e) = self.agent.kill_workload(&self.w) {
            tracing::warn!(migration = self.mid, id = self.w.id(), %e, "cannot kill the original after the commit");
        }
        self.frozen = false;
        self.forget_original().await;
        Ok(())
    }

    /// The target answers for the workload's address now: this node lets go of it and sends the
    /// packets it held on to the target.
    async fn hand_over_network(&mut self) {
        let Some(net) = self.w.net.clone().filter(|_| self.held_net) else { return };
        let t = std::time::Instant::now();
        let sent = self.agent.hand_over_network(&net).await;
        self.held_net = false;
        let ms = t.elapsed().as_millis() as u64;
        tracing::info!(migration = self.mid, address = %net.address, held_packets = sent, ms, "address handed over to the target");
    }

    /// The target surely did not resume its copy: the migration rolls back.
    fn not_resumed(&self, why: &str) -> Failure {
        Failure {
            roll_back: true,
            ..fail(
                Phase::Committing,
                format!(
                    "node {} did not resume workload {} ({why}); its copy there never runs",
                    self.target_node,
                    self.w.id()
                ),
            )
        }
    }

    /// Post-copy: the original stays frozen under CRIU, which serves its pages to the target, so
    /// it cannot run and the target resumes first. The original is killed once every page was
    /// served. Until the target confirmed the resume, the original can still come back: if the
    /// target surely did not resume its copy, the migration rolls back.
    async fn commit_post_copy(&mut self) -> std::result::Result<(), Failure> {
        match self.confirm_commit().await {
            Commit::Confirmed => {}
            Commit::NotResumed(why) => return Err(self.not_resumed(&why)),
            Commit::Unknown(why) => return self.unconfirmed_post_copy(why).await,
        }
        self.fault.crash_at(CrashPoint::CommitConfirmed, &self.mid);
        // The workload runs on the target: the original never runs again, even if this agent
        // restarts before it is killed.
        self.w.set_moved_out(self.mid.clone());
        self.hand_over_network().await;
        if let Err(e) = self.journal(OutStep::Resumed) {
            tracing::warn!(migration = self.mid, %e, "cannot record the target's resume (the workload's own record says it moved out)");
        }
        self.begin(Phase::PostCopy);
        let lazy = self.lazy.take().expect("post-copy dump running");
        let criu_pid = lazy.criu_pid;
        if let Fault::StallPageServer(d) = self.fault {
            tracing::warn!(
                migration = self.mid,
                criu_pid,
                ?d,
                "fault injection: stalling the page server"
            );
            let _ = crate::sys::signal::send(criu_pid, crate::sys::signal::Sig::SIGSTOP);
            std::thread::spawn(move || {
                std::thread::sleep(d);
                let _ = crate::sys::signal::send(criu_pid, crate::sys::signal::Sig::SIGCONT);
            });
        }
        let watcher = self.watch_pages();
        let served = tokio::task::spawn_blocking(move || lazy.done.join()).await;
        // Whatever the outcome: the poller must not outlive the post-copy.
        watcher.abort();
        let served = served.map_err(|e| fail(Phase::PostCopy, e.to_string()))?;
        self.frozen = false;
        let _ = self.agent.kill_workload(&self.w);
        self.forget_original().await;
        let error = match served {
            Ok(Ok(())) => {
                // A post-copy shorter than one poll: the target's count, asked once.
                if self.live.post_copy_pages.lock().expect("live pages poisoned").is_none() {
                    self.poll_pages().await;
                }
                let mut pages = self.live.post_copy_pages.lock().expect("live pages poisoned");
                if let Some(c) = pages.as_mut() {
                    // Every page was served: the dump ends only then.
                    c.copied = c.copied.max(c.total);
                }
                drop(pages);
                self.tl.end();
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => {
                crate::engine::EngineError::Other("the post-copy dump thread panicked".into())
            }
        };
        // What the target counted last: the pages that never arrived.
        self.poll_pages().await;
        let lost = match *self.live.post_copy_pages.lock().expect("live pages poisoned") {
            Some(c) => format!(
                "{} of {} memory pages ({:.1} MiB)",
                c.remaining(),
                c.total,
                (c.remaining() * crate::sys::uffd::page_size()) as f64 / (1u64 << 20) as f64
            ),
            None => "an unknown number of memory pages".into(),
        };
        Err(Failure {
            criu_log: error.log().map(|l| l.to_path_buf()),
            ..fail(
                Phase::PostCopy,
                format!(
                    "workload {} is lost: it resumed on node {}, but {lost} never arrived there \
                     because the page server on node {} (criu pid {criu_pid}) ended: {error}; \
                     node {} kills its copy (its memory is incomplete) and the original on node \
                     {} was killed, never resumed (the target had already run it)",
                    self.w.id(),
                    self.target_node,
                    self.agent.config().node,
                    self.target_node,
                    self.agent.config().node,
                ),
            )
        })
    }

    /// Post-copy, no answer to the commit: the target may run the workload and need its pages,
    /// so the page server keeps serving; the original is then left frozen (paused), never
    /// resumed on its own, and a person decides.
    async fn unconfirmed_post_copy(&mut self, why: String) -> std::result::Result<(), Failure> {
        let lazy = self.lazy.take().expect("post-copy dump running");
        let served = tokio::task::spawn_blocking(move || lazy.done.join()).await;
        let served = match served {
            Ok(Ok(Ok(()))) => "every page was served".to_string(),
            Ok(Ok(Err(e))) => format!("the page server ended: {e}"),
            _ => "the page server thread failed".to_string(),
        };
        self.frozen = false;
        Err(fail(
            Phase::Committing,
            format!(
                "node {} did not confirm resuming workload {} ({why}), so it may run there; \
                 {served}; the original stays frozen on node {} and this agent keeps asking node \
                 {} about migration {}: the original is killed if the target resumed its copy, \
                 and resumed if it never did",
                self.target_node,
                self.w.id(),
                self.agent.config().node,
                self.target_node,
                self.mid
            ),
        ))
    }

    /// Follows the target's count of the pages still to arrive, for GetMigration.
    fn watch_pages(&self) -> tokio::task::JoinHandle<()> {
        let (client, mid, live) = (
            self.client.clone().expect("connected in preflight"),
            self.mid.clone(),
            self.live.clone(),
        );
        tokio::spawn(async move {
            loop {
                poll_pages(client.clone(), &mid, &live).await;
                tokio::time::sleep(PAGES_POLL).await;
            }
        })
    }

    async fn poll_pages(&self) {
        let client = self.client.clone().expect("connected in preflight");
        poll_pages(client, &self.mid, &self.live).await;
    }

    /// CommitMigration on the target, a few times; the original must already be unable to run.
    async fn confirm_commit(&mut self) -> Commit {
        let mut client = self.client.clone().expect("connected in preflight");
        if self.fault == Fault::LoseCommitAnswer {
            let call = client.commit_migration(pb::MigrationRef { migration_id: self.mid.clone() });
            let answer = tokio::time::timeout(CONNECT_TIMEOUT, call).await;
            tracing::warn!(
                migration = self.mid,
                ?answer,
                "fault injection: dropping the commit's answer"
            );
            return Commit::Unknown(
                "the connection broke before the answer (fault injection)".into(),
            );
        }
        let mut last = String::new();
        let mut maybe_delivered = false;
        for attempt in 1..=COMMIT_TRIES {
            let call = client.commit_migration(pb::MigrationRef { migration_id: self.mid.clone() });
            match tokio::time::timeout(CONNECT_TIMEOUT, call).await {
                Ok(Ok(resp)) => {
                    self.target_status = Some(resp.into_inner());
                    self.tl.end();
                    return Commit::Confirmed;
                }
                // Committed by an earlier attempt, and the workload has moved on since.
                Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => {
                    self.tl.end();
                    return Commit::Confirmed;
                }
                // The target answered: it has no copy waiting for this commit, or one that must
                // not run. (After an attempt that may have resumed it, "no copy waiting" proves
                // nothing.)
                Ok(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::NotFound
                    ) && !maybe_delivered =>
                {
                    return Commit::NotResumed(format!("it answered: {}", s.message()));
                }
                Ok(Err(s)) => {
                    maybe_delivered |= !never_sent(&s);
                    last = status_text(&s);
                }
                Err(_) => {
                    maybe_delivered = true;
                    last = "timed out".into();
                }
            }
            tracing::warn!(
                migration = self.mid,
                attempt,
                error = last,
                "commit not confirmed; retrying"
            );
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
        }
        if maybe_delivered {
            Commit::Unknown(last)
        } else {
            Commit::NotResumed(format!("unreachable: {last}"))
        }
    }

    /// Waits for the killed original to be reaped and forgets it.
    async fn forget_original(&self) {
        if let Err(e) = self.agent.discard(&self.w).await {
            tracing::warn!(migration = self.mid, error = %e, "the killed original was not cleaned up");
        }
    }

    async fn roll_back(&mut self) -> std::result::Result<(), String> {
        self.begin(Phase::RollingBack);
        if let Some(t) = self.tunnel.take() {
            t.abort();
        }
        if let Some(t) = self.pages.take() {
            t.abort();
        }
        if let Some(lazy) = self.lazy.take() {
            // Abandon the post-copy dump: CRIU lets go of the (still SIGSTOPped) original.
            let _ = crate::sys::signal::send(lazy.criu_pid, crate::sys::signal::Sig::SIGKILL);
            let _ = tokio::task::spawn_blocking(move || lazy.done.join()).await;
        }
        if self.pushed || self.reserved || self.prepared_net {
            if let Some(mut client) = self.client.clone() {
                let call =
                    client.abort_migration(pb::MigrationRef { migration_id: self.mid.clone() });
                match tokio::time::timeout(CONNECT_TIMEOUT, call).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
                    other => {
                        tracing::warn!(
                            migration = self.mid,
                            ?other,
                            "could not tell the target to discard its copy; it stays stopped there and never runs; retrying in the background"
                        );
                        super::recovery::abort_later(
                            self.agent.clone(),
                            self.target.clone(),
                            self.mid.clone(),
                        );
                    }
                }
            }
        }
        if self.held_net {
            // Before the tasks run: their connections leave repair mode, their address is
            // answered here again and the packets held meanwhile reach them.
            match self.agent.take_back_network(&self.w).await {
                Ok(n) => {
                    self.held_net = false;
                    tracing::info!(migration = self.mid, held_packets = n, "address taken back");
                }
                Err(e) => {
                    return Err(format!(
                        "cannot answer for workload {}'s address on the source again: {e}",
                        self.w.id()
                    ))
                }
            }
        }
        if self.frozen && !self.was_paused {
            let (w, keep) = (self.w.clone(), self.self_stopped.clone());
            tokio::task::spawn_blocking(move || continue_tree(&w, &keep))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| {
                    format!("cannot resume workload {} on the source: {e}", self.w.id())
                })?;
        }
        self.tl.end();
        self.tl.phases.push((Phase::RolledBack, crate::sys::now_ms(), crate::sys::now_ms()));
        Ok(())
    }
}

/// The request stream, noting when its last part (the trailer) was taken by the transport.
struct MarkEnd {
    rx: send::Parts,
    done: Option<tokio::sync::oneshot::Sender<i64>>,
}

impl tokio_stream::Stream for MarkEnd {
    type Item = pb::SnapshotPart;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(p)) = &polled {
            if matches!(p.part, Some(pb::snapshot_part::Part::Trailer(_))) {
                if let Some(tx) = self.done.take() {
                    let _ = tx.send(crate::sys::now_ms());
                }
            }
        }
        polled
    }
}

/// How often the source asks the target how much of a post-copy workload's memory is missing.
const PAGES_POLL: Duration = Duration::from_millis(250);

/// Asks the target for its count of the post-copy pages still to arrive (see GetMigration).
async fn poll_pages(mut client: AgentClient<Channel>, mid: &str, live: &super::Live) {
    let call = client.get_migration(pb::MigrationRef { migration_id: mid.to_string() });
    if let Ok(Ok(r)) = tokio::time::timeout(CONNECT_TIMEOUT, call).await {
        let r = r.into_inner();
        if r.post_copy_pages_total > 0 || r.post_copy_pages_remaining > 0 {
            let total = r.post_copy_pages_total;
            *live.post_copy_pages.lock().expect("live pages poisoned") = Some(PageCount {
                total,
                copied: total.saturating_sub(r.post_copy_pages_remaining),
            });
        }
    }
}

/// A failed call's message and its root cause (tonic's own text repeats itself).
fn status_text(s: &tonic::Status) -> String {
    let mut root = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cur {
        root = Some(e.to_string());
        cur = e.source();
    }
    match root {
        Some(r) if !s.message().contains(&r) => format!("{}: {r}", s.message()),
        _ => s.message().to_string(),
    }
}

/// True when a failed call surely never reached the server: the connection was refused or the
/// host unreachable, so no request was written.
fn never_sent(s: &tonic::Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            );
        }
        cur = e.source();
    }
    false
}

/// Bytes in the regular files under `path` (or of `path` itself).
fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum()).unwrap_or(0)
}

/// How long the target may take to answer once the whole snapshot has left (verifying the last
/// files, restoring; an eager restore copies every page): 60 s, and 5 s more per GiB.
fn restore_deadline(snapshot_bytes: u64) -> Duration {
    Duration::from_secs(60 + 5 * snapshot_bytes.div_ceil(1 << 30))
}

/// Waits for the target's answer to a push; once the trailer has left (`trailer` says when), at
/// most `deadline` more. Returns the answer (None once the deadline passed) and when the trailer
/// left.
async fn answer_within<F: std::future::Future>(
    push: F,
    mut trailer: tokio::sync::oneshot::Receiver<i64>,
    deadline: Duration,
) -> (Option<F::Output>, Option<i64>) {
    tokio::pin!(push);
    let mut left = None;
    loop {
        tokio::select! {
            answer = &mut push => {
                return (Some(answer), left.or_else(|| trailer.try_recv().ok()));
            }
            at = &mut trailer, if left.is_none() => match at {
                Ok(at) => left = Some(at),
                // The sender ended without the trailer: the push fails on its own.
                Err(_) => return (Some(push.await), None),
            },
            _ = tokio::time::sleep(deadline), if left.is_some() => return (None, left),
        }
    }
}

/// An error and its causes, for transport errors whose top level says little.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut last = s.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Layers that wrap an error often say the same words again.
        let text = c.to_string();
        if text != last {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        cur = c.source();
    }
    s
}

/// Whether a gRPC status says the call never got a real answer (the connection broke or the
/// call was cut), rather than the peer refusing it.
fn is_transport(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}
