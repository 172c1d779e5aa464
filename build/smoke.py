"""Run-time smoke test of a frozen runlab app: what a freeze can break only shows when the binary runs.

    python3 build/smoke.py dist/freeze-amd64/runlab-agent/runlab-agent
    python3 build/smoke.py --qemu-prefix CHROOT dist/freeze-arm64/runlab-agent/runlab-agent   # arm64, emulated

Agent: ``--version`` (the project's version), ``--self-test`` (every collected module imports; an order is
signed and verified with PyNaCl; a child process inherits none of the bootloader's environment), ``check``
against a real Mosquitto started here on a free loopback port (skipped with --no-broker), and a short local
``run`` of every phase an experiment runs by default — cold start (repeat 2), footprint, size, and a load
phase both closed-loop (200 requests, 4 connections) and open-loop (50/s for 1 s), each after the load
generator's calibration against its floor server (a helper process: in the bundle, the frozen binary run as
a helper) — whose JSON must hold figures for every phase. The workload is the static hello server of
build/cache/workloads (built into a temporary directory when missing), else Python's http.server. About
3 s. Collector: ``--version`` under both of its names and ``--self-test``. Exits non-zero with one line
per failed step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
HELLO = REPO / "build" / "cache" / "workloads" / "hello"


def version() -> str:
    m = re.search(r'__version__ = "([^"]+)"', (REPO / "runlab" / "__init__.py").read_text())
    assert m, "runlab/__init__.py has no __version__"
    return m.group(1)


class Smoke:
    def __init__(self, binary: Path, env: dict[str, str]) -> None:
        self.binary, self.env, self.failures = binary, env, []  # type: list[str]

    def step(self, what: str, argv: list[str], expect: str | None = None, timeout: float = 120) -> str:
        t0 = time.monotonic()
        p = subprocess.run([str(self.binary), *argv], env=self.env, capture_output=True, text=True, timeout=timeout)
        out = p.stdout + p.stderr
        ok = p.returncode == 0 and (expect is None or expect in out)
        print(f"smoke: {what}: {'ok' if ok else 'FAILED'} ({time.monotonic() - t0:.2f} s)")
        if not ok:
            self.failures.append(f"{what}: exit {p.returncode}, output: {out.strip()[-600:]}")
        return out


def smoke_agent(s: Smoke, tmp: Path, broker: bool) -> None:
    s.step("--version", ["--version"], f"runlab-agent {version()}")
    s.step("--self-test", ["--self-test"], "0 failures")
    if broker:
        from runlab.devservers import Mosquitto

        with Mosquitto(tmp / "mosquitto") as mq:
            cfg = tmp / "agent.yaml"
            cfg.write_text(f"node: smoke\nmqtt:\n  url: {mq.url}\nspool:\n  path: {tmp}/spool\n")
            s.step("check (real Mosquitto)", ["check", "--config", str(cfg)], f"broker {mq.url}: ok")
    exp = tmp / "smoke.yaml"
    exp.write_text(experiment(workload(tmp)))
    out = tmp / "out.json"
    s.step("run (cold start, footprint, size, closed- and open-loop load)", ["run", str(exp), "--json", str(out)],
           "Load", timeout=300)
    if out.exists():
        s.failures += [f"run: {problem}" for problem in run_problems(json.loads(out.read_text()))]


def experiment(command: list[str]) -> str:
    """The smoke experiment: every default phase, a closed- and an open-loop load among them, in ~3 s."""
    return ("name: smoke\nrepeat: 2\nwarmup: 0\nsettle: 0s\nphases: [cold_start, footprint, size, load]\n"
            "ready:\n  http: \"http://127.0.0.1:{port}/\"\n  expect_body: hello\n  timeout: 60s\n"
            "load:\n  requests: 200\n  concurrency: 4\n  rate: 50\n  duration: 1s\n"
            f"variants:\n  - name: native\n    runtime: process\n    command: {json.dumps(command)}\n")


def hello(tmp: Path) -> Path | None:
    """The static hello server (build/workloads/hello.c): the shared build/cache's, else built into ``tmp`` (a
    clean clone: seconds, needs gcc), else None."""
    if HELLO.exists():
        return HELLO
    subprocess.run(["bash", str(REPO / "build" / "workloads" / "build.sh"), str(tmp / "workloads")], check=False,
                   env=dict(os.environ, RUNLAB_WORKLOADS="process"), stdout=subprocess.DEVNULL)
    built = tmp / "workloads" / "hello"
    return built if built.exists() else None


def workload(tmp: Path) -> list[str]:
    """The HTTP server answering "hello" on {port}: the static hello, else Python's http.server over a directory
    holding that body."""
    binary = hello(tmp)
    if binary is not None:
        return [str(binary), "--port", "{port}"]
    print(f"smoke: {HELLO} missing and not buildable here: Python's http.server is the workload instead")
    (tmp / "www").mkdir(exist_ok=True)
    (tmp / "www" / "index.html").write_text("hello\n")
    return ["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp / "www"), "{port}"]


def run_problems(result: dict[str, Any]) -> list[str]:
    """What is missing from a smoke run's JSON: every phase must have produced its figures."""
    problems = [] if result.get("status") == "finished" else [f"status {result.get('status')!r}"]
    for v in result.get("variants", []):
        name = v.get("name")
        if v.get("error"):
            problems.append(f"variant {name}: {v['error']}")
        st = v.get("startup_ms") or {}
        if len(st.get("samples", [])) != 2 or st.get("failures"):
            problems.append(f"variant {name}: expected 2 successful cold starts, got {st.get('samples')}, "
                            f"{st.get('failures')} failures")
        if not (v.get("footprint") or {}).get("pss_bytes"):
            problems.append(f"variant {name}: no idle footprint (PSS): {v.get('footprint')}")
        if not (v.get("size") or {}).get("bytes"):
            problems.append(f"variant {name}: no size: {v.get('size')}")
        loads = {lr.get("mode"): lr for lr in v.get("load") or []}
        for mode in ("closed", "open"):
            lr = loads.get(mode)
            if lr is None:
                problems.append(f"variant {name}: no {mode}-loop load result")
            elif not (lr.get("ok", 0) > 0 and lr.get("errors") == 0 and (lr.get("latency_ms") or {}).get("n", 0) > 0
                      and lr.get("generator_floor_ms", 0) > 0):
                brief = {k: lr.get(k) for k in ("requests", "ok", "errors", "achieved_rps", "generator_floor_ms")}
                problems.append(f"variant {name}: {mode}-loop load without figures: {brief}")
    if not result.get("variants"):
        problems.append("no variant results")
    return problems


