//! The REST routes and their JSON shapes (see DESIGN.md section 6).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferry_coordinator::Coordinator;
use ferry_proto::agent::{ProcessState, ProcessStatus};
use serde::Serialize;

use crate::time::rfc3339;

/// Every error leaves as `{"error":{"code","message"}}` with its HTTP status; internal details
/// stay in the log.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn not_found(message: String) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message }
    }
}

impl From<ferry_coordinator::StoreError> for ApiError {
    fn from(e: ferry_coordinator::StoreError) -> ApiError {
        tracing::error!(%e, "coordinator store failure");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the coordinator's database failed; see its log".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type Api<T> = Result<Json<T>, ApiError>;

pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/api/overview", get(overview))
        .route("/api/servers", get(servers))
        .route("/api/processes", get(processes))
        .route("/api/processes/{id}", get(process))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("no such endpoint: {}", uri.path()))
        })
        .with_state(coordinator)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Server {
    id: String,
    name: String,
    address: String,
    status: &'static str,
    cpu_percent: f64,
    memory_total_bytes: u64,
    memory_used_bytes: u64,
    process_count: u32,
    criu_version: String,
    kernel: String,
    last_seen_at: String,
}

async fn servers(State(c): State<Arc<Coordinator>>) -> Api<Vec<Server>> {
    let nodes = c.nodes()?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| {
                let h = n.health.unwrap_or_default();
                Server {
                    id: n.node.clone(),
                    name: if h.hostname.is_empty() { n.node } else { h.hostname.clone() },
                    address: n.address,
                    status: if n.online { "online" } else { "offline" },
                    // The 1-minute load over the cores, as a percentage of the machine.
                    cpu_percent: ((h.load_1 / f64::from(h.cores.max(1))) * 1000.0)
                        .round()
                        .min(1000.0)
                        / 10.0,
                    memory_total_bytes: h.memory_total_bytes,
                    memory_used_bytes: h
                        .memory_total_bytes
                        .saturating_sub(h.memory_available_bytes),
                    process_count: n.workload_count,
                    criu_version: h.criu.map(|c| c.version).unwrap_or_default(),
                    kernel: h.kernel,
                    last_seen_at: rfc3339(n.last_seen_ms),
                }
            })
            .collect(),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    id: String,
    name: String,
    server_id: String,
    status: &'static str,
    pid: i32,
    cpu_percent: f64,
    memory_bytes: u64,
    engine: &'static str,
    command: Vec<String>,
    started_at: String,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
}

fn process_json(node: String, s: ProcessStatus) -> Process {
    let spec = s.spec.unwrap_or_default();
    let exit = s.exit;
    let status = match ProcessState::try_from(s.state).unwrap_or(ProcessState::Unspecified) {
        ProcessState::Stopped => "paused",
        ProcessState::Exited => match exit {
            Some(e) if e.code == Some(0) => "exited",
            _ => "failed",
        },
        _ => "running",
    };
    Process {
        id: spec.id,
        name: if spec.name.is_empty() {
            spec.argv.first().cloned().unwrap_or_default()
        } else {
            spec.name
        },
        server_id: node,
        status,
        pid: s.main_pid,
        cpu_percent: s.cpu_percent,
        memory_bytes: s.rss_bytes,
        engine: match spec.engine {
            1 => "criu",
            2 => "cooperative",
            _ => "auto",
        },
        command: spec.argv,
        started_at: rfc3339(s.started_at_ms),
        exit_code: exit.and_then(|e| e.code),
        exit_signal: exit.and_then(|e| e.signal),
    }
}

async fn processes(State(c): State<Arc<Coordinator>>) -> Api<Vec<Process>> {
    Ok(Json(c.workloads()?.into_iter().map(|(node, s)| process_json(node, s)).collect()))
}

async fn process(State(c): State<Arc<Coordinator>>, Path(id): Path<String>) -> Api<Process> {
    c.workloads()?
        .into_iter()
        .find(|(_, s)| s.spec.as_ref().map(|x| x.id == id).unwrap_or(false))
        .map(|(node, s)| Json(process_json(node, s)))
        .ok_or_else(|| ApiError::not_found(format!("no process with id {id:?}")))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Overview {
    total_processes: usize,
    running_processes: usize,
    active_migrations: usize,
    server_nodes: usize,
    online_nodes: usize,
    /// Completed / finished migrations; null until the coordinator records migrations.
    success_rate: Option<f64>,
    average_downtime_ms: Option<f64>,
}

async fn overview(State(c): State<Arc<Coordinator>>) -> Api<Overview> {
    let nodes = c.nodes()?;
    let workloads = c.workloads()?;
    Ok(Json(Overview {
        total_processes: workloads.len(),
        running_processes: workloads
            .iter()
            .filter(|(_, s)| {
                matches!(
                    ProcessState::try_from(s.state),
                    Ok(ProcessState::Running | ProcessState::Sleeping)
                )
            })
            .count(),
        active_migrations: 0,
        server_nodes: nodes.len(),
        online_nodes: nodes.iter().filter(|n| n.online).count(),
        success_rate: None,
        average_downtime_ms: None,
    }))
}
