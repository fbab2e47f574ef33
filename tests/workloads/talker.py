#!/usr/bin/env python3
"""talker.py HOST PORT UDP_PORT - a workload that is a TCP client, and a UDP echo server.

Connects once to HOST:PORT and, every 10 ms, sends "N\\n" (N = 1, 2, 3, ...) and reads one line
back, which must be the same "N"; the connection is never remade. Meanwhile it answers every
datagram that reaches 0.0.0.0:UDP_PORT with "echo " and the datagram.

Output, one line each, flushed:
  connected HOST:PORT
  udp UDP_PORT
  sent N                                    (every 100th exchange)
  error TEXT                                (then it exits 1)
"""
import socket
import sys
import threading
import time


def udp_echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("udp %d" % port, flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(b"echo " + data, peer)


def main():
    host, port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    threading.Thread(target=udp_echo, args=(udp_port,), daemon=True).start()
    s = socket.create_connection((host, port), timeout=30)
    f = s.makefile("rb")
    print("connected %s:%d" % (host, port), flush=True)
    n = 0
    while True:
        n += 1
        try:
            s.sendall(b"%d\n" % n)
            line = f.readline()
        except OSError as e:
            print("error %s" % e, flush=True)
            sys.exit(1)
        if line.strip() != b"%d" % n:
            print("error answer %r to %d" % (line, n), flush=True)
            sys.exit(1)
        if n % 100 == 0:
            print("sent %d" % n, flush=True)
        time.sleep(0.01)


if __name__ == "__main__":
    main()
