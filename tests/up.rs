//! `ferry up`: one command to a running cluster, and a clean teardown.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;

const T: Duration = Duration::from_secs(60);

fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to gateway");
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap();
    (code, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

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
async fn up_runs_a_cluster_that_migrates_and_tears_down_clean() {
    if !require_root("up_runs_a_cluster_that_migrates_and_tears_down_clean") {
        return;
    }
    let data = TempDir::new("ferry-test-up");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = format!("127.0.0.1:{port}");
    let mut up = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["up", "--nodes", "2", "--http", &gw])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ferry up");
    let out = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[up] {line}");
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(T).expect("ferry up printed nothing");
    assert!(ready.starts_with("ferry is up: 2 nodes"), "{ready}");

    // A second one with the same data dir refuses, clearly.
    let second = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["up", "--nodes", "2", "--http", "127.0.0.1:1"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");

    // The cluster works: a process moves between its nodes.
    let (code, p) = call(
        &gw,
        "POST",
        "/api/processes",
        Some(serde_json::json!({"name": "journal", "command": [workload("appender.py")], "serverId": "node0"})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let (code, m) = call(
        &gw,
        "POST",
        "/api/migrations",
        Some(serde_json::json!({"processId": id, "targetServerId": "node1"})),
    )
    .await;
    assert_eq!(code, 202, "{m}");
    let mid = m["id"].as_str().unwrap().to_string();
    let m = wait_until("the migration to end", T, || {
        let (gw, mid) = (gw.clone(), mid.clone());
        async move {
            let (_, m) = call(&gw, "GET", &format!("/api/migrations/{mid}"), None).await;
            matches!(m["status"].as_str(), Some("completed" | "rolled_back" | "failed"))
                .then_some(m)
        }
    })
    .await;
    assert_eq!(m["status"], "completed", "{m}");
    let (_, p) = call(&gw, "GET", &format!("/api/processes/{id}"), None).await;
    assert_eq!(p["serverId"], "node1", "{p}");

    // SIGTERM leaves no process, namespace or bridge behind.
    let before: Vec<i32> = descendants(up.id() as i32);
    assert!(!before.is_empty());
    kill(up.id() as i32, libc::SIGTERM);
    let status = up.wait().unwrap();
    assert!(status.success(), "ferry up exited {status}");
    for pid in before {
        let st = stat(pid);
        assert!(
            st.is_none() || st.map(|s| s.state) == Some('Z'),
            "pid {pid} survived the teardown"
        );
    }
    let netns = String::from_utf8_lossy(
        &Command::new("ip").args(["netns", "list"]).output().unwrap().stdout,
    )
    .to_string();
    assert!(!netns.contains("ferry-node"), "namespaces left: {netns}");
    let link = Command::new("ip").args(["link", "show", "ferrybr0"]).output().unwrap();
    assert!(!link.status.success(), "bridge ferrybr0 left behind");
    assert!(!data.path().join("up.pid").exists());
}
