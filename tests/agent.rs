//! Scenarios for the node agent on real processes: a real `ferry agent`, real workloads in PID
//! namespaces, state checked against /proc.

mod harness;

use std::time::Duration;

use ferry_proto::agent as pb;
use harness::*;
use tonic::Code;

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn daemon_stays_tracked_and_is_reaped() {
    if !require_root("daemon_stays_tracked_and_is_reaped") {
        return;
    }
    let agent = AgentProc::start("daemon");
    let mut c = agent.client().await;
    // The first process forks a child into its own session and exits at once: a daemon.
    let s = start(&mut c, spec(&["sh", "-c", "setsid sleep 300 & exit 0"])).await;
    let id = id_of(&s);
    assert!(s.own_pid_namespace, "as root each workload gets its own PID namespace");
    let init_pid = s.pid;

    let s = wait_until("the main process to exit, leaving the daemon", T, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let s = status(&mut c, &id).await;
            // The daemon is `setsid` until it has exec'd `sleep` (a moment, under load longer).
            let daemon = s.tasks.iter().any(|t| !t.init && t.comm == "sleep");
            (s.main_pid == 0 && s.task_count == 1 && daemon).then_some(s)
        }
    })
    .await;
    assert!(!is_exited(&s), "the workload is still alive through its daemon: {s:?}");
    let init = s.tasks.iter().find(|t| t.init).expect("ferry-init listed");
    assert_eq!(init.ns_pid, 1, "ferry-init is PID 1 of the namespace");
    let daemon = s.tasks.iter().find(|t| !t.init).expect("daemon listed");
    assert_eq!(daemon.comm, "sleep");
    assert_eq!(daemon.ppid, init_pid, "the daemon was re-parented to the workload's init");
    assert!(daemon.ns_pid > 1);
    assert_eq!(stat(daemon.pid).map(|s| s.comm), Some("sleep".to_string()));

    // When the daemon ends, the workload ends, and nothing is left behind, not even a zombie.
    kill(daemon.pid, 15);
    let s = wait_exited(&mut c, &id, T).await;
    let exit = s.exit.expect("exit info");
    assert_eq!(exit.signal, Some(15), "reported as ended by SIGTERM: {exit:?}");
    wait_until("daemon and init to be reaped", T, || async {
        (stat(daemon.pid).is_none() && stat(init_pid).is_none()).then_some(())
    })
    .await;
    let zombies: Vec<_> = all_stats()
        .into_values()
        .filter(|s| s.state == 'Z' && (s.ppid == agent.pid() || s.ppid == init_pid))
        .collect();
    assert!(zombies.is_empty(), "zombies left behind: {zombies:?}");
}

/// A parent waiting in vfork (state D) for a child stopped before its exec — the instant dash
/// and posix_spawn pass through for every command — still pauses: the tree counts as stopped,
/// and resume lets the child exec and the parent go on.
#[tokio::test]
async fn a_vfork_parent_waiting_for_its_stopped_child_pauses_and_resumes() {
    if !require_root("a_vfork_parent_waiting_for_its_stopped_child_pauses_and_resumes") {
        return;
    }
    let agent = AgentProc::start("vfork");
    let mut c = agent.client().await;
    let s = start(&mut c, spec(&[&workload("vforker")])).await;
    let id = id_of(&s);
    wait_until("the parent in D, its child stopped", T, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let s = status(&mut c, &id).await;
            let states: Vec<&str> =
                s.tasks.iter().filter(|t| !t.init).map(|t| t.state.as_str()).collect();
            (states.len() == 2 && states.contains(&"D") && states.contains(&"T")).then_some(())
        }
    })
    .await;
    let started = std::time::Instant::now();
    let paused =
        c.pause_process(pb::WorkloadRef { id: id.clone() }).await.expect("pause").into_inner();
    assert_eq!(paused.state, pb::ProcessState::Stopped as i32, "{paused:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "pause waited {:?}", started.elapsed());
    let resumed =
        c.resume_process(pb::WorkloadRef { id: id.clone() }).await.expect("resume").into_inner();
    assert_ne!(resumed.state, pb::ProcessState::Stopped as i32, "{resumed:?}");
    // The child had stopped itself before the pause: the resume leaves it stopped (and its
    // parent waiting); it goes on when continued as it would have been without the pause.
    let child = resumed.tasks.iter().find(|t| !t.init && t.state == "T").unwrap_or_else(|| {
        panic!("the child stopped itself and stays stopped after the resume: {resumed:?}")
    });
    kill(child.pid, libc::SIGCONT);
    wait_log(&c, &id, "the child's exec and the parent going on", T, |l| {
        l.iter().any(|x| x == "child done 0")
    })
    .await;
}

