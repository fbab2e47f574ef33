//! A workload's own address moves with it, and so do its TCP connections (docs/network.md).
//!
//! Hosts are network namespaces on one bridge: three run agents, a fourth runs the clients (in
//! the test, through sockets made in that host's namespace). A capture on the bridge counts the
//! TCP resets every host sent while the workloads moved; there must be none.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::agent as pb;
use harness::net::Net;
use harness::*;

const T: Duration = Duration::from_secs(60);
const REDIS_PORT: u16 = 6391;

fn redis_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/redis-server");
    assert!(p.is_file(), "redis-server is not installed: scripts/setup.sh installs it");
    p
}

/// Runs `f` on a thread of its own inside the network namespace at `netns` (a host of the test
/// net): the sockets it makes belong to that namespace for good, whichever thread uses them.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns)?;
        // SAFETY: setns on this short-lived thread only.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP connection to `addr` made from the host at `netns`.
fn connect_from(netns: &Path, addr: &str) -> std::io::Result<TcpStream> {
    let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    in_netns(netns, move || TcpStream::connect_timeout(&sa, Duration::from_secs(5)))
}

/// One Redis connection, spoken in RESP.
struct Redis {
    out: TcpStream,
    inp: BufReader<TcpStream>,
}

impl Redis {
    fn new(s: TcpStream) -> Redis {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Redis { out: s.try_clone().unwrap(), inp: BufReader::new(s) }
    }

    fn cmd(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.out.write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.inp.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        Ok(line.trim_end().to_string())
    }
}

/// What a client loop saw: every INCR's answer, the longest wait for one, and its error.
#[derive(Default)]
struct Seen {
    values: Vec<i64>,
    longest: Duration,
    error: Option<String>,
}

