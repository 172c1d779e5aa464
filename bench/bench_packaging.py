"""The shipped agent (PyInstaller onedir from the .deb) against the same agent run from the venv, side by side.

Figures, for both in one run, with ratios frozen / venv:
- start → first PUBACK: process spawned → the broker has the agent's first message (its retained status,
  published with QoS 1 right after CONNACK; a subscriber sees it when the broker PUBACKs it). Warm (page
  cache hot), and with the page cache dropped before every start (``/proc/sys/vm/drop_caches``, root only);
- idle PSS / RSS (``/proc/PID/smaps_rollup``) and CPU % of one core while sampling at 1 Hz (per-CPU fields,
  as shipped) and shipping to a throwaway Mosquitto, after a warm-up;
- the .deb's size and its installed size (dpkg's Installed-Size and ``du`` of the unpacked app);
- arm64: the frozen arm64 binary's start → first PUBACK under qemu-user on this x86_64 machine, labelled
  *emulated* (it says nothing about a Raspberry Pi's real start time).
Goals (the issue's): idle PSS ≤ 25 MB, start → first PUBACK ≤ 0.5 s (frozen, amd64, warm).

Uses what ``make deb`` built (builds the amd64 one when missing); ``make deb ARCH=arm64`` adds the
emulated row. ``--baseline BINARY`` adds a third agent measured the same way in the same run, e.g. the
frozen agent of an earlier commit (before/after a change), with ratios frozen / baseline.

    .venv/bin/python bench/bench_packaging.py [--quick] [--starts 10] [--seconds 60] [--baseline BINARY]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import harness
import paho.mqtt.client as mqtt
import tables
from paho.mqtt.enums import CallbackAPIVersion

from runlab import __version__
from runlab.devservers import Mosquitto

PSS_GOAL = 25e6
START_GOAL = 0.5
DIST = harness.REPO / "dist"
ARM64_ROOT = harness.REPO / "build" / "cache" / "packaging" / "chroot-arm64"


class FirstMessage:
    """Subscribed to runlab/v1/nodes/+/#: the monotonic time each node's first message arrived."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.first: dict[str, float] = {}
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-packaging")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe("runlab/v1/nodes/+/#", 1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bench subscriber could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        node = msg.topic.split("/")[3]
        with self._cond:
            self.first.setdefault(node, time.monotonic())
            self._cond.notify_all()

    def wait(self, node: str, timeout: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: node in self.first, timeout)
            return self.first.get(node)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


class Variant:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.env = name, argv, env

    def spawn(self, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen([*self.argv, "serve", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                    cwd=harness.REPO, env=self.env)


def config(work: Path, url: str, node: str) -> Path:
    cfg = work / f"{node}.yaml"
    cfg.write_text(f"node: {node}\nmqtt:\n  url: {url}\nspool:\n  path: {work}/spool-{node}\n"
                   f"sampling:\n  interval: 1s\n  per_cpu: true\nlog_level: warning\n")
    return cfg


def start_times(v: Variant, mq: Mosquitto, sub: FirstMessage, work: Path, n: int, cold: bool) -> list[float]:
    """Seconds from spawn to the broker holding the agent's first message, n fresh starts."""
    out = []
    for _ in range(n):
        node = f"start-{uuid.uuid4().hex[:8]}"  # a fresh node: no retained message answers for it
        cfg = config(work, mq.url, node)
        if cold and not drop_caches():
            return []
        t0 = time.monotonic()
        proc = v.spawn(cfg, work / f"{v.name}.log")
        try:
            t1 = sub.wait(node, timeout=60)
        finally:
            harness.stop_process(proc, 20)
        if t1 is None:
            raise RuntimeError(f"{v.name}: no message from {node} within 60 s: "
                               f"{(work / f'{v.name}.log').read_text()[-1500:]}")
        out.append(t1 - t0)
    return out


def footprint(v: Variant, mq: Mosquitto, work: Path, warmup: float, seconds: float) -> dict[str, float]:
    cfg = config(work, mq.url, f"idle-{v.name}")
    proc = v.spawn(cfg, work / f"{v.name}.log")
    try:
        time.sleep(warmup)  # start-up and runtime detection are not steady state
        if proc.poll() is not None:
            raise RuntimeError(f"{v.name} exited: {(work / f'{v.name}.log').read_text()[-1500:]}")
        cpu0, t0 = harness.cpu_seconds(proc.pid), time.monotonic()
        samples = []
        while time.monotonic() - t0 < seconds:
            samples.append(harness.smaps_rollup(proc.pid))
            time.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - t0))))
        samples.append(harness.smaps_rollup(proc.pid))
        cpu1, t1 = harness.cpu_seconds(proc.pid), time.monotonic()
    finally:
        harness.stop_process(proc, 20)
    return {"pss": samples[-1]["Pss"], "pss_max": max(s["Pss"] for s in samples), "rss": samples[-1]["Rss"],
            "cpu_percent": 100.0 * (cpu1 - cpu0) / (t1 - t0)}


