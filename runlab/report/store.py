"""Rebuild ExperimentResults from what the fleet wrote to InfluxDB, so ``runlab report`` reuses every writer.

The agent streams each cold start as a ``run_sample`` point (figure startup_ms, tags warmup/cold, field
``value`` in ms) and, at the end, the run's ``run_summary`` points; lifecycle events are ``run_event``.
Statistics are recomputed with runlab.stats from the raw cold starts (median, CI, Mann-Whitney against
the reference), exactly as the engine does; footprint, size and load come from the summaries (falling back
to the raw points). The phases beyond those (redeploy, stack boot, inter-service RTT, overhead, benchmark) are
rebuilt by runlab.report.store_phases, from their raw points where every value travels. Nothing here talks
HTTP: ``query`` is any ``InfluxQL statement → rows`` function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from runlab.control import FINAL
from runlab.report import store_phases
from runlab.report.store_phases import integer as _int
from runlab.report.store_phases import num as _num
from runlab.results import (
    ComparisonResult,
    ExperimentResult,
    Figure,
    Footprint,
    LoadFigures,
    Size,
    StackResult,
    VariantResult,
    compare_distributions,
    compare_figures,
)

Query = Callable[[str], list[dict[str, Any]]]


class NoData(LookupError):
    """Nothing stored for what was asked; str(e) says what was looked for."""


def literal(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def iso(ns: int | None) -> str:
    if not ns:
        return ""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pick_runs(query: Query, what: str, nodes: Sequence[str] = (), until: str | None = None
              ) -> tuple[str, list[tuple[str, str]]]:
    """(experiment, [(node, run)]) for a run id or an experiment name (then the latest run per node; with
    ``until``, an RFC 3339 time, the latest one that had started by then)."""
    if until is None:
        rows = query(f'SELECT last("i") FROM "run_sample" WHERE "run" = {literal(what)} GROUP BY "node", "experiment"')
        rows = [r for r in rows if not nodes or r.get("node") in nodes]
        if rows:
            return str(rows[0]["experiment"]), sorted({(str(r["node"]), what) for r in rows})
    before = f" AND time <= {literal(until)}" if until else ""
    rows = query(f'SELECT first("i") FROM "run_sample" WHERE "experiment" = {literal(what)}{before} '
                 f'GROUP BY "node", "run"')
    latest: dict[str, tuple[int, str]] = {}
    for r in rows:
        node, run, t = str(r.get("node")), str(r.get("run")), int(r.get("time") or 0)
        if nodes and node not in nodes:
            continue
        if node not in latest or (t, run) > latest[node]:
            latest[node] = (t, run)
    if not latest:
        only = f" on node(s) {', '.join(nodes)}" if nodes else ""
        by = f" that started by {until}" if until else ""
        raise NoData(f"no run_sample rows for experiment or run {what!r}{only}{by}")
    return what, sorted((node, run) for node, (_, run) in latest.items())


def _variant(name: str, runtime: str, node: str, raw: list[dict[str, Any]], summary: list[dict[str, Any]]
             ) -> VariantResult:
    v = VariantResult(name=name, runtime=runtime, node=node)
    starts = [r for r in raw if r.get("figure") == "startup_ms"]
    ok = [r for r in starts if r.get("ok") is not False and _num(r, "value") is not None]
    samples = [float(r["value"]) for r in ok if r.get("warmup") != "true"]
    warm = [float(r["value"]) for r in ok if r.get("warmup") == "true"]
    failed = [str(r.get("error") or "") for r in starts if r.get("ok") is False]
    v.startup_ms = Figure.of(samples, "ms", warm, len(failed), [f for f in failed if f])
    v.throttled_samples = sum(1 for r in ok if r.get("throttled") is True and r.get("warmup") != "true")
    temps = [t for r in ok if (t := _num(r, "temp_c")) is not None]
    v.max_temp_c = max(temps) if temps else None
    by_fig = {str(r.get("figure")): r for r in summary if r.get("figure") != "latency_ms"}
    raw_fig = {str(r.get("figure")): r for r in raw}
    fp = by_fig.get("footprint") or raw_fig.get("footprint")
    if fp is not None and _int(fp, "pss_bytes") is not None:
        v.footprint = Footprint(pss_bytes=_int(fp, "pss_bytes") or 0, uss_bytes=_int(fp, "uss_bytes") or 0,
                                rss_bytes=_int(fp, "rss_bytes") or 0, processes=_int(fp, "processes") or 0,
                                cgroup_bytes=_int(fp, "cgroup_bytes"), cgroup_anon_bytes=_int(fp, "cgroup_anon_bytes"),
                                cgroup_file_bytes=_int(fp, "cgroup_file_bytes"), peak_bytes=_int(fp, "peak_bytes"),
                                peak_source=str(fp.get("peak_source") or ""), settle_s=_num(fp, "settle_s") or 0.0)
    sz = by_fig.get("size") or raw_fig.get("size")
    if sz is not None and _int(sz, "bytes") is not None:
        v.size = Size(bytes=_int(sz, "bytes") or 0, what=str(sz.get("what") or ""))
    for lr in (r for r in summary if r.get("figure") == "latency_ms"):
        ok_n = _int(lr, "succeeded") or 0
        hist = lr.get("histogram")
        v.load.append(LoadFigures(mode=str(lr.get("mode") or ""), url=str(lr.get("url") or ""),
                                  requests=_int(lr, "requests") or 0, ok=ok_n, errors=_int(lr, "errors") or 0,
                                  concurrency=_int(lr, "concurrency") or 0, target_rps=_num(lr, "target_rps") or 0.0,
                                  achieved_rps=_num(lr, "achieved_rps") or 0.0,
                                  duration_s=_num(lr, "duration_s") or 0.0, latency_ms=_load_figure(lr, ok_n),
                                  p999_ms=_num(lr, "p999_ms") or 0.0,
                                  generator_floor_ms=_num(lr, "generator_floor_ms") or 0.0,
                                  histogram=hist if isinstance(hist, str) else ""))
    store_phases.apply(v, raw, summary)
    if (skip := by_fig.get("skipped")) is not None:
        v.skipped = str(skip.get("message") or "")
    err = by_fig.get("error")
    if err is not None:
        v.error = str(err.get("message") or "")
    elif v.startup_ms is None and failed:
        v.error = "every start failed: " + failed[0]
    return v


def _load_figure(row: dict[str, Any], n: int) -> Figure:
    """A load phase's latency from its summary point (raw request latencies do not travel)."""
    fig = store_phases.summary_figure(row, n)
    if fig is not None:
        fig.outliers = [int(i) for i in _json_field(row, "outliers_at", list) if isinstance(i, int)]
    return fig if fig is not None else Figure(unit="ms", n=n, median=0.0, mean=0.0, stdev=0.0, cv=0.0, min=0.0,
                                              max=0.0, p90=0.0, p95=0.0, p99=0.0, ci_low=0.0, ci_high=0.0,
                                              ci_exact=False, outliers=[], samples=[])


