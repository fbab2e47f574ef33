//! Hosts for migration tests: network namespaces joined by a bridge, each running its own
//! `ferry agent` in its own mount namespace (so every host has a private data directory at the
//! same path, as separate machines would). All addresses are inside namespaces this harness
//! creates, on a subnet whose route is checked to be the bridge before the first packet.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{AgentProc, TempDir};

/// Path where every host's agent sees its own data directory (a private bind mount).
pub const DATA_MOUNT: &str = "/var/lib/ferry-test-data";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge in the root namespace with `n` namespace hosts on it (see `ferry::hosts`).
pub struct Net {
    inner: ferry::hosts::Net,
    /// Held (flock) while the net exists: its number is this net's alone, across test threads
    /// and test processes on this machine.
    _claim: std::fs::File,
}

impl Net {
    pub fn new(n: usize) -> Net {
        // A number no other live test net holds (bridge `fbrK`, subnet 10.231.K.0/24), starting
        // from one likely free: a number left by a dead test is taken over (its leftovers are
        // removed by `create`).
        let start = (std::process::id() % 12) * 20 + NEXT.fetch_add(1, Ordering::SeqCst) % 20;
        let (k, claim) = (0..240)
            .map(|i| (start + i) % 240 + 1)
            .find_map(|k| claim(k).map(|f| (k, f)))
            .expect("all 240 test net numbers are taken by live tests");
        let hosts: Vec<String> = (0..n).map(|i| format!("ferry-t{k}-{i}")).collect();
        let inner = ferry::hosts::Net::create(&format!("fbr{k}"), &format!("10.231.{k}"), &hosts)
            .unwrap_or_else(|e| panic!("cannot create test hosts: {e:#}"));
        Net { inner, _claim: claim }
    }

    /// Address of host `i`.
    pub fn ip(&self, i: usize) -> String {
        self.inner.ip(i)
    }

    /// Host `i`'s network namespace (a path under /run/netns).
    pub fn netns(&self, i: usize) -> PathBuf {
        self.inner.netns(i)
    }

    /// The first three octets of the hosts' /24, e.g. "10.231.7".
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The bridge's name (in the root namespace): every packet between the hosts crosses it.
    pub fn bridge(&self) -> &str {
        &self.inner.bridge
    }

    /// The bridge's address (in the root namespace, where the test and a coordinator run).
    pub fn bridge_ip(&self) -> String {
        format!("{}.1", self.inner.prefix)
    }

    /// Cuts host `i` off the network (its link down), or joins it again.
    pub fn set_link(&self, i: usize, up: bool) {
        self.inner.set_link(i, up).expect("ip link set");
    }

    /// Kills (SIGKILL) every process in host `i`'s network namespace: its agent, its fd store
    /// and the workloads on the node's network. The node is gone as if its power was cut.
    pub fn power_off(&self, i: usize) -> usize {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(self.netns(i)).expect("the host's netns").ino();
        let mut killed = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino) {
                super::kill(pid, libc::SIGKILL);
                killed += 1;
            }
        }
        killed
    }

    /// An address on the subnet that no host has.
    pub fn unused_ip(&self) -> String {
        format!("{}.250", self.inner.prefix)
    }

    /// Starts `ferry agent` on host `i`, listening on its address, port 50051.
    pub fn agent(&self, i: usize, extra: &[&str]) -> AgentProc {
        let tmp = TempDir::new(&format!("ferry-host-{}", self.inner.hosts[i]));
        self.agent_in(i, extra, tmp)
    }

    /// Kills host `i`'s agent `old` with SIGKILL (only the agent: its workloads and helpers live
    /// on, as after a crash) and starts a new one on the same data directory.
    pub fn restart_agent(&self, i: usize, mut old: AgentProc, extra: &[&str]) -> AgentProc {
        super::kill(old.pid(), libc::SIGKILL);
        let _ = old.child.wait();
        let tmp = std::mem::replace(&mut old._tmp, TempDir(PathBuf::new()));
        // Its workloads are no longer its descendants, and the new agent takes those its data
        // dir records.
        old.crash_leaving_workloads();
        self.agent_in(i, extra, tmp)
    }

    fn agent_in(&self, i: usize, extra: &[&str], tmp: TempDir) -> AgentProc {
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(DATA_MOUNT).unwrap();
        let mut args: Vec<String> = [
            "agent",
            "--listen",
            &format!("{}:50051", self.ip(i)),
            "--node",
            &format!("host{i}"),
            "--data-dir",
            DATA_MOUNT,
            "--stop-grace-secs",
            "3",
            "--tls-dir",
            &super::tls_for(tmp.path(), &format!("host{i}")).to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let cmd = self.inner.command_on(
            i,
            &data,
            Path::new(DATA_MOUNT),
            Path::new(env!("CARGO_BIN_EXE_ferry")),
            &args,
        );
        AgentProc::spawn(&format!("host{i}"), cmd, tmp, data)
    }
}

/// An exclusive lock on test net number `k`, if nobody holds it.
fn claim(k: u32) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = std::path::Path::new("/run/ferry-test-nets");
    std::fs::create_dir_all(dir).ok()?;
    let f = std::fs::File::create(dir.join(k.to_string())).ok()?;
    // SAFETY: flock on a descriptor we own.
    (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(f)
}

/// Host-side path of a file in an agent's data directory.
pub fn data_path(agent: &AgentProc, rel: &str) -> PathBuf {
    agent.data_dir.join(rel)
}
