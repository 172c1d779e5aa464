"""Run-time smoke test of a frozen runlab app: what a freeze can break only shows when the binary runs.

    python3 build/smoke.py dist/freeze-amd64/runlab-agent/runlab-agent
    python3 build/smoke.py --qemu-prefix CHROOT dist/freeze-arm64/runlab-agent/runlab-agent   # arm64, emulated

Agent: ``--version`` (the project's version), ``--self-test`` (every collected module imports; an order is
signed and verified with PyNaCl), ``check`` against a real Mosquitto started here on a free loopback port
(skipped with --no-broker), and a short local ``run`` (process variant of build/cache/workloads/hello,
repeat 2) whose JSON must hold two successful cold starts. Collector: ``--version`` under both of its
names and ``--self-test``. Exits non-zero with one line per failed step.
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
    if not HELLO.exists():  # a clean clone: build just the static hello server (seconds)
        subprocess.run(["bash", str(REPO / "build" / "workloads" / "build.sh")], check=True,
                       env=dict(os.environ, RUNLAB_WORKLOADS="process"), stdout=subprocess.DEVNULL)
    exp = tmp / "smoke.yaml"
    exp.write_text("name: smoke\nrepeat: 2\nwarmup: 0\nsettle: 0s\n"
                   "ready:\n  http: \"http://127.0.0.1:{port}/\"\n  expect_body: hello\n  timeout: 60s\n"
                   f"variants:\n  - name: native\n    runtime: process\n"
                   f"    command: [\"{HELLO}\", \"--port\", \"{{port}}\"]\n")
    out = tmp / "out.json"
    s.step("run (process variant, repeat 2)", ["run", str(exp), "--json", str(out)], "Cold start", timeout=300)
    if out.exists():
        result = json.loads(out.read_text())
        st = result["variants"][0]["startup_ms"]
        if len(st["samples"]) != 2 or st["failures"]:
            s.failures.append(f"run: expected 2 successful cold starts in {out}, got {st['samples']}, "
                              f"{st['failures']} failures")


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
