//! Control-plane scenarios: real agents registering and heartbeating with a real coordinator,
//! nodes going offline and coming back, and a coordinator restart that forgets nothing.

mod harness;

use std::process::Command;
use std::time::Duration;

use ferry_proto::coordinator as cpb;
use ferry_proto::coordinator::coordinator_client::CoordinatorClient;
use harness::*;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

/// A `ferry coordinator` on a fixed port of `ip` (so it can be restarted at the same address),
/// with its REST gateway on port `http`.
fn coordinator_at(ip: &str, port: u16, http: u16, data: &std::path::Path) -> AgentProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["coordinator", "--listen", &format!("{ip}:{port}"), "--heartbeat-ms", "200"])
        .args(["--http", &format!("{ip}:{http}")])
        .arg("--data-dir")
        .arg(data);
    AgentProc::spawn(
        "coordinator",
        cmd,
        TempDir::new("ferry-test-coord-unused"),
        data.to_path_buf(),
    )
}

fn coordinator_with_http(port: u16, http: u16, data: &std::path::Path) -> AgentProc {
    coordinator_at("127.0.0.1", port, http, data)
}

fn coordinator(port: u16, data: &std::path::Path) -> AgentProc {
    coordinator_with_http(port, free_port(), data)
}

/// GET `path` from the gateway on loopback port `port`: (status code, JSON body).
fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    http(&format!("127.0.0.1:{port}"), "GET", path, None)
}

/// One HTTP/1.1 request to the gateway at `addr`: (status code, JSON body).
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to gateway");
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn nodes(addr: &str) -> Vec<cpb::NodeInfo> {
    let mut c = CoordinatorClient::connect(addr.to_string()).await.expect("connect to coordinator");
    c.list_nodes(cpb::ListNodesRequest {}).await.expect("ListNodes").into_inner().nodes
}

async fn wait_nodes(
    addr: &str,
    what: &str,
    pred: impl Fn(&[cpb::NodeInfo]) -> bool,
) -> Vec<cpb::NodeInfo> {
    let pred = &pred;
    wait_until(what, T, || async move {
        let n = nodes(addr).await;
        pred(&n).then_some(n)
    })
    .await
}

fn online(n: &[cpb::NodeInfo], name: &str) -> Option<bool> {
    n.iter().find(|x| x.node == name).map(|x| x.online)
}

#[tokio::test]
async fn agents_register_go_offline_and_survive_a_coordinator_restart() {
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-coordinator");
    let coord = coordinator_with_http(port, http_port, data.path());
    let url = format!("http://127.0.0.1:{port}");
    let a = AgentProc::start_with("node-a", &["--coordinator", &url]);
    let b = AgentProc::start_with("node-b", &["--coordinator", &url]);

    let n = wait_nodes(&coord.addr, "both nodes online with their health", |n| {
        online(n, "node-a") == Some(true) && online(n, "node-b") == Some(true)
    })
    .await;
    let na = n.iter().find(|x| x.node == "node-a").unwrap();
    assert_eq!(na.address, a.addr, "the address other nodes reach the agent at");
    let health = na.health.clone().expect("host facts");
    assert!(!health.kernel.is_empty() && health.memory_total_bytes > 0 && health.cores >= 1);

    // Heartbeats carry the workloads.
    let mut ca = a.client().await;
    let sleeper = id_of(&start(&mut ca, spec(&["sleep", "60"])).await);
    wait_nodes(&coord.addr, "node-a reporting one workload", |n| {
        n.iter().any(|x| x.node == "node-a" && x.workload_count == 1)
    })
    .await;

    // A node whose agent dies goes offline after three missed heartbeats.
    kill(b.pid(), libc::SIGKILL);
    wait_nodes(&coord.addr, "node-b offline", |n| online(n, "node-b") == Some(false)).await;
    assert_eq!(online(&nodes(&coord.addr).await, "node-a"), Some(true));
    // Nothing is sent to an offline node.
    let gw = format!("127.0.0.1:{http_port}");
    let (code, err) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "x", "command": ["true"], "serverId": "node-b"})),
    )
    .await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("offline")), "{err}");
    let (code, err) = call(
        &gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": sleeper, "targetServerId": "node-b"})),
    )
    .await;
    assert_eq!(code, 409, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("offline"), "{err}");

    // A restarted coordinator knows every node from its database, and the live agent's
    // heartbeats bring it back online without anyone re-adding it.
    drop(coord);
    let coord = coordinator(port, data.path());
    let n = nodes(&coord.addr).await;
    let names: Vec<&str> = n.iter().map(|x| x.node.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b"], "nodes survive the restart");
    wait_nodes(&coord.addr, "node-a online again", |n| online(n, "node-a") == Some(true)).await;
    assert_eq!(online(&nodes(&coord.addr).await, "node-b"), Some(false));
    drop(b);
}

