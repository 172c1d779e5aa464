"""The phases beyond cold start, footprint, size and load, rebuilt from InfluxDB rows for ``runlab report``.

Where the agent streams one ``run_sample`` point per measured value (a redeploy swap, a benchmark score, a
stack boot and each service's part of it) the figure is rebuilt from those values with runlab.stats, exactly
as the engine built it, so medians, intervals, outliers and comparisons are the engine's. Where only a digest
travels (inter-service RTT: one point per pair, the round trips themselves stay in the node's JSON; overhead
levels and density) the ``run_summary`` point is the figure. Rows are InfluxQL rows (column → value, tags
included), in time order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runlab import stats
from runlab.results import (
    Benchmark,
    ComparisonResult,
    DensityLevel,
    Figure,
    InterServiceRtt,
    Overhead,
    Redeploy,
    ServiceBoot,
    StackResult,
    VariantResult,
    compare_figures,
)

Row = dict[str, Any]
NEVER_V2 = "v2 never answered the client"  # agent/phases/redeploy.py's reason for a swap without a v2 answer


def num(row: Row | None, key: str) -> float | None:
    v = (row or {}).get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def integer(row: Row | None, key: str) -> int | None:
    v = num(row, key)
    return int(v) if v is not None else None


def summary_figure(row: Row, n: int | None = None, unit: str = "ms") -> Figure | None:
    """A Figure from a summary point's statistics (its raw values did not travel); None without a median."""
    if num(row, "median") is None:
        return None
    count = n if n is not None else integer(row, "n") or 0

    def g(k: str) -> float:
        return num(row, k) or 0.0

    return Figure(unit=unit, n=count, median=g("median"), mean=g("mean"), stdev=g("stdev"), cv=g("cv"),
                  min=g("min"), max=g("max"), p90=g("p90"), p95=g("p95"), p99=g("p99"), ci_low=g("ci_low"),
                  ci_high=g("ci_high"), ci_exact=count >= 1 and stats.median_ci_ranks(count) is not None,
                  outliers=[], samples=[], failures=integer(row, "failures") or 0)


def _of(rows: Sequence[Row], figure: str) -> list[Row]:
    return [r for r in rows if r.get("figure") == figure]


def _errors(rows: Sequence[Row]) -> list[str]:
    return [str(r.get("error") or "") for r in rows if r.get("ok") is False]


def _values(rows: Sequence[Row], warmup: bool = False) -> list[float]:
    return [v for r in rows if r.get("ok") is True and (r.get("warmup") == "true") == warmup
            and (v := num(r, "value")) is not None]


def redeploy(raw: Sequence[Row], summary: Sequence[Row]) -> Redeploy | None:
    """Per swap from its point (time to v2, errors, requests, longest gap); the client interval from the summary."""
    rows, s = _of(raw, "redeploy_ms"), next(iter(_of(summary, "redeploy_ms")), None)
    if not rows and s is None:
        return None
    strategy = str((s or {}).get("strategy") or next((r.get("strategy") for r in rows if r.get("strategy")), ""))
    interval = num(s, "client_interval_ms") or 0.0
    if not rows:  # only the digest is left: the per-swap lists cannot be rebuilt
        assert s is not None
        return Redeploy(strategy=strategy, time_to_v2_ms=summary_figure(s), gap_ms=None,
                        client_interval_ms=interval)
    swaps = [r for r in rows if num(r, "requests") is not None]  # ran to the end, v2 answering or not
    times = [v for r in swaps if (v := num(r, "value")) is not None]
    fails = [str(r.get("error") or "") for r in rows if num(r, "requests") is None]
    fails += [NEVER_V2] * sum(num(r, "value") is None for r in swaps)
    return Redeploy(strategy=strategy, time_to_v2_ms=Figure.of(times, "ms", failures=len(fails),
                                                                failure_reasons=fails),
                    gap_ms=Figure.of([num(r, "gap_ms") or 0.0 for r in swaps], "ms"),
                    errors=[integer(r, "errors") or 0 for r in swaps],
                    requests=[integer(r, "requests") or 0 for r in swaps], client_interval_ms=interval)


