//! `ferry bench checkpoint`: what protecting a workload costs and what it buys (docs/failover.md).
//!
//! Three network-namespace hosts, each with an agent registered with a coordinator (mutual TLS,
//! a fresh cluster key, heartbeats every 200 ms, `--failover-grace-secs`) whose REST gateway the
//! benchmark drives. memhog SIZE `write` (rewriting pages all the time) is started on host 0
//! through REST with `checkpointIntervalSeconds`. Then:
//!
//! - each periodic checkpoint, as the coordinator lists it (`GET /api/processes/{id}/checkpoints`,
//!   polled every 100 ms): its freeze, bytes stored (zstd, sealed) and raw, holders, and the time
//!   from its `takenAt` (the freeze's start) until the coordinator listed it with its holders;
//!   the agent's own total (freeze, seal, ship) from its `checkpoint taken` log line; the
//!   workload's RSS;
//! - the node's loss: every process in host 0's network namespace SIGKILLed (agent, fd store,
//!   workload), then the time until the REST API shows the workload `running` on another node,
//!   split by the coordinator's `failover_started` / `failover_completed` events into detection
//!   (the grace) and restore; the restored memhog checks every byte (SIGUSR1, `verify ok`) before
//!   the run counts.
//!
//! Everything (hosts, coordinator, agents, workloads) is removed on exit, on an error and on
//! Ctrl-C. `FERRY_BENCH_SAVE_LOGS=DIR` keeps a copy of the coordinator's and agents' logs;
//! `FERRY_BENCH_KEEP` keeps the work directory (/dev/shm/ferry-bench-PID).

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::{
    chrono_like_now, crate_host_facts, criu_version, kill_tree, median, need, qemu_running,
    remove_stale_warm_ups, run as run_cmd,
};
use crate::hosts::Net;

const MEMHOG_C: &str = include_str!("../../tests/workloads/memhog.c");
const BRIDGE: &str = "fbckpt";
/// The hosts' /24 (`bench migrate` uses 10.231.250, `bench network` 10.231.251, the tests
/// 10.231.1-240).
const PREFIX: &str = "10.231.252";
const HOSTS: [&str; 3] = ["ferry-bck-0", "ferry-bck-1", "ferry-bck-2"];
const MOUNT: &str = "/var/lib/ferry-bench-ckpt-data";
const TOKEN: &str = "bench-checkpoint-operator-token-0123456789";
const HEARTBEAT_MS: u64 = 200;

#[derive(clap::Args, Debug, Clone)]
pub struct CheckpointBenchArgs {
    /// Memory of the protected process, MiB (memhog SIZE write).
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Its checkpoint interval, seconds (checkpointIntervalSeconds; 5 to 86400).
    #[arg(long, default_value_t = 30)]
    pub interval_secs: u32,
    /// How many periodic checkpoints to measure before its node is powered off.
    #[arg(long, default_value_t = 4)]
    pub checkpoints: usize,
    /// The coordinator's --failover-grace-secs.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "docs/bench/checkpoint.md")]
    pub report: PathBuf,
}

/// What stops everything the benchmark started: on the way out and on Ctrl-C.
#[derive(Clone)]
struct Teardown {
    pids: Arc<Mutex<Vec<i32>>>,
    done: Arc<Mutex<bool>>,
}

impl Teardown {
    fn new() -> Teardown {
        Teardown { pids: Arc::new(Mutex::new(Vec::new())), done: Arc::new(Mutex::new(false)) }
    }

    fn add(&self, pid: i32) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }

    /// Kills the children started (with their descendants) and every process on the hosts, then
    /// removes the hosts and the bridge. Once.
    fn run(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        *done = true;
        for &pid in self.pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            kill_tree(pid);
        }
        for h in HOSTS {
            power_off(&Path::new("/run/netns").join(h));
        }
        for h in HOSTS {
            let _ = Command::new("ip").args(["netns", "del", h]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stderr(Stdio::null()).status();
    }
}

