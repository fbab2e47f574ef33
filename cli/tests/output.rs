//! The CLI verbs' output, from the built `ferry` against a stand-in REST API (no cluster, no
//! root): a pipe closed early ends a verb quietly, strings from the API reach the terminal
//! escaped, and `ferry logs` reads the log as `tail` reads a file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// A stand-in REST API answering every request with `answer(path)` as JSON (200); its URL and
/// the paths asked for, in order.
fn fake_api(answer: impl Fn(&str) -> String + Send + 'static) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if r.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if r.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or_default().to_string();
            log.lock().unwrap().push(path.clone());
            let body = answer(&path);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, asked)
}

fn ferry(api: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args).args(["--api", api, "--token", "t"]).env_remove("FERRY_TOKEN");
    c
}

fn process(id: usize, name: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("w-{id:012x}"), "name": name, "serverId": "node0", "status": "running",
        "pid": 100 + id, "cpuPercent": 0.5, "memoryBytes": 1 << 20, "engine": "criu",
        "command": ["sleep", "60"],
    })
}

#[test]
fn a_verb_whose_reader_went_away_ends_quietly_as_ls_does() {
    // Far more than a pipe holds, so ferry still writes after the reader has gone.
    let list: Vec<_> = (0..20_000).map(|i| process(i, "sleeper")).collect();
    let body = serde_json::Value::from(list).to_string();
    let (api, _) = fake_api(move |_| body.clone());
    let mut child =
        ferry(&api, &["ps"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("ID "), "{first:?}");
    // The reader is dropped here: `ferry ps | head -1`.
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}, stderr {stderr:?}");
    assert_eq!(stderr, "", "nothing on stderr, no panic");
}

#[test]
fn names_and_log_lines_reach_the_terminal_escaped() {
    let (api, _) = fake_api(|path| {
        if path.starts_with("/api/processes/w-1/logs") {
            serde_json::json!({"lines": [
                {"line": 0, "stream": "stdout", "text": "\u{1b}]0;owned\u{7}col1\tcol2\r"},
            ], "next": 1})
            .to_string()
        } else {
            serde_json::Value::from(vec![process(1, "evil\u{1b}[2J\u{202e}")]).to_string()
        }
    });
    let out = ferry(&api, &["ps"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("evil\\u{1b}[2J\\u{202e}"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let out = ferry(&api, &["logs", "w-1"]).output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "\\u{1b}]0;owned\\u{7}col1\tcol2\\r\n");
}

#[test]
fn logs_show_the_last_lines_as_tail_does() {
    let lines = |from: u64, to: u64| {
        let lines: Vec<_> = (from..to)
            .map(
                |i| serde_json::json!({"line": i, "stream": "stdout", "text": format!("line {i}")}),
            )
            .collect();
        serde_json::json!({"lines": lines, "next": to}).to_string()
    };
    // A log of 5000 lines.
    let (api, asked) = fake_api(move |path| {
        let q = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let arg = |k: &str| {
            q.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        match (arg("tail"), arg("from"), arg("limit")) {
            (Some(n), None, None) => lines(5000 - n.min(5000), 5000),
            (None, Some(f), Some(l)) => lines(f.min(5000), (f + l).min(5000)),
            _ => panic!("unexpected query {q}"),
        }
    });
    let shown = |args: &[&str]| {
        asked.lock().unwrap().clear();
        let out = ferry(&api, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines, asked.lock().unwrap().clone())
    };

    let (out, asked_for) = shown(&["logs", "w-1"]);
    assert_eq!(out, (4990..5000).map(|i| format!("line {i}")).collect::<Vec<_>>());
    assert_eq!(asked_for, ["/api/processes/w-1/logs?tail=10"]);

    let (out, _) = shown(&["logs", "w-1", "-n", "3"]);
    assert_eq!(out, ["line 4997", "line 4998", "line 4999"]);

    // From a line on, every page to the end: -n +1 is the whole log.
    let (out, asked_for) = shown(&["logs", "w-1", "-n", "+1"]);
    assert_eq!(out.len(), 5000);
    assert_eq!((out[0].as_str(), out[4999].as_str()), ("line 0", "line 4999"));
    assert_eq!(asked_for.len(), 6, "{asked_for:?}");
    let (out, _) = shown(&["logs", "w-1", "--lines", "+4999"]);
    assert_eq!(out, ["line 4998", "line 4999"]);
}
