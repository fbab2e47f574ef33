//! What the coordinator does on the nodes: process control through the owning agent, and
//! migrations it drives (and, after a restart, resolves) through the source agent's transaction.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::agent as apb;
use prost::Message;

use crate::error::CoordError;
use crate::network::Network;
use crate::store::{AllocError, MigrationRow};
use crate::{now_ms, Coordinator};

/// How often a migration whose answer was lost is asked about again.
const POLL: Duration = Duration::from_secs(1);
/// The longest wait between two questions to a source agent that does not answer.
const RESOLVE_MAX_DELAY: Duration = Duration::from_secs(30);
/// How often a running migration's phase is read.
const PHASE_POLL: Duration = Duration::from_millis(150);

pub(crate) fn agent_err(node: &str) -> impl Fn(tonic::Status) -> CoordError + '_ {
    move |status| CoordError::Agent { node: node.to_string(), status }
}

impl Coordinator {
    /// The node a server id names, which must be online.
    pub(crate) fn online_node(
        &self,
        id: &str,
    ) -> Result<ferry_proto::coordinator::NodeInfo, CoordError> {
        let node = self
            .nodes()?
            .into_iter()
            .find(|n| n.node == id)
            .ok_or_else(|| CoordError::NotFound(format!("no server {id:?}")))?;
        if !node.online {
            return Err(CoordError::Unavailable(format!("server {id} is offline")));
        }
        Ok(node)
    }

    /// Every node as placement sees it: liveness, cordon, memory available by its last health
    /// report and workloads, both counting the migrations in flight to it.
    pub(crate) fn candidates(&self) -> Result<Vec<crate::placement::Candidate>, CoordError> {
        let cordoned = self.store.cordoned()?;
        let workloads = self.workloads()?;
        let in_flight: Vec<MigrationRow> = self.store.unfinished_migrations()?;
        let rss = |id: &str| {
            workloads
                .iter()
                .find(|(_, s)| s.spec.as_ref().is_some_and(|x| x.id == id))
                .map(|(_, s)| s.rss_bytes)
                .unwrap_or(0)
        };
        Ok(self
            .nodes()?
            .into_iter()
            .map(|n| {
                let running = workloads
                    .iter()
                    .filter(|(node, s)| {
                        *node == n.node && s.exit.is_none() && s.held_for_migration.is_empty()
                    })
                    .count() as u32;
                let incoming: Vec<&MigrationRow> =
                    in_flight.iter().filter(|m| m.target == n.node).collect();
                let coming: u64 = incoming.iter().map(|m| rss(&m.process_id)).sum();
                crate::placement::Candidate {
                    online: n.online,
                    schedulable: !cordoned.contains(&n.node),
                    available_bytes: n
                        .health
                        .map(|h| h.memory_available_bytes)
                        .unwrap_or(0)
                        .saturating_sub(coming),
                    workloads: running + incoming.len() as u32,
                    node: n.node,
                }
            })
            .collect())
    }

    /// A node for a workload needing `need_bytes`, never `exclude`.
    pub(crate) fn place(
        &self,
        need_bytes: u64,
        exclude: Option<&str>,
    ) -> Result<crate::placement::Placed, CoordError> {
        crate::placement::place(&self.candidates()?, need_bytes, exclude)
            .map_err(CoordError::Unschedulable)
    }

    /// Refuses `what` on `node` when it is cordoned, naming it.
    pub(crate) fn refuse_cordoned(&self, node: &str, what: &str) -> Result<(), CoordError> {
        if self.store.cordoned()?.contains(node) {
            return Err(CoordError::Unschedulable(format!(
                "node {node} is cordoned (not schedulable): {what} is refused; uncordon it \
                 (POST /api/servers/{node}/uncordon) or let the coordinator choose a node"
            )));
        }
        Ok(())
    }

