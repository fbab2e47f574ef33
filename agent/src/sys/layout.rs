//! Knowing that a process tree's memory layout (its mappings and their VmFlags) did not change
//! between two moments, without reading it again.
//!
//! CRIU reads `/proc/PID/smaps` for every task it dumps, and the kernel walks the page tables for
//! it (about 11 ms per GiB of resident memory): inside the freeze, the one part of a post-copy dump
//! that grows with the memory. The agent can read smaps before it stops the tree instead, if it
//! knows nothing changed the mappings until the tree stopped. Everything that does (mmap, munmap,
//! mprotect, mremap, brk, mlock, madvise, mseal, userfaultfd registration, exec, a stack growing)
//! takes the task's `mmap_lock`, except some `madvise` calls that need only the mapping's own lock
//! (they change pages, not flags, and are counted anyway). So a [`Watch`] counts, per thread, the
//! `mmap_lock:mmap_lock_acquire_returned` and `syscalls:sys_enter_madvise` tracepoints (perf
//! counters, no BPF); if none fired, the threads are the same and all of them are stopped (or
//! zombies), the layout read after [`start`] is the layout at the stop. Anything else, and the
//! caller reads smaps again.

use std::collections::BTreeSet;
use std::io::{Error, ErrorKind, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// The two tracepoints a [`Watch`] counts, by name under tracefs' `events/`.
const TRACEPOINTS: [&str; 2] =
    ["mmap_lock/mmap_lock_acquire_returned", "syscalls/sys_enter_madvise"];

/// More threads than this and the tree is read again in the freeze (two descriptors a thread).
pub const MAX_THREADS: usize = 512;

/// The first 64 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0), all a counter needs.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0 `disabled`, bit 1 `inherit`, ...
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_COUNT_SW_DUMMY: u64 = 9;
/// `perf_event_attr.inherit` (bit 1 of the flags word).
const ATTR_INHERIT: u64 = 1 << 1;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// Counters on every thread of a set of processes, opened by [`start`].
pub struct Watch {
    /// (pid, tid) of every thread when the counting began.
    threads: BTreeSet<(i32, i32)>,
    counters: Vec<OwnedFd>,
}

/// Starts counting for every thread of `pids`. Fails when the tracepoints are not available
/// (no tracefs, a kernel without them), a process is gone, or there are too many threads.
pub fn start(pids: &[i32]) -> Result<Watch> {
    let ids = tracepoint_ids().map_err(|e| Error::new(ErrorKind::Unsupported, e.clone()))?;
    let threads = threads_of(pids)?;
    if threads.len() > MAX_THREADS {
        return Err(Error::other(format!(
            "{} threads, more than the {MAX_THREADS} watched",
            threads.len()
        )));
    }
    let mut counters = Vec::with_capacity(threads.len() * ids.len());
    for &(pid, tid) in &threads {
        // A zombie thread (an exited child not yet reaped, a thread-group leader that called
        // pthread_exit) has let go of the address space: nothing to count, and no counter opens.
        if dead(super::proc::task_state(pid, tid)?) {
            continue;
        }
        for &id in ids {
            counters.push(open_counter(id, tid)?);
        }
    }
    Ok(Watch { threads, counters })
}

/// Closing the counters unregisters the tracepoints once the last one goes, which waits for RCU
/// grace periods and patches kernel text: tens of milliseconds here, and a CRIU started meanwhile
/// took that much longer to dump. So they are closed on a thread of their own.
impl Drop for Watch {
    fn drop(&mut self) {
        let counters = std::mem::take(&mut self.counters);
        let close = move || drop(counters);
        if let Err(e) = std::thread::Builder::new().name("layout-watch-close".into()).spawn(close) {
            tracing::warn!("cannot close the layout counters on a thread of their own: {e}");
        }
    }
}

impl Watch {
    /// Why the layout of `pids` may differ from what it was when counting began, or `None` when
    /// it cannot: the same processes and threads, every one of them stopped or a zombie (so none
    /// can change it any more), and no tracepoint fired.
    pub fn changed(&self, pids: &[i32]) -> Result<Option<String>> {
        let now = threads_of(pids)?;
        if now != self.threads {
            let new = now.difference(&self.threads).count();
            let gone = self.threads.difference(&now).count();
            return Ok(Some(format!("{new} thread(s) appeared and {gone} went")));
        }
        for &(pid, tid) in &now {
            let state = super::proc::task_state(pid, tid)?;
            if !matches!(state, 'T' | 't') && !dead(state) {
                return Ok(Some(format!("thread {tid} of pid {pid} is not stopped ({state})")));
            }
        }
        let mut events = 0u64;
        for fd in &self.counters {
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes into a buffer we own from a perf counter we own.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n != 8 {
                return Err(Error::last_os_error());
            }
            events += u64::from_ne_bytes(buf);
        }
        Ok((events > 0).then(|| format!("{events} mmap_lock acquisition(s) or madvise call(s)")))
    }
}

/// A zombie or dead task: it can no longer change any address space.
fn dead(state: char) -> bool {
    matches!(state, 'Z' | 'X')
}

fn threads_of(pids: &[i32]) -> Result<BTreeSet<(i32, i32)>> {
    let mut all = BTreeSet::new();
    for &pid in pids {
        for tid in super::proc::threads(pid)? {
            all.insert((pid, tid));
        }
    }
    Ok(all)
}

fn open_counter(id: u64, tid: i32) -> Result<OwnedFd> {
    open_event(
        &PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            config: id,
            // Threads the thread starts are counted too, once they exit; live ones are new threads.
            flags: ATTR_INHERIT,
            ..Default::default()
        },
        tid,
    )
}