def smoke_collector(s: Smoke, tmp: Path) -> None:
    link = tmp / "runlab"
    link.symlink_to(s.binary)
    s.step("--version", ["--version"], version())
    s.step("--self-test", ["--self-test"], "0 failures")
    s.binary = link
    s.step("runlab --help (operator)", ["--help"], "usage: runlab")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", type=Path)
    ap.add_argument("--qemu-prefix", metavar="ROOT", help="run a foreign-arch binary with this root's loader "
                    "(QEMU_LD_PREFIX: qemu-user finds /lib/ld-linux-aarch64.so.1 there)")
    ap.add_argument("--no-broker", action="store_true", help="skip `check` against a real Mosquitto")
    a = ap.parse_args()
    binary = a.binary.resolve()
    if not binary.is_file():
        print(f"smoke: {binary}: no such frozen binary (run build/freeze.sh first)", file=sys.stderr)
        return 2
    env = dict(os.environ, LC_ALL="C.UTF-8")
    if a.qemu_prefix:
        env["QEMU_LD_PREFIX"] = str(Path(a.qemu_prefix).resolve())
    s = Smoke(binary, env)
    with tempfile.TemporaryDirectory(prefix="runlab-smoke-") as d:
        if binary.name == "runlab-collector":
            smoke_collector(s, Path(d))
        else:
            smoke_agent(s, Path(d), broker=not a.no_broker)
    for f in s.failures:
        print(f"smoke: FAILED {f}", file=sys.stderr)
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(main())
