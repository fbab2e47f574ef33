//! The few rtnetlink requests a workload's address needs on a migration's critical path (a link
//! up or down, a /32 route, a permanent neighbour, a proxy ARP entry), sent on a NETLINK_ROUTE
//! socket of the agent's namespace rather than by running `ip`: each `ip` is a fork and an exec,
//! 3-20 ms on a busy node, inside the downtime. Each request waits for the kernel's answer.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;
const NTF_PROXY: u8 = 0x08;

/// A NETLINK_ROUTE socket.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

/// The index of link `name` in the agent's namespace.
pub fn index(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| std::io::Error::other("NUL in name"))?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::other(format!(
            "no link {name}: {}",
            std::io::Error::last_os_error()
        ))),
        i => Ok(i),
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn rtmsg(dst_len: u8, protocol: u8, scope: u8, kind: u8) -> Vec<u8> {
    vec![libc::AF_INET as u8, dst_len, 0, 0, RT_TABLE_MAIN, protocol, scope, kind, 0, 0, 0, 0]
}

fn ndmsg(ifindex: u32, state: u16, flags: u8) -> Vec<u8> {
    let mut b = vec![libc::AF_INET as u8, 0, 0, 0];
    b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    b.extend_from_slice(&state.to_ne_bytes());
    b.extend_from_slice(&[flags, 0]);
    b
}

impl Rtnl {
    pub fn open() -> std::io::Result<Rtnl> {
        // SAFETY: a netlink socket; the fd is owned below.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        Ok(Rtnl { fd: unsafe { OwnedFd::from_raw_fd(fd) }, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement (or the kernel's error).
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> std::io::Result<()> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: zeroed sockaddr_nl addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: our buffer, a filled sockaddr_nl.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into our buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
                if len < 16 {
                    break;
                }
                if ty == NLMSG_ERROR && seq == self.seq && at + 20 <= n as usize {
                    let err = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                    return match err {
                        0 => Ok(()),
                        e => Err(std::io::Error::from_raw_os_error(-e)),
                    };
                }
                at += (len + 3) & !3;
            }
        }
    }

    /// Sets link `ifindex` up or down.
    pub fn link_up(&mut self, ifindex: u32, up: bool) -> std::io::Result<()> {
        let mut b = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        let flags = if up { libc::IFF_UP as u32 } else { 0 };
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &b)
    }

    /// `ip route replace ADDR/32 dev IFINDEX`.
    pub fn route_replace(&mut self, addr: Ipv4Addr, ifindex: u32) -> std::io::Result<()> {
        let mut b = rtmsg(32, RTPROT_BOOT, RT_SCOPE_LINK, RTN_UNICAST);
        attr(&mut b, RTA_DST, &addr.octets());
        attr(&mut b, RTA_OIF, &ifindex.to_ne_bytes());
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &b)
    }

    /// `ip route del ADDR/32` (whichever link it goes to).
    pub fn route_del(&mut self, addr: Ipv4Addr) -> std::io::Result<()> {
        let mut b = rtmsg(32, 0, RT_SCOPE_NOWHERE, 0);
        attr(&mut b, RTA_DST, &addr.octets());
        self.request(RTM_DELROUTE, 0, &b)
    }

    /// `ip neigh replace ADDR lladdr MAC dev IFINDEX nud permanent`.
    pub fn neigh_permanent(
        &mut self,
        addr: Ipv4Addr,
        mac: [u8; 6],
        ifindex: u32,
    ) -> std::io::Result<()> {
        let mut b = ndmsg(ifindex, NUD_PERMANENT, 0);
        attr(&mut b, NDA_DST, &addr.octets());
        attr(&mut b, NDA_LLADDR, &mac);
        self.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, &b)
    }

    /// `ip neigh replace proxy ADDR dev IFINDEX`, or `ip neigh del proxy ...` when `add` is false.
    pub fn proxy(&mut self, addr: Ipv4Addr, ifindex: u32, add: bool) -> std::io::Result<()> {
        let mut b = ndmsg(ifindex, NUD_PERMANENT, NTF_PROXY);
        attr(&mut b, NDA_DST, &addr.octets());
        if add {
            self.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, &b)
        } else {
            self.request(RTM_DELNEIGH, 0, &b)
        }
    }
}

/// "02:ab:..." as bytes.
pub fn parse_mac(s: &str) -> std::io::Result<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    parts.try_into().map_err(|_| std::io::Error::other(format!("bad hardware address {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_macs_parsed() {
        let mut b = Vec::new();
        attr(&mut b, RTA_DST, &[10, 0, 0, 1]);
        assert_eq!(b, [8, 0, 1, 0, 10, 0, 0, 1]);
        attr(&mut b, NDA_LLADDR, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(b.len(), 8 + 12);
        assert_eq!(parse_mac("02:0a:ff:00:01:02").unwrap(), [2, 10, 255, 0, 1, 2]);
        assert!(parse_mac("02:0a").is_err());
    }
}
