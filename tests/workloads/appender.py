#!/usr/bin/env python3
"""appender.py - a migration workload with an open file whose content must survive.

Every 100 ms: n += 1, append "n\\n" to ./journal.txt (opened ONCE, O_APPEND, kept open for the
whole run; each append is one write(2), so nothing sits in a userspace buffer), print "count n".
The journal is truncated when the program starts, so it always holds exactly 1..n.
On SIGUSR1 the journal is re-read from disk and must be exactly the lines 1..n in order.

Output, one line each, flushed:
  appender ready pid=PID
  count N                                   (N = 1, 2, ...)
  journal ok n=N
  journal FAIL n=N lines=L first_bad=K      (K = 1-based line number of the first wrong or
                                             missing line; L = lines found)

Timing uses setitimer(ITIMER_REAL) + sigwaitinfo, not time.sleep: since Python 3.11 time.sleep
waits for an ABSOLUTE CLOCK_MONOTONIC deadline, and a process restored on a host whose
monotonic clock is behind would then sleep for the difference in uptimes. SIGALRM and SIGUSR1
are blocked and taken synchronously, so no work happens in a signal handler. SIGUSR1 sent
before "appender ready" would kill the process (default action): wait for that line first.
"""
import os
import signal
import sys

JOURNAL = "journal.txt"


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def check(n):
    with open(JOURNAL, "rb") as f:  # a fresh open: what is on disk now
        data = f.read()
    want = "".join(f"{i}\n" for i in range(1, n + 1)).encode()
    if data == want:
        say(f"journal ok n={n}")
        return
    # keepends: a last line without its newline differs from the expected line
    got, exp = data.splitlines(keepends=True), want.splitlines(keepends=True)
    bad = next((k for k, (g, e) in enumerate(zip(got, exp)) if g != e), min(len(got), n))
    say(f"journal FAIL n={n} lines={len(got)} first_bad={bad + 1}")


def main():
    fd = os.open(JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)  # a SIGALRM every 100 ms, relative
    say(f"appender ready pid={os.getpid()}")
    n = 0
    while True:
        sig = signal.sigwaitinfo({signal.SIGALRM, signal.SIGUSR1}).si_signo
        if sig == signal.SIGUSR1:
            check(n)
            continue
        n += 1
        os.write(fd, f"{n}\n".encode())
        say(f"count {n}")


if __name__ == "__main__":
    main()
