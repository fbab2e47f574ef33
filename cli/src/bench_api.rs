//! `ferry bench api`: the REST gateway under load. Seeds a coordinator's store with N workload
//! records on a few nodes and M finished migrations (through the store's own functions, before
//! the coordinator opens it), starts the coordinator with its gateway, keeps one live node
//! heartbeating over mutual TLS (so the store changes every second, as in a real cluster), then
//! drives the endpoints a dashboard reads at a constant request rate over keep-alive connections
//! and reports latency percentiles and throughput.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_proto::agent as apb;
use ferry_proto::coordinator as cpb;
use ferry_proto::coordinator::coordinator_client::CoordinatorClient;

#[derive(clap::Args, Debug, Clone)]
pub struct ApiBenchArgs {
    /// Workload records in the coordinator's table.
    #[arg(long, default_value_t = 10_000)]
    pub workloads: usize,
    /// Finished migrations in the coordinator's history.
    #[arg(long, default_value_t = 100_000)]
    pub migrations: usize,
    /// Nodes the workload records are spread over.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Requests per second, per endpoint.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of load per endpoint.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Keep-alive connections sharing the rate.
    #[arg(long, default_value_t = 8)]
    pub connections: u32,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "docs/bench/api.md")]
    pub report: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn workload(i: usize) -> apb::ProcessStatus {
    apb::ProcessStatus {
        spec: Some(apb::WorkloadSpec {
            id: format!("w-bench-{i:06}"),
            name: format!("worker-{i}"),
            argv: vec!["/usr/bin/python3".into(), "worker.py".into(), format!("--shard={i}")],
            engine: apb::Engine::Criu as i32,
            ..Default::default()
        }),
        state: if i.is_multiple_of(10) {
            apb::ProcessState::Stopped
        } else {
            apb::ProcessState::Running
        } as i32,
        pid: 10_000 + i as i32,
        main_pid: 10_001 + i as i32,
        cpu_percent: (i % 100) as f64,
        rss_bytes: (i as u64 + 1) << 20,
        started_at_ms: 1_795_000_000_000 + i as i64,
        node: node_of(i),
        ..Default::default()
    }
}

/// The seeded node of workload `i` (one of `BENCH_NODES` set at seeding).
fn node_of(i: usize) -> String {
    format!("bench-node-{}", i % BENCH_NODES.load(std::sync::atomic::Ordering::Relaxed).max(1))
}

static BENCH_NODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// The live node's workloads: a few, reported every second.
const LIVE_WORKLOADS: usize = 10;

/// Migration `i` of `n` in the seeded history: of workload `i % workloads`, started over the last
/// week in order, 95% completed, 3% rolled back, 2% failed; stop-and-copy and post-copy taking
/// turns.
fn migration(i: usize, n: usize, workloads: usize, now_ms: i64) -> ferry_coordinator::MigrationRow {
    use prost::Message;
    let week = 7 * 24 * 3600 * 1000i64;
    let started = now_ms - week + (i as i64 * week) / n.max(1) as i64;
    let w = i % workloads.max(1);
    let status = match i % 100 {
        0..=94 => "completed",
        95..=97 => "rolled_back",
        _ => "failed",
    };
    let mode = if i.is_multiple_of(2) { "stop-and-copy" } else { "post-copy" };
    let bytes = ((w as u64 % 512) + 1) << 20;
    let result = apb::MigrationResult {
        migration_id: format!("m-{i:012x}"),
        mode: mode.replace('-', "_"),
        total_ms: 900 + (i % 400) as i64,
        freeze_ms: 120 + (i % 80) as i64,
        dump_ms: 60,
        transfer_ms: 300,
        restore_ms: 200,
        downtime_ms: 150 + (i % 250) as i64,
        bytes_raw: bytes,
        bytes_wire: bytes / 3,
        ..Default::default()
    };
    ferry_coordinator::MigrationRow {
        id: format!("m-{i:012x}"),
        process_id: format!("w-bench-{w:06}"),
        source: node_of(w),
        target: node_of(w + 1),
        mode: mode.into(),
        status: status.into(),
        error: if status == "completed" { String::new() } else { "seeded failure".into() },
        result: Some(result.encode_to_vec()),
        started_at_ms: started,
        finished_at_ms: Some(started + result.total_ms),
    }
}

