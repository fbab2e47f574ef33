//! `ferry bench migrate`: one run that moves mixed-content processes of each size given between two
//! network-namespace hosts with ferry (stop-and-copy and post-copy), and the same kind of process
//! with the hand pipeline an operator would script (`criu dump` to tmpfs, `tar | zstd -1 | nc`,
//! untar, `criu restore`), then writes a report with downtime, total, each phase, bytes raw and on
//! the wire, MB/s, CPU seconds per GB on each side, and how the figures compare with the targets.
//!
//! Both sides keep their images on tmpfs (/dev/shm) and every restored process is verified byte
//! for byte (memhog's SIGUSR1 check) before a run counts.
//!
//! CPU is read from the kernel's accounting, not sampled: for ferry, utime + stime + cutime +
//! cstime of each agent process (`/proc/PID/stat`) before and after the migration, so CRIU and the
//! lazy-pages daemon (the agents' children, reaped by them) count on their side; the source
//! agent also reaps the migrated original, whose own lifetime CPU (read from its tasks just before
//! the migration; it is frozen from then on) is subtracted. For the hand pipeline, the benchmark's
//! own waited-for children (getrusage RUSAGE_CHILDREN) around each step: `criu dump` and
//! `tar | zstd | nc` on the source, the receiving `nc | zstd -d | tar` and `criu restore` on the
//! target.

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
    /// Memory of the migrated process, MiB; several sizes separated by commas.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096])]
    pub size_mib: Vec<u64>,
    /// Runs of each method (medians are reported); even, so each method goes first equally often.
    #[arg(long, default_value_t = 4)]
    pub runs: usize,
    /// Methods to run: stop-and-copy, post-copy, hand (comma-separated); the report needs all
    /// three.
    #[arg(long, value_delimiter = ',', default_values_t = ["stop-and-copy".to_string(), "post-copy".to_string(), "hand".to_string()])]
    pub methods: Vec<String>,
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
    bytes_wire: u64,
    /// Bytes of memory that moved: the snapshot, plus post-copy's pages.
    bytes_moved: u64,
    /// CPU seconds spent on each side.
    cpu_source_s: f64,
    cpu_target_s: f64,
    /// ferry: how the chunks were encoded.
    codec: String,
}

impl Sample {
    /// Memory moved per second, from the freeze until the last byte arrived.
    fn mb_per_s(&self) -> f64 {
        if self.total_ms <= 0.0 {
            return 0.0;
        }
        self.bytes_moved as f64 / 1e6 / (self.total_ms / 1000.0)
    }
}

/// The samples of one process size.
struct SizeRuns {
    size_mib: u64,
    ferry: Vec<Sample>,
    post: Vec<Sample>,
    hand: Vec<Sample>,
}

impl SizeRuns {
    fn gb(&self) -> f64 {
        (self.size_mib << 20) as f64 / 1e9
    }
}

