//! Continuous checkpoints and failover, the coordinator's side (docs/failover.md): what agents
//! report of their protected workloads' checkpoints, which workloads to restore elsewhere when
//! their node is lost or fenced them ([`decide`], pure), the restores themselves through the
//! target agent's RestoreCheckpoint, and restores and checkpoints on demand.
//!
//! A protected workload (WorkloadSpec.checkpoint_interval_secs > 0) is restored only once its
//! node has been silent for longer than the grace, counted from the later of its last heartbeat
//! and this coordinator's start; by then its agent's lease (half the grace) has run out and it
//! killed the workload itself. A failover is recorded (a migration with mode "failover", and a
//! `failed_over` row) before the target agent is called, so a node that comes back is told to
//! kill its copy (HeartbeatResponse.fence) and its reports never replace the restored one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::agent as apb;
use prost::Message;

use crate::error::CoordError;
use crate::placement::Candidate;
use crate::store::{CheckpointRow, FailedOver, MigrationRow};
use crate::{now_ms, Coordinator};

/// The reason an agent gives a workload it killed when its lease ran out starts with this.
pub const FENCED: &str = "fenced";
/// The object store, as a checkpoint holder: always reachable by the agents that can use it.
pub const S3: &str = "s3";
/// At most this many targets are tried per checkpoint, and this many attempts per failover.
const TARGETS_PER_CHECKPOINT: usize = 3;
const MAX_ATTEMPTS: usize = 6;
/// How long a target agent's RestoreCheckpoint may take before the coordinator asks it instead.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long an on-demand restore gives the running copy to stop.
const STOP_GRACE_MS: u32 = 2_000;
/// Backoff between failovers of one workload that failed everywhere.
const FIRST_BACKOFF_MS: i64 = 5_000;
const MAX_BACKOFF_MS: i64 = 300_000;

/// Whether a workload is protected: checkpointed by its agent, failed over by the coordinator.
pub fn protected(s: &apb::ProcessStatus) -> bool {
    s.spec.as_ref().is_some_and(|x| x.checkpoint_interval_secs > 0)
}

/// A node as failover sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub node: String,
    pub online: bool,
    pub last_seen_ms: i64,
}

/// Why a workload is restored elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Its node has been silent this long (counted from the coordinator's start at the earliest).
    Silent { silent_ms: i64 },
    /// Its node, online, reported it killed by the agent's lease (a coordinator outage).
    Fenced { reason: String },
}

/// A checkpoint failover may restore from, and where its object can be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Usable {
    pub info: apb::CheckpointInfo,
    /// Holders that can serve it now: online nodes other than the lost one, and "s3".
    pub holders: Vec<String>,
}

/// One workload to restore.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub workload: String,
    /// The node it is restored away from.
    pub from: String,
    pub trigger: Trigger,
    /// When it was last known running: its node's last heartbeat, or when the agent fenced it.
    pub lost_at_ms: i64,
    /// Memory a target needs for it.
    pub need_bytes: u64,
    /// Its usable checkpoints, newest first; empty: it cannot be restored.
    pub checkpoints: Vec<Usable>,
    /// Every checkpoint recorded for it (to say why none is usable).
    pub recorded: usize,
}

/// What [`decide`] looks at.
pub struct World<'a> {
    pub nodes: &'a [NodeView],
    /// Every workload record: (node, status).
    pub workloads: &'a [(String, apb::ProcessStatus)],
    /// Each workload's checkpoints, newest first.
    pub checkpoints: &'a HashMap<String, Vec<apb::CheckpointInfo>>,
    pub migrations: &'a [MigrationRow],
    /// When this coordinator started: silence counts from here at the earliest.
    pub started_ms: i64,
    pub now_ms: i64,
    pub grace_ms: i64,
}

/// A protected workload whose node has been silent past the grace, that is not failed over
/// because a migration of it (not a failover or restore) has not ended: its outcome is the
/// silent source's to tell, and until it does the workload may be running on the migration's
/// target. Returned so that the wait is said, not silent.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub workload: String,
    pub node: String,
    pub migration: MigrationRow,
}

/// The workloads [`decide`] leaves alone for an unfinished migration (trigger A only).
pub fn blocked(w: &World) -> Vec<Blocked> {
    let mut out = Vec::new();
    for (node, s) in w.workloads {
        let Some(spec) = s.spec.as_ref() else { continue };
        if !protected(s) || !s.held_for_migration.is_empty() || s.exit.is_some() {
            continue;
        }
        let Some(n) = w.nodes.iter().find(|n| &n.node == node) else { continue };
        if n.online || w.now_ms - n.last_seen_ms.max(w.started_ms) <= w.grace_ms {
            continue;
        }
        let stuck = w.migrations.iter().find(|m| {
            m.process_id == spec.id
                && !m.is_final()
                && !matches!(m.mode.as_str(), "failover" | "restore")
        });
        if let Some(m) = stuck {
            out.push(Blocked {
                workload: spec.id.clone(),
                node: node.clone(),
                migration: m.clone(),
            });
        }
    }
    out
}

/// The protected workloads to restore now: (A) those recorded running (not a held copy) on a
/// node silent for longer than the grace, counted from the later of its last heartbeat and the
/// coordinator's start; (B) those an online node reported killed by its lease ("fenced") and not
/// restored since. Never one with a migration (or failover, or restore) that has not ended.
pub fn decide(w: &World) -> Vec<Action> {
    let busy: HashSet<&str> =
        w.migrations.iter().filter(|m| !m.is_final()).map(|m| m.process_id.as_str()).collect();
    let mut out = Vec::new();
    for (node, s) in w.workloads {
        let Some(spec) = s.spec.as_ref() else { continue };
        if !protected(s) || !s.held_for_migration.is_empty() || busy.contains(spec.id.as_str()) {
            continue;
        }
        let Some(n) = w.nodes.iter().find(|n| &n.node == node) else { continue };
        let (trigger, lost_at_ms) = match &s.exit {
            None => {
                let silent_ms = w.now_ms - n.last_seen_ms.max(w.started_ms);
                if n.online || silent_ms <= w.grace_ms {
                    continue;
                }
                (Trigger::Silent { silent_ms }, n.last_seen_ms)
            }
            Some(exit) => {
                if !n.online || !s.lost_reason.starts_with(FENCED) {
                    continue;
                }
                // Restored since it was fenced: that restore is the answer (a report of the
                // fenced copy may still come in before the restored one's). One that failed
                // everywhere is tried again.
                let restored = w.migrations.iter().any(|m| {
                    m.process_id == spec.id
                        && matches!(m.mode.as_str(), "failover" | "restore")
                        && m.status == "completed"
                        && m.started_at_ms >= exit.exited_at_ms
                });
                if restored {
                    continue;
                }
                (Trigger::Fenced { reason: s.lost_reason.clone() }, exit.exited_at_ms)
            }
        };
        let lost = matches!(trigger, Trigger::Silent { .. }).then_some(node.as_str());
        let recorded = w.checkpoints.get(&spec.id).map(|v| v.as_slice()).unwrap_or_default();
        let checkpoints = recorded
            .iter()
            .filter_map(|k| {
                let holders: Vec<String> = k
                    .holders
                    .iter()
                    .filter(|h| {
                        h.as_str() == S3
                            || (Some(h.as_str()) != lost
                                && w.nodes.iter().any(|n| &n.node == *h && n.online))
                    })
                    .cloned()
                    .collect();
                (!holders.is_empty()).then(|| Usable { info: k.clone(), holders })
            })
            .collect();
        out.push(Action {
            workload: spec.id.clone(),
            from: node.clone(),
            trigger,
            lost_at_ms,
            need_bytes: s.rss_bytes.max(crate::placement::DEFAULT_MEMORY_BYTES),
            checkpoints,
            recorded: recorded.len(),
        });
    }
    out
}

