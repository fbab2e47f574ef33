#!/usr/bin/env python3
"""echoserver.py PORT - a TCP line echo server that counts the connections it accepts.

Listens on 0.0.0.0:PORT (SO_REUSEADDR) and echoes every line it receives on every connection,
unchanged, serving any number of connections at once (one thread, selectors). It keeps no other
state, so what a migration must carry is the listening socket and the established connections
(their sequence numbers and queues). The lab (vagrant/lab-test.sh) keeps one client connection
open through migrations and checks that the server accepted exactly one.

Output, one line each, flushed:
  listening PORT
  accepted N from HOST:PORT                 (N = connections accepted since the program started)
  closed HOST:PORT after L lines            (when a client closes or its connection fails)
"""
import selectors
import socket
import sys


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: echoserver.py PORT")
    port = int(sys.argv[1])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, None)
    say(f"listening {port}")
    accepted = 0
    # connection -> [peer, bytes received since the last newline, lines echoed]
    conns = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    conn, (host, cport) = srv.accept()
                except BlockingIOError:
                    continue
                accepted += 1
                conn.setblocking(True)  # sendall of an echo: small, and the client reads
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[conn] = [f"{host}:{cport}", b"", 0]
                sel.register(conn, selectors.EVENT_READ, "conn")
                say(f"accepted {accepted} from {host}:{cport}")
                continue
            conn = key.fileobj
            state = conns[conn]
            try:
                data = conn.recv(65536)
                if data:
                    buf = state[1] + data
                    cut = buf.rfind(b"\n") + 1
                    if cut:
                        conn.sendall(buf[:cut])
                        state[2] += buf[:cut].count(b"\n")
                    state[1] = buf[cut:]
                    continue
            except OSError:
                pass
            sel.unregister(conn)
            conn.close()
            del conns[conn]
            say(f"closed {state[0]} after {state[2]} lines")


if __name__ == "__main__":
    main()
