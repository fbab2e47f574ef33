//! The REST routes and their JSON shapes (gateway/openapi.json, docs/control-plane.md).

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
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError { status, code, message }
    }

    pub fn not_found(message: String) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message }
    }

    pub fn bad_request(message: String) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message }
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

/// How the gateway serves: where the built dashboard is, and who may call the API.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// The built dashboard (web/dist); `None` serves a page saying how to build it.
    pub web_dir: Option<std::path::PathBuf>,
    /// Bearer tokens; `None` leaves the API open (only with an explicit `--insecure`).
    pub tokens: Option<crate::auth::Tokens>,
}

pub fn router(coordinator: Arc<Coordinator>, config: GatewayConfig) -> Router {
    let api = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/servers", get(servers))
        .route("/api/processes", get(processes))
        .route("/api/processes/{id}", get(process).delete(delete_process))
        .merge(mutations())
        .route("/api/logs", get(crate::observe::logs))
        .route("/api/events", get(crate::observe::events))
        .route("/api/openapi.json", get(crate::observe::openapi))
        .route("/metrics", get(crate::observe::metrics))
        .route("/api/{*rest}", axum::routing::any(no_endpoint))
        .with_state(coordinator);
    let api = match config.tokens {
        Some(t) => api.layer(axum::middleware::from_fn_with_state(Arc::new(t), crate::auth::check)),
        None => api,
    };
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .merge(api)
        .fallback_service(crate::web::service(config.web_dir))
}

async fn no_endpoint(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
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
    /// False once cordoned: no new placements, no migrations into it.
    schedulable: bool,
}

async fn servers(State(c): State<Arc<Coordinator>>) -> Api<Vec<Server>> {
    server_list(&c)
}

fn server_list(c: &Coordinator) -> Api<Vec<Server>> {
    let nodes = c.nodes()?;
    let cordoned = c.store().cordoned()?;
    // From the workload table, so it agrees with /api/processes at every moment.
    let workloads = c.workloads()?;
    let count =
        |node: &str| workloads.iter().filter(|(n, s)| n == node && s.exit.is_none()).count() as u32;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| {
                let h = n.health.unwrap_or_default();
                Server {
                    id: n.node.clone(),
                    name: if h.hostname.is_empty() { n.node.clone() } else { h.hostname.clone() },
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
                    process_count: count(&n.node),
                    criu_version: h.criu.map(|c| c.version).unwrap_or_default(),
                    kernel: h.kernel,
                    last_seen_at: rfc3339(n.last_seen_ms),
                    schedulable: !cordoned.contains(&n.node),
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
    /// running, paused, migrating, exited, failed; `unknown` while its node is offline (the
    /// last report may no longer be true); `held` for a migration target's stopped copy that
    /// is the only report of the workload.
    status: &'static str,
    pid: i32,
    cpu_percent: f64,
    memory_bytes: u64,
    engine: &'static str,
    command: Vec<String>,
    started_at: String,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    /// When its node last reported (its last heartbeat); null if the node is no longer known.
    last_seen: Option<String>,
    /// The migration whose commit this copy waits for, when `held`.
    held_for_migration: Option<String>,
    /// Its own IPv4 address (a network of its own), as its agent reports it; null on the node's
    /// network.
    address: Option<String>,
    /// Protected: checkpointed every this many seconds, failed over from its latest checkpoint
    /// if its node is lost; null when unprotected.
    checkpoint_interval_seconds: Option<u32>,
}

/// What the gateway knows beside a workload's report: migrations in flight, nodes' liveness.
struct Context {
    moving: std::collections::HashSet<String>,
    /// node → (online, last seen).
    nodes: std::collections::HashMap<String, (bool, i64)>,
}

impl Context {
    fn read(c: &Coordinator) -> Result<Context, ApiError> {
        Ok(Context {
            moving: c.unfinished_migrations()?.into_iter().map(|m| m.process_id).collect(),
            nodes: c.nodes()?.into_iter().map(|n| (n.node, (n.online, n.last_seen_ms))).collect(),
        })
    }

    /// The process as the API shows it: `unknown` on an offline node (a report is only as good
    /// as its node's liveness), `migrating` while a migration of it runs.
    fn process(&self, node: String, s: ProcessStatus) -> Process {
        let seen = self.nodes.get(&node).copied();
        let mut p = process_json(node, s);
        p.last_seen = seen.map(|(_, at)| rfc3339(at));
        if ended(p.status) {
            return p;
        }
        if !seen.is_some_and(|(online, _)| online) {
            p.status = "unknown";
        } else if self.moving.contains(&p.id) {
            p.status = "migrating";
        }
        p
    }
}

/// Statuses of a workload that has ended (kept for a while, hidden from the list by default).
fn ended(status: &str) -> bool {
    matches!(status, "exited" | "failed")
}

fn process_json(node: String, s: ProcessStatus) -> Process {
    let spec = s.spec.unwrap_or_default();
    let exit = s.exit;
    let status = match ProcessState::try_from(s.state).unwrap_or(ProcessState::Unspecified) {
        ProcessState::Exited => match exit {
            Some(e) if e.code == Some(0) => "exited",
            _ => "failed",
        },
        _ if !s.held_for_migration.is_empty() => "held",
        ProcessState::Stopped => "paused",
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
        last_seen: None,
        held_for_migration: (!s.held_for_migration.is_empty()).then_some(s.held_for_migration),
        address: (!spec.address.is_empty()).then_some(spec.address),
        checkpoint_interval_seconds: (spec.checkpoint_interval_secs > 0)
            .then_some(spec.checkpoint_interval_secs),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    /// Also list ended processes (exited, failed), kept for a while after they ended.
    #[serde(default)]
    all: bool,
    /// A page of at most this many (1 to [`MAX_PAGE`]), by id; without it, every process.
    limit: Option<u32>,
    /// The page after this process id (the `Link` header's `rel="next"` carries it).
    after: Option<String>,
}

/// The most a page of processes or migrations holds.
const MAX_PAGE: u32 = 1000;
/// A page of migrations when the request does not say.
const DEFAULT_MIGRATIONS_PAGE: u32 = 100;

/// Refuses a page size outside 1..=MAX_PAGE, saying what is allowed.
fn page_limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match limit.unwrap_or(default) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::bad_request(format!(
            "limit {n} is out of range: a page holds 1 to {MAX_PAGE}"
        ))),
    }
}

