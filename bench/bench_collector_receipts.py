"""What receipts cost the pipeline: throughput with receipts on and off, against the direct-write ceiling.

In one run, against one InfluxDB 1.x:

1. ceiling: pre-serialised line protocol of the same points POSTed straight to InfluxDB (batches of 5000,
   one kept-alive connection, as bench_throughput.py);
2. pipeline with receipts on (the default): simulated agents offer ``--rate`` (default: 1.3 × the first
   ceiling, so the pipeline is saturated and lands what it can) → Mosquitto → collector → InfluxDB;
   landed = growth of ``count(cpu_percent)`` over the window; the collector publishes one receipt per node
   and boot every 250 ms;
3. pipeline with receipts off (``receipts.enabled: false``), a fresh collector on the same broker;
4. the ceiling again (InfluxDB slows as it fills).

The order of 2 and 3 alternates with ``--rounds`` > 1. Ratio = landed / mean(ceiling); goal ≥ 0.85 with
receipts on (issue 12). The simulated agents do not subscribe to their receipts: the broker discards
them, so this measures the collector's side (building and publishing receipts), not the agents'.

    .venv/bin/python bench/bench_collector_receipts.py [--quick] [--seconds 20] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import fleet
import harness
import tables

GOAL = 0.85
OFF = "receipts:\n  enabled: false\n"


def pipeline(pl: harness.Pipeline, args: argparse.Namespace, rate: float, receipts: bool, tag: str
             ) -> dict[str, Any]:
    influx = pl.influx
    collector = pl.start_collector(extra="" if receipts else OFF)
    try:
        harness.log(f"pipeline, receipts {'on' if receipts else 'off'}: offering {rate:,.0f} samples/s "
                    f"for {args.warmup + args.seconds:g}s")
        markers = harness.end_markers(influx, influx.database)
        with harness.generators(pl.mq.url, processes=args.processes, rate=rate, seconds=args.warmup + args.seconds,
                                nodes=args.nodes, samples=args.samples, tag=tag) as gens:
            time.sleep(args.warmup)
            n1, t1 = harness.count(influx, influx.database), time.monotonic()
            time.sleep(args.seconds)
            n2, t2 = harness.count(influx, influx.database), time.monotonic()
            gen = gens.results()
        harness.wait_for(lambda: harness.end_markers(influx, influx.database) >= markers + args.processes,
                         timeout=args.drain_timeout, interval=0.5)
        receipts_sent = None
        if receipts:
            time.sleep(1.5)  # one more metrics point
            m = harness.collector_metrics(influx, influx.database, 0, time.time_ns())
            receipts_sent = m[-1].get("receipts") if m else None
    finally:
        collector.stop()
    return {"receipts": receipts, "landed_rate": (n2 - n1) / (t2 - t1),
            "offered_rate": sum(g["offered_rate"] for g in gen), "receipts_sent": receipts_sent}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness.wait_quiet(args.wait_quiet)
    res: dict[str, Any] = {"samples_per_message": args.samples, "nodes": args.processes * args.nodes}
    with harness.Pipeline() as pl:
        influx = pl.influx
        harness.create_database(influx, "ceiling")
        pool = [fleet.LinePool("c", args.processes * args.nodes, args.samples, 8, seed=7)]
        ceilings = []

        def ceiling(when: str) -> None:
            harness.log(f"ceiling ({when}): line protocol straight to InfluxDB for {args.ceiling_seconds:g}s")
            ceilings.append(harness.post_line_protocol(influx.url, "ceiling", pool, args.ceiling_seconds).rate)

        ceiling("before")
        rate = args.rate or 1.3 * ceilings[0]  # saturate: landed = what the pipeline can take
        runs = []
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for receipts in order:
                runs.append(pipeline(pl, args, rate, receipts, f"r{r}{'on' if receipts else 'off'}"))
        ceiling("after")
    res["ceilings"] = ceilings
    res["ceiling"] = statistics.fmean(ceilings)
    res["runs"] = runs
    for key, on in (("on", True), ("off", False)):
        res[f"landed_{key}"] = statistics.fmean(r["landed_rate"] for r in runs if r["receipts"] is on)
    res["ratio_on"] = res["landed_on"] / res["ceiling"]
    res["ratio_off"] = res["landed_off"] / res["ceiling"]
    res["offered_rate"] = statistics.fmean(r["offered_rate"] for r in runs)
    return res


def report(res: dict[str, Any]) -> str:
    c = res["ceilings"]
    sent = [r["receipts_sent"] for r in res["runs"] if r["receipts"]]
    rows = [
        ["ceiling: line protocol → InfluxDB, 1 connection", tables.rate(res["ceiling"]),
         f"before {c[0]:,.0f}, after {c[-1]:,.0f}", ""],
        ["pipeline, receipts on", tables.rate(res["landed_on"]), f"ratio {tables.ratio(res['ratio_on'])}",
         f"≥ {GOAL}: {tables.verdict(res['ratio_on'] >= GOAL)}"],
        ["pipeline, receipts off", tables.rate(res["landed_off"]), f"ratio {tables.ratio(res['ratio_off'])}", ""],
    ]
    out = tables.table(["samples/s landed", "rate", "", "goal"], rows,
                       title="Receipts' cost, same run, same InfluxDB (ceiling: mean of before and after)")
    return (out + f"\n  on / off: {res['landed_on'] / res['landed_off']:.3f}; offered "
            f"{tables.rate(res['offered_rate'])} ({res['nodes']} nodes, {res['samples_per_message']} samples/message);"
            f" receipts published: {sent}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter windows")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window of each pipeline run")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--ceiling-seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1, help="on/off pairs (the order alternates)")
    p.add_argument("--rate", type=float, default=0.0, help="offered samples/s (default: 1.3 × the ceiling)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--wait-quiet", type=float, default=60.0)
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.ceiling_seconds = 10.0, 3.0, 5.0
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
