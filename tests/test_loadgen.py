"""The load generator against a real single-threaded HTTP/1.1 server on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.loadgen import (
    Calibration,
    HttpConnection,
    LoadResult,
    calibrate,
    closed_loop,
    open_loop,
    parse_target,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Reply:
    """What the server does with one request."""

    data: bytes = OK
    close: bool = False  # close the connection after answering
    drop: bool = False  # close the connection instead of answering
    silent: bool = False  # never answer
    stall_s: float = 0.0  # block the whole server (every connection) before answering
    trickle: bool = False  # send the answer one byte per send()


class LoopbackServer:
    """A single-threaded keep-alive HTTP/1.1 server in a thread; ``reply(i)`` scripts the i-th request (from 0)."""

    def __init__(self, reply: Callable[[int], Reply]) -> None:
        self.reply = reply
        self.count = 0
        self.accepted = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body) of every request, in arrival order
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1024)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="loopback-http", daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        buffers: dict[socket.socket, bytes] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            conn, _ = self._listener.accept()
                            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            sel.register(conn, selectors.EVENT_READ, "conn")
                            buffers[conn] = b""
                            self.accepted += 1
                        continue
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    if not data or not self._handle(conn, buffers[conn] + data, buffers):
                        sel.unregister(conn)
                        buffers.pop(conn, None)
                        conn.close()
        finally:
            for conn in buffers:
                conn.close()
            sel.close()
            self._listener.close()

    def _handle(self, conn: socket.socket, buf: bytes, buffers: dict[socket.socket, bytes]) -> bool:
        """Answer every complete request head in ``buf``; False when the connection must close."""
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = buf[:end]
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), 0)
            if len(buf) < end + 4 + length:
                break  # the body is not all here yet
            self.requests.append((head, buf[end + 4:end + 4 + length]))
            buf = buf[end + 4 + length:]
            reply = self.reply(self.count)
            self.count += 1
            if reply.stall_s:
                time.sleep(reply.stall_s)  # stalls every connection: this server has one thread
            if reply.drop:
                return False
            if reply.silent:
                continue
            try:
                if reply.trickle:
                    for i in range(len(reply.data)):
                        conn.sendall(reply.data[i:i + 1])
                else:
                    conn.sendall(reply.data)
            except OSError:
                return False
            if reply.close:
                return False
        buffers[conn] = buf
        return True


@contextlib.contextmanager
def server(reply: Callable[[int], Reply] = lambda i: Reply()) -> Iterator[LoopbackServer]:
    with LoopbackServer(reply) as srv:
        yield srv


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_consistent(result: LoadResult) -> None:
    assert result.requests == result.ok + result.errors
    assert sum(result.error_kinds.values()) == result.errors
    assert len(result.latencies_ms) == result.ok
    assert all(lat >= 0 for lat in result.latencies_ms)


# -- URL handling ----------------------------------------------------------------------------------


def test_parse_target_builds_the_request() -> None:
    t = parse_target("http://127.0.0.1:8080/a/b?x=1#frag")
    assert (t.host, t.port) == ("127.0.0.1", 8080)
    assert t.request == b"GET /a/b?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: runlab-loadgen\r\n\r\n"
    assert parse_target("http://example.org").request.startswith(b"GET / HTTP/1.1\r\nHost: example.org\r\n")
    assert b"Host: [::1]:81\r\n" in parse_target("http://[::1]:81/").request


@pytest.mark.parametrize(("url", "message"), [
    ("https://example.org/", "https is not supported"),
    ("ftp://example.org/", "expected an http:// URL"),
    ("http:///path", "no host"),
    ("http://example.org:99999/", "bad port"),
])
def test_parse_target_rejects_what_it_cannot_drive(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target(url)


# -- the response parser, fed one byte at a time (pure logic, so a fake transport) ------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def feed(conn: HttpConnection, data: bytes) -> None:
    """What the transport does when ``data`` arrives: receive into the protocol's buffer, then tell it."""
    buf = conn.get_buffer(len(data))
    buf[: len(data)] = data
    conn.buffer_updated(len(data))


