#!/usr/bin/env python3
"""tcpserver.py PORT - a migration workload with a listening socket and in-memory state.

Listens on 0.0.0.0:PORT (SO_REUSEADDR) and serves connections one at a time with a plain
blocking accept loop: read one line, answer "hits=N pid=PID echo=LINE\\n", close. N counts the
requests served since the program started (the first answer says hits=1), so after a migration
it must continue from where it was. It never opens connections itself.

A connection that sends nothing before closing (e.g. a port probe) gets no answer and is not
counted. A client that connects and never sends blocks the server (it is sequential).

Output, one line each, flushed:
  listening PORT
  served hits=N echo=LINE                   (after each answer)

LINE is the request line without its trailing "\\r\\n"/"\\n", decoded as UTF-8 (bad bytes
replaced); at most 4096 bytes are read.
"""
import os
import socket
import sys


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: tcpserver.py PORT")
    port = int(sys.argv[1])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)
    say(f"listening {port}")
    hits = 0
    while True:
        conn, _ = srv.accept()
        try:
            with conn, conn.makefile("rb") as f:
                raw = f.readline(4096)
                if not raw:
                    continue  # closed without a request
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                hits += 1
                conn.sendall(f"hits={hits} pid={os.getpid()} echo={line}\n".encode())
            say(f"served hits={hits} echo={line}")
        except OSError:
            pass  # a client that went away mid-request does not stop the server


if __name__ == "__main__":
    main()
