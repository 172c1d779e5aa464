"""Stack boot: every service of a stack started together; time until all answer, and each one's own time.

A stack is either a list of this experiment's variants (each started by its runtime, all at once, each with
its own port and probe) or an ``up`` command (``podman-compose up -d``, ``docker compose up -d``,
``kubectl apply -f DIR``) with one probe per service and a ``down`` command run after every sample. The
clock is shared: from issuing the first start (or ``up``) to each service's first probe success; the stack's
time is the last of them. Stacks are interleaved sample by sample, like cold starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.aio import within
from agent.probes import NotReady, make_probe, wait_ready
from agent.runtimes.base import Instance, ProcessInstance, Runtime, RuntimeUnavailable, spawn
from runlab.experiment import Ready, StackSpec, fill
from runlab.results import Figure, ServiceBoot, StackResult

if TYPE_CHECKING:
    from agent.engine import Runner


class UpCommand(Instance):
    """The ``up`` command as an instance: a clean exit (``-d``) is not a failure; stopping runs ``down``."""

    def __init__(self, proc: ProcessInstance, down: list[str] | None) -> None:
        super().__init__()
        self.proc, self.down = proc, down
        self.output = proc.output

    async def pids(self) -> list[int]:
        return await self.proc.pids()

    def exit_code(self) -> int | None:
        code = self.proc.exit_code()
        return code if code else None

    async def stop(self) -> None:
        if self.down:
            try:
                down = ProcessInstance(await spawn(self.down), stop_grace=2.0)
                try:
                    await within(down.proc.wait(), 300)
                finally:
                    await down.stop()
            except (RuntimeUnavailable, TimeoutError):
                pass
        await self.proc.stop()

    def kill_now(self) -> None:
        self.proc.kill_now()


def _timeout(runner: Runner) -> float:
    return float(runner.exp.stack.timeout) if runner.exp.stack else 300.0


async def _all(coros: list[Coroutine[Any, Any, float]], timeout: float) -> list[float]:
    """Every coroutine's result, or the first failure; on failure, timeout or cancel none is left running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _boot_services(runner: Runner, st: StackSpec, runtimes: dict[str, Runtime]) -> dict[str, float]:
    """Start every service variant at once; ms from the common start to each one's first probe success."""
    variants = {v.name: v for v in runner.exp.variants}
    started: list[Instance] = []
    for name in st.services:  # untimed preparation of each start (a serverless function made cold)
        await runtimes[name].before_start()
    t0 = time.monotonic_ns()

    async def one(name: str) -> float:
        v = variants[name]
        ctx = runner.context(v)
        ready: Ready = v.ready or runner.exp.ready
        inst = await runner.start_instance(runtimes[name], ctx)
        started.append(inst)
        t1 = await wait_ready(make_probe(ready, ctx.values(), inst), inst, ready, t0)
        return (t1 - t0) / 1e6

    try:
        times = await _all([one(n) for n in st.services], _timeout(runner))
        return dict(zip(st.services, times, strict=True))
    finally:
        await asyncio.gather(*(i.stop() for i in started), return_exceptions=True)


async def _boot_command(runner: Runner, st: StackSpec) -> dict[str, float]:
    """Run ``up``, poll every service's probe from that moment, then ``down``."""
    assert st.up is not None
    run_dir = runner.tmp / f"stack-{st.name}-{time.monotonic_ns()}"
    run_dir.mkdir()
    values = {"port": str(runner.ports()), "name": f"runlab-{runner.exp.name}-{st.name}", "run_dir": str(run_dir),
              "variant": st.name, "here": runner.here, "version": "", "role": "server", "peer": ""}
    down = [fill(a, values) for a in st.down] if st.down else None
    t0 = time.monotonic_ns()
    inst = UpCommand(ProcessInstance(await spawn([fill(a, values) for a in st.up])), down)
    try:
        async def one(name: str, ready: Ready) -> float:
            t1 = await wait_ready(make_probe(ready, values, inst), inst, ready, t0)
            return (t1 - t0) / 1e6

        times = await _all([one(n, r) for n, r in st.probes.items()], _timeout(runner))
        return dict(zip(st.probes, times, strict=True))
    finally:
        await inst.stop()
        with contextlib.suppress(OSError):
            Path(run_dir).rmdir()


async def run(runner: Runner, runtimes: dict[str, Runtime]) -> None:
    cfg = runner.exp.stack
    assert cfg is not None
    totals: dict[str, list[float]] = {st.name: [] for st in cfg.stacks}
    per: dict[str, dict[str, list[float]]] = {
        st.name: {s: [] for s in (st.services or list(st.probes))} for st in cfg.stacks}
    fails: dict[str, list[str]] = {st.name: [] for st in cfg.stacks}
    runner.progress.phase("stack boot", cfg.repeat * len(cfg.stacks))
    for r in range(cfg.repeat):
        for st in cfg.stacks:
            await runner.prepare_host()
            kind = "services" if st.services else "command"
            try:
                times = await (_boot_services(runner, st, runtimes) if st.services else _boot_command(runner, st))
            except (NotReady, RuntimeUnavailable, TimeoutError) as e:
                reason = str(e) or f"not every service answered within {float(cfg.timeout):g}s"
                fails[st.name].append(reason)
                runner.emit_as("stack_ms", st.name, "stack", {"i": r, "ok": False, "error": reason[:500]},
                               kind=kind)
                runner.progress.advance(f"{st.name}: failed")
                continue
            total = max(times.values())
            totals[st.name].append(total)
            for svc, ms in times.items():
                per[st.name][svc].append(ms)
                runner.emit_as("stack_service_ms", st.name, "stack", {"value": ms, "i": r, "ok": True},
                               service=svc, kind=kind)
            runner.emit_as("stack_ms", st.name, "stack", {"value": total, "i": r, "ok": True}, kind=kind)
            runner.progress.advance(f"{st.name}: {total:,.1f} ms")
    for st in cfg.stacks:
        f = fails[st.name]
        runner.stacks.append(StackResult(
            name=st.name, kind="services" if st.services else "command", node=runner.node,
            total_ms=Figure.of(totals[st.name], "ms", failures=len(f), failure_reasons=f),
            services=[ServiceBoot(name=s, ready_ms=Figure.of(xs, "ms")) for s, xs in per[st.name].items()],
            error="" if totals[st.name] else "every boot failed: " + (f[0] if f else "?")))
