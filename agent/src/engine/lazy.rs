//! The `criu lazy-pages` daemon that fills a restored workload's memory after the resume: from
//! the source's page server through the page tunnel (post-copy), or from the received images
//! (stop-and-copy, by default). Also how much of that memory is still missing (CRIU's own count,
//! from the daemon's log), and what happens when the daemon fails: the workload is killed and
//! marked lost, never left running on incomplete memory.
//!
//! Why the agent holds the restored tasks' userfaultfds: see `sys::uffd`.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::EngineError;
use crate::agent::Agent;
use crate::sys::reaper::ExitStatus;

/// The daemon's log, in its work dir.
const LOG: &str = "lazy-pages.log";
/// How long the source may take to open the page tunnel after the daemon started.
const TUNNEL_WAIT: Duration = Duration::from_secs(60);
/// How long the daemon may take to take over the restored tasks' userfaultfds.
const HANDOVER: Duration = Duration::from_secs(2);
/// The daemon's send buffer on the tunnel's socketpair. CRIU sends each page request with
/// MSG_DONTWAIT and gives up the whole restore when the send would block; every thread faulting
/// at once has a request out (plus 4 in the background per process), and each 32-byte request
/// takes about 766 bytes of buffer: the default (208 KiB) holds 278 (measured), and a 600-thread
/// program failed its post-copy restore. 32 MiB (64 as the kernel counts) holds 87 382; only
/// what is queued uses memory.
const REQUEST_BUFFER: usize = 32 << 20;

/// Where a lazy restore's memory pages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSource {
    /// Post-copy: the source's page server, through the page tunnel (migrate::tunnel).
    Tunnel,
    /// Stop-and-copy: the page images already received here; the daemon fills the restored
    /// workload's memory from them right after the resume, so that copy is not downtime.
    Local,
}

/// Memory pages of a post-copy restore, as CRIU's lazy-pages daemon counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCount {
    /// Pages to be fetched from the source (every task's lazy pages).
    pub total: u64,
    /// Pages copied into the tasks so far (on a fault or in the background).
    pub copied: u64,
}

impl PageCount {
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.copied)
    }

    /// "N of M pages (X MiB)": the pages still to arrive, for a message.
    pub fn missing(&self) -> String {
        let page = crate::sys::uffd::page_size();
        format!(
            "{} of {} pages ({:.1} MiB)",
            self.remaining(),
            self.total,
            (self.remaining() * page) as f64 / (1u64 << 20) as f64
        )
    }

    /// The count a whole `criu lazy-pages -v4` log gives (see `count_line`).
    pub fn of_log(log: &str) -> PageCount {
        let page = crate::sys::uffd::page_size();
        let mut c = PageCount::default();
        for line in log.lines() {
            count_line(line, page, &mut c);
        }
        c
    }
}

/// Adds what one line of `criu lazy-pages -v4`'s log says to `c`: `Found N pages to be handled
/// by UFFD` (a task's lazy pages, once per task) and `uffd_copy: 0xADDR/LEN` (LEN bytes copied
/// into a task). These are the daemon's own counters (`total_pages`, `copied_pages` in uffd.c).
pub fn count_line(line: &str, page: u64, c: &mut PageCount) {
    if let Some(rest) = line.split("uffd_copy: 0x").nth(1) {
        let len = rest.split_once('/').map(|(_, l)| l.trim());
        if let Some(bytes) = len.and_then(|l| l.parse::<u64>().ok()) {
            c.copied += bytes / page.max(1);
        }
    } else if let Some(rest) = line.split("Found ").nth(1) {
        if let Some(n) = rest.strip_suffix(" pages to be handled by UFFD") {
            if let Ok(n) = n.trim().parse::<u64>() {
                c.total += n;
            }
        }
    }
}

/// The log read so far.
#[derive(Default)]
struct LogProgress {
    offset: u64,
    partial: String,
    count: PageCount,
}

/// One post-copy restore's lazy-pages daemon on the target.
pub struct LazyPages {
    pub migration_id: String,
    pub workload_id: String,
    /// The source node, for messages.
    pub source_node: String,
    pub pages: PageSource,
    pub pid: i32,
    pub log: PathBuf,
    /// The restored tree's init, once restored.
    restored_pid: AtomicI32,
    /// CommitMigration arrived: the workload runs (or is about to).
    committed: AtomicBool,
    /// The migration was aborted (or its restore failed): the daemon is killed on purpose.
    aborted: AtomicBool,
    /// Duplicates of the restored tasks' userfaultfds (see `sys::uffd`).
    held: Mutex<Vec<OwnedFd>>,
    /// How the daemon ended: every page arrived, or why not. None while it runs.
    end: Mutex<Option<Result<(), String>>>,
    progress: Mutex<LogProgress>,
    /// The agent's end of the daemon's page-server connection, until the source's PageTunnel
    /// takes it (migrate::tunnel).
    tunnel: Mutex<Option<std::os::unix::net::UnixStream>>,
}

