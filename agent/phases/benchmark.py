"""Workload benchmark: a benchmark command run against (or inside) each running variant; its score, parsed.

For every variant one instance is started and kept up; the command (pgbench, sysbench, a script…) runs
``warmup`` + ``repeat`` times with the instance's placeholders filled — ``{port}`` to reach it, ``{name}``
to ``podman exec`` into it — and the first group of ``score`` in its output is the score. Variants are
compared like every other figure (stats.compare), in the direction ``higher_is_better`` says: the field
report's "8–12 % database penalty versus bare metal" is this comparison.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from agent.aio import within
from agent.probes import NotReady
from agent.runtimes.base import Runtime, RuntimeUnavailable, spawn
from runlab.experiment import Variant, fill
from runlab.results import Benchmark, Figure
from runlab.wire import FieldValue

if TYPE_CHECKING:
    from agent.engine import Runner


def parse_score(output: str, pattern: re.Pattern[str]) -> float:
    """The first group of the first match, thousands separators allowed; ValueError when absent."""
    m = pattern.search(output)
    if m is None:
        raise ValueError(f"no match for {pattern.pattern!r} in the output{_tail(output)}")
    try:
        return float(m.group(1).replace(",", ""))
    except ValueError:
        raise ValueError(f"{m.group(1)!r} (matched by {pattern.pattern!r}) is not a number") from None


def _tail(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()][-3:]
    return (": " + " | ".join(lines))[:400] if lines else ""


async def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run the benchmark to completion (its own session, killed on timeout or cancel): (code, output)."""
    proc = await spawn(argv)
    try:
        out, _ = await within(proc.communicate(), timeout)
    except TimeoutError:
        raise RuntimeUnavailable(f"benchmark {argv[0]}: no result within {timeout:g}s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


async def _bench_variant(runner: Runner, v: Variant, rt: Runtime, pattern: re.Pattern[str]
                         ) -> tuple[list[float], list[float], list[str]]:
    cfg = runner.exp.benchmark
    assert cfg is not None
    ctx = runner.context(v)
    inst, _ = await runner.start_ready(rt, v, ctx)
    scores: list[float] = []
    warm: list[float] = []
    fails: list[str] = []
    try:
        await asyncio.sleep(float(v.settle if v.settle is not None else runner.exp.settle))
        argv = [fill(a, ctx.values()) for a in cfg.command]
        for i in range(cfg.warmup + cfg.repeat):
            is_warm = i < cfg.warmup
            code, out = await run_command(argv, float(cfg.timeout))
            try:
                if code != 0:
                    raise ValueError(f"exited with code {code}{_tail(out)}")
                score = parse_score(out, pattern)
            except ValueError as e:
                fails.append(str(e))
                runner.emit("benchmark", v, {"i": i, "ok": False, "error": str(e)[:500]},
                            warmup=str(is_warm).lower())
                continue
            (warm if is_warm else scores).append(score)
            fields: dict[str, FieldValue] = {"value": score, "i": i, "ok": True}
            if cfg.unit:
                fields["unit"] = cfg.unit
            runner.emit("benchmark", v, fields, warmup=str(is_warm).lower())
            runner.progress.advance(f"{v.name}: {score:,.4g} {cfg.unit}")
    finally:
        await inst.stop()
    return scores, warm, fails


async def run(runner: Runner, runtimes: dict[str, Runtime]) -> None:
    exp = runner.exp
    cfg = exp.benchmark
    assert cfg is not None
    pattern = re.compile(cfg.score)
    runner.progress.phase("benchmark", (cfg.warmup + cfg.repeat) * len(exp.variants))
    for v in exp.variants:
        await runner.prepare_host()
        try:
            scores, warm, fails = await _bench_variant(runner, v, runtimes[v.name], pattern)
        except (NotReady, RuntimeUnavailable) as e:
            scores, warm, fails = [], [], [str(e)]
        runner.results[v.name].benchmark = Benchmark(
            score=Figure.of(scores, cfg.unit, warm, len(fails), fails), unit=cfg.unit,
            higher_is_better=cfg.higher_is_better, command=" ".join(cfg.command))
        if not scores and not runner.results[v.name].error:
            runner.results[v.name].error = "benchmark: no score: " + (fails[0] if fails else "?")
