"""The report and the comparison as ONE self-contained HTML page: inline CSS and SVG drawn here, no script, no
font, no network — it opens the same from a CI artifact, a mail attachment or a phone.

Reading order: the summary sentences (the field report's wording), then one plot per figure — cold starts per
node × variant as a strip plot on a log axis (every sample a dot, the median a bar, its 95 % CI a band), idle
memory as bars on a log axis with each value written beside its bar, request latency as CDFs drawn from the
load phases' histograms, host temperature and throttling where the run saw any — then every table of the text
report, its notes and the method. The comparison page: verdict sentences, a forest plot of every ratio with its
CI on a log axis around 1, and the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from html import escape

from runlab.report import cells
from runlab.report.sections import Grid, ResultView, result_view, side_by_side
from runlab.results import ExperimentResult, VariantResult

PALETTE = ("#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#7f7f7f", "#000000")
W = 380  # SVG user units; every SVG scales to the page width (a phone: about 1 unit per CSS pixel)
LEFT, RIGHT = 4, 8
VERDICT_CLASS = {"worse": "worse", "better": "better", "no significant difference": "same", "not tested": "na"}

CSS = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b636d;--bg:#fff;--card:#f5f7f9;--line:#d6dbe0;
--worse:#b3261e;--better:#1e7b34;--same:#5b636d}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ec;--muted:#a4acb5;--bg:#15181c;--card:#1f242a;--line:#3a424b;
--worse:#ff8a80;--better:#7bd88f;--same:#a4acb5}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;-webkit-text-size-adjust:100%}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.45rem;line-height:1.25;margin:.2em 0 .4em}
h2{font-size:1.15rem;margin:1.6em 0 .5em;border-bottom:1px solid var(--line);padding-bottom:.2em}
h3{font-size:.95rem;margin:1.2em 0 .4em}
.facts{color:var(--muted);font-size:.9rem;margin:0 0 1em;padding:0;list-style:none}
.facts li{margin:.15em 0}
.summary{list-style:none;padding:0;margin:0}
.summary li{background:var(--card);border-left:4px solid var(--same);border-radius:4px;padding:.5em .7em;margin:.45em 0}
.summary li.worse{border-left-color:var(--worse)}.summary li.better{border-left-color:var(--better)}
.verdict{font-weight:600}.worse .verdict,.worse-t{color:var(--worse)}.better .verdict,.better-t{color:var(--better)}
.gate{font-weight:700;padding:.5em .7em;border-radius:4px;background:var(--card)}
.gate.fail{color:var(--worse)}.gate.pass{color:var(--better)}
figure{margin:.6em 0 1.2em}figcaption{color:var(--muted);font-size:.85rem;margin-top:.2em}
svg{width:100%;max-width:520px;height:auto;display:block;font-family:inherit}
details>summary{cursor:pointer;font-weight:600;margin:.6em 0}
svg text{fill:var(--fg)}svg .muted{fill:var(--muted)}svg .grid{stroke:var(--line);stroke-width:1}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.4em 0 1em}
table{border-collapse:collapse;font-size:.82rem;font-variant-numeric:tabular-nums}
th,td{padding:.3em .55em;border-bottom:1px solid var(--line);text-align:left}
th{background:var(--card);font-weight:600}td,th{white-space:nowrap}td.n,th.n{text-align:right}
td.w{white-space:normal;min-width:11em}
.notes{color:var(--muted);font-size:.85rem}
.warn{color:var(--worse)}ul.warn{padding-left:1.2em}details.facts>summary{font-weight:400}
footer{color:var(--muted);font-size:.8rem;margin:2em 0 1em}
"""


# ---------------------------------------------------------------- SVG helpers


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, s: str, cls: str = "", anchor: str = "start", size: float = 13,
          weight: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    w = f' font-weight="{weight}"' if weight else ""
    return (f'<text x="{_fmt(x)}" y="{_fmt(y)}" font-size="{size}" text-anchor="{anchor}"{c}{w}>'
            f"{escape(s)}</text>")


