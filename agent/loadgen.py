"""HTTP load generation for the latency phase: closed-loop and open-loop (constant-rate) runs over keep-alive HTTP/1.1.

Stdlib only, because it runs inside the agent on small boards: a minimal HTTP/1.1 client built on
``asyncio.Protocol`` (GET, or POST/PUT with a body; Content-Length / chunked / close-delimited response
bodies, ``Connection: close``),
two load shapes, and a calibration of the generator's own latency floor against a trivial server.

The hot path has no coroutine per request: a connection reports each outcome to the run that owns
it (a :class:`ResponseHandler`), which records it and hands the connection its next request from
within the same callback, as wrk's state machine does. Only connects are coroutines.

Every time is read from ``time.monotonic`` (CLOCK_MONOTONIC, the event loop's clock). Measuring code
returns raw latencies; percentiles and formatting live elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agent import pychild
from agent.aio import within

Mode = Literal["closed", "open"]

_now = time.monotonic

# A response head larger than this is not something a benchmark target sends: treat it as garbage.
MAX_HEAD_BYTES = 64 * 1024
# What one read may take from the socket into a connection's receive buffer.
READ_BYTES = 16 * 1024

# Parser states of one response.
_IDLE, _HEAD, _BODY_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _BODY_EOF = range(8)


@dataclass
class LoadResult:
    """One load run: counts, the achieved rate and every successful request's latency.

    ``requests`` counts attempted requests (``ok + errors``). ``achieved_rps`` is ``ok / duration_s``;
    ``duration_s`` runs from the start of the run to the last completion. ``target_rps`` is the
    open-loop arrival rate (0 for closed loop). ``concurrency`` is C for closed loop and, for open
    loop, the largest number of connections the pool held at once. ``latencies_ms`` holds every
    successful request's latency in completion order: from its send (closed loop) or from its
    intended send time (open loop). ``overhead_ms`` is the generator's calibrated floor (see
    :func:`calibrate`), 0 until the engine attaches it; nothing is subtracted.
    ``connections_opened`` counts TCP connects (more than ``concurrency`` means reconnects).
    ``error_kinds`` keys: refused, connect_timeout, connect_error (the connect failed), timeout,
    closed, reset, protocol (no complete response), status_NNN (a response other than expected).
    """

    mode: Mode
    url: str
    requests: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    duration_s: float
    achieved_rps: float
    target_rps: float
    concurrency: int
    latencies_ms: list[float]
    overhead_ms: float = 0.0
    connections_opened: int = 0


@dataclass(frozen=True)
class Calibration:
    """The generator's own floor on this machine: latency at concurrency 1 and the most req/s one core drives."""

    floor_p50_ms: float
    floor_p99_ms: float
    max_rps: float


@dataclass(frozen=True)
class Target:
    """An ``http://`` URL split into what a connection needs, with the request bytes built once."""

    url: str
    host: str
    port: int
    request: bytes


def parse_target(url: str, method: str = "GET", body: str | None = None,
                 headers: dict[str, str] | None = None, user_agent: str = "runlab-loadgen") -> Target:
    """Check ``url`` (http only) and build its request (``method``, with ``body`` sent with its
    Content-Length, and extra ``headers``); a ValueError names what is wrong. Also the serverless
    runtime's one-shot invocations (agent/runtimes/serverless.py)."""
    from urllib.parse import quote, urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ValueError(f"load target {url!r}: https is not supported by the load generator yet; use an http:// URL")
    if scheme != "http":
        raise ValueError(f"load target {url!r}: expected an http:// URL")
    host = parts.hostname
    if not host:
        raise ValueError(f"load target {url!r}: the URL has no host")
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise ValueError(f"load target {url!r}: bad port ({exc})")
    port = explicit_port or 80
    try:
        host_ascii = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"load target {url!r}: bad host name ({exc})")
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    host_header = f"[{host_ascii}]" if ":" in host_ascii else host_ascii
    if explicit_port is not None and explicit_port != 80:
        host_header += f":{explicit_port}"
    if method not in ("GET", "POST", "PUT"):
        raise ValueError(f"load target {url!r}: method {method!r}: expected GET, POST or PUT")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\n"
    for name, value in (headers or {}).items():
        if not name or any(c in name for c in ":\r\n \t") or any(c in value for c in "\r\n"):
            raise ValueError(f"load target {url!r}: header {name!r}: expected a token name and a one-line value")
        head += f"{name}: {value}\r\n"
    payload = body.encode() if body is not None else b""
    if body is not None or method != "GET":
        head += f"Content-Length: {len(payload)}\r\n"
    try:
        request = (head + "\r\n").encode("latin-1") + payload
    except UnicodeEncodeError:
        raise ValueError(f"load target {url!r}: header values must be latin-1 text") from None
    return Target(url=url, host=host_ascii, port=port, request=request)