/// Runs the teardown when dropped (on an error too).
struct TeardownOnDrop(Teardown);

impl Drop for TeardownOnDrop {
    fn drop(&mut self) {
        self.0.run();
    }
}

/// SIGKILLs every process in the network namespace at `netns`: the host is gone as if its power
/// was cut. Returns how many were killed.
fn power_off(netns: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(ino) = std::fs::metadata(netns).map(|m| m.ino()) else { return 0 };
    let mut killed = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    killed
}

/// Milliseconds since the epoch, by the wall clock (the coordinator's and agents' times are
/// wall-clock milliseconds of this same machine).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-27T10:15:39.123Z` → milliseconds since the epoch.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if s.as_bytes().get(19) == Some(&b'.') {
        let frac: String = s[20..].chars().take_while(|c| c.is_ascii_digit()).collect();
        let f: i64 = frac.parse().ok()?;
        match frac.len() {
            0 => 0,
            1 => f * 100,
            2 => f * 10,
            3 => f,
            n => f / 10_i64.pow(n as u32 - 3),
        }
    } else {
        0
    };
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

/// One HTTP/1.1 request to the gateway with the operator token: (status code, JSON body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("cannot connect to the gateway at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("not an HTTP response")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("status")?;
    Ok((code, serde_json::from_str(body).unwrap_or(serde_json::Value::Null)))
}

fn get(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (code, v) = http(addr, "GET", path, None)?;
    if code != 200 {
        bail!("GET {path}: {code} {v}");
    }
    Ok(v)
}

/// The workload's log lines through the gateway.
fn log_texts(gw: &str, id: &str) -> Vec<String> {
    get(gw, &format!("/api/processes/{id}/logs?limit=10000"))
        .ok()
        .and_then(|l| {
            Some(
                l["lines"]
                    .as_array()?
                    .iter()
                    .filter_map(|x| x["text"].as_str().map(str::to_string))
                    .collect(),
            )
        })
        .unwrap_or_default()
}

fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One periodic checkpoint.
#[derive(Debug, Clone, Default)]
struct Ck {
    id: String,
    seq: u64,
    taken_at_ms: i64,
    /// When the coordinator first listed it (with its holders: an agent reports a checkpoint
    /// once it has shipped it).
    listed_ms: i64,
    freeze_ms: f64,
    bytes: u64,
    raw_bytes: u64,
    holders: Vec<String>,
    /// The workload's RSS as last reported before it was listed.
    rss: u64,
    /// The agent's own total for it (freeze, seal, ship), from its log.
    agent_ms: Option<f64>,
}

impl Ck {
    /// From the freeze's start until the coordinator listed it with its holders, ms.
    fn shipped_ms(&self) -> f64 {
        (self.listed_ms - self.taken_at_ms) as f64
    }
}

/// The node's loss and the failover.
#[derive(Debug, Clone, Default)]
struct Loss {
    killed: usize,
    /// From the power-off until the REST API showed the workload running elsewhere, ms.
    to_running_ms: f64,
    /// From the power-off until the coordinator's `failover_started` event, ms.
    detect_ms: Option<f64>,
    /// From `failover_started` until `failover_completed`, ms.
    restore_ms: Option<f64>,
    target: String,
    from_checkpoint: String,
    lost_seconds: Option<i64>,
    down_seconds: Option<i64>,
    attempts: Option<i64>,
    /// The newest checkpoint's age at the power-off, ms.
    newest_age_ms: f64,
    verify: String,
    rss_after: u64,
    /// The target agent's own figures of the restore: receiving and verifying the object's
    /// snapshot, and CRIU's restore, ms.
    target_verify_ms: Option<f64>,
    target_restore_ms: Option<f64>,
}

