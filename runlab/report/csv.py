"""The raw samples as tidy CSV: one row per measured value, for pandas, R or a spreadsheet.

Columns, in this order (``COLUMNS``):

* ``experiment`` — the experiment's name
* ``run`` — the run identifier
* ``node`` — the node the variant ran on (empty when not recorded)
* ``variant`` — the variant's name
* ``runtime`` — process, container, vm, wasm…
* ``figure`` — ``startup_ms`` (cold start: start issued → first probe success), ``latency_ms_closed`` or
  ``latency_ms_open`` (one request of a closed- or open-loop load phase; ``_2``, ``_3``… appended if a variant
  had several of one mode): the names ComparisonResult.figure uses in the JSON; ``redeploy_ms`` (swap issued →
  first answer from v2) and ``redeploy_gap_ms`` (longest gap a steady client saw, one per swap); ``rtt_ms``
  (one inter-service round trip); ``benchmark`` (one benchmark score, in the benchmark's unit);
  ``stack_ms`` (stack boot; ``variant`` is the stack's name and ``runtime`` is ``stack``) and
  ``stack_service_ms`` (one service of it; ``variant`` is ``STACK/SERVICE``)
* ``index`` — 0-based position of the value among the measured samples of its figure (the numbering that the
  JSON ``outliers`` list uses), or among the warm-up samples when ``warmup`` is true
* ``value`` — the measured value, full precision
* ``warmup`` — ``true`` for warm-up samples (kept, but not in the statistics), else ``false``
* ``outlier`` — ``true`` when flagged by the modified z-score (> 3.5); flagged values stay in the statistics
* ``unit`` — the value's unit, e.g. ``ms``

Summary figures (footprint, size, statistics, comparisons, overhead levels) are not repeated here: they are in
the JSON.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

from runlab.results import ExperimentResult, Figure

COLUMNS = ("experiment", "run", "node", "variant", "runtime", "figure", "index", "value", "warmup", "outlier",
           "unit")


def _figure_rows(prefix: list[str], figure: str, f: Figure) -> Iterator[list[str]]:
    for i, x in enumerate(f.warmup):
        yield [*prefix, figure, str(i), repr(x), "true", "false", f.unit]
    flagged = set(f.outliers)
    for i, x in enumerate(f.samples):
        yield [*prefix, figure, str(i), repr(x), "false", "true" if i in flagged else "false", f.unit]


def rows(results: Sequence[ExperimentResult]) -> Iterator[list[str]]:
    """Every raw sample of ``results`` as a row of ``COLUMNS``, in result, variant, figure order."""
    for r in results:
        for v in r.variants:
            prefix = [r.experiment, r.run, v.node, v.name, v.runtime]
            if v.startup_ms is not None:
                yield from _figure_rows(prefix, "startup_ms", v.startup_ms)
            seen: dict[str, int] = {}
            for ld in v.load:
                seen[ld.mode] = seen.get(ld.mode, 0) + 1
                figure = f"latency_ms_{ld.mode}" + (f"_{seen[ld.mode]}" if seen[ld.mode] > 1 else "")
                if ld.latency_ms is not None:
                    yield from _figure_rows(prefix, figure, ld.latency_ms)
            phase_figures = [
                ("redeploy_ms", v.redeploy.time_to_v2_ms if v.redeploy else None),
                ("redeploy_gap_ms", v.redeploy.gap_ms if v.redeploy else None),
                ("rtt_ms", v.interservice.rtt_ms if v.interservice else None),
                ("benchmark", v.benchmark.score if v.benchmark else None)]
            for figure, f in phase_figures:
                if f is not None:
                    yield from _figure_rows(prefix, figure, f)
        for st in r.stacks:
            if st.total_ms is not None:
                yield from _figure_rows([r.experiment, r.run, st.node, st.name, "stack"], "stack_ms", st.total_ms)
            for svc in st.services:
                if svc.ready_ms is not None:
                    yield from _figure_rows([r.experiment, r.run, st.node, f"{st.name}/{svc.name}", "stack"],
                                            "stack_service_ms", svc.ready_ms)


def write(results: Sequence[ExperimentResult]) -> str:
    """Header plus one row per raw sample (RFC 4180 quoting, ``\\n`` line ends)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows(results))
    return out.getvalue()