/// Nodes to restore onto, best first: online, schedulable, with `need_bytes` available, never
/// `exclude`; those holding the checkpoint first, then the least loaded (as placement orders).
pub fn targets(
    candidates: &[Candidate],
    need_bytes: u64,
    exclude: Option<&str>,
    holders: &[String],
) -> Vec<String> {
    let mut fit: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.online && c.schedulable && c.available_bytes >= need_bytes)
        .filter(|c| Some(c.node.as_str()) != exclude)
        .collect();
    fit.sort_by(|a, b| {
        let held = |c: &Candidate| !holders.contains(&c.node);
        held(a)
            .cmp(&held(b))
            .then(a.workloads.cmp(&b.workloads))
            .then(b.available_bytes.cmp(&a.available_bytes))
            .then(a.node.cmp(&b.node))
    });
    fit.into_iter().map(|c| c.node.clone()).collect()
}

/// The attempts of a failover, in order: (index into the checkpoints, target), the newest
/// checkpoint's targets first, at most [`TARGETS_PER_CHECKPOINT`] each and [`MAX_ATTEMPTS`] in
/// all.
pub fn attempts(
    a: &Action,
    candidates: &[Candidate],
    exclude: Option<&str>,
) -> Vec<(usize, String)> {
    a.checkpoints
        .iter()
        .enumerate()
        .flat_map(|(i, k)| {
            targets(candidates, a.need_bytes, exclude, &k.holders)
                .into_iter()
                .take(TARGETS_PER_CHECKPOINT)
                .map(move |t| (i, t))
        })
        .take(MAX_ATTEMPTS)
        .collect()
}

/// The holders to give a target's RestoreCheckpoint: online node holders with their addresses,
/// the target first if it holds the object ("s3" is in the checkpoint's own holders).
pub fn peers(
    holders: &[String],
    target: &str,
    addresses: &HashMap<String, String>,
) -> Vec<apb::Peer> {
    let mut nodes: Vec<&String> = holders.iter().filter(|h| h.as_str() != S3).collect();
    nodes.sort_by_key(|h| h.as_str() != target);
    nodes
        .into_iter()
        .filter_map(|h| Some(apb::Peer { node: h.clone(), address: addresses.get(h)?.clone() }))
        .collect()
}

/// A checkpoint as the store keeps it.
pub fn row_of(k: &apb::CheckpointInfo) -> CheckpointRow {
    CheckpointRow {
        id: k.id.clone(),
        workload: k.workload_id.clone(),
        node: k.node.clone(),
        seq: k.seq,
        taken_at_ms: k.taken_at_ms,
        freeze_ms: k.freeze_ms,
        bytes: k.bytes,
        raw_bytes: k.raw_bytes,
        holders: k.holders.clone(),
        digest: k.digest.clone(),
        info: k.encode_to_vec(),
        keep: k.keep,
    }
}

/// Stored checkpoints as CheckpointInfo (the row's id, workload and holders win: they are what
/// was reported last).
fn infos(rows: Vec<CheckpointRow>) -> Vec<apb::CheckpointInfo> {
    rows.into_iter()
        .map(|r| {
            let k = apb::CheckpointInfo::decode(r.info.as_slice()).unwrap_or_default();
            apb::CheckpointInfo { id: r.id, workload_id: r.workload, holders: r.holders, ..k }
        })
        .collect()
}

/// Failover's memory between sweeps (not kept across restarts: a restarted coordinator may say
/// a warning once more).
#[derive(Debug, Default)]
pub struct Memory {
    /// Workloads whose `failover_impossible` was announced (until one of their failovers runs).
    impossible: HashSet<String>,
    /// Workloads warned about a checkpoint with no copy off its node.
    unreplicated: HashSet<String>,
    /// Duplicate copies whose killing was announced: (workload, node, failed over at).
    fenced: HashSet<(String, String, i64)>,
    /// Failovers running now.
    running: HashSet<String>,
    /// Workloads whose failover failed everywhere: (not before, last delay).
    backoff: HashMap<String, (i64, i64)>,
    /// Failovers announced as waiting for an unfinished migration: (workload, migration).
    blocked: HashSet<(String, String)>,
}

/// One try of a restore, for the events.
struct Attempt {
    checkpoint: String,
    target: String,
    error: String,
}

fn secs(ms: i64) -> i64 {
    (ms.max(0) + 500) / 1000
}

impl Coordinator {
    /// The agents' lease in milliseconds (0: none).
    pub(crate) fn lease_ms(&self) -> u32 {
        self.config.lease().as_millis().min(u32::MAX as u128) as u32
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.failover.lock().expect("failover memory poisoned")
    }

