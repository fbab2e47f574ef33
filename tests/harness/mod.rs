//! A small harness for scenario tests: real `ferry agent` processes, real workloads, polling
//! instead of sleeps, cleanup in `Drop`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_proto::agent::agent_client::AgentClient;
use ferry_proto::agent::{self as pb};
use tonic::transport::Channel;

pub mod cluster;
pub mod garage;
pub mod net;

pub type Client = AgentClient<Channel>;

static TLS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The tests' cluster CA with a "coordinator" and a "test-client" certificate, made once per
/// test binary: every agent and coordinator in the tests runs with mutual TLS, as in production.
pub fn tls_dir() -> &'static Path {
    TLS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-test-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for name in ["coordinator", "test-client"] {
            ferry_proto::tls::issue_into(&dir, name, &[], 1).expect("test certificates");
        }
        // The cluster key that seals checkpoints, as `ferry certs` writes it: every agent of a
        // test binary shares it (tls_for copies it).
        let key = ferry_agent::checkpoint::object::ClusterKey::generate_hex();
        ferry_agent::sys::fsmode::write(&dir.join("cluster.key"), key.as_bytes()).unwrap();
        dir
    })
}

/// A TLS directory under `parent` for the part `name`: the tests' CA and its own certificate
/// (a directory of its own, so that tests running at once never write the same file).
pub fn tls_for(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ca.pem", "ca-key.pem", "cluster.key"] {
        std::fs::copy(tls_dir().join(f), dir.join(f)).unwrap();
    }
    ferry_proto::tls::issue_into(&dir, name, &[], 1).expect("a test certificate");
    dir
}

/// How the tests themselves dial agents and coordinators: mutual TLS as "test-client".
pub fn wire() -> ferry_proto::tls::Wire {
    ferry_proto::tls::Wire::Tls(std::sync::Arc::new(
        ferry_proto::tls::Tls::load(tls_dir(), "test-client").expect("the test client certificate"),
    ))
}

/// A TLS channel to `addr`.
pub async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    wire().endpoint(addr).expect("a valid address").connect().await
}

/// True when running as root. Tests that need root call [`require_root`].
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the test loudly when it cannot run here for lack of root: a test that needs root never
/// passes without running. Returns true (the callers' `if !require_root(..) { return; }` stays).
pub fn require_root(test: &str) -> bool {
    assert!(
        is_root(),
        "{test} needs root (PID namespaces, CRIU, network namespaces): run the suite as root"
    );
    true
}

/// Open descriptors of process `pid` (the entries of /proc/PID/fd).
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Resident set size of process `pid` in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Polls `f` every 20 ms until it returns Some, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `ferry agent` process with its own data dir, serving on a loopback port.
pub struct AgentProc {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    _tmp: TempDir,
}

impl AgentProc {
    /// An agent on loopback in the test's own namespaces.
    pub fn start(name: &str) -> AgentProc {
        AgentProc::start_with(name, &[])
    }

    /// An agent on loopback with extra flags.
    pub fn start_with(name: &str, extra: &[&str]) -> AgentProc {
        let tmp = TempDir::new(&format!("ferry-test-{name}"));
        let data_dir = tmp.path().join("data");
        let args: Vec<String> = [
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--node",
            name,
            "--stop-grace-secs",
            "5",
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--tls-dir",
            &tls_for(tmp.path(), name).to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(&args).args(extra);
        AgentProc::spawn(name, cmd, tmp, data_dir)
    }

    /// Runs `cmd` (which ends up exec'ing `ferry agent`) and waits for its address.
    pub fn spawn(name: &str, mut cmd: Command, tmp: TempDir, data_dir: PathBuf) -> AgentProc {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let tag = name.to_string();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent {tag}] {line}");
                if line.contains("serving gRPC") {
                    if let Some(addr) = line.split("listen=").nth(1) {
                        let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("agent {name} exited ({status}) before serving; its log is above");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent {name} did not report its listen address within 30 s");
            }
        };
        AgentProc { child, addr: format!("https://{addr}"), data_dir, _tmp: tmp }
    }

    pub async fn client(&self) -> Client {
        AgentClient::new(channel(&self.addr).await.expect("connect to agent"))
    }

