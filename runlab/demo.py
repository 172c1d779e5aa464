"""``make demo``: the whole spine on one machine — broker, InfluxDB, collector, agent — live.

Starts a private Mosquitto (with deploy/mosquitto/runlab.conf's settings) and
InfluxDB 1.x on free loopback ports under ``.demo/``, then the real collector
and agent as processes, and shows how many points of each measurement have
landed in InfluxDB, refreshed every two seconds. Everything stops at the end
(or on Ctrl-C); ``--keep`` leaves it running for you to explore until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from runlab.devservers import REPO, InfluxV1, Mosquitto

DEMO_DIR = REPO / ".demo"


def _counts(influx: InfluxV1) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, field in (("host", "cpu_percent"), ("agent", "rss_bytes"), ("collector", "messages"),
                        ("node_status", "cores")):
        rows = influx.rows(f'SELECT count("{field}") FROM "{name}"')
        out[name] = int(rows[0][1]) if rows else 0
    return out


def _start(module: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", module, "serve", "--config", str(config)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="runlab.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to show live counts (default 20)")
    ap.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    args = ap.parse_args(argv)

    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    print("runlab demo: starting a private Mosquitto and InfluxDB 1.x on loopback …")
    mq = Mosquitto(DEMO_DIR / "mosquitto")
    influx = InfluxV1(DEMO_DIR / "influxdb", database="runlab")
    with mq, influx:
        (DEMO_DIR / "collector.yaml").write_text(
            f"mqtt:\n  url: {mq.url}\ninflux:\n  url: {influx.url}\n  api: v1\n  database: runlab\n"
            f"quarantine:\n  path: {DEMO_DIR}/quarantine.jsonl\nmetrics_interval: 2s\n")
        (DEMO_DIR / "agent.yaml").write_text(
            f"node: demo-node\nmqtt:\n  url: {mq.url}\nspool:\n  path: {DEMO_DIR}/spool\n  max_bytes: 64MB\n"
            f"sampling:\n  interval: 1s\n")
        try:
            procs.append(_start("collector", DEMO_DIR / "collector.yaml", DEMO_DIR / "collector.log"))
            procs.append(_start("agent", DEMO_DIR / "agent.yaml", DEMO_DIR / "agent.log"))
            print(f"  broker    {mq.url}\n  influxdb  {influx.url} (database runlab)\n"
                  f"  collector .demo/collector.yaml  → log .demo/collector.log\n"
                  f"  agent     .demo/agent.yaml      → log .demo/agent.log\n")
            print("points landed in InfluxDB, per measurement:")
            print(f"  {'t':>4}  {'host':>6} {'agent':>6} {'collector':>9} {'node_status':>11}")
            deadline = time.monotonic() + args.seconds
            t0 = time.monotonic()
            while args.keep or time.monotonic() < deadline:
                time.sleep(2.0)
                for p in procs:
                    if p.poll() is not None:
                        print(f"error: a runlab process exited with {p.returncode}; see .demo/*.log")
                        return 1
                c = _counts(influx)
                print(f"  {time.monotonic() - t0:>3.0f}s  {c['host']:>6} {c['agent']:>6} {c['collector']:>9} "
                      f"{c['node_status']:>11}", flush=True)
        except KeyboardInterrupt:
            print()
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        c = _counts(influx)
        ok = c["host"] > 0 and c["agent"] > 0
        print(f"\n{'ok' if ok else 'FAILED'}: {c['host']} host samples and {c['agent']} agent samples "
              f"of node demo-node landed in InfluxDB.")
        print(f"""
Where to look (while a demo runs with --keep, InfluxDB answers on {influx.url}):
  curl -G {influx.url}/query --data-urlencode db=runlab \\
       --data-urlencode "q=SELECT mean(cpu_percent) FROM host WHERE time > now() - 5m GROUP BY time(10s), node"
  influx -port {influx.port} -database runlab -execute 'SELECT * FROM agent ORDER BY time DESC LIMIT 3'
Grafana: provision deploy/grafana/ against this InfluxDB (docs/grafana.md) for the fleet, experiment and
live-run dashboards. Logs and configs stay in .demo/.
""")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
