//! Turning CRIU's log into a sentence a person can act on.

use std::path::Path;

/// Known failures: a pattern in CRIU's log and what it means for a ferry user.
const KNOWN: &[(&str, &str)] = &[
    (
        "Can't fork for",
        "a PID the workload needs is already taken on this node (CRIU: \"Can't fork\"); \
         workloads started by ferry have their own PID namespace, so this one was not",
    ),
    (
        "Address already in use",
        "a port the workload listens on is already in use on the target node; free the port \
         there or choose another target",
    ),
    (
        "Can't bind",
        "a socket of the workload cannot be bound on the target node (address or port \
         unavailable there)",
    ),
    (
        "External socket is used",
        "the workload is connected to a UNIX socket outside itself (e.g. a daemon's socket); \
         CRIU cannot move that connection",
    ),
    (
        "unix: Can't dump",
        "the workload holds a UNIX socket CRIU cannot dump (connected to a process outside the \
         workload)",
    ),
    (
        "Connected TCP socket",
        "the workload has an established TCP connection; only listening sockets move (close \
         client connections first)",
    ),
    ("io_uring", "the workload uses io_uring, which CRIU cannot checkpoint"),
    (
        "file locks are hold",
        "the workload holds a file lock (fcntl, lockf or flock: SQLite in WAL mode always, in its \
         other modes inside a transaction); ferry does not move file locks (docs/apps.md)",
    ),
    (
        "Unable to open dev/ptmx with specified index",
        "the workload holds a pseudo-terminal whose number is taken on the target node (it was \
         started by an agent from before workloads had a /dev/pts of their own, and shares the \
         node's; docs/apps.md)",
    ),
    (
        "has bad size",
        "a file the workload holds open changed size or differs on the target (files outside \
         its working directory must be identical on both nodes)",
    ),
    (
        "Can't open file",
        "a file the workload holds open does not exist on the target node (files outside its \
         working directory must exist on both nodes)",
    ),
    (
        "cpuinfo",
        "the target CPU lacks features the workload's CPU state needs (CPU mismatch between \
         nodes)",
    ),
    ("CPU feature", "the target CPU lacks features the source CPU has (CPU mismatch)"),
    ("xsave", "the target CPU's extended state (xsave) does not match the source's"),
    ("Unsupported", "the workload uses a kind of file or resource CRIU does not support"),
    ("Can't dump file", "the workload holds a file CRIU cannot dump (unsupported file type)"),
    (
        "Can't get rlimit",
        "CRIU cannot read the resource limits of a workload process running as another user: \
         the agent lacks CAP_SYS_RESOURCE (some containers drop it even for root) and this CRIU \
         is not ferry's build with patch 0007, which reads them from /proc/PID/limits (run \
         scripts/setup.sh)",
    ),
    ("Operation not permitted", "CRIU lacked a permission (the agent must run as root)"),
];

/// Error lines CRIU writes on every run here that explain nothing: without CAP_SYS_RESOURCE it
/// cannot raise its own open-file limit, and carries on.
const HARMLESS: &[&str] = &["Can't setup RLIMIT_NOFILE for self"];

/// The most telling error lines of a CRIU log (lines with "Error" or "err"), at most `max`.
pub fn error_lines(log: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains("Error") || l.contains("error") || l.contains("FAIL"))
        .filter(|l| !HARMLESS.iter().any(|h| l.contains(h)))
        .map(|l| l.trim().to_string())
        .collect();
    if lines.len() > max {
        lines.drain(..lines.len() - max);
    }
    lines
}

/// A plain explanation of a failed CRIU run, from its log's error lines. A log without one (a
/// CRIU killed from outside) explains nothing: its ordinary lines name CPU features, files and
/// sockets that are not the cause.
pub fn explain(log: &str) -> Option<&'static str> {
    let haystack = error_lines(log, 50).join("\n");
    KNOWN.iter().find(|(pat, _)| haystack.contains(pat)).map(|(_, msg)| *msg)
}

/// The resource limits a restore set lower than the dumped ones, from its log: without
/// CAP_SYS_RESOURCE, ferry's CRIU (patch 0007) caps a hard limit above the restorer's own at it
/// and says so at warning level ("rlimit: 7: RLIMIT_NOFILE hard limit 4000 capped at 3000
/// (raising it needs CAP_SYS_RESOURCE)"). Each as "7: RLIMIT_NOFILE hard limit 4000 capped at
/// 3000": the process (its PID in the workload's namespace), the resource, the two values.
pub fn capped_rlimits(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" capped at "))
        .filter_map(|l| l.split_once("rlimit: ").map(|(_, rest)| rest))
        .map(|rest| rest.split(" (").next().unwrap_or(rest).trim().to_string())
        .collect()
}

/// CRIU's closing error lines, which say only that it failed: the line before them tells why.
const TRAILERS: &[&str] = &["Restoring FAILED", "Dumping FAILED", "Killing processes because of"];

/// The lazy-pages daemon's log, beside a restore's.
const LAZY_LOG: &str = "lazy-pages.log";

