//! Workloads run as a given user and group: the ids the processes really have, the ownership of
//! their working directory, refusals of unknown names, and CRIU migrations of non-root workloads
//! between two netns hosts (without CAP_SYS_RESOURCE too, with ferry's CRIU): their ids and
//! their resource limits kept, a hard limit the target cannot raise capped, a stock CRIU refused.

mod harness;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use ferry_proto::agent as pb;
use harness::net::Net;
use harness::*;
use tonic::Code;

const T: Duration = Duration::from_secs(60);

/// uid and gid of nobody / nogroup on Debian.
const NOBODY: u32 = 65534;

/// Fails the test loudly when this machine has no user nobody or group nogroup: the tests of
/// other users' workloads never pass without running.
fn require_nobody() {
    let has = |file: &str, name: &str| {
        std::fs::read_to_string(file)
            .map(|s| s.lines().any(|l| l.starts_with(&format!("{name}:"))))
            .unwrap_or(false)
    };
    assert!(
        has("/etc/passwd", "nobody") && has("/etc/group", "nogroup"),
        "this test needs user nobody and group nogroup (uid and gid 65534, as on Debian)"
    );
}

fn as_user(argv: &[&str], user: &str, group: &str) -> pb::WorkloadSpec {
    let mut s = spec(argv);
    s.user = user.into();
    s.group = group.into();
    s
}