#[tokio::test]
async fn pause_freezes_the_whole_tree_and_resume_thaws_it() {
    if !require_root("pause_freezes_the_whole_tree_and_resume_thaws_it") {
        return;
    }
    let agent = AgentProc::start("pause");
    let mut c = agent.client().await;
    // A parent and a child both burning CPU.
    let s = start(&mut c, spec(&["sh", "-c", "while :; do :; done & while :; do :; done"])).await;
    let id = id_of(&s);
    let s = wait_until("two busy processes", T, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let s = status(&mut c, &id).await;
            (s.task_count == 2).then_some(s)
        }
    })
    .await;
    let pids: Vec<i32> = s.tasks.iter().map(|t| t.pid).collect();
    assert_eq!(pids.len(), 3, "init, parent and child: {s:?}");
    let ticks =
        |pids: &[i32]| -> u64 { pids.iter().filter_map(|p| stat(*p)).map(|s| s.cpu_ticks).sum() };

    let paused =
        c.pause_process(pb::WorkloadRef { id: id.clone() }).await.expect("pause").into_inner();
    assert_eq!(paused.state, pb::ProcessState::Stopped as i32);
    for t in &paused.tasks {
        assert_eq!(t.state, "T", "task {} ({}) reported stopped", t.pid, t.comm);
    }
    for p in &pids {
        assert_eq!(stat(*p).map(|s| s.state), Some('T'), "pid {p} is in state T in /proc");
    }
    let before = ticks(&pids);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ticks(&pids), before, "CPU time must not advance while paused");

    let resumed =
        c.resume_process(pb::WorkloadRef { id: id.clone() }).await.expect("resume").into_inner();
    assert_ne!(resumed.state, pb::ProcessState::Stopped as i32);
    let after = ticks(&pids);
    wait_until("CPU time to advance after resume", T, || async {
        (ticks(&pids) > after + 5).then_some(())
    })
    .await;
    for p in &pids {
        assert_ne!(stat(*p).map(|s| s.state), Some('T'), "pid {p} runs again");
    }

    // Stop: SIGTERM ends both shells; the status says so.
    let stopped = c
        .stop_process(pb::StopProcessRequest { id: id.clone(), grace_ms: 5000 })
        .await
        .expect("stop")
        .into_inner();
    assert!(is_exited(&stopped));
    assert_eq!(stopped.exit.and_then(|e| e.signal), Some(15));
}

