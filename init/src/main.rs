//! `ferry-init`: PID 1 of a ferry workload's PID namespace.
//!
//! Usage: `ferry-init STATUS_FD PROGRAM [ARGS...]`
//!
//! It starts PROGRAM (looked up in `PATH`) with the environment and working directory it was given,
//! reaps every process of the namespace, forwards the signals it receives to all of them, and lives
//! as long as any of them does: a workload that daemonizes (double fork) stays alive and tracked.
//! It exits with the status of the last process to end: its exit code, or 128 + the signal number
//! when that process was killed by a signal.
//!
//! STATUS_FD (or -1) receives one line, then is closed: `started NSPID` once PROGRAM executes, or
//! `error ERRNO` when it could not be executed (init then exits 127).
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
    let status_fd: i32 = args[1].to_str().and_then(|s| s.parse().ok()).unwrap_or(-1);
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
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            let e = errno().to_ne_bytes();
            libc::write(errpipe[1], e.as_ptr().cast(), e.len());
            libc::_exit(127);
        }
        libc::close(errpipe[1]);
        let mut e = [0u8; 4];
        let n = libc::read(errpipe[0], e.as_mut_ptr().cast(), e.len());
        libc::close(errpipe[0]);
        if n == 4 {
            let mut st = 0;
            libc::waitpid(main_pid, &mut st, 0);
            report(status_fd, &format!("error {}", i32::from_ne_bytes(e)));
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
