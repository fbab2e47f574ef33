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

/// A `ferry coordinator` on a fixed loopback port (so it can be restarted at the same address),
/// with its REST gateway on port `http`.
fn coordinator_with_http(port: u16, http: u16, data: &std::path::Path) -> AgentProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--heartbeat-ms", "200"])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(data);
    AgentProc::spawn(
        "coordinator",
        cmd,
        TempDir::new("ferry-test-coord-unused"),
        data.to_path_buf(),
    )
}

fn coordinator(port: u16, data: &std::path::Path) -> AgentProc {
    coordinator_with_http(port, free_port(), data)
}

/// GET `path` from the gateway on `port`: (status code, JSON body).
fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to gateway");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
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
    let port = free_port();
    let data = TempDir::new("ferry-test-coordinator");
    let coord = coordinator(port, data.path());
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
    start(&mut ca, spec(&["sleep", "60"])).await;
    wait_nodes(&coord.addr, "node-a reporting one workload", |n| {
        n.iter().any(|x| x.node == "node-a" && x.workload_count == 1)
    })
    .await;

    // A node whose agent dies goes offline after three missed heartbeats.
    kill(b.pid(), libc::SIGKILL);
    wait_nodes(&coord.addr, "node-b offline", |n| online(n, "node-b") == Some(false)).await;
    assert_eq!(online(&nodes(&coord.addr).await, "node-a"), Some(true));

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
