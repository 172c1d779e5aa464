"""Latency from a sample being taken to it being queryable in InfluxDB, at 5k and 50k samples/s.

Simulated agents stamp every message when they make it; one message in N also
carries a ``probe`` sample with that stamp (about 50 probes/s at any rate). A
checker in this process polls InfluxDB every 10 ms for new probes; a probe's
latency is the moment the answer that first holds it arrived minus its stamp
(an upper bound: it became queryable at most one poll earlier). Alongside: the
collector's own figures (its ``collector`` measurement: sample stamp → write
accepted, per message). Goals: p99 ≤ 50 ms at 5k/s, p99 ≤ 500 ms at 50k/s.

    .venv/bin/python bench/bench_latency.py [--quick] [--seconds 30] [--rates 5000,50000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness
import tables
import urllib3

GOALS_MS = {5000: 50.0, 50000: 500.0}
PROBES_PER_SECOND = 50


class ProbeChecker:
    """Polls InfluxDB for new probes; remembers when each (node, stamp) was first seen."""

    def __init__(self, influx_url: str, database: str, interval: float) -> None:
        self.interval = interval
        self.seen: dict[tuple[str, int], int] = {}  # (node, ts) → first seen (time_ns)
        self.polls = 0
        self.poll_ns: list[int] = []
        self._http = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
        self._url = f"{influx_url}/query"
        self._db = database
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ProbeChecker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._http.clear()

    def _run(self) -> None:
        cursor = newest = time.time_ns() - 10**9
        while not self._stop.is_set():
            sent = time.time_ns()
            q = f'SELECT "seen", "node" FROM "probe" WHERE time > {cursor}'
            r = self._http.request("POST", self._url, fields={"q": q, "db": self._db, "epoch": "ns"},
                                   encode_multipart=False)
            got = time.time_ns()
            self.polls += 1
            self.poll_ns.append(got - sent)
            res = json.loads(r.data)["results"][0]
            for series in res.get("series") or []:
                cols = series["columns"]
                ti, ni = cols.index("time"), cols.index("node")
                for row in series["values"]:
                    self.seen.setdefault((row[ni], row[ti]), got)
                    newest = max(newest, row[ti])
            # Probes of other nodes may still be in flight: keep looking 2 s back.
            cursor = max(cursor, newest - 2 * 10**9)
            self._stop.wait(max(0.0, self.interval - (time.time_ns() - sent) / 1e9))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def measure_rate(pl: harness.Pipeline, rate: int, args: argparse.Namespace) -> dict[str, Any]:
    influx = pl.influx
    msgs_per_s = rate / args.samples
    probe_every = max(1, round(msgs_per_s / PROBES_PER_SECOND))
    checker = ProbeChecker(influx.url, influx.database, args.poll).start()
    cpu = harness.CpuMeter()
    assert pl.collector is not None and pl.influx.proc is not None and pl.mq.proc is not None
    for name, pid in (("collector", pl.collector.pid), ("influxd", pl.influx.proc.pid),
                      ("mosquitto", pl.mq.proc.pid), ("bench (probe checker)", os.getpid())):
        cpu.watch(name, pid)
    machine = harness.MachineMeter()
    harness.log(f"{rate:,} samples/s for {args.warmup + args.seconds:g}s, a probe in every {probe_every}. message")
    with harness.generators(pl.mq.url, processes=args.processes, rate=rate, seconds=args.warmup + args.seconds,
                            nodes=args.nodes, samples=args.samples, probe_every=probe_every, end_marker=False,
                            tag=f"r{rate}g") as gens:
        for p in gens.procs:
            cpu.watch("simulated agents", p.pid)
        time.sleep(args.warmup)
        window_start = time.time_ns()
        cpu.start()
        machine.start()
        time.sleep(args.seconds)
        busy = machine.stop()
        cpu_pct = cpu.stop()
        window_end = time.time_ns()
        gen = gens.results()
    time.sleep(2.0)  # let the last probes land
    checker.stop()
    lags = [(seen - ts) / 1e6 for (node, ts), seen in checker.seen.items()
            if window_start <= ts <= window_end and node.startswith(f"r{rate}g")]
    expected = int(args.seconds * msgs_per_s / probe_every)
    metrics = harness.collector_metrics(influx, influx.database, window_start, window_end + 10**9)
    own = {
        "p50_ms": percentile([m["lag_p50_ms"] for m in metrics if m["lag_p50_ms"]], 0.5),
        "p99_ms": max((m["lag_p99_ms"] for m in metrics), default=float("nan")),
        "max_ms": max((m["lag_max_ms"] for m in metrics), default=float("nan")),
    }
    return {
        "rate": rate, "offered_rate": sum(g["offered_rate"] for g in gen), "probe_every": probe_every,
        "probes": len(lags), "probes_expected": expected,
        "p50_ms": percentile(lags, 0.5), "p99_ms": percentile(lags, 0.99), "max_ms": max(lags, default=float("nan")),
        "poll_ms_median": percentile([p / 1e6 for p in checker.poll_ns], 0.5) + args.poll * 1000,
        "collector": own, "cpu_percent": cpu_pct, "machine_busy_percent": busy,
        "other_percent": max(0.0, busy - sum(cpu_pct.values())),
        "goal_ms": GOALS_MS.get(rate),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness.wait_quiet(args.wait_quiet)
    out: dict[str, Any] = {"samples_per_message": args.samples, "runs": []}
    with harness.Pipeline() as pl:
        pl.start_collector(src=args.collector_src)
        for rate in args.rates:
            out["runs"].append(measure_rate(pl, rate, args))
    return out


def report(res: dict[str, Any]) -> str:
    rows = []
    for r in res["runs"]:
        goal = r["goal_ms"]
        verdict = f"p99 ≤ {goal:g} ms: {tables.verdict(r['p99_ms'] <= goal)}" if goal else ""
        c = r["collector"]
        rows.append([tables.rate(r["rate"]), f"{r['probes']}/{r['probes_expected']}", tables.ms(r["p50_ms"]),
                     tables.ms(r["p99_ms"]), tables.ms(r["max_ms"]), verdict,
                     f"{c['p50_ms']:.1f} / {c['p99_ms']:.1f} / {c['max_ms']:.1f}"])
    out = [tables.table(["offered", "probes seen", "p50", "p99", "max", "goal",
                         "collector's own p50/p99/max ms"], rows,
                        title="Latency, sample taken → queryable in InfluxDB (probe checker, upper bounds)")]
    poll = ", ".join(f"{r['poll_ms_median']:.0f} ms" for r in res["runs"])
    out.append(f"  {res['samples_per_message']} samples/message; a probe is seen at most one poll after it became "
               f"queryable (median poll period: {poll}); the collector's figures are sample stamp → write "
               f"accepted, per message (p50 median of 1-s figures, p99 and max the worst 1-s figure).")
    cpu_rows = []
    names = sorted({k for r in res["runs"] for k in r["cpu_percent"]})
    for name in names:
        cpu_rows.append([name, *(tables.pct(r["cpu_percent"].get(name, 0.0)) for r in res["runs"])])
    cpu_rows.append(["other processes on the machine", *(tables.pct(r["other_percent"]) for r in res["runs"])])
    out.append("")
    out.append(tables.table(["CPU, % of one core", *(tables.rate(r["rate"]) for r in res["runs"])], cpu_rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10-s windows")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window per rate")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rates", default="5000,50000", help="samples/s, comma-separated")
    p.add_argument("--poll", type=float, default=0.01, help="probe checker's poll interval (s)")
    p.add_argument("--processes", type=int, default=2, help="simulated-agent processes")
    p.add_argument("--nodes", type=int, default=20, help="simulated nodes per process")
    p.add_argument("--samples", type=int, default=100, help="samples per message")
    p.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for an idle machine")
    p.add_argument("--collector-src", default=str(harness.REPO),
                   help="directory holding the collector/ and runlab/ to run (compare another checkout)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    args.rates = [int(float(r)) for r in args.rates.split(",")]
    args.collector_src = Path(args.collector_src)
    if args.quick:
        args.seconds = 10.0
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
