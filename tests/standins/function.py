"""A serverless function stand-in: an HTTP server that takes --delay-ms to come up (its cold start) and says
``X-Cold-Start: true`` on the first request it serves, ``false`` afterwards, as a function can report it."""

from __future__ import annotations

import argparse
import http.server
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--tag", default="", help="ignored: lets a test find its processes")
    args = ap.parse_args()
    time.sleep(args.delay_ms / 1000)  # the runtime and the function's own initialisation
    served = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            cold = served[0] == 0
            served[0] += 1
            out = b"hello from the function " + body
            self.send_response(200)
            self.send_header("X-Cold-Start", "true" if cold else "false")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _answer

        def log_message(self, *a: object) -> None:
            pass

    http.server.HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
