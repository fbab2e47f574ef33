//! `ferry up`'s supervisor. Each part of the cluster (the coordinator with its gateway, each
//! agent) runs in a process group of its own, so a terminal's Ctrl-C reaches `ferry up` alone;
//! a part that exits while the cluster runs is started again with the same arguments after a
//! delay (0.5 s, doubling to 10 s; back to 0.5 s once it had stayed up 30 s), and `ferry up`
//! says so on its stderr. `ferry up` is a child subreaper: a workload whose agent died becomes
//! its child, is reaped when it ends (no zombie), and is found by the teardown.
//!
//! Signals are taken synchronously: SIGTERM, SIGINT, SIGHUP and SIGCHLD are blocked in this
//! (single-threaded) process and waited for with `sigtimedwait`; each part starts with an
//! empty mask (set between fork and exec: std does not reset it, and a coordinator that
//! inherited it ignored SIGTERM). Only this module waits for children (`waitpid(-1)`), and only
//! while nothing else of `ferry up` runs a child of its own.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The delay before the first restart of a part.
pub const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The longest delay between restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// A part that stayed up this long starts over at [`FIRST_DELAY`] when it exits.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Delays between the restarts of one part.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// The delay before starting again a part that exited after running for `ran`.
    pub fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_AFTER {
            self.next = FIRST_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }
}

/// Builds a part's command for each start; the argument is true for a restart.
pub type MakeCommand = Box<dyn FnMut(bool) -> Command>;

/// One supervised process.
pub struct Part {
    pub name: String,
    log: PathBuf,
    make: MakeCommand,
    pid: Option<i32>,
    started: Instant,
    restart_at: Option<Instant>,
    backoff: Backoff,
    restarts: u32,
}

impl Part {
    /// The part's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    fn start(&mut self, restart: bool) -> anyhow::Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(restart)
            .truncate(!restart)
            .open(&self.log)
            .with_context(|| format!("cannot open {:?}", self.log))?;
        if restart {
            let _ = writeln!(log, "--- ferry up: restart {} of {} ---", self.restarts, self.name);
        }
        let mut cmd = (self.make)(restart);
        // SAFETY: the closure runs between fork and exec and calls only sigemptyset and
        // pthread_sigmask, which are async-signal-safe, on a set of its own.
        unsafe {
            cmd.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                match libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) {
                    0 => Ok(()),
                    e => Err(std::io::Error::from_raw_os_error(e)),
                }
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a terminal's Ctrl-C goes to `ferry up` only, which then
            // stops the parts in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        // Not waited for through `child`: the supervisor reaps every child with waitpid(-1).
        self.pid = Some(child.id() as i32);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }
}

/// A way out of [`Supervisor::supervise`]: the signal that asked `ferry up` to stop.
pub type Signal = i32;

/// The cluster's parts and the signals `ferry up` answers.
pub struct Supervisor {
    parts: Vec<Part>,
    mask: libc::sigset_t,
}

const SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD];

