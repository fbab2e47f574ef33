//! The agent's gRPC service: thin handlers that convert, call the agent, convert back.

mod convert;
pub(crate) use convert::{health_to_pb, restore_info_of, spec_from_pb, spec_to_pb, status_to_pb};
mod status;

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::agent as pb;
use pb::agent_server::Agent as AgentApi;
use tonic::{Request, Response, Status};

use crate::agent::Agent;
use crate::migrate::Fault;
use crate::migrate::MigrateOut;
use crate::snapshot::send::SendFault;
pub use pb::agent_server::AgentServer;

/// Default and maximum number of log lines per GetLogs call.
const LOG_PAGE: u32 = 1000;
const LOG_PAGE_MAX: u32 = 10_000;

pub struct Service {
    agent: Arc<Agent>,
}

impl Service {
    pub fn new(agent: Arc<Agent>) -> Service {
        Service { agent }
    }
}

fn need_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("workload id is empty"));
    }
    Ok(id)
}

/// How long a page tunnel waits for the post-copy restore it serves to start.
const TUNNEL_WAIT: Duration = Duration::from_secs(60);

#[tonic::async_trait]
impl AgentApi for Service {
    type FetchCheckpointStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::CheckpointPart, Status>> + Send>,
    >;
    type PageTunnelStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::TunnelBytes, Status>> + Send + 'static>,
    >;

    async fn start_process(
        &self,
        req: Request<pb::StartProcessRequest>,
    ) -> Result<Response<pb::ProcessStatus>, Status> {
        let spec = req.into_inner().spec.ok_or_else(|| {
            Status::invalid_argument(
                "spec is missing: give at least argv, e.g. [\"sleep\", \"60\"]",
            )
        })?;
        let status = self.agent.start(convert::spec_from_pb(spec)).await?;
        Ok(Response::new(convert::status_to_pb(status)))
    }

    async fn pause_process(
        &self,
        req: Request<pb::WorkloadRef>,
    ) -> Result<Response<pb::ProcessStatus>, Status> {
        let status = self.agent.pause(need_id(&req.get_ref().id)?).await?;
        Ok(Response::new(convert::status_to_pb(status)))
    }

    async fn resume_process(
        &self,
        req: Request<pb::WorkloadRef>,
    ) -> Result<Response<pb::ProcessStatus>, Status> {
        let status = self.agent.resume(need_id(&req.get_ref().id)?).await?;
        Ok(Response::new(convert::status_to_pb(status)))
    }

    async fn stop_process(
        &self,
        req: Request<pb::StopProcessRequest>,
    ) -> Result<Response<pb::ProcessStatus>, Status> {
        let r = req.into_inner();
        let grace = (r.grace_ms > 0).then(|| Duration::from_millis(r.grace_ms.into()));
        let status = self.agent.stop(need_id(&r.id)?, grace).await?;
        Ok(Response::new(convert::status_to_pb(status)))
    }

    async fn get_status(
        &self,
        req: Request<pb::WorkloadRef>,
    ) -> Result<Response<pb::ProcessStatus>, Status> {
        let status = self.agent.status(need_id(&req.get_ref().id)?)?;
        Ok(Response::new(convert::status_to_pb(status)))
    }

    async fn list_processes(
        &self,
        _req: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesResponse>, Status> {
        let processes = self.agent.list().into_iter().map(convert::status_to_pb).collect();
        Ok(Response::new(pb::ListProcessesResponse { processes }))
    }

    async fn get_logs(
        &self,
        req: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        let r = req.into_inner();
        let max = match r.max_lines {
            0 => LOG_PAGE,
            n if n > LOG_PAGE_MAX => {
                return Err(Status::invalid_argument(format!(
                    "max_lines {n} is above the limit of {LOG_PAGE_MAX}"
                )))
            }
            n => n,
        };
        let w = self.agent.get(need_id(&r.id)?)?;
        let (lines, next) = w
            .log
            .read(r.from_line, max as usize)
            .map_err(|e| Status::internal(format!("cannot read log of {}: {e}", r.id)))?;
        let lines = lines
            .into_iter()
            .enumerate()
            .map(|(i, l)| convert::log_line_to_pb(r.from_line + i as u64, l))
            .collect();
        Ok(Response::new(pb::GetLogsResponse { lines, next_line: next }))
    }

    async fn health_check(
        &self,
        _req: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        let agent = self.agent.clone();
        let health = tokio::task::spawn_blocking(move || agent.health())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(convert::health_to_pb(health)))
    }

