"""What a human-readable report says, independent of how it is drawn: grids of cells, sentences and notes.

``table.py`` draws these as aligned plain text and ``markdown.py`` as GitHub-flavoured Markdown; both read the
same :class:`ResultView` and side-by-side :class:`Grid` objects, so the terminal and a README never disagree.
Nothing here measures or computes statistics: every number comes from the result objects as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from runlab import stats
from runlab.report import cells
from runlab.results import ComparisonResult, ExperimentResult, Figure, VariantResult

_MAX_LISTED = 5  # outlier values named per figure; all of them are in the JSON and CSV
_MACHINE_KEYS = ("cpu_model", "arch", "cores", "memory_bytes", "os", "kernel", "governor", "boost", "smt",
                 "runlab")


@dataclass(frozen=True, kw_only=True)
class Grid:
    """One table: a title, a header, rows of cell text, and which columns hold numbers (right-aligned)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[int]
    # (label, span) pairs covering the header left to right; "" for columns outside any group; [] for none
    groups: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ResultView:
    """Everything shown for one ExperimentResult, in reading order."""

    title: str
    facts: list[str]
    grids: list[Grid]
    reference: str
    comparisons: list[str]
    notes: list[str]
    warnings: list[str]
    method: str


# ---------------------------------------------------------------- one result


def _multi_node(r: ExperimentResult) -> bool:
    return len({v.node for v in r.variants}) > 1


def _lead(r: ExperimentResult) -> list[str]:
    return ["node", "variant", "runtime"] if _multi_node(r) else ["variant", "runtime"]


def _who(r: ExperimentResult, v: VariantResult) -> list[str]:
    return [v.node, v.name, v.runtime] if _multi_node(r) else [v.name, v.runtime]


def _label(r: ExperimentResult, v: VariantResult) -> str:
    return f"{v.node}/{v.name}" if _multi_node(r) else v.name


def _startup_grid(r: ExperimentResult) -> Grid | None:
    phases = r.methodology.get("phases")
    cold = not isinstance(phases, list) or "cold_start" in phases  # an error of another phase is a note
    shown = [v for v in r.variants if v.startup_ms is not None or (v.error and cold)]
    if not shown:
        return None
    lead = _lead(r)
    header = [*lead, "n", "median", "95 % CI", "mean ± σ", "CV", "min", "p90", "p95", "p99", "max", "outliers",
              "failed"]
    rows: list[list[str]] = []
    units: set[str] = set()
    approximate = False
    for v in shown:
        f = v.startup_ms
        if f is None:
            rows.append([*_who(r, v), *[cells.MISSING] * (len(header) - len(lead))])
            continue
        units.add(f.unit)
        ci = cells.interval(f.ci_low, f.ci_high)
        if not f.ci_exact:
            approximate = True
            ci += "*"
        rows.append([*_who(r, v), f"{f.n:,}", cells.number(f.median), ci, cells.plus_minus(f.mean, f.stdev),
                     cells.percent(f.cv), cells.number(f.min), cells.number(f.p90), cells.number(f.p95),
                     cells.number(f.p99), cells.number(f.max), str(len(f.outliers)), str(f.failures)])
    unit = ", ".join(sorted(units)) or "ms"
    notes = ["* fewer than 6 samples: no 95 % order-statistic interval exists; min–max shown"] if approximate else []
    return Grid(title=f"Cold start ({unit}) — start issued → first probe success; warm-up excluded",
                header=header, rows=rows, numeric=frozenset(range(len(lead), len(header))), notes=notes)


