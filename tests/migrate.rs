//! Migration scenarios: real programs moved between two agents on two network-namespace hosts,
//! their state verified on the target.

mod harness;

use std::time::Duration;

use ferry_proto::agent as pb;
use harness::net::Net;
use harness::*;

const T: Duration = Duration::from_secs(30);

async fn migrate(c: &mut Client, id: &str, target: &str) -> pb::MigrationResult {
    c.migrate_out(pb::MigrateOutRequest {
        workload_id: id.into(),
        target_address: target.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("MigrateOut {id} failed: {s}"))
    .into_inner()
}

#[tokio::test]
async fn shell_counter_moves() {
    if !require_root("shell_counter_moves") {
        return;
    }
    let net = Net::new(2);
    let a = net.agent(0, &[]);
    let b = net.agent(1, &[]);
    let mut ca = a.client().await;
    let cb = b.client().await;
    let s = start(
        &mut ca,
        spec(&["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"]),
    )
    .await;
    let id = id_of(&s);
    wait_log(&ca, &id, "5 lines", T, |l| l.len() >= 5).await;
    let r = migrate(&mut ca, &id, &b.addr).await;
    eprintln!("{r:#?}");
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{}", r.error);
    let lines = wait_log(&cb, &id, "counting on in the target", T, |l| l.len() >= 20).await;
    let nums: Vec<u64> = lines.iter().filter_map(|l| l.parse().ok()).collect();
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the count continues without restarting: {nums:?}");
    }
}
