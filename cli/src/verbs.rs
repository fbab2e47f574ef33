//! The CLI verbs, over the REST API: tables for people, `--json` for scripts, one clear line on
//! error. Exit codes: 0 success, 1 error (API refused, gateway down), 2 a migration rolled back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// `println!` for the verbs' output: a closed stdout (`ferry ps | head -1`) ends the verb
/// quietly, see [`written`].
macro_rules! outln {
    ($($arg:tt)*) => { written(writeln!(std::io::stdout(), $($arg)*)) };
}

/// `eprintln!` for a workload's stderr lines (`ferry logs`), with [`written`]'s handling.
macro_rules! errln {
    ($($arg:tt)*) => { written(writeln!(std::io::stderr(), $($arg)*)) };
}

/// What a write of the verbs' output came to.
#[derive(Debug, PartialEq)]
enum Written {
    Done,
    /// Whoever read it went away (EPIPE): the output is no longer wanted.
    Closed,
    Failed(String),
}

fn write_outcome(r: std::io::Result<()>) -> Written {
    match r {
        Ok(()) => Written::Done,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Written::Closed,
        Err(e) => Written::Failed(e.to_string()),
    }
}

/// Ends the process when a write failed. A closed pipe ends it as it ends `ls | head`: quietly,
/// by SIGPIPE (status 141 in a shell). Rust ignores SIGPIPE, so without this every write after
/// the reader left fails and `println!` panics with a backtrace. Anything else (a full disk) is
/// one error line and status 1.
fn written(r: std::io::Result<()>) {
    match write_outcome(r) {
        Written::Done => {}
        Written::Closed => {
            // SAFETY: signal(2) and raise(3) with constant, valid arguments; nothing of this
            // process relies on SIGPIPE being ignored from here on, as it ends.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            std::process::exit(141);
        }
        Written::Failed(e) => {
            let _ = writeln!(std::io::stderr(), "ferry: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// Whether stdout is a pipe whose reader went away, asked without writing (as `tail -f` asks
/// while nothing new comes: `ferry logs -f ID | head -2` ends once head has its lines).
fn stdout_closed() -> bool {
    reader_gone(std::os::fd::AsFd::as_fd(&std::io::stdout()))
}

/// Whether `fd` is the writing end of a pipe with no reader (poll says POLLERR).
fn reader_gone(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: poll(2) on one pollfd whose descriptor is open (borrowed), without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLERR != 0
}

/// `text` safe to show on a terminal: control characters (escape sequences, carriage returns,
/// line breaks, C1 controls) and the bidirectional overrides that reorder what is shown are
/// escaped as Rust writes them (`\u{1b}`, `\r`, `\n`), so a process name, command or log line
/// cannot drive the terminal or pass for something else. Tabs stay when `tabs` (log lines).
fn printable(text: &str, tabs: bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| match c {
        '\t' => !tabs,
        // Bidirectional marks, embeddings, overrides and isolates.
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            true
        }
        c => c.is_control(),
    };
    if !text.chars().any(escaped) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !escaped(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out.into()
}

#[derive(clap::Args, Debug, Clone)]
pub struct Api {
    /// The REST API's address.
    #[arg(long, global = true, env = "FERRY_API", default_value = "http://127.0.0.1:5000")]
    pub api: String,
    /// Bearer token for the REST API. Without it: FERRY_TOKEN_FILE, ~/.config/ferry/token, then
    /// the operator token of a local `ferry up` (/var/lib/ferry/up/operator.token).
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Verb {
    /// List the nodes.
    Nodes,
    /// List the processes (ended ones only with --all).
    Ps {
        /// Also list processes that ended (exited, failed), kept for a while after they ended.
        #[arg(short, long)]
        all: bool,
    },
    /// Start a process: ferry run [--node node0] -- sleep 60 (without --node the coordinator
    /// places it on the least loaded schedulable node with the memory).
    Run {
        #[arg(long)]
        node: Option<String>,
        /// The memory it needs, in MiB, for placement (default: 64).
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        name: Option<String>,
        /// criu or cooperative (default: criu where it works).
        #[arg(long)]
        engine: Option<String>,
        #[arg(long)]
        cwd: Option<String>,
        /// Run as this user (name or uid on the node) instead of root.
        #[arg(long)]
        user: Option<String>,
        /// Run with this group (name or gid); default: the user's primary group.
        #[arg(long)]
        group: Option<String>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "env")]
        env: Vec<String>,
        /// own (a network namespace and an address of its own, which moves with it) or node
        /// (the node's network); default: the coordinator's --default-network.
        #[arg(long, value_parser = ["own", "node"])]
        network: Option<String>,
        /// Protect it: checkpoint it this often (e.g. 30, 30s, 2m; 5 s to a day), and restore it
        /// from its latest checkpoint on another node if its node is lost.
        #[arg(long, value_parser = parse_every)]
        checkpoint_every: Option<u64>,
        #[arg(required = true, last = true)]
        argv: Vec<String>,
    },
    /// List a process's checkpoints, newest first.
    Checkpoints { id: String },
    /// Take a checkpoint of a running process now.
    Checkpoint { id: String },
    /// Restore a process from a checkpoint (its newest by default) and follow it to the end;
    /// the running copy is stopped first.
    Restore {
        id: String,
        /// The checkpoint to restore (see `ferry checkpoints ID`).
        #[arg(long)]
        checkpoint: Option<String>,
        /// The node to restore on (default: the process's node if online and schedulable).
        #[arg(long)]
        node: Option<String>,
    },
    /// Pause every task of a process.
    Pause { id: String },
    /// Resume a paused process.
    Resume { id: String },
    /// Stop a process (SIGTERM, SIGKILL after the grace period).
    Stop { id: String },
    /// Stop a process, as `stop` does, by DELETE /api/processes/ID.
    Rm { id: String },
    /// Migrate a process and follow it to the end.
    Migrate {
        id: String,
        /// The target node; without it the coordinator places it (never on the source).
        #[arg(long)]
        to: Option<String>,
        /// stop-and-copy, post-copy (resume on the target before the memory arrives; CRIU
        /// engine only) or auto (post-copy for large CRIU workloads).
        #[arg(long, default_value = "stop-and-copy")]
        mode: String,
        /// Same as --mode post-copy.
        #[arg(long, conflicts_with = "mode")]
        post_copy: bool,
    },
    /// A process's output, as `tail` shows a file: its last 10 lines, -n N the last N, -n +N
    /// from line N on (-n +1: all of it), -f then follows what it writes next.
    Logs {
        id: String,
        /// The last N lines, or with +N (e.g. +1) every line from line N on.
        #[arg(short = 'n', long = "lines", value_name = "[+]N", default_value = "10", value_parser = parse_lines)]
        lines: Lines,
        /// Keep following new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Follow the cluster's events.
    Events,
    /// Mark a node unschedulable: no new processes or migrations into it.
    Cordon { node: String },
    /// Make a cordoned node schedulable again.
    Uncordon { node: String },
    /// Cordon a node and move every process off it; follow it to the end (exit 0 when all
    /// moved, 1 otherwise).
    Drain {
        node: String,
        /// The time the whole drain should fit in, e.g. 90s, 2m, 1h (a number alone is
        /// seconds); each migration's mode is chosen for it.
        #[arg(long, value_parser = parse_deadline)]
        deadline: Option<u64>,
    },
}

/// `--deadline`: seconds from `90`, `90s`, `2m` or `1h`.
fn parse_deadline(s: &str) -> Result<u64, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration such as 90s, 2m or 1h"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h (e.g. 2m)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{s:?} is far too long a deadline"))
}

/// Which lines `ferry logs` starts with (`-n`, as `tail -n` reads it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lines {
    /// The last N lines (`-n N`).
    Last(u64),
    /// Every line from this 1-based line on (`-n +N`).
    From(u64),
}

