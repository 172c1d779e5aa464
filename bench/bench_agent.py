"""The agent's own footprint while it samples at 1 Hz and ships to a broker: PSS, RSS, CPU.

Runs the real ``python -m agent serve`` (per-CPU fields on, as shipped) against a
throwaway Mosquitto for ``--seconds`` (≥ 60 s) after a warm-up (start-up and
runtime detection are not steady state), reads ``/proc/PID/smaps_rollup`` every
5 s and the process's CPU time at both ends of the window. A subscriber counts
the batches that reach the broker, to show the agent was really working.
Goals: PSS ≤ 25 MB, CPU ≤ 0.5 % of one core.

    .venv/bin/python bench/bench_agent.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import harness
import paho.mqtt.client as mqtt
import tables
from paho.mqtt.enums import CallbackAPIVersion

from runlab.devservers import Mosquitto

PSS_GOAL = 25 * 10**6
CPU_GOAL = 0.5


class BatchCounter:
    """Counts messages on one node's samples topic."""

    def __init__(self, url: str, node: str) -> None:
        u = urlsplit(url)
        self.count = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-agent-counter")
        self.client.on_connect = lambda c, *_: c.subscribe(f"runlab/v1/nodes/{node}/samples", 1)
        self.client.on_message = self._on_message
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883)
        self.client.loop_start()

    def _on_message(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness.wait_quiet(args.wait_quiet)
    work = Path(tempfile.mkdtemp(prefix="runlab-bench-agent-"))
    node = "bench-agent"
    try:
        with Mosquitto(work / "mosquitto") as mq:
            cfg = work / "agent.yaml"
            cfg.write_text(f"node: {node}\nmqtt:\n  url: {mq.url}\nspool:\n  path: {work}/spool\n"
                           f"sampling:\n  interval: 1s\nlog_level: info\n")
            counter = BatchCounter(mq.url, node)
            log = open(work / "agent.log", "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen([harness.PYTHON, "-m", "agent", "serve", "--config", str(cfg)],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=harness.REPO)
            try:
                harness.log(f"agent pid {proc.pid}: warm-up {args.warmup:g}s, then {args.seconds:g}s measured")
                time.sleep(args.warmup)
                if proc.poll() is not None:
                    raise RuntimeError(f"the agent exited: {(work / 'agent.log').read_text()[-2000:]}")
                start_batches = counter.count
                cpu0, t0 = harness.cpu_seconds(proc.pid), time.monotonic()
                samples: list[dict[str, int]] = []
                while time.monotonic() - t0 < args.seconds:
                    samples.append(harness.smaps_rollup(proc.pid))
                    time.sleep(min(5.0, max(0.0, args.seconds - (time.monotonic() - t0))))
                samples.append(harness.smaps_rollup(proc.pid))
                cpu1, t1 = harness.cpu_seconds(proc.pid), time.monotonic()
                batches = counter.count - start_batches
            finally:
                harness.stop_process(proc, 15)
                log.close()
                counter.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    last = samples[-1]
    return {
        "seconds": t1 - t0, "warmup": args.warmup, "batches": batches,
        "cpu_percent": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "cpu_seconds": cpu1 - cpu0,
        "pss": last["Pss"], "pss_max": max(s["Pss"] for s in samples), "pss_first": samples[0]["Pss"],
        "pss_anon": last.get("Pss_Anon", 0), "pss_file": last.get("Pss_File", 0),
        "rss": last["Rss"], "rss_max": max(s["Rss"] for s in samples),
    }


def report(res: dict[str, Any]) -> str:
    mb = 10**6
    rows = [
        ["PSS (end of window)", f"{res['pss'] / mb:.1f} MB", f"≤ {PSS_GOAL / mb:.0f} MB: "
                                                             f"{tables.verdict(res['pss_max'] <= PSS_GOAL)}"],
        ["PSS max / at the start of the window", f"{res['pss_max'] / mb:.1f} / {res['pss_first'] / mb:.1f} MB", ""],
        ["  of which anonymous / file-backed", f"{res['pss_anon'] / mb:.1f} / {res['pss_file'] / mb:.1f} MB", ""],
        ["RSS (end) / max", f"{res['rss'] / mb:.1f} / {res['rss_max'] / mb:.1f} MB", ""],
        ["CPU, % of one core", f"{res['cpu_percent']:.2f}%",
         f"≤ {CPU_GOAL}%: {tables.verdict(res['cpu_percent'] <= CPU_GOAL)}"],
        ["batches the broker got", f"{res['batches']} in {res['seconds']:.0f} s", "1 Hz sampling, per-CPU fields"],
    ]
    return tables.table(["agent (python -m agent serve)", "figure", "goal"], rows,
                        title=f"Agent footprint over {res['seconds']:.0f} s after {res['warmup']:g} s of warm-up")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="same as the default (the goal needs ≥ 60 s)")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window (≥ 60 s)")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for an idle machine")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
