"""Report writers: the same list of ExperimentResults as a terminal table, Markdown, JSON, CSV or one
self-contained HTML page.

Every writer has one signature, ``write(results) -> str``, and only formats: the numbers come from the result
objects (and runlab.stats, which made them). A list, so that results from several nodes or runs can be put
side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from runlab.report import csv, html, json, markdown, table
from runlab.results import ExperimentResult

Writer = Callable[[Sequence[ExperimentResult]], str]

WRITERS: dict[str, Writer] = {
    "table": table.write,
    "markdown": markdown.write,
    "json": json.write,
    "csv": csv.write,
    "html": html.write_report,
}


def render(fmt: str, results: Sequence[ExperimentResult]) -> str:
    """``results`` in format ``fmt`` (one of WRITERS); ValueError naming the known formats otherwise."""
    writer = WRITERS.get(fmt)
    if writer is None:
        raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(WRITERS)}")
    return writer(results)