/// Percent-encodes a query value (every byte but RFC 3986's unreserved ones).
fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `Link` header to the next page: `<path?params>; rel="next"` (empty values left out).
fn next_link(path: &str, params: &[(&str, &str)]) -> (axum::http::HeaderName, String) {
    let q: Vec<String> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", query_value(v)))
        .collect();
    (axum::http::header::LINK, format!("<{path}?{}>; rel=\"next\"", q.join("&")))
}

async fn processes(
    State(c): State<Arc<Coordinator>>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!("{}; use ?all=true, ?limit=N, ?after=ID", e.body_text()))
    })?;
    let ctx = Context::read(&c)?;
    let Some(limit) = q.limit else {
        if q.after.is_some() {
            return Err(ApiError::bad_request("after needs limit: ?limit=N&after=ID".into()));
        }
        return Ok(Json(
            c.workloads()?
                .into_iter()
                .map(|(node, s)| ctx.process(node, s))
                .filter(|p| q.all || !ended(p.status))
                .collect::<Vec<_>>(),
        )
        .into_response());
    };
    let limit = page_limit(Some(limit), MAX_PAGE)?;
    // Ended ones are left out by the query (a workload is recorded ended exactly when the API
    // shows it exited or failed), so a page is full whenever more may follow.
    let page: Vec<Process> = c
        .workloads_page(q.after.as_deref().unwrap_or(""), limit, q.all)?
        .into_iter()
        .map(|(node, s)| ctx.process(node, s))
        .collect();
    let next = (page.len() == limit as usize).then(|| page.last().map(|p| p.id.clone())).flatten();
    let mut r = Json(page).into_response();
    if let Some(after) = next {
        let limit = limit.to_string();
        let all = if q.all { "true" } else { "" };
        let (k, v) =
            next_link("/api/processes", &[("limit", &limit), ("after", &after), ("all", all)]);
        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    Ok(r)
}

async fn process(State(c): State<Arc<Coordinator>>, Path(id): Path<String>) -> Api<Process> {
    let (node, s) = c
        .workload(&id)?
        .filter(|(_, s)| s.spec.as_ref().is_some_and(|x| x.id == id))
        .ok_or_else(|| ApiError::not_found(format!("no process with id {id:?}")))?;
    Ok(Json(Context::read(&c)?.process(node, s)))
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Overview {
    total_processes: usize,
    running_processes: usize,
    active_migrations: usize,
    server_nodes: usize,
    online_nodes: usize,
    /// Completed / finished migrations; null before any migration finished.
    success_rate: Option<f64>,
    average_downtime_ms: Option<f64>,
}

async fn overview(State(c): State<Arc<Coordinator>>) -> Api<Overview> {
    let nodes = c.nodes()?;
    // Computed again only when the store was written or a node's liveness changed: the
    // workload table is read whole for it, which at 10,000 workloads costs milliseconds.
    let liveness: Vec<(&str, bool)> = nodes.iter().map(|n| (n.node.as_str(), n.online)).collect();
    let key = c.store_key(&liveness)?;
    // Outside the overview's computation: memo's lock is not reentrant.
    let f = migration_figures(&c)?;
    let o = c.memo("overview", key, || -> Result<Overview, ApiError> {
        let ctx = Context::read(&c)?;
        // As GET /api/processes lists them: ended ones left out, those of offline nodes unknown.
        let listed: Vec<Process> = c
            .workloads()?
            .into_iter()
            .map(|(node, s)| ctx.process(node, s))
            .filter(|p| !ended(p.status))
            .collect();
        Ok(Overview {
            total_processes: listed.len(),
            running_processes: listed
                .iter()
                .filter(|p| matches!(p.status, "running" | "migrating"))
                .count(),
            active_migrations: c.unfinished_migrations()?.len(),
            server_nodes: nodes.len(),
            online_nodes: nodes.iter().filter(|n| n.online).count(),
            success_rate: f.success_rate(),
            average_downtime_ms: f.average_downtime_ms(),
        })
    })?;
    Ok(Json(o.as_ref().clone()))
}

// ---------------------------------------------------------------------------------------------
// Mutations and migrations
// ---------------------------------------------------------------------------------------------

/// A JSON body whose rejections (malformed JSON, wrong types, unknown fields, oversized bodies)
/// leave in the API's error format.
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "bad_request"
                };
                let status = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                };
                Err(ApiError { status, code, message: rejection.body_text() })
            }
        }
    }
}

impl From<ferry_coordinator::CoordError> for ApiError {
    fn from(e: ferry_coordinator::CoordError) -> ApiError {
        use ferry_coordinator::CoordError as E;
        let (status, code) = match &e {
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            E::Migrating(_) => (StatusCode::CONFLICT, "migrating"),
            // An offline node is the request's problem, not the gateway's: a 4xx.
            E::Unavailable(_) => (StatusCode::CONFLICT, "offline"),
            E::NoAddress(_) => (StatusCode::CONFLICT, "no_address"),
            E::Unschedulable(_) => (StatusCode::CONFLICT, "unschedulable"),
            E::Agent { status, .. } => match status.code() {
                // The agent's own refusal of an operation on a migrating workload.
                tonic::Code::FailedPrecondition if status.message().contains("migrating") => {
                    (StatusCode::CONFLICT, "migrating")
                }
                tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "bad_request"),
                tonic::Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
                    (StatusCode::CONFLICT, "conflict")
                }
                _ => (StatusCode::BAD_GATEWAY, "agent_error"),
            },
            E::Store(s) => {
                tracing::error!(%s, "coordinator store failure");
                return ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message: "the coordinator's database failed; see its log".into(),
                };
            }
        };
        ApiError { status, code, message: e.to_string() }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewProcess {
    name: String,
    command: Vec<String>,
    /// The node; without it the coordinator places the process (docs/control-plane.md).
    #[serde(default)]
    server_id: Option<String>,
    /// The memory it needs, for placement: a node must have this much available. Default: 64
    /// MiB.
    #[serde(default)]
    memory_bytes: Option<u64>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    engine: Option<String>,
    /// Run as this user (name or uid on the node) instead of root.
    #[serde(default)]
    user: Option<String>,
    /// ...and this group (name or gid); default: the user's primary group.
    #[serde(default)]
    group: Option<String>,
    /// "own" (a network namespace and an address of its own, from the workload range) or
    /// "node" (the node's network); default: the coordinator's --default-network.
    #[serde(default)]
    network: Option<String>,
    /// Protection: checkpointed every this many seconds (5 to 86400), restored elsewhere from
    /// its latest checkpoint if its node is lost. Checked here, so any JSON value is taken.
    #[serde(default)]
    checkpoint_interval_seconds: Option<serde_json::Value>,
}