    /// Records a checkpoint an agent reported and announces it live; one with no copy off its
    /// node is a warning, the first time for its workload. Refused from a node the workload was
    /// failed over away from (that copy is not the workload any more).
    pub(crate) fn report_checkpoint(
        &self,
        node: &str,
        k: &apb::CheckpointInfo,
    ) -> Result<(), CoordError> {
        if k.id.is_empty() || k.workload_id.is_empty() {
            return Err(CoordError::Invalid(
                "a checkpoint needs its id and its workload's id".into(),
            ));
        }
        if k.node != node {
            return Err(CoordError::Invalid(format!(
                "checkpoint {} of {} says it was taken on {:?}, but node {node} reports it",
                k.id, k.workload_id, k.node
            )));
        }
        if let Some(f) = self.store.failed_over()?.into_iter().find(|f| f.workload == k.workload_id)
        {
            if f.from_node == node && f.to_node != node {
                return Err(CoordError::Conflict(format!(
                    "workload {} was restored on {} (failover away from {node}); the copy on \
                     {node} must be killed, its checkpoint {} is not recorded",
                    k.workload_id, f.to_node, k.id
                )));
            }
        }
        self.store.insert_checkpoint(&row_of(k))?;
        let data = serde_json::json!({
            "checkpointId": k.id,
            "seq": k.seq,
            "bytes": k.bytes,
            "freezeMs": k.freeze_ms,
            "holders": k.holders,
        });
        self.send_live("checkpoint_taken", node, &k.workload_id, data.to_string());
        if k.holders.len() < 2 && self.memory().unreplicated.insert(k.workload_id.clone()) {
            let msg = format!(
                "checkpoint {} of {} is kept only on {}: no copy off the node, so losing {node} \
                 loses it; bring another node online (checkpoints are replicated to the other \
                 online agents) or configure the object store",
                k.id,
                k.workload_id,
                if k.holders.is_empty() {
                    "no holder at all".to_string()
                } else {
                    k.holders.join(", ")
                }
            );
            tracing::warn!(node, workload = k.workload_id, checkpoint = k.id, "{msg}");
            let data = serde_json::json!({"checkpointId": k.id, "holders": k.holders});
            self.emit_with(
                "checkpoint_unreplicated",
                "warn",
                node,
                &k.workload_id,
                msg,
                data.to_string(),
            )?;
        }
        Ok(())
    }

    /// What a heartbeat from `node` must kill: workloads it reports running (not a held copy)
    /// that were failed over away from it. Each is announced once as an error.
    pub(crate) fn fence(
        &self,
        node: &str,
        reports: &[apb::ProcessStatus],
    ) -> Result<Vec<String>, CoordError> {
        let gone: Vec<FailedOver> =
            self.store.failed_over()?.into_iter().filter(|f| f.from_node == node).collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        // A migration back onto this node that has not been recorded as ended: its copy here
        // may be the committed one (the row goes when the outcome is recorded).
        let coming: HashSet<String> = self
            .store
            .unfinished_migrations()?
            .into_iter()
            .filter(|m| m.target == node)
            .map(|m| m.process_id)
            .collect();
        let mut fence = Vec::new();
        for s in reports.iter().filter(|s| s.exit.is_none() && s.held_for_migration.is_empty()) {
            let Some(id) = s.spec.as_ref().map(|x| x.id.as_str()) else { continue };
            if coming.contains(id) {
                continue;
            }
            let Some(f) = gone.iter().find(|f| f.workload == id && f.to_node != node) else {
                continue;
            };
            fence.push(id.to_string());
            if self.memory().fenced.insert((id.to_string(), node.to_string(), f.at_ms)) {
                // A heartbeat held up in the network while the node was cut off reads the same as
                // a copy its lease failed to stop: the agent kills what still runs, either way.
                let msg = format!(
                    "{node} reported {id} running after it was restored on {} {} s ago; {node} \
                     is told to kill that copy (a report delayed while {node} was cut off, or \
                     a lease that failed to stop it)",
                    f.to_node,
                    secs(now_ms() - f.at_ms)
                );
                tracing::error!(workload = id, node, restored_on = f.to_node, "{msg}");
                let data = serde_json::json!({
                    "node": node, "restoredOn": f.to_node, "restoredAtMs": f.at_ms,
                });
                self.emit_with("duplicate_fenced", "error", node, id, msg, data.to_string())?;
            }
        }
        Ok(fence)
    }

    /// The other online agents, for checkpoint replication.
    pub(crate) fn peers_of(&self, node: &str) -> Result<Vec<apb::Peer>, CoordError> {
        Ok(self
            .nodes()?
            .into_iter()
            .filter(|n| n.online && n.node != node)
            .map(|n| apb::Peer { node: n.node, address: n.address })
            .collect())
    }

    /// A workload's checkpoints, newest first. NotFound for a workload with no record and no
    /// checkpoint.
    pub fn checkpoints(&self, process: &str) -> Result<Vec<apb::CheckpointInfo>, CoordError> {
        let rows = self.store.checkpoints(process)?;
        if rows.is_empty() {
            self.workload_node(process)?;
        }
        Ok(infos(rows))
    }

    /// Takes a checkpoint of a running workload now, on its node; recorded as agents' reports
    /// are.
    pub async fn take_checkpoint(&self, process: &str) -> Result<apb::CheckpointInfo, CoordError> {
        let (node, s) = self.workload_node(process)?;
        if s.exit.is_some() {
            return Err(CoordError::Conflict(format!(
                "process {process} has ended; only a running process can be checkpointed \
                 (restore an earlier checkpoint with POST /api/processes/{process}/restore)"
            )));
        }
        if let Some(m) = self.migration_in_flight(process)? {
            return Err(Self::refuse_migrating(process, &m, "a checkpoint"));
        }
        let info = self.online_node(&node)?;
        let mut c = self.agents.client(&info.address)?;
        let mut k = c
            .take_checkpoint(apb::WorkloadRef { id: process.to_string() })
            .await
            .map_err(crate::ops::agent_err(&node))?
            .into_inner();
        if k.node.is_empty() {
            k.node = node.clone();
        }
        if k.workload_id.is_empty() {
            k.workload_id = process.to_string();
        }
        self.report_checkpoint(&node, &k)?;
        let msg = format!(
            "checkpoint {} of {process} taken on {node} ({} bytes, frozen {} ms, held by {})",
            k.id,
            k.bytes,
            k.freeze_ms,
            k.holders.join(", ")
        );
        self.emit("checkpoint_taken_now", "info", &node, process, msg)?;
        Ok(k)
    }

