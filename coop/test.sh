#!/usr/bin/env bash
# End-to-end test of the cooperative checkpoint helpers (Python, C, Rust) without a ferry agent:
# an inline Python program plays the agent on a UNIX socket against each sample counter.
#
# Cases per counter:
#   plain        no FERRY_CONTROL: counts normally, says nothing on stderr
#   unreachable  FERRY_CONTROL names no socket: one stderr line, keeps counting
#   migrate      hello, checkpoint, SIGSTOP, rollback (SIGCONT), second checkpoint on the same
#                connection, SIGKILL, restart with FERRY_RESTORE: restored count=N, then N+1
#   errors       malformed/unknown/failing requests get {"ok":false,...}; the connection survives;
#                requests split across writes and dirs with quotes/backslashes work
#
# Usage: coop/test.sh    (needs python3, gcc, cargo)
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-coop.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of the source tree

read -r -d '' AGENT <<'PY'
import json, os, queue, signal, socket, subprocess, sys, threading, time

case, state_file, workdir = sys.argv[1:4]
cmd = sys.argv[4:]
TIMEOUT = 10.0


def fail(msg):
    raise SystemExit(f"    {msg}")


class Counter:
    """The program under test, with its stdout/stderr lines read in the background."""

    def __init__(self, **env):
        full = {k: v for k, v in os.environ.items() if k not in ("FERRY_CONTROL", "FERRY_RESTORE")}
        full.update(env)
        self.proc = subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out, self.err = queue.Queue(), queue.Queue()
        for stream, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, q=q: [q.put(l.rstrip("\n")) for l in s],
                             daemon=True).start()

    def line(self, timeout=TIMEOUT):
        try:
            return self.out.get(timeout=timeout)
        except queue.Empty:
            fail(f"no stdout line within {timeout}s (exit status {self.proc.poll()}, "
                 f"stderr {self.drain(self.err)})")

    def count(self):
        """The number in the next stdout line, which must be 'count N'."""
        l = self.line()
        if not l.startswith("count "):
            fail(f"expected 'count N', got {l!r}")
        return int(l.split()[1])

    @staticmethod
    def drain(q):
        items = []
        while not q.empty():
            items.append(q.get())
        return items

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Agent:
    """The agent's end of the control socket."""

    def __init__(self, path):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)

    def accept(self):
        try:
            self.conn, _ = self.listener.accept()
        except socket.timeout:
            fail(f"counter did not connect to {self.path} within {TIMEOUT}s")
        self.conn.settimeout(TIMEOUT)
        self.reader = self.conn.makefile("rb")

    def send(self, raw):
        self.conn.sendall(raw.encode() if isinstance(raw, str) else raw)

    def recv(self):
        try:
            line = self.reader.readline()
        except socket.timeout:
            fail(f"no reply within {TIMEOUT}s")
        if not line.endswith(b"\n"):
            fail(f"connection closed or line unterminated: {line!r}")
        try:
            return json.loads(line)
        except ValueError as e:
            fail(f"reply is not JSON ({e}): {line!r}")

    def hello(self, proc, restored):
        msg = self.recv()
        want = {"op": "hello", "pid": proc.pid, "restored": restored}
        if msg != want:
            fail(f"hello: got {msg}, want {want}")

    def checkpoint(self, d):
        self.send(json.dumps({"op": "checkpoint", "dir": d}) + "\n")
        return self.recv()


def saved_count(d):
    path = os.path.join(d, state_file)
    try:
        with open(path) as f:
            text = f.read()
        return int(json.loads(text)["count"] if state_file.endswith(".json") else text.strip())
    except (OSError, ValueError, KeyError) as e:
        fail(f"bad state file {path}: {e}")


def fresh_dir(name):
    d = os.path.join(workdir, name)
    os.mkdir(d)
    return d


def plain():
    c = Counter()
    try:
        got = [c.count() for _ in range(3)]
        if got != [1, 2, 3]:
            fail(f"counts {got}, want [1, 2, 3]")
        if errs := Counter.drain(c.err):
            fail(f"unexpected stderr: {errs}")
    finally:
        c.kill()


def unreachable():
    sock = os.path.join(workdir, "nobody.sock")
    c = Counter(FERRY_CONTROL=sock)
    try:
        got = [c.count() for _ in range(3)]
        if got != [1, 2, 3]:
            fail(f"counts {got}, want [1, 2, 3]")
        errs = Counter.drain(c.err)
        if len(errs) != 1 or sock not in errs[0]:
            fail(f"want one stderr line naming {sock}, got {errs}")
    finally:
        c.kill()


