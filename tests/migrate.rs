//! Migration scenarios: real programs moved between two agents on two network-namespace hosts
//! (each with its own data directory), their state verified on the target.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use ferry_proto::agent as pb;
use harness::net::Net;
use harness::*;
use tonic::Code;

const T: Duration = Duration::from_secs(60);

/// Two hosts with an agent each.
struct Pair {
    net: Net,
    a: AgentProc,
    b: AgentProc,
    ca: Client,
    cb: Client,
}

async fn pair(source_flags: &[&str]) -> Pair {
    pair_with(source_flags, &[]).await
}

async fn pair_with(source_flags: &[&str], target_flags: &[&str]) -> Pair {
    let net = Net::new(2);
    let a = net.agent(0, source_flags);
    let b = net.agent(1, target_flags);
    let (ca, cb) = (a.client().await, b.client().await);
    Pair { net, a, b, ca, cb }
}

async fn migrate_with(c: &mut Client, req: pb::MigrateOutRequest) -> pb::MigrationResult {
    let id = req.workload_id.clone();
    let r = c
        .migrate_out(req)
        .await
        .unwrap_or_else(|s| panic!("MigrateOut {id} failed: {s}"))
        .into_inner();
    eprintln!(
        "migration {} of {}: outcome={} failed_phase={:?} error={:?} freeze={}ms dump={}ms transfer={}ms \
         restore={}ms downtime={}ms total={}ms raw={} wire={}",
        r.migration_id,
        id,
        r.outcome,
        r.failed_phase,
        r.error,
        r.freeze_ms,
        r.dump_ms,
        r.transfer_ms,
        r.restore_ms,
        r.downtime_ms,
        r.total_ms,
        r.bytes_raw,
        r.bytes_wire
    );
    r
}

async fn migrate(c: &mut Client, id: &str, target: &str) -> pb::MigrationResult {
    migrate_with(
        c,
        pb::MigrateOutRequest {
            workload_id: id.into(),
            target_address: target.into(),
            ..Default::default()
        },
    )
    .await
}

/// A stop-and-copy migration of `id` from A to B with the test-only `fault` (and its argument).
async fn migrate_with_fault(
    p: &mut Pair,
    id: &str,
    fault: pb::Fault,
    arg: u32,
) -> pb::MigrationResult {
    migrate_with(
        &mut p.ca,
        pb::MigrateOutRequest {
            workload_id: id.into(),
            target_address: p.b.addr.clone(),
            fault: fault as i32,
            fault_arg: arg,
            ..Default::default()
        },
    )
    .await
}

/// A post-copy migration of `id` to `target`.
async fn post_copy(c: &mut Client, id: &str, target: &str) -> pb::MigrationResult {
    migrate_with(
        c,
        pb::MigrateOutRequest {
            workload_id: id.into(),
            target_address: target.into(),
            mode: pb::Mode::PostCopy as i32,
            ..Default::default()
        },
    )
    .await
}

/// What CRIU's dump log says when it reads the smaps the agent read before the freeze.
const SMAPS_READ_BEFORE: &str = "read before the freeze:";

/// The source's CRIU dump log of migration `mid` (the agent runs with --keep-scratch).
fn dump_log(agent: &AgentProc, mid: &str) -> String {
    let log = agent.data_dir.join("migrations").join(mid).join("criu/dump.log");
    std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{log:?}: {e}"))
}

/// Starts memhog of `mib` MiB on `c`'s agent and waits for its third tick: its start status and
/// id.
async fn ticking_memhog(c: &mut Client, mib: &str) -> (pb::ProcessStatus, String) {
    let s = start(c, spec(&[&workload("memhog"), mib])).await;
    let id = id_of(&s);
    wait_log(c, &id, "memhog ticking", T, |l| numbers(l, "tick ").len() >= 3).await;
    (s, id)
}

fn completed(r: &pb::MigrationResult) {
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "migration failed: {}", r.error);
    assert!(r.downtime_ms > 0 && r.bytes_raw > 0 && r.bytes_wire > 0, "{r:?}");
}

fn rolled_back(r: &pb::MigrationResult, phase: &str, needle: &str) {
    assert_eq!(r.outcome, pb::Outcome::RolledBack as i32, "expected a rollback: {r:?}");
    assert_eq!(r.failed_phase, phase, "{r:?}");
    assert!(r.error.contains(needle), "error {:?} should mention {needle:?}", r.error);
}

/// Numbers N of lines `PREFIX N...`, in log order.
fn numbers(lines: &[String], prefix: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn assert_consecutive(nums: &[u64], what: &str) {
    assert!(!nums.is_empty(), "no {what} lines");
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what} must continue without a gap or restart: {nums:?}");
    }
}

/// The workload's main process on the node `c` talks to.
async fn main_pid(c: &mut Client, id: &str) -> i32 {
    let s = status(c, id).await;
    assert!(s.main_pid > 0, "no main process: {s:?}");
    s.main_pid
}

/// Sends SIGUSR1 to the main process and waits for a log line starting with `answer`.
async fn ask(c: &mut Client, id: &str, answer: &str) -> String {
    let before = logs(c, id).await.len();
    kill(main_pid(c, id).await, libc::SIGUSR1);
    let lines = wait_log(c, id, answer, T, |l| {
        l[before.min(l.len())..].iter().any(|x| x.starts_with(answer))
    })
    .await;
    lines[before..].iter().find(|x| x.starts_with(answer)).cloned().unwrap_or_default()
}

/// One request to tcpserver.py at `addr`: its answer line.
async fn tcp_hit(addr: String, line: &str) -> std::io::Result<String> {
    let line = line.to_string();
    tokio::task::spawn_blocking(move || {
        let sock: std::net::SocketAddr = addr.parse().expect("socket address");
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut out = String::new();
        BufReader::new(s).read_line(&mut out)?;
        Ok(out.trim().to_string())
    })
    .await
    .expect("tcp client thread")
}

fn field<'a>(answer: &'a str, key: &str) -> &'a str {
    answer.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or("")
}

#[tokio::test]
async fn memory_of_256_mib_survives_and_the_counter_continues() {
    if !require_root("memory_of_256_mib_survives_and_the_counter_continues") {
        return;
    }
    let mut p = pair(&[]).await;
    let (_, id) = ticking_memhog(&mut p.ca, "256").await;
    assert_eq!(ask(&mut p.ca, &id, "verify ").await.split_whitespace().nth(1), Some("ok"));
    let source_init = status(&mut p.ca, &id).await.pid;
    let before = numbers(
        &logs(&mut p.ca, &id).await.into_iter().map(|l| l.text).collect::<Vec<_>>(),
        "tick ",
    );

    let r = migrate(&mut p.ca, &id, &p.b.addr).await;
    completed(&r);
    assert!(r.bytes_raw >= 256 << 20, "all the memory travelled: {r:?}");
    assert_eq!(r.target_node, "host1");
    let phases: Vec<&str> = r.phases.iter().map(|x| x.phase.as_str()).collect();
    assert_eq!(phases, ["preflight", "freeze", "checkpoint", "transfer", "restore", "commit"]);

    // The target filled the memory in from the received images after the resume (CRIU's
    // lazy-pages daemon, counted by the target): every page arrived.
    let filled = wait_until("the target to fill in every page", T, || {
        let (mut cb, mid) = (p.cb.clone(), r.migration_id.clone());
        async move {
            let m = cb.get_migration(pb::MigrationRef { migration_id: mid }).await.ok()?;
            let m = m.into_inner();
            (m.outcome == pb::Outcome::Completed as i32).then_some(m)
        }
    })
    .await;
    assert_eq!(filled.mode, "stop_and_copy", "{filled:?}");
    assert!(filled.post_copy_pages_total >= 40_000, "{filled:?}");
    assert_eq!(filled.post_copy_pages_remaining, 0, "{filled:?}");

    // Every byte verified on the target; the counter went on from where it was.
    let verdict = ask(&mut p.cb, &id, "verify ").await;
    assert!(verdict.starts_with("verify ok pages=65536"), "{verdict}");
    let lines = wait_log(&p.cb, &id, "ticks on the target", T, |l| {
        numbers(l, "tick ").len() > before.len() + 5
    })
    .await;
    let ticks = numbers(&lines, "tick ");
    assert_consecutive(&ticks, "tick");
    assert_eq!(&ticks[..before.len()], &before[..], "the target's log carries the source's lines");

    // The source forgot it and no process of it is left there.
    let err =
        p.ca.get_status(pb::WorkloadRef { id: id.clone() }).await.expect_err("gone from source");
    assert_eq!(err.code(), Code::NotFound);
    assert!(stat(source_init).is_none(), "the original's init {source_init} is gone");
    let s = status(&mut p.cb, &id).await;
    assert_ne!(s.state, pb::ProcessState::Stopped as i32, "runs on the target: {s:?}");
    assert_eq!(s.node, "host1");
    // A repeated commit (as after a lost answer) gets the same answer, not a refusal.
    let again = p.cb.commit_migration(pb::MigrationRef { migration_id: r.migration_id.clone() });
    assert_eq!(again.await.expect("commit again").into_inner().pid, s.pid);
}

#[tokio::test]
async fn an_eagerly_restoring_target_also_keeps_every_byte() {
    if !require_root("an_eagerly_restoring_target_also_keeps_every_byte") {
        return;
    }
    // By default the target fills the memory from the received images after the resume (the
    // test above); with --eager-restore CRIU copies it all before.
    let net = Net::new(2);
    let a = net.agent(0, &[]);
    let b = net.agent(1, &["--eager-restore"]);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let (_, id) = ticking_memhog(&mut ca, "64").await;
    let r = migrate(&mut ca, &id, &b.addr).await;
    completed(&r);
    let verdict = ask(&mut cb, &id, "verify ").await;
    assert!(verdict.starts_with("verify ok pages=16384"), "{verdict}");
    // Nothing was left to fill in: the target has no post-copy record of this migration, only
    // the commit it recorded.
    let m = cb.get_migration(pb::MigrationRef { migration_id: r.migration_id.clone() }).await;
    let m = m.expect("the target answers for a migration it committed").into_inner();
    assert_eq!(m.incoming_state, "committed", "{m:?}");
    assert!(m.mode.is_empty() && m.post_copy_pages_total == 0, "no lazy restore: {m:?}");
}