    /// Restores `process` from one of its checkpoints (`None`: the newest) on `target` (`None`:
    /// its node if online and schedulable, else a placed one), and returns the record of it (a
    /// migration with mode "restore") at once. The running copy is stopped first; refused while
    /// its node is offline (two copies could run), and while a migration of it has not ended.
    pub fn restore_checkpoint(
        self: &Arc<Self>,
        process: &str,
        checkpoint_id: Option<&str>,
        target: Option<&str>,
    ) -> Result<MigrationRow, CoordError> {
        let (node, status) = self.workload_node(process)?;
        let all = self.store.checkpoints(process)?;
        let row = match checkpoint_id {
            Some(id) => all.into_iter().find(|k| k.id == id).ok_or_else(|| {
                CoordError::NotFound(format!(
                    "process {process} has no checkpoint {id:?}; list them with GET \
                     /api/processes/{process}/checkpoints"
                ))
            })?,
            None => all.into_iter().next().ok_or_else(|| {
                CoordError::NotFound(format!(
                    "process {process} has no checkpoint yet; take one with POST \
                     /api/processes/{process}/checkpoints, or start it with \
                     checkpointIntervalSeconds"
                ))
            })?,
        };
        let k = apb::CheckpointInfo::decode(row.info.as_slice()).map_err(|e| {
            CoordError::Invalid(format!("checkpoint {} of {process} is unreadable: {e}", row.id))
        })?;
        let k = apb::CheckpointInfo { holders: row.holders.clone(), ..k };
        let nodes = self.nodes()?;
        let online = |n: &str| nodes.iter().any(|x| x.node == n && x.online);
        let holders: Vec<String> =
            k.holders.iter().filter(|h| h.as_str() == S3 || online(h)).cloned().collect();
        if holders.is_empty() {
            return Err(CoordError::Unavailable(format!(
                "checkpoint {} of {process} is held by {} and none of them is online; bring one \
                 back, or restore another checkpoint",
                k.id,
                k.holders.join(", ")
            )));
        }
        let running = status.exit.is_none();
        if running && !online(&node) {
            return Err(CoordError::Unavailable(format!(
                "process {process} runs on {node}, which is offline: it cannot be stopped, and a \
                 restore now could leave two copies running; wait for {node} to come back (or \
                 for failover, if the process is protected)"
            )));
        }
        let target = match target {
            Some(t) => {
                let n = self.online_node(t)?;
                self.refuse_cordoned(&n.node, "a restore onto it")?;
                n.node
            }
            None if online(&node) && !self.store.cordoned()?.contains(&node) => node.clone(),
            None => {
                let need = status.rss_bytes.max(crate::placement::DEFAULT_MEMORY_BYTES);
                self.place(need, None)?.node
            }
        };
        let m = {
            let _guard = self.migrating.lock().expect("migration lock poisoned");
            if let Some(m) = self.migration_in_flight(process)? {
                return Err(Self::refuse_migrating(process, &m, "a restore"));
            }
            let m = crate::ops::pending_migration(process, &node, &target, "restore");
            self.store.insert_migration(&m)?;
            m
        };
        let msg = format!(
            "restore {} of {process} from checkpoint {} (seq {}, taken on {}) onto {target} \
             started{}",
            m.id,
            k.id,
            k.seq,
            k.node,
            if running {
                format!("; the running copy on {node} is stopped first")
            } else {
                String::new()
            }
        );
        self.emit("restore_started", "info", &node, process, msg)?;
        let (c, m2) = (self.clone(), m.clone());
        tokio::spawn(async move { c.run_restore(m2, k, holders, running).await });
        Ok(m)
    }

    /// An on-demand restore, once recorded: stop the running copy, restore, record.
    async fn run_restore(
        self: Arc<Self>,
        m: MigrationRow,
        k: apb::CheckpointInfo,
        holders: Vec<String>,
        running: bool,
    ) {
        let (process, node, target) = (&m.process_id, &m.source, &m.target);
        let fail = |error: String| {
            let _ = self.store.finish_migration(&m.id, "failed", &error, None, now_ms());
            tracing::error!(restore = m.id, process, "{error}");
            let data = serde_json::json!({"migrationId": m.id, "checkpointId": k.id});
            let _ = self.emit_with(
                "restore_failed",
                "error",
                target,
                process,
                format!("restore {} of {process} failed: {error}", m.id),
                data.to_string(),
            );
        };
        if running {
            let _ = self.store.set_migration_phase(&m.id, "stop");
            let stopped = match self.online_node(node) {
                Ok(n) => match self.agents.client(&n.address) {
                    Ok(mut c) => c
                        .stop_process(apb::StopProcessRequest {
                            id: process.clone(),
                            grace_ms: STOP_GRACE_MS,
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| {
                            if crate::ops::refused(&s) {
                                format!(
                                    "node {node} refused to stop the running copy ({}); nothing \
                                     was restored and the process is as it was: try again",
                                    s.message()
                                )
                            } else {
                                format!(
                                    "node {node} did not answer the stop ({}): the process may \
                                     have stopped; nothing was restored: look at GET \
                                     /api/processes/{process}, then restore again",
                                    s.message()
                                )
                            }
                        }),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match stopped {
                Ok(s) => {
                    let _ = self.remember(node, &s);
                }
                Err(e) => return fail(format!("phase stop: {e}")),
            }
        }
        let reason = format!("rollback to {} (seq {}) on request", k.id, k.seq);
        match self.restore_on(&m.id, process, node, target, &k, &holders, &reason).await {
            Ok(_) => {
                let _ = self.store.finish_migration(&m.id, "completed", "", None, now_ms());
                let msg = format!(
                    "restore {} of {process} completed: it runs on {target} from checkpoint {} \
                     (taken {} s ago)",
                    m.id,
                    k.id,
                    secs(now_ms() - k.taken_at_ms)
                );
                let data = serde_json::json!({
                    "migrationId": m.id, "checkpointId": k.id, "from": node, "to": target,
                });
                let _ = self.emit_with(
                    "restore_completed",
                    "info",
                    target,
                    process,
                    msg,
                    data.to_string(),
                );
            }
            Err(e) => {
                // Nothing runs on the target: the node it left is not fenced for it.
                let _ = self.store.clear_failed_over_from(process, node);
                fail(format!(
                    "phase restore on {target} from checkpoint {}: {e}{}",
                    k.id,
                    if running {
                        format!(
                            "; the process was stopped on {node} for it: restore again (POST \
                         /api/processes/{process}/restore) or start it anew"
                        )
                    } else {
                        String::new()
                    }
                ))
            }
        }
    }

    /// Restores `process` on `target` from `k` (recorded as `restore_id`), fetched from
    /// `holders`; records where it runs and which node it left. A call whose answer was lost is
    /// settled by asking the target.
    #[allow(clippy::too_many_arguments)]
    async fn restore_on(
        &self,
        restore_id: &str,
        process: &str,
        from: &str,
        target: &str,
        k: &apb::CheckpointInfo,
        holders: &[String],
        reason: &str,
    ) -> Result<apb::ProcessStatus, String> {
        let nodes = self.nodes().map_err(|e| e.to_string())?;
        let addresses: HashMap<String, String> =
            nodes.iter().map(|n| (n.node.clone(), n.address.clone())).collect();
        let address = addresses.get(target).ok_or(format!("node {target} is not known"))?;
        let _ = self.store.set_migration_target(restore_id, target);
        let _ = self.store.set_migration_phase(restore_id, "restore");
        // Before the call: a node the workload leaves is fenced from here on.
        let settle = |s: &Coordinator| {
            if from != target {
                s.store.set_failed_over(&FailedOver {
                    workload: process.to_string(),
                    from_node: from.to_string(),
                    to_node: target.to_string(),
                    at_ms: now_ms(),
                })
            } else {
                // Restored where it was: a copy here is the workload; a node it left earlier
                // stays fenced.
                s.store.clear_failed_over_from(process, target)
            }
        };
        settle(self).map_err(|e| e.to_string())?;
        let mut c = self.agents.client(address).map_err(|e| e.to_string())?;
        let req = apb::RestoreCheckpointRequest {
            checkpoint: Some(k.clone()),
            holders: peers(holders, target, &addresses),
            restore_id: restore_id.to_string(),
            reason: reason.to_string(),
        };
        let answer = match tokio::time::timeout(RESTORE_TIMEOUT, c.restore_checkpoint(req)).await {
            Ok(a) => a.map(|r| r.into_inner()),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer in {} s",
                RESTORE_TIMEOUT.as_secs()
            ))),
        };
        let s = match answer {
            Ok(s) => s,
            Err(status) if crate::ops::refused(&status) => {
                return Err(format!("node {target} refused: {}", status.message()))
            }
            Err(status) => {
                // No answer: it may have restored. Its own word decides.
                let asked = c.get_status(apb::WorkloadRef { id: process.to_string() }).await.ok();
                match asked.map(|r| r.into_inner()) {
                    Some(s) if s.exit.is_none() && s.held_for_migration.is_empty() => s,
                    _ => {
                        return Err(format!(
                            "node {target} did not answer ({}) and does not run it",
                            status.message()
                        ))
                    }
                }
            }
        };
        self.remember(target, &s).map_err(|e| e.to_string())?;
        Ok(s)
    }

