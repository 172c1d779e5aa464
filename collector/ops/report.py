"""``runlab report``: results rebuilt from InfluxDB, nodes and variants side by side, in any report format."""

from __future__ import annotations

import time
from collections.abc import Sequence

from collector.ops.config import OperatorConfig
from collector.ops.influxql import InfluxQL
from collector.ops.link import OpsError
from runlab.report import render
from runlab.report.store import NoData, literal, load_results, merge
from runlab.results import ExperimentResult


def fetch(cfg: OperatorConfig, what: str, nodes: Sequence[str] = (), reference: str | None = None,
          rp: str | None = None) -> list[ExperimentResult]:
    ql = InfluxQL(cfg.influx, cfg.source)
    if rp:
        ql.rp = rp  # e.g. `results`: the forever copies of run_sample/run_summary (deploy/influxdb/README.md)
    try:
        return load_results(ql.query, what, nodes, reference)
    except NoData as e:
        raise OpsError(f"{e} in {ql.where}") from None


def format_results(results: Sequence[ExperimentResult], fmt: str) -> str:
    """JSON is one object with every node's variants; the other formats put the nodes side by side."""
    if fmt == "json":
        return render("json", [merge(results)])
    if fmt == "html":
        from runlab.report.html import write_report

        return write_report(results)
    return render(fmt, results)


def wait_and_render(cfg: OperatorConfig, run: str, nodes: Sequence[str], fmt: str, timeout: float = 60.0) -> str:
    """The report of ``run`` once every node's run_summary rows are queryable (the collector writes in batches)."""
    ql = InfluxQL(cfg.influx, cfg.source)
    deadline = time.monotonic() + timeout
    missing = list(nodes)
    while True:
        # a plain SELECT (no wildcard aggregate): the same on InfluxDB 1.x, 2.x and 3.x; a run has few summaries
        rows = ql.query(f'SELECT * FROM "run_summary" WHERE "run" = {literal(run)}')
        have = {str(r.get("node")) for r in rows}
        missing = [n for n in nodes if n not in have]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise OpsError(f"run {run}: no run_summary rows from {', '.join(missing)} in {ql.where} after "
                           f"{timeout:g}s (is the collector running and writing there?)")
        time.sleep(0.5)  # polling the store: the collector gives no signal when a batch is written
    return format_results(fetch(cfg, run, nodes), fmt)


def emit(text: str, out: str | None, what: str) -> None:
    """``text`` to ``--out FILE`` (saying so on stderr, OpsError when it cannot be written) or to stdout."""
    import sys

    if not out:
        print(text, end="")
        return
    from pathlib import Path

    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as e:
        raise OpsError(f"cannot write {out}: {e.strerror}") from None
    print(f"{what} written to {out} ({len(text.encode()):,} bytes)", file=sys.stderr)


def cmd_report(cfg: OperatorConfig, what: str, nodes: Sequence[str], fmt: str, plot: str | None,
               reference: str | None, rp: str | None = None, out: str | None = None) -> int:
    import sys

    results = fetch(cfg, what, nodes, reference, rp)
    emit(format_results(results, fmt), out, "report")
    if plot:
        from collector.ops.plotting import plot_results

        size = plot_results(results, plot)
        print(f"plot written to {plot} ({size[0]}×{size[1]} px)", file=sys.stderr)
    return 0
