//! Starting a workload: `clone(CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS)` (with root) straight
//! into `ferry-init`, which becomes PID 1 of the new namespaces and starts the workload's program.
//! The IPC namespace is what lets CRIU move System V shared memory (PostgreSQL always attaches a
//! segment): it dumps such memory only as part of an IPC namespace of the workload's own.
//!
//! The mount namespace is a copy of the agent's, made private (nothing the workload mounts
//! reaches the node, nothing the node mounts later reaches the workload), with two mounts of its
//! own made before ferry-init runs: a procfs of the workload's PID namespace on /proc (it sees its
//! own processes only) and a new devpts instance on /dev/pts (its pseudo-terminals are numbered
//! from 0 in it, and /dev/ptmx, which the kernel resolves through the `pts` directory beside it,
//! opens there). CRIU must recreate a pty with its number on the target, which the node's shared
//! devpts could not promise (the source's frozen original still holds it: "Unable to open
//! dev/ptmx with specified index 0"). The node's namespace files (nsfs mounts, /run/netns/NAME)
//! are left out. The node's mounts are dumped as external (sys::mounts).
//!
//! The agent is multi-threaded, so the child between `clone` and `execve` only makes raw,
//! async-signal-safe syscalls on data prepared before the clone: no allocation, no locks.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::sync::oneshot;

use super::reaper::{ExitStatus, Reaper};

pub struct SpawnRequest<'a> {
    pub init: &'a Path,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// A PID namespace, an IPC namespace and a mount namespace of its own (with its own /proc
    /// and /dev/pts).
    pub new_pid_ns: bool,
    /// Run the workload's program as this user and group (None: as the agent). ferry-init, PID 1
    /// of its namespace, stays root and drops them in the program's process only.
    pub creds: Option<&'a super::user::Credentials>,
    /// A network namespace of its own (sys::net), entered before ferry-init runs; None: the
    /// agent's (the node's network).
    pub netns: Option<RawFd>,
    /// Write ends of the pipes that become the workload's stdout and stderr.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug)]
