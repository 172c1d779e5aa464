"""Delivery, the agent side: measuring is never disturbed by the spool or the link.

The ground truth is the delayed server (build/cache/workloads/hello --delay-ms D: it listens D ms after exec).
The same experiment runs locally (``runlab-agent run``) and pushed to ``runlab-agent serve`` over a real
Mosquitto, both under strace making every fsync/fdatasync take 100 ms. The agent's outbox fsyncs every
batch and every run event; if any of that ran on the thread that times the workload, the pushed run's cold
starts would come out up to 100 ms late.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runlab import control, topics
from runlab.control import ExperimentOrder
from runlab.devservers import Mosquitto
from tests.conftest import REPO, need, wait_until
from tests.test_fleet_agent import Watcher

HELLO = REPO / "build" / "cache" / "workloads" / "hello"
DELAY_MS = 120
FSYNC_DELAY_US = 100_000


def strace_slow_fsync(delay_us: int = FSYNC_DELAY_US) -> list[str]:
    """The prefix that makes every fsync and fdatasync of the command and its children take ``delay_us``."""
    need("strace")
    # Both modes run at a higher CPU priority when the test may give it (CI runs as root): on a loaded
    # 2-core machine the timer's wake-ups then wait less for a core, in both modes alike.
    nice = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
    return [*nice, "strace", "-f", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
            "-e", f"inject=fsync,fdatasync:delay_enter={delay_us}"]


STALL_MS = 25.0  # a start this much over the local median was held up (one fsync here takes 100 ms)


def experiment_yaml(repeat: int) -> str:
    cmd = f'["{HELLO}", "--port", "{{port}}", "--delay-ms"'
    return f"""\
name: fsync-isolation
repeat: {repeat}
warmup: 2
phases: [cold_start]
ready:
  http: "http://127.0.0.1:{{port}}/"
  timeout: 5s
variants:
  - name: sleep0
    runtime: process
    command: {cmd}, "0"]
  - name: sleep{DELAY_MS}
    runtime: process
    command: {cmd}, "{DELAY_MS}"]
