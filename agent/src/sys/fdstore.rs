//! The fd store: a small process beside the agent that holds a duplicate of every workload's
//! output pipe (read end), so a workload never gets SIGPIPE or EPIPE when its agent dies, and a
//! restarted agent takes the pipes back and goes on reading where the old one stopped (what was
//! written meanwhile waits in the pipe; a chatty workload blocks once the pipe is full, as under
//! any log collector that is down).
//!
//! Protocol over a SOCK_SEQPACKET Unix socket (`<data dir>/fdstore.sock`), one message each:
//! - `PUT NAME` with one fd attached: keep it (replacing an entry of that name);
//! - `LIST`: the store answers `FD NAME` with the fd attached for every entry, then `END`;
//! - `DROP PREFIX`: let go of every entry whose name starts with PREFIX.
//!
//! It also keeps the userfaultfds of a workload whose memory a lazy-pages daemon is still
//! filling (names `ID:uffd:N`), so that if the agent and that daemon die, the workload's missing
//! pages make its tasks wait instead of reading zeros (`sys::uffd`), until a restarted agent
//! decides. Those are never polled: only `DROP` lets go of them.
//!
//! - `LEASE DEADLINE PID:TICKS...`: the node's lease (checkpoint::lease): at DEADLINE (ms on the
//!   boot clock) the store SIGKILLs each listed process (a protected workload's init) whose start
//!   time is still TICKS, unless a later LEASE moved the deadline or cleared it (`LEASE 0`). So a
//!   protected workload whose agent died does not outlive the lease either.
//!
//! The store drops a pipe once every writer has closed it (POLLHUP) — at once while an agent is
//! connected (the agent reads the rest through its own copy), after [`KEEP_AFTER_HUP`] while none
//! is (the output of a workload that ended while its agent was down waits that long). It exits
//! when it holds nothing and no agent is connected.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// How long a pipe whose writers are all gone is kept while no agent is connected.
pub const KEEP_AFTER_HUP: Duration = Duration::from_secs(300);

const MAX_MSG: usize = 4096;

fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?)
}