fn parse_lines(s: &str) -> Result<Lines, String> {
    let bad = || format!("{s:?} is not N (the last N lines) or +N (from line N on, +1: all)");
    match s.strip_prefix('+') {
        Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse().map(Lines::From).map_err(|_| bad())
        }
        Some(_) => Err(bad()),
        None if s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map(Lines::Last).map_err(|_| bad())
        }
        None => Err(bad()),
    }
}

/// The most lines the gateway returns in one read (`tail`, `limit`).
const LOG_PAGE_MAX: u64 = 10_000;
/// Lines asked for per read while catching up.
const LOG_PAGE: u64 = 1000;

/// `ferry logs`: the lines `lines` asks for, then, with `follow`, what the process writes next.
fn logs(c: &Client, id: &str, lines: Lines, follow: bool, json: bool) -> anyhow::Result<()> {
    let show = |v: &Value| {
        let mut shown = 0;
        for l in items(&v["lines"]) {
            if json {
                outln!("{l}");
            } else if l["stream"] == "stderr" {
                errln!("{}", printable(l["text"].as_str().unwrap_or(""), true));
            } else {
                outln!("{}", printable(l["text"].as_str().unwrap_or(""), true));
            }
            shown += 1;
        }
        shown
    };
    let path = format!("/api/processes/{id}/logs");
    let mut from = match lines {
        Lines::From(n) => n.saturating_sub(1),
        Lines::Last(n) => {
            // The gateway answers the last lines itself, up to a page; for more, where they
            // start, and they are read on from there.
            let v = c.call(
                "GET",
                &format!("{path}?tail={}", if n <= LOG_PAGE_MAX { n } else { 0 }),
                None,
            )?;
            let next = v["next"].as_u64().unwrap_or(0);
            if n > LOG_PAGE_MAX {
                next.saturating_sub(n)
            } else {
                show(&v);
                if !follow {
                    return Ok(());
                }
                next
            }
        }
    };
    loop {
        let v = c.call("GET", &format!("{path}?from={from}&limit={LOG_PAGE}"), None)?;
        let shown = show(&v);
        from = v["next"].as_u64().unwrap_or(from + shown as u64);
        if shown < LOG_PAGE as usize {
            // Caught up with the log.
            if !follow {
                return Ok(());
            }
            if stdout_closed() {
                written(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `--checkpoint-every`: seconds, as `--deadline` reads them, from 5 to 86400.
fn parse_every(s: &str) -> Result<u64, String> {
    let secs = parse_deadline(s)?;
    if !(5..=86_400).contains(&secs) {
        return Err(format!("{s:?} is {secs} s: checkpoint every 5 s to 1 day (86400 s)"));
    }
    Ok(secs)
}

/// Outcome of a verb, as an exit code.
pub fn run(api: Api, verb: Verb) -> anyhow::Result<u8> {
    let c = Client::new(&api.api, token(&api))?;
    match verb {
        Verb::Nodes => {
            let v = c.call("GET", "/api/servers", None)?;
            if api.json {
                outln!("{v}");
            } else {
                table(
                    &[
                        "NODE",
                        "STATUS",
                        "ADDRESS",
                        "CPU%",
                        "MEMORY USED",
                        "PROCS",
                        "CRIU",
                        "KERNEL",
                        "SCHEDULABLE",
                    ],
                    items(&v)
                        .map(|n| {
                            vec![
                                s(&n["id"]),
                                s(&n["status"]),
                                s(&n["address"]),
                                format!("{:.1}", n["cpuPercent"].as_f64().unwrap_or(0.0)),
                                format!(
                                    "{}/{}",
                                    mib(&n["memoryUsedBytes"]),
                                    mib(&n["memoryTotalBytes"])
                                ),
                                s(&n["processCount"]),
                                s(&n["criuVersion"]),
                                s(&n["kernel"]),
                                if n["schedulable"] == false { "no (cordoned)" } else { "yes" }
                                    .to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Verb::Ps { all } => {
            let v = c.call(
                "GET",
                if all { "/api/processes?all=true" } else { "/api/processes" },
                None,
            )?;
            if api.json {
                outln!("{v}");
            } else {
                table(
                    &[
                        "ID", "NAME", "NODE", "STATUS", "ADDRESS", "PID", "CPU%", "MEMORY",
                        "ENGINE", "COMMAND",
                    ],
                    items(&v)
                        .map(|p| {
                            let cmd: Vec<String> = items(&p["command"]).map(s).collect();
                            vec![
                                s(&p["id"]),
                                s(&p["name"]),
                                s(&p["serverId"]),
                                status_of(p),
                                s(&p["address"]),
                                s(&p["pid"]),
                                format!("{:.1}", p["cpuPercent"].as_f64().unwrap_or(0.0)),
                                mib(&p["memoryBytes"]),
                                s(&p["engine"]),
                                cmd.join(" "),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Verb::Run {
            node,
            memory_mib,
            name,
            engine,
            cwd,
            user,
            group,
            env,
            network,
            checkpoint_every,
            argv,
        } => {
            let mut envs = serde_json::Map::new();
            for kv in env {
                let (k, v) =
                    kv.split_once('=').ok_or_else(|| anyhow!("--env {kv:?} is not KEY=VALUE"))?;
                envs.insert(k.into(), v.into());
            }
            let mut body = serde_json::json!({
                "name": name.unwrap_or_else(|| argv[0].clone()),
                "command": argv,
                "env": envs,
            });
            if let Some(n) = node {
                body["serverId"] = n.into();
            }
            if let Some(m) = memory_mib {
                body["memoryBytes"] = (m << 20).into();
            }
            if let Some(secs) = checkpoint_every {
                body["checkpointIntervalSeconds"] = secs.into();
            }
            if let Some(e) = engine {
                body["engine"] = e.into();
            }
            for (key, v) in [("cwd", cwd), ("user", user), ("group", group), ("network", network)] {
                if let Some(v) = v {
                    body[key] = v.into();
                }
            }
            let p = c.call("POST", "/api/processes", Some(body))?;
            print_process(&p, api.json, "started");
        }
        Verb::Pause { id } => print_process(
            &c.call("POST", &format!("/api/processes/{id}/pause"), None)?,
            api.json,
            "paused",
        ),
        Verb::Resume { id } => print_process(
            &c.call("POST", &format!("/api/processes/{id}/resume"), None)?,
            api.json,
            "resumed",
        ),
        Verb::Stop { id } => print_process(
            &c.call("POST", &format!("/api/processes/{id}/stop"), None)?,
            api.json,
            "stopped",
        ),
        Verb::Rm { id } => print_process(
            &c.call("DELETE", &format!("/api/processes/{id}"), None)?,
            api.json,
            "stopped",
        ),
        Verb::Migrate { id, to, mode, post_copy } => {
            let mode = if post_copy { "post-copy".to_string() } else { mode };
            return migrate(&c, &id, to.as_deref(), &mode, api.json);
        }
        Verb::Checkpoints { id } => {
            let v = c.call("GET", &format!("/api/processes/{id}/checkpoints"), None)?;
            if api.json {
                outln!("{v}");
            } else {
                table(
                    &["ID", "SEQ", "TAKEN", "SIZE", "FREEZE", "HOLDERS"],
                    items(&v["checkpoints"]).map(checkpoint_row).collect(),
                );
            }
        }
        Verb::Checkpoint { id } => {
            let k = c.call("POST", &format!("/api/processes/{id}/checkpoints"), None)?;
            if api.json {
                outln!("{k}");
            } else {
                let r = checkpoint_row(&k);
                outln!(
                    "checkpoint {} of {id} taken (seq {}, {}, frozen {}, held by {})",
                    r[0],
                    r[1],
                    r[3],
                    r[4],
                    r[5]
                );
            }
        }
        Verb::Restore { id, checkpoint, node } => {
            return restore(&c, &id, checkpoint.as_deref(), node.as_deref(), api.json)
        }
        Verb::Cordon { node } => cordon(&c, &node, true, api.json)?,
        Verb::Uncordon { node } => cordon(&c, &node, false, api.json)?,
        Verb::Drain { node, deadline } => return drain(&c, &node, deadline, api.json),
        Verb::Logs { id, lines, follow } => logs(&c, &id, lines, follow, api.json)?,
        Verb::Events => c.events(|e| {
            if api.json {
                outln!("{e}");
            } else {
                outln!(
                    "{} {:5} {:22} {}",
                    s(&e["at"]),
                    s(&e["level"]),
                    s(&e["kind"]),
                    s(&e["message"])
                );
            }
            true
        })?,
    }
    Ok(0)
}

/// A checkpoint as a table row: ID SEQ TAKEN SIZE FREEZE HOLDERS.
fn checkpoint_row(k: &Value) -> Vec<String> {
    let holders: Vec<String> = items(&k["holders"]).map(s).collect();
    vec![
        s(&k["id"]),
        s(&k["seq"]),
        s(&k["takenAt"]),
        format!("{:.1} MB", k["bytes"].as_u64().unwrap_or(0) as f64 / 1e6),
        format!("{} ms", k["freezeMs"].as_u64().unwrap_or(0)),
        if holders.is_empty() { "-".into() } else { holders.join(",") },
    ]
}

/// Restores a process from a checkpoint and follows the restore to its end: 0 when it runs
/// from the checkpoint, 1 otherwise.
fn restore(
    c: &Client,
    id: &str,
    checkpoint: Option<&str>,
    node: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let mut body = serde_json::json!({});
    if let Some(k) = checkpoint {
        body["checkpointId"] = k.into();
    }
    if let Some(n) = node {
        body["serverId"] = n.into();
    }
    let m = c.call("POST", &format!("/api/processes/{id}/restore"), Some(body))?;
    let mid = s(&m["id"]);
    if !json {
        outln!(
            "restore {mid}: {id} from {} onto {}{}",
            s(&m["sourceServerId"]),
            s(&m["targetServerId"]),
            checkpoint.map(|k| format!(" (checkpoint {k})")).unwrap_or_default()
        );
    }
    let started = Instant::now();
    let mut last = String::new();
    let m = loop {
        let m = c.call("GET", &format!("/api/migrations/{mid}"), None)?;
        let status = s(&m["status"]);
        if matches!(status.as_str(), "completed" | "rolled_back" | "failed") {
            break m;
        }
        if !json && status != last {
            outln!("  {:>7.1}s  {status}", started.elapsed().as_secs_f64());
            last = status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if json {
        outln!("{m}");
    } else {
        outln!(
            "{}: {}",
            s(&m["status"]),
            m["error"].as_str().map(|e| printable(e, false).into_owned()).unwrap_or_else(
                || format!("{id} runs on {} from the checkpoint", s(&m["targetServerId"]))
            )
        );
    }
    Ok(if m["status"] == "completed" { 0 } else { 1 })
}

fn cordon(c: &Client, node: &str, cordon: bool, json: bool) -> anyhow::Result<()> {
    let (what, done) = if cordon {
        ("cordon", "cordoned: no new processes or migrations into it")
    } else {
        ("uncordon", "uncordoned: schedulable again")
    };
    let n = c.call("POST", &format!("/api/servers/{node}/{what}"), None)?;
    if json {
        outln!("{n}");
    } else {
        outln!("{} {done}", s(&n["id"]));
    }
    Ok(())
}

/// Starts a drain of `node` and shows each workload's step until it ends: 0 when every workload
/// moved, 1 otherwise.
fn drain(c: &Client, node: &str, deadline: Option<u64>, json: bool) -> anyhow::Result<u8> {
    let body = deadline.map(|d| serde_json::json!({"deadlineSeconds": d}));
    let d = c.call("POST", &format!("/api/servers/{node}/drain"), body)?;
    let id = s(&d["id"]);
    if !json {
        outln!(
            "drain {id} of {node}: {} processes, estimated {:.1} s{}",
            items(&d["workloads"]).count(),
            d["estimateMs"].as_f64().unwrap_or(0.0) / 1000.0,
            deadline.map(|d| format!(" (deadline {d} s)")).unwrap_or_default()
        );
        if let Some(m) = d["message"].as_str().map(|m| printable(m, false)) {
            outln!("  {m}");
        }
    }
    let started = Instant::now();
    let mut shown: std::collections::HashMap<String, String> = Default::default();
    let d = loop {
        let d = c.call("GET", &format!("/api/drains/{id}"), None)?;
        if !json {
            for w in items(&d["workloads"]) {
                let (p, st) = (s(&w["processId"]), s(&w["status"]));
                if shown.get(&p) == Some(&st) || st == "pending" {
                    continue;
                }
                let secs = started.elapsed().as_secs_f64();
                let err = w["error"]
                    .as_str()
                    .map(|e| format!(": {}", printable(e, false)))
                    .unwrap_or_default();
                outln!(
                    "  {secs:>6.1}s  {p:<16} {st:<11} -> {} ({}, {} MiB, migration {}){err}",
                    s(&w["targetServerId"]),
                    s(&w["mode"]),
                    w["memoryBytes"].as_u64().unwrap_or(0) >> 20,
                    s(&w["migrationId"])
                );
                shown.insert(p, st);
            }
        }
        if s(&d["status"]) != "running" {
            break d;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if json {
        outln!("{d}");
    } else {
        outln!("{}: {}", s(&d["status"]), s(&d["message"]));
    }
    Ok(if d["status"] == "completed" { 0 } else { 1 })
}

fn migrate(c: &Client, id: &str, to: Option<&str>, mode: &str, json: bool) -> anyhow::Result<u8> {
    let mut body = serde_json::json!({"processId": id, "mode": mode});
    if let Some(t) = to {
        body["targetServerId"] = t.into();
    }
    let m = c.call("POST", "/api/migrations", Some(body))?;
    let mid = s(&m["id"]);
    let to = s(&m["targetServerId"]);
    if !json {
        outln!(
            "migration {mid}: {id} from {} to {to} ({})",
            s(&m["sourceServerId"]),
            s(&m["mode"])
        );
    }
    let started = Instant::now();
    let mut last = String::new();
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut bar_shown = false;
    let m = loop {
        let m = c.call("GET", &format!("/api/migrations/{mid}"), None)?;
        let status = s(&m["status"]);
        if matches!(status.as_str(), "completed" | "rolled_back" | "failed") {
            break m;
        }
        if !json {
            let raw = m["bytesRaw"].as_u64().unwrap_or(0);
            let wire = m["bytesWire"].as_u64().unwrap_or(0);
            let secs = started.elapsed().as_secs_f64();
            if tty {
                // One line, redrawn: the phases as a bar, and the bytes moved so far.
                let mut out = std::io::stdout();
                written(write!(
                    out,
                    "\r  {}  {:>7.1}s  {status:<11} {:>8.1} MB raw {:>8.1} MB wire\x1b[K",
                    phase_bar(&status),
                    secs,
                    raw as f64 / 1e6,
                    wire as f64 / 1e6
                ));
                written(out.flush());
                bar_shown = true;
            } else if status != last {
                outln!("  {secs:>7.1}s  {status}  {:.1} MB raw so far", raw as f64 / 1e6);
            }
            last = status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if bar_shown {
        outln!();
    }
    if json {
        outln!("{m}");
    } else {
        let ms = |k: &str| m[k].as_i64().map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
        // The whole record: the progress lines above show only the phases the polls caught.
        for p in items(&m["phases"]) {
            outln!("  phase {}", s(&p["phase"]));
        }
        outln!(
            "{}: {}",
            s(&m["status"]),
            m["error"]
                .as_str()
                .map_or("the process runs on the target".into(), |e| printable(e, false))
        );
        outln!(
            "  freeze {}  dump {}  transfer {}  restore {}  downtime {}",
            ms("freezeMs"),
            ms("dumpMs"),
            ms("transferMs"),
            ms("restoreMs"),
            ms("downtimeMs")
        );
        let raw = m["bytesRaw"].as_u64().unwrap_or(0);
        let wire = m["bytesWire"].as_u64().unwrap_or(0);
        let transfer = m["transferMs"].as_i64().unwrap_or(0).max(1) as f64 / 1000.0;
        outln!(
            "  bytes {:.1} MB raw, {:.1} MB on the wire, {:.0} MB/s",
            raw as f64 / 1e6,
            wire as f64 / 1e6,
            raw as f64 / 1e6 / transfer
        );
    }
    Ok(match s(&m["status"]).as_str() {
        "completed" => 0,
        "rolled_back" => 2,
        _ => 1,
    })
}

/// A process's status for people: an unknown one with when its node last reported, a held copy
/// with its migration.
fn status_of(p: &Value) -> String {
    match (s(&p["status"]).as_str(), &p["lastSeen"], &p["heldForMigration"]) {
        ("unknown", Value::String(at), _) => format!("unknown (node last seen {at})"),
        (st, _, Value::String(m)) => format!("{st} (held for {m})"),
        (st, _, _) => st.to_string(),
    }
}

fn print_process(p: &Value, json: bool, what: &str) {
    if json {
        outln!("{p}");
    } else {
        let address = p["address"]
            .as_str()
            .map(|a| format!(", address {}", printable(a, false)))
            .unwrap_or_default();
        outln!(
            "{} {what} ({} on {}, {}{address})",
            s(&p["id"]),
            s(&p["name"]),
            s(&p["serverId"]),
            s(&p["status"])
        );
    }
}

/// A JSON value as a table cell or part of a line, with [`printable`] strings.
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => printable(s, false).into_owned(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn mib(v: &Value) -> String {
    format!("{}M", v.as_u64().unwrap_or(0) >> 20)
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let out: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = w[i])).collect();
        outln!("{}", out.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// The token to send: the flag or FERRY_TOKEN, else the first readable token file.
fn token(api: &Api) -> Option<String> {
    if let Some(t) = &api.token {
        return Some(t.trim().to_string());
    }
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    if let Some(f) = std::env::var_os("FERRY_TOKEN_FILE") {
        files.push(f.into());
    }
    if let Some(home) = std::env::var_os("HOME") {
        files.push(std::path::Path::new(&home).join(".config/ferry/token"));
    }
    files.push(crate::up::DEFAULT_OPERATOR_TOKEN.into());
    files.iter().find_map(|f| {
        let t = std::fs::read_to_string(f).ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_string())
    })
}

/// The migration's phases as a bar: done ones filled, the current one marked.
fn phase_bar(current: &str) -> String {
    const PHASES: [&str; 7] =
        ["preflight", "freeze", "checkpoint", "transfer", "restore", "commit", "post_copy"];
    let at = PHASES.iter().position(|p| *p == current);
    let cells: String = (0..PHASES.len() - 1)
        .map(|i| match at {
            Some(a) if i < a => '#',
            Some(a) if i == a => '>',
            _ => '.',
        })
        .collect();
    format!("[{cells}]")
}

/// A minimal HTTP/1.1 client for the REST API (one request per connection).
struct Client {
    host: String,
    /// `Authorization: Bearer ...` header line, or empty.
    auth: String,
}

impl Client {
    fn new(api: &str, token: Option<String>) -> anyhow::Result<Client> {
        let host = api
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--api {api:?} must look like http://HOST:PORT"))?
            .trim_end_matches('/')
            .to_string();
        if token.as_deref().is_some_and(|t| t.contains(['\r', '\n'])) {
            bail!("the token has a line break in it; give the token alone");
        }
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        Ok(Client { host, auth })
    }

    fn connect(&self) -> anyhow::Result<TcpStream> {
        TcpStream::connect(&self.host).with_context(|| {
            format!("the ferry API at http://{} is unreachable (is `ferry up` running? set --api or FERRY_API)", self.host)
        })
    }

    /// One request; the JSON answer, or the API's error message as the error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut s = self.connect()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.auth,
            body.len()
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, text) =
            raw.split_once("\r\n\r\n").ok_or_else(|| anyhow!("the API sent no HTTP response"))?;
        let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        if !(200..300).contains(&code) {
            let msg = v["error"]["message"]
                .as_str()
                .map(|m| printable(m, false).into_owned())
                .unwrap_or_else(|| format!("HTTP {code}"));
            bail!("{msg}");
        }
        Ok(v)
    }

    /// Follows the event stream; `each` returns false to stop.
    fn events(&self, mut each: impl FnMut(Value) -> bool) -> anyhow::Result<()> {
        let mut s = self.connect()?;
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: {}\r\n{}Accept: text/event-stream\r\n\r\n",
            self.host, self.auth
        )?;
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status)?;
        let code: u16 = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if code != 200 {
            let mut rest = String::new();
            let _ = r.read_to_string(&mut rest);
            let msg = rest
                .split_once("\r\n\r\n")
                .and_then(|(_, b)| serde_json::from_str::<Value>(b).ok())
                .and_then(|v| {
                    v["error"]["message"].as_str().map(|m| printable(m, false).into_owned())
                })
                .unwrap_or_else(|| format!("HTTP {code}"));
            bail!("{msg}");
        }
        for line in r.lines() {
            if let Some(d) = line?.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str::<Value>(d.trim()) {
                    if !each(v) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        checkpoint_row, parse_deadline, parse_every, parse_lines, printable, reader_gone, s,
        write_outcome, Lines, Written,
    };
    use std::io::Write;

    #[test]
    fn a_write_to_a_pipe_nobody_reads_is_closed_not_a_failure() {
        // As `ferry ps | head -1` leaves stdout once head has its line (tests, like ferry,
        // run with SIGPIPE ignored, so the write fails with EPIPE).
        let (reader, mut writer) = std::io::pipe().unwrap();
        assert_eq!(write_outcome(writeln!(writer, "ID  NAME")), Written::Done);
        drop(reader);
        assert_eq!(write_outcome(writeln!(writer, "w-1  sleep")), Written::Closed);
        // `ferry logs -f` asks without writing.
        let (reader, writer) = std::io::pipe().unwrap();
        assert!(!reader_gone(std::os::fd::AsFd::as_fd(&writer)));
        drop(reader);
        assert!(reader_gone(std::os::fd::AsFd::as_fd(&writer)));
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(write_outcome(Err(full)), Written::Failed(e) if e.contains("space")));
    }

    #[test]
    fn control_characters_are_shown_escaped_not_sent_to_the_terminal() {
        assert_eq!(printable("redis-server *:6379", false), "redis-server *:6379");
        assert_eq!(printable("héllo wörld ✓", false), "héllo wörld ✓");
        assert_eq!(
            printable("\x1b]0;pwned\x07x\x1b[2J", false),
            "\\u{1b}]0;pwned\\u{7}x\\u{1b}[2J"
        );
        assert_eq!(printable("a\rb\nc\td\u{7f}\u{9b}", false), "a\\rb\\nc\\td\\u{7f}\\u{9b}");
        // Tabs stay in log lines; bidirectional overrides never.
        assert_eq!(printable("a\tb\u{202e}cba", true), "a\tb\\u{202e}cba");
        // Every string a table or a line shows goes through it.
        assert_eq!(s(&serde_json::json!("evil\x1b[31m")), "evil\\u{1b}[31m");
        assert_eq!(s(&serde_json::json!(42)), "42");
    }

    #[test]
    fn log_lines_read_as_tail_reads_them() {
        assert_eq!(parse_lines("10"), Ok(Lines::Last(10)));
        assert_eq!(parse_lines("0"), Ok(Lines::Last(0)));
        assert_eq!(parse_lines("+1"), Ok(Lines::From(1)));
        assert_eq!(parse_lines("+250"), Ok(Lines::From(250)));
        for bad in ["", "+", "-5", "1k", "+-1", "ten", "99999999999999999999999"] {
            assert!(parse_lines(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn checkpoint_intervals_read_seconds_and_minutes_within_5s_to_a_day() {
        assert_eq!(parse_every("30"), Ok(30));
        assert_eq!(parse_every("30s"), Ok(30));
        assert_eq!(parse_every("2m"), Ok(120));
        assert_eq!(parse_every("24h"), Ok(86_400));
        for bad in ["4", "0s", "25h", "30x", "", "1.5m", "-30"] {
            assert!(parse_every(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_every("4s").unwrap_err().contains("5 s to 1 day"));
    }

    #[test]
    fn a_checkpoint_row_has_its_size_freeze_and_holders() {
        let k = serde_json::json!({
            "id": "c-1", "seq": 3, "takenAt": "2026-12-08T00:00:00.000Z", "bytes": 12_500_000,
            "rawBytes": 40_000_000, "freezeMs": 42, "node": "n1", "holders": ["n1", "s3"],
        });
        assert_eq!(
            checkpoint_row(&k),
            ["c-1", "3", "2026-12-08T00:00:00.000Z", "12.5 MB", "42 ms", "n1,s3"]
        );
    }

    #[test]
    fn deadlines_read_seconds_minutes_and_hours() {
        assert_eq!(parse_deadline("90"), Ok(90));
        assert_eq!(parse_deadline("90s"), Ok(90));
        assert_eq!(parse_deadline("2m"), Ok(120));
        assert_eq!(parse_deadline("1h"), Ok(3600));
        for bad in ["2x", "m", "-1m", "1.5m", "", "99999999999999999h"] {
            assert!(parse_deadline(bad).is_err(), "{bad:?} accepted");
        }
    }
}
