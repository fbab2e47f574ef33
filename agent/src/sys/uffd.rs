//! Holding another process's userfaultfds.
//!
//! A post-copy restore hands the restored tasks' userfaultfds to `criu lazy-pages`, which fills
//! their memory as it arrives. If that daemon dies, the kernel releases the userfaultfds and the
//! tasks' missing pages silently become zero pages: the workload would run on wrong memory. The
//! agent therefore keeps duplicates of those descriptors (`pidfd_getfd`): while it holds them, a
//! task touching a missing page waits (killably) instead, until the agent has killed it.

use std::os::fd::{FromRawFd, OwnedFd};

/// The link text of a userfaultfd in `/proc/PID/fd`.
const UFFD_LINK: &str = "anon_inode:[userfaultfd]";

/// The numbers of the userfaultfds `pid` holds open.
pub fn userfaultfds(pid: i32) -> std::io::Result<Vec<i32>> {
    let mut targets = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else { continue };
        if link.as_os_str() == UFFD_LINK {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                targets.push(n);
            }
        }
    }
    Ok(targets)
}

/// Duplicates of every userfaultfd `pid` holds open (none if it holds none).
pub fn dup_userfaultfds(pid: i32) -> std::io::Result<Vec<OwnedFd>> {
    let targets = userfaultfds(pid)?;
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut out = Vec::with_capacity(targets.len());
    for fd in targets {
        // SAFETY: pidfd_getfd takes a pidfd, the target's fd number and flags, and returns a new
        // fd (close-on-exec) or -1.
        let dup = unsafe {
            libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0u32)
        };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        out.push(unsafe { OwnedFd::from_raw_fd(dup as i32) });
    }
    Ok(out)
}

/// The system's page size, in bytes.
pub fn page_size() -> u64 {
    procfs::page_size()
}
