//! `ferry bench network`: what clients of a workload with its own address see while it moves.
//!
//! Redis (the Debian package's redis-server) runs with its own address on one of two
//! network-namespace hosts, grown to the given size with `DEBUG POPULATE`; N clients on a third
//! host (their sockets made in that host's namespace) each keep ONE TCP connection and INCR a key
//! of their own on it in a loop, timing every answer. The workload then moves back and forth
//! between the two hosts, stop-and-copy and post-copy in turn, the clients going on throughout.
//!
//! Per migration:
//! - each connection's stall: its longest wait for an answer among the requests that were
//!   outstanding between the migration request and a second after the migration ended (for
//!   post-copy, after the last page arrived); p50 and max over the connections, next to the
//!   migration's downtime as the agent reports it;
//! - resets: TCP segments with RST set to or from the workload's address on the bridge (tcpdump),
//!   and connections that failed on the client side (an error, an unexpected answer, a counter
//!   that did not go on by one);
//! - reconnects: after each migration every connection asks `CLIENT ID`; a different id than the
//!   one it had at the start would be a connection made anew;
//! - what the source agent logged on handing the address over (`held_packets`: the packets it
//!   held from before the freeze and sent on to the target), and the clients' host's TCP
//!   retransmissions (`/proc/net/snmp` in its namespace), which tell a stall from a retransmit
//!   timeout.
//!
//! Everything (hosts, agents, the workload, tcpdump) is removed on exit, also on an error.
//! `FERRY_BENCH_SAVE_LOGS=DIR` keeps a copy of the agents' logs there; `FERRY_BENCH_LOG` sets
//! their `RUST_LOG` (default `warn,ferry_agent=info`, which the report's hand-over figures need).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_proto::agent as pb;
use ferry_proto::agent::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::bench::{
    chrono_like_now, connect, crate_host_facts, criu_version, log_lines, median, need,
    qemu_running, remove_stale_warm_ups, start_agents,
};
use crate::hosts::Net;

const BRIDGE: &str = "fbnet";
/// The hosts' /24 (`ferry bench migrate` uses 10.231.250, the tests 10.231.1-240).
const PREFIX: &str = "10.231.251";
const HOSTS: [&str; 3] = ["ferry-bnet-a", "ferry-bnet-b", "ferry-bnet-c"];
/// Host index of the clients.
const CLIENT_HOST: usize = 2;
const REDIS: &str = "/usr/bin/redis-server";
const REDIS_PORT: u16 = 6379;
/// The goal's allowance over the downtime.
const SLACK_MS: f64 = 250.0;

#[derive(clap::Args, Debug, Clone)]
pub struct NetworkBenchArgs {
    /// Memory of the Redis process to reach before the clients connect, MiB (RSS).
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Client connections, each on its own thread.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Migrations per mode (medians are reported); the workload alternates between the hosts.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Pause of each client between an answer and its next INCR, ms.
    #[arg(long, default_value_t = 10)]
    pub interval_ms: u64,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "docs/bench/network.md")]
    pub report: PathBuf,
}

/// One Redis connection, spoken in RESP (only the one-line answers this benchmark asks for).
struct Redis {
    out: TcpStream,
    inp: BufReader<TcpStream>,
}

impl Redis {
    fn new(s: TcpStream, timeout: Duration) -> std::io::Result<Redis> {
        s.set_read_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(Redis { out: s.try_clone()?, inp: BufReader::new(s) })
    }

    fn cmd(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            let _ = write!(req, "${}\r\n{a}\r\n", a.len());
        }
        self.out.write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.inp.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        Ok(line.trim_end().to_string())
    }
}