/// Seconds between a protected process's checkpoints.
pub const CHECKPOINT_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 5..=86_400;

/// `checkpointIntervalSeconds`: 0 (unprotected) when absent or null, else an integer in
/// [`CHECKPOINT_INTERVAL_SECS`].
fn checkpoint_interval(v: Option<&serde_json::Value>) -> Result<u32, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .filter(|n| CHECKPOINT_INTERVAL_SECS.contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| {
                format!(
                    "checkpointIntervalSeconds {v} is not an integer from {} to {} (seconds                      between the process's checkpoints); leave it out for an unprotected process",
                    CHECKPOINT_INTERVAL_SECS.start(),
                    CHECKPOINT_INTERVAL_SECS.end()
                )
            }),
    }
}

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

fn mutations() -> Router<Arc<Coordinator>> {
    use axum::routing::post;
    Router::new()
        .route("/api/processes", post(create_process))
        .route("/api/processes/{id}/pause", post(|s, p| control(s, p, "pause")))
        .route("/api/processes/{id}/resume", post(|s, p| control(s, p, "resume")))
        .route("/api/processes/{id}/stop", post(|s, p| control(s, p, "stop")))
        .route("/api/processes/{id}/logs", get(logs))
        .route("/api/processes/{id}/checkpoints", get(list_checkpoints).post(take_checkpoint))
        .route("/api/processes/{id}/restore", post(restore))
        .route("/api/migrations", post(create_migration).get(list_migrations))
        .route("/api/migrations/{id}", get(one_migration))
        .route("/api/servers/{id}/cordon", post(|s, p| cordon(s, p, false)))
        .route("/api/servers/{id}/uncordon", post(|s, p| cordon(s, p, true)))
        .route("/api/servers/{id}/drain", post(start_drain))
        .route("/api/drains", get(list_drains))
        .route("/api/drains/{id}", get(one_drain))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

async fn create_process(
    State(c): State<Arc<Coordinator>>,
    ApiJson(p): ApiJson<NewProcess>,
) -> Result<(StatusCode, Json<Process>), ApiError> {
    let invalid =
        |m: String| ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: m };
    if p.command.is_empty() || p.command[0].is_empty() {
        return Err(invalid(
            "command is empty: give the program and its arguments, e.g. [\"sleep\", \"60\"]".into(),
        ));
    }
    let engine = match p.engine.as_deref() {
        None | Some("auto") => 0,
        Some("criu") => 1,
        Some("cooperative") => 2,
        Some(other) => {
            return Err(invalid(format!("engine {other:?} is not one of criu, cooperative")))
        }
    };
    let network = match p.network.as_deref() {
        None => None,
        Some(n) => Some(ferry_coordinator::Network::parse(n).ok_or_else(|| {
            invalid(format!(
                "network {n:?} is not one of {}: \"own\" for an address of its own, \"node\" \
                 for the node's network",
                ferry_coordinator::Network::NAMES
            ))
        })?),
    };
    let checkpoint_interval_secs =
        checkpoint_interval(p.checkpoint_interval_seconds.as_ref()).map_err(invalid)?;
    let spec = ferry_proto::agent::WorkloadSpec {
        checkpoint_interval_secs,
        name: p.name,
        argv: p.command,
        env: p.env.into_iter().collect(),
        cwd: p.cwd.unwrap_or_default(),
        engine,
        user: p.user.unwrap_or_default(),
        group: p.group.unwrap_or_default(),
        ..Default::default()
    };
    if p.memory_bytes == Some(0) {
        return Err(invalid(
            "memoryBytes is 0: give the memory the process needs in bytes, or leave it out".into(),
        ));
    }
    let (node, s) = c.start_process(p.server_id.as_deref(), spec, network, p.memory_bytes).await?;
    Ok((StatusCode::CREATED, Json(Context::read(&c)?.process(node, s))))
}

async fn control(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    op: &'static str,
) -> Api<Process> {
    let (node, s) = c.control(&id, op).await?;
    Ok(Json(Context::read(&c)?.process(node, s)))
}

async fn delete_process(State(c): State<Arc<Coordinator>>, Path(id): Path<String>) -> Api<Process> {
    control(State(c), Path(id), "stop").await
}

/// The most lines one log read returns (`limit`, `tail`).
const LOG_PAGE_MAX: u32 = 10_000;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
    /// The last this many lines (as `tail -n`), instead of `from` and `limit`.
    #[serde(default)]
    tail: Option<u32>,
}

/// Which lines of a log a query asks for.
#[derive(Debug, PartialEq)]
enum LogPage {
    /// At most `limit` lines from line `from` on (0-based).
    From { from: u64, limit: u32 },
    /// The last `n` lines.
    Tail(u32),
}

impl LogQuery {
    fn page(&self) -> Result<LogPage, ApiError> {
        match (self.tail, self.from, self.limit) {
            (Some(n), None, None) if n <= LOG_PAGE_MAX => Ok(LogPage::Tail(n)),
            (Some(n), None, None) => Err(ApiError::bad_request(format!(
                "tail={n} is above {LOG_PAGE_MAX} lines; page with from and limit for more"
            ))),
            (Some(_), _, _) => Err(ApiError::bad_request(
                "tail (the last N lines) goes without from and limit".into(),
            )),
            (None, from, limit) => Ok(LogPage::From {
                from: from.unwrap_or(0),
                limit: limit.unwrap_or(1000).min(LOG_PAGE_MAX),
            }),
        }
    }
}

/// The first line of the last `n` of a log of `count` lines.
fn tail_start(count: u64, n: u32) -> u64 {
    count.saturating_sub(u64::from(n))
}

