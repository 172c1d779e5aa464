"""Throughput: samples/s the whole pipeline lands in InfluxDB, side by side with what InfluxDB alone takes.

In one run, against one InfluxDB 1.x:

1. ceilings: pre-serialised line protocol of the same points, POSTed straight to
   InfluxDB in batches of 5000 over one kept-alive connection (the ceiling the
   goal is stated against), and over two at once (as many as the collector's
   writers: InfluxDB parses concurrent writes in parallel);
2. pipeline: simulated agents (bench/simagents.py, separate processes) offer the
   one-connection ceiling's rate → Mosquitto → collector → InfluxDB; landed =
   the growth of ``count(cpu_percent)`` in InfluxDB over the measured window;
3. the ceilings again (InfluxDB slows down as it fills and compacts), after the
   pipeline's backlog drained.

ratio = landed / mean(ceiling). Goal ≥ 0.8 against the one-connection ceiling.
The CPU table shows who used the two cores during the window, per landed sample too.

    .venv/bin/python bench/bench_throughput.py [--quick] [--seconds 30] [--samples 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import fleet
import harness
import tables

GOAL = 0.8


def measure(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"samples_per_message": args.samples, "batch_points": 5000,
                           "generator_processes": args.processes, "nodes": args.processes * args.nodes}
    harness.wait_quiet(args.wait_quiet)
    with harness.Pipeline() as pl:
        influx = pl.influx
        harness.create_database(influx, "ceiling")
        collector = pl.start_collector(src=args.collector_src)
        nodes = args.processes * args.nodes
        # The same number of series as the pipeline, split over the connections.
        pools = {1: [fleet.LinePool("c", nodes, args.samples, 8, seed=7)],
                 2: [fleet.LinePool(f"d{i}", nodes // 2, args.samples, 8, seed=8 + i) for i in range(2)]}
        ceilings: dict[int, list[float]] = {1: [], 2: []}

        def ceiling_round(when: str) -> None:
            for conns, pool in pools.items():
                harness.log(f"ceiling ({when}): line protocol straight to InfluxDB over {conns} connection(s) "
                            f"for {args.ceiling_seconds:g}s")
                ceilings[conns].append(harness.post_line_protocol(influx.url, "ceiling", pool,
                                                                  args.ceiling_seconds).rate)

        ceiling_round("before")
        offered_rate = args.rate or ceilings[1][0]
        res["offered_rate_target"] = offered_rate

        harness.log(f"pipeline: {args.processes} generator process(es) offering {offered_rate:,.0f} samples/s "
                    f"for {args.warmup + args.seconds:g}s")
        cpu = harness.CpuMeter()
        assert influx.proc is not None and pl.mq.proc is not None
        for name, pid in (("collector", collector.pid), ("influxd", influx.proc.pid),
                          ("mosquitto", pl.mq.proc.pid), ("bench (queries)", os.getpid())):
            cpu.watch(name, pid)
        machine = harness.MachineMeter()
        with harness.generators(pl.mq.url, processes=args.processes, rate=offered_rate,
                                seconds=args.warmup + args.seconds, nodes=args.nodes,
                                samples=args.samples) as gens:
            for p in gens.procs:
                cpu.watch("simulated agents", p.pid)
            time.sleep(args.warmup)
            n1, t1 = _count_at(influx)
            cpu.start()
            machine.start()
            window_start_ns = time.time_ns()
            time.sleep(max(0.0, t1 + args.seconds - time.monotonic()))
            n2, t2 = _count_at(influx)
            busy = machine.stop()
            window_end_ns = time.time_ns()
            cpu_pct = cpu.stop()
            gen = gens.results()
        offered = sum(g["offered"] for g in gen)
        res["landed_rate"] = (n2 - n1) / (t2 - t1)
        res["offered_rate"] = sum(g["offered_rate"] for g in gen)
        res["cpu_percent"] = cpu_pct
        res["machine_busy_percent"] = busy
        res["other_percent"] = max(0.0, busy - sum(cpu_pct.values()))
        metrics = harness.collector_metrics(influx, influx.database, window_start_ns, window_end_ns)
        if len(metrics) >= 2:
            span = (metrics[-1]["time"] - metrics[0]["time"]) / 1e9
            res["collector_reported_rate"] = (metrics[-1]["samples_written"] - metrics[0]["samples_written"]) / span
            res["collector_last_batch_points"] = metrics[-1]["last_batch_points"]
            res["collector_write_ms_avg"] = metrics[-1]["write_ms_avg"]

        harness.log("waiting for the broker's backlog to drain")
        drained_at = harness.wait_for(lambda: harness.end_markers(influx, influx.database) >= len(gen),
                                      timeout=args.drain_timeout, interval=0.5)
        landed_total = harness.count(influx, influx.database)
        if drained_at is not None and landed_total < offered:
            harness.wait_for(lambda: harness.count(influx, influx.database) >= offered, timeout=30, interval=1)
            landed_total = harness.count(influx, influx.database)
        res["offered_total"] = offered
        res["landed_total"] = landed_total
        res["quarantined"] = pl.quarantined()
        ceiling_round("after")
    res["ceilings"] = {str(k): v for k, v in ceilings.items()}
    res["ceiling_before"], res["ceiling_after"] = ceilings[1]
    res["ceiling"] = statistics.fmean(ceilings[1])
    res["ceiling_2"] = statistics.fmean(ceilings[2])
    res["ratio"] = res["landed_rate"] / res["ceiling"]
    res["ratio_2"] = res["landed_rate"] / res["ceiling_2"]
    return res


def _count_at(influx: Any) -> tuple[int, float]:
    """Points landed so far, and the moment the count stands for (the middle of the query)."""
    t0 = time.monotonic()
    n = harness.count(influx, influx.database)
    return n, (t0 + time.monotonic()) / 2


def report(res: dict[str, Any]) -> str:
    c1, c2 = res["ceilings"]["1"], res["ceilings"]["2"]
    kept_up = res["landed_rate"] >= 0.97 * res["offered_rate"]
    rows = [
        ["ceiling: line protocol → InfluxDB, 1 connection", tables.rate(res["ceiling"]),
         f"before {c1[0]:,.0f}, after {c1[1]:,.0f}", ""],
        ["ceiling: line protocol → InfluxDB, 2 connections", tables.rate(res["ceiling_2"]),
         f"before {c2[0]:,.0f}, after {c2[1]:,.0f}", ""],
        ["pipeline: agents → Mosquitto → collector → InfluxDB", tables.rate(res["landed_rate"]),
         f"ratio {tables.ratio(res['ratio'])} (1 conn.), {tables.ratio(res['ratio_2'])} (2 conn.)",
         f"≥ {GOAL} of 1 conn.: {tables.verdict(res['ratio'] >= GOAL)}"],
    ]
    out = [tables.table(["samples/s landed in InfluxDB", "rate", "", "goal"], rows,
                        title="Throughput, same run, same InfluxDB (ceilings: mean of before and after)")]
    out.append(f"  offered by the simulated agents: {tables.rate(res['offered_rate'])} "
               f"({res['generator_processes']} processes, {res['nodes']} nodes, "
               f"{res['samples_per_message']} samples/message, 10 fields/sample)"
               + (" — the pipeline kept up with all of it" if kept_up else ""))
    out.append(f"  collector's own count: {tables.rate(res.get('collector_reported_rate', 0))}, "
               f"last batch {res.get('collector_last_batch_points', '?')} points, "
               f"write {res.get('collector_write_ms_avg', 0):.1f} ms avg")
    lost = res["offered_total"] - res["landed_total"]
    out.append(f"  every point accounted for: offered {tables.count(res['offered_total'])}, "
               f"landed {tables.count(res['landed_total'])}, lost {tables.count(max(0, lost))}, "
               f"quarantined {res['quarantined']}")
    per = 1e6 / max(1.0, res["landed_rate"]) / 100
    cpu_rows = [[name, tables.pct(v), f"{v * per:.1f}"]
                for name, v in sorted(res["cpu_percent"].items(), key=lambda kv: -kv[1])]
    cpu_rows.append(["other processes on the machine", tables.pct(res["other_percent"]), ""])
    cpu_rows.append(["whole machine (200% = both cores)", tables.pct(res["machine_busy_percent"]),
                     f"{res['machine_busy_percent'] * per:.1f}"])
    out.append("")
    out.append(tables.table(["during the pipeline window", "CPU, % of one core", "CPU µs per landed sample"],
                            cpu_rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter windows (about 1 minute in all)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured pipeline window")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--ceiling-seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.0, help="offered samples/s (default: the ceiling's rate)")
    p.add_argument("--processes", type=int, default=2, help="simulated-agent processes")
    p.add_argument("--nodes", type=int, default=20, help="simulated nodes per process")
    p.add_argument("--samples", type=int, default=100, help="samples per message")
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for an idle machine")
    p.add_argument("--collector-src", type=Path, default=harness.REPO,
                   help="directory holding the collector/ and runlab/ to run (compare another checkout)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.ceiling_seconds = 15.0, 3.0, 5.0
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
