"""``runlab compare BASE NEW``: two runs figure by figure — did anything get better or worse, and by how much?

Pure: both sides are lists of ExperimentResults (from a ``runlab-agent run --json`` file or rebuilt from
InfluxDB); nothing here reads a file or a server. Per node × variant × figure the two medians with their 95 %
CIs, the ratio NEW/BASE with its 95 % percentile-bootstrap CI, a two-sided Mann–Whitney p, and a verdict.

How a verdict is decided (docs/report.md says why):

* the test: Mann–Whitney U on the raw values (cold start, redeploy, RTT, benchmark, stack boot), on the
  histogram buckets for load latency (raw request latencies do not travel; ≤ 1 % bucketing error);
* multiple comparisons: every tested figure of the comparison is one family; p values are Holm–Bonferroni
  adjusted (controls the chance of *any* false alarm at ``alpha``, as a CI gate needs; never less powerful
  than plain Bonferroni);
* significant when the adjusted p < ``alpha`` (default 0.05) AND the median moved by at least ``threshold``
  (default 5 %): "better" or "worse" by the figure's direction; otherwise "no significant difference";
* figures measured once per run (idle memory, size) are shown with their change but not tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from runlab import stats
from runlab.histogram import Histogram
from runlab.report import cells
from runlab.report.sections import Grid
from runlab.results import ExperimentResult, Figure

NOT_TESTED = "not tested"
SAME = "no significant difference"
CORRECTION = "Holm–Bonferroni"


class SideInfo(msgspec.Struct, kw_only=True):
    label: str  # what the user named: a run id, EXPERIMENT, EXPERIMENT@DATE or a file
    experiment: str
    runs: list[str]
    nodes: list[str]
    started: str = ""


class Row(msgspec.Struct, kw_only=True):
    node: str  # "a → b" when two single-node runs on different nodes are compared
    variant: str
    figure: str  # startup_ms, latency_ms_closed, latency_ms_open, redeploy_ms, rtt_ms, benchmark, stack_ms,
    # pss_bytes, size_bytes
    what: str  # the figure in words
    unit: str
    base_n: int
    new_n: int
    base_median: float
    new_median: float
    base_ci_low: float | None
    base_ci_high: float | None
    new_ci_low: float | None
    new_ci_high: float | None
    ratio: float | None  # new / base
    ratio_ci_low: float | None
    ratio_ci_high: float | None
    p_value: float | None  # Mann–Whitney, two-sided; None when not tested
    p_adjusted: float | None  # Holm–Bonferroni over every tested row
    verdict: str  # better | worse | no significant difference | not tested
    change: str  # "37.8× slower (95 % CI 33.5–42.4)", "96.5 % faster (…)"
    note: str = ""  # why not tested, or "below the 5 % threshold"


class CompareResult(msgspec.Struct, kw_only=True):
    base: SideInfo
    new: SideInfo
    alpha: float
    threshold: float
    correction: str
    rows: list[Row]
    fail_on: float | None = None  # --fail-on worse:N% as a fraction
    failed: list[str] = []  # rows (as sentences) that broke --fail-on


@dataclass
class _Dist:
    what: str
    unit: str
    lower_is_better: bool
    words: tuple[str, str]
    figure: Figure | None = None  # raw samples (or only the summary when they did not travel)
    hist: Histogram | None = None
    single: float | None = None


def _dists(results: Sequence[ExperimentResult]) -> dict[tuple[str, str, str], _Dist]:
    out: dict[tuple[str, str, str], _Dist] = {}
    for r in results:
        for v in r.variants:
            key = (v.node, v.name)
            if v.startup_ms is not None:
                out[(*key, "startup_ms")] = _Dist("cold start", v.startup_ms.unit or "ms", True, ("faster", "slower"),
                                                  figure=v.startup_ms)
            for lf in v.load:
                h = lf.distribution()
                if h is not None and h.count and (*key, f"latency_ms_{lf.mode}") not in out:
                    out[(*key, f"latency_ms_{lf.mode}")] = _Dist(f"{lf.mode}-loop latency", "ms", True,
                                                                 ("faster", "slower"), hist=h)
            if v.redeploy is not None and v.redeploy.time_to_v2_ms is not None:
                out[(*key, "redeploy_ms")] = _Dist("redeploy", "ms", True, ("faster", "slower"),
                                                   figure=v.redeploy.time_to_v2_ms)
            if v.interservice is not None and v.interservice.rtt_ms is not None:
                out[(*key, "rtt_ms")] = _Dist("inter-service RTT", "ms", True, ("faster", "slower"),
                                              figure=v.interservice.rtt_ms)
            b = v.benchmark
            if b is not None and b.score is not None:
                out[(*key, "benchmark")] = _Dist("benchmark score", b.unit, not b.higher_is_better,
                                                 ("better", "worse"), figure=b.score)
            if v.footprint is not None:
                out[(*key, "pss_bytes")] = _Dist("idle memory (PSS)", "bytes", True, ("less memory", "more memory"),
                                                 single=float(v.footprint.pss_bytes))
            if v.size is not None:
                out[(*key, "size_bytes")] = _Dist("size", "bytes", True, ("smaller", "larger"),
                                                  single=float(v.size.bytes))
        for st in r.stacks:
            if st.total_ms is not None:
                out[(st.node, f"stack {st.name}", "stack_ms")] = _Dist("stack boot", "ms", True, ("faster", "slower"),
                                                                       figure=st.total_ms)
    return out


def side_info(label: str, results: Sequence[ExperimentResult]) -> SideInfo:
    return SideInfo(label=label, experiment=", ".join(dict.fromkeys(r.experiment for r in results)),
                    runs=list(dict.fromkeys(r.run for r in results)),
                    nodes=sorted({v.node for r in results for v in r.variants} | {s.node for r in results
                                                                                   for s in r.stacks}),
                    started=min((r.started for r in results if r.started), default=""))


def _holm(ps: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p values, in the input order."""
    m = len(ps)
    order = sorted(range(m), key=ps.__getitem__)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def _ci(f: Figure | None, h: Histogram | None) -> tuple[float | None, float | None]:
    if f is not None:
        return f.ci_low, f.ci_high
    if h is not None:
        ranks = stats.median_ci_ranks(h.count)
        if ranks is not None:
            return h[ranks[0] - 1], h[ranks[1] - 1]
    return None, None


