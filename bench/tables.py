"""Plain-text tables and number formats for the benchmark reports (formatting only, no measuring)."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A left/right aligned text table: text columns left, numbers right."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_looks_numeric(r[i]) for r in cells[1:] if r[i]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True))

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(o.rstrip() for o in out)


def _looks_numeric(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").replace("/s", "").replace("×", "").replace(" ms", "")
    t = t.replace(" s", "").replace(" MiB", "").replace(" MB", "").replace("≤", "").replace("≥", "").strip()
    try:
        float(t)
    except ValueError:
        return False
    return True


def rate(x: float) -> str:
    return f"{x:,.0f}/s"


def count(n: int | float) -> str:
    return f"{n:,.0f}"


def ratio(x: float) -> str:
    return f"{x:.2f}"


def ms(x: float) -> str:
    return f"{x:,.1f} ms"


def pct(x: float) -> str:
    return f"{x:.1f}%"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def machine() -> str:
    """One line naming the machine the figures come from."""
    import os

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores, {mem / 2**30:.0f} GiB, Python " \
           f"{platform.python_version()}"


def save(path: str | None, result: dict[str, Any]) -> None:
    """Write a bench's figures as JSON (for run_all's summary) when asked to."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


def finish(result: dict[str, Any], report: Callable[[dict[str, Any]], str], path: str | None) -> int:
    """Every bench's last step: stamp the machine, print the report, save the JSON; exit status 0."""
    result["machine"] = machine()
    print(report(result))
    save(path, result)
    return 0