class Outcomes:
    """A ResponseHandler that only remembers what it heard."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, object]] = []

    def on_response(self, conn: HttpConnection, done: float) -> None:
        self.heard.append(("response", conn.status))

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        self.heard.append(("failure", kind))


@pytest.mark.parametrize(("response", "status", "reusable"), [
    (OK, 200, True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
     200, True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nabc", 201, True),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 204, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", 200, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", 200, True),
])
def test_parser_handles_every_framing_byte_by_byte(response: bytes, status: int, reusable: bool) -> None:
    async def scenario() -> None:
        heard = Outcomes()
        conn = HttpConnection(asyncio.get_running_loop(), heard)
        transport = FakeTransport()
        conn.connection_made(transport)
        for _ in range(2 if reusable else 1):
            heard.heard.clear()
            conn.send(b"GET / HTTP/1.1\r\n\r\n", 5.0)
            assert not conn.usable  # busy while in flight
            for i in range(len(response)):
                assert heard.heard == []
                feed(conn, response[i:i + 1])
            assert heard.heard == [("response", status)]
            assert conn.usable is reusable
        assert transport.written.count(b"GET /") == (2 if reusable else 1)

    run(scenario())


@pytest.mark.parametrize(("events", "heard"), [
    # A close-delimited body completes at EOF.
    ([b"HTTP/1.1 200 OK\r\n\r\nbody until", b" the server closes", "eof"], [("response", 200)]),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "eof"], [("failure", "closed")]),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], [("failure", "protocol")]),
    ([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], [("failure", "protocol")]),
    (["reset"], [("failure", "reset")]),
])
def test_parser_reports_ends_and_failures(events: list[bytes | str], heard: list[tuple[str, object]]) -> None:
    async def scenario() -> None:
        outcomes = Outcomes()
        conn = HttpConnection(asyncio.get_running_loop(), outcomes)
        conn.connection_made(FakeTransport())
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 5.0)
        for event in events:
            if event == "eof":
                conn.eof_received()
                conn.connection_lost(None)
            elif event == "reset":
                conn.connection_lost(ConnectionResetError())
            else:
                assert isinstance(event, bytes)
                feed(conn, event)
        assert outcomes.heard == heard
        assert not conn.usable

    run(scenario())


def test_a_request_times_out_once() -> None:
    async def scenario() -> None:
        outcomes = Outcomes()
        conn = HttpConnection(asyncio.get_running_loop(), outcomes)
        transport = FakeTransport()
        conn.connection_made(transport)
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 0.01)
        await asyncio.sleep(0.05)
        feed(conn, OK)  # too late: ignored
        assert outcomes.heard == [("failure", "timeout")]
        assert transport.closed and not conn.usable

    run(scenario())


def test_timeout_is_per_request_with_one_timer_per_connection() -> None:
    """The timer armed by an earlier request must neither fire a later one early nor let a shorter one run late."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        outcomes = Outcomes()
        conn = HttpConnection(loop, outcomes)
        conn.connection_made(FakeTransport())
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 0.05)
        feed(conn, OK)
        sent = loop.time()
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 0.2)  # the 0.05 s timer is still armed
        await asyncio.sleep(0.1)
        assert outcomes.heard == [("response", 200)]  # not failed when the first deadline passed
        feed(conn, OK)
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 5.0)
        feed(conn, OK)
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 0.02)  # shorter than the armed 5 s
        while len(outcomes.heard) < 4:
            await asyncio.sleep(0.005)
        assert outcomes.heard[-1] == ("failure", "timeout")
        assert loop.time() - sent < 1.0

    run(scenario())


def test_parse_target_builds_post_and_put_with_body_and_headers() -> None:
    t = parse_target("http://127.0.0.1:8080/fn", "POST", '{"n": "é"}', {"Content-Type": "application/json"})
    head, body = t.request.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /fn HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head + b"\r\n"
    assert b"\r\nContent-Length: 11\r\n" in head + b"\r\n" and body == '{"n": "é"}'.encode()
    assert b"Content-Length: 0" in parse_target("http://h/", "PUT").request  # a body-less PUT still says 0
    assert b"Content-Length" not in parse_target("http://h/").request
    for bad in ({"X-A": "1\r\nX-Injected: 2"}, {"Bad Name": "x"}, {"": "x"}):
        with pytest.raises(ValueError, match="header"):
            parse_target("http://h/", "POST", "x", bad)
    with pytest.raises(ValueError, match="method 'DELETE'"):
        parse_target("http://h/", "DELETE")


def test_closed_and_open_loop_send_the_body_on_every_request() -> None:
    body = "payload-" + "x" * 3000  # several kB: the server may have to read it over more than one recv()
    with server() as srv:
        closed = run(closed_loop(srv.url, requests=40, concurrency=4, method="POST", body=body,
                                 headers={"Content-Type": "text/plain"}))
        opened = run(open_loop(srv.url, rate=200, duration=0.2, method="PUT", body=body))
    assert (closed.ok, closed.errors) == (40, 0) and opened.errors == 0 and opened.ok == opened.requests > 0
    assert len(srv.requests) == 40 + opened.requests
    assert all(b == body.encode() for _h, b in srv.requests)
    assert [h.split(b" ", 1)[0] for h, _b in srv.requests] == [b"POST"] * 40 + [b"PUT"] * opened.requests
    assert all(b"Content-Type: text/plain" in h for h, _b in srv.requests[:40])


# -- closed loop ---------------------------------------------------------------------------------