def _memory_grid(r: ExperimentResult) -> Grid | None:
    if not any(v.footprint for v in r.variants):
        return None
    lead = _lead(r)
    header = [*lead, "idle PSS", "USS", "RSS", "processes", "cgroup", "cgroup anon / file", "peak", "peak source"]
    rows: list[list[str]] = []
    for v in (v for v in r.variants if not v.skipped):
        m = v.footprint
        if m is None:
            rows.append([*_who(r, v), *[cells.MISSING] * (len(header) - len(lead))])
            continue
        split = (f"{cells.size(m.cgroup_anon_bytes)} / {cells.size(m.cgroup_file_bytes)}"
                 if m.cgroup_anon_bytes is not None or m.cgroup_file_bytes is not None else cells.MISSING)
        rows.append([*_who(r, v), cells.size(m.pss_bytes), cells.size(m.uss_bytes), cells.size(m.rss_bytes),
                     str(m.processes), cells.size(m.cgroup_bytes), split, cells.size(m.peak_bytes),
                     m.peak_source or cells.MISSING])
    return Grid(title="Memory, idle after settling — PSS summed over every process the runtime added "
                      "(RSS double-counts shared pages)",
                header=header, rows=rows, numeric=frozenset(range(len(lead), len(header) - 1)))


def _size_grid(r: ExperimentResult) -> Grid | None:
    if not any(v.size for v in r.variants):
        return None
    lead = _lead(r)
    rows = [[*_who(r, v), cells.size(v.size.bytes if v.size else None), v.size.what if v.size else cells.MISSING]
            for v in r.variants if not v.skipped]
    return Grid(title="Size", header=[*lead, "size", "what"], rows=rows, numeric=frozenset({len(lead)}))


def _load_grid(r: ExperimentResult) -> Grid | None:
    if not any(v.load for v in r.variants):
        return None
    lead = _lead(r)
    header = [*lead, "mode", "offered", "requests", "errors", "achieved rps", "p50", "p90", "p99", "p99.9", "max",
              "generator floor"]
    rows: list[list[str]] = []
    for v in r.variants:
        for ld in v.load:
            lat = ld.latency_ms
            offered = f"{ld.concurrency:,} concurrent" if ld.mode == "closed" else f"{cells.number(ld.target_rps)} rps"
            rows.append([*_who(r, v), ld.mode, offered, f"{ld.requests:,}", f"{ld.errors:,}",
                         cells.number(ld.achieved_rps),
                         cells.number(lat.median if lat else None), cells.number(lat.p90 if lat else None),
                         cells.number(lat.p99 if lat else None), cells.number(ld.p999_ms if lat else None),
                         cells.number(lat.max if lat else None), cells.number(ld.generator_floor_ms)])
    return Grid(title="Load — latency in ms; closed: N requests, C concurrent; open: constant rate, latency from "
                      "the intended send time",
                header=header, rows=rows, numeric=frozenset(range(len(lead) + 1, len(header))))


def _machine_part(key: str, value: object) -> str:
    if key == "memory_bytes" and isinstance(value, int | float):
        return f"{cells.size(int(value))} RAM"
    if key == "cores":
        return f"{cells.scalar(value)} cores"
    if key in ("kernel", "governor", "boost", "smt", "runlab"):
        return f"{key} {cells.scalar(value)}"
    return cells.scalar(value)


def _machine_facts(r: ExperimentResult) -> list[str]:
    m = r.machine
    parts = [_machine_part(k, v) for k in _MACHINE_KEYS if (v := m.get(k)) not in (None, "")]
    nodes = sorted({v.node for v in r.variants if v.node})
    facts = [f"Machine: {' · '.join([*nodes, *parts]) or 'not recorded'}"]
    runtimes = m.get("runtimes")
    if isinstance(runtimes, dict) and runtimes:
        # versions are the tools' own first line, which usually names the tool already
        facts.append("Runtimes: " + " · ".join(str(v) if str(k).lower() in str(v).lower() else f"{k} {v}"
                                               for k, v in runtimes.items()))
    sha = f" (sha256 {r.file_sha256[:12]})" if r.file_sha256 else ""
    when = [f"Started {r.started}" if r.started else "", f"finished {r.finished}" if r.finished else "",
            f"{r.file}{sha}" if r.file else ""]
    if any(when):
        facts.append(" · ".join(w for w in when if w))
    return facts