#[tokio::test]
async fn bad_registrations_are_refused() {
    let port = free_port();
    let data = TempDir::new("ferry-test-coordinator-bad");
    let coord = coordinator(port, data.path());
    let mut c = CoordinatorClient::connect(coord.addr.clone()).await.unwrap();
    let err = c
        .register_node(cpb::RegisterNodeRequest {
            node: "".into(),
            address: "http://x:1".into(),
            health: None,
        })
        .await
        .expect_err("empty node name");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .register_node(cpb::RegisterNodeRequest {
            node: "n".into(),
            address: "10.0.0.1:50051".into(),
            health: None,
        })
        .await
        .expect_err("address without scheme");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("http://"), "{}", err.message());
    let beat = c
        .heartbeat(cpb::HeartbeatRequest { node: "stranger".into(), ..Default::default() })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!beat.known, "an unknown node is told to register");
}

#[tokio::test]
async fn the_gateway_serves_nodes_processes_and_overview() {
    let (port, http) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-gateway");
    let coord = coordinator_with_http(port, http, data.path());
    let url = format!("http://127.0.0.1:{port}");
    let a = AgentProc::start_with("gw-a", &["--coordinator", &url]);
    let mut ca = a.client().await;
    let mut sp = spec(&["sleep", "60"]);
    sp.name = "sleeper".into();
    let s = start(&mut ca, sp).await;
    let id = id_of(&s);
    wait_nodes(&coord.addr, "the workload reported", |n| n.iter().any(|x| x.workload_count == 1))
        .await;
    // The gateway reads the same state.
    let (code, servers) =
        tokio::task::spawn_blocking(move || get(http, "/api/servers")).await.unwrap();
    assert_eq!(code, 200);
    let server = &servers[0];
    assert_eq!(server["id"], "gw-a");
    assert_eq!(server["status"], "online");
    assert_eq!(server["address"], a.addr.as_str());
    assert_eq!(server["processCount"], 1);
    assert!(server["memoryTotalBytes"].as_u64().unwrap() > 0, "{server}");
    assert!(
        server["criuVersion"].is_string() && server["kernel"].as_str().unwrap().len() > 1,
        "{server}"
    );

    let (code, procs) =
        tokio::task::spawn_blocking(move || get(http, "/api/processes")).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(procs[0]["id"], id.as_str());
    assert_eq!(procs[0]["name"], "sleeper");
    assert_eq!(procs[0]["serverId"], "gw-a");
    assert_eq!(procs[0]["status"], "running");
    assert_eq!(procs[0]["command"], serde_json::json!(["sleep", "60"]));
    assert!(procs[0]["startedAt"].as_str().unwrap().ends_with('Z'));

    let path = format!("/api/processes/{id}");
    let (code, one) = tokio::task::spawn_blocking(move || get(http, &path)).await.unwrap();
    assert_eq!((code, one["id"].as_str()), (200, Some(id.as_str())));

    let (code, ov) = tokio::task::spawn_blocking(move || get(http, "/api/overview")).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(ov["totalProcesses"], 1);
    assert_eq!(ov["runningProcesses"], 1);
    assert_eq!((ov["serverNodes"].as_u64(), ov["onlineNodes"].as_u64()), (Some(1), Some(1)));

    let (code, err) =
        tokio::task::spawn_blocking(move || get(http, "/api/processes/w-nope")).await.unwrap();
    assert_eq!(code, 404);
    assert_eq!(err["error"]["code"], "not_found");
    assert!(err["error"]["message"].as_str().unwrap().contains("w-nope"));
    let (code, err) =
        tokio::task::spawn_blocking(move || get(http, "/api/nothing-here")).await.unwrap();
    assert_eq!((code, err["error"]["code"].as_str()), (404, Some("not_found")));
    let (code, h) = tokio::task::spawn_blocking(move || get(http, "/healthz")).await.unwrap();
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")));
}