    /// Cordons (`schedulable` false) or uncordons a node; uncordoning one being drained is
    /// refused.
    pub fn set_schedulable(&self, node: &str, schedulable: bool) -> Result<(), CoordError> {
        if !self.nodes()?.iter().any(|n| n.node == node) {
            return Err(CoordError::NotFound(format!("no server {node:?}")));
        }
        if schedulable {
            if let Some(d) = self.running_drain(node)? {
                return Err(CoordError::Conflict(format!(
                    "node {node} is being drained (drain {}); it stays cordoned until the drain \
                     ends: wait for it (GET /api/drains/{}), then uncordon it",
                    d.id, d.id
                )));
            }
        }
        let was = !self.store.cordoned()?.contains(node);
        self.store.set_schedulable(node, schedulable, now_ms())?;
        if was != schedulable {
            let (kind, msg) = if schedulable {
                ("node_uncordoned", format!("node {node} uncordoned: it takes new workloads again"))
            } else {
                (
                    "node_cordoned",
                    format!("node {node} cordoned: no new workloads or migrations into it"),
                )
            };
            self.emit(kind, "info", node, "", msg)?;
        }
        Ok(())
    }

    /// The node a workload runs on, by its latest report.
    pub fn workload_node(&self, id: &str) -> Result<(String, apb::ProcessStatus), CoordError> {
        self.workload(id)?
            .filter(|(_, s)| s.spec.as_ref().is_some_and(|x| x.id == id))
            .ok_or_else(|| CoordError::NotFound(format!("no process with id {id:?}")))
    }

    pub(crate) fn remember(&self, node: &str, s: &apb::ProcessStatus) -> Result<(), CoordError> {
        let now = now_ms();
        self.claim_reported(node, std::slice::from_ref(s))?;
        if let Some(w) = crate::reported(s, now) {
            self.store.put_workload(node, &w, now)?;
        }
        // A stopped workload's address is free at once, not at the next sweep.
        self.release_addresses()?;
        Ok(())
    }

    /// The migration of `process` that has not ended yet, if any.
    pub fn migration_in_flight(&self, process: &str) -> Result<Option<MigrationRow>, CoordError> {
        Ok(self.store.migration_in_flight(process)?)
    }

    /// Refuses `what` on `process` while migration `m` runs, with what to do instead.
    pub(crate) fn refuse_migrating(process: &str, m: &MigrationRow, what: &str) -> CoordError {
        CoordError::Migrating(format!(
            "process {process} is migrating from {} to {} (migration {}, {}); {what} is refused \
             until the migration ends: wait for it (GET /api/migrations/{}), then try again",
            m.source,
            m.target,
            m.id,
            if m.status == "pending" {
                "not started yet".to_string()
            } else {
                format!("phase {}", m.status)
            },
            m.id
        ))
    }

    /// An agent's refusal; one saying the workload is migrating becomes [`CoordError::Migrating`]
    /// with the coordinator's record of that migration when it has one.
    fn agent_refusal(&self, node: &str, process: &str, what: &str, s: tonic::Status) -> CoordError {
        if s.code() == tonic::Code::FailedPrecondition && s.message().contains("migrating") {
            if let Ok(Some(m)) = self.migration_in_flight(process) {
                return Self::refuse_migrating(process, &m, what);
            }
            return CoordError::Migrating(format!(
                "node {node}: {}; {what} is refused until the migration ends: wait for it \
                 (GET /api/migrations), then try again",
                s.message()
            ));
        }
        CoordError::Agent { node: node.to_string(), status: s }
    }

