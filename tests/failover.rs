//! Continuous checkpoints and failover (docs/failover.md): real workloads checkpointed on one
//! network-namespace host, their sealed objects replicated to other agents, restored on another
//! host with their memory and files, corrupted objects refused, and fencing.

mod harness;

use std::time::Duration;

use ferry_proto::agent as pb;
use harness::net::Net;
use harness::*;

const T: Duration = Duration::from_secs(60);

/// The "count N" values of an appender's log lines.
fn counts(lines: &[String]) -> Vec<u64> {
    lines.iter().filter_map(|l| l.strip_prefix("count ")?.trim().parse().ok()).collect()
}

async fn last_count(c: &Client, id: &str) -> u64 {
    let lines: Vec<String> = logs(&mut c.clone(), id).await.into_iter().map(|l| l.text).collect();
    counts(&lines).last().copied().unwrap_or(0)
}

fn peer(node: &str, agent: &AgentProc) -> pb::Peer {
    pb::Peer { node: node.into(), address: agent.addr.clone() }
}

/// Sends SIGUSR1 to the workload's main process and waits for `want` in its log.
async fn check_self(c: &Client, id: &str, want: &str, fail: &str) {
    let s = status(&mut c.clone(), id).await;
    kill(s.main_pid, libc::SIGUSR1);
    let lines = wait_log(c, id, &format!("{id} to check itself"), T, |l| {
        l.iter().any(|x| x.starts_with(want) || x.starts_with(fail))
    })
    .await;
    let verdict = lines.iter().rev().find(|x| x.starts_with(want) || x.starts_with(fail));
    assert!(verdict.is_some_and(|v| v.starts_with(want)), "{id}: {verdict:?}");
}

/// A checkpoint of `id` taken now by agent `c`.
async fn checkpoint_now(c: &Client, id: &str) -> pb::CheckpointInfo {
    c.clone()
        .take_checkpoint(pb::WorkloadRef { id: id.to_string() })
        .await
        .unwrap_or_else(|s| panic!("TakeCheckpoint {id}: {s}"))
        .into_inner()
}