/// Two network-namespace hosts whose agents registered with a coordinator (and its gateway) on
/// the bridge's address.
struct OnTwoHosts {
    // Dropped in this order: the coordinator, the agents (with their workloads), the hosts.
    coord: Option<AgentProc>,
    a: AgentProc,
    _b: AgentProc,
    _net: harness::net::Net,
    data: TempDir,
    ip: String,
    port: u16,
    http_port: u16,
    gw: String,
}

impl OnTwoHosts {
    /// Kills the coordinator with SIGKILL and starts it again on the same addresses and data.
    fn restart_coordinator(&mut self) {
        drop(self.coord.take());
        self.coord = Some(coordinator_at(&self.ip, self.port, self.http_port, self.data.path()));
    }
}

async fn on_two_hosts(tag: &str) -> OnTwoHosts {
    let net = harness::net::Net::new(2);
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new(tag);
    let ip = net.bridge_ip();
    let coord = coordinator_at(&ip, port, http_port, data.path());
    let url = format!("http://{ip}:{port}");
    let a = net.agent(0, &["--coordinator", &url]);
    let b = net.agent(1, &["--coordinator", &url]);
    wait_nodes(&coord.addr, "both hosts online", |n| {
        online(n, "host0") == Some(true) && online(n, "host1") == Some(true)
    })
    .await;
    let gw = format!("{ip}:{http_port}");
    OnTwoHosts { coord: Some(coord), a, _b: b, _net: net, data, ip, port, http_port, gw }
}

/// Waits until migration `mid` has ended and returns it.
async fn migration_end(gw: &str, mid: &str, what: &str) -> serde_json::Value {
    wait_until(what, T, || async move {
        let (_, m) = call(gw, "GET", &format!("/api/migrations/{mid}"), None).await;
        matches!(m["status"].as_str(), Some("completed" | "rolled_back" | "failed")).then_some(m)
    })
    .await
}

/// Runs `http` off the async threads.
async fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (addr, method, path) = (addr.to_string(), method.to_string(), path.to_string());
    let body = body.map(|b| b.to_string());
    tokio::task::spawn_blocking(move || http(&addr, &method, &path, body.as_deref())).await.unwrap()
}

