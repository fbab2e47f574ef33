//! `ferry bench migrate`: one run that moves a mixed-content process between two network-namespace
//! hosts with ferry, and the same kind of process with the hand pipeline an operator would script
//! (`criu dump` to tmpfs, `tar | zstd -1 | nc`, untar, `criu restore`), then writes a report with
//! downtime, total, each phase, bytes raw and on the wire, MB/s, and the ratio of the two.
//!
//! Both sides keep their images on tmpfs (/dev/shm) and both restored processes are verified
//! byte for byte (memhog's SIGUSR1 check) before a run counts.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_proto::agent as pb;
use ferry_proto::agent::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::hosts::Net;

const MEMHOG_C: &str = include_str!("../../tests/workloads/memhog.c");
const PORT: u16 = 40000;
const MOUNT: &str = "/var/lib/ferry-bench-data";

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Memory of the migrated process, MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Runs of each method (medians are reported); even, so each method goes first equally often.
    #[arg(long, default_value_t = 4)]
    pub runs: usize,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "docs/bench/migrate.md")]
    pub report: PathBuf,
}

#[derive(Debug, Clone, Default)]
struct Sample {
    downtime_ms: f64,
    total_ms: f64,
    dump_ms: f64,
    transfer_ms: f64,
    restore_ms: f64,
    bytes_raw: u64,
    bytes_wire: u64,
}