def _svg(height: float, body: Iterable[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {W} {_fmt(height)}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>')


class LogAxis:
    """x = log-scaled position of a positive value between ``lo`` and ``hi``."""

    def __init__(self, lo: float, hi: float, x0: float = LEFT, x1: float = W - RIGHT) -> None:
        lo, hi = max(lo, 1e-12), max(hi, 1e-12)
        if hi / lo < 3:  # never narrower than a factor 3: small differences must not look huge
            mid = math.sqrt(lo * hi)
            lo, hi = mid / math.sqrt(3), mid * math.sqrt(3)
        self.lo, self.hi = lo / 1.15, hi * 1.15
        self.x0, self.x1 = x0, x1
        self.a, self.b = math.log10(self.lo), math.log10(self.hi)

    def __call__(self, v: float) -> float:
        v = min(max(v, self.lo), self.hi)
        return self.x0 + (math.log10(v) - self.a) / (self.b - self.a) * (self.x1 - self.x0)

    def ticks(self) -> list[float]:
        decades = range(math.floor(self.a), math.ceil(self.b) + 1)
        for steps in ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5, 7)):
            ts = [m * 10.0**d for d in decades for m in steps if self.lo <= m * 10.0**d <= self.hi]
            if len(ts) >= 4:
                return ts
        return ts


def _axis(ax: LogAxis, y0: float, y1: float, label: str, fmt: Callable[[float], str] = cells.number) -> list[str]:
    out = []
    for t in ax.ticks():
        x = ax(t)
        out.append(f'<line class="grid" x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{_fmt(y0)}" y2="{_fmt(y1)}"/>')
        out.append(_text(x, y1 + 14, fmt(t), "muted", "middle", 10))
    out.append(_text(W - RIGHT, y1 + 29, label, "muted", "end", 10))
    return out


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# ---------------------------------------------------------------- plots


def _colors(variants: Sequence[VariantResult]) -> dict[str, str]:
    """One colour per variant name, the same on every node and in every plot."""
    return {name: _color(i) for i, name in enumerate(dict.fromkeys(v.name for v in variants))}


def _label(v: VariantResult, multi: bool) -> str:
    return f"{v.node} · {v.name}" if multi and v.node else v.name


def _two_part(x: float, y: float, bold: str, muted: str, size: float = 12) -> str:
    """A bold label followed by muted detail on one line."""
    return (f'<text x="{_fmt(x)}" y="{_fmt(y)}" font-size="{size}"><tspan font-weight="600">{escape(bold)}</tspan>'
            f'<tspan class="muted" font-size="{size - 1}">  {escape(muted)}</tspan></text>')


def cold_start_plot(variants: Sequence[VariantResult], multi: bool) -> str:
    shown = [v for v in variants if v.startup_ms is not None and v.startup_ms.samples]
    if not shown:
        return ""
    values = [x for v in shown for x in v.startup_ms.samples if x > 0]  # type: ignore[union-attr]
    ax = LogAxis(min(values), max(values))
    row, top = 44, 6
    body: list[str] = []
    colors = _colors(shown)
    for i, v in enumerate(shown):
        f = v.startup_ms
        assert f is not None
        y = top + i * row
        color = colors[v.name]
        body.append(_two_part(LEFT, y + 12, _label(v, multi), f"{cells.quantity(f.median, f.unit)} "
                              f"[{cells.number(f.ci_low)}–{cells.number(f.ci_high)}]"))
        cy = y + 28
        x_lo, x_hi = ax(f.ci_low), ax(f.ci_high)
        body.append(f'<rect x="{_fmt(x_lo)}" y="{_fmt(cy - 10)}" width="{_fmt(max(x_hi - x_lo, 2))}" height="20" '
                    f'fill="{color}" opacity="0.2"/>')
        # every sample a dot: one path of zero-length round-capped strokes (~13 bytes a dot, not ~80 as circles)
        dots = "".join(f"M{_fmt(ax(x))} {_fmt(cy + ((k * 37) % 17 - 8) * 0.9)}h0" for k, x in enumerate(f.samples))
        body.append(f'<path d="{dots}" stroke="{color}" stroke-opacity="0.55" stroke-width="4.4" '
                    f'stroke-linecap="round"/>')
        xm = ax(f.median)
        body.append(f'<line x1="{_fmt(xm)}" x2="{_fmt(xm)}" y1="{_fmt(cy - 12)}" y2="{_fmt(cy + 12)}" '
                    f'stroke="{color}" stroke-width="3"/>')
    y_end = top + len(shown) * row
    unit = shown[0].startup_ms.unit or "ms"  # type: ignore[union-attr]
    svg = _svg(y_end + 36, [*_axis(ax, top, y_end, f"cold start ({unit}, log scale)"), *body],
               "cold start distributions")
    return (f"<figure>{svg}<figcaption>Every cold start as a dot (warm-up excluded), the median as a bar, its "
            f"95 % CI as the band and in brackets. Log axis: equal distances are equal ratios.</figcaption></figure>")