#[tokio::test]
async fn rest_api_runs_controls_and_migrates_a_process_between_hosts() {
    if !require_root("rest_api_runs_controls_and_migrates_a_process_between_hosts") {
        return;
    }
    let c = on_two_hosts("ferry-test-rest").await;
    let gw = c.gw.clone();
    // Watch the live event stream from the start.
    let watcher = {
        let gw = gw.clone();
        std::thread::spawn(move || sse_until(&gw, "migration_completed", Duration::from_secs(60)))
    };

    // Bad input never reaches an agent.
    let appender = workload("appender.py");
    for (body, code) in [
        (
            serde_json::json!({"name": "x", "command": ["true"], "serverId": "host0", "colour": "red"}),
            400,
        ),
        (serde_json::json!({"name": "x", "command": "true", "serverId": "host0"}), 400),
        (serde_json::json!({"name": "x", "command": [], "serverId": "host0"}), 400),
        (
            serde_json::json!({"name": "x", "command": ["no-such-program-ferry"], "serverId": "host0"}),
            400,
        ),
        (serde_json::json!({"name": "x", "command": ["true"], "serverId": "nowhere"}), 404),
        (
            serde_json::json!({"name": "x", "command": ["true"], "serverId": "host0", "engine": "magic"}),
            400,
        ),
    ] {
        let (got, err) = call(&gw, "POST", "/api/processes", Some(body.clone())).await;
        assert_eq!(got, code, "{body} -> {err}");
        assert!(err["error"]["message"].as_str().map(|m| !m.is_empty()).unwrap_or(false), "{err}");
    }
    let (code, err) =
        call(&gw, "POST", "/api/processes", Some(serde_json::json!("x".repeat(70_000)))).await;
    assert_eq!((code, err["error"]["code"].as_str()), (413, Some("too_large")), "{err}");

    // Run a process, control it, read its output.
    let (code, p) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "journal", "command": [appender], "serverId": "host0"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    assert_eq!((p["serverId"].as_str(), p["status"].as_str()), (Some("host0"), Some("running")));
    let (_, servers) = call(&gw, "GET", "/api/servers", None).await;
    let host0 = servers.as_array().unwrap().iter().find(|s| s["id"] == "host0").unwrap();
    assert_eq!(host0["processCount"], 1, "{servers}");
    let (code, p) = call(&gw, "POST", &format!("/api/processes/{id}/pause"), None).await;
    assert_eq!((code, p["status"].as_str()), (200, Some("paused")));
    let (code, p) = call(&gw, "POST", &format!("/api/processes/{id}/resume"), None).await;
    assert_eq!((code, p["status"].as_str()), (200, Some("running")));
    let logs = wait_until("output through the gateway", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, l) = call(&gw, "GET", &format!("/api/processes/{id}/logs"), None).await;
            let n = l["lines"].as_array().map(|a| {
                a.iter().filter(|x| x["text"].as_str().unwrap_or("").starts_with("count ")).count()
            });
            (n.unwrap_or(0) >= 3).then_some(l)
        }
    })
    .await;
    assert_eq!(logs["lines"][0]["stream"], "stdout");

    // Migrations: refused when they cannot work, accepted and carried out when they can.
    for (body, code) in [
        (serde_json::json!({"processId": id, "targetServerId": "host0"}), 400),
        (serde_json::json!({"processId": "w-nope", "targetServerId": "host1"}), 404),
        (serde_json::json!({"processId": id, "targetServerId": "nowhere"}), 404),
        (
            serde_json::json!({"processId": id, "targetServerId": "host1", "sourceServerId": "host1"}),
            400,
        ),
        (serde_json::json!({"processId": id, "targetServerId": "host1", "extra": 1}), 400),
    ] {
        let (got, err) = call(&gw, "POST", "/api/migrations", Some(body.clone())).await;
        assert_eq!(got, code, "{body} -> {err}");
    }
    let (code, m) = call(
        &gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": id, "targetServerId": "host1"})),
    )
    .await;
    assert_eq!(code, 202, "{m}");
    assert_eq!(m["status"], "pending");
    let mid = m["id"].as_str().unwrap().to_string();
    let (code, again) = call(
        &gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": id, "targetServerId": "host1"})),
    )
    .await;
    // 409 while the first runs; 400 ("already runs on host1") if it has already finished.
    assert!(code == 409 || code == 400, "a second migration: {code} {again}");
    let m = migration_end(&gw, &mid, "the migration to finish").await;
    assert_eq!(m["status"], "completed", "{m}");
    assert!(m["downtimeMs"].as_i64().unwrap() > 0 && m["bytesRaw"].as_u64().unwrap() > 0, "{m}");
    assert!(m["phases"].as_array().unwrap().len() >= 6, "{m}");
    assert!(m["finishedAt"].as_str().unwrap().ends_with('Z'));
    wait_until("the process reported on host1", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (p["serverId"] == "host1" && p["status"] == "running").then_some(())
        }
    })
    .await;
    let (_, ov) = call(&gw, "GET", "/api/overview", None).await;
    assert_eq!(ov["successRate"], 1.0, "{ov}");
    assert_eq!(ov["averageDowntimeMs"].as_f64(), m["downtimeMs"].as_f64(), "{ov} {m}");
    assert_eq!(
        (ov["totalProcesses"].as_u64(), ov["runningProcesses"].as_u64()),
        (Some(1), Some(1)),
        "{ov}"
    );
    assert_eq!(
        (ov["serverNodes"].as_u64(), ov["onlineNodes"].as_u64()),
        (Some(2), Some(2)),
        "{ov}"
    );
    assert_eq!(ov["activeMigrations"], 0, "{ov}");
    // Its state came along: the count goes on where it was on host0.
    let counts = wait_until("counting on host1", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, l) =
                call(&gw, "GET", &format!("/api/processes/{id}/logs?limit=10000"), None).await;
            let n: Vec<u64> = l["lines"]
                .as_array()?
                .iter()
                .filter_map(|x| x["text"].as_str()?.strip_prefix("count ")?.parse().ok())
                .collect();
            (n.len() >= 10).then_some(n)
        }
    })
    .await;
    for w in counts.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count continued across the migration: {counts:?}");
    }
    let (_, list) = call(&gw, "GET", "/api/migrations", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The log, the live events, the metrics.
    let (_, log) = call(&gw, "GET", &format!("/api/logs?process={id}"), None).await;
    let kinds: Vec<&str> =
        log.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in [
        "process_started",
        "process_paused",
        "process_resumed",
        "migration_started",
        "migration_completed",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let (code, err) = call(&gw, "GET", "/api/logs?level=loud", None).await;
    assert_eq!((code, err["error"]["code"].as_str()), (400, Some("bad_request")));
    let seen = watcher.join().unwrap();
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    for k in [
        "process_started",
        "process_paused",
        "process_resumed",
        "migration_started",
        "migration_completed",
    ] {
        assert!(names.contains(&k), "event {k} not streamed: {names:?}");
    }
    // Every phase arrived, once, in order, before the end.
    let phases: Vec<&str> = seen
        .iter()
        .filter(|(n, _)| n == "migration_phase")
        .filter_map(|(_, d)| d["data"]["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        ["preflight", "freeze", "checkpoint", "transfer", "restore", "commit"],
        "{seen:?}"
    );
    let metrics = {
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || raw_get(&gw, "/metrics")).await.unwrap()
    };
    for line in [
        "ferry_migrations{outcome=\"completed\"} 1",
        "ferry_nodes{state=\"online\"} 2",
        "ferry_migration_downtime_ms_count 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let (code, doc) = call(&gw, "GET", "/api/openapi.json", None).await;
    assert_eq!(code, 200);
    for path in [
        "/api/overview",
        "/api/servers",
        "/api/processes",
        "/api/processes/{id}",
        "/api/processes/{id}/pause",
        "/api/processes/{id}/resume",
        "/api/processes/{id}/logs",
        "/api/migrations",
        "/api/migrations/{id}",
        "/api/logs",
        "/api/events",
        "/api/openapi.json",
        "/metrics",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} not described in openapi.json");
    }

    // Stop it where it now runs.
    let (code, p) = call(&gw, "DELETE", &format!("/api/processes/{id}"), None).await;
    assert_eq!(code, 200, "{p}");
    assert!(p["status"] == "exited" || p["status"] == "failed", "{p}");
}

/// The raw body of a GET (for text endpoints).
fn raw_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to gateway");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Reads the server-sent event stream until an event named `until` (or the timeout); returns
/// each event's name and data.
fn sse_until(addr: &str, until: &str, timeout: Duration) -> Vec<(String, serde_json::Value)> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to gateway");
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(s, "GET /api/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut name = String::new();
    let deadline = std::time::Instant::now() + timeout;
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            let data: serde_json::Value = serde_json::from_str(d.trim()).unwrap_or_default();
            seen.push((name.clone(), data));
            if name == until {
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn a_coordinator_restarted_mid_migration_resolves_it() {
    if !require_root("a_coordinator_restarted_mid_migration_resolves_it") {
        return;
    }
    let mut c = on_two_hosts("ferry-test-restart").await;
    let gw = c.gw.clone();
    let memhog = workload("memhog");
    let (code, p) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "big", "command": [memhog, "256"], "serverId": "host0"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let ca = c.a.client().await;
    wait_log(&ca, &id, "memhog ticking", T, |l| l.iter().any(|x| x.starts_with("tick "))).await;
    let (code, m) = call(
        &gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": id, "targetServerId": "host1"})),
    )
    .await;
    assert_eq!(code, 202, "{m}");
    let mid = m["id"].as_str().unwrap().to_string();
    // Once the source agent runs it, the coordinator dies.
    wait_until("the source agent to run the migration", T, || {
        let (mut ca, mid) = (ca.clone(), mid.clone());
        async move {
            ca.get_migration(ferry_proto::agent::MigrationRef { migration_id: mid })
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    wait_until("a phase of the migration announced", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, log) = call(&gw, "GET", &format!("/api/logs?process={id}"), None).await;
            log.as_array()?.iter().any(|e| e["kind"] == "migration_phase").then_some(())
        }
    })
    .await;
    // In flight, the process says so.
    let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    let (_, m) = call(&gw, "GET", &format!("/api/migrations/{mid}"), None).await;
    if !matches!(m["status"].as_str(), Some("completed" | "rolled_back" | "failed")) {
        assert_eq!(p["status"], "migrating", "{p} while {m}");
    }
    c.restart_coordinator();
    let m = migration_end(&gw, &mid, "the restarted coordinator to resolve the migration").await;
    assert_eq!(m["status"], "completed", "{m}");
    let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    assert_eq!(p["serverId"], "host1", "{p}");
    let mut ca = ca;
    let _ =
        ca.get_status(ferry_proto::agent::WorkloadRef { id }).await.expect_err("gone from host0");
}