/// Real, effective, saved and filesystem ids of `pid` from /proc (the "Uid:" or "Gid:" line).
fn proc_ids(pid: i32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn workload_runs_as_nobody_and_owns_its_working_directory() {
    require_root("workload_runs_as_nobody_and_owns_its_working_directory");
    require_nobody();
    let agent = AgentProc::start("users");
    let mut c = agent.client().await;
    let s = start(
        &mut c,
        as_user(
            &["sh", "-c", "id -u; id -g; id -G; touch mine && echo wrote; sleep 600"],
            "nobody",
            "nogroup",
        ),
    )
    .await;
    let id = id_of(&s);
    let sp = s.spec.clone().expect("spec");
    assert_eq!((sp.user.as_str(), sp.group.as_str()), ("nobody", "nogroup"), "reported back");
    let lines = wait_log(&c, &id, "id output", T, |l| l.iter().any(|x| x == "wrote")).await;
    assert_eq!(&lines[..4], ["65534", "65534", "65534", "wrote"], "{lines:?}");

    // Every process of the workload runs as nobody:nogroup; ferry-init, PID 1 of the namespace,
    // stays root (CRIU dumps the namespace through it).
    let s = status(&mut c, &id).await;
    assert!(s.tasks.iter().any(|t| t.init), "{s:?}");
    for t in &s.tasks {
        let want = if t.init { 0 } else { NOBODY };
        assert_eq!(proc_ids(t.pid, "Uid:"), [want; 4], "uids of {} ({})", t.pid, t.comm);
        assert_eq!(proc_ids(t.pid, "Gid:"), [want; 4], "gids of {} ({})", t.pid, t.comm);
    }
    assert!(s.tasks.iter().filter(|t| !t.init).count() >= 1, "{s:?}");
    let work = agent.data_dir.join("workloads").join(&id).join("work");
    for p in [work.clone(), work.join("mine")] {
        let m = std::fs::metadata(&p).expect("work dir entry");
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{p:?}");
    }
    // Its own directory, closed to others; the way to it traversable, never listable.
    let dir = work.parent().unwrap();
    for (p, mode, uid) in [
        (work.clone(), 0o700, NOBODY),
        (dir.to_path_buf(), 0o711, 0),
        (dir.join("state.json"), 0o600, 0),
        (dir.join("output.log"), 0o600, 0),
        (agent.data_dir.join("workloads"), 0o711, 0),
        (agent.data_dir.clone(), 0o711, 0),
    ] {
        let m = std::fs::metadata(&p).expect("a workload's path");
        assert_eq!((m.mode() & 0o7777, m.uid()), (mode, uid), "mode and owner of {p:?}");
    }

    // Numbers work too; a uid without a passwd entry with a given group.
    let s = start(&mut c, as_user(&["sh", "-c", "id -u; id -g"], "4000000", "4000001")).await;
    let lines = wait_log(&c, &id_of(&s), "numeric ids", T, |l| l.len() >= 2).await;
    assert_eq!(lines, ["4000000", "4000001"]);
}

#[tokio::test]
async fn unknown_users_and_groups_are_invalid_arguments() {
    if !require_root("unknown_users_and_groups_are_invalid_arguments") {
        return;
    }
    let agent = AgentProc::start("users-bad");
    let mut c = agent.client().await;
    for (user, group, needle) in [
        ("no-such-user-ferry", "", "user \"no-such-user-ferry\" does not exist on node users-bad"),
        ("root", "no-such-group-ferry", "group \"no-such-group-ferry\" does not exist"),
        ("4000000", "", "uid 4000000 has no entry in /etc/passwd"),
        ("a:b", "", "without NUL, ':' or '/'"),
    ] {
        let err = c
            .start_process(pb::StartProcessRequest { spec: Some(as_user(&["true"], user, group)) })
            .await
            .expect_err(user);
        assert_eq!(err.code(), Code::InvalidArgument, "{user}/{group}: {err:?}");
        assert!(err.message().contains(needle), "{user}/{group}: {}", err.message());
    }
    // A given working directory the user cannot enter: refused, named.
    let private = TempDir::new("ferry-users-private");
    std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .unwrap();
    let mut s = as_user(&["true"], "nobody", "");
    s.cwd = private.path().to_string_lossy().into_owned();
    let err =
        c.start_process(pb::StartProcessRequest { spec: Some(s) }).await.expect_err("private cwd");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Permission denied"), "{}", err.message());
    let listed = c.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    assert!(listed.processes.is_empty(), "nothing started: {listed:?}");
}

/// Whether this process holds CAP_SYS_RESOURCE (a stock CRIU needs it to dump another user's
/// process; ferry's does not).
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

fn counts(lines: &[String]) -> Vec<u64> {
    lines.iter().filter_map(|l| l.strip_prefix("count ")?.parse().ok()).collect()
}

#[tokio::test]
async fn non_root_workload_migrates_with_criu_and_keeps_its_ids() {
    require_root("non_root_workload_migrates_with_criu_and_keeps_its_ids");
    require_nobody();
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let s = start(&mut ca, as_user(&[&workload("appender.py")], "nobody", "")).await;
    let id = id_of(&s);
    wait_log(&ca, &id, "5 counts", T, |l| counts(l).len() >= 5).await;
    // Without CAP_SYS_RESOURCE too (as on the machines this was built on): ferry's CRIU reads
    // another user's rlimits from /proc/PID/limits.
    let r = migrate_to(&mut ca, &id, &b.addr).await;
    assert_completed(&r, &a);
    let lines = wait_log(&cb, &id, "counting on", T, |l| counts(l).len() >= 15).await;
    let n = counts(&lines);
    for w in n.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count continues: {n:?}");
    }
    // Still nobody on the target, the journal in a working directory nobody owns.
    let s = status(&mut cb, &id).await;
    assert_eq!(s.spec.as_ref().map(|s| s.user.as_str()), Some("nobody"));
    for t in s.tasks.iter().filter(|t| !t.init) {
        assert_eq!(proc_ids(t.pid, "Uid:"), [NOBODY; 4], "uids of {} ({})", t.pid, t.comm);
    }
    let work = b.data_dir.join("workloads").join(&id).join("work");
    for p in [work.clone(), work.join("journal.txt")] {
        let m = std::fs::metadata(&p).expect("work dir entry on the target");
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{p:?}");
    }
    assert_eq!(std::fs::metadata(&work).unwrap().mode() & 0o7777, 0o700, "{work:?}");
    // As nobody it re-reads its journal from the target's disk: intact.
    let main = status(&mut cb, &id).await.main_pid;
    assert!(main > 0);
    kill(main, libc::SIGUSR1);
    let lines =
        wait_log(&cb, &id, "journal check", T, |l| l.iter().any(|x| x.starts_with("journal ")))
            .await;
    let verdict = lines.iter().find(|x| x.starts_with("journal ")).unwrap();
    assert!(verdict.starts_with("journal ok"), "{verdict}");
}

