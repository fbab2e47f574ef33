//! Finishing or undoing a migration whose source agent lost track of it: the agent was killed
//! mid-migration and restarted, or the target never answered the commit. The source's ledger
//! record (migrate::ledger) says how far it got, and the target is asked what it did with its
//! copy; the rule (docs/reliability.md):
//!
//! | source's record | target says | then |
//! |---|---|---|
//! | `frozen` (no commit was sent) | (not asked) | resume the original; abort the target's copy |
//! | `committing` / `resumed` | held | abort the copy, then resume the original |
//! | `committing` / `resumed` | committed | kill the original (post-copy: the copy lives only if every page had arrived, else it is lost) |
//! | `committing` / `resumed` | discarded, or no record | resume the original (the copy never ran) |
//! | `committing` / `resumed` | no answer | keep the original frozen and ask again (backoff to 30 s) |
//!
//! A target writes "committed" to disk before it resumes a copy, so "no record" proves the copy
//! never ran. Until the migration is resolved the workload is held like a migrating one: every
//! operation on it is refused.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::agent as pb;
use ferry_proto::agent::agent_client::AgentClient;
use tonic::transport::Channel;

use super::finish::IncomingState;
use super::ledger::{self, OutStep, Outgoing};
use super::out::MigrationReport;
use super::{Live, MigrationState, Phase};
use crate::agent::Agent;
use crate::workload::{continue_tree, Engine, Workload};

/// How long one question to the target may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two questions to a target that does not answer.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long an abort nobody has to wait for is retried.
const ABORT_RETRY_FOR: Duration = Duration::from_secs(600);
/// How long a CRIU left over from the dead agent may take to let go of the original.
const TRACER_WAIT: Duration = Duration::from_secs(30);

/// At the agent's start, after its workloads were re-adopted: resolves every migration the
/// ledger has not seen end, and resumes workloads ferry had frozen that nothing holds.
pub(crate) fn start(agent: &Arc<Agent>) {
    let mut claimed = HashSet::new();
    for rec in ledger::list_out(&agent.config().data_dir) {
        if rec.step == OutStep::Ended {
            continue;
        }
        tracing::warn!(
            migration = rec.migration_id,
            id = rec.workload_id,
            step = ?rec.step,
            target = rec.target_node,
            "a migration was in flight when this agent stopped; resolving it"
        );
        claimed.insert(rec.workload_id.clone());
        spawn(agent.clone(), rec);
    }
    sweep_scratch(agent, &claimed);
    for w in agent.workloads() {
        if let Some(fill) = w.lazy_fill().filter(|_| w.exit_info().is_none()) {
            tokio::spawn(settle_lazy_fill(agent.clone(), w.clone(), fill));
        }
        if let Some(net) = w.net.clone() {
            // Its address is answered here (again: the earlier agent's hold device went with it),
            // unless a migration's resolution or commit decides where it runs.
            let settled = w.exit_info().is_none()
                && !claimed.contains(w.id())
                && w.pending_migration().is_none()
                && w.moved_out().is_none()
                && w.lost().is_none();
            if settled {
                let (agent, id) = (agent.clone(), w.id().to_string());
                tokio::spawn(async move {
                    if let Err(e) = agent.attach_network(&net).await {
                        tracing::warn!(id, address = %net.address, %e, "cannot answer for the re-adopted workload's address");
                    }
                });
            }
        }
        let untouchable = claimed.contains(w.id())
            || w.exit_info().is_some()
            || w.is_paused()
            || w.pending_migration().is_some()
            || w.moved_out().is_some()
            || w.lost().is_some();
        if untouchable {
            continue;
        }
        // Not paused, yet every task stopped, ferry-init too (which never stops itself): an
        // earlier agent stopped it (a pause or a freeze that never got recorded) and died.
        tokio::task::spawn_blocking(move || {
            if crate::workload::all_stopped(&w) {
                tracing::warn!(id = w.id(), pid = w.init_pid, "re-adopted workload was left frozen by an earlier agent and is not paused; resuming it");
                if let Err(e) = continue_tree(&w, &w.self_stopped()) {
                    tracing::warn!(id = w.id(), %e, "cannot resume the re-adopted workload");
                }
            }
        });
    }
}