    /// Starts `spec` on `server`, or, without one, on the node placement picks for a workload of
    /// `memory_bytes` ([`crate::placement::DEFAULT_MEMORY_BYTES`] when not given); on `network`
    /// (the coordinator's default network when `None`). A cordoned `server` is refused. A
    /// workload with a network of its own gets the lowest free address of the workload range,
    /// recorded before the agent is asked and freed again if the start fails.
    pub async fn start_process(
        &self,
        server: Option<&str>,
        mut spec: apb::WorkloadSpec,
        network: Option<Network>,
        memory_bytes: Option<u64>,
    ) -> Result<(String, apb::ProcessStatus), CoordError> {
        let network = network.unwrap_or(self.config.default_network);
        let (server, placed) = match server {
            Some(s) => {
                let node = self.online_node(s)?;
                self.refuse_cordoned(&node.node, "a new process on it")?;
                (node.node, None)
            }
            None => {
                let need = memory_bytes.unwrap_or(crate::placement::DEFAULT_MEMORY_BYTES);
                let p = self.place(need, None)?;
                (p.node.clone(), Some(p))
            }
        };
        let node = self.online_node(&server)?;
        let mut c = self.agents.client(&node.address)?;
        if network == Network::Own {
            let Some(range) = self.config.workload_range else {
                return Err(CoordError::Invalid(
                    "network \"own\" needs the cluster's workload address range, and this \
                     coordinator has none: start it with --workload-cidr CIDR (e.g. \
                     --workload-cidr 10.231.7.128/25), or use network \"node\""
                        .into(),
                ));
            };
            // The allocation is keyed by the workload's id, so the coordinator chooses it (the
            // agent takes a given one).
            if spec.id.is_empty() {
                spec.id = new_id_with("w");
            }
            match self.store.allocate_address(&range, &spec.id, now_ms())? {
                Ok(a) => spec.address = a.to_string(),
                Err(AllocError::Exhausted { in_use }) => {
                    return Err(CoordError::NoAddress(format!(
                        "no free address in the workload range {range}: {in_use} of {} in use; \
                         stop a workload with an address of its own, start this one with \
                         network \"node\", or give the coordinator a larger --workload-cidr",
                        range.size()
                    )))
                }
            }
        }
        let (id, address) = (spec.id.clone(), spec.address.clone());
        let answer = c.start_process(apb::StartProcessRequest { spec: Some(spec) }).await;
        let s = match answer {
            Ok(s) => s.into_inner(),
            Err(status) => {
                // Refused: the workload does not exist, its address is free again. With no
                // answer (it may have started), the reservation is left to settle: freed once no
                // report of the workload shows up.
                if !address.is_empty() && refused(&status) {
                    self.store.release_address(&id)?;
                }
                return Err(agent_err(&node.node)(status));
            }
        };
        self.remember(&node.node, &s)?;
        let id = s.spec.as_ref().map(|x| x.id.clone()).unwrap_or_default();
        if !address.is_empty() {
            self.store.bind_address(&id)?;
        }
        let with =
            if address.is_empty() { String::new() } else { format!(" with address {address}") };
        let why =
            placed.map(|p| format!(" (placed on {}: {})", p.node, p.reason)).unwrap_or_default();
        self.emit(
            "process_started",
            "info",
            &node.node,
            &id,
            format!("process {id} started on {}{why}{with}", node.node),
        )?;
        Ok((node.node, s))
    }

    /// Pause, resume or stop a workload on the node that runs it.
    pub async fn control(
        &self,
        id: &str,
        op: &str,
    ) -> Result<(String, apb::ProcessStatus), CoordError> {
        let (node, _) = self.workload_node(id)?;
        let what = match op {
            "pause" => "pause",
            "resume" => "resume",
            _ => "stop",
        };
        // Refused, not queued: acting on either copy mid-transaction would fight the migration
        // (a resume during the freeze rolls it back). The agents refuse too, for a migration
        // that starts between this check and the call.
        if let Some(m) = self.migration_in_flight(id)? {
            return Err(Self::refuse_migrating(id, &m, what));
        }
        let info = self.online_node(&node)?;
        let mut c = self.agents.client(&info.address)?;
        let r = apb::WorkloadRef { id: id.to_string() };
        let s = match op {
            "pause" => c.pause_process(r).await,
            "resume" => c.resume_process(r).await,
            _ => c.stop_process(apb::StopProcessRequest { id: id.to_string(), grace_ms: 0 }).await,
        }
        .map_err(|s| self.agent_refusal(&node, id, what, s))?
        .into_inner();
        self.remember(&node, &s)?;
        let done = match op {
            "pause" => "paused",
            "resume" => "resumed",
            _ => "stopped",
        };
        self.emit(
            &format!("process_{done}"),
            "info",
            &node,
            id,
            format!("process {id} {done} on {node}"),
        )?;
        Ok((node, s))
    }