def deb_sizes(arch: str) -> dict[str, float] | None:
    deb = DIST / f"runlab-agent_{__version__}_{arch}.deb"
    if not deb.exists():
        return None
    field = subprocess.run(["dpkg-deb", "--field", str(deb), "Installed-Size"], capture_output=True, text=True,
                           check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["dpkg-deb", "-x", str(deb), d], check=True)
        du = int(subprocess.run(["du", "-sb", f"{d}/usr/lib/runlab-agent"], capture_output=True, text=True,
                                check=True).stdout.split()[0])
    return {"deb_bytes": deb.stat().st_size, "installed_kib": int(field), "app_bytes": du}


def stats(xs: list[float]) -> dict[str, float] | None:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    frozen_bin = DIST / "freeze-amd64" / "runlab-agent" / "runlab-agent"
    if not frozen_bin.exists():
        harness.log("no frozen agent yet: building the amd64 .deb (build/deb.sh agent amd64, ~1 min)")
        subprocess.run(["bash", str(harness.REPO / "build" / "deb.sh"), "agent", "amd64"], check=True,
                       stdout=subprocess.DEVNULL)
    variants = [Variant("frozen", [str(frozen_bin)]), Variant("venv", [harness.PYTHON, "-m", "agent"])]
    if args.baseline:
        variants.append(Variant("baseline", [str(Path(args.baseline).resolve())]))
    arm_bin = DIST / "freeze-arm64" / "runlab-agent" / "runlab-agent"
    arm = None
    if arm_bin.exists() and ARM64_ROOT.exists():
        arm = Variant("arm64-emulated", [str(arm_bin)], dict(os.environ, QEMU_LD_PREFIX=str(ARM64_ROOT)))
    harness.wait_quiet(args.wait_quiet)
    res: dict[str, Any] = {"version": __version__, "starts": args.starts, "seconds": args.seconds,
                           "sizes": {a: deb_sizes(a) for a in ("amd64", "arm64")},
                           "baseline_binary": args.baseline}
    work = Path(tempfile.mkdtemp(prefix="runlab-bench-packaging-"))
    try:
        with Mosquitto(work / "mosquitto") as mq:
            sub = FirstMessage(mq.url)
            try:
                for v in variants:  # one warm-up start each, not counted (fills the page cache)
                    start_times(v, mq, sub, work, 1, cold=False)
                for v in variants:
                    harness.log(f"{v.name}: {args.starts} warm starts, {args.cold} with caches dropped")
                    res[v.name] = {"warm": stats(start_times(v, mq, sub, work, args.starts, cold=False)),
                                   "cold": stats(start_times(v, mq, sub, work, args.cold, cold=True))}
                if arm is not None:
                    harness.log("arm64 under qemu-user: 3 starts")
                    res["arm64_emulated"] = stats(start_times(arm, mq, sub, work, 3, cold=False))
                for v in variants:
                    harness.log(f"{v.name}: idle footprint, {args.warmup:g} s warm-up + {args.seconds:g} s")
                    res[v.name]["idle"] = footprint(v, mq, work, args.warmup, args.seconds)
            finally:
                sub.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def report(res: dict[str, Any]) -> str:
    f, v = res["frozen"], res["venv"]
    ms = lambda s: f"{s['median'] * 1000:.0f} ms ({s['min'] * 1000:.0f}–{s['max'] * 1000:.0f})" if s else "n/a"  # noqa: E731
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else ""  # noqa: E731
    rows = [
        ["start → first PUBACK, warm (median, min–max)", ms(f["warm"]), ms(v["warm"]),
         ratio(f["warm"]["median"], v["warm"]["median"]),
         f"≤ {START_GOAL} s: {tables.verdict(f['warm']['median'] <= START_GOAL)}"],
        ["start → first PUBACK, page cache dropped", ms(f["cold"]), ms(v["cold"]),
         ratio(f["cold"] and f["cold"]["median"], v["cold"] and v["cold"]["median"]),
         "" if f["cold"] else "needs root"],
        ["idle PSS at 1 Hz (end / max)", f"{f['idle']['pss'] / 1e6:.1f} / {f['idle']['pss_max'] / 1e6:.1f} MB",
         f"{v['idle']['pss'] / 1e6:.1f} / {v['idle']['pss_max'] / 1e6:.1f} MB",
         ratio(f["idle"]["pss"], v["idle"]["pss"]),
         f"≤ 25 MB: {tables.verdict(f['idle']['pss_max'] <= PSS_GOAL)}"],
        ["idle RSS at 1 Hz", f"{f['idle']['rss'] / 1e6:.1f} MB", f"{v['idle']['rss'] / 1e6:.1f} MB",
         ratio(f["idle"]["rss"], v["idle"]["rss"]), ""],
        ["CPU, % of one core", f"{f['idle']['cpu_percent']:.2f} %", f"{v['idle']['cpu_percent']:.2f} %",
         ratio(f["idle"]["cpu_percent"], v["idle"]["cpu_percent"]), ""],
    ]
    b = res.get("baseline")
    if b:
        rows += [
            [f"baseline {res['baseline_binary']}: start warm / caches dropped", f"{ms(b['warm'])} / {ms(b['cold'])}",
             "", f"frozen / baseline {ratio(f['warm']['median'], b['warm']['median'])}", ""],
            ["baseline: idle PSS at 1 Hz (end / max)", f"{b['idle']['pss'] / 1e6:.1f} / "
             f"{b['idle']['pss_max'] / 1e6:.1f} MB", "",
             f"frozen / baseline {ratio(f['idle']['pss'], b['idle']['pss'])}",
             f"≤ 25 MB: {tables.verdict(b['idle']['pss_max'] <= PSS_GOAL)}"],
            ["baseline: idle RSS / CPU", f"{b['idle']['rss'] / 1e6:.1f} MB / {b['idle']['cpu_percent']:.2f} %", "",
             f"frozen / baseline {ratio(f['idle']['rss'], b['idle']['rss'])}", ""],
        ]
    for arch, s in res["sizes"].items():
        if s:
            rows.append([f".deb {arch}: file / Installed-Size / app dir", f"{s['deb_bytes'] / 1e6:.1f} MB / "
                         f"{s['installed_kib'] / 1024:.1f} MiB / {s['app_bytes'] / 1e6:.1f} MB", "", "", ""])
    if res.get("arm64_emulated"):
        rows.append(["arm64 start → first PUBACK (EMULATED, qemu-user)", ms(res["arm64_emulated"]), "", "",
                     "not a Pi figure"])
    return tables.table(["runlab-agent " + res["version"], "frozen (.deb)", "venv", "ratio", "goal"], rows,
                        title=f"Shipped agent vs venv agent: {res['starts']} starts each, idle window "
                              f"{res['seconds']:g} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 starts, 3 cold, a 30 s idle window")
    p.add_argument("--starts", type=int, default=10, help="warm starts per variant")
    p.add_argument("--cold", type=int, default=5, help="starts with the page cache dropped, per variant")
    p.add_argument("--seconds", type=float, default=60.0, help="idle window for PSS/RSS/CPU")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for an idle machine")
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument("--baseline", metavar="BINARY", help="also measure this frozen runlab-agent (e.g. an earlier "
                   "commit's dist/freeze-amd64/runlab-agent/runlab-agent), side by side")
    args = p.parse_args(argv)
    if args.quick:
        args.starts, args.cold, args.seconds = 5, 3, 30.0
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