def comparisons(variants: Sequence[VariantResult], reference: str | None = None, label: str = "",
                stacks: Sequence[StackResult] = (), carried: Sequence[dict[str, Any]] = ()) -> list[ComparisonResult]:
    """Each variant against the reference (default: the first), as the engine compares them: cold starts, load
    latency, redeploy, inter-service RTT and benchmark; then every stack's boot against the first stack's.

    Cold starts, redeploys, benchmark scores and stack boots are recomputed from their raw points. Load latency
    and RTT are not in the store value by value: the engine's own comparisons (``carried``: its ``comparison``
    summary points) are used when they were made against the same reference; against another reference,
    latency is compared from the load phases' histograms and RTT is left out.
    """
    names = [v.name for v in variants]
    ref_name = reference if reference in names else (names[0] if names else "")
    ref = next((v for v in variants if v.name == ref_name), None)
    engine = [_carried(r) for r in sorted(carried, key=lambda r: _num(r, "order") or 0.0)]
    engine = [c for c in engine if c.reference == ref_name]
    out: list[ComparisonResult] = []
    for v in variants if ref is not None else ():
        if v.name == ref_name:
            continue
        assert ref is not None
        if ref.startup_ms is not None and v.startup_ms is not None:
            out.append(compare_figures("startup_ms", f"{label}{v.name} startup", "ms", ref_name, v.name,
                                       ref.startup_ms, v.startup_ms))
        mine = [c for c in engine if c.candidate == v.name]
        if any(c.figure.startswith("latency_ms") for c in mine):
            out += [c for c in mine if c.figure.startswith("latency_ms")]
        else:
            out += _latency_comparisons(ref, v, label)
        out += store_phases.variant_comparisons(ref, v)
        out += [c for c in mine if c.figure == "rtt_ms"]
    out += store_phases.stack_comparisons(stacks)
    if engine:  # the engine's order (each variant: cold start, latency, redeploy, RTT, benchmark; then stacks)
        rank = {(c.figure, c.candidate): i for i, c in enumerate(engine)}
        out.sort(key=lambda c: rank.get((c.figure, c.candidate), len(rank)))
    return out


