"""``runlab compare BASE NEW``: each side a JSON file from ``runlab-agent run --json`` (no server needed), a run
id, EXPERIMENT (its latest run per node) or EXPERIMENT@DATE (the latest that had started by then), read from
InfluxDB; the statistics are runlab.report.compare's."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import msgspec

from collector.ops.link import OpsError
from collector.ops.report import emit
from runlab.report import compare as cmp
from runlab.report.store import NoData, load_results
from runlab.results import ExperimentResult

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


class BadInput(ValueError):
    """A side or an option that cannot be used; str(e) is the one-line reason (exit status 2)."""


def is_file(side: str) -> bool:
    return side.endswith(".json") or "/" in side or Path(side).is_file()


def read_file(path: str) -> list[ExperimentResult]:
    """A ``runlab-agent run --json`` file (one result) or ``runlab report --format json`` output (one or many)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    try:
        return [msgspec.json.decode(data, type=ExperimentResult)]
    except msgspec.ValidationError as e:
        first = e
    except msgspec.DecodeError as e:
        raise BadInput(f"{path}: not JSON ({e})") from None
    try:
        results = msgspec.json.decode(data, type=list[ExperimentResult])
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise BadInput(f"{path}: not a runlab result (expected the JSON of `runlab-agent run --json`): "
                       f"{first}") from None
    if not results:
        raise BadInput(f"{path}: an empty list of results")
    return results


def until(date: str) -> str:
    """EXPERIMENT@DATE's DATE as an RFC 3339 time: a day means its end (UTC)."""
    if not _DATE.match(date):
        raise BadInput(f"@{date}: expected a date (2026-12-01) or a time (2026-12-01T18:30Z)")
    text = date.replace(" ", "T")
    if len(text) == 10:
        text += "T23:59:59.999999999Z"
    else:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f"@{date}: not a valid date or time") from None
        if parsed.tzinfo is None:
            text += "Z"
    return text


def load_side(side: str, cfg_loader: object, nodes: Sequence[str]) -> list[ExperimentResult]:
    """One side's results, from a file or from the store (``cfg_loader()`` gives the operator config)."""
    if is_file(side):
        results = read_file(side)
        if nodes:
            results = [_only(r, nodes) for r in results]
        return results
    from collector.ops.influxql import InfluxQL

    what, _, date = side.partition("@")
    cfg = cfg_loader()  # type: ignore[operator]
    ql = InfluxQL(cfg.influx, cfg.source)
    try:
        return load_results(ql.query, what, nodes, until=until(date) if date else None)
    except NoData as e:
        raise OpsError(f"{e} in {ql.where}") from None


def _only(r: ExperimentResult, nodes: Sequence[str]) -> ExperimentResult:
    return msgspec.structs.replace(r, variants=[v for v in r.variants if v.node in nodes],
                                   stacks=[s for s in r.stacks if s.node in nodes])


def cmd_compare(base: str, new: str, fmt: str, fail_on: str | None, alpha: float, threshold: float,
                nodes: Sequence[str], cfg_loader: object, out: str | None = None) -> int:
    try:
        limit = cmp.parse_fail_on(fail_on) if fail_on is not None else None
    except ValueError as e:
        raise BadInput(str(e)) from None
    b = load_side(base, cfg_loader, nodes)
    n = load_side(new, cfg_loader, nodes)
    try:
        result = cmp.compare(b, n, base, new, alpha=alpha, threshold=threshold, fail_on=limit)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if not result.rows:
        raise BadInput(f"{base} and {new} have no figure in common (variants {_names(b)} vs {_names(n)})")
    emit(cmp.write(result, fmt), out, "comparison")
    if result.failed:
        print(f"runlab: {len(result.failed)} figure(s) significantly worse by "
              f"{result.fail_on * 100 if result.fail_on else 0:g} % or more (--fail-on)", file=sys.stderr)
        return 1
    return 0


def _names(results: Sequence[ExperimentResult]) -> str:
    return ", ".join(dict.fromkeys(v.name for r in results for v in r.variants)) or "none"
