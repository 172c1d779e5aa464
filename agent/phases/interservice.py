"""Inter-service latency: the RTT distribution of TCP ping-pong between two workloads of the same variant.

For every variant, two instances run under its runtime: a server (``{role}`` = server, readiness as the
experiment says) and a client (``{role}`` = client, ``{peer}`` = HOST:PORT of the server), e.g. two
processes, or two containers on one podman network. The client measures every round trip itself and
writes them, one per line, to ``interservice.results`` (in its run directory, which a container mounts);
the agent reads that file once it appears. So the figure is workload ↔ workload, under the runtime and
network being compared, never agent ↔ workload. ``build/workloads/pingpong.c`` is such a client/server.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.probes import NotReady
from agent.runtimes.base import Instance, Runtime, RuntimeUnavailable
from runlab.experiment import Variant, fill
from runlab.results import Figure, InterServiceRtt

if TYPE_CHECKING:
    from agent.engine import Runner

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0}


def parse_rtts(text: str, unit: str) -> list[float]:
    """One number per line (blank lines skipped) → milliseconds; ValueError names the bad line."""
    out: list[float] = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(float(line.split()[0]) * TO_MS[unit])
            except ValueError:
                raise ValueError(f"line {i} is not a number: {line[:80]!r}") from None
    return out


async def _wait_results(path: Path, client: Instance, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        code = client.exit_code()
        if code is not None and code != 0:
            raise NotReady(f"the client exited with code {code} before writing {path.name}{client.tail()}")
        if time.monotonic() > deadline:
            raise NotReady(f"the client wrote no {path.name} within {timeout:g}s{client.tail()}")
        await asyncio.sleep(0.02)
    return path.read_text()


async def _pair(runner: Runner, v: Variant, rt: Runtime) -> list[float]:
    cfg = runner.exp.interservice
    assert cfg is not None
    sctx = runner.context(v, role="server")
    server, _ = await runner.start_ready(rt, v, sctx)
    client: Instance | None = None
    try:
        host = fill(cfg.peer_host, sctx.values())
        cctx = runner.context(v, role="client", peer=f"{host}:{sctx.port}")
        client = await runner.start_instance(rt, cctx)
        text = await _wait_results(Path(fill(cfg.results, cctx.values())), client, float(cfg.timeout))
        try:
            return parse_rtts(text, cfg.unit)
        except ValueError as e:
            raise NotReady(f"{cfg.results}: {e}") from None
    finally:
        if client is not None:
            await client.stop()
        await server.stop()


async def run(runner: Runner, runtimes: dict[str, Runtime]) -> None:
    exp = runner.exp
    cfg = exp.interservice
    assert cfg is not None
    rtts: dict[str, list[float]] = {v.name: [] for v in exp.variants}
    fails: dict[str, list[str]] = {v.name: [] for v in exp.variants}
    runner.progress.phase("inter-service RTT", cfg.repeat * len(exp.variants))
    for r in range(cfg.repeat):
        for v in exp.variants:
            await runner.prepare_host()
            try:
                got = await _pair(runner, v, runtimes[v.name])
            except (NotReady, RuntimeUnavailable) as e:
                fails[v.name].append(str(e))
                runner.emit("rtt_ms", v, {"i": r, "ok": False, "error": str(e)[:500]})
                runner.progress.advance(f"{v.name}: failed")
                continue
            rtts[v.name] += got
            fig = Figure.of(got, "ms")
            if fig is not None:  # one point per pair: the raw round trips are in the JSON and CSV
                runner.emit("rtt_ms", v, {"i": r, "ok": True, "n": fig.n, "p50_ms": fig.median, "p90_ms": fig.p90,
                                          "p99_ms": fig.p99, "max_ms": fig.max, "min_ms": fig.min})
                runner.progress.advance(f"{v.name}: p50 {fig.median * 1000:,.1f} µs")
    for v in exp.variants:
        f = fails[v.name]
        runner.results[v.name].interservice = InterServiceRtt(
            rtt_ms=Figure.of(rtts[v.name], "ms", failures=len(f), failure_reasons=f),
            pairs=cfg.repeat - len(f), peer=cfg.peer_host)
        if not rtts[v.name] and not runner.results[v.name].error:
            runner.results[v.name].error = "interservice: every pair failed: " + (f[0] if f else "?")
