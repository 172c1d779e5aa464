"""A ground-truth server for comparisons: comes up after --start-ms, then answers every HTTP/1.1 request (keep-alive)
after sleeping --delay-ms. Two of them with different delays are a known regression to detect."""

from __future__ import annotations

import argparse
import http.server
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--start-ms", type=float, default=0.0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    time.sleep(args.start_ms / 1000)
    delay = args.delay_ms / 1000

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            if delay:
                time.sleep(delay)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")  # one segment

        def log_message(self, *_: object) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