async fn logs(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Api<serde_json::Value> {
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!("{}; use ?tail=N, or ?from=LINE&limit=N", e.body_text()))
    })?;
    let r = match q.page()? {
        LogPage::From { from, limit } => c.logs(&id, from, limit).await?,
        LogPage::Tail(n) => {
            // A read past the end reads nothing and answers the line count as `next_line`.
            let count = c.logs(&id, u64::MAX, 1).await?.next_line;
            if n == 0 {
                ferry_proto::agent::GetLogsResponse { lines: Vec::new(), next_line: count }
            } else {
                c.logs(&id, tail_start(count, n), n).await?
            }
        }
    };
    let lines: Vec<serde_json::Value> = r
        .lines
        .into_iter()
        .map(|l| {
            serde_json::json!({
                "line": l.line,
                "at": rfc3339(l.at_ms),
                "stream": if l.stream == 2 { "stderr" } else { "stdout" },
                "text": l.text,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"lines": lines, "next": r.next_line})))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewMigration {
    process_id: String,
    /// Without it the coordinator places the migration (never on the source).
    #[serde(default)]
    target_server_id: Option<String>,
    #[serde(default)]
    source_server_id: Option<String>,
    /// "stop-and-copy" (default), "post-copy" or "auto" (underscores accepted too).
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Phase {
    phase: String,
    started_at: String,
    ended_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Migration {
    id: String,
    process_id: String,
    source_server_id: String,
    target_server_id: String,
    mode: String,
    status: String,
    error: Option<String>,
    freeze_ms: Option<i64>,
    dump_ms: Option<i64>,
    transfer_ms: Option<i64>,
    restore_ms: Option<i64>,
    downtime_ms: Option<i64>,
    bytes_raw: Option<u64>,
    bytes_wire: Option<u64>,
    /// Post-copy: bytes of the workload's memory the target has yet to receive (live while the
    /// migration runs; in a failed one, what never arrived).
    post_copy_bytes_remaining: Option<u64>,
    phases: Vec<Phase>,
    started_at: String,
    finished_at: Option<String>,
}

fn migration_json(m: ferry_coordinator::MigrationRow) -> Migration {
    use prost::Message;
    let r = m.result.as_deref().and_then(|b| ferry_proto::agent::MigrationResult::decode(b).ok());
    // While it runs the coordinator keeps the source's figures so far: bytes and post-copy
    // pages are live; times and phases only count once it has ended.
    let fin = r.as_ref().filter(|_| m.finished_at_ms.is_some());
    let num = |f: fn(&ferry_proto::agent::MigrationResult) -> i64| fin.map(f);
    Migration {
        freeze_ms: num(|r| r.freeze_ms),
        dump_ms: num(|r| r.dump_ms),
        transfer_ms: num(|r| r.transfer_ms),
        restore_ms: num(|r| r.restore_ms),
        downtime_ms: num(|r| r.downtime_ms),
        bytes_raw: r.as_ref().map(|r| r.bytes_raw),
        bytes_wire: r.as_ref().map(|r| r.bytes_wire),
        post_copy_bytes_remaining: r
            .as_ref()
            .filter(|r| r.mode == "post_copy" || r.post_copy_pages_total > 0)
            .map(|r| r.post_copy_bytes_remaining),
        phases: fin
            .map(|r| {
                r.phases
                    .iter()
                    .map(|p| Phase {
                        phase: p.phase.clone(),
                        started_at: rfc3339(p.started_at_ms),
                        ended_at: rfc3339(p.ended_at_ms),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        error: (!m.error.is_empty()).then_some(m.error),
        id: m.id,
        process_id: m.process_id,
        source_server_id: m.source,
        target_server_id: m.target,
        mode: m.mode,
        status: m.status,
        started_at: rfc3339(m.started_at_ms),
        finished_at: m.finished_at_ms.map(rfc3339),
    }
}

async fn create_migration(
    State(c): State<Arc<Coordinator>>,
    ApiJson(m): ApiJson<NewMigration>,
) -> Result<(StatusCode, Json<Migration>), ApiError> {
    let mode = match m.mode.as_deref() {
        None => ferry_coordinator::MigrationMode::StopAndCopy,
        Some(s) => ferry_coordinator::MigrationMode::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "mode {s:?} is not one of stop-and-copy, post-copy, auto"
            ))
        })?,
    };
    let row = c.start_migration(
        &m.process_id,
        m.target_server_id.as_deref(),
        m.source_server_id.as_deref(),
        mode,
    )?;
    Ok((StatusCode::ACCEPTED, Json(migration_json(row))))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MigrationsQuery {
    /// At most this many, the newest first chosen (1 to [`MAX_PAGE`], default
    /// [`DEFAULT_MIGRATIONS_PAGE`]); the page itself is oldest first.
    limit: Option<u32>,
    /// Only migrations before this cursor (`STARTED_MS.ID`, from the `Link` header).
    before: Option<String>,
    #[serde(default)]
    process_id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    mode: String,
}

/// `GET /api/migrations`: a page of the history, the newest `limit` (default 100) before
/// `before`, oldest first; `Link: <...before=CURSOR...>; rel="next"` when older ones remain.
async fn list_migrations(
    State(c): State<Arc<Coordinator>>,
    query: Result<axum::extract::Query<MigrationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; the parameters are limit, before, processId, status, mode",
            e.body_text()
        ))
    })?;
    let limit = page_limit(q.limit, DEFAULT_MIGRATIONS_PAGE)?;
    let before = q
        .before
        .as_deref()
        .map(ferry_coordinator::Cursor::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let (page, next) = c.migrations_page(&ferry_coordinator::MigrationQuery {
        before,
        limit,
        process: q.process_id.clone(),
        status: q.status.clone(),
        mode: q.mode.clone(),
    })?;
    let mut r = Json(page.into_iter().map(migration_json).collect::<Vec<_>>()).into_response();
    if let Some(next) = next {
        let (limit, next) = (limit.to_string(), next.to_string());
        let (k, v) = next_link(
            "/api/migrations",
            &[
                ("limit", &limit),
                ("before", &next),
                ("processId", &q.process_id),
                ("status", &q.status),
                ("mode", &q.mode),
            ],
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    Ok(r)
}

async fn one_migration(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
) -> Api<Migration> {
    c.migration(&id)?
        .map(|m| Json(migration_json(m)))
        .ok_or_else(|| ApiError::not_found(format!("no migration with id {id:?}")))
}

async fn cordon(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    schedulable: bool,
) -> Api<Server> {
    c.set_schedulable(&id, schedulable)?;
    let Json(all) = server_list(&c)?;
    all.into_iter()
        .find(|s| s.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no server {id:?}")))
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewDrain {
    /// Seconds the whole drain should fit in (1 to a day); the plan picks each migration's mode
    /// for it. Without it: no deadline, every migration stop-and-copy.
    #[serde(default)]
    deadline_seconds: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DrainWorkload {
    process_id: String,
    /// Resident memory when the drain was planned.
    memory_bytes: u64,
    mode: String,
    target_server_id: Option<String>,
    migration_id: Option<String>,
    /// pending, migrating, completed, rolled_back, failed, or ended (it ended on its own).
    status: String,
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Drain {
    id: String,
    server_id: String,
    /// running, completed (nothing left on the node) or failed.
    status: String,
    deadline_seconds: Option<i64>,
    estimate_ms: i64,
    /// Whether the plan's estimate is within the deadline.
    fits: bool,
    concurrency: u32,
    message: Option<String>,
    workloads: Vec<DrainWorkload>,
    started_at: String,
    ended_at: Option<String>,
}

fn drain_json(d: ferry_coordinator::DrainRow) -> Drain {
    let some = |s: String| (!s.is_empty()).then_some(s);
    Drain {
        id: d.id,
        server_id: d.node,
        status: d.status,
        deadline_seconds: d.deadline_ms.map(|m| m / 1000),
        estimate_ms: d.estimate_ms,
        fits: d.fits,
        concurrency: d.concurrency,
        message: some(d.message),
        workloads: d
            .items
            .into_iter()
            .map(|i| DrainWorkload {
                process_id: i.process,
                memory_bytes: i.bytes,
                mode: i.mode,
                target_server_id: some(i.target),
                migration_id: some(i.migration),
                status: i.status,
                error: some(i.error),
            })
            .collect(),
        started_at: rfc3339(d.started_at_ms),
        ended_at: d.ended_at_ms.map(rfc3339),
    }
}

async fn start_drain(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Drain>), ApiError> {
    // The body is optional: none (or only whitespace) is no deadline.
    let d: NewDrain = optional_body(
        body,
        &format!(
            "{{\"deadlineSeconds\": N}} with N from 1 to {}",
            ferry_coordinator::MAX_DEADLINE_SECS
        ),
    )?;
    let row = c.start_drain(&id, d.deadline_seconds)?;
    Ok((StatusCode::ACCEPTED, Json(drain_json(row))))
}

/// An optional JSON body: none (or only whitespace) is `T::default()`; `what` says what a body
/// may hold, for the error.
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "too_large", e.body_text())
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("{e}; the body is optional, else {what}")))
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Checkpoint {
    id: String,
    seq: u64,
    taken_at: String,
    bytes: u64,
    raw_bytes: u64,
    freeze_ms: u32,
    /// The node the process ran on when it was taken.
    node: String,
    /// Where the object is kept: node names, and "s3" for the object store.
    holders: Vec<String>,
}

fn checkpoint_json(k: ferry_proto::agent::CheckpointInfo) -> Checkpoint {
    Checkpoint {
        id: k.id,
        seq: k.seq,
        taken_at: rfc3339(k.taken_at_ms),
        bytes: k.bytes,
        raw_bytes: k.raw_bytes,
        freeze_ms: k.freeze_ms,
        node: k.node,
        holders: k.holders,
    }
}

async fn list_checkpoints(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
) -> Api<serde_json::Value> {
    let ks: Vec<Checkpoint> = c.checkpoints(&id)?.into_iter().map(checkpoint_json).collect();
    Ok(Json(serde_json::json!({ "checkpoints": ks })))
}

async fn take_checkpoint(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Checkpoint>), ApiError> {
    Ok((StatusCode::CREATED, Json(checkpoint_json(c.take_checkpoint(&id).await?))))
}

#[derive(serde::Deserialize, Default, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewRestore {
    /// The checkpoint to restore; without it, the newest.
    #[serde(default)]
    checkpoint_id: Option<String>,
    /// The node to restore on; without it, the process's node if online and schedulable, else
    /// a placed one.
    #[serde(default)]
    server_id: Option<String>,
}

async fn restore(
    State(c): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Migration>), ApiError> {
    let r: NewRestore =
        optional_body(body, "{\"checkpointId\": \"c-...\", \"serverId\": \"...\"}, both optional")?;
    let row = c.restore_checkpoint(&id, r.checkpoint_id.as_deref(), r.server_id.as_deref())?;
    Ok((StatusCode::ACCEPTED, Json(migration_json(row))))
}

async fn list_drains(State(c): State<Arc<Coordinator>>) -> Api<Vec<Drain>> {
    Ok(Json(c.drains()?.into_iter().map(drain_json).collect()))
}

async fn one_drain(State(c): State<Arc<Coordinator>>, Path(id): Path<String>) -> Api<Drain> {
    c.drains()?
        .into_iter()
        .find(|d| d.id == id)
        .map(|d| Json(drain_json(d)))
        .ok_or_else(|| ApiError::not_found(format!("no drain with id {id:?}")))
}

/// Figures of the finished migrations kept (the store's bounded history): the overview's and
/// the metrics'.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct MigrationFigures {
    pub completed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    /// The downtime of each completed migration with a readable result, ms, ascending.
    pub downtimes_ms: Vec<i64>,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
}

impl MigrationFigures {
    /// Adds one finished migration.
    pub fn add(&mut self, status: &str, result: Option<&[u8]>) {
        use prost::Message;
        match status {
            "completed" => self.completed += 1,
            "rolled_back" => self.rolled_back += 1,
            _ => self.failed += 1,
        }
        if status != "completed" {
            return;
        }
        if let Some(r) = result.and_then(|b| ferry_proto::agent::MigrationResult::decode(b).ok()) {
            self.downtimes_ms.push(r.downtime_ms);
            self.bytes_raw += r.bytes_raw;
            self.bytes_wire += r.bytes_wire;
        }
    }

    /// Completed / finished; `None` before any migration finished.
    pub fn success_rate(&self) -> Option<f64> {
        let finished = self.completed + self.rolled_back + self.failed;
        (finished > 0).then(|| self.completed as f64 / finished as f64)
    }

    pub fn average_downtime_ms(&self) -> Option<f64> {
        let n = self.downtimes_ms.len();
        (n > 0).then(|| self.downtimes_ms.iter().map(|d| *d as f64).sum::<f64>() / n as f64)
    }
}

/// The finished migrations' figures, read again only when the finished history changed since
/// they were last computed.
pub(crate) fn migration_figures(c: &Coordinator) -> Result<Arc<MigrationFigures>, ApiError> {
    // Keyed by the finished history alone: heartbeats and running migrations' progress do not
    // make it read the history again.
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        c.store().finished_generation()?.hash(&mut h);
        h.finish()
    };
    c.memo("migration_figures", key, || -> Result<MigrationFigures, ApiError> {
        let mut f = MigrationFigures::default();
        c.store().finished_migrations(|status, result| f.add(status, result))?;
        f.downtimes_ms.sort_unstable();
        Ok(f)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_coordinator::CoordError;

    fn mapped(e: CoordError) -> (StatusCode, &'static str, String) {
        let a = ApiError::from(e);
        (a.status, a.code, a.message)
    }

    fn log_page(query: &str) -> Result<LogPage, String> {
        let uri: axum::http::Uri = format!("/api/processes/w-1/logs?{query}").parse().unwrap();
        let q = axum::extract::Query::<LogQuery>::try_from_uri(&uri).map_err(|e| e.body_text())?;
        q.page().map_err(|e| e.message)
    }

    #[test]
    fn a_log_read_is_a_page_from_a_line_or_the_last_n_lines() {
        assert_eq!(log_page(""), Ok(LogPage::From { from: 0, limit: 1000 }));
        assert_eq!(log_page("from=7&limit=20"), Ok(LogPage::From { from: 7, limit: 20 }));
        assert_eq!(log_page("limit=999999"), Ok(LogPage::From { from: 0, limit: 10_000 }));
        assert_eq!(log_page("tail=10"), Ok(LogPage::Tail(10)));
        assert_eq!(log_page("tail=0"), Ok(LogPage::Tail(0)));
        assert_eq!(log_page("tail=10000"), Ok(LogPage::Tail(10_000)));
        assert!(log_page("tail=10001").unwrap_err().contains("above 10000"));
        for both in ["tail=5&from=0", "tail=5&limit=5"] {
            assert!(log_page(both).unwrap_err().contains("without from and limit"), "{both}");
        }
        assert!(log_page("tail=-1").is_err());
        // The last n of a log of `count` lines start at count - n, or at its start.
        assert_eq!(tail_start(1500, 10), 1490);
        assert_eq!(tail_start(1500, 0), 1500);
        assert_eq!(tail_start(4, 10), 0);
        assert_eq!(tail_start(0, 10), 0);
    }

    #[test]
    fn refusals_of_a_migrating_process_are_409_migrating() {
        let (status, code, msg) = mapped(CoordError::Migrating("process w-1 is migrating".into()));
        assert_eq!(
            (status, code, msg.as_str()),
            (StatusCode::CONFLICT, "migrating", "process w-1 is migrating")
        );
        // An agent's own refusal, for a migration that began after the coordinator's check.
        let agent = |m: &str| CoordError::Agent {
            node: "host0".into(),
            status: tonic::Status::failed_precondition(m),
        };
        let (status, code, msg) = mapped(agent("workload w-1 is migrating (m-1); try again later"));
        assert_eq!((status, code), (StatusCode::CONFLICT, "migrating"));
        assert!(msg.contains("host0") && msg.contains("m-1"), "{msg}");
        // Other wrong states stay conflicts.
        assert_eq!(mapped(agent("workload w-1 has exited")).1, "conflict");
    }

    #[test]
    fn a_process_shows_unknown_on_an_offline_node_and_held_copies_say_so() {
        let status = |state: ProcessState, held: &str| ProcessStatus {
            spec: Some(ferry_proto::agent::WorkloadSpec { id: "w-1".into(), ..Default::default() }),
            state: state as i32,
            held_for_migration: held.into(),
            exit: (state == ProcessState::Exited).then_some(ferry_proto::agent::ExitInfo {
                code: Some(0),
                signal: None,
                exited_at_ms: 1,
            }),
            ..Default::default()
        };
        let ctx = |online: bool, moving: bool| Context {
            moving: if moving { ["w-1".to_string()].into() } else { Default::default() },
            nodes: [("n".to_string(), (online, 1_764_000_000_000))].into(),
        };
        let p = ctx(false, false).process("n".into(), status(ProcessState::Running, ""));
        assert_eq!(
            (p.status, p.last_seen.as_deref()),
            ("unknown", Some("2025-11-24T16:00:00.000Z"))
        );
        assert_eq!(
            ctx(false, true).process("n".into(), status(ProcessState::Running, "")).status,
            "unknown"
        );
        assert_eq!(
            ctx(false, false).process("n".into(), status(ProcessState::Exited, "")).status,
            "exited"
        );
        assert_eq!(
            ctx(true, false).process("n".into(), status(ProcessState::Running, "")).status,
            "running"
        );
        let held = ctx(true, false).process("n".into(), status(ProcessState::Stopped, "m-1"));
        assert_eq!((held.status, held.held_for_migration.as_deref()), ("held", Some("m-1")));
        assert_eq!(
            ctx(true, true).process("n".into(), status(ProcessState::Stopped, "m-1")).status,
            "migrating"
        );
        let gone = Context { moving: Default::default(), nodes: Default::default() };
        let p = gone.process("n".into(), status(ProcessState::Running, ""));
        assert_eq!((p.status, p.last_seen), ("unknown", None));
    }

    #[test]
    fn the_address_is_the_agents_report_and_null_on_the_node_network() {
        let status = |id: &str, address: &str| ProcessStatus {
            spec: Some(ferry_proto::agent::WorkloadSpec {
                id: id.into(),
                address: address.into(),
                ..Default::default()
            }),
            state: ProcessState::Running as i32,
            ..Default::default()
        };
        let ctx =
            Context { moving: Default::default(), nodes: [("n".to_string(), (true, 1))].into() };
        let json = |p: Process| serde_json::to_value(p).unwrap()["address"].clone();
        assert_eq!(json(ctx.process("n".into(), status("w-1", "10.0.0.1"))), "10.0.0.1");
        assert_eq!(json(ctx.process("n".into(), status("w-3", ""))), serde_json::Value::Null);
    }

    #[test]
    fn checkpoint_intervals_are_integers_from_5_to_86400_or_absent() {
        use serde_json::json;
        assert_eq!(checkpoint_interval(None), Ok(0));
        assert_eq!(checkpoint_interval(Some(&json!(null))), Ok(0));
        assert_eq!(checkpoint_interval(Some(&json!(5))), Ok(5));
        assert_eq!(checkpoint_interval(Some(&json!(86_400))), Ok(86_400));
        for bad in
            [json!(0), json!(4), json!(86_401), json!(-30), json!(30.5), json!("30"), json!(true)]
        {
            let e = checkpoint_interval(Some(&bad)).unwrap_err();
            assert!(e.contains("from 5 to 86400"), "{bad}: {e}");
        }
        // The field is known to the body (deny_unknown_fields elsewhere).
        let p: NewProcess = serde_json::from_value(
            json!({"name": "n", "command": ["sleep", "9"], "checkpointIntervalSeconds": 30}),
        )
        .unwrap();
        assert_eq!(checkpoint_interval(p.checkpoint_interval_seconds.as_ref()), Ok(30));
    }

    #[test]
    fn a_process_says_its_checkpoint_interval_and_null_when_unprotected() {
        let status = |every: u32| ProcessStatus {
            spec: Some(ferry_proto::agent::WorkloadSpec {
                id: "w-1".into(),
                checkpoint_interval_secs: every,
                ..Default::default()
            }),
            state: ProcessState::Running as i32,
            ..Default::default()
        };
        let json = |s| serde_json::to_value(process_json("n".into(), s)).unwrap();
        assert_eq!(json(status(30))["checkpointIntervalSeconds"], 30);
        assert_eq!(json(status(0))["checkpointIntervalSeconds"], serde_json::Value::Null);
    }

    #[test]
    fn restore_bodies_are_optional_and_strict() {
        let body = |b: &'static str| Ok(axum::body::Bytes::from_static(b.as_bytes()));
        let r: NewRestore = optional_body(body("  "), "x").unwrap();
        assert_eq!(r, NewRestore::default());
        let r: NewRestore =
            optional_body(body(r#"{"checkpointId": "c-1", "serverId": "n2"}"#), "x").unwrap();
        assert_eq!((r.checkpoint_id.as_deref(), r.server_id.as_deref()), (Some("c-1"), Some("n2")));
        for bad in [r#"{"checkpoint": "c-1"}"#, r#"{"checkpointId": 3}"#, "[", "null"] {
            let e = optional_body::<NewRestore>(body(bad), "the restore's fields").err().unwrap();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_request"), "{bad}");
            assert!(e.message.contains("the body is optional"), "{}", e.message);
        }
    }

    #[test]
    fn a_checkpoint_shows_its_time_in_rfc_3339() {
        let k = ferry_proto::agent::CheckpointInfo {
            id: "c-1".into(),
            seq: 4,
            taken_at_ms: 1_764_000_000_000,
            bytes: 10,
            raw_bytes: 20,
            freeze_ms: 7,
            node: "n1".into(),
            holders: vec!["n1".into(), "s3".into()],
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(checkpoint_json(k)).unwrap(),
            serde_json::json!({
                "id": "c-1", "seq": 4, "takenAt": "2025-11-24T16:00:00.000Z", "bytes": 10,
                "rawBytes": 20, "freezeMs": 7, "node": "n1", "holders": ["n1", "s3"],
            })
        );
    }

    #[test]
    fn an_exhausted_range_is_409_no_address() {
        let (status, code, msg) = mapped(CoordError::NoAddress("no free address".into()));
        assert_eq!(
            (status, code, msg.as_str()),
            (StatusCode::CONFLICT, "no_address", "no free address")
        );
    }

    #[test]
    fn page_sizes_are_1_to_1000_and_links_carry_encoded_filters() {
        assert_eq!(page_limit(None, 100).unwrap(), 100);
        assert_eq!(page_limit(Some(1000), 100).unwrap(), 1000);
        for bad in [0, 1001] {
            let e = page_limit(Some(bad), 100).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(&bad.to_string()) && e.message.contains("1 to 1000"));
        }
        let (k, v) = next_link(
            "/api/migrations",
            &[("limit", "5"), ("before", "10.m-1"), ("processId", "w a&b"), ("status", "")],
        );
        assert_eq!(k, axum::http::header::LINK);
        assert_eq!(v, r#"</api/migrations?limit=5&before=10.m-1&processId=w%20a%26b>; rel="next""#);
    }

    #[test]
    fn migration_figures_count_outcomes_and_completed_downtimes() {
        use prost::Message;
        let mut f = MigrationFigures::default();
        assert_eq!((f.success_rate(), f.average_downtime_ms()), (None, None));
        let r = |d: i64| {
            ferry_proto::agent::MigrationResult {
                downtime_ms: d,
                bytes_raw: 10,
                bytes_wire: 4,
                ..Default::default()
            }
            .encode_to_vec()
        };
        f.add("completed", Some(&r(100)));
        f.add("completed", Some(&r(300)));
        f.add("completed", None);
        f.add("rolled_back", Some(&r(999)));
        f.add("failed", None);
        assert_eq!((f.completed, f.rolled_back, f.failed), (3, 1, 1));
        assert_eq!(f.success_rate(), Some(0.6));
        assert_eq!(f.average_downtime_ms(), Some(200.0), "completed ones with figures only");
        assert_eq!((f.bytes_raw, f.bytes_wire), (20, 8));
    }

    async fn call(app: &Router, uri: &str) -> (StatusCode, Option<String>, serde_json::Value) {
        use tower::ServiceExt;
        let req = axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let link =
            res.headers().get(axum::http::header::LINK).map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, link, serde_json::from_slice(&body).unwrap())
    }

    /// The `Link` header's target.
    fn target(link: &str) -> &str {
        link.strip_prefix('<').and_then(|l| l.split_once('>')).map(|(t, _)| t).unwrap()
    }

    fn ids(v: &serde_json::Value) -> Vec<String> {
        v.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    }

    #[tokio::test]
    async fn migrations_come_in_pages_linked_newest_first_and_the_overview_follows_changes() {
        use ferry_coordinator::MigrationRow;
        let d = tempfile::tempdir().unwrap();
        let config = ferry_coordinator::CoordinatorConfig::new(
            d.path().to_path_buf(),
            ferry_proto::tls::Wire::Insecure,
        );
        let c = Coordinator::open(config).unwrap();
        let rows: Vec<MigrationRow> = (0..250)
            .map(|i| MigrationRow {
                id: format!("m-{i:04}"),
                process_id: format!("w-{}", i % 2),
                source: "a".into(),
                target: "b".into(),
                mode: "stop-and-copy".into(),
                status: if i % 5 == 0 { "failed" } else { "completed" }.into(),
                error: String::new(),
                result: None,
                started_at_ms: 1_000 + i,
                finished_at_ms: Some(2_000 + i),
            })
            .collect();
        c.store().import_migrations(&rows).unwrap();
        let app = router(c.clone(), GatewayConfig::default());
        // The default page: the newest 100, oldest first, and a link to the older ones.
        let (status, link, page) = call(&app, "/api/migrations").await;
        assert_eq!(status, StatusCode::OK);
        let got = ids(&page);
        assert_eq!((got.len(), got[0].as_str(), got[99].as_str()), (100, "m-0150", "m-0249"));
        let link = link.expect("older ones remain");
        assert_eq!(target(&link), "/api/migrations?limit=100&before=1150.m-0150");
        let (_, link, page) = call(&app, target(&link)).await;
        assert_eq!(ids(&page)[0], "m-0050");
        let (_, link, page) = call(&app, target(&link.unwrap())).await;
        assert_eq!((ids(&page).len(), link), (50, None), "the oldest page has no next");
        // Filters travel with the link.
        let (_, link, page) =
            call(&app, "/api/migrations?processId=w-1&status=completed&limit=3").await;
        assert_eq!(ids(&page), ["m-0243", "m-0247", "m-0249"], "m-0245 failed");
        assert_eq!(
            target(&link.unwrap()),
            "/api/migrations?limit=3&before=1243.m-0243&processId=w-1&status=completed"
        );
        // One by id; bad pages are 400 with the reason.
        let (status, _, m) = call(&app, "/api/migrations/m-0007").await;
        assert_eq!((status, m["processId"].as_str()), (StatusCode::OK, Some("w-1")));
        assert_eq!(call(&app, "/api/migrations/m-9999").await.0, StatusCode::NOT_FOUND);
        for (uri, says) in [
            ("/api/migrations?limit=0", "1 to 1000"),
            ("/api/migrations?limit=5000", "1 to 1000"),
            ("/api/migrations?before=yesterday", "STARTED_MS.ID"),
            ("/api/migrations?limit=ten", "limit"),
        ] {
            let (status, _, e) = call(&app, uri).await;
            let msg = e["error"]["message"].as_str().unwrap().to_string();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(msg.contains(says), "{uri}: {msg}");
        }
        // The overview's figures are cached, and follow every change.
        let (_, _, o) = call(&app, "/api/overview").await;
        assert_eq!(
            (o["successRate"].as_f64(), o["activeMigrations"].as_u64()),
            (Some(0.8), Some(0))
        );
        c.store().finish_migration("m-0000", "completed", "", None, 9_000).unwrap();
        let (_, _, o) = call(&app, "/api/overview").await;
        assert_eq!(o["successRate"].as_f64(), Some(201.0 / 250.0));
    }

    #[tokio::test]
    async fn processes_come_whole_or_in_pages_by_id() {
        use prost::Message;
        let d = tempfile::tempdir().unwrap();
        let config = ferry_coordinator::CoordinatorConfig::new(
            d.path().to_path_buf(),
            ferry_proto::tls::Wire::Insecure,
        );
        let c = Coordinator::open(config).unwrap();
        c.store().register("a", "http://a", b"", 1).unwrap();
        let reports: Vec<ferry_coordinator::Reported> = (0..5)
            .map(|i| {
                let s = ProcessStatus {
                    spec: Some(ferry_proto::agent::WorkloadSpec {
                        id: format!("w-{i}"),
                        ..Default::default()
                    }),
                    // w-2 has exited: recorded ended, as the coordinator records such reports.
                    state: if i == 2 { ProcessState::Exited } else { ProcessState::Running } as i32,
                    exit: (i == 2).then(|| ferry_proto::agent::ExitInfo {
                        code: Some(0),
                        exited_at_ms: 5,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                ferry_coordinator::Reported {
                    id: format!("w-{i}"),
                    status: s.encode_to_vec(),
                    ended_at_ms: (i == 2).then_some(5),
                    ..Default::default()
                }
            })
            .collect();
        c.store().set_workloads("a", &reports, 0, 10).unwrap();
        let app = router(c.clone(), GatewayConfig::default());
        let (_, link, all) = call(&app, "/api/processes").await;
        assert_eq!(
            (ids(&all), link),
            (vec!["w-0".into(), "w-1".into(), "w-3".into(), "w-4".into()], None)
        );
        let (_, link, page) = call(&app, "/api/processes?limit=2").await;
        assert_eq!(ids(&page), ["w-0", "w-1"]);
        let link = link.unwrap();
        assert_eq!(target(&link), "/api/processes?limit=2&after=w-1");
        let (_, _, page) = call(&app, target(&link)).await;
        assert_eq!(ids(&page), ["w-3", "w-4"]);
        let (_, link, page) = call(&app, "/api/processes?limit=2&all=true&after=w-1").await;
        assert_eq!(ids(&page), ["w-2", "w-3"]);
        assert_eq!(target(&link.unwrap()), "/api/processes?limit=2&after=w-3&all=true");
        let (status, _, p) = call(&app, "/api/processes/w-3").await;
        assert_eq!((status, p["id"].as_str()), (StatusCode::OK, Some("w-3")));
        assert_eq!(call(&app, "/api/processes/w-9").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "/api/processes?after=w-1").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "/api/processes?limit=0").await.0, StatusCode::BAD_REQUEST);
    }
}
