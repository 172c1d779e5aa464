"""The experiment engine: the same workload under every variant, measured the METHODOLOGY way.

Phases, in order: cold starts (variants interleaved, warm-up kept apart),
footprint (idle PSS/USS/RSS and cgroup after settling, peak during start and
load), load (closed and/or open loop), size. The engine only measures: it
returns an ``ExperimentResult`` and emits raw samples as they are taken; the
report writers format.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import platform
import random
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from agent import facts
from agent.memory import cgroup_memory, own_cgroup, tree_memory
from agent.phases.pi import PiCare, cool_down
from agent.preflight import Verdict, narrow
from agent.probes import NotReady, make_probe, wait_ready
from agent.runtimes import make_runtime
from agent.runtimes.base import Instance, Runtime, RuntimeUnavailable, StartContext
from runlab import __version__, stats
from runlab.config import to_builtins
from runlab.experiment import Experiment, Variant
from runlab.results import (
    ComparisonResult,
    ExperimentResult,
    Figure,
    Footprint,
    LoadFigures,
    Size,
    StackResult,
    VariantResult,
    compare_figures,
)
from runlab.wire import FieldValue, Sample

PEAK_HZ = 50  # PSS sampling rate for the peak where the kernel keeps no peak of its own
THROTTLE_NOW_BITS = 0b1111  # under-voltage, freq capped, throttled, soft temp limit — right now
NEW_PHASES = ("redeploy", "stack", "interservice", "overhead", "benchmark")  # modules of agent/phases


class Progress(Protocol):
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, note: str = "") -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, note: str = "") -> None: ...
    def message(self, text: str) -> None: ...


class PeakMemory:
    """PSS of an instance's processes sampled at PEAK_HZ from its start until ``stop()``; keeps the maximum."""

    def __init__(self) -> None:
        self.peak = 0
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()

    def follow(self, inst: Instance) -> None:
        self._task = asyncio.create_task(self._sample(inst))

    async def _sample(self, inst: Instance) -> None:
        pids = await inst.pids()  # at once for a process; a container's once its engine client returned
        while not self._done.is_set():
            self.peak = max(self.peak, tree_memory(pids).pss)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1 / PEAK_HZ):
                    await self._done.wait()

    async def stop(self) -> None:
        self._done.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


class ExperimentError(Exception):
    """The experiment cannot run here (a runtime is unavailable, a permission is missing)."""