#[tokio::test]
async fn python_counter_and_its_open_journal_move_with_the_working_directory() {
    if !require_root("python_counter_and_its_open_journal_move_with_the_working_directory") {
        return;
    }
    let mut p = pair(&[]).await;
    let s = start(&mut p.ca, spec(&[&workload("appender.py")])).await;
    let id = id_of(&s);
    wait_log(&p.ca, &id, "5 counts", T, |l| numbers(l, "count ").len() >= 5).await;
    let r = migrate(&mut p.ca, &id, &p.b.addr).await;
    completed(&r);
    let lines = wait_log(&p.cb, &id, "counting on", T, |l| numbers(l, "count ").len() >= 15).await;
    let verdict = ask(&mut p.cb, &id, "journal ").await;
    assert!(verdict.starts_with("journal ok"), "{verdict}");
    assert_consecutive(&numbers(&lines, "count "), "count");
    // The journal lives in the target's copy of the working directory; the source's is gone.
    let journal = p.b.data_dir.join("workloads").join(&id).join("work/journal.txt");
    let n = std::fs::read_to_string(&journal).expect("journal on the target").lines().count();
    assert!(n >= 15, "journal holds {n} lines");
    assert!(!p.a.data_dir.join("workloads").join(&id).exists(), "source directory removed");
}

#[tokio::test]
async fn process_tree_with_pipe_and_daemon_moves_whole() {
    if !require_root("process_tree_with_pipe_and_daemon_moves_whole") {
        return;
    }
    tree_moves_whole(pb::Mode::StopAndCopy).await;
}

/// Post-copy serves each process of the tree its own memory (the source's page server reads every
/// frozen process's lazy pages when the target asks for them).
#[tokio::test]
async fn process_tree_moves_whole_in_post_copy() {
    if !require_root("process_tree_moves_whole_in_post_copy") {
        return;
    }
    tree_moves_whole(pb::Mode::PostCopy).await;
}

async fn tree_moves_whole(mode: pb::Mode) {
    let mut p = pair(&[]).await;
    let s = start(&mut p.ca, spec(&[&workload("tree.py")])).await;
    let id = id_of(&s);
    let got = |l: &[String]| l.iter().filter(|x| x.starts_with("parent got")).count();
    let before = wait_log(&p.ca, &id, "tree running", T, |l| {
        got(l) >= 6 && numbers(l, "daemon tick ").len() >= 3
    })
    .await;
    let s = status(&mut p.ca, &id).await;
    assert_eq!(s.task_count, 4, "parent, two children and the daemon: {s:?}");
    let r = migrate_with(
        &mut p.ca,
        pb::MigrateOutRequest {
            workload_id: id.clone(),
            target_address: p.b.addr.clone(),
            mode: mode as i32,
            ..Default::default()
        },
    )
    .await;
    completed(&r);
    if mode == pb::Mode::PostCopy {
        assert_eq!(r.mode, "post_copy", "{r:?}");
        assert!(r.post_copy_pages_total > 0 && r.post_copy_pages_remaining == 0, "{r:?}");
    }
    let s = status(&mut p.cb, &id).await;
    assert_eq!(s.task_count, 4, "the whole tree was restored: {s:?}");
    let lines = wait_log(&p.cb, &id, "tree going on", T, |l| {
        got(l) >= got(&before) + 10
            && numbers(l, "daemon tick ").len() >= numbers(&before, "daemon tick ").len() + 5
    })
    .await;
    assert!(!lines.iter().any(|l| l.contains("FAIL") || l == "parent eof"), "{lines:?}");
    assert_consecutive(&numbers(&lines, "daemon tick "), "daemon tick");
    let last_a = |l: &[String]| {
        l.iter().rev().find_map(|x| {
            field(x, "A=").parse::<u64>().ok().filter(|_| x.starts_with("parent got"))
        })
    };
    assert!(last_a(&lines) > last_a(&before), "child A's numbers went on rising through the pipe");
}

#[tokio::test]
async fn multithreaded_program_keeps_all_its_threads() {
    if !require_root("multithreaded_program_keeps_all_its_threads") {
        return;
    }
    let mut p = pair(&[]).await;
    let s = start(&mut p.ca, spec(&[&workload("threads")])).await;
    let id = id_of(&s);
    let before = wait_log(&p.ca, &id, "a threads line", T, |l| {
        l.iter().any(|x| x.starts_with("threads t0="))
    })
    .await;
    let total = |l: &[String]| {
        l.iter().rev().find_map(|x| field(x, "total=").parse::<u64>().ok()).unwrap_or(0)
    };
    let r = migrate(&mut p.ca, &id, &p.b.addr).await;
    completed(&r);
    assert_eq!(status(&mut p.cb, &id).await.threads, 5, "main and four workers");
    assert_eq!(ask(&mut p.cb, &id, "threads alive=").await, "threads alive=4");
    let t0 = total(&before);
    let lines = wait_log(&p.cb, &id, "the total rising", T, |l| total(l) > t0 + 50).await;
    assert!(total(&lines) > t0);
}

#[tokio::test]
async fn tcp_server_answers_on_the_target_address() {
    if !require_root("tcp_server_answers_on_the_target_address") {
        return;
    }
    let mut p = pair(&[]).await;
    let s = start(&mut p.ca, spec(&[&workload("tcpserver.py"), "47000"])).await;
    let id = id_of(&s);
    wait_log(&p.ca, &id, "listening", T, |l| l.iter().any(|x| x == "listening 47000")).await;
    let first =
        tcp_hit(format!("{}:47000", p.net.ip(0)), "one").await.expect("served on the source");
    assert_eq!(field(&first, "hits="), "1", "{first}");
    let r = migrate(&mut p.ca, &id, &p.b.addr).await;
    completed(&r);
    let second =
        tcp_hit(format!("{}:47000", p.net.ip(1)), "two").await.expect("served on the target");
    assert_eq!(field(&second, "hits="), "2", "the request counter continued: {second}");
    assert_eq!(field(&second, "pid="), field(&first, "pid="), "the same process answers");
    assert!(
        tcp_hit(format!("{}:47000", p.net.ip(0)), "three").await.is_err(),
        "nothing listens on the source"
    );
}

#[tokio::test]
async fn cooperative_program_restores_its_own_state_without_criu() {
    if !require_root("cooperative_program_restores_its_own_state_without_criu") {
        return;
    }
    let mut p = pair(&[]).await;
    let script = repo().join("coop/examples/counter.py");
    let mut sp = spec(&["python3", &script.to_string_lossy()]);
    sp.engine = pb::Engine::Cooperative as i32;
    sp.env.insert("PYTHONPATH".into(), repo().join("coop/python").to_string_lossy().into_owned());
    let s = start(&mut p.ca, sp).await;
    let id = id_of(&s);
    wait_log(&p.ca, &id, "5 counts", T, |l| numbers(l, "count ").len() >= 5).await;
    let r = migrate(&mut p.ca, &id, &p.b.addr).await;
    completed(&r);
    assert_eq!(r.engine, "cooperative");
    let phases: Vec<&str> = r.phases.iter().map(|x| x.phase.as_str()).collect();
    assert_eq!(phases, ["preflight", "checkpoint", "freeze", "transfer", "restore", "commit"]);
    let lines = wait_log(&p.cb, &id, "counting on", T, |l| {
        l.iter().any(|x| x.starts_with("restored count=")) && numbers(l, "count ").len() >= 12
    })
    .await;
    // The log travels with the workload: the source's lines, then the target's from "restored
    // count=N" on. A cooperative program runs on between its checkpoint and the freeze, so the
    // source may have printed past N; the target counts on from N itself.
    let restored_at = lines.iter().position(|x| x.starts_with("restored count=")).unwrap();
    let restored: u64 = lines[restored_at]["restored count=".len()..].parse().unwrap();
    let before = numbers(&lines[..restored_at], "count ");
    assert!(before.contains(&restored), "the saved count was printed on the source: {before:?}");
    let after = numbers(&lines[restored_at..], "count ");
    assert_eq!(after.first(), Some(&(restored + 1)), "the count resumed after the saved value");
    assert_consecutive(&after, "count after restore");
    assert!(
        p.b.data_dir.join("migrations").read_dir().map(|d| d.count()).unwrap_or(0) == 0,
        "no scratch left"
    );
}

#[tokio::test]
async fn round_trip_back_to_the_first_host() {
    if !require_root("round_trip_back_to_the_first_host") {
        return;
    }
    let mut p = pair(&[]).await;
    let s = start(&mut p.ca, spec(&[&workload("appender.py")])).await;
    let id = id_of(&s);
    wait_log(&p.ca, &id, "3 counts", T, |l| numbers(l, "count ").len() >= 3).await;
    completed(&migrate(&mut p.ca, &id, &p.b.addr).await);
    wait_log(&p.cb, &id, "counting on B", T, |l| numbers(l, "count ").len() >= 8).await;
    completed(&migrate(&mut p.cb, &id, &p.a.addr).await);
    let lines =
        wait_log(&p.ca, &id, "counting back on A", T, |l| numbers(l, "count ").len() >= 14).await;
    assert_consecutive(&numbers(&lines, "count "), "count");
    assert!(ask(&mut p.ca, &id, "journal ").await.starts_with("journal ok"));
}

/// A 256 MiB memhog migrating from A to B slowly (20 ms before each chunk), in a task of its
/// own; returns once data has arrived on B. With CRIU the memory pages go first, while the dump
/// runs (into "pages/<migration>"), then the rest of the snapshot.
async fn slow_migration_under_way(
    p: &mut Pair,
) -> (String, tokio::task::JoinHandle<pb::MigrationResult>) {
    let (_, id) = ticking_memhog(&mut p.ca, "256").await;
    let mut c = p.ca.clone();
    let (id2, target) = (id.clone(), p.b.addr.clone());
    let mid = format!("m-slow-{id}");
    let mid2 = mid.clone();
    let running = tokio::spawn(async move {
        migrate_with(
            &mut c,
            pb::MigrateOutRequest {
                workload_id: id2,
                target_address: target,
                migration_id: mid2,
                fault: pb::Fault::SlowTransfer as i32,
                fault_arg: 20,
                ..Default::default()
            },
        )
        .await
    });
    // The source streams the dump (past the target's answer to the page reservation).
    wait_until("the source to stream its dump", T, || {
        let (mut c, mid) = (p.ca.clone(), mid.clone());
        async move {
            let r = c.get_migration(pb::MigrationRef { migration_id: mid }).await.ok()?;
            let r = r.into_inner();
            (r.current_phase == "checkpoint" && r.bytes_raw > 0).then_some(())
        }
    })
    .await;
    let (incoming, pages) = (p.b.data_dir.join("migrations"), p.b.data_dir.join("pages"));
    wait_until("the transfer to begin", T, || async {
        let pages_came = std::fs::read_dir(&pages).is_ok_and(|mut d| d.next().is_some());
        let snapshot_came = std::fs::read_dir(&incoming)
            .is_ok_and(|d| d.flatten().any(|e| e.path().join("recv/images").exists()));
        (pages_came || snapshot_came).then_some(())
    })
    .await;
    (id, running)
}