pub fn run(args: CheckpointBenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (network namespaces, CRIU)");
    }
    for tool in ["criu", "gcc", "unshare", "nsenter", "ip", "mount"] {
        need(tool)?;
    }
    if !(5..=86_400).contains(&args.interval_secs) {
        bail!("--interval-secs must be 5 to 86400");
    }
    if args.checkpoints == 0 || args.size_mib == 0 {
        bail!("--checkpoints and --size-mib must be at least 1");
    }
    if args.grace_secs < 3 {
        bail!("--grace-secs must be at least 3 (three heartbeats of {HEARTBEAT_MS} ms + 2 s)");
    }
    let load_before = load1();
    remove_stale_warm_ups();
    let work = PathBuf::from(format!("/dev/shm/ferry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let teardown = Teardown::new();
    {
        // Ctrl-C (or SIGTERM): tear everything down, then exit.
        let (teardown, work) = (teardown.clone(), work.clone());
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) =
                    (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            eprintln!("interrupted: tearing the benchmark's hosts down");
            teardown.run();
            if std::env::var_os("FERRY_BENCH_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&work);
            }
            std::process::exit(130);
        });
    }
    let result = bench(&args, &work, &teardown);
    teardown.run();
    if let Some(dir) = std::env::var_os("FERRY_BENCH_SAVE_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for name in ["coordinator.log", "agent0.log", "agent1.log", "agent2.log"] {
            let _ = std::fs::copy(work.join(name), dir.join(name));
        }
        eprintln!("logs copied to {}", dir.display());
    }
    if std::env::var_os("FERRY_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    let (cks, excluded, loss, busy) = result?;
    let env = Env { load_before, load_after: load1(), busy };
    crate::bench::write_report(&args.report, &render(&args, &cks, excluded, &loss, &env))
}

fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(format!("{ip}:0"))?.local_addr()?.port())
}

