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
    let mut up = Up(Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["up", "--nodes", "2", "--http", &gw])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ferry up"));
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
    let cli = |args: &[&str]| ferry_cli(&api, &token, args);
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
    torn_down(before, "ferry-node");
    let link = Command::new("ip").args(["link", "show", "ferrybr0"]).output().unwrap();
    assert!(!link.status.success(), "bridge ferrybr0 left behind");
    assert!(!data.path().join("up.pid").exists());
}

/// The pid of node `node`'s agent, a part (direct child) of `ferry up` `up`.
fn agent_pid(up: i32, node: &str) -> Option<i32> {
    descendants(up).into_iter().find(|&pid| {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        stat(pid).is_some_and(|s| s.ppid == up && s.state != 'Z')
            && args.contains(&&b"agent"[..])
            && args.windows(2).any(|w| w[0] == b"--node" && w[1] == node.as_bytes())
    })
}

fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), which tells it from a later
/// process with the same pid.
fn start_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 2..].split_whitespace().nth(19)?.parse().ok()
}

#[tokio::test]
async fn up_restarts_a_killed_agent_and_its_workloads_live_on() {
    if !require_root("up_restarts_a_killed_agent_and_its_workloads_live_on") {
        return;
    }
    let data = TempDir::new("ferry-test-up-restart");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = format!("127.0.0.1:{port}");
    // Its own bridge and subnet: the other test of this binary runs beside it.
    let mut up = Up(Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["up", "--nodes", "2", "--http", &gw, "--net-name", "fupr", "--subnet", "10.231.252"])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry up"));
    let up_pid = up.id() as i32;
    let out = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[up] {line}");
            let _ = tx.send(line);
        }
    });
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let err = up.stderr.take().unwrap();
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[up stderr] {line}");
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let ready = rx.recv_timeout(T).expect("ferry up printed nothing");
    assert!(ready.starts_with("ferry is up: 2 nodes"), "{ready}");
    let token = std::fs::read_to_string(data.path().join("operator.token")).unwrap();
    let token = token.trim().to_string();
    let api = format!("http://{gw}");
    let cli = |args: &[&str]| ferry_cli(&api, &token, args);
    let process = |id: &str| -> serde_json::Value {
        let (code, out, err) = cli(&["ps", "-a", "--json"]);
        assert_eq!(code, 0, "{err}");
        let procs: serde_json::Value = serde_json::from_str(&out).unwrap();
        procs.as_array().unwrap().iter().find(|p| p["id"] == id).cloned().unwrap_or_default()
    };
    let node_online = |node: &str| {
        let (code, out, err) = cli(&["nodes", "--json"]);
        assert_eq!(code, 0, "{err}");
        let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| (n["id"] == node || n["name"] == node) && n["status"] == "online")
    };
    let appender = workload("appender.py");
    let run_on = |node: &str, name: &str| -> (String, i32) {
        let (code, out, err) =
            cli(&["run", "--node", node, "--name", name, "--json", "--", &appender]);
        assert_eq!(code, 0, "{err}");
        let p: serde_json::Value = serde_json::from_str(&out).unwrap();
        (p["id"].as_str().unwrap().to_string(), p["pid"].as_i64().unwrap() as i32)
    };
    let (id, pid) = run_on("node0", "journal");
    assert!(pid > 0);
    let journal =
        data.path().join("nodes/node0/workloads").join(&id).join("work").join("journal.txt");
    wait_until("the journal to grow", T, || async { (lines_in(&journal) >= 3).then_some(()) })
        .await;
    let born = start_ticks(pid).expect("the workload runs");

    // SIGKILL node0's agent: ferry up stays, says so, and starts it again.
    let old = agent_pid(up_pid, "node0").expect("node0's agent is a child of ferry up");
    kill(old, libc::SIGKILL);
    let new = wait_until("node0's agent to be started again", T, || async {
        agent_pid(up_pid, "node0").filter(|&p| p != old)
    })
    .await;
    assert!(up.try_wait().unwrap().is_none(), "ferry up exited when an agent died");
    // The restart's line may reach the reader thread a moment after the new agent shows.
    let restarted = format!("restarted node0 (pid {new}");
    let said = wait_until("ferry up to say it restarted node0", T, || {
        let said = stderr.lock().unwrap().clone();
        let done = said.contains(&restarted);
        async move { done.then_some(said) }
    })
    .await;
    assert!(
        said.contains(&format!("node0 (pid {old}) exited (signal: 9 (SIGKILL))"))
            && said.contains("restarting it in 0.5 s")
            && said.contains(&format!("restarted node0 (pid {new}")),
        "ferry up's stderr names the part, its status and the delay:\n{said}"
    );
    let log = data.path().join("logs/node0.log");
    wait_until("the new agent to take the workload back", T, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let after = text.split("--- ferry up: restart 1 of node0 ---").nth(1)?;
        after.contains("workload recovered from an earlier agent").then_some(())
    })
    .await;
    wait_until("node0 online", T, || async { node_online("node0").then_some(()) }).await;

    // The same process, still counting, still managed.
    assert_eq!(start_ticks(pid), Some(born), "the workload is not the same process");
    assert!(
        descendants(up_pid).contains(&pid),
        "the dead agent's workload did not come to ferry up (a child subreaper)"
    );
    let p = process(&id);
    assert_eq!(p["pid"], pid, "{p}");
    assert_eq!(p["serverId"], "node0", "{p}");
    assert_eq!(p["status"], "running", "{p}");
    let counted = lines_in(&journal);
    wait_until("the journal to go on growing", T, || async {
        (lines_in(&journal) >= counted + 5).then_some(())
    })
    .await;
    let (code, out, err) = cli(&["stop", &id]);
    assert_eq!(code, 0, "{out}{err}");
    // Its parent, the first agent, is gone: ferry up (the subreaper) reaps it, no zombie stays.
    wait_until("the stopped workload to be gone, no zombie left", T, || async {
        let zombies = all_stats().values().any(|s| s.ppid == up_pid && s.state == 'Z');
        (stat(pid).is_none() && !zombies).then_some(())
    })
    .await;
    wait_until("the stop to be recorded", T, || async {
        let p = process(&id);
        (p["status"] == "exited" || p["status"] == "failed").then_some(())
    })
    .await;
    assert_eq!(agent_pid(up_pid, "node0"), Some(new), "the agent did not stay up");

    // A workload of an agent that is dead when the cluster stops goes with it.
    let (_, orphan) = run_on("node1", "orphan");
    let agent1 = agent_pid(up_pid, "node1").expect("node1's agent");
    let before: Vec<i32> = descendants(up_pid);
    assert!(before.contains(&orphan));
    kill(agent1, libc::SIGKILL);
    kill(up_pid, libc::SIGTERM);
    let status = up.wait().unwrap();
    assert!(status.success(), "ferry up exited {status}");
    torn_down(before.iter().copied().chain([orphan]), "fupr-node");
}

/// `ferry ARGS` against the REST API at `api` with `token`: exit code, stdout, stderr.
fn ferry_cli(api: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_API", api)
        .env("FERRY_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// After a teardown: none of `pids` runs (a zombie waiting for PID 1 is gone for good), and no
/// network namespace named with `netns_prefix` is left.
fn torn_down(pids: impl IntoIterator<Item = i32>, netns_prefix: &str) {
    for pid in pids {
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
    assert!(!netns.contains(netns_prefix), "namespaces left: {netns}");
}

/// `ferry up` under test: a test that fails before its own teardown still takes the cluster down
/// (SIGTERM, as Ctrl-C would), so it cannot stand in the way of the next run.
struct Up(std::process::Child);

impl std::ops::Deref for Up {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Up {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill(self.0.id() as i32, libc::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
