"""``runtime: serverless`` — a function behind a gateway URL (OpenFaaS, Knative, Fission).

There is nothing to launch: the first invocation after the function was made
cold IS the start. So ``prepare`` deploys (once, if ``deploy:`` is given) and
checks that the cold step works; ``before_start`` (untimed, right before every
start, since another variant may have woken the same function) makes it cold:
a scale-to-zero command, a command polled until it succeeds, and/or a wait for
the platform's idle timeout. ``start`` invokes it at once, retrying while the
gateway answers errors, and logs ``invocation 1 ok …`` the moment the first
expected answer arrives — the variant's default readiness is that log line, so
the cold start is the first invocation's latency, timed from the request. Then
``warm`` more invocations are timed; ``stop`` waits for them. Whether an
invocation really cold-started is read in-band when the function says so
(``cold_header`` / ``cold_body``), and recorded with each sample
(``cold_detected``), with the warm latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import Callable

from agent.aio import within
from agent.runtimes.base import Instance, Runtime, RuntimeUnavailable, StartContext
from agent.runtimes.container import _run
from runlab.experiment import ServerlessVariant, fill
from runlab.results import Size
from runlab.wire import FieldValue


class _Blank(dict[str, str]):
    """Placeholders without a value here fill as empty strings."""

    def __missing__(self, key: str) -> str:
        return ""


class Invocation:
    """One HTTP exchange: status, header lines, body, and how long it took (ms)."""

    def __init__(self, status: int, headers: list[str], body: str, ms: float) -> None:
        self.status, self.headers, self.body, self.ms = status, headers, body, ms


def _dechunk(data: bytes) -> bytes:
    out, at = b"", 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return out
        size = int(data[at:end].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return out
        out += data[end + 2:end + 2 + size]
        at = end + 2 + size + 2


async def invoke(url: str, method: str = "GET", body: str | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 30.0) -> Invocation:
    """One request on a fresh connection (Connection: close); OSError/TimeoutError/ValueError when it fails."""
    from agent.loadgen import parse_target  # the same request builder as the load generator

    target = parse_target(url, method, body, {"Connection": "close", **(headers or {})}, user_agent="runlab-invoke")
    t0 = time.monotonic()

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            writer.write(target.request)
            return await reader.read(-1)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    raw = await within(exchange(), timeout)
    ms = (time.monotonic() - t0) * 1000
    head_bytes, sep, payload = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete HTTP response ({len(raw)} bytes)")
    lines = head_bytes.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1])
    if any(h.lower().replace(" ", "") == "transfer-encoding:chunked" for h in lines[1:]):
        payload = _dechunk(payload)
    return Invocation(status, lines[1:], payload.decode(errors="replace"), ms)


class ServerlessInstance(Instance):
    def __init__(self, rt: ServerlessRuntime, url: str, values: dict[str, str]) -> None:
        super().__init__()
        self.rt, self.url, self.values = rt, url, values
        self.attempts = 0
        self.first: Invocation | None = None
        self.warm_ms: list[float] = []
        self.failed: str | None = None
        self.cold_step_ok = rt.last_cold_ok
        self._series = asyncio.create_task(self._invoke_series())
        self._stopped = False

    async def _call(self, timeout: float) -> Invocation:
        s, v = self.rt.spec, self.values
        return await invoke(self.url, s.method, None if s.body is None else fill(s.body, v),
                            {k: fill(x, v) for k, x in s.headers.items()}, timeout)

    async def _invoke_series(self) -> None:
        s = self.rt.spec
        t0 = time.monotonic()
        deadline = t0 + float(s.invoke_timeout)
        while self.first is None:
            self.attempts += 1
            left = deadline - time.monotonic()
            if left <= 0:
                self.failed = f"no {s.expect_status} answer within {float(s.invoke_timeout):g}s"
                self.output.add(f"runlab: {self.failed}")
                return
            try:
                inv = await self._call(left)
            except (OSError, TimeoutError, ValueError, IndexError) as e:
                self.output.add(f"invocation {self.attempts} failed: {type(e).__name__} {e}"[:300])
                await asyncio.sleep(float(s.retry_interval))
                continue
            if inv.status != s.expect_status:
                self.output.add(f"invocation {self.attempts} failed: status {inv.status}")
                await asyncio.sleep(float(s.retry_interval))
                continue
            inv.ms = (time.monotonic() - t0) * 1000  # from the first attempt: retries are part of the cold start
            self.first = inv
            cold = self.cold_detected()
            self.output.add(f"invocation 1 ok: status {inv.status} in {inv.ms:.1f} ms after {self.attempts} "
                            f"attempt(s), cold={'unknown' if cold is None else str(cold).lower()}")
        for i in range(s.warm):
            try:
                inv = await self._call(float(s.invoke_timeout))
            except (OSError, TimeoutError, ValueError, IndexError) as e:
                self.output.add(f"warm invocation {i + 1} failed: {type(e).__name__}")
                continue
            if inv.status == s.expect_status:
                self.warm_ms.append(inv.ms)
                self.output.add(f"warm invocation {i + 1} ok: {inv.ms:.1f} ms")

    def cold_detected(self) -> bool | None:
        """What the function said about the first invocation: True (cold), False (warm), None (cannot tell)."""
        s, inv = self.rt.spec, self.first
        if inv is None or (s.cold_header is None and s.cold_body is None):
            return None
        said = False
        if s.cold_header is not None:
            said |= any(re.search(s.cold_header, h, re.IGNORECASE) for h in inv.headers)
        if s.cold_body is not None:
            said |= bool(re.search(s.cold_body, inv.body))
        return said

    def exit_code(self) -> int | None:
        return -1 if self.failed else None

    async def pids(self) -> list[int]:
        return []  # the function runs wherever the platform put it: see the platform overhead phase

    def sample_fields(self) -> dict[str, FieldValue]:
        f: dict[str, FieldValue] = {"attempts": self.attempts, "warm_n": len(self.warm_ms)}
        cold = self.cold_detected()
        if cold is not None:
            f["cold_detected"] = cold
        if self.warm_ms:
            f["warm_p50_ms"] = statistics.median(self.warm_ms)
            f["warm_max_ms"] = max(self.warm_ms)
        if self.cold_step_ok is not None:
            f["cold_step_ok"] = self.cold_step_ok
        return f

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        s = self.rt.spec
        try:
            await within(asyncio.shield(self._series), float(s.invoke_timeout) * (s.warm + 1))
        except TimeoutError:
            self._series.cancel()

    def kill_now(self) -> None:
        self._series.cancel()


class ServerlessRuntime(Runtime):
    name = "serverless"
    spec: ServerlessVariant
    last_cold_ok: bool | None = None
    notes: list[str]

    def values(self, ctx: StartContext | None = None) -> dict[str, str]:
        """Placeholder values: a start's, or (deploy, cold step) {here} and {variant} with the others empty."""
        return _Blank(ctx.values() if ctx else {"here": self.here, "variant": self.spec.name})

    def _cmd(self, argv: list[str]) -> list[str]:
        return [fill(a, self.values()) for a in argv]

    async def make_cold(self, say: Callable[[str], None], wait: bool = True) -> bool:
        """The cold step; False (and a note to ``say``) when its command or its ``until`` check failed."""
        c = self.spec.cold
        deadline = time.monotonic() + float(c.timeout)
        if c.command:
            code, out = await _run(self._cmd(c.command), float(c.timeout))
            if code != 0:
                say(f"runlab: cold step {' '.join(c.command)} exited {code}: {out[-300:]}")
                return False
        if c.until:
            while True:
                code, out = await _run(self._cmd(c.until), max(1.0, deadline - time.monotonic()))
                if code == 0:
                    break
                if time.monotonic() > deadline:
                    say(f"runlab: cold step: {' '.join(c.until)} still failing after {float(c.timeout):g}s")
                    return False
                await asyncio.sleep(0.1)
        if c.wait and wait:
            await asyncio.sleep(float(c.wait))
        return True

    async def prepare(self) -> None:
        if self.spec.deploy:
            code, out = await _run(self._cmd(self.spec.deploy), 600)
            if code != 0:
                raise RuntimeUnavailable(f"variant {self.spec.name}: deploy {' '.join(self.spec.deploy)} exited "
                                         f"{code}: {out[-300:]}")
        self.notes = []
        if not await self.make_cold(self.notes.append, wait=False):  # a broken cold step stops the run early
            raise RuntimeUnavailable(f"variant {self.spec.name}: cannot make the function cold: {self.notes[-1]}")

    async def before_start(self) -> None:
        """The cold step, right before every start: another variant may have woken the function meanwhile."""
        self.notes = []
        self.last_cold_ok = await self.make_cold(self.notes.append)

    async def start(self, ctx: StartContext) -> Instance:
        values = self.values(ctx)
        inst = ServerlessInstance(self, fill(self.spec.invoke, values), values)
        for note in self.notes:
            inst.output.add(note)
        return inst

    async def size(self) -> Size | None:
        return self.artifact_size()


RUNTIME = ServerlessRuntime
