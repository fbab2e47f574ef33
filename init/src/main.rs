//! `ferry-init`: PID 1 of a ferry workload's PID namespace.
//!
//! Usage: `ferry-init STATUS_FD[:UID:GID:GROUPS] PROGRAM [ARGS...]`
//!
//! It starts PROGRAM (looked up in `PATH`) with the environment and working directory it was given,
//! reaps every process of the namespace, forwards the signals it receives to all of them, and lives
//! as long as any of them does: a workload that daemonizes (double fork) stays alive and tracked.
//! It exits with the status of the last process to end: its exit code, or 128 + the signal number
//! when that process was killed by a signal.
//!
//! STATUS_FD (or -1) receives one line, then is closed: `started NSPID` once PROGRAM executes, or
//! `error ERRNO` when it could not be executed, `creds ERRNO` when the credentials could not be
//! taken, `cwd ERRNO` when the working directory is not usable with them (init then exits 127).
//!
//! With `:UID:GID:GROUPS` (GROUPS comma-separated, possibly empty), PROGRAM runs with those
//! supplementary groups, group and user; ferry-init itself stays root. CRIU dumps a PID namespace
//! through its init, which must be able to mount a /proc of its own namespace: an unprivileged
//! init cannot ("can't dump unprivileged task whose /proc doesn't belong to it").
//!
//! This executable is mapped by every workload, and CRIU requires each mapped executable to be
//! identical on the target of a migration. Keep it small, dependency-free and rarely changed.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStringExt;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.len() < 3 {
        eprintln!("usage: ferry-init STATUS_FD PROGRAM [ARGS...]");
        std::process::exit(64);
    }
    let first = args[1].to_str().unwrap_or("");
    let mut fields = first.split(':');
    let status_fd: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
    let creds = match (fields.next(), fields.next(), fields.next()) {
        (Some(u), Some(g), Some(gs)) => {
            let ids: Option<Vec<libc::gid_t>> =
                gs.split(',').filter(|x| !x.is_empty()).map(|x| x.parse().ok()).collect();
            match (u.parse::<libc::uid_t>(), g.parse::<libc::gid_t>(), ids) {
                (Ok(u), Ok(g), Some(ids)) => Some((u, g, ids)),
                _ => {
                    eprintln!("ferry-init: bad credentials {first:?}");
                    std::process::exit(64);
                }
            }
        }
        _ => None,
    };
    let argv: Vec<CString> =
        args[2..].iter().map(|a| CString::new(a.clone().into_vec()).unwrap_or_default()).collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    // SAFETY: plain syscalls on memory we own; this process is single-threaded.
    unsafe {
        // Every signal back to its default action (a parent may have ignored SIGPIPE, which would
        // be inherited across exec and would also hide signals from sigwaitinfo).
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::setsid();

        let mut errpipe = [0i32; 2];
        if libc::pipe2(errpipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            report(status_fd, &format!("error {}", errno()));
            std::process::exit(127);
        }
        let main_pid = libc::fork();
        if main_pid < 0 {
            report(status_fd, &format!("error {}", errno()));
            std::process::exit(127);
        }
        if main_pid == 0 {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if status_fd >= 0 {
                libc::close(status_fd);
            }
            let fail = |stage: u8| {
                let e = errno().to_ne_bytes();
                let msg = [stage, e[0], e[1], e[2], e[3]];
                libc::write(errpipe[1], msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            };
            if let Some((uid, gid, groups)) = &creds {
                // Groups first, the user last: each step needs the privilege the next drops.
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    fail(b'c');
                }
                // The working directory was entered as root: it must be usable as the user.
                if libc::chdir(c".".as_ptr()) != 0 {
                    fail(b'd');
                }
            }
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            fail(b'e');
        }
        libc::close(errpipe[1]);
        let mut e = [0u8; 5];
        let n = libc::read(errpipe[0], e.as_mut_ptr().cast(), e.len());
        libc::close(errpipe[0]);
        if n == 5 {
            let mut st = 0;
            libc::waitpid(main_pid, &mut st, 0);
            let what = match e[0] {
                b'c' => "creds",
                b'd' => "cwd",
                _ => "error",
            };
            report(status_fd, &format!("{what} {}", i32::from_ne_bytes([e[1], e[2], e[3], e[4]])));
            std::process::exit(127);
        }
        report(status_fd, &format!("started {main_pid}"));

        let pid1 = libc::getpid() == 1;
        let mut last_status = 0;
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&all, &mut info);
            if sig < 0 {
                continue;
            }
            match sig {
                libc::SIGCHLD => loop {
                    let mut st = 0;
                    let pid = libc::waitpid(-1, &mut st, libc::WNOHANG);
                    if pid > 0 {
                        if libc::WIFEXITED(st) {
                            last_status = libc::WEXITSTATUS(st);
                        } else if libc::WIFSIGNALED(st) {
                            last_status = 128 + libc::WTERMSIG(st);
                        }
                        continue;
                    }
                    if pid < 0 && errno() == libc::ECHILD {
                        std::process::exit(last_status);
                    }
                    break;
                },
                libc::SIGCONT | libc::SIGWINCH | libc::SIGURG => {}
                // As PID 1 of the namespace, -1 reaches every other process in it. Without a
                // namespace, -1 would reach the whole machine: forward to the main process only.
                _ if pid1 => {
                    libc::kill(-1, sig);
                }
                _ => {
                    libc::kill(main_pid, sig);
                }
            }
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Writes one line to the status fd and closes it, so that fd never outlives the start.
fn report(fd: i32, line: &str) {
    if fd < 0 {
        return;
    }
    // SAFETY: the fd was handed to us for exactly this use and is not used anywhere else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = writeln!(f, "{line}");
}
