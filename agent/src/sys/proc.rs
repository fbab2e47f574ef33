//! Reading processes from /proc.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

/// One process as /proc shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    /// The kernel's one-letter state (R, S, D, T, t, Z, I, X).
    pub state: char,
    pub threads: u32,
    pub rss_bytes: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Every process on the machine, by pid. Processes that vanish while being read are skipped.
pub fn scan() -> HashMap<i32, ProcInfo> {
    let page = procfs::page_size();
    let mut out = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return out;
    };
    for p in all.flatten() {
        let Ok(stat) = p.stat() else { continue };
        out.insert(
            stat.pid,
            ProcInfo {
                pid: stat.pid,
                ppid: stat.ppid,
                comm: stat.comm.clone(),
                state: stat.state,
                threads: stat.num_threads.max(0) as u32,
                rss_bytes: stat.rss * page,
                cpu_ticks: stat.utime + stat.stime,
            },
        );
    }
    out
}

/// `root` and all its descendants (root first, then breadth-first), from a [`scan`].
pub fn tree(root: i32, all: &HashMap<i32, ProcInfo>) -> Vec<ProcInfo> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in all.values() {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        let Some(p) = all.get(&pid) else { continue };
        out.push(p.clone());
        if let Some(kids) = children.get(&pid) {
            let mut kids = kids.clone();
            kids.sort_unstable();
            queue.extend(kids);
        }
    }
    out
}

/// The pid of `pid` inside its innermost PID namespace (the last NSpid entry).
/// Processes whose working directory, or one of whose open files, lies under `dir` (e.g. a
/// daemon an earlier agent started still reading its images there).
pub fn processes_using(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let under = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let base = PathBuf::from(format!("/proc/{pid}"));
            under(base.join("cwd"))
                || std::fs::read_dir(base.join("fd"))
                    .map(|fds| fds.flatten().any(|fd| under(fd.path())))
                    .unwrap_or(false)
        })
        .collect()
}

pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    status.nspid.and_then(|v| v.last().copied())
}

/// The pid of the process tracing `pid` (ptrace), 0 when none; None when `pid` is gone.
pub fn tracer(pid: i32) -> Option<i32> {
    Some(procfs::process::Process::new(pid).ok()?.status().ok()?.tracerpid)
}

/// The anonymous memory `pid` has resident (RssAnon), in bytes.
pub fn anon_bytes(pid: i32) -> Option<u64> {
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    status.rssanon.map(|kb| kb * 1024)
}

/// When `pid` started (clock ticks after boot), if it is alive and not a zombie: with the pid,
/// it names one process for good, since a pid may be reused but not at the same start time.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    (stat.state != 'Z' && stat.state != 'X').then_some(stat.starttime)
}

/// CPU time of `pid` and of the children it has waited for (utime + stime + cutime + cstime),
/// in clock ticks.
pub fn cpu_ticks_with_children(pid: i32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some(stat.utime + stat.stime + (stat.cutime.max(0) + stat.cstime.max(0)) as u64)
}

/// CPU seconds (user + system) of this process's children that it has waited for.
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one struct rusage, which we own and zeroed.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The thread ids of process `pid`.
pub fn threads(pid: i32) -> std::io::Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{dir}: {e}"));
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(named)? {
        if let Some(tid) = e.map_err(named)?.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

/// The kernel's one-letter state of thread `tid` of process `pid`.
pub fn task_state(pid: i32, tid: i32) -> std::io::Result<char> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let stat = std::fs::read_to_string(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    // "tid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .ok_or_else(|| std::io::Error::other(format!("cannot parse {path}")))
}

/// The contents of `/proc/PID/smaps` (the kernel walks every mapping's page tables for it).
pub fn smaps(pid: i32) -> std::io::Result<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/smaps"))
}

/// Clock ticks per second, for CPU percentages.
pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            comm: format!("p{pid}"),
            state: 'S',
            threads: 1,
            rss_bytes: 0,
            cpu_ticks: 0,
        }
    }

    #[test]
    fn tree_collects_descendants_only() {
        let all: HashMap<i32, ProcInfo> =
            [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(13, 10), p(20, 1)]
                .into_iter()
                .map(|x| (x.pid, x))
                .collect();
        let pids: Vec<i32> = tree(10, &all).iter().map(|x| x.pid).collect();
        assert_eq!(pids, vec![10, 11, 13, 12]);
    }

    #[test]
    fn tree_of_missing_root_is_empty() {
        let all: HashMap<i32, ProcInfo> = [(1, p(1, 0))].into_iter().collect();
        assert!(tree(99, &all).is_empty());
    }

    #[test]
    fn scan_sees_this_process() {
        let me = std::process::id() as i32;
        let all = scan();
        assert!(all.contains_key(&me));
        assert_eq!(ns_pid(me), Some(me));
    }
}
