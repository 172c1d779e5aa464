"""The raw samples as tidy CSV: one row per measured value, for pandas, R or a spreadsheet.

Columns, in this order (``COLUMNS``):

* ``experiment`` — the experiment's name
* ``run`` — the run identifier
* ``node`` — the node the variant ran on (empty when not recorded)
* ``variant`` — the variant's name
* ``runtime`` — process, container, vm, wasm…
* ``figure`` — ``startup_ms`` (cold start: start issued → first probe success), ``latency_ms_closed`` or
  ``latency_ms_open`` (one request of a closed- or open-loop load phase; ``_2``, ``_3``… appended if a variant
  had several of one mode): the names ComparisonResult.figure uses in the JSON
* ``index`` — 0-based position of the value among the measured samples of its figure (the numbering that the
  JSON ``outliers`` list uses), or among the warm-up samples when ``warmup`` is true
* ``value`` — the measured value, full precision
* ``warmup`` — ``true`` for warm-up samples (kept, but not in the statistics), else ``false``
* ``outlier`` — ``true`` when flagged by the modified z-score (> 3.5); flagged values stay in the statistics
* ``unit`` — the value's unit, e.g. ``ms``

Summary figures (footprint, size, statistics, comparisons) are not repeated here: they are in the JSON.
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


def write(results: Sequence[ExperimentResult]) -> str:
    """Header plus one row per raw sample (RFC 4180 quoting, ``\\n`` line ends)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows(results))
    return out.getvalue()
