//! Draining a node: it is cordoned, then every workload on it moves to a placed node through the
//! ordinary migration machinery ([`Coordinator::start_migration`]), a few at a time, each in the
//! mode the plan chose to fit the deadline (`placement::plan_drain`).

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::agent as apb;
use prost::Message;

use crate::error::CoordError;
use crate::placement::{plan_drain, Rates, ToMove};
use crate::store::{DrainItem, DrainRow};
use crate::{now_ms, Coordinator, MigrationMode};

/// The longest deadline a drain takes (a day).
pub const MAX_DEADLINE_SECS: u64 = 86_400;
/// How often a drain looks at its migrations.
const POLL: Duration = Duration::from_millis(200);
/// Recent completed migrations of a node that set a drain's stop-and-copy rate.
const RECENT: usize = 5;

/// Why a drain a coordinator was running when it stopped ends failed at its next start.
pub const INTERRUPTED: &str = "interrupted: the coordinator restarted during the drain; the \
    migrations it had started are resolved as any other, the node stays cordoned, and the \
    workloads not moved are still on it: run the drain again";

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

impl Coordinator {
    /// The drain of `node` that has not ended, if any.
    pub fn running_drain(&self, node: &str) -> Result<Option<DrainRow>, CoordError> {
        Ok(self.store.drains()?.into_iter().find(|d| d.node == node && d.ended_at_ms.is_none()))
    }

    pub fn drains(&self) -> Result<Vec<DrainRow>, CoordError> {
        Ok(self.store.drains()?)
    }

    /// Workloads a drain of `node` must move: reported on it, not ended, not a held copy.
    fn on_node(&self, node: &str) -> Result<Vec<apb::ProcessStatus>, CoordError> {
        Ok(self
            .workloads()?
            .into_iter()
            .filter(|(n, s)| n == node && s.exit.is_none() && s.held_for_migration.is_empty())
            .map(|(_, s)| s)
            .collect())
    }

    /// Stop-and-copy's rate on `node` from its last completed stop-and-copy migrations.
    fn rates(&self, node: &str) -> Result<Rates, CoordError> {
        let mut recent: Vec<(u64, u64)> = Vec::new();
        self.store.completed_from(node, "stop-and-copy", |m| {
            let figures = m.result.as_deref().and_then(|b| apb::MigrationResult::decode(b).ok());
            if let (Some(r), Some(end)) = (figures, m.finished_at_ms) {
                recent.push((r.bytes_raw, (end - m.started_at_ms).max(0) as u64));
            }
            recent.len() < RECENT
        })?;
        Ok(Rates::observed(&recent))
    }

