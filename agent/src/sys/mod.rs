//! Every `libc`, `nix`, `/proc` and syscall use of the agent lives below this module. The rest of
//! the agent works with the plain types these functions return.

pub mod command;
pub mod fdstore;
pub mod fsmode;
pub mod host;
pub mod layout;
pub mod mem;
pub mod mounts;
pub mod net;
pub mod proc;
pub mod reaper;
pub mod rtnl;
pub mod signal;
pub mod spawn;
pub mod swrk;
pub mod uffd;
pub mod user;

/// open(2) flag: fail rather than follow a symlink in the last component.
pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds on the boot clock (CLOCK_BOOTTIME): monotonic, counts suspend, and the same for
/// every process of this boot (the agent and its fd store compare lease deadlines on it).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// This boot's id (/proc/sys/kernel/random/boot_id).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// True when the agent runs as root (can create PID namespaces and run CRIU).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sets `send`'s send buffer and `recv`'s receive buffer to `bytes` (SO_SNDBUFFORCE,
/// SO_RCVBUFFORCE: as root, past net.core.[rw]mem_max). Best effort: a socket that keeps its
/// default buffer still works, only slower.
pub fn force_socket_buffers(
    send: &impl std::os::fd::AsRawFd,
    recv: &impl std::os::fd::AsRawFd,
    bytes: usize,
) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (fd, opt) in
        [(send.as_raw_fd(), libc::SO_SNDBUFFORCE), (recv.as_raw_fd(), libc::SO_RCVBUFFORCE)]
    {
        // SAFETY: a valid socket, an int option and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}
