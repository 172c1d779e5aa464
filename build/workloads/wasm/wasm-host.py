#!/usr/bin/env python3
"""A tiny HTTP host for a WebAssembly module: the stand-in for `wasmtime serve` / WasmEdge here.

No wasmtime or WasmEdge CLI is installable on the test machines (see /work/shared/RUNTIMES.md), so
runlab's ``wasm`` runtime is validated with this host instead. The WebAssembly engine is real
(wasmtime-py, the Wasmtime C API); only the networking is done by the host, as in the Spin /
WasmEdge-plugin model: the host accepts HTTP/1.0 on 127.0.0.1, writes each request line into the
module's exported ``memory`` at offset 0 and calls the exported ``handle(len) -> body_len``; the
response body is what the module wrote at offset 2048 (the ABI of hello.wat). The module is
compiled and instantiated once, before listening, so cold start = interpreter + engine + compile.

Stdlib + wasmtime only, one connection at a time (the requests are tiny, the module call is µs).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

REQUEST_AT, REQUEST_MAX, BODY_AT = 0, 1024, 2048
HEAD_MAX = 8192
EPILOG = """examples:
  wasm-host.py build/workloads/wasm/hello.wat --port 8080      # compiles the text module at start
  wasm-host.py hello.wasm --port 8080 & curl -0 http://127.0.0.1:8080/
  wasm-host.py build/workloads/wasm/hello.wat --compile hello.wasm   # WAT -> binary module, then exit

in a runlab experiment (runtime: wasm):
  command: [python3, "{here}/wasm-host.py", "{here}/hello.wasm", --port, "{port}"]
  module: "{here}/hello.wasm"
"""


class Module:
    """One instantiated module and its ``handle`` export: request line in, response body out."""

    def __init__(self, path: str) -> None:
        import wasmtime

        self.store = wasmtime.Store(wasmtime.Engine())
        module = wasmtime.Module.from_file(self.store.engine, path)  # .wat text or binary .wasm
        exports = wasmtime.Instance(self.store, module, []).exports(self.store)
        memory, handle = exports.get("memory"), exports.get("handle")
        if not isinstance(memory, wasmtime.Memory) or not isinstance(handle, wasmtime.Func):
            raise ValueError("the module must export `memory` and a function `handle(i32) -> i32`")
        self.memory, self.handle = memory, handle

    def __call__(self, request_line: bytes) -> bytes:
        line = request_line[:REQUEST_MAX]
        self.memory.write(self.store, line, REQUEST_AT)
        n = self.handle(self.store, len(line))
        return bytes(self.memory.read(self.store, BODY_AT, BODY_AT + n))


def respond(conn: socket.socket, module: Module) -> None:
    """Read one request head, answer it with the module's body (HTTP/1.0: one request per connection)."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < HEAD_MAX:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    method = line.split(b" ", 1)[0]
    if method in (b"GET", b"HEAD"):
        try:
            status, body = b"200 OK", module(line)
        except Exception as e:  # a trap in the module: this request fails, the host keeps serving
            status, body = b"500 Internal Server Error", f"module trapped: {e}\n".encode()
    else:
        status, body = b"405 Method Not Allowed", b"only GET and HEAD\n"
    conn.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + (b"" if method == b"HEAD" else body))


def serve(module: Module, port: int, bind: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((bind, port))
        srv.listen(128)
        print(f"wasm-host: serving on {bind}:{srv.getsockname()[1]}", flush=True)
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5.0)
                try:
                    respond(conn, module)
                except OSError:
                    pass  # the client went away or stalled: drop it, keep serving


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wasm-host.py", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module", metavar="MODULE", help="the module: binary .wasm or text .wat")
    p.add_argument("--port", type=int, help="TCP port to listen on (required unless --compile)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--compile", metavar="OUT", help="write MODULE as a binary .wasm to OUT and exit")
    args = p.parse_args(argv)
    if not Path(args.module).is_file():
        print(f"wasm-host.py: {args.module}: no such file", file=sys.stderr)
        return 2
    try:
        import wasmtime
    except ImportError:
        print("wasm-host.py: the wasmtime Python package is missing (pip install wasmtime)", file=sys.stderr)
        return 2
    try:
        if args.compile:
            data = Path(args.module).read_bytes()
            wasm = data if data.startswith(b"\0asm") else wasmtime.wat2wasm(data.decode())
            Path(args.compile).write_bytes(wasm)
            return 0
        if args.port is None:
            p.error("--port is required (or --compile OUT)")
        module = Module(args.module)
    except (wasmtime.WasmtimeError, ValueError, UnicodeDecodeError) as e:
        print(f"wasm-host.py: {args.module}: " + " ".join(str(e).split())[:300], file=sys.stderr)
        return 2
    try:
        serve(module, args.port, args.bind)
    except OSError as e:
        print(f"wasm-host.py: {args.bind}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