def migrate():
    agent = Agent(os.path.join(workdir, "source.sock"))
    c = Counter(FERRY_CONTROL=agent.path)
    try:
        agent.accept()
        agent.hello(c.proc, False)
        seen = [c.count() for _ in range(5)]

        # First attempt: checkpoint, stop, then roll back.
        d1 = fresh_dir("ckpt1")
        if (r := agent.checkpoint(d1)) != {"ok": True}:
            fail(f"checkpoint 1: {r}")
        n1 = saved_count(d1)
        os.kill(c.proc.pid, signal.SIGSTOP)
        time.sleep(0.2)  # lets lines printed before the stop reach the queue
        Counter.drain(c.out)
        if n1 < seen[-1]:
            fail(f"saved count {n1} is older than the printed {seen[-1]}")
        time.sleep(0.4)
        if stray := Counter.drain(c.out):
            fail(f"counted while stopped: {stray}")
        os.kill(c.proc.pid, signal.SIGCONT)
        later = [c.count() for _ in range(3)]

        # Second attempt over the same connection, then the real migration: kill the source.
        d2 = fresh_dir("ckpt2")
        if (r := agent.checkpoint(d2)) != {"ok": True}:
            fail(f"checkpoint 2: {r}")
        n2 = saved_count(d2)
        os.kill(c.proc.pid, signal.SIGSTOP)
        if n2 < later[-1]:
            fail(f"second saved count {n2} is older than the printed {later[-1]}")
    finally:
        c.kill()

    target = Agent(os.path.join(workdir, "target.sock"))
    c = Counter(FERRY_CONTROL=target.path, FERRY_RESTORE=d2)
    try:
        target.accept()
        target.hello(c.proc, True)
        # Written before the helper connected, so it must already be on its way.
        if (l := c.line()) != f"restored count={n2}":
            fail(f"first line {l!r}, want 'restored count={n2}'")
        if (n := c.count()) != n2 + 1:
            fail(f"first count after restore {n}, want {n2 + 1}")
    finally:
        c.kill()


def errors():
    agent = Agent(os.path.join(workdir, "control.sock"))
    c = Counter(FERRY_CONTROL=agent.path)
    try:
        agent.accept()
        agent.hello(c.proc, False)

        def expect_error(raw, needle):
            agent.send(raw)
            r = agent.recv()
            if r.get("ok") is not False or needle not in r.get("error", ""):
                fail(f"{raw!r}: got {r}, want ok=false with error containing {needle!r}")

        expect_error("not json\n", "malformed")
        expect_error('{"op": "checkpoint"\n', "malformed")
        expect_error('{"dir": "/tmp"}\n', "op")
        expect_error('{"op":"dance"}\n', "unknown op dance")
        expect_error(json.dumps({"op": "checkpoint", "dir": "relative/dir"}) + "\n", "absolute")
        missing = os.path.join(workdir, "missing", "dir")
        expect_error(json.dumps({"op": "checkpoint", "dir": missing}) + "\n", missing)

        # Quotes and backslashes in the path, extra fields, and a request split across writes.
        d = fresh_dir('we"ird\\dir')
        raw = json.dumps({"extra": [1, {"op": "x"}], "op": "checkpoint", "dir": d}) + "\n"
        agent.send(raw[:7])
        time.sleep(0.2)
        agent.send(raw[7:])
        if (r := agent.recv()) != {"ok": True}:
            fail(f"checkpoint into {d!r}: {r}")
        saved_count(d)

        if c.proc.poll() is not None:
            fail(f"counter exited with {c.proc.returncode}")
        c.count()  # still running normally
    finally:
        c.kill()


try:
    {"plain": plain, "unreachable": unreachable, "migrate": migrate, "errors": errors}[case]()
except OSError as e:
    fail(f"{type(e).__name__}: {e}")
PY

passed=0
failed=0

# run NAME STATE_FILE CMD...: runs every case against one counter.
run() {
    local name=$1 state=$2 case dir
    shift 2
    for case in plain unreachable migrate errors; do
        dir=$(mktemp -d "$work/$name-$case.XXXX")
        if python3 -c "$AGENT" "$case" "$state" "$dir" "$@"; then
            echo "ok   $name $case"
            passed=$((passed + 1))
        else
            echo "FAIL $name $case"
            failed=$((failed + 1))
        fi
    done
}

# fail_all NAME WHY: a counter that could not be built fails all its cases.
fail_all() {
    echo "FAIL $1 (all cases): $2"
    failed=$((failed + 4))
}

run python state.json python3 "$here/examples/counter.py"

if gcc -Wall -Wextra -Werror -O2 -pthread "$here/examples/counter.c" -o "$work/counter-c"; then
    run c state.txt "$work/counter-c"
else
    fail_all c "gcc failed"
fi

rust_bin="${CARGO_TARGET_DIR:-$root/target}/debug/examples/counter"
if (cd "$root" && cargo build -q -p ferry-coop --example counter); then
    run rust state.txt "$rust_bin"
else
    fail_all rust "cargo build failed"
fi

echo "coop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