/// INCRs `key` on `r` until `stop`, every 5 ms.
fn incr_loop(mut r: Redis, key: &str, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) -> Redis {
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        match r.cmd(&["INCR", key]) {
            Ok(v) if v.starts_with(':') => {
                let mut s = seen.lock().unwrap();
                s.values.push(v[1..].parse().unwrap());
                s.longest = s.longest.max(t.elapsed());
            }
            Ok(other) => {
                seen.lock().unwrap().error = Some(format!("unexpected answer {other:?}"));
                break;
            }
            Err(e) => {
                seen.lock().unwrap().error = Some(e.to_string());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    r
}

/// tcpdump on the bridge, keeping every TCP segment to or from a workload's address with RST set.
struct Resets {
    child: std::process::Child,
    file: PathBuf,
    _dir: TempDir,
}

impl Resets {
    fn capture(bridge: &str, addr: &str) -> Resets {
        let dir = TempDir::new("ferry-rst");
        let file = dir.path().join("rst.pcap");
        let mut child = Command::new("tcpdump")
            .args(["-i", bridge, "-U", "-n", "-w"])
            .arg(&file)
            .arg(format!("host {addr} and tcp[tcpflags] & tcp-rst != 0"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is needed (scripts/setup.sh installs it)");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "tcpdump: {line}");
        Resets { child, file, _dir: dir }
    }

    /// The resets captured so far, one line each.
    fn seen(&mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        kill(self.child.id() as i32, libc::SIGINT);
        let _ = self.child.wait();
        let out =
            Command::new("tcpdump").args(["-n", "-r"]).arg(&self.file).output().expect("tcpdump");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Resets {
    /// Asserts the capture saw no reset.
    fn none(mut self) {
        let rst = self.seen();
        assert!(rst.is_empty(), "TCP resets on the bridge: {rst:#?}");
    }
}

impl Drop for Resets {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    net: Net,
    agents: Vec<AgentProc>,
    clients: Vec<Client>,
}

/// Hosts 0..agents with an agent each, and one more host for the clients.
async fn cluster(agents: usize, extra: &[&str]) -> Cluster {
    let net = Net::new(agents + 1);
    let procs: Vec<AgentProc> = (0..agents).map(|i| net.agent(i, extra)).collect();
    let mut clients = Vec::new();
    for a in &procs {
        clients.push(a.client().await);
    }
    Cluster { net, agents: procs, clients }
}

impl Cluster {
    fn client_host(&self) -> PathBuf {
        self.net.netns(self.agents.len())
    }

    /// Starts redis-server with its own address `addr`, on host `i`.
    async fn redis(&mut self, i: usize, addr: &str) -> String {
        let bin = redis_bin();
        let mut argv = vec![bin.to_string_lossy().into_owned()];
        argv.extend(redis_args(REDIS_PORT));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut sp = spec(&argv);
        sp.user = "redis".into();
        sp.group = "redis".into();
        sp.address = addr.into();
        let st = start(&mut self.clients[i], sp).await;
        assert_eq!(st.spec.as_ref().unwrap().address, addr, "the address is reported");
        let id = id_of(&st);
        wait_log(&self.clients[i], &id, "redis ready", T, |l| {
            l.iter().any(|x| x.contains("Ready to accept connections"))
        })
        .await;
        id
    }

    /// Migrates `id` from host `from` to host `to` in `mode`; returns the result.
    async fn migrate(
        &mut self,
        id: &str,
        from: usize,
        to: usize,
        mode: pb::Mode,
        fault: pb::Fault,
    ) -> pb::MigrationResult {
        let r = self.clients[from]
            .migrate_out(pb::MigrateOutRequest {
                workload_id: id.to_string(),
                target_address: self.agents[to].addr.clone(),
                mode: mode as i32,
                fault: fault as i32,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("MigrateOut {id} failed: {s}"))
            .into_inner();
        eprintln!(
            "network: {id} host{from} -> host{to} {mode:?}: outcome={} freeze={}ms dump={}ms \
             restore={}ms downtime={}ms total={}ms error={:?}",
            r.outcome, r.freeze_ms, r.dump_ms, r.restore_ms, r.downtime_ms, r.total_ms, r.error
        );
        r
    }
}

fn completed(r: &pb::MigrationResult) {
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{r:?}");
}

/// The answers of a client loop must be 1, 2, 3, ... without a gap, a repeat or an error.
fn continuous(seen: &Seen, from: i64) {
    assert!(seen.error.is_none(), "the client saw an error: {:?}", seen.error);
    assert!(!seen.values.is_empty(), "no answer at all");
    for (i, v) in seen.values.iter().enumerate() {
        assert_eq!(*v, from + i as i64, "the counter must go on by one: {:?}", seen.values);
    }
}

/// Redis with its own address keeps ONE client connection through migrations host0 → host1
/// (stop-and-copy) → host2 (post-copy) → host0 (stop-and-copy): the client, on a fourth host,
/// INCRs a counter every 5 ms throughout and never sees an error, a gap or a new connection
/// (`CLIENT ID` unchanged), and no host sends a TCP reset.
#[tokio::test]
async fn redis_keeps_one_client_connection_through_three_migrations() {
    require_root("redis_keeps_one_client_connection_through_three_migrations");
    let mut c = cluster(3, &[]).await;
    let l = looping_redis(&mut c, 200).await;
    let (id, addr) = (l.id.clone(), l.addr.clone());
    let resets = Resets::capture(c.net.bridge(), &addr);
    let hops =
        [(0, 1, pb::Mode::StopAndCopy), (1, 2, pb::Mode::PostCopy), (2, 0, pb::Mode::StopAndCopy)];
    let mut downtimes = Vec::new();
    for (from, to, mode) in hops {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = l.answered();
        let res = c.migrate(&id, from, to, mode, pb::Fault::None).await;
        completed(&res);
        downtimes.push(res.downtime_ms);
        l.answered_past(before + 20, "the client's INCRs answered after the move").await;
    }
    let (mut r, answers) = l.goes_on(0).await;
    assert_eq!(
        r.cmd(&["INCRBY", "counter", "0"]).unwrap(),
        format!(":{answers}"),
        "the server's counter is the client's"
    );
    eprintln!("network: downtimes {downtimes:?} ms");
    resets.none();
    // The address is answered by host0 alone again: routed into the workload there, nowhere
    // else.
    for i in 0..3 {
        let route = host_route(&c.net, i, &addr);
        assert_eq!(route.contains("dev fw"), i == 0, "host{i}: {route}");
    }
}

/// Whether host `i` routes `addr` into a workload's pair (it answers for the address).
fn routes_in(net: &Net, i: usize, addr: &str) -> bool {
    host_route(net, i, addr).contains("dev fw")
}

/// How host `i` routes `addr`.
fn host_route(net: &Net, i: usize, addr: &str) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(net.netns(i).file_name().unwrap())
        .args(["route", "get", addr])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A migration that fails (a corrupted chunk, refused by the target) rolls back: the client's
/// connection goes on on the source, answers continuous, no reset. In stop-and-copy the pages
/// go during the dump, so CRIU's dump fails and lets go of the connections itself; in post-copy
/// the dump has finished (the connections are in repair mode) and the agent takes them out.
async fn failed_migration_leaves_the_client_connection_alive(mode: pb::Mode, last: u8) {
    require_root("a_failed_migration_leaves_the_client_connection_alive_on_the_source");
    let mut c = cluster(2, &[FI]).await;
    let l = looping_redis(&mut c, last).await;
    let (id, addr) = (l.id.clone(), l.addr.clone());
    let resets = Resets::capture(c.net.bridge(), &addr);
    let res = c.migrate(&id, 0, 1, mode, pb::Fault::CorruptChunk).await;
    assert_eq!(res.outcome, pb::Outcome::RolledBack as i32, "{res:?}");
    l.goes_on(20).await;
    resets.none();
    assert!(routes_in(&c.net, 0, &addr), "host0 answers for it again");
    let st = status(&mut c.clients[0], &id).await;
    assert!(st.exit.is_none(), "{st:?}");
}

#[tokio::test]
async fn a_failed_stop_and_copy_leaves_the_client_connection_alive_on_the_source() {
    failed_migration_leaves_the_client_connection_alive(pb::Mode::StopAndCopy, 201).await;
}

#[tokio::test]
async fn a_failed_post_copy_leaves_the_client_connection_alive_on_the_source() {
    failed_migration_leaves_the_client_connection_alive(pb::Mode::PostCopy, 203).await;
}

/// The address is refused when it is malformed, when another workload on the node holds it,
/// and when the node has no LAN it belongs to.
#[tokio::test]
async fn bad_addresses_are_refused_with_a_reason() {
    require_root("bad_addresses_are_refused_with_a_reason");
    let mut c = cluster(1, &[]).await;
    let addr = format!("{}.202", c.net.prefix());
    let mut sp = spec(&["sleep", "60"]);
    sp.address = addr.clone();
    start(&mut c.clients[0], sp.clone()).await;
    for (address, want) in [
        ("10.1.2", "not an IPv4 address"),
        ("127.0.0.5", "cannot be a workload's own"),
        (addr.as_str(), "is held by workload"),
        ("192.0.2.7", "no link of this node has an on-link route to 192.0.2.7"),
    ] {
        let mut sp = sp.clone();
        sp.address = address.into();
        let e = c.clients[0]
            .start_process(pb::StartProcessRequest { spec: Some(sp) })
            .await
            .expect_err(address);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{address}: {e}");
        assert!(e.message().contains(want), "{address}: {}", e.message());
    }
}

/// The body byte at offset `i` of streamer.py's answers.
fn pattern(i: u64) -> u8 {
    ((i * 7 + 3) % 251) as u8
}

/// Sends `GET /stream/N` on `s` and reads the whole answer, checking every body byte; calls
/// `progress` with the bytes read so far after each read. Returns the longest wait for a read.
fn download(s: &mut TcpStream, n: u64, progress: &dyn Fn(u64)) -> Result<Duration, String> {
    use std::io::Read;
    s.write_all(format!("GET /stream/{n} HTTP/1.1\r\nHost: w\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).map_err(|e| format!("reading the head: {e}"))?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 200") || !head.contains(&format!("Content-Length: {n}")) {
        return Err(format!("unexpected head {head:?}"));
    }
    let (mut got, mut longest, mut buf) = (0u64, Duration::ZERO, vec![0u8; 65536]);
    while got < n {
        let t = Instant::now();
        let k = s.read(&mut buf).map_err(|e| format!("after {got} bytes: {e}"))?;
        if k == 0 {
            return Err(format!("the connection closed after {got} of {n} bytes"));
        }
        longest = longest.max(t.elapsed());
        for (j, b) in buf[..k].iter().enumerate() {
            let at = got + j as u64;
            if *b != pattern(at) {
                return Err(format!("byte {at} is {b}, not {}", pattern(at)));
            }
        }
        got += k as u64;
        progress(got);
    }
    Ok(longest)
}

/// An HTTP download over a keep-alive connection goes on across a stop-and-copy migration, and
/// the next download on the same connection across a post-copy one back: every byte checked, no
/// reset.
#[tokio::test]
async fn an_http_download_streams_on_across_migrations_every_byte_checked() {
    require_root("an_http_download_streams_on_across_migrations_every_byte_checked");
    let mut c = cluster(2, &[]).await;
    let addr = format!("{}.204", c.net.prefix());
    let mut sp = spec(&["python3", &workload("streamer.py"), "8080"]);
    sp.address = addr.clone();
    let id = id_of(&start(&mut c.clients[0], sp).await);
    wait_log(&c.clients[0], &id, "streamer listening", T, |l| {
        l.iter().any(|x| x.contains("listening 8080"))
    })
    .await;
    let resets = Resets::capture(c.net.bridge(), &addr);
    let conn = connect_from(&c.client_host(), &format!("{addr}:8080")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    const N: u64 = 3_000_000;
    for (from, to, mode) in [(0, 1, pb::Mode::StopAndCopy), (1, 0, pb::Mode::PostCopy)] {
        let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let (mut conn, got) = (conn.try_clone().unwrap(), got.clone());
            std::thread::spawn(move || download(&mut conn, N, &|n| got.store(n, Ordering::SeqCst)))
        };
        wait_until("a fifth of the download", T, || {
            let n = got.load(Ordering::SeqCst);
            async move { (n > N / 5).then_some(()) }
        })
        .await;
        completed(&c.migrate(&id, from, to, mode, pb::Fault::None).await);
        let at_commit = got.load(Ordering::SeqCst);
        assert!(at_commit < N, "the download outlasted the migration ({at_commit} of {N})");
        let longest = reader.join().unwrap().unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        eprintln!(
            "network: download across {mode:?}: {N} bytes checked, longest read wait {longest:?}"
        );
    }
    resets.none();
}

/// A workload that is a TCP client keeps its one connection to a server on another host across
/// migrations (host0 → host1 stop-and-copy, back by post-copy), and its UDP socket answers at
/// its address wherever it runs.
#[tokio::test]
async fn a_workload_as_client_keeps_its_connection_and_its_udp_socket() {
    require_root("a_workload_as_client_keeps_its_connection_and_its_udp_socket");
    let mut c = cluster(2, &[]).await;
    let addr = format!("{}.205", c.net.prefix());
    let server_ip = c.net.ip(2);
    let listener = in_netns(&c.client_host(), {
        let ip = server_ip.clone();
        move || std::net::TcpListener::bind(format!("{ip}:7000"))
    })
    .unwrap();
    let udp = in_netns(&c.client_host(), {
        let ip = server_ip.clone();
        move || std::net::UdpSocket::bind(format!("{ip}:0"))
    })
    .unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server: counts connections, echoes each line, checks the numbers go on by one.
    let lines = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let error = Arc::new(Mutex::new(None::<String>));
    {
        let (lines, accepted, error) = (lines.clone(), accepted.clone(), error.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (lines, error) = (lines.clone(), error.clone());
                std::thread::spawn(move || {
                    let mut out = conn.try_clone().unwrap();
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { return };
                        let want = lines.load(Ordering::SeqCst) + 1;
                        if line != want.to_string() {
                            *error.lock().unwrap() = Some(format!("got {line:?}, want {want}"));
                        }
                        lines.store(want, Ordering::SeqCst);
                        if out.write_all(format!("{line}\n").as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    let mut sp = spec(&["python3", &workload("talker.py"), &server_ip, "7000", "9000"]);
    sp.address = addr.clone();
    let id = id_of(&start(&mut c.clients[0], sp).await);
    wait_log(&c.clients[0], &id, "talker connected", T, |l| {
        l.iter().any(|x| x.contains("connected")) && l.iter().any(|x| x.starts_with("udp"))
    })
    .await;
    let resets = Resets::capture(c.net.bridge(), &addr);
    let echo = |what: &str| {
        udp.send_to(what.as_bytes(), format!("{addr}:9000")).unwrap();
        let mut buf = [0u8; 128];
        let (k, from) = udp.recv_from(&mut buf).expect("a UDP answer");
        assert_eq!(from.to_string(), format!("{addr}:9000"));
        String::from_utf8_lossy(&buf[..k]).into_owned()
    };
    assert_eq!(echo("before"), "echo before");
    for (from, to, mode) in [(0, 1, pb::Mode::StopAndCopy), (1, 0, pb::Mode::PostCopy)] {
        let before = lines.load(Ordering::SeqCst);
        completed(&c.migrate(&id, from, to, mode, pb::Fault::None).await);
        wait_until("the workload talking after the move", T, || {
            let n = lines.load(Ordering::SeqCst);
            async move { (n > before + 30).then_some(()) }
        })
        .await;
        assert_eq!(echo(&format!("after {mode:?}")), format!("echo after {mode:?}"));
    }
    assert_eq!(*error.lock().unwrap(), None);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, never remade");
    let out: Vec<String> = logs(&mut c.clients[0], &id).await.into_iter().map(|l| l.text).collect();
    assert!(!out.iter().any(|l| l.starts_with("error")), "{out:?}");
    resets.none();
}

const FI: &str = "--enable-fault-injection";

/// A Redis with its own address on host0 and a client on the client host INCRing in a loop.
struct Looping {
    addr: String,
    id: String,
    client_id: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: std::thread::JoinHandle<Redis>,
}

async fn looping_redis(c: &mut Cluster, last: u8) -> Looping {
    let addr = format!("{}.{last}", c.net.prefix());
    let id = c.redis(0, &addr).await;
    let mut r =
        Redis::new(connect_from(&c.client_host(), &format!("{addr}:{REDIS_PORT}")).unwrap());
    let client_id = r.cmd(&["CLIENT", "ID"]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let thread = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || incr_loop(r, "counter", stop, seen))
    };
    wait_until("the client looping", T, || {
        let n = seen.lock().unwrap().values.len();
        async move { (n > 20).then_some(()) }
    })
    .await;
    Looping { addr, id, client_id, stop, seen, thread }
}

impl Looping {
    /// Answers the client has had so far.
    fn answered(&self) -> usize {
        self.seen.lock().unwrap().values.len()
    }

    /// Waits until the client has had more than `n` answers.
    async fn answered_past(&self, n: usize, what: &str) {
        wait_until(what, T, || {
            let got = self.answered();
            async move { (got > n).then_some(()) }
        })
        .await;
    }

    /// Waits for `more` answers past those so far, stops the loop and checks the connection:
    /// every answer in order, the same one throughout. Returns it and how many answers came.
    async fn goes_on(self, more: usize) -> (Redis, usize) {
        self.answered_past(self.answered() + more, "the client's INCRs answered again").await;
        self.stop.store(true, Ordering::SeqCst);
        let mut r = self.thread.join().unwrap();
        let seen = self.seen.lock().unwrap();
        continuous(&seen, 1);
        assert_eq!(r.cmd(&["CLIENT", "ID"]).unwrap(), self.client_id, "the same connection");
        eprintln!(
            "network: {} INCRs over one connection, longest wait {:?}",
            seen.values.len(),
            seen.longest
        );
        (r, seen.values.len())
    }
}

/// Migration `mid` of `id` from host `from` to host `to`, asked for in the background (the
/// source may die before it answers).
fn migrate_in_background(
    c: &Cluster,
    from: usize,
    to: usize,
    id: &str,
    mid: &str,
    fault: pb::Fault,
    arg: u32,
) -> tokio::task::JoinHandle<Result<pb::MigrationResult, tonic::Status>> {
    let mut client = c.clients[from].clone();
    let req = pb::MigrateOutRequest {
        workload_id: id.to_string(),
        target_address: c.agents[to].addr.clone(),
        migration_id: mid.to_string(),
        fault: fault as i32,
        fault_arg: arg,
        ..Default::default()
    };
    tokio::spawn(async move { client.migrate_out(req).await.map(|r| r.into_inner()) })
}

/// Whether agent `c` runs workload `id`.
async fn runs(c: &mut Client, id: &str) -> bool {
    c.get_status(pb::WorkloadRef { id: id.to_string() })
        .await
        .map(|s| s.into_inner().exit.is_none())
        .unwrap_or(false)
}

/// The source agent SIGKILLed at step `at` of a migration (FAULT_CRASH_AT: 1 right after the
/// freeze, 4 once the target confirmed the commit) and restarted: the workload runs once, on
/// the target when the commit had reached it, else on the source, and the client's one
/// connection goes on either way (what the dead agent held, the client sends again); no reset,
/// and only the node running it answers for the address.
async fn source_crash_keeps_the_connection(at: u32, on_target: bool, last: u8) {
    require_root("source_crash_keeps_the_connection");
    let mut c = cluster(2, &[FI]).await;
    let l = looping_redis(&mut c, last).await;
    let resets = Resets::capture(c.net.bridge(), &l.addr);
    let mid = format!("m-netcrash{at}-{}", std::process::id());
    let r = migrate_in_background(&c, 0, 1, &l.id, &mid, pb::Fault::CrashAt, at);
    assert!(r.await.unwrap().is_err(), "the source agent died mid-migration, yet answered");
    let old = c.agents.remove(0);
    c.agents.insert(0, c.net.restart_agent(0, old, &[FI]));
    c.clients[0] = c.agents[0].client().await;
    let end = resolved(&c.clients[0], &mid).await;
    eprintln!("network: resolved after the crash at {at}: {} {:?}", end.outcome, end.error);
    let (runs_on, gone_from) = if on_target { (1, 0) } else { (0, 1) };
    let want = if on_target { pb::Outcome::Completed } else { pb::Outcome::RolledBack };
    assert_eq!(end.outcome, want as i32, "{end:?}");
    let id = l.id.clone();
    l.goes_on(50).await;
    assert!(runs(&mut c.clients[runs_on], &id).await, "host{runs_on} runs it");
    wait_until("the other copy to be gone", T, || {
        let mut cl = c.clients[gone_from].clone();
        let id = id.clone();
        async move { (!runs(&mut cl, &id).await).then_some(()) }
    })
    .await;
    let addr = format!("{}.{last}", c.net.prefix());
    assert!(routes_in(&c.net, runs_on, &addr), "host{runs_on} routes it in");
    assert!(!routes_in(&c.net, gone_from, &addr), "host{gone_from} does not");
    resets.none();
}

#[tokio::test]
async fn source_agent_killed_right_after_the_freeze_gives_the_connection_back_on_the_source() {
    source_crash_keeps_the_connection(1, false, 210).await;
}

#[tokio::test]
async fn source_agent_killed_after_the_commit_leaves_the_connection_on_the_target() {
    source_crash_keeps_the_connection(4, true, 211).await;
}

/// The target agent SIGKILLed once it recorded the commit, its copy still stopped: the source
/// keeps the original frozen and the address held, and asks again; the restarted target runs
/// its copy and answers for the address; the source lets go of it, sends on what it held and
/// kills the original. The client's connection goes on, on the target.
#[tokio::test]
async fn target_agent_killed_while_committing_keeps_the_connection() {
    require_root("target_agent_killed_while_committing_keeps_the_connection");
    let net = Net::new(3);
    let a = net.agent(0, &[FI]);
    let b = net.agent(1, &[FI, "--test-crash-at-commit", "recorded"]);
    let clients = vec![a.client().await, b.client().await];
    let mut c = Cluster { net, agents: vec![a, b], clients };
    let l = looping_redis(&mut c, 212).await;
    let resets = Resets::capture(c.net.bridge(), &l.addr);
    let mid = format!("m-nettarget-{}", std::process::id());
    let r = migrate_in_background(&c, 0, 1, &l.id, &mid, pb::Fault::None, 0);
    let r = r.await.unwrap().expect("the source answers");
    assert_eq!(r.outcome, pb::Outcome::Failed as i32, "the commit's answer is unknown: {r:?}");
    let old = c.agents.remove(1);
    c.agents.insert(1, c.net.restart_agent(1, old, &[FI]));
    c.clients[1] = c.agents[1].client().await;
    let end = resolved(&c.clients[0], &mid).await;
    assert_eq!(end.outcome, pb::Outcome::Completed as i32, "{end:?}");
    let (id, addr) = (l.id.clone(), l.addr.clone());
    l.goes_on(50).await;
    assert!(runs(&mut c.clients[1], &id).await, "host1 runs it");
    assert!(routes_in(&c.net, 1, &addr), "host1 routes it in");
    assert!(!routes_in(&c.net, 0, &addr), "host0 does not");
    resets.none();
}

/// A workload on the node's network whose connection cannot move is refused in preflight,
/// before anything freezes, with the connection named and the way out (its own address); the
/// client's connection carries on untouched.
#[tokio::test]
async fn a_connection_on_the_node_network_is_refused_in_preflight() {
    require_root("a_connection_on_the_node_network_is_refused_in_preflight");
    let mut c = cluster(2, &[]).await;
    let id = c.redis(0, "").await;
    let node_ip = c.net.ip(0);
    let mut r =
        Redis::new(connect_from(&c.client_host(), &format!("{node_ip}:{REDIS_PORT}")).unwrap());
    assert_eq!(r.cmd(&["INCR", "n"]).unwrap(), ":1");
    let res = c.migrate(&id, 0, 1, pb::Mode::StopAndCopy, pb::Fault::None).await;
    assert_eq!(res.outcome, pb::Outcome::RolledBack as i32, "{res:?}");
    assert_eq!(res.failed_phase, "preflight", "{res:?}");
    assert_eq!(res.freeze_ms, 0, "nothing froze: {res:?}");
    for want in [
        "1 established TCP connection(s) on node host0's network",
        &format!("{node_ip}:{REDIS_PORT} <-> "),
        "its own address",
    ] {
        assert!(res.error.contains(want), "{want:?} in {:?}", res.error);
    }
    assert_eq!(r.cmd(&["INCR", "n"]).unwrap(), ":2", "the connection carries on");
}

/// A cooperative workload (no CRIU: the program saves and reloads its state) with its own
/// address: the address moves with it all the same, answered by the target alone afterwards.
#[tokio::test]
async fn a_cooperative_workload_takes_its_address_along() {
    require_root("a_cooperative_workload_takes_its_address_along");
    let mut c = cluster(2, &[]).await;
    let addr = format!("{}.206", c.net.prefix());
    let script = repo().join("coop/examples/counter.py");
    let mut sp = spec(&["python3", &script.to_string_lossy()]);
    sp.engine = pb::Engine::Cooperative as i32;
    sp.env.insert("PYTHONPATH".into(), repo().join("coop/python").to_string_lossy().into_owned());
    sp.address = addr.clone();
    let id = id_of(&start(&mut c.clients[0], sp).await);
    wait_log(&c.clients[0], &id, "counting", T, |l| l.iter().any(|x| x.starts_with("count ")))
        .await;
    assert!(routes_in(&c.net, 0, &addr), "host0 routes it in");
    let r = c.migrate(&id, 0, 1, pb::Mode::StopAndCopy, pb::Fault::None).await;
    completed(&r);
    assert_eq!(r.engine, "cooperative");
    let st = status(&mut c.clients[1], &id).await;
    assert_eq!(st.spec.unwrap().address, addr);
    wait_log(&c.clients[1], &id, "counting on", T, |l| {
        l.iter().any(|x| x.starts_with("restored count="))
    })
    .await;
    assert!(routes_in(&c.net, 1, &addr), "host1 routes it in");
    assert!(!routes_in(&c.net, 0, &addr), "host0 no longer does");
}

/// How host `i` answers ARP for `addr`: its proxy entries for it.
fn proxy_entries(net: &Net, i: usize, addr: &str) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(net.netns(i).file_name().unwrap())
        .args(["neigh", "show", "proxy", addr])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An agent killed and restarted under a running workload with its own address: the client's
/// connection goes on (the node's kernel keeps the routes; the new agent answers for the address
/// again), and once the workload is stopped, nothing of its address is left on the node, which
/// gives it to the next workload.
#[tokio::test]
async fn an_address_outlives_its_agent_and_goes_with_its_workload() {
    require_root("an_address_outlives_its_agent_and_goes_with_its_workload");
    let mut c = cluster(1, &[]).await;
    let l = looping_redis(&mut c, 207).await;
    let (id, addr) = (l.id.clone(), l.addr.clone());
    let old = c.agents.remove(0);
    c.agents.insert(0, c.net.restart_agent(0, old, &[]));
    c.clients[0] = c.agents[0].client().await;
    l.goes_on(100).await;
    assert!(!proxy_entries(&c.net, 0, &addr).is_empty(), "host0 answers ARP for it");
    c.clients[0]
        .stop_process(pb::StopProcessRequest { id: id.clone(), grace_ms: 2000 })
        .await
        .expect("stop");
    wait_exited(&mut c.clients[0], &id, T).await;
    wait_until("the address to leave host0", T, || {
        let gone = proxy_entries(&c.net, 0, &addr).is_empty() && !routes_in(&c.net, 0, &addr);
        async move { gone.then_some(()) }
    })
    .await;
    let mut sp = spec(&["sleep", "60"]);
    sp.address = addr.clone();
    start(&mut c.clients[0], sp).await;
    assert!(routes_in(&c.net, 0, &addr), "the next workload has it");
}

/// A restore that fails on the target (the workload holds a file open that the target node
/// lacks), after the source's dump succeeded: the migration rolls back and the client's HTTP
/// download goes on on the source over the same connection, every byte checked, no reset.
#[tokio::test]
async fn a_failed_restore_leaves_the_download_going_on_the_source() {
    require_root("a_failed_restore_leaves_the_download_going_on_the_source");
    let mut c = cluster(2, &[]).await;
    let addr = format!("{}.208", c.net.prefix());
    // A file of the source node only (its agent's private data directory), held open.
    std::fs::write(harness::net::data_path(&c.agents[0], "held"), b"only on host0").unwrap();
    let script = format!(
        "exec 3<{}/held; exec python3 {} 8080",
        harness::net::DATA_MOUNT,
        workload("streamer.py")
    );
    let mut sp = spec(&["sh", "-c", &script]);
    sp.address = addr.clone();
    let id = id_of(&start(&mut c.clients[0], sp).await);
    wait_log(&c.clients[0], &id, "streamer listening", T, |l| {
        l.iter().any(|x| x.contains("listening 8080"))
    })
    .await;
    let resets = Resets::capture(c.net.bridge(), &addr);
    let conn = connect_from(&c.client_host(), &format!("{addr}:8080")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    const N: u64 = 3_000_000;
    let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (mut conn, got) = (conn.try_clone().unwrap(), got.clone());
        std::thread::spawn(move || download(&mut conn, N, &|n| got.store(n, Ordering::SeqCst)))
    };
    wait_until("a fifth of the download", T, || {
        let n = got.load(Ordering::SeqCst);
        async move { (n > N / 5).then_some(()) }
    })
    .await;
    let r = c.migrate(&id, 0, 1, pb::Mode::StopAndCopy, pb::Fault::None).await;
    assert_eq!(r.outcome, pb::Outcome::RolledBack as i32, "{r:?}");
    assert_eq!(r.failed_phase, "restore", "{r:?}");
    let longest = reader.join().unwrap().expect("the download goes on on the source");
    eprintln!("network: download across a failed restore: {N} bytes checked, longest read wait {longest:?}");
    // And the same connection serves the next download.
    let mut conn = conn;
    download(&mut conn, 100_000, &|_| {}).expect("a second download on the same connection");
    assert!(runs(&mut c.clients[0], &id).await, "it runs on host0");
    assert!(!runs(&mut c.clients[1], &id).await, "nothing on host1");
    assert!(routes_in(&c.net, 0, &addr), "host0 answers for it again");
    resets.none();
}

/// One line through an echo connection: sent, and the same line back.
fn echo(s: &mut TcpStream, line: &str) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut back = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut back)?;
    if back.trim_end() != line {
        return Err(std::io::Error::other(format!("sent {line:?}, got {back:?}")));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_keeps_the_connections_of_a_workload_with_its_own_address_and_restores_it_elsewhere(
) {
    require_root("a_checkpoint_keeps_the_connections_of_a_workload_with_its_own_address");
    let mut c = cluster(2, &[]).await;
    let addr = format!("{}.209", c.net.prefix());
    let mut sp = spec(&["python3", &workload("echoserver.py"), "7777"]);
    sp.address = addr.clone();
    let id = id_of(&start(&mut c.clients[0], sp).await);
    wait_log(&c.clients[0], &id, "listening", T, |l| l.iter().any(|x| x.starts_with("listening")))
        .await;
    let to = format!("{addr}:7777");
    let mut conn = connect_from(&c.client_host(), &to).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo(&mut conn, "before").unwrap();
    // A checkpoint dumps the established connection (CRIU puts it in repair mode) and the
    // workload goes on with it: the agent takes it out of repair mode before the tree resumes.
    let info = c.clients[0]
        .take_checkpoint(pb::WorkloadRef { id: id.clone() })
        .await
        .unwrap_or_else(|s| panic!("TakeCheckpoint: {s}"))
        .into_inner();
    eprintln!("checkpoint {}: freeze {} ms", info.id, info.freeze_ms);
    for i in 0..20 {
        echo(&mut conn, &format!("after {i}")).unwrap();
    }
    // The node goes; host1 restores the checkpoint and answers for the address from then on.
    c.clients[0]
        .stop_process(pb::StopProcessRequest { id: id.clone(), grace_ms: 100 })
        .await
        .unwrap();
    let s = c.clients[1]
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            checkpoint: Some(info),
            holders: vec![pb::Peer { node: "host0".into(), address: c.agents[0].addr.clone() }],
            restore_id: "r-own".into(),
            reason: "test".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("RestoreCheckpoint: {s}"))
        .into_inner();
    assert_eq!(s.spec.unwrap().address, addr);
    assert!(routes_in(&c.net, 1, &addr), "host1 routes it in");
    assert!(!routes_in(&c.net, 0, &addr), "host0 no longer does");
    // New connections reach the restored server; the old one was restored closed, so it fails
    // rather than hangs.
    let mut fresh = connect_from(&c.client_host(), &to).unwrap();
    fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo(&mut fresh, "restored").unwrap();
    assert!(echo(&mut conn, "old").is_err(), "the checkpointed connection is closed on restore");
}