    /// One failover sweep: restores what [`decide`] says, each workload in a task of its own,
    /// at most one at a time per workload.
    pub(crate) fn failover_sweep(self: &Arc<Self>) -> Result<(), CoordError> {
        if self.config.failover_grace.is_zero() {
            return Ok(());
        }
        let now = now_ms();
        let nodes: Vec<NodeView> = self
            .nodes()?
            .into_iter()
            .map(|n| NodeView { node: n.node, online: n.online, last_seen_ms: n.last_seen_ms })
            .collect();
        let workloads = self.workloads()?;
        // Checkpoints are read only for the workloads decide() may act on: protected, and
        // running on an offline node or reported fenced.
        let offline: HashSet<&str> =
            nodes.iter().filter(|n| !n.online).map(|n| n.node.as_str()).collect();
        let maybe = |(node, s): &&(String, apb::ProcessStatus)| {
            protected(s)
                && match s.exit {
                    None => offline.contains(node.as_str()),
                    Some(_) => s.lost_reason.starts_with(FENCED),
                }
        };
        let mut checkpoints = HashMap::new();
        // decide() reads the migrations that have not ended, and for a fenced workload its
        // newest completed restore (was it restored since it was fenced?): not the history.
        let mut migrations = self.store.unfinished_migrations()?;
        for (_, s) in workloads.iter().filter(maybe) {
            let Some(id) = s.spec.as_ref().map(|x| x.id.clone()) else { continue };
            if s.exit.is_some() {
                migrations.extend(self.store.latest_restore(&id)?);
            }
            let ks = infos(self.store.checkpoints(&id)?);
            checkpoints.insert(id, ks);
        }
        let world = World {
            nodes: &nodes,
            workloads: &workloads,
            checkpoints: &checkpoints,
            migrations: &migrations,
            started_ms: self.started_ms,
            now_ms: now,
            grace_ms: self.config.failover_grace.as_millis() as i64,
        };
        for b in blocked(&world) {
            if self.memory().blocked.insert((b.workload.clone(), b.migration.id.clone())) {
                let m = &b.migration;
                let msg = format!(
                    "failover of {} from {} waits: its migration {} to {} ({}) has not ended, \
                     and only {} can say whether it committed (if it did, the workload runs on \
                     {}); it is not restored while that is unknown, so it is unprotected until \
                     {} answers",
                    b.workload, b.node, m.id, m.target, m.status, b.node, m.target, b.node
                );
                tracing::warn!(workload = b.workload, node = b.node, migration = m.id, "{msg}");
                let data = serde_json::json!({"migrationId": m.id, "from": b.node, "to": m.target});
                self.emit_with(
                    "failover_blocked",
                    "warn",
                    &b.node,
                    &b.workload,
                    msg,
                    data.to_string(),
                )?;
            }
        }
        let actions = decide(&world);
        for a in actions {
            {
                let mut mem = self.memory();
                if mem.running.contains(&a.workload)
                    || mem.backoff.get(&a.workload).is_some_and(|b| b.0 > now)
                {
                    continue;
                }
                if a.checkpoints.is_empty() {
                    if mem.impossible.insert(a.workload.clone()) {
                        drop(mem);
                        self.announce_impossible(&a)?;
                    }
                    continue;
                }
                mem.running.insert(a.workload.clone());
            }
            let c = self.clone();
            tokio::spawn(async move {
                let id = a.workload.clone();
                if let Err(e) = c.run_failover(&a).await {
                    tracing::error!(workload = id, %e, "failover failed");
                }
                c.memory().running.remove(&id);
            });
        }
        Ok(())
    }

    fn why_lost(a: &Action) -> String {
        match &a.trigger {
            Trigger::Silent { silent_ms } => {
                format!("node {} silent for {} s", a.from, secs(*silent_ms))
            }
            Trigger::Fenced { reason } => format!("node {} fenced it ({reason})", a.from),
        }
    }