def _median(d: _Dist) -> float:
    if d.figure is not None:
        return d.figure.median
    if d.hist is not None:
        return d.hist.quantile(0.5)
    assert d.single is not None
    return d.single


def _n(d: _Dist) -> int:
    return d.figure.n if d.figure is not None else d.hist.count if d.hist is not None else 1


def compare(base: Sequence[ExperimentResult], new: Sequence[ExperimentResult], base_label: str = "base",
            new_label: str = "new", *, alpha: float = 0.05, threshold: float = 0.05,
            fail_on: float | None = None) -> CompareResult:
    """Every figure both sides have, matched by node and variant (by variant alone when each side ran on one
    node and the nodes differ), compared NEW against BASE."""
    if not 0 < alpha < 1:
        raise ValueError(f"compare: alpha: expected a number in (0, 1), got {alpha}")
    if threshold < 0:
        raise ValueError(f"compare: threshold: expected a number >= 0, got {threshold}")
    bd, nd = _dists(base), _dists(new)
    b_nodes, n_nodes = {k[0] for k in bd}, {k[0] for k in nd}
    cross = len(b_nodes) == 1 and len(n_nodes) == 1 and b_nodes != n_nodes
    new_node = next(iter(n_nodes), "")
    if cross:
        (bn,) = b_nodes
        nd = {(bn, v, f): d for (_, v, f), d in nd.items()}
    pending: list[tuple[Row, stats.Comparison | None]] = []
    for key, b in bd.items():
        n = nd.get(key)
        if n is None:
            continue
        node, variant, figure = key
        row, c = _row(node if not cross else f"{node} → {new_node}", variant, figure, b, n)
        pending.append((row, c))
    tested = [i for i, (_, c) in enumerate(pending) if c is not None]
    adjusted = _holm([c.p_value for _, c in pending if c is not None])
    for i, p_adj in zip(tested, adjusted, strict=True):
        row, c = pending[i]
        assert c is not None and row.ratio is not None
        row.p_adjusted = p_adj
        effect = abs(row.ratio - 1)
        if p_adj < alpha and effect >= threshold:
            row.verdict = "better" if (row.ratio < 1) == c.lower_is_better else "worse"
        else:
            row.verdict = SAME
            if p_adj < alpha:
                row.note = f"below the {cells.number(threshold * 100)} % threshold"
    rows = [r for r, _ in pending]
    out = CompareResult(base=side_info(base_label, base), new=side_info(new_label, new), alpha=alpha,
                        threshold=threshold, correction=CORRECTION, rows=rows, fail_on=fail_on)
    if fail_on is not None:
        out.failed = [sentence(r) for r in rows
                      if r.verdict == "worse" and r.ratio is not None and _worse_by(r) >= fail_on]
    return out