def _notes(r: ExperimentResult) -> list[str]:
    notes: list[str] = []
    for v in r.variants:
        who = _label(r, v)
        if v.skipped:
            notes.append(f"⊘ {who}: skipped (pre-flight) — {v.skipped}")
        if v.error:
            notes.append(f"✗ {who}: {v.error}")
        figures: list[tuple[str, Figure]] = [("cold start", v.startup_ms)] if v.startup_ms else []
        for ld in v.load:  # thousands of requests: the count only (every flagged index is in the JSON)
            if ld.latency_ms is not None and ld.latency_ms.outliers:
                notes.append(f"{who} {ld.mode}-loop latency: {len(ld.latency_ms.outliers):,} of {ld.ok:,} "
                             f"requests flagged as outliers (modified z-score > 3.5), kept in the statistics")
        if v.redeploy is not None and v.redeploy.time_to_v2_ms is not None:
            figures.append(("redeploy", v.redeploy.time_to_v2_ms))
        if v.benchmark is not None and v.benchmark.score is not None:
            figures.append(("benchmark score", v.benchmark.score))
        if v.interservice is not None and v.interservice.rtt_ms is not None and v.interservice.rtt_ms.failures:
            f = v.interservice.rtt_ms
            notes.append(f"{who} inter-service: {f.failures} pair(s) failed — "
                         + "; ".join(dict.fromkeys(f.failure_reasons)))
        for what, f in figures:
            if f.outliers:
                listed = ", ".join(f"{cells.quantity(f.samples[i], f.unit)} (sample {i})"
                                   for i in f.outliers[:_MAX_LISTED])
                more = f", … {len(f.outliers) - _MAX_LISTED} more" if len(f.outliers) > _MAX_LISTED else ""
                notes.append(f"{who} {what}: {len(f.outliers)} outlier(s) flagged (modified z-score > 3.5), "
                             f"kept in the statistics: {listed}{more}")
            if f.failures:
                reasons = "; ".join(dict.fromkeys(f.failure_reasons))  # de-duplicated, first seen first
                notes.append(f"{who} {what}: {f.failures} failed" + (f" — {reasons}" if reasons else ""))
    for st in r.stacks:
        if st.error:
            notes.append(f"✗ stack {st.name}: {st.error}")
        elif st.total_ms is not None and st.total_ms.failures:
            notes.append(f"stack {st.name}: {st.total_ms.failures} boot(s) failed — "
                         + "; ".join(dict.fromkeys(st.total_ms.failure_reasons)))
    if r.cooldown_waits_s:
        notes.append(f"cool-down: waited before {len(r.cooldown_waits_s)} sample(s), "
                     f"{cells.quantity(sum(r.cooldown_waits_s), 's')} in all")
    return notes


def _warnings(r: ExperimentResult) -> list[str]:
    warnings = list(r.warnings)
    for v in r.variants:
        if v.throttled_samples:
            temp = f" (max {cells.number(v.max_temp_c)} °C)" if v.max_temp_c is not None else ""
            warnings.append(f"{_label(r, v)}: {v.throttled_samples} cold start(s) taken while throttled "
                            f"or under-voltage{temp}")
    return warnings


def _seconds(x: object) -> str:
    return cells.quantity(float(x), "s") if isinstance(x, int | float) else cells.scalar(x)


def method_line(m: dict[str, object]) -> str:
    """One line: repeat and warm-up, order, probe and its interval, cold level, settle, pause, cool-down.

    Reads the engine's methodology keys (repeat, warmup, order, probe, probe_interval_ms, cold, settle_s,
    pause_s, cooldown); a setting that was not recorded is left out. The full dictionary is in the JSON.
    """
    parts: list[str] = []
    phases = m.get("phases")
    if "repeat" in m and (not isinstance(phases, list) or "cold_start" in phases):
        warmup = m.get("warmup")
        extra = f" + {cells.scalar(warmup)} warm-up" if isinstance(warmup, int) and warmup else ""
        parts.append(f"repeat {cells.scalar(m['repeat'])}{extra} per variant")
    if "order" in m:
        parts.append(f"{cells.scalar(m['order'])} order")
    if "probe_interval_ms" in m:
        interval = m["probe_interval_ms"]
        every = cells.quantity(float(interval), "ms") if isinstance(interval, int | float) else cells.scalar(interval)
        probe = f"{cells.scalar(m['probe'])} probe" if m.get("probe") else "probe"
        parts.append(f"{probe} every {every}")
    if "cold" in m:
        parts.append(f"cold level: {cells.scalar(m['cold'])}")
    if "settle_s" in m:
        parts.append(f"settle {_seconds(m['settle_s'])}")
    if m.get("pause_s"):
        parts.append(f"pause {_seconds(m['pause_s'])}")
    if m.get("cooldown"):
        parts.append(f"cool-down {cells.scalar(m['cooldown'])}")
    return f"Method: {' · '.join(parts) or 'not recorded'}"


