//! Hosts on one machine: network namespaces joined by a bridge, each running its own agent in
//! its own mount namespace, so each host has a private data directory at the same path, as
//! separate machines would. Used by the benchmark and the tests (and later `ferry up`).
//!
//! Every address is inside a namespace created here, on a subnet whose route is checked to go
//! to the bridge before anything is sent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

fn sh(cmd: &str) -> std::io::Result<std::process::Output> {
    Command::new("sh").arg("-c").arg(cmd).stdin(Stdio::null()).output()
}

fn must(cmd: &str) -> anyhow::Result<()> {
    let out = sh(cmd).with_context(|| format!("cannot run `{cmd}`"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A bridge in the current network namespace with namespace hosts on it.
pub struct Net {
    pub bridge: String,
    /// First three octets of the /24 subnet, e.g. "10.231.7".
    pub prefix: String,
    pub hosts: Vec<String>,
}

impl Net {
    /// Creates `hosts` (namespace names) on bridge `bridge` with addresses `prefix.2`, `prefix.3`,
    /// ...; the bridge takes `prefix.1`. Leftovers with the same names are removed first.
    pub fn create(bridge: &str, prefix: &str, hosts: &[String]) -> anyhow::Result<Net> {
        let _ = sh(&format!("ip link del {bridge} 2>/dev/null"));
        for (i, h) in hosts.iter().enumerate() {
            let _ = sh(&format!("ip netns del {h} 2>/dev/null"));
            let _ = sh(&format!("ip link del {} 2>/dev/null", veth_name(bridge, i)));
        }
        let net = Net { bridge: bridge.into(), prefix: prefix.into(), hosts: hosts.to_vec() };
        // The root namespace's new links get no IPv6 link-local address: the hosts speak IPv4,
        // and such an address appears only after duplicate detection, 1.2-1.4 s after the link
        // came up (`ip -ts monitor address`), a network change to every program watching this
        // namespace's addresses (Chromium failed a request of the dashboard's end-to-end test
        // with ERR_NETWORK_CHANGED). Best effort: a kernel without IPv6 has nothing to turn off.
        let no_ipv6 = |link: &str| {
            let _ = sh(&format!("ip link set {link} addrgenmode none 2>/dev/null"));
        };
        must(&format!("ip link add {bridge} type bridge"))?;
        no_ipv6(bridge);
        must(&format!("ip addr add {prefix}.1/24 dev {bridge} && ip link set {bridge} up"))?;
        for (i, h) in hosts.iter().enumerate() {
            let veth = veth_name(bridge, i);
            must(&format!(
                "ip netns add {h} && ip link add {veth} type veth peer name eth0 netns {h}"
            ))?;
            no_ipv6(&veth);
            must(&format!(
                "ip link set {veth} master {bridge} up && \
                 ip -n {h} addr add {ip}/24 dev eth0 && ip -n {h} link set eth0 up && \
                 ip -n {h} link set lo up",
                ip = net.ip(i)
            ))?;
        }
        let route = sh(&format!("ip route get {}", net.ip(0)))?;
        let route = String::from_utf8_lossy(&route.stdout).to_string();
        if !route.contains(&format!("dev {bridge}")) {
            bail!("the route to the test hosts does not go to bridge {bridge}: {route}");
        }
        Ok(net)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 2)
    }

    pub fn netns(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(&self.hosts[i])
    }

    /// Cuts host `i` off the bridge (`up` false) or joins it again: its veth's bridge end goes
    /// down or up, as a pulled cable would.
    pub fn set_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        must(&format!("ip link set {} {state}", veth_name(&self.bridge, i)))
    }

    /// A command that runs `program args` on host `i`: in its network namespace, and in a mount
    /// namespace of its own where `data` is bind-mounted at `mount_point`.
    pub fn command_on(
        &self,
        i: usize,
        data: &Path,
        mount_point: &Path,
        program: &Path,
        args: &[String],
    ) -> Command {
        command_in(&self.netns(i), data, mount_point, program, args)
    }
}

/// A command that runs `program args` in network namespace `netns` (a path such as
/// `/run/netns/NAME`), in a mount namespace of its own where `data` is bind-mounted at
/// `mount_point`. The command's process becomes `program` (every step execs).
pub fn command_in(
    netns: &Path,
    data: &Path,
    mount_point: &Path,
    program: &Path,
    args: &[String],
) -> Command {
    let script = format!(
        "mount --bind '{}' '{}' && exec nsenter --net='{}' \"$0\" \"$@\"",
        data.display(),
        mount_point.display(),
        netns.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    cmd.arg(program).args(args);
    cmd
}

/// The root-namespace end of host `i`'s veth pair (at most 15 characters).
fn veth_name(bridge: &str, i: usize) -> String {
    format!("{}h{i}", &bridge[..bridge.len().min(10)])
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = sh(&format!("ip netns del {h} 2>/dev/null"));
        }
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.bridge));
    }
}