def _worse_by(r: Row) -> float:
    """How much worse, as a fraction: 0.25 for 25 % slower (or a 20 % lower benchmark score)."""
    assert r.ratio is not None
    return r.ratio - 1 if r.ratio > 1 else (1 / r.ratio - 1 if r.ratio > 0 else math.inf)


def _row(node: str, variant: str, figure: str, b: _Dist, n: _Dist) -> tuple[Row, stats.Comparison | None]:
    bm, nm = _median(b), _median(n)
    (blo, bhi), (nlo, nhi) = _ci(b.figure, b.hist), _ci(n.figure, n.hist)
    c: stats.Comparison | None = None
    note = ""
    if b.hist is not None and n.hist is not None:
        _, p = stats.mann_whitney_counts(list(b.hist.items()), list(n.hist.items()))
        c = stats.compare_sorted(b.hist, n.hist, p, ref_name="base", cand_name="new",
                                 lower_is_better=b.lower_is_better, resolution=max(b.hist.alpha, n.hist.alpha))
    elif b.figure is not None and n.figure is not None and b.figure.samples and n.figure.samples:
        c = stats.compare(b.figure.samples, n.figure.samples, ref_name="base", cand_name="new",
                          lower_is_better=b.lower_is_better)
    elif b.single is not None:
        note = "one value per run"
    else:
        note = "raw values not stored"
    ratio = c.ratio if c is not None else (nm / bm if bm else None)
    lo, hi = (c.ratio_ci_low, c.ratio_ci_high) if c is not None else (None, None)
    change = stats.change_words(ratio, lo, hi, b.lower_is_better, *b.words) if ratio is not None else "—"
    if ratio is not None and lo is not None and hi is not None and lo < 1 < hi:  # either way: no direction to name
        r, a, z = stats.format_ratio_with_ci(ratio, lo, hi)
        change = f"ratio {r} (95 % CI {a}–{z})"
    if c is None and ratio is not None:
        change = change.split(" (95 % CI")[0]  # no interval without repeated values
    row = Row(node=node, variant=variant, figure=figure, what=b.what, unit=b.unit, base_n=_n(b), new_n=_n(n),
              base_median=bm, new_median=nm, base_ci_low=blo, base_ci_high=bhi, new_ci_low=nlo, new_ci_high=nhi,
              ratio=ratio, ratio_ci_low=lo, ratio_ci_high=hi, p_value=c.p_value if c else None, p_adjusted=None,
              verdict=NOT_TESTED if c is None else SAME, change=change, note=note)
    return row, c


# ---------------------------------------------------------------- words


def value(x: float | None, unit: str) -> str:
    if x is None:
        return cells.MISSING
    if unit == "bytes":
        return cells.size(int(x))
    return cells.quantity(x, unit)


def _p(p: float | None) -> str:
    if p is None:
        return cells.MISSING
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def who(r: Row) -> str:
    return f"{r.node}/{r.variant}" if r.node else r.variant


def sentence(r: Row) -> str:
    """One line: "pi4/container cold start: 124 ms vs 3.27 ms before — 37.8× slower (95 % CI 33.5–42.4, Holm p <
    0.001) — worse"."""
    head = f"{who(r)} {r.what}: {value(r.new_median, r.unit)} vs {value(r.base_median, r.unit)} before"
    if r.verdict == NOT_TESTED:
        return f"{head} — {r.change} ({NOT_TESTED}: {r.note})"
    p = f"Holm p {_p(r.p_adjusted)}" if (r.p_adjusted or 0) < 0.001 else f"Holm p = {_p(r.p_adjusted)}"
    if r.verdict == SAME:
        extra = f"; {r.change.split(' (')[0]} is {r.note}" if r.note else ""
        return f"{head} — {SAME} ({p}{extra})"
    return f"{head} — {r.change[:-1]}, {p}) — {r.verdict}"