class PortPicker:
    """Free loopback ports, never the same one twice in a run (no TIME_WAIT collisions)."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def __call__(self) -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self.used:
                self.used.add(port)
                return port


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def machine_facts() -> dict[str, object]:
    f: dict[str, object] = dict(facts.static_facts())
    f.update(governor=facts.governor() or "unknown", python=platform.python_version(), runlab=__version__,
             hostname=socket.gethostname())
    with contextlib.suppress(OSError):
        f["cmdline"] = Path("/proc/cmdline").read_text().strip()
    with contextlib.suppress(OSError):
        f["smt"] = Path("/sys/devices/system/cpu/smt/control").read_text().strip()
    with contextlib.suppress(OSError):
        f["boost"] = Path("/sys/devices/system/cpu/cpufreq/boost").read_text().strip()
    return f


class Runner:
    """Runs one experiment; ``await Runner(...).run()`` → ExperimentResult."""

    def __init__(self, exp: Experiment, *, file: str = "", file_hash: str = "", run_id: str = "",
                 node: str = "", progress: Progress | None = None,
                 emit: Callable[[Sample], None] | None = None, pi: PiCare | None = None, strict: bool = False,
                 on_preflight: Callable[[list[Verdict]], None] | None = None) -> None:
        from runlab.experiment import with_workloads, workloads_dir

        exp = with_workloads(exp, workloads_dir())  # a no-op when the caller resolved it (fleet: its configured one)
        self.exp = exp
        self.strict = strict  # a variant the pre-flight refuses stops the run instead of being skipped
        self.on_preflight = on_preflight  # told the verdicts before the first sample
        self.verdicts: list[Verdict] = []
        self.pi = pi or PiCare()  # temperature and throttling sources (tests inject fakes)
        self.file, self.file_hash = file, file_hash
        self.run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self.node = node
        self.progress: Progress = progress or NullProgress()
        self._emit = emit
        self.ports = PortPicker()
        self.rng = random.Random(self.run_id)
        self.warnings: list[str] = []
        self.results = {v.name: VariantResult(name=v.name, runtime=_tag(v), node=node) for v in exp.variants}
        self.raw: dict[str, list[float]] = {v.name: [] for v in exp.variants}
        self.warm: dict[str, list[float]] = {v.name: [] for v in exp.variants}
        self.failures: dict[str, list[str]] = {v.name: [] for v in exp.variants}
        self.tmp = Path(tempfile.mkdtemp(prefix="runlab-run-"))
        self.here = str(Path(file).resolve().parent) if file else os.getcwd()
        self._seq = 0
        self.stacks: list[StackResult] = []
        self.cooldown_waits: list[float] = []

    # -- helpers -------------------------------------------------------------------------------
    def emit(self, figure: str, variant: Variant, fields: dict[str, FieldValue], **tags: str) -> None:
        self.emit_as(figure, variant.name, _tag(variant), fields, **tags)

    def emit_as(self, figure: str, name: str, runtime: str, fields: dict[str, FieldValue], **tags: str) -> None:
        """A ``run_sample`` tagged with ``name`` as its variant; every one carries the Pi's throttling flags."""
        if self._emit is None:
            return
        t = {"run": self.run_id, "experiment": self.exp.name, "variant": name, "runtime": runtime,
             "figure": figure, **tags}
        self._emit(Sample(ts=time.time_ns(), name="run_sample", tags=t, fields={**self.pi.flags(), **fields}))

    def context(self, variant: Variant, **extra: str) -> StartContext:
        self._seq += 1
        run_dir = self.tmp / f"{variant.name}-{self._seq}"
        run_dir.mkdir()
        version = self.exp.redeploy.v1 if self.exp.redeploy else "v1"
        return StartContext(port=self.ports(), name=f"runlab-{self.exp.name}-{variant.name}-{self._seq}-"
                            f"{secrets.token_hex(2)}", run_dir=run_dir, variant=variant.name, here=self.here,
                            extra={"version": version, **extra})

    @staticmethod
    async def start_instance(rt: Runtime, ctx: StartContext) -> Instance:
        """``rt.start(ctx)``, carried to its end even when cancelled meanwhile — and then stopped.

        A Ctrl-C landing while an engine client is being spawned would otherwise leave a container that no
        instance knows about (seen with several services started at once in the stack phase).
        """
        task = asyncio.ensure_future(rt.start(ctx))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                inst = await task
                await inst.stop()
            raise

    async def start_ready(self, rt: Runtime, variant: Variant, ctx: StartContext,
                           on_start: Callable[[Instance], None] | None = None) -> tuple[Instance, float]:
        """Start and wait for readiness; (instance, ms from issuing the start to the first success)."""
        ready = variant.ready or self.exp.ready
        await rt.before_start()  # untimed: e.g. make a serverless function cold
        t0 = time.monotonic_ns()
        inst = await self.start_instance(rt, ctx)
        if on_start is not None:
            on_start(inst)
        try:
            t1 = await wait_ready(make_probe(ready, ctx.values(), inst), inst, ready, t0)
        except BaseException:
            await inst.stop()
            raise
        return inst, (t1 - t0) / 1e6

    async def prepare_host(self) -> None:
        """Cool-down wait and page-cache drop before a sample, as the experiment asks."""
        cd = self.exp.cooldown
        if cd is not None:
            waited, _ = await cool_down(self.pi.temperature, cd.below_c, float(cd.max_wait))
            if waited >= 0.5:
                self.cooldown_waits.append(round(waited, 3))
        if self.exp.cold == "page-cache":
            os.sync()
            try:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            except OSError as e:
                raise ExperimentError(f"cold: page-cache needs root to drop caches ({e.strerror})") from None

    # -- phases --------------------------------------------------------------------------------
    async def cold_starts(self, runtimes: dict[str, Runtime]) -> None:
        exp = self.exp
        rounds = exp.warmup + exp.repeat
        self.progress.phase("cold starts", rounds * len(exp.variants))
        for r in range(rounds):
            order = list(exp.variants)
            if exp.order == "random":
                self.rng.shuffle(order)
            warm = r < exp.warmup
            for v in order:
                await self.prepare_host()
                mask_before = self.pi.mask()
                ctx = self.context(v)
                try:
                    inst, ms = await self.start_ready(runtimes[v.name], v, ctx)
                except (NotReady, RuntimeUnavailable) as e:
                    self.failures[v.name].append(str(e))
                    self.results[v.name].failed_starts.append(f"cold start {r + 1}{' (warm-up)' if warm else ''}: "
                                                              f"{e}")
                    self.emit("startup_ms", v, {"i": r, "ok": False, "error": str(e)[:500]},
                              warmup=str(warm).lower(), cold=exp.cold)
                    self.progress.advance(f"{v.name}: failed")
                else:
                    await inst.stop()
                    mask_after = self.pi.mask()
                    throttled = any(m is not None and m & THROTTLE_NOW_BITS for m in (mask_before, mask_after))
                    temp = self.pi.temperature()
                    res = self.results[v.name]
                    if throttled and not warm:
                        res.throttled_samples += 1
                    if temp is not None:
                        res.max_temp_c = max(temp, res.max_temp_c or temp)
                    (self.warm if warm else self.raw)[v.name].append(ms)
                    fields: dict[str, FieldValue] = {"value": ms, "i": r, "ok": True, "throttled": throttled}
                    if temp is not None:
                        fields["temp_c"] = temp
                    fields.update(inst.sample_fields())  # what the runtime learnt in-band (serverless: cold?)
                    self.emit("startup_ms", v, fields, warmup=str(warm).lower(), cold=exp.cold)
                    self.progress.advance(f"{v.name}: {ms:,.1f} ms")
                shutil.rmtree(ctx.run_dir, ignore_errors=True)
                if exp.pause:
                    await asyncio.sleep(float(exp.pause))
        for v in exp.variants:
            self.results[v.name].startup_ms = Figure.of(self.raw[v.name], "ms", self.warm[v.name],
                                                        len(self.failures[v.name]), self.failures[v.name])

    async def footprint_and_load(self, runtimes: dict[str, Runtime]) -> None:
        exp = self.exp
        do_fp, do_load = "footprint" in exp.phases, "load" in exp.phases and exp.load is not None
        if not (do_fp or do_load):
            return
        floor = 0.0
        if do_load:
            from agent import loadgen

            try:
                cal = await loadgen.calibrate()
            except (RuntimeError, OSError, TimeoutError) as e:  # no floor: no load figure can be trusted
                raise ExperimentError(f"load: the load generator's calibration failed ({e or type(e).__name__}); "
                                      f"nothing was measured under load") from None
            floor = cal.floor_p50_ms
        self.progress.phase("footprint and load" if do_load else "footprint", len(exp.variants))
        for v in exp.variants:
            ctx = self.context(v)
            peak = PeakMemory()
            try:
                inst, _ = await self.start_ready(runtimes[v.name], v, ctx, on_start=peak.follow)
            except (NotReady, RuntimeUnavailable) as e:
                await peak.stop()
                label = "footprint" if do_fp else "load"  # the phase this start was for
                self.results[v.name].failed_starts.append(f"{label}: {e}")
                self.results[v.name].error = self.results[v.name].error or f"{label}: {e}"
                self.progress.advance(f"{v.name}: failed")
                continue
            try:
                await self._measure_instance(v, inst, peak, do_fp, do_load, ctx, floor)
            finally:
                await peak.stop()
                await inst.stop()
                shutil.rmtree(ctx.run_dir, ignore_errors=True)
            self.progress.advance(v.name)

    async def _measure_instance(self, v: Variant, inst: Instance, peak: PeakMemory, do_fp: bool, do_load: bool,
                                ctx: StartContext, floor: float) -> None:
        pids = await inst.pids()
        cg = own_cgroup(pids[0]) if pids else None
        settle = float(v.settle if v.settle is not None else self.exp.settle)
        await asyncio.sleep(settle)
        idle = tree_memory(pids)
        if do_load:
            await self._load(v, ctx, floor)
        await peak.stop()
        if not do_fp:
            return
        fp = Footprint(pss_bytes=idle.pss, uss_bytes=idle.uss, rss_bytes=idle.rss, processes=idle.processes,
                       settle_s=settle, peak_bytes=peak.peak or None,
                       peak_source=f"PSS sampled at {PEAK_HZ} Hz from the start")
        if cg is not None:
            m = cgroup_memory(*cg)
            if m is not None:
                fp.cgroup_bytes, fp.cgroup_anon_bytes, fp.cgroup_file_bytes = m.current, m.anon, m.file
                if m.peak is not None:
                    fp.peak_bytes = m.peak
                    fp.peak_source = "cgroup memory.peak" if m.version == 2 else "cgroup max_usage_in_bytes"
        self.results[v.name].footprint = fp
        fields: dict[str, FieldValue] = {"pss_bytes": fp.pss_bytes, "uss_bytes": fp.uss_bytes,
                                         "rss_bytes": fp.rss_bytes, "processes": fp.processes}
        if fp.cgroup_bytes is not None:
            fields["cgroup_bytes"] = fp.cgroup_bytes
        if fp.peak_bytes is not None:
            fields["peak_bytes"] = fp.peak_bytes
        self.emit("footprint", v, fields)

    async def _load(self, v: Variant, ctx: StartContext, floor: float) -> None:
        from agent import loadgen
        from runlab.experiment import fill

        load = self.exp.load
        assert load is not None
        ready = v.ready or self.exp.ready
        url = fill(load.url or ready.http or "", ctx.values())
        runs: list[loadgen.LoadResult] = []
        if load.dns is not None:  # DNS mode: UDP queries instead of HTTP GETs, the same LoadResult
            from agent import dnsload

            url, runs = await dnsload.run_phase(load, ctx.values())
        body = fill(load.body, ctx.values()) if load.body is not None else None
        if load.dns is None and load.requests:
            runs.append(await loadgen.closed_loop(url, requests=load.requests, concurrency=load.concurrency,
                                                  timeout=float(load.timeout), method=load.method, body=body,
                                                  headers=load.headers))
        if load.rate and load.dns is None:
            runs.append(await loadgen.open_loop(url, rate=load.rate, duration=float(load.duration),
                                                timeout=float(load.timeout), method=load.method, body=body,
                                                headers=load.headers))
        for lr in runs:
            lat = sorted(lr.latencies_ms)
            fig = Figure.of(lr.latencies_ms, "ms")
            p999 = stats.percentile(lat, 99.9) if lat else 0.0
            self.results[v.name].load.append(LoadFigures(
                mode=lr.mode, url=url, requests=lr.requests, ok=lr.ok, errors=lr.errors,
                concurrency=lr.concurrency, target_rps=lr.target_rps, achieved_rps=lr.achieved_rps,
                duration_s=lr.duration_s, latency_ms=fig, p999_ms=p999, generator_floor_ms=floor))
            fields: dict[str, FieldValue] = {"requests": lr.requests, "succeeded": lr.ok, "errors": lr.errors,
                                             "achieved_rps": float(lr.achieved_rps)}
            if fig is not None:
                fields.update(p50_ms=fig.median, p90_ms=fig.p90, p99_ms=fig.p99, p999_ms=p999, max_ms=fig.max)
            self.emit("load", v, fields, mode=lr.mode)

    async def sizes(self, runtimes: dict[str, Runtime]) -> None:
        self.progress.phase("size", len(self.exp.variants))
        for v in self.exp.variants:
            size: Size | None = await runtimes[v.name].size()
            self.results[v.name].size = size
            if size is not None:
                self.emit("size", v, {"bytes": size.bytes, "what": size.what})
            self.progress.advance(v.name)

    def comparisons(self) -> list[ComparisonResult]:
        exp = self.exp
        if not exp.variants:
            return []
        ref_name = exp.reference or exp.variants[0].name
        ref = self.results[ref_name]
        out: list[ComparisonResult] = []
        for v in exp.variants:
            if v.name == ref_name:
                continue
            cand = self.results[v.name]
            pairs: list[tuple[str, str, Figure | None, Figure | None]] = [
                ("startup_ms", "startup", ref.startup_ms, cand.startup_ms)]
            for mode in ("closed", "open"):
                rl = next((lf.latency_ms for lf in ref.load if lf.mode == mode), None)
                cl = next((lf.latency_ms for lf in cand.load if lf.mode == mode), None)
                pairs.append((f"latency_ms_{mode}", f"{mode}-loop latency", rl, cl))
            pairs.append(("redeploy_ms", "redeploy (swap → first v2 answer)",
                          ref.redeploy.time_to_v2_ms if ref.redeploy else None,
                          cand.redeploy.time_to_v2_ms if cand.redeploy else None))
            pairs.append(("rtt_ms", "inter-service RTT", ref.interservice.rtt_ms if ref.interservice else None,
                          cand.interservice.rtt_ms if cand.interservice else None))
            for figure, what, rf, cf in pairs:
                if rf is not None and cf is not None:
                    out.append(compare_figures(figure, f"{v.name} {what}", "ms", ref_name, v.name, rf, cf))
            if ref.benchmark and cand.benchmark and ref.benchmark.score and cand.benchmark.score:
                higher = cand.benchmark.higher_is_better
                out.append(compare_figures("benchmark", f"{v.name} benchmark score", cand.benchmark.unit, ref_name,
                                       v.name, ref.benchmark.score, cand.benchmark.score, lower_is_better=not higher,
                                       words=("better", "worse")))
        stacks = [st for st in self.stacks if st.total_ms is not None]
        for st in stacks[1:]:
            assert st.total_ms is not None and stacks[0].total_ms is not None
            out.append(compare_figures("stack_ms", f"{st.name} stack boot", "ms", stacks[0].name, st.name,
                                   stacks[0].total_ms, st.total_ms))
        return out

    # -- the run -------------------------------------------------------------------------------
    async def preflight(self, runtimes: dict[str, Runtime]) -> None:
        """Which variants can run here (agent/preflight.py, then each runtime's own ``prepare``); the others are
        skipped with their reason, or the run stops (``strict``, or nothing can run)."""
        from agent import preflight

        exp = self.exp
        self.progress.phase("pre-flight", len(exp.variants))
        verdicts, problems = await preflight.check(exp, self.here, self.file)
        if problems:
            raise ExperimentError("; ".join(problems))
        for vd in verdicts:
            if vd.ok:
                try:
                    await runtimes[vd.variant].prepare()
                except RuntimeUnavailable as e:
                    vd.reason = str(e).removeprefix(f"variant {vd.variant}: ")
            self.progress.advance(f"{vd.variant}: {'ok' if vd.ok else 'skipped'}")
        self.verdicts = verdicts
        if self.on_preflight is not None:
            self.on_preflight(verdicts)
        skipped = [vd for vd in verdicts if not vd.ok]
        if skipped and self.strict:
            why = "; ".join(f"variant {vd.variant}: {vd.why()}" for vd in skipped)
            raise ExperimentError(f"strict: {len(skipped)} of {len(verdicts)} variants cannot run here: {why}")
        for vd in skipped:
            self.results[vd.variant].skipped = vd.why()
            self.emit_as("skipped", vd.variant, vd.runtime, {"reason": vd.why()[:500]})
            self.progress.message(f"skipped {vd.variant}: {vd.why()}")
        keep = [vd.variant for vd in verdicts if vd.ok]
        self.exp, notes = narrow(exp, keep, {vd.variant: vd.reason for vd in skipped})
        self.warnings += notes

    async def run(self) -> ExperimentResult:
        exp = self.exp
        started = _now_iso()
        machine = machine_facts()
        if machine.get("governor") not in ("performance", "unknown"):
            self.warnings.append(f"CPU governor is {machine['governor']!r}, not 'performance': timings vary more")
        if exp.repeat < 30 and "cold_start" in exp.phases:
            self.warnings.append(f"repeat is {exp.repeat}: METHODOLOGY asks for at least 30 cold starts")
        from agent.phases.redeploy import with_version

        v1 = exp.redeploy.v1 if exp.redeploy else "v1"
        runtimes = {v.name: make_runtime(with_version(v, v1), exp, self.here) for v in exp.variants}
        machine["runtimes"] = await facts.detect_runtimes()
        status = "finished"
        try:
            await self.preflight(runtimes)
            exp = self.exp  # the variants that run here
            if not exp.variants:
                status = "skipped"  # the pre-flight let none run: every variant says why
            if "cold_start" in exp.phases and exp.variants:
                await self.cold_starts(runtimes)
            if exp.variants:
                await self.footprint_and_load(runtimes)
            if "size" in exp.phases and exp.variants:
                await self.sizes(runtimes)
            for phase in (p for p in exp.phases if p in NEW_PHASES and exp.variants):
                module = importlib.import_module(f"agent.phases.{phase}")
                await module.run(self, runtimes)
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.status = status
        ready = exp.ready
        cooldown: object = to_builtins(exp.cooldown) if exp.cooldown else None
        if exp.cooldown and self.pi.temperature() is None:  # nothing to wait on: not applied
            cooldown = None
            self.warnings.append("cooldown: not applied — this machine has no temperature sensor")
        methodology: dict[str, object] = {
            "repeat": exp.repeat, "warmup": exp.warmup, "order": exp.order, "cold": exp.cold,
            "probe": ready.kind(), "probe_interval_ms": float(ready.interval) * 1000,
            "probe_timeout_ms": float(ready.probe_timeout) * 1000, "settle_s": float(exp.settle),
            "pause_s": float(exp.pause), "cooldown": cooldown,
            "clock": "CLOCK_MONOTONIC (start issued → first probe success)", "memory": "PSS from smaps_rollup",
            "statistics": "median with 95 % order-statistic CI; Mann-Whitney U; significant when p < 0.01 and "
                          "effect ≥ 5 %",
            "phases": list(exp.phases), "load": to_builtins(exp.load) if exp.load else None,
            **{p: to_builtins(getattr(exp, p)) for p in NEW_PHASES if getattr(exp, p) is not None},
            "reference": exp.reference or (exp.variants[0].name if exp.variants else None),
            "preflight": {vd.variant: "runs" if vd.ok else vd.why() for vd in self.verdicts},
        }
        for v in exp.variants:
            res = self.results[v.name]
            if res.startup_ms is None and "cold_start" in exp.phases and not res.error:
                res.error = "every start failed: " + (self.failures[v.name][0] if self.failures[v.name] else "?")
        return ExperimentResult(experiment=exp.name, run=self.run_id, file=self.file, file_sha256=self.file_hash,
                                started=started, finished=_now_iso(), machine=machine, methodology=methodology,
                                variants=list(self.results.values()), comparisons=self.comparisons(),
                                warnings=self.warnings, status=status, stacks=self.stacks,
                                cooldown_waits_s=self.cooldown_waits)



def _tag(v: Variant) -> str:
    tag = type(v).__struct_config__.tag
    return str(tag)

