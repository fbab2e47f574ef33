//! Control-plane scenarios: real agents registering and heartbeating with a real coordinator,
//! nodes going offline and coming back, and a coordinator restart that forgets nothing.

mod harness;

use std::process::Command;
use std::time::Duration;

use ferry_proto::coordinator as cpb;
use ferry_proto::coordinator::coordinator_client::CoordinatorClient;
use harness::cluster::*;
use harness::*;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

/// A `ferry coordinator` on a fixed port of `ip` (so it can be restarted at the same address),
/// with its REST gateway on port `http`.
fn coordinator_at(ip: &str, port: u16, http: u16, data: &std::path::Path) -> AgentProc {
    coordinator_with(ip, port, http, data, &[])
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

#[tokio::test]
async fn agents_register_go_offline_and_survive_a_coordinator_restart() {
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-coordinator");
    let coord = coordinator_with_http(port, http_port, data.path());
    let url = format!("https://127.0.0.1:{port}");
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

/// An agent on loopback whose data dir the test owns (so it can be restarted on it).
fn agent_on(name: &str, data: &std::path::Path, coordinator: &str) -> AgentProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["agent", "--listen", "127.0.0.1:0", "--node", name, "--stop-grace-secs", "5"])
        .args(["--coordinator", coordinator])
        .arg("--tls-dir")
        .arg(tls_for(data.parent().unwrap(), name))
        .arg("--data-dir")
        .arg(data);
    AgentProc::spawn(name, cmd, TempDir::new("ferry-test-agent-unused"), data.to_path_buf())
}

/// The counter's output lines, as numbers.
async fn counted(gw: &str, id: &str) -> Vec<u64> {
    let (code, logs) = call(gw, "GET", &format!("/api/processes/{id}/logs"), None).await;
    assert_eq!(code, 200, "{logs}");
    let lines = logs["lines"].as_array().or(logs.as_array()).cloned().unwrap_or_default();
    lines
        .iter()
        .filter_map(|l| {
            l["text"].as_str().or(l["line"].as_str()).and_then(|t| t.trim().parse().ok())
        })
        .collect()
}

/// An agent killed with SIGKILL: its node goes offline, its workload keeps running (and keeps
/// writing: no SIGPIPE), and the restarted agent re-adopts it — same pid, every output line
/// kept in order, and pause, resume and stop work on it again.
#[tokio::test]
async fn a_restarted_agent_keeps_its_workloads_and_their_output() {
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-agent-restart");
    let coord = coordinator_with_http(port, http_port, &data.path().join("coordinator"));
    let url = format!("https://127.0.0.1:{port}");
    let gw = format!("127.0.0.1:{http_port}");
    let agent_data = data.path().join("agent");
    let a = agent_on("node-r", &agent_data, &url);
    wait_nodes(&coord.addr, "node-r online", |n| online(n, "node-r") == Some(true)).await;
    let counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done";
    let (code, p) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "counter", "command": ["sh", "-c", counter], "serverId": "node-r"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let pid = p["pid"].as_i64().unwrap();
    wait_until("the counter printing", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move { (counted(&gw, &id).await.len() >= 5).then_some(()) }
    })
    .await;

    kill(a.pid(), libc::SIGKILL);
    wait_nodes(&coord.addr, "node-r offline", |n| online(n, "node-r") == Some(false)).await;
    // The workload lives on without its agent, still writing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the workload died with its agent"
    );
    a.crash_leaving_workloads();

    let b = agent_on("node-r", &agent_data, &url);
    wait_nodes(&coord.addr, "node-r online again", |n| online(n, "node-r") == Some(true)).await;
    let (code, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    assert_eq!(code, 200, "{p}");
    assert_eq!((p["status"].as_str(), p["pid"].as_i64()), (Some("running"), Some(pid)), "{p}");
    let mut c = b.client().await;
    let listed = c.list_processes(ferry_proto::agent::ListProcessesRequest {}).await.unwrap();
    assert!(listed.into_inner().processes.iter().any(|s| s.spec.as_ref().unwrap().id == id));
    // Every line, in order, across the restart: the lines written while no agent ran waited in
    // the pipe the fd store kept.
    let before = counted(&gw, &id).await.len();
    let lines = wait_until("output flowing again", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let l = counted(&gw, &id).await;
            (l.len() > before + 10).then_some(l)
        }
    })
    .await;
    assert!(lines.len() > 40, "only {} lines", lines.len());
    for (i, n) in lines.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "line {i} of the counter's output: a line was lost");
    }
    // The recovered workload is fully controllable.
    for (verb, want) in [("pause", "paused"), ("resume", "running")] {
        let (code, p) = call(&gw, "POST", &format!("/api/processes/{id}/{verb}"), None).await;
        assert_eq!((code, p["status"].as_str()), (200, Some(want)), "{verb}: {p}");
    }
    let (code, p) = call(&gw, "DELETE", &format!("/api/processes/{id}"), None).await;
    assert_eq!(code, 200, "{p}");
    assert!(p["status"] == "exited" || p["status"] == "failed", "{p}");
    drop(b);
}

/// gRPC is mutual TLS: a peer without a client certificate, with one from another CA, or
/// speaking plain TCP is refused by agents and the coordinator; a part started with neither
/// certificates nor --insecure refuses to start and says how to get them.
#[tokio::test]
async fn grpc_refuses_peers_without_a_certificate_from_the_cluster_ca() {
    use ferry_proto::agent::HealthCheckRequest;
    use ferry_proto::tls::Wire;
    let a = AgentProc::start("tls-node");
    let coord_data = TempDir::new("ferry-test-tls-coord");
    let coord = coordinator(free_port(), coord_data.path());
    // The cluster's own client certificate works.
    let mut c = a.client().await;
    c.health_check(HealthCheckRequest {})
        .await
        .expect("HealthCheck with the cluster's certificate");
    let mut cc = CoordinatorClient::new(channel(&coord.addr).await.unwrap());
    cc.list_nodes(cpb::ListNodesRequest {})
        .await
        .expect("ListNodes with the cluster's certificate");

    // Another CA's certificate, and the right CA without a client certificate.
    let other = TempDir::new("ferry-test-other-ca");
    ferry_proto::tls::issue_into(other.path(), "intruder", &[], 1).unwrap();
    // The client trusts the cluster's CA (so the server is not what fails) but presents a
    // certificate from another CA.
    let ca =
        tonic::transport::Certificate::from_pem(std::fs::read(tls_dir().join("ca.pem")).unwrap());
    let foreign = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(other.path().join("intruder.pem")).unwrap(),
            std::fs::read(other.path().join("intruder-key.pem")).unwrap(),
        ))
        .domain_name(ferry_proto::tls::CLUSTER_NAME);
    let no_client_cert = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name(ferry_proto::tls::CLUSTER_NAME);
    for (addr, is_agent) in [(&a.addr, true), (&coord.addr, false)] {
        let refused = |what: &str, r: Result<(), String>| {
            assert!(r.is_err(), "{what} to {addr} was accepted");
        };
        // A call each server answers for a trusted peer (so only the TLS refusal can fail it).
        let health = |ch: tonic::transport::Channel| async move {
            if is_agent {
                let mut c = ferry_proto::agent::agent_client::AgentClient::new(ch);
                c.health_check(HealthCheckRequest {}).await.map(|_| ()).map_err(|e| e.to_string())
            } else {
                let mut c = CoordinatorClient::new(ch);
                c.list_nodes(cpb::ListNodesRequest {}).await.map(|_| ()).map_err(|e| e.to_string())
            }
        };
        let trusted = match channel(addr).await {
            Ok(ch) => health(ch).await,
            Err(e) => Err(e.to_string()),
        };
        assert!(trusted.is_ok(), "the cluster's own certificate to {addr}: {trusted:?}");
        let https = addr.replace("http://", "https://");
        for (what, config) in [
            ("a certificate from another CA", foreign.clone()),
            ("TLS without a client certificate", no_client_cert.clone()),
        ] {
            let e = tonic::transport::Endpoint::from_shared(https.clone())
                .unwrap()
                .tls_config(config)
                .unwrap();
            let r = match e.connect().await {
                Ok(ch) => health(ch).await,
                Err(e) => Err(e.to_string()),
            };
            refused(what, r);
        }
        let plain = match Wire::Insecure.endpoint(addr).unwrap().connect().await {
            Ok(ch) => health(ch).await,
            Err(e) => Err(e.to_string()),
        };
        refused("plain TCP", plain);
    }

    // Neither certificates nor --insecure: a clear refusal to start.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["agent", "--listen", "127.0.0.1:0", "--node", "n"])
        .arg("--data-dir")
        .arg(TempDir::new("ferry-test-notls").path())
        .env_remove("FERRY_TLS_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mutual TLS") && err.contains("ferry certs") && err.contains("--insecure"),
        "{err}"
    );
}

