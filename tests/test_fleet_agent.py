"""Fleet control, the agent side: signed orders over a real Mosquitto, real agent processes, real workloads.

Every refused order is proven not to have executed anything: its workload would
have appended a line to a marker file first thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import load_config
from agent.policy import PolicyError, check
from runlab import control, topics, wire
from runlab.config import ConfigError
from runlab.control import CancelOrder, ExperimentOrder, RunEvent
from runlab.devservers import Mosquitto
from runlab.experiment import parse, with_workloads
from tests.conftest import REPO, RunlabProcess, Stack, wait_until

WORKLOADS = REPO / "build" / "cache" / "workloads"
HELLO = WORKLOADS / "hello"
HERE = REPO / "configs" / "experiments"  # experiments.here: local-runtimes.yaml's {here} paths work unchanged
# The podman store remembers the path it was created under: a worktree's build/cache symlink must be resolved.
STORE = (REPO / "build" / "cache" / "podman-store").resolve()
ENGINE_ARGS = ["--root", f"{STORE}/root", "--runroot", "/tmp/runlab-podman-runroot", "--tmpdir", f"{STORE}/tmp",
               "--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--events-backend=none", "--runtime", "runc"]
PODMAN = ["podman", *ENGINE_ARGS]
POLICY = f"""\
policy:
  runtimes: [process, container]
  commands: ["{WORKLOADS}/*", "/bin/sh"]
  images: ["localhost/*"]
  env: [PORT, RUNLAB_TEST_TAG]
experiments:
  here: {HERE}