/// Fills a coordinator's store before the coordinator opens it: `nodes` nodes (seen now, so they
/// are online for the run: the coordinator is started with hour-long heartbeats), `workloads`
/// workload records spread over them, `migrations` finished migrations of them.
/// Returns the time it seeded as now.
fn seed(db: &std::path::Path, args: &ApiBenchArgs) -> anyhow::Result<i64> {
    use prost::Message;
    let store = ferry_coordinator::Store::open(db)?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    for n in 0..args.nodes {
        let node = format!("bench-node-{n}");
        let health = apb::HealthCheckResponse {
            node: node.clone(),
            hostname: node.clone(),
            memory_total_bytes: 64 << 30,
            memory_available_bytes: 32 << 30,
            cores: 16,
            ..Default::default()
        };
        store.register(
            &node,
            &format!("https://127.0.0.1:{}", 1 + n),
            &health.encode_to_vec(),
            now,
        )?;
        let mine: Vec<ferry_coordinator::Reported> = (0..args.workloads)
            .filter(|i| i % args.nodes == n)
            .map(|i| ferry_coordinator::Reported {
                id: format!("w-bench-{i:06}"),
                status: workload(i).encode_to_vec(),
                ..Default::default()
            })
            .collect();
        store.heartbeat(&node, &health.encode_to_vec(), mine.len() as u32, now)?;
        store.set_workloads(&node, &mine, 0, now)?;
    }
    for chunk in (0..args.migrations).collect::<Vec<_>>().chunks(10_000) {
        let rows: Vec<_> =
            chunk.iter().map(|i| migration(*i, args.migrations, args.workloads, now)).collect();
        store.import_migrations(&rows)?;
    }
    Ok(now)
}

/// One GET on a keep-alive connection; returns the status code.
fn get(conn: &mut BufReader<TcpStream>, path: &str) -> anyhow::Result<u16> {
    get_body(conn, path).map(|(code, _)| code)
}

/// One GET on a keep-alive connection; returns the status code and the body.
fn get_body(conn: &mut BufReader<TcpStream>, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {BENCH_TOKEN}\r\n\r\n"
    )?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let code: u16 =
        line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("status line")?;
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok((code, body))
}

