"""Overload: offer twice what the collector can take for 30 s; count every point; time the drain.

The collector acks a message only after InfluxDB took it, so the excess must
wait in Mosquitto (the collector's persistent session; deploy/mosquitto/runlab.conf
allows 4 GiB of queued messages per client) and land later. The bench counts
every host point the simulated agents had acknowledged by the broker against
``count(cpu_percent)`` in InfluxDB once the backlog drained, and times the drain
from the end of the overload to the last point landing.

Capacity (samples/s the collector lands when saturated) is measured first, for
``--calibrate`` seconds, unless given with ``--capacity`` (run_all passes the
throughput bench's figure).

    .venv/bin/python bench/bench_overload.py [--quick] [--seconds 30] [--capacity N]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness
import tables


class PeakRss:
    """Highest RSS of some processes, sampled every 0.5 s in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    rss = harness.smaps_rollup(pid).get("Rss", 0)
                except OSError:
                    continue
                self.peak[name] = max(self.peak[name], rss)
            self._stop.wait(0.5)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def calibrate(pl: harness.Pipeline, args: argparse.Namespace) -> float:
    """Landed samples/s while the collector is saturated (offered well above what it can take)."""
    influx = pl.influx
    harness.log(f"calibrating: offering {args.calibrate_rate:,.0f} samples/s for {args.calibrate:g}s")
    with harness.generators(pl.mq.url, processes=args.processes, rate=args.calibrate_rate,
                            seconds=args.calibrate, nodes=args.nodes, samples=args.samples, tag="cal") as gens:
        time.sleep(min(3.0, args.calibrate / 3))
        n1, t1 = harness.count(influx, influx.database), time.monotonic()
        time.sleep(max(1.0, args.calibrate - min(3.0, args.calibrate / 3) - 0.5))
        n2, t2 = harness.count(influx, influx.database), time.monotonic()
        gens.results()
    harness.log("calibration: waiting for its backlog to drain")
    harness.wait_for(lambda: harness.end_markers(influx, influx.database) >= args.processes, timeout=300,
                     interval=0.5)
    return (n2 - n1) / (t2 - t1)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness.wait_quiet(args.wait_quiet)
    res: dict[str, Any] = {"seconds": args.seconds, "samples_per_message": args.samples}
    with harness.Pipeline(mosquitto_extra=args.broker_extra) as pl:
        influx = pl.influx
        collector = pl.start_collector(src=args.collector_src)
        capacity = args.capacity or calibrate(pl, args)
        res["capacity"] = capacity
        res["capacity_source"] = "given" if args.capacity else f"measured ({args.calibrate:g} s saturated)"
        before = harness.count(influx, influx.database)
        markers_before = harness.end_markers(influx, influx.database)
        offer = args.factor * capacity
        res["offered_rate_target"] = offer
        harness.log(f"overload: offering {offer:,.0f} samples/s ({args.factor:g}× capacity) for {args.seconds:g}s")
        assert influx.proc is not None and pl.mq.proc is not None
        with PeakRss({"mosquitto": pl.mq.proc.pid, "collector": collector.pid}) as rss:
            with harness.generators(pl.mq.url, processes=args.processes, rate=offer, seconds=args.seconds,
                                    nodes=args.nodes, samples=args.samples, tag="ovl") as gens:
                gen = gens.results()
            ended = time.monotonic()
            landed_at_end = harness.count(influx, influx.database) - before
            harness.log("overload over; waiting for the backlog to drain")
            drained = harness.wait_for(
                lambda: harness.end_markers(influx, influx.database) >= markers_before + args.processes,
                timeout=args.drain_timeout, interval=0.25)
            offered = sum(g["offered"] for g in gen)
            landed = harness.count(influx, influx.database) - before
            if drained is not None and landed < offered:  # the markers overtook some points: wait for them
                late = harness.wait_for(
                    lambda: harness.count(influx, influx.database) - before >= offered, timeout=60, interval=0.5)
                drained = late or drained
                landed = harness.count(influx, influx.database) - before
        metrics = harness.collector_metrics(influx, influx.database, 0, time.time_ns())
    res.update({
        "offered_rate": sum(g["offered_rate"] for g in gen), "offered": offered, "landed": landed,
        "lost": max(0, offered - landed), "landed_during_overload": landed_at_end,
        "backlog_at_end": offered - landed_at_end,
        "drain_seconds": (drained - ended) if drained is not None else None,
        "drain_expected_seconds": (offered - landed_at_end) / capacity,
        "peak_rss": rss.peak, "quarantined": pl.quarantined(), "broker_dropped": pl.broker_dropped(),
        "broker_extra": args.broker_extra,
        "gaps": metrics[-1]["gaps"] if metrics else None, "duplicates": metrics[-1]["duplicates"] if metrics else None,
        "publisher_max_behind_messages": max(g["max_behind_messages"] for g in gen),
    })
    return res


