"""Redeploy: swap a running v1 for v2 while a steady client keeps asking; time to v2's first answer, and the
errors and the longest gap the client saw.

Two strategies. ``stop-start`` stops v1 and starts v2 on the same port (how ``compose up`` recreates a
service): the client talks to the service directly. ``start-stop`` starts v2 on a second port, waits until
it answers there, switches the agent's own TCP proxy (which the client talks to from the start, standing in
for a load balancer or an ingress) from v1 to v2, then stops v1. The clock starts when the swap is issued
(the new artifact is available: it is on disk or in the image store before the phase starts) and stops at
the first response whose body matches ``expect_v2``; the client's interval is the detection resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from agent.aio import within
from agent.probes import NotReady
from agent.runtimes import make_runtime
from agent.runtimes.base import Instance, Runtime, RuntimeUnavailable
from runlab.config import convert, to_builtins
from runlab.experiment import Variant, fill
from runlab.results import Figure, Redeploy

if TYPE_CHECKING:
    from agent.engine import Runner

MAX_OUTSTANDING = 256  # client requests in flight at once (a hanging backend must not pile up tasks)


def with_version(v: Variant, text: str) -> Variant:
    """The variant with ``{version}`` replaced by ``text`` everywhere (command, image tag, env…)."""
    data = to_builtins(v)
    if "{version}" not in msgspec.json.encode(data).decode():
        return v

    def sub(x: Any) -> Any:
        if isinstance(x, str):
            return x.replace("{version}", text)
        if isinstance(x, list):
            return [sub(i) for i in x]
        if isinstance(x, dict):
            return {k: sub(i) for k, i in x.items()}
        return x

    replaced: Variant = convert(sub(data), Variant, f"variant {v.name}")  # type: ignore[arg-type]
    return replaced


async def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    """One ``GET`` on a fresh connection (``Connection: close``): (status, body)."""
    async def once() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(-1)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return status, body.decode(errors="replace")

    return await within(once(), timeout)


@dataclass
class Answer:
    sent: float  # monotonic seconds
    done: float
    ok: bool
    v2: bool


class SteadyClient:
    """Sends one request every ``interval`` (open loop: a slow answer does not delay the next request)."""

    def __init__(self, url: str, interval: float, timeout: float, expect_v2: re.Pattern[str]) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.interval, self.timeout, self.expect_v2 = interval, timeout, expect_v2
        self.answers: list[Answer] = []
        self.ok_seen = asyncio.Event()
        self.v2_seen = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SteadyClient:
        self._main = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self) -> None:
        t0 = time.monotonic()
        k = 0
        while True:
            if len(self._tasks) < MAX_OUTSTANDING:
                task = asyncio.create_task(self._one())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * self.interval - time.monotonic()))

    async def _one(self) -> None:
        sent = time.monotonic()
        try:
            status, body = await http_get(self.host, self.port, self.path, self.timeout)
            ok, v2 = status == 200, status == 200 and self.expect_v2.search(body) is not None
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            ok = v2 = False
        self.answers.append(Answer(sent, time.monotonic(), ok, v2))
        if ok:
            self.ok_seen.set()
        if v2:
            self.v2_seen.set()


class SwitchProxy:
    """A loopback TCP proxy whose backend port can be switched; new connections go to the current one."""

    def __init__(self, host: str, target: int) -> None:
        self.host, self.target = host, target
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await within(self.server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.target)
        except OSError:
            writer.close()  # backend down: the client sees a closed connection, an error
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)


def swap_figures(answers: list[Answer], t_swap: float) -> tuple[float | None, int, int, float]:
    """(ms from the swap to the first v2 answer, errors, requests, longest gap in ms) from the client's log.

    Errors and requests count what was sent from the swap on; the gap is the longest time between the send
    times of two successive successful requests, starting from the last success before the swap.
    """
    after = sorted((a for a in answers if a.sent >= t_swap), key=lambda a: a.sent)
    first_v2 = min((a.done for a in answers if a.v2 and a.sent >= t_swap), default=None)
    before = [a.sent for a in answers if a.ok and a.sent < t_swap]
    marks = ([max(before)] if before else [t_swap]) + [a.sent for a in after if a.ok]
    gap = max((b - a for a, b in itertools.pairwise(marks)), default=0.0)
    return ((first_v2 - t_swap) * 1000 if first_v2 is not None else None, sum(not a.ok for a in after), len(after),
            gap * 1000)


async def run(runner: Runner, runtimes: dict[str, Runtime]) -> None:
    exp = runner.exp
    rd = exp.redeploy
    assert rd is not None
    expect = re.compile(rd.expect_v2 or re.escape(rd.v2))
    v2_runtimes = {v.name: make_runtime(with_version(v, rd.v2), exp, runner.here) for v in exp.variants}
    for v in exp.variants:
        try:
            await v2_runtimes[v.name].prepare()  # before any v1 runs: prepare removes leftover containers
        except RuntimeUnavailable as e:
            runner.results[v.name].error = runner.results[v.name].error or f"redeploy: {e}"
    per: dict[str, list[tuple[float | None, int, int, float]]] = {v.name: [] for v in exp.variants}
    failures: dict[str, list[str]] = {v.name: [] for v in exp.variants}
    runner.progress.phase("redeploy", rd.repeat * len(exp.variants))
    for r in range(rd.repeat):
        for v in exp.variants:
            await runner.prepare_host()
            try:
                fig = await _swap(runner, v, runtimes[v.name], v2_runtimes[v.name], expect)
            except (NotReady, RuntimeUnavailable, TimeoutError) as e:
                failures[v.name].append(str(e) or type(e).__name__)
                runner.emit("redeploy_ms", v, {"i": r, "ok": False, "error": (str(e) or "timeout")[:500]},
                            strategy=rd.strategy)
                runner.progress.advance(f"{v.name}: failed")
                continue
            per[v.name].append(fig)
            ms, errors, requests, gap = fig
            fields: dict[str, Any] = {"i": r, "ok": ms is not None, "errors": errors, "requests": requests,
                                      "gap_ms": gap}
            if ms is not None:
                fields["value"] = ms
            runner.emit("redeploy_ms", v, fields, strategy=rd.strategy)
            runner.progress.advance(f"{v.name}: {ms:,.1f} ms" if ms is not None else f"{v.name}: no v2")
    for v in exp.variants:
        got = per[v.name]
        times = [f[0] for f in got if f[0] is not None]
        fails = failures[v.name] + ["v2 never answered the client"] * sum(f[0] is None for f in got)
        runner.results[v.name].redeploy = Redeploy(
            strategy=rd.strategy, time_to_v2_ms=Figure.of(times, "ms", failures=len(fails), failure_reasons=fails),
            gap_ms=Figure.of([f[3] for f in got], "ms"), errors=[f[1] for f in got], requests=[f[2] for f in got],
            client_interval_ms=float(rd.client_interval) * 1000)
        if not times and not runner.results[v.name].error:
            runner.results[v.name].error = "redeploy: every swap failed: " + (fails[0] if fails else "?")


async def _swap(runner: Runner, v: Variant, rt1: Runtime, rt2: Runtime, expect: re.Pattern[str]
                ) -> tuple[float | None, int, int, float]:
    rd = runner.exp.redeploy
    assert rd is not None
    url_t = rd.url or runner.exp.ready.http or ""
    ctx1 = runner.context(v, version=rd.v1)
    inst1, _ = await runner.start_ready(rt1, v, ctx1)
    inst2: Instance | None = None
    proxy: SwitchProxy | None = None
    try:
        front = ctx1.port
        if rd.strategy == "start-stop":
            proxy = SwitchProxy(urlsplit(fill(url_t, ctx1.values())).hostname or "127.0.0.1", ctx1.port)
            front = runner.ports()
            await proxy.start(front)
        url = fill(url_t, {**ctx1.values(), "port": str(front)})
        async with SteadyClient(url, float(rd.client_interval), float(rd.request_timeout), expect) as client:
            await within(client.ok_seen.wait(), float(rd.timeout))
            await rt2.before_start()  # untimed, like every start's
            t_swap = time.monotonic()
            if proxy is None:  # stop-start, on the same port
                await inst1.stop()
                ctx2 = runner.context(v, version=rd.v2)
                ctx2.port = ctx1.port
                inst2 = await runner.start_instance(rt2, ctx2)
            else:  # start-stop: v2 ready on its own port, then the proxy switches, then v1 goes
                ctx2 = runner.context(v, version=rd.v2)
                inst2, _ = await runner.start_ready(rt2, v, ctx2)
                proxy.target = ctx2.port
                await inst1.stop()
            await _wait_v2(client, inst2, float(rd.timeout))
            await asyncio.sleep(float(rd.tail))
            answers = list(client.answers)
        return swap_figures(answers, t_swap)
    finally:
        await inst1.stop()
        if inst2 is not None:
            await inst2.stop()
        if proxy is not None:
            await proxy.close()


async def _wait_v2(client: SteadyClient, inst: Instance, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not client.v2_seen.is_set():
        code = inst.exit_code()
        if code is not None:
            raise NotReady(f"v2 exited with code {code} before it answered{inst.tail()}")
        if time.monotonic() > deadline:
            raise NotReady(f"v2 did not answer the client within {timeout:g}s{inst.tail()}")
        with contextlib.suppress(TimeoutError):
            await within(client.v2_seen.wait(), 0.05)