"""


class TracedAgent:
    """``runlab-agent serve`` under a command prefix (strace); signals go to the agent, not to strace."""

    def __init__(self, config: Path, log: Path, prefix: list[str]) -> None:
        self.log_path = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "agent", "serve", "--config", str(config)],
                                         stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)

    def agent_pid(self) -> int:
        def find() -> int | None:
            for c in psutil.Process(self.proc.pid).children(recursive=True):
                if "agent" in " ".join(c.cmdline()) and "serve" in c.cmdline():
                    return c.pid
            return None
        return wait_until(find, timeout=20, what="the agent process under strace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            try:
                psutil.Process(self.agent_pid()).send_signal(sig)
            except (psutil.Error, AssertionError):
                self.proc.kill()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def watcher(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto)
    yield w
    w.close()


def measured_delay(starts: dict[str, list[float]]) -> float:
    """What the timer measured for the delay: the median over rounds of (delayed start − plain start).

    The engine interleaves the two variants, so each delayed start has a plain neighbour started under the
    same machine load: subtracting it cancels the fork+exec cost, which on a shared 2-core machine drifts by
    several ms between two runs minutes apart (4.3 vs 8.5 ms median for the plain server, seen here).
    """
    pairs = zip(starts[f"sleep{DELAY_MS}"], starts["sleep0"], strict=True)
    return statistics.median(d - p for d, p in pairs)


def median_se(starts: dict[str, list[float]], resamples: int = 2000) -> float:
    """Bootstrap standard error of ``measured_delay`` (seeded: the same data gives the same answer)."""
    diffs = [d - p for d, p in zip(starts[f"sleep{DELAY_MS}"], starts["sleep0"], strict=True)]
    rng = random.Random(12)
    meds = [statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(resamples)]
    return statistics.stdev(meds)


def test_pushed_run_measures_what_a_local_run_does_while_every_fsync_takes_100ms(
        workloads: Path, mosquitto: Mosquitto, watcher: Watcher, tmp_path: Path) -> None:
    prefix = strace_slow_fsync()
    repeat = 40
    text = experiment_yaml(repeat)
    exp_file = tmp_path / "fsync-isolation.yaml"
    exp_file.write_text(text)

    # Local: the engine alone, under the same strace.
    out = tmp_path / "local.json"
    r = subprocess.run([*prefix, sys.executable, "-m", "agent", "run", str(exp_file), "--json", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    local = {v["name"]: [float(x) for x in v["startup_ms"]["samples"]] for v in json.loads(out.read_text())["variants"]}

    # Fleet: pushed, signed, to an agent that samples every second and spools everything through fsync.
    priv, pub = control.generate_keys(tmp_path / "keys")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"node: node-a\nmqtt:\n  url: {mosquitto.url}\nspool:\n  path: {tmp_path}/spool\n"
                   f"sampling:\n  interval: 1s\n  per_cpu: false\nlog_level: debug\n"
                   f"trust:\n  keys: [{pub}]\npolicy:\n  runtimes: [process]\n  commands: [\"{HELLO}\"]\n")
    agent = TracedAgent(cfg, tmp_path / "agent.log", prefix)
    try:
        wait_until(lambda: "subscribed to experiments" in agent.log(), timeout=60, what="the agent to subscribe")
        run = control.new_run_id()
        topic = topics.node_experiment("node-a", run)
        order = ExperimentOrder(run=run, target=topic, file_name="fsync-isolation.yaml", yaml=text,
                                issued=control.now_ns(), expires=0)
        key = control.load_signing_key(priv)
        watcher.publish(topic, control.sign(order, key), retain=True)
        watcher.wait_status(run, "running", timeout=60)
        # Orders keep arriving while it measures: expired ones, each refused and recorded in the run ledger
        # (an fsynced write: 100 ms here). That write once ran on the timing thread.
        spammed: list[str] = []
        stop_spam = threading.Event()

        def spam() -> None:
            while not stop_spam.wait(0.25):
                r = control.new_run_id()
                t = topics.node_experiment("node-a", r)
                old = control.now_ns() - 3600 * 10**9
                watcher.publish(t, control.sign(ExperimentOrder(run=r, target=t, file_name="x.yaml", yaml=text,
                                                                issued=old, expires=old + 60 * 10**9), key))
                spammed.append(r)

        spammer = threading.Thread(target=spam, daemon=True)
        spammer.start()
        try:
            watcher.wait_status(run, "finished", timeout=300)
        finally:
            stop_spam.set()
            spammer.join(10)
        events = watcher.events()
        end = next(i for i, e in enumerate(events) if e.run == run and e.status == "finished")
        refused = {e.run for e in events[:end] if e.status == "rejected" and e.reason.startswith("expired")}
        assert len(refused & set(spammed)) >= 10, f"{len(refused)} expired orders refused during the run"

        def pushed_starts() -> dict[str, list[float]] | None:
            raw = sorted((int(s.fields["i"]), s.tags["variant"], float(s.fields["value"]))  # type: ignore[arg-type]
                         for s in watcher.samples("run_sample")
                         if s.tags.get("run") == run and s.tags.get("figure") == "startup_ms"
                         and s.tags.get("warmup") == "false" and s.fields.get("ok"))
            by: dict[str, list[float]] = {}
            for _i, variant, ms in raw:
                by.setdefault(variant, []).append(ms)
            return by if by and all(len(v) == repeat for v in by.values()) and len(by) == 2 else None

        fleet = wait_until(pushed_starts, timeout=60, what="every cold start of the pushed run")
    finally:
        agent.stop()
        watcher.publish(topic, b"", retain=True)
    diff_local, diff_fleet = measured_delay(local), measured_delay(fleet)
    # 1 ms, unless this machine's load makes the two medians themselves less certain than that: then
    # three standard errors of their difference (measured: ~3 ms at load 10 on 2 cores). A loop blocked
    # by the outbox's fsyncs adds tens of ms (245.8 vs 118.4 ms before delivery got its own thread).
    se = math.hypot(median_se(local), median_se(fleet))
    tolerance = max(1.0, 3 * se)
    medians = {mode: {v: round(statistics.median(xs), 2) for v, xs in starts.items()}
               for mode, starts in (("local", local), ("pushed", fleet))}
    detail = (f"medians {medians}; measured delay (paired) {diff_local:.2f} ms local, {diff_fleet:.2f} ms pushed; "
              f"standard error of the difference {se:.2f} ms, tolerance {tolerance:.2f} ms")
    print(detail)
    assert abs(diff_local - DELAY_MS) <= max(2.0, tolerance), detail  # the local ground truth holds under strace
    assert abs(diff_fleet - diff_local) <= tolerance, detail
    # The medians hide a stall that hits fewer than half the starts: the refused orders' ledger writes, when
    # they ran on the timing thread, stretched 9 of 40 delayed starts by 30-250 ms and left the median alone.
    def stalled(starts: dict[str, list[float]]) -> int:
        return sum(1 for v, xs in starts.items() for x in xs if x > statistics.median(local[v]) + STALL_MS)

    assert stalled(fleet) <= stalled(local) + 2, f"{detail}; pushed starts: {fleet}"