struct Load {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

/// `rate` requests per second for `secs` seconds, spread over `conns` connections, each sending
/// on its own schedule (latency counted from the scheduled time, so a slow server cannot hide
/// its queueing).
fn drive(addr: &str, path: &str, rate: u32, secs: u64, conns: u32) -> anyhow::Result<Load> {
    let per_conn = (rate as f64 / conns as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let total = (per_conn * secs as f64) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let mut threads = Vec::new();
    for c in 0..conns {
        let (addr, path) = (addr.to_string(), path.to_string());
        threads.push(std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, usize)> {
            let mut conn = BufReader::new(TcpStream::connect(&addr)?);
            conn.get_ref().set_nodelay(true)?;
            let offset = interval.mul_f64(c as f64 / conns as f64);
            let mut lat = Vec::with_capacity(total);
            let mut errors = 0;
            for i in 0..total {
                let due = start + offset + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                match get(&mut conn, &path) {
                    Ok(200) => lat.push(due.elapsed()),
                    _ => {
                        errors += 1;
                        conn = BufReader::new(TcpStream::connect(&addr)?);
                    }
                }
            }
            Ok((lat, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Load { latencies, errors, elapsed })
}

fn pct(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// One endpoint's result: its path, its p99 (ms) and its report row.
type Row = (String, f64, String);

/// The benchmark's read-only token: requests carry it as every real client would.
const BENCH_TOKEN: &str = "bench-read-only-token-0123456789";

pub fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.workloads == 0 || args.migrations == 0 {
        bail!("--nodes, --workloads and --migrations must each be at least 1");
    }
    BENCH_NODES.store(args.nodes, std::sync::atomic::Ordering::Relaxed);
    let (grpc, http) = (free_port()?, free_port()?);
    let data = std::env::temp_dir().join(format!("ferry-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let seeding = Instant::now();
    let seeded_at =
        seed(&data.join("ferry.db"), &args).context("cannot seed the coordinator's store")?;
    let seeded_s = seeding.elapsed().as_secs_f64();
    eprintln!(
        "seeded {} workloads on {} nodes and {} migrations in {seeded_s:.1} s",
        args.workloads, args.nodes, args.migrations
    );
    let tls = data.join("tls");
    for name in ["coordinator", "bench-live"] {
        ferry_proto::tls::issue_into(&tls, name, &[], 1).map_err(|e| anyhow::anyhow!(e))?;
    }
    let wire = ferry_proto::tls::Wire::Tls(std::sync::Arc::new(
        ferry_proto::tls::Tls::load(&tls, "bench-live").map_err(|e| anyhow::anyhow!(e))?,
    ));
    let mut coord = Command::new(std::env::current_exe()?)
        .args([
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--http",
            &format!("127.0.0.1:{http}"),
            // The seeded nodes never heartbeat: with hour-long heartbeats they stay online.
            "--heartbeat-ms",
            "3600000",
            "--failover-grace-secs",
            "0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--tls-dir")
        .arg(&tls)
        .env("RUST_LOG", "warn")
        .env("FERRY_TOKENS", format!("read-only:{BENCH_TOKEN}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the coordinator")?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = (|| -> anyhow::Result<(Vec<Row>, String)> {
        let live = rt.block_on(async {
            let endpoint =
                wire.endpoint(&format!("127.0.0.1:{grpc}")).map_err(|e| anyhow::anyhow!(e))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut c = loop {
                match endpoint.connect().await.map(CoordinatorClient::new) {
                    Ok(c) => break c,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => bail!("coordinator did not come up: {e}"),
                }
            };
            c.register_node(cpb::RegisterNodeRequest {
                node: "bench-live".into(),
                address: "https://127.0.0.1:1".into(),
                health: Some(apb::HealthCheckResponse {
                    node: "bench-live".into(),
                    memory_total_bytes: 8 << 30,
                    cores: 2,
                    ..Default::default()
                }),
            })
            .await?;
            // A live node's heartbeat every second for the whole run: the store is written as
            // often as in a cluster, so nothing is computed once and served for ever.
            let beat = move |c: &mut CoordinatorClient<_>| {
                let req = cpb::HeartbeatRequest {
                    node: "bench-live".into(),
                    health: None,
                    workloads: (0..LIVE_WORKLOADS)
                        .map(|i| {
                            let mut w = workload(1_000_000 + i);
                            w.node = "bench-live".into();
                            w
                        })
                        .collect(),
                };
                let mut c = c.clone();
                async move { c.heartbeat(req).await }
            };
            beat(&mut c).await?;
            Ok::<_, anyhow::Error>(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Err(e) = beat(&mut c).await {
                        eprintln!("live node's heartbeat failed: {e}");
                    }
                }
            }))
        })?;
        let addr = format!("127.0.0.1:{http}");
        let mut conn = BufReader::new(TcpStream::connect(&addr)?);
        // The table really holds every record before any load is measured: the whole list once.
        let t = Instant::now();
        let (code, body) = get_body(&mut conn, "/api/processes")?;
        let full_ms = t.elapsed().as_secs_f64() * 1000.0;
        let listed = serde_json::from_slice::<serde_json::Value>(&body)?
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        let want = args.workloads + LIVE_WORKLOADS;
        if code != 200 || listed != want {
            bail!("GET /api/processes answered {code} with {listed} records, expected {want}");
        }
        let full = format!(
            "The whole unpaged list (`GET /api/processes`, {listed} processes, {} KB) took {full_ms:.1} ms \
             for one request on an idle server; it is not driven at 1,000 req/s (that would be {:.1} GB/s \
             of JSON): a dashboard with this many processes reads pages.",
            body.len() / 1024,
            body.len() as f64 * 1000.0 / 1e9
        );
        eprintln!("{full}");
        let (code, body) = get_body(&mut conn, "/api/overview")?;
        let o: serde_json::Value = serde_json::from_slice(&body)?;
        if code != 200 || o["totalProcesses"].as_u64() != Some(want as u64) {
            bail!("GET /api/overview answered {code}: {o}");
        }
        eprintln!("overview: {o}");
        // A page from the middle of the history, by its cursor (as a Link header gives it).
        let mid = migration(args.migrations / 2, args.migrations, args.workloads, seeded_at);
        let (mid_id, mid_ms) = (mid.id.clone(), mid.started_at_ms);
        let (code, body) = get_body(&mut conn, &format!("/api/migrations/{mid_id}"))?;
        if code != 200 {
            bail!(
                "GET /api/migrations/{mid_id} answered {code}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let (code, body) = get_body(&mut conn, "/api/migrations")?;
        let page = serde_json::from_slice::<serde_json::Value>(&body)?
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        if code != 200 || page != 100 {
            bail!("GET /api/migrations answered {code} with {page} migrations, expected 100");
        }
        let process = "w-bench-000042";
        let paths = [
            "/api/overview".to_string(),
            "/api/processes?limit=100".to_string(),
            format!("/api/processes/{process}"),
            "/api/migrations".to_string(),
            format!("/api/migrations?limit=100&before={mid_ms}.{mid_id}"),
            format!("/api/migrations?processId={process}&limit=20"),
            format!("/api/migrations/{mid_id}"),
        ];
        let mut rows = Vec::new();
        for path in paths {
            // A short warm-up, unmeasured.
            drive(&addr, &path, args.rate.min(200), 1, 2)?;
            eprintln!(
                "{path}: {} req/s for {} s over {} connections",
                args.rate, args.seconds, args.connections
            );
            let l = drive(&addr, &path, args.rate, args.seconds, args.connections)?;
            let done = l.latencies.len();
            let row = format!(
                "| `GET {path}` | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                args.rate,
                done as f64 / l.elapsed.as_secs_f64(),
                pct(&l.latencies, 0.50),
                pct(&l.latencies, 0.90),
                pct(&l.latencies, 0.99),
                pct(&l.latencies, 1.0),
                l.errors
            );
            eprintln!("{row}");
            rows.push((path, pct(&l.latencies, 0.99), row));
        }
        live.abort();
        Ok((rows, full))
    })();
    drop(rt);
    let _ = coord.kill();
    let _ = coord.wait();
    let _ = std::fs::remove_dir_all(&data);
    let (rows, full) = result?;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark: the REST gateway under load\n");
    let _ = writeln!(
        out,
        "`ferry bench api --workloads {} --migrations {} --nodes {} --rate {} --seconds {} --connections {}` \
         (release build). A coordinator with its gateway on loopback; before it starts, its store is seeded \
         through the store's own functions with {} workload records on {} nodes and {} finished migrations \
         of them over the last week (95% completed, 3% rolled back, 2% failed; seeding took {seeded_s:.1} s). \
         One more node heartbeats over mutual TLS every second with {LIVE_WORKLOADS} workloads, so the store \
         is written as in a live cluster. Each endpoint is driven at a constant rate over keep-alive HTTP/1.1 \
         connections, every request carrying a bearer token (checked as in production); latency counts from \
         each request's scheduled time, so queueing is not hidden. Times in ms.\n",
        args.workloads,
        args.migrations,
        args.nodes,
        args.rate,
        args.seconds,
        args.connections,
        args.workloads,
        args.nodes,
        args.migrations
    );
    let _ = writeln!(
        out,
        "| endpoint | target req/s | achieved req/s | p50 | p90 | p99 | max | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (_, _, row) in &rows {
        let _ = writeln!(out, "{row}");
    }
    let worst = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "\nTarget: p99 under 20 ms at 1,000 requests/s — {} (worst p99 {worst:.2} ms).\n",
        if worst < 20.0 && args.rate >= 1000 { "met" } else { "not met" }
    );
    let _ = writeln!(out, "{full}");
    crate::bench::write_report(&args.report, &out)
}