fn spawn_logged(
    mut cmd: Command,
    log: &Path,
    rust_log: &str,
    teardown: &Teardown,
) -> anyhow::Result<Child> {
    let child = cmd
        .env("RUST_LOG", std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| rust_log.into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        // Its own process group: a terminal's Ctrl-C reaches the benchmark, which tears down.
        .process_group(0)
        .spawn()?;
    teardown.add(child.id() as i32);
    Ok(child)
}

type Outcome = (Vec<Ck>, usize, Loss, Busy);

/// Other work seen on the machine while the benchmark ran (it shares two cores).
#[derive(Debug, Clone, Copy, Default)]
struct Busy {
    /// Another engineer's QEMU VMs (`qemu-system`).
    qemu: bool,
    /// Rust builds or tests (`cargo`, `rustc`): none of the benchmark's own.
    builds: bool,
}

impl Busy {
    fn sample(&mut self) {
        self.qemu |= qemu_running();
        self.builds |= ["cargo", "rustc"].iter().any(|name| {
            Command::new("pgrep")
                .args(["-x", name])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
    }
}

fn bench(args: &CheckpointBenchArgs, work: &Path, teardown: &Teardown) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe()?;
    std::fs::write(work.join("memhog.c"), MEMHOG_C)?;
    let memhog = work.join("memhog");
    run_cmd(
        Command::new("gcc").args(["-O2", "-o"]).arg(&memhog).arg(work.join("memhog.c")),
        "gcc memhog.c",
    )?;
    // The cluster's CA, certificates and checkpoint key, as `ferry certs` writes them.
    let tls = work.join("tls");
    for name in ["coordinator", "bench-0", "bench-1", "bench-2"] {
        ferry_proto::tls::issue_into(&tls, name, &[], 1).map_err(|e| anyhow::anyhow!(e))?;
    }
    ferry_agent::sys::fsmode::write(
        &tls.join("cluster.key"),
        format!("{}\n", ferry_agent::checkpoint::object::ClusterKey::generate_hex()).as_bytes(),
    )
    .context("cannot write the cluster key")?;

    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let net = Net::create(BRIDGE, PREFIX, &hosts)?;
    // Dropped before `net`: the hosts' processes are found by their namespaces.
    let _down = TeardownOnDrop(teardown.clone());
    let bridge_ip = format!("{PREFIX}.1");
    let (port, http_port) = (free_port(&bridge_ip)?, free_port(&bridge_ip)?);
    let gw = format!("{bridge_ip}:{http_port}");
    let coord_data = work.join("coordinator");
    std::fs::create_dir_all(&coord_data)?;
    let mut cmd = Command::new(&exe);
    cmd.args(["coordinator", "--listen", &format!("{bridge_ip}:{port}")])
        .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
        .args(["--failover-grace-secs", &args.grace_secs.to_string()])
        .arg("--tls-dir")
        .arg(&tls)
        .args(["--http", &gw])
        .arg("--data-dir")
        .arg(&coord_data)
        .env("FERRY_TOKENS", format!("operator:{TOKEN}"));
    let _coord = spawn_logged(cmd, &work.join("coordinator.log"), "info", teardown)
        .context("cannot start the coordinator")?;
    let url = format!("https://{bridge_ip}:{port}");
    std::fs::create_dir_all(MOUNT)?;
    for i in 0..3 {
        let data = work.join(format!("host{i}"));
        std::fs::create_dir_all(&data)?;
        let a = crate::bench::agent_args(&net, i, MOUNT, &tls, &["--coordinator", &url]);
        let cmd = net.command_on(i, &data, Path::new(MOUNT), &exe, &a);
        spawn_logged(cmd, &work.join(format!("agent{i}.log")), "warn,ferry_agent=info", teardown)
            .context("cannot start an agent")?;
    }
    wait("three agents online", Duration::from_secs(60), || {
        let s = get(&gw, "/api/servers").ok()?;
        let online = s.as_array()?.iter().filter(|n| n["status"] == "online").count();
        (online == 3).then_some(())
    })?;
    let mut busy = Busy::default();
    busy.sample();

    eprintln!(
        "starting memhog {} write on bench-0, checkpointed every {} s",
        args.size_mib, args.interval_secs
    );
    let body = serde_json::json!({
        "name": "memhog",
        "command": [memhog.to_string_lossy(), args.size_mib.to_string(), "write"],
        "serverId": "bench-0",
        "memoryBytes": args.size_mib << 20,
        "checkpointIntervalSeconds": args.interval_secs,
    });
    let (code, p) = http(&gw, "POST", "/api/processes", Some(&body))?;
    if code != 201 {
        bail!("POST /api/processes: {code} {p}");
    }
    let id = p["id"].as_str().context("the new process's id")?.to_string();
    let ready_ms = wait("memhog ready", Duration::from_secs(300), || {
        log_texts(&gw, &id).iter().any(|l| l.starts_with("memhog ready")).then(now_ms)
    })?;
    eprintln!("{id} ready");

    // Every checkpoint as the coordinator first lists it.
    let mut seen: Vec<Ck> = Vec::new();
    let mut rss = 0;
    let timeout = Duration::from_secs(
        60 + args.interval_secs as u64 * (args.checkpoints as u64 + 2) + 30 * args.size_mib / 1024,
    );
    let deadline = Instant::now() + timeout;
    let counted = |seen: &[Ck]| seen.iter().filter(|c| c.taken_at_ms >= ready_ms).count();
    while counted(&seen) < args.checkpoints {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {} checkpoints", args.checkpoints);
        }
        if let Ok(p) = get(&gw, &format!("/api/processes/{id}")) {
            // (`paused` while a checkpoint's freeze holds it.)
            if p["status"] == "exited" || p["status"] == "failed" {
                bail!("the workload is no longer running: {p}");
            }
            rss = p["memoryBytes"].as_u64().unwrap_or(rss);
        }
        let list = get(&gw, &format!("/api/processes/{id}/checkpoints"))?;
        let listed_ms = now_ms();
        for k in list["checkpoints"].as_array().into_iter().flatten() {
            let kid = k["id"].as_str().unwrap_or_default();
            if kid.is_empty() || seen.iter().any(|c| c.id == kid) {
                continue;
            }
            let ck = Ck {
                id: kid.to_string(),
                seq: k["seq"].as_u64().unwrap_or(0),
                taken_at_ms: k["takenAt"].as_str().and_then(parse_rfc3339).unwrap_or(0),
                listed_ms,
                freeze_ms: k["freezeMs"].as_f64().unwrap_or(0.0),
                bytes: k["bytes"].as_u64().unwrap_or(0),
                raw_bytes: k["rawBytes"].as_u64().unwrap_or(0),
                holders: k["holders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect(),
                rss,
                agent_ms: None,
            };
            eprintln!(
                "checkpoint {} (seq {}): freeze {:.0} ms, {:.1} MB stored of {:.1} MB raw, \
                 holders {:?}, listed {:.0} ms after its freeze began{}",
                ck.id,
                ck.seq,
                ck.freeze_ms,
                ck.bytes as f64 / 1e6,
                ck.raw_bytes as f64 / 1e6,
                ck.holders,
                ck.shipped_ms(),
                if ck.taken_at_ms < ready_ms {
                    " (before memhog was ready: not counted)"
                } else {
                    ""
                }
            );
            seen.push(ck);
        }
        busy.sample();
        std::thread::sleep(Duration::from_millis(100));
    }
    seen.sort_by_key(|c| c.taken_at_ms);
    let excluded = seen.len() - counted(&seen);
    let mut cks: Vec<Ck> = seen.into_iter().filter(|c| c.taken_at_ms >= ready_ms).collect();
    cks.truncate(args.checkpoints);
    let newest = cks.last().cloned().context("no checkpoint")?;
    if newest.holders.iter().filter(|h| h.as_str() != "bench-0").count() == 0 {
        bail!("the newest checkpoint has no holder off bench-0: {:?}", newest.holders);
    }

    // The node is lost: its agent, fd store and workload at once.
    let lost_ms = now_ms();
    let lost = Instant::now();
    let killed = power_off(&net.netns(0));
    eprintln!("bench-0 powered off ({killed} processes killed)");
    let p = wait("the workload to run on another node", Duration::from_secs(600), || {
        let p = get(&gw, &format!("/api/processes/{id}")).ok()?;
        (p["status"] == "running" && p["serverId"] != "bench-0").then_some(p)
    })?;
    let to_running_ms = lost.elapsed().as_secs_f64() * 1000.0;
    let target = p["serverId"].as_str().unwrap_or_default().to_string();
    eprintln!("{id} runs on {target} {:.0} ms after bench-0 was lost", to_running_ms);
    let mut loss = Loss {
        killed,
        to_running_ms,
        target,
        newest_age_ms: (lost_ms - newest.taken_at_ms) as f64,
        ..Default::default()
    };
    // The coordinator's events of the failover.
    let events = wait("the failover_completed event", Duration::from_secs(30), || {
        let e = get(&gw, &format!("/api/logs?process={id}&limit=200")).ok()?;
        let e = e.as_array()?.clone();
        e.iter().any(|x| x["kind"] == "failover_completed").then_some(e)
    })?;
    let at = |kind: &str| {
        events
            .iter()
            .filter(|x| x["kind"] == kind)
            .filter_map(|x| x["at"].as_str().and_then(parse_rfc3339))
            .max()
    };
    let (started, completed) = (at("failover_started"), at("failover_completed"));
    loss.detect_ms = started.map(|s| (s - lost_ms) as f64);
    loss.restore_ms = started.zip(completed).map(|(s, c)| (c - s) as f64);
    if let Some(done) = events.iter().find(|x| x["kind"] == "failover_completed") {
        let d = &done["data"];
        loss.lost_seconds = d["lostSeconds"].as_i64();
        loss.down_seconds = d["downSeconds"].as_i64();
        loss.attempts = d["attempts"].as_i64();
        loss.from_checkpoint = d["checkpointId"].as_str().unwrap_or_default().to_string();
    }
    // Every byte of the restored memory checked.
    let pid = p["pid"].as_i64().context("the restored workload's pid")? as i32;
    let before = log_texts(&gw, &id).iter().filter(|l| l.starts_with("verify ")).count();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let verdict = wait("the restored memhog to verify", Duration::from_secs(300), || {
        log_texts(&gw, &id).into_iter().filter(|l| l.starts_with("verify ")).nth(before)
    })?;
    eprintln!("restored memhog: {verdict}");
    if !verdict.starts_with("verify ok") {
        bail!("the restored memhog failed its check: {verdict}");
    }
    loss.verify = verdict;
    loss.rss_after =
        get(&gw, &format!("/api/processes/{id}"))?["memoryBytes"].as_u64().unwrap_or(0);
    busy.sample();

    // The agent's own total of each checkpoint (freeze, seal, ship).
    let log = std::fs::read_to_string(work.join("agent0.log")).unwrap_or_default();
    for line in
        log.lines().map(crate::bench_network::strip_ansi).filter(|l| l.contains("checkpoint taken"))
    {
        if let Some(c) = cks.iter_mut().find(|c| line.contains(&c.id)) {
            c.agent_ms = field(&line, " ms=");
        }
    }
    let target = loss.target.strip_prefix("bench-").unwrap_or("?");
    let log = std::fs::read_to_string(work.join(format!("agent{target}.log"))).unwrap_or_default();
    if let Some(line) = log
        .lines()
        .map(crate::bench_network::strip_ansi)
        .find(|l| l.contains("checkpoint restored"))
    {
        loss.target_verify_ms = field(&line, "verify_ms=");
        loss.target_restore_ms = field(&line, "restore_ms=");
    }
    let _ = http(&gw, "POST", &format!("/api/processes/{id}/stop"), None);
    Ok((cks, excluded, loss, busy))
}

/// The number after `key` in a log line.
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit() && c != '.').next()?.parse().ok()
}

