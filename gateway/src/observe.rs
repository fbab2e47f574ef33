//! The observable side: the system log, the live event stream (server-sent events), Prometheus
//! metrics and the OpenAPI document.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use ferry_coordinator::{Coordinator, Event};
use ferry_proto::agent::ProcessState;
use tokio_stream::{Stream, StreamExt};

use crate::api::ApiError;
use crate::time::rfc3339;

fn event_json(e: &Event) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "at": rfc3339(e.at_ms),
        "kind": e.kind,
        "level": e.level,
        "serverId": e.node,
        "processId": e.process,
        "message": e.message,
        "data": serde_json::from_str::<serde_json::Value>(&e.data).unwrap_or(serde_json::Value::Null),
    })
}

#[derive(serde::Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    process: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/logs?process=&level=&limit=`: recent system and migration log entries.
pub async fn logs(
    State(c): State<Arc<Coordinator>>,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    if !matches!(q.level.as_str(), "" | "info" | "warn" | "error") {
        return Err(ApiError::bad_request(format!(
            "level {:?} is not one of info, warn, error",
            q.level
        )));
    }
    let events = c.store().events(&q.process, &q.level, q.limit.unwrap_or(200).min(5000))?;
    Ok(Json(events.iter().map(event_json).collect()))
}

/// `GET /api/events`: every event as it happens, as server-sent events named by their kind.
pub async fn events(
    State(c): State<Arc<Coordinator>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = tokio_stream::wrappers::BroadcastStream::new(c.subscribe()).filter_map(|e| {
        let e = e.ok()?;
        Some(Ok(SseEvent::default()
            .event(e.kind.clone())
            .id(e.id.to_string())
            .data(event_json(&e).to_string())))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Upper bounds of the downtime histogram, ms.
const DOWNTIME_BUCKETS: [f64; 9] =
    [50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0];

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(c): State<Arc<Coordinator>>) -> Result<impl IntoResponse, ApiError> {
    let f = crate::api::migration_figures(&c)?;
    let pending =
        c.unfinished_migrations()?.into_iter().filter(|m| m.status == "pending").count() as u64;
    let nodes = c.nodes()?;
    let workloads = c.workloads()?;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP ferry_migrations Migrations by outcome (pending: running now).");
    let _ = writeln!(out, "# TYPE ferry_migrations gauge");
    for (outcome, n) in [
        ("pending", pending),
        ("completed", f.completed),
        ("rolled_back", f.rolled_back),
        ("failed", f.failed),
    ] {
        let _ = writeln!(out, "ferry_migrations{{outcome=\"{outcome}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP ferry_migration_downtime_ms Downtime of completed migrations.");
    let _ = writeln!(out, "# TYPE ferry_migration_downtime_ms histogram");
    for le in DOWNTIME_BUCKETS {
        let n = f.downtimes_ms.partition_point(|d| *d as f64 <= le);
        let _ = writeln!(out, "ferry_migration_downtime_ms_bucket{{le=\"{le}\"}} {n}");
    }
    let count = f.downtimes_ms.len();
    let _ = writeln!(out, "ferry_migration_downtime_ms_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "ferry_migration_downtime_ms_sum {}", f.downtimes_ms.iter().sum::<i64>());
    let _ = writeln!(out, "ferry_migration_downtime_ms_count {count}");
    let _ =
        writeln!(out, "# HELP ferry_migration_bytes_total Bytes moved by completed migrations.");
    let _ = writeln!(out, "# TYPE ferry_migration_bytes_total counter");
    let _ = writeln!(out, "ferry_migration_bytes_total{{kind=\"raw\"}} {}", f.bytes_raw);
    let _ = writeln!(out, "ferry_migration_bytes_total{{kind=\"wire\"}} {}", f.bytes_wire);
    let _ = writeln!(out, "# HELP ferry_nodes Nodes by state.");
    let _ = writeln!(out, "# TYPE ferry_nodes gauge");
    let online = nodes.iter().filter(|n| n.online).count();
    let _ = writeln!(out, "ferry_nodes{{state=\"online\"}} {online}");
    let _ = writeln!(out, "ferry_nodes{{state=\"offline\"}} {}", nodes.len() - online);
    let _ =
        writeln!(out, "# HELP ferry_workloads Workloads by state, as their nodes last reported.");
    let _ = writeln!(out, "# TYPE ferry_workloads gauge");
    for (state, want) in [
        ("running", &[ProcessState::Running, ProcessState::Sleeping][..]),
        ("paused", &[ProcessState::Stopped][..]),
        ("exited", &[ProcessState::Exited][..]),
    ] {
        let n = workloads.iter().filter(|(_, s)| want.iter().any(|w| *w as i32 == s.state)).count();
        let _ = writeln!(out, "ferry_workloads{{state=\"{state}\"}} {n}");
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("../openapi.json"))
}
