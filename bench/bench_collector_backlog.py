"""Collector memory under a backlog: restart the collector into 2.7 M queued samples and watch its RSS.

The collector's persistent session is made first, then the collector is stopped while simulated agents
publish ``--rate`` samples/s for ``--seconds`` (30 k/s × 90 s = 2.7 M samples, 100 a message): all of it
waits in Mosquitto. The collector then starts and drains it; the bench samples its RSS every 0.5 s until
every point landed, counts every point (offered = acked by the broker, landed = ``count()`` in InfluxDB)
and reads the collector's own sequence counters (gaps, duplicates) and drain figures.

With ``--baseline REF`` the same run is made first with the collector of git revision REF (``git archive``
into a temporary directory), side by side in one run, and the table prints both and their ratio.

    .venv/bin/python bench/bench_collector_backlog.py [--quick] [--baseline main] [--rate 30000 --seconds 90]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import tables
from bench_overload import PeakRss


def archive(ref: str) -> Path:
    """The collector/ and runlab/ of git revision ``ref``, unpacked into a temporary directory."""
    out = Path(tempfile.mkdtemp(prefix="runlab-baseline-"))
    tar = subprocess.run(["git", "archive", ref, "collector", "runlab"], cwd=harness.REPO, capture_output=True,
                         check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
    return out


def one(src: Path, label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Backlog → restart → drain, with the collector from ``src``."""
    res: dict[str, Any] = {"label": label, "src": str(src)}
    with harness.Pipeline() as pl:
        influx = pl.influx
        collector = pl.start_collector(src=src)  # its session: from now on the broker queues for it
        collector.stop()
        harness.log(f"{label}: collector stopped; offering {args.rate:,.0f} samples/s for {args.seconds:g} s")
        with harness.generators(pl.mq.url, processes=args.processes, rate=args.rate, seconds=args.seconds,
                                nodes=args.nodes, samples=args.samples, tag="bl") as gens:
            gen = gens.results()
        offered = sum(g["offered"] for g in gen)
        res["offered"] = offered
        assert pl.mq.proc is not None
        mq_rss = harness.smaps_rollup(pl.mq.proc.pid).get("Rss", 0)
        harness.log(f"{label}: {offered:,} samples queued at the broker (RSS {mq_rss / 2**20:.0f} MiB); "
                    "starting the collector")
        t0 = time.monotonic()
        collector = pl.start_collector(src=src)
        with PeakRss({"collector": collector.pid}) as rss:
            drained = harness.wait_for(
                lambda: harness.end_markers(influx, influx.database) >= args.processes
                and harness.count(influx, influx.database) >= offered, timeout=args.drain_timeout, interval=0.5)
        landed = harness.count(influx, influx.database)
        time.sleep(2.5)  # one more metrics point (metrics_interval 1s) after the last write
        metrics = harness.collector_metrics(influx, influx.database, 0, time.time_ns())
        res.update({
            "landed": landed, "lost": max(0, offered - landed),
            "drain_seconds": (drained - t0) if drained is not None else None,
            "drain_rate": landed / (drained - t0) if drained is not None else None,
            "peak_rss": rss.peak["collector"], "broker_rss_before": mq_rss,
            "gaps": metrics[-1].get("gaps") if metrics else None,
            "duplicates": metrics[-1].get("duplicates") if metrics else None,
            "reads_paused_s": metrics[-1].get("reads_paused_s") if metrics else None,
            "max_inbox_messages": max((m.get("inbox") or 0) for m in metrics) if metrics else None,
            "drain_log": [ln.split("INFO    runlab.collector: ", 1)[-1] for ln in collector.log().splitlines()
                          if "backlog drained" in ln][-1:],
        })
    harness.log(f"{label}: peak RSS {res['peak_rss'] / 2**20:.0f} MiB, drained in "
                f"{res['drain_seconds'] or float('nan'):.1f} s, lost {res['lost']}")
    return res


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness.wait_quiet(args.wait_quiet)
    runs = []
    baseline_dir = archive(args.baseline) if args.baseline else None
    try:
        if baseline_dir is not None:
            runs.append(one(baseline_dir, f"baseline ({args.baseline})", args))
        runs.append(one(harness.REPO, "this tree", args))
    finally:
        if baseline_dir is not None:
            shutil.rmtree(baseline_dir, ignore_errors=True)
    return {"rate": args.rate, "seconds": args.seconds, "samples_per_message": args.samples, "runs": runs}


def report(res: dict[str, Any]) -> str:
    rows = []
    for r in res["runs"]:
        drain = r["drain_seconds"]
        rows.append([r["label"], tables.mib(r["peak_rss"]), tables.count(r["offered"]), tables.count(r["landed"]),
                     tables.count(r["lost"]), f"{r['gaps']} / {r['duplicates']}",
                     "not drained" if drain is None else f"{drain:.1f} s",
                     "-" if drain is None else tables.rate(r["drain_rate"]),
                     "-" if r["reads_paused_s"] is None else f"{r['reads_paused_s']:.1f} s"])
    out = tables.table(["collector", "peak RSS", "queued", "landed", "lost", "gaps / dups", "drain", "drain rate",
                        "reads paused"], rows,
                       title=f"Collector restarted into a backlog of {res['rate'] * res['seconds']:,.0f} samples "
                             f"({res['rate']:,.0f}/s × {res['seconds']:g} s, {res['samples_per_message']} a message)")
    runs = res["runs"]
    if len(runs) == 2 and runs[0]["peak_rss"]:
        out += (f"\npeak RSS this tree / baseline: {runs[1]['peak_rss'] / runs[0]['peak_rss']:.2f}"
                f"  (goal ≤ 256 MB: {tables.verdict(runs[1]['peak_rss'] <= 256 * 10**6)})")
    else:
        out += f"\npeak RSS goal ≤ 256 MB: {tables.verdict(runs[-1]['peak_rss'] <= 256 * 10**6)}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 30 s backlog instead of 90 s")
    p.add_argument("--rate", type=float, default=30_000.0, help="samples/s offered while the collector is away")
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--samples", type=int, default=100, help="samples per message")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--baseline", default="", help="git revision whose collector runs first, for comparison")
    p.add_argument("--wait-quiet", type=float, default=60.0)
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds = 30.0
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