/// A workload that ends on its own becomes an event (from the node's next heartbeat): warn for a
/// non-zero exit, with the code in the message; the process shows its exit code.
#[tokio::test]
async fn a_process_that_exits_on_its_own_is_an_event() {
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-exit-event");
    let coord = coordinator_with_http(port, http_port, &data.path().join("coordinator"));
    let gw = format!("127.0.0.1:{http_port}");
    let _a = agent_on("node-x", &data.path().join("agent"), &format!("https://127.0.0.1:{port}"));
    wait_nodes(&coord.addr, "node-x online", |n| online(n, "node-x") == Some(true)).await;
    let (code, p) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "quitter", "command": ["sh", "-c", "sleep 0.3; exit 3"], "serverId": "node-x"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let e = wait_until("a process_exited event", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, logs) = call(&gw, "GET", &format!("/api/logs?process={id}"), None).await;
            logs.as_array()?.iter().find(|e| e["kind"] == "process_exited").cloned()
        }
    })
    .await;
    assert_eq!(e["level"], "warn", "{e}");
    assert!(e["message"].as_str().unwrap().contains("exited with code 3"), "{e}");
    let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    assert_eq!(p["exitCode"], 3, "{p}");
}

#[tokio::test]
async fn bad_registrations_are_refused() {
    let port = free_port();
    let data = TempDir::new("ferry-test-coordinator-bad");
    let coord = coordinator(port, data.path());
    let mut c = CoordinatorClient::new(channel(&coord.addr).await.unwrap());
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
    assert!(err.message().contains("https://"), "{}", err.message());
    // A certificate speaks only for the node it names.
    let err = c
        .register_node(cpb::RegisterNodeRequest {
            node: "n".into(),
            address: "https://10.0.0.1:50051".into(),
            health: None,
        })
        .await
        .expect_err("the test client's certificate names no node n");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("cannot act as node \"n\""), "{}", err.message());
    let err = c
        .heartbeat(cpb::HeartbeatRequest { node: "stranger".into(), ..Default::default() })
        .await
        .expect_err("a heartbeat for another node");
    assert_eq!(err.code(), Code::PermissionDenied);
    // With a certificate for "stranger": an unknown node is told to register.
    let tmp = TempDir::new("ferry-test-stranger");
    let dir = tls_for(tmp.path(), "stranger");
    let stranger = ferry_proto::tls::Wire::Tls(std::sync::Arc::new(
        ferry_proto::tls::Tls::load(&dir, "stranger").unwrap(),
    ));
    let mut s =
        CoordinatorClient::new(stranger.endpoint(&coord.addr).unwrap().connect().await.unwrap());
    let beat = s
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
    let url = format!("https://127.0.0.1:{port}");
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
    b: AgentProc,
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
    on_two_hosts_with(tag, &[], &[]).await
}

/// [`on_two_hosts`] with extra flags for the coordinator and for both agents.
async fn on_two_hosts_with(tag: &str, coord_extra: &[&str], agent_extra: &[&str]) -> OnTwoHosts {
    let net = harness::net::Net::new(2);
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new(tag);
    let ip = net.bridge_ip();
    let coord = coordinator_with(&ip, port, http_port, data.path(), coord_extra);
    let url = format!("https://{ip}:{port}");
    let agent_args = [&["--coordinator", url.as_str()][..], agent_extra].concat();
    let a = net.agent(0, &agent_args);
    let b = net.agent(1, &agent_args);
    wait_nodes(&coord.addr, "both hosts online", |n| {
        online(n, "host0") == Some(true) && online(n, "host1") == Some(true)
    })
    .await;
    let gw = format!("{ip}:{http_port}");
    OnTwoHosts { coord: Some(coord), a, b, _net: net, data, ip, port, http_port, gw }
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
        (serde_json::json!({"processId": id, "targetServerId": "host1", "mode": "fast"}), 400),
    ] {
        let (got, err) = call(&gw, "POST", "/api/migrations", Some(body.clone())).await;
        assert_eq!(got, code, "{body} -> {err}");
    }
    // "auto" picks stop-and-copy for this small process, and says so.
    let (code, m) = call(
        &gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": id, "targetServerId": "host1", "mode": "auto"})),
    )
    .await;
    assert_eq!(code, 202, "{m}");
    assert_eq!(m["status"], "pending");
    assert_eq!(m["mode"], "stop-and-copy", "{m}");
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
    assert!(m["postCopyBytesRemaining"].is_null(), "stop-and-copy has no pages to come: {m}");
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
        "/api/processes/{id}/stop",
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
    http_as(Some(READ_ONLY), addr, "GET", path, None).2
}