/// Agent `c` restores `info` (fetched from `holders`) under restore id `rid`.
async fn restore_on(
    c: &Client,
    info: &pb::CheckpointInfo,
    holders: Vec<pb::Peer>,
    rid: &str,
) -> Result<pb::ProcessStatus, tonic::Status> {
    c.clone()
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            checkpoint: Some(info.clone()),
            holders,
            restore_id: rid.into(),
            reason: "test".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Asserts agent `c` runs nothing (a refused restore left nothing behind).
async fn runs_nothing(c: &Client, what: &str) {
    let l = c.clone().list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    assert!(l.processes.is_empty(), "{what}: {l:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_is_restored_on_another_node_with_its_memory_and_files() {
    if !require_root("a_checkpoint_is_restored_on_another_node_with_its_memory_and_files") {
        return;
    }
    let net = Net::new(3);
    let (a, b, c) = (net.agent(0, &[]), net.agent(1, &[]), net.agent(2, &[]));
    let (ca, cb, cc) = (a.client().await, b.client().await, c.client().await);

    // A journaling counter (memory and a file of its working directory) and 64 MiB of memory
    // rewritten all the time.
    let app = start(&mut ca.clone(), spec(&[&workload("appender.py")])).await;
    let app = id_of(&app);
    let hog = start(&mut ca.clone(), spec(&[&workload("memhog"), "64", "write"])).await;
    let hog = id_of(&hog);
    wait_log(&ca, &app, "the appender to count", T, |l| counts(l).len() >= 5).await;
    wait_log(&ca, &hog, "memhog to tick", T, |l| l.iter().any(|x| x.starts_with("tick "))).await;

    let before = last_count(&ca, &app).await;
    let info = checkpoint_now(&ca, &app).await;
    let after = last_count(&ca, &app).await;
    eprintln!(
        "checkpoint {} of {app}: freeze {} ms, {} bytes stored of {} raw, holders {:?}",
        info.id, info.freeze_ms, info.bytes, info.raw_bytes, info.holders
    );
    assert_eq!(info.holders, ["host0"], "no peers known without a coordinator");
    assert!(info.bytes > 0 && info.raw_bytes > 0 && info.digest.len() == 64, "{info:?}");
    // It ran on after the checkpoint.
    wait_log(&ca, &app, "the appender to count on", T, |l| {
        counts(l).last().is_some_and(|&n| n > after + 2)
    })
    .await;
    let hog_ck = checkpoint_now(&ca, &hog).await;
    eprintln!(
        "checkpoint {} of {hog}: freeze {} ms, {} bytes stored of {} raw",
        hog_ck.id, hog_ck.freeze_ms, hog_ck.bytes, hog_ck.raw_bytes
    );

    // A restore next to the running workload is refused: never a second copy.
    let err = restore_on(&ca, &info, vec![], "r-same")
        .await
        .expect_err("a restore over a running copy must be refused");
    assert!(err.message().contains("never makes a second copy"), "{err}");

    // The node "is lost": its workloads end. Host 1 restores from host 0's copies.
    for id in [&app, &hog] {
        ca.clone()
            .stop_process(pb::StopProcessRequest { id: id.to_string(), grace_ms: 100 })
            .await
            .unwrap();
    }
    for (ck, rid) in [(&info, "r-app"), (&hog_ck, "r-hog")] {
        let s = restore_on(&cb, ck, vec![peer("host0", &a)], rid)
            .await
            .unwrap_or_else(|s| panic!("RestoreCheckpoint {}: {s}", ck.workload_id));
        let live = [pb::ProcessState::Running as i32, pb::ProcessState::Sleeping as i32];
        assert!(live.contains(&s.state) && s.exit.is_none(), "{s:?}");
        assert!(s.held_for_migration.is_empty());
    }
    let lines =
        wait_log(&cb, &app, "the restored appender to count", T, |l| counts(l).len() >= 3).await;
    let first = counts(&lines)[0];
    eprintln!("counted up to {before}..{after} around the checkpoint; restored at {first}");
    assert!(
        (before + 1..=after + 1).contains(&first),
        "the restored counter resumes from the checkpoint: {first} not in {}..={}",
        before + 1,
        after + 1
    );
    // Its journal (a file of its working directory) matches its memory.
    check_self(&cb, &app, "journal ok", "journal FAIL").await;
    check_self(&cb, &hog, "verify ok", "verify FAIL").await;
    // Host 1 kept the copy it fetched: it lists it as a holder would.
    let held = cb
        .clone()
        .list_checkpoints(pb::ListCheckpointsRequest { workload_id: app.clone() })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(held.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [info.id.as_str()]);

    // A corrupted object is refused, naming what is wrong, and nothing is restored: one byte of
    // host 2's fetched copy flipped, host 0's copy gone.
    let obj = harness::net::data_path(&a, &format!("checkpoints/{app}/{}.obj", info.id));
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&obj, &bytes).unwrap();
    let err = restore_on(&cc, &info, vec![peer("host0", &a)], "r-corrupt")
        .await
        .expect_err("a corrupted object must be refused");
    eprintln!("corrupted object: {}", err.message());
    assert!(err.message().contains("blake3") && err.message().contains("no intact copy"), "{err}");
    runs_nothing(&cc, "nothing restored from a corrupted object").await;

    // The same bytes through the decryption (its digest made to match): authentication fails.
    let mut forged = info.clone();
    forged.digest = blake3::hash(&bytes).to_hex().to_string();
    let err = restore_on(&cc, &forged, vec![peer("host0", &a)], "r-forged")
        .await
        .expect_err("an altered object must be refused");
    eprintln!("altered object: {}", err.message());
    assert!(err.message().contains("failed authentication"), "{err}");
    runs_nothing(&cc, "nothing restored from an altered object").await;
    drop((a, b, c, net));
}

/// Three hosts whose agents register with a coordinator that fails protected workloads over
/// after `grace` seconds of silence (their lease is half of it).
struct Cluster {
    net: Net,
    agents: Vec<Option<AgentProc>>,
    coord: Option<AgentProc>,
    data: TempDir,
    gw: String,
    /// The coordinator's gRPC URL, for agents started again.
    url: String,
    /// Where the coordinator listens (gRPC, REST) and its flags, to start it again.
    at: (String, u16, u16, Vec<String>),
}

async fn cluster(tag: &str, grace: u32) -> Cluster {
    use harness::cluster::*;
    let net = Net::new(3);
    let (port, http_port) = (free_port(), free_port());
    let data = TempDir::new(tag);
    let ip = net.bridge_ip();
    let flags = vec!["--failover-grace-secs".to_string(), grace.to_string()];
    let coord = coordinator_with(
        &ip,
        port,
        http_port,
        data.path(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let url = format!("https://{ip}:{port}");
    let agents = (0..3).map(|i| Some(net.agent(i, &["--coordinator", &url]))).collect();
    let url = url.clone();
    wait_nodes(&coord.addr, "three hosts online", |n| {
        ["host0", "host1", "host2"].iter().all(|h| online(n, h) == Some(true))
    })
    .await;
    Cluster {
        net,
        agents,
        coord: Some(coord),
        data,
        gw: format!("{ip}:{http_port}"),
        url,
        at: (ip, port, http_port, flags),
    }
}

impl Cluster {
    fn coord_addr(&self) -> String {
        self.coord.as_ref().expect("coordinator running").addr.clone()
    }

    /// Starts the coordinator again on the same addresses and data.
    fn start_coordinator(&mut self) {
        let (ip, port, http, flags) = &self.at;
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.coord =
            Some(harness::cluster::coordinator_with(ip, *port, *http, self.data.path(), &flags));
    }

    async fn client(&self, i: usize) -> Client {
        self.agents[i].as_ref().expect("agent running").client().await
    }
}

/// Starts `argv` on `node` through the REST API, protected every `every` seconds (0: not).
async fn run_on(gw: &str, node: &str, argv: &[&str], every: u32) -> String {
    let mut body = serde_json::json!({"name": "w", "command": argv, "serverId": node});
    if every > 0 {
        body["checkpointIntervalSeconds"] = every.into();
    }
    let (code, p) = harness::cluster::call(gw, "POST", "/api/processes", Some(body)).await;
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["checkpointIntervalSeconds"].as_u64(), (every > 0).then_some(every as u64), "{p}");
    p["id"].as_str().unwrap().to_string()
}

async fn process(gw: &str, id: &str) -> serde_json::Value {
    harness::cluster::call(gw, "GET", &format!("/api/processes/{id}"), None).await.1
}

/// Waits for a checkpoint of `id` held off its node (`holders` beyond the node itself).
async fn replicated(gw: &str, id: &str) -> serde_json::Value {
    wait_until(&format!("a replicated checkpoint of {id}"), T, || async move {
        let (_, c) =
            harness::cluster::call(gw, "GET", &format!("/api/processes/{id}/checkpoints"), None)
                .await;
        let newest = c["checkpoints"].as_array()?.first()?.clone();
        (newest["holders"].as_array()?.len() >= 3).then_some(newest)
    })
    .await
}

/// Waits until the API shows process `id` running on a node other than `not_on`.
async fn running_off(gw: &str, id: &str, not_on: &str) -> serde_json::Value {
    wait_until(
        &format!("{id} to run on a node other than {not_on}"),
        Duration::from_secs(90),
        || async move {
            let p = process(gw, id).await;
            (p["status"] == "running" && p["serverId"] != not_on).then_some(p)
        },
    )
    .await
}

/// Numbered lines ("count N", "tick N") of `id` through the gateway.
async fn numbered(gw: &str, id: &str, prefix: &str) -> Vec<u64> {
    let (_, l) =
        harness::cluster::call(gw, "GET", &format!("/api/processes/{id}/logs?limit=10000"), None)
            .await;
    l["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["text"].as_str()?.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

/// Live copies of workload `id` on the agents that answer.
async fn copies(c: &Cluster, id: &str) -> Vec<String> {
    let mut on = Vec::new();
    for (i, a) in c.agents.iter().enumerate() {
        let Some(a) = a else { continue };
        let Ok(Ok(mut client)) =
            tokio::time::timeout(Duration::from_secs(3), a.client_checked()).await
        else {
            continue;
        };
        let Ok(l) = client.list_processes(pb::ListProcessesRequest {}).await else { continue };
        for p in l.into_inner().processes {
            if id_of(&p) == id && p.exit.is_none() && p.held_for_migration.is_empty() {
                on.push(format!("host{i}"));
            }
        }
    }
    on
}

/// SIGUSR1 to a workload's program (its host pid from the API) and its verdict from the log.
async fn verdict(gw: &str, id: &str, ok: &str, fail: &str) -> String {
    let pid = process(gw, id).await["pid"].as_i64().unwrap() as i32;
    kill(pid, libc::SIGUSR1);
    wait_until(&format!("{id} to check itself"), T, || async move {
        let (_, l) = harness::cluster::call(
            gw,
            "GET",
            &format!("/api/processes/{id}/logs?limit=10000"),
            None,
        )
        .await;
        l["lines"]
            .as_array()?
            .iter()
            .rev()
            .filter_map(|x| x["text"].as_str())
            .find(|t| t.starts_with(ok) || t.starts_with(fail))
            .map(str::to_string)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_node_s_protected_workloads_run_elsewhere_from_their_latest_checkpoint() {
    if !require_root("a_lost_node_s_protected_workloads_run_elsewhere_from_their_latest_checkpoint")
    {
        return;
    }
    let grace = 6;
    let mut c = cluster("ferry-failover", grace).await;
    let gw = c.gw.clone();
    let app = run_on(&gw, "host0", &[&workload("appender.py")], 5).await;
    let hog = run_on(&gw, "host0", &[&workload("memhog"), "64", "write"], 5).await;
    let plain = run_on(&gw, "host0", &[&workload("appender.py")], 0).await;
    let (ck_app, ck_hog) = (replicated(&gw, &app).await, replicated(&gw, &hog).await);
    eprintln!("newest checkpoints: {ck_app}\n{ck_hog}");
    // Let it run on past its newest checkpoint: that part is what a failover loses.
    let at_ck = wait_until("the appender to count past its checkpoint", T, || {
        let gw = gw.clone();
        let app = app.clone();
        async move {
            let n = numbered(&gw, &app, "count ").await;
            (n.len() > 3).then(|| *n.last().unwrap())
        }
    })
    .await;
    // The node dies: its agent, its fd store and its workloads, at once.
    let lost_at = std::time::Instant::now();
    let killed = c.net.power_off(0);
    c.agents[0].take().unwrap().crash_leaving_workloads();
    eprintln!("host0 powered off ({killed} processes killed)");
    for id in [&app, &hog] {
        let p = running_off(&gw, id, "host0").await;
        eprintln!(
            "{id} runs on {} {:.1} s after host0 was lost (grace {grace} s)",
            p["serverId"],
            lost_at.elapsed().as_secs_f64()
        );
    }
    // The counter resumed from its newest checkpoint: no later than where it had got to.
    let resumed = wait_until("the restored appender to count", T, || {
        let (gw, app) = (gw.clone(), app.clone());
        async move {
            let n = numbered(&gw, &app, "count ").await;
            (n.len() >= 3).then_some(n)
        }
    })
    .await;
    eprintln!("counted to at least {at_ck} on host0; resumed at {}", resumed[0]);
    assert!(resumed[0] <= at_ck + 1 && resumed.windows(2).all(|w| w[1] == w[0] + 1), "{resumed:?}");
    // Its journal (restored from the checkpoint's copy of its working directory) matches its
    // memory, and so does every byte of the 64 MiB one.
    let v = verdict(&gw, &app, "journal ok", "journal FAIL").await;
    assert!(v.starts_with("journal ok"), "{v}");
    let v = verdict(&gw, &hog, "verify ok", "verify FAIL").await;
    assert!(v.starts_with("verify ok"), "{v}");
    // The unprotected one is not restored: its node is offline, so it is unknown.
    let p = process(&gw, &plain).await;
    assert_eq!(
        (p["serverId"].as_str(), p["status"].as_str()),
        (Some("host0"), Some("unknown")),
        "{p}"
    );
    // Exactly one copy of each, and the failovers are on record.
    for id in [&app, &hog] {
        assert_eq!(copies(&c, id).await.len(), 1, "{id}");
    }
    let (_, ms) = harness::cluster::call(&gw, "GET", "/api/migrations", None).await;
    let failovers: Vec<&serde_json::Value> = ms
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["mode"] == "failover" && m["status"] == "completed")
        .collect();
    assert_eq!(failovers.len(), 2, "{ms}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_node_fences_its_workloads_and_one_copy_runs_after_it_heals() {
    if !require_root("a_partitioned_node_fences_its_workloads_and_one_copy_runs_after_it_heals") {
        return;
    }
    let grace = 6;
    let c = cluster("ferry-partition", grace).await;
    let gw = c.gw.clone();
    let app = run_on(&gw, "host0", &[&workload("appender.py")], 5).await;
    replicated(&gw, &app).await;
    let ca = c.client(0).await;
    // host0's link is cut for longer than the grace: it cannot renew its lease, and the
    // coordinator cannot hear it.
    c.net.set_link(0, false);
    let cut_at = std::time::Instant::now();
    let p = running_off(&gw, &app, "host0").await;
    eprintln!(
        "restored on {} {:.1} s after the cut",
        p["serverId"],
        cut_at.elapsed().as_secs_f64()
    );
    // On host0 (its agent reachable over the host's own namespace path is cut too; ask it after
    // the link is back) the copy was killed by the lease before the restore.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.net.set_link(0, true);
    let s = wait_until("host0's agent to answer again", T, || {
        let (mut ca, app) = (ca.clone(), app.clone());
        async move { ca.get_status(pb::WorkloadRef { id: app }).await.ok() }
    })
    .await
    .into_inner();
    eprintln!("host0's copy: exit {:?}, {}", s.exit, s.lost_reason);
    assert!(s.exit.is_some() && s.lost_reason.starts_with("fenced:"), "{s:?}");
    // Healed: host0 online again, and exactly one copy runs, where the coordinator says.
    harness::cluster::wait_nodes(&c.coord_addr(), "host0 online again", |n| {
        harness::cluster::online(n, "host0") == Some(true)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let on = copies(&c, &app).await;
    let p = process(&gw, &app).await;
    assert_eq!(on, [p["serverId"].as_str().unwrap().to_string()], "{p}");
    assert_eq!(p["status"], "running", "{p}");
    let v = verdict(&gw, &app, "journal ok", "journal FAIL").await;
    assert!(v.starts_with("journal ok"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_agent_s_fd_store_fences_its_workloads_before_the_failover() {
    if !require_root("a_dead_agent_s_fd_store_fences_its_workloads_before_the_failover") {
        return;
    }
    let grace = 6;
    let mut c = cluster("ferry-agent-dies", grace).await;
    let gw = c.gw.clone();
    let app = run_on(&gw, "host0", &[&workload("appender.py")], 5).await;
    let plain = run_on(&gw, "host0", &[&workload("appender.py")], 0).await;
    replicated(&gw, &app).await;
    let pid = process(&gw, &app).await["pid"].as_i64().unwrap() as i32;
    let plain_pid = process(&gw, &plain).await["pid"].as_i64().unwrap() as i32;
    // Only the agent dies; its workloads and its fd store live on, as after an agent crash.
    let old = c.agents[0].take().unwrap();
    let died = std::time::Instant::now();
    kill(old.pid(), libc::SIGKILL);
    // Before the grace ends, the fd store has killed the protected workload (its lease ran out)
    // and left the other one alone.
    wait_until(
        "the fd store to kill the protected workload",
        Duration::from_secs(grace as u64),
        || async move { (stat(pid).is_none_or(|s| s.state == 'Z')).then_some(()) },
    )
    .await;
    eprintln!(
        "protected workload killed {:.1} s after its agent died",
        died.elapsed().as_secs_f64()
    );
    assert!(stat(plain_pid).is_some_and(|s| s.state != 'Z'), "the unprotected workload runs on");
    let p = running_off(&gw, &app, "host0").await;
    eprintln!(
        "restored on {} {:.1} s after the agent died",
        p["serverId"],
        died.elapsed().as_secs_f64()
    );
    // The agent comes back: it does not bring the workload back, and one copy runs.
    c.agents[0] = Some(c.net.restart_agent(0, old, &["--coordinator", &c.url]));
    harness::cluster::wait_nodes(&c.coord_addr(), "host0 online again", |n| {
        harness::cluster::online(n, "host0") == Some(true)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = status(&mut c.client(0).await, &app).await;
    assert!(s.exit.is_some() && s.lost_reason.starts_with("fenced:"), "{s:?}");
    let on = copies(&c, &app).await;
    assert_eq!(on, [p["serverId"].as_str().unwrap().to_string()]);
    let q = process(&gw, &plain).await;
    assert_eq!(
        (q["serverId"].as_str(), q["status"].as_str()),
        (Some("host0"), Some("running")),
        "{q}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_rolls_back_to_a_chosen_checkpoint_through_the_api() {
    if !require_root("a_workload_rolls_back_to_a_chosen_checkpoint_through_the_api") {
        return;
    }
    let c = cluster("ferry-rollback", 6).await;
    let gw = c.gw.clone();
    let app = run_on(&gw, "host1", &[&workload("appender.py")], 3600).await;
    let take = || {
        let (gw, app) = (gw.clone(), app.clone());
        async move {
            let (code, ck) = harness::cluster::call(
                &gw,
                "POST",
                &format!("/api/processes/{app}/checkpoints"),
                None,
            )
            .await;
            assert_eq!(code, 201, "{ck}");
            ck
        }
    };
    wait_until("a few counts", T, || {
        let (gw, app) = (gw.clone(), app.clone());
        async move { (numbered(&gw, &app, "count ").await.len() >= 5).then_some(()) }
    })
    .await;
    let first = take().await;
    let at_first = *numbered(&gw, &app, "count ").await.last().unwrap();
    wait_until("more counts", T, || {
        let (gw, app) = (gw.clone(), app.clone());
        async move {
            (numbered(&gw, &app, "count ").await.last() > Some(&(at_first + 20))).then_some(())
        }
    })
    .await;
    let second = take().await;
    let (_, list) =
        harness::cluster::call(&gw, "GET", &format!("/api/processes/{app}/checkpoints"), None)
            .await;
    let ids: Vec<&str> =
        list["checkpoints"].as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(
        ids,
        [second["id"].as_str().unwrap(), first["id"].as_str().unwrap()],
        "newest first"
    );
    // Bad input first: an unknown checkpoint, an unknown process.
    let (code, e) = harness::cluster::call(
        &gw,
        "POST",
        &format!("/api/processes/{app}/restore"),
        Some(serde_json::json!({"checkpointId": "c-000000000000"})),
    )
    .await;
    assert_eq!(code, 404, "{e}");
    let (code, _) =
        harness::cluster::call(&gw, "POST", "/api/processes/w-000000000000/restore", None).await;
    assert_eq!(code, 404);
    // Back to the first checkpoint, on host2.
    let (code, m) = harness::cluster::call(
        &gw,
        "POST",
        &format!("/api/processes/{app}/restore"),
        Some(serde_json::json!({"checkpointId": first["id"], "serverId": "host2"})),
    )
    .await;
    assert_eq!(code, 202, "{m}");
    assert_eq!(m["mode"], "restore", "{m}");
    let mid = m["id"].as_str().unwrap().to_string();
    let m = wait_until("the restore to end", T, || {
        let (gw, mid) = (gw.clone(), mid.clone());
        async move {
            let (_, m) =
                harness::cluster::call(&gw, "GET", &format!("/api/migrations/{mid}"), None).await;
            matches!(m["status"].as_str(), Some("completed" | "failed")).then_some(m)
        }
    })
    .await;
    assert_eq!(m["status"], "completed", "{m}");
    let p = process(&gw, &app).await;
    assert_eq!(
        (p["serverId"].as_str(), p["status"].as_str()),
        (Some("host2"), Some("running")),
        "{p}"
    );
    // It counts again from the first checkpoint's count; the journal matches its memory.
    let cb = c.client(2).await;
    let lines =
        wait_log(&cb, &app, "the restored appender to count", T, |l| counts(l).len() >= 2).await;
    let resumed = counts(&lines)[0];
    eprintln!("checkpoint at about {at_first}; resumed at {resumed}");
    assert!(resumed <= at_first + 1 && resumed + 10 < at_first + 20, "{resumed} vs {at_first}");
    let v = verdict(&gw, &app, "journal ok", "journal FAIL").await;
    assert!(v.starts_with("journal ok"), "{v}");
    assert_eq!(copies(&c, &app).await, ["host2"]);

    // The CLI: the list, then forward again to the second checkpoint, on host1.
    let (second_id, first_id) = (second["id"].as_str().unwrap(), first["id"].as_str().unwrap());
    let (code, out, err) = harness::cluster::ferry_cli(&gw, &["checkpoints", &app]);
    assert_eq!(code, 0, "{err}");
    let (s_at, f_at) = (out.find(second_id), out.find(first_id));
    assert!(s_at.is_some() && f_at.is_some() && s_at < f_at, "newest first:\n{out}");
    let (code, out, err) = harness::cluster::ferry_cli(
        &gw,
        &["restore", &app, "--checkpoint", second_id, "--node", "host1"],
    );
    eprintln!("ferry restore: {out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    let p = process(&gw, &app).await;
    assert_eq!(
        (p["serverId"].as_str(), p["status"].as_str()),
        (Some("host1"), Some("running")),
        "{p}"
    );
    let cb = c.client(1).await;
    let lines = wait_log(&cb, &app, "the appender to count from the second checkpoint", T, |l| {
        !counts(l).is_empty()
    })
    .await;
    assert!(counts(&lines)[0] > at_first + 10, "{:?} after {at_first}", &counts(&lines)[..1]);
    assert_eq!(copies(&c, &app).await, ["host1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_land_in_a_real_object_store_and_restore_from_it() {
    if !require_root("checkpoints_land_in_a_real_object_store_and_restore_from_it") {
        return;
    }
    let net = Net::new(3);
    let garage = harness::garage::Garage::start_on(&net.bridge_ip()).await;
    let secret = garage.dir().join("secret");
    std::fs::write(&secret, &garage.secret_access_key).unwrap();
    let url = format!(
        "s3://{}/ferry-ck?endpoint={}&region={}&access_key_id={}&secret_access_key_file={}",
        garage.bucket,
        garage.endpoint,
        garage.region,
        garage.access_key_id,
        secret.display()
    );
    let flags = ["--checkpoint-store", url.as_str()];
    let (a, b, c) = (net.agent(0, &flags), net.agent(1, &flags), net.agent(2, &flags));
    let (ca, cb, cc) = (a.client().await, b.client().await, c.client().await);
    let app = id_of(&start(&mut ca.clone(), spec(&[&workload("appender.py")])).await);
    wait_log(&ca, &app, "the appender to count", T, |l| counts(l).len() >= 3).await;
    // Four checkpoints; the store keeps the newest three (--checkpoint-keep's default).
    let mut infos = Vec::new();
    for _ in 0..4 {
        let info = checkpoint_now(&ca, &app).await;
        assert_eq!(info.holders, ["host0", "s3"], "{info:?}");
        infos.push(info);
    }
    let store = ferry_agent::objstore::S3Store::new(
        &ferry_agent::objstore::S3Config::from_url(&url).unwrap(),
    )
    .unwrap();
    let keys: Vec<String> = store.list(&app).await.unwrap().into_iter().map(|(k, _)| k).collect();
    let want: Vec<String> = infos[1..].iter().map(ferry_agent::checkpoint::s3_key).collect();
    assert_eq!(keys, want, "the newest three, in the real server");
    let newest = infos.last().unwrap().clone();
    let at = {
        let lines: Vec<String> =
            logs(&mut ca.clone(), &app).await.into_iter().map(|l| l.text).collect();
        *counts(&lines).last().unwrap()
    };
    // The node's own copies are gone with it: only the object store has the checkpoint.
    ca.clone()
        .stop_process(pb::StopProcessRequest { id: app.clone(), grace_ms: 100 })
        .await
        .unwrap();
    std::fs::remove_dir_all(harness::net::data_path(&a, &format!("checkpoints/{app}"))).unwrap();
    let s = restore_on(&cb, &newest, vec![peer("host0", &a)], "r-s3")
        .await
        .unwrap_or_else(|s| panic!("RestoreCheckpoint from the object store: {s}"));
    assert!(s.exit.is_none(), "{s:?}");
    let lines =
        wait_log(&cb, &app, "the restored appender to count", T, |l| !counts(l).is_empty()).await;
    assert!(counts(&lines)[0] <= at + 1, "{} > {}", counts(&lines)[0], at + 1);
    check_self(&cb, &app, "journal ok", "journal FAIL").await;

    // An object corrupted in the store is refused, saying where and what; nothing runs.
    let obj = harness::net::data_path(&b, &format!("checkpoints/{app}/{}.obj", newest.id));
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let bad = garage.dir().join("bad.obj");
    std::fs::write(&bad, &bytes).unwrap();
    store.put_file(&ferry_agent::checkpoint::s3_key(&newest), &bad).await.unwrap();
    let err = restore_on(&cc, &newest, vec![], "r-s3-bad")
        .await
        .expect_err("a corrupted object must be refused");
    eprintln!("corrupted in the store: {}", err.message());
    assert!(err.message().contains("object store") && err.message().contains("blake3"), "{err}");
    runs_nothing(&cc, "nothing restored from an object corrupted in the store").await;
    drop((a, b, c, garage, net));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_outage_longer_than_the_lease_fences_then_restores_each_workload_once() {
    if !require_root(
        "a_coordinator_outage_longer_than_the_lease_fences_then_restores_each_workload_once",
    ) {
        return;
    }
    let mut c = cluster("ferry-coord-outage", 6).await;
    let gw = c.gw.clone();
    let app = run_on(&gw, "host1", &[&workload("appender.py")], 5).await;
    replicated(&gw, &app).await;
    // The coordinator is gone for longer than the lease (3 s): the agents cannot tell that from
    // being cut off, so host1 fences its protected workload.
    drop(c.coord.take());
    let ca = c.client(1).await;
    let s = wait_until("host1 to fence the workload", T, || {
        let (mut ca, app) = (ca.clone(), app.clone());
        async move {
            let s = ca.get_status(pb::WorkloadRef { id: app }).await.ok()?.into_inner();
            s.lost_reason.starts_with("fenced:").then_some(s)
        }
    })
    .await;
    eprintln!("fenced while the coordinator was down: {}", s.lost_reason);
    let at_fence = last_count(&ca, &app).await;
    // Back: it restores the workload from its newest checkpoint, once. (Its record says
    // "running on host1" until host1 reports again: the failover's record is what to wait for.)
    c.start_coordinator();
    let m = wait_until("the workload's failover", Duration::from_secs(90), || {
        let (gw, app) = (gw.clone(), app.clone());
        async move {
            let (_, ms) = harness::cluster::call(&gw, "GET", "/api/migrations", None).await;
            ms.as_array()?
                .iter()
                .find(|m| m["processId"] == app.as_str() && m["status"] == "completed")
                .cloned()
        }
    })
    .await;
    assert_eq!(m["mode"], "failover", "{m}");
    let p = wait_until("the workload to run where it was restored", T, || {
        let (gw, app, to) = (gw.clone(), app.clone(), m["targetServerId"].clone());
        async move {
            let p = process(&gw, &app).await;
            (p["status"] == "running" && p["serverId"] == to).then_some(p)
        }
    })
    .await;
    eprintln!("running again on {}", p["serverId"]);
    // Its new log counts on from the checkpoint's count, no later than where it had got to.
    let resumed = wait_until("it counts on", T, || {
        let (gw, app) = (gw.clone(), app.clone());
        async move {
            let n = numbered(&gw, &app, "count ").await;
            (n.len() > 3).then(|| n[0])
        }
    })
    .await;
    assert!(
        (1..=at_fence + 1).contains(&resumed),
        "resumed at {resumed}; counted to {at_fence} before the fence"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(copies(&c, &app).await, [p["serverId"].as_str().unwrap().to_string()]);
    let (_, ms) = harness::cluster::call(&gw, "GET", "/api/migrations", None).await;
    let restores: Vec<&serde_json::Value> = ms
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["processId"] == app.as_str() && m["status"] == "completed")
        .collect();
    assert_eq!(restores.len(), 1, "restored once: {ms}");
    let v = verdict(&gw, &app, "journal ok", "journal FAIL").await;
    assert!(v.starts_with("journal ok"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_during_a_checkpoint_leaves_its_workload_running_once_restarted() {
    if !require_root(
        "an_agent_killed_during_a_checkpoint_leaves_its_workload_running_once_restarted",
    ) {
        return;
    }
    let net = Net::new(1);
    let a = net.agent(0, &[]);
    let ca = a.client().await;
    let hog = id_of(&start(&mut ca.clone(), spec(&[&workload("memhog"), "512", "write"])).await);
    wait_log(&ca, &hog, "memhog to tick", T, |l| l.iter().any(|x| x.starts_with("tick "))).await;
    // The agent dies inside the checkpoint: the tree is stopped, CRIU is dumping it.
    let mut c2 = ca.clone();
    let id = hog.clone();
    let taking = tokio::spawn(async move { c2.take_checkpoint(pb::WorkloadRef { id }).await });
    let pid = status(&mut ca.clone(), &hog).await.main_pid;
    wait_until("the checkpoint to stop the workload", T, || async move {
        // Stopped by the agent (T), then traced by CRIU (t).
        stat(pid).is_some_and(|s| matches!(s.state, 'T' | 't')).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = net.restart_agent(0, a, &[]);
    assert!(taking.await.unwrap().is_err(), "the checkpoint died with its agent");
    let ca = a.client().await;
    // The restarted agent resumes the workload an earlier one left stopped; it runs on, intact.
    let ticks = |l: &[String]| l.iter().filter(|x| x.starts_with("tick ")).count();
    let before =
        ticks(&logs(&mut ca.clone(), &hog).await.into_iter().map(|l| l.text).collect::<Vec<_>>());
    wait_log(&ca, &hog, "memhog to tick on", T, |l| ticks(l) > before + 5).await;
    check_self(&ca, &hog, "verify ok", "verify FAIL").await;
    // A checkpoint now works, and no half-written object was kept.
    let info = checkpoint_now(&ca, &hog).await;
    let held = ca
        .clone()
        .list_checkpoints(pb::ListCheckpointsRequest { workload_id: hog.clone() })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(held.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [info.id.as_str()]);
    let dir = harness::net::data_path(&a, &format!("checkpoints/{hog}"));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".obj") || n.ends_with(".info")), "{names:?}");
}