def memory_plot(variants: Sequence[VariantResult], multi: bool) -> str:
    shown = [v for v in variants if v.footprint is not None and v.footprint.pss_bytes > 0]
    if not shown:
        return ""
    mib = [v.footprint.pss_bytes / 2**20 for v in shown]  # type: ignore[union-attr]
    ax = LogAxis(min(mib) / 2, max(mib) * 1.3)
    row, top = 36, 6
    body: list[str] = []
    colors = _colors(shown)
    for i, (v, m) in enumerate(zip(shown, mib, strict=True)):
        y = top + i * row
        x = ax(m)
        size = cells.size(v.footprint.pss_bytes)  # type: ignore[union-attr]
        body.append(_two_part(LEFT, y + 12, _label(v, multi), size))
        body.append(f'<rect x="{LEFT}" y="{_fmt(y + 17)}" width="{_fmt(max(x - LEFT, 2))}" height="12" rx="2" '
                    f'fill="{colors[v.name]}"/>')
    y_end = top + len(shown) * row
    svg = _svg(y_end + 36, [*_axis(ax, top, y_end, "idle PSS (MiB, log scale)"), *body], "idle memory")
    return (f"<figure>{svg}<figcaption>Memory the runtime added, idle after settling (PSS: shared pages divided "
            f"fairly). Log axis, so that a few hundred KiB and a few hundred MiB both show; each value is written "
            f"beside its name.</figcaption></figure>")


_PCT_TICKS = ((0.0, "p0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"), (0.9999, "p99.99"))


def latency_plot(variants: Sequence[VariantResult], multi: bool) -> str:
    """Latency percentiles per node (small multiples), from the histograms: x log latency, y stretched towards
    the tail (−log10(1 − q)), so p99 and p99.9 get as much room as the median."""
    curves = [(v, lf.mode, h) for v in variants for lf in v.load
              if (h := lf.distribution()) is not None and h.count and h.hi > 0]
    if not curves:
        return ""
    colors = _colors([v for v, _, _ in curves])
    nodes = list(dict.fromkeys(v.node for v, _, _ in curves)) if multi else [None]
    ax = LogAxis(min(max(h.lo, 1e-6) for _, _, h in curves), max(h.hi for _, _, h in curves), x0=LEFT + 40)
    deepest = max(h.count for _, _, h in curves)
    top_q = next((q for q, _ in reversed(_PCT_TICKS) if 1 / (1 - q) <= deepest), 0.99) if deepest > 1 else 0.9
    ymax = -math.log10(1 - top_q)
    figures = []
    for node in nodes:
        mine = [(v, mode, h) for v, mode, h in curves if node is None or v.node == node]
        top, height = 22 if node else 6, 170

        def y(q: float, top: float = top, height: float = height) -> float:
            return top + height - min(-math.log10(max(1 - q, 1e-12)), ymax) / ymax * height

        body = [_text(LEFT, 14, node, weight="600")] if node else []
        for q, name in _PCT_TICKS:
            if q <= top_q:
                body.append(f'<line class="grid" x1="{LEFT + 40}" x2="{W - RIGHT}" y1="{_fmt(y(q))}" '
                            f'y2="{_fmt(y(q))}"/>')
                body.append(_text(LEFT + 36, y(q) + 4, name, "muted", "end", 10))
        for v, _mode, h in mine:
            pts = []
            seen = 0
            for value, count in h.items():
                q0, seen = seen / h.count, seen + count
                pts += [(ax(value), y(q0)), (ax(value), y(min(seen / h.count, top_q) if seen < h.count else top_q))]
            path = " ".join(f"{_fmt(a)},{_fmt(b)}" for a, b in pts)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colors[v.name]}" stroke-width="2" '
                        f'stroke-linejoin="round"/>')
        legend_top = top + height + 42
        for i, (v, mode, h) in enumerate(mine):
            ly = legend_top + i * 18
            body.append(f'<rect x="{LEFT}" y="{_fmt(ly - 8)}" width="12" height="4" fill="{colors[v.name]}"/>')
            name = v.name + (f" ({mode})" if len({m for _, m, _ in mine}) > 1 else "")
            body.append(_two_part(LEFT + 18, ly, name, f"p50 {cells.quantity(h.quantile(0.5), 'ms')} · p99 "
                                  f"{cells.quantity(h.quantile(0.99), 'ms')} · {h.count:,} req.", 11))
        svg = _svg(legend_top + len(mine) * 18 - 6,
                   [*_axis(ax, top, top + height, "latency (ms, log scale)"), *body], f"latency {node or ''}")
        figures.append(svg)
    return (f"<figure>{''.join(figures)}<figcaption>The whole latency distribution of each load phase, read from "
            f"its histogram (≤ 1 % bucketing error): how long the fastest half, 90 %, 99 %… of the requests took. "
            f"Further left is faster; the tail is at the top.</figcaption></figure>")