def headline(c: CompareResult) -> list[str]:
    """The summary sentences: what got worse, what got better, how much showed no difference."""
    worse = [r for r in c.rows if r.verdict == "worse"]
    better = [r for r in c.rows if r.verdict == "better"]
    same = [r for r in c.rows if r.verdict == SAME]
    lines = [f"{_side(c.new)} against {_side(c.base)}: {counts(c)} (of {len(worse) + len(better) + len(same)} "
             f"tested; {CORRECTION}, α = {c.alpha:g}, effect ≥ {cells.number(c.threshold * 100)} %)."]
    lines += [sentence(r) for r in worse + better]
    if c.fail_on is not None:
        limit = cells.number(c.fail_on * 100)
        lines.append(f"FAIL: {len(c.failed)} figure(s) significantly worse by {limit} % or more." if c.failed
                     else f"PASS: nothing significantly worse by {limit} % or more.")
    return lines


def counts(c: CompareResult) -> str:
    """ "2 worse, 0 better, 24 with no significant difference" """
    n = {v: sum(r.verdict == v for r in c.rows) for v in ("worse", "better", SAME)}
    return f"{n['worse']} worse, {n['better']} better, {n[SAME]} with no significant difference"


def short_side(s: SideInfo) -> str:
    """A side in a few words: the file name, or the run id(s)."""
    return s.label.rsplit("/", 1)[-1] if s.label not in s.runs else ", ".join(s.runs)


def _side(s: SideInfo) -> str:
    runs = ", ".join(s.runs)
    label = s.label.rsplit("/", 1)[-1]  # a file: its name
    return f"{label} ({s.experiment} run {runs})" if s.label not in s.runs else f"{s.experiment} run {runs}"


def grid(c: CompareResult) -> Grid:
    header = ["node", "variant", "figure", "base median", "base 95 % CI", "new median", "new 95 % CI", "change",
              "p (Holm)", "verdict"]
    rows = []
    for r in c.rows:
        rows.append([r.node, r.variant, r.what, value(r.base_median, r.unit),
                     cells.interval(r.base_ci_low, r.base_ci_high) if r.base_ci_low is not None else cells.MISSING,
                     value(r.new_median, r.unit),
                     cells.interval(r.new_ci_low, r.new_ci_high) if r.new_ci_low is not None else cells.MISSING,
                     r.change, _p(r.p_adjusted), r.verdict + (f" ({r.note})" if r.note else "")])
    numeric = {3, 5, 8}
    if not any(r.node for r in c.rows):  # local runs: no node to name
        header, rows, numeric = header[1:], [row[1:] for row in rows], {2, 4, 7}
    return Grid(title=f"{_side(c.new)} vs {_side(c.base)}", header=header, rows=rows, numeric=frozenset(numeric),
                notes=[method(c)])


def method(c: CompareResult) -> str:
    return (f"Method: medians with 95 % order-statistic CIs; change = new median / base median with a 95 % "
            f"percentile-bootstrap CI; Mann–Whitney U (load latency: on the histograms, ≤ 1 % bucketing error); "
            f"p values {CORRECTION}-adjusted over the {sum(r.p_value is not None for r in c.rows)} tested "
            f"figures; better/worse when adjusted p < {c.alpha:g} and the median moved ≥ "
            f"{cells.number(c.threshold * 100)} %. Memory and size: one value per run, not tested.")


def write(c: CompareResult, fmt: str) -> str:
    """``c`` as table, markdown or json (html: runlab.report.html)."""
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(c), indent=2).decode() + "\n"
    if fmt == "table":
        from runlab.report.table import grid_lines

        return "\n".join([*headline(c), "", *grid_lines(grid(c))]) + "\n"
    if fmt == "markdown":
        from runlab.report.markdown import grid_markdown

        return "\n".join([*(f"- {line}" for line in headline(c)), "", *grid_markdown(grid(c), level=2)]) + "\n"
    if fmt == "html":
        from runlab.report.html import write_compare

        return write_compare(c)
    raise ValueError(f"unknown compare format {fmt!r}: expected table, markdown, json or html")


def parse_fail_on(text: str) -> float:
    """``worse:5%`` (or ``worse:0.05``, ``worse``) → 0.05; ValueError naming what was expected."""
    kind, _, amount = text.partition(":")
    if kind != "worse":
        raise ValueError(f"--fail-on {text!r}: expected worse:N% (e.g. worse:5%)")
    if not amount:
        return 0.0
    try:
        x = float(amount[:-1]) / 100 if amount.endswith("%") else float(amount)
    except ValueError:
        raise ValueError(f"--fail-on {text!r}: expected worse:N% with a number N, e.g. worse:5%") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"--fail-on {text!r}: expected a percentage >= 0")
    return x