/// A perf event that counts nothing (`PERF_COUNT_SW_DUMMY`), attached to this process. While any
/// task-attached perf event is open, the kernel keeps its `perf_sched_events` key on, and CRIU's
/// hardware breakpoints (task perf events themselves) are set in 0.1 ms instead of the 9-20 ms
/// that switching the key on costs under this machine's hypervisor (docs/migration.md, "Known
/// limits"). A [`Watch`]'s counters do that already; this is for a dump without one.
pub fn keep_perf_switched_on() -> Result<OwnedFd> {
    open_event(
        &PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            config: PERF_COUNT_SW_DUMMY,
            ..Default::default()
        },
        std::process::id() as i32,
    )
}

/// perf_event_open for one thread, on any CPU, counting only (no sampling, no ring buffer).
fn open_event(attr: &PerfEventAttr, tid: i32) -> Result<OwnedFd> {
    let attr = PerfEventAttr {
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        sample_period: 0,
        ..*attr
    };
    // SAFETY: perf_event_open(attr, pid, cpu = -1 (any), group_fd = -1, flags) with an attr that
    // outlives the call; the result is a fresh descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            tid,
            -1i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = Error::last_os_error();
        return Err(Error::new(e.kind(), format!("perf_event_open for thread {tid}: {e}")));
    }
    // SAFETY: a descriptor perf_event_open just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The tracepoints' ids, read from tracefs (mounted at /sys/kernel/tracing if it is nowhere).
