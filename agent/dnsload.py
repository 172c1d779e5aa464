"""DNS over UDP for readiness and load: hand-built queries (RFC 1035), closed- and open-loop query latency.

Stdlib only, like the HTTP generator (agent/loadgen.py), whose ``LoadResult`` it returns so that the
engine, the statistics and the report writers treat DNS load like HTTP load. One connected UDP
socket carries every query of a run; answers are matched to queries by their 16-bit ID. Latency runs
from the send (closed loop) or from the intended send time (open loop: a stalled server or generator
cannot hide behind coordinated omission). Times are CLOCK_MONOTONIC.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import cast

from agent.aio import within
from agent.loadgen import LoadResult, Mode
from runlab.experiment import DnsQuery, Load, fill

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
TYPE_NAMES = {v: k for k, v in QTYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_now = time.monotonic


def build_query(qid: int, name: str, qtype: str) -> bytes:
    """A standard query with recursion desired: header, one question, class IN."""
    labels = [lb for lb in name.rstrip(".").split(".") if lb]
    qname = b"".join(bytes([len(e)]) + e for e in (lb.encode("idna") for lb in labels)) + b"\0"
    if any(len(lb) > 63 for lb in labels) or len(qname) > 255:
        raise ValueError(f"DNS name {name!r}: a label is longer than 63 bytes or the name longer than 255")
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", QTYPES[qtype], 1)


@dataclass
class DnsAnswer:
    """A parsed response: its ID, rcode name and answer records as "NAME TYPE VALUE" lines."""

    qid: int
    rcode: str
    records: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.records)


def _read_name(data: bytes, at: int) -> tuple[str, int]:
    """A possibly compressed name at ``at``; (name, offset after it in the original position)."""
    labels: list[str] = []
    end = -1
    for _ in range(128):  # bounded: a pointer loop is a malformed packet
        n = data[at]
        if n == 0:
            at += 1
            break
        if n & 0xC0 == 0xC0:
            if end < 0:
                end = at + 2
            at = ((n & 0x3F) << 8) | data[at + 1]
            continue
        labels.append(data[at + 1:at + 1 + n].decode("ascii", errors="replace"))
        at += 1 + n
    else:
        raise ValueError("DNS name: too many labels or a compression loop")
    return ".".join(labels) + ".", (end if end >= 0 else at)


def _rdata(data: bytes, rtype: int, at: int, length: int) -> str:
    raw = data[at:at + length]
    if rtype == 1 and length == 4:
        return str(ipaddress.IPv4Address(raw))
    if rtype == 28 and length == 16:
        return str(ipaddress.IPv6Address(raw))
    if rtype in (2, 5, 12):
        return _read_name(data, at)[0]
    if rtype == 15:
        return f"{struct.unpack('!H', raw[:2])[0]} {_read_name(data, at + 2)[0]}"
    if rtype == 16:
        parts, i = [], 0
        while i < len(raw):
            parts.append(raw[i + 1:i + 1 + raw[i]].decode(errors="replace"))
            i += 1 + raw[i]
        return " ".join(f'"{p}"' for p in parts)
    return raw.hex()


def parse_response(data: bytes) -> DnsAnswer:
    """Header, skip the question(s), decode the answer section; ValueError on a malformed packet."""
    try:
        qid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
        if not flags & 0x8000:
            raise ValueError("not a response (QR bit clear)")
        ans = DnsAnswer(qid=qid, rcode=RCODES.get(flags & 0xF, f"RCODE{flags & 0xF}"))
        at = 12
        for _ in range(qd):
            at = _read_name(data, at)[1] + 4
        for _ in range(an):
            name, at = _read_name(data, at)
            rtype, _cls, _ttl, length = struct.unpack("!HHIH", data[at:at + 10])
            at += 10
            if at + length > len(data):
                raise ValueError("record data runs past the packet")
            ans.records.append(f"{name} {TYPE_NAMES.get(rtype, str(rtype))} {_rdata(data, rtype, at, length)}")
            at += length
        return ans
    except (struct.error, IndexError) as e:
        raise ValueError(f"malformed DNS response ({e})") from None


def split_server(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


class _Client(asyncio.DatagramProtocol):
    """One connected UDP socket; each query waits on a future keyed by its ID."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, asyncio.Future[tuple[DnsAnswer, float]]] = {}
        self.malformed = 0
        self._next = secrets.randbelow(65536)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        done = _now()
        try:
            ans = parse_response(data)
        except ValueError:
            self.malformed += 1
            return
        fut = self.waiting.pop(ans.qid, None)
        if fut is not None and not fut.done():
            fut.set_result((ans, done))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: nobody listens (yet)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self.waiting.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionError("socket closed"))

    def send(self, name: str, qtype: str) -> asyncio.Future[tuple[DnsAnswer, float]]:
        """Send one query now; the future gives (answer, monotonic time it arrived)."""
        assert self.transport is not None
        for _ in range(65536):
            self._next = (self._next + 1) & 0xFFFF
            if self._next not in self.waiting:
                break
        else:
            raise RuntimeError("65536 DNS queries in flight on one socket")
        fut: asyncio.Future[tuple[DnsAnswer, float]] = asyncio.get_running_loop().create_future()
        self.waiting[self._next] = fut
        self.transport.sendto(build_query(self._next, name, qtype))
        return fut

    def forget(self, fut: asyncio.Future[tuple[DnsAnswer, float]]) -> None:
        for k, v in list(self.waiting.items()):
            if v is fut:
                del self.waiting[k]