/// Reads the server-sent event stream until an event named `until` (or the timeout); returns
/// each event's name and data.
fn sse_until(addr: &str, until: &str, timeout: Duration) -> Vec<(String, serde_json::Value)> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to gateway");
    s.set_read_timeout(Some(timeout)).unwrap();
    // The token as a query parameter, as a browser's EventSource sends it.
    write!(
        s,
        "GET /api/events?token={READ_ONLY} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
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

/// The REST API wants a token: none → 401, read-only on a mutating call → 403; the dashboard
/// and /healthz are served without one, and the app's own routes fall back to index.html.
#[tokio::test]
async fn the_api_needs_tokens_and_the_dashboard_is_served() {
    let data = TempDir::new("ferry-test-auth");
    let web = TempDir::new("ferry-test-web");
    std::fs::write(web.path().join("index.html"), "<!doctype html><title>ferry dashboard</title>")
        .unwrap();
    std::fs::create_dir_all(web.path().join("assets")).unwrap();
    std::fs::write(web.path().join("assets/app.js"), "console.log(1)").unwrap();
    let (port, http) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--tls-dir")
        .arg(tls_dir())
        .env("FERRY_TOKENS", format!("operator:{OPERATOR} read-only:{READ_ONLY}"))
        .env("FERRY_WEB_DIR", web.path())
        .arg("--data-dir")
        .arg(data.path());
    let _coord = AgentProc::spawn(
        "coordinator",
        cmd,
        TempDir::new("ferry-test-auth-unused"),
        data.path().into(),
    );
    let gw = format!("127.0.0.1:{http}");
    wait_until("the gateway answers", T, || async {
        std::net::TcpStream::connect(&gw).is_ok().then_some(())
    })
    .await;
    let create = r#"{"name":"x","command":["true"],"serverId":"nowhere"}"#;

    let (code, head, body) = http_as(None, &gw, "GET", "/api/processes", None);
    assert_eq!(code, 401, "{body}");
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    assert!(body.contains("\"unauthorized\"") && body.contains("Authorization: Bearer"), "{body}");
    let (code, _, body) =
        http_as(Some("not-a-token-of-this-cluster"), &gw, "GET", "/api/overview", None);
    assert_eq!(code, 401, "{body}");
    let (code, _, body) = http_as(None, &gw, "GET", "/api/events", None);
    assert_eq!(code, 401, "{body}");
    let (code, _, body) = http_as(None, &gw, "GET", "/metrics", None);
    assert_eq!(code, 401, "{body}");

    let (code, _, body) = http_as(Some(READ_ONLY), &gw, "GET", "/api/processes", None);
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = http_as(Some(READ_ONLY), &gw, "POST", "/api/processes", Some(create));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"forbidden\"") && body.contains("read-only"), "{body}");
    let (code, _, body) = http_as(Some(READ_ONLY), &gw, "DELETE", "/api/processes/w-nope", None);
    assert_eq!(code, 403, "{body}");
    // The operator gets through to validation (no such server: a 4xx from the API itself).
    let (code, _, body) = http_as(Some(OPERATOR), &gw, "POST", "/api/processes", Some(create));
    assert!(code == 400 || code == 404, "{code} {body}");
    assert!(body.contains("nowhere"), "{body}");

    // No token needed for the dashboard and /healthz.
    let (code, head, body) = http_as(None, &gw, "GET", "/", None);
    assert_eq!(code, 200, "{head}");
    assert!(body.contains("ferry dashboard"), "{body}");
    assert!(head.to_ascii_lowercase().contains("cache-control: no-cache"), "{head}");
    let (code, _, body) = http_as(None, &gw, "GET", "/migrations/m-123", None);
    assert_eq!(code, 200);
    assert!(body.contains("ferry dashboard"), "an app route falls back to index.html: {body}");
    let (code, _, body) = http_as(None, &gw, "GET", "/assets/app.js", None);
    assert_eq!((code, body.as_str()), (200, "console.log(1)"));
    let (code, _, _) = http_as(None, &gw, "GET", "/healthz", None);
    assert_eq!(code, 200);
    // Unknown API paths stay JSON errors, not the app.
    let (code, _, body) = http_as(Some(READ_ONLY), &gw, "GET", "/api/nope", None);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no such endpoint"), "{body}");

    // Without tokens and without --insecure the coordinator refuses to serve the API.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .arg("--tls-dir")
        .arg(tls_dir())
        .env_remove("FERRY_TOKENS")
        .env_remove("FERRY_TOKENS_FILE")
        .arg("--data-dir")
        .arg(data.path().join("second"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs tokens") && err.contains("--insecure"), "{err}");
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

/// Fails the test, saying why, when it does not run as root (workloads get their own PID
/// namespace; hosts are network namespaces): a test that cannot run must not pass.
fn must_be_root() {
    assert!(
        is_root(),
        "this test needs root (PID and network namespaces, CRIU): run it as root; it cannot pass without"
    );
}

/// The appender's "count N" lines so far, through the gateway.
async fn counts(gw: &str, id: &str) -> Vec<u64> {
    let (_, l) = call(gw, "GET", &format!("/api/processes/{id}/logs?limit=10000"), None).await;
    l["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["text"].as_str()?.strip_prefix("count ")?.parse().ok())
        .collect()
}

/// Waits until the appender `id` counted a few more, and asserts its whole count has no gap and
/// no repeat.
async fn count_goes_on(gw: &str, id: &str, what: &str) {
    let before = counts(gw, id).await.len();
    let all = wait_until(what, T, || async move {
        let all = counts(gw, id).await;
        (all.len() > before + 3).then_some(all)
    })
    .await;
    for w in all.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count goes on without a gap or a repeat: {all:?}");
    }
}

/// Pause, resume, stop, delete and a second migration of a process whose migration has not
/// ended are refused with 409 `migrating` and a message that names the migration, its target
/// and phase and says what to do; the migration then completes and the workload runs once, on
/// the target, its count going on without a gap. Meanwhile the target's held copy (the commit
/// held back 6 s by a fault) is never taken for the workload: it stays on the source in the API.
#[tokio::test]
async fn operations_on_a_migrating_process_are_refused_and_the_held_copy_is_not_the_workload() {
    must_be_root();
    let c = on_two_hosts_with(
        "ferry-test-refuse",
        &["--test-migration-fault", "hold-before-commit:6000"],
        &["--enable-fault-injection"],
    )
    .await;
    let gw = c.gw.clone();
    let (id, mid) = appender_migrating_to_host1(&gw).await;
    let refused = |what: &str, code: u16, err: &serde_json::Value| {
        assert_eq!(
            (code, err["error"]["code"].as_str()),
            (409, Some("migrating")),
            "{what}: {err}"
        );
        let msg = err["error"]["message"].as_str().unwrap();
        for fact in [id.as_str(), mid.as_str(), "host1", &format!("GET /api/migrations/{mid}")] {
            assert!(msg.contains(fact), "{what}: {fact:?} missing from {msg:?}");
        }
        assert!(msg.contains("phase ") || msg.contains("not started yet"), "{what}: {msg}");
    };
    // At once (a resume 0.3 s into a migration used to roll it back and kill the workload).
    let (code, err) = call(&gw, "POST", &format!("/api/processes/{id}/resume"), None).await;
    refused("resume at once", code, &err);
    let (code, err) = call(&gw, "POST", &format!("/api/processes/{id}/pause"), None).await;
    refused("pause at once", code, &err);

    // The target holds its restored copy, stopped, until the commit.
    let mut cb = c.b.client().await;
    wait_until("the target holding its copy", T, || {
        let (mut cb, id, mid) = (cb.clone(), id.clone(), mid.clone());
        async move {
            let all = cb.list_processes(ferry_proto::agent::ListProcessesRequest {}).await.ok()?;
            all.into_inner()
                .processes
                .iter()
                .any(|w| id_of(w) == id && w.held_for_migration == mid)
                .then_some(())
        }
    })
    .await;
    // While it holds (several heartbeats of both nodes), the workload is the source's.
    let held_since = std::time::Instant::now();
    while held_since.elapsed() < Duration::from_millis(1500) {
        let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
        assert_eq!(
            (p["serverId"].as_str(), p["status"].as_str()),
            (Some("host0"), Some("migrating")),
            "{p}"
        );
        assert!(p["heldForMigration"].is_null(), "{p}");
        let (_, list) = call(&gw, "GET", "/api/processes", None).await;
        let rows: Vec<&serde_json::Value> =
            list.as_array().unwrap().iter().filter(|x| x["id"] == id.as_str()).collect();
        assert_eq!(rows.len(), 1, "{list}");
        assert_eq!(rows[0]["serverId"], "host0", "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_held = cb
        .list_processes(ferry_proto::agent::ListProcessesRequest {})
        .await
        .unwrap()
        .into_inner()
        .processes
        .iter()
        .any(|w| id_of(w) == id && w.held_for_migration == mid);
    for (what, method, path, body) in [
        ("pause", "POST", format!("/api/processes/{id}/pause"), None),
        ("resume", "POST", format!("/api/processes/{id}/resume"), None),
        ("stop", "POST", format!("/api/processes/{id}/stop"), None),
        ("delete", "DELETE", format!("/api/processes/{id}"), None),
        (
            "a second migration",
            "POST",
            "/api/migrations".to_string(),
            Some(serde_json::json!({"processId": id, "targetServerId": "host1"})),
        ),
    ] {
        let (code, err) = call(&gw, method, &path, body).await;
        refused(what, code, &err);
    }
    // The CLI prints the refusal and exits 1.
    let (gw2, id2) = (gw.clone(), id.clone());
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || ferry_cli(&gw2, &["stop", &id2])).await.unwrap();
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("is migrating") && stderr.contains(&mid), "{stderr}");
    assert!(still_held, "the checks above ran while the target held its copy");

    let m = migration_end(&gw, &mid, "the migration to end").await;
    assert_eq!(m["status"], "completed", "{m}");
    // Exactly one copy: on the target, running; the source has none.
    let mut ca = c.a.client().await;
    ca.get_status(ferry_proto::agent::WorkloadRef { id: id.clone() })
        .await
        .expect_err("no copy left on host0");
    let on_b: Vec<_> = cb
        .list_processes(ferry_proto::agent::ListProcessesRequest {})
        .await
        .unwrap()
        .into_inner()
        .processes
        .into_iter()
        .filter(|w| id_of(w) == id)
        .collect();
    assert_eq!(on_b.len(), 1);
    assert!(on_b[0].held_for_migration.is_empty() && !is_exited(&on_b[0]), "{:?}", on_b[0]);
    wait_until("the process running on host1", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (p["serverId"] == "host1" && p["status"] == "running").then_some(())
        }
    })
    .await;
    // Its state came along: the count goes on where it was on host0, without a gap.
    count_goes_on(&gw, &id, "counting on host1").await;
    // Once it has ended, the process is controllable again.
    let (code, p) = call(&gw, "POST", &format!("/api/processes/{id}/stop"), None).await;
    assert_eq!(code, 200, "{p}");
    assert!(p["status"] == "exited" || p["status"] == "failed", "{p}");
}

/// A node whose agent died shows its processes as `unknown`, with when the node last reported,
/// not as the running they were last reported; back online, they are running again.
#[tokio::test]
async fn processes_of_an_offline_node_are_unknown_with_their_last_report() {
    must_be_root();
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-unknown");
    let coord = coordinator_with_http(port, http_port, &data.path().join("coordinator"));
    let url = format!("https://127.0.0.1:{port}");
    let gw = format!("127.0.0.1:{http_port}");
    let agent_data = data.path().join("agent");
    let a = agent_on("node-u", &agent_data, &url);
    wait_nodes(&coord.addr, "node-u online", |n| online(n, "node-u") == Some(true)).await;
    let (code, p) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "sleeper", "command": ["sleep", "600"], "serverId": "node-u"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    assert_eq!(p["status"], "running", "{p}");
    assert!(p["lastSeen"].as_str().is_some_and(|t| t.ends_with('Z')), "{p}");

    kill(a.pid(), libc::SIGKILL);
    wait_nodes(&coord.addr, "node-u offline", |n| online(n, "node-u") == Some(false)).await;
    let (_, servers) = call(&gw, "GET", "/api/servers", None).await;
    let last_seen = servers[0]["lastSeenAt"].clone();
    assert!(last_seen.is_string(), "{servers}");
    let (code, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["status"], "unknown", "{p}");
    assert_eq!(p["lastSeen"], last_seen, "the node's last heartbeat: {p}");
    let (_, list) = call(&gw, "GET", "/api/processes", None).await;
    assert_eq!(list[0]["status"], "unknown", "{list}");
    let (_, ov) = call(&gw, "GET", "/api/overview", None).await;
    assert_eq!(
        (ov["totalProcesses"].as_u64(), ov["runningProcesses"].as_u64()),
        (Some(1), Some(0)),
        "{ov}"
    );
    let (gw2, id2) = (gw.clone(), id.clone());
    let (_, out, _) = tokio::task::spawn_blocking(move || ferry_cli(&gw2, &["ps"])).await.unwrap();
    let row = out.lines().find(|l| l.starts_with(&id2)).unwrap_or_default().to_string();
    assert!(row.contains("unknown (node last seen 20"), "{out}");
    drop(a);

    let b = agent_on("node-u", &agent_data, &url);
    wait_until("the process running again", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (p["status"] == "running").then_some(())
        }
    })
    .await;
    let (code, p) = call(&gw, "DELETE", &format!("/api/processes/{id}"), None).await;
    assert_eq!(code, 200, "{p}");
    drop(b);
}

