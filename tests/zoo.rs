//! A zoo of real applications from Debian packages, each started through the agent, checked
//! from outside (a client in the test, which reaches the hosts' namespaces over the bridge),
//! migrated from host0 to host1 by stop-and-copy and by post-copy, and checked again on the
//! target's address: Redis's keys, memcached's items, nginx's master and workers serving a file,
//! a Python program's threads and SQLite rows, a Node.js server's counter, a JVM's threads and
//! heap. Clients connect only between migrations (established TCP connections are not moved); a
//! server answers at the target's address after it moved. And one that does not move yet:
//! SQLite in WAL mode, refused and rolled back. docs/apps.md lists what moves and what does not.

mod harness;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::agent as pb;
use harness::net::Net;
use harness::*;

const T: Duration = Duration::from_secs(60);

/// Two hosts with an agent each.
struct Zoo {
    net: Net,
    a: AgentProc,
    b: AgentProc,
    ca: Client,
    cb: Client,
}

async fn zoo() -> Zoo {
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let (ca, cb) = (a.client().await, b.client().await);
    Zoo { net, a, b, ca, cb }
}

/// The absolute path of `bin`, found in /usr/sbin, /usr/bin or /bin; panics naming the Debian
/// `package` that installs it when it is missing (a zoo test never passes without running).
fn need(bin: &str, package: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{bin} is not installed: apt-get install {package} (scripts/setup.sh does)")
        })
}

fn mode_name(mode: pb::Mode) -> &'static str {
    match mode {
        pb::Mode::PostCopy => "post-copy",
        _ => "stop-and-copy",
    }
}

/// Migrates `id` from host0 to host1 in `mode`; prints its figures; panics with the error and
/// the tail of CRIU's log unless it completed by CRIU.
async fn migrate(z: &mut Zoo, id: &str, mode: pb::Mode) -> pb::MigrationResult {
    let spec = status(&mut z.ca, id).await.spec.unwrap_or_default();
    let program = spec.argv.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string());
    let r =
        z.ca.migrate_out(pb::MigrateOutRequest {
            workload_id: id.to_string(),
            target_address: z.b.addr.clone(),
            mode: mode as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("MigrateOut {id} failed: {s}"))
        .into_inner();
    eprintln!(
        "zoo: {} {id} {}: outcome={} freeze={}ms dump={}ms transfer={}ms restore={}ms \
         downtime={}ms total={}ms raw={} wire={} error={:?}",
        program.unwrap_or_default(),
        mode_name(mode),
        r.outcome,
        r.freeze_ms,
        r.dump_ms,
        r.transfer_ms,
        r.restore_ms,
        r.downtime_ms,
        r.total_ms,
        r.bytes_raw,
        r.bytes_wire,
        r.error
    );
    if r.outcome != pb::Outcome::Completed as i32 {
        // CRIU's log, as the data dir of the agent that wrote it holds it on this side.
        let text = [&z.a, &z.b]
            .iter()
            .map(|ag| r.criu_log.replace(harness::net::DATA_MOUNT, &ag.data_dir.to_string_lossy()))
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        panic!(
            "{id}: {} migration failed in {}: {}\n{}:\n{}",
            mode_name(mode),
            r.failed_phase,
            r.error,
            r.criu_log,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(r.engine, "criu", "{r:?}");
    assert!(r.downtime_ms > 0 && r.bytes_raw > 0, "{r:?}");
    r
}

/// Sends `request` to `addr` and reads until the server closes the connection (every request
/// here asks it to: QUIT, `Connection: close`), so no connection is left when a migration
/// starts.
async fn exchange(addr: String, request: String) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || {
        let sock: std::net::SocketAddr = addr.parse().expect("socket address");
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .await
    .expect("client thread")
}

/// `exchange`, retried until it succeeds (a server still starting, or just resumed).
async fn exchange_when_up(what: &str, addr: &str, request: &str) -> String {
    wait_until(what, T, || {
        let (addr, request) = (addr.to_string(), request.to_string());
        async move { exchange(addr, request).await.ok().filter(|s| !s.is_empty()) }
    })
    .await
}

/// Socket descriptors held by the workload's processes on the node `c` talks to.
async fn sockets(c: &mut Client, id: &str) -> usize {
    status(c, id)
        .await
        .tasks
        .iter()
        .flat_map(|t| std::fs::read_dir(format!("/proc/{}/fd", t.pid)).into_iter().flatten())
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count()
}

/// Waits until the workload holds no more sockets than `idle` (its clients' connections closed
/// on its side too: an established connection would fail the dump).
async fn settle(c: &Client, id: &str, idle: usize) {
    wait_until("the server to close its clients' connections", T, || {
        let (mut c, id) = (c.clone(), id.to_string());
        async move { (sockets(&mut c, &id).await <= idle).then_some(()) }
    })
    .await
}

/// The sockets the workload holds once that number stays the same for 100 ms.
async fn idle(c: &Client, id: &str) -> usize {
    wait_until("a steady number of sockets", T, || {
        let (mut c, id) = (c.clone(), id.to_string());
        async move {
            let n = sockets(&mut c, &id).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            (sockets(&mut c, &id).await == n).then_some(n)
        }
    })
    .await
}

/// The workload's processes other than ferry-init on the node `c` talks to: (pid, comm).
async fn procs(c: &mut Client, id: &str) -> Vec<(i32, String)> {
    status(c, id).await.tasks.iter().filter(|t| !t.init).map(|t| (t.pid, t.comm.clone())).collect()
}

/// The uid of user `name` in /etc/passwd.
fn uid_of(name: &str) -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:"))?.split(':').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no user {name} in /etc/passwd"))
}