/// One sentence for a failed `what` ("dump", "restore"): the explanation when known, CRIU's own
/// last telling error line, where the full log is, and for a restore that failed talking to its
/// lazy-pages daemon (beside it in the same directory), that daemon's first error.
pub fn describe(what: &str, log_path: &Path, fallback: &str) -> String {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let lines = error_lines(&log, 50);
    let last = lines
        .iter()
        .rev()
        .find(|l| !TRAILERS.iter().any(|t| l.contains(t)))
        .or(lines.last())
        .cloned()
        .unwrap_or_else(|| fallback.to_string());
    let mut out = match explain(&log) {
        Some(msg) => {
            format!("CRIU {what} failed: {msg} (CRIU said: {last}; log: {})", log_path.display())
        }
        None => format!("CRIU {what} failed: {last} (log: {})", log_path.display()),
    };
    // The daemon's failure explains a restore that failed talking to it (CRIU's uffd code), not
    // one that failed by itself (the daemon then fails too, for want of a restore).
    let lazy = log_path.with_file_name(LAZY_LOG);
    if lazy != log_path && lines.iter().any(|l| l.contains("uffd")) {
        let first = std::fs::read_to_string(&lazy)
            .ok()
            .and_then(|l| error_lines(&l, usize::MAX).into_iter().next());
        if let Some(first) = first {
            out +=
                &format!("; its lazy-pages daemon failed first: {first} (log: {})", lazy.display());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_failures_are_explained() {
        let log = "(00.01) pie: 1: Error (criu/pie/restorer.c:99): foo\n\
                   (00.02) 1: Error (criu/sk-inet.c:123): Can't bind inet socket (id 5): Address already in use\n";
        assert!(explain(log).unwrap().contains("already in use on the target"));
        let log = "(00.1) Error (criu/cr-restore.c:1): Can't fork for 42: File exists\n";
        assert!(explain(log).unwrap().contains("PID"));
        let log =
            "(00.02) Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks! \
                   You can try --file-locks to dump them.\n";
        assert!(explain(log).unwrap().contains("file lock"));
        let log = "(00.01) 2: Error (criu/tty.c:625): tty: Unable to open dev/ptmx with specified \
                   index 0\n(00.01) 2: Error (criu/tty.c:1092): tty: Can't open master pty 0x11\n";
        assert!(explain(log).unwrap().contains("pseudo-terminal"));
        assert_eq!(explain("(0.1) Error (x.c:1): something new\n"), None);
    }

    #[test]
    fn a_log_without_an_error_line_explains_nothing() {
        // A page server killed from outside: its last lines are ordinary ones.
        let log = "(00.01) cpu: x86_family 6 x86_vendor_id GenuineIntel; xsave 0x3ff\n\
                   (00.02) Dumping pages (type: 2 pid: 2)\n";
        assert_eq!(explain(log), None);
    }

    #[test]
    fn the_harmless_rlimit_line_explains_nothing() {
        let log = "(00.02) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: \
                   Operation not permitted\n(00.50) page-pipe: something\n";
        assert_eq!(explain(log), None);
        assert!(error_lines(log, 5).is_empty());
    }

    #[test]
    fn a_restore_names_its_cause_not_its_trailer_and_the_lazy_daemon_s_first_error() {
        let dir = tempfile::tempdir().unwrap();
        let restore = dir.path().join("restore.log");
        std::fs::write(
            &restore,
            "(00.12) Error (criu/uffd.c:1354): uffd: Failed sending restore finished indication\n\
             (00.12) Error (criu/cr-restore.c:2304): Killing processes because of failure\n\
             (00.13) Error (criu/cr-restore.c:2368): Restoring FAILED.\n",
        )
        .unwrap();
        let said = describe("restore", &restore, "none");
        assert!(said.contains("Failed sending restore finished indication"), "{said}");
        assert!(!said.contains("lazy-pages daemon"), "{said}");
        // A restore that failed by itself: the daemon's error follows from it and is not named.
        let own = dir.path().join("own").join("restore.log");
        std::fs::create_dir_all(own.parent().unwrap()).unwrap();
        std::fs::write(&own, "(00.01) 1: Error (criu/cr-restore.c:1265): 2 exited, status=1\n")
            .unwrap();
        std::fs::write(
            own.with_file_name(LAZY_LOG),
            "(00.02) Error (criu/uffd.c:755): short read\n",
        )
        .unwrap();
        assert!(!describe("restore", &own, "none").contains("lazy-pages"));
        std::fs::write(
            dir.path().join(LAZY_LOG),
            "(00.06) Error (criu/page-xfer.c:151): page-xfer: Can't send PSI 7 to server\n\
             (00.06) Error (criu/uffd.c:979): uffd: 2-9: failed reading pages\n",
        )
        .unwrap();
        let said = describe("restore", &restore, "none");
        assert!(said.contains("lazy-pages daemon failed first: (00.06) Error"), "{said}");
        assert!(said.contains("Can't send PSI 7"), "{said}");
    }

    #[test]
    fn capped_rlimits_are_read_from_a_restore_log() {
        let log = "(00.015730) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for \
                   self: Operation not permitted\n\
                   (00.031957)  1: Warn  (criu/cr-restore.c:2858): rlimit: 1: RLIMIT_NOFILE \
                   hard limit 4000 capped at 3000 (raising it needs CAP_SYS_RESOURCE)\n\
                   (00.031958)  1: Warn  (criu/cr-restore.c:2863): rlimit: 1: RLIMIT_NOFILE \
                   soft limit 3500 capped at 3000\n\
                   (00.035791)  2: Restoring scheduler params 0.0.0\n";
        assert_eq!(
            capped_rlimits(log),
            [
                "1: RLIMIT_NOFILE hard limit 4000 capped at 3000",
                "1: RLIMIT_NOFILE soft limit 3500 capped at 3000"
            ]
        );
        assert!(capped_rlimits("(00.01) Restored\n").is_empty());
    }

    #[test]
    fn error_lines_keeps_the_last_ones() {
        let log = "Error a\ninfo\nError b\nError c\n";
        assert_eq!(error_lines(log, 2), vec!["Error b", "Error c"]);
    }
}