async def open_client(server: str) -> _Client:
    host, port = split_server(server)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(_Client, remote_addr=(host, port))
    return proto


def accepts(q: DnsQuery, ans: DnsAnswer) -> str | None:
    """None when ``ans`` is what ``q`` asks for, else the error kind."""
    if q.rcode != "any" and ans.rcode != q.rcode:
        return f"rcode_{ans.rcode}"
    if q.expect is not None and not re.search(q.expect, ans.text()):
        return "unexpected_answer"
    return None


async def query(q: DnsQuery, server: str, timeout: float) -> DnsAnswer:
    """One query on a fresh socket; TimeoutError / OSError when nothing (usable) came back."""
    client = await open_client(server)
    try:
        ans, _ = await within(client.send(q.name, q.type), timeout)
        return ans
    finally:
        assert client.transport is not None
        client.transport.close()


@dataclass
class _Tally:
    ok: int = 0
    errors: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    last: float = 0.0

    def error(self, kind: str) -> None:
        self.errors += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.last = _now()


async def _one(client: _Client, q: DnsQuery, since: float, timeout: float, tally: _Tally,
               fut: asyncio.Future[tuple[DnsAnswer, float]] | None = None) -> None:
    """Send (unless the caller already did: ``fut``) and wait for the answer; record it in ``tally``."""
    fut = fut if fut is not None else client.send(q.name, q.type)
    try:
        ans, done = await within(fut, max(0.0, since + timeout - _now()))
    except TimeoutError:
        client.forget(fut)
        tally.error("timeout")
        return
    except OSError as e:
        tally.error("refused" if isinstance(e, ConnectionRefusedError) else "send_error")
        return
    bad = accepts(q, ans)
    if bad:
        tally.error(bad)
        return
    tally.ok += 1
    tally.latencies_ms.append((done - since) * 1000)
    tally.last = max(tally.last, done)


def _url(q: DnsQuery, server: str) -> str:
    return f"dns://{server}/{q.name}?type={q.type}"


async def closed_loop(q: DnsQuery, server: str, *, requests: int, concurrency: int,
                      timeout: float = 2.0) -> LoadResult:
    """``requests`` queries by ``concurrency`` workers, each sending its next query when the last one ended."""
    if requests < 1 or concurrency < 1:
        raise ValueError(f"closed_loop: requests and concurrency must be >= 1, got {requests}, {concurrency}")
    client = await open_client(server)
    tally = _Tally()
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _one(client, q, _now(), timeout, tally)

    t0 = _now()
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    finally:
        assert client.transport is not None
        client.transport.close()
    return _result("closed", q, server, tally, t0, 0.0, min(concurrency, requests))


async def open_loop(q: DnsQuery, server: str, *, rate: float, duration: float, timeout: float = 2.0) -> LoadResult:
    """Query ``i`` intended at ``t0 + i / rate``; latency and timeout run from that intended time."""
    if not (rate > 0 and math.isfinite(rate)) or not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"open_loop: rate and duration must be > 0, got {rate!r}, {duration!r}")
    client = await open_client(server)
    tally = _Tally()
    count = max(1, round(rate * duration))
    tasks: set[asyncio.Task[None]] = set()
    t0 = _now()
    try:
        for i in range(count):
            intended = t0 + i / rate
            # The loop's timer wakes up to ~1 ms late, which would count as latency: wake 1 ms early, then finish
            # precisely (yielding to answers in flight, blocking only when none are).
            delay = intended - _now()
            if delay > 0.0015:
                await asyncio.sleep(delay - 0.001)
            while (rest := intended - _now()) > 0:
                if tasks:
                    await asyncio.sleep(0)
                else:
                    time.sleep(rest)
            sent = client.send(q.name, q.type)  # now, at its intended time: not one loop iteration later
            task = asyncio.create_task(_one(client, q, intended, timeout, tally, sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        assert client.transport is not None
        client.transport.close()
    return _result("open", q, server, tally, t0, rate, 1)


def _result(mode: Mode, q: DnsQuery, server: str, tally: _Tally, t0: float, rate: float,
            concurrency: int) -> LoadResult:
    duration = max(1e-9, (tally.last or _now()) - t0)
    return LoadResult(mode=mode, url=_url(q, server), requests=tally.ok + tally.errors,
                      ok=tally.ok, errors=tally.errors, error_kinds=tally.kinds, duration_s=duration,
                      achieved_rps=tally.ok / duration, target_rps=rate, concurrency=concurrency,
                      latencies_ms=tally.latencies_ms, connections_opened=1)


async def run_phase(load: Load, values: dict[str, str]) -> tuple[str, list[LoadResult]]:
    """The load phase in DNS mode: closed loop if ``requests``, open loop if ``rate`` (both when both)."""
    q = load.dns
    assert q is not None
    server = fill(q.server, values)
    runs = []
    if load.requests:
        runs.append(await closed_loop(q, server, requests=load.requests, concurrency=load.concurrency,
                                      timeout=float(load.timeout)))
    if load.rate:
        runs.append(await open_loop(q, server, rate=load.rate, duration=float(load.duration),
                                    timeout=float(load.timeout)))
    return _url(q, server), runs