    async fn migrate_out(
        &self,
        req: Request<pb::MigrateOutRequest>,
    ) -> Result<Response<pb::MigrationResult>, Status> {
        let r = req.into_inner();
        let ms = Duration::from_millis(r.fault_arg.max(1).into());
        let fault = match pb::Fault::try_from(r.fault).unwrap_or(pb::Fault::None) {
            pb::Fault::None => Fault::None,
            pb::Fault::CorruptChunk => Fault::Send(SendFault::CorruptChunk(r.fault_arg.into())),
            pb::Fault::SlowTransfer => Fault::Send(SendFault::Slow(ms)),
            pb::Fault::HoldBeforeCommit => Fault::HoldBeforeCommit(ms),
            pb::Fault::StallPageServer => Fault::StallPageServer(ms),
            pb::Fault::LoseCommitAnswer => Fault::LoseCommitAnswer,
            pb::Fault::HoldRestore => Fault::HoldRestore(ms),
            pb::Fault::CrashAt => match crate::migrate::CrashPoint::from_arg(r.fault_arg) {
                Some(at) => Fault::CrashAt(at),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "FAULT_CRASH_AT takes fault_arg 1 to 4, not {}",
                        r.fault_arg
                    )))
                }
            },
        };
        let req = MigrateOut {
            workload_id: need_id(&r.workload_id)?.to_string(),
            target: r.target_address,
            migration_id: (!r.migration_id.is_empty()).then_some(r.migration_id),
            fault,
            post_copy: r.mode == pb::Mode::PostCopy as i32,
        };
        // The transaction runs in a task of its own: a caller that goes away (or a dropped
        // connection) must not cancel it halfway, e.g. with the workload frozen. Its result stays
        // available through GetMigration.
        let agent = self.agent.clone();
        let report = detached(async move { agent.migrate_out(req).await }).await;
        release_memory();
        Ok(Response::new(convert::report_to_pb(report?)))
    }

    async fn push_snapshot(
        &self,
        req: Request<tonic::Streaming<pb::SnapshotPart>>,
    ) -> Result<Response<pb::PushResult>, Status> {
        // Detached for the same reason: a restore must finish (and be adopted) or be cleaned up
        // even if the source hangs up.
        let agent = self.agent.clone();
        let stream = req.into_inner();
        let pushed = detached(async move { agent.receive_snapshot(stream).await }).await?;
        Ok(Response::new(pb::PushResult {
            status: Some(convert::status_to_pb(pushed.status)),
            verify_ms: pushed.verify_ms,
            restore_ms: pushed.restore_ms,
            bytes_raw: pushed.bytes_raw,
            bytes_wire: pushed.bytes_wire,
        }))
    }

    async fn get_migration(
        &self,
        req: Request<pb::MigrationRef>,
    ) -> Result<Response<pb::MigrationResult>, Status> {
        let mid = &req.get_ref().migration_id;
        // As a target: what became of the copy it received (a source recovering asks).
        let incoming =
            self.agent.incoming_state(mid).map(|s| s.as_str().to_string()).unwrap_or_default();
        match self.agent.migration(mid) {
            None => match self.agent.lazy_daemon(mid) {
                Some(lp) => Ok(Response::new(pb::MigrationResult {
                    incoming_state: incoming,
                    ..convert::incoming_post_copy_to_pb(&lp, &self.agent.config().node)
                })),
                None if !incoming.is_empty() => Ok(Response::new(pb::MigrationResult {
                    migration_id: mid.clone(),
                    target_node: self.agent.config().node.clone(),
                    incoming_state: incoming,
                    ..Default::default()
                })),
                None => Err(Status::not_found(format!(
                    "node {} has no record of migration {mid:?}",
                    self.agent.config().node
                ))),
            },
            Some(crate::migrate::MigrationState::Running(live)) => {
                use std::sync::atomic::Ordering;
                let entered = live.phases.lock().expect("live phases poisoned").clone();
                Ok(Response::new(pb::MigrationResult {
                    migration_id: mid.clone(),
                    workload_id: live.workload_id.clone(),
                    source_node: self.agent.config().node.clone(),
                    outcome: pb::Outcome::Unspecified as i32,
                    current_phase: entered
                        .last()
                        .map(|p| p.0.as_str().to_string())
                        .unwrap_or_default(),
                    phases: entered
                        .iter()
                        .map(|(p, at)| pb::PhaseTiming {
                            phase: p.as_str().to_string(),
                            started_at_ms: *at,
                            ended_at_ms: 0,
                        })
                        .collect(),
                    bytes_raw: live.progress.bytes_raw.load(Ordering::Relaxed),
                    bytes_wire: live.progress.bytes_wire.load(Ordering::Relaxed),
                    ..convert::pages_to_pb(
                        *live.post_copy_pages.lock().expect("live pages poisoned"),
                    )
                }))
            }
            Some(crate::migrate::MigrationState::Done(report)) => {
                Ok(Response::new(convert::report_to_pb(*report)))
            }
        }
    }

    async fn commit_migration(
        &self,
        req: Request<pb::MigrationRef>,
    ) -> Result<Response<pb::ProcessStatus>, Status> {
        let mid = &req.get_ref().migration_id;
        if mid.is_empty() {
            return Err(Status::invalid_argument("migration id is empty"));
        }
        let status = self.agent.commit_migration(mid).await;
        release_memory();
        Ok(Response::new(convert::status_to_pb(status?)))
    }

    async fn abort_migration(
        &self,
        req: Request<pb::MigrationRef>,
    ) -> Result<Response<pb::AbortMigrationResponse>, Status> {
        let mid = &req.get_ref().migration_id;
        if mid.is_empty() {
            return Err(Status::invalid_argument("migration id is empty"));
        }
        let aborted = self.agent.abort_migration(mid).await;
        release_memory();
        aborted?;
        Ok(Response::new(pb::AbortMigrationResponse {}))
    }

    async fn page_tunnel(
        &self,
        req: Request<tonic::Streaming<pb::TunnelBytes>>,
    ) -> Result<Response<Self::PageTunnelStream>, Status> {
        use tokio_stream::StreamExt;
        let (meta, ext, mut inbound) = req.into_parts();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the page tunnel closed before naming its migration")
        })?;
        let mid = first.migration_id;
        if mid.is_empty() || !first.data.is_empty() {
            return Err(Status::invalid_argument(
                "a page tunnel's first part names its migration and carries no data",
            ));
        }
        // The source opens the tunnel alongside its push: wait for the restore to start the
        // daemon this tunnel feeds.
        let deadline = tokio::time::Instant::now() + TUNNEL_WAIT;
        let lp = self.agent.wait_lazy_daemon(&mid, deadline).await.ok_or_else(|| {
            Status::not_found(format!(
                "no post-copy restore of migration {mid:?} started on this node within {} s",
                TUNNEL_WAIT.as_secs()
            ))
        })?;
        // Only the migration's source may feed the workload's memory.
        let who = Request::from_parts(meta, ext, ());
        ferry_proto::tls::may_act_as(&self.agent.config().wire, &who, &lp.source_node)?;
        let sock = lp.take_tunnel().ok_or_else(|| {
            Status::failed_precondition(format!("migration {mid:?} already has its page tunnel"))
        })?;
        let (tx, out) = crate::migrate::tunnel::outgoing();
        let label = format!("{mid} from {}", lp.source_node);
        crate::migrate::tunnel::pump(sock, inbound, tx, label)
            .map_err(|e| Status::internal(format!("cannot carry the page tunnel: {e}")))?;
        Ok(Response::new(Box::pin(out.map(Ok))))
    }

    async fn reserve_pages(
        &self,
        req: Request<pb::ReservePagesRequest>,
    ) -> Result<Response<pb::ReservePagesResult>, Status> {
        let agent = self.agent.clone();
        let req = req.into_inner();
        let r = detached(async move { agent.reserve_pages(req).await }).await?;
        Ok(Response::new(r))
    }

    async fn prepare_network(
        &self,
        req: Request<pb::PrepareNetworkRequest>,
    ) -> Result<Response<pb::PrepareNetworkResult>, Status> {
        let r = req.into_inner();
        if r.migration_id.is_empty() || r.workload_id.is_empty() {
            return Err(Status::invalid_argument("migration id or workload id is empty"));
        }
        let agent = self.agent.clone();
        let host_if = detached(async move {
            agent.prepare_network(&r.migration_id, &r.workload_id, &r.address).await
        })
        .await?;
        Ok(Response::new(pb::PrepareNetworkResult { host_if }))
    }

    async fn store_checkpoint(
        &self,
        req: Request<tonic::Streaming<pb::CheckpointPart>>,
    ) -> Result<Response<pb::StoreCheckpointResult>, Status> {
        let kept = self.agent.store_replica(req.into_inner()).await?;
        Ok(Response::new(pb::StoreCheckpointResult { kept }))
    }

    async fn fetch_checkpoint(
        &self,
        req: Request<pb::CheckpointRef>,
    ) -> Result<Response<Self::FetchCheckpointStream>, Status> {
        let r = req.into_inner();
        let (info, path) = self.agent.held_checkpoint(&r.workload_id, &r.checkpoint_id)?;
        use tokio_stream::StreamExt;
        let rx = crate::checkpoint::replica::stream_object(info, path);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|p| {
            p.map_err(|e| Status::data_loss(format!("cannot read the checkpoint object: {e}")))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn restore_checkpoint(
        &self,
        req: Request<pb::RestoreCheckpointRequest>,
    ) -> Result<Response<pb::ProcessStatus>, Status> {
        let agent = self.agent.clone();
        let r = req.into_inner();
        // Detached: a coordinator that hangs up does not cut a restore in half.
        let status = detached(async move { agent.restore_checkpoint(r).await }).await?;
        Ok(Response::new(convert::status_to_pb(status)))
    }

    async fn take_checkpoint(
        &self,
        req: Request<pb::WorkloadRef>,
    ) -> Result<Response<pb::CheckpointInfo>, Status> {
        let agent = self.agent.clone();
        let id = req.into_inner().id;
        let info = detached(async move { agent.take_checkpoint(&id).await }).await?;
        Ok(Response::new(info))
    }

    async fn list_checkpoints(
        &self,
        req: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let w = req.into_inner().workload_id;
        let dir = self.agent.config().data_dir.clone();
        let checkpoints = tokio::task::spawn_blocking(move || {
            crate::checkpoint::list(&dir, (!w.is_empty()).then_some(w.as_str()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ListCheckpointsResponse { checkpoints }))
    }

    async fn push_pages(
        &self,
        req: Request<tonic::Streaming<pb::PagePart>>,
    ) -> Result<Response<pb::PushPagesResult>, Status> {
        // Detached, like PushSnapshot: a stream that ends must still be cleaned up.
        let agent = self.agent.clone();
        let inbound = req.into_inner();
        let r = detached(async move { agent.receive_pages(inbound).await }).await?;
        Ok(Response::new(r))
    }
}

/// Hands the memory a migration's buffers used back to the system (sys::mem): on the source
/// once the migration is over, on the target once it was committed or aborted, never in a freeze.
fn release_memory() {
    tokio::task::spawn_blocking(crate::sys::mem::release);
}

/// Runs `work` as a task of its own, so a caller that hangs up cannot cancel it halfway.
async fn detached<T, E>(
    work: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, Status>
where
    T: Send + 'static,
    E: Into<Status> + Send + 'static,
{
    tokio::spawn(work).await.map_err(|e| Status::internal(e.to_string()))?.map_err(Into::into)
}
