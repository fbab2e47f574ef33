//! A workload's own address (docs/network.md).
//!
//! Such a workload runs in a network namespace of its own whose one interface, `eth0`, holds its
//! address (a /32) and a default route out of it. The other end of that veth pair lives in the
//! node's namespace under a name of the agent's choosing (`fw` and 12 hex digits). The node
//! reaches the workload by a /32 route into that link and answers ARP for the address on its
//! LAN link (proxy ARP), so every host of the LAN reaches the address through whichever node
//! runs the workload; the workload reaches the LAN through the node (proxy ARP on its end of
//! the pair, the node forwarding).
//!
//! A migration moves the address with the workload:
//! - **hold**: before the freeze the source routes the address into its hold device (a tun the
//!   agent reads): packets for the workload wait in the agent instead of reaching the freezing
//!   workload, and the workload's end of the pair is taken down, so nothing it sends leaves.
//! - **switch**: at the commit the target brings its prepared pair up, routes the address into
//!   it, answers ARP for it and announces it (gratuitous ARP); then the source stops answering
//!   for it, routes it like any other LAN address (to the target) and sends the held packets
//!   on, to the target.
//! - **take back**: a rollback routes the address into the source's pair again, turns the TCP
//!   sockets' repair mode off (CRIU left them in it) and lets the held packets in.
//! - **cut**: a copy that must not run (the killed original, a discarded copy) loses its pair
//!   before it is killed, so a reset its kernel sends on closing reaches nobody.
//!
//! Only the agent's own namespace (the node's) and the workloads' are touched: with `ip` where
//! time does not matter (laying out a namespace, cutting a pair), by rtnetlink (`sys::rtnl`)
//! where it does (the hold, the switch, the hand-over), and through /proc/sys/net.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::reaper::Reaper;
use super::rtnl::{self, Rtnl};

/// A workload's address and where it is attached on this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub address: Ipv4Addr,
    /// The node's end of the workload's veth pair.
    pub host_if: String,
    /// The node's link on whose LAN the address is announced.
    pub lan: String,
    /// Hardware addresses of the node's end and of the workload's `eth0` (each side knows the
    /// other's for good: neither ever asks by ARP, so neither waits on an answer across a
    /// migration's freeze).
    #[serde(default)]
    pub host_mac: String,
    #[serde(default)]
    pub inner_mac: String,
}

/// The workload's gateway: a link-local address no host holds, resolved in its namespace to the
/// node's end of the pair for good.
const GATEWAY: &str = "169.254.1.1";

/// A random locally administered unicast hardware address.
pub fn new_mac() -> String {
    let mut b = ferry_proto::ids::random_bytes::<6>();
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// The name of the node's hold device.
pub const HOLD_IF: &str = "fwhold";
/// Held packets kept per address at most (bytes); later ones are dropped (their senders
/// retransmit them).
const HOLD_CAP: usize = 32 << 20;

fn ip(reaper: &Reaper, args: &[&str]) -> std::io::Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = super::command::output(reaper, cmd)?;
    if !out.success() {
        return Err(std::io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            out.stderr.trim()
        )));
    }
    Ok(())
}

/// Runs `ip -batch -` with `script` in the network namespace at `netns` (a path).
fn ip_batch_in(reaper: &Reaper, netns: &str, script: &str) -> std::io::Result<()> {
    use std::process::Stdio;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={netns}")).arg("ip");
    cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let exit = reaper.watch(child.id() as i32);
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    drop(child);
    let status = exit.blocking_recv().map_err(|_| std::io::Error::other("reaper gone"))?;
    if status != super::reaper::ExitStatus::Exited(0) {
        return Err(std::io::Error::other(format!(
            "`ip -batch` failed ({status:?}): {}; script:\n{script}",
            err.trim()
        )));
    }
    Ok(())
}

fn sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/net/{path}"), value).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot set net/{path} to {value}: {e}"))
    })
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/net/{path}")).ok().map(|s| s.trim().to_string())
}

/// A fresh name for the node's end of a workload's pair.
pub fn new_host_if() -> String {
    format!("fw{}", ferry_proto::ids::hex(&ferry_proto::ids::random_bytes::<6>()))
}

/// A new, empty network namespace (made on a thread of its own, which leaves it at once).
pub fn new_netns() -> std::io::Result<OwnedFd> {
    std::thread::spawn(|| {
        // SAFETY: unshare of this thread's network namespace only; the thread ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let f = std::fs::File::open("/proc/thread-self/ns/net")?;
        Ok(OwnedFd::from(f))
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// The network namespace `pid` lives in.
pub fn netns_of(pid: i32) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open(format!("/proc/{pid}/ns/net"))?))
}