"""


@pytest.fixture(autouse=True)
def _workloads_built(workloads: Path) -> None:
    """Tests here start build/cache/workloads/hello (and the podman image): built once per session."""



class Watcher:
    """A paho client that records every event, sample batch and status of every node."""

    def __init__(self, mq: Mosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:6]}")
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        subscribed = threading.Event()
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(
            [(topics.all_nodes(k), 1) for k in ("events", "samples", "status")])
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", mq.port)
        self.client.loop_start()
        assert subscribed.wait(10), "watcher could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        wait_until(self.client.is_connected, what="the watcher (re)connected")  # after a broker restart
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def events(self, run: str | None = None, node: str = "node-a") -> list[RunEvent]:
        with self.lock:
            msgs = list(self.messages)
        evs = [control.decode_event(p) for t, p, _r in msgs if t == topics.events(node)]
        return [e for e in evs if run is None or e.run == run]

    def statuses(self, run: str, node: str = "node-a") -> list[str]:
        return [e.status for e in self.events(run, node)]

    def wait_status(self, run: str, status: str, timeout: float = 60.0, node: str = "node-a") -> RunEvent:
        return wait_until(lambda: next((e for e in self.events(run, node) if e.status == status), None),
                          timeout=timeout, what=f"{status!r} for run {run} (got {self.statuses(run, node)})")

    def samples(self, name: str, node: str = "node-a") -> list[wire.Sample]:
        with self.lock:
            msgs = list(self.messages)
        return [s for t, p, _r in msgs if t == topics.samples(node) for s in wire.decode_batch(p).samples
                if s.name == name]

    def node_runs(self, node: str = "node-a") -> list[str]:
        with self.lock:
            msgs = list(self.messages)
        return [wire.decode_status(p).run for t, p, _r in msgs if t == topics.status(node) and p]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Fleet:
    """The operator's side, by hand: keys, signed pushes, cancels; and agents to push to."""

    def __init__(self, stack: Stack, tmp: Path) -> None:
        self.stack, self.tmp = stack, tmp
        self.priv, self.pub = control.generate_keys(tmp / "keys")
        self.key = control.load_signing_key(self.priv)
        other, _ = control.generate_keys(tmp / "other-keys")
        self.other_key = control.load_signing_key(other)
        self.watch = Watcher(stack.mq)
        self.tag = uuid.uuid4().hex[:10]  # in every workload's environment: finds this test's processes

    def agent(self, node: str = "node-a", policy: str = POLICY, groups: str = "[]") -> RunlabProcess:
        return self.stack.agent(node, interval="1s",
                                extra=f"groups: {groups}\ntrust:\n  keys: [{self.pub}]\n{policy}")

    def marker(self, name: str) -> Path:
        return self.tmp / f"marker-{name}"

    def experiment(self, marker: str, *, repeat: int = 2, delay: float = 0.0, name: str = "fleet-tiny") -> str:
        """A tiny experiment whose every start appends a line to the marker file, then serves HTTP."""
        sleep = f"sleep {delay}; " if delay else ""
        return f"""\
name: {name}
repeat: {repeat}
warmup: 0
phases: [cold_start]
ready:
  http: "http://127.0.0.1:{{port}}/"
  expect_body: hello
  timeout: 30s
variants:
  - name: native
    runtime: process
    env: {{RUNLAB_TEST_TAG: "{self.tag}"}}
    command: ["/bin/sh", "-c", "echo start >> {self.marker(marker)}; {sleep}exec {HELLO} --port {{port}}"]
"""

    def order(self, yaml_text: str, topic: str | None = None, *, node: str = "node-a", run: str | None = None,
              expires: int = 0) -> tuple[str, str, ExperimentOrder]:
        run = run or control.new_run_id()
        topic = topic or topics.node_experiment(node, run)
        return run, topic, ExperimentOrder(run=run, target=topic, file_name="tiny.yaml", yaml=yaml_text,
                                           issued=control.now_ns(), expires=expires)

    def push(self, yaml_text: str, **kw: Any) -> tuple[str, str, bytes]:
        run, topic, order = self.order(yaml_text, **kw)
        payload = control.sign(order, self.key)
        self.watch.publish(topic, payload, retain=True)
        return run, topic, payload

    def cancel(self, run: str, node: str = "node-a", order: CancelOrder | None = None) -> None:
        payload = control.sign(order or control.cancel_order(run, node), self.key)
        self.watch.publish(topics.control(node), payload)

    def lines(self, marker: str) -> int:
        p = self.marker(marker)
        return len(p.read_text().splitlines()) if p.exists() else 0

    def workload_processes(self) -> list[str]:
        """This test's workload processes still alive (by the tag in their environment)."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if p.environ().get("RUNLAB_TEST_TAG") == self.tag:
                    found.append(f"pid {p.pid}: {' '.join(p.info['cmdline'] or [])[:100]}")
            except (psutil.Error, OSError):
                continue
        return found


@pytest.fixture
def fleet(stack: Stack, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(stack, tmp_path)
    yield f
    f.watch.close()


def test_signed_order_runs_and_reports_events_and_samples(fleet: Fleet) -> None:
    agent = fleet.agent().start()
    run, _topic, _payload = fleet.push(fleet.experiment("ok"))
    fleet.watch.wait_status(run, "finished")
    statuses = fleet.watch.statuses(run)
    assert [s for s in statuses if s not in ("phase", "progress")] == ["accepted", "running", "finished"]
    assert statuses.index("running") < statuses.index("phase") < statuses.index("progress")
    last = [e for e in fleet.watch.events(run) if e.status == "progress"][-1]
    assert (last.phase, last.i, last.n) == ("cold starts", 2, 2)
    assert all(e.experiment == "fleet-tiny" and e.node == "node-a" for e in fleet.watch.events(run))
    assert fleet.lines("ok") == 2  # two cold starts, no warm-up

    # The durable record: run_event samples (the operator's `runlab runs`), raw starts and the summary.
    wait_until(lambda: {"accepted", "running", "finished"} <= {
        s.tags["status"] for s in fleet.watch.samples("run_event") if s.tags["run"] == run}, what="run_event samples")
    starts = [s for s in fleet.watch.samples("run_sample") if s.tags["run"] == run]
    assert [(s.tags["figure"], s.fields["ok"]) for s in starts] == [("startup_ms", True)] * 2
    summary = wait_until(lambda: [s for s in fleet.watch.samples("run_summary") if s.tags["run"] == run],
                         what="run_summary")
    assert summary[0].tags["figure"] == "startup_ms" and summary[0].fields["n"] == 2
    # The retained status named the run while it ran, and clears it afterwards.
    wait_until(lambda: fleet.watch.node_runs()[-1:] == [""] and run in fleet.watch.node_runs(),
               what="status.run set during the run, then cleared")
    assert "accepted run" in agent.log()


def tamper(payload: bytes) -> bytes:
    """One byte of the YAML changed inside the signed body, the envelope re-encoded with the old signature."""
    env = msgspec.msgpack.decode(payload, type=control.Signed)
    order = msgspec.msgpack.decode(env.body, type=ExperimentOrder)
    body = msgspec.msgpack.encode(msgspec.structs.replace(order, yaml=order.yaml.replace("repeat: 2", "repeat: 3")))
    assert len(body) == len(env.body) and body != env.body
    return msgspec.msgpack.encode(msgspec.structs.replace(env, body=body))


def test_unsigned_forged_tampered_retargeted_expired_and_replayed_orders_never_execute(fleet: Fleet) -> None:
    agent = fleet.agent().start()
    exp = fleet.experiment
    cases: list[tuple[str, str, bytes, str]] = []  # (marker, topic, payload, expected reason)

    run, topic, _ = fleet.order(exp("unsigned"))
    cases.append(("unsigned", topic, exp("unsigned").encode(), "unsigned or malformed order"))
    run, topic, order = fleet.order(exp("forged"))
    cases.append(("forged", topic, control.sign(order, fleet.other_key), "untrusted key"))
    run, topic, order = fleet.order(exp("tampered"))
    cases.append(("tampered", topic, tamper(control.sign(order, fleet.key)), "bad signature"))
    run, _, order = fleet.order(exp("retargeted"), node="node-b")  # signed for node-b, copied to node-a
    cases.append(("retargeted", topics.node_experiment("node-a", run), control.sign(order, fleet.key),
                  f"re-targeted: signed for {topics.node_experiment('node-b', run)}"))
    run, topic, order = fleet.order(exp("expired"), expires=control.now_ns() - 10**9)
    cases.append(("expired", topic, control.sign(order, fleet.key), "expired at"))
    for _marker, topic, payload, _reason in cases:
        fleet.watch.publish(topic, payload, retain=True)
    for marker, topic, _payload, reason in cases:
        label = topic.rsplit("/", 1)[-1]
        ev = fleet.watch.wait_status(label, "rejected")
        assert reason in ev.reason, (marker, ev.reason)
        assert fleet.watch.statuses(label) == ["rejected"], marker
    assert "rejected run" in agent.log()

    # Replay: a genuine order runs once; the same payload again is refused, also after a restart.
    run, topic, payload = fleet.push(exp("replayed", repeat=1))
    fleet.watch.wait_status(run, "finished")
    assert fleet.lines("replayed") == 1
    fleet.watch.publish(topic, payload, retain=True)
    ev = fleet.watch.wait_status(run, "rejected")
    assert ev.reason.startswith(f"replay: run {run} was already finished here")
    agent.stop()
    agent.start()  # the retained order comes back on subscribe
    wait_until(lambda: fleet.watch.statuses(run).count("rejected") == 2, what="the replay refused after restart")
    fleet.watch.publish(topic, payload, retain=True)  # once per process: no third rejection
    barrier, btopic, _ = fleet.push(exp("barrier", repeat=1))
    fleet.watch.wait_status(barrier, "finished")
    assert fleet.watch.statuses(run).count("rejected") == 2 and fleet.watch.statuses(run).count("accepted") == 1
    assert fleet.lines("replayed") == 1
    for marker, *_ in cases:
        assert not fleet.marker(marker).exists(), f"the {marker} order executed something"
    for t in (topic, btopic, *(c[1] for c in cases)):
        fleet.watch.publish(t, b"", retain=True)


POLICY_CASES = {
    "runtime": ("  - name: wasmy\n    runtime: wasm\n    command: [\"{W}/hello\", \"--port\", \"{{port}}\"]\n",
                "variants[0].runtime wasm is not in policy.runtimes (process, container)"),
    "command": ("  - name: envy\n    runtime: process\n    command: [\"/usr/bin/env\", \"{W}/hello\"]\n",
                "variants[0].command[0] /usr/bin/env is outside policy.commands"),
    # starts with the allowed prefix, so only normalising shows where it leads; enough ".." to
    # reach / from any checkout depth (CI's differs from a developer's)
    "escape": ("  - name: dots\n    runtime: process\n"
               "    command: [\"{W}/" + "../" * 40 + "bin/true\"]\n",
               "variants[0].command[0] /bin/true is outside policy.commands"),
    "image": ("  - name: alpine\n    runtime: container\n    image: docker.io/library/alpine:3\n",
              "variants[0].image docker.io/library/alpine:3 is outside policy.images (localhost/*)"),
    "probe": ("  - name: probed\n    runtime: process\n    command: [\"{W}/hello\", \"--port\", \"{{port}}\"]\n"
              "    ready:\n      command: [\"/usr/bin/touch\", \"/tmp/x\"]\n",
              "variants[0].ready.command[0] /usr/bin/touch is outside policy.commands"),
}


def test_policy_refuses_runtimes_commands_and_images_outside_it(fleet: Fleet) -> None:
    fleet.agent().start()
    runs = {}
    for case, (variant, _reason) in POLICY_CASES.items():
        text = (f"name: policy-{case}\nrepeat: 1\nwarmup: 0\nphases: [cold_start]\n"
                f"ready:\n  http: \"http://127.0.0.1:{{port}}/\"\nvariants:\n" + variant.format(W=WORKLOADS))
        runs[case] = fleet.push(text)
    invalid = fleet.push("name: bad\nready: {tcp: '127.0.0.1:{port}'}\nvariants:\n  - name: x\n    runtime: process\n")
    for case, (_variant, reason) in POLICY_CASES.items():
        run, topic, _ = runs[case]
        ev = fleet.watch.wait_status(run, "rejected")
        assert ev.reason.startswith(f"policy: {reason}"), ev.reason
        assert ev.experiment == f"policy-{case}"
        fleet.watch.publish(topic, b"", retain=True)
    ev = fleet.watch.wait_status(invalid[0], "rejected")
    assert ev.reason == "invalid experiment: tiny.yaml: variants[0].command: required key is missing", ev.reason
    fleet.watch.publish(invalid[1], b"", retain=True)


def test_pushed_while_offline_runs_once_also_after_a_restart(fleet: Fleet) -> None:
    text = fleet.experiment("offline", repeat=1)
    run, topic, _ = fleet.push(text)  # retained; no agent yet
    # No experiments.here: {here} is a per-run directory holding the pushed file.
    agent = fleet.agent(policy=POLICY.split("experiments:")[0]).start()
    fleet.watch.wait_status(run, "finished")
    assert fleet.lines("offline") == 1
    # Stored as data under the agent's own name (the order's file name is for display), mode 0600.
    stored = fleet.tmp / "spool-node-a" / "runs" / run / "experiment.yaml"
    assert stored.read_text() == text and stored.stat().st_mode & 0o777 == 0o600
    assert not (fleet.tmp / "spool-node-a" / "runs" / run / "tiny.yaml").exists()
    agent.stop()
    agent.start()
    fleet.watch.wait_status(run, "rejected")  # the retained order came back, and was refused as a replay
    assert fleet.watch.statuses(run).count("accepted") == 1 and fleet.lines("offline") == 1
    fleet.watch.publish(topic, b"", retain=True)


def test_subscriptions_are_renewed_when_the_broker_comes_back(fleet: Fleet, stack: Stack) -> None:
    agent = fleet.agent().start()
    wait_until(lambda: agent.log().count("subscribed to experiments") == 1, what="the first subscription")
    stack.mq.stop()
    stack.mq.start()  # a fresh broker: no session, no retained message survives
    wait_until(lambda: agent.log().count("subscribed to experiments") == 2, timeout=60, what="a new subscription")
    # The agent sees the drop at once and may be back before the test's own client reconnects (≥ 1 s).
    wait_until(fleet.watch.client.is_connected, timeout=30, what="the test's client to reconnect")
    run, topic, _ = fleet.push(fleet.experiment("reconnect", repeat=1))
    fleet.watch.wait_status(run, "finished", timeout=60)
    assert fleet.lines("reconnect") == 1
    fleet.watch.publish(topic, b"", retain=True)


def test_group_and_all_orders_reach_the_agent(fleet: Fleet) -> None:
    fleet.agent(groups="[edge]").start()
    pushed = [fleet.push(fleet.experiment(f"group-{g}", repeat=1), topic=topics.group_experiment(g, run), run=run)
              for g, run in (("edge", control.new_run_id()), ("all", control.new_run_id()))]
    other = fleet.push(fleet.experiment("group-other", repeat=1),
                       topic=topics.group_experiment("other", (r := control.new_run_id())), run=r)
    for run, _t, _p in pushed:
        fleet.watch.wait_status(run, "finished")
    assert fleet.lines("group-edge") == 1 and fleet.lines("group-all") == 1
    assert fleet.watch.statuses(other[0]) == [] and fleet.lines("group-other") == 0
    for _r, t, _p in [*pushed, other]:
        fleet.watch.publish(t, b"", retain=True)


def test_queue_one_at_a_time_withdraw_and_cancel_a_waiting_run(fleet: Fleet) -> None:
    agent = fleet.agent().start()
    first, t1, _ = fleet.push(fleet.experiment("first", repeat=2, delay=1.5))
    fleet.watch.wait_status(first, "running")
    second, t2, _ = fleet.push(fleet.experiment("second", repeat=1))
    third, t3, _ = fleet.push(fleet.experiment("third", repeat=1))
    assert fleet.watch.wait_status(second, "queued").queue == 1
    assert fleet.watch.wait_status(third, "queued").queue == 2
    fourth, t4, _ = fleet.push(fleet.experiment("fourth", repeat=1))
    fleet.watch.wait_status(fourth, "queued")
    fleet.watch.publish(t3, b"", retain=True)  # withdraw the third while it waits
    fleet.watch.wait_status(third, "withdrawn")
    wait_until(lambda: [e.queue for e in fleet.watch.events(fourth) if e.status == "queued"] == [3, 2],
               what="the fourth run moving up to place 2")
    # An unsigned cancel is ignored; a signed one drops a waiting run.
    unsigned = msgspec.msgpack.encode(control.cancel_order(second, "node-a"))
    fleet.watch.publish(topics.control("node-a"), unsigned)
    # A cancel is bound to its node's control topic and expires: a copy of node-b's, or an old one, does nothing.
    b = control.cancel_order(fourth, "node-b")
    fleet.cancel(fourth, order=msgspec.structs.replace(b, node="node-a"))
    fleet.cancel(fourth, order=msgspec.structs.replace(control.cancel_order(fourth, "node-a"), expires=1))
    wait_until(lambda: "signed for runlab/v1/nodes/node-b/control (this is node-a)" in agent.log()
               and f"ignored a cancel order for run {fourth}: expired at 1970" in agent.log(),
               what="both cancels ignored")
    assert "cancelled" not in fleet.watch.statuses(fourth)
    fleet.cancel(fourth)
    assert fleet.watch.wait_status(fourth, "cancelled").reason == "cancelled before it started"
    fifth, t5, _ = fleet.push(fleet.experiment("fifth", repeat=1))
    assert fleet.watch.wait_status(fifth, "queued").queue == 2
    fleet.watch.wait_status(second, "finished")
    fleet.watch.wait_status(fifth, "finished")
    assert [e.queue for e in fleet.watch.events(fifth) if e.status == "queued"] == [2, 1]  # moved up when second ran
    assert [e.queue for e in fleet.watch.events(second) if e.status == "queued"] == [1]  # nobody left before it
    evs = fleet.watch.events()
    order = [(e.run, e.status) for e in evs if e.status in ("running", "finished")]
    assert order.index((first, "finished")) < order.index((second, "running"))
    assert "running" not in fleet.watch.statuses(third) and fleet.lines("third") == 0
    assert "running" not in fleet.watch.statuses(fourth) and fleet.lines("fourth") == 0
    assert fleet.lines("first") == 2 and fleet.lines("second") == 1 and fleet.lines("fifth") == 1
    assert "ignored a control message: unsigned or malformed order" in agent.log()
    for t in (t1, t2, t4, t5):
        fleet.watch.publish(t, b"", retain=True)


def test_a_full_queue_rejects_more(fleet: Fleet) -> None:
    fleet.agent(policy=POLICY + "  queue_max: 1\n").start()
    busy, t1, _ = fleet.push(fleet.experiment("busy", repeat=500, delay=0.2))
    fleet.watch.wait_status(busy, "running")
    waiting, t2, _ = fleet.push(fleet.experiment("waiting", repeat=1))
    fleet.watch.wait_status(waiting, "queued")
    extra, t3, _ = fleet.push(fleet.experiment("extra", repeat=1))
    ev = fleet.watch.wait_status(extra, "rejected")
    assert ev.reason == "queue full: 1 runs waiting (experiments.queue_max)"
    fleet.cancel(busy)
    fleet.watch.wait_status(waiting, "finished")
    assert fleet.lines("extra") == 0 and fleet.watch.statuses(busy)[-1] == "cancelled"
    for t in (t1, t2, t3):
        fleet.watch.publish(t, b"", retain=True)


def cancel_experiment(fleet: Fleet) -> str:
    """local-runtimes.yaml's process (same {here} path, behind a pause) and podman variants, many starts."""
    return f"""\
name: fleet-cancel
repeat: 200
warmup: 0
phases: [cold_start]
ready:
  http: "http://127.0.0.1:{{port}}/"
  expect_body: hello
  timeout: 60s
variants:
  - name: native
    runtime: process
    env: {{RUNLAB_TEST_TAG: "{fleet.tag}"}}
    # Alive for half a second before it serves: the test can see it and cancel then.
    command: ["/bin/sh", "-c", "sleep 0.5; exec {{here}}/../../build/cache/workloads/hello --port {{port}}"]
  - name: container
    runtime: container
    engine: podman
    engine_args: {json.dumps(ENGINE_ARGS)}
    run_args: ["--network=host", "--log-driver=none", "--no-hosts", "--dns=none"]
    image: localhost/runlab-hello:1
    command: ["/hello", "--port", "{{port}}"]
"""


