//! A real control plane for scenario tests: `ferry coordinator` with its REST gateway, the REST
//! calls the tests make, and the node list.

use std::process::Command;
use std::time::Duration;

use ferry_proto::coordinator as cpb;
use ferry_proto::coordinator::coordinator_client::CoordinatorClient;

use super::{channel, tls_dir, wait_until, AgentProc, TempDir};

const T: Duration = Duration::from_secs(20);

/// The REST API's tokens in these tests.
pub const OPERATOR: &str = "test-operator-token-0123456789";
pub const READ_ONLY: &str = "test-read-only-token-0123456789";

/// A `ferry coordinator` on `ip:port` (fixed, so it can be restarted at the same address) with
/// its REST gateway on `ip:http`, heartbeats every 200 ms, and `extra` flags.
pub fn coordinator_with(
    ip: &str,
    port: u16,
    http: u16,
    data: &std::path::Path,
    extra: &[&str],
) -> AgentProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["coordinator", "--listen", &format!("{ip}:{port}"), "--heartbeat-ms", "200"])
        .args(extra)
        .arg("--tls-dir")
        .arg(tls_dir())
        .args(["--http", &format!("{ip}:{http}")])
        .env("FERRY_TOKENS", format!("operator:{OPERATOR} read-only:{READ_ONLY}"))
        .arg("--data-dir")
        .arg(data);
    AgentProc::spawn(
        "coordinator",
        cmd,
        TempDir::new("ferry-test-coord-unused"),
        data.to_path_buf(),
    )
}

/// One HTTP/1.1 request to the gateway at `addr`: (status code, JSON body).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (code, _, body) = http_as(Some(OPERATOR), addr, method, path, body);
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// One HTTP/1.1 request with `token` (or none): (status code, head, body text).
pub fn http_as(
    token: Option<&str>,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to gateway");
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, head.to_string(), body.to_string())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn nodes(addr: &str) -> Vec<cpb::NodeInfo> {
    let mut c = CoordinatorClient::new(channel(addr).await.expect("connect to coordinator"));
    c.list_nodes(cpb::ListNodesRequest {}).await.expect("ListNodes").into_inner().nodes
}

pub async fn wait_nodes(
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

pub fn online(n: &[cpb::NodeInfo], name: &str) -> Option<bool> {
    n.iter().find(|x| x.node == name).map(|x| x.online)
}

/// One REST call from async code: (status code, JSON body).
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (addr, method, path) = (addr.to_string(), method.to_string(), path.to_string());
    let body = body.map(|b| b.to_string());
    tokio::task::spawn_blocking(move || http(&addr, &method, &path, body.as_deref())).await.unwrap()
}

/// Runs the `ferry` CLI against the gateway at `gw` as the operator: (exit code, stdout, stderr).
pub fn ferry_cli(gw: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--api", &format!("http://{gw}"), "--token", OPERATOR])
        .args(args)
        .output()
        .expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
