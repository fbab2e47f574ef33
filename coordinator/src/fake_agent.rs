//! Test only: an agent that answers the calls failover and restores make (RestoreCheckpoint,
//! StopProcess, GetStatus, TakeCheckpoint) from a script, records them, and refuses the rest.

use std::sync::{Arc, Mutex};

use ferry_proto::agent as pb;
use pb::agent_server::{Agent, AgentServer};
use tonic::{Request, Response, Status};

/// What a fake agent was asked, and how it answers.
#[derive(Default)]
pub struct Script {
    pub node: String,
    /// RestoreCheckpoint is refused (FAILED_PRECONDITION) with this message when set.
    pub refuse_restores: Option<String>,
    /// Every call, as "Method id".
    pub calls: Vec<String>,
    pub restores: Vec<pb::RestoreCheckpointRequest>,
}

#[derive(Clone)]
pub struct FakeAgent(pub Arc<Mutex<Script>>);

/// Serves a fake agent for `node` on a local port; returns its URL and its script.
pub async fn spawn(node: &str, refuse_restores: Option<&str>) -> (String, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script {
        node: node.into(),
        refuse_restores: refuse_restores.map(str::to_string),
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let service = AgentServer::new(FakeAgent(script.clone()));
    tokio::spawn(
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming),
    );
    (url, script)
}

fn running(id: &str, node: &str) -> pb::ProcessStatus {
    pb::ProcessStatus {
        spec: Some(pb::WorkloadSpec {
            id: id.into(),
            checkpoint_interval_secs: 30,
            ..Default::default()
        }),
        state: pb::ProcessState::Running as i32,
        node: node.into(),
        ..Default::default()
    }
}

impl FakeAgent {
    fn call(&self, what: &str, id: &str) -> String {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("{what} {id}"));
        s.node.clone()
    }
}

fn no() -> Status {
    Status::unimplemented("not in the fake agent")
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Agent for FakeAgent {
    type FetchCheckpointStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::CheckpointPart, Status>> + Send>,
    >;
    type PageTunnelStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::TunnelBytes, Status>> + Send + 'static>,
    >;

    async fn restore_checkpoint(
        &self,
        req: Request<pb::RestoreCheckpointRequest>,
    ) -> Answer<pb::ProcessStatus> {
        let r = req.into_inner();
        let id = r.checkpoint.as_ref().map(|k| k.workload_id.clone()).unwrap_or_default();
        let node = self.call("RestoreCheckpoint", &id);
        let mut s = self.0.lock().unwrap();
        s.restores.push(r);
        match &s.refuse_restores {
            Some(m) => Err(Status::failed_precondition(m.clone())),
            None => Ok(Response::new(running(&id, &node))),
        }
    }

    async fn stop_process(
        &self,
        req: Request<pb::StopProcessRequest>,
    ) -> Answer<pb::ProcessStatus> {
        let id = req.into_inner().id;
        let node = self.call("StopProcess", &id);
        let mut s = running(&id, &node);
        s.state = pb::ProcessState::Exited as i32;
        s.exit = Some(pb::ExitInfo { code: None, signal: Some(15), exited_at_ms: crate::now_ms() });
        Ok(Response::new(s))
    }

    async fn get_status(&self, req: Request<pb::WorkloadRef>) -> Answer<pb::ProcessStatus> {
        let id = req.into_inner().id;
        let node = self.call("GetStatus", &id);
        let restored = self
            .0
            .lock()
            .unwrap()
            .restores
            .iter()
            .any(|r| r.checkpoint.as_ref().is_some_and(|k| k.workload_id == id));
        if restored {
            Ok(Response::new(running(&id, &node)))
        } else {
            Err(Status::not_found(format!("no workload {id}")))
        }
    }

    async fn take_checkpoint(&self, req: Request<pb::WorkloadRef>) -> Answer<pb::CheckpointInfo> {
        let id = req.into_inner().id;
        let node = self.call("TakeCheckpoint", &id);
        Ok(Response::new(pb::CheckpointInfo {
            id: "c-now".into(),
            workload_id: id,
            seq: 9,
            taken_at_ms: crate::now_ms(),
            holders: vec![node.clone(), "s3".into()],
            node,
            ..Default::default()
        }))
    }

    async fn start_process(
        &self,
        _: Request<pb::StartProcessRequest>,
    ) -> Answer<pb::ProcessStatus> {
        Err(no())
    }
    async fn pause_process(&self, _: Request<pb::WorkloadRef>) -> Answer<pb::ProcessStatus> {
        Err(no())
    }
    async fn resume_process(&self, _: Request<pb::WorkloadRef>) -> Answer<pb::ProcessStatus> {
        Err(no())
    }
    async fn list_processes(
        &self,
        _: Request<pb::ListProcessesRequest>,
    ) -> Answer<pb::ListProcessesResponse> {
        Err(no())
    }
    async fn get_logs(&self, _: Request<pb::GetLogsRequest>) -> Answer<pb::GetLogsResponse> {
        Err(no())
    }
    async fn health_check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Answer<pb::HealthCheckResponse> {
        Err(no())
    }
    async fn migrate_out(&self, _: Request<pb::MigrateOutRequest>) -> Answer<pb::MigrationResult> {
        Err(no())
    }
    async fn push_snapshot(
        &self,
        _: Request<tonic::Streaming<pb::SnapshotPart>>,
    ) -> Answer<pb::PushResult> {
        Err(no())
    }
    async fn get_migration(&self, _: Request<pb::MigrationRef>) -> Answer<pb::MigrationResult> {
        Err(no())
    }
    async fn commit_migration(&self, _: Request<pb::MigrationRef>) -> Answer<pb::ProcessStatus> {
        Err(no())
    }
    async fn abort_migration(
        &self,
        _: Request<pb::MigrationRef>,
    ) -> Answer<pb::AbortMigrationResponse> {
        Err(no())
    }
    async fn page_tunnel(
        &self,
        _: Request<tonic::Streaming<pb::TunnelBytes>>,
    ) -> Answer<Self::PageTunnelStream> {
        Err(no())
    }
    async fn push_pages(
        &self,
        _: Request<tonic::Streaming<pb::PagePart>>,
    ) -> Answer<pb::PushPagesResult> {
        Err(no())
    }
    async fn reserve_pages(
        &self,
        _: Request<pb::ReservePagesRequest>,
    ) -> Answer<pb::ReservePagesResult> {
        Err(no())
    }
    async fn prepare_network(
        &self,
        _: Request<pb::PrepareNetworkRequest>,
    ) -> Answer<pb::PrepareNetworkResult> {
        Err(no())
    }
    async fn store_checkpoint(
        &self,
        _: Request<tonic::Streaming<pb::CheckpointPart>>,
    ) -> Answer<pb::StoreCheckpointResult> {
        Err(no())
    }
    async fn fetch_checkpoint(
        &self,
        _: Request<pb::CheckpointRef>,
    ) -> Answer<Self::FetchCheckpointStream> {
        Err(no())
    }
    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Answer<pb::ListCheckpointsResponse> {
        Err(no())
    }
}
