"""The terminal report: aligned plain-text tables (no colour, no dependencies), one block per experiment run.

Several results measured on different nodes (or in different runs) of the same experiment are first shown side
by side, one column group per node, then each run in full.
"""

from __future__ import annotations

from collections.abc import Sequence

from runlab.report.sections import Grid, ResultView, result_view, side_by_side
from runlab.results import ExperimentResult

_GAP = "  "
_INDENT = "  "


def _widths(g: Grid) -> list[int]:
    widths = [max([len(h), *(len(row[i]) for row in g.rows)]) for i, h in enumerate(g.header)]
    start = 0
    for label, span in g.groups:  # a group label wider than its columns widens the group's last column
        have = sum(widths[start:start + span]) + len(_GAP) * (span - 1)
        if label and len(label) + 2 > have:
            widths[start + span - 1] += len(label) + 2 - have
        start += span
    return widths


def _line(values: list[str], widths: list[int], numeric: frozenset[int]) -> str:
    cells = [v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
    return (_INDENT + _GAP.join(cells)).rstrip()


def grid_lines(g: Grid) -> list[str]:
    """One grid as aligned lines: title, optional group row, header, rule, rows, notes."""
    widths = _widths(g)
    lines = [g.title]
    if g.groups:
        spans: list[str] = []
        start = 0
        for label, span in g.groups:
            width = sum(widths[start:start + span]) + len(_GAP) * (span - 1)
            spans.append(f" {label} ".center(width, "─") if label else " " * width)
            start += span
        lines.append((_INDENT + _GAP.join(spans)).rstrip())
    lines.append(_line(g.header, widths, g.numeric))
    lines.append(_INDENT + _GAP.join("─" * w for w in widths))
    lines += [_line(row, widths, g.numeric) for row in g.rows]
    lines += [_INDENT + note for note in g.notes]
    return lines


def _view_lines(v: ResultView) -> list[str]:
    lines = [v.title, "═" * len(v.title), *v.facts]
    for g in v.grids:
        lines += ["", *grid_lines(g)]
    if v.comparisons:
        lines += ["", f"Compared with {v.reference}:", *(_INDENT + s for s in v.comparisons)]
    if v.notes:
        lines += ["", "Notes:", *(_INDENT + n for n in v.notes)]
    if v.warnings:
        lines += ["", "Warnings:", *(f"{_INDENT}⚠ {w}" for w in v.warnings)]
    lines += ["", v.method]
    return lines


def write(results: Sequence[ExperimentResult]) -> str:
    """The terminal report of ``results``: side-by-side grids (when nodes or runs differ), then each run."""
    if not results:
        return "No results.\n"
    blocks = ["\n".join(grid_lines(g)) for g in side_by_side(results)]
    blocks += ["\n".join(_view_lines(result_view(r))) for r in results]
    return "\n\n\n".join(blocks) + "\n"