def interservice(raw: Sequence[Row], summary: Sequence[Row]) -> InterServiceRtt | None:
    """The RTT statistics from the summary (one point per pair travels, not the round trips); failures raw."""
    rows, s = _of(raw, "rtt_ms"), next(iter(_of(summary, "rtt_ms")), None)
    if not rows and s is None:
        return None
    fails = _errors(rows)
    fig = summary_figure(s) if s is not None else None
    if fig is not None and rows:
        fig.failures, fig.failure_reasons = len(fails), fails[:10]
    pairs = sum(r.get("ok") is True for r in rows) if rows else integer(s, "pairs") or 0
    return InterServiceRtt(rtt_ms=fig, pairs=pairs, peer=str((s or {}).get("peer") or ""))


def _level(r: Row) -> DensityLevel:
    return DensityLevel(workloads=integer(r, "workloads") or 0,
                        platform_pss_bytes=integer(r, "platform_pss_bytes") or 0,
                        platform_rss_bytes=integer(r, "platform_rss_bytes") or 0,
                        platform_processes=integer(r, "platform_processes") or 0,
                        workloads_pss_bytes=integer(r, "workloads_pss_bytes") or 0,
                        workloads_processes=integer(r, "workloads_processes") or 0,
                        cgroup_bytes=integer(r, "cgroup_bytes"), cpu_percent=num(r, "cpu_percent") or 0.0,
                        read_bytes=integer(r, "read_bytes") or 0, write_bytes=integer(r, "write_bytes") or 0,
                        window_s=num(r, "window_s") or 0.0)


def overhead(raw: Sequence[Row], summary: Sequence[Row]) -> Overhead | None:
    """Levels and density from the summaries (the live per-level points lack RSS and the cgroup, their fallback)."""
    levels, density = _of(summary, "overhead") or _of(raw, "overhead"), next(iter(_of(summary, "density")), None)
    if not levels and density is None:
        return None
    return Overhead(levels=sorted((_level(r) for r in levels), key=lambda lv: lv.workloads),
                    data_bytes=integer(density, "data_bytes"), data_what=str((density or {}).get("data_what") or ""),
                    per_workload_bytes=num(density, "per_workload_bytes"),
                    platform_per_workload_bytes=num(density, "platform_per_workload_bytes"))


def benchmark(raw: Sequence[Row], summary: Sequence[Row]) -> Benchmark | None:
    """Scores from their points (warm-up apart, failures with their reasons); direction and command from the summary."""
    rows, s = _of(raw, "benchmark"), next(iter(_of(summary, "benchmark")), None)
    if not rows and s is None:
        return None
    unit = str((s or {}).get("unit") or next((r.get("unit") for r in rows if r.get("unit")), ""))
    fails = _errors(rows)
    score = (Figure.of(_values(rows), unit, _values(rows, warmup=True), len(fails), fails) if rows
             else summary_figure(s, unit=unit) if s is not None else None)
    higher = (s or {}).get("higher_is_better")
    return Benchmark(score=score, unit=unit, higher_is_better=higher if isinstance(higher, bool) else True,
                     command=str((s or {}).get("command") or ""))


def apply(v: VariantResult, raw: Sequence[Row], summary: Sequence[Row]) -> None:
    """Fill ``v``'s phase results from its own rows."""
    v.redeploy = redeploy(raw, summary)
    v.interservice = interservice(raw, summary)
    v.overhead = overhead(raw, summary)
    v.benchmark = benchmark(raw, summary)


