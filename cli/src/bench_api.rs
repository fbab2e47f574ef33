//! `ferry bench api`: the REST gateway under load. Starts a coordinator with its gateway, fills
//! the workload table with N records through a node's heartbeat, then drives GET /api/processes
//! and GET /api/overview at a constant request rate over keep-alive connections and reports
//! latency percentiles and throughput.

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
    #[arg(long, default_value_t = 1000)]
    pub workloads: usize,
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
        node: "bench-node".into(),
        ..Default::default()
    }
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

/// The benchmark's read-only token: requests carry it as every real client would.
const BENCH_TOKEN: &str = "bench-read-only-token-0123456789";

pub fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    let (grpc, http) = (free_port()?, free_port()?);
    let data = std::env::temp_dir().join(format!("ferry-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let tls = data.join("tls");
    for name in ["coordinator", "bench-node"] {
        ferry_proto::tls::issue_into(&tls, name, &[], 1).map_err(|e| anyhow::anyhow!(e))?;
    }
    let wire = ferry_proto::tls::Wire::Tls(std::sync::Arc::new(
        ferry_proto::tls::Tls::load(&tls, "bench-node").map_err(|e| anyhow::anyhow!(e))?,
    ));
    let mut coord = Command::new(std::env::current_exe()?)
        .args([
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--http",
            &format!("127.0.0.1:{http}"),
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
    let result = (|| -> anyhow::Result<Vec<(&str, f64, String)>> {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            let endpoint =
                wire.endpoint(&format!("127.0.0.1:{grpc}")).map_err(|e| anyhow::anyhow!(e))?;
            let deadline = Instant::now() + Duration::from_secs(20);
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
                node: "bench-node".into(),
                address: "https://127.0.0.1:1".into(),
                health: Some(apb::HealthCheckResponse {
                    node: "bench-node".into(),
                    memory_total_bytes: 8 << 30,
                    cores: 2,
                    ..Default::default()
                }),
            })
            .await?;
            c.heartbeat(cpb::HeartbeatRequest {
                node: "bench-node".into(),
                health: None,
                workloads: (0..args.workloads).map(workload).collect(),
            })
            .await?;
            Ok::<_, anyhow::Error>(())
        })?;
        let addr = format!("127.0.0.1:{http}");
        // The table really holds every record before any load is measured.
        let (code, body) =
            get_body(&mut BufReader::new(TcpStream::connect(&addr)?), "/api/processes")?;
        let listed = serde_json::from_slice::<serde_json::Value>(&body)?
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        if code != 200 || listed != args.workloads {
            bail!(
                "GET /api/processes answered {code} with {listed} records, expected {}",
                args.workloads
            );
        }
        eprintln!("GET /api/processes lists {listed} records ({} KB)", body.len() / 1024);
        let mut rows = Vec::new();
        for path in ["/api/processes", "/api/overview"] {
            // A short warm-up, unmeasured.
            drive(&addr, path, args.rate.min(200), 1, 2)?;
            eprintln!(
                "{path}: {} req/s for {} s over {} connections",
                args.rate, args.seconds, args.connections
            );
            let l = drive(&addr, path, args.rate, args.seconds, args.connections)?;
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
        Ok(rows)
    })();
    let _ = coord.kill();
    let _ = coord.wait();
    let _ = std::fs::remove_dir_all(&data);
    let rows = result?;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark: the REST gateway under load\n");
    let _ = writeln!(
        out,
        "`ferry bench api --workloads {} --rate {} --seconds {} --connections {}` (release build). A coordinator \
         with its gateway on loopback, {} workload records in its table (from one node's heartbeat over mutual \
         TLS), each endpoint driven at a constant rate over keep-alive HTTP/1.1 connections, every request \
         carrying a bearer token (checked as in production); latency counts from each request's scheduled \
         time, so queueing is not hidden. Times in ms.\n",
        args.workloads, args.rate, args.seconds, args.connections, args.workloads
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
        "\nTarget: p99 under 20 ms at 1,000 requests/s — {} (worst p99 {worst:.2} ms).",
        if worst < 20.0 && args.rate >= 1000 { "met" } else { "not met" }
    );
    crate::bench::write_report(&args.report, &out)
}