    /// Starts draining `node`: cordons it, plans its workloads' migrations for the deadline and
    /// returns the drain's record at once; the migrations run in the background. Refused for an
    /// unknown node, an offline one, one already being drained, and a deadline of 0 or over a
    /// day. A plan that cannot fit the deadline is said in the record, and the drain proceeds.
    pub fn start_drain(
        self: &Arc<Self>,
        node: &str,
        deadline_secs: Option<u64>,
    ) -> Result<DrainRow, CoordError> {
        if let Some(d) = deadline_secs.filter(|d| *d == 0 || *d > MAX_DEADLINE_SECS) {
            return Err(CoordError::Invalid(format!(
                "deadlineSeconds {d} is out of range: give 1 to {MAX_DEADLINE_SECS} seconds, or \
                 leave it out for no deadline"
            )));
        }
        let info = self
            .nodes()?
            .into_iter()
            .find(|n| n.node == node)
            .ok_or_else(|| CoordError::NotFound(format!("no server {node:?}")))?;
        if !info.online {
            return Err(CoordError::Unavailable(format!(
                "server {node} is offline: its workloads cannot migrate until it is back"
            )));
        }
        let row = {
            let _guard = self.draining.lock().expect("drain lock poisoned");
            if let Some(d) = self.running_drain(node)? {
                return Err(CoordError::Conflict(format!(
                    "node {node} is already being drained (drain {}); wait for it to end (GET \
                     /api/drains/{}), then drain again if workloads are left",
                    d.id, d.id
                )));
            }
            self.set_schedulable(node, false)?;
            let concurrency = self.config.drain_concurrency.max(1);
            let workloads = self.on_node(node)?;
            let moves: Vec<ToMove> = workloads
                .iter()
                .filter_map(|s| {
                    let spec = s.spec.as_ref()?;
                    Some(ToMove {
                        id: spec.id.clone(),
                        bytes: s.rss_bytes,
                        post_copy_ok: spec.engine != apb::Engine::Cooperative as i32,
                    })
                })
                .collect();
            let deadline_ms = deadline_secs.map(|d| d * 1000);
            let plan = plan_drain(&moves, deadline_ms, concurrency, &self.rates(node)?);
            let total: u64 = moves.iter().map(|m| m.bytes).sum();
            let message = match deadline_secs {
                Some(d) if !plan.fits => format!(
                    "the drain cannot fit its deadline of {d} s: {} workloads ({} MiB) are \
                     estimated to take {:.1} s at {concurrency} at a time, even with post-copy \
                     for every one that can; it proceeds anyway",
                    moves.len(),
                    mib(total),
                    plan.estimate_ms as f64 / 1000.0
                ),
                _ => String::new(),
            };
            let items = plan
                .moves
                .iter()
                .map(|(id, post)| DrainItem {
                    process: id.clone(),
                    bytes: moves.iter().find(|m| &m.id == id).map(|m| m.bytes).unwrap_or(0),
                    mode: if *post { "post-copy" } else { "stop-and-copy" }.into(),
                    status: "pending".into(),
                    ..Default::default()
                })
                .collect();
            let row = DrainRow {
                id: crate::ops::new_id_with("d"),
                node: node.to_string(),
                status: "running".into(),
                deadline_ms: deadline_ms.map(|d| d as i64),
                estimate_ms: plan.estimate_ms as i64,
                fits: plan.fits,
                concurrency: concurrency as u32,
                message,
                started_at_ms: now_ms(),
                ended_at_ms: None,
                items,
            };
            self.store.insert_drain(&row)?;
            row
        };
        let post = row.items.iter().filter(|i| i.mode == "post-copy").count();
        let msg = format!(
            "drain {} of {node} started: {} workloads, estimated {:.1} s{} ({post} by post-copy, \
             {} at a time){}",
            row.id,
            row.items.len(),
            row.estimate_ms as f64 / 1000.0,
            deadline_secs.map(|d| format!(" for a deadline of {d} s")).unwrap_or_default(),
            row.concurrency,
            if row.message.is_empty() { String::new() } else { format!("; {}", row.message) }
        );
        let data = serde_json::json!({
            "drainId": row.id, "node": node, "workloads": row.items.len(),
            "estimateMs": row.estimate_ms, "deadlineMs": row.deadline_ms, "fits": row.fits,
        });
        let level = if row.fits { "info" } else { "warn" };
        self.emit_with("drain_started", level, node, "", msg, data.to_string())?;
        let (c, d) = (self.clone(), row.clone());
        tokio::spawn(async move { c.run_drain(d).await });
        Ok(row)
    }