#[tokio::test]
async fn non_root_cooperative_workload_migrates_and_keeps_its_user() {
    require_root("non_root_cooperative_workload_migrates_and_keeps_its_user");
    require_nobody();
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let script = repo().join("coop/examples/counter.py");
    let mut sp = as_user(&["python3", &script.to_string_lossy()], "nobody", "nogroup");
    sp.engine = pb::Engine::Cooperative as i32;
    let s = start(&mut ca, sp).await;
    let id = id_of(&s);
    wait_log(&ca, &id, "5 counts", T, |l| counts(l).len() >= 5).await;
    let r = migrate_to(&mut ca, &id, &b.addr).await;
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{}", r.error);
    assert_eq!(r.engine, "cooperative");
    let lines = wait_log(&cb, &id, "counting on", T, |l| {
        l.iter().any(|x| x.starts_with("restored count=")) && counts(l).len() >= 10
    })
    .await;
    let restored: u64 =
        lines.iter().find_map(|x| x.strip_prefix("restored count=")?.parse().ok()).unwrap();
    assert!(restored >= 5, "{lines:?}");
    let s = status(&mut cb, &id).await;
    assert_eq!(s.spec.as_ref().map(|s| s.group.as_str()), Some("nogroup"));
    for t in s.tasks.iter().filter(|t| !t.init) {
        assert_eq!(proc_ids(t.pid, "Uid:"), [NOBODY; 4], "uids of {} ({})", t.pid, t.comm);
        assert_eq!(proc_ids(t.pid, "Gid:"), [NOBODY; 4], "gids of {} ({})", t.pid, t.comm);
    }
    let work = b.data_dir.join("workloads").join(&id).join("work");
    let m = std::fs::metadata(&work).expect("work dir on the target");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (NOBODY, NOBODY, 0o700));
    let log = work.parent().unwrap().join("output.log");
    assert_eq!(std::fs::metadata(&log).expect("its log").mode() & 0o7777, 0o600, "{log:?}");
}

/// MigrateOut of `id` to the agent at `target`; its result.
async fn migrate_to(c: &mut Client, id: &str, target: &str) -> pb::MigrationResult {
    migrate_in_mode(c, id, target, pb::Mode::StopAndCopy).await
}

/// MigrateOut of `id` to the agent at `target` in `mode`; its result.
async fn migrate_in_mode(
    c: &mut Client,
    id: &str,
    target: &str,
    mode: pb::Mode,
) -> pb::MigrationResult {
    c.migrate_out(pb::MigrateOutRequest {
        workload_id: id.to_string(),
        target_address: target.to_string(),
        mode: mode as i32,
        ..Default::default()
    })
    .await
    .expect("MigrateOut")
    .into_inner()
}