    fn announce_impossible(&self, a: &Action) -> Result<(), CoordError> {
        let msg = format!(
            "failover of {} impossible: {}, and {}; it is lost until {} comes back",
            a.workload,
            Self::why_lost(a),
            if a.recorded == 0 {
                "it has no checkpoint at all (its agent never reported one)".to_string()
            } else {
                format!(
                    "none of its {} checkpoints has a holder online other than {}",
                    a.recorded, a.from
                )
            },
            a.from
        );
        tracing::error!(workload = a.workload, node = a.from, "{msg}");
        self.emit("failover_impossible", "error", &a.from, &a.workload, msg)?;
        Ok(())
    }

    /// One failover: recorded, then tried on each target and checkpoint in turn.
    async fn run_failover(self: &Arc<Self>, a: &Action) -> Result<(), CoordError> {
        let exclude = matches!(a.trigger, Trigger::Silent { .. }).then_some(a.from.as_str());
        let plan = attempts(a, &self.candidates()?, exclude);
        let Some((_, first)) = plan.first().cloned() else {
            let msg = format!(
                "failover of {} ({}) found no node to restore it on: {}; retried later",
                a.workload,
                Self::why_lost(a),
                self.place(a.need_bytes, exclude).err().map(|e| e.to_string()).unwrap_or_else(
                    || "no online schedulable node holds or can fetch its checkpoints".into()
                )
            );
            self.back_off(&a.workload);
            self.emit("failover_failed", "error", &a.from, &a.workload, msg)?;
            return Ok(());
        };
        let m = {
            let _guard = self.migrating.lock().expect("migration lock poisoned");
            if self.migration_in_flight(&a.workload)?.is_some() {
                return Ok(());
            }
            let m = crate::ops::pending_migration(&a.workload, &a.from, &first, "failover");
            self.store.insert_migration(&m)?;
            m
        };
        self.memory().impossible.remove(&a.workload);
        let newest = &a.checkpoints[0].info;
        let msg = format!(
            "failover {} of {}: {}; restoring checkpoint {} (taken {} s before it was lost) on {first}",
            m.id,
            a.workload,
            Self::why_lost(a),
            newest.id,
            secs(a.lost_at_ms - newest.taken_at_ms)
        );
        tracing::warn!(workload = a.workload, from = a.from, to = first, "{msg}");
        let data = serde_json::json!({
            "migrationId": m.id,
            "checkpointId": newest.id,
            "checkpointTakenAt": newest.taken_at_ms,
            "from": a.from,
            "to": first,
        });
        self.emit_with("failover_started", "warn", &a.from, &a.workload, msg, data.to_string())?;
        let reason = format!("failover from node {}: {}", a.from, Self::why_lost(a));
        let mut tried: Vec<Attempt> = Vec::new();
        for (i, target) in plan {
            let k = &a.checkpoints[i];
            match self
                .restore_on(&m.id, &a.workload, &a.from, &target, &k.info, &k.holders, &reason)
                .await
            {
                Ok(_) => {
                    let now = now_ms();
                    self.store.finish_migration(&m.id, "completed", "", None, now)?;
                    self.memory().backoff.remove(&a.workload);
                    let lost = secs(a.lost_at_ms - k.info.taken_at_ms);
                    let down = secs(now - a.lost_at_ms);
                    let msg = format!(
                        "failover {} of {} completed: it runs on {target} from checkpoint {} \
                         (seq {}); about {lost} s of its work before {} was lost is gone, it was \
                         down {down} s",
                        m.id, a.workload, k.info.id, k.info.seq, a.from
                    );
                    tracing::info!(workload = a.workload, to = target, "{msg}");
                    let data = serde_json::json!({
                        "migrationId": m.id,
                        "checkpointId": k.info.id,
                        "checkpointTakenAt": k.info.taken_at_ms,
                        "from": a.from,
                        "to": target,
                        "lostSeconds": lost,
                        "downSeconds": down,
                        "attempts": tried.len() + 1,
                    });
                    self.emit_with(
                        "failover_completed",
                        "info",
                        &target,
                        &a.workload,
                        msg,
                        data.to_string(),
                    )?;
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(
                        workload = a.workload,
                        target,
                        checkpoint = k.info.id,
                        error,
                        "failover attempt failed"
                    );
                    tried.push(Attempt { checkpoint: k.info.id.clone(), target, error });
                }
            }
        }
        // Nothing runs anywhere else: the node it left is not fenced for it any more.
        self.store.clear_failed_over_from(&a.workload, &a.from)?;
        self.back_off(&a.workload);
        let list: Vec<String> = tried
            .iter()
            .map(|t| format!("checkpoint {} on {}: {}", t.checkpoint, t.target, t.error))
            .collect();
        let error = format!("every attempt failed ({}); retried later", list.join("; "));
        self.store.finish_migration(&m.id, "failed", &error, None, now_ms())?;
        let msg =
            format!("failover {} of {} ({}) failed: {error}", m.id, a.workload, Self::why_lost(a));
        let data = serde_json::json!({
            "migrationId": m.id,
            "from": a.from,
            "attempts": tried.iter().map(|t| serde_json::json!({
                "checkpointId": t.checkpoint, "target": t.target, "error": t.error,
            })).collect::<Vec<_>>(),
        });
        self.emit_with("failover_failed", "error", &a.from, &a.workload, msg, data.to_string())?;
        Ok(())
    }

    fn back_off(&self, workload: &str) {
        let mut mem = self.memory();
        let delay = mem
            .backoff
            .get(workload)
            .map(|b| (b.1 * 2).min(MAX_BACKOFF_MS))
            .unwrap_or(FIRST_BACKOFF_MS);
        mem.backoff.insert(workload.to_string(), (now_ms() + delay, delay));
    }

    /// Settles the restores (failovers and restores on demand) an earlier run left unfinished,
    /// by the target agent's word: the workload running there is completed and recorded, else
    /// failed (failover's sweep tries again). A target that does not answer is asked a few
    /// more times first.
    pub(crate) fn resolve_restores(self: &Arc<Self>) -> Result<(), CoordError> {
        let pending: Vec<MigrationRow> = self
            .store
            .unfinished_migrations()?
            .into_iter()
            .filter(|m| matches!(m.mode.as_str(), "failover" | "restore"))
            .collect();
        for m in pending {
            let c = self.clone();
            tokio::spawn(async move { c.resolve_restore(m).await });
        }
        Ok(())
    }

