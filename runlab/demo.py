"""``make demo``: the whole story on one machine — push a signed experiment, watch it run, read the report.

Starts a private Mosquitto (deploy/mosquitto/runlab.conf's settings) and InfluxDB 1.x on free loopback
ports under ``.demo/``, generates a signing key, and starts the real collector and an agent that trusts
that key and whose policy allows exactly the demo workloads (the hello binary, the microVM launcher, the
podman image). Then the operator CLI pushes configs/experiments/local-runtimes.yaml with ``--wait`` (live
progress per node, then the comparison table from InfluxDB), and ``runlab report`` writes the Markdown
report and a PNG plot. Everything stops at the end, or on Ctrl-C; ``--keep`` leaves it running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from runlab import control
from runlab.devservers import REPO, InfluxV1, Mosquitto

DEMO_DIR = REPO / ".demo"
EXPERIMENT = REPO / "configs" / "experiments" / "local-runtimes.yaml"
# The checkout whose build/cache holds the built workloads: this one, or — in a git worktree whose
# build/cache is a symlink — the one it points into. Podman's store refuses to be opened through another
# path than the one it was created with, so {here} and the policy use the real location.
CACHE_HOME = Path(os.path.realpath(REPO / "build" / "cache")).parent.parent
WORKLOADS = CACHE_HOME / "build" / "cache" / "workloads"
HERE = CACHE_HOME / "configs" / "experiments" if (CACHE_HOME / "configs" / "experiments").is_dir() \
    else EXPERIMENT.parent
NODE = "demo-node"


def _start(module: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        # own session: a Ctrl-C in the terminal reaches the demo, which then stops them in order
        return subprocess.Popen([sys.executable, "-m", module, "serve", "--config", str(config)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def _runlab(*args: str, stdout: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "collector.operator", "--config", str(DEMO_DIR / "runlab.yaml"),
                           *args], cwd=REPO, stdout=stdout, check=False)


def write_configs(mq: Mosquitto, influx: InfluxV1, pub: Path, key: Path) -> None:
    """collector.yaml, agent.yaml (trusting ``pub``, policy = the demo workloads) and the operator's runlab.yaml."""
    (DEMO_DIR / "collector.yaml").write_text(
        f"mqtt:\n  url: {mq.url}\ninflux:\n  url: {influx.url}\n  api: v1\n  database: runlab\n"
        f"quarantine:\n  path: {DEMO_DIR}/quarantine.jsonl\nmetrics_interval: 2s\n")
    agent = {
        "node": NODE, "groups": ["demo"], "mqtt": {"url": mq.url},
        "spool": {"path": f"{DEMO_DIR}/spool", "max_bytes": "64MB"}, "sampling": {"interval": "1s"},
        "trust": {"keys": [str(pub)]},
        # exactly what local-runtimes.yaml starts: nothing else may run on this agent
        "policy": {"runtimes": ["process", "container", "vm", "wasm"],
                   "commands": [str(WORKLOADS / "hello"), str(WORKLOADS / "microvm-run"),
                                str(WORKLOADS.parent / "runtimes" / "bin" / "wasmtime")],
                   "images": ["localhost/runlab-hello:1"]},
        # {here} of a pushed file = the repo's experiments directory, so local-runtimes.yaml runs unchanged
        "experiments": {"here": str(HERE)},
    }
    (DEMO_DIR / "agent.yaml").write_text(yaml.safe_dump(agent, sort_keys=False))
    (DEMO_DIR / "runlab.yaml").write_text(
        f"mqtt:\n  url: {mq.url}\ninflux:\n  url: {influx.url}\n  api: v1\n  database: runlab\n"
        f"signing:\n  key: {key}\n")