/// Panics with the error and the tail of CRIU's log unless `r` completed by CRIU; `source` is
/// the agent it left.
fn assert_completed(r: &pb::MigrationResult, source: &AgentProc) {
    if r.outcome != pb::Outcome::Completed as i32 {
        // CRIU's log, as the source's data dir holds it on this side of the bind mount.
        let log = r.criu_log.replace(harness::net::DATA_MOUNT, &source.data_dir.to_string_lossy());
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        panic!(
            "migration failed: {}\n{log}:\n{}",
            r.error,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(r.engine, "criu", "{r:?}");
}

/// /proc/PID/limits without its header, spaces squeezed: "Max open files 321 4321 files".
fn limits(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/limits: {e}"))
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The soft and hard limit of `resource` ("Max open files") in /proc/PID/limits.
fn limit(pid: i32, resource: &str) -> (String, String) {
    let line = limits(pid)
        .into_iter()
        .find_map(|l| l.strip_prefix(&format!("{resource} ")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {resource} in /proc/{pid}/limits"));
    let mut v = line.split(' ').map(str::to_string);
    (v.next().unwrap(), v.next().unwrap())
}

/// The appender as nobody:nogroup, with its open files limited to 321 (hard 4321) and its core
/// size to 4096 bytes (hard 200000): limits no default has.
fn limited_appender() -> pb::WorkloadSpec {
    let app = workload("appender.py");
    as_user(
        &["prlimit", "--nofile=321:4321", "--core=4096:200000", "--", &app],
        "nobody",
        "nogroup",
    )
}

/// A workload as nobody with rlimits of its own moves by CRIU in `mode`: its count goes on, its
/// ids and every one of its limits on the target are the ones it had on the source.
async fn rlimits_move_with_the_workload(mode: pb::Mode) {
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let id = id_of(&start(&mut ca, limited_appender()).await);
    wait_log(&ca, &id, "5 counts", T, |l| counts(l).len() >= 5).await;
    let main = status(&mut ca, &id).await.main_pid;
    assert!(main > 0);
    let before = limits(main);
    assert_eq!(limit(main, "Max open files"), ("321".into(), "4321".into()), "{before:#?}");
    assert_eq!(limit(main, "Max core file size"), ("4096".into(), "200000".into()));
    assert_eq!(proc_ids(main, "Uid:"), [NOBODY; 4]);

    let r = migrate_in_mode(&mut ca, &id, &b.addr, mode).await;
    assert_completed(&r, &a);
    if mode == pb::Mode::PostCopy {
        assert_eq!(r.mode, "post_copy", "{r:?}");
    }
    let lines = wait_log(&cb, &id, "counting on", T, |l| counts(l).len() >= 15).await;
    let n = counts(&lines);
    for w in n.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count continues: {n:?}");
    }
    let main = status(&mut cb, &id).await.main_pid;
    assert!(main > 0);
    assert_eq!(proc_ids(main, "Uid:"), [NOBODY; 4], "uids on the target");
    assert_eq!(proc_ids(main, "Gid:"), [NOBODY; 4], "gids on the target");
    assert_eq!(limits(main), before, "every rlimit on the target as on the source");
}

#[tokio::test]
async fn non_root_workload_keeps_its_rlimits_in_stop_and_copy() {
    require_root("non_root_workload_keeps_its_rlimits_in_stop_and_copy");
    require_nobody();
    rlimits_move_with_the_workload(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn non_root_workload_keeps_its_rlimits_in_post_copy() {
    require_root("non_root_workload_keeps_its_rlimits_in_post_copy");
    require_nobody();
    rlimits_move_with_the_workload(pb::Mode::PostCopy).await;
}

/// A target whose agent (and so CRIU) has a lower hard limit than the workload had, and no
/// CAP_SYS_RESOURCE to raise it: the restore gives the workload the highest hard limit it can
/// (CRIU says so in its log, the agent in its own) instead of failing, and keeps the soft limit.
#[tokio::test]
async fn a_hard_limit_the_target_cannot_raise_is_capped_and_the_workload_moves() {
    require_root("a_hard_limit_the_target_cannot_raise_is_capped_and_the_workload_moves");
    require_nobody();
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", b.pid())).unwrap_or_default();
    assert_eq!(comm.trim(), "ferry", "the target's pid is its agent");
    // The target agent's open files: 2000, hard too (lowering needs no capability).
    let low = libc::rlimit { rlim_cur: 2000, rlim_max: 2000 };
    // SAFETY: a valid rlimit, no old value asked for.
    let rc = unsafe { libc::prlimit(b.pid(), libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit on the target agent: {}", std::io::Error::last_os_error());
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let id = id_of(&start(&mut ca, limited_appender()).await);
    wait_log(&ca, &id, "5 counts", T, |l| counts(l).len() >= 5).await;
    let main = status(&mut ca, &id).await.main_pid;
    let before = limits(main);

    let r = migrate_to(&mut ca, &id, &b.addr).await;
    assert_completed(&r, &a);
    let lines = wait_log(&cb, &id, "counting on", T, |l| counts(l).len() >= 15).await;
    let n = counts(&lines);
    for w in n.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count continues: {n:?}");
    }
    let main = status(&mut cb, &id).await.main_pid;
    assert_eq!(proc_ids(main, "Uid:"), [NOBODY; 4], "uids on the target");
    let hard = if has_cap_sys_resource() { "4321" } else { "2000" };
    assert_eq!(limit(main, "Max open files"), ("321".into(), hard.into()));
    let others = |l: Vec<String>| -> Vec<String> {
        l.into_iter().filter(|l| !l.starts_with("Max open files")).collect()
    };
    assert_eq!(others(limits(main)), others(before), "the other limits as on the source");
}

/// A stock CRIU (no "+ferry." in its GitID) cannot read another user's rlimits without
/// CAP_SYS_RESOURCE: the source refuses the migration before anything is frozen, saying why and
/// what to install; the workload goes on.
#[tokio::test]
async fn a_stock_criu_without_cap_sys_resource_refuses_a_non_root_workload() {
    require_root("a_stock_criu_without_cap_sys_resource_refuses_a_non_root_workload");
    require_nobody();
    if has_cap_sys_resource() {
        eprintln!(
            "\n*** NOT APPLICABLE: this machine's root holds CAP_SYS_RESOURCE, with which a \
             stock CRIU reads another user's rlimits itself ***\n"
        );
        return;
    }
    // A CRIU that answers like Debian's: a version, a GitID without "+ferry.", a passing check.
    let tmp = TempDir::new("ferry-stock-criu");
    let fake = tmp.path().join("criu");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && printf 'Version: 4.2.1\\nGitID: v4.2.1\\n'\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fake = fake.to_string_lossy().into_owned();
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &["--criu", &fake]), net.agent(1, &["--criu", &fake]));
    let mut ca = a.client().await;
    let id = id_of(&start(&mut ca, as_user(&[&workload("appender.py")], "nobody", "")).await);
    wait_log(&ca, &id, "5 counts", T, |l| counts(l).len() >= 5).await;
    let r = migrate_to(&mut ca, &id, &b.addr).await;
    assert_eq!(r.outcome, pb::Outcome::RolledBack as i32, "{r:?}");
    assert_eq!(r.failed_phase, "preflight", "{r:?}");
    for needle in ["CAP_SYS_RESOURCE", "uid 65534", "GitID v4.2.1", "not ferry's build", "setup.sh"]
    {
        assert!(r.error.contains(needle), "{needle:?} in {}", r.error);
    }
    let before =
        counts(&logs(&mut ca, &id).await.into_iter().map(|l| l.text).collect::<Vec<_>>()).len();
    wait_log(&ca, &id, "counting on the source", T, |l| counts(l).len() > before + 3).await;
}

/// What a workload running as nobody tries on each path: read a file, list a directory or
/// connect to a socket. Prints `OK PATH` when it could, `DENIED PATH` when not, then `checked N`;
/// then the same tries on its own file, directory and sockets (which must be OK), then `end`.
const PROBE: &str = r#"
n=0
try() { if "$@" >/dev/null 2>&1; then echo "OK $2"; else echo "DENIED $2"; fi; n=$((n+1)); }
connect() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX,getattr(socket,sys.argv[2])); s.connect(sys.argv[1])' "$@"; }
for p in $FILES; do try cat "$p"; done
for p in $DIRS; do try ls "$p"; done
for p in $STREAMS; do try connect "$p" SOCK_STREAM; done
for p in $SEQPACKETS; do try connect "$p" SOCK_SEQPACKET; done
echo "checked $n"
# Controls: the same tools on its own file, directory and sockets must succeed.
listen() { python3 -c 'import socket,sys,time; s=socket.socket(socket.AF_UNIX,getattr(socket,sys.argv[2])); s.bind(sys.argv[1]); s.listen(1); time.sleep(5)' "$@"; }
echo mine > own.txt && echo "own work dir ok"
listen own-stream.sock SOCK_STREAM & listen own-seq.sock SOCK_SEQPACKET &
i=0; while [ $i -lt 100 ] && ! { [ -S own-stream.sock ] && [ -S own-seq.sock ]; }; do sleep 0.1; i=$((i+1)); done
try cat own.txt; try ls .; try connect own-stream.sock SOCK_STREAM; try connect own-seq.sock SOCK_SEQPACKET
echo end
"#;

/// A workload running as nobody can read nothing of the agent's, of other workloads (their
/// records with their environment, logs, working directories, control sockets, /proc
/// environment), of the coordinator (ferry.db and its WAL) or of any TLS private key; it still
/// works in its own working directory.
#[tokio::test]
async fn a_workload_as_nobody_reaches_nothing_of_others_or_of_ferry() {
    require_root("a_workload_as_nobody_reaches_nothing_of_others_or_of_ferry");
    require_nobody();
    // A coordinator with its keys from `ferry certs`, and its database.
    let tmp = TempDir::new("ferry-isolation");
    let certs = tmp.path().join("certs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["certs", "--dir", &certs.to_string_lossy(), "--name", "coordinator"])
        .output()
        .expect("run ferry certs");
    assert!(out.status.success(), "ferry certs: {}", String::from_utf8_lossy(&out.stderr));
    let coord_data = tmp.path().join("coordinator");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["coordinator", "--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(&certs)
        .arg("--data-dir")
        .arg(&coord_data);
    let _coordinator = AgentProc::spawn(
        "coordinator",
        cmd,
        TempDir::new("ferry-isolation-unused"),
        coord_data.clone(),
    );
    let db = coord_data.join("ferry.db");
    wait_until("ferry.db and its WAL", T, || async {
        (db.exists() && coord_data.join("ferry.db-wal").exists()).then_some(())
    })
    .await;

    let agent = AgentProc::start("isolation");
    let mut c = agent.client().await;
    let secret = "s3cret-ferry-isolation";
    let victim = |user: &str, group: &str, coop: bool| {
        let mut s = as_user(
            &["sh", "-c", "echo \"$SECRET\" > secret.txt; echo \"started $SECRET\"; sleep 600"],
            user,
            group,
        );
        s.env.insert("SECRET".into(), secret.into());
        if coop {
            s.engine = pb::Engine::Cooperative as i32;
        }
        s
    };
    // One as root (cooperative: it has a control socket), one as another unprivileged user.
    let mut victims = Vec::new();
    for (user, group, coop) in [("", "", true), ("4000000", "4000001", false)] {
        let id = id_of(&start(&mut c, victim(user, group, coop)).await);
        wait_log(&c, &id, "the victim's start", T, |l| l.iter().any(|x| x.starts_with("started")))
            .await;
        let main = status(&mut c, &id).await.main_pid;
        assert!(main > 0, "{id} has a main process");
        victims.push((agent.data_dir.join("workloads").join(&id), main));
    }
    let tls = agent.data_dir.parent().unwrap().join("tls");
    let p = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let mut files = vec![
        p(db.clone()),
        p(coord_data.join("ferry.db-wal")),
        p(coord_data.join("ferry.db-shm")),
        p(certs.join("ca-key.pem")),
        p(certs.join("coordinator-key.pem")),
        p(tls.join("isolation-key.pem")),
        p(tls.join("ca-key.pem")),
    ];
    let mut dirs = vec![
        p(agent.data_dir.clone()),
        p(agent.data_dir.join("workloads")),
        p(agent.data_dir.join("migrations")),
        p(coord_data.clone()),
        p(certs.clone()),
    ];
    for (dir, main) in &victims {
        files.extend([
            p(dir.join("state.json")),
            p(dir.join("output.log")),
            p(dir.join("work/secret.txt")),
            format!("/proc/{main}/environ"),
        ]);
        dirs.extend([p(dir.clone()), p(dir.join("work"))]);
    }
    let streams = vec![p(victims[0].0.join("control.sock"))];
    let seqpackets = vec![p(agent.data_dir.join("fdstore.sock"))];
    // Each is there to be denied (a path that is not could not be read either way).
    for path in files.iter().chain(&streams).chain(&seqpackets) {
        assert!(
            path.starts_with("/proc/") || std::path::Path::new(path).exists(),
            "{path} is there"
        );
    }
    let total = files.len() + dirs.len() + streams.len() + seqpackets.len();

    let mut s = as_user(&["sh", "-c", PROBE], "nobody", "nogroup");
    for (k, v) in
        [("FILES", &files), ("DIRS", &dirs), ("STREAMS", &streams), ("SEQPACKETS", &seqpackets)]
    {
        s.env.insert(k.into(), v.join(" "));
    }
    let id = id_of(&start(&mut c, s).await);
    wait_exited(&mut c, &id, T).await;
    let lines =
        wait_log(&c, &id, "the probe's last line", T, |l| l.iter().any(|x| x == "end")).await;
    eprintln!("the probe's output: {lines:#?}");
    assert!(lines.contains(&format!("checked {total}")), "the probe ran every check: {lines:?}");
    assert!(
        lines.iter().any(|l| l == "own work dir ok"),
        "nobody still works in its own working directory: {lines:?}"
    );
    for own in ["own.txt", ".", "own-stream.sock", "own-seq.sock"] {
        assert!(lines.contains(&format!("OK {own}")), "the probe's tools work on {own}: {lines:?}");
    }
    let reached: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("OK ") && !l.starts_with("OK own") && *l != "OK .")
        .collect();
    assert!(reached.is_empty(), "a workload running as nobody reached {reached:#?}");
    for path in files.iter().chain(&dirs).chain(&streams).chain(&seqpackets) {
        assert!(lines.contains(&format!("DENIED {path}")), "no verdict for {path}: {lines:?}");
    }
}

/// PostgreSQL's server binary (Debian's postgresql package), the newest major installed.
fn postgres_bin() -> std::path::PathBuf {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|b| b.join("postgres").is_file() && b.join("initdb").is_file());
    found.sort_by_key(|b| {
        b.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
    });
    found.pop().expect(
        "this test needs PostgreSQL: apt-get install postgresql (/usr/lib/postgresql/*/bin)",
    )
}

/// `psql` at `host`:5433 as postgres running `sql`; its output (unaligned, tuples only).
fn psql(bin: &std::path::Path, host: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new(bin.join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", "5433"])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| format!("run psql: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// PostgreSQL as user postgres, its cluster made by initdb in its working directory, moves by
/// CRIU: rows written on the source are read on the target, which takes new ones.
#[tokio::test]
async fn postgresql_as_postgres_migrates_with_its_rows() {
    require_root("postgresql_as_postgres_migrates_with_its_rows");
    postgresql_moves(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn postgresql_as_postgres_migrates_with_its_rows_in_post_copy() {
    require_root("postgresql_as_postgres_migrates_with_its_rows_in_post_copy");
    postgresql_moves(pb::Mode::PostCopy).await;
}

/// PostgreSQL as postgres, 1000 rows written on the source, migrated in `mode`: the rows are
/// read on the target, a new one written there, every process still postgres's.
async fn postgresql_moves(mode: pb::Mode) {
    let bin = postgres_bin();
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let script = format!(
        "set -e; B={}; $B/initdb -D pgdata -U postgres --auth=trust --no-sync >/dev/null; \
         echo 'host all all 0.0.0.0/0 trust' >> pgdata/pg_hba.conf; echo initdb done; exec $B/postgres -D pgdata -c listen_addresses='*' -c port=5433 \
         -c unix_socket_directories='' -c shared_memory_type=mmap \
         -c dynamic_shared_memory_type=mmap -c logging_collector=off",
        bin.display()
    );
    let id = id_of(&start(&mut ca, as_user(&["sh", "-c", &script], "postgres", "postgres")).await);
    wait_log(&ca, &id, "postgres ready", Duration::from_secs(120), |l| {
        l.iter().any(|x| x.contains("ready to accept connections"))
    })
    .await;
    let src = net.ip(0);
    psql(&bin, &src, "CREATE TABLE t (n int, s text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g;")
        .expect("write on the source");
    assert_eq!(psql(&bin, &src, "SELECT count(*), sum(n) FROM t").unwrap(), "1000|500500");

    let r = migrate_in_mode(&mut ca, &id, &b.addr, mode).await;
    assert_completed(&r, &a);
    let dst = net.ip(1);
    let got = wait_until("postgres answering on the target", T, || {
        let (bin, dst) = (bin.clone(), dst.clone());
        async move { psql(&bin, &dst, "SELECT count(*), sum(n) FROM t").ok() }
    })
    .await;
    assert_eq!(got, "1000|500500", "the rows written on the source");
    psql(&bin, &dst, "INSERT INTO t VALUES (1001, 'on the target')").expect("write on the target");
    assert_eq!(psql(&bin, &dst, "SELECT s FROM t WHERE n = 1001").unwrap(), "on the target");
    // The postmaster and its children, still postgres's.
    let uid = passwd_id("/etc/passwd", "postgres");
    let gid = passwd_id("/etc/group", "postgres");
    let s = status(&mut cb, &id).await;
    // (A backend serving the last psql may have exited since: only those still there.)
    let alive: Vec<_> =
        s.tasks.iter().filter(|t| !t.init && !proc_ids(t.pid, "Uid:").is_empty()).collect();
    assert!(alive.len() >= 3, "postmaster and its children: {s:?}");
    for t in alive {
        assert_eq!(proc_ids(t.pid, "Uid:"), [uid; 4], "uids of {} ({})", t.pid, t.comm);
        assert_eq!(proc_ids(t.pid, "Gid:"), [gid; 4], "gids of {} ({})", t.pid, t.comm);
    }
}

/// The id of `name` in /etc/passwd or /etc/group (its third field).
fn passwd_id(file: &str, name: &str) -> u32 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:"))?.split(':').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {file}"))
}

/// The process ids a workload's `pids ...` line lists (its /proc's numeric entries).
fn listed_pids(line: &str) -> Vec<u32> {
    line.split_whitespace().skip(1).filter_map(|p| p.parse().ok()).collect()
}

/// What `SEES` prints every 0.3 s: the pids in the workload's /proc, its PID 1's command and how
/// many namespace files (nsfs, /run/netns/NAME) are mounted in its mount namespace.
const SEES: &str = r#"sleep 600 &
while :; do echo "pids $(cd /proc && echo [0-9]*)"; echo "init $(tr '\0' ' ' < /proc/1/cmdline)"
echo "nsfs $(grep -c ' - nsfs ' /proc/self/mountinfo)"; sleep 0.3; done"#;

/// Asserts that the last `pids` line of `lines` lists only the workload's own few processes, its
/// PID 1 being ferry-init.
fn sees_only_itself(lines: &[String], host_pids: usize, neighbour: i32, where_: &str) {
    let last = lines.iter().rev().find(|l| l.starts_with("pids ")).expect("a pids line");
    let pids = listed_pids(last);
    eprintln!("{where_}: the workload's /proc lists {pids:?}; the node's lists {host_pids}");
    assert!(pids.contains(&1), "{where_}: its init is PID 1 of its /proc: {last}");
    assert!(pids.len() <= 6, "{where_}: only its own processes: {last}");
    assert!(!pids.contains(&(neighbour as u32)), "{where_}: not the neighbour: {last}");
    let init = lines.iter().rev().find(|l| l.starts_with("init ")).expect("an init line");
    assert!(init.contains("ferry-init"), "{where_}: /proc/1 is its ferry-init: {init}");
    let nsfs = lines.iter().rev().find(|l| l.starts_with("nsfs ")).expect("an nsfs line");
    assert_eq!(nsfs, "nsfs 0", "{where_}: the node's namespace files are left out");
}

/// Inside a workload /proc is the workload's own: it lists its few processes, not the node's, the
/// agent's or another workload's, and still does after a migration (CRIU recreates the mount
/// namespace with its /proc on the target); a mount it makes stays inside it.
#[tokio::test]
async fn a_workload_sees_only_its_own_processes_and_keeps_its_mounts_to_itself() {
    require_root("a_workload_sees_only_its_own_processes_and_keeps_its_mounts_to_itself");
    require_nobody();
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &["--keep-scratch"]), net.agent(1, &[]));
    let (mut ca, cb) = (a.client().await, b.client().await);
    let neighbour = id_of(&start(&mut ca, spec(&["sleep", "600"])).await);
    let neighbour_pid = status(&mut ca, &neighbour).await.main_pid;
    let host_pids = all_stats().len();
    assert!(host_pids > 20, "the node runs more than a workload: {host_pids} processes");

    let id = id_of(&start(&mut ca, as_user(&["sh", "-c", SEES], "nobody", "")).await);
    let lines = wait_log(&ca, &id, "its /proc listed", T, |l| {
        l.iter().filter(|x| x.starts_with("pids ")).count() >= 2
    })
    .await;
    sees_only_itself(&lines, host_pids, neighbour_pid, "on the source");
    let agents = std::fs::read_to_string(format!("/proc/{}/mountinfo", a.pid())).unwrap();
    assert!(agents.contains(" - nsfs "), "the agent's namespace has the hosts' namespace files");

    let r = migrate_to(&mut ca, &id, &b.addr).await;
    assert_completed(&r, &a);
    // The dump named the node's mounts (the data directory among them) external, for the target
    // to bind its own; the workload's /proc and devpts were dumped, to be made anew.
    let list = a.data_dir.join("migrations").join(&r.migration_id).join("images");
    let list = std::fs::read_to_string(list.join("ferry-external-mounts")).expect("the list");
    let points: Vec<&str> = list.lines().filter_map(|l| l.split_once(' ').map(|x| x.1)).collect();
    assert!(points.contains(&harness::net::DATA_MOUNT), "the data directory: {points:?}");
    for own in ["/", "/proc", "/dev/pts"] {
        assert!(!points.contains(&own), "{own} is not the node's: {points:?}");
    }
    let before = logs(&mut cb.clone(), &id).await.len();
    let lines = wait_log(&cb, &id, "its /proc listed on the target", T, |l| {
        l[before.min(l.len())..].iter().filter(|x| x.starts_with("pids ")).count() >= 2
    })
    .await;
    sees_only_itself(&lines, all_stats().len(), neighbour_pid, "on the target");

    // A tmpfs a (root) workload mounts in its working directory is its own: the node sees the
    // directory empty.
    let mounter = id_of(
        &start(
            &mut ca,
            spec(&[
                "sh",
                "-c",
                "mkdir m && mount -t tmpfs t m && touch m/inside && ls m && sleep 600",
            ]),
        )
        .await,
    );
    wait_log(&ca, &mounter, "its mount", T, |l| l.iter().any(|x| x == "inside")).await;
    let m = a.data_dir.join("workloads").join(&mounter).join("work/m");
    assert!(m.is_dir() && !m.join("inside").exists(), "the node does not see the workload's tmpfs");
    let agents = std::fs::read_to_string(format!("/proc/{}/mountinfo", a.pid())).unwrap();
    assert!(!agents.contains(&mounter), "no mount of the workload's in the agent's: {agents}");
}