impl LazyPages {
    /// The record of daemon `pid` (log `log`) started for `s`; `tunnel` is the agent's end of
    /// its page-server connection (post-copy).
    fn new(
        s: &LazyStart,
        pid: i32,
        log: PathBuf,
        tunnel: Option<std::os::unix::net::UnixStream>,
    ) -> LazyPages {
        LazyPages {
            migration_id: s.migration_id.clone(),
            workload_id: s.workload_id.clone(),
            source_node: s.source_node.clone(),
            pages: s.pages,
            pid,
            log,
            restored_pid: AtomicI32::new(0),
            committed: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            end: Mutex::new(None),
            progress: Mutex::new(LogProgress::default()),
            tunnel: Mutex::new(tunnel),
        }
    }

    /// The daemon's page-server connection, for the source's PageTunnel (once).
    pub fn take_tunnel(&self) -> Option<std::os::unix::net::UnixStream> {
        self.tunnel.lock().expect("lazy tunnel poisoned").take()
    }

    /// Pages still to arrive, from the daemon's log (0 once it ended with every page there).
    pub fn progress(&self) -> PageCount {
        let mut p = self.progress.lock().expect("lazy progress poisoned");
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(p.offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                p.offset += buf.len() as u64;
                let text = std::mem::take(&mut p.partial) + &String::from_utf8_lossy(&buf);
                let page = crate::sys::uffd::page_size();
                let mut lines: Vec<&str> = text.split('\n').collect();
                // The last piece has no newline yet: keep it for the next read.
                let tail = lines.pop().unwrap_or("").to_string();
                for line in lines {
                    count_line(line, page, &mut p.count);
                }
                p.partial = tail;
            }
        }
        let mut c = p.count;
        if matches!(*self.end.lock().expect("lazy end poisoned"), Some(Ok(()))) {
            c.copied = c.copied.max(c.total);
        }
        c
    }

    pub fn ended(&self) -> Option<Result<(), String>> {
        self.end.lock().expect("lazy end poisoned").clone()
    }

    pub fn set_restored(&self, pid: i32) {
        self.restored_pid.store(pid, Ordering::SeqCst);
    }

    pub fn mark_committed(&self) {
        self.committed.store(true, Ordering::SeqCst);
    }

    pub fn committed(&self) -> bool {
        self.committed.load(Ordering::SeqCst)
    }

    /// Kills the daemon on purpose: the migration was aborted or its restore failed, and the
    /// copy it served is discarded by the caller.
    pub fn abandon(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        if self.ended().is_none() {
            let _ = crate::sys::signal::send(self.pid, crate::sys::signal::Sig::SIGKILL);
        }
    }

    /// Takes duplicates of the restored tasks' userfaultfds from the daemon, once it has them
    /// all (it turns to its page-server socket right after receiving the last one).
    /// Blocking. Without them a failure of the daemon could let the workload run on zero pages
    /// for the moment it takes to kill it, so a failure here is logged loudly.
    /// The agent's fd store keeps duplicates too (`ID:uffd:N`): if the agent dies with the
    /// daemon, the tasks still wait rather than read zeros, until a restarted agent decides.
    pub fn hold_userfaultfds(&self, store: Option<&crate::sys::fdstore::FdStore>) {
        let deadline = std::time::Instant::now() + HANDOVER;
        let (mut last, mut same) = (0, 0);
        loop {
            let ready = match self.pages {
                PageSource::Tunnel => std::fs::read_to_string(&self.log)
                    .map(|t| t.contains("Reusing ps socket"))
                    .unwrap_or(false),
                // Without a page server nothing in the log marks the end of the hand-over; the
                // daemon takes the descriptors one after the other right after the restore sent
                // them, so wait until their number stops changing.
                PageSource::Local => {
                    let n = crate::sys::uffd::userfaultfds(self.pid).map_or(0, |v| v.len());
                    same = if n == last { same + 1 } else { 0 };
                    last = n;
                    n > 0 && same >= 3
                }
            };
            if ready || self.ended().is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(pid = self.pid, log = ?self.log, "criu lazy-pages has not taken over the restored tasks yet");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match crate::sys::uffd::dup_userfaultfds(self.pid) {
            Ok(fds) => {
                tracing::info!(
                    migration = self.migration_id,
                    count = fds.len(),
                    "holding the restored tasks' userfaultfds"
                );
                for (i, fd) in fds.iter().enumerate() {
                    let name = format!("{}:uffd:{i}", self.workload_id);
                    if let Some(Err(e)) = store.map(|s| s.put(&name, fd.as_fd())) {
                        tracing::warn!(migration = self.migration_id, %e, "the fd store did not take a userfaultfd: if this agent dies before the memory is filled, the workload may read zero pages");
                    }
                }
                self.held.lock().expect("held uffds poisoned").extend(fds);
            }
            Err(e) => tracing::warn!(
                migration = self.migration_id,
                pid = self.pid,
                %e,
                "cannot hold the restored workload's userfaultfds: if the page transfer breaks, \
                 the workload may run briefly on zero pages before it is killed"
            ),
        }
    }

    fn release_userfaultfds(&self, store: Option<&crate::sys::fdstore::FdStore>) {
        if let Some(s) = store {
            let _ = s.drop_prefix(&format!("{}:uffd:", self.workload_id));
        }
        self.held.lock().expect("held uffds poisoned").clear();
    }
}