struct Env {
    load_before: String,
    load_after: String,
    busy: Busy,
}

fn mb(b: f64) -> String {
    format!("{:.1}", b / 1e6)
}

/// min / median / max of `v`, formatted by `f`.
fn spread(v: &[f64], f: impl Fn(f64) -> String) -> (String, String, String) {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (f(min), f(median(v.to_vec())), f(max))
}

fn render(
    args: &CheckpointBenchArgs,
    cks: &[Ck],
    excluded: usize,
    loss: &Loss,
    env: &Env,
) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "# Benchmark: checkpoints of a {} MiB process, and failover", args.size_mib);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "`ferry bench checkpoint --size-mib {} --interval-secs {} --checkpoints {} --grace-secs {}`, \
         run {}. Three network-namespace hosts on this machine, each with an agent registered with \
         one coordinator (mutual TLS, heartbeats every {HEARTBEAT_MS} ms, `--failover-grace-secs {}`, \
         default `--checkpoint-replicas 2` and `--checkpoint-keep 3`), driven through its REST \
         gateway. One protected process, tests/workloads/memhog.c `{} write` (a third random, a \
         third zero, a third text pages; it rewrites about 64 000 pages a second all the time), \
         started on bench-0 with `checkpointIntervalSeconds` {}. The agents' data directories \
         (where CRIU dumps and the objects are kept) are on tmpfs (/dev/shm), so no disk is in \
         the figures.",
        args.size_mib,
        args.interval_secs,
        args.checkpoints,
        args.grace_secs,
        chrono_like_now(),
        args.grace_secs,
        args.size_mib,
        args.interval_secs,
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Machine: {}. CRIU: {}.", crate_host_facts(), criu_version());
    let _ = writeln!(
        out,
        "Load average (1 min) {} before the run, {} after it.{}",
        env.load_before,
        env.load_after,
        match (env.busy.qemu, env.busy.builds) {
            (false, false) =>
                " This is a shared 2-core VM; no other engineer's QEMU VM (`qemu-system`) or \
                 Rust build (`cargo`, `rustc`) was seen during the run.",
            (true, false) =>
                " **Another engineer's QEMU VMs (`qemu-system`) were running during (part of) \
                 this run** on this shared 2-core VM: absolute times are slower and noisier than \
                 on a quiet machine.",
            (false, true) =>
                " **Other engineers' Rust builds (`cargo`, `rustc`) were running during (part \
                 of) this run** on this shared 2-core VM: absolute times are slower and noisier \
                 than on a quiet machine, and the spread between checkpoints of the same process \
                 is mostly that load.",
            (true, true) =>
                " **Other engineers' QEMU VMs (`qemu-system`) and Rust builds (`cargo`, \
                 `rustc`) were running during (part of) this run** on this shared 2-core VM: \
                 absolute times are slower and noisier than on a quiet machine, and the spread \
                 between checkpoints of the same process is mostly that load.",
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "## Periodic checkpoints");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| seq | taken at (UTC) | freeze ms | agent total ms | listed after ms | MB stored | MB raw | stored/raw | RSS MiB | holders |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for c in cks {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.0} | {} | {} | {:.2} | {:.0} | {} |",
            c.seq,
            ferry_gateway_time(c.taken_at_ms),
            c.freeze_ms,
            c.agent_ms.map(|m| format!("{m:.0}")).unwrap_or_else(|| "?".into()),
            c.shipped_ms(),
            mb(c.bytes as f64),
            mb(c.raw_bytes as f64),
            c.bytes as f64 / (c.raw_bytes as f64).max(1.0),
            c.rss as f64 / 1048576.0,
            c.holders.join(", "),
        );
    }
    let _ = writeln!(out);
    let freeze: Vec<f64> = cks.iter().map(|c| c.freeze_ms).collect();
    let bytes: Vec<f64> = cks.iter().map(|c| c.bytes as f64).collect();
    let raw: Vec<f64> = cks.iter().map(|c| c.raw_bytes as f64).collect();
    let shipped: Vec<f64> = cks.iter().map(Ck::shipped_ms).collect();
    let agent: Vec<f64> = cks.iter().filter_map(|c| c.agent_ms).collect();
    let _ = writeln!(out, "| over {} checkpoints | min | median | max |", cks.len());
    let _ = writeln!(out, "|---|---|---|---|");
    let row = |out: &mut String, name: &str, (a, b, c): (String, String, String)| {
        let _ = writeln!(out, "| {name} | {a} | {b} | {c} |");
    };
    let ms = |v: f64| format!("{v:.0}");
    row(&mut out, "freeze, ms", spread(&freeze, ms));
    row(&mut out, "MB stored (zstd, sealed)", spread(&bytes, mb));
    row(&mut out, "MB raw (CRIU images)", spread(&raw, mb));
    if !agent.is_empty() {
        row(&mut out, "agent total (freeze, seal, ship), ms", spread(&agent, ms));
    }
    row(&mut out, "takenAt → listed with its holders, ms", spread(&shipped, ms));
    let _ = writeln!(out);
    if excluded > 0 {
        let _ = writeln!(
            out,
            "{excluded} checkpoint(s) taken before memhog had filled its memory were left out."
        );
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## Node loss");
    let _ = writeln!(out);
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "?".into());
    let opti = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    let _ = writeln!(
        out,
        "bench-0 powered off ({} processes SIGKILLed: its agent, fd store and the workload) {:.0} ms \
         after the newest checkpoint's freeze began.",
        loss.killed, loss.newest_age_ms
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| | ms |");
    let _ = writeln!(out, "|---|---|");
    let _ = writeln!(
        out,
        "| power-off → `failover_started` (detection: the grace of {} s) | {} |",
        args.grace_secs,
        opt(loss.detect_ms)
    );
    let _ = writeln!(
        out,
        "| `failover_started` → `failover_completed` (restore on {}) | {} |",
        loss.target,
        opt(loss.restore_ms)
    );
    let _ = writeln!(
        out,
        "| **power-off → REST shows it `running` on {}** | **{:.0}** |",
        loss.target, loss.to_running_ms
    );
    if let Some(r) = loss.target_restore_ms {
        let _ = writeln!(
            out,
            "| of which CRIU's restore on {} (its agent's log; the object's snapshot verified as it \
             was received: {} ms after the last byte) | {r:.0} |",
            loss.target,
            loss.target_verify_ms.map(|v| format!("{v:.0}")).unwrap_or_else(|| "?".into())
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "The coordinator's `failover_completed` event: from checkpoint {}, `lostSeconds` {}, \
         `downSeconds` {} (whole seconds, counted from the node's last heartbeat), attempts {}. \
         The restored process: {:.0} MiB RSS (as its node last reported it), and its own check of every byte: `{}`.",
        loss.from_checkpoint,
        opti(loss.lost_seconds),
        opti(loss.down_seconds),
        opti(loss.attempts),
        loss.rss_after as f64 / 1048576.0,
        loss.verify
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "## Reading");
    let _ = writeln!(out);
    let (f_min, f_med, f_max) = spread(&freeze, ms);
    let ratio = median(bytes.clone()) / median(raw.clone()).max(1.0);
    let copies =
        cks.last().map(|c| c.holders.iter().filter(|h| h.as_str() != "s3").count()).unwrap_or(0);
    let _ = writeln!(
        out,
        "- Freeze: {f_min} / {f_med} / {f_max} ms (min / median / max) for {} MiB. There is no \
         incremental checkpoint yet: every checkpoint is a full CRIU dump of all the process's \
         memory, so the freeze grows with the memory, not with what changed since the last one \
         (docs/failover.md). The process runs again as soon as the dump is on the node; sealing \
         and shipping happen after the freeze.",
        args.size_mib
    );
    let _ = writeln!(
        out,
        "- Bytes: each object is {:.0} % of the raw images after zstd level 1 (zero pages left \
         out, then AES-256-GCM, whose overhead is negligible): memhog's random third does not \
         compress, its text third does. Each checkpoint is written {} times (the node and its \
         replicas), and each holder keeps the newest 3: shipping {} replicas of {} MB every {} s \
         is {:.1} MB/s of network for this one process.",
        ratio * 100.0,
        copies,
        copies.saturating_sub(1),
        mb(median(bytes.clone())),
        args.interval_secs,
        copies.saturating_sub(1) as f64 * median(bytes.clone()) / 1e6 / args.interval_secs as f64,
    );
    let _ = writeln!(
        out,
        "- Shipping: from the freeze's start until the coordinator listed the checkpoint with all \
         its holders (freeze, sealing, shipping to the replicas over mutual TLS, then the next \
         heartbeat's report, polled every 100 ms): median {} ms. What a failover can lose is that \
         much plus the interval.",
        ms(median(shipped.clone()))
    );
    let _ = writeln!(
        out,
        "- Failover: {:.0} ms from the power-off until the REST API showed the process running \
         elsewhere ≈ the grace ({} s, counted from the node's last heartbeat) + the restore \
         ({} ms: finding the object (the target holds a copy), verifying and decrypting it, \
         CRIU restore; like a stop-and-copy migration's by default, lazy: the process resumes \
         and its memory is filled in from the images right after, which is why memhog counted \
         `missing` pages) + at most a heartbeat until the target reports it. The detection is \
         about the grace: it counts from the node's last heartbeat (up to {HEARTBEAT_MS} ms \
         before the power-off), and the coordinator's sweep that notices runs periodically.",
        loss.to_running_ms,
        args.grace_secs,
        opt(loss.restore_ms)
    );
    out
}

fn ferry_gateway_time(ms: i64) -> String {
    // HH:MM:SS.mmm of the RFC 3339 form.
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.000Z"), Some(951_782_400_000));
        assert_eq!(parse_rfc3339("2026-11-27T10:15:39.123Z"), Some(1_795_774_539_123));
    }

    #[test]
    fn log_fields() {
        let l = "INFO checkpoint taken id=\"w-1\" freeze_ms=12 bytes=3 ms=456";
        assert_eq!(field(l, " ms="), Some(456.0));
        assert_eq!(field(l, "freeze_ms="), Some(12.0));
    }
}