/// Ended processes are kept for --keep-ended-secs after they ended: hidden from the list unless
/// `?all=true` (`ferry ps -a`), still answered by id; then forgotten, even though their agent
/// still reports them.
#[tokio::test]
async fn ended_processes_are_hidden_unless_asked_for_then_forgotten() {
    must_be_root();
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-ended");
    let coord = coordinator_with(
        "127.0.0.1",
        port,
        http_port,
        &data.path().join("coordinator"),
        &["--keep-ended-secs", "8"],
    );
    let gw = format!("127.0.0.1:{http_port}");
    let a = agent_on("node-e", &data.path().join("agent"), &format!("https://127.0.0.1:{port}"));
    wait_nodes(&coord.addr, "node-e online", |n| online(n, "node-e") == Some(true)).await;
    let mut ids = Vec::new();
    for (name, argv) in [("quitter", vec!["sh", "-c", "exit 0"]), ("sleeper", vec!["sleep", "600"])]
    {
        let (code, p) = call(
            &gw,
            "POST",
            "/api/processes",
            Some(serde_json::json!({"name": name, "command": argv, "serverId": "node-e"})),
        )
        .await;
        assert_eq!(code, 201, "{p}");
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let (quitter, sleeper) = (ids[0].clone(), ids[1].clone());
    wait_until("the quitter reported exited", T, || {
        let (gw, id) = (gw.clone(), quitter.clone());
        async move {
            let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (p["status"] == "exited").then_some(())
        }
    })
    .await;
    let listed = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
    };
    let (_, list) = call(&gw, "GET", "/api/processes", None).await;
    assert_eq!(listed(&list), vec![sleeper.clone()], "ended ones hidden by default: {list}");
    let (_, all) = call(&gw, "GET", "/api/processes?all=true", None).await;
    let mut want = vec![quitter.clone(), sleeper.clone()];
    want.sort();
    assert_eq!(listed(&all), want, "{all}");
    let (code, err) = call(&gw, "GET", "/api/processes?all=maybe", None).await;
    assert_eq!((code, err["error"]["code"].as_str()), (400, Some("bad_request")), "{err}");
    let (_, ov) = call(&gw, "GET", "/api/overview", None).await;
    assert_eq!(ov["totalProcesses"], 1, "{ov}");
    let g = gw.clone();
    let (ps, ps_all) = tokio::task::spawn_blocking(move || {
        (ferry_cli(&g, &["ps"]).1, ferry_cli(&g, &["ps", "-a"]).1)
    })
    .await
    .unwrap();
    assert!(ps.contains(&sleeper) && !ps.contains(&quitter), "{ps}");
    assert!(ps_all.contains(&sleeper) && ps_all.contains(&quitter), "{ps_all}");

    // Forgotten once kept long enough, and not brought back by the agent's reports.
    wait_until("the quitter forgotten", Duration::from_secs(30), || {
        let (gw, id) = (gw.clone(), quitter.clone());
        async move {
            let (code, _) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (code == 404).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, all) = call(&gw, "GET", "/api/processes?all=true", None).await;
    assert_eq!(listed(&all), vec![sleeper.clone()], "{all}");
    let mut ca = a.client().await;
    status(&mut ca, &quitter).await;
    let (code, p) = call(&gw, "DELETE", &format!("/api/processes/{sleeper}"), None).await;
    assert_eq!(code, 200, "{p}");
}

/// A coordinator started with --forget-nodes (as `ferry up` starts it) on the data dir of an
/// earlier cluster lists only the nodes of this one: no ghosts of the earlier run.
#[tokio::test]
async fn forget_nodes_leaves_no_ghosts_of_an_earlier_cluster() {
    let port = free_port();
    let data = TempDir::new("ferry-test-ghosts");
    let url = format!("https://127.0.0.1:{port}");
    {
        let coord = coordinator(port, data.path());
        let _a = AgentProc::start_with("ghost-a", &["--coordinator", &url]);
        let _b = AgentProc::start_with("ghost-b", &["--coordinator", &url]);
        wait_nodes(&coord.addr, "the first cluster online", |n| {
            online(n, "ghost-a") == Some(true) && online(n, "ghost-b") == Some(true)
        })
        .await;
    }
    let http_port = free_port();
    let coord = coordinator_with("127.0.0.1", port, http_port, data.path(), &["--forget-nodes"]);
    let _a = AgentProc::start_with("ghost-a", &["--coordinator", &url]);
    wait_nodes(&coord.addr, "ghost-a registered again", |n| online(n, "ghost-a") == Some(true))
        .await;
    let names: Vec<String> = nodes(&coord.addr).await.into_iter().map(|n| n.node).collect();
    assert_eq!(names, ["ghost-a"], "the earlier run's ghost-b is not listed");
    let (_, servers) = call(&format!("127.0.0.1:{http_port}"), "GET", "/api/servers", None).await;
    assert_eq!(servers.as_array().unwrap().len(), 1, "{servers}");
}

/// Starts the appender on host0 through the API, waits for its count, and asks for its migration
/// to host1 (202): the process id and the migration id.
async fn appender_migrating_to_host1(gw: &str) -> (String, String) {
    let (code, p) = call(
        gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "journal", "command": [workload("appender.py")], "serverId": "host0"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    wait_until("the appender counting", T, || {
        let id = id.clone();
        async move { (counts(gw, &id).await.len() >= 3).then_some(()) }
    })
    .await;
    let (code, m) = call(
        gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": id, "targetServerId": "host1"})),
    )
    .await;
    assert_eq!(code, 202, "{m}");
    (id, m["id"].as_str().unwrap().to_string())
}

/// The source agent dies while the target holds its copy (a test-only crash), and comes back:
/// through the REST API the migration ends `rolled_back` with the reason (not "failed: the source
/// agent has no record"), the process runs on the source, once, its count going on, and the
/// target keeps no copy.
#[tokio::test]
async fn a_source_agent_killed_mid_migration_is_resolved_to_one_copy_through_the_api() {
    must_be_root();
    let c = on_two_hosts_with(
        "ferry-test-crash",
        &["--test-migration-fault", "crash-at:2"],
        &["--enable-fault-injection"],
    )
    .await;
    let gw = c.gw.clone();
    let (id, mid) = appender_migrating_to_host1(&gw).await;
    let OnTwoHosts { coord, mut a, b, _net: net, data, ip, port, http_port: _, gw: _ } = c;
    wait_until("the source agent to die", T, || {
        let died = a.child.try_wait().ok().flatten().is_some();
        async move { died.then_some(()) }
    })
    .await;
    let url = format!("https://{ip}:{port}");
    let a = net.restart_agent(0, a, &["--coordinator", &url, "--enable-fault-injection"]);
    let m = migration_end(&gw, &mid, "the migration to be resolved").await;
    assert_eq!(m["status"], "rolled_back", "{m}");
    let error = m["error"].as_str().unwrap_or_default();
    assert!(error.contains("resumed on node host0"), "{m}");
    count_goes_on(&gw, &id, "the count to go on on the source").await;
    let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    assert_eq!(
        (p["serverId"].as_str(), p["status"].as_str()),
        (Some("host0"), Some("running")),
        "{p}"
    );
    let cb = b.client().await;
    wait_until("no copy on host1", T, || {
        let (mut cb, id) = (cb.clone(), id.clone());
        async move {
            let all = cb.list_processes(ferry_proto::agent::ListProcessesRequest {}).await.ok()?;
            (!all.into_inner().processes.iter().any(|w| id_of(w) == id)).then_some(())
        }
    })
    .await;
    // Dropped in the order the cluster's parts must go.
    drop((coord, a, b, net, data));
}

/// The coordinator dies (test-only `--test-crash-at`) at step `at` of a migration of the
/// appender from host0 to host1, and comes back: the migration ends as `status`, the process
/// runs once, on `on`, its count going on without a gap, and the other host holds nothing.
async fn coordinator_crash(at: &str, status: &str, on: &str) {
    must_be_root();
    let mut c =
        on_two_hosts_with(&format!("ferry-test-coord-{at}"), &["--test-crash-at", at], &[]).await;
    let gw = c.gw.clone();
    let (code, p) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "journal", "command": [workload("appender.py")], "serverId": "host0"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    wait_until("the appender counting", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move { (counts(&gw, &id).await.len() >= 3).then_some(()) }
    })
    .await;
    // The answer may or may not leave before the coordinator dies.
    let body = serde_json::json!({"processId": id, "targetServerId": "host1"});
    let (code, m) = call(&gw, "POST", "/api/migrations", Some(body)).await;
    eprintln!("POST /api/migrations before the crash: {code} {m}");
    let coord = c.coord.as_mut().expect("the coordinator runs");
    wait_until("the coordinator to die", T, || {
        let died = coord.child.try_wait().ok().flatten().is_some();
        async move { died.then_some(()) }
    })
    .await;
    c.restart_coordinator();
    let (_, all) = wait_until("the restarted coordinator to answer", T, || {
        let gw = gw.clone();
        async move {
            let (code, all) = call(&gw, "GET", "/api/migrations", None).await;
            (code == 200).then_some((code, all))
        }
    })
    .await;
    let mine: Vec<&serde_json::Value> =
        all.as_array().unwrap().iter().filter(|m| m["processId"] == id.as_str()).collect();
    assert_eq!(mine.len(), 1, "one migration recorded: {all}");
    let mid = mine[0]["id"].as_str().unwrap().to_string();
    let m = migration_end(&gw, &mid, "the restarted coordinator to resolve the migration").await;
    eprintln!("resolved after the coordinator's crash at {at}: {m}");
    assert_eq!(m["status"], status, "{m}");
    let p = wait_until("the process listed where it runs", T, || {
        let (gw, id) = (gw.clone(), id.clone());
        async move {
            let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (p["serverId"] == on && p["status"] == "running").then_some(p)
        }
    })
    .await;
    eprintln!("{p}");
    count_goes_on(&gw, &id, "the count to go on").await;
    let other = if on == "host0" { c.b.client().await } else { c.a.client().await };
    wait_until("no copy on the other host", T, || {
        let (mut other, id) = (other.clone(), id.clone());
        async move {
            let all =
                other.list_processes(ferry_proto::agent::ListProcessesRequest {}).await.ok()?;
            let held =
                all.into_inner().processes.iter().any(|w| id_of(w) == id && w.exit.is_none());
            (!held).then_some(())
        }
    })
    .await;
}

/// Killed once it recorded the migration, before it asked the source: the migration never began;
/// it ends `failed`, saying so, and the process runs on host0.
#[tokio::test]
async fn a_coordinator_killed_before_asking_the_source_fails_the_migration_and_the_process_runs_on()
{
    coordinator_crash("accepted", "failed", "host0").await;
}

/// Killed once the source answered, before it recorded the outcome: the restarted coordinator
/// asks the source, which remembers: `completed`, the process on host1.
#[tokio::test]
async fn a_coordinator_killed_before_recording_the_outcome_learns_it_from_the_source() {
    coordinator_crash("answered", "completed", "host1").await;
}

// ---------------------------------------------------------------------------------------------
// Workloads' own addresses: --workload-cidr, --default-network, "network" and "address"
// ---------------------------------------------------------------------------------------------

/// [`on_two_hosts_with`] whose coordinator flags may name the hosts' /24: `{subnet}` in them
/// becomes its first three octets (e.g. 10.231.7), so a workload range is on-link for every host.
/// Returns the hosts and the subnet.
async fn on_two_hosts_in_subnet(tag: &str, coord_extra: &[&str]) -> (OnTwoHosts, String) {
    let net = harness::net::Net::new(2);
    let ip = net.bridge_ip();
    let subnet = ip.rsplit_once('.').unwrap().0.to_string();
    let extra: Vec<String> = coord_extra.iter().map(|f| f.replace("{subnet}", &subnet)).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new(tag);
    let coord = coordinator_with(&ip, port, http_port, data.path(), &extra);
    let url = format!("https://{ip}:{port}");
    let a = net.agent(0, &["--coordinator", &url]);
    let b = net.agent(1, &["--coordinator", &url]);
    wait_nodes(&coord.addr, "both hosts online", |n| {
        online(n, "host0") == Some(true) && online(n, "host1") == Some(true)
    })
    .await;
    let gw = format!("{ip}:{http_port}");
    (OnTwoHosts { coord: Some(coord), a, b, _net: net, data, ip, port, http_port, gw }, subnet)
}

impl OnTwoHosts {
    /// Kills the coordinator with SIGKILL and starts it again on the same addresses and data,
    /// with `extra` flags; waits until both hosts are online with it.
    async fn restart_coordinator_with(&mut self, extra: &[&str]) {
        drop(self.coord.take());
        let coord = coordinator_with(&self.ip, self.port, self.http_port, self.data.path(), extra);
        wait_nodes(&coord.addr, "both hosts online again", |n| {
            online(n, "host0") == Some(true) && online(n, "host1") == Some(true)
        })
        .await;
        self.coord = Some(coord);
    }
}

/// POST /api/processes of `argv` on `node`, with "network" when given: (status, body).
async fn start_on(
    gw: &str,
    node: &str,
    argv: &[&str],
    network: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut body = serde_json::json!({"name": argv[0], "command": argv, "serverId": node});
    if let Some(n) = network {
        body["network"] = n.into();
    }
    call(gw, "POST", "/api/processes", Some(body)).await
}

/// Starts `argv` on `node` with "network": "own" and returns (id, address).
async fn start_own(gw: &str, node: &str, argv: &[&str]) -> (String, String) {
    let (code, p) = start_on(gw, node, argv, Some("own")).await;
    assert_eq!(code, 201, "{p}");
    let address = p["address"].as_str().unwrap_or_else(|| panic!("no address: {p}"));
    (p["id"].as_str().unwrap().to_string(), address.to_string())
}

/// Every listed process's address: id → address (null on the node's network).
async fn listed_addresses(gw: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let (code, list) = call(gw, "GET", "/api/processes", None).await;
    assert_eq!(code, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p["address"].clone()))
        .collect()
}

/// Workloads with "network": "own" get the lowest free addresses of the range, distinct across
/// nodes, shown by the API, `ferry ps` and the process_started event; one on the node's network
/// has none. An address is free again once its workload is stopped, once it exits on its own,
/// and when the agent refuses the start; the allocations survive a coordinator restart, which
/// hands none of them out again.
#[tokio::test]
async fn own_addresses_come_from_the_range_are_released_and_survive_a_restart() {
    must_be_root();
    let range = ["--workload-cidr", "{subnet}.128/25"];
    let (mut c, subnet) = on_two_hosts_in_subnet("ferry-test-own-addr", &range).await;
    let at = |host: u8| format!("{subnet}.{host}");
    let gw = c.gw.clone();
    let sleeper = ["sleep", "600"];
    let (a, a_addr) = start_own(&gw, "host0", &sleeper).await;
    let (b, b_addr) = start_own(&gw, "host1", &sleeper).await;
    assert_eq!((a_addr.as_str(), b_addr.as_str()), (at(129).as_str(), at(130).as_str()));
    let (code, n) = start_on(&gw, "host0", &sleeper, Some("node")).await;
    assert_eq!((code, &n["address"]), (201, &serde_json::Value::Null), "{n}");
    let n = n["id"].as_str().unwrap().to_string();
    let (code, d) = start_on(&gw, "host1", &sleeper, None).await;
    assert_eq!((code, &d["address"]), (201, &serde_json::Value::Null), "default: node {d}");

    let listed = listed_addresses(&gw).await;
    assert_eq!(listed[&a], at(129), "{listed:?}");
    assert_eq!(listed[&b], at(130), "{listed:?}");
    assert_eq!(listed[&n], serde_json::Value::Null, "{listed:?}");
    let (_, one) = call(&gw, "GET", &format!("/api/processes/{a}"), None).await;
    assert_eq!(one["address"], at(129), "{one}");
    let g = gw.clone();
    let (code, ps, err) =
        tokio::task::spawn_blocking(move || ferry_cli(&g, &["ps"])).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(ps.lines().next().unwrap().contains("ADDRESS"), "{ps}");
    let row = |id: &str| ps.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{ps}"));
    assert!(row(&a).split_whitespace().any(|w| w == at(129)), "{ps}");
    assert!(row(&n).split_whitespace().any(|w| w == "-"), "{ps}");
    let (_, events) = call(&gw, "GET", &format!("/api/logs?process={a}"), None).await;
    let started = events.as_array().unwrap().iter().find(|e| e["kind"] == "process_started");
    let msg = started.and_then(|e| e["message"].as_str()).unwrap_or_default();
    assert!(msg.contains(&format!("with address {}", at(129))), "{events}");

    // Stopped: its address is the lowest free one again.
    let (code, p) = call(&gw, "POST", &format!("/api/processes/{a}/stop"), None).await;
    assert_eq!(code, 200, "{p}");
    let (c1, c1_addr) = start_own(&gw, "host0", &sleeper).await;
    assert_eq!(c1_addr, at(129), "the stopped one's address is reused");
    // A start the agent refuses keeps nothing.
    let (code, p) = start_on(&gw, "host0", &["/no/such/program-ferry"], Some("own")).await;
    assert_eq!(code, 400, "{p}");
    let (d1, d1_addr) = start_own(&gw, "host1", &sleeper).await;
    assert_eq!(d1_addr, at(131), "the refused start's address was released");
    // Ended on its own: released once its node reports the exit.
    let (e, e_addr) = start_own(&gw, "host0", &["sh", "-c", "sleep 0.5"]).await;
    assert_eq!(e_addr, at(132));
    wait_until("the short one reported exited", T, || {
        let (gw, id) = (gw.clone(), e.clone());
        async move {
            let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (p["status"] == "exited").then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (f, f_addr) = start_own(&gw, "host1", &sleeper).await;
    assert_eq!(f_addr, at(132), "the exited one's address is reused");

    // A restarted coordinator hands out none of the addresses in use.
    c.restart_coordinator_with(&[
        "--workload-cidr",
        &format!("{subnet}.128/25"),
        "--default-network",
        "own",
    ])
    .await;
    let listed = listed_addresses(&gw).await;
    for (id, addr) in [(&c1, 129), (&b, 130), (&d1, 131), (&f, 132)] {
        assert_eq!(listed[id], at(addr), "{id} keeps its address: {listed:?}");
    }
    let (code, g) = start_on(&gw, "host0", &sleeper, None).await;
    assert_eq!((code, &g["address"]), (201, &at(133).into()), "--default-network own: {g}");
    let (code, p) = call(&gw, "DELETE", &format!("/api/processes/{b}"), None).await;
    assert_eq!(code, 200, "{p}");
    let (_, h_addr) = start_own(&gw, "host1", &sleeper).await;
    assert_eq!(h_addr, at(130), "released after the restart too");
}

/// "network": "own" without a workload range is 400 and says to start the coordinator with
/// --workload-cidr; an unknown network is 400 naming the allowed ones; a full range (a /30: two
/// addresses) is 409 no_address naming the range and how many are in use, through the API and
/// `ferry run`.
#[tokio::test]
async fn own_network_needs_a_range_and_a_full_one_is_409() {
    must_be_root();
    // No range.
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new("ferry-test-no-range");
    let coord = coordinator_with_http(port, http_port, &data.path().join("coordinator"));
    let gw = format!("127.0.0.1:{http_port}");
    let _x = agent_on("node-n", &data.path().join("agent"), &format!("https://127.0.0.1:{port}"));
    wait_nodes(&coord.addr, "node-n online", |n| online(n, "node-n") == Some(true)).await;
    let (code, err) = start_on(&gw, "node-n", &["sleep", "600"], Some("own")).await;
    assert_eq!((code, err["error"]["code"].as_str()), (400, Some("bad_request")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("--workload-cidr"), "{err}");
    for bad in [serde_json::json!("host"), serde_json::json!(true)] {
        let body = serde_json::json!({"name": "x", "command": ["sleep", "600"], "serverId": "node-n", "network": bad});
        let (code, err) = call(&gw, "POST", "/api/processes", Some(body)).await;
        assert_eq!((code, err["error"]["code"].as_str()), (400, Some("bad_request")), "{err}");
        if bad == "host" {
            let msg = err["error"]["message"].as_str().unwrap();
            assert!(msg.contains("own") && msg.contains("node"), "{err}");
        }
    }
    let (_, list) = call(&gw, "GET", "/api/processes", None).await;
    assert_eq!(list, serde_json::json!([]), "nothing was started: {list}");
    drop(coord);

    // A /30: two host addresses.
    let (c, subnet) =
        on_two_hosts_in_subnet("ferry-test-full-range", &["--workload-cidr", "{subnet}.252/30"])
            .await;
    let gw = c.gw.clone();
    let (_, first) = start_own(&gw, "host0", &["sleep", "600"]).await;
    let (_, second) = start_own(&gw, "host1", &["sleep", "600"]).await;
    assert_eq!((first, second), (format!("{subnet}.253"), format!("{subnet}.254")));
    let (code, err) = start_on(&gw, "host0", &["sleep", "600"], Some("own")).await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("no_address")), "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("{subnet}.252/30")) && msg.contains("2 of 2 in use"), "{err}");
    let (code, p) = start_on(&gw, "host0", &["sleep", "600"], Some("node")).await;
    assert_eq!(code, 201, "the node's network needs no address: {p}");
    let g = gw.clone();
    let (code, out, stderr) = tokio::task::spawn_blocking(move || {
        ferry_cli(&g, &["run", "--node", "host1", "--network", "own", "--", "sleep", "600"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(stderr.contains("2 of 2 in use"), "{stderr}");
}

/// The coordinator refuses to start with a workload range it cannot use, saying why.
#[test]
fn a_bad_workload_range_stops_the_coordinator_at_start() {
    let data = TempDir::new("ferry-test-bad-range");
    // (exited unsuccessfully, stderr); one still running after 10 s is killed and fails the test.
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["coordinator", "--insecure", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ferry coordinator");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the coordinator started with {extra:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (!status.success(), stderr)
    };
    for (cidr, says) in [
        ("fd00::/64", "IPv6"),
        ("10.1.2.0/31", "/30 or shorter"),
        ("10.1.2.3/24", "did you mean 10.1.2.0/24"),
        ("10.1.2.0", "no prefix length"),
        ("10.1.2/24", "not an IPv4 address"),
    ] {
        let (failed, stderr) = run(&["--workload-cidr", cidr]);
        assert!(failed, "{cidr}: {stderr}");
        assert!(stderr.contains("--workload-cidr") && stderr.contains(says), "{cidr}: {stderr}");
    }
    let (failed, stderr) = run(&["--default-network", "own"]);
    assert!(failed && stderr.contains("--workload-cidr"), "{stderr}");
}

/// A workload's own address moves with it: it is the same on the target once the migration
/// completed, and no other workload got it meanwhile.
#[tokio::test]
async fn an_own_address_stays_with_its_workload_through_a_migration() {
    must_be_root();
    let range = ["--workload-cidr", "{subnet}.128/25"];
    let (c, subnet) = on_two_hosts_in_subnet("ferry-test-own-move", &range).await;
    let gw = c.gw.clone();
    let (id, addr) = start_own(&gw, "host0", &["sleep", "600"]).await;
    assert_eq!(addr, format!("{subnet}.129"));
    let body = serde_json::json!({"processId": id, "targetServerId": "host1"});
    let (code, m) = call(&gw, "POST", "/api/migrations", Some(body)).await;
    assert_eq!(code, 202, "{m}");
    let (_, other) = start_own(&gw, "host1", &["sleep", "600"]).await;
    assert_eq!(other, format!("{subnet}.130"), "not the migrating workload's");
    let m = migration_end(&gw, m["id"].as_str().unwrap(), "the migration's end").await;
    assert_eq!(m["status"], "completed", "{m}");
    let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    assert_eq!((&p["serverId"], &p["address"]), (&"host1".into(), &addr.clone().into()), "{p}");
    // Still held on the target: the next one gets the one after.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, next) = start_own(&gw, "host0", &["sleep", "600"]).await;
    assert_eq!(next, format!("{subnet}.131"));
}

/// POST /api/processes of `argv`, on `node` or (None) placed: (status, body).
async fn start_placed(gw: &str, node: Option<&str>, argv: &[&str]) -> (u16, serde_json::Value) {
    let mut body = serde_json::json!({"name": argv[0], "command": argv});
    if let Some(n) = node {
        body["serverId"] = n.into();
    }
    call(gw, "POST", "/api/processes", Some(body)).await
}

/// Each server's "schedulable", by id.
async fn schedulable(gw: &str) -> std::collections::BTreeMap<String, bool> {
    let (_, v) = call(gw, "GET", "/api/servers", None).await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["schedulable"].as_bool().unwrap()))
        .collect()
}

/// The last logged event of `kind` about `process`.
async fn last_event(gw: &str, process: &str, kind: &str) -> serde_json::Value {
    let (_, log) = call(gw, "GET", &format!("/api/logs?process={process}"), None).await;
    log.as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} event for {process}: {log}"))
}

/// Without a node, a process goes to the least loaded online schedulable node, and its
/// process_started event says why; a cordoned node gets no new process or migration (409 naming
/// it when asked for by name), stays cordoned across a coordinator restart, and takes work again
/// once uncordoned; a migration without a target is placed, never on its source.
#[tokio::test]
async fn placement_picks_the_least_loaded_schedulable_node_and_cordon_keeps_work_off() {
    must_be_root();
    let mut c = on_two_hosts("ferry-test-place").await;
    let gw = c.gw.clone();
    for _ in 0..2 {
        let (code, p) = start_placed(&gw, Some("host0"), &["sleep", "600"]).await;
        assert_eq!((code, p["serverId"].as_str()), (201, Some("host0")), "{p}");
    }
    let (code, p) = start_placed(&gw, None, &["sleep", "600"]).await;
    assert_eq!((code, p["serverId"].as_str()), (201, Some("host1")), "the least loaded: {p}");
    let placed = p["id"].as_str().unwrap().to_string();
    let msg =
        last_event(&gw, &placed, "process_started").await["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("placed on host1: least loaded of 2 schedulable online nodes")
            && msg.contains("(0 workloads,")
            && msg.contains("GiB free"),
        "{msg}"
    );
    // Memory nobody has, and a request of none.
    let body =
        serde_json::json!({"name": "x", "command": ["sleep", "1"], "memoryBytes": 1u64 << 50});
    let (code, err) = call(&gw, "POST", "/api/processes", Some(body)).await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("unschedulable")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("no node can take it"), "{err}");
    let body = serde_json::json!({"name": "x", "command": ["sleep", "1"], "memoryBytes": 0});
    assert_eq!(call(&gw, "POST", "/api/processes", Some(body)).await.0, 400);

    // Cordon host1: nothing new goes there, asked or placed.
    let (code, s) = call(&gw, "POST", "/api/servers/host1/cordon", None).await;
    assert_eq!((code, s["schedulable"].as_bool()), (200, Some(false)), "{s}");
    assert_eq!(call(&gw, "POST", "/api/servers/nowhere/cordon", None).await.0, 404);
    let (code, p) = start_placed(&gw, None, &["sleep", "600"]).await;
    assert_eq!((code, p["serverId"].as_str()), (201, Some("host0")), "host1 is cordoned: {p}");
    let on_host0 = p["id"].as_str().unwrap().to_string();
    let (code, err) = start_placed(&gw, Some("host1"), &["sleep", "600"]).await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("unschedulable")), "{err}");
    let m = err["error"]["message"].as_str().unwrap();
    assert!(m.contains("host1") && m.contains("cordoned") && m.contains("uncordon"), "{m}");
    let (code, err) = call(
        &gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": on_host0, "targetServerId": "host1"})),
    )
    .await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("unschedulable")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("host1"), "{err}");
    // Without a target: the only other node is cordoned, and the source is never the target.
    let (code, err) =
        call(&gw, "POST", "/api/migrations", Some(serde_json::json!({"processId": on_host0})))
            .await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("unschedulable")), "{err}");
    let (code, out, _) = {
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || ferry_cli(&gw, &["nodes"])).await.unwrap()
    };
    assert_eq!(code, 0);
    assert!(out.contains("SCHEDULABLE") && out.contains("no (cordoned)"), "{out}");

    // A restarted coordinator keeps the cordon.
    c.restart_coordinator_with(&[]).await;
    let s = schedulable(&gw).await;
    assert_eq!((s["host0"], s["host1"]), (true, false), "{s:?}");

    // Uncordoned (by the CLI): host1 takes work again, and a migration without a target goes there.
    let (code, out, err) = {
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || ferry_cli(&gw, &["uncordon", "host1"])).await.unwrap()
    };
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("host1 uncordoned"), "{out}");
    assert!(schedulable(&gw).await["host1"]);
    let (code, p) = start_placed(&gw, Some("host1"), &["sleep", "600"]).await;
    assert_eq!(code, 201, "{p}");
    let (code, m) =
        call(&gw, "POST", "/api/migrations", Some(serde_json::json!({"processId": on_host0})))
            .await;
    assert_eq!((code, m["targetServerId"].as_str()), (202, Some("host1")), "{m}");
    let mid = m["id"].as_str().unwrap();
    assert_eq!(migration_end(&gw, mid, "the placed migration").await["status"], "completed");
    let msg = last_event(&gw, &on_host0, "migration_started").await["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("placed on host1: least loaded of 1 schedulable online node"), "{msg}");
}

