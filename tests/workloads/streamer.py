#!/usr/bin/env python3
"""streamer.py PORT - an HTTP/1.1 server whose answers stream slowly, for moving connections.

GET /stream/N answers N bytes (Content-Length: N, keep-alive) in 16 KiB writes 10 ms apart
(about 1.6 MB/s): byte i of the body is (i * 7 + 3) % 251, so a client checks every byte
without knowing where a write began. Any other path is 404. Connections stay open between
requests (HTTP/1.1 keep-alive); each connection is served by its own thread.

Output, one line each, flushed:
  listening PORT
  served N bytes                            (after each stream)
"""
import http.server
import socketserver
import sys
import time

CHUNK = 16384


def pattern(start, n):
    return bytes((i * 7 + 3) % 251 for i in range(start, start + n))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "stream" or not parts[1].isdigit():
            self.send_error(404)
            return
        n = int(parts[1])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        sent = 0
        while sent < n:
            k = min(CHUNK, n - sent)
            self.wfile.write(pattern(sent, k))
            self.wfile.flush()
            sent += k
            time.sleep(0.01)
        print("served %d bytes" % n, flush=True)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    port = int(sys.argv[1])
    srv = Server(("0.0.0.0", port), Handler)
    print("listening %d" % port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
