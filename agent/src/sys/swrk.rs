//! The transport of CRIU's RPC: `criu swrk FD` with one end of a SOCK_SEQPACKET socketpair.
//! Each datagram is one protobuf message. Extra fds (the images dir, inherited pipes) are handed
//! to the criu child without CLOEXEC, in that child only.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::oneshot;

use super::reaper::{ExitStatus, Reaper};

/// Largest CRIU response accepted.
const MAX_MSG: usize = 1 << 20;

pub struct Swrk {
    sock: OwnedFd,
    pub pid: i32,
    exit: Option<oneshot::Receiver<ExitStatus>>,
}

impl Swrk {
    /// Starts `criu swrk` with `keep` fds inherited (same numbers in the child) and `env` added to
    /// its environment; in the mount namespace `mnt_ns` when given (see [`foreign_mount_ns`]).
    pub fn start(
        criu: &Path,
        reaper: &Reaper,
        keep: &[RawFd],
        env: &[(&str, &Path)],
        mnt_ns: Option<&OwnedFd>,
    ) -> std::io::Result<Swrk> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fds owned by nobody else.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let child_fd = theirs.as_raw_fd();
        let mut inherit: Vec<RawFd> = keep.to_vec();
        inherit.push(child_fd);
        let mut cmd = Command::new(criu);
        cmd.arg("swrk").arg(child_fd.to_string()).envs(env.iter().copied());
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        inherit_on_exec(&mut cmd, inherit);
        if let Some(ns) = mnt_ns {
            let fd = ns.as_raw_fd();
            // SAFETY: setns is a raw syscall on an fd opened before the fork; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        let exit = reaper.watch(pid);
        // Never `child.wait()`: the reaper owns waiting.
        drop(child);
        drop(theirs);
        Ok(Swrk { sock: ours, pid, exit: Some(exit) })
    }

    pub fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        // SAFETY: sending from a buffer we own.
        let n = unsafe {
            libc::send(self.sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram; an empty result means criu closed its end.
    pub fn recv(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; MAX_MSG];
        loop {
            // SAFETY: receiving into a buffer we own, of the length given.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(std::io::Error::other(format!("criu sent a {n}-byte message")));
            }
            buf.truncate(n);
            return Ok(buf);
        }
    }

    /// Closes our end and waits (at most `timeout`) for criu to exit.
    pub fn finish(mut self, timeout: Duration) -> Option<ExitStatus> {
        let exit = self.exit.take()?;
        drop(self);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(exit.blocking_recv().ok());
        });
        rx.recv_timeout(timeout).ok().flatten()
    }
}

/// Makes `cmd`'s child inherit `fds` (same numbers): their close-on-exec flag is cleared in the
/// child only, between fork and exec.
pub fn inherit_on_exec(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the hook runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                let flags = libc::fcntl(*fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The mount namespace of `pid`, opened to be joined, when it is not this process's own. Every
/// workload has one of its own now (sys::spawn), which CRIU dumps from the agent's namespace
/// (engine::criu); but a workload an older agent started shares that agent's namespace, and a
/// restarted agent lives in a new one: CRIU must dump such a workload from the namespace it
/// lives in (from any other, it takes the workload for one with a mount namespace of its own and
/// fails: "doesn't have a proper root mount"). sys::mounts::has_own_proc tells the two apart.
pub fn foreign_mount_ns(pid: i32) -> std::io::Result<Option<OwnedFd>> {
    use std::os::unix::fs::MetadataExt;
    let theirs_path = format!("/proc/{pid}/ns/mnt");
    let ours = std::fs::metadata("/proc/self/ns/mnt")?;
    let theirs = std::fs::metadata(&theirs_path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{theirs_path}: {e}")))?;
    if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
        return Ok(None);
    }
    let f = std::fs::File::open(&theirs_path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{theirs_path}: {e}")))?;
    Ok(Some(f.into()))
}

/// Opens a directory as an fd to hand to criu (closed on exec elsewhere).
pub fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_dir() {
        return Err(std::io::Error::other(format!("{path:?} is not a directory")));
    }
    Ok(f.into())
}

/// The inode number of an fd (e.g. a pipe end), for CRIU's `pipe:[INODE]` keys.
pub fn inode(fd: RawFd) -> std::io::Result<u64> {
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Waits until `fd` is readable (or its writers closed it), at most `timeout`. False on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> std::io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n > 0);
    }
}