class RequestFailed(Exception):
    """A connect that failed; ``kind`` is its key in ``error_kinds``."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ResponseHandler(Protocol):
    """Whoever owns a connection hears how each request ended, from inside the event loop's I/O callback."""

    def on_response(self, conn: HttpConnection, done: float) -> None:
        """The whole response arrived at monotonic time ``done``; ``conn.status`` has its status."""

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        """No complete response: ``kind`` is timeout, closed, reset or protocol. The connection is unusable."""


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (b"\\r\\nname:", lowercase) in a lowercased response head."""
    at = head.find(name)
    if at < 0:
        return None
    at += len(name)
    end = head.find(b"\r\n", at)
    return (head[at:] if end < 0 else head[at:end]).strip()


class HttpConnection(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 client connection with at most one request in flight, parsed as bytes arrive.

    A buffered protocol: the transport receives into one buffer per connection, where a plain
    ``Protocol`` would get a fresh 256 KiB bytes object (an mmap/mremap/munmap) per read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: ResponseHandler) -> None:
        self._loop = loop
        self._handler = handler
        self.transport: asyncio.Transport | None = None
        self.usable = False  # open, in step, no request in flight, and the server did not ask to close
        self.status = 0
        self.since = 0.0  # what the request in flight measures its latency from (its send, or its intended time)
        self._buf = bytearray()
        self._inbox = memoryview(bytearray(READ_BYTES))
        self._state = _IDLE
        self._left = 0
        self._keep_alive = True
        # One timer per connection, not per request: it stays armed across requests and, when it fires early
        # (at an earlier request's deadline), re-arms for the deadline of the request then in flight.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def send(self, request: bytes, timeout: float, since: float | None = None) -> None:
        """Write ``request``; the handler hears the outcome. ``since`` defaults to now (the send time)."""
        if self.transport is None or not self.usable:
            raise RuntimeError("HttpConnection.send on a connection that cannot take a request")
        self.usable = False
        self._state = _HEAD
        self.status = 0
        self._keep_alive = True
        now = _now()
        self._deadline = now + timeout
        if self._timer is None or self._deadline < self._timer_at:
            self._arm()
        self.since = now if since is None else since
        self.transport.write(request)

    def close(self) -> None:
        """Close the socket, silently abandoning a request in flight (no callback)."""
        self.usable = False
        self._state = _IDLE
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = self._deadline
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._state == _IDLE:
            return  # nothing in flight; the next send arms it again
        if _now() >= self._deadline:
            self._fail("timeout")
        else:
            self._arm()

    # -- asyncio.BufferedProtocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.usable = True

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._inbox

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == _IDLE:
            # Bytes nobody asked for: the stream is out of step, so never reuse it.
            self.usable = False
            return
        self._buf += self._inbox[:nbytes]
        try:
            self._parse()
        except ValueError:
            self._fail("protocol")

    def eof_received(self) -> bool:
        if self._state == _BODY_EOF:
            self._complete()
        return False  # let the transport close; connection_lost settles a request still in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self._state == _BODY_EOF and exc is None:
            self._complete()
        elif self._state != _IDLE:
            self._fail("reset" if isinstance(exc, ConnectionResetError) else "closed")

    # -- response parsing ----------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ValueError("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if self._parse_head(head):
                    return
            elif state in (_BODY_LENGTH, _CHUNK_DATA):
                n = min(len(buf), self._left)
                del buf[:n]
                self._left -= n
                if self._left:
                    return
                if state == _BODY_LENGTH:
                    self._complete()
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ValueError("chunk size line too long")
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                del buf[: end + 2]
                if size < 0:
                    raise ValueError("negative chunk size")
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._left = size
                    self._state = _CHUNK_DATA
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ValueError("trailers too large")
                    return
                del buf[: end + 2]
                if end == 0:
                    self._complete()
                    return
            elif state == _BODY_EOF:  # the body is whatever arrives until the server closes
                buf.clear()
                return
            else:
                return

    def _parse_head(self, head: bytes) -> bool:
        """Read the status line and the framing headers; True when the response is already complete."""
        # Searching the lowercased head in C is several times faster than splitting it into lines in Python.
        if not head.startswith(b"HTTP/1.") or head[8:9] != b" ":
            raise ValueError("not an HTTP/1.x status line")
        status = int(head[9:12])
        lower = head.lower()
        keep_alive = head[7:8] != b"0"  # HTTP/1.0 closes unless it says keep-alive
        connection = _header(lower, b"\r\nconnection:")
        if connection is not None:
            if b"close" in connection:
                keep_alive = False
            elif b"keep-alive" in connection:
                keep_alive = True
        encoding = _header(lower, b"\r\ntransfer-encoding:")
        chunked = encoding is not None and b"chunked" in encoding
        length_value = _header(lower, b"\r\ncontent-length:")
        length = -1 if length_value is None else int(length_value)
        if 100 <= status < 200:
            return False  # an interim response (100 Continue): the real one follows
        self.status = status
        self._keep_alive = keep_alive
        if status in (204, 304) or (not chunked and length == 0):
            self._complete()
            return True
        if chunked:
            self._state = _CHUNK_SIZE
        elif length > 0:
            self._left = length
            self._state = _BODY_LENGTH
        else:
            self._keep_alive = False
            self._state = _BODY_EOF
        return False

    def _complete(self) -> None:
        done = _now()
        self._state = _IDLE
        transport = self.transport
        if self._buf or not self._keep_alive or transport is None or transport.is_closing():
            self.usable = False  # the server asked to close, closed, or sent more than one response
            self._buf.clear()
        else:
            self.usable = True
        self._handler.on_response(self, done)

    def _fail(self, kind: str) -> None:
        self.usable = False
        self._state = _IDLE
        self._disarm()
        if self.transport is not None:
            self.transport.abort()  # a response may still be on its way: this stream cannot be reused
        self._handler.on_failure(self, kind)


class Dialer:
    """Opens connections to one target; the host is resolved once, and the address that answered is kept first."""

    def __init__(self, target: Target, addresses: list[tuple[int, str, int]]) -> None:
        self.target = target
        self._addresses = addresses
        self.opened = 0

    @classmethod
    async def resolve(cls, target: Target) -> Dialer:
        """Resolve the target's host (numeric addresses without a resolver thread)."""
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ValueError(f"load target {target.url!r}: cannot resolve {target.host!r} ({exc})")
        addresses = [(int(family), str(sockaddr[0]), int(sockaddr[1])) for family, _, _, _, sockaddr in infos]
        return cls(target, addresses)

    async def connect(self, timeout: float, handler: ResponseHandler) -> HttpConnection:
        """A fresh connection reporting to ``handler``; RequestFailed(refused | connect_timeout | connect_error)."""
        loop = asyncio.get_running_loop()
        kind = "connect_error"
        deadline = _now() + timeout
        for i, (family, host, port) in enumerate(self._addresses):
            left = deadline - _now()
            if left <= 0:
                kind = "connect_timeout"
                break
            try:
                _, conn = await within(
                    loop.create_connection(lambda: HttpConnection(loop, handler), host, port, family=family), left)
            except TimeoutError:
                kind = "connect_timeout"
                continue
            except ConnectionRefusedError:
                kind = "refused"
                continue
            except OSError:
                kind = "connect_error"
                continue
            if i:
                self._addresses.insert(0, self._addresses.pop(i))
            self.opened += 1
            return conn
        raise RequestFailed(kind)


