//! Post-copy's page traffic crosses the network only inside the agents' own connection: CRIU's
//! page server on the source and the lazy-pages daemon on the target talk through the page
//! tunnel (gRPC with mutual TLS), and no page server port is opened. Checked on the wire: a
//! capture of the bridge between the two hosts holds the pages' bytes only encrypted, and
//! nothing but the agents' port carried any of it.

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
async fn post_copy_pages_cross_the_network_only_in_the_agents_tls_tunnel() {
    if !require_root("post_copy_pages_cross_the_network_only_in_the_agents_tls_tunnel") {
        return;
    }
    assert!(
        Command::new("tcpdump").arg("--version").output().is_ok(),
        "tcpdump is needed for this test (scripts/setup.sh installs it)"
    );
    let net = Net::new(2);
    let (a, b) = (net.agent(0, &[]), net.agent(1, &[]));
    let mut ca = a.client().await;
    // 4.5 MB of the marker in anonymous memory: lazy pages, fetched through the page tunnel.
    let program =
        format!("import time\nb = bytearray(b'{MARKER}' * 250000)\nprint('ready', flush=True)\ntime.sleep(3600)");
    let s = start(&mut ca, spec(&["python3", "-c", &program])).await;
    let id = id_of(&s);
    wait_log(&ca, &id, "the program ready", T, |l| l.iter().any(|x| x == "ready")).await;

    let tmp = TempDir::new("ferry-test-pagetls");
    // Everything between the hosts, and apart from that everything but the agents' gRPC port.
    let cap = tmp.path().join("pages.pcap");
    let others = tmp.path().join("others.pcap");
    let mut dumps = vec![
        capture(net.bridge(), &cap, "tcp"),
        capture(net.bridge(), &others, "tcp and not port 50051"),
    ];
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
    for d in &mut dumps {
        kill(d.id() as i32, libc::SIGINT);
        let _ = d.wait();
    }

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
    // A pcap file with no packet is its 24-byte header.
    let stray = std::fs::read(&others).expect("the second capture");
    assert_eq!(
        stray.len(),
        24,
        "TCP traffic between the hosts outside the agents' port 50051: a page server port was used"
    );
    // A TLS handshake record (content type 22, version 3.x) opened the connection.
    assert!(
        bytes.windows(3).any(|w| w[0] == 0x16 && w[1] == 0x03 && w[2] <= 0x04),
        "no TLS handshake between the agents"
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

/// Starts tcpdump on `iface` writing packets that match `filter` to `file`; returns once it
/// captures.
fn capture(iface: &str, file: &std::path::Path, filter: &str) -> std::process::Child {
    let mut dump = Command::new("tcpdump")
        .args(["-i", iface, "-U", "-s", "0", "-w"])
        .arg(file)
        .arg(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    // tcpdump says "listening on ..." once it captures.
    let mut err = std::io::BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump: {line}");
    dump
}