fn send(sock: BorrowedFd<'_>, text: &str, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(fd) => {
            fds = [fd.as_raw_fd()];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message: its text (empty when the peer has gone) and the fds that came with it.
fn recv(sock: BorrowedFd<'_>) -> std::io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; MAX_MSG];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg =
        recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS hands us new descriptors that nothing else owns.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

struct Entry {
    name: String,
    fd: OwnedFd,
    hup_since: Option<Instant>,
}

/// Whether an entry named `name` is a userfaultfd (kept until dropped, never polled).
pub fn is_uffd(name: &str) -> bool {
    name.contains(":uffd:")
}

/// Runs the store on `path` until it holds nothing and no agent is connected.
pub fn serve(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = seqpacket()?;
    // Mode 0600 from its first moment: whoever connects may take every workload's output.
    super::fsmode::bind_private(path, |at| Ok(bind(listener.as_raw_fd(), &UnixAddr::new(at)?)?))?;
    listen(&listener, Backlog::new(4)?)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut client: Option<OwnedFd> = None;
    let started = Instant::now();
    let mut served_anyone = false;
    let mut lease: Option<(u64, Vec<(i32, u64)>)> = None;
    loop {
        if let Some((deadline, pids)) = &lease {
            if super::boottime_ms() >= *deadline {
                for &(pid, ticks) in pids {
                    if super::proc::start_ticks(pid) == Some(ticks) {
                        // SAFETY: kill takes a pid and a signal number.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                lease = None;
            }
        }
        let timeout = match &lease {
            Some((deadline, _)) => {
                deadline.saturating_sub(super::boottime_ms()).clamp(1, 1000) as i32
            }
            None => 1000,
        };
        let mut polls: Vec<libc::pollfd> = Vec::with_capacity(entries.len() + 1);
        let head = match &client {
            Some(c) => c.as_raw_fd(),
            None => listener.as_raw_fd(),
        };
        polls.push(libc::pollfd { fd: head, events: libc::POLLIN, revents: 0 });
        // events 0: only POLLHUP/POLLERR are reported; the store never reads the pipes. A pipe
        // already seen hung up is left out (fd -1: poll skips it): POLLHUP is a state, not an
        // event, and polling it again would return at once, every time — a loop at 100% CPU
        // for the [`KEEP_AFTER_HUP`] a pipe is kept while no agent is connected.
        polls.extend(entries.iter().map(|e| libc::pollfd {
            fd: if e.hup_since.is_some() || is_uffd(&e.name) { -1 } else { e.fd.as_raw_fd() },
            events: 0,
            revents: 0,
        }));
        // SAFETY: a pollfd array we own, of the length given.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        let now = Instant::now();
        for (e, p) in entries.iter_mut().zip(&polls[1..]) {
            if p.revents & (libc::POLLHUP | libc::POLLERR) != 0 && e.hup_since.is_none() {
                e.hup_since = Some(now);
            }
        }
        let connected = client.is_some();
        entries.retain(|e| match e.hup_since {
            None => true,
            Some(_) if connected => false,
            Some(t) => now.duration_since(t) < KEEP_AFTER_HUP,
        });
        if polls[0].revents != 0 {
            match &client {
                None => {
                    let fd = accept(listener.as_raw_fd())?;
                    // SAFETY: accept returned a new descriptor we now own.
                    client = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                    served_anyone = true;
                }
                Some(c) => match recv(c.as_fd()) {
                    Ok((text, _)) if text.is_empty() => client = None,
                    Err(_) => client = None,
                    Ok((text, mut fds)) => {
                        if let Some(name) = text.strip_prefix("PUT ") {
                            if let Some(fd) = fds.pop() {
                                entries.retain(|e| e.name != name);
                                entries.push(Entry { name: name.to_string(), fd, hup_since: None });
                            }
                        } else if let Some(args) = text.strip_prefix("LEASE ") {
                            lease = parse_lease(args);
                        } else if let Some(prefix) = text.strip_prefix("DROP ") {
                            entries.retain(|e| !e.name.starts_with(prefix));
                        } else if text == "LIST" {
                            // An agent that dies mid-answer loses its connection, not the store
                            // every pipe.
                            let answered = entries.iter().try_for_each(|e| {
                                send(c.as_fd(), &format!("FD {}", e.name), Some(e.fd.as_fd()))
                            });
                            if answered.and_then(|()| send(c.as_fd(), "END", None)).is_err() {
                                client = None;
                            }
                        }
                    }
                },
            }
        }
        let idle = client.is_none() && entries.is_empty() && lease.is_none();
        if idle && (served_anyone || started.elapsed() > Duration::from_secs(30)) {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
    }
}

/// `DEADLINE PID:TICKS...` → the lease to enforce; None for a deadline of 0 or no pid.
fn parse_lease(args: &str) -> Option<(u64, Vec<(i32, u64)>)> {
    let mut it = args.split_whitespace();
    let deadline: u64 = it.next()?.parse().ok().filter(|d| *d > 0)?;
    let pids: Vec<(i32, u64)> = it
        .filter_map(|p| {
            let (pid, ticks) = p.split_once(':')?;
            Some((pid.parse().ok().filter(|p: &i32| *p > 1)?, ticks.parse().ok()?))
        })
        .collect();
    (!pids.is_empty()).then_some((deadline, pids))
}

/// The agent's connection to its fd store.
pub struct FdStore {
    sock: Mutex<OwnedFd>,
}

impl FdStore {
    fn connect(path: &Path) -> std::io::Result<FdStore> {
        let sock = seqpacket()?;
        connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(FdStore { sock: Mutex::new(sock) })
    }

    /// Connects to the store an earlier agent left running on `path`, or starts one (`exe
    /// fd-store PATH`, in its own process group so a terminal's Ctrl-C to the agent spares it).
    /// True in the second value when the store is an earlier one (there may be pipes to take).
    pub fn connect_or_start(path: &Path, exe: &Path) -> std::io::Result<(FdStore, bool)> {
        if let Ok(s) = FdStore::connect(path) {
            return Ok((s, true));
        }
        let _ = std::fs::remove_file(path);
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("fd-store")
            .arg(path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match FdStore::connect(path) {
                Ok(s) => return Ok((s, false)),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Hands the store a duplicate of `fd` under `name`.
    pub fn put(&self, name: &str, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let sock = self.sock.lock().expect("fd store poisoned");
        send(sock.as_fd(), &format!("PUT {name}"), Some(fd))
    }

    /// Lets the store drop every entry whose name starts with `prefix`.
    pub fn drop_prefix(&self, prefix: &str) -> std::io::Result<()> {
        let sock = self.sock.lock().expect("fd store poisoned");
        send(sock.as_fd(), &format!("DROP {prefix}"), None)
    }

    /// The lease the store enforces if no agent renews it: at `deadline` (boot clock, ms; 0
    /// clears it) the store kills these processes (pid, start time in ticks).
    pub fn lease(&self, deadline: u64, pids: &[(i32, u64)]) -> std::io::Result<()> {
        let mut msg = format!("LEASE {deadline}");
        for (pid, ticks) in pids {
            let item = format!(" {pid}:{ticks}");
            if msg.len() + item.len() >= MAX_MSG {
                tracing::warn!(listed = msg.split(' ').count() - 2, of = pids.len(), "the fd store's lease lists only as many protected workloads as one message holds");
                break;
            }
            msg.push_str(&item);
        }
        let sock = self.sock.lock().expect("fd store poisoned");
        send(sock.as_fd(), &msg, None)
    }

    /// Duplicates of every pipe the store holds, by name.
    pub fn list(&self) -> std::io::Result<Vec<(String, OwnedFd)>> {
        let sock = self.sock.lock().expect("fd store poisoned");
        send(sock.as_fd(), "LIST", None)?;
        let mut out = Vec::new();
        loop {
            let (text, mut fds) = recv(sock.as_fd())?;
            if text == "END" || text.is_empty() {
                return Ok(out);
            }
            if let (Some(name), Some(fd)) = (text.strip_prefix("FD "), fds.pop()) {
                out.push((name.to_string(), fd));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A store serving in a thread on a socket in a fresh directory, and a connection to it.
    fn running_store(
        tag: &str,
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        std::thread::JoinHandle<std::io::Result<()>>,
        FdStore,
    ) {
        let dir = std::env::temp_dir().join(format!("ferry-fdstore-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fdstore.sock");
        let server = {
            let path = path.clone();
            std::thread::spawn(move || serve(&path))
        };
        let store = loop {
            if let Ok(s) = FdStore::connect(&path) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (dir, path, server, store)
    }

    #[test]
    fn a_pipe_outlives_its_reader_and_comes_back_through_the_store() {
        let (dir, path, server, store) = running_store("pipe");
        let (r, w) = crate::sys::spawn::pipe().unwrap();
        store.put("w-1:out", r.as_fd()).unwrap();
        drop(r); // the "agent" dies: only the store holds the read end now
        let mut w = std::fs::File::from(w);
        // No EPIPE: the store keeps a reader.
        w.write_all(b"written while nobody reads\n").unwrap();
        drop(store);
        let store = FdStore::connect(&path).unwrap();
        let mut got = store.list().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "w-1:out");
        let mut r = std::fs::File::from(got.pop().unwrap().1);
        drop(w); // the writer goes: the store drops its copy, the reader still gets the rest
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text, "written while nobody reads\n");
        std::thread::sleep(Duration::from_millis(1200));
        assert!(store.list().unwrap().is_empty(), "a pipe without writers is dropped");
        drop(store);
        server.join().unwrap().unwrap();
        assert!(!path.exists(), "an idle store exits and removes its socket");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// CPU ticks (user + system) of thread `tid` of this process.
    fn thread_cpu_ticks(tid: i32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
    }

    #[test]
    fn a_hung_up_pipe_kept_while_no_agent_is_connected_costs_no_cpu() {
        let dir = std::env::temp_dir().join(format!("ferry-fdstore-hup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fdstore.sock");
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let server = {
            let path = path.clone();
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                serve(&path)
            })
        };
        let tid = tid_rx.recv().unwrap();
        let store = loop {
            if let Ok(s) = FdStore::connect(&path) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (r, w) = crate::sys::spawn::pipe().unwrap();
        store.put("w-1:out", r.as_fd()).unwrap();
        drop(r);
        // The agent goes, then the workload ends: the store keeps the pipe for KEEP_AFTER_HUP.
        drop(store);
        std::thread::sleep(Duration::from_millis(100));
        drop(w);
        std::thread::sleep(Duration::from_millis(300));
        let before = thread_cpu_ticks(tid);
        std::thread::sleep(Duration::from_millis(1500));
        let spent = thread_cpu_ticks(tid) - before;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(spent * 10 < hz, "the idle store used {spent} ticks of CPU in 1.5 s (hz {hz})");
        // An agent connecting lets the hung-up pipe go; the store, idle, exits.
        let store = FdStore::connect(&path).unwrap();
        assert!(store.list().unwrap().is_empty(), "a hung-up pipe goes once an agent is back");
        drop(store);
        server.join().unwrap().unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lease_no_agent_renews_kills_the_listed_processes_and_spares_a_reused_pid() {
        let (_dir, _path, _server, store) = running_store("lease");
        let mut doomed = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let mut spared = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = doomed.id() as i32;
        let ticks = crate::sys::proc::start_ticks(pid).unwrap();
        let other = spared.id() as i32;
        // The second is listed with a start time it does not have: a pid taken by another process.
        let wrong = crate::sys::proc::start_ticks(other).unwrap() + 1;
        store.lease(crate::sys::boottime_ms() + 300, &[(pid, ticks), (other, wrong)]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(doomed.try_wait().unwrap().is_none(), "killed before the deadline");
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = doomed.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "not killed at the deadline");
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(spared.try_wait().unwrap().is_none(), "a reused pid must not be killed");
        // A renewal moves the deadline; clearing it keeps everyone alive.
        let mut kept = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let kpid = kept.id() as i32;
        let kticks = crate::sys::proc::start_ticks(kpid).unwrap();
        store.lease(crate::sys::boottime_ms() + 200, &[(kpid, kticks)]).unwrap();
        store.lease(0, &[]).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert!(kept.try_wait().unwrap().is_none(), "a cleared lease kills nobody");
        for mut c in [spared, kept] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn a_userfaultfd_entry_is_kept_until_dropped_by_name() {
        let (dir, _path, server, store) = running_store("uffd");
        // A hung-up pipe under a userfaultfd's name: a pipe would be dropped at once, this not.
        let (r, w) = crate::sys::spawn::pipe().unwrap();
        store.put("w-1:uffd:0", r.as_fd()).unwrap();
        store.put("w-2:uffd:0", r.as_fd()).unwrap();
        drop((r, w));
        std::thread::sleep(Duration::from_millis(300));
        let mut names: Vec<String> = store.list().unwrap().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["w-1:uffd:0", "w-2:uffd:0"]);
        store.drop_prefix("w-1:uffd:").unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["w-2:uffd:0"]);
        store.drop_prefix("w-2:").unwrap();
        assert!(store.list().unwrap().is_empty());
        drop(store);
        server.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
