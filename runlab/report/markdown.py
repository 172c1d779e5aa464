"""The report as GitHub-flavoured Markdown: the terminal report's tables and sentences, for a README or a post.

Column groups (one per node in a side-by-side table) become a prefix of each header cell, since GFM tables
have no spanning cells.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from runlab.report.sections import Grid, ResultView, result_view, side_by_side
from runlab.results import ExperimentResult

# what Markdown would read as markup: pipes (cell ends), emphasis, code spans, HTML tags; "_" inside a word and
# "<" before a space are literal in GFM and stay unescaped so the source reads as it renders
_MARKUP = re.compile(r"[\\|*`]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|<(?=[A-Za-z/!?])")


def _escape(text: str) -> str:
    """Cell or inline text that cannot break a table row or start emphasis, a code span or an HTML tag."""
    return _MARKUP.sub(lambda m: "\\" + m.group(0), text.replace("\n", " "))


def _row(values: list[str]) -> str:
    return "| " + " | ".join(_escape(v) or " " for v in values) + " |"


def grid_markdown(g: Grid, level: int = 3) -> list[str]:
    """One grid as a heading, a pipe table with a delimiter row, and its notes."""
    header = list(g.header)
    start = 0
    for label, span in g.groups:
        if label:
            header[start:start + span] = [f"{label}: {h}" for h in header[start:start + span]]
        start += span
    rule = "| " + " | ".join("---:" if i in g.numeric else "---" for i in range(len(header))) + " |"
    lines = [f"{'#' * level} {_escape(g.title)}", "", _row(header), rule, *(_row(r) for r in g.rows)]
    if g.notes:
        lines += ["", *(f"_{_escape(n)}_" for n in g.notes)]
    return lines


def _view_markdown(v: ResultView) -> list[str]:
    lines = [f"## {_escape(v.title)}", "", *(f"- {_escape(f)}" for f in v.facts)]
    for g in v.grids:
        lines += ["", *grid_markdown(g)]
    if v.comparisons:
        lines += ["", f"### Compared with {_escape(v.reference)}", "", *(f"- {_escape(s)}" for s in v.comparisons)]
    if v.notes:
        lines += ["", "### Notes", "", *(f"- {_escape(n)}" for n in v.notes)]
    if v.warnings:
        lines += ["", "### Warnings", "", *(f"- ⚠ {_escape(w)}" for w in v.warnings)]
    lines += ["", f"_{_escape(v.method)}_"]
    return lines


def write(results: Sequence[ExperimentResult]) -> str:
    """The Markdown report of ``results``: side-by-side tables (when nodes or runs differ), then each run."""
    if not results:
        return "_No results._\n"
    blocks = ["\n".join(grid_markdown(g, level=2)) for g in side_by_side(results)]
    blocks += ["\n".join(_view_markdown(result_view(r))) for r in results]
    return "\n\n".join(blocks) + "\n"
