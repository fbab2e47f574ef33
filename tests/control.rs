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

/// A `ferry coordinator` on a fixed loopback port (so it can be restarted at the same address).
fn coordinator(port: u16, data: &std::path::Path) -> AgentProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--heartbeat-ms", "200"])
        .arg("--data-dir")
        .arg(data);
    AgentProc::spawn(
        "coordinator",
        cmd,
        TempDir::new("ferry-test-coord-unused"),
        data.to_path_buf(),
    )
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