#[tokio::test]
async fn target_killed_mid_transfer_leaves_the_workload_running_on_the_source() {
    if !require_root("target_killed_mid_transfer_leaves_the_workload_running_on_the_source") {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (id, running) = slow_migration_under_way(&mut p).await;
    // A second migration of the same workload is refused meanwhile.
    let err =
        p.ca.migrate_out(pb::MigrateOutRequest {
            workload_id: id.clone(),
            target_address: p.b.addr.clone(),
            ..Default::default()
        })
        .await
        .expect_err("one migration at a time");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is migrating (migration "), "{}", err.message());
    kill(p.b.pid(), libc::SIGKILL);
    let r = running.await.unwrap();
    // The pages were on their way during the dump: the checkpoint is what fails.
    rolled_back(&r, "checkpoint", "the page stream to node host1");
    runs_again_on_the_source(&mut p.ca, &id).await;
}

/// A target agent that stops answering mid-transfer (SIGSTOP: its kernel keeps the connection
/// open and acknowledges what fits, so TCP alone would wait for ever) fails the migration once
/// an HTTP/2 ping goes unanswered, and the workload runs on the source again. Woken up, the
/// target does not run it.
#[tokio::test]
async fn target_that_stops_answering_mid_transfer_gives_the_workload_back() {
    if !require_root("target_that_stops_answering_mid_transfer_gives_the_workload_back") {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (id, running) = slow_migration_under_way(&mut p).await;
    kill(p.b.pid(), libc::SIGSTOP);
    let ended = tokio::time::timeout(Duration::from_secs(90), running).await;
    kill(p.b.pid(), libc::SIGCONT);
    let r = ended.expect("the migration ended within 90 s of the target stopping").unwrap();
    rolled_back(&r, "checkpoint", "host1");
    runs_again_on_the_source(&mut p.ca, &id).await;
    assert!(
        !holds(&mut p.cb, &id).await,
        "the stopped target must not hold the workload once it runs again"
    );
}

/// A target whose restore does not answer in time (CRIU's answer held back 20 s by a fault, the
/// agent answering pings meanwhile) is given up on at the source's restore deadline (3 s here):
/// rolled back, the workload runs on the source. The copy the target then takes on learns the
/// migration was aborted and is discarded, so it never waits for a commit.
#[tokio::test]
async fn a_restore_that_does_not_answer_in_time_is_given_up_and_its_late_copy_discarded() {
    if !require_root(
        "a_restore_that_does_not_answer_in_time_is_given_up_and_its_late_copy_discarded",
    ) {
        return;
    }
    let fi = "--enable-fault-injection";
    let mut p = pair_with(&[fi, "--restore-deadline-secs", "3"], &[fi]).await;
    let (_, id) = ticking_memhog(&mut p.ca, "256").await;
    let r = migrate_with_fault(&mut p, &id, pb::Fault::HoldRestore, 20_000).await;
    rolled_back(&r, "restore", "did not answer within 3 s of receiving the whole snapshot");
    // The copy's directory was installed before the restore, and the hold has most of its 20 s
    // to go; once it ends the target takes the copy on, finds the migration aborted, and
    // discards the copy with its directory.
    let dir = p.b.data_dir.join("workloads").join(&id);
    assert!(dir.exists(), "the target is still holding the restore");
    runs_again_on_the_source(&mut p.ca, &id).await;
    wait_until("the late copy discarded on the target", T, || async {
        (!dir.exists()).then_some(())
    })
    .await;
    assert!(!holds(&mut p.cb, &id).await, "no copy left on the target");
    runs_again_on_the_source(&mut p.ca, &id).await;
}

/// Whether `c`'s agent lists workload `id` (in any state).
async fn holds(c: &mut Client, id: &str) -> bool {
    let all = c.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    all.processes.iter().any(|w| id_of(w) == id)
}

/// A memhog of 256 MiB back to work on the source after a rollback: not stopped, every page
/// verified, its ticks continuing without a gap.
async fn runs_again_on_the_source(ca: &mut Client, id: &str) {
    let s = status(ca, id).await;
    assert_ne!(s.state, pb::ProcessState::Stopped as i32, "resumed on the source: {s:?}");
    assert!(ask(ca, id, "verify ").await.starts_with("verify ok pages=65536"));
    let before =
        numbers(&logs(ca, id).await.into_iter().map(|l| l.text).collect::<Vec<_>>(), "tick ").len();
    let lines =
        wait_log(ca, id, "ticking again", T, |l| numbers(l, "tick ").len() > before + 3).await;
    assert_consecutive(&numbers(&lines, "tick "), "tick");
}

#[tokio::test]
async fn corrupted_chunk_is_caught_and_rolled_back() {
    if !require_root("corrupted_chunk_is_caught_and_rolled_back") {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (_, id) = ticking_memhog(&mut p.ca, "64").await;
    let r = migrate_with_fault(&mut p, &id, pb::Fault::CorruptChunk, 5).await;
    // Chunk 5 is one of the memory pages, which travel while the dump runs.
    rolled_back(&r, "checkpoint", "checksum mismatch");
    let pages = p.b.data_dir.join("pages").join(&r.migration_id);
    assert!(!pages.exists(), "the target's page stream directory removed");
    let on_b =
        p.cb.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner().processes;
    assert!(on_b.is_empty(), "nothing restored on the target: {on_b:?}");
    assert!(
        !p.b.data_dir.join("migrations").join(&r.migration_id).exists(),
        "target scratch removed"
    );
    assert!(!p.b.data_dir.join("workloads").join(&id).exists(), "nothing installed on the target");
    assert!(ask(&mut p.ca, &id, "verify ").await.starts_with("verify ok"));
    // Without the fault the same workload then moves.
    completed(&migrate(&mut p.ca, &id, &p.b.addr).await);
    assert!(ask(&mut p.cb, &id, "verify ").await.starts_with("verify ok"));
}

#[tokio::test]
async fn restore_failing_on_the_target_rolls_back_with_the_reason() {
    if !require_root("restore_failing_on_the_target_rolls_back_with_the_reason") {
        return;
    }
    let mut p = pair(&[]).await;
    let s = start(&mut p.ca, spec(&[&workload("tcpserver.py"), "47001"])).await;
    let id = id_of(&s);
    wait_log(&p.ca, &id, "listening", T, |l| l.iter().any(|x| x == "listening 47001")).await;
    // The port is already taken on the target.
    let squatter = start(&mut p.cb, spec(&[&workload("tcpserver.py"), "47001"])).await;
    wait_log(&p.cb, &id_of(&squatter), "squatter listening", T, |l| {
        l.iter().any(|x| x == "listening 47001")
    })
    .await;
    let r = migrate(&mut p.ca, &id, &p.b.addr).await;
    rolled_back(&r, "restore", "already in use on the target");
    assert!(r.error.contains("restore.log"), "names CRIU's log: {}", r.error);
    let answer =
        tcp_hit(format!("{}:47001", p.net.ip(0)), "still here").await.expect("source serves again");
    assert_eq!(field(&answer, "hits="), "1", "{answer}");
    let on_b =
        p.cb.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner().processes;
    assert_eq!(on_b.len(), 1, "only the squatter runs on the target: {on_b:?}");
}

#[tokio::test]
async fn unknown_unreachable_or_same_targets_are_refused_clearly() {
    if !require_root("unknown_unreachable_or_same_targets_are_refused_clearly") {
        return;
    }
    let mut p = pair(&[]).await;
    let s = start(&mut p.ca, spec(&["sleep", "600"])).await;
    let id = id_of(&s);

    let r = migrate(&mut p.ca, &id, &format!("http://{}:50051", p.net.unused_ip())).await;
    rolled_back(&r, "preflight", "unreachable");
    let r = migrate(&mut p.ca, &id, &p.a.addr).await;
    rolled_back(&r, "preflight", "same node");
    let s = status(&mut p.ca, &id).await;
    assert_ne!(s.state, pb::ProcessState::Stopped as i32, "never frozen: {s:?}");

    for (target, code, needle) in [
        ("not a uri", Code::InvalidArgument, "not a URI"),
        ("", Code::InvalidArgument, "target address is empty"),
    ] {
        let err =
            p.ca.migrate_out(pb::MigrateOutRequest {
                workload_id: id.clone(),
                target_address: target.into(),
                ..Default::default()
            })
            .await
            .expect_err(target);
        assert_eq!(err.code(), code, "{target:?}: {err:?}");
        assert!(err.message().contains(needle), "{target:?}: {}", err.message());
    }
    let err =
        p.ca.migrate_out(pb::MigrateOutRequest {
            workload_id: "w-nope".into(),
            target_address: p.b.addr.clone(),
            ..Default::default()
        })
        .await
        .expect_err("unknown workload");
    assert_eq!(err.code(), Code::NotFound);
    let err =
        p.ca.migrate_out(pb::MigrateOutRequest {
            workload_id: id.clone(),
            target_address: p.b.addr.clone(),
            fault: pb::Fault::CorruptChunk as i32,
            ..Default::default()
        })
        .await
        .expect_err("faults need the flag");
    assert!(err.message().contains("fault injection is disabled"), "{}", err.message());
}

#[tokio::test]
async fn post_copy_resumes_before_the_memory_arrives_and_loses_nothing() {
    if !require_root("post_copy_resumes_before_the_memory_arrives_and_loses_nothing") {
        return;
    }
    let mut p = pair(&[]).await;
    let (_, id) = ticking_memhog(&mut p.ca, "256").await;
    let r = post_copy(&mut p.ca, &id, &p.b.addr).await;
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{}", r.error);
    assert_eq!(r.mode, "post_copy");
    let phases: Vec<&str> = r.phases.iter().map(|x| x.phase.as_str()).collect();
    assert_eq!(
        phases,
        ["preflight", "freeze", "checkpoint", "transfer", "restore", "commit", "post_copy"]
    );
    assert!(r.bytes_raw < 64 << 20, "the memory did not travel in the snapshot: {r:?}");
    // The target counted the lazy pages (about 256 MiB of them) and every one arrived.
    assert!(r.post_copy_pages_total >= 60_000, "{r:?}");
    assert_eq!((r.post_copy_pages_remaining, r.post_copy_bytes_remaining), (0, 0), "{r:?}");
    let verdict = ask(&mut p.cb, &id, "verify ").await;
    assert!(verdict.starts_with("verify ok pages=65536"), "{verdict}");
    let lines =
        wait_log(&p.cb, &id, "ticks on the target", T, |l| numbers(l, "tick ").len() > 20).await;
    assert_consecutive(&numbers(&lines, "tick "), "tick");
    let err =
        p.ca.get_status(pb::WorkloadRef { id: id.clone() }).await.expect_err("gone from source");
    assert_eq!(err.code(), Code::NotFound);

    // Post-copy needs CRIU: a cooperative workload is refused up front.
    let script = repo().join("coop/examples/counter.py");
    let mut sp = spec(&["python3", &script.to_string_lossy()]);
    sp.engine = pb::Engine::Cooperative as i32;
    let coop = start(&mut p.ca, sp).await;
    let err =
        p.ca.migrate_out(pb::MigrateOutRequest {
            workload_id: id_of(&coop),
            target_address: p.b.addr.clone(),
            mode: pb::Mode::PostCopy as i32,
            ..Default::default()
        })
        .await
        .expect_err("post-copy of a cooperative workload");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("post-copy needs the CRIU engine"), "{}", err.message());
}

/// The number after `key` (e.g. "writes=") in a memhog verify line.
fn count(verdict: &str, key: &str) -> u64 {
    field(verdict, key).parse().unwrap_or_else(|_| panic!("no {key} in {verdict:?}"))
}

/// memhog in `write` mode rewrites pages all over its memory about 64 000 times a second. Moved
/// in post-copy with the page server held for a second after the resume, it runs on the target
/// while most of its memory is still on the source and writes into pages as they arrive (it
/// counts the rewrites of pages mincore says are not in memory), and afterwards every byte (each
/// page as generated, with its latest generation on top) checks out.
#[tokio::test]
async fn post_copy_keeps_every_byte_of_a_program_writing_while_its_pages_arrive() {
    if !require_root("post_copy_keeps_every_byte_of_a_program_writing_while_its_pages_arrive") {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let s = start(&mut p.ca, spec(&[&workload("memhog"), "256", "write"])).await;
    let id = id_of(&s);
    wait_log(&p.ca, &id, "memhog ticking", T, |l| numbers(l, "tick ").len() >= 3).await;
    let before = ask(&mut p.ca, &id, "verify ").await;
    assert!(before.starts_with("verify ok pages=65536"), "{before}");
    assert!(count(&before, "writes=") > 0, "{before}");

    let mid = format!("m-pc-w-{}", std::process::id());
    let running =
        post_copy_in_background(&p.ca, &id, &p.b.addr, &mid, pb::Fault::StallPageServer, 1000);
    let live = in_post_copy_with_pages_missing(&p.ca, &mid).await;
    assert!(live.post_copy_pages_remaining > 30_000, "most pages still on the source: {live:?}");
    let r = running.await.unwrap().expect("MigrateOut answers");
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{r:?}");
    assert_eq!((r.post_copy_pages_remaining, r.post_copy_bytes_remaining), (0, 0), "{r:?}");

    let after = ask(&mut p.cb, &id, "verify ").await;
    assert!(after.starts_with("verify ok pages=65536"), "{after}");
    eprintln!("memhog write: before the migration {before}; after {after}");
    // mincore said some pages it rewrote were not in memory yet: it wrote into pages arriving.
    assert!(count(&after, "writes=") > count(&before, "writes="), "{before} / {after}");
    assert!(count(&after, "missing=") > 0, "no rewrite of a page still on the source: {after}");
}

/// The `flags iter=N fails=F` lines of madviser: (N, F) of each.
fn madviser_lines(lines: &[String]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter(|l| l.starts_with("flags iter="))
        .map(|l| (field(l, "iter=").parse().unwrap_or(0), field(l, "fails=").parse().unwrap_or(0)))
        .collect()
}

/// The source reads CRIU's smaps before the freeze (migrate::layout, CRIU patch 0005). A workload
/// that leaves its mappings alone gets them used; one that keeps changing a mapping's flags gets
/// them read again in the freeze, and the flags it had at the freeze are the ones it keeps.
#[tokio::test]
async fn smaps_read_before_the_freeze_are_used_only_if_no_mapping_changed() {
    if !require_root("smaps_read_before_the_freeze_are_used_only_if_no_mapping_changed") {
        return;
    }
    let net = Net::new(2);
    let a = net.agent(0, &["--keep-scratch"]);
    let b = net.agent(1, &["--keep-scratch"]);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // memhog, between ticks, maps and madvises nothing: post-copy uses the smaps read before.
    let (_, quiet) = ticking_memhog(&mut ca, "64").await;
    let r = post_copy(&mut ca, &quiet, &b.addr).await;
    completed(&r);
    let log = dump_log(&a, &r.migration_id);
    assert!(
        log.contains(SMAPS_READ_BEFORE),
        "a quiet workload's smaps should come from before the freeze"
    );
    let verdict = ask(&mut cb, &quiet, "verify ").await;
    assert!(verdict.starts_with("verify ok pages=16384"), "{verdict}");

    // madviser flips MADV_DONTFORK on a mapping thousands of times a second and checks its
    // smaps after each flip: the smaps read before the freeze are stale as soon as it flips once
    // between that read and the stop, and after each move the flag must be the one last set.
    // There and back, three times. A madviser that got no CPU in those few milliseconds (a
    // loaded host: it happened in 1 of 4 moves with a CPU hog beside the suite) changed nothing,
    // and the copies are rightly used; a blind watch would use them in every move.
    let s = start(&mut ca, spec(&[&workload("madviser")])).await;
    let id = id_of(&s);
    wait_log(&ca, &id, "madviser checking", T, |l| madviser_lines(l).len() >= 2).await;
    let agents = [(&a, ca.clone()), (&b, cb.clone())];
    const HOPS: usize = 6;
    let mut used = 0;
    for hop in 0..HOPS {
        let (from, to) = (&agents[hop % 2], &agents[(hop + 1) % 2]);
        let r = migrate(&mut from.1.clone(), &id, &to.0.addr).await;
        completed(&r);
        if dump_log(from.0, &r.migration_id).contains(SMAPS_READ_BEFORE) {
            eprintln!("hop {hop}: madviser changed nothing between the read and the stop");
            used += 1;
        }
        // The log came with the workload: progress past its last line shows it runs again.
        let now = logs(&mut to.1.clone(), &id).await.into_iter().map(|l| l.text);
        let n0 = madviser_lines(&now.collect::<Vec<_>>()).last().map_or(0, |l| l.0);
        let lines = wait_log(&to.1, &id, "madviser checking on the target", T, |l| {
            madviser_lines(l).last().is_some_and(|l| l.0 > n0 + 1000)
        })
        .await;
        let fails: Vec<&String> = lines
            .iter()
            .filter(|l| !l.starts_with("flags iter") && !l.starts_with("madviser"))
            .collect();
        assert!(fails.is_empty(), "hop {hop}: the flags restored were not the last set: {fails:?}");
        assert_eq!(madviser_lines(&lines).last().map(|l| l.1), Some(0), "hop {hop}");
    }
    assert!(used < HOPS, "smaps read before the freeze were used in all {HOPS} moves of madviser");
}

/// More threads than the smaps watch counts (sys::layout::MAX_THREADS): no watch, so CRIU reads
/// smaps in the freeze (and the source holds a do-nothing perf event instead), and all 600 workers
/// come through a post-copy move running.
#[tokio::test]
async fn a_program_with_more_threads_than_the_watch_counts_moves_with_all_of_them() {
    if !require_root("a_program_with_more_threads_than_the_watch_counts_moves_with_all_of_them") {
        return;
    }
    let net = Net::new(2);
    let a = net.agent(0, &["--keep-scratch"]);
    let b = net.agent(1, &[]);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let s = start(&mut ca, spec(&[&workload("threads"), "600"])).await;
    let id = id_of(&s);
    wait_log(&ca, &id, "a threads line", T, |l| l.iter().any(|x| x.starts_with("threads t0=")))
        .await;
    assert_eq!(status(&mut ca, &id).await.threads, 601, "main and 600 workers");
    let r = post_copy(&mut ca, &id, &b.addr).await;
    completed(&r);
    let used = dump_log(&a, &r.migration_id).contains(SMAPS_READ_BEFORE);
    assert!(!used, "601 threads are more than the watch counts");
    assert_eq!(status(&mut cb, &id).await.threads, 601, "every thread restored");
    assert_eq!(ask(&mut cb, &id, "threads alive=").await, "threads alive=600");
}

/// A post-copy migration with `fault` (fault_arg ms) and a known id, run in a task of its own.
fn post_copy_in_background(
    c: &Client,
    id: &str,
    target: &str,
    mid: &str,
    fault: pb::Fault,
    ms: u32,
) -> tokio::task::JoinHandle<Result<pb::MigrationResult, tonic::Status>> {
    let mut c = c.clone();
    let req = pb::MigrateOutRequest {
        workload_id: id.into(),
        target_address: target.into(),
        migration_id: mid.into(),
        mode: pb::Mode::PostCopy as i32,
        fault: fault as i32,
        fault_arg: ms,
    };
    tokio::spawn(async move {
        let r = c.migrate_out(req).await.map(|r| r.into_inner());
        if let Ok(r) = &r {
            eprintln!(
                "migration {}: outcome={} failed_phase={:?} error={:?} remaining={}/{}",
                r.migration_id,
                r.outcome,
                r.failed_phase,
                r.error,
                r.post_copy_pages_remaining,
                r.post_copy_pages_total
            );
        }
        r
    })
}

/// A process of workload tree `pid` is alive (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Waits until the source reports migration `mid` in its post_copy phase with pages still to
/// arrive, and returns that report.
async fn in_post_copy_with_pages_missing(c: &Client, mid: &str) -> pb::MigrationResult {
    wait_until("the post_copy phase with pages missing", T, || {
        let mut c = c.clone();
        let mid = mid.to_string();
        async move {
            let r = c.get_migration(pb::MigrationRef { migration_id: mid }).await.ok()?;
            let r = r.into_inner();
            (r.current_phase == "post_copy" && r.post_copy_pages_remaining > 0).then_some(r)
        }
    })
    .await
}

#[tokio::test]
async fn post_copy_target_agent_killed_before_the_resume_rolls_back_to_the_source() {
    if !require_root("post_copy_target_agent_killed_before_the_resume_rolls_back_to_the_source") {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (_, id) = ticking_memhog(&mut p.ca, "256").await;
    let mid = format!("m-pc-a-{}", std::process::id());
    // The source waits 8 s between the restore on the target and the commit.
    let running =
        post_copy_in_background(&p.ca, &id, &p.b.addr, &mid, pb::Fault::HoldBeforeCommit, 8000);
    // The target holds its restored copy, stopped, waiting for the commit.
    let copy = wait_until("the stopped copy on the target", T, || {
        let (mut cb, id) = (p.cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (s.state == pb::ProcessState::Stopped as i32 && s.pid > 0).then_some(s)
        }
    })
    .await;
    // The source has its answer (restored, stopped) and holds before the commit.
    wait_until("the source to reach its commit", T, || {
        let (mut c, mid) = (p.ca.clone(), mid.clone());
        async move {
            let r = c.get_migration(pb::MigrationRef { migration_id: mid }).await.ok()?;
            (r.into_inner().current_phase == "commit").then_some(())
        }
    })
    .await;
    // The target agent dies before the commit reaches it.
    kill(p.b.pid(), libc::SIGKILL);
    let r = running.await.unwrap().expect("MigrateOut answers");
    rolled_back(&r, "commit", "host1");
    assert!(r.error.contains("never runs"), "{}", r.error);
    assert!(alive(copy.pid), "the copy stays on the target, stopped");
    assert_eq!(stat(copy.pid).map(|s| s.state), Some('T'), "and never ran");

    // The workload runs on the source, exactly once: its memory intact, its ticks continuing.
    runs_again_on_the_source(&mut p.ca, &id).await;
    // The target agent comes back: it finds the copy uncommitted, with memory its lazy-pages
    // daemon (gone with the source's page server) never completed, and discards it: it never
    // ran, and the workload is the source's.
    let b = p.net.restart_agent(1, p.b, &[]);
    let mut cb = b.client().await;
    gone_from(&mut cb, &id, "the copy on the target to be discarded").await;
    wait_until("the copy's processes to be gone", T, || async { (!alive(copy.pid)).then_some(()) })
        .await;
    // A commit arriving now is refused: that copy never runs.
    let err = cb
        .commit_migration(pb::MigrationRef { migration_id: mid.clone() })
        .await
        .expect_err("nothing to commit");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn post_copy_page_server_killed_after_the_resume_reports_the_loss_and_runs_nowhere() {
    if !require_root(
        "post_copy_page_server_killed_after_the_resume_reports_the_loss_and_runs_nowhere",
    ) {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (s, id) = ticking_memhog(&mut p.ca, "256").await;
    let original = s.pid;
    let mid = format!("m-pc-b-{}", std::process::id());
    // Once the target resumed, the page server stops serving for a long while.
    let running =
        post_copy_in_background(&p.ca, &id, &p.b.addr, &mid, pb::Fault::StallPageServer, 60_000);
    let live = in_post_copy_with_pages_missing(&p.ca, &mid).await;
    assert!(live.post_copy_pages_total >= live.post_copy_pages_remaining, "{live:?}");
    assert_eq!(live.post_copy_bytes_remaining, live.post_copy_pages_remaining * 4096);
    let target_side =
        p.cb.get_migration(pb::MigrationRef { migration_id: mid.clone() }).await.unwrap();
    assert!(target_side.get_ref().post_copy_pages_remaining > 0, "{target_side:?}");
    let copy = status(&mut p.cb, &id).await;
    assert_ne!(copy.state, pb::ProcessState::Stopped as i32, "resumed on the target: {copy:?}");

    // The page server (CRIU's dump process on the source) dies.
    let criu: Vec<i32> = descendants(p.a.pid())
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.comm == "criu"))
        .collect();
    assert_eq!(criu.len(), 1, "one criu process serves the pages: {criu:?}");
    kill(criu[0], libc::SIGKILL);

    let r = running.await.unwrap().expect("MigrateOut answers");
    assert_eq!(r.outcome, pb::Outcome::Failed as i32, "{r:?}");
    assert_eq!(r.failed_phase, "post_copy");
    for needle in ["is lost", "never arrived", "host0", "host1", "memory pages", "page server"] {
        assert!(r.error.contains(needle), "error should mention {needle:?}: {}", r.error);
    }
    assert!(r.post_copy_pages_remaining > 0, "the lost pages are counted: {r:?}");

    // The target killed its copy and says why; the original was never resumed.
    let lost = wait_until("the target to mark the workload lost", T, || {
        let (mut cb, id) = (p.cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (s.state == pb::ProcessState::Exited as i32).then_some(s)
        }
    })
    .await;
    assert!(
        lost.lost_reason.contains("never arrived") && lost.lost_reason.contains("host0"),
        "{lost:?}"
    );
    assert!(!alive(copy.pid), "no process of it runs on the target");
    assert!(!alive(original), "the original was killed, not resumed");
    let err = p.ca.get_status(pb::WorkloadRef { id: id.clone() }).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
}

/// Post-copy, the target agent SIGKILLed (and restarted) while the resumed copy still waits for
/// pages: the pages came through that agent (the page tunnel), so they can no longer arrive. The
/// copy must never run on the missing memory (which the kernel would give it as zero pages once
/// nobody held its userfaultfds): it is killed, the restarted target says it is lost and why, the
/// source reports the loss and never resumes the original.
#[tokio::test]
async fn post_copy_target_agent_killed_after_the_resume_never_runs_the_copy_on_missing_memory() {
    if !require_root(
        "post_copy_target_agent_killed_after_the_resume_never_runs_the_copy_on_missing_memory",
    ) {
        return;
    }
    let p = pair(&[FI]).await;
    let mut ca = p.ca.clone();
    let (s, id) = ticking_memhog(&mut ca, "256").await;
    let original = s.pid;
    let mid = format!("m-pc-target-{}", std::process::id());
    // The page server stalls long enough for the kill to find pages missing.
    let running =
        post_copy_in_background(&p.ca, &id, &p.b.addr, &mid, pb::Fault::StallPageServer, 8000);
    in_post_copy_with_pages_missing(&p.ca, &mid).await;
    let mut cb = p.cb.clone();
    let copy = status(&mut cb, &id).await;
    assert_ne!(copy.state, pb::ProcessState::Stopped as i32, "resumed on the target: {copy:?}");
    let Pair { net, a: _a, b, ca, cb: _ } = p;
    let b = net.restart_agent(1, b, &[]);
    let r = running.await.unwrap().expect("MigrateOut answers");
    eprintln!("source's answer: outcome={} error={:?}", r.outcome, r.error);
    assert_eq!(r.outcome, pb::Outcome::Failed as i32, "{r:?}");
    assert!(r.error.contains("is lost"), "{:?}", r.error);
    wait_until("the copy to be killed", T, || async { (!alive(copy.pid)).then_some(()) }).await;
    let mut cb = b.client().await;
    let lost = wait_until("the restarted target to say the workload is lost", T, || {
        let (mut cb, id) = (cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (s.state == pb::ProcessState::Exited as i32).then_some(s)
        }
    })
    .await;
    assert!(lost.lost_reason.contains("never arrived"), "{lost:?}");
    let err = cb.resume_process(pb::WorkloadRef { id: id.clone() }).await;
    assert!(err.is_err(), "a lost workload cannot be resumed: {err:?}");
    wait_until("the original to be gone", T, || async { (!alive(original)).then_some(()) }).await;
    let mut ca = ca;
    gone_from(&mut ca, &id, "the original to be forgotten").await;
}

#[tokio::test]
async fn post_copy_source_node_lost_after_the_resume_kills_the_target_copy() {
    if !require_root("post_copy_source_node_lost_after_the_resume_kills_the_target_copy") {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (s, id) = ticking_memhog(&mut p.ca, "256").await;
    let original = s.pid;
    let mid = format!("m-pc-c-{}", std::process::id());
    let running =
        post_copy_in_background(&p.ca, &id, &p.b.addr, &mid, pb::Fault::StallPageServer, 60_000);
    in_post_copy_with_pages_missing(&p.ca, &mid).await;
    let copy = status(&mut p.cb, &id).await;

    // The whole source node goes: its agent, CRIU and the frozen original.
    for pid in descendants(p.a.pid()) {
        kill(pid, libc::SIGKILL);
    }
    kill(p.a.pid(), libc::SIGKILL);
    assert!(running.await.unwrap().is_err(), "the source cannot answer");

    let lost = wait_until("the target to mark the workload lost", T, || {
        let (mut cb, id) = (p.cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (s.state == pb::ProcessState::Exited as i32).then_some(s)
        }
    })
    .await;
    assert!(lost.lost_reason.contains("never arrived"), "{lost:?}");
    assert!(!alive(copy.pid), "no process of it runs on the target");
    // The SIGKILLed original may still be dying when the target (told at once by the broken
    // page tunnel) has already given up its copy.
    wait_until("the original to be gone", T, || async { (!alive(original)).then_some(()) }).await;
    let end = p.cb.get_migration(pb::MigrationRef { migration_id: mid }).await.unwrap();
    assert_eq!(end.get_ref().outcome, pb::Outcome::Failed as i32, "{end:?}");
    assert!(end.get_ref().post_copy_pages_remaining > 0, "{end:?}");
}

#[tokio::test]
async fn post_copy_source_agent_restarted_after_the_resume_never_resumes_the_original() {
    if !require_root("post_copy_source_agent_restarted_after_the_resume_never_resumes_the_original")
    {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (s, id) = ticking_memhog(&mut p.ca, "256").await;
    let original = s.pid;
    let mid = format!("m-pc-d-{}", std::process::id());
    let running =
        post_copy_in_background(&p.ca, &id, &p.b.addr, &mid, pb::Fault::StallPageServer, 60_000);
    in_post_copy_with_pages_missing(&p.ca, &mid).await;
    let criu: Vec<i32> = descendants(p.a.pid())
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.comm == "criu"))
        .collect();
    assert_eq!(criu.len(), 1, "{criu:?}");

    // The source agent crashes and comes back while the target runs the workload. The pages
    // travelled through it (the page tunnel), so the target loses the workload at once: its
    // memory can no longer arrive. The restarted agent finds the frozen original of a workload
    // that moved out and kills it instead of adopting it.
    let a = p.net.restart_agent(0, p.a, &["--enable-fault-injection"]);
    assert!(running.await.unwrap().is_err(), "the crashed agent never answered");
    let lost = wait_until("the target to mark the workload lost", T, || {
        let (mut cb, id) = (p.cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (s.state == pb::ProcessState::Exited as i32).then_some(s)
        }
    })
    .await;
    assert!(lost.lost_reason.contains("never arrived"), "{lost:?}");
    assert!(!alive(lost.pid), "no process of it is left on the target");
    let mut ca = a.client().await;
    let err = ca.get_status(pb::WorkloadRef { id: id.clone() }).await.expect_err("not adopted");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // The page server its predecessor left (stalled, still holding the original's tasks) goes
    // too, and with it the original.
    kill(criu[0], libc::SIGKILL);
    wait_until("the original to be gone", T, || async { (!alive(original)).then_some(()) }).await;
}

#[tokio::test]
async fn a_page_stream_nobody_claimed_is_removed_when_its_agent_restarts() {
    if !require_root("a_page_stream_nobody_claimed_is_removed_when_its_agent_restarts") {
        return;
    }
    let net = Net::new(1);
    let a = net.agent(0, &[]);
    let mut c = a.client().await;
    // The shortest honest page stream: CRIU's close command alone (32 bytes in CRIU 4.2).
    let mut close = 0x1023u32.to_ne_bytes().to_vec();
    close.resize(32, 0);
    let parts = vec![
        pb::PagePart { migration_id: "m-stale".into(), ..Default::default() },
        pb::PagePart { commands: close.clone(), ..Default::default() },
        pb::PagePart {
            end: Some(pb::PageStreamEnd {
                bytes: 32,
                digest: blake3::hash(&close).to_hex().to_string(),
            }),
            ..Default::default()
        },
    ];
    c.push_pages(tokio_stream::iter(parts)).await.expect("an honest page stream");
    let dir = a.data_dir.join("pages").join("m-stale");
    assert!(dir.is_dir(), "the stream waits for its snapshot in {dir:?}");
    let a = net.restart_agent(0, a, &[]);
    let _ = a.client().await;
    assert!(!dir.exists(), "a restarted agent removed the unclaimed stream");
}

/// The target resumes the workload but the source never hears so: the source keeps the original
/// frozen (never resumed on its own), asks the target, learns it runs the workload with all its
/// memory, and only then kills the original.
#[tokio::test]
async fn post_copy_commit_without_an_answer_keeps_the_original_frozen_until_the_target_says() {
    if !require_root(
        "post_copy_commit_without_an_answer_keeps_the_original_frozen_until_the_target_says",
    ) {
        return;
    }
    let mut p = pair(&["--enable-fault-injection"]).await;
    let (s, id) = ticking_memhog(&mut p.ca, "64").await;
    let original = s.pid;
    // The target resumes the workload, but the source never hears so: it cannot know whether
    // the workload runs there.
    let r = migrate_with(
        &mut p.ca,
        pb::MigrateOutRequest {
            workload_id: id.clone(),
            target_address: p.b.addr.clone(),
            mode: pb::Mode::PostCopy as i32,
            fault: pb::Fault::LoseCommitAnswer as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, pb::Outcome::Failed as i32, "{r:?}");
    assert_eq!(r.failed_phase, "commit", "{r:?}");
    for needle in ["did not confirm resuming", "every page was served", "keeps asking"] {
        assert!(r.error.contains(needle), "{needle:?} not in {:?}", r.error);
    }
    // The source asks the target, which says it resumed the copy and has every page: the
    // original, kept frozen until then, is killed, and the migration is recorded completed.
    let end = resolved(&p.ca, &r.migration_id).await;
    assert_eq!(end.outcome, pb::Outcome::Completed as i32, "{end:?}");
    wait_until("the original to be gone", T, || async { (!alive(original)).then_some(()) }).await;
    gone_from(&mut p.ca, &id, "the original to be forgotten").await;
    let dst = status(&mut p.cb, &id).await;
    assert_ne!(dst.state, pb::ProcessState::Stopped as i32, "{dst:?}");
    assert!(ask(&mut p.cb, &id, "verify ").await.starts_with("verify ok pages=16384"));
}

// ---------------------------------------------------------------------------------------------
// Exactly one copy, whatever fails: operations during a migration, and the source agent killed
// at each step of it and restarted (docs/reliability.md).

const FI: &str = "--enable-fault-injection";

/// Asserts that `err` is a refusal of an operation because of a migration, naming it.
fn refused_for_migration(err: &tonic::Status, op: &str, needle: &str) {
    assert_eq!(err.code(), Code::FailedPrecondition, "{op}: {err:?}");
    assert!(err.message().contains(needle), "{op}: {needle:?} not in {:?}", err.message());
}

/// Pause, resume and stop on every side of a migration in flight: each refused, and the
/// migration goes on to completion with every byte (a resume during the migration once made it
/// roll back and the workload die).
#[tokio::test]
async fn pause_resume_and_stop_are_refused_while_a_workload_migrates() {
    if !require_root("pause_resume_and_stop_are_refused_while_a_workload_migrates") {
        return;
    }
    let mut p = pair(&[FI]).await;
    let (id, running) = slow_migration_under_way(&mut p).await;
    let r = |id: &str| pb::WorkloadRef { id: id.to_string() };
    let err = p.ca.pause_process(r(&id)).await.expect_err("pause refused");
    refused_for_migration(&err, "pause", "is migrating (migration ");
    let err = p.ca.resume_process(r(&id)).await.expect_err("resume refused");
    refused_for_migration(&err, "resume", "cannot resume it");
    let stop = pb::StopProcessRequest { id: id.clone(), ..Default::default() };
    let err = p.ca.stop_process(stop).await.expect_err("stop refused");
    refused_for_migration(&err, "stop", "wait for the migration to end");
    let r = running.await.unwrap();
    completed(&r);
    runs_again_on_the_source(&mut p.cb, &id).await;
    assert!(!holds(&mut p.ca, &id).await, "the source keeps nothing");
}

/// The target's restored copy, held stopped for the commit, never runs but by the commit: a
/// resume, pause or stop of it on the target is refused, and the heartbeat says it is held.
#[tokio::test]
async fn a_copy_held_for_its_commit_cannot_be_resumed_or_stopped() {
    if !require_root("a_copy_held_for_its_commit_cannot_be_resumed_or_stopped") {
        return;
    }
    let mut p = pair(&[FI]).await;
    let (_, id) = ticking_memhog(&mut p.ca, "64").await;
    let mid = format!("m-held-{}", std::process::id());
    let running = migrate_in_background(
        &p,
        &id,
        &mid,
        pb::Mode::StopAndCopy,
        pb::Fault::HoldBeforeCommit,
        6000,
    );
    let held = wait_until("the target to hold its copy", T, || {
        let (mut cb, id) = (p.cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (!s.held_for_migration.is_empty()).then_some(s)
        }
    })
    .await;
    assert_eq!(held.held_for_migration, mid);
    assert_eq!(held.state, pb::ProcessState::Stopped as i32, "{held:?}");
    let r = |id: &str| pb::WorkloadRef { id: id.to_string() };
    let err = p.cb.resume_process(r(&id)).await.expect_err("resume of a held copy");
    refused_for_migration(&err, "resume", "held stopped for migration");
    let err = p.cb.pause_process(r(&id)).await.expect_err("pause of a held copy");
    refused_for_migration(&err, "pause", "only that migration's commit resumes it");
    let stop = pb::StopProcessRequest { id: id.clone(), ..Default::default() };
    let err = p.cb.stop_process(stop).await.expect_err("stop of a held copy");
    refused_for_migration(&err, "stop", "held stopped");
    completed(&running.await.unwrap().expect("the migration answered"));
    let s = status(&mut p.cb, &id).await;
    assert!(s.held_for_migration.is_empty(), "committed: {s:?}");
    assert!(ask(&mut p.cb, &id, "verify ").await.starts_with("verify ok pages=16384"));
}

/// A migration of `id` from A to B in a task of its own, with a test-only fault.
fn migrate_in_background(
    p: &Pair,
    id: &str,
    mid: &str,
    mode: pb::Mode,
    fault: pb::Fault,
    arg: u32,
) -> tokio::task::JoinHandle<Result<pb::MigrationResult, tonic::Status>> {
    let mut c = p.ca.clone();
    let req = pb::MigrateOutRequest {
        workload_id: id.into(),
        target_address: p.b.addr.clone(),
        migration_id: mid.into(),
        mode: mode as i32,
        fault: fault as i32,
        fault_arg: arg,
    };
    tokio::spawn(async move { c.migrate_out(req).await.map(|r| r.into_inner()) })
}

/// Waits until `c`'s agent lists no workload `id` any more.
async fn gone_from(c: &mut Client, id: &str, what: &str) {
    wait_until(what, T, || {
        let (mut c, id) = (c.clone(), id.to_string());
        async move { (!holds(&mut c, &id).await).then_some(()) }
    })
    .await;
}

/// Neither agent keeps a scratch directory or page images of migration `mid`.
fn no_scratch(p_dirs: [&std::path::Path; 2], mid: &str) {
    for d in p_dirs {
        for sub in ["migrations", "pages"] {
            let left = d.join(sub).join(mid);
            assert!(!left.exists(), "{left:?} is left behind");
        }
    }
}

/// Waits (up to T) until neither agent keeps a scratch directory or page images of migration
/// `mid`, then asserts it, naming what is left.
async fn scratch_gone(dirs: [&std::path::Path; 2], mid: &str) {
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        let left = dirs
            .iter()
            .any(|d| d.join("migrations").join(mid).exists() || d.join("pages").join(mid).exists());
        if !left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    no_scratch(dirs, mid);
}

/// The source agent SIGKILLed at step `at` of a migration (FAULT_CRASH_AT) and restarted on the
/// same data dir: afterwards exactly one copy runs, on the target when the commit had reached it
/// (`on_target`), else on the source, with every byte and its ticks continuing; the other side
/// keeps nothing, and the restarted source reports how the migration ended.
async fn source_crash(at: u32, mode: pb::Mode, on_target: bool) {
    let Pair { net, a, b, mut ca, cb } = pair(&[FI]).await;
    let (_, id) = ticking_memhog(&mut ca, "256").await;
    let mid = format!("m-crash{at}-{}-{}", mode as i32, std::process::id());
    let p = Pair { net, a, b, ca, cb };
    let r = migrate_in_background(&p, &id, &mid, mode, pb::Fault::CrashAt, at).await.unwrap();
    assert!(r.is_err(), "the source agent died mid-migration, yet answered: {r:?}");
    let Pair { net, a, b, ca: _, mut cb } = p;
    let a = net.restart_agent(0, a, &[FI]);
    let mut ca = a.client().await;
    let r = resolved(&ca, &mid).await;
    eprintln!("resolved after the crash at {at}: outcome={} error={:?}", r.outcome, r.error);
    if on_target {
        assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{r:?}");
        gone_from(&mut ca, &id, "the original to be gone from the source").await;
        runs_again_on_the_source(&mut cb, &id).await;
    } else {
        assert_eq!(r.outcome, pb::Outcome::RolledBack as i32, "{r:?}");
        assert!(r.error.contains("resumed on node host0"), "{:?}", r.error);
        runs_again_on_the_source(&mut ca, &id).await;
        gone_from(&mut cb, &id, "the target's copy to be discarded").await;
    }
    let dirs = [a.data_dir.as_path(), b.data_dir.as_path()];
    scratch_gone(dirs, &mid).await;
    // Once resolved the workload is no longer held: it can be paused and resumed again.
    let c = if on_target { &mut cb } else { &mut ca };
    c.pause_process(pb::WorkloadRef { id: id.clone() }).await.expect("pause after recovery");
    c.resume_process(pb::WorkloadRef { id: id.clone() }).await.expect("resume after recovery");
}

#[tokio::test]
async fn source_agent_killed_right_after_the_freeze_resumes_the_original() {
    if require_root("source_agent_killed_right_after_the_freeze_resumes_the_original") {
        source_crash(1, pb::Mode::StopAndCopy, false).await;
    }
}

#[tokio::test]
async fn source_agent_killed_while_the_target_holds_its_copy_resumes_the_original() {
    if require_root("source_agent_killed_while_the_target_holds_its_copy_resumes_the_original") {
        source_crash(2, pb::Mode::StopAndCopy, false).await;
    }
}

#[tokio::test]
async fn source_agent_killed_before_sending_the_commit_asks_the_target_and_resumes() {
    if require_root("source_agent_killed_before_sending_the_commit_asks_the_target_and_resumes") {
        source_crash(3, pb::Mode::StopAndCopy, false).await;
    }
}

#[tokio::test]
async fn source_agent_killed_after_the_commit_leaves_the_workload_on_the_target_only() {
    if require_root("source_agent_killed_after_the_commit_leaves_the_workload_on_the_target_only") {
        source_crash(4, pb::Mode::StopAndCopy, true).await;
    }
}

#[tokio::test]
async fn post_copy_source_agent_killed_right_after_the_freeze_resumes_the_original() {
    if require_root("post_copy_source_agent_killed_right_after_the_freeze_resumes_the_original") {
        source_crash(1, pb::Mode::PostCopy, false).await;
    }
}

#[tokio::test]
async fn post_copy_source_agent_killed_before_sending_the_commit_resumes_the_original() {
    if require_root("post_copy_source_agent_killed_before_sending_the_commit_resumes_the_original")
    {
        source_crash(3, pb::Mode::PostCopy, false).await;
    }
}

/// The target agent SIGKILLed while it commits (test-only `--test-crash-at-commit`): once the
/// commit is recorded and the copy still stopped (`recorded`), or once the copy runs and before
/// the source has its answer (`resumed`). The source, without an answer, keeps its original
/// frozen and keeps asking; the target, restarted, runs its copy (a recorded commit makes it the
/// workload), and the source then kills its original: one copy, on the target, every byte, its
/// ticks going on, nothing left of the migration on either side.
async fn target_crash_at_commit(at: &str) {
    let p = pair_with(&[FI], &[FI, "--test-crash-at-commit", at]).await;
    let mut ca = p.ca.clone();
    let (s, id) = ticking_memhog(&mut ca, "256").await;
    let original = s.pid;
    let mid = format!("m-target-{at}-{}", std::process::id());
    let r = migrate_in_background(&p, &id, &mid, pb::Mode::StopAndCopy, pb::Fault::None, 0);
    let r = r.await.unwrap().expect("the source answers");
    eprintln!(
        "source's answer: outcome={} phase={:?} error={:?}",
        r.outcome, r.failed_phase, r.error
    );
    assert_eq!(
        (r.outcome, r.failed_phase.as_str()),
        (pb::Outcome::Failed as i32, "commit"),
        "{r:?}"
    );
    assert!(alive(original), "the original is kept (frozen) while the answer is unknown");
    let Pair { net, a, b, ca, cb: _ } = p;
    let b = net.restart_agent(1, b, &[FI]);
    let mut cb = b.client().await;
    let end = resolved(&ca, &mid).await;
    assert_eq!(end.outcome, pb::Outcome::Completed as i32, "{end:?}");
    wait_until("the original to be gone", T, || async { (!alive(original)).then_some(()) }).await;
    let mut ca = ca;
    gone_from(&mut ca, &id, "the original to be forgotten").await;
    runs_again_on_the_source(&mut cb, &id).await;
    let dirs = [a.data_dir.as_path(), b.data_dir.as_path()];
    scratch_gone(dirs, &mid).await;
    cb.pause_process(pb::WorkloadRef { id: id.clone() }).await.expect("pause after recovery");
    cb.resume_process(pb::WorkloadRef { id: id.clone() }).await.expect("resume after recovery");
}

#[tokio::test]
async fn target_agent_killed_after_recording_the_commit_runs_the_copy_once_restarted() {
    if require_root("target_agent_killed_after_recording_the_commit_runs_the_copy_once_restarted") {
        target_crash_at_commit("recorded").await;
    }
}

#[tokio::test]
async fn target_agent_killed_after_resuming_before_answering_keeps_the_copy_alone() {
    if require_root("target_agent_killed_after_resuming_before_answering_keeps_the_copy_alone") {
        target_crash_at_commit("resumed").await;
    }
}

/// The source agent SIGKILLed mid-checkpoint, while the memory pages stream to the target (CRIU
/// dumping, its page stream cut with the agent): restarted, it resumes the original, intact.
#[tokio::test]
async fn source_agent_killed_mid_checkpoint_resumes_the_original_intact() {
    if !require_root("source_agent_killed_mid_checkpoint_resumes_the_original_intact") {
        return;
    }
    let p = pair(&[FI]).await;
    let mut ca = p.ca.clone();
    let (_, id) = ticking_memhog(&mut ca, "256").await;
    let mid = format!("m-mid-dump-{}", std::process::id());
    let running =
        migrate_in_background(&p, &id, &mid, pb::Mode::StopAndCopy, pb::Fault::SlowTransfer, 20);
    wait_until("the dump to stream pages", T, || {
        let (mut c, mid) = (p.ca.clone(), mid.clone());
        async move {
            let r = c.get_migration(pb::MigrationRef { migration_id: mid }).await.ok()?;
            let r = r.into_inner();
            (r.current_phase == "checkpoint" && r.bytes_raw > 16 << 20).then_some(())
        }
    })
    .await;
    let Pair { net, a, b: _b, ca: _, mut cb } = p;
    let a = net.restart_agent(0, a, &[FI]);
    assert!(running.await.unwrap().is_err(), "the killed agent never answered");
    let mut ca = a.client().await;
    let r = resolved(&ca, &mid).await;
    assert_eq!(r.outcome, pb::Outcome::RolledBack as i32, "{r:?}");
    runs_again_on_the_source(&mut ca, &id).await;
    gone_from(&mut cb, &id, "no copy on the target").await;
}

/// The target agent SIGKILLed while it holds its restored copy for the commit, and restarted:
/// it discards the copy (its memory was filled by the dead agent's daemon), tells the source so
/// when the commit comes, and the workload resumes on the source.
#[tokio::test]
async fn target_agent_restarted_while_holding_its_copy_gives_the_workload_back() {
    if !require_root("target_agent_restarted_while_holding_its_copy_gives_the_workload_back") {
        return;
    }
    let Pair { net, a: _a, b, mut ca, cb } = pair(&[FI]).await;
    let (_, id) = ticking_memhog(&mut ca, "256").await;
    let mid = format!("m-tgt-held-{}", std::process::id());
    let mut c = ca.clone();
    let (id2, target, mid2) = (id.clone(), b.addr.clone(), mid.clone());
    let running = tokio::spawn(async move {
        let req = pb::MigrateOutRequest {
            workload_id: id2,
            target_address: target,
            migration_id: mid2,
            fault: pb::Fault::HoldBeforeCommit as i32,
            fault_arg: 8000,
            ..Default::default()
        };
        c.migrate_out(req).await.map(|r| r.into_inner())
    });
    wait_until("the target to hold its copy", T, || {
        let (mut cb, id) = (cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (!s.held_for_migration.is_empty()).then_some(())
        }
    })
    .await;
    // The source has the target's answer (restored, held) and waits before its commit.
    wait_until("the source to reach its commit", T, || {
        let (mut c, mid) = (ca.clone(), mid.clone());
        async move {
            let r = c.get_migration(pb::MigrationRef { migration_id: mid }).await.ok()?;
            (r.into_inner().current_phase == "commit").then_some(())
        }
    })
    .await;
    let b = net.restart_agent(1, b, &[]);
    let mut cb = b.client().await;
    assert!(!holds(&mut cb, &id).await, "the restarted target discarded the held copy");
    let r = running.await.unwrap().expect("the source answered");
    rolled_back(&r, "commit", "did not resume workload");
    runs_again_on_the_source(&mut ca, &id).await;
    assert!(!holds(&mut cb, &id).await, "no copy on the target");
}

/// A workload re-adopted by a restarted agent (which lives in a new mount namespace) migrates
/// like any other: CRIU dumps it from the mount namespace it lives in.
#[tokio::test]
async fn a_workload_re_adopted_after_an_agent_restart_migrates() {
    if !require_root("a_workload_re_adopted_after_an_agent_restart_migrates") {
        return;
    }
    let Pair { net, a, b, mut ca, mut cb } = pair(&[]).await;
    let (s, id) = ticking_memhog(&mut ca, "64").await;
    let a = net.restart_agent(0, a, &[]);
    let mut ca = a.client().await;
    assert_eq!(status(&mut ca, &id).await.pid, s.pid, "re-adopted");
    let r = migrate(&mut ca, &id, &b.addr).await;
    completed(&r);
    assert!(ask(&mut cb, &id, "verify ").await.starts_with("verify ok pages=16384"));
    let _ = a;
}

/// A task the workload stopped itself stays stopped across a pause and resume and across a
/// migration (the commit used to SIGCONT every task), while the rest runs on.
#[tokio::test]
async fn a_task_the_workload_stopped_itself_stays_stopped() {
    if !require_root("a_task_the_workload_stopped_itself_stays_stopped") {
        return;
    }
    let mut p = pair(&[]).await;
    let script =
        "sleep 600 & kill -STOP $!; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done";
    let s = start(&mut p.ca, spec(&["/bin/sh", "-c", script])).await;
    let id = id_of(&s);
    wait_log(&p.ca, &id, "ticking", T, |l| numbers(l, "tick ").len() >= 3).await;
    // The shell's first child (pid 3 in the workload's namespace), stopped by the shell before or
    // after it became `sleep 600`.
    let stopped_sleep = |s: &pb::ProcessStatus| {
        let long: Vec<&pb::TaskInfo> = s.tasks.iter().filter(|t| t.ns_pid == 3).collect();
        assert_eq!(long.len(), 1, "the shell's first child is ns pid 3: {:?}", s.tasks);
        long[0].state == "T"
    };
    assert!(stopped_sleep(&status(&mut p.ca, &id).await));
    let r = pb::WorkloadRef { id: id.clone() };
    p.ca.pause_process(r.clone()).await.expect("pause");
    p.ca.resume_process(r).await.expect("resume");
    let s = status(&mut p.ca, &id).await;
    assert!(stopped_sleep(&s), "still stopped after pause and resume: {:?}", s.tasks);
    let before = numbers(
        &logs(&mut p.ca, &id).await.into_iter().map(|l| l.text).collect::<Vec<_>>(),
        "tick ",
    )
    .len();
    wait_log(&p.ca, &id, "ticking after resume", T, |l| numbers(l, "tick ").len() > before + 2)
        .await;
    completed(&migrate(&mut p.ca, &id, &p.b.addr).await);
    let lines = wait_log(&p.cb, &id, "ticking on the target", T, |l| {
        numbers(l, "tick ").len() > before + 5
    })
    .await;
    assert_consecutive(&numbers(&lines, "tick "), "tick");
    let s = status(&mut p.cb, &id).await;
    assert!(stopped_sleep(&s), "still stopped after the migration: {:?}", s.tasks);
}

/// Post-copy, the source agent SIGKILLed once the target confirmed its resume: the target runs
/// the workload, but the pages still on the source went with the agent's page server. Restarted,
/// the source never resumes the original; the workload is lost, said so on both sides, and runs
/// nowhere (or, had every page already arrived, runs on the target alone).
#[tokio::test]
async fn post_copy_source_agent_killed_after_the_resume_loses_the_workload_and_says_so() {
    if !require_root(
        "post_copy_source_agent_killed_after_the_resume_loses_the_workload_and_says_so",
    ) {
        return;
    }
    let Pair { net, a, b, mut ca, cb } = pair(&[FI]).await;
    let (s, id) = ticking_memhog(&mut ca, "256").await;
    let original = s.pid;
    let mid = format!("m-pc-crash4-{}", std::process::id());
    let p = Pair { net, a, b, ca, cb };
    let r = migrate_in_background(&p, &id, &mid, pb::Mode::PostCopy, pb::Fault::CrashAt, 4);
    assert!(r.await.unwrap().is_err(), "the source agent died mid-migration");
    let Pair { net, a, b: _b, ca: _, mut cb } = p;
    let a = net.restart_agent(0, a, &[FI]);
    let ca = a.client().await;
    let r = resolved(&ca, &mid).await;
    eprintln!("post-copy crash after the resume: outcome={} error={:?}", r.outcome, r.error);
    wait_until("the original to be gone", T, || async { (!alive(original)).then_some(()) }).await;
    if r.outcome == pb::Outcome::Completed as i32 {
        runs_again_on_the_source(&mut cb, &id).await;
        return;
    }
    assert_eq!(r.outcome, pb::Outcome::Failed as i32, "{r:?}");
    assert!(r.error.contains("is lost") && r.error.contains("never resumed"), "{:?}", r.error);
    let lost = wait_until("the target to mark the workload lost", T, || {
        let (mut cb, id) = (cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (s.state == pb::ProcessState::Exited as i32).then_some(s)
        }
    })
    .await;
    assert!(!lost.lost_reason.is_empty(), "{lost:?}");
}

/// Every operation on the source is refused at each phase of a migration the target holds
/// for its commit, and on a post-copy source while the memory still flows.
#[tokio::test]
async fn operations_on_the_source_are_refused_until_the_commit_and_during_post_copy() {
    if !require_root("operations_on_the_source_are_refused_until_the_commit_and_during_post_copy") {
        return;
    }
    let mut p = pair_with(&[FI], &[FI]).await;
    let (_, id) = ticking_memhog(&mut p.ca, "256").await;
    let refuse_all = |c: Client, id: String, phase: &'static str| async move {
        let mut c = c;
        let r = pb::WorkloadRef { id: id.clone() };
        for (op, res) in [
            ("pause", c.pause_process(r.clone()).await.map(|_| ())),
            ("resume", c.resume_process(r.clone()).await.map(|_| ())),
            (
                "stop",
                c.stop_process(pb::StopProcessRequest { id: id.clone(), ..Default::default() })
                    .await
                    .map(|_| ()),
            ),
        ] {
            let err = res.expect_err(&format!("{op} during {phase}"));
            refused_for_migration(&err, op, "migrating");
        }
    };
    let mid = format!("m-ops-held-{}", std::process::id());
    let running = migrate_in_background(
        &p,
        &id,
        &mid,
        pb::Mode::StopAndCopy,
        pb::Fault::HoldBeforeCommit,
        4000,
    );
    wait_until("the target to hold its copy", T, || {
        let (mut cb, id) = (p.cb.clone(), id.clone());
        async move {
            let s = cb.get_status(pb::WorkloadRef { id }).await.ok()?.into_inner();
            (!s.held_for_migration.is_empty()).then_some(())
        }
    })
    .await;
    refuse_all(p.ca.clone(), id.clone(), "the held commit").await;
    completed(&running.await.unwrap().expect("answered"));
    // Back to A in post-copy, the page server stalled: the source serves pages, refuses the rest.
    let mid = format!("m-ops-pc-{}", std::process::id());
    let back =
        post_copy_in_background(&p.cb, &id, &p.a.addr, &mid, pb::Fault::StallPageServer, 3000);
    in_post_copy_with_pages_missing(&p.cb, &mid).await;
    refuse_all(p.cb.clone(), id.clone(), "post-copy").await;
    let r = back.await.unwrap().expect("answered");
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{r:?}");
    runs_again_on_the_source(&mut p.ca, &id).await;
}

/// Runs `sh -c script` as a workload on `c`'s node and returns its output once it has exited.
async fn run_there(c: &mut Client, script: &str) -> Vec<String> {
    let id = id_of(&start(c, spec(&["sh", "-c", script])).await);
    let s = wait_exited(c, &id, T).await;
    let lines: Vec<String> = logs(c, &id).await.into_iter().map(|l| l.text).collect();
    eprintln!("`{script}` on the node ({:?}): {lines:#?}", s.exit);
    lines
}

/// The counts a tmux pane appended to `count.txt` in workload `id`'s working directory on `agent`.
fn pane_counts(agent: &AgentProc, id: &str) -> Vec<u64> {
    let f = agent.data_dir.join("workloads").join(id).join("work/count.txt");
    std::fs::read_to_string(f)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A tmux server (its pane a shell counting into a file, on a pseudo-terminal of the workload's
/// own devpts) moves, and on the target the pane counts on and the server answers its socket.
/// Without a devpts of the workload's own, the pty came from the machine's devpts, which both
/// test hosts share, and the restore failed: the source's frozen original still held the pty
/// number CRIU must recreate ("Unable to open dev/ptmx with specified index 0"). The CRIU logs
/// are kept and their error printed when the migration fails.
async fn tmux_moves(mode: pb::Mode) {
    let mut p = pair_with(&["--keep-scratch"], &["--keep-scratch"]).await;
    let sock = format!("{}/workloads/ID/work/tmux.sock", harness::net::DATA_MOUNT);
    let loop_ = "i=0; while :; do i=$((i+1)); echo $i >> count.txt; sleep 0.1; done";
    let mut sp =
        spec(&["sh", "-c", &format!("exec tmux -S \"$PWD/tmux.sock\" new-session -d '{loop_}'")]);
    sp.env.insert("TERM".into(), "xterm".into());
    let id = id_of(&start(&mut p.ca, sp).await);
    let sock = sock.replace("ID", &id);
    wait_until("the pane counting on the source", T, || {
        let n = pane_counts(&p.a, &id).len();
        async move { (n >= 5).then_some(()) }
    })
    .await;
    let r = match mode {
        pb::Mode::PostCopy => post_copy(&mut p.ca, &id, &p.b.addr).await,
        _ => migrate(&mut p.ca, &id, &p.b.addr).await,
    };
    if r.outcome != pb::Outcome::Completed as i32 {
        for log in [
            p.a.data_dir.join("migrations").join(&r.migration_id).join("criu/dump.log"),
            p.b.data_dir.join("migrations").join(&r.migration_id).join("criu/restore.log"),
        ] {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.contains("Error (") && !l.contains("rlimit"))
                .unwrap_or(lines.len());
            eprintln!(
                "CRIU LOG {log:?}:\n{}",
                lines[at.saturating_sub(25)..(at + 5).min(lines.len())].join("\n")
            );
        }
    }
    completed(&r);
    let before = pane_counts(&p.b, &id).len();
    let counts = wait_until("the pane counting on the target", T, || {
        let c = pane_counts(&p.b, &id);
        async move { (c.len() >= before + 10).then_some(c) }
    })
    .await;
    assert_consecutive(&counts, "the pane's count");
    let ls = run_there(&mut p.cb, &format!("tmux -S {sock} ls")).await;
    assert!(ls.iter().any(|l| l.starts_with("0:") && l.contains("1 windows")), "tmux ls: {ls:?}");
    let pane = run_there(
        &mut p.cb,
        &format!("tmux -S {sock} display -p '#{{pane_tty}} #{{pane_current_command}}'"),
    )
    .await;
    assert!(pane.iter().any(|l| l.starts_with("/dev/pts/")), "the pane's tty: {pane:?}");
    // The server stops when asked on the target, and the workload ends with it.
    run_there(&mut p.cb, &format!("tmux -S {sock} kill-server")).await;
    wait_exited(&mut p.cb, &id, T).await;
}

#[tokio::test]
async fn tmux_server_moves_and_its_pane_counts_on() {
    if !require_root("tmux_server_moves_and_its_pane_counts_on") {
        return;
    }
    tmux_moves(pb::Mode::StopAndCopy).await;
}

#[tokio::test]
async fn tmux_server_moves_in_post_copy() {
    if !require_root("tmux_server_moves_in_post_copy") {
        return;
    }
    tmux_moves(pb::Mode::PostCopy).await;
}