/// How long a lazy-pages daemon an earlier agent left may go on filling a workload's memory.
const FILL_WAIT: Duration = Duration::from_secs(600);

/// A workload whose memory a lazy-pages daemon was still filling when the earlier agent stopped
/// (its tasks wait on a missing page meanwhile: the fd store holds their userfaultfds). Once the
/// daemon is gone (a post-copy daemon goes with the agent, whose page tunnel it used; one filling
/// from local images may finish), its log says whether every page arrived: then the workload
/// runs on; if not, it is killed and marked lost, never left running on zero pages.
async fn settle_lazy_fill(agent: Arc<Agent>, w: Arc<Workload>, fill: crate::workload::LazyFill) {
    let deadline = tokio::time::Instant::now() + FILL_WAIT;
    let daemon_alive = |f: &crate::workload::LazyFill| {
        crate::sys::proc::start_ticks(f.pid) == Some(f.start_ticks)
            && crate::sys::proc::task_state(f.pid, f.pid).is_ok_and(|s| s != 'Z')
    };
    while daemon_alive(&fill) {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!(
                id = w.id(),
                pid = fill.pid,
                "the lazy-pages daemon an earlier agent left is still running; stopping it"
            );
            let _ = crate::sys::signal::send(fill.pid, crate::sys::signal::Sig::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&fill.log);
    let count = crate::engine::lazy::PageCount::of_log(log.as_deref().unwrap_or_default());
    let node = &agent.config().node;
    if log.is_ok() && count.remaining() == 0 {
        tracing::info!(id = w.id(), migration = fill.migration_id, pages = count.total, "every page of the workload's memory had arrived when the earlier agent stopped; it runs on");
        w.set_lazy_fill(None);
    } else {
        let why = format!(
            "its memory stopped arriving when the agent on node {node} stopped during \
             migration {}: {} never arrived (criu lazy-pages log {})",
            fill.migration_id,
            count.missing(),
            fill.log.display()
        );
        agent.lose_workload(&w, &fill.migration_id, &why);
        w.wait_exit(Duration::from_secs(10)).await;
        w.set_lazy_fill(None);
    }
    // Only now: until it is dead, its tasks wait on a missing page rather than read zeros.
    if let Some(store) = agent.fd_store() {
        let _ = store.drop_prefix(&format!("{}:uffd:", w.id()));
    }
    agent.remove_migration_dir(&fill.migration_id);
}

/// How long a leftover scratch directory waits for a process of an earlier agent (a lazy-pages
/// daemon still filling a committed copy's memory from its images) to let go of it.
const SCRATCH_WAIT: Duration = Duration::from_secs(600);

/// Removes the scratch directories (migrations/ID) an earlier agent left for migrations that are
/// over here: neither being resolved (`claimed_workloads`'s migrations) nor held for a commit. A
/// directory some process still uses (a lazy-pages daemon that outlived the agent, filling the
/// committed copy's memory from the images in it) goes once that process let go of it.
fn sweep_scratch(agent: &Arc<Agent>, claimed_workloads: &HashSet<String>) {
    if agent.config().keep_scratch {
        return;
    }
    let data = agent.config().data_dir.clone();
    let mut busy: HashSet<String> = ledger::list_out(&data)
        .into_iter()
        .filter(|r| r.step != OutStep::Ended || claimed_workloads.contains(&r.workload_id))
        .map(|r| r.migration_id)
        .collect();
    busy.extend(agent.workloads().iter().filter_map(|w| w.pending_migration()));
    // Its log says whether a re-adopted workload's memory is complete (settle_lazy_fill).
    busy.extend(agent.workloads().iter().filter_map(|w| w.lazy_fill().map(|f| f.migration_id)));
    let Ok(dirs) = std::fs::read_dir(data.join("migrations")) else { return };
    for dir in dirs.flatten() {
        let mid = dir.file_name().to_string_lossy().into_owned();
        if busy.contains(&mid) || !crate::workload::valid_id(&mid) {
            continue;
        }
        let agent = agent.clone();
        tokio::spawn(async move {
            let path = dir.path();
            let deadline = tokio::time::Instant::now() + SCRATCH_WAIT;
            loop {
                let p = path.clone();
                let users =
                    tokio::task::spawn_blocking(move || crate::sys::proc::processes_using(&p))
                        .await
                        .unwrap_or_default();
                if users.is_empty() || tokio::time::Instant::now() > deadline {
                    tracing::info!(
                        migration = mid,
                        ?users,
                        "removing a scratch directory an earlier agent left"
                    );
                    agent.remove_migration_dir(&mid);
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// Resolves the migration `rec` describes in the background, holding its workload (every
/// operation refused) until it is resolved.
pub(crate) fn spawn(agent: Arc<Agent>, rec: Outgoing) {
    let w = agent.get(&rec.workload_id).ok().filter(|w| w.exit_info().is_none());
    if let Some(w) = &w {
        w.hold_migration(&rec.migration_id, target_name(&rec));
    }
    let live = Arc::new(Live {
        workload_id: rec.workload_id.clone(),
        phases: std::sync::Mutex::new(vec![(Phase::Recovering, crate::sys::now_ms())]),
        progress: Default::default(),
        post_copy_pages: std::sync::Mutex::new(None),
    });
    agent.record_migration(&rec.migration_id, MigrationState::Running(live));
    tokio::spawn(async move {
        let (outcome, error) = resolve(&agent, &rec, w.as_ref()).await;
        if let Some(w) = &w {
            w.end_migration();
        }
        if !agent.config().keep_scratch {
            // What the interrupted dump left (images, CRIU's work dir, smaps copies).
            let _ = std::fs::remove_dir_all(
                agent.config().data_dir.join("migrations").join(&rec.migration_id),
            );
        }
        match outcome {
            Phase::Completed => {
                tracing::info!(migration = rec.migration_id, "migration resolved: completed")
            }
            _ => tracing::warn!(
                migration = rec.migration_id,
                outcome = outcome.as_str(),
                error = error.as_deref().unwrap_or(""),
                "migration resolved"
            ),
        }
        let ended = Outgoing {
            step: OutStep::Ended,
            outcome: Some(outcome.as_str().to_string()),
            error,
            at_ms: crate::sys::now_ms(),
            ..rec
        };
        if let Err(e) = ledger::write_out(&agent.config().data_dir, &ended) {
            tracing::warn!(migration = ended.migration_id, %e, "cannot record the end of the migration");
        }
        let engine = w.as_ref().map(|w| w.spec.engine).unwrap_or(Engine::Criu);
        let report = report_of(&ended, &agent.config().node, engine);
        agent.record_migration(&ended.migration_id, MigrationState::Done(Box::new(report)));
    });
}

/// The report of a migration known only from its ledger record (after a restart).
pub(crate) fn report_of(rec: &Outgoing, node: &str, engine: Engine) -> MigrationReport {
    let outcome = match rec.outcome.as_deref() {
        Some("completed") => Phase::Completed,
        Some("rolled_back") => Phase::RolledBack,
        _ => Phase::Failed,
    };
    MigrationReport {
        migration_id: rec.migration_id.clone(),
        workload_id: rec.workload_id.clone(),
        source_node: node.to_string(),
        target_node: rec.target_node.clone(),
        engine,
        outcome,
        error: rec.error.clone(),
        failed_phase: (outcome != Phase::Completed).then_some(Phase::Recovering),
        timeline: Default::default(),
        downtime_ms: 0,
        total_ms: 0,
        restore_ms: 0,
        bytes_raw: 0,
        bytes_wire: 0,
        target_status: None,
        criu_log: None,
        post_copy: rec.post_copy,
        post_copy_pages: None,
        transfer_codec: String::new(),
        bytes_zero: 0,
    }
}

fn target_name(rec: &Outgoing) -> &str {
    if rec.target_node.is_empty() {
        &rec.target
    } else {
        &rec.target_node
    }
}

/// What to do with the original.
enum Decision {
    /// The target's copy never ran and never will: the original resumes.
    Resume(String),
    /// The workload runs on the target (`None`), or ran there and was lost (`Some(why)`).
    Kill(Option<String>),
}

async fn resolve(
    agent: &Arc<Agent>,
    rec: &Outgoing,
    w: Option<&Arc<Workload>>,
) -> (Phase, Option<String>) {
    let (node, target) = (agent.config().node.clone(), target_name(rec).to_string());
    let mut delay = Duration::from_millis(500);
    let decision = loop {
        let asked = match rec.step {
            OutStep::Frozen => {
                abort_later(agent.clone(), rec.target.clone(), rec.migration_id.clone());
                break Decision::Resume(format!(
                    "the source agent on node {node} stopped after it froze the workload and \
                     before any commit; the workload resumed on node {node} and the copy on node \
                     {target} is aborted"
                ));
            }
            OutStep::Ended => return (Phase::Failed, Some("already ended".into())),
            OutStep::Committing | OutStep::Resumed => ask(agent, rec).await,
        };
        let next = match asked {
            Err(e) => Err(e),
            Ok((Some(IncomingState::Held), _)) => match abort(agent, rec).await {
                Ok(()) => Ok(Decision::Resume(format!(
                    "node {target} had not resumed its copy when the commit was interrupted; \
                     that copy was discarded and the workload resumed on node {node}"
                ))),
                Err(e) => Err(format!("cannot abort the copy on node {target}: {e}")),
            },
            Ok((Some(IncomingState::Committed), r)) if rec.post_copy => {
                match pb::Outcome::try_from(r.outcome).unwrap_or(pb::Outcome::Unspecified) {
                    pb::Outcome::Completed => Ok(Decision::Kill(None)),
                    // Its memory is still arriving (or failing to): ask again.
                    pb::Outcome::Unspecified if r.post_copy_pages_total > 0 => {
                        Err(format!("node {target} still receives the workload's memory"))
                    }
                    _ => Ok(Decision::Kill(Some(format!(
                        "workload {} is lost: it resumed on node {target} by post-copy, but the \
                         source agent on node {node}, which served its memory, stopped before \
                         every page arrived{}; the original on node {node} was killed, never \
                         resumed (the target had run the workload)",
                        rec.workload_id,
                        if r.error.is_empty() { String::new() } else { format!(" ({})", r.error) }
                    )))),
                }
            }
            Ok((Some(IncomingState::Committed), _)) => Ok(Decision::Kill(None)),
            Ok((Some(IncomingState::Discarded) | None, _)) => Ok(Decision::Resume(format!(
                "node {target} never resumed a copy (it has none, or discarded it); the workload \
                 resumed on node {node}"
            ))),
        };
        match next {
            Ok(d) => break d,
            Err(e) => {
                tracing::warn!(migration = rec.migration_id, error = e, ?delay, "the migration's target did not say what became of its copy; the original stays frozen; asking again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    };
    match decision {
        Decision::Kill(lost) => {
            if let Some(w) = w {
                if let Some(net) = &w.net {
                    // The target answers for the address (or the workload is lost): this node
                    // lets go of it before the original dies.
                    agent.hand_over_network(net).await;
                }
                if let Err(e) = agent.discard(w).await {
                    tracing::warn!(migration = rec.migration_id, %e, "cannot kill the original");
                }
            }
            match lost {
                None => (Phase::Completed, None),
                Some(why) => (Phase::Failed, Some(why)),
            }
        }
        Decision::Resume(why) => match w {
            None => (
                Phase::Failed,
                Some(format!(
                    "workload {} is lost: {why}, but its original on node {node} had already \
                     ended",
                    rec.workload_id
                )),
            ),
            Some(w) => match resume_original(agent, w, rec).await {
                Ok(()) => (Phase::RolledBack, Some(why)),
                Err(e) => (
                    Phase::Failed,
                    Some(format!("{why}; but the original could not be resumed: {e}")),
                ),
            },
        },
    }
}

/// Waits for a CRIU left over from the dead agent to let go of the original's tasks, then
/// resumes them (those the workload had stopped itself stay stopped), unless it was paused.
async fn resume_original(agent: &Agent, w: &Arc<Workload>, rec: &Outgoing) -> Result<(), String> {
    if w.net.is_some() {
        // Its address is answered here again, its connections out of repair mode.
        let n = agent.take_back_network(w).await.map_err(|e| {
            format!("cannot answer for workload {}'s address here again: {e}", w.id())
        })?;
        tracing::info!(id = w.id(), held_packets = n, "address taken back");
    }
    let (w, rec) = (w.clone(), rec.clone());
    tokio::task::spawn_blocking(move || {
        release_tracers(&w)?;
        if rec.was_paused {
            w.set_paused(true);
            return Ok(());
        }
        w.set_self_stopped(rec.self_stopped.clone());
        continue_tree(&w, &rec.self_stopped).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A dump in progress when the agent died is ended by CRIU itself (its sockets to the agent
/// closed), which takes its code out of the tasks and lets go of them. Until it has, resuming
/// would run the tasks under its control: wait for that, and only then, as a last resort, kill it.
fn release_tracers(w: &Workload) -> Result<(), String> {
    let traced = || -> Vec<(i32, i32)> {
        crate::workload::task_pids(w)
            .into_iter()
            .filter_map(|pid| Some((pid, crate::sys::proc::tracer(pid)?)))
            .filter(|(_, t)| *t != 0)
            .collect()
    };
    let deadline = std::time::Instant::now() + TRACER_WAIT;
    while std::time::Instant::now() < deadline {
        if traced().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = traced();
    for (_, tracer) in &left {
        tracing::warn!(
            id = w.id(),
            tracer,
            "a tracer still holds the workload after {TRACER_WAIT:?}; killing it"
        );
        let _ = crate::sys::signal::send(*tracer, crate::sys::signal::Sig::SIGKILL);
    }
    std::thread::sleep(Duration::from_secs(1));
    let left = traced();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("its tasks are still traced (task, tracer): {left:?}"))
    }
}

async fn client(agent: &Agent, target: &str) -> Result<AgentClient<Channel>, String> {
    let endpoint = agent.config().wire.endpoint(target)?.connect_timeout(ASK_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{target} is unreachable: {}", super::out::source_chain(&e)))?;
    Ok(AgentClient::new(channel))
}

/// What the target did with its copy, and what it says of the migration.
async fn ask(
    agent: &Agent,
    rec: &Outgoing,
) -> Result<(Option<IncomingState>, pb::MigrationResult), String> {
    let mut c = client(agent, &rec.target).await?;
    let call = c.get_migration(pb::MigrationRef { migration_id: rec.migration_id.clone() });
    match tokio::time::timeout(ASK_TIMEOUT, call).await {
        Err(_) => Err(format!("{} did not answer within {ASK_TIMEOUT:?}", rec.target)),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok((None, Default::default())),
        Ok(Err(s)) => Err(format!("{} answered: {}", rec.target, s.message())),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Ok((IncomingState::parse(&r.incoming_state), r))
        }
    }
}

async fn abort(agent: &Agent, rec: &Outgoing) -> Result<(), String> {
    abort_at(agent, &rec.target, &rec.migration_id).await
}

async fn abort_at(agent: &Agent, target: &str, mid: &str) -> Result<(), String> {
    let mut c = client(agent, target).await?;
    let call = c.abort_migration(pb::MigrationRef { migration_id: mid.to_string() });
    match tokio::time::timeout(ASK_TIMEOUT, call).await {
        Err(_) => Err(format!("{target} did not answer within {ASK_TIMEOUT:?}")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(()),
        Ok(Err(s)) => Err(format!("{target} answered: {}", s.message())),
    }
}

/// Tells the target to discard its copy of `mid`, retrying in the background for ten minutes (a
/// copy nobody aborts stays stopped there and never runs).
pub(crate) fn abort_later(agent: Arc<Agent>, target: String, mid: String) {
    tokio::spawn(async move {
        let give_up = std::time::Instant::now() + ABORT_RETRY_FOR;
        let mut delay = Duration::from_millis(500);
        loop {
            match abort_at(&agent, &target, &mid).await {
                Ok(()) => {
                    tracing::info!(migration = mid, target, "the target's copy is aborted");
                    return;
                }
                Err(e) if std::time::Instant::now() > give_up => {
                    tracing::warn!(migration = mid, target, error = e, "giving up aborting the target's copy: it stays stopped there and never runs");
                    return;
                }
                Err(e) => {
                    tracing::debug!(
                        migration = mid,
                        target,
                        error = e,
                        "abort not delivered; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    });
}