def stacks(raw: Sequence[Row], summary: Sequence[Row], node: str) -> list[StackResult]:
    """Stack boots (rows with runtime ``stack``, the stack's name as their variant), in the order first seen."""
    raw = [r for r in raw if r.get("runtime") == "stack"]
    summary = [r for r in summary if r.get("runtime") == "stack"]
    out: list[StackResult] = []
    for name in dict.fromkeys(str(r.get("variant")) for r in [*raw, *summary] if r.get("variant")):
        mine = [r for r in raw if r.get("variant") == name]
        sums = [r for r in summary if r.get("variant") == name]
        totals = _of(mine, "stack_ms")
        per = _of(mine, "stack_service_ms")
        kind = str(next((r.get("kind") for r in mine if r.get("kind")), "services"))
        if mine:
            fails = _errors(totals)
            total = Figure.of(_values(totals), "ms", failures=len(fails), failure_reasons=fails)
            names = dict.fromkeys(str(r.get("service")) for r in per if r.get("service"))
            services = [ServiceBoot(name=n, ready_ms=Figure.of(_values([r for r in per if r.get("service") == n]),
                                                               "ms")) for n in names]
        else:
            s = next(iter(_of(sums, "stack_ms")), None)
            total = summary_figure(s) if s is not None else None
            services = [ServiceBoot(name=str(r.get("service")), ready_ms=summary_figure(r))
                        for r in _of(sums, "stack_service_ms")]
            fails = []
        err = next((str(r.get("message") or "") for r in _of(sums, "error")), "")
        if not err and total is None:
            err = "every boot failed: " + (fails[0] if fails else "?")
        out.append(StackResult(name=name, kind=kind, total_ms=total, services=services, node=node, error=err))
    return out



def _comparable(*figures: Figure | None) -> bool:
    return all(f is not None and f.samples for f in figures)


def variant_comparisons(ref: VariantResult, cand: VariantResult) -> list[ComparisonResult]:
    """Redeploy and benchmark of ``cand`` against ``ref``, as the engine compares them.

    Inter-service RTT is not compared here: its round trips do not travel, and a comparison of digests
    would not be the engine's Mann–Whitney.
    """
    out: list[ComparisonResult] = []
    rf = ref.redeploy.time_to_v2_ms if ref.redeploy else None
    cf = cand.redeploy.time_to_v2_ms if cand.redeploy else None
    if _comparable(rf, cf):
        assert rf is not None and cf is not None
        out.append(compare_figures("redeploy_ms", f"{cand.name} redeploy (swap → first v2 answer)", "ms", ref.name,
                            cand.name, rf, cf))
    rb, cb = ref.benchmark, cand.benchmark
    if rb is not None and cb is not None and _comparable(rb.score, cb.score):
        assert rb.score is not None and cb.score is not None
        out.append(compare_figures("benchmark", f"{cand.name} benchmark score", cb.unit, ref.name, cand.name, rb.score,
                            cb.score, lower_is_better=not cb.higher_is_better, words=("better", "worse")))
    return out


def stack_comparisons(boots: Sequence[StackResult]) -> list[ComparisonResult]:
    """Every stack's boot against the first one's."""
    shown = [st for st in boots if st.total_ms is not None and st.total_ms.samples]
    out = []
    for st in shown[1:]:
        assert st.total_ms is not None and shown[0].total_ms is not None
        out.append(compare_figures("stack_ms", f"{st.name} stack boot", "ms", shown[0].name, st.name, shown[0].total_ms,
                            st.total_ms))
    return out


PHASE_OF = {"startup_ms": "cold_start", "footprint": "footprint", "latency_ms": "load", "load": "load",
            "size": "size", "redeploy_ms": "redeploy", "stack_ms": "stack", "stack_service_ms": "stack",
            "rtt_ms": "interservice", "overhead": "overhead", "density": "overhead", "benchmark": "benchmark"}
PHASE_ORDER = ("cold_start", "footprint", "load", "size", "redeploy", "stack", "interservice", "overhead",
               "benchmark")


def phases_seen(rows: Sequence[Row]) -> list[str]:
    """The run's phases, as far as its figures tell (the report shows a phase's grid only when it ran)."""
    seen = {PHASE_OF[f] for r in rows if (f := str(r.get("figure"))) in PHASE_OF}
    return [p for p in PHASE_ORDER if p in seen]
