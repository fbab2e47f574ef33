//! Hosts for migration tests: network namespaces joined by a bridge, each running its own
//! `ferry agent` in its own mount namespace (so every host has a private data directory at the
//! same path, as separate machines would). All addresses are inside namespaces this harness
//! creates, on a subnet whose route is checked to be the bridge before the first packet.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{AgentProc, TempDir};

/// Path where every host's agent sees its own data directory (a private bind mount).
pub const DATA_MOUNT: &str = "/var/lib/ferry-test-data";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).stdin(Stdio::null()).output().expect("run sh")
}

fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge in the root namespace with `n` namespace hosts on it.
pub struct Net {
    pub bridge: String,
    /// Third octet of this net's 10.231.X.0/24 subnet.
    pub subnet: u32,
    pub hosts: Vec<String>,
}

impl Net {
    pub fn new(n: usize) -> Net {
        // Distinct per test in this binary (up to 20) and likely distinct from other binaries' runs.
        let k = (std::process::id() % 12) * 20 + NEXT.fetch_add(1, Ordering::SeqCst) % 20 + 1;
        let bridge = format!("fbr{k}");
        let hosts: Vec<String> = (0..n).map(|i| format!("ferry-t{k}-{i}")).collect();
        // Leftovers of a crashed earlier run with the same names.
        sh(&format!("ip link del {bridge} 2>/dev/null"));
        for h in &hosts {
            sh(&format!("ip netns del {h} 2>/dev/null"));
        }
        must(&format!("ip link add {bridge} type bridge && ip addr add 10.231.{k}.1/24 dev {bridge} && ip link set {bridge} up"));
        for (i, h) in hosts.iter().enumerate() {
            let veth = format!("fv{k}h{i}");
            must(&format!(
                "ip netns add {h} && ip link add {veth} type veth peer name eth0 netns {h} && \
                 ip link set {veth} master {bridge} up && \
                 ip -n {h} addr add 10.231.{k}.{}/24 dev eth0 && ip -n {h} link set eth0 up && \
                 ip -n {h} link set lo up",
                i + 2
            ));
        }
        let net = Net { bridge, subnet: k, hosts };
        // Traffic to the hosts must stay on this machine: the bridge must carry their route.
        let route = sh(&format!("ip route get {}", net.ip(0)));
        let route = String::from_utf8_lossy(&route.stdout).to_string();
        assert!(
            route.contains(&format!("dev {}", net.bridge)),
            "route to test hosts leaves the bridge: {route}"
        );
        net
    }

    /// Address of host `i`.
    pub fn ip(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.subnet, i + 2)
    }

    /// An address on the subnet that no host has.
    pub fn unused_ip(&self) -> String {
        format!("10.231.{}.250", self.subnet)
    }

    /// Starts `ferry agent` on host `i`, listening on its address, port 50051.
    pub fn agent(&self, i: usize, extra: &[&str]) -> AgentProc {
        let tmp = TempDir::new(&format!("ferry-host-{}", self.hosts[i]));
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(DATA_MOUNT).unwrap();
        let listen = format!("{}:50051", self.ip(i));
        let script = format!(
            "mount --bind {data} {DATA_MOUNT} && exec nsenter --net=/run/netns/{ns} \"$0\" \"$@\"",
            data = data.display(),
            ns = self.hosts[i]
        );
        let mut args: Vec<String> = vec![
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            script,
            env!("CARGO_BIN_EXE_ferry").into(),
            "agent".into(),
            "--listen".into(),
            listen,
            "--node".into(),
            format!("host{i}"),
            "--data-dir".into(),
            DATA_MOUNT.into(),
            "--stop-grace-secs".into(),
            "3".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        AgentProc::spawn(&format!("host{i}"), "unshare", &args, tmp, data)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            sh(&format!("ip netns del {h} 2>/dev/null"));
        }
        sh(&format!("ip link del {} 2>/dev/null", self.bridge));
    }
}

/// Host-side path of a file in an agent's data directory.
pub fn data_path(agent: &AgentProc, rel: &str) -> PathBuf {
    agent.data_dir.join(rel)
}