    async fn resolve_restore(&self, m: MigrationRow) {
        let mut delay = Duration::from_secs(1);
        for _ in 0..6 {
            let addr = self
                .nodes()
                .ok()
                .and_then(|ns| ns.into_iter().find(|n| n.node == m.target).map(|n| n.address));
            let asked = match addr.map(|a| self.agents.client(&a)) {
                Some(Ok(mut c)) => {
                    c.get_status(apb::WorkloadRef { id: m.process_id.clone() }).await
                }
                _ => Err(tonic::Status::unavailable(format!("node {} is not known", m.target))),
            };
            match asked {
                Ok(s) => {
                    let s = s.into_inner();
                    if s.exit.is_none() && s.held_for_migration.is_empty() {
                        let _ = self.remember(&m.target, &s);
                        let _ = self.store.finish_migration(&m.id, "completed", "", None, now_ms());
                        let msg = format!(
                            "{} {} of {} completed (found running on {} after a coordinator restart)",
                            m.mode, m.id, m.process_id, m.target
                        );
                        let _ = self.emit(
                            &format!("{}_completed", m.mode),
                            "info",
                            &m.target,
                            &m.process_id,
                            msg,
                        );
                        return;
                    }
                    break;
                }
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        let error = format!(
            "interrupted: the coordinator restarted during it, and {} does not run {}{}",
            m.target,
            m.process_id,
            if m.mode == "failover" { "; failover tries again" } else { "; restore it again" }
        );
        // Nothing runs on the target: the node it left is not fenced for it any more.
        let _ = self.store.clear_failed_over_from(&m.process_id, &m.source);
        let _ = self.store.finish_migration(&m.id, "failed", &error, None, now_ms());
        let _ = self.emit(
            &format!("{}_failed", m.mode),
            "error",
            &m.target,
            &m.process_id,
            format!("{} {} of {} failed: {error}", m.mode, m.id, m.process_id),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: i64 = 30_000;
    const START: i64 = 1_000_000;

    fn node(name: &str, online: bool, last_seen_ms: i64) -> NodeView {
        NodeView { node: name.into(), online, last_seen_ms }
    }

    fn workload(id: &str, every: u32) -> apb::ProcessStatus {
        apb::ProcessStatus {
            spec: Some(apb::WorkloadSpec {
                id: id.into(),
                checkpoint_interval_secs: every,
                ..Default::default()
            }),
            state: apb::ProcessState::Running as i32,
            rss_bytes: 100 << 20,
            ..Default::default()
        }
    }

    fn fenced(id: &str, at: i64) -> apb::ProcessStatus {
        apb::ProcessStatus {
            state: apb::ProcessState::Exited as i32,
            exit: Some(apb::ExitInfo { code: None, signal: Some(9), exited_at_ms: at }),
            lost_reason: "fenced: lease of 15000 ms ran out".into(),
            ..workload(id, 30)
        }
    }

    fn ckpt(id: &str, workload: &str, taken: i64, holders: &[&str]) -> apb::CheckpointInfo {
        apb::CheckpointInfo {
            id: id.into(),
            workload_id: workload.into(),
            taken_at_ms: taken,
            holders: holders.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    fn migration(process: &str, mode: &str, status: &str, started: i64) -> MigrationRow {
        MigrationRow {
            id: format!("m-{process}"),
            process_id: process.into(),
            source: "a".into(),
            target: "b".into(),
            mode: mode.into(),
            status: status.into(),
            error: String::new(),
            result: None,
            started_at_ms: started,
            finished_at_ms: None,
        }
    }

    struct Fake {
        nodes: Vec<NodeView>,
        workloads: Vec<(String, apb::ProcessStatus)>,
        checkpoints: HashMap<String, Vec<apb::CheckpointInfo>>,
        migrations: Vec<MigrationRow>,
    }

    impl Fake {
        fn decide(&self, now: i64) -> Vec<Action> {
            decide(&World {
                nodes: &self.nodes,
                workloads: &self.workloads,
                checkpoints: &self.checkpoints,
                migrations: &self.migrations,
                started_ms: START,
                now_ms: now,
                grace_ms: GRACE,
            })
        }
    }

    /// Node a went silent at START + 10 s; b and c are online.
    fn cluster() -> Fake {
        let lost = START + 10_000;
        Fake {
            nodes: vec![node("a", false, lost), node("b", true, lost + 60_000), node("c", true, 0)],
            workloads: vec![
                ("a".into(), workload("w-prot", 30)),
                ("a".into(), workload("w-plain", 0)),
                ("b".into(), workload("w-elsewhere", 30)),
            ],
            checkpoints: [(
                "w-prot".to_string(),
                vec![
                    ckpt("c-3", "w-prot", lost - 1_000, &["a"]),
                    ckpt("c-2", "w-prot", lost - 31_000, &["a", "c"]),
                    ckpt("c-1", "w-prot", lost - 61_000, &["a", "s3"]),
                ],
            )]
            .into(),
            migrations: vec![],
        }
    }

    #[test]
    fn a_silent_nodes_protected_workloads_fail_over_after_the_grace_only() {
        let f = cluster();
        let lost = START + 10_000;
        assert!(f.decide(lost + GRACE).is_empty(), "not longer than the grace yet");
        let got = f.decide(lost + GRACE + 1);
        assert_eq!(got.len(), 1, "unprotected and other nodes' workloads stay: {got:?}");
        let a = &got[0];
        assert_eq!((a.workload.as_str(), a.from.as_str()), ("w-prot", "a"));
        assert_eq!(a.trigger, Trigger::Silent { silent_ms: GRACE + 1 });
        assert_eq!(a.lost_at_ms, lost);
        assert_eq!(a.need_bytes, 100 << 20);
        // c-3 is only on the lost node: the newest usable is c-2 (on c), then c-1 (s3).
        let usable: Vec<(&str, Vec<String>)> =
            a.checkpoints.iter().map(|k| (k.info.id.as_str(), k.holders.clone())).collect();
        assert_eq!(usable, [("c-2", vec!["c".to_string()]), ("c-1", vec!["s3".to_string()])]);
        assert_eq!(a.recorded, 3);
    }

    #[test]
    fn silence_counts_from_the_coordinators_start_at_the_earliest() {
        let mut f = cluster();
        // Last seen long before this coordinator started (it was down): a fresh grace.
        f.nodes[0].last_seen_ms = START - 3_600_000;
        assert!(f.decide(START + GRACE).is_empty());
        assert_eq!(f.decide(START + GRACE + 1).len(), 1);
    }

    #[test]
    fn held_copies_ended_workloads_and_migrating_ones_are_left_alone() {
        let lost = START + 10_000;
        let now = lost + GRACE + 1;
        let mut f = cluster();
        f.workloads[0].1.held_for_migration = "m-9".into();
        assert!(f.decide(now).is_empty(), "a held copy is not the workload");
        let mut f = cluster();
        f.workloads[0].1.exit =
            Some(apb::ExitInfo { code: Some(0), signal: None, exited_at_ms: 5 });
        assert!(f.decide(now).is_empty(), "ended on a silent node: nothing to restore");
        for status in ["pending", "transfer", "restore"] {
            let mut f = cluster();
            f.migrations.push(migration("w-prot", "failover", status, 1));
            assert!(f.decide(now).is_empty(), "in flight: {status}");
        }
        let mut f = cluster();
        f.migrations.push(migration("w-prot", "stop-and-copy", "failed", 1));
        assert_eq!(f.decide(now).len(), 1, "an ended migration does not block");
    }

    #[test]
    fn a_failover_waiting_for_an_unfinished_migration_is_said() {
        let now = START + 10_000 + GRACE + 1;
        let mut f = cluster();
        f.migrations.push(migration("w-prot", "stop-and-copy", "commit", 1));
        let world = World {
            nodes: &f.nodes,
            workloads: &f.workloads,
            checkpoints: &f.checkpoints,
            migrations: &f.migrations,
            started_ms: START,
            now_ms: now,
            grace_ms: GRACE,
        };
        assert!(decide(&world).is_empty());
        let b = blocked(&world);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].workload.as_str(), b[0].node.as_str()), ("w-prot", "a"));
        assert_eq!(b[0].migration.status, "commit");
        // Not before the grace; not for a failover in flight (that is the failover itself).
        assert!(blocked(&World { now_ms: START + 10_000 + GRACE, ..world }).is_empty());
        let mut failing_over = f.migrations.clone();
        failing_over[0].mode = "failover".into();
        assert!(blocked(&World { migrations: &failing_over, ..world }).is_empty());
    }

    #[test]
    fn a_workload_without_usable_checkpoints_is_still_reported_with_none() {
        let mut f = cluster();
        f.checkpoints.insert("w-prot".into(), vec![ckpt("c-1", "w-prot", 1, &["a"])]);
        let got = f.decide(START + 10_000 + GRACE + 1);
        assert_eq!((got[0].checkpoints.len(), got[0].recorded), (0, 1));
        f.checkpoints.clear();
        let got = f.decide(START + 10_000 + GRACE + 1);
        assert_eq!((got[0].checkpoints.len(), got[0].recorded), (0, 0));
    }

    #[test]
    fn a_workload_fenced_by_an_online_node_is_restored_once() {
        let now = START + 100_000;
        let mut f = cluster();
        f.nodes[0] = node("a", true, now);
        f.workloads[0].1 = fenced("w-prot", now - 5_000);
        let got = f.decide(now);
        assert_eq!(got.len(), 1);
        assert!(
            matches!(&got[0].trigger, Trigger::Fenced { reason } if reason.starts_with("fenced"))
        );
        assert_eq!(got[0].lost_at_ms, now - 5_000);
        // Its own node holds the newest: usable (the node is online, not lost).
        assert_eq!(got[0].checkpoints[0].info.id, "c-3");
        // A failover or restore started since it was fenced answers it (finished or not).
        let mut done = migration("w-prot", "failover", "completed", now - 4_000);
        done.finished_at_ms = Some(now - 3_000);
        f.migrations.push(done);
        assert!(f.decide(now).is_empty());
        f.migrations[0].status = "failed".into();
        assert_eq!(f.decide(now).len(), 1, "one that failed does not");
        f.migrations[0].status = "completed".into();
        f.migrations[0].started_at_ms = now - 6_000;
        assert_eq!(f.decide(now).len(), 1, "one from before the fencing does not");
        // Another way to end is not a fencing.
        f.workloads[0].1.lost_reason = "post-copy pages stopped arriving".into();
        assert!(f.decide(now).is_empty());
    }

    fn cand(node: &str, workloads: u32, gib: u64) -> Candidate {
        Candidate {
            node: node.into(),
            online: true,
            schedulable: true,
            available_bytes: gib << 30,
            workloads,
        }
    }

    #[test]
    fn targets_prefer_holders_then_the_least_loaded_never_the_excluded() {
        let mut cs = vec![cand("a", 0, 8), cand("b", 1, 8), cand("c", 5, 8), cand("d", 0, 1)];
        cs.push(Candidate { online: false, ..cand("e", 0, 8) });
        cs.push(Candidate { schedulable: false, ..cand("f", 0, 8) });
        let holders = vec!["c".to_string(), "s3".to_string()];
        assert_eq!(targets(&cs, 2 << 30, Some("a"), &holders), ["c", "b"]);
        assert_eq!(targets(&cs, 2 << 30, None, &[]), ["a", "b", "c"]);
        assert!(targets(&cs, 16 << 30, None, &holders).is_empty());
    }

    #[test]
    fn attempts_go_through_targets_then_older_checkpoints_bounded() {
        let f = cluster();
        let a = f.decide(START + 10_000 + GRACE + 1).remove(0);
        let cs = vec![cand("b", 0, 8), cand("c", 3, 8)];
        let got = attempts(&a, &cs, Some("a"));
        assert_eq!(
            got,
            [
                (0, "c".to_string()),
                (0, "b".to_string()),
                (1, "b".to_string()),
                (1, "c".to_string())
            ]
        );
        let many: Vec<Candidate> = (0..9).map(|i| cand(&format!("n{i}"), 0, 8)).collect();
        let a4 = Action { checkpoints: vec![a.checkpoints[1].clone(); 4], ..a };
        let got = attempts(&a4, &many, None);
        assert_eq!(got.len(), MAX_ATTEMPTS);
        assert_eq!(got.iter().filter(|x| x.0 == 0).count(), TARGETS_PER_CHECKPOINT);
    }

    #[test]
    fn peers_are_node_holders_with_addresses_the_target_first() {
        let addresses: HashMap<String, String> =
            [("b", "https://b:1"), ("c", "https://c:1")].map(|(n, a)| (n.into(), a.into())).into();
        let holders: Vec<String> = ["b", "s3", "c", "gone"].map(String::from).into();
        let got: Vec<String> =
            peers(&holders, "c", &addresses).into_iter().map(|p| p.node).collect();
        assert_eq!(got, ["c", "b"], "s3 and unknown nodes left out");
        let got: Vec<String> =
            peers(&holders, "x", &addresses).into_iter().map(|p| p.address).collect();
        assert_eq!(got, ["https://b:1", "https://c:1"]);
    }
}