/// Whether another engineer's QEMU VMs run on this machine (they share its two cores).
pub(crate) fn qemu_running() -> bool {
    Command::new("pgrep")
        .args(["-f", "qemu-system"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn cpu_s(pid: i32) -> f64 {
    let hz = ferry_agent::sys::proc::ticks_per_second().max(1) as f64;
    ferry_agent::sys::proc::cpu_ticks_with_children(pid).unwrap_or(0) as f64 / hz
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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

pub(crate) fn need(tool: &str) -> anyhow::Result<()> {
    let ok =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output()?.status.success();
    if !ok {
        bail!("{tool} is not installed; run scripts/setup.sh");
    }
    Ok(())
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Kills `child` and every descendant.
pub(crate) fn kill_tree(pid: i32) {
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

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
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

pub(crate) struct Agents {
    pub(crate) children: Vec<Child>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill_tree(c.id() as i32);
            let _ = c.wait();
        }
    }
}

/// Starts `ferry agent` on hosts `0..n` of `net` (node names `bench-I`, listening on the host's
/// address, port 50051, each with its own data directory under `work` bind-mounted at [`MOUNT`]),
/// with mutual TLS as in production: the snapshot stream's cost includes its encryption. Agent
/// `i` logs to `work/agentI.log` at `RUST_LOG` = `FERRY_BENCH_LOG` or else `log`. Returns the
/// agents (killed with every descendant when dropped) and the wire for [`connect`].
pub(crate) fn start_agents(
    net: &Net,
    work: &Path,
    n: usize,
    log: &str,
) -> anyhow::Result<(Agents, ferry_proto::tls::Wire)> {
    std::fs::create_dir_all(MOUNT)?;
    let exe = std::env::current_exe()?;
    let tls = work.join("tls");
    let names: Vec<String> =
        (0..n).map(|i| format!("bench-{i}")).chain(["bench-client".to_string()]).collect();
    for name in &names {
        ferry_proto::tls::issue_into(&tls, name, &[], 1).map_err(|e| anyhow::anyhow!(e))?;
    }
    let wire = ferry_proto::tls::Wire::Tls(std::sync::Arc::new(
        ferry_proto::tls::Tls::load(&tls, "bench-client").map_err(|e| anyhow::anyhow!(e))?,
    ));
    let mut agents = Agents { children: Vec::new() };
    for i in 0..n {
        let data = work.join(format!("host{i}"));
        std::fs::create_dir_all(&data)?;
        let log_file = std::fs::File::create(work.join(format!("agent{i}.log")))?;
        let keep: &[&str] =
            if std::env::var_os("FERRY_BENCH_KEEP").is_some() { &["--keep-scratch"] } else { &[] };
        let args = agent_args(net, i, MOUNT, &tls, keep);
        let child = net
            .command_on(i, &data, Path::new(MOUNT), &exe, &args)
            .env("RUST_LOG", std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| log.into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("cannot start an agent")?;
        agents.children.push(child);
    }
    Ok((agents, wire))
}

/// `ferry agent` arguments for benchmark host `i` (node `bench-I` on the host's address, its data
/// at `mount`, mutual TLS from `tls`), then `extra`.
pub(crate) fn agent_args(
    net: &Net,
    i: usize,
    mount: &str,
    tls: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--listen".into(),
        format!("{}:50051", net.ip(i)),
        "--node".into(),
        format!("bench-{i}"),
        "--data-dir".into(),
        mount.into(),
        "--tls-dir".into(),
        tls.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn migrate(args: BenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (network namespaces, CRIU)");
    }
    for tool in ["criu", "nc", "zstd", "tar", "gcc", "unshare", "nsenter", "ip"] {
        need(tool)?;
    }
    remove_stale_warm_ups();
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
    let (agents, wire) = start_agents(&net, work, 2, "warn")?;
    let rt = tokio::runtime::Runtime::new()?;
    let addrs = [format!("http://{}:50051", net.ip(0)), format!("http://{}:50051", net.ip(1))];
    let (mut ca, mut cb) = rt.block_on(async {
        Ok::<_, anyhow::Error>((connect(&wire, &addrs[0]).await?, connect(&wire, &addrs[1]).await?))
    })?;
    let pids = [agents.children[0].id() as i32, agents.children[1].id() as i32];

    let mut qemu = qemu_running();
    let mut sizes = Vec::new();
    for &size in &args.size_mib {
        warm_up(work, size)?;
        let mut runs =
            SizeRuns { size_mib: size, ferry: Vec::new(), post: Vec::new(), hand: Vec::new() };
        let show = |s: &Sample| {
            eprintln!(
                "  downtime {:.0} ms (dump {:.0}, transfer {:.0}, restore {:.0}), total {:.0} ms, \
                 CPU {:.2} s source, {:.2} s target{}",
                s.downtime_ms,
                s.dump_ms,
                s.transfer_ms,
                s.restore_ms,
                s.total_ms,
                s.cpu_source_s,
                s.cpu_target_s,
                if s.codec.is_empty() { String::new() } else { format!("; codec: {}", s.codec) }
            )
        };
        for r in 0..args.runs {
            // Rotate which method goes first, so none always inherits another's memory state.
            let mut order = ["ferry", "post-copy", "hand"];
            order.rotate_left(r % 3);
            let wanted = |m: &str| {
                let name = if m == "ferry" { "stop-and-copy" } else { m };
                args.methods.iter().any(|x| x == name)
            };
            for method in order.into_iter().filter(|m| wanted(m)) {
                qemu |= qemu_running();
                eprintln!("run {}/{}: {method}, {size} MiB", r + 1, args.runs);
                if method == "ferry" || method == "post-copy" {
                    let mode =
                        if method == "ferry" { pb::Mode::StopAndCopy } else { pb::Mode::PostCopy };
                    let s = rt.block_on(ferry_run(
                        &mut ca, &mut cb, pids, &memhog, size, &addrs[1], mode,
                    ))?;
                    show(&s);
                    if method == "ferry" {
                        runs.ferry.push(s)
                    } else {
                        runs.post.push(s)
                    }
                } else {
                    let s = hand_run(&net, work, &memhog, size, r)?;
                    show(&s);
                    runs.hand.push(s);
                }
            }
        }
        sizes.push(runs);
    }
    qemu |= qemu_running();
    drop(agents);
    drop(net);
    write_report(&args.report, &render(args, &sizes, qemu))
}

/// Writes a benchmark's Markdown report to `path` (making its directory) and prints it.
pub(crate) fn write_report(path: &Path, report: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, report).with_context(|| format!("cannot write {path:?}"))?;
    println!("{report}");
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// Removes the warm-up file of a benchmark that was killed while it ran (its pid is gone): up to
/// 8 GiB of tmpfs that no one frees, which slowed every later run here until it was found.
pub(crate) fn remove_stale_warm_ups() {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else { return };
    for e in dir.flatten() {
        let name = e.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("ferry-bench-"));
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else { continue };
        let warm_up = e.path().join("warm-up");
        if !Path::new(&format!("/proc/{pid}")).exists() && warm_up.exists() {
            eprintln!("removing {} (left by a benchmark that did not finish)", warm_up.display());
            let _ = std::fs::remove_file(&warm_up);
        }
    }
}

/// Touches and frees eight times the process size (at most 8 GiB) in tmpfs first. On a VM the
/// first touch of a guest page is far slower than any later one; without this the first method
/// measured pays for it.
fn warm_up(work: &Path, size_mib: u64) -> anyhow::Result<()> {
    let path = work.join("warm-up");
    run(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", path.display()))
            .arg("bs=1M")
            .arg(format!("count={}", (size_mib * 8).min(8192))),
        "dd (warm-up)",
    )?;
    std::fs::remove_file(&path)?;
    Ok(())
}

pub(crate) async fn connect(
    wire: &ferry_proto::tls::Wire,
    addr: &str,
) -> anyhow::Result<AgentClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = wire.endpoint(addr).map_err(|e| anyhow::anyhow!(e))?;
    loop {
        match endpoint.connect().await.map(AgentClient::new) {
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

pub(crate) async fn log_lines(
    c: &mut AgentClient<Channel>,
    id: &str,
) -> anyhow::Result<Vec<String>> {
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
    agents: [i32; 2],
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
    // The original's own CPU so far (filling its memory): the source agent reaps it during the
    // migration, which adds it to the agent's children's time.
    let st = ca.get_status(pb::WorkloadRef { id: id.clone() }).await?.into_inner();
    let hz = ferry_agent::sys::proc::ticks_per_second().max(1) as f64;
    let original_s = st.tasks.iter().map(|t| t.cpu_ticks).sum::<u64>() as f64 / hz;
    let before = (cpu_s(agents[0]), cpu_s(agents[1]));
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
    let answered = Instant::now();
    // The memory is all in place on the target once its lazy-pages daemon ends (and is reaped,
    // so its CPU counts): post-copy's just after the source's page server; stop-and-copy's when
    // it has filled the workload from the received images. (A target that restores eagerly has
    // no daemon: GetMigration there finds nothing.) The next run must not overlap with it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = cb.get_migration(pb::MigrationRef { migration_id: r.migration_id.clone() }).await;
        match t {
            Ok(t) if t.get_ref().outcome != pb::Outcome::Unspecified as i32 => break,
            Err(_) => break,
            _ if Instant::now() > deadline => bail!("the target's lazy-pages daemon did not end"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let filled_after_ms =
        if mode == pb::Mode::StopAndCopy { answered.elapsed().as_secs_f64() * 1000.0 } else { 0.0 };
    let after = (cpu_s(agents[0]), cpu_s(agents[1]));
    let lines = log_lines(cb, &id).await?.len();
    let st = cb.get_status(pb::WorkloadRef { id: id.clone() }).await?.into_inner();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(st.main_pid, libc::SIGUSR1) };
    let verdict = wait_line(cb, &id, "verify ", lines).await?;
    if !verdict.starts_with("verify ok") {
        bail!("memory check after ferry's migration: {verdict}");
    }
    cb.stop_process(pb::StopProcessRequest { id, grace_ms: 1000 }).await?;
    Ok(Sample {
        downtime_ms: r.downtime_ms as f64,
        total_ms: r.total_ms as f64 + filled_after_ms,
        dump_ms: r.dump_ms as f64,
        transfer_ms: r.transfer_ms as f64,
        restore_ms: r.restore_ms as f64,
        // Post-copy's pages travel raw, from CRIU's page server through the agents' page tunnel.
        bytes_wire: r.bytes_wire + r.post_copy_pages_total * 4096,
        bytes_moved: r.bytes_raw + r.post_copy_pages_total * 4096,
        cpu_source_s: (after.0 - before.0 - original_s).max(0.0),
        cpu_target_s: after.1 - before.1,
        codec: if mode == pb::Mode::StopAndCopy { r.transfer_codec } else { String::new() },
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
    let cpu = ferry_agent::sys::proc::children_cpu_seconds;
    let c0 = cpu();
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
    let c1 = cpu();
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
    let c2 = cpu();
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
        bytes_wire,
        bytes_moved: dir_bytes(&src),
        cpu_source_s: c1 - c0,
        cpu_target_s: c2 - c1,
        codec: String::new(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(s)
}

/// CPU seconds per GB, two decimals; below the clock tick's resolution, "< 0.01".
fn cpu_cell(v: f64) -> String {
    if v < 0.005 {
        "< 0.01".into()
    } else {
        format!("{v:.2}")
    }
}

fn med(v: &[Sample], f: fn(&Sample) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

fn render(args: &BenchArgs, sizes: &[SizeRuns], qemu: bool) -> String {
    let host = crate_host_facts();
    let mut out = String::new();
    let list = |v: &[u64]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let _ = writeln!(
        out,
        "# Benchmark: migrating a process of {} MiB",
        list(&args.size_mib).replace(',', " and ")
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "`ferry bench migrate --size-mib {} --runs {}`, run {}. One process (tests/workloads/memhog.c: \
         a third random, a third zero, a third text pages) moved between two network-namespace hosts on \
         this machine, {} times per size with ferry in each mode and with the hand pipeline (`criu dump` \
         to tmpfs, `tar | zstd -1 | nc`, untar, `criu restore -d`). Every restored process verified all \
         its bytes. Medians; times in ms.",
        list(&args.size_mib),
        args.runs,
        chrono_like_now(),
        args.runs,
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Machine: {host}. CRIU: {}.", criu_version());
    let _ = writeln!(
        out,
        "{}",
        if qemu {
            "**Another engineer's QEMU VMs (`qemu-system`) were running during (part of) this run**, \
             sharing the two cores: absolute times are slower and noisier than on a quiet machine."
        } else {
            "No QEMU VMs (`qemu-system`) were running during this run."
        }
    );
    for r in sizes {
        let gb = r.gb();
        let row = |name: &str, v: &[Sample]| {
            format!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {} | {} |",
                med(v, |s| s.downtime_ms),
                med(v, |s| s.total_ms),
                med(v, |s| s.dump_ms),
                med(v, |s| s.transfer_ms),
                med(v, |s| s.restore_ms),
                med(v, |s| s.bytes_moved as f64) / 1e6,
                med(v, |s| s.bytes_wire as f64) / 1e6,
                med(v, Sample::mb_per_s),
                cpu_cell(med(v, |s| s.cpu_source_s) / gb),
                cpu_cell(med(v, |s| s.cpu_target_s) / gb),
            )
        };
        let _ = writeln!(out);
        let _ = writeln!(out, "## {} MiB", r.size_mib);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| method | downtime | total | dump | transfer | restore | MB moved | MB wire | MB/s | CPU s/GB source | CPU s/GB target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
        let _ = writeln!(out, "{}", row("ferry, stop-and-copy", &r.ferry));
        let _ = writeln!(out, "{}", row("ferry, post-copy", &r.post));
        let _ = writeln!(out, "{}", row("hand pipeline", &r.hand));
        let _ = writeln!(out);
        if let Some(c) = r.ferry.last().map(|s| s.codec.clone()).filter(|c| !c.is_empty()) {
            let _ = writeln!(out, "Stop-and-copy codec (last run): {c}.");
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "Every run (downtime / dump / transfer / restore / total, ms):");
        let _ = writeln!(out);
        let cell = |s: &Sample| {
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} / {:.0}",
                s.downtime_ms, s.dump_ms, s.transfer_ms, s.restore_ms, s.total_ms
            )
        };
        for (i, ((f, p), h)) in r.ferry.iter().zip(&r.post).zip(&r.hand).enumerate() {
            let _ = writeln!(
                out,
                "- run {}: stop-and-copy {}; post-copy {}; hand {}",
                i + 1,
                cell(f),
                cell(p),
                cell(h)
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "## Targets");
    let _ = writeln!(out);
    let at = |mib: u64| sizes.iter().find(|r| r.size_mib == mib);
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
    // A target is judged only on what was measured (a run with --methods may leave some out).
    if let Some(one) = at(1024).filter(|r| !r.post.is_empty()) {
        let d = med(&one.post, |s| s.downtime_ms);
        let _ = writeln!(
            out,
            "- Post-copy downtime at 1 GiB ≤ 300 ms: {d:.0} ms — {}.",
            met(d <= 300.0)
        );
        if let Some(four) = at(4096).filter(|r| !r.post.is_empty()) {
            let d4 = med(&four.post, |s| s.downtime_ms);
            let ratio = d4 / d.max(1.0);
            let _ = writeln!(
                out,
                "- Post-copy downtime at 4 GiB ≤ 1.5 × the 1 GiB figure: {d4:.0} ms = {ratio:.2} × — {}. \
                 The dump phase takes {:.0} ms at 1 GiB and {:.0} ms at 4 GiB, the restore {:.0} / \
                 {:.0} ms. With scripts/criu's patches CRIU's lazy dump no longer splices every page \
                 into pipes, nor logs every page pipe buffer, and it reads the smaps the source agent \
                 read before the freeze (the kernel's page table walk for them, about 11 ms per GiB \
                 here, is out of the freeze) when no mapping can have changed since \
                 (docs/migration.md).",
                met(ratio <= 1.5),
                med(&one.post, |s| s.dump_ms),
                med(&four.post, |s| s.dump_ms),
                med(&one.post, |s| s.restore_ms),
                med(&four.post, |s| s.restore_ms),
            );
        }
    }
    for r in sizes.iter().filter(|r| !r.ferry.is_empty() && !r.hand.is_empty()) {
        let ratio = med(&r.ferry, |s| s.downtime_ms) / med(&r.hand, |s| s.downtime_ms).max(1.0);
        let _ = writeln!(
            out,
            "- Stop-and-copy downtime ≤ 0.3 × the hand pipeline's at {} MiB: {:.0} / {:.0} ms = {ratio:.2} — {}.",
            r.size_mib,
            med(&r.ferry, |s| s.downtime_ms),
            med(&r.hand, |s| s.downtime_ms),
            met(ratio <= 0.3)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "## How the figures are taken");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "- Downtime: for ferry, from the freeze until the target confirmed the workload runs; the phases \
         are the agent's own (dump: CRIU dump on the source, for post-copy until only the lazy pages are \
         left; transfer: until the last chunk left; restore: the rest of the receiving, verification, \
         install and CRIU restore on the target; by default a lazy one for stop-and-copy too, whose \
         memory the target fills in from the received images right after the resume, docs/migration.md). \
         For the hand pipeline, from `criu dump` until \
         `criu restore -d` returned.\n\
         - Total: from the migration request (for ferry's stop-and-copy this includes the target \
         allocating the page images before the freeze) until the last byte of memory was on the \
         target (stop-and-copy: when the target confirmed the resume, plus the time until its lazy-pages daemon had filled every page in from the \
         received images, as the benchmark saw it; post-copy: until the source's page \
         server had served every page; the workload runs meanwhile). MB moved: the snapshot plus, for \
         post-copy, the lazy pages (4 KiB each, counted by the target's lazy-pages daemon). MB/s: MB moved \
         over the total. MB wire: what crossed the network; post-copy's pages go uncompressed \
         through the agents' page tunnel (gRPC over mutual TLS) from CRIU's page server to the target's \
         lazy-pages daemon.\n\
         - CPU s/GB: CPU seconds (user + system) per GB of the process's memory, from the kernel's \
         accounting rather than sampling. ferry: utime + stime + cutime + cstime of each agent \
         (`/proc/PID/stat`) before and after the migration, so CRIU (dump, restore, page server, \
         lazy-pages daemon: the agents' children, reaped by them) counts on its side; the source agent \
         also reaps the migrated original, whose own CPU (its tasks' time just before the migration; it \
         is frozen from then on) is subtracted; \"< 0.01\" means what is left is below the resolution \
         of that accounting (10 ms ticks). Post-copy's CPU is mostly the relaying of pages through the \
         agents' tunnel and, on the target, CRIU's lazy-pages daemon copying them in (scripts/criu's \
         patch keeps four requests in flight and has it wait rather than poll while they are out). \
         Hand pipeline: the benchmark's waited-for children \
         (getrusage RUSAGE_CHILDREN) around each step — `criu dump` and `tar | zstd | nc` on the \
         source, the receiving `nc | zstd -d | tar` and `criu restore -d` on the target. Both hosts \
         share this machine's two cores, so one side's CPU slows the other.\n\
         - Both hosts share this machine's memory, which flatters the hand pipeline's restore: `criu \
         dump` kills the original first, so the restore reuses its just-freed pages, while ferry keeps \
         the original frozen until the target holds a restored copy (so that any failure can roll \
         back) and its restore must fault in other pages; on this VM a first touch of guest memory \
         costs several times a reuse."
    );
    out
}

/// `criu --version` in one line ("4.2.1, GitID 4.2.1+ferry.<id>" when built with scripts/criu's patches).
pub(crate) fn criu_version() -> String {
    let out = Command::new("criu").arg("--version").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    match (field("Version:"), field("GitID:")) {
        (Some(v), Some(g)) => format!("{v}, GitID {g}"),
        (Some(v), None) => format!("{v} (stock)"),
        _ => "unknown".into(),
    }
}

pub(crate) fn crate_host_facts() -> String {
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

pub(crate) fn chrono_like_now() -> String {
    let out = Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}