def containers(prefix: str = "runlab-fleet-cancel-") -> list[str]:
    r = subprocess.run([*PODMAN, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, timeout=60)
    return [n for n in r.stdout.split() if n.startswith(prefix)]


@pytest.mark.parametrize("during", ["process", "container"])
def test_cancel_mid_run_leaves_nothing_running(fleet: Fleet, during: str) -> None:
    if not (STORE / "root").exists():
        pytest.fail("the podman image is not built: run `make workloads`")
    agent = fleet.agent().start()
    run, topic, _ = fleet.push(cancel_experiment(fleet))
    fleet.watch.wait_status(run, "running")
    # Cancel while an instance of the wanted kind is alive (the starts interleave: native, container, ...).
    live = fleet.workload_processes if during == "process" else containers
    wait_until(live, timeout=120, interval=0.02, what=f"a live {during} instance")
    fleet.cancel(run)
    ev = fleet.watch.wait_status(run, "cancelled")
    assert ev.experiment == "fleet-cancel"
    assert fleet.workload_processes() == [] and containers() == []
    assert "finished" not in fleet.watch.statuses(run)
    assert agent.alive
    fleet.watch.publish(topic, b"", retain=True)


def test_sigterm_during_a_run_fails_it_and_stops_the_workload(fleet: Fleet) -> None:
    agent = fleet.agent().start()
    run, topic, _ = fleet.push(fleet.experiment("sigterm", repeat=500, delay=0.2))
    wait_until(lambda: fleet.lines("sigterm") >= 2, what="the run under way")
    t0 = time.monotonic()
    agent.stop()  # SIGTERM, waits for the exit
    took = time.monotonic() - t0
    assert fleet.workload_processes() == []
    ev = fleet.watch.wait_status(run, "failed", timeout=10)
    assert ev.reason == "agent stopped"
    assert took < 15, f"the agent took {took:.1f}s to stop"
    print(f"agent stopped mid-run in {took:.2f}s")
    agent.start()  # the failed run is a replay now, never run again
    fleet.watch.wait_status(run, "rejected")
    assert "running" not in [e.status for e in fleet.watch.events(run)[-1:]]
    fleet.watch.publish(topic, b"", retain=True)


def test_sigterm_while_a_container_is_up_leaves_no_container(fleet: Fleet) -> None:
    agent = fleet.agent().start()
    run, topic, _ = fleet.push(cancel_experiment(fleet))
    wait_until(containers, timeout=120, interval=0.02, what="a live container")
    t0 = time.monotonic()
    agent.stop()
    took = time.monotonic() - t0
    print(f"agent stopped with a container up in {took:.2f}s")
    assert containers() == [] and fleet.workload_processes() == []
    assert fleet.watch.wait_status(run, "failed", timeout=10).reason == "agent stopped"
    assert took < 15, f"the agent took {took:.1f}s to stop"
    fleet.watch.publish(topic, b"", retain=True)


def test_waiting_runs_survive_an_agent_restart(fleet: Fleet) -> None:
    agent = fleet.agent().start()
    first, t1, _ = fleet.push(fleet.experiment("busy", repeat=500, delay=0.2))
    fleet.watch.wait_status(first, "running")
    second, t2, _ = fleet.push(fleet.experiment("waiting", repeat=1))
    fleet.watch.wait_status(second, "queued")
    expires = control.now_ns() + 3 * 10**9
    short, t3, _ = fleet.push(fleet.experiment("short-lived", repeat=1), expires=expires)
    fleet.watch.wait_status(short, "queued")
    agent.stop()
    while control.now_ns() <= expires:  # the clock, not a process, is what is waited for here
        time.sleep(0.2)
    agent.start()
    # A restored run is checked again: one that expired while the agent was down never runs.
    assert fleet.watch.wait_status(short, "rejected").reason.startswith("expired at")
    fleet.watch.wait_status(second, "finished")
    assert fleet.lines("short-lived") == 0 and "running" not in fleet.watch.statuses(short)
    assert fleet.watch.statuses(second).count("accepted") == 1 and fleet.lines("waiting") == 1
    assert [e.reason for e in fleet.watch.events(first) if e.status == "failed"] == ["agent stopped"]
    for t in (t1, t2, t3):
        fleet.watch.publish(t, b"", retain=True)


def test_the_side_doors_of_issue_13_are_rejected_and_run_nothing(fleet: Fleet) -> None:
    """Signed by the trusted key, against a policy allowing process, container, systemd and the workloads: an
    allowed bash script with BASH_ENV at the pushed file, a host-root volume spelled -v/:/host, a unit property
    that starts a program. Each is rejected naming key path and rule; with BASH_ENV allowed by its exact name the
    same order does run the pushed file (the corpus is real)."""
    scripts = fleet.tmp / "scripts"
    scripts.mkdir()
    serve = scripts / "serve.sh"
    serve.write_text(f"#!/bin/bash\nexec {HELLO} --port \"$1\"\n")
    serve.chmod(0o755)
    commands = f'["{WORKLOADS}/*", "{scripts}/*", "/usr/bin/systemd-run", "/usr/bin/systemctl"]'
    pol = f"policy:\n  runtimes: [process, container, systemd]\n  commands: {commands}\n  images: ['localhost/*']\n"
    marker = fleet.marker("side-door")

    def order(name: str, variant: str) -> str:
        # The pushed file is also a bash script: sourced by bash, the description's command substitution runs.
        return (f"name: {name}\ndescription: \"$(echo ran >> {marker})\"\nrepeat: 1\nwarmup: 0\n"
                f"phases: [cold_start]\nready:\n  http: \"http://127.0.0.1:{{port}}/\"\nvariants:\n{variant}")

    bash = (f"  - name: script\n    runtime: process\n    env: {{BASH_ENV: \"{{here}}/experiment.yaml\"}}\n"
            f"    command: [\"{serve}\", \"{{port}}\"]\n")
    volume = ("  - name: rooted\n    runtime: container\n    image: localhost/runlab-hello:1\n"
              "    run_args: [\"-v/:/host\"]\n")
    unit = (f"  - name: unit\n    runtime: systemd\n    command: [\"{HELLO}\"]\n"
            f"    systemd_run: /usr/bin/systemd-run\n    systemctl: /usr/bin/systemctl\n"
            f"    properties: {{ExecStartPre: \"/bin/sh -c 'echo ran >> {marker}'\"}}\n")
    fleet.agent(policy=pol).start()
    cases = {"bash-env": (bash, "variants[0].env.BASH_ENV is a start-up hook"),
             "volume": (volume, "variants[0].run_args[0] --volume=/:/host is not in policy.container_flags"),
             "unit": (unit, "variants[0].properties.ExecStartPre is not in policy.systemd_properties")}
    pushed = {case: fleet.push(order(f"door-{case}", variant)) for case, (variant, _r) in cases.items()}
    for case, (_variant, reason) in cases.items():
        ev = fleet.watch.wait_status(pushed[case][0], "rejected")
        assert ev.reason.startswith(f"policy: {reason}"), ev.reason
    # The script itself is allowed: without the hook the same order runs, and runs nothing else.
    plain, tp, _ = fleet.push(order("door-plain", bash.replace('env: {BASH_ENV: "{here}/experiment.yaml"}',
                                                                 "env: {}")))
    fleet.watch.wait_status(plain, "finished")
    assert not marker.exists()
    # The same side door with BASH_ENV allowed by its exact name: bash runs the pushed file.
    fleet.agent("node-b", policy=pol + "  env: [PORT, BASH_ENV]\n").start()
    opened, tb, _ = fleet.push(order("door-opened", bash), node="node-b")
    fleet.watch.wait_status(opened, "finished", node="node-b")
    assert marker.read_text().count("ran") >= 1
    for _run, t, _p in [*pushed.values(), (plain, tp, b""), (opened, tb, b"")]:
        fleet.watch.publish(t, b"", retain=True)


# ---- config and policy, pure logic -----------------------------------------------------------------------------
def write(tmp: Path, text: str) -> str:
    p = tmp / "agent.yaml"
    p.write_text(f"node: n1\nspool:\n  path: {tmp}/spool\n{text}")
    return str(p)


@pytest.mark.parametrize("text, expected", [
    ("trust:\n  keys: [/nonexistent/op.pub]\n", "trust.keys[0]: /nonexistent/op.pub: cannot read key"),
    ("trust:\n  keys: [{bad}]\n", "trust.keys[0]: {bad}: expected a PEM block '-----BEGIN PUBLIC KEY-----'"),
    ("trust:\n  keys: [{priv}]\n", "trust.keys[0]: {priv}: expected a PEM block '-----BEGIN PUBLIC KEY-----'"),
    ("policy:\n  commands: [hello]\n", "policy.commands[0]: expected an absolute path glob"),
    ("policy:\n  runtimes: [a/b]\n", "policy.runtimes[0]: expected a runtime name"),
    ("policy:\n  images: [1]\n", "policy.images[0]: expected str, got int"),
    ("experiments:\n  here: /nonexistent/dir\n", "experiments.here: expected an existing directory"),
    ("experiments:\n  queue_max: 0\n", "experiments.queue_max: expected at least 1, got 0"),
    ("trust:\n  key: x\n", "trust.key: unknown key"),
])
def test_bad_fleet_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    priv, _pub = control.generate_keys(tmp_path / "k")
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    path = write(tmp_path, text.format(bad=bad, priv=priv))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value).replace("`", "")
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert expected.format(bad=bad, priv=priv).replace("`", "") in msg, msg
    cli = subprocess.run([sys.executable, "-m", "agent", "check", "--config", path], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "Traceback" not in cli.stderr


def test_default_policy_allows_nothing_and_paths_are_normalised(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    exp = parse({"name": "e", "ready": {"tcp": "127.0.0.1:{port}"},
                 "variants": [{"name": "v", "runtime": "process", "command": ["/bin/true"]}]}, "e.yaml")
    with pytest.raises(PolicyError, match=r"runtime process is not in policy.runtimes \(empty"):
        check(exp, cfg.policy, "/x")
    cfg = load_config(write(tmp_path, "policy:\n  runtimes: [process]\n  commands: [/opt/w/*]\n"))
    ok = parse({"name": "e", "ready": {"tcp": "127.0.0.1:{port}"},
                "variants": [{"name": "v", "runtime": "process", "command": ["{here}/w/a/../b", "{port}"]}]}, "e")
    check(ok, cfg.policy, "/opt")
    for command, env, reason in [(["{here}/w/../../bin/sh"], {}, "/bin/sh is outside"),
                                 (["sh"], {"PATH": "/bin"}, "/bin/sh is outside"),
                                 (["no-such-program-here"], {}, "is not on the PATH"),
                                 (["/opt/w/a"], {"LD_PRELOAD": "/tmp/x.so"}, "env.LD_PRELOAD is a start-up hook")]:
        bad = parse({"name": "e", "ready": {"tcp": "127.0.0.1:{port}"},
                     "variants": [{"name": "v", "runtime": "process", "command": command, "env": env}]}, "e")
        with pytest.raises(PolicyError, match=reason):
            check(bad, cfg.policy, "/opt")


def test_idle_agent_does_not_load_pynacl_pyyaml_or_the_engine(tmp_path: Path) -> None:
    _priv, pub = control.generate_keys(tmp_path / "k")
    path = write(tmp_path, f"trust:\n  keys: [{pub}]\n")
    code = ("import sys, asyncio; from agent.config import load_config; from agent.service import Agent\n"
            f"async def main():\n    a = Agent(load_config({path!r})); a.fleet.start(); await asyncio.sleep(0)\n"
            "asyncio.run(main())\n"
            "print(sorted(m for m in ('nacl', 'yaml', 'agent.engine', 'agent.runtimes.base', 'agent.policy',\n"
            "                        'runlab.experiment') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"



def test_container_flags_that_hand_over_the_host_are_refused(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"policy:\n  runtimes: [process, container, vm, wasm]\n"
                                      f"  commands: ['{WORKLOADS}/*', '{WORKLOADS.parent}/runtimes/bin/*']\n"
                                      "  images: ['localhost/*']\n"))
    # The shipped example passes as it is (with {here} = its directory, {workloads} as experiments.workloads says).
    local = parse(__import__("yaml").safe_load((HERE / "local-runtimes.yaml").read_text()), "local-runtimes.yaml")
    check(with_workloads(local, str(WORKLOADS)), cfg.policy, str(HERE))
    with pytest.raises(PolicyError, match=r"\{workloads\}/hello"):  # unresolved, it matches no allowed path
        check(local, cfg.policy, str(HERE))

    def container(**kw: Any) -> Any:
        return parse({"name": "e", "ready": {"tcp": "127.0.0.1:{port}"},
                      "variants": [{"name": "c", "runtime": "container", "image": "localhost/x:1", **kw}]}, "e")

    for kw, reason in [({"run_args": ["--privileged"]}, "run_args.0. --privileged is not in policy.container_flags"),
                       ({"run_args": ["-v", "/:/host"]}, "run_args.0. --volume=/:/host is not in"),
                       ({"run_args": ["--mount=type=bind,src=/,dst=/h"]}, "run_args.0. --mount=type=bind"),
                       ({"run_args": ["--pid=host"]}, "run_args.0. --pid=host is not in"),
                       ({"engine_args": ["--runtime", "/tmp/evil"]},
                        "engine_args.0. --runtime /tmp/evil is outside policy.commands")]:
        with pytest.raises(PolicyError, match=reason):
            check(container(**kw), cfg.policy, "/x")
    check(container(run_args=["--network=host", "--pid=private"], engine_args=["--runtime", "runc"]), cfg.policy,
          "/x")


def test_policy_covers_every_runtime_and_the_commands_phases_run(tmp_path: Path) -> None:
    """systemd, kubernetes, serverless, VM presets, OCI runtimes and the commands phases run: all vouched for."""
    manifest = tmp_path / "m" / "app.yaml"
    manifest.parent.mkdir()
    pod = ("kind: Pod\nspec:\n  securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}\n"
           "  containers:\n  - name: a\n    image: {image}\n    securityContext:\n"
           "      allowPrivilegeEscalation: false\n      capabilities: {{drop: [ALL]}}\n")
    manifest.write_text(pod.format(image="localhost/hello:1"))
    cfg = load_config(write(tmp_path, "policy:\n  runtimes: [process, container, vm, systemd, kubernetes, serverless]\n"
                                      f"  commands: ['/opt/w/*', '/usr/bin/systemd-run', '/usr/bin/systemctl', "
                                      f"'/usr/bin/kubectl', '{tmp_path}/m/*']\n  images: ['localhost/*']\n"))
    ready = {"tcp": "127.0.0.1:{port}"}

    def verdict(variant: dict[str, object], **top: object) -> str:
        exp = parse({"name": "e", "ready": ready, "variants": [variant], **top}, "e.yaml")
        try:
            check(exp, cfg.policy, str(tmp_path))
        except PolicyError as e:
            return str(e)
        return "ok"

    systemd = {"name": "s", "runtime": "systemd", "command": ["/opt/w/hello"], "systemd_run": "/usr/bin/systemd-run",
               "systemctl": "/usr/bin/systemctl"}
    assert verdict(systemd) == "ok"
    assert "command[0] /bin/sh is outside policy.commands" in verdict({**systemd, "command": ["/bin/sh"]})
    kube = {"name": "k", "runtime": "kubernetes", "manifest": "{here}/m/app.yaml", "kubectl": "/usr/bin/kubectl"}
    assert verdict(kube) == "ok"
    manifest.write_text(pod.format(image="docker.io/evil:1"))
    assert "manifest image docker.io/evil:1 is outside policy.images" in verdict(kube)
    assert "names no image" in verdict({**kube, "manifest": "{here}/m/missing.yaml"})
    fn = {"name": "f", "runtime": "serverless", "invoke": "http://127.0.0.1:8080/function/x",
          "cold": {"command": ["/usr/bin/faas-cli", "scale"]}}
    assert "cold.command[0] /usr/bin/faas-cli is outside" in verdict(fn)
    fc = {"name": "v", "runtime": "vm", "firecracker": {"binary": "/usr/local/bin/firecracker", "kernel": "/opt/w/k"}}
    assert "firecracker.binary /usr/local/bin/firecracker is outside" in verdict(fc)
    ctr = {"name": "c", "runtime": "container", "image": "localhost/hello:1", "oci_runtime": "/tmp/evil-runtime"}
    assert "oci_runtime /tmp/evil-runtime is outside" in verdict(ctr)
    assert verdict({**ctr, "oci_runtime": "kata"}) == "ok"
    # A redeploy's v2 program is checked too, not only v1's.
    proc = {"name": "p", "runtime": "process", "command": ["/opt/{version}/hello", "--port", "{port}"]}
    assert "/opt/w2/hello is outside" in verdict(proc, redeploy={"v1": "w", "v2": "w2"}, phases=["redeploy"],
                                                 ready={"http": "http://127.0.0.1:{port}/"})
    # Commands that phases run themselves.
    hello = {"name": "p", "runtime": "process", "command": ["/opt/w/hello", "--port", "{port}"]}
    assert "benchmark.command[0] /usr/bin/pgbench is outside" in verdict(
        hello, benchmark={"command": ["/usr/bin/pgbench", "-p", "{port}"], "score": "tps = ([0-9.]+)"},
        phases=["benchmark"])
    assert "up[0] /usr/bin/podman-compose is outside" in verdict(
        hello, stack={"stacks": [{"name": "c", "up": ["/usr/bin/podman-compose", "up"], "probes": {"a": ready}}]},
        phases=["stack"])


def test_sigkill_mid_run_reports_it_failed_at_the_next_start_and_never_runs_it_again(fleet: Fleet) -> None:
    """The ledger's ``running`` is on disk before the first workload starts (written by its own thread,
    awaited): an agent killed -9 mid-run reports the run failed when it starts again, and the retained
    order that comes back is a replay, not a second run."""
    agent = fleet.agent().start()
    run, topic, _ = fleet.push(fleet.experiment("killed", repeat=500, delay=0.2))
    fleet.watch.wait_status(run, "running")
    wait_until(lambda: fleet.lines("killed") >= 1, what="the run's first workload start")
    agent.kill()
    for pid in [int(line.split()[1].rstrip(":")) for line in fleet.workload_processes()]:
        with contextlib.suppress(ProcessLookupError):  # SIGKILL gave the agent no chance to stop its workload
            os.kill(pid, signal.SIGKILL)
    started = fleet.lines("killed")
    agent.start()
    failed = wait_until(lambda: [e for e in fleet.watch.events(run) if e.status == "failed"], what="failed")
    assert failed[0].reason == "the agent stopped during the run"
    fleet.watch.wait_status(run, "rejected")  # the retained order came back: a replay
    assert fleet.watch.statuses(run).count("running") == 1 and fleet.lines("killed") == started
    agent.stop()
    fleet.watch.publish(topic, b"", retain=True)


def test_ledger_answers_from_memory_and_writes_in_order_on_its_own_thread(tmp_path: Path) -> None:
    """No ledger write runs on the thread that times workloads (the caller's); ``durable()`` waits for them
    without blocking; a write the disk refuses (SQLite full) makes ``durable()`` an OSError naming it."""
    from agent.fleet import Ledger

    ledger = Ledger(tmp_path)
    threads: list[tuple[str, str]] = []
    ledger._db.set_trace_callback(lambda sql: threads.append((threading.current_thread().name, sql.split()[0])))
    ledger.add("r1", "accepted", "t/r1", "e", b"order")
    ledger.set("r1", "running")
    ledger.add("r2", "rejected", "t/r2", "e")
    assert ledger.get("r1") is not None and ledger.get("r1")[0] == "running"  # type: ignore[index]
    asyncio.run(ledger.durable())
    writes = [(name, verb) for name, verb in threads if verb in ("INSERT", "UPDATE")]
    assert [verb for _, verb in writes] == ["INSERT", "UPDATE", "INSERT"]
    assert {name.split("_")[0] for name, _ in writes} == {"runlab-ledger"}, writes
    ledger.close()
    again = Ledger(tmp_path)  # what a restart reads: on disk
    assert again.get("r1") is not None and again.get("r1")[0] == "running"  # type: ignore[index]
    assert [r[0] for r in again.active()] == ["r1"] and again.get("r2") is not None
    pages = again._db.execute("PRAGMA page_count").fetchone()[0]
    again._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full, as far as SQLite knows
    again.add("r3", "accepted", "t/r3", "e", b"x" * 100_000)
    with pytest.raises(OSError, match=r"run ledger cannot be written.*full"):
        asyncio.run(again.durable())
    again.close()