def _carried(r: dict[str, Any]) -> ComparisonResult:
    sig = r.get("significant")
    return ComparisonResult(figure=str(r.get("compared") or ""), reference=str(r.get("reference") or ""),
                            candidate=str(r.get("candidate") or ""), ratio=_num(r, "ratio"),
                            ratio_ci_low=_num(r, "ratio_ci_low"), ratio_ci_high=_num(r, "ratio_ci_high"),
                            p_value=_num(r, "p_value") or 0.0, significant=sig is True,
                            change_pct=_num(r, "change_pct"), sentence=str(r.get("sentence") or ""))


def _latency_comparisons(ref: VariantResult, cand: VariantResult, label: str = "") -> list[ComparisonResult]:
    """Closed- and open-loop latency of ``cand`` against ``ref``, from their histograms."""
    out = []
    for mode in ("closed", "open"):
        rl = next((lf for lf in ref.load if lf.mode == mode), None)
        cl = next((lf for lf in cand.load if lf.mode == mode), None)
        rh, ch = (rl.distribution() if rl else None), (cl.distribution() if cl else None)
        if rh is not None and ch is not None and rh.count and ch.count:
            out.append(compare_distributions(f"latency_ms_{mode}", f"{label}{cand.name} {mode}-loop latency", "ms",
                                             ref.name, cand.name, rh, ch))
    return out


def _machine(query: Query, node: str) -> dict[str, object]:
    rows = query(f'SELECT * FROM "node_status" WHERE "node" = {literal(node)} ORDER BY time DESC LIMIT 1')
    if not rows:
        return {}
    r = rows[0]
    out: dict[str, object] = {k: r[k] for k in ("cpu_model", "arch", "cores", "memory_bytes", "kernel")
                              if r.get(k) not in (None, "", "?")}
    if r.get("version") not in (None, "", "?"):
        out["runlab"] = r["version"]
    return out