    pub async fn logs(
        &self,
        id: &str,
        from: u64,
        max: u32,
    ) -> Result<apb::GetLogsResponse, CoordError> {
        let (node, _) = self.workload_node(id)?;
        let info = self.online_node(&node)?;
        let mut c = self.agents.client(&info.address)?;
        Ok(c.get_logs(apb::GetLogsRequest { id: id.to_string(), from_line: from, max_lines: max })
            .await
            .map_err(agent_err(&node))?
            .into_inner())
    }
}

/// How a migration moves memory, as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationMode {
    /// Freeze, copy everything, restore: downtime grows with memory.
    StopAndCopy,
    /// Restore at once, pages follow on demand (CRIU engine only).
    PostCopy,
    /// Post-copy for a CRIU workload of at least [`AUTO_POST_COPY_BYTES`], else stop-and-copy.
    Auto,
}

/// Resident memory from which `auto` prefers post-copy: below it, stop-and-copy's downtime is
/// already short and it keeps the source until the target has everything.
pub const AUTO_POST_COPY_BYTES: u64 = 256 << 20;

impl MigrationMode {
    /// "stop-and-copy", "post-copy" or "auto" (underscores accepted too).
    pub fn parse(s: &str) -> Option<MigrationMode> {
        match s.replace('_', "-").as_str() {
            "stop-and-copy" => Some(MigrationMode::StopAndCopy),
            "post-copy" => Some(MigrationMode::PostCopy),
            "auto" => Some(MigrationMode::Auto),
            _ => None,
        }
    }

    /// Whether to use post-copy for this workload, and why (for the event log) when chosen
    /// automatically.
    pub fn resolve(self, status: &apb::ProcessStatus) -> (bool, String) {
        match self {
            MigrationMode::StopAndCopy => (false, String::new()),
            MigrationMode::PostCopy => (true, String::new()),
            MigrationMode::Auto => {
                let criu = status
                    .spec
                    .as_ref()
                    .is_none_or(|s| s.engine != apb::Engine::Cooperative as i32);
                let mib = status.rss_bytes >> 20;
                let limit = AUTO_POST_COPY_BYTES >> 20;
                if !criu {
                    (false, ", chosen by auto: the cooperative engine has no post-copy".into())
                } else if status.rss_bytes >= AUTO_POST_COPY_BYTES {
                    (true, format!(", chosen by auto: {mib} MiB resident >= {limit} MiB"))
                } else {
                    (false, format!(", chosen by auto: {mib} MiB resident < {limit} MiB"))
                }
            }
        }
    }
}