def report(res: dict[str, Any]) -> str:
    drain = res["drain_seconds"]
    rows = [
        ["collector capacity (saturated)", tables.rate(res["capacity"]), res["capacity_source"]],
        ["offered for the overload", tables.rate(res["offered_rate"]),
         f"{res['offered_rate'] / res['capacity']:.2f}× capacity for {res['seconds']:g} s"],
        ["points offered (acked by the broker)", tables.count(res["offered"]), ""],
        ["points landed in InfluxDB", tables.count(res["landed"]), ""],
        ["lost", tables.count(res["lost"]), f"goal 0: {tables.verdict(res['lost'] == 0)}"
         + ("; Mosquitto logged 'Outgoing messages are being dropped'" if res["broker_dropped"] else "")],
        ["backlog when the overload ended", tables.count(res["backlog_at_end"]),
         f"{res['backlog_at_end'] / res['capacity']:.1f} s of capacity"],
        ["drain time after the overload", "not drained" if drain is None else f"{drain:.1f} s",
         f"backlog / capacity = {res['drain_expected_seconds']:.1f} s"],
        ["peak RSS mosquitto / collector", f"{tables.mib(res['peak_rss']['mosquitto'])} / "
         f"{tables.mib(res['peak_rss']['collector'])}", ""],
        ["collector: sequence gaps / duplicates", f"{res['gaps']} / {res['duplicates']}",
         f"quarantined {res['quarantined']}"],
    ]
    broker = f"; broker: runlab.conf + {res['broker_extra']!r}" if res["broker_extra"] else \
        "; broker: deploy/mosquitto/runlab.conf (max_queued_bytes 4 GiB)"
    factor = res["offered_rate"] / res["capacity"]
    return tables.table(["overload", "figure", ""], rows,
                        title=f"Overload: {factor:.1f}× capacity for {res['seconds']:g} s "
                              f"({res['samples_per_message']} samples/message{broker})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="15 s of overload, shorter calibration")
    p.add_argument("--seconds", type=float, default=30.0, help="how long the overload lasts")
    p.add_argument("--factor", type=float, default=2.0, help="offered load as a multiple of capacity")
    p.add_argument("--capacity", type=float, default=0.0, help="samples/s the collector lands (skip calibration)")
    p.add_argument("--calibrate", type=float, default=10.0, help="seconds of saturation to measure capacity")
    p.add_argument("--calibrate-rate", type=float, default=150_000.0, help="offered samples/s while calibrating")
    p.add_argument("--processes", type=int, default=2, help="simulated-agent processes")
    p.add_argument("--nodes", type=int, default=20, help="simulated nodes per process")
    p.add_argument("--samples", type=int, default=100, help="samples per message")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--broker-extra", default="", help="lines appended to the broker config, e.g. 'max_queued_bytes 0'")
    p.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for an idle machine")
    p.add_argument("--collector-src", type=Path, default=harness.REPO,
                   help="directory holding the collector/ and runlab/ to run (compare another checkout)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.calibrate = 15.0, 8.0
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