    /// A client, or why the agent cannot be reached.
    pub async fn client_checked(&self) -> Result<Client, tonic::transport::Error> {
        Ok(AgentClient::new(channel(&self.addr).await?))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl AgentProc {
    /// Drops an agent that was killed already (as a crash would) without killing the workloads
    /// its data dir records: an agent started next on that data dir takes them.
    pub fn crash_leaving_workloads(mut self) {
        self.data_dir = PathBuf::new();
        drop(self);
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // Workloads outlive their agent by design; a test must not leave any behind.
        for pid in descendants(self.pid()) {
            kill(pid, 9);
        }
        // And those it re-adopted from an earlier agent (not its descendants), as its data dir
        // records them.
        if !self.data_dir.as_os_str().is_empty() {
            for pid in ferry_agent::workload::recorded_live_pids(&self.data_dir) {
                kill(pid, 9);
            }
        }
        // The graceful drain is not under test here; do not wait for it.
        kill(self.pid(), 9);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// A process as /proc/PID/stat shows it.
#[derive(Debug, Clone)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub comm: String,
    pub cpu_ticks: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 2..].split_whitespace().collect();
    Some(Stat {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        state: rest.first()?.chars().next()?,
        comm,
        cpu_ticks: rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?,
    })
}

pub fn all_stats() -> HashMap<i32, Stat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat(pid).map(|s| (pid, s)))
        .collect()
}

/// Every descendant of `root` (not root itself).
pub fn descendants(root: i32) -> Vec<i32> {
    let all = all_stats();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for s in all.values().filter(|s| s.ppid == p) {
            out.push(s.pid);
            frontier.push(s.pid);
        }
    }
    out
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let p = base.join(format!("{prefix}-{}-{i}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        panic!("cannot create a temp dir under {base:?}");
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A spec running `argv`.
pub fn spec(argv: &[&str]) -> pb::WorkloadSpec {
    pb::WorkloadSpec { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

pub async fn start(c: &mut Client, spec: pb::WorkloadSpec) -> pb::ProcessStatus {
    c.start_process(pb::StartProcessRequest { spec: Some(spec) })
        .await
        .unwrap_or_else(|s| panic!("StartProcess failed: {s}"))
        .into_inner()
}

pub async fn status(c: &mut Client, id: &str) -> pb::ProcessStatus {
    c.get_status(pb::WorkloadRef { id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("GetStatus {id} failed: {s}"))
        .into_inner()
}

pub fn id_of(s: &pb::ProcessStatus) -> String {
    s.spec.as_ref().map(|s| s.id.clone()).unwrap_or_default()
}

pub fn is_exited(s: &pb::ProcessStatus) -> bool {
    s.state == pb::ProcessState::Exited as i32
}

/// Waits until workload `id` has exited and its exit is recorded, and returns its last status.
/// (A tree that is gone reads as exited at once; the exit code or signal follows moments later,
/// once the reaper's wait has been recorded.)
pub async fn wait_exited(c: &mut Client, id: &str, timeout: Duration) -> pb::ProcessStatus {
    wait_until(&format!("workload {id} to exit"), timeout, || {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            let s = status(&mut c, &id).await;
            (is_exited(&s) && s.exit.is_some()).then_some(s)
        }
    })
    .await
}

/// All log lines of workload `id`.
pub async fn logs(c: &mut Client, id: &str) -> Vec<pb::LogLine> {
    ferry::bench::all_logs(c, id).await.unwrap_or_else(|s| panic!("GetLogs {id} failed: {s}"))
}

/// The test workloads (tests/workloads), built once per test binary.
pub fn workloads() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-workloads-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/build.sh");
        let out = Command::new("sh").arg(&script).arg(&dir).output().expect("run build.sh");
        assert!(
            out.status.success(),
            "building test workloads failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// The path of a test workload as a string.
pub fn workload(name: &str) -> String {
    workloads().join(name).to_string_lossy().into_owned()
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Log lines of `id` (text only) once `pred` holds for them.
pub async fn wait_log(
    c: &Client,
    id: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    wait_until(what, timeout, || {
        let mut c = c.clone();
        let id = id.to_string();
        let pred = &pred;
        async move {
            let lines: Vec<String> = logs(&mut c, &id).await.into_iter().map(|l| l.text).collect();
            pred(&lines).then_some(lines)
        }
    })
    .await
}

/// What agent `c` says became of migration `mid`, once it says (a source agent restarted
/// mid-migration resolves it on its own).
pub async fn resolved(c: &Client, mid: &str) -> pb::MigrationResult {
    wait_until("the migration to be resolved", Duration::from_secs(60), || {
        let (mut c, mid) = (c.clone(), mid.to_string());
        async move {
            let r = c.get_migration(pb::MigrationRef { migration_id: mid }).await.ok()?;
            let r = r.into_inner();
            (r.outcome != pb::Outcome::Unspecified as i32).then_some(r)
        }
    })
    .await
}

/// redis-server's arguments for a test (the network benchmark's).
pub fn redis_args(port: u16) -> Vec<String> {
    ferry::bench_network::redis_args(port)
}