/// The inode naming `pid`'s network namespace (what CRIU calls it: `net[INODE]`).
pub fn netns_inode(pid: i32) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// True when `pid` has a network namespace other than the agent's.
pub fn has_own_netns(pid: i32) -> bool {
    let mine = std::fs::metadata("/proc/self/ns/net");
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"));
    match (mine, theirs) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            a.ino() != b.ino()
        }
        _ => false,
    }
}

/// A path other processes can open to reach the namespace `fd` names.
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
}

/// The node's link whose on-link subnet ([`onlink_subnets`]) holds `addr`, the longest such
/// prefix: where the address is announced.
pub fn lan_link(addr: Ipv4Addr) -> std::io::Result<String> {
    onlink_subnets()
        .into_iter()
        .filter(|(net, len, _)| contains(*net, *len, addr))
        .max_by_key(|(_, len, _)| *len)
        .map(|(_, _, dev)| dev)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "no link of this node has an on-link route to {addr}: a workload address must \
                 lie in a subnet of the node's LAN (see `ip -4 route`)"
            ))
        })
}

/// The node's on-link IPv4 subnets (routes without a gateway, not host routes, not into a
/// workload's pair), from /proc/net/route: (network, prefix length, link).
pub fn onlink_subnets() -> Vec<(Ipv4Addr, u32, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else { return Vec::new() };
    // Addresses and masks are u32s in the host's (little-endian) order, as hex.
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| Ipv4Addr::from(v.to_le_bytes()));
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0].starts_with("fw") {
            continue;
        }
        let (Some(dst), Some(gw), Some(flags), Some(mask)) =
            (hex(f[1]), hex(f[2]), u32::from_str_radix(f[3], 16).ok(), hex(f[7]))
        else {
            continue;
        };
        // RTF_UP, no gateway, a subnet rather than one host or everything.
        let len = u32::from(mask).count_ones();
        if flags & 1 == 0 || !gw.is_unspecified() || len == 32 || len == 0 {
            continue;
        }
        out.push((dst, len, f[0].to_string()));
    }
    out
}

/// Whether `addr` lies in one of `subnets` ("NET/LEN DEV", as [`onlink_subnets`] reports them).
pub fn in_subnets(addr: Ipv4Addr, subnets: &[String]) -> bool {
    subnets.iter().any(|s| {
        let cidr = s.split_whitespace().next().unwrap_or("");
        parse_cidr(cidr).is_some_and(|(net, len)| len < 32 && contains(net, len, addr))
    })
}

/// The established TCP connections held by the tasks `pids` (as "LOCAL <-> REMOTE"), read from
/// their network namespace's /proc/PID/net/tcp{,6} and matched to their sockets by inode.
pub fn established_tcp(pids: &[i32]) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            if let Ok(link) = std::fs::read_link(e.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(ino) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(ino.to_string());
                }
            }
        }
    }
    let Some(pid) = pids.first() else { return Vec::new() };
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            out.push(format!("{} <-> {}", proc_net_addr(f[1]), proc_net_addr(f[2])));
        }
    }
    out
}

/// "0100007F:1F90" (or its IPv6 form) as "127.0.0.1:8080".
fn proc_net_addr(s: &str) -> String {
    let Some((a, port)) = s.split_once(':') else { return s.to_string() };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    let words: Vec<u32> = (0..a.len() / 8)
        .filter_map(|i| u32::from_str_radix(&a[i * 8..i * 8 + 8], 16).ok())
        .collect();
    match words.as_slice() {
        [v4] => format!("{}:{port}", Ipv4Addr::from(v4.to_le_bytes())),
        [a, b, c, d] => {
            let mut b16 = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                b16[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            format!("[{}]:{port}", std::net::Ipv6Addr::from(b16))
        }
        _ => s.to_string(),
    }
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u32)> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    Some((a.parse().ok()?, l.parse().ok().filter(|l| *l <= 32)?))
}

fn contains(net: Ipv4Addr, len: u32, addr: Ipv4Addr) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(net) & mask == u32::from(addr) & mask
}

/// Turns the node into a router for its workloads' addresses (once per agent; idempotent).
pub fn node_ready() -> std::io::Result<()> {
    if read_sysctl("ipv4/ip_forward").as_deref() != Some("1") {
        sysctl("ipv4/ip_forward", "1")?;
    }
    Ok(())
}