def quick_copy(repeat: int) -> Path:
    """local-runtimes.yaml with fewer cold starts (development only; ``make demo`` runs the real file)."""
    data = yaml.safe_load(EXPERIMENT.read_text())
    data.update(repeat=repeat, warmup=1, settle="500ms")
    if "load" in data:
        data["load"]["requests"] = 200
    out = DEMO_DIR / "local-runtimes-quick.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (the agent cancels a run cleanly: no workload left behind), SIGKILL after 30 s."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="runlab.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  make demo\n  python -m runlab.demo --quick 5\n"
                                        "  python -m runlab.demo --keep   # explore with runlab/Grafana after")
    ap.add_argument("--quick", type=int, metavar="N", help="N cold starts per variant instead of the file's 30 "
                    "(for a fast repeat while developing)")
    ap.add_argument("--keep", action="store_true", help="keep everything running after the report until Ctrl-C")
    ap.add_argument("--timeout", default="30m", help="give up waiting for the run after this long (default 30m)")
    args = ap.parse_args(argv)
    for need in ("hello", "microvm-run"):
        if not (WORKLOADS / need).exists():
            print(f"runlab demo: {WORKLOADS / need} is missing: run `make workloads` first", file=sys.stderr)
            return 2
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    print("runlab demo: a private Mosquitto and InfluxDB 1.x on loopback, a signing key, collector and agent …")
    mq = Mosquitto(DEMO_DIR / "mosquitto")
    influx = InfluxV1(DEMO_DIR / "influxdb", database="runlab")
    ok = False
    with mq, influx:
        key, pub = control.generate_keys(DEMO_DIR / "keys")
        write_configs(mq, influx, pub, key)
        exp = quick_copy(args.quick) if args.quick else EXPERIMENT
        try:
            procs.append(_start("collector", DEMO_DIR / "collector.yaml", DEMO_DIR / "collector.log"))
            procs.append(_start("agent", DEMO_DIR / "agent.yaml", DEMO_DIR / "agent.log"))
            print(f"  broker    {mq.url}\n  influxdb  {influx.url} (database runlab)\n"
                  f"  signing   .demo/keys/signing.key (agents trust .demo/keys/signing.pub)\n"
                  f"  collector .demo/collector.yaml  → log .demo/collector.log\n"
                  f"  agent     .demo/agent.yaml      → log .demo/agent.log (node {NODE}, policy: the demo "
                  f"workloads only)\n")
            rel = exp.relative_to(REPO)
            print(f"$ runlab push {rel} --to {NODE} --wait\n", flush=True)
            t0 = time.monotonic()
            pushed = _runlab("push", str(exp), "--to", NODE, "--wait", "--timeout", args.timeout)
            took = time.monotonic() - t0
            if pushed.returncode != 0:
                print(f"\nrunlab demo: the run did not finish (exit {pushed.returncode}); see .demo/agent.log")
                return 1
            print(f"\n(the run took {took:.0f} s from push to report)\n$ runlab report local-runtimes "
                  f"--format markdown --plot .demo/report.png > .demo/report.md", flush=True)
            with open(DEMO_DIR / "report.md", "wb") as md:
                rep = subprocess.run([sys.executable, "-m", "collector.operator", "--config",
                                      str(DEMO_DIR / "runlab.yaml"), "report", "local-runtimes", "--format",
                                      "markdown", "--plot", str(DEMO_DIR / "report.png")], cwd=REPO, stdout=md,
                                     check=False)
            print("$ runlab report local-runtimes --format html --out .demo/report.html", flush=True)
            page = _runlab("report", "local-runtimes", "--format", "html", "--out", str(DEMO_DIR / "report.html"))
            ok = rep.returncode == 0 and (DEMO_DIR / "report.png").exists() and page.returncode == 0
            print(f"""
{'ok' if ok else 'FAILED'}: report in .demo/report.md, plot in .demo/report.png, one page to open or share in
.demo/report.html (self-contained: plots, tables, method).
More to try (while running with --keep): RUNLAB_CONFIG=.demo/runlab.yaml runlab nodes | runs | watch
Grafana: provision deploy/grafana/ against this InfluxDB ({influx.url}, database runlab) for the fleet,
experiment comparison and live-run dashboards — see docs/grafana.md. Logs and configs stay in .demo/.""")
            if args.keep:
                print("everything keeps running; Ctrl-C to stop", flush=True)
                signal.pause() if hasattr(signal, "pause") else time.sleep(1e9)
        except KeyboardInterrupt:
            print("\nrunlab demo: interrupted; stopping everything …", file=sys.stderr)
        finally:
            stop(procs)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
