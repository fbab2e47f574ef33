//! Registration with the coordinator: register, then heartbeat with the host's health and the
//! workloads every interval the coordinator asks for; on any failure, back off and start over
//! (a coordinator that forgot the node makes it register again).

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::coordinator as pb;
use ferry_proto::coordinator::coordinator_client::CoordinatorClient;

use crate::agent::Agent;
use crate::grpc::{health_to_pb, status_to_pb};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Keeps this agent registered with `coordinator` (a gRPC URL) for as long as it runs,
/// announcing `advertise` as the address other nodes reach it at.
pub fn spawn(agent: Arc<Agent>, coordinator: String, advertise: String) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            match session(&agent, &coordinator, &advertise).await {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(e) => {
                    tracing::warn!(coordinator, error = %e, "coordinator unreachable; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
}

/// Sends the coordinator the checkpoints taken since the last heartbeat; those it does not take
/// wait for the next one.
async fn report_checkpoints(
    agent: &Arc<Agent>,
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    node: &str,
) {
    let mut left = agent.checkpoints().take_reports();
    while let Some(c) = left.first().cloned() {
        let req = pb::ReportCheckpointRequest { node: node.to_string(), checkpoint: Some(c) };
        match client.report_checkpoint(req).await {
            Ok(_) => {
                left.remove(0);
            }
            // Refused for good: a bad report, or one of a workload restored elsewhere since.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ) =>
            {
                tracing::warn!(error = s.message(), "the coordinator refused a checkpoint report");
                left.remove(0);
            }
            Err(s) => {
                tracing::warn!(error = s.message(), "cannot report checkpoints; later");
                break;
            }
        }
    }
    agent.checkpoints().requeue(left);
}

async fn health(agent: &Arc<Agent>) -> Result<ferry_proto::agent::HealthCheckResponse, String> {
    let a = agent.clone();
    tokio::task::spawn_blocking(move || health_to_pb(a.health())).await.map_err(|e| e.to_string())
}

/// One registration and the heartbeats after it; returns Ok when the coordinator asks for a new
/// registration, Err when it cannot be reached.
async fn session(agent: &Arc<Agent>, coordinator: &str, advertise: &str) -> Result<(), String> {
    let channel = agent
        .config()
        .wire
        .endpoint(coordinator)
        .map_err(|e| format!("bad coordinator address {coordinator:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = CoordinatorClient::new(channel);
    let node = agent.config().node.clone();
    let sent = crate::sys::boottime_ms();
    let reg = client
        .register_node(pb::RegisterNodeRequest {
            node: node.clone(),
            address: advertise.to_string(),
            health: Some(health(agent).await?),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    agent.renew_lease(sent, reg.lease_ms.into());
    let interval = Duration::from_millis(reg.heartbeat_interval_ms.max(100).into());
    tracing::info!(coordinator, node, ?interval, "registered with the coordinator");
    loop {
        tokio::time::sleep(interval).await;
        let a = agent.clone();
        let workloads =
            tokio::task::spawn_blocking(move || a.list().into_iter().map(status_to_pb).collect())
                .await
                .map_err(|e| e.to_string())?;
        report_checkpoints(agent, &mut client, &node).await;
        // The lease counts from when this heartbeat left, not from when its answer came.
        let sent = crate::sys::boottime_ms();
        let beat = client
            .heartbeat(pb::HeartbeatRequest {
                node: node.clone(),
                health: Some(health(agent).await?),
                workloads,
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        if beat.known {
            agent.renew_lease(sent, beat.lease_ms.into());
            agent.checkpoints().set_peers(beat.peers);
            if !beat.fence.is_empty() {
                agent.fence_ids(&beat.fence);
            }
        }
        if !beat.known {
            tracing::info!(
                coordinator,
                "the coordinator does not know this node; registering again"
            );
            return Ok(());
        }
    }
}