def load_result(query: Query, node: str, run: str, reference: str | None = None) -> ExperimentResult:
    """One node's run, rebuilt from run_sample, run_summary, run_event and node_status."""
    where = f'WHERE "run" = {literal(run)} AND "node" = {literal(node)}'
    raw = query(f'SELECT * FROM "run_sample" {where}')
    summary = query(f'SELECT * FROM "run_summary" {where}')
    events = query(f'SELECT * FROM "run_event" {where}')
    if not raw and not summary:
        raise NoData(f"no run_sample rows for run {run!r} on node {node!r}")
    experiment = str(next((r["experiment"] for r in [*raw, *summary] if r.get("experiment")), ""))
    times = [int(r["time"]) for r in [*raw, *summary, *events] if r.get("time")]
    boots = store_phases.stacks(raw, summary, node)
    cooldown = [w for r in summary if r.get("figure") == "cooldown" and (w := _num(r, "waited_s")) is not None]
    phases = store_phases.phases_seen([*raw, *summary])
    raw = [r for r in raw if r.get("runtime") != "stack"]  # a stack's rows name the stack as their variant
    summary = [r for r in summary if r.get("runtime") != "stack"]
    order: dict[str, tuple[float, str]] = {}
    tagged = [(r, True) for r in summary] + [(r, False) for r in raw]
    for i, (r, is_summary) in enumerate(tagged):
        name = str(r.get("variant") or "")
        if not name:
            continue
        rank = _num(r, "order") if is_summary else None
        key = (rank if rank is not None else 1e9 + i, str(r.get("runtime") or ""))
        if name not in order or key[0] < order[name][0]:
            order[name] = key
    variants = [_variant(name, runtime, node, [r for r in raw if r.get("variant") == name],
                         [r for r in summary if r.get("variant") == name])
                for name, (_, runtime) in sorted(order.items(), key=lambda kv: kv[1][0])]
    carried = [r for r in summary if r.get("figure") == "comparison"]
    meta = next((r for r in summary if r.get("figure") == "run"), {})
    final = [r for r in events if r.get("status") in FINAL]
    status = str(final[-1]["status"]) if final else (str(events[-1]["status"]) if events else "finished")
    if status in ("progress", "phase", "accepted", "queued"):
        status = "running"
    starts = [r for r in raw if r.get("figure") == "startup_ms"]
    methodology: dict[str, object] = {
        "repeat": max((v.startup_ms.n for v in variants if v.startup_ms), default=0),
        "warmup": max((len(v.startup_ms.warmup) for v in variants if v.startup_ms), default=0),
        "source": "rebuilt from InfluxDB (run_sample raw cold starts, run_summary)",
        "phases": phases,
    }
    if starts and starts[0].get("cold"):
        methodology["cold"] = starts[0]["cold"]
    methodology = {**methodology, **_json_field(meta, "methodology", dict)}
    machine = _json_field(meta, "machine", dict) or _machine(query, node)
    warnings = [str(w) for w in _json_field(meta, "warnings", list)]
    return ExperimentResult(experiment=experiment, run=run, file=str(meta.get("file") or ""),
                            file_sha256=str(meta.get("file_sha256") or ""),
                            started=str(meta.get("started") or "") or iso(min(times) if times else None),
                            finished=str(meta.get("finished") or "") or (iso(int(final[-1]["time"])) if final else ""),
                            machine=machine, methodology=methodology, variants=variants,
                            comparisons=comparisons(variants, reference, stacks=boots, carried=carried),
                            warnings=warnings, status=status, stacks=boots, cooldown_waits_s=cooldown)


def _json_field(row: dict[str, Any], key: str, kind: type[Any]) -> Any:
    """A JSON-encoded field of the run's own summary point (machine, methodology, warnings); empty when absent."""
    text = row.get(key)
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, kind):
            return value
    return kind()


def load_results(query: Query, what: str, nodes: Sequence[str] = (), reference: str | None = None,
                 until: str | None = None) -> list[ExperimentResult]:
    """Every picked (node, run) as its own result, nodes in name order."""
    _, pairs = pick_runs(query, what, nodes, until)
    return [load_result(query, node, run, reference) for node, run in pairs]


def _node(r: ExperimentResult) -> str:
    """The node a rebuilt result came from (a stack-only run has no variants, only stacks)."""
    return r.variants[0].node if r.variants else (r.stacks[0].node if r.stacks else "")


def merge(results: Sequence[ExperimentResult]) -> ExperimentResult:
    """Several nodes' results as one object (variants carry their node): the fleet report's JSON shape."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    multi = len({_node(r) for r in results}) > 1
    comps: list[ComparisonResult] = []
    for r in results:
        node = _node(r)
        for c in r.comparisons:
            sentence = f"{node}: {c.sentence}" if multi else c.sentence
            comps.append(ComparisonResult(**{**{f: getattr(c, f) for f in c.__struct_fields__},
                                             "sentence": sentence}))
    return ExperimentResult(
        experiment=first.experiment, run=", ".join(dict.fromkeys(r.run for r in results)), file=first.file,
        file_sha256=first.file_sha256, started=min(r.started for r in results),
        finished=max(r.finished for r in results),
        machine={"nodes": {(_node(r) or r.run): r.machine for r in results}},
        methodology=first.methodology, variants=[v for r in results for v in r.variants], comparisons=comps,
        warnings=[w for r in results for w in r.warnings],
        status=next((r.status for r in results if r.status != "finished"), "finished"),
        stacks=[st for r in results for st in r.stacks],
        cooldown_waits_s=[w for r in results for w in r.cooldown_waits_s])