/// Lays out a workload's network in `netns` (made by [`new_netns`], or the namespace a restore
/// goes into): the pair, its inner end `eth0` with the address and the default route through
/// the node's end, loopback up. The node's end stays down and unrouted until [`attach`].
pub fn prepare(reaper: &Reaper, netns: &OwnedFd, a: &Attachment) -> std::io::Result<()> {
    let ns = fd_path(netns);
    ip(
        reaper,
        &[
            "link",
            "add",
            &a.host_if,
            "address",
            &a.host_mac,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &a.inner_mac,
            "netns",
            &ns,
        ],
    )?;
    let inner = format!(
        "link set lo up\n\
         link set eth0 addrgenmode none\n\
         addr add {addr}/32 dev eth0\n\
         link set eth0 up\n\
         neigh replace {GATEWAY} lladdr {mac} dev eth0 nud permanent\n\
         route add {GATEWAY} dev eth0 scope link\n\
         route add default via {GATEWAY} dev eth0\n",
        addr = a.address,
        mac = a.host_mac
    );
    if let Err(e) = ip_batch_in(reaper, &ns, &inner) {
        let _ = ip(reaper, &["link", "del", &a.host_if]);
        return Err(e);
    }
    Ok(())
}

/// Makes this node answer for the workload's address: the node's end of its pair up, the /32
/// route into it (the workload's hardware address known for good), proxy ARP for the address on
/// the LAN link, and a gratuitous ARP there so the LAN's hosts send to this node from now on.
pub fn attach(a: &Attachment) -> std::io::Result<()> {
    // Proxy answers to broadcast requests wait up to proxy_delay (0.8 s by default) unless it
    // is 0: a node asking where a moved address went waits for this answer.
    let path = format!("ipv4/neigh/{}/proxy_delay", a.lan);
    if read_sysctl(&path).as_deref() != Some("0") {
        sysctl(&path, "0")?;
    }
    // By netlink: this runs inside a migration's downtime (docs/network.md).
    let (host, lan) = (rtnl::index(&a.host_if)?, rtnl::index(&a.lan)?);
    let mut nl = Rtnl::open()?;
    let fail = |what: &str, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{what} for {}: {e}", a.address))
    };
    nl.link_up(host, true).map_err(|e| fail(&format!("setting {} up", a.host_if), e))?;
    nl.route_replace(a.address, host).map_err(|e| fail("the /32 route", e))?;
    let mac = rtnl::parse_mac(&a.inner_mac)?;
    nl.neigh_permanent(a.address, mac, host).map_err(|e| fail("the neighbour entry", e))?;
    nl.proxy(a.address, lan, true).map_err(|e| fail(&format!("proxy ARP on {}", a.lan), e))?;
    if let Err(e) = announce(&a.lan, a.address) {
        // The LAN learns the new place anyway: the old node forwards, and ARP entries expire.
        tracing::warn!(address = %a.address, lan = a.lan, %e, "cannot send a gratuitous ARP");
    }
    Ok(())
}

/// Takes the node's end of the pair away (the pair goes with it), and the address's proxy ARP
/// entry and route. Best effort: each may be gone already.
pub fn cut(reaper: &Reaper, a: &Attachment) {
    let _ = ip(reaper, &["link", "del", &a.host_if]);
    let _ = ip(reaper, &["neigh", "del", "proxy", &a.address.to_string(), "dev", &a.lan]);
    // The /32 went with the link, unless it pointed at the hold device.
    let _ = ip(reaper, &["route", "del", &format!("{}/32", a.address), "dev", HOLD_IF]);
}

/// Packets for moving workloads, held by the agent: a tun device the addresses are routed into
/// during a migration, read by a thread of the agent.
pub struct Hold {
    tun: std::fs::File,
    held: Mutex<HashMap<Ipv4Addr, Held>>,
}

#[derive(Default)]
struct Held {
    packets: Vec<Vec<u8>>,
    bytes: usize,
    dropped: u64,
}