/// Three hosts for drains: a coordinator and an agent on each.
struct OnThreeHosts {
    _agents: Vec<AgentProc>,
    _coord: AgentProc,
    _net: harness::net::Net,
    _data: TempDir,
    gw: String,
}

async fn on_three_hosts(tag: &str) -> OnThreeHosts {
    let net = harness::net::Net::new(3);
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new(tag);
    let ip = net.bridge_ip();
    let coord = coordinator_with(&ip, port, http_port, data.path(), &[]);
    let url = format!("https://{ip}:{port}");
    let agents: Vec<AgentProc> = (0..3).map(|i| net.agent(i, &["--coordinator", &url])).collect();
    wait_nodes(&coord.addr, "three hosts online", |n| {
        ["host0", "host1", "host2"].iter().all(|h| online(n, h) == Some(true))
    })
    .await;
    OnThreeHosts {
        _agents: agents,
        _coord: coord,
        _net: net,
        _data: data,
        gw: format!("{ip}:{http_port}"),
    }
}

/// A workload's numbered output lines ("count N" or "tick N") so far.
async fn numbered(gw: &str, id: &str, prefix: &str) -> Vec<u64> {
    let (_, l) = call(gw, "GET", &format!("/api/processes/{id}/logs?limit=10000"), None).await;
    l["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["text"].as_str()?.strip_prefix(prefix)?.parse().ok())
        .collect()
}

/// Waits until `id` printed a few more numbered lines, and asserts they never skip or repeat.
async fn numbers_go_on(gw: &str, id: &str, prefix: &str) {
    let before = numbered(gw, id, prefix).await.len();
    let all = wait_until(&format!("{id} counting on"), T, || async move {
        let all = numbered(gw, id, prefix).await;
        (all.len() > before + 3).then_some(all)
    })
    .await;
    for w in all.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{id}: no gap and no repeat across the drain: {all:?}");
    }
}