impl Supervisor {
    /// Blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD (taken by [`Supervisor::wait_signal`]) and
    /// makes this process a child subreaper. Call it before any thread or child is started.
    pub fn new() -> anyhow::Result<Supervisor> {
        // SAFETY: a zeroed sigset_t is valid storage for sigemptyset.
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset/sigaddset write only into the set we own.
        unsafe {
            libc::sigemptyset(&mut mask);
            for s in SIGNALS {
                libc::sigaddset(&mut mask, s);
            }
        }
        // SAFETY: a valid set; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("cannot block signals");
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot become a subreaper");
        }
        Ok(Supervisor { parts: Vec::new(), mask })
    }

    /// Starts a part; its output goes to `log` (appended to on restarts).
    pub fn start(&mut self, name: &str, log: PathBuf, make: MakeCommand) -> anyhow::Result<()> {
        let mut part = Part {
            name: name.to_string(),
            log,
            make,
            pid: None,
            started: Instant::now(),
            restart_at: None,
            backoff: Backoff::default(),
            restarts: 0,
        };
        part.start(false)?;
        self.parts.push(part);
        Ok(())
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Waits up to `timeout` for a signal; SIGTERM, SIGINT or SIGHUP is returned, SIGCHLD and
    /// the timeout give None.
    pub fn wait_signal(&self, timeout: Duration) -> Option<Signal> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a valid set and timespec; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(&self.mask, std::ptr::null_mut(), &ts) };
        (sig > 0 && sig != libc::SIGCHLD).then_some(sig)
    }

    /// Reaps every child that has ended (a part, or an orphan that came to this subreaper) and
    /// returns the parts among them, each with its pid and raw wait status.
    pub fn reap(&mut self) -> Vec<(usize, i32, i32)> {
        let mut ended = Vec::new();
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into our integer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return ended;
            }
            if let Some(i) = self.parts.iter().position(|p| p.pid == Some(pid)) {
                self.parts[i].pid = None;
                ended.push((i, pid, status));
            }
        }
    }

    /// Keeps the parts running until SIGTERM, SIGINT or SIGHUP, which it returns.
    pub fn supervise(&mut self) -> Signal {
        loop {
            let now = Instant::now();
            let due = self.parts.iter().filter_map(|p| p.restart_at).min();
            let timeout = due
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if let Some(sig) = self.wait_signal(timeout) {
                return sig;
            }
            let now = Instant::now();
            for (i, pid, status) in self.reap() {
                let part = &mut self.parts[i];
                let ran = now.duration_since(part.started);
                let delay = part.backoff.after_exit(ran);
                part.restart_at = Some(now + delay);
                eprintln!(
                    "ferry up: {} (pid {pid}) exited ({}) after {:.1} s; restarting it in {:.1} s",
                    part.name,
                    std::process::ExitStatus::from_raw(status),
                    ran.as_secs_f64(),
                    delay.as_secs_f64()
                );
            }
            for part in &mut self.parts {
                if !matches!(part.restart_at, Some(t) if t <= now) {
                    continue;
                }
                part.restarts += 1;
                match part.start(true) {
                    Ok(()) => eprintln!(
                        "ferry up: restarted {} (pid {}, restart {})",
                        part.name,
                        part.pid.unwrap_or(0),
                        part.restarts
                    ),
                    Err(e) => {
                        let delay = part.backoff.after_exit(Duration::ZERO);
                        part.restart_at = Some(now + delay);
                        eprintln!(
                            "ferry up: {e:#}; trying {} again in {:.1} s",
                            part.name,
                            delay.as_secs_f64()
                        );
                    }
                }
            }
        }
    }

    /// Stops everything, in order, and restarts nothing: each running part's descendants (the
    /// workloads of a live agent) are killed and the part is asked to stop (SIGTERM, the
    /// agents before the coordinator); then the processes `workloads` names (recorded by the
    /// agents, including those of an agent that was down) with their descendants; after 5 s a
    /// part still running is killed; last, anything left below `ferry up` (orphans of dead
    /// parts, which came to this subreaper) is killed and reaped.
    pub fn teardown(&mut self, workloads: impl Fn() -> Vec<i32>) {
        for part in self.parts.iter().rev() {
            let Some(pid) = part.pid else { continue };
            for d in crate::bench::descendants(pid) {
                kill(d, libc::SIGKILL);
            }
            kill(pid, libc::SIGTERM);
        }
        for pid in workloads() {
            for d in crate::bench::descendants(pid) {
                kill(d, libc::SIGKILL);
            }
            kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.parts.iter().any(|p| p.pid.is_some()) && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(20));
        }
        for part in &self.parts {
            if let Some(pid) = part.pid {
                kill(pid, libc::SIGKILL);
            }
        }
        let me = std::process::id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.reap();
            let left = crate::bench::descendants(me);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGTERM, SIGINT or SIGHUP by name.
pub fn signal_name(sig: Signal) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_from_half_a_second_to_ten_and_start_over_after_a_stable_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.after_exit(quick).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        assert_eq!(b.after_exit(STABLE_AFTER), FIRST_DELAY);
        assert_eq!(b.after_exit(quick), Duration::from_secs(1));
    }
}