def result_view(r: ExperimentResult) -> ResultView:
    """The report of one experiment run."""
    status = "" if r.status == "finished" else f" ({r.status.upper()})"
    from runlab.report.phases import phase_grids  # they draw on Grid, defined here

    grids = [g for g in (_startup_grid(r), _memory_grid(r), _size_grid(r), _load_grid(r)) if g is not None]
    grids += phase_grids(r, _lead(r), _who)
    references = list(dict.fromkeys(c.reference for c in r.comparisons))
    return ResultView(title=f"{r.experiment} — run {r.run}{status}", facts=_machine_facts(r), grids=grids,
                      reference=", ".join(references), comparisons=[c.sentence for c in r.comparisons],
                      notes=_notes(r), warnings=_warnings(r), method=method_line(r.methodology))


# ---------------------------------------------------------------- several results, side by side


def _change(c: ComparisonResult | None) -> str:
    """The change in the words of the sentences, without the interval (it is in the per-run report): "5.4×
    slower", "96.5 % faster"; "(n.s.)" when not significant."""
    if c is None:
        return cells.MISSING
    if c.ratio is None or not math.isfinite(c.ratio):
        return "undefined"
    text = stats.change_words(c.ratio, None, None).split(" (95 % CI")[0]
    return text if c.significant else f"{text} (n.s.)"


def side_by_side(results: Sequence[ExperimentResult]) -> list[Grid]:
    """One grid per experiment measured on several nodes (or runs): one column group per node, Phoronix-style.

    Empty when every experiment has a single column group: then the per-result grids say it all.
    """
    grids: list[Grid] = []
    for name in dict.fromkeys(r.experiment for r in results):
        same = [r for r in results if r.experiment == name]
        columns = list(dict.fromkeys((v.node, r.run) for r in same for v in r.variants))
        if len(columns) < 2:
            continue
        by_node = len({node for node, _ in columns}) == len(columns)
        labels = [node if by_node else " · ".join(x for x in (node, f"run {run}") if x) for node, run in columns]
        variants = list(dict.fromkeys(v.name for r in same for v in r.variants))
        found: dict[tuple[str, str, str], tuple[ExperimentResult, VariantResult]] = {
            (v.node, r.run, v.name): (r, v) for r in same for v in r.variants}
        per = ["median", "95 % CI", "vs ref", "idle PSS"]
        unit = next((v.startup_ms.unit for r in same for v in r.variants if v.startup_ms), "ms")
        rows: list[list[str]] = []
        for vname in variants:
            row = [vname]
            for node, run in columns:
                hit = found.get((node, run, vname))
                if hit is None:
                    row += [cells.MISSING] * len(per)
                    continue
                r, v = hit
                f = v.startup_ms
                refs = {c.reference for c in r.comparisons if c.figure == "startup_ms"}
                cmp = next((c for c in r.comparisons if c.figure == "startup_ms" and c.candidate == vname), None)
                row += [cells.number(f.median if f else None),
                        cells.interval(f.ci_low, f.ci_high) if f else cells.MISSING,
                        "reference" if vname in refs else _change(cmp),
                        cells.size(v.footprint.pss_bytes if v.footprint else None)]
            rows.append(row)
        header = ["variant", *(per * len(columns))]
        grids.append(Grid(title=f"{name} — cold start ({unit}) and idle PSS, side by side",
                          header=header, rows=rows, numeric=frozenset(range(1, len(header))),
                          groups=[("", 1), *((label, len(per)) for label in labels)],
                          notes=["vs ref: change of the median against that column's reference variant; "
                                 "n.s. = not significant (p ≥ α or below the threshold)"]))
    return grids