pub struct Spawned {
    /// Host pid of ferry-init.
    pub pid: i32,
    /// Pid of the workload's main process as ferry-init sees it (inside the namespace).
    pub main_ns_pid: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot execute {program:?}: {source}")]
    Exec { program: String, source: std::io::Error },
    #[error("cannot execute ferry-init at {path:?}: {source}")]
    Init { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot enter working directory {path:?}: {source}")]
    Cwd { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot switch to uid {uid}, gid {gid}: {source}")]
    Creds { uid: u32, gid: u32, source: std::io::Error },
    #[error("cannot enter the workload's network namespace: {0}")]
    Netns(std::io::Error),
    #[error("cannot {what} in the workload's mount namespace: {source}")]
    Mount { what: &'static str, source: std::io::Error },
    #[error("ferry-init ended before starting the workload ({status:?})")]
    InitDied { status: Option<ExitStatus> },
    #[error("argument, environment entry or path contains a NUL byte")]
    Nul,
    #[error("clone failed: {0}")]
    Clone(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// File descriptor numbers the workload's init sees.
const STATUS_FD: RawFd = 3;

pub fn spawn(
    req: SpawnRequest<'_>,
    reaper: &Reaper,
) -> Result<(Spawned, oneshot::Receiver<ExitStatus>), SpawnError> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| SpawnError::Nul);
    let init_path = c(req.init.as_os_str().as_bytes())?;
    // ferry-init takes the workload's credentials with its status fd (it stays root itself).
    let first = match req.creds {
        None => STATUS_FD.to_string(),
        Some(cr) => {
            let groups: Vec<String> = cr.groups.iter().map(u32::to_string).collect();
            format!("{STATUS_FD}:{}:{}:{}", cr.uid, cr.gid, groups.join(","))
        }
    };
    let mut argv = vec![init_path.clone(), c(first.as_bytes())?];
    for a in req.argv {
        argv.push(c(a.as_bytes())?);
    }
    let envp: Vec<CString> =
        req.env.iter().map(|(k, v)| c(format!("{k}={v}").as_bytes())).collect::<Result<_, _>>()?;
    let cwd = c(req.cwd.as_os_str().as_bytes())?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());

    let (status_r, status_w) = pipe_cloexec()?;
    let devnull = std::fs::File::open("/dev/null")?;

    let mut flags = libc::SIGCHLD as libc::c_ulong;
    if req.new_pid_ns {
        flags |= (libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWNS) as libc::c_ulong;
    }
    // The node's namespace files mounted in the agent's namespace (sys::mounts::nsfs_points),
    // left out of the workload's.
    let nsfs: Vec<CString> = if req.new_pid_ns {
        super::mounts::nsfs_points()?
            .iter()
            .map(|p| c(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut nsfs_ptrs: Vec<*const libc::c_char> = nsfs.iter().map(|p| p.as_ptr()).collect();
    nsfs_ptrs.push(std::ptr::null());
    let own_mounts = req.new_pid_ns.then_some(nsfs_ptrs.as_ptr());
    let sources = [devnull.as_raw_fd(), req.stdout.as_raw_fd(), req.stderr.as_raw_fd(), status_w];

    // SAFETY: clone without CLONE_VM and with a NULL stack behaves like fork(). The child only
    // makes raw syscalls on memory prepared above and ends in execve or _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: closing fds we own.
        unsafe {
            libc::close(status_r);
            libc::close(status_w);
        }
        return Err(SpawnError::Clone(err));
    }
    if pid == 0 {
        // SAFETY: in the child; see above.
        unsafe {
            child(
                &sources,
                req.netns,
                own_mounts,
                cwd.as_ptr(),
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            )
        }
    }
    let pid = pid as i32;
    let exit = reaper.watch(pid);
    // SAFETY: both fds are ours; the child holds its own copies.
    let mut status = unsafe {
        libc::close(status_w);
        std::fs::File::from_raw_fd(status_r)
    };
    drop(req.stdout);
    drop(req.stderr);
    drop(devnull);

    let mut line = String::new();
    status.read_to_string(&mut line)?;
    let mut words = line.split_whitespace();
    let (what, num) = (words.next().unwrap_or(""), words.next().and_then(|n| n.parse().ok()));
    let os = |n: Option<i32>| std::io::Error::from_raw_os_error(n.unwrap_or(0));
    match what {
        "started" if num.is_some() => Ok((Spawned { pid, main_ns_pid: num.unwrap_or(0) }, exit)),
        "error" => Err(SpawnError::Exec { program: req.argv[0].clone(), source: os(num) }),
        "init" => Err(SpawnError::Init { path: req.init.to_path_buf(), source: os(num) }),
        "cwd" => Err(SpawnError::Cwd { path: req.cwd.to_path_buf(), source: os(num) }),
        "netns" => Err(SpawnError::Netns(os(num))),
        "private" => Err(SpawnError::Mount { what: "make the mounts private", source: os(num) }),
        "proc" => Err(SpawnError::Mount { what: "mount a procfs on /proc", source: os(num) }),
        "devpts" => Err(SpawnError::Mount { what: "mount a devpts on /dev/pts", source: os(num) }),
        "devnull" => Err(SpawnError::Mount { what: "open /dev/null", source: os(num) }),
        "creds" => {
            let (uid, gid) = req.creds.map(|c| (c.uid, c.gid)).unwrap_or_default();
            Err(SpawnError::Creds { uid, gid, source: os(num) })
        }
        _ => {
            let mut exit = exit;
            let status = (0..20).find_map(|_| {
                reaper.reap_all();
                std::thread::sleep(std::time::Duration::from_millis(5));
                exit.try_recv().ok()
            });
            Err(SpawnError::InitDied { status })
        }
    }
}

fn pipe_cloexec() -> std::io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// A pipe whose both ends close on exec; the caller passes one end on explicitly.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe_cloexec()?;
    // SAFETY: freshly created fds, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

/// The child side of the clone: stdio and the status fd into place, the mount namespace's own
/// /proc and /dev/pts (`own_mounts`: with the NULL-terminated mount points to detach), then exec
/// ferry-init.
///
/// # Safety
/// Must only run in the freshly cloned child.
unsafe fn child(
    sources: &[RawFd; 4],
    netns: Option<RawFd>,
    own_mounts: Option<*const *const libc::c_char>,
    cwd: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    // SAFETY: raw syscalls only (async-signal-safe), on fds and strings prepared by the parent.
    unsafe {
        // Move every source above the target range first, so dup2 into 0..=3 never clobbers one.
        let mut high = [0; 4];
        for (i, fd) in sources.iter().enumerate() {
            high[i] = libc::fcntl(*fd, libc::F_DUPFD, 10);
            if high[i] < 0 {
                libc::_exit(126);
            }
        }
        let netns = match netns {
            Some(fd) => {
                let high = libc::fcntl(fd, libc::F_DUPFD, 10);
                if high < 0 {
                    libc::_exit(126);
                }
                high
            }
            None => -1,
        };
        for (target, fd) in high.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                libc::_exit(126);
            }
        }
        if netns >= 0 && libc::setns(netns, libc::CLONE_NEWNET) != 0 {
            report(b"netns ", *libc::__errno_location());
            libc::_exit(126);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        // Signals blocked by the agent's thread must not leak into the workload.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if let Some(detach) = own_mounts {
            own_proc_and_devpts(detach);
            // Its stdin again, from this namespace: a file opened in the agent's is on a mount
            // the workload's namespace does not have (CRIU: "Can't lookup mount=N for fd=0").
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            if null < 0 || libc::dup2(null, 0) < 0 {
                report(b"devnull ", *libc::__errno_location());
                libc::_exit(126);
            }
            libc::close(null);
        }
        if libc::chdir(cwd) != 0 {
            report(b"cwd ", *libc::__errno_location());
            libc::_exit(126);
        }
        libc::execve(*argv, argv, envp);
        report(b"init ", *libc::__errno_location());
        libc::_exit(127)
    }
}

/// In the child's new mount namespace: every mount private, the mount points in `detach` (a
/// NULL-terminated array) and the node's /proc and devpts (with whatever is mounted below or
/// under them) detached, and the workload's own /proc and devpts mounted. Reports and exits on
/// failure.
///
/// # Safety
/// Async-signal-safe; only called in the child, in a new mount and PID namespace.
unsafe fn own_proc_and_devpts(detach: *const *const libc::c_char) {
    // SAFETY: raw syscalls on static strings.
    unsafe {
        let none = std::ptr::null::<libc::c_char>();
        let fail = |what: &[u8]| {
            report(what, *libc::__errno_location());
            libc::_exit(126);
        };
        if libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
            != 0
        {
            fail(b"private ");
        }
        // Best effort: one may be gone already.
        let mut p = detach;
        while !(*p).is_null() {
            libc::umount2(*p, libc::MNT_DETACH);
            p = p.add(1);
        }
        // Every mount stacked on the node's /proc and /dev/pts (this machine has two devpts on
        // /dev/pts): detached with what is mounted below them, until none is left.
        for dir in [c"/proc", c"/dev/pts"] {
            while libc::umount2(dir.as_ptr(), libc::MNT_DETACH) == 0 {}
        }
        // The procfs takes the PID namespace of the process mounting it: this one is its PID 1.
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            fail(b"proc ");
        }
        let opts = c"newinstance,ptmxmode=0666,mode=0620,gid=5";
        if libc::mount(
            c"devpts".as_ptr(),
            c"/dev/pts".as_ptr(),
            c"devpts".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            opts.as_ptr().cast(),
        ) != 0
        {
            fail(b"devpts ");
        }
    }
}

/// Writes `prefix` and a decimal number to the status fd without allocating.
///
/// # Safety
/// Async-signal-safe; only called in the child.
unsafe fn report(prefix: &[u8], n: i32) {
    let mut buf = [0u8; 32];
    let mut len = 0;
    for b in prefix {
        buf[len] = *b;
        len += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = n.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[len] = digits[d];
        len += 1;
    }
    buf[len] = b'\n';
    len += 1;
    // SAFETY: writing our own stack buffer to an fd.
    unsafe { libc::write(STATUS_FD, buf.as_ptr().cast(), len) };
}
