"""Helper for programs that take part in ferry's *cooperative* checkpoint protocol.

A program that wants to be migrated without CRIU saves its own state when the ferry agent asks.
This module talks to the agent; the program supplies a callback that writes its state files.

Protocol (one UTF-8 JSON object per ``\\n``-terminated line):

- The agent starts the program with ``FERRY_CONTROL=<path>``, a UNIX stream socket the agent
  listens on. :func:`serve` connects to it from a daemon thread.
- On a migration target the program also gets ``FERRY_RESTORE=<dir>`` (:func:`restore_dir`), the
  files saved on the source. Load them *before* calling :func:`serve`.
- On connecting the helper sends ``{"op":"hello","pid":<pid>,"restored":<true|false>}``.
- The agent may then send ``{"op":"checkpoint","dir":"<absolute dir>"}`` any number of times.
  The helper calls ``save(dir)`` (dir exists and is empty) and answers ``{"ok":true}``, or
  ``{"ok":false,"error":"<message>"}`` if ``save`` raised. After ``ok`` the agent SIGSTOPs the
  program and later kills it, or SIGCONTs it if the migration rolled back (the program just
  continues).
- Unknown ops get ``{"ok":false,"error":"unknown op <op>"}``; malformed lines get the same shape
  with a description. The connection stays up.
- Without ``FERRY_CONTROL`` nothing happens. If connecting fails, one line goes to stderr and
  the program carries on without cooperative checkpointing.

``save`` runs on the helper thread: protect the state with a lock so the snapshot is consistent.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import Callable

CONTROL_ENV = "FERRY_CONTROL"
RESTORE_ENV = "FERRY_RESTORE"


def restore_dir() -> str | None:
    """The directory to load saved state from on a migration target, else None."""
    return os.environ.get(RESTORE_ENV) or None


def serve(save: Callable[[str], None]) -> threading.Thread | None:
    """Start answering the agent's checkpoint requests with ``save(dir)`` in a daemon thread.

    Call once, after any state from :func:`restore_dir` was loaded: the hello it sends tells
    the agent the program is ready. Returns None when ``FERRY_CONTROL`` is unset.
    """
    control = os.environ.get(CONTROL_ENV)
    if not control:
        return None
    restored = restore_dir() is not None
    thread = threading.Thread(
        target=_run, args=(control, restored, save), name="ferry-coop", daemon=True
    )
    thread.start()
    return thread


def _run(control: str, restored: bool, save: Callable[[str], None]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(control)
    except OSError as e:
        sock.close()
        _warn(f"cannot connect to {CONTROL_ENV}={control}: {e}; "
              "running without cooperative checkpointing")
        return
    with sock:
        try:
            _send(sock, {"op": "hello", "pid": os.getpid(), "restored": restored})
            with sock.makefile("rb") as lines:
                for line in lines:  # ends when the agent closes the connection
                    _send(sock, _handle(line, save))
        except OSError as e:
            _warn(f"control connection {control} failed: {e}; no further checkpoints")


def _handle(line: bytes, save: Callable[[str], None]) -> dict:
    """The reply to one request line."""
    try:
        msg = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        return _error(f"malformed line: {e}")
    if not isinstance(msg, dict):
        return _error("malformed line: expected a JSON object")
    op = msg.get("op")
    if not isinstance(op, str):
        return _error('malformed line: missing "op" string field')
    if op != "checkpoint":
        return _error(f"unknown op {op}")
    d = msg.get("dir")
    if not isinstance(d, str):
        return _error('checkpoint needs a "dir" string field')
    if not os.path.isabs(d):
        # A relative path would resolve against our cwd, which means nothing to the agent.
        return _error(f"checkpoint dir must be an absolute path, got {d!r}")
    try:
        save(d)
    except Exception as e:  # any failure of the program's callback is reported, not fatal
        return _error(f"save into {d} failed: {type(e).__name__}: {e}")
    return {"ok": True}


def _error(message: str) -> dict:
    return {"ok": False, "error": message}


def _send(sock: socket.socket, msg: dict) -> None:
    # Compact separators give exactly {"ok":true}; json escapes any newline inside strings.
    line = json.dumps(msg, separators=(",", ":"), ensure_ascii=False) + "\n"
    sock.sendall(line.encode("utf-8"))


def _warn(message: str) -> None:
    print(f"ferry_coop: {message}", file=sys.stderr, flush=True)
