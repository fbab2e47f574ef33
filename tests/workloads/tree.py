#!/usr/bin/env python3
"""tree.py - a migration workload made of a process tree sharing a pipe, plus a daemon.

  parent ── child A   writes "A n\\n" into the pipe every 100 ms (n = 1, 2, ...)
         ├─ child B   writes "B n\\n" into the pipe every 100 ms
         └─ (intermediate, exits at once) ── daemon: setsid(), prints "daemon tick N" every 200 ms
The parent reads the pipe and prints one line per line read. Counters live in memory and never
restart, so after a migration they must continue upward from where they were. The parent also
checks that each child's numbers arrive as exactly last+1.

Output (stdout is shared by parent and daemon), one line each, flushed:
  tree ready pid=P a=PA b=PB                (parent, after forking everything)
  daemon ready pid=PD                       (daemon; may come before or after "tree ready")
  parent got A=<last a> B=<last b>          (per line read; 0 = nothing from that child yet)
  parent FAIL <A|B> <last>-><got>           (a number that is not last+1; then continues)
  daemon tick N                             (N = 1, 2, ...)
  parent eof                                (both children gone; the parent exits 1)

The daemon is orphaned on purpose; under ferry it is reparented to the namespace's init and
stays in the dumped tree. Timing uses setitimer(ITIMER_REAL) + sigwaitinfo, not time.sleep
(which since Python 3.11 waits for an absolute CLOCK_MONOTONIC deadline and would stall after a
restore on a host whose monotonic clock is behind). Interval timers are not inherited by fork,
so each ticking process sets its own.
"""
import os
import signal
import sys


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def ticker(period):
    """Yields 1, 2, 3, ... one every `period` seconds, using a relative interval timer."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    signal.setitimer(signal.ITIMER_REAL, period, period)
    n = 0
    while True:
        signal.sigwaitinfo({signal.SIGALRM})
        n += 1
        yield n


def writer(name, wfd):
    """Child A or B: one short line per tick (< PIPE_BUF, so each write is atomic)."""
    for n in ticker(0.1):
        os.write(wfd, f"{name} {n}\n".encode())  # EPIPE once the parent is gone: we exit


def spawn(fn, *args, close=()):
    pid = os.fork()
    if pid == 0:
        try:
            for fd in close:
                os.close(fd)
            fn(*args)
        finally:
            os._exit(0)
    return pid


def daemon():
    say(f"daemon ready pid={os.getpid()}")
    for n in ticker(0.2):
        say(f"daemon tick {n}")


def double_fork(close):
    """fork; the child calls setsid() and forks the daemon, then exits at once."""
    def intermediate():
        os.setsid()
        spawn(daemon)

    pid = spawn(intermediate, close=close)
    os.waitpid(pid, 0)  # reap the intermediate; the daemon is now an orphan


def main():
    r, w = os.pipe()
    a = spawn(writer, "A", w, close=[r])
    b = spawn(writer, "B", w, close=[r])
    double_fork(close=[r, w])
    os.close(w)  # only the children hold the write end: EOF when both are gone
    say(f"tree ready pid={os.getpid()} a={a} b={b}")
    last = {"A": 0, "B": 0}
    with os.fdopen(r, "rb") as pipe:
        for raw in pipe:
            name, num = raw.decode().split()
            n = int(num)
            if n != last[name] + 1:
                say(f"parent FAIL {name} {last[name]}->{n}")
            last[name] = n
            say(f"parent got A={last['A']} B={last['B']}")
    say("parent eof")
    sys.exit(1)


if __name__ == "__main__":
    main()