def host_plot(variants: Sequence[VariantResult], multi: bool) -> str:
    """Per node: the highest temperature seen during the cold starts and how many were taken throttled."""
    shown = [v for v in variants if v.max_temp_c is not None or v.throttled_samples]
    if not shown:
        return ""
    nodes: dict[str, tuple[float | None, int, int]] = {}
    for v in shown:
        temp, throttled, starts = nodes.get(v.node, (None, 0, 0))
        t = max(temp or -math.inf, v.max_temp_c if v.max_temp_c is not None else -math.inf)
        nodes[v.node] = (t if math.isfinite(t) else None, throttled + v.throttled_samples,
                         starts + (v.startup_ms.n if v.startup_ms else 0))
    row, top = 36, 6
    scale = max(90.0, *(t or 0 for t, _, _ in nodes.values()))
    body: list[str] = []
    for i, (node, (temp, throttled, starts)) in enumerate(nodes.items()):
        y = top + i * row
        detail = f"max {cells.number(temp)} °C" if temp is not None else "temperature not read"
        detail += f" · {throttled} of {starts} cold starts throttled" if throttled else " · never throttled"
        body.append(_two_part(LEFT, y + 12, node or "this machine", detail))
        if temp is not None:
            hot = temp >= 80 or throttled
            body.append(f'<rect x="{LEFT}" y="{_fmt(y + 17)}" width="{_fmt(temp / scale * (W - RIGHT - LEFT))}" '
                        f'height="10" rx="2" fill="{"#d55e00" if hot else "#009e73"}"/>')
    svg = _svg(top + len(nodes) * row + 2, body, "host temperature and throttling")
    return (f"<figure>{svg}<figcaption>The host during the cold starts: the highest SoC temperature (bar: of "
            f"{cells.number(scale)} °C) and the starts taken while the firmware reported throttling or "
            f"under-voltage.</figcaption></figure>")


# ---------------------------------------------------------------- tables and page