#[tokio::test]
async fn stop_reports_exit_code_and_kills_after_grace() {
    if !require_root("stop_reports_exit_code_and_kills_after_grace") {
        return;
    }
    let agent = AgentProc::start("stop");
    let mut c = agent.client().await;

    // A program that handles SIGTERM by exiting with code 3.
    let polite = start(
        &mut c,
        spec(&["sh", "-c", "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done"]),
    )
    .await;
    let id = id_of(&polite);
    wait_until("polite workload ready", T, || {
        let mut c = c.clone();
        let id = id.clone();
        async move { logs(&mut c, &id).await.iter().any(|l| l.text == "ready").then_some(()) }
    })
    .await;
    let s = c
        .stop_process(pb::StopProcessRequest { id: id.clone(), grace_ms: 5000 })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(s.exit.map(|e| (e.code, e.signal)), Some((Some(3), None)));

    // A program that ignores SIGTERM is killed once the grace period is over.
    let stubborn =
        start(&mut c, spec(&["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])).await;
    let id = id_of(&stubborn);
    let t0 = std::time::Instant::now();
    let s = c
        .stop_process(pb::StopProcessRequest { id: id.clone(), grace_ms: 300 })
        .await
        .expect("stop")
        .into_inner();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.exit.and_then(|e| e.signal), Some(9), "SIGKILLed after the grace period");

    // Stopping again is harmless and reports the same end.
    let again = c
        .stop_process(pb::StopProcessRequest { id, grace_ms: 0 })
        .await
        .expect("stop again")
        .into_inner();
    assert_eq!(again.exit.and_then(|e| e.signal), Some(9));
}

#[tokio::test]
async fn output_env_and_cwd() {
    if !require_root("output_env_and_cwd") {
        return;
    }
    let agent = AgentProc::start("output");
    let mut c = agent.client().await;
    let dir = TempDir::new("ferry-test-cwd");
    let mut sp = spec(&[
        "sh",
        "-c",
        "pwd; echo \"greeting=$GREETING\"; echo oops >&2; printf 'no newline'; exit 7",
    ]);
    sp.env.insert("GREETING".into(), "hello".into());
    sp.cwd = dir.path().to_string_lossy().into_owned();
    let s = start(&mut c, sp).await;
    let id = id_of(&s);
    let s = wait_exited(&mut c, &id, T).await;
    assert_eq!(s.exit.and_then(|e| e.code), Some(7));

    // The pipes close with the process; give the agent a moment to drain them.
    let lines = wait_until("all four lines in the log", T, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let l = logs(&mut c, &id).await;
            (l.len() >= 4).then_some(l)
        }
    })
    .await;
    let text = |stream: pb::LogStream| -> Vec<String> {
        lines.iter().filter(|l| l.stream == stream as i32).map(|l| l.text.clone()).collect()
    };
    let out = text(pb::LogStream::Stdout);
    assert_eq!(
        out,
        vec![
            dir.path().to_string_lossy().into_owned(),
            "greeting=hello".into(),
            "no newline".into()
        ]
    );
    assert_eq!(text(pb::LogStream::Stderr), vec!["oops".to_string()]);

    // Paging from a given line.
    let page = c
        .get_logs(pb::GetLogsRequest { id: id.clone(), from_line: 2, max_lines: 1 })
        .await
        .expect("logs page")
        .into_inner();
    assert_eq!(page.lines.len(), 1);
    assert_eq!(page.lines[0].line, 2);
    assert_eq!(page.next_line, 3);

    // The default working directory is the workload's own directory under the data dir.
    let s = start(&mut c, spec(&["pwd"])).await;
    let id = id_of(&s);
    wait_exited(&mut c, &id, T).await;
    let l = wait_until("pwd output", T, || {
        let mut c = c.clone();
        let id = id.clone();
        async move { logs(&mut c, &id).await.first().map(|l| l.text.clone()) }
    })
    .await;
    assert_eq!(l, agent.data_dir.join("workloads").join(&id).join("work").to_string_lossy());
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let agent = AgentProc::start("errors");
    let mut c = agent.client().await;

    let err = c
        .start_process(pb::StartProcessRequest { spec: Some(spec(&[])) })
        .await
        .expect_err("empty argv");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("argv is empty"), "{}", err.message());

    let err = c
        .start_process(pb::StartProcessRequest { spec: Some(spec(&["no-such-program-ferry"])) })
        .await
        .expect_err("missing program");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("\"no-such-program-ferry\" not found in PATH"),
        "{}",
        err.message()
    );

    let err = c
        .start_process(pb::StartProcessRequest { spec: Some(spec(&["/no/such/binary"])) })
        .await
        .expect_err("missing absolute program");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("/no/such/binary"), "{}", err.message());

    let mut sp = spec(&["true"]);
    sp.cwd = "/no/such/dir".into();
    let err =
        c.start_process(pb::StartProcessRequest { spec: Some(sp) }).await.expect_err("missing cwd");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("/no/such/dir"), "{}", err.message());

    let err = c.start_process(pb::StartProcessRequest { spec: None }).await.expect_err("no spec");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nothing was left on disk by the refused requests.
    let left: Vec<_> = std::fs::read_dir(agent.data_dir.join("workloads")).unwrap().collect();
    assert!(left.is_empty(), "refused starts left directories: {left:?}");

    for (what, err) in [
        ("status", c.get_status(pb::WorkloadRef { id: "w-nope".into() }).await.map(|_| ())),
        ("pause", c.pause_process(pb::WorkloadRef { id: "w-nope".into() }).await.map(|_| ())),
        ("resume", c.resume_process(pb::WorkloadRef { id: "w-nope".into() }).await.map(|_| ())),
        (
            "stop",
            c.stop_process(pb::StopProcessRequest { id: "w-nope".into(), grace_ms: 0 })
                .await
                .map(|_| ()),
        ),
        (
            "logs",
            c.get_logs(pb::GetLogsRequest { id: "w-nope".into(), ..Default::default() })
                .await
                .map(|_| ()),
        ),
    ] {
        let err = err.expect_err(what);
        assert_eq!(err.code(), Code::NotFound, "{what}: {err:?}");
        assert!(err.message().contains("w-nope"), "{what}: {}", err.message());
    }

    // Pausing a workload that has exited.
    let s = start(&mut c, spec(&["true"])).await;
    let id = id_of(&s);
    wait_exited(&mut c, &id, T).await;
    let err = c.pause_process(pb::WorkloadRef { id: id.clone() }).await.expect_err("pause exited");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("exited (exited with code 0)"), "{}", err.message());
    assert!(err.message().contains("cannot pause"), "{}", err.message());
}