fn tracepoint_ids() -> std::result::Result<&'static [u64; 2], &'static String> {
    static IDS: OnceLock<std::result::Result<[u64; 2], String>> = OnceLock::new();
    IDS.get_or_init(|| {
        let roots = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
        let read = || -> Option<[u64; 2]> {
            roots.iter().find_map(|root| {
                let id = |tp: &str| -> Option<u64> {
                    std::fs::read_to_string(format!("{root}/events/{tp}/id"))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                };
                Some([id(TRACEPOINTS[0])?, id(TRACEPOINTS[1])?])
            })
        };
        if let Some(ids) = read() {
            return Ok(ids);
        }
        let mounted = nix::mount::mount(
            Some("tracefs"),
            roots[0],
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        read().ok_or_else(|| match mounted {
            Err(e) => format!(
                "no tracefs with the {TRACEPOINTS:?} tracepoints (mounting one on {}: {e})",
                roots[0]
            ),
            Ok(()) => format!("the kernel has no {TRACEPOINTS:?} tracepoints"),
        })
    })
    .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};

    /// Debian's python, not whatever `python3` is first on PATH: a version manager's shim is a
    /// shell script whose own children (zombies for a moment) and startup would be seen as well.
    const PYTHON: &str = "/usr/bin/python3";

    /// A python child that runs `body` once per line it reads; stopped with SIGSTOP by the test.
    fn child(body: &str) -> std::process::Child {
        let prog = format!(
            "import mmap, sys\nm = mmap.mmap(-1, 1 << 20)\nprint('up', flush=True)\n\
             for line in sys.stdin:\n    {body}\n    print('done', flush=True)\n"
        );
        Command::new(PYTHON)
            .args(["-c", &prog])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect(PYTHON)
    }

    /// Waits until `pid` sits in a read(2): whatever it did before (printing its line, the
    /// interpreter's own allocations) is over, and it stays quiet until it is written to.
    fn blocked_in_read(pid: i32) {
        for _ in 0..1000 {
            let nr = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            if nr.split_whitespace().next().and_then(|n| n.parse().ok()) == Some(libc::SYS_read)
                && crate::sys::proc::task_state(pid, pid).ok() == Some('S')
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("pid {pid} never blocked in read(2)");
    }

    fn step(c: &mut std::process::Child, out: &mut impl BufRead) {
        writeln!(c.stdin.as_mut().unwrap()).unwrap();
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "done");
    }

    fn stop(pid: i32) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP).unwrap();
        for _ in 0..200 {
            if crate::sys::proc::task_state(pid, pid).unwrap() == 'T' {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("pid {pid} did not stop");
    }

    #[test]
    fn a_quiet_stopped_process_has_not_changed_and_an_madvise_or_mmap_is_seen() {
        // Quiet: stopped while blocked reading stdin. The others do one thing first.
        for (body, quiet) in [
            (None, true),
            (Some("m.madvise(mmap.MADV_DONTFORK)"), false),
            (Some("n = mmap.mmap(-1, 1 << 16)"), false),
        ] {
            let mut c = child(body.unwrap_or("pass"));
            let pid = c.id() as i32;
            let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            blocked_in_read(pid);
            let w = start(&[pid]).expect("watch (needs root: perf tracepoint counters)");
            if body.is_some() {
                step(&mut c, &mut out);
                blocked_in_read(pid);
            }
            stop(pid);
            let verdict = w.changed(&[pid]).unwrap();
            assert_eq!(verdict.is_none(), quiet, "{body:?}: {verdict:?}");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn a_zombie_child_is_not_watched_and_does_not_stand_in_the_way() {
        // The parent waits for its child's exit without reaping it (WNOWAIT), says its pid and
        // blocks reading stdin: a zombie beside a quiet parent. At end of input it reaps and goes.
        let mut c = Command::new(PYTHON)
            .args([
                "-c",
                "import os, sys\n\
                 kid = os.fork()\n\
                 if kid == 0: os._exit(0)\n\
                 os.waitid(os.P_PID, kid, os.WEXITED | os.WNOWAIT)\n\
                 print(kid, flush=True)\n\
                 sys.stdin.read()\n\
                 os.waitpid(kid, 0)",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect(PYTHON);
        let parent = c.id() as i32;
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let zombie: i32 = line.trim().parse().expect("the child's pid");
        assert_eq!(crate::sys::proc::task_state(zombie, zombie).unwrap(), 'Z');
        blocked_in_read(parent);
        let w = start(&[parent, zombie]).expect("watch (needs root: perf tracepoint counters)");
        assert_eq!(w.counters.len(), 2, "the parent's two counters, none for the zombie");
        stop(parent);
        assert_eq!(w.changed(&[parent, zombie]).unwrap(), None);
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(parent), nix::sys::signal::SIGCONT);
        drop(c.stdin.take());
        let _ = c.wait();
    }

    #[test]
    fn the_do_nothing_event_opens_on_this_process_and_counts_nothing() {
        let fd = keep_perf_switched_on().expect("perf_event_open (needs root or perf access)");
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a buffer we own from a perf event we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(buf), 0);
    }

    #[test]
    fn a_running_process_is_not_taken_as_unchanged() {
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = c.id() as i32;
        let w = start(&[pid]).expect("watch (needs root: perf tracepoint counters)");
        let verdict = w.changed(&[pid]).unwrap();
        assert!(verdict.unwrap().contains("not stopped"));
        let _ = c.kill();
        let _ = c.wait();
    }
}