class _Run:
    """What every load shape shares: the target, the counts, and the connections and connect tasks to clean up."""

    def __init__(self, dialer: Dialer, timeout: float, expect_status: int) -> None:
        self.dialer = dialer
        self.request = dialer.target.request
        self.timeout = timeout
        self.expect_status = expect_status
        self.requests = 0
        self.ok = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self.conns: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def record(self, conn: HttpConnection, done: float) -> None:
        if conn.status == self.expect_status:
            self.ok += 1
            self.latencies_ms.append((done - conn.since) * 1000.0)
        else:
            self.error(f"status_{conn.status}")

    def drop(self, conn: HttpConnection) -> None:
        conn.close()
        self.conns.discard(conn)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not self.done.done():
            self.done.set_exception(exc)  # a bug in a connect task must end the run, not hang it

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def cleanup(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.conns):
            self.drop(conn)

    def result(self, mode: Mode, duration_s: float, target_rps: float, concurrency: int) -> LoadResult:
        return LoadResult(
            mode=mode, url=self.dialer.target.url, requests=self.requests, ok=self.ok, errors=self.errors,
            error_kinds=dict(sorted(self.error_kinds.items())), duration_s=duration_s,
            achieved_rps=self.ok / duration_s if duration_s > 0 else 0.0, target_rps=target_rps,
            concurrency=concurrency, latencies_ms=self.latencies_ms, connections_opened=self.dialer.opened)


