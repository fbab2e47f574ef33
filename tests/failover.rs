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
    let info = ca
        .clone()
        .take_checkpoint(pb::WorkloadRef { id: app.clone() })
        .await
        .unwrap_or_else(|s| panic!("TakeCheckpoint {app}: {s}"))
        .into_inner();
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
    let hog_ck = ca
        .clone()
        .take_checkpoint(pb::WorkloadRef { id: hog.clone() })
        .await
        .unwrap_or_else(|s| panic!("TakeCheckpoint {hog}: {s}"))
        .into_inner();
    eprintln!(
        "checkpoint {} of {hog}: freeze {} ms, {} bytes stored of {} raw",
        hog_ck.id, hog_ck.freeze_ms, hog_ck.bytes, hog_ck.raw_bytes
    );

    // A restore next to the running workload is refused: never a second copy.
    let err = ca
        .clone()
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            checkpoint: Some(info.clone()),
            restore_id: "r-same".into(),
            ..Default::default()
        })
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
        let s = cb
            .clone()
            .restore_checkpoint(pb::RestoreCheckpointRequest {
                checkpoint: Some(ck.clone()),
                holders: vec![peer("host0", &a)],
                restore_id: rid.into(),
                reason: "test".into(),
            })
            .await
            .unwrap_or_else(|s| panic!("RestoreCheckpoint {}: {s}", ck.workload_id))
            .into_inner();
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
    let err = cc
        .clone()
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            checkpoint: Some(info.clone()),
            holders: vec![peer("host0", &a)],
            restore_id: "r-corrupt".into(),
            reason: "test".into(),
        })
        .await
        .expect_err("a corrupted object must be refused");
    eprintln!("corrupted object: {}", err.message());
    assert!(err.message().contains("blake3") && err.message().contains("no intact copy"), "{err}");
    let on_c = cc.clone().list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    assert!(on_c.processes.is_empty(), "nothing restored from a corrupted object: {on_c:?}");

    // The same bytes through the decryption (its digest made to match): authentication fails.
    let mut forged = info.clone();
    forged.digest = blake3::hash(&bytes).to_hex().to_string();
    let err = cc
        .clone()
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            checkpoint: Some(forged),
            holders: vec![peer("host0", &a)],
            restore_id: "r-forged".into(),
            reason: "test".into(),
        })
        .await
        .expect_err("an altered object must be refused");
    eprintln!("altered object: {}", err.message());
    assert!(err.message().contains("failed authentication"), "{err}");
    let on_c = cc.clone().list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    assert!(on_c.processes.is_empty(), "nothing restored from an altered object: {on_c:?}");
    drop((a, b, c, net));
}