/// What `start` needs: whose restore it serves and where the pages come from.
pub struct LazyStart {
    pub migration_id: String,
    pub workload_id: String,
    pub source_node: String,
    pub pages: PageSource,
    pub images: PathBuf,
    pub work: PathBuf,
}

/// Starts `criu lazy-pages` for a post-copy restore: it fetches pages from the source's page
/// server and fills them in as the restored process touches them (and in the background).
/// Watches it to the end: when it fails, the workload restored for this migration is killed and
/// marked lost. Blocking (waits for the daemon's socket).
pub(super) fn start(
    agent: &Arc<Agent>,
    criu: &Path,
    s: LazyStart,
) -> Result<Arc<LazyPages>, EngineError> {
    let (images, work) = (s.images.as_path(), s.work.as_path());
    let other = |e: std::io::Error| EngineError::Other(e.to_string());
    let mut cmd = std::process::Command::new(criu);
    cmd.arg("lazy-pages");
    // Post-copy: the daemon's page server is the source's, reached through this agent
    // (migrate::tunnel). Local: it reads the received images, and frees each piece of them as it
    // copies it into the workload (auto-dedup), so the node never holds the memory twice.
    let tunnel = match s.pages {
        PageSource::Tunnel => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(other)?;
            crate::sys::force_socket_buffers(&theirs, &ours, REQUEST_BUFFER);
            cmd.args(["--page-server", "--ps-socket"]).arg(theirs.as_raw_fd().to_string());
            crate::sys::swrk::inherit_on_exec(&mut cmd, vec![theirs.as_raw_fd()]);
            Some((ours, theirs))
        }
        PageSource::Local => {
            cmd.arg("--auto-dedup");
            None
        }
    };
    cmd.args(["-v4", "-o", LOG])
        .arg("--images-dir")
        .arg(images)
        .arg("--work-dir")
        .arg(work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| EngineError::Other(format!("cannot start criu lazy-pages: {e}")))?;
    // The daemon holds its end now; ours must be the only other one, so its closing reaches it.
    let tunnel = tunnel.map(|(ours, _theirs)| ours);
    let pid = child.id() as i32;
    let exit = agent.reaper().watch(pid);
    // Never `child.wait()`: the reaper owns waiting.
    drop(child);
    let lp = Arc::new(LazyPages::new(&s, pid, work.join(LOG), tunnel));
    // A source that never opens the tunnel would leave the restore waiting on its first lazy
    // page: the daemon loses its page server after a while, so the restore fails instead.
    if s.pages == PageSource::Tunnel {
        let weak = Arc::downgrade(&lp);
        tokio::spawn(async move {
            tokio::time::sleep(TUNNEL_WAIT).await;
            if let Some(lp) = weak.upgrade() {
                if lp.take_tunnel().is_some() {
                    tracing::warn!(
                        migration = lp.migration_id,
                        source = lp.source_node,
                        "the source never opened the page tunnel; stopping criu lazy-pages"
                    );
                }
            }
        });
    }
    let (agent2, lp2) = (agent.clone(), lp.clone());
    let scratch = work.parent().map(Path::to_path_buf);
    tokio::spawn(async move {
        let status = exit.await;
        let lp = lp2;
        match status {
            Ok(ExitStatus::Exited(0)) => {
                // Counted now, while the log is there (a commit after this removes it).
                let _ = lp.progress();
                *lp.end.lock().expect("lazy end poisoned") = Some(Ok(()));
                lp.release_userfaultfds(agent2.fd_store());
                let restored = lp.restored_pid.load(Ordering::SeqCst);
                if let Ok(w) = agent2.get(&lp.workload_id) {
                    if restored != 0 && w.init_pid == restored {
                        w.set_lazy_fill(None);
                    }
                }
                tracing::info!(
                    migration = lp.migration_id,
                    pid = lp.pid,
                    "post-copy: every page arrived"
                );
                if let (false, Some(dir)) = (agent2.config().keep_scratch, scratch) {
                    // The scratch dir goes unless CommitMigration has yet to come.
                    if lp.committed() {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
            }
            _ if lp.aborted.load(Ordering::SeqCst) => {
                *lp.end.lock().expect("lazy end poisoned") =
                    Some(Err("abandoned: the migration was aborted".into()));
                lp.release_userfaultfds(agent2.fd_store());
                tracing::info!(
                    migration = lp.migration_id,
                    pid = lp.pid,
                    "criu lazy-pages stopped (migration aborted)"
                );
            }
            other => {
                let how = match other {
                    Ok(ExitStatus::Exited(c)) => format!("exited with status {c}"),
                    Ok(ExitStatus::Signaled(s)) => format!("was killed by signal {s}"),
                    Err(_) => "vanished".to_string(),
                };
                let c = lp.progress();
                let from = match lp.pages {
                    PageSource::Tunnel => {
                        format!("arriving from node {} (over the page tunnel)", lp.source_node)
                    }
                    PageSource::Local => "being filled in from the received images".to_string(),
                };
                let why = format!(
                    "its memory stopped {from}: {} never arrived; criu lazy-pages {how} (log {})",
                    c.missing(),
                    lp.log.display()
                );
                *lp.end.lock().expect("lazy end poisoned") = Some(Err(why.clone()));
                agent2.post_copy_lost(&lp, &why);
                // Only now: until the workload is dead, its tasks wait on a missing page rather
                // than read zeros.
                lp.release_userfaultfds(agent2.fd_store());
            }
        }
    });
    // The restore finds the daemon through a socket in the shared work dir.
    let sock = work.join("lazy-pages.socket");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if std::time::Instant::now() > deadline || lp.ended().is_some() {
            let _ = crate::sys::signal::send(pid, crate::sys::signal::Sig::SIGKILL);
            return Err(super::criu::rpc_failure(
                "lazy-pages",
                lp.log.clone(),
                "its socket never appeared".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(lp)
}

impl Agent {
    /// The post-copy restore of `lp` lost its memory source: the workload restored for it is
    /// killed (committed or not: it cannot run correctly) and marked lost.
    pub(crate) fn post_copy_lost(&self, lp: &LazyPages, why: &str) {
        let restored = lp.restored_pid.load(Ordering::SeqCst);
        let Ok(w) = self.get(&lp.workload_id) else { return };
        if restored == 0 || w.init_pid != restored {
            return;
        }
        tracing::debug!(migration = lp.migration_id, committed = lp.committed(), "post-copy lost");
        self.lose_workload(&w, &lp.migration_id, why);
    }

    /// A workload whose memory is incomplete (its post-copy or lazy fill of `migration` broke):
    /// killed, never left running on it, and marked lost with `why`.
    pub(crate) fn lose_workload(&self, w: &crate::workload::Workload, migration: &str, why: &str) {
        if w.exit_info().is_none() {
            if let Err(e) = self.kill_workload(w) {
                tracing::error!(id = w.id(), pid = w.init_pid, %e, "cannot kill a workload whose memory is incomplete");
            }
        }
        w.set_lost(why.to_string());
        tracing::error!(id = w.id(), migration, "post-copy failed: workload killed here, {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_criu_s_own_lines() {
        let log = "\
(00.001200) 17-5: Found 1000 pages to be handled by UFFD
(00.001300) 18-6: Found 24 pages to be handled by UFFD
(00.004000) 17-5: #PF at 0x7f0000001000
(00.004100) 17-5: uffd_copy: 0x7f0000001000/4096
(00.004200) 17-5: zero page at 0x7f0000900000
(00.005000) 17-5: uffd_copy: 0x7f0000010000/65536
(00.006000) 18-6: uffd_copy: 0x7f0000020000/bogus
(00.007000) Something unrelated: Found nothing
";
        let mut c = PageCount::default();
        for l in log.lines() {
            count_line(l, 4096, &mut c);
        }
        assert_eq!(c, PageCount { total: 1024, copied: 17 });
        assert_eq!(c.remaining(), 1007);
    }

    #[test]
    fn partial_lines_wait_for_their_end() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join(LOG);
        std::fs::write(&log, "(0.1) 1-2: Found 10 pages to be handled by UFFD\n(0.2) 1-2: uffd_co")
            .unwrap();
        let start = LazyStart {
            migration_id: "m".into(),
            workload_id: "w".into(),
            source_node: "a".into(),
            pages: PageSource::Tunnel,
            images: d.path().into(),
            work: d.path().into(),
        };
        let lp = LazyPages::new(&start, 0, log.clone(), None);
        assert_eq!(lp.progress(), PageCount { total: 10, copied: 0 });
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"py: 0x1000/8192\n").unwrap();
        assert_eq!(lp.progress(), PageCount { total: 10, copied: 2 });
        *lp.end.lock().unwrap() = Some(Ok(()));
        assert_eq!(lp.progress().remaining(), 0, "a daemon that ended well left nothing behind");
    }
}