def _check_common(timeout: float, expect_status: int) -> None:
    if not timeout > 0:
        raise ValueError(f"load: timeout must be > 0 seconds, got {timeout!r}")
    if not 100 <= expect_status <= 599:
        raise ValueError(f"load: expect_status must be an HTTP status (100..599), got {expect_status!r}")


async def closed_loop(url: str, *, requests: int, concurrency: int, timeout: float = 5.0,
                      expect_status: int = 200, method: str = "GET", body: str | None = None,
                      headers: dict[str, str] | None = None) -> LoadResult:
    """Closed loop, the field report's "N requests, C concurrent" style: C keep-alive connections share N requests.

    Each connection sends a request (GET unless ``method``/``body`` say otherwise), reads the whole response
    and sends the next; latency runs from
    the send to the last byte of the response (a reconnect's connect time is not in it). A request
    counts as ok when its status is ``expect_status``; refused or failed connects, timeouts
    (``timeout`` per request, and per connect), closes and resets count as errors (by kind), and
    the connection is reopened for the next request. A failed request is never retried.
    """
    if requests < 0:
        raise ValueError(f"closed_loop: requests must be >= 0, got {requests!r}")
    if concurrency < 1:
        raise ValueError(f"closed_loop: concurrency must be >= 1, got {concurrency!r}")
    _check_common(timeout, expect_status)
    dialer = await Dialer.resolve(parse_target(url, method, body, headers))
    return await _ClosedLoopRun(dialer, timeout, expect_status, requests, None).run(concurrency)


