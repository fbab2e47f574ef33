//! `ferry up`: one command to a running cluster, and a clean teardown.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;

const T: Duration = Duration::from_secs(60);

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
    let _dashboard = rx.recv_timeout(T).unwrap();
    let token_line = rx.recv_timeout(T).unwrap();
    let token = std::fs::read_to_string(data.path().join("operator.token")).unwrap();
    let token = token.trim().to_string();
    assert!(token.len() >= 32 && token_line.contains(&token), "{token_line}");

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

    // The CLI drives it: run a process, migrate it with progress, find it on the other node.
    let api = format!("http://{gw}");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("FERRY_API", &api)
            .env("FERRY_TOKEN", &token)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let appender = workload("appender.py");
    let (code, out, err) =
        cli(&["run", "--node", "node0", "--name", "journal", "--json", "--", &appender]);
    assert_eq!(code, 0, "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = p["id"].as_str().unwrap().to_string();
    let (code, out, err) = cli(&["ps"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().starts_with("ID"), "a table with a header: {out}");
    assert!(out.contains(&id) && out.contains("node0"), "{out}");
    let (code, out, err) = cli(&["migrate", &id, "--to", "node1"]);
    assert_eq!(code, 0, "{out}{err}");
    for needle in ["phase transfer", "phase restore", "completed", "downtime", "MB raw"] {
        assert!(out.contains(needle), "{needle} missing from the progress output:\n{out}");
    }
    let (_, out, _) = cli(&["ps", "--json"]);
    let procs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = procs.as_array().unwrap().iter().find(|p| p["id"] == id.as_str()).unwrap();
    assert_eq!(p["serverId"], "node1", "{p}");
    // Errors are one clear line and a non-zero exit.
    for (args, needle) in [
        (vec!["run", "--node", "nowhere", "--", "true"], "no server \"nowhere\""),
        (vec!["stop", "w-nope"], "no process with id \"w-nope\""),
        (vec!["--api", "http://127.0.0.1:1", "ps"], "unreachable"),
        (vec!["--token", "0000000000000000-wrong", "ps"], "not valid"),
    ] {
        let (code, out, err) = cli(&args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("ferry: ") && err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }

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