#[tokio::test]
async fn health_reports_host_and_a_working_criu() {
    let agent = AgentProc::start("health");
    let mut c = agent.client().await;
    let h = c.health_check(pb::HealthCheckRequest {}).await.expect("health").into_inner();
    assert_eq!(h.node, "health");
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(h.kernel, uname.trim());
    assert!(!h.cpu_flags.is_empty() && !h.cpu_model.is_empty(), "{h:?}");
    assert!(h.cores >= 1);
    assert!(h.memory_total_bytes > 0 && h.memory_available_bytes <= h.memory_total_bytes);
    assert!(h.data_dir_free_bytes > 0);
    let criu = h.criu.expect("criu info");
    let mut parts = criu.version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (4, 2),
        "CRIU >= 4.2 expected after scripts/setup.sh, found {:?} at {:?} ({})",
        criu.version,
        criu.path,
        criu.check_error
    );
    assert!(criu.check_passed, "criu check failed: {}", criu.check_error);

    let s = start(&mut c, spec(&["sleep", "30"])).await;
    let h = c.health_check(pb::HealthCheckRequest {}).await.expect("health").into_inner();
    assert_eq!(h.workload_count, 1);
    let listed =
        c.list_processes(pb::ListProcessesRequest {}).await.expect("list").into_inner().processes;
    assert_eq!(listed.len(), 1);
    assert_eq!(id_of(&listed[0]), id_of(&s));
}

/// Starts `n` `/bin/true` workloads, `batch` at a time, and waits until each has exited. Every
/// other one uses the cooperative engine (a control socket and its listening thread).
async fn run_short_workloads(c: &Client, n: usize, batch: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let mut c = c.clone();
                let mut sp = spec(&["/bin/true"]);
                if i % 2 == 0 {
                    sp.engine = pb::Engine::Cooperative as i32;
                }
                tokio::spawn(async move {
                    let id = id_of(&start(&mut c, sp).await);
                    wait_exited(&mut c, &id, Duration::from_secs(60)).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a short workload");
        }
    }
}

