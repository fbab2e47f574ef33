//! Post-copy's page traffic crosses the network encrypted: CRIU's page server on the source and
//! the lazy-pages daemon on the target speak TLS with the cluster's certificates. Checked on the
//! wire: a capture of the bridge between the two hosts holds the pages' bytes only encrypted.

mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_proto::agent as pb;
use harness::net::Net;
use harness::*;

const T: Duration = Duration::from_secs(60);
const MARKER: &str = "FERRY-PAGE-MARKER-";

fn contains(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[tokio::test]
async fn post_copy_pages_cross_the_network_encrypted() {
    if !require_root("post_copy_pages_cross_the_network_encrypted") {
        return;
    }
    assert!(
        Command::new("tcpdump").arg("--version").output().is_ok(),
        "tcpdump is needed for this test (scripts/setup.sh installs it)"
    );
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let mut ca = a.client().await;
    // 4.5 MB of the marker in anonymous memory: lazy pages, fetched over the page server.
    let program =
        format!("import time\nb = bytearray(b'{MARKER}' * 250000)\nprint('ready', flush=True)\ntime.sleep(3600)");
    let s = start(&mut ca, spec(&["python3", "-c", &program])).await;
    let id = id_of(&s);
    wait_log(&ca, &id, "the program ready", T, |l| l.iter().any(|x| x == "ready")).await;

    let tmp = TempDir::new("ferry-test-pagetls");
    let cap = tmp.path().join("pages.pcap");
    // Everything between the hosts except the agents' gRPC (itself TLS, tested elsewhere).
    let mut dump = Command::new("tcpdump")
        .args(["-i", net.bridge(), "-U", "-s", "0", "-w"])
        .arg(&cap)
        .args(["tcp and not port 50051"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    // tcpdump says "listening on ..." once it captures.
    let mut err = std::io::BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump: {line}");

    let r = ca
        .migrate_out(pb::MigrateOutRequest {
            workload_id: id.clone(),
            target_address: b.addr.clone(),
            mode: pb::Mode::PostCopy as i32,
            ..Default::default()
        })
        .await
        .expect("MigrateOut")
        .into_inner();
    assert_eq!(r.outcome, pb::Outcome::Completed as i32, "{}", r.error);
    // MigrateOut answers once the source has served every page; let the capture drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(dump.id() as i32, libc::SIGINT);
    let _ = dump.wait();

    let bytes = std::fs::read(&cap).expect("the capture");
    assert!(
        bytes.len() > 4_000_000,
        "only {} bytes captured: the pages did not cross the bridge",
        bytes.len()
    );
    assert_eq!(
        contains(&bytes, MARKER.as_bytes()),
        0,
        "the pages crossed the network in the clear"
    );
    // A TLS handshake record (content type 22, version 3.x) opened the page traffic.
    assert!(
        bytes.windows(3).any(|w| w[0] == 0x16 && w[1] == 0x03 && w[2] <= 0x04),
        "no TLS handshake in the page traffic"
    );
    // And the workload runs on the target with its memory.
    let mut cb = b.client().await;
    let st = cb
        .get_status(pb::WorkloadRef { id: id.clone() })
        .await
        .expect("the workload on the target")
        .into_inner();
    assert!(st.exit.is_none(), "{st:?}");
}