/// `ferry drain host0 --deadline 60s` on a node running six workloads of 16 to 256 MiB: every
/// one moves (two at a time, spread over the other nodes), each count goes on without a gap, the
/// drain's record has every migration and its outcome, the node stays cordoned, and the events
/// tell it all.
#[tokio::test]
async fn a_drain_moves_six_workloads_of_mixed_sizes_within_its_deadline() {
    must_be_root();
    let c = on_three_hosts("ferry-test-drain").await;
    let gw = c.gw.clone();
    let memhog = workload("memhog");
    let appender = workload("appender.py");
    let mut ids: Vec<(String, &str)> = Vec::new();
    for mib in ["16", "64", "128", "256"] {
        let (code, p) = start_placed(&gw, Some("host0"), &[&memhog, mib]).await;
        assert_eq!(code, 201, "{p}");
        ids.push((p["id"].as_str().unwrap().to_string(), "tick "));
    }
    for _ in 0..2 {
        let (code, p) = start_placed(&gw, Some("host0"), &[&appender]).await;
        assert_eq!(code, 201, "{p}");
        ids.push((p["id"].as_str().unwrap().to_string(), "count "));
    }
    // Every one running, its memory in, and reported with it.
    for (id, prefix) in &ids {
        let (gw, id) = (gw.clone(), id.clone());
        wait_until("each workload under way", T, || {
            let (gw, id) = (gw.clone(), id.clone());
            async move { (numbered(&gw, &id, prefix).await.len() >= 3).then_some(()) }
        })
        .await;
    }
    wait_until("the 256 MiB one reported with its memory", T, || {
        let (gw, id) = (gw.clone(), ids[3].0.clone());
        async move {
            let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
            (p["memoryBytes"].as_u64().unwrap_or(0) >= 200 << 20).then_some(())
        }
    })
    .await;
    let watcher = {
        let gw = gw.clone();
        std::thread::spawn(move || sse_until(&gw, "drain_ended", Duration::from_secs(90)))
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (code, out, err) = {
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || {
            ferry_cli(&gw, &["drain", "host0", "--deadline", "60s"])
        })
        .await
        .unwrap()
    };
    let took = started.elapsed();
    assert_eq!(code, 0, "ferry drain: {out}{err}");
    assert!(
        out.contains("6 processes") && out.contains("completed: every workload moved off host0"),
        "{out}"
    );
    assert!(took < Duration::from_secs(60), "within its deadline: {took:?}");

    let (_, drains) = call(&gw, "GET", "/api/drains", None).await;
    assert_eq!(drains.as_array().unwrap().len(), 1, "{drains}");
    let did = drains[0]["id"].as_str().unwrap();
    let (code, d) = call(&gw, "GET", &format!("/api/drains/{did}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            d["status"].as_str(),
            d["serverId"].as_str(),
            d["deadlineSeconds"].as_i64(),
            d["fits"].as_bool()
        ),
        (Some("completed"), Some("host0"), Some(60), Some(true)),
        "{d}"
    );
    assert_eq!(d["concurrency"], 2, "{d}");
    assert!(d["endedAt"].as_str().unwrap() >= d["startedAt"].as_str().unwrap(), "{d}");
    let ws = d["workloads"].as_array().unwrap();
    assert_eq!(ws.len(), 6, "{d}");
    // Largest first.
    let sizes: Vec<u64> = ws.iter().map(|w| w["memoryBytes"].as_u64().unwrap()).collect();
    assert!(sizes.windows(2).all(|p| p[0] >= p[1]), "{sizes:?}");
    assert_eq!(ws[0]["processId"].as_str(), Some(ids[3].0.as_str()), "the 256 MiB one first: {d}");
    let mut targets = std::collections::BTreeSet::new();
    for w in ws {
        assert_eq!(w["status"], "completed", "{w}");
        assert!(w["error"].is_null(), "{w}");
        let mid = w["migrationId"].as_str().unwrap();
        let (_, m) = call(&gw, "GET", &format!("/api/migrations/{mid}"), None).await;
        assert_eq!(
            (
                m["status"].as_str(),
                m["sourceServerId"].as_str(),
                m["processId"].clone(),
                m["mode"].clone()
            ),
            (Some("completed"), Some("host0"), w["processId"].clone(), w["mode"].clone()),
            "{m}"
        );
        assert_eq!(m["targetServerId"], w["targetServerId"]);
        targets.insert(w["targetServerId"].as_str().unwrap().to_string());
    }
    assert_eq!(targets, ["host1".to_string(), "host2".to_string()].into(), "spread by load: {d}");
    // Nothing left on host0, which stays cordoned; every count goes on where it was.
    let (_, ps) = call(&gw, "GET", "/api/processes", None).await;
    assert_eq!(ps.as_array().unwrap().len(), 6, "{ps}");
    assert!(
        ps.as_array().unwrap().iter().all(|p| p["serverId"] != "host0" && p["status"] == "running"),
        "{ps}"
    );
    assert!(!schedulable(&gw).await["host0"]);
    for (id, prefix) in &ids {
        numbers_go_on(&gw, id, prefix).await;
    }
    let seen = watcher.join().unwrap();
    let of = |k: &str| seen.iter().filter(|(n, _)| n == k).count();
    assert_eq!((of("drain_started"), of("drain_ended")), (1, 1), "{seen:?}");
    assert_eq!(of("drain_progress"), 12, "a migrating and a done step per workload: {seen:?}");
    let ended = &seen.last().unwrap().1;
    assert_eq!(ended["data"]["status"], "completed", "{ended}");
}