impl Hold {
    /// Creates the hold device (up, forwarding, no reverse-path filter: the packets it gives
    /// back come from the LAN's hosts) and its reader thread.
    pub fn open(reaper: &Reaper) -> std::io::Result<Arc<Hold>> {
        let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        req.name[..HOLD_IF.len()].copy_from_slice(HOLD_IF.as_bytes());
        req.flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        ip(reaper, &["link", "set", HOLD_IF, "up"])?;
        sysctl(&format!("ipv4/conf/{HOLD_IF}/rp_filter"), "0")?;
        if read_sysctl("ipv4/conf/all/rp_filter").as_deref() == Some("1") {
            // Strict reverse-path filtering (the larger of `all` and the device's applies)
            // would drop what the hold gives back; loose mode keeps the check.
            sysctl("ipv4/conf/all/rp_filter", "2")?;
        }
        let hold = Arc::new(Hold { tun, held: Mutex::new(HashMap::new()) });
        let reader = Arc::downgrade(&hold);
        let mut rx = hold.tun.try_clone()?;
        std::thread::Builder::new().name("ferry-hold".into()).spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match rx.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let Some(hold) = reader.upgrade() else { return };
                hold.take(&buf[..n]);
            }
        })?;
        Ok(hold)
    }

    fn take(&self, packet: &[u8]) {
        let Some(dst) = ipv4_destination(packet) else { return };
        let mut held = self.held.lock().expect("hold poisoned");
        let Some(h) = held.get_mut(&dst) else { return };
        if h.bytes + packet.len() > HOLD_CAP {
            h.dropped += 1;
            return;
        }
        h.bytes += packet.len();
        h.packets.push(packet.to_vec());
    }

    /// Starts keeping what arrives for `addr` (before its route points at the device).
    fn start(&self, addr: Ipv4Addr) {
        self.held.lock().expect("hold poisoned").entry(addr).or_default();
    }

    /// Stops keeping `addr`'s packets and gives back those kept, into the node's routing (which
    /// by then sends them where the workload runs). Returns how many were given back.
    fn release(&self, addr: Ipv4Addr) -> usize {
        let h = self.held.lock().expect("hold poisoned").remove(&addr).unwrap_or_default();
        let mut tun = &self.tun;
        let mut sent = 0;
        for p in &h.packets {
            if tun.write_all(p).is_ok() {
                sent += 1;
            }
        }
        if h.dropped > 0 {
            tracing::warn!(address = %addr, dropped = h.dropped, "held packets past the cap were dropped (their senders retransmit them)");
        }
        sent
    }
}

fn ipv4_destination(p: &[u8]) -> Option<Ipv4Addr> {
    (p.len() >= 20 && p[0] >> 4 == 4).then(|| Ipv4Addr::new(p[16], p[17], p[18], p[19]))
}

/// Before the freeze: the address's packets go to the hold, the workload's end of the pair goes
/// down (nothing the frozen workload's kernel sends leaves), and this node stops answering ARP
/// for it (hosts that know where it was still send here, into the hold; from the target's
/// announcement on, they send there: at no moment do two nodes answer for it).
pub fn hold(hold: &Hold, a: &Attachment) -> std::io::Result<()> {
    hold.start(a.address);
    // The held packets are given back all at once, when this node does not yet know where the
    // address went: they wait in the LAN link's queue for the unresolved neighbour, whose
    // default (unres_qlen_bytes, 208 KiB) holds about a hundred of them; beyond it the kernel
    // drops them and their senders wait for a retransmission.
    let path = format!("ipv4/neigh/{}/unres_qlen_bytes", a.lan);
    let want = HOLD_CAP.to_string();
    if read_sysctl(&path).and_then(|v| v.parse::<usize>().ok()).is_none_or(|v| v < HOLD_CAP) {
        sysctl(&path, &want)?;
    }
    let mut nl = Rtnl::open()?;
    if let Err(e) = rtnl::index(HOLD_IF).and_then(|i| nl.route_replace(a.address, i)) {
        hold.release(a.address);
        return Err(std::io::Error::new(
            e.kind(),
            format!("routing {} to the hold: {e}", a.address),
        ));
    }
    if let Ok(lan) = rtnl::index(&a.lan) {
        let _ = nl.proxy(a.address, lan, false);
    }
    nl.link_up(rtnl::index(&a.host_if)?, false)
}

/// After the target took the address over: this node stops answering for it and routes it like
/// any other LAN address (to the target, which answers ARP for it now), and the held packets
/// follow. Returns how many were sent on.
pub fn hand_over(hold: &Hold, a: &Attachment) -> usize {
    if let Err(e) = Rtnl::open().and_then(|mut nl| nl.route_del(a.address)) {
        tracing::warn!(address = %a.address, %e, "cannot drop the route into the hold");
    }
    hold.release(a.address)
}

/// A rollback: the workload's TCP sockets out of repair mode, its pair up and routed again, the
/// held packets let in. Returns how many were.
pub fn take_back(hold: &Hold, a: &Attachment, pids: &[i32]) -> std::io::Result<usize> {
    let repaired = unrepair_tcp(pids);
    tracing::info!(address = %a.address, sockets = repaired, "TCP sockets out of repair mode");
    attach(a)?;
    Ok(hold.release(a.address))
}