/// `n` TCP connections to `addr` made from inside the network namespace at `netns`: the sockets
/// belong to that namespace for good, whichever thread uses them.
fn connect_from(netns: &Path, addr: &str, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let (netns, addr) = (netns.to_path_buf(), addr.to_string());
    std::thread::spawn(move || -> anyhow::Result<Vec<TcpStream>> {
        let ns = std::fs::File::open(&netns)?;
        // SAFETY: setns on this short-lived thread only; the fd is open.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns into the clients' host");
        }
        let sa: std::net::SocketAddr = addr.parse()?;
        (0..n)
            .map(|_| {
                TcpStream::connect_timeout(&sa, Duration::from_secs(5))
                    .with_context(|| format!("cannot connect to {sa}"))
            })
            .collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
}

/// What one client saw.
#[derive(Default)]
struct ConnLog {
    /// (sent, answered) of every INCR.
    answers: Vec<(Instant, Instant)>,
    /// The connection's failure and when it happened (the loop ends there).
    error: Option<(Instant, String)>,
    /// The last INCR answer (the key's counter).
    last: i64,
    /// `CLIENT ID` at the start.
    id: String,
    /// Checks of `CLIENT ID` (see [`Clients::check_ids`]): (round, whether it differed).
    id_checks: Vec<(u64, bool)>,
}

/// The client connections and their threads.
struct Clients {
    stop: Arc<AtomicBool>,
    /// Bumped to have every client ask `CLIENT ID` once before its next INCR.
    id_round: Arc<AtomicU64>,
    logs: Vec<Arc<Mutex<ConnLog>>>,
    threads: Vec<std::thread::JoinHandle<Redis>>,
}

impl Clients {
    fn start(conns: Vec<TcpStream>, interval: Duration) -> anyhow::Result<Clients> {
        let stop = Arc::new(AtomicBool::new(false));
        let id_round = Arc::new(AtomicU64::new(0));
        let mut c = Clients { stop, id_round, logs: Vec::new(), threads: Vec::new() };
        for (i, s) in conns.into_iter().enumerate() {
            // A stuck connection ends its loop (as an error) rather than the benchmark hanging.
            let mut r = Redis::new(s, Duration::from_secs(30))?;
            let id = r.cmd(&["CLIENT", "ID"])?;
            if !id.starts_with(':') {
                bail!("CLIENT ID answered {id:?}");
            }
            let log = Arc::new(Mutex::new(ConnLog { id, ..Default::default() }));
            let (stop, round, l) = (c.stop.clone(), c.id_round.clone(), log.clone());
            let key = format!("client:{i}");
            c.threads.push(
                std::thread::Builder::new()
                    .name(format!("client-{i}"))
                    .spawn(move || client_loop(r, key, interval, stop, round, l))?,
            );
            c.logs.push(log);
        }
        Ok(c)
    }

    /// Has every live client check its `CLIENT ID` and waits until all did.
    fn check_ids(&self) -> anyhow::Result<()> {
        let round = self.id_round.fetch_add(1, Ordering::SeqCst) + 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = self.logs.iter().all(|l| {
                let l = l.lock().unwrap_or_else(|e| e.into_inner());
                l.error.is_some() || l.id_checks.iter().any(|(r, _)| *r == round)
            });
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the clients did not check their CLIENT ID within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every live client has had an answer to a request sent after `t`.
    fn answered_after(&self, t: Instant) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = self.logs.iter().all(|l| {
                let l = l.lock().unwrap_or_else(|e| e.into_inner());
                l.error.is_some() || l.answers.last().is_some_and(|(sent, _)| *sent >= t)
            });
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("some clients had no answer within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends every loop; returns each connection (a failed one too) with its index and log.
    fn finish(mut self) -> Vec<(usize, Redis, Arc<Mutex<ConnLog>>)> {
        self.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut self.threads);
        threads
            .into_iter()
            .zip(self.logs.clone())
            .enumerate()
            .filter_map(|(i, (t, l))| Some((i, t.join().ok()?, l)))
            .collect()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// INCRs `key` on `r` until `stop`, `interval` apart, timing each answer; asks `CLIENT ID` once
/// whenever `id_round` moves on.
fn client_loop(
    mut r: Redis,
    key: String,
    interval: Duration,
    stop: Arc<AtomicBool>,
    id_round: Arc<AtomicU64>,
    log: Arc<Mutex<ConnLog>>,
) -> Redis {
    let mut round = 0;
    let fail = |why: String| {
        log.lock().unwrap_or_else(|e| e.into_inner()).error = Some((Instant::now(), why));
    };
    while !stop.load(Ordering::SeqCst) {
        let want = id_round.load(Ordering::SeqCst);
        if want != round {
            round = want;
            match r.cmd(&["CLIENT", "ID"]) {
                Ok(id) => {
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    let changed = id != l.id;
                    l.id_checks.push((round, changed));
                }
                Err(e) => {
                    fail(format!("CLIENT ID: {e}"));
                    break;
                }
            }
            continue;
        }
        let sent = Instant::now();
        match r.cmd(&["INCR", &key]) {
            Ok(v) if v.starts_with(':') => {
                let answered = Instant::now();
                let n: i64 = v[1..].parse().unwrap_or(i64::MIN);
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                if n != l.last + 1 {
                    let why = format!("INCR answered {n} after {}", l.last);
                    drop(l);
                    fail(why);
                    break;
                }
                l.last = n;
                l.answers.push((sent, answered));
            }
            Ok(other) => {
                fail(format!("INCR answered {other:?}"));
                break;
            }
            Err(e) => {
                fail(format!("INCR: {e}"));
                break;
            }
        }
        std::thread::sleep(interval);
    }
    r
}

/// tcpdump on the bridge, keeping every TCP segment to or from the workload's address with RST
/// set, each line with the moment this process read it.
struct Resets {
    child: Child,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Resets {
    fn capture(bridge: &str, addr: &str) -> anyhow::Result<Resets> {
        let child = Command::new("tcpdump")
            .args(["-i", bridge, "-l", "-n", "-tt"])
            .arg(format!("host {addr} and tcp[tcpflags] & tcp-rst != 0"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start tcpdump")?;
        // Killed on drop from here on.
        let mut resets = Resets { child, seen: Arc::new(Mutex::new(Vec::new())) };
        let stderr = resets.child.stderr.take().context("tcpdump's stderr")?;
        let stdout = resets.child.stdout.take().context("tcpdump's stdout")?;
        let mut err = BufReader::new(stderr);
        let mut listening = false;
        for _ in 0..5 {
            let mut line = String::new();
            if err.read_line(&mut line)? == 0 {
                break;
            }
            if line.contains("listening") {
                listening = true;
                break;
            }
        }
        if !listening {
            bail!("tcpdump did not start listening on {bridge}");
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while err.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let seen = resets.seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim().is_empty() {
                    continue;
                }
                seen.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), line));
            }
        });
        Ok(resets)
    }

    /// The resets read between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, l)| l.clone()).collect()
    }

    /// Stops the capture (after letting what is in flight arrive); every reset seen.
    fn stop(&mut self) -> Vec<(Instant, String)> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill has no memory preconditions; the pid is our child's, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Resets {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TCP segments retransmitted from the network namespace at `netns` so far (`RetransSegs` of
/// its `/proc/net/snmp`).
fn retrans_segs(netns: &Path) -> Option<u64> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["cat", "/proc/net/snmp"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// One migration as the clients saw it.
#[derive(Debug, Clone)]
struct Hop {
    mode: pb::Mode,
    from: usize,
    to: usize,
    downtime_ms: f64,
    freeze_ms: f64,
    dump_ms: f64,
    transfer_ms: f64,
    restore_ms: f64,
    /// From the request until MigrateOut answered.
    answered_ms: f64,
    /// Post-copy: from the request until the last page was on the target.
    done_ms: f64,
    /// Each connection's longest wait, ms (connections that failed left out).
    stalls: Vec<f64>,
    /// The longest wait: when it began and ended, ms after the request.
    worst: (f64, f64),
    rst: Vec<String>,
    errors: Vec<String>,
    reconnects: usize,
    held_packets: Option<u64>,
    /// When the source logged handing the address over, ms after the request.
    handed_over_ms: Option<f64>,
    retrans: Option<u64>,
    /// Warnings the agents logged meanwhile.
    warnings: Vec<String>,
    /// From the request until the stalls and resets were taken.
    window: (Instant, Instant),
    /// The migration's phases as the source agent reports them (name, start, end; ms after the
    /// request, by the wall clock).
    phases: Vec<(String, f64, f64)>,
}

impl Hop {
    fn p50(&self) -> f64 {
        median(self.stalls.clone())
    }

    fn max(&self) -> f64 {
        self.stalls.iter().cloned().fold(0.0, f64::max)
    }

    /// When the freeze began, ms after the request.
    fn freeze_at(&self) -> Option<f64> {
        self.phases.iter().find(|(p, _, _)| p.starts_with("freez")).map(|p| p.1)
    }

    /// How long after the resume the longest wait ended, ms.
    fn ended_after_resume(&self) -> Option<f64> {
        self.freeze_at().map(|f| self.worst.1 - (f + self.downtime_ms))
    }

    fn goal_held(&self) -> bool {
        self.rst.is_empty()
            && self.errors.is_empty()
            && self.reconnects == 0
            && self.max() <= self.downtime_ms + SLACK_MS
    }
}

fn mode_name(m: pb::Mode) -> &'static str {
    if m == pb::Mode::PostCopy {
        "post-copy"
    } else {
        "stop-and-copy"
    }
}

pub fn run(args: NetworkBenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (network namespaces, CRIU, tcpdump)");
    }
    for tool in ["criu", "tcpdump", "unshare", "nsenter", "ip"] {
        need(tool)?;
    }
    if !Path::new(REDIS).is_file() {
        bail!("{REDIS} is not installed; run scripts/setup.sh");
    }
    if args.connections == 0 || args.runs == 0 {
        bail!("--connections and --runs must be at least 1");
    }
    // Read before anything of the benchmark starts: the machine's load from other work.
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    remove_stale_warm_ups();
    let work = PathBuf::from(format!("/dev/shm/ferry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = bench(&args, &work, load_before.split_whitespace().next().unwrap_or("?"));
    if let Some(dir) = std::env::var_os("FERRY_BENCH_SAVE_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for i in 0..2 {
            let name = format!("agent{i}.log");
            let _ = std::fs::copy(work.join(&name), dir.join(&name));
        }
        eprintln!("agent logs copied to {}", dir.display());
    }
    if std::env::var_os("FERRY_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// What the whole run found besides the migrations.
struct Setup {
    redis_version: String,
    address: String,
    rss_mib: f64,
    keys: u64,
    answers: usize,
    /// Connections whose server-side counter differs from the client's last answer at the end.
    counter_mismatch: usize,
    /// Resets outside any migration's window, each with when it came.
    rst_outside: Vec<String>,
    load_before: String,
    load_after: String,
    qemu: bool,
}

fn bench(args: &NetworkBenchArgs, work: &Path, load_before: &str) -> anyhow::Result<()> {
    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let net = Net::create(BRIDGE, PREFIX, &hosts)?;
    let (agents, wire) = start_agents(&net, work, 2, "warn,ferry_agent=info")?;
    let rt = tokio::runtime::Runtime::new()?;
    let addrs: Vec<String> = (0..2).map(|i| format!("http://{}:50051", net.ip(i))).collect();
    let mut agent: Vec<AgentClient<Channel>> = rt.block_on(async {
        let mut v = Vec::new();
        for a in &addrs {
            v.push(connect(&wire, a).await?);
        }
        Ok::<_, anyhow::Error>(v)
    })?;
    let logs: Vec<PathBuf> = (0..2).map(|i| work.join(format!("agent{i}.log"))).collect();
    let address = format!("{PREFIX}.200");
    let client_ns = net.netns(CLIENT_HOST);
    let mut qemu = qemu_running();

    eprintln!("starting redis-server with address {address} on host 0");
    let id = rt.block_on(start_redis(&mut agent[0], &address))?;
    let mut at = 0;
    let result = (|| -> anyhow::Result<(Setup, Vec<Hop>)> {
        let (rss, keys) = populate(&rt, &mut agent[0], &id, &client_ns, &address, args.size_mib)?;
        eprintln!("redis-server: {:.0} MiB RSS, {keys} keys", rss as f64 / 1048576.0);
        let mut resets = Resets::capture(BRIDGE, &address)?;
        let conns = connect_from(&client_ns, &format!("{address}:{REDIS_PORT}"), args.connections)?;
        let clients = Clients::start(conns, Duration::from_millis(args.interval_ms))?;
        std::thread::sleep(Duration::from_secs(2));
        let mut hops = Vec::new();
        for r in 0..args.runs {
            let mut order = [pb::Mode::StopAndCopy, pb::Mode::PostCopy];
            if r % 2 == 1 {
                order.reverse();
            }
            for mode in order {
                qemu |= qemu_running();
                let (from, to) = (at, 1 - at);
                eprintln!(
                    "run {}/{}: {} host {from} -> host {to}",
                    r + 1,
                    args.runs,
                    mode_name(mode)
                );
                let hop = migrate_once(
                    &rt, &mut agent, &addrs, &logs, &id, from, to, mode, &clients, &resets,
                    &client_ns,
                )?;
                at = to;
                eprintln!(
                    "  downtime {:.0} ms, stall p50 {:.0} ms, max {:.0} ms (from +{:.0} to +{:.0} ms), \
                     {} RST, {} errors, {} reconnects, held packets {:?}, client retransmits {:?}",
                    hop.downtime_ms,
                    hop.p50(),
                    hop.max(),
                    hop.worst.0,
                    hop.worst.1,
                    hop.rst.len(),
                    hop.errors.len(),
                    hop.reconnects,
                    hop.held_packets,
                    hop.retrans,
                );
                hops.push(hop);
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        let finished = clients.finish();
        let mut answers = 0;
        let mut counter_mismatch = 0;
        for (i, mut r, log) in finished {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            answers += l.answers.len();
            if l.error.is_some() {
                continue;
            }
            let server = r.cmd(&["INCRBY", &format!("client:{i}"), "0"]).unwrap_or_default();
            if server != format!(":{}", l.last) {
                counter_mismatch += 1;
            }
        }
        let rst_outside = resets
            .stop()
            .into_iter()
            .filter(|(t, _)| !hops.iter().any(|h| h.window.0 <= *t && *t < h.window.1))
            .map(|(t, l)| {
                let when = if hops.first().is_none_or(|h| t < h.window.0) {
                    "before the first migration"
                } else if hops.last().is_none_or(|h| t >= h.window.1) {
                    "after the last migration (the clients closing)"
                } else {
                    "between migrations"
                };
                format!("{when}: `{l}`")
            })
            .collect();
        Ok((
            Setup {
                redis_version: redis_version(),
                address: address.clone(),
                rss_mib: rss as f64 / 1048576.0,
                keys,
                answers,
                counter_mismatch,
                rst_outside,
                load_before: load_before.to_string(),
                load_after: String::new(),
                qemu,
            },
            hops,
        ))
    })();
    // The workload goes whatever happened (the agents are killed with every descendant anyway);
    // after a failed migration it may be on either host.
    let _ = rt.block_on(
        agent[at].stop_process(pb::StopProcessRequest { id: id.clone(), grace_ms: 1000 }),
    );
    if result.is_err() {
        let _ = rt.block_on(
            agent[1 - at].stop_process(pb::StopProcessRequest { id: id.clone(), grace_ms: 1000 }),
        );
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    drop(agent);
    drop(agents);
    drop(net);
    let (mut setup, hops) = result?;
    setup.load_after = load_after.split_whitespace().next().unwrap_or("?").to_string();
    crate::bench::write_report(&args.report, &render(args, &setup, &hops))
}

fn redis_version() -> String {
    let out = Command::new(REDIS).arg("--version").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map(str::to_string)
        .unwrap_or_else(|| "unknown".into())
}

/// redis-server's arguments for a benchmark or a test: listening on every address at `port`,
/// no protected mode, no persistence, in the foreground.
pub fn redis_args(port: u16) -> Vec<String> {
    let port = port.to_string();
    let args = [
        "--port",
        port.as_str(),
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ];
    args.iter().map(|s| s.to_string()).collect()
}

async fn start_redis(c: &mut AgentClient<Channel>, address: &str) -> anyhow::Result<String> {
    let mut argv = vec![REDIS.to_string()];
    argv.extend(redis_args(REDIS_PORT));
    argv.extend(["--enable-debug-command".to_string(), "yes".to_string()]);
    let spec = pb::WorkloadSpec {
        argv,
        user: "redis".into(),
        group: "redis".into(),
        address: address.into(),
        ..Default::default()
    };
    let st = c
        .start_process(pb::StartProcessRequest { spec: Some(spec) })
        .await
        .context("StartProcess redis-server")?
        .into_inner();
    let id = st.spec.map(|s| s.id).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = log_lines(c, &id).await?;
        if lines.iter().any(|l| l.contains("Ready to accept connections")) {
            return Ok(id);
        }
        if Instant::now() > deadline {
            bail!("redis-server did not get ready: {}", lines.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Grows Redis to `size_mib` of RSS with `DEBUG POPULATE` (1 KiB values) over one connection
/// from the clients' host; returns the RSS reached and the keys.
fn populate(
    rt: &tokio::runtime::Runtime,
    c: &mut AgentClient<Channel>,
    id: &str,
    client_ns: &Path,
    address: &str,
    size_mib: u64,
) -> anyhow::Result<(u64, u64)> {
    let target = size_mib << 20;
    let mut rss = || -> anyhow::Result<u64> {
        Ok(rt.block_on(c.get_status(pb::WorkloadRef { id: id.into() }))?.into_inner().rss_bytes)
    };
    let conn = connect_from(client_ns, &format!("{address}:{REDIS_PORT}"), 1)?
        .pop()
        .context("no connection")?;
    let mut r = Redis::new(conn, Duration::from_secs(300))?;
    let rss0 = rss()?;
    let mut keys: u64 = 50_000;
    let mut pop = |keys: u64| -> anyhow::Result<()> {
        let a = r.cmd(&["DEBUG", "POPULATE", &keys.to_string(), "key", "1024"])?;
        if a != "+OK" {
            bail!("DEBUG POPULATE answered {a:?}");
        }
        Ok(())
    };
    pop(keys)?;
    let mut now = rss()?;
    if now < target {
        let per_key = (now.saturating_sub(rss0) / keys).max(512);
        keys += (target - now) / per_key;
        pop(keys)?;
        now = rss()?;
        while now < target {
            keys += 10_000;
            pop(keys)?;
            now = rss()?;
        }
    }
    Ok((now, keys))
}

/// The number in `KEY=N` of a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The lines of an agent's log, without terminal colour codes.
fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(strip_ansi).collect()
}

/// Moves the workload from host `from` to host `to` and measures what the clients saw.
#[allow(clippy::too_many_arguments)]
fn migrate_once(
    rt: &tokio::runtime::Runtime,
    agent: &mut [AgentClient<Channel>],
    addrs: &[String],
    logs: &[PathBuf],
    id: &str,
    from: usize,
    to: usize,
    mode: pb::Mode,
    clients: &Clients,
    resets: &Resets,
    client_ns: &Path,
) -> anyhow::Result<Hop> {
    let log_before: Vec<usize> = logs.iter().map(|l| read_lines(l).len()).collect();
    let retrans_before = retrans_segs(client_ns);
    let t0 = Instant::now();
    let t0_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let r = rt
        .block_on(agent[from].migrate_out(pb::MigrateOutRequest {
            workload_id: id.into(),
            target_address: addrs[to].clone(),
            mode: mode as i32,
            ..Default::default()
        }))
        .context("MigrateOut")?
        .into_inner();
    let answered = Instant::now();
    if r.outcome != pb::Outcome::Completed as i32 {
        bail!("the migration did not complete ({}): {}", r.outcome, r.error);
    }
    // Until the target's lazy-pages daemon ended: post-copy's last page, or stop-and-copy's
    // filling in from the received images.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let t = rt.block_on(
            agent[to].get_migration(pb::MigrationRef { migration_id: r.migration_id.clone() }),
        );
        match t {
            Ok(t) if t.get_ref().outcome != pb::Outcome::Unspecified as i32 => break,
            Err(_) => break,
            _ if Instant::now() > deadline => bail!("the target's lazy-pages daemon did not end"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let done = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let end = Instant::now();
    clients.answered_after(end)?;
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
    let mut stalls = Vec::new();
    let mut worst = (0.0, 0.0, 0.0);
    let mut errors = Vec::new();
    for (i, l) in clients.logs.iter().enumerate() {
        let l = l.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, why)) = &l.error {
            if *t >= t0 {
                errors.push(format!("client {i}: {why} at +{:.0} ms", ms(*t)));
            }
            continue;
        }
        let mut longest = 0.0;
        for &(sent, got) in l.answers.iter().rev() {
            if got < t0 {
                break;
            }
            if sent > end {
                continue;
            }
            let wait = (got - sent).as_secs_f64() * 1000.0;
            if wait > longest {
                longest = wait;
            }
            if wait > worst.0 {
                worst = (wait, ms(sent), ms(got));
            }
        }
        stalls.push(longest);
    }
    clients.check_ids()?;
    let round = clients.id_round.load(Ordering::SeqCst);
    let reconnects = clients
        .logs
        .iter()
        .filter(|l| {
            let l = l.lock().unwrap_or_else(|e| e.into_inner());
            l.id_checks.iter().any(|(r, changed)| *r == round && *changed)
        })
        .count();
    let retrans = retrans_before.zip(retrans_segs(client_ns)).map(|(a, b)| b.saturating_sub(a));
    let src_log = read_lines(&logs[from]);
    let handed_over =
        src_log.iter().skip(log_before[from]).find(|l| l.contains("address handed over"));
    let held_packets = handed_over.and_then(|l| field(l, "held_packets"));
    let handed_over_ms = handed_over.and_then(|l| log_time_after(l, t0_wall));
    let closed = Instant::now();
    let mut warnings = Vec::new();
    for (i, path) in logs.iter().enumerate() {
        for l in read_lines(path).into_iter().skip(log_before[i]) {
            if l.contains("WARN") || l.contains("ERROR") {
                warnings.push(format!("agent {i}: {l}"));
            }
        }
    }
    Ok(Hop {
        mode,
        from,
        to,
        downtime_ms: r.downtime_ms as f64,
        freeze_ms: r.freeze_ms as f64,
        dump_ms: r.dump_ms as f64,
        transfer_ms: r.transfer_ms as f64,
        restore_ms: r.restore_ms as f64,
        answered_ms: ms(answered),
        done_ms: ms(done),
        stalls,
        worst: (worst.1, worst.2),
        rst: resets.between(t0, closed),
        errors,
        reconnects,
        held_packets,
        handed_over_ms,
        retrans,
        warnings,
        window: (t0, closed),
        phases: r
            .phases
            .iter()
            .map(|p| {
                (p.phase.clone(), p.started_at_ms as f64 - t0_wall, p.ended_at_ms as f64 - t0_wall)
            })
            .collect(),
    })
}

/// When an agent's log line (`2026-12-07T22:05:48.732760Z  INFO ...`, UTC) was written, ms
/// after `t0_wall` (ms since the epoch); the day is taken to be `t0_wall`'s or a neighbour.
fn log_time_after(line: &str, t0_wall: f64) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.strip_suffix('Z')?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    const DAY: f64 = 86_400_000.0;
    let mut d = (h * 3_600_000.0 + m * 60_000.0 + s * 1000.0) - t0_wall.rem_euclid(DAY);
    if d < -DAY / 2.0 {
        d += DAY;
    } else if d > DAY / 2.0 {
        d -= DAY;
    }
    Some(d)
}

/// What the longest waits of `v` (one mode's migrations) consist of, from their timelines.
fn stall_parts(out: &mut String, mode: pb::Mode, v: &[&Hop]) {
    let began: Vec<f64> = v.iter().filter_map(|h| Some(h.worst.0 - h.freeze_at()?)).collect();
    let ended: Vec<f64> = v.iter().filter_map(|h| h.ended_after_resume()).collect();
    let handed: Vec<f64> = v
        .iter()
        .filter_map(|h| Some(h.handed_over_ms? - (h.freeze_at()? + h.downtime_ms)))
        .collect();
    if began.is_empty() {
        return;
    }
    let range = |x: &[f64]| {
        let lo = x.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!("median {:.0}, {:.0} to {:.0}", median(x.to_vec()), lo, hi)
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "What the longest waits consist of: each began {} ms after the freeze began (the first \
         request that reached the hold), lasted through the downtime, and ended {} ms after the \
         resume. The source logged handing the address over (and had sent the held packets on) \
         {} ms after the resume.",
        range(&began),
        range(&ended),
        if handed.is_empty() { "?".to_string() } else { range(&handed) },
    );
    for (i, h) in v.iter().enumerate() {
        let Some(after) = h.ended_after_resume() else { continue };
        if mode == pb::Mode::StopAndCopy && after > 100.0 && (h.worst.1 - h.done_ms).abs() < 50.0 {
            let _ = writeln!(
                out,
                "In run {} the longest wait ended {after:.0} ms after the resume, with the target's \
                 lazy-pages daemon ending its fill from the received images ({} vs {}): every \
                 connection waited that long, so Redis's one thread waited on a page fault that \
                 was answered only when the fill had ended.",
                i + 1,
                rel(h.worst.1),
                rel(h.done_ms),
            );
        }
    }
    if mode == pb::Mode::PostCopy {
        let rest: Vec<f64> = v.iter().filter_map(|h| Some(h.worst.1 - h.handed_over_ms?)).collect();
        if !rest.is_empty() {
            let _ = writeln!(
                out,
                "From the hand-over to the last answer ({} ms) the workload ran on the target \
                 with its memory arriving from the source on first touch (each fault a round trip \
                 through both agents' page tunnel) while the background transfer went on: \
                 whatever Redis touched to answer its clients (its code, heap, the clients' \
                 buffers and keys) and had not arrived yet was fetched before it could answer.",
                range(&rest),
            );
        }
    }
}

/// A time after the request, ms: "+12" (a clock's rounding below zero shows as "+0").
fn rel(ms: f64) -> String {
    if ms.abs() < 0.5 {
        "+0".into()
    } else {
        format!("{ms:+.0}")
    }
}

/// A log line without terminal colour codes.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn render(args: &NetworkBenchArgs, s: &Setup, hops: &[Hop]) -> String {
    let mut out = String::new();
    let n = args.connections;
    let _ = writeln!(out, "# Benchmark: client connections through a migration");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "`ferry bench network --size-mib {} --connections {n} --runs {} --interval-ms {}`, run {}. \
         Redis {} with its own address ({}) on one of two network-namespace hosts on this machine, \
         grown to {:.0} MiB RSS before the clients connected (`DEBUG POPULATE`: {} keys of 1 KiB), \
         moved back and forth between the two hosts {} times per mode ({} migrations), \
         stop-and-copy and post-copy in turn; {n} clients on a third host each kept ONE TCP \
         connection and INCRed a key of their own on it throughout, {} ms after each answer \
         ({} answers in all). Times in ms.",
        args.size_mib,
        args.runs,
        args.interval_ms,
        chrono_like_now(),
        s.redis_version,
        s.address,
        s.rss_mib,
        s.keys,
        args.runs,
        hops.len(),
        args.interval_ms,
        s.answers,
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Machine: {}. CRIU: {}.", crate_host_facts(), criu_version());
    let busy = s.load_before.parse::<f64>().unwrap_or(0.0) >= 0.3;
    let _ = writeln!(
        out,
        "Load average (1 min) before the benchmark started: {}; at its end: {}.{}{}",
        s.load_before,
        s.load_after,
        if busy {
            " **Other work ran on this machine at the same time** (the load before the start is \
             not the benchmark's): the figures were taken on a shared machine, where the \
             agents, CRIU, Redis and the client threads also compete with it for the cores."
        } else {
            ""
        },
        if s.qemu {
            " Another engineer's QEMU VMs (`qemu-system`) were running during (part of) this run."
        } else {
            ""
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Goal: 0 resets, 0 reconnects, max stall ≤ downtime + {SLACK_MS:.0} ms, with 100 open \
         client connections and a 1 GiB process, in each mode (this run: {n} connections, \
         {} MiB).",
        args.size_mib
    );
    for mode in [pb::Mode::StopAndCopy, pb::Mode::PostCopy] {
        let v: Vec<&Hop> = hops.iter().filter(|h| h.mode == mode).collect();
        if v.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&Hop) -> f64| median(v.iter().map(|h| f(h)).collect());
        let _ = writeln!(out);
        let _ = writeln!(out, "## {}", mode_name(mode));
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| run | hosts | downtime | stall p50 | stall max | max − downtime | RST | client errors | reconnects | held packets | client retransmits | goal |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let opt = |o: Option<u64>| o.map(|x| x.to_string()).unwrap_or_else(|| "?".into());
        for (i, h) in v.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} → {} | {:.0} | {:.0} | {:.0} | {:+.0} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                ["A", "B"][h.from],
                ["A", "B"][h.to],
                h.downtime_ms,
                h.p50(),
                h.max(),
                h.max() - h.downtime_ms,
                h.rst.len(),
                h.errors.len(),
                h.reconnects,
                opt(h.held_packets),
                opt(h.retrans),
                if h.goal_held() { "held" } else { "**missed**" },
            );
        }
        let _ = writeln!(
            out,
            "| median | | {:.0} | {:.0} | {:.0} | {:+.0} | {} | {} | {} | | | |",
            med(&|h| h.downtime_ms),
            med(&|h| h.p50()),
            med(&|h| h.max()),
            med(&|h| h.max() - h.downtime_ms),
            v.iter().map(|h| h.rst.len()).sum::<usize>(),
            v.iter().map(|h| h.errors.len()).sum::<usize>(),
            v.iter().map(|h| h.reconnects).sum::<usize>(),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Each migration's timeline, ms after the request (the source agent's phases by the \
             wall clock; \"resumed\": the freeze's start plus the downtime), the durations of \
             freeze / dump / transfer / restore, and the longest wait of any connection:"
        );
        let _ = writeln!(out);
        for (i, h) in v.iter().enumerate() {
            let phases = h
                .phases
                .iter()
                .map(|(p, a, b)| format!("{p} {}…{}", rel(*a), rel(*b)))
                .collect::<Vec<_>>()
                .join(", ");
            let freeze = h.phases.iter().find(|(p, _, _)| p.starts_with("freez")).map(|p| p.1);
            let relative = match freeze {
                Some(f) => format!(
                    " (began {:.0} ms {} the freeze, ended {:.0} ms {} the resume)",
                    (f - h.worst.0).abs(),
                    if h.worst.0 <= f { "before" } else { "after" },
                    (h.worst.1 - (f + h.downtime_ms)).abs(),
                    if h.worst.1 >= f + h.downtime_ms { "after" } else { "before" },
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "- run {}: {phases}; resumed {}; source logged the address handed over {}; MigrateOut answered +{:.0}{}. \
                 Durations {:.0} / {:.0} / {:.0} / {:.0}. Longest wait +{:.0} → +{:.0}{relative}.",
                i + 1,
                freeze.map(|f| rel(f + h.downtime_ms)).unwrap_or_else(|| "?".into()),
                h.handed_over_ms.map(rel).unwrap_or_else(|| "?".into()),
                h.answered_ms,
                if mode == pb::Mode::PostCopy {
                    format!(", last page on the target +{:.0}", h.done_ms)
                } else {
                    format!(", memory filled in on the target +{:.0}", h.done_ms)
                },
                h.freeze_ms,
                h.dump_ms,
                h.transfer_ms,
                h.restore_ms,
                h.worst.0,
                h.worst.1,
            );
        }
        stall_parts(&mut out, mode, &v);
        let held = v.iter().filter(|h| h.goal_held()).count();
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Goal in {}: held in {held} of {} migrations — {}.",
            mode_name(mode),
            v.len(),
            if held == v.len() { "**met**" } else { "**not met**" }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "## Everything else the run saw");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "- TCP resets on the bridge outside the migrations' windows (from the clients connecting \
         until they closed, between migrations): {}.",
        s.rst_outside.len()
    );
    for l in s.rst_outside.iter().take(10) {
        let _ = writeln!(out, "  - {l}");
    }
    let _ = writeln!(
        out,
        "- Connections whose key on the server differed from the client's last answer at the \
         end: {} of {} still open.",
        s.counter_mismatch,
        n - hops.iter().map(|h| h.errors.len()).sum::<usize>()
    );
    let errors: Vec<&String> = hops.iter().flat_map(|h| &h.errors).collect();
    for e in errors.iter().take(10) {
        let _ = writeln!(out, "- client error: {e}");
    }
    let rst: Vec<&String> = hops.iter().flat_map(|h| &h.rst).collect();
    for l in rst.iter().take(10) {
        let _ = writeln!(out, "- RST: `{l}`");
    }
    let warnings: Vec<&String> = hops.iter().flat_map(|h| &h.warnings).collect();
    if warnings.is_empty() {
        let _ = writeln!(out, "- The agents logged no warning during the migrations.");
    }
    for w in warnings.iter().take(10) {
        let _ = writeln!(out, "- agent warning: `{w}`");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "## How the figures are taken");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "- Downtime: the migration's own (MigrateOut's `downtime_ms`): from the freeze until the \
         target confirmed the workload runs.\n\
         - Stall: for each connection, its longest wait for an INCR's answer among the requests \
         answered after the migration request and sent before one second after the migration \
         ended (stop-and-copy: the target's lazy-pages daemon filled the workload in from the \
         received images; post-copy: the last page arrived); p50 and max over the connections. \
         The wait runs from writing the request to reading the answer on the client's host, so \
         it includes the time the address's packets were held on the source before the freeze \
         and the time after the resume until Redis answered.\n\
         - RST: TCP segments with RST set to or from the workload's address, captured on the \
         bridge every host is on (`tcpdump 'host ADDR and tcp[tcpflags] & tcp-rst != 0'`) \
         from the migration request until its window closed. Client errors: a connection that \
         failed (error, closed, an unexpected answer, or a counter that did not go on by one); \
         its loop ends there, and it never reconnects.\n\
         - Reconnects: after each migration every connection asks `CLIENT ID` again; an id \
         other than the one it got on connecting would be a connection made anew.\n\
         - Held packets: the source agent's log line `address handed over to the target ... \
         held_packets=N`: packets for the address it held (in its tun device) from before the \
         freeze until the commit and then sent on to the target. Client retransmits: the \
         clients' host's TCP `RetransSegs` (`/proc/net/snmp` in its namespace) over the \
         migration's window; a retransmitted request waits at least the retransmission timeout \
         (200 ms at first).",
    );
    out
}
