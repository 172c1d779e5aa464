"""Grids of the phases beyond cold start, memory, size and load: redeploy, stack boot, inter-service RTT,
platform overhead and density, workload benchmark. Drawn by the same table and Markdown writers.
"""

from __future__ import annotations

from collections.abc import Callable

from runlab.report import cells
from runlab.report.sections import Grid
from runlab.results import ExperimentResult, Figure, VariantResult

Who = Callable[[ExperimentResult, VariantResult], list[str]]


def _us(ms: float) -> str:
    return cells.number(ms * 1000)


def _fig(f: Figure | None) -> list[str]:
    """n, median, 95 % CI, p90, max of a figure (— when missing)."""
    if f is None:
        return [cells.MISSING] * 5
    ci = cells.interval(f.ci_low, f.ci_high) + ("" if f.ci_exact else "*")
    return [f"{f.n:,}", cells.number(f.median), ci, cells.number(f.p90), cells.number(f.max)]


def redeploy_grid(r: ExperimentResult, lead: list[str], who: Who) -> Grid | None:
    shown = [v for v in r.variants if v.redeploy is not None]
    if not shown:
        return None
    header = [*lead, "strategy", "swaps", "to v2 median", "95 % CI", "p90", "max", "errors", "requests",
              "longest gap", "failed"]
    rows = []
    for v in shown:
        rd = v.redeploy
        assert rd is not None
        _, med, ci, p90, mx = _fig(rd.time_to_v2_ms)
        rows.append([*who(r, v), rd.strategy, f"{len(rd.errors):,}", med, ci, p90, mx, f"{sum(rd.errors):,}",
                     f"{sum(rd.requests):,}", cells.number(rd.gap_ms.max if rd.gap_ms else None),
                     str(rd.time_to_v2_ms.failures if rd.time_to_v2_ms else len(rd.errors))])
    interval = shown[0].redeploy.client_interval_ms if shown[0].redeploy else 0.0
    return Grid(title="Redeploy (ms) — swap issued → first answer from v2, as a steady client saw it",
                header=header, rows=rows, numeric=frozenset(range(len(lead) + 1, len(header))),
                notes=[f"errors: failed client requests sent from the swap on (summed over swaps); longest gap: "
                       f"the longest time between two successful answers; the client asks every "
                       f"{cells.quantity(interval, 'ms')}"])


def stack_grid(r: ExperimentResult) -> Grid | None:
    if not r.stacks:
        return None
    header = ["stack", "service", "n", "median", "95 % CI", "p90", "max", "failed"]
    rows = []
    for st in r.stacks:
        f = st.total_ms
        rows.append([st.name, f"all ({st.kind})", *_fig(f), str(f.failures if f else cells.MISSING)])
        for svc in st.services:
            rows.append(["", svc.name, *_fig(svc.ready_ms), ""])
    return Grid(title="Stack boot (ms) — every service started together → its first probe success; "
                      "all = the last of them",
                header=header, rows=rows, numeric=frozenset(range(2, len(header))))


def rtt_grid(r: ExperimentResult, lead: list[str], who: Who) -> Grid | None:
    shown = [v for v in r.variants if v.interservice is not None]
    if not shown:
        return None
    header = [*lead, "pairs", "round trips", "min", "p50", "95 % CI", "p90", "p99", "max"]
    rows = []
    for v in shown:
        it = v.interservice
        assert it is not None
        f = it.rtt_ms
        rows.append([*who(r, v), str(it.pairs), f"{f.n:,}" if f else cells.MISSING,
                     *([_us(f.min), _us(f.median), f"[{_us(f.ci_low)}–{_us(f.ci_high)}]", _us(f.p90), _us(f.p99),
                        _us(f.max)] if f else [cells.MISSING] * 6)])
    return Grid(title="Inter-service latency (µs) — TCP ping-pong round trips between two workloads of the "
                      "variant, measured by the client workload",
                header=header, rows=rows, numeric=frozenset(range(len(lead), len(header))))


def overhead_grid(r: ExperimentResult, lead: list[str], who: Who) -> Grid | None:
    shown = [v for v in r.variants if v.overhead is not None]
    if not shown:
        return None
    header = [*lead, "workloads", "platform PSS", "processes", "cgroup", "CPU", "disk read", "disk write",
              "workloads PSS", "total"]
    rows = []
    notes = []
    for v in shown:
        oh = v.overhead
        assert oh is not None
        for lv in oh.levels:
            rows.append([*who(r, v), str(lv.workloads), cells.size(lv.platform_pss_bytes),
                         str(lv.platform_processes), cells.size(lv.cgroup_bytes),
                         f"{cells.number(lv.cpu_percent)} %", cells.size(lv.read_bytes), cells.size(lv.write_bytes),
                         cells.size(lv.workloads_pss_bytes), cells.size(lv.total_bytes)])
        slope = cells.size(int(oh.per_workload_bytes)) if oh.per_workload_bytes is not None else cells.MISSING
        plat = (cells.size(int(oh.platform_per_workload_bytes)) if oh.platform_per_workload_bytes is not None
                else cells.MISSING)
        data = f"; data directories {cells.size(oh.data_bytes)} ({oh.data_what})" if oh.data_bytes is not None else ""
        notes.append(f"{' / '.join(who(r, v))}: {slope} per added workload (platform alone: {plat}){data}")
    return Grid(title="Platform overhead and density — the platform's daemons (PSS, CPU % of one core and disk "
                      "bytes over the window) beside its workloads",
                header=header, rows=rows, numeric=frozenset(range(len(lead), len(header))), notes=notes)


def benchmark_grid(r: ExperimentResult, lead: list[str], who: Who) -> Grid | None:
    shown = [v for v in r.variants if v.benchmark is not None]
    if not shown:
        return None
    header = [*lead, "n", "median", "95 % CI", "mean ± σ", "min", "max", "unit", "failed"]
    rows = []
    for v in shown:
        b = v.benchmark
        assert b is not None
        f = b.score
        rows.append([*who(r, v), *([f"{f.n:,}", cells.number(f.median), cells.interval(f.ci_low, f.ci_high),
                                    cells.plus_minus(f.mean, f.stdev), cells.number(f.min), cells.number(f.max)]
                                   if f else [cells.MISSING] * 6), b.unit or cells.MISSING,
                     str(f.failures if f else cells.MISSING)])
    direction = "higher is better" if shown[0].benchmark and shown[0].benchmark.higher_is_better else \
        "lower is better"
    cmd = " ".join((shown[0].benchmark.command if shown[0].benchmark else "").split())
    return Grid(title=f"Workload benchmark — score parsed from the command's output ({direction})",
                header=header, rows=rows, numeric=frozenset(range(len(lead), len(header) - 2)),
                notes=[f"command: {cmd}"] if cmd else [])


def phase_grids(r: ExperimentResult, lead: list[str], who: Who) -> list[Grid]:
    grids = [redeploy_grid(r, lead, who), stack_grid(r), rtt_grid(r, lead, who), overhead_grid(r, lead, who),
             benchmark_grid(r, lead, who)]
    return [g for g in grids if g is not None]