/// Turns repair mode off on every TCP socket the tasks `pids` hold (CRIU's dump leaves a frozen
/// original's connections in it); each is also told to probe its peer's window. Returns how many
/// sockets were switched.
pub fn unrepair_tcp(pids: &[i32]) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
        if pidfd < 0 {
            continue;
        }
        // SAFETY: a fresh fd owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        for e in dir.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else { continue };
            let link = link.to_string_lossy().into_owned();
            if !link.starts_with("socket:[") || !seen.insert(link) {
                continue;
            }
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: pidfd_getfd returns a new close-on-exec fd or -1.
            let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0u32) };
            if dup < 0 {
                continue;
            }
            // SAFETY: a fresh fd owned by nobody else.
            let sock = unsafe { OwnedFd::from_raw_fd(dup as i32) };
            let mut proto: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: an int option into an int.
            let r = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PROTOCOL,
                    (&mut proto as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if r != 0 || proto != libc::IPPROTO_TCP {
                continue;
            }
            let off: libc::c_int = 0; // TCP_REPAIR_OFF
                                      // SAFETY: an int option. Fails (EPERM) on sockets that are neither established nor
                                      // closed, which CRIU never put in repair mode.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_REPAIR,
                    (&off as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                n += 1;
            }
        }
    }
    n
}

/// Gratuitous ARP for `addr` on `link` with the link's own hardware address, as a request and as
/// a reply (hosts differ in which they heed).
pub fn announce(link: &str, addr: Ipv4Addr) -> std::io::Result<()> {
    let name = std::ffi::CString::new(link).map_err(|_| std::io::Error::other("NUL in name"))?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mac = hardware_address(link)?;
    // SAFETY: a packet socket for ARP frames; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ARP as u16).to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is a valid starting value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for (op, target_mac) in [(1u16, [0u8; 6]), (2u16, [0xffu8; 6])] {
        let frame = arp_frame(op, mac, addr, target_mac);
        // SAFETY: sending our buffer to a filled sockaddr_ll.
        let r = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An ARP packet (without the Ethernet header) saying `addr` is at `mac`.
fn arp_frame(op: u16, mac: [u8; 6], addr: Ipv4Addr, target_mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(28);
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&addr.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&addr.octets());
    f
}

/// The hardware address of `link` in the agent's namespace (not from /sys, which may show
/// another namespace's links).
fn hardware_address(link: &str) -> std::io::Result<[u8; 6]> {
    // SAFETY: a datagram socket for the ioctl; owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in link.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq's hardware address.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union holds a sockaddr after SIOCGIFHWADDR.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (i, b) in sa.sa_data[..6].iter().enumerate() {
        mac[i] = *b as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        let net = Ipv4Addr::new(10, 231, 7, 0);
        assert!(contains(net, 24, Ipv4Addr::new(10, 231, 7, 200)));
        assert!(!contains(net, 24, Ipv4Addr::new(10, 231, 8, 1)));
        assert!(contains(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(parse_cidr("10.1.0.0/16"), Some((Ipv4Addr::new(10, 1, 0, 0), 16)));
        assert_eq!(parse_cidr("10.1.0.7"), Some((Ipv4Addr::new(10, 1, 0, 7), 32)));
        assert_eq!(parse_cidr("default"), None);
        assert_eq!(parse_cidr("10.1.0.0/33"), None);
    }

    #[test]
    fn proc_net_addresses() {
        assert_eq!(proc_net_addr("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(proc_net_addr("0207E70A:18E7"), "10.231.7.2:6375");
        assert_eq!(proc_net_addr("00000000000000000000000001000000:0050"), "[::1]:80");
        let subnets = vec!["10.231.7.0/24 eth0".to_string()];
        assert!(in_subnets(Ipv4Addr::new(10, 231, 7, 200), &subnets));
        assert!(!in_subnets(Ipv4Addr::new(10, 231, 8, 200), &subnets));
        assert!(!in_subnets(Ipv4Addr::new(10, 231, 7, 200), &[]));
    }

    #[test]
    fn arp_frame_layout() {
        let f = arp_frame(1, [1, 2, 3, 4, 5, 6], Ipv4Addr::new(10, 0, 0, 9), [0; 6]);
        assert_eq!(f.len(), 28);
        assert_eq!(&f[6..8], &[0, 1]);
        assert_eq!(&f[8..14], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&f[14..18], &[10, 0, 0, 9]);
        assert_eq!(&f[24..28], &[10, 0, 0, 9]);
    }

    #[test]
    fn destination_of_ipv4_packets_only() {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 0, 0, 3]);
        assert_eq!(ipv4_destination(&p), Some(Ipv4Addr::new(10, 0, 0, 3)));
        p[0] = 0x60;
        assert_eq!(ipv4_destination(&p), None);
        assert_eq!(ipv4_destination(&[0x45; 10]), None);
    }
}