impl Sample {
    fn mb_per_s(&self) -> f64 {
        if self.transfer_ms <= 0.0 {
            return 0.0;
        }
        self.bytes_raw as f64 / 1e6 / (self.transfer_ms / 1000.0)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn need(tool: &str) -> anyhow::Result<()> {
    let ok =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output()?.status.success();
    if !ok {
        bail!("{tool} is not installed; run scripts/setup.sh");
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Kills `child` and every descendant.
fn kill_tree(pid: i32) {
    for p in descendants(pid) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn ppid_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn descendants(root: i32) -> Vec<i32> {
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &c in &pids {
            if ppid_of(c) == Some(p) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Kills a helper pipeline's whole tree unless disarmed.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_tree(self.0);
    }
}

struct Agents {
    children: Vec<Child>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill_tree(c.id() as i32);
            let _ = c.wait();
        }
    }
}

pub fn migrate(args: BenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (network namespaces, CRIU)");
    }
    for tool in ["criu", "nc", "zstd", "tar", "gcc", "unshare", "nsenter", "ip"] {
        need(tool)?;
    }
    let work = PathBuf::from(format!("/dev/shm/ferry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = bench(&args, &work);
    if std::env::var_os("FERRY_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn bench(args: &BenchArgs, work: &Path) -> anyhow::Result<()> {
    std::fs::write(work.join("memhog.c"), MEMHOG_C)?;
    let memhog = work.join("memhog");
    run(
        Command::new("gcc").args(["-O2", "-o"]).arg(&memhog).arg(work.join("memhog.c")),
        "gcc memhog.c",
    )?;
    let net = Net::create(
        "fbench",
        "10.231.250",
        &["ferry-bench-a".to_string(), "ferry-bench-b".to_string()],
    )?;
    std::fs::create_dir_all(MOUNT)?;
    let exe = std::env::current_exe()?;
    let mut agents = Agents { children: Vec::new() };
    for i in 0..2 {
        let data = work.join(format!("host{i}"));
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(work.join(format!("agent{i}.log")))?;
        let args: Vec<String> = [
            "agent",
            "--listen",
            &format!("{}:50051", net.ip(i)),
            "--node",
            &format!("bench-{i}"),
            "--data-dir",
            MOUNT,
        ]
        .iter()
        .chain(if std::env::var_os("FERRY_BENCH_KEEP").is_some() {
            &["--keep-scratch"][..]
        } else {
            &[][..]
        })
        .map(|s| s.to_string())
        .collect();
        let child = net
            .command_on(i, &data, Path::new(MOUNT), &exe, &args)
            .env("RUST_LOG", std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start an agent")?;
        agents.children.push(child);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let addrs = [format!("http://{}:50051", net.ip(0)), format!("http://{}:50051", net.ip(1))];
    let (mut ca, mut cb) = rt.block_on(async {
        Ok::<_, anyhow::Error>((connect(&addrs[0]).await?, connect(&addrs[1]).await?))
    })?;

    warm_up(work, args.size_mib)?;
    let mut ferry = Vec::new();
    let mut post = Vec::new();
    let mut hand = Vec::new();
    let show = |s: &Sample| {
        eprintln!(
            "  downtime {:.0} ms (dump {:.0}, transfer {:.0}, restore {:.0})",
            s.downtime_ms, s.dump_ms, s.transfer_ms, s.restore_ms
        )
    };
    for r in 0..args.runs {
        // Rotate which method goes first, so none always inherits another's memory state.
        let mut order = ["ferry", "post-copy", "hand"];
        order.rotate_left(r % 3);
        for method in order {
            eprintln!("run {}/{}: {method}, {} MiB", r + 1, args.runs, args.size_mib);
            if method == "ferry" || method == "post-copy" {
                let mode =
                    if method == "ferry" { pb::Mode::StopAndCopy } else { pb::Mode::PostCopy };
                let s = rt.block_on(ferry_run(
                    &mut ca,
                    &mut cb,
                    &memhog,
                    args.size_mib,
                    &addrs[1],
                    mode,
                ))?;
                show(&s);
                if method == "ferry" {
                    ferry.push(s)
                } else {
                    post.push(s)
                }
            } else {
                let s = hand_run(&net, work, &memhog, args.size_mib, r)?;
                show(&s);
                hand.push(s);
            }
        }
    }
    drop(agents);
    drop(net);
    let report = render(args, &ferry, &post, &hand);
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, &report)
        .with_context(|| format!("cannot write {:?}", args.report))?;
    println!("{report}");
    eprintln!("report written to {}", args.report.display());
    Ok(())
}

/// Touches and frees eight times the process size in tmpfs first. On a VM the first touch of a
/// guest page is far slower than any later one; without this the first method measured pays for
/// it.
fn warm_up(work: &Path, size_mib: u64) -> anyhow::Result<()> {
    let path = work.join("warm-up");
    run(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", path.display()))
            .arg("bs=1M")
            .arg(format!("count={}", size_mib * 8)),
        "dd (warm-up)",
    )?;
    std::fs::remove_file(&path)?;
    Ok(())
}

async fn connect(addr: &str) -> anyhow::Result<AgentClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match AgentClient::connect(addr.to_string()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => bail!("agent at {addr} did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every log line of workload `id` on the agent `c` talks to, paging through GetLogs.
pub async fn all_logs(
    c: &mut AgentClient<Channel>,
    id: &str,
) -> Result<Vec<pb::LogLine>, tonic::Status> {
    let mut out = Vec::new();
    loop {
        let page = c
            .get_logs(pb::GetLogsRequest {
                id: id.into(),
                from_line: out.len() as u64,
                max_lines: 10_000,
            })
            .await?
            .into_inner();
        if page.lines.is_empty() {
            return Ok(out);
        }
        out.extend(page.lines);
    }
}

async fn log_lines(c: &mut AgentClient<Channel>, id: &str) -> anyhow::Result<Vec<String>> {
    Ok(all_logs(c, id).await?.into_iter().map(|l| l.text).collect())
}

async fn wait_line(
    c: &mut AgentClient<Channel>,
    id: &str,
    prefix: &str,
    after: usize,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = log_lines(c, id).await?;
        if let Some(l) = lines.iter().skip(after).find(|l| l.starts_with(prefix)) {
            return Ok(l.clone());
        }
        if Instant::now() > deadline {
            bail!("workload {id} never printed {prefix:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ferry_run(
    ca: &mut AgentClient<Channel>,
    cb: &mut AgentClient<Channel>,
    memhog: &Path,
    size: u64,
    target: &str,
    mode: pb::Mode,
) -> anyhow::Result<Sample> {
    let spec = pb::WorkloadSpec {
        argv: vec![memhog.to_string_lossy().into_owned(), size.to_string()],
        ..Default::default()
    };
    let s = ca.start_process(pb::StartProcessRequest { spec: Some(spec) }).await?.into_inner();
    let id = s.spec.map(|s| s.id).unwrap_or_default();
    wait_line(ca, &id, "tick ", 0).await?;
    let r = ca
        .migrate_out(pb::MigrateOutRequest {
            workload_id: id.clone(),
            target_address: target.into(),
            mode: mode as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    if r.outcome != pb::Outcome::Completed as i32 {
        bail!("ferry migration failed: {}", r.error);
    }
    eprintln!(
        "  codec: {}; zero pages not sent: {:.1} MB",
        r.transfer_codec,
        r.bytes_zero as f64 / 1e6
    );
    let before = log_lines(cb, &id).await?.len();
    let st = cb.get_status(pb::WorkloadRef { id: id.clone() }).await?.into_inner();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(st.main_pid, libc::SIGUSR1) };
    let verdict = wait_line(cb, &id, "verify ", before).await?;
    if !verdict.starts_with("verify ok") {
        bail!("memory check after ferry's migration: {verdict}");
    }
    cb.stop_process(pb::StopProcessRequest { id, grace_ms: 1000 }).await?;
    Ok(Sample {
        downtime_ms: r.downtime_ms as f64,
        total_ms: r.total_ms as f64,
        dump_ms: r.dump_ms as f64,
        transfer_ms: r.transfer_ms as f64,
        restore_ms: r.restore_ms as f64,
        bytes_raw: r.bytes_raw,
        bytes_wire: r.bytes_wire,
    })
}

fn nsenter(net: &Net, i: usize, script: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", net.netns(i).display())).args(["sh", "-c", script]);
    c
}

fn file_has(path: &Path, prefix: &str, after: usize) -> bool {
    std::fs::read_to_string(path)
        .map(|t| t.lines().skip(after).any(|l| l.starts_with(prefix)))
        .unwrap_or(false)
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The operator's script: dump to tmpfs, tar | zstd -1 | nc, untar, restore.
fn hand_run(net: &Net, work: &Path, memhog: &Path, size: u64, r: usize) -> anyhow::Result<Sample> {
    let dir = work.join(format!("hand{r}"));
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&dst)?;
    let out = dir.join("memhog.out");
    let mut original = Command::new("nsenter")
        .arg(format!("--net={}", net.netns(0).display()))
        .args(["unshare", "--pid", "--fork", "setsid"])
        .arg(memhog)
        .arg(size.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::null())
        .spawn()?;
    wait_for("memhog ready (hand run)", Duration::from_secs(120), || file_has(&out, "tick ", 0))?;
    let pid = descendants(original.id() as i32)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "memhog")
                .unwrap_or(false)
        })
        .context("memhog's pid")?;
    let mut receiver =
        nsenter(net, 1, &format!("nc -l {PORT} | zstd -d -q | tar -C '{}' -xf -", dst.display()))
            .stdin(Stdio::null())
            .spawn()?;
    wait_for("the receiving nc to listen", Duration::from_secs(10), || {
        nsenter(net, 1, &format!("ss -ltn | grep -q ':{PORT} '"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })?;

    let guard = KillOnDrop(receiver.id() as i32);
    let t0 = Instant::now();
    // Inside host A's network namespace, as an operator on that host would run it (CRIU run from
    // another namespace would dump and network-lock the namespace itself).
    run(
        &mut nsenter(net, 0, &format!("criu dump -t {pid} -D '{}' -o dump.log", src.display())),
        "criu dump",
    )?;
    let t1 = Instant::now();
    run(
        &mut nsenter(
            net,
            0,
            &format!(
                "tar -C '{}' -cf - . | zstd -1 -q | nc -N {} {PORT}",
                src.display(),
                net.ip(1)
            ),
        ),
        "tar | zstd | nc",
    )?;
    let status = receiver.wait()?;
    std::mem::forget(guard);
    if !status.success() {
        bail!("receiving pipeline failed: {status}");
    }
    let t2 = Instant::now();
    let pidfile = dir.join("restored.pid");
    run(
        &mut nsenter(
            net,
            1,
            &format!(
                "criu restore -D '{}' -d -o restore.log --pidfile '{}'",
                dst.display(),
                pidfile.display()
            ),
        ),
        "criu restore",
    )?;
    let t3 = Instant::now();
    let _ = original.wait();

    let restored: i32 =
        std::fs::read_to_string(&pidfile)?.trim().parse().context("restored pid")?;
    let seen = std::fs::read_to_string(&out).map(|t| t.lines().count()).unwrap_or(0);
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(restored, libc::SIGUSR1) };
    wait_for("the hand-restored memhog to verify", Duration::from_secs(60), || {
        file_has(&out, "verify ", seen)
    })?;
    let ok = file_has(&out, "verify ok", seen);
    // SAFETY: as above.
    unsafe { libc::kill(restored, libc::SIGKILL) };
    if !ok {
        bail!("memory check after the hand pipeline failed");
    }
    let wire = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C '{}' -cf - . | zstd -1 -q | wc -c", src.display()))
        .output()?;
    let bytes_wire = String::from_utf8_lossy(&wire.stdout).trim().parse().unwrap_or(0);
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    let s = Sample {
        downtime_ms: ms(t0, t3),
        total_ms: ms(t0, t3),
        dump_ms: ms(t0, t1),
        transfer_ms: ms(t1, t2),
        restore_ms: ms(t2, t3),
        bytes_raw: dir_bytes(&src),
        bytes_wire,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(s)
}

fn render(args: &BenchArgs, ferry: &[Sample], post: &[Sample], hand: &[Sample]) -> String {
    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let row = |name: &str, v: &[Sample]| {
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} |",
            med(v, |s| s.downtime_ms),
            med(v, |s| s.total_ms),
            med(v, |s| s.dump_ms),
            med(v, |s| s.transfer_ms),
            med(v, |s| s.restore_ms),
            med(v, |s| s.bytes_raw as f64) / 1e6,
            med(v, |s| s.bytes_wire as f64) / 1e6,
            med(v, Sample::mb_per_s),
        )
    };
    let hand_downtime = med(hand, |s| s.downtime_ms).max(1.0);
    let ratio = med(ferry, |s| s.downtime_ms) / hand_downtime;
    let post_ratio = med(post, |s| s.downtime_ms) / hand_downtime;
    let best = ratio.min(post_ratio);
    let host = crate_host_facts();
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark: migrating a {} MiB process", args.size_mib);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "`ferry bench migrate --size-mib {} --runs {}`, run {}. One process (tests/workloads/memhog.c: a third \
         random, a third zero, a third text pages) moved between two network-namespace hosts on this machine, {} \
         times with ferry in each mode and {} times with the hand pipeline (`criu dump` to tmpfs, `tar | zstd -1 | nc`, \
         untar, `criu restore -d`). Every restored process verified all its bytes. Medians; times in ms.",
        args.size_mib,
        args.runs,
        chrono_like_now(),
        ferry.len(),
        hand.len()
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Machine: {host}");
    let _ = writeln!(out);
    let _ = writeln!(out, "| method | downtime | total | dump | transfer | restore | MB raw | MB wire | MB/s (transfer) |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(out, "{}", row("ferry, stop-and-copy", ferry));
    let _ = writeln!(out, "{}", row("ferry, post-copy", post));
    let _ = writeln!(out, "{}", row("hand pipeline", hand));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Downtime ratio ferry / hand pipeline: stop-and-copy **{ratio:.2}**, post-copy **{post_ratio:.2}** \
         (target: at most 0.50 — {}).",
        if best <= 0.5 { "met" } else { "not met" }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Post-copy resumes the process on the target before its memory arrives; its `total` runs until \
         the last page arrived (the process runs meanwhile, faulting pages in over the network)."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Both hosts share this machine's memory, which flatters the hand pipeline's restore: `criu dump` \
         kills the original first, so the restore reuses its just-freed (warm) pages, while ferry keeps the \
         original frozen until the target holds a restored copy (so that any failure can roll back) and \
         its restore must fault in other pages. On this VM a first touch of guest memory costs several \
         times a reuse, which is most of the spread in the restore column; on separate machines the \
         target's memory does not depend on the source's."
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Every run (downtime / dump / transfer / restore, ms):");
    let _ = writeln!(out);
    let cell = |s: &Sample| {
        format!(
            "{:.0} / {:.0} / {:.0} / {:.0}",
            s.downtime_ms, s.dump_ms, s.transfer_ms, s.restore_ms
        )
    };
    for (i, ((f, p), h)) in ferry.iter().zip(post).zip(hand).enumerate() {
        let _ = writeln!(
            out,
            "- run {}: ferry stop-and-copy {}; ferry post-copy {} (all pages after {:.0}); hand {}",
            i + 1,
            cell(f),
            cell(p),
            p.total_ms,
            cell(h)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "For ferry, downtime runs from the freeze until the target confirmed the workload runs; the phases \
         are the agent's own (dump: CRIU dump on the source; transfer: until the last chunk left; restore: \
         verification, install and CRIU restore on the target). For the hand pipeline, downtime runs from \
         `criu dump` until `criu restore -d` returned."
    );
    out
}

fn crate_host_facts() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cores} cores ({cpu}), kernel {}", kernel.trim())
}

fn chrono_like_now() -> String {
    let out = Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}