/// The real uid of process `pid`.
fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
}

/// Numbers N of log lines `PREFIX N`, in order.
fn numbers(lines: &[String], prefix: &str) -> Vec<u64> {
    lines.iter().filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok()).collect()
}

fn assert_consecutive(nums: &[u64], what: &str) {
    assert!(!nums.is_empty(), "no {what}");
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what} must continue without a gap or restart: {nums:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

const REDIS_PORT: u16 = 6390;

/// Redis's replies to `commands` (inline commands, one a line), QUIT appended.
async fn redis(ip: &str, commands: &[String]) -> std::io::Result<Vec<String>> {
    let mut req: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
    req.push_str("QUIT\r\n");
    let out = exchange(format!("{ip}:{REDIS_PORT}"), req).await?;
    let mut lines = out.split("\r\n").filter(|l| !l.is_empty()).map(str::to_string);
    let mut replies = Vec::new();
    while let Some(l) = lines.next() {
        // A bulk string's length line, then its value ("$-1": none).
        if l.starts_with('$') && l != "$-1" {
            replies.push(lines.next().unwrap_or_default());
        } else {
            replies.push(l);
        }
    }
    // The QUIT's +OK: the whole answer came.
    match replies.pop() {
        Some(ok) if ok == "+OK" => Ok(replies),
        _ => Err(std::io::Error::other(format!("an incomplete answer: {out:?}"))),
    }
}

async fn redis_keeps_its_keys(mode: pb::Mode) {
    require_root("redis_keeps_its_keys");
    let bin = need("redis-server", "redis-server");
    let mut z = zoo().await;
    let mut argv = vec![bin.to_string_lossy().into_owned()];
    argv.extend(redis_args(REDIS_PORT));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut sp = spec(&argv);
    sp.user = "redis".into();
    sp.group = "redis".into();
    let id = id_of(&start(&mut z.ca, sp).await);
    wait_log(&z.ca, &id, "redis ready", T, |l| {
        l.iter().any(|x| x.contains("Ready to accept connections"))
    })
    .await;
    let idle = sockets(&mut z.ca, &id).await;
    let (src, dst) = (z.net.ip(0), z.net.ip(1));
    // 500 keys, a list and a counter, pipelined.
    let mut cmds: Vec<String> = (0..500).map(|i| format!("SET key:{i} value-{i}")).collect();
    cmds.extend((0..50).map(|i| format!("RPUSH list item{i}")));
    cmds.extend((0..7).map(|_| "INCR counter".to_string()));
    let replies = redis(&src, &cmds).await.expect("redis on the source");
    assert!(replies[..500].iter().all(|r| r == "+OK"), "{replies:?}");
    assert_eq!(replies.last().map(String::as_str), Some(":7"));
    settle(&z.ca, &id, idle).await;

    migrate(&mut z, &id, mode).await;
    let check =
        ["DBSIZE", "GET key:0", "GET key:499", "LLEN list", "LINDEX list 49", "INCR counter"]
            .map(String::from);
    let got = wait_until("redis answering on the target", T, || {
        let (dst, check) = (dst.clone(), check.clone());
        async move { redis(&dst, &check).await.ok() }
    })
    .await;
    assert_eq!(got, [":502", "value-0", "value-499", ":50", "item49", ":8"], "after {mode:?}");
    assert!(redis(&src, &check).await.is_err(), "nothing answers on the source any more");
    let after = procs(&mut z.cb, &id).await;
    let comms: Vec<&str> = after.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(comms, ["redis-server"], "redis alone, on the target");
    assert_eq!(real_uid(after[0].0), Some(uid_of("redis")), "still the redis user's");
}

#[tokio::test]
async fn redis_keeps_its_keys_stop_and_copy() {
    redis_keeps_its_keys(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn redis_keeps_its_keys_post_copy() {
    redis_keeps_its_keys(pb::Mode::PostCopy).await;
}

// ---------------------------------------------------------------------------------------------
// memcached
// ---------------------------------------------------------------------------------------------

const MEMCACHED_PORT: u16 = 11290;

/// memcached's answer to `request` (text protocol), `quit` appended.
async fn memcached(ip: &str, request: &str) -> std::io::Result<String> {
    exchange(format!("{ip}:{MEMCACHED_PORT}"), format!("{request}quit\r\n")).await
}

async fn memcached_keeps_its_items(mode: pb::Mode) {
    require_root("memcached_keeps_its_items");
    let bin = need("memcached", "memcached");
    let mut z = zoo().await;
    let port = MEMCACHED_PORT.to_string();
    // Four worker threads (its default), 64 MiB of cache, as the package's user.
    let argv =
        [bin.to_str().unwrap(), "-p", &port, "-U", "0", "-l", "0.0.0.0", "-m", "64", "-t", "4"];
    let mut sp = spec(&argv);
    sp.user = "memcache".into();
    sp.group = "memcache".into();
    let id = id_of(&start(&mut z.ca, sp).await);
    let (src, dst) = (z.net.ip(0), z.net.ip(1));
    let set: String = (0..200).map(|i| format!("set item{i} 0 0 {}\r\nv{i:05}\r\n", 6)).collect();
    let stored = wait_until("memcached on the source", T, || {
        let (src, set) = (src.clone(), set.clone());
        async move { memcached(&src, &set).await.ok() }
    })
    .await;
    assert_eq!(stored.matches("STORED").count(), 200, "{stored}");
    let incr = memcached(&src, "set hits 0 0 1\r\n5\r\nincr hits 2\r\n").await.unwrap();
    assert_eq!(incr, "STORED\r\n7\r\n");
    // Its listening socket alone (no UDP: -U 0).
    assert_eq!(idle(&z.ca, &id).await, 1);

    migrate(&mut z, &id, mode).await;
    let get = "get item0 item199\r\nincr hits 1\r\nstats items\r\n";
    let got = wait_until("memcached on the target", T, || {
        let dst = dst.clone();
        async move { memcached(&dst, get).await.ok().filter(|s| !s.is_empty()) }
    })
    .await;
    assert!(
        got.starts_with("VALUE item0 0 6\r\nv00000\r\nVALUE item199 0 6\r\nv00199\r\nEND\r\n8\r\n"),
        "{got}"
    );
    assert!(got.contains(":number 201\r\n"), "every item still there: {got}");
    assert!(memcached(&src, get).await.is_err(), "nothing answers on the source any more");
    let after = procs(&mut z.cb, &id).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(real_uid(after[0].0), Some(uid_of("memcache")), "still the memcache user's");
    let threads = std::fs::read_dir(format!("/proc/{}/task", after[0].0)).unwrap().count();
    assert!(threads >= 5, "its main thread and four workers: {threads}");
}

#[tokio::test]
async fn memcached_keeps_its_items_stop_and_copy() {
    memcached_keeps_its_items(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn memcached_keeps_its_items_post_copy() {
    memcached_keeps_its_items(pb::Mode::PostCopy).await;
}

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

const NGINX_PORT: u16 = 8090;

fn http_get(path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: zoo\r\nConnection: close\r\n\r\n")
}

async fn nginx_master_and_workers_serve_from_the_target(mode: pb::Mode) {
    require_root("nginx_master_and_workers_serve_from_the_target");
    let bin = need("nginx", "nginx");
    let dir = TempDir::new("ferry-zoo-nginx");
    let d = dir.path().to_string_lossy().into_owned();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    let body = format!("served by the zoo's nginx {}\n", std::process::id());
    std::fs::write(dir.path().join("www/index.html"), &body).unwrap();
    // Workers run as www-data: the way to the file must be theirs to read.
    for p in [dir.path().to_path_buf(), dir.path().join("www")] {
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let conf = format!(
        "daemon off; master_process on; worker_processes 2; user www-data;\n\
         pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log {d}/access.log; lingering_close off; keepalive_timeout 0;\n\
           server {{ listen {NGINX_PORT}; root {d}/www; location / {{ }} }} }}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let mut z = zoo().await;
    let conf_path = format!("{d}/nginx.conf");
    let argv = [bin.to_str().unwrap(), "-p", &d, "-e", &format!("{d}/error.log"), "-c", &conf_path];
    let id = id_of(&start(&mut z.ca, spec(&argv)).await);
    let (src, dst) =
        (format!("{}:{NGINX_PORT}", z.net.ip(0)), format!("{}:{NGINX_PORT}", z.net.ip(1)));
    let first = exchange_when_up("nginx serving on the source", &src, &http_get("/")).await;
    assert!(first.starts_with("HTTP/1.1 200") && first.ends_with(&body), "{first}");
    let before = procs(&mut z.ca, &id).await;
    assert_eq!(
        before.iter().filter(|(_, c)| c == "nginx").count(),
        3,
        "master and 2 workers: {before:?}"
    );
    // Listening socket in each, the master's channels to its workers; the client's gone.
    idle(&z.ca, &id).await;

    migrate(&mut z, &id, mode).await;
    for _ in 0..4 {
        let got = exchange_when_up("nginx serving on the target", &dst, &http_get("/")).await;
        assert!(got.starts_with("HTTP/1.1 200") && got.ends_with(&body), "{got}");
        assert!(got.contains("Server: nginx"), "{got}");
    }
    let missing = exchange_when_up("nginx's 404", &dst, &http_get("/nothing-here")).await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(exchange(src, http_get("/")).await.is_err(), "nothing serves on the source any more");
    let after = procs(&mut z.cb, &id).await;
    let comms = |v: &[(i32, String)]| v.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>();
    assert_eq!(comms(&after), comms(&before), "the master and its two workers: {after:?}");
    let www = uid_of("www-data");
    let workers = after.iter().filter(|(pid, _)| real_uid(*pid) == Some(www)).count();
    assert_eq!(workers, 2, "two workers as www-data on the target: {after:?}");
    // Every request reached the access log, from the target's workers too.
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert_eq!(log.lines().count(), 6, "{log}");
}

#[tokio::test]
async fn nginx_master_and_workers_serve_from_the_target_stop_and_copy() {
    nginx_master_and_workers_serve_from_the_target(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn nginx_master_and_workers_serve_from_the_target_post_copy() {
    nginx_master_and_workers_serve_from_the_target(pb::Mode::PostCopy).await;
}

// ---------------------------------------------------------------------------------------------
// Python: threads and an SQLite database
// ---------------------------------------------------------------------------------------------

/// Three counting threads and a writer appending a row to zoo.db every 40 ms; the writer
/// commits each row before printing it. SQLite holds POSIX locks on the database inside a
/// transaction, and a dump that finds a lock is refused (ferry does not give CRIU
/// `--file-locks`): the journal is kept in memory and syncs are off, so that a transaction holds
/// them for about 15 µs rather than the 0.5 ms a journal file on disk takes here (WAL mode holds
/// them all the time and does not move; docs/apps.md).
const PY_SQLITE: &str = r#"
import sqlite3, threading, time
db = sqlite3.connect("zoo.db", isolation_level=None, check_same_thread=False)
db.execute("PRAGMA synchronous=OFF")
db.execute("PRAGMA journal_mode=MEMORY")
db.execute("CREATE TABLE IF NOT EXISTS rows (n INTEGER PRIMARY KEY, note TEXT)")
print("ready", flush=True)
def count(i):
    n = 0
    while True:
        n += 1
        print(f"count{i} {n}", flush=True)
        time.sleep(0.04)
ts = [threading.Thread(target=count, args=(i,), daemon=True) for i in range(3)]
for t in ts: t.start()
n = 0
while True:
    n += 1
    db.execute("INSERT INTO rows VALUES (?, ?)", (n, f"row {n}"))
    print(f"row {n}", flush=True)
    time.sleep(0.04)
"#;

/// count(*), min(n), max(n) of zoo.db's rows, read from outside with Python's sqlite3.
fn sqlite_summary(py: &Path, db: &Path) -> String {
    let out = std::process::Command::new(py)
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print(*c.execute('SELECT count(*), min(n), max(n) FROM rows').fetchone(), \
             c.execute('PRAGMA integrity_check').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn python_threads_and_sqlite_carry_on(mode: pb::Mode) {
    require_root("python_threads_and_sqlite_carry_on");
    let py = need("python3", "python3");
    // The database lives on storage both nodes see (here a directory of the one machine; NFS
    // or a shared volume between machines): a copy of it in the shipped working directory is a
    // new inode, and SQLite refuses to write to a database whose inode changed under its open
    // descriptor ("attempt to write a readonly database", SQLITE_READONLY_DBMOVED).
    let shared = TempDir::new("ferry-zoo-sqlite");
    let mut sp = spec(&[py.to_str().unwrap(), "-c", PY_SQLITE]);
    sp.cwd = shared.path().to_string_lossy().into_owned();
    let mut z = zoo().await;
    let id = id_of(&start(&mut z.ca, sp).await);
    let rows = |l: &[String]| numbers(l, "row ");
    let lines = wait_log(&z.ca, &id, "rows written", T, |l| rows(l).len() >= 10).await;
    assert!(lines.iter().any(|l| l == "ready"), "{lines:?}");
    let before = rows(&lines).len() as u64;

    migrate(&mut z, &id, mode).await;
    let lines = wait_log(&z.cb, &id, "rows and counts on the target", T, |l| {
        l.iter().any(|x| x.starts_with("Traceback"))
            || rows(l).len() as u64 >= before + 10
                && (0..3).all(|i| numbers(l, &format!("count{i} ")).len() as u64 >= before + 10)
    })
    .await;
    assert!(!lines.iter().any(|x| x.starts_with("Traceback")), "it failed: {lines:?}");
    assert_consecutive(&rows(&lines), "rows");
    for i in 0..3 {
        assert_consecutive(&numbers(&lines, &format!("count{i} ")), &format!("thread {i}'s count"));
    }
    // The database holds every row the program reported, and is sound.
    let db = shared.path().join("zoo.db");
    let reported = *rows(&lines).last().unwrap();
    let got = sqlite_summary(&py, &db);
    let v: Vec<&str> = got.split_whitespace().collect();
    let (count, min, max): (u64, u64, u64) =
        (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2].parse().unwrap());
    assert!(min == 1 && count == max && max >= reported && v[3] == "ok", "{got}");
    // The main thread and its three counters, in the same process.
    let main = status(&mut z.cb, &id).await.main_pid;
    let task = std::fs::read_dir(format!("/proc/{main}/task")).unwrap().count();
    assert_eq!(task, 4, "main thread and three counters");
}

#[tokio::test]
async fn python_threads_and_sqlite_carry_on_stop_and_copy() {
    python_threads_and_sqlite_carry_on(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn python_threads_and_sqlite_carry_on_post_copy() {
    python_threads_and_sqlite_carry_on(pb::Mode::PostCopy).await;
}

// ---------------------------------------------------------------------------------------------
// Node.js
// ---------------------------------------------------------------------------------------------

const NODE_PORT: u16 = 8091;

/// An HTTP server counting its requests in memory, and a timer ticking.
const NODE_SERVER: &str = r#"
const http = require("http");
let hits = 0, ticks = 0;
setInterval(() => { ticks++; console.log(`tick ${ticks}`); }, 40);
http.createServer((req, res) => {
  hits++;
  res.setHeader("Connection", "close");
  res.end(`hits=${hits} pid=${process.pid}\n`);
}).listen(Number(process.argv[1]), () => console.log("listening"));
"#;

async fn node_server_counts_on(mode: pb::Mode) {
    require_root("node_server_counts_on");
    let node = need("node", "nodejs");
    let mut z = zoo().await;
    let port = NODE_PORT.to_string();
    let id =
        id_of(&start(&mut z.ca, spec(&[node.to_str().unwrap(), "-e", NODE_SERVER, &port])).await);
    wait_log(&z.ca, &id, "node listening", T, |l| l.iter().any(|x| x == "listening")).await;
    let idle = sockets(&mut z.ca, &id).await;
    let (src, dst) =
        (format!("{}:{NODE_PORT}", z.net.ip(0)), format!("{}:{NODE_PORT}", z.net.ip(1)));
    let mut last = String::new();
    for i in 1..=3 {
        last = exchange_when_up("node on the source", &src, &http_get("/")).await;
        assert!(last.contains(&format!("hits={i} ")), "{last}");
    }
    settle(&z.ca, &id, idle).await;
    let ticks = numbers(
        &logs(&mut z.ca, &id).await.into_iter().map(|l| l.text).collect::<Vec<_>>(),
        "tick ",
    );

    migrate(&mut z, &id, mode).await;
    let got = exchange_when_up("node on the target", &dst, &http_get("/")).await;
    assert!(got.contains("hits=4 "), "the counter continued: {got}");
    let pid = |s: &str| s.split("pid=").nth(1).map(str::trim).map(str::to_string);
    assert_eq!(pid(&got), pid(&last), "the same process answers");
    let lines = wait_log(&z.cb, &id, "ticks on the target", T, |l| {
        numbers(l, "tick ").len() >= ticks.len() + 10
    })
    .await;
    assert_consecutive(&numbers(&lines, "tick "), "node's ticks");
}

#[tokio::test]
async fn node_server_counts_on_stop_and_copy() {
    node_server_counts_on(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn node_server_counts_on_post_copy() {
    node_server_counts_on(pb::Mode::PostCopy).await;
}

// ---------------------------------------------------------------------------------------------
// A JVM
// ---------------------------------------------------------------------------------------------

/// Three threads counting, and the main thread checking a 16 MiB heap array it filled at the
/// start (a checksum per tick) while allocating garbage for the collector.
const JAVA_ZOO: &str = r#"
public class Zoo {
    public static void main(String[] args) throws Exception {
        long[] heap = new long[2 * 1024 * 1024];
        for (int i = 0; i < heap.length; i++) heap[i] = (long) i * 2654435761L;
        long want = sum(heap);
        for (int t = 0; t < 3; t++) {
            final int id = t;
            Thread th = new Thread(() -> {
                long n = 0;
                while (true) {
                    n++;
                    System.out.println("count" + id + " " + n);
                    try { Thread.sleep(40); } catch (InterruptedException e) { return; }
                }
            });
            th.setDaemon(true);
            th.start();
        }
        long tick = 0;
        while (true) {
            tick++;
            byte[][] garbage = new byte[64][];
            for (int i = 0; i < garbage.length; i++) garbage[i] = new byte[16 * 1024];
            long got = sum(heap);
            System.out.println((got == want ? "heap ok " : "heap BAD ") + tick);
            Thread.sleep(40);
        }
    }
    static long sum(long[] a) { long s = 0; for (long v : a) s = s * 31 + v; return s; }
}
"#;

async fn jvm_threads_and_heap_carry_on(mode: pb::Mode) {
    require_root("jvm_threads_and_heap_carry_on");
    let java = need("java", "default-jre-headless");
    let dir = TempDir::new("ferry-zoo-java");
    let src = dir.path().join("Zoo.java");
    std::fs::write(&src, JAVA_ZOO).unwrap();
    let mut z = zoo().await;
    // No hsperfdata file in /tmp (a shared mapping of a file named after the PID), a heap of
    // fixed size.
    let argv =
        [java.to_str().unwrap(), "-XX:-UsePerfData", "-Xms64m", "-Xmx64m", src.to_str().unwrap()];
    let id = id_of(&start(&mut z.ca, spec(&argv)).await);
    let heap = |l: &[String]| numbers(l, "heap ok ");
    let lines =
        wait_log(&z.ca, &id, "the JVM ticking", Duration::from_secs(120), |l| heap(l).len() >= 5)
            .await;
    let before = heap(&lines).len() as u64;

    migrate(&mut z, &id, mode).await;
    let lines = wait_log(&z.cb, &id, "the JVM ticking on the target", T, |l| {
        l.iter().any(|x| x.starts_with("heap BAD") || x.starts_with("Exception"))
            || heap(l).len() as u64 >= before + 10
                && (0..3).all(|i| numbers(l, &format!("count{i} ")).len() as u64 >= before + 10)
    })
    .await;
    assert!(
        !lines.iter().any(|x| x.starts_with("heap BAD") || x.starts_with("Exception")),
        "{lines:?}"
    );
    assert_consecutive(&heap(&lines), "the heap checks");
    for i in 0..3 {
        assert_consecutive(&numbers(&lines, &format!("count{i} ")), &format!("thread {i}'s count"));
    }
}

#[tokio::test]
async fn jvm_threads_and_heap_carry_on_stop_and_copy() {
    jvm_threads_and_heap_carry_on(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn jvm_threads_and_heap_carry_on_post_copy() {
    jvm_threads_and_heap_carry_on(pb::Mode::PostCopy).await;
}

// ---------------------------------------------------------------------------------------------
// What does not move yet: SQLite in WAL mode
// ---------------------------------------------------------------------------------------------

/// A writer in WAL mode: SQLite holds POSIX read locks on the database and its -shm file for as
/// long as the connection is open.
const PY_SQLITE_WAL: &str = r#"
import sqlite3, time
db = sqlite3.connect("wal.db", isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS rows (n INTEGER PRIMARY KEY)")
n = 0
while True:
    n += 1
    db.execute("INSERT INTO rows VALUES (?)", (n,))
    print(f"row {n}", flush=True)
    time.sleep(0.04)
"#;

/// The dump finds SQLite's locks and is refused (ferry does not give CRIU `--file-locks`); the
/// migration rolls back, the error says why, and the program writes on on the source.
async fn sqlite_in_wal_mode_is_refused_and_writes_on(mode: pb::Mode) {
    require_root("sqlite_in_wal_mode_is_refused_and_writes_on");
    let py = need("python3", "python3");
    let mut z = zoo().await;
    let id = id_of(&start(&mut z.ca, spec(&[py.to_str().unwrap(), "-c", PY_SQLITE_WAL])).await);
    let rows = |l: &[String]| numbers(l, "row ");
    wait_log(&z.ca, &id, "rows written", T, |l| rows(l).len() >= 3).await;
    let r =
        z.ca.migrate_out(pb::MigrateOutRequest {
            workload_id: id.clone(),
            target_address: z.b.addr.clone(),
            mode: mode as i32,
            ..Default::default()
        })
        .await
        .expect("MigrateOut")
        .into_inner();
    assert_eq!(r.outcome, pb::Outcome::RolledBack as i32, "{r:?}");
    assert_eq!(r.failed_phase, "checkpoint", "{r:?}");
    assert!(
        r.error.contains("holds a file lock") && r.error.contains("file locks are hold"),
        "{}",
        r.error
    );
    let before = rows(&logs(&mut z.ca, &id).await.into_iter().map(|l| l.text).collect::<Vec<_>>());
    let lines =
        wait_log(&z.ca, &id, "rows on the source", T, |l| rows(l).len() >= before.len() + 5).await;
    assert_consecutive(&rows(&lines), "rows");
    let listed = z.cb.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    assert!(listed.processes.is_empty(), "nothing on the target: {listed:?}");
}

#[tokio::test]
async fn sqlite_in_wal_mode_is_refused_and_writes_on_stop_and_copy() {
    sqlite_in_wal_mode_is_refused_and_writes_on(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn sqlite_in_wal_mode_is_refused_and_writes_on_post_copy() {
    sqlite_in_wal_mode_is_refused_and_writes_on(pb::Mode::PostCopy).await;
}