def grid_html(g: Grid, level: int = 3) -> str:
    out = [f"<h{level}>{escape(g.title)}</h{level}>", '<div class="scroll"><table>']
    if g.groups:
        out.append("<tr>" + "".join(f'<th colspan="{span}">{escape(label)}</th>' for label, span in g.groups)
                   + "</tr>")
    out.append("<tr>" + "".join(f'<th{" class=n" if i in g.numeric else ""}>{escape(h)}</th>'
                                for i, h in enumerate(g.header)) + "</tr>")
    for row in g.rows:  # long text may wrap; numbers, names and intervals stay on one line
        out.append("<tr>" + "".join(f'<td{" class=n" if i in g.numeric else " class=w" if len(c) > 24 else ""}>'
                                    f"{escape(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table></div>")
    out += [f'<p class="notes">{escape(n)}</p>' for n in g.notes]
    return "\n".join(out)


def _page(title: str, body: list[str]) -> str:
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>\n"
            + "\n".join(body)
            + "\n<footer>Written by runlab: one file, no scripts, nothing loaded from the network.</footer>"
            "\n</main></body></html>\n")


def _summary(view: ResultView, r: ExperimentResult) -> list[str]:
    if not r.comparisons:
        return []
    higher = {v.name for v in r.variants if v.benchmark is not None and v.benchmark.higher_is_better}
    items = []
    for c in r.comparisons:
        cls = ""
        if c.significant and c.ratio is not None:
            up_is_good = c.figure == "benchmark" and c.candidate in higher
            cls = "better" if (c.ratio > 1) == up_is_good else "worse"
        items.append(f'<li class="{cls}">{escape(c.sentence)}</li>')
    ref = f" (against {escape(view.reference)})" if view.reference else ""
    return [f"<h3>In short{ref}</h3>", f'<ul class="summary">{"".join(items)}</ul>']


def _node(r: ExperimentResult) -> str:
    return next((v.node for v in r.variants if v.node), "")


def write_report(results: Sequence[ExperimentResult]) -> str:
    """The HTML page of ``results`` (one run, or one run per node side by side)."""
    if not results:
        return _page("runlab report", ["<h1>No results</h1>"])
    title = " · ".join(dict.fromkeys(f"{r.experiment} — run {r.run}" for r in results))
    body = [f"<h1>{escape(title)}</h1>"]
    views = [result_view(r) for r in results]
    for k, (r, view) in enumerate(zip(results, views, strict=True)):
        first, rest = view.facts[:1], view.facts[1:]  # the machine; runtimes and the file behind a click
        part = ['<ul class="facts">' + "".join(f"<li>{escape(f)}</li>" for f in first) + "</ul>"]
        if rest:
            part.append('<details class="facts"><summary>Runtimes, times and file</summary><ul class="facts">'
                        + "".join(f"<li>{escape(f)}</li>" for f in rest) + "</ul></details>")
        part += _summary(view, r)
        if view.warnings:
            part.append('<ul class="warn">' + "".join(f"<li>⚠ {escape(w)}</li>" for w in view.warnings) + "</ul>")
        if len(results) > 1:  # one block per node, the first open: the page stays short on a phone
            node = _node(r) or r.run
            part = [f'<details{" open" if k == 0 else ""}><summary>{escape(node)}: {len(r.comparisons)} '
                    f"comparison(s) with {escape(view.reference or 'the reference')}</summary>", *part, "</details>"]
        body += part
    variants = [v for r in results for v in r.variants]
    multi = len({v.node for v in variants}) > 1
    plots = [("Cold start", cold_start_plot(variants, multi)), ("Idle memory", memory_plot(variants, multi)),
             ("Latency under load", latency_plot(variants, multi)), ("Host", host_plot(variants, multi))]
    for name, svg in plots:
        if svg:
            body += [f"<h2>{name}</h2>", svg]
    grids = side_by_side(results)
    if grids:
        body.append("<h2>Side by side</h2>")
        body += [grid_html(g) for g in grids]
    for view in views:
        body.append(f"<h2>Tables — {escape(view.title)}</h2>")
        body += [grid_html(g) for g in view.grids]
        if view.notes:
            body += ["<h3>Notes</h3>", '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in view.notes)
                     + "</ul>"]
        body.append(f'<p class="notes">{escape(view.method)}</p>')
    return _page(title, body)


