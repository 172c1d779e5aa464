"""The agent's delivery, measured: does it move a measurement, what does it write, what does it cost at idle.

Side by side in one run:

1. Cold start of the ground-truth delayed server (build/cache/workloads/hello --delay-ms 120, listening
   120 ms after exec) next to the plain one, interleaved: run locally (``runlab-agent run``) and pushed
   to ``runlab-agent serve`` over a real Mosquitto, each under strace making every fsync/fdatasync take
   0, 20 and 100 ms. Reported: each variant's median and the measured delay (median over rounds of
   delayed − plain start, which cancels the fork+exec cost that drifts with the machine's load).
2. Bytes the agent makes the kernel write to storage (``/proc/PID/io`` write_bytes) at 1 Hz, per day:
   with a healthy link (a receipting collector, played by a paho client here) and with the broker down.
3. The source agent's idle PSS and CPU at 1 Hz with the healthy link (the frozen agent: bench_packaging).

    .venv/bin/python bench/bench_delivery.py [--quick] [--out results/delivery.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import harness
import paho.mqtt.client as mqtt
import psutil
import tables
from paho.mqtt.enums import CallbackAPIVersion

from runlab import control, topics, wire
from runlab.control import ExperimentOrder
from runlab.devservers import Mosquitto, free_port

HELLO = harness.REPO / "build" / "cache" / "workloads" / "hello"
DELAY_MS = 120


def strace(delay_ms: int) -> list[str]:
    if not delay_ms:
        return []
    return ["strace", "-f", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
            "-e", f"inject=fsync,fdatasync:delay_enter={delay_ms * 1000}"]


def experiment(repeat: int) -> str:
    cmd = f'["{HELLO}", "--port", "{{port}}", "--delay-ms"'
    return (f"name: fsync-isolation\nrepeat: {repeat}\nwarmup: 2\nphases: [cold_start]\n"
            f'ready:\n  http: "http://127.0.0.1:{{port}}/"\n  timeout: 5s\nvariants:\n'
            f"  - name: sleep0\n    runtime: process\n    command: {cmd}, \"0\"]\n"
            f"  - name: sleep{DELAY_MS}\n    runtime: process\n    command: {cmd}, \"{DELAY_MS}\"]\n")


class Client:
    """A paho MQTT 5 client: records batches and events; receipts the batches when ``receipt`` is set."""

    def __init__(self, mq: Mosquitto, receipt: bool) -> None:
        self.receipt = receipt
        self.lock = threading.Lock()
        self.samples: list[wire.Sample] = []
        self.events: list[control.RunEvent] = []
        self.batches = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        done = threading.Event()
        self.client.on_connect = lambda c, *_a: c.subscribe(
            [(topics.all_nodes("samples"), 1), (topics.all_nodes("events"), 1)])
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", mq.port)
        self.client.loop_start()
        if not done.wait(10):
            raise RuntimeError("bench client could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if msg.topic.endswith("/events"):
            with self.lock:
                self.events.append(control.decode_event(payload))
            return
        b = wire.decode_batch(payload)
        with self.lock:
            self.batches += 1
            self.samples.extend(s for s in b.samples if s.name == "run_sample")
        if self.receipt:
            r = wire.Receipt(v=wire.WIRE_VERSION, node=b.node, boot=b.boot, ranges=[(b.seq, b.seq)])
            self.client.publish(topics.receipts(b.node), wire.encode(r), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def agent_config(tmp: Path, url: str, extra: str = "") -> Path:
    cfg = tmp / f"agent-{uuid.uuid4().hex[:6]}.yaml"
    cfg.write_text(f"node: bench-node\nmqtt:\n  url: {url}\nspool:\n  path: {tmp}/spool-{uuid.uuid4().hex[:6]}\n"
                   f"sampling:\n  interval: 1s\nlog_level: info\n{extra}")
    return cfg


def serve(cfg: Path, prefix: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen([*prefix, harness.PYTHON, "-m", "agent", "serve", "--config", str(cfg)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=harness.REPO)


def agent_pid(proc: subprocess.Popen[bytes]) -> int:
    def find() -> int | None:
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            cmd = p.cmdline()
            if "serve" in cmd and "agent" in cmd and "strace" not in cmd[0]:
                return p.pid
        return None
    return int(wait_for(find, 20, "the agent process"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            psutil.Process(agent_pid(proc)).terminate()
        except (psutil.Error, RuntimeError):
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def paired(starts: dict[str, list[float]]) -> float:
    return statistics.median(d - p for d, p in zip(starts[f"sleep{DELAY_MS}"], starts["sleep0"], strict=True))


def cold_start(tmp: Path, mq: Mosquitto, fsync_ms: int, repeat: int) -> dict[str, Any]:
    prefix = strace(fsync_ms)
    text = experiment(repeat)
    exp_file = tmp / "fsync-isolation.yaml"
    exp_file.write_text(text)
    out = tmp / f"local-{fsync_ms}.json"
    harness.log(f"cold start, local, fsync +{fsync_ms} ms")
    r = subprocess.run([*prefix, harness.PYTHON, "-m", "agent", "run", str(exp_file), "--json", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=harness.REPO, timeout=600)
    if r.returncode:
        raise RuntimeError(f"local run failed: {r.stderr[-1000:]}")
    local = {v["name"]: [float(x) for x in v["startup_ms"]["samples"]] for v in json.loads(out.read_text())["variants"]}

    harness.log(f"cold start, pushed, fsync +{fsync_ms} ms")
    priv, pub = control.generate_keys(tmp / f"keys-{fsync_ms}")
    cfg = agent_config(tmp, mq.url, f"trust:\n  keys: [{pub}]\npolicy:\n  runtimes: [process]\n"
                                     f"  commands: [\"{HELLO}\"]\n")
    watch = Client(mq, receipt=True)
    proc = serve(cfg, prefix, tmp / f"agent-{fsync_ms}.log")
    try:
        wait_for(lambda: "subscribed to experiments" in (tmp / f"agent-{fsync_ms}.log").read_text(), 60, "the agent")
        run = control.new_run_id()
        topic = topics.node_experiment("bench-node", run)
        order = ExperimentOrder(run=run, target=topic, file_name="fsync-isolation.yaml", yaml=text,
                                issued=control.now_ns(), expires=0)
        watch.client.publish(topic, control.sign(order, control.load_signing_key(priv)), qos=1,
                             retain=True).wait_for_publish(10)
        wait_for(lambda: any(e.run == run and e.status in ("finished", "failed") for e in watch.events), 600,
                 "the pushed run")

        def starts() -> dict[str, list[float]] | None:
            with watch.lock:
                raw = sorted((int(s.fields["i"]), s.tags["variant"], float(s.fields["value"]))  # type: ignore[arg-type]
                             for s in watch.samples if s.tags.get("run") == run
                             and s.tags.get("warmup") == "false" and s.fields.get("ok"))
            by: dict[str, list[float]] = {}
            for _i, v, ms in raw:
                by.setdefault(v, []).append(ms)
            return by if len(by) == 2 and all(len(x) == repeat for x in by.values()) else None

        fleet = wait_for(starts, 60, "every cold start of the pushed run")
        watch.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        stop(proc)
        watch.close()
    med = {m: {v: statistics.median(xs) for v, xs in s.items()} for m, s in (("local", local), ("fleet", fleet))}
    return {"fsync_ms": fsync_ms, "repeat": repeat, "medians": med,
            "delay_local": paired(local), "delay_fleet": paired(fleet)}


def io_write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def writes_and_idle(tmp: Path, mq: Mosquitto, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": seconds}
    for state in ("healthy", "broker-down"):
        harness.log(f"bytes written, {state}, {seconds:g} s")
        url = mq.url if state == "healthy" else f"mqtt://127.0.0.1:{free_port()}"
        watch = Client(mq, receipt=True) if state == "healthy" else None
        proc = serve(agent_config(tmp, url), [], tmp / f"agent-{state}.log")
        try:
            pid = agent_pid(proc)
            time.sleep(10)  # start-up (imports, first connection, runtime detection) is not the steady state
            w0, c0, t0 = io_write_bytes(pid), harness.cpu_seconds(pid), time.monotonic()
            time.sleep(seconds)
            w1, c1, t1 = io_write_bytes(pid), harness.cpu_seconds(pid), time.monotonic()
            per_day = (w1 - w0) / (t1 - t0) * 86400
            out[state] = {"write_bytes": w1 - w0, "per_day": per_day}
            if state == "healthy":
                roll = harness.smaps_rollup(pid)
                out["idle"] = {"pss": roll.get("Pss", 0), "rss": roll.get("Rss", 0),
                               "cpu_percent": 100 * (c1 - c0) / (t1 - t0)}
                out[state]["batches_seen"] = watch.batches if watch else 0
        finally:
            stop(proc)
            if watch:
                watch.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 cold starts per variant, 20 s windows")
    p.add_argument("--out", type=Path)
    p.add_argument("--wait-quiet", type=float, default=0, help="accepted for run_all.py; unused")
    p.add_argument("--fsync", default="0,20,100", help="fsync delays in ms (comma-separated)")
    args = p.parse_args(argv)
    repeat, seconds = (20, 20.0) if args.quick else (40, 60.0)
    result: dict[str, Any] = {"cold_start": []}
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as d:
        tmp = Path(d)
        with Mosquitto(tmp / "mosquitto") as mq:
            for ms in (int(x) for x in args.fsync.split(",")):
                result["cold_start"].append(cold_start(tmp, mq, ms, repeat))
            result.update(writes_and_idle(tmp, mq, seconds))
    rows = []
    for c in result["cold_start"]:
        m = c["medians"]
        rows.append([f"+{c['fsync_ms']} ms", f"{m['local']['sleep0']:.2f} / {m['fleet']['sleep0']:.2f}",
                     f"{m['local'][f'sleep{DELAY_MS}']:.2f} / {m['fleet'][f'sleep{DELAY_MS}']:.2f}",
                     f"{c['delay_local']:.2f} / {c['delay_fleet']:.2f}",
                     f"{c['delay_fleet'] - c['delay_local']:+.2f}"])
    print(tables.table(["fsync", "plain: local / pushed (ms)", f"delayed {DELAY_MS}: local / pushed",
                        "measured delay local / pushed", "pushed − local"], rows,
                       title=f"Cold start medians, {result['cold_start'][0]['repeat']} rounds"))
    h, b, idle = result["healthy"], result["broker-down"], result["idle"]
    print(tables.table(["state", f"write_bytes in {seconds:g} s", "per day"], [
        ["healthy link (receipts)", f"{h['write_bytes']:,}", f"{h['per_day'] / 1e6:.2f} MB"],
        ["broker down", f"{b['write_bytes']:,}", f"{b['per_day'] / 1e6:.2f} MB"]],
        title="Agent bytes written at 1 Hz (/proc/PID/io)"))
    print(tables.table(["PSS", "RSS", "CPU"], [[f"{idle['pss'] / 1e6:.1f} MB", f"{idle['rss'] / 1e6:.1f} MB",
                                                f"{idle['cpu_percent']:.2f} %"]],
                       title="Source agent idle at 1 Hz, healthy link"))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