impl Coordinator {
    /// Starts a migration of `process` to `target` (without one, to the node placement picks,
    /// never the source) and returns at once; the source agent runs the transaction and the
    /// coordinator records its outcome. A cordoned target is refused.
    pub fn start_migration(
        self: &Arc<Self>,
        process: &str,
        target: Option<&str>,
        source: Option<&str>,
        mode: MigrationMode,
    ) -> Result<MigrationRow, CoordError> {
        let (node, status) = self.workload_node(process)?;
        if let Some(s) = source.filter(|s| *s != node) {
            return Err(CoordError::Invalid(format!(
                "process {process} runs on {node}, not on {s}"
            )));
        }
        let (target, placed) = match target {
            Some(t) => (t.to_string(), None),
            None => {
                let need = status.rss_bytes.max(crate::placement::DEFAULT_MEMORY_BYTES);
                let p = self.place(need, Some(&node))?;
                (p.node.clone(), Some(p))
            }
        };
        let target = target.as_str();
        if target == node {
            return Err(CoordError::Invalid(format!(
                "process {process} already runs on {target}; choose another target"
            )));
        }
        if status.exit.is_some() {
            return Err(CoordError::Conflict(format!(
                "process {process} has exited; only a running process can migrate"
            )));
        }
        let tgt = self.online_node(target)?;
        self.refuse_cordoned(target, "a migration into it")?;
        let src = self.online_node(&node)?;
        let _guard = self.migrating.lock().expect("migration lock poisoned");
        if let Some(m) = self.migration_in_flight(process)? {
            return Err(Self::refuse_migrating(process, &m, "another migration"));
        }
        let (post_copy, why) = mode.resolve(&status);
        let mode = if post_copy { "post-copy" } else { "stop-and-copy" };
        let row = pending_migration(process, &node, target, mode);
        self.store.insert_migration(&row)?;
        let placed =
            placed.map(|p| format!("; placed on {}: {}", p.node, p.reason)).unwrap_or_default();
        let msg = format!(
            "migration {} of {process} from {node} to {target} started ({}{why}{placed})",
            row.id, row.mode
        );
        self.emit("migration_started", "info", &node, process, msg)?;
        let (c, id, req) = (
            self.clone(),
            row.id.clone(),
            apb::MigrateOutRequest {
                workload_id: process.to_string(),
                target_address: tgt.address,
                migration_id: row.id.clone(),
                mode: if post_copy { apb::Mode::PostCopy } else { apb::Mode::StopAndCopy } as i32,
                fault: self.config.migration_fault.map(|f| f.0 as i32).unwrap_or_default(),
                fault_arg: self.config.migration_fault.map(|f| f.1).unwrap_or_default(),
            },
        );
        let source_addr = src.address;
        tokio::spawn(async move {
            c.crash_at(crate::CoordCrash::Accepted, &id);
            let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let watch = {
                let (c, id, addr, seen) =
                    (c.clone(), id.clone(), source_addr.clone(), seen.clone());
                tokio::spawn(async move { c.watch_phases(&id, &addr, &seen).await })
            };
            let answer = match c.agents.client(&source_addr) {
                Ok(mut client) => client.migrate_out(req).await.map(|r| r.into_inner()),
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            watch.abort();
            if answer.is_ok() {
                c.crash_at(crate::CoordCrash::Answered, &id);
            }
            match answer {
                // A commit whose answer the source did not get: it keeps the original frozen and
                // asks the target until it knows (docs/reliability.md); its GetMigration says the
                // outcome then.
                Ok(result)
                    if result.outcome == apb::Outcome::Failed as i32
                        && result.failed_phase == "commit" =>
                {
                    c.announce_phases(&id, &result, &result.phases, &seen);
                    let _ = c.store.set_migration_phase(&id, "recovering");
                    c.resolve(&id, &source_addr).await
                }
                Ok(result) => {
                    // Phases the watcher had not seen yet (fast ones), in order, then the end.
                    c.announce_phases(&id, &result, &result.phases, &seen);
                    c.record_result(&id, &result)
                }
                // The answer was lost, or the request never arrived: ask the source.
                Err(status) => {
                    tracing::warn!(
                        migration = id,
                        error = status.message(),
                        "no answer from the source; asking it"
                    );
                    c.resolve(&id, &source_addr).await
                }
            }
        });
        Ok(row)
    }

    /// Test only (`--test-crash-at`): the coordinator dies here, as a crash would.
    fn crash_at(&self, at: crate::CoordCrash, migration: &str) {
        if self.config.test_crash_at == Some(at) {
            tracing::warn!(migration, ?at, "fault injection: the coordinator aborts");
            std::process::abort();
        }
    }

    fn record_result(&self, id: &str, r: &apb::MigrationResult) {
        let status = match apb::Outcome::try_from(r.outcome) {
            Ok(apb::Outcome::Completed) => "completed",
            Ok(apb::Outcome::RolledBack) => "rolled_back",
            _ => "failed",
        };
        if let Err(e) =
            self.store.finish_migration(id, status, &r.error, Some(&r.encode_to_vec()), now_ms())
        {
            tracing::error!(migration = id, %e, "cannot record a migration's outcome");
            return;
        }
        // The workload table follows at once, not at the next heartbeat.
        if let (true, Some(s)) = (status == "completed", r.target_status.as_ref()) {
            // Committed: the target's copy is the workload now, whatever it said before.
            let s = apb::ProcessStatus { held_for_migration: String::new(), ..s.clone() };
            // Moved (back) onto a node it was failed over away from: the copy there is the
            // workload now, not a duplicate to fence.
            let _ = self.store.clear_failed_over_from(&r.workload_id, &r.target_node);
            if let Err(e) = self.remember(&r.target_node, &s) {
                tracing::warn!(migration = id, %e, "cannot record where the workload moved");
            }
        }
        let msg = match status {
            "completed" => format!("migration {id} completed in {} ms of downtime", r.downtime_ms),
            _ => format!("migration {id} {status}: {}", r.error),
        };
        tracing::info!(migration = id, status, "{msg}");
        let level = if status == "completed" { "info" } else { "error" };
        let _ =
            self.emit(&format!("migration_{status}"), level, &r.source_node, &r.workload_id, msg);
    }

    /// Follows a running migration's phases on its source agent, recording and announcing each
    /// once, in order (`seen` counts those announced).
    async fn watch_phases(
        &self,
        id: &str,
        source_addr: &str,
        seen: &std::sync::atomic::AtomicUsize,
    ) {
        let mut last = (0, 0, 0);
        loop {
            tokio::time::sleep(PHASE_POLL).await;
            let Ok(mut client) = self.agents.client(source_addr) else { return };
            let Ok(r) =
                client.get_migration(apb::MigrationRef { migration_id: id.to_string() }).await
            else {
                continue;
            };
            let r = r.into_inner();
            if r.outcome != apb::Outcome::Unspecified as i32 {
                return;
            }
            // Live figures for GET /api/migrations (bytes so far, post-copy pages to come).
            let _ = self.store.set_migration_progress(id, &r.encode_to_vec());
            self.announce_phases(id, &r, &r.phases, seen);
            // Bytes in flight and post-copy bytes to come, to live subscribers when they change.
            let now = (r.bytes_raw, r.bytes_wire, r.post_copy_bytes_remaining);
            if now != last {
                last = now;
                let data = format!(
                    r#"{{"migrationId":"{id}","phase":"{}","bytesRaw":{},"bytesWire":{},"postCopyBytesRemaining":{}}}"#,
                    r.current_phase, r.bytes_raw, r.bytes_wire, r.post_copy_bytes_remaining
                );
                self.send_live("migration_progress", &r.source_node, &r.workload_id, data);
            }
        }
    }

    /// Records and announces the phases of `phases` beyond the first `seen`.
    fn announce_phases(
        &self,
        id: &str,
        r: &apb::MigrationResult,
        phases: &[apb::PhaseTiming],
        seen: &std::sync::atomic::AtomicUsize,
    ) {
        use std::sync::atomic::Ordering;
        let from = seen.load(Ordering::SeqCst);
        for (i, p) in phases.iter().enumerate().skip(from) {
            let _ = self.store.set_migration_phase(id, &p.phase);
            let data = format!(
                r#"{{"migrationId":"{id}","phase":"{}","index":{i},"startedAtMs":{},"bytesRaw":{},"bytesWire":{}}}"#,
                p.phase, p.started_at_ms, r.bytes_raw, r.bytes_wire
            );
            let msg = format!("migration {id}: {}", p.phase);
            let _ = self.emit_with(
                "migration_phase",
                "info",
                &r.source_node,
                &r.workload_id,
                msg,
                data,
            );
        }
        seen.fetch_max(phases.len(), Ordering::SeqCst);
    }

    /// Finds out how a migration ended from its source agent (after a lost answer or a restart),
    /// asking every second at first and less often while it does not answer (up to every 30 s:
    /// a source node that is gone for good costs a call a while, not one a second for ever).
    async fn resolve(&self, id: &str, source_addr: &str) {
        let mut delay = POLL;
        loop {
            let asked = match self.agents.client(source_addr) {
                Ok(mut c) => {
                    c.get_migration(apb::MigrationRef { migration_id: id.to_string() }).await
                }
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            match asked {
                Ok(r) if r.get_ref().outcome != apb::Outcome::Unspecified as i32 => {
                    return self.record_result(id, r.get_ref());
                }
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {
                    // The source never started it (or restarted since); the workload was never
                    // frozen by this migration's transaction, or the agent's restart ended it.
                    let error = "the source agent has no record of this migration (it never began, or the agent restarted); \
                                 the process is wherever its node reports it";
                    let _ = self.store.finish_migration(id, "failed", error, None, now_ms());
                    return;
                }
                Err(s) => {
                    tracing::debug!(
                        migration = id,
                        error = s.message(),
                        "source not answering yet"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RESOLVE_MAX_DELAY);
                    continue;
                }
            }
            // It answers, and the migration runs on: its phases come at the usual pace.
            delay = POLL;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resolves every migration a previous run of the coordinator left pending.
    pub fn resolve_pending(self: &Arc<Self>) -> Result<(), CoordError> {
        let nodes = self.nodes()?;
        // Failovers and restores on demand have no source transaction: resolve_restores asks
        // their target.
        let pending = self.store.unfinished_migrations()?.into_iter();
        for m in pending.filter(|m| !matches!(m.mode.as_str(), "failover" | "restore")) {
            let Some(addr) = nodes.iter().find(|n| n.node == m.source).map(|n| n.address.clone())
            else {
                continue;
            };
            tracing::info!(migration = m.id, "resolving a migration left pending by a restart");
            let c = self.clone();
            tokio::spawn(async move { c.resolve(&m.id, &addr).await });
        }
        Ok(())
    }

    /// Every migration, oldest first: a full read of the history, for tests and tools; the API
    /// reads [`Coordinator::migrations_page`].
    pub fn migrations(&self) -> Result<Vec<MigrationRow>, CoordError> {
        Ok(self.store.migrations()?)
    }

    /// One migration by id.
    pub fn migration(&self, id: &str) -> Result<Option<MigrationRow>, CoordError> {
        Ok(self.store.migration(id)?)
    }

    /// A page of the history (see [`crate::Store::migrations_page`]).
    pub fn migrations_page(
        &self,
        q: &crate::MigrationQuery,
    ) -> Result<(Vec<MigrationRow>, Option<crate::Cursor>), CoordError> {
        Ok(self.store.migrations_page(q)?)
    }

    /// The migrations that have not ended, oldest first.
    pub fn unfinished_migrations(&self) -> Result<Vec<MigrationRow>, CoordError> {
        Ok(self.store.unfinished_migrations()?)
    }
}

/// A new migration record of `mode` (a migration's, "failover", "restore"), not started yet.
pub(crate) fn pending_migration(
    process: &str,
    source: &str,
    target: &str,
    mode: &str,
) -> MigrationRow {
    MigrationRow {
        id: new_id(),
        process_id: process.to_string(),
        source: source.to_string(),
        target: target.to_string(),
        mode: mode.into(),
        status: "pending".into(),
        error: String::new(),
        result: None,
        started_at_ms: now_ms(),
        finished_at_ms: None,
    }
}

pub(crate) fn new_id() -> String {
    new_id_with("m")
}

/// `prefix-` and 12 hex digits from the kernel's random source (the agent's ids look the same).
pub(crate) fn new_id_with(prefix: &str) -> String {
    ferry_proto::ids::new_id(prefix)
}

/// Whether an agent's error is its answer refusing the call (nothing was started), rather than
/// no answer at all (the call may have taken effect).
pub(crate) fn refused(s: &tonic::Status) -> bool {
    use tonic::Code;
    !matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(engine: apb::Engine, rss_mib: u64) -> apb::ProcessStatus {
        apb::ProcessStatus {
            spec: Some(apb::WorkloadSpec { engine: engine as i32, ..Default::default() }),
            rss_bytes: rss_mib << 20,
            ..Default::default()
        }
    }

    #[test]
    fn modes_parse_in_either_spelling_and_auto_resolves_by_engine_and_size() {
        assert_eq!(MigrationMode::parse("post-copy"), Some(MigrationMode::PostCopy));
        assert_eq!(MigrationMode::parse("post_copy"), Some(MigrationMode::PostCopy));
        assert_eq!(MigrationMode::parse("stop-and-copy"), Some(MigrationMode::StopAndCopy));
        assert_eq!(MigrationMode::parse("auto"), Some(MigrationMode::Auto));
        assert_eq!(MigrationMode::parse("fast"), None);
        let auto = MigrationMode::Auto;
        assert!(auto.resolve(&status(apb::Engine::Criu, 1024)).0);
        assert!(!auto.resolve(&status(apb::Engine::Criu, 64)).0);
        let (post, why) = auto.resolve(&status(apb::Engine::Cooperative, 4096));
        assert!(!post && why.contains("cooperative"), "{why}");
        assert!(MigrationMode::PostCopy.resolve(&status(apb::Engine::Criu, 1)).0);
    }
}