def forest_plot(rows: Sequence[object]) -> str:
    """Every tested row's ratio new/base with its CI on a log axis around 1, coloured by verdict."""
    from runlab.report.compare import Row, who

    shown = [r for r in rows if isinstance(r, Row) and r.ratio is not None and r.ratio > 0]
    if not shown:
        return ""
    lows = [r.ratio_ci_low or r.ratio or 1.0 for r in shown]
    highs = [r.ratio_ci_high or r.ratio or 1.0 for r in shown]
    lo, hi = min([*lows, 1.0]), max([*highs, 1.0])
    span = max(hi, 1 / lo, 1.1)  # symmetric around 1: as much room for "faster" as for "slower"
    ax = LogAxis(1 / span, span)
    row, top = 40, 8
    colors = {"worse": "#d55e00", "better": "#009e73"}
    body = [f'<line x1="{_fmt(ax(1))}" x2="{_fmt(ax(1))}" y1="{top}" y2="{top + len(shown) * row}" '
            f'stroke="currentColor" stroke-width="1.5" stroke-dasharray="4 3" opacity="0.6"/>']
    for i, r in enumerate(shown):
        assert r.ratio is not None
        y = top + i * row
        color = colors.get(r.verdict, "#7f7f7f")
        body.append(_two_part(LEFT, y + 12, f"{who(r)} · {r.what}", r.verdict))
        cy = y + 27
        if r.ratio_ci_low is not None and r.ratio_ci_high is not None:
            body.append(f'<line x1="{_fmt(ax(r.ratio_ci_low))}" x2="{_fmt(ax(r.ratio_ci_high))}" y1="{cy}" '
                        f'y2="{cy}" stroke="{color}" stroke-width="3"/>')
        body.append(f'<circle cx="{_fmt(ax(r.ratio))}" cy="{cy}" r="5" fill="{color}"/>')
    y_end = top + len(shown) * row
    svg = _svg(y_end + 36, [*_axis(ax, top, y_end, "new / base (log scale; left of 1 = smaller)",
                                   lambda t: f"{cells.number(t)}×"), *body], "ratios with confidence intervals")
    return (f"<figure>{svg}<figcaption>Each figure's median ratio NEW/BASE (dot) with its 95 % bootstrap CI "
            f"(line). Dashed: no change.</figcaption>"
            f"</figure>")


def write_compare(c: object) -> str:
    """The HTML page of a runlab.report.compare.CompareResult: verdicts first, then the plot and the table."""
    from runlab.report.compare import NOT_TESTED, SAME, CompareResult, counts, grid, headline, method, sentence
    from runlab.report.compare import short_side as side

    assert isinstance(c, CompareResult)
    head = headline(c)
    title = f"{c.new.experiment}: {side(c.new)} vs {side(c.base)}"
    body = [f"<h1>{escape(title)}</h1>", f'<p class="facts">{escape(head[0])}</p>']
    if c.fail_on is not None:
        body.append(f'<p class="gate {"fail" if c.failed else "pass"}">{escape(head[-1])}</p>')
    changed = [r for r in c.rows if r.verdict in ("worse", "better")]
    changed.sort(key=lambda r: r.verdict != "worse")
    items = []
    for r in changed:
        s = sentence(r).rsplit(" — ", 1)[0]
        items.append(f'<li class="{VERDICT_CLASS[r.verdict]}">{escape(s)} — <span class="verdict">'
                     f"{escape(r.verdict)}</span></li>")
    body.append(f"<h2>{escape(counts(c))}</h2>")
    if items:
        body.append(f'<ul class="summary">{"".join(items)}</ul>')
    for verdict, label in ((SAME, "no significant difference"), (NOT_TESTED, "not tested (one value per run)")):
        rest = [r for r in c.rows if r.verdict == verdict]
        if rest:
            body.append(f"<details><summary>{len(rest)} {label}</summary><ul class=\"summary\">"
                        + "".join(f"<li>{escape(sentence(r))}</li>" for r in rest) + "</ul></details>")
    plot = forest_plot([r for r in c.rows if r.verdict != NOT_TESTED])
    if plot:
        body += ["<h2>Ratios at a glance</h2>", plot]
    body += ["<h2>Table</h2>", grid_html(grid(c)).replace(f'<p class="notes">{escape(method(c))}</p>', "")]
    body.append(f'<p class="notes">{escape(method(c))}</p>')
    return _page(title, body)