class _ClosedLoopRun(_Run):
    """C slots, each a connection that sends its next request from the callback that completed the last one."""

    def __init__(self, dialer: Dialer, timeout: float, expect_status: int, requests: int | None,
                 deadline: float | None) -> None:
        super().__init__(dialer, timeout, expect_status)
        self.left = requests  # None: until the deadline
        self.deadline = deadline
        self.active = 0

    async def run(self, concurrency: int) -> LoadResult:
        slots = concurrency if self.left is None else min(concurrency, self.left)
        start = _now()
        try:
            for _ in range(slots):
                self.active += 1
                self.spawn(self._connect_slot(taken=False))
            if slots:
                await self.done
        finally:
            self.cleanup()
        return self.result("closed", _now() - start, 0.0, concurrency)

    def _take(self) -> bool:
        """Claim the next request, if the run has any left."""
        if self.deadline is not None and _now() >= self.deadline:
            return False
        if self.left is not None:
            if self.left <= 0:
                return False
            self.left -= 1
        self.requests += 1
        return True

    async def _connect_slot(self, *, taken: bool) -> None:
        """Open this slot's connection and send its first request; a failed connect costs one request."""
        while taken or self._take():
            taken = False
            try:
                conn = await self.dialer.connect(self.timeout, self)
            except RequestFailed as failed:
                self.error(failed.kind)
                continue
            self.conns.add(conn)
            conn.send(self.request, self.timeout)
            return
        self._slot_done()

    def _slot_done(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.finish()

    def on_response(self, conn: HttpConnection, done: float) -> None:
        self.record(conn, done)
        self._next(conn)

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        self.error(kind)
        self._next(conn)

    def _next(self, conn: HttpConnection) -> None:
        if not self._take():
            self.drop(conn)
            self._slot_done()
        elif conn.usable:
            conn.send(self.request, self.timeout)
        else:
            self.drop(conn)
            self.spawn(self._connect_slot(taken=True))


async def open_loop(url: str, *, rate: float, duration: float, max_connections: int = 256, timeout: float = 5.0,
                    expect_status: int = 200, method: str = "GET", body: str | None = None,
                    headers: dict[str, str] | None = None) -> LoadResult:
    """Open loop at a constant arrival rate: request i is intended at ``t0 + i / rate`` for ``duration`` seconds.

    Latency runs from the intended send time, so time spent waiting for a free connection (or for
    the generator itself) counts: coordinated omission cannot hide a stall. Keep-alive
    connections are pooled, and one more is opened (up to ``max_connections``) for each request
    that finds every open one busy; whichever frees first serves it. ``timeout`` also runs from the
    intended time: a request that cannot complete within it is an error (``timeout``), not a
    latency. The scheduler sleeps precisely (not on the loop's millisecond timer) only while
    nothing is in flight, so it briefly blocks the event loop: give open-loop runs a loop of their
    own rather than sharing one with other timing-sensitive work.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"open_loop: rate must be a positive number of requests per second, got {rate!r}")
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"open_loop: duration must be > 0 seconds, got {duration!r}")
    if max_connections < 1:
        raise ValueError(f"open_loop: max_connections must be >= 1, got {max_connections!r}")
    _check_common(timeout, expect_status)
    dialer = await Dialer.resolve(parse_target(url, method, body, headers))
    return await _OpenLoopRun(dialer, timeout, expect_status, max_connections).run(rate, duration)


class _OpenLoopRun(_Run):
    """Intended send times wait in a queue for an idle pooled connection; the pool grows while requests wait."""

    def __init__(self, dialer: Dialer, timeout: float, expect_status: int, max_connections: int) -> None:
        super().__init__(dialer, timeout, expect_status)
        self.max_connections = max_connections
        self.waiting: deque[float] = deque()  # intended times of requests no connection has taken yet
        self.idle: list[HttpConnection] = []
        self.pool = 0  # connections open or being opened
        self.peak = 0
        self.connecting = 0
        self.in_flight = 0
        self.scheduled_all = False
        self._quiet: asyncio.Future[None] | None = None  # the scheduler waiting for in-flight requests to finish

    async def run(self, rate: float, duration: float) -> LoadResult:
        count = max(1, round(rate * duration))
        interval = 1.0 / rate
        t0 = _now()
        try:
            i = 0
            while i < count:
                now = _now()
                while i < count and t0 + i * interval <= now:
                    self._dispatch(t0 + i * interval)
                    i += 1
                if i < count:
                    await self._sleep_until(t0 + i * interval)
            self.scheduled_all = True
            self._check_done()
            await self.done
            end = _now()
        finally:
            self.cleanup()
        return self.result("open", end - t0, rate, self.peak)

    # -- scheduling ------------------------------------------------------------------------------

    async def _sleep_until(self, when: float) -> None:
        # The loop's timer wakes up to ~1 ms late (epoll rounds its timeout up to whole ms), and that lag would count
        # as latency. So wake a millisecond early, let what is in flight finish, then sleep the rest precisely:
        # blocking, but only while nothing is in flight, so that no completion time can be delayed by it.
        early = when - _now() - 0.001
        if early > 0:
            await asyncio.sleep(early)
        if self._busy() and when > _now():
            loop = asyncio.get_running_loop()
            self._quiet = quiet = loop.create_future()
            timer = loop.call_at(when, self._wake)
            try:
                await quiet
            finally:
                timer.cancel()
                self._quiet = None
        rest = when - _now()
        if rest > 0 and not self._busy():
            time.sleep(min(rest, 0.002))

    def _busy(self) -> bool:
        """Whether a completion is due that a blocking sleep would delay."""
        return self.in_flight > 0 or bool(self.waiting)

    def _wake(self) -> None:
        if self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)

    def _dispatch(self, intended: float) -> None:
        self.requests += 1
        self.waiting.append(intended)
        while self.idle:
            conn = self.idle.pop()  # the most recently used: keeps few connections warm
            if conn.usable:
                self._serve(conn)
                return
            self._lose(conn)
        self._grow()

    def _grow(self) -> None:
        """Open one more connection for each waiting request that has none coming, up to the limit."""
        while self.connecting < len(self.waiting) and self.pool < self.max_connections:
            self.pool += 1
            self.connecting += 1
            self.peak = max(self.peak, self.pool)
            self.spawn(self._open())

    async def _open(self) -> None:
        try:
            conn = await self.dialer.connect(self.timeout, self)
        except RequestFailed as failed:
            self.connecting -= 1
            self.pool -= 1
            if self.waiting:  # the oldest waiting request pays for the failed connect
                self.waiting.popleft()
                self.error(failed.kind)
            self._grow()
            self._check_done()
            return
        self.connecting -= 1
        self.conns.add(conn)
        self._serve(conn)

    def _serve(self, conn: HttpConnection) -> None:
        """Give a free connection the oldest waiting request that can still make its deadline, or park it."""
        while self.waiting:
            intended = self.waiting.popleft()
            left = intended + self.timeout - _now()
            if left <= 0:
                self.error("timeout")
                continue
            self.in_flight += 1
            conn.send(self.request, left, since=intended)
            return
        self.idle.append(conn)
        self._check_done()

    def _lose(self, conn: HttpConnection) -> None:
        self.drop(conn)
        self.pool -= 1

    # -- ResponseHandler -------------------------------------------------------------------------

    def on_response(self, conn: HttpConnection, done: float) -> None:
        self.in_flight -= 1
        self.record(conn, done)
        self._after(conn)

    def on_failure(self, conn: HttpConnection, kind: str) -> None:
        self.in_flight -= 1
        self.error(kind)
        self._after(conn)

    def _after(self, conn: HttpConnection) -> None:
        if conn.usable:
            self._serve(conn)
            return
        self._lose(conn)
        self._grow()
        self._check_done()

    def _check_done(self) -> None:
        if not self._busy():
            self._wake()
            if self.scheduled_all:
                self.finish()


# A trivial keep-alive server for calibrate(): answers every request head with a fixed 200 "ok", exits when its
# stdin closes. Separate processes, so that they never share the generator's event loop or interpreter lock;
# started through agent.pychild (helper "floor-server"), since in the packaged agent sys.executable is no Python.
# argv: the CPUs to run on ("" to stay), and the port (0: pick one and print it; else join it with SO_REUSEPORT).
_FLOOR_SERVER = r"""
import asyncio, os, sys
if sys.argv[1]:
    os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
class Ok(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport, self.buf, self.inbox = transport, b"", memoryview(bytearray(16384))
    def get_buffer(self, sizehint):
        return self.inbox
    def buffer_updated(self, nbytes):
        buf = self.buf + self.inbox[:nbytes]
        n = buf.count(b"\r\n\r\n")
        if n:
            self.transport.write(RESPONSE * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
        self.buf = buf
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Ok, "127.0.0.1", int(sys.argv[2]), backlog=1024, reuse_port=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
asyncio.run(main())
"""


class _FloorServers:
    """The trivial servers calibrate() measures against: up to 3 processes sharing one loopback port, on the CPUs
    a pinned generator does not use (or anywhere, when it is not pinned). Entering gives the port."""

    def __init__(self) -> None:
        cpus = set(range(os.cpu_count() or 1))
        mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else cpus
        others = cpus - mine
        self.cpus = ",".join(str(c) for c in sorted(others))
        # One core is the generator's; up to three more serve, so that the server saturates after the generator.
        self.count = max(1, min(3, len(others) if others else len(cpus) - 1))
        self.procs: list[asyncio.subprocess.Process] = []

    async def _start(self, port: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            *pychild.argv("floor-server", self.cpus, str(port)), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = await within(proc.stdout.readline(), 30.0)
        if not line.strip().isdigit():
            raise RuntimeError(f"calibrate: the floor server did not start (said {line!r})")
        return int(line)

    async def __aenter__(self) -> int:
        try:
            port = await self._start(0)
            for _ in range(self.count - 1):
                await self._start(port)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return port

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await within(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def _nearest_rank(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


async def calibrate(duration: float = 1.0) -> Calibration:
    """Measure this generator's own floor against a trivial loopback server, in about ``duration`` seconds.

    Half the time goes to concurrency 1 (the latency floor: p50 and p99, nearest rank), half to a
    closed loop at concurrency 8 (the most req/s this single-threaded generator drives). The
    server is up to three Python processes answering a fixed 200 "ok", kept off the generator's
    CPUs when the generator is pinned. Where they share a core, the floor includes the server's
    cost; where the servers saturate first (few cores), ``max_rps`` is a lower bound.
    """
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"calibrate: duration must be > 0 seconds, got {duration!r}")
    async with _FloorServers() as port:
        dialer = await Dialer.resolve(parse_target(f"http://127.0.0.1:{port}/"))
        await _ClosedLoopRun(dialer, 5.0, 200, 200, None).run(1)  # warm-up, discarded
        half = duration / 2
        floor = await _ClosedLoopRun(dialer, 5.0, 200, None, _now() + half).run(1)
        peak = await _ClosedLoopRun(dialer, 5.0, 200, None, _now() + half).run(8)
    if floor.errors or peak.errors:
        raise RuntimeError(f"calibrate: errors against the floor server: {floor.error_kinds | peak.error_kinds}")
    ordered = sorted(floor.latencies_ms)
    return Calibration(floor_p50_ms=_nearest_rank(ordered, 0.50), floor_p99_ms=_nearest_rank(ordered, 0.99),
                       max_rps=peak.achieved_rps)