/// The agent's open descriptors once they settle (a workload's output is drained, its helpers
/// end, moments after its exit is recorded): the least seen over a second.
async fn settled_fds(pid: i32) -> usize {
    let mut least = usize::MAX;
    for _ in 0..10 {
        least = least.min(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    least
}

/// The agent's fd store process (`ferry fd-store`, a child of the agent).
fn fd_store_of(agent: i32) -> i32 {
    descendants(agent)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"fd-store"))
        })
        .expect("the agent's fd store")
}

/// Every per-workload descriptor (output log, capture pipes, control socket, fd store entries)
/// goes when its workload ends: 500 short workloads leave the agent's and its fd store's
/// descriptors, and the agent's memory, where 50 did, and a log stays readable after its
/// workload ended.
#[tokio::test]
async fn descriptors_and_memory_stay_flat_over_500_workloads() {
    require_root("descriptors_and_memory_stay_flat_over_500_workloads");
    let agent = AgentProc::start("fdleak");
    let c = agent.client().await;
    let pid = agent.pid();
    run_short_workloads(&c, 50, 10).await;
    let store = fd_store_of(pid);
    let (fds_50, rss_50, store_50) =
        (settled_fds(pid).await, rss_bytes(pid), settled_fds(store).await);
    run_short_workloads(&c, 450, 10).await;
    let (fds_500, rss_500, store_500) =
        (settled_fds(pid).await, rss_bytes(pid), settled_fds(store).await);
    assert!(
        store_500 <= store_50 + 2,
        "the fd store holds {store_500} descriptors after 500 workloads, {store_50} after 50"
    );
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "fds after 50: {fds_50}, after 500: {fds_500} (fd store: {store_50}, {store_500}); RSS \
         after 50: {} KiB, after 500: {} KiB",
        rss_50 / 1024,
        rss_500 / 1024
    );
    assert!(
        fds_500 <= fds_50 + 5,
        "the agent holds {fds_500} descriptors after 500 workloads, {fds_50} after 50: {held:?}"
    );
    assert!(
        rss_500 < rss_50 + (16 << 20),
        "the agent's RSS grew from {} KiB to {} KiB over 450 workloads",
        rss_50 / 1024,
        rss_500 / 1024
    );

    // Output of ended workloads is still there: their logs are reopened for reads.
    let mut c = c.clone();
    let s = start(&mut c, spec(&["sh", "-c", "echo one; echo two >&2"])).await;
    let id = id_of(&s);
    wait_exited(&mut c, &id, T).await;
    let mut lines = wait_log(&c, &id, "both lines", T, |l| l.len() >= 2).await;
    lines.sort(); // two pipes: either may be read first
    assert_eq!(lines, ["one", "two"]);
    let fds = settled_fds(pid).await;
    assert!(fds <= fds_500 + 1, "reading an ended workload's log left descriptors: {fds}");
}

/// An ended workload is kept (status, log, directory) for `--keep-ended-secs`, then forgotten
/// with its directory; a running one is never forgotten.
#[tokio::test]
async fn ended_workloads_are_forgotten_once_kept_long_enough() {
    require_root("ended_workloads_are_forgotten_once_kept_long_enough");
    let agent = AgentProc::start_with("forget", &["--keep-ended-secs", "2"]);
    let mut c = agent.client().await;
    let runs = id_of(&start(&mut c, spec(&["sleep", "600"])).await);
    let ended = id_of(&start(&mut c, spec(&["/bin/true"])).await);
    wait_exited(&mut c, &ended, T).await;
    let dir = agent.data_dir.join("workloads").join(&ended);
    assert!(dir.is_dir(), "kept for now: {dir:?}");
    assert!(dir.join("output.log").exists(), "its log is kept for now");
    wait_until("the ended workload to be forgotten", T, || {
        let (mut c, id, dir) = (c.clone(), ended.clone(), dir.clone());
        async move {
            let gone = c
                .get_status(pb::WorkloadRef { id })
                .await
                .is_err_and(|s| s.code() == Code::NotFound);
            (gone && !dir.exists()).then_some(())
        }
    })
    .await;
    let s = status(&mut c, &runs).await;
    assert!(!is_exited(&s), "the running one is kept: {s:?}");
}