def test_closed_loop_exact_counts_over_keep_alive() -> None:
    with server() as srv:
        result = run(closed_loop(srv.url, requests=500, concurrency=8))
    assert_consistent(result)
    assert (result.mode, result.requests, result.ok, result.errors) == ("closed", 500, 500, 0)
    assert srv.count == 500
    assert result.connections_opened == 8 == srv.accepted  # keep-alive: one connection per worker
    assert (result.concurrency, result.target_rps, result.overhead_ms) == (8, 0.0, 0.0)
    assert result.achieved_rps == pytest.approx(500 / result.duration_s)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize(("reply", "one_connection_each"), [
    (Reply(data=CHUNKED), False),
    (Reply(data=CHUNKED, trickle=True), False),
    (Reply(data=b"HTTP/1.1 200 OK\r\n\r\nclose-delimited body", close=True), True),
    (Reply(data=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", close=True), True),
    (Reply(data=b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True), True),
])
def test_closed_loop_reads_every_framing(reply: Reply, one_connection_each: bool) -> None:
    with server(lambda i: reply) as srv:
        result = run(closed_loop(srv.url, requests=60, concurrency=3))
    assert_consistent(result)
    assert (result.ok, result.errors) == (60, 0)
    assert result.connections_opened == (60 if one_connection_each else 3)


def test_unexpected_status_is_an_error() -> None:
    unavailable = Reply(data=b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    with server(lambda i: unavailable) as srv:
        result = run(closed_loop(srv.url, requests=20, concurrency=2))
        assert run(closed_loop(srv.url, requests=5, concurrency=1, expect_status=503)).ok == 5
    assert (result.ok, result.errors, result.error_kinds) == (0, 20, {"status_503": 20})
    assert result.latencies_ms == []


def test_garbage_response_is_a_protocol_error() -> None:
    with server(lambda i: Reply(data=b"SSH-2.0-OpenSSH\r\n\r\n")) as srv:
        result = run(closed_loop(srv.url, requests=6, concurrency=2))
    assert result.error_kinds == {"protocol": 6}


def test_server_closing_connections_counts_errors_and_reconnects() -> None:
    with server(lambda i: Reply(drop=i % 10 == 9)) as srv:
        result = run(closed_loop(srv.url, requests=200, concurrency=4, timeout=2.0))
    assert_consistent(result)
    assert srv.count == 200  # a failed request is counted, never retried
    assert (result.ok, result.errors) == (180, 20)
    assert set(result.error_kinds) <= {"closed", "reset"}
    assert result.connections_opened == srv.accepted > 4


def test_closed_port_gives_all_errors_without_hanging() -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    started = time.monotonic()
    closed = run(closed_loop(url, requests=50, concurrency=4, timeout=1.0))
    opened = run(open_loop(url, rate=100, duration=0.5, timeout=1.0))
    assert time.monotonic() - started < 0.5 + 2 * 1.0
    assert (closed.requests, closed.ok, closed.errors, closed.error_kinds) == (50, 0, 50, {"refused": 50})
    assert (opened.requests, opened.ok, opened.errors, opened.error_kinds) == (50, 0, 50, {"refused": 50})
    assert closed.achieved_rps == opened.achieved_rps == 0.0


def test_silent_server_times_out() -> None:
    with server(lambda i: Reply(silent=True)) as srv:
        started = time.monotonic()
        result = run(closed_loop(srv.url, requests=4, concurrency=2, timeout=0.3))
        elapsed = time.monotonic() - started
    assert result.error_kinds == {"timeout": 4}
    assert 0.55 < elapsed < 2.0


# -- open loop -----------------------------------------------------------------------------------


def test_open_loop_achieves_the_rate() -> None:
    with server() as srv:
        result = run(open_loop(srv.url, rate=200, duration=2.0))
    assert_consistent(result)
    assert (result.mode, result.requests, result.ok, result.errors, srv.count) == ("open", 400, 400, 0, 400)
    assert result.target_rps == 200
    assert result.achieved_rps == pytest.approx(200, rel=0.05)
    assert 1 <= result.concurrency <= result.connections_opened


def test_open_loop_pool_never_exceeds_max_connections() -> None:
    with server(lambda i: Reply(silent=True)) as srv:
        started = time.monotonic()
        result = run(open_loop(srv.url, rate=50, duration=0.2, max_connections=3, timeout=0.3))
        elapsed = time.monotonic() - started
    assert (result.requests, result.errors, result.error_kinds) == (10, 10, {"timeout": 10})
    assert result.concurrency == 3
    assert elapsed < 0.2 + 0.3 + 1.0


def test_open_loop_shows_a_stall_that_closed_loop_hides() -> None:
    """Coordinated omission: one 300 ms server stall is one slow sample closed-loop, dozens open-loop."""
    stall = lambda i: Reply(stall_s=0.3 if i == 100 else 0.0)  # noqa: E731
    with server(stall) as srv:
        opened = run(open_loop(srv.url, rate=200, duration=1.5))
    with server(stall) as srv:
        closed = run(closed_loop(srv.url, requests=300, concurrency=1))
    for result in (opened, closed):
        assert_consistent(result)
        assert (result.ok, result.errors) == (300, 0)
        assert max(result.latencies_ms) >= 290
    slow_open = [lat for lat in opened.latencies_ms if lat >= 200]
    slow_closed = [lat for lat in closed.latencies_ms if lat >= 200]
    # Requests intended during the first ~100 ms of the stall waited ≥ 200 ms: about 20 at 200 req/s.
    assert len(slow_open) >= 10
    assert len(slow_closed) == 1


# -- calibration ---------------------------------------------------------------------------------


def test_calibrate_measures_a_floor() -> None:
    cal = run(calibrate(0.4))
    assert isinstance(cal, Calibration)
    assert 0 < cal.floor_p50_ms <= cal.floor_p99_ms < 100
    assert cal.max_rps > 100


RECORDING_SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.answer(b"")
    def do_POST(self):
        self.answer(self.rfile.read(int(self.headers["Content-Length"])))
    def answer(self, body):
        if body:
            with open(sys.argv[2], "ab") as f:
                kind = self.headers.get("Content-Type", "").encode()
                f.write(self.command.encode() + b" " + kind + b" " + body + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_load_phase_posts_the_filled_body_to_a_real_server(tmp_path: Path) -> None:
    """An experiment's load: method, body (placeholders filled) and headers reach a real server process."""
    from agent.engine import Runner
    from runlab.experiment import parse

    script = tmp_path / "server.py"
    script.write_text(RECORDING_SERVER)
    log = tmp_path / "bodies.txt"
    exp = parse({
        "name": "post-load", "repeat": 1, "warmup": 0, "phases": ["load"],
        "ready": {"http": "http://127.0.0.1:{port}/"},
        "load": {"requests": 30, "concurrency": 3, "method": "POST", "body": '{{"from": "{variant}"}}',
                 "headers": {"Content-Type": "application/json"}},
        "variants": [{"name": "py", "runtime": "process",
                      "command": [sys.executable, str(script), "{port}", str(log)]}],
    }, "post-load.yaml")
    result = asyncio.run(Runner(exp).run())
    [load] = result.variants[0].load
    assert (load.requests, load.ok, load.errors) == (30, 30, 0)
    assert log.read_bytes().splitlines() == [b'POST application/json {"from": "py"}'] * 30


@pytest.mark.parametrize(("load", "error"), [
    ({"requests": 1, "body": "x"}, "load.body: needs method POST or PUT (got GET)"),
    ({"requests": 1, "method": "POST", "body": '{"a": 1}'}, "load.body: "),
    ({"requests": 1, "method": "POST", "body": "{nope}"}, "load.body: unknown placeholder {nope}"),
    ({"requests": 1, "headers": {"Content-Length": "3"}}, "load.headers: Content-Length: set by the load generator"),
    ({"requests": 1, "headers": {"X-A": "1\nX-B: 2"}}, "load.headers: 'X-A': expected a header name"),
    ({"requests": 1, "method": "PATCH"}, "load.method"),
])
def test_load_request_settings_are_checked_when_the_file_is_read(load: dict[str, Any], error: str) -> None:
    from runlab.config import ConfigError
    from runlab.experiment import parse

    with pytest.raises(ConfigError) as e:
        parse({"name": "x", "ready": {"http": "http://127.0.0.1:{port}/"}, "load": load,
               "variants": [{"name": "v", "runtime": "process", "command": ["/bin/true"]}]}, "x.yaml")
    assert str(e.value).startswith("x.yaml: ") and error in str(e.value), str(e.value)


def test_a_failed_calibration_is_one_line_from_runlab_agent_run_not_a_traceback(
        tmp_path: Path, workloads: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The floor servers cannot start (here: the helper command is a shell that says something else)."""
    from agent import cli, pychild

    monkeypatch.setattr(pychild, "argv", lambda name, *args: ["/bin/sh", "-c", "echo not-a-port"])
    exp = tmp_path / "load.yaml"
    exp.write_text(f"""\
name: calibration-fails
repeat: 1
warmup: 0
phases: [load]
ready:
  http: "http://127.0.0.1:{{port}}/"
load:
  requests: 10
variants:
  - name: native
    runtime: process
    command: ["{workloads / 'hello'}", "--port", "{{port}}"]
""")
    assert cli.main(["run", str(exp), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"runlab-agent: {exp}: load: the load generator's calibration failed (calibrate: the floor server did " \
           "not start (said b'not-a-port\\n')); nothing was measured under load" in err, err
