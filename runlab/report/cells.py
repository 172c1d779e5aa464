"""The text of one report cell: milliseconds, bytes, rates, percentages and intervals, formatted one way everywhere.

Numbers keep about three significant digits with thousands separators (``1,340``, ``47``, ``0.0353``; see
:func:`runlab.stats.format_number`, whose wording the comparison sentences use too); bytes are binary units
with one decimal (``45.0 MiB``). Missing values print as an em dash.
"""

from __future__ import annotations

from runlab.stats import format_number

MISSING = "—"
_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB")


def number(x: float | None) -> str:
    """About 3 significant digits with thousands separators: 1,340 · 47 · 46.5 · 0.0353; — when missing."""
    return MISSING if x is None else format_number(x)


def quantity(x: float | None, unit: str) -> str:
    """A number with its unit: ``1,340 ms``; — when missing."""
    if x is None:
        return MISSING
    return f"{format_number(x)} {unit}" if unit else format_number(x)


def size(n: int | None) -> str:
    """Bytes in binary units with one decimal: 512 B · 3.8 MiB · 72.0 MiB · 1.2 GiB; — when missing."""
    if n is None:
        return MISSING
    if abs(n) < 1024:
        return f"{n:,} B"
    value = n / 1024
    for unit in _BINARY_UNITS[:-1]:
        if round(abs(value), 1) < 1024:  # 1,023.96 KiB would print as 1,024.0 KiB: say 1.0 MiB instead
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} {_BINARY_UNITS[-1]}"


def percent(fraction: float | None) -> str:
    """A fraction as a percentage with about 3 significant digits: 0.0299 → 2.99 %."""
    return MISSING if fraction is None else f"{format_number(fraction * 100)} %"


def interval(low: float | None, high: float | None) -> str:
    """A closed interval in brackets: [1,320–1,360]."""
    if low is None or high is None:
        return MISSING
    return f"[{format_number(low)}–{format_number(high)}]"


def plus_minus(mean: float | None, stdev: float | None) -> str:
    """Mean ± standard deviation: 1,345 ± 40.2."""
    if mean is None or stdev is None:
        return MISSING
    return f"{format_number(mean)} ± {format_number(stdev)}"


def scalar(value: object) -> str:
    """A methodology or machine value of any JSON type, compactly: 1 ms-style numbers, a, b lists, k v maps."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return format_number(float(value))
    if isinstance(value, list | tuple):
        return ", ".join(scalar(v) for v in value) or MISSING
    if isinstance(value, dict):
        return ", ".join(f"{k} {scalar(v)}" for k, v in value.items()) or MISSING
    if value is None or value == "":
        return MISSING
    return str(value)