    async fn run_drain(self: Arc<Self>, row: DrainRow) {
        let slots = Arc::new(tokio::sync::Semaphore::new(row.concurrency.max(1) as usize));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let total = row.items.len();
        let mut tasks = Vec::new();
        for item in row.items.clone() {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let (c, id, node, done) =
                (self.clone(), row.id.clone(), row.node.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                c.move_one(&id, &node, item, &done, total).await;
                drop(permit);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let took = (now_ms() - row.started_at_ms).max(0) as f64 / 1000.0;
        let left: Vec<String> = match self.on_node(&row.node) {
            Ok(w) => w.iter().filter_map(|s| s.spec.as_ref().map(|x| x.id.clone())).collect(),
            Err(e) => vec![format!("(unknown: {e})")],
        };
        let late = row
            .deadline_ms
            .filter(|d| took * 1000.0 > *d as f64)
            .map(|d| format!("; it took longer than its deadline of {} s", d / 1000))
            .unwrap_or_default();
        let (status, message) = if left.is_empty() {
            ("completed", format!("every workload moved off {} in {took:.1} s{late}", row.node))
        } else {
            (
                "failed",
                format!(
                    "{} workload{} left on {} after {took:.1} s: {} (see each one's migration); \
                     the node stays cordoned: drain it again, or uncordon it",
                    left.len(),
                    if left.len() == 1 { " is" } else { "s are" },
                    row.node,
                    left.join(", ")
                ),
            )
        };
        // Keep the plan's warning in the record next to how it ended.
        let recorded = if row.message.is_empty() {
            message.clone()
        } else {
            format!("{}; {message}", row.message)
        };
        if let Err(e) = self.store.end_drain(&row.id, status, &recorded, now_ms()) {
            tracing::error!(drain = row.id, %e, "cannot record a drain's end");
        }
        let data = serde_json::json!({"drainId": row.id, "node": row.node, "status": status, "left": left});
        let level = if status == "completed" { "info" } else { "error" };
        let msg = format!("drain {} of {} {status}: {message}", row.id, row.node);
        tracing::info!(drain = row.id, status, "{msg}");
        let _ = self.emit_with("drain_ended", level, &row.node, "", msg, data.to_string());
    }

    /// Moves one workload of a drain and records each step of it.
    async fn move_one(
        self: &Arc<Self>,
        drain: &str,
        node: &str,
        mut item: DrainItem,
        done: &std::sync::atomic::AtomicUsize,
        total: usize,
    ) {
        let record = |item: &DrainItem, level: &str| {
            if let Err(e) = self.store.set_drain_item(drain, item) {
                tracing::error!(drain, %e, "cannot record a drain's step");
            }
            let n = done.load(std::sync::atomic::Ordering::SeqCst);
            let msg = match item.status.as_str() {
                "migrating" => format!(
                    "drain {drain}: {} migrating to {} ({}, migration {})",
                    item.process, item.target, item.mode, item.migration
                ),
                "completed" => format!(
                    "drain {drain}: {} moved to {} ({n} of {total} done)",
                    item.process, item.target
                ),
                s => format!(
                    "drain {drain}: {} {s}: {} ({n} of {total} done)",
                    item.process, item.error
                ),
            };
            let data = serde_json::json!({
                "drainId": drain, "processId": item.process, "migrationId": item.migration,
                "target": item.target, "mode": item.mode, "status": item.status,
                "error": item.error, "done": n, "total": total,
            });
            let _ =
                self.emit_with("drain_progress", level, node, &item.process, msg, data.to_string());
        };
        let finish = |item: &mut DrainItem, status: &str, error: String| {
            item.status = status.into();
            item.error = error;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        // Where it is now: it may have ended, or be migrating already (started by hand).
        match self.workload_node(&item.process) {
            Ok((n, s)) if n == node && s.exit.is_none() => {}
            Ok((n, s)) if s.exit.is_some() => {
                finish(
                    &mut item,
                    "ended",
                    format!("the process ended on {n} before its migration"),
                );
                return record(&item, "info");
            }
            Ok((n, _)) => {
                // Moved off by another hand since the plan: nothing to do.
                item.target = n;
                finish(&mut item, "completed", String::new());
                return record(&item, "info");
            }
            Err(e) => {
                finish(&mut item, "ended", e.to_string());
                return record(&item, "info");
            }
        }
        let in_flight = match self.migration_in_flight(&item.process) {
            Ok(m) => m,
            Err(e) => {
                finish(&mut item, "failed", e.to_string());
                return record(&item, "error");
            }
        };
        let m = match in_flight {
            Some(m) => {
                item.mode = m.mode.clone();
                m
            }
            None => {
                let mode = if item.mode == "post-copy" {
                    MigrationMode::PostCopy
                } else {
                    MigrationMode::StopAndCopy
                };
                match self.start_migration(&item.process, None, Some(node), mode) {
                    Ok(m) => m,
                    Err(e) => {
                        finish(&mut item, "failed", e.to_string());
                        return record(&item, "error");
                    }
                }
            }
        };
        item.migration = m.id.clone();
        item.target = m.target.clone();
        item.status = "migrating".into();
        record(&item, "info");
        loop {
            tokio::time::sleep(POLL).await;
            let now = match self.store.migration(&m.id) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(drain, %e, "cannot read a drain's migration");
                    continue;
                }
            };
            match now {
                Some(x) if x.is_final() => {
                    let ok = x.status == "completed";
                    finish(&mut item, &x.status, x.error.clone());
                    return record(&item, if ok { "info" } else { "error" });
                }
                Some(_) => {}
                None => {
                    finish(&mut item, "failed", "its migration's record is gone".into());
                    return record(&item, "error");
                }
            }
        }
    }
}