/// A drain's bad input and refusals: an unknown node 404, a deadline of 0, too long or not a
/// number 400, an unknown field 400, a node already being drained 409 (and no uncordon while it
/// is); a workload that has nowhere to go leaves the drain failed, saying which; a coordinator
/// restarted mid-drain ends it failed ("interrupted"), its migration resolved as any other.
#[tokio::test]
async fn drain_errors_a_double_drain_a_stuck_workload_and_a_restart_mid_drain() {
    must_be_root();
    let mut c = on_two_hosts_with(
        "ferry-test-drain-errors",
        &["--test-migration-fault", "hold-before-commit:4000"],
        &["--enable-fault-injection"],
    )
    .await;
    let gw = c.gw.clone();
    for (path, body, code) in [
        ("/api/servers/nowhere/drain", "", 404),
        ("/api/servers/host0/drain", r#"{"deadlineSeconds": 0}"#, 400),
        ("/api/servers/host0/drain", r#"{"deadlineSeconds": 1000000000}"#, 400),
        ("/api/servers/host0/drain", r#"{"deadlineSeconds": -5}"#, 400),
        ("/api/servers/host0/drain", r#"{"deadlineSeconds": "1m"}"#, 400),
        ("/api/servers/host0/drain", r#"{"deadline": 60}"#, 400),
        ("/api/servers/host0/drain", "not json", 400),
    ] {
        let (got, err) = {
            let (gw, path, body) = (gw.clone(), path.to_string(), body.to_string());
            tokio::task::spawn_blocking(move || {
                http(&gw, "POST", &path, (!body.is_empty()).then_some(body.as_str()))
            })
            .await
            .unwrap()
        };
        assert_eq!(got, code, "{path} {body} -> {err}");
        assert!(!err["error"]["message"].as_str().unwrap_or("").is_empty(), "{err}");
    }
    assert!(schedulable(&gw).await["host0"], "a refused drain cordons nothing");
    let (code, out, _) = {
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || ferry_cli(&gw, &["drain", "host0", "--deadline", "2x"]))
            .await
            .unwrap()
    };
    assert_eq!(code, 2, "clap refuses a bad duration: {out}");

    let (code, p) = start_placed(&gw, Some("host0"), &[&workload("appender.py")]).await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    wait_until("the appender counting", T, || {
        let id = id.clone();
        let gw = gw.clone();
        async move { (counts(&gw, &id).await.len() >= 3).then_some(()) }
    })
    .await;
    let (code, d) = call(
        &gw,
        "POST",
        "/api/servers/host0/drain",
        Some(serde_json::json!({"deadlineSeconds": 30})),
    )
    .await;
    assert_eq!((code, d["status"].as_str()), (202, Some("running")), "{d}");
    assert_eq!(d["workloads"].as_array().unwrap().len(), 1, "{d}");
    let did = d["id"].as_str().unwrap().to_string();
    // The commit is held 4 s: the drain is surely still running.
    let (code, err) = call(&gw, "POST", "/api/servers/host0/drain", None).await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("conflict")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains(&did), "{err}");
    let (code, err) = call(&gw, "POST", "/api/servers/host0/uncordon", None).await;
    assert_eq!(code, 409, "no uncordon mid-drain: {err}");
    let (code, err) = start_placed(&gw, Some("host0"), &["sleep", "60"]).await;
    assert_eq!((code, err["error"]["code"].as_str()), (409, Some("unschedulable")), "{err}");
    let d = drain_ended(&gw, &did, "the first drain to end", T).await;
    assert_eq!(d["status"], "completed", "{d}");
    assert_eq!(d["workloads"][0]["targetServerId"], "host1", "{d}");
    count_goes_on(&gw, &id, "the appender counting on host1").await;

    // host0 is cordoned: draining host1 has nowhere to put the appender; the drain fails, saying so.
    let (code, d) = call(&gw, "POST", "/api/servers/host1/drain", None).await;
    assert_eq!(code, 202, "{d}");
    let did = d["id"].as_str().unwrap().to_string();
    let d = drain_ended(&gw, &did, "the stuck drain to end", T).await;
    assert_eq!(d["status"], "failed", "{d}");
    let w = &d["workloads"][0];
    assert_eq!(w["status"], "failed", "{d}");
    assert!(w["error"].as_str().unwrap().contains("no node can take it"), "{d}");
    assert!(w["migrationId"].is_null(), "{d}");
    assert!(d["message"].as_str().unwrap().contains(&id), "names what is left: {d}");
    count_goes_on(&gw, &id, "the appender still counting on host1").await;

    // Uncordon host0 and drain host1 again; the coordinator dies mid-drain.
    assert_eq!(call(&gw, "POST", "/api/servers/host0/uncordon", None).await.0, 200);
    let (code, d) = call(&gw, "POST", "/api/servers/host1/drain", None).await;
    assert_eq!(code, 202, "{d}");
    let did = d["id"].as_str().unwrap().to_string();
    wait_until("the drain's migration under way", T, || {
        let (gw, did) = (gw.clone(), did.clone());
        async move {
            let (_, d) = call(&gw, "GET", &format!("/api/drains/{did}"), None).await;
            d["workloads"][0]["migrationId"].as_str().map(str::to_string)
        }
    })
    .await;
    c.restart_coordinator_with(&["--test-migration-fault", "hold-before-commit:4000"]).await;
    let (_, d) = call(&gw, "GET", &format!("/api/drains/{did}"), None).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["message"].as_str().unwrap().contains("interrupted"), "{d}");
    let mid = d["workloads"][0]["migrationId"].as_str().unwrap().to_string();
    let m = migration_end(&gw, &mid, "the interrupted drain's migration to resolve").await;
    assert_eq!(m["status"], "completed", "{m}");
    count_goes_on(&gw, &id, "the appender counting on host0").await;
    assert!(!schedulable(&gw).await["host1"], "the node stays cordoned");

    // A deadline the plan cannot fit (three workloads, 1 s): said up front, and the drain goes
    // on, by post-copy wherever it can, to the end.
    assert_eq!(call(&gw, "POST", "/api/servers/host1/uncordon", None).await.0, 200);
    for _ in 0..2 {
        assert_eq!(start_placed(&gw, Some("host0"), &["sleep", "600"]).await.0, 201);
    }
    let (code, d) = call(
        &gw,
        "POST",
        "/api/servers/host0/drain",
        Some(serde_json::json!({"deadlineSeconds": 1})),
    )
    .await;
    assert_eq!((code, d["fits"].as_bool()), (202, Some(false)), "{d}");
    let msg = d["message"].as_str().unwrap();
    assert!(msg.contains("cannot fit its deadline of 1 s") && msg.contains("proceeds"), "{d}");
    assert!(d["workloads"].as_array().unwrap().iter().all(|w| w["mode"] == "post-copy"), "{d}");
    let did = d["id"].as_str().unwrap().to_string();
    let d = drain_ended(&gw, &did, "the late drain to end", Duration::from_secs(40)).await;
    assert_eq!(d["status"], "completed", "{d}");
    assert!(d["message"].as_str().unwrap().contains("longer than its deadline of 1 s"), "{d}");
    count_goes_on(&gw, &id, "the appender counting on host1 after a post-copy drain").await;
}

/// Drain `did` as the API shows it once it is no longer running (waiting up to `timeout`).
async fn drain_ended(gw: &str, did: &str, what: &str, timeout: Duration) -> serde_json::Value {
    wait_until(what, timeout, || async move {
        let (_, d) = call(gw, "GET", &format!("/api/drains/{did}"), None).await;
        (d["status"] != "running").then_some(d)
    })
    .await
}
