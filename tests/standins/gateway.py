"""A serverless gateway stand-in (OpenFaaS-like API) for runlab's tests: scale from zero on invoke, scale to zero.

``/function/NAME`` starts the function's process when it has no replica (the cold start: the request waits
until the function accepts connections), then forwards the request and relays the answer.
``POST /system/scale-function/NAME`` with ``{"replicas": 0}`` stops it; ``GET /system/function/NAME`` reports
``replicas``. With ``--idle-timeout S`` a function that served nothing for S seconds is stopped, as a
platform's idle scaler does. Prints the port it listens on, then serves until SIGTERM.

  python gateway.py --function fn -- python function.py --port {port} --delay-ms 150
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time


class Function:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.last_used = time.monotonic()
        self.lock = threading.Lock()
        self.starts = 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> None:
        with self.lock:
            self.last_used = time.monotonic()
            if self.running():
                return
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.proc = subprocess.Popen([a.replace("{port}", str(self.port)) for a in self.argv],
                                         stdin=subprocess.DEVNULL)
            self.starts += 1
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    return
                except OSError:
                    time.sleep(0.002)
            raise RuntimeError("the function did not come up")

    def scale_to_zero(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--function", required=True, help="the function's name")
    ap.add_argument("--idle-timeout", type=float, default=0.0)
    ap.add_argument("command", nargs="+", help="the function's command line, {port} filled")
    args = ap.parse_args()
    fn = Function(args.command)
    name = args.function

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
            self.send_response(status)
            for k, v in headers or []:
                if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path.startswith(f"/function/{name}"):
                try:
                    fn.ensure()
                    conn = http.client.HTTPConnection("127.0.0.1", fn.port, timeout=30)
                    conn.request(self.command, self.path, body=body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                    fn.last_used = time.monotonic()
                    self._reply(resp.status, data, resp.getheaders())
                except (OSError, RuntimeError, http.client.HTTPException) as e:
                    self._reply(502, f"function unavailable: {e}".encode())
            elif self.path == f"/system/scale-function/{name}" and self.command == "POST":
                if json.loads(body or b"{}").get("replicas") == 0:
                    fn.scale_to_zero()
                self._reply(202, b"")
            elif self.path == f"/system/function/{name}":
                replicas = 1 if fn.running() else 0
                self._reply(200, json.dumps({"name": name, "replicas": replicas, "availableReplicas": replicas,
                                             "coldStarts": fn.starts}).encode())
            else:
                self._reply(404, b"not found")

        do_GET = do_POST = _handle

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True

    def idle_scaler() -> None:
        while True:
            time.sleep(0.05)
            if fn.running() and time.monotonic() - fn.last_used > args.idle_timeout and not fn.lock.locked():
                fn.scale_to_zero()

    if args.idle_timeout > 0:
        threading.Thread(target=idle_scaler, daemon=True).start()

    def on_term(*_: object) -> None:
        fn.scale_to_zero()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    finally:
        fn.scale_to_zero()


if __name__ == "__main__":
    main()
