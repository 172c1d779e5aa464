"""The agent never strands data on a name or login change (issue 11), with the shipped broker config and ACL.

The package starts the agent before its config is edited: default node name (the host name), no login. The
shipped broker refuses it, so it spools under runlab/v1/nodes/<hostname>/. Then node and mqtt are set as
runlab-broker-setup prints them: every batch spooled before must land under the node's current name, and
the agent must stay connected. A login under another name than the node's is refused by the ACL: the agent
must say so once, with the user and the topic, and not publish it again in a loop.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from runlab import topics, wire
from runlab.config import default_node_name
from runlab.devservers import Mosquitto, SecureSetup
from tests.conftest import REPO, RunlabProcess, wait_until

NODE = "node-a"
SECURE_NODES = (NODE,)  # the secured broker's users (conftest's `setup`)


class SeqWatcher:
    """Logged in as the collector: records (node, boot, seq) of every sample batch."""

    def __init__(self, mq: Mosquitto, setup: SecureSetup) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"seqs-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set("collector", setup.password("collector"))
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, int]] = []
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_a: c.subscribe(topics.all_nodes("samples"), qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", mq.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the collector login could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = topics.parse_node_topic(msg.topic)
        b = wire.decode_batch(bytes(msg.payload))
        assert parsed is not None and parsed[0] == b.node
        with self.lock:
            self.seen.append((b.node, b.boot, b.seq))

    def seqs(self, node: str, boot: str) -> set[int]:
        with self.lock:
            return {s for n, b, s in self.seen if n == node and b == boot}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def spooled(spool: Path) -> dict[str, set[int]]:
    """boot → sequence numbers of the sample batches in an agent's outbox file."""
    out: dict[str, set[int]] = {}
    with sqlite3.connect(spool / "outbox.sqlite") as db:
        for topic, payload in db.execute("SELECT topic, payload FROM outbox"):
            if topic.endswith("/samples"):
                b = wire.decode_batch(payload)
                out.setdefault(b.boot, set()).add(b.seq)
    return out


def test_spooled_before_configuration_lands_under_the_configured_name(setup: SecureSetup, broker: Mosquitto,
                                                                      tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    cfg = tmp_path / "agent.yaml"
    # As installed: no node, no login (the package's defaults, with this test's broker and spool).
    cfg.write_text(yaml.safe_dump({"mqtt": {"url": broker.url}, "spool": {"path": str(spool)},
                                   "sampling": {"interval": "100ms", "per_cpu": False}, "log_level": "debug"}))
    first = RunlabProcess("agent", cfg, tmp_path / "first.log").start()
    try:
        wait_until(lambda: "cannot reach the broker" in first.log(), what="the unconfigured agent to be refused")
        wait_until(lambda: sum(len(v) for v in spooled(spool).values()) >= 20, what="20 spooled batches")
    finally:
        first.stop()
    before = spooled(spool)
    hostname = default_node_name()
    check = subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(cfg)], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
    assert f"{topics.samples(hostname)}: " in check.stdout, check.stdout

    # Configured as runlab-broker-setup prints it: node = username, the password file.
    cfg.write_text(yaml.safe_dump({
        "node": NODE, "mqtt": {"url": broker.url, "username": NODE, "password_file": str(setup.password_file(NODE))},
        "spool": {"path": str(spool)}, "sampling": {"interval": "100ms", "per_cpu": False}, "log_level": "debug"}))
    check = subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(cfg)], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
    assert f"(node {hostname!r}: re-addressed to node {NODE!r} when the agent starts)" in check.stdout, check.stdout
    watch = SeqWatcher(broker, setup)
    second = RunlabProcess("agent", cfg, tmp_path / "second.log").start()
    try:
        for boot, seqs in before.items():
            wait_until(lambda b=boot, s=seqs: watch.seqs(NODE, b) >= s,  # type: ignore[misc]
                       what=f"every batch of boot {boot} spooled before configuration under {NODE}")
        log = second.log()
        assert f"re-addressed {sum(len(v) for v in before.values())} messages spooled under {hostname!r}" in log, log
        # Connected once, and stays: 2 s more of live batches on the same connection.
        n = len(watch.seen)
        wait_until(lambda: len(watch.seen) >= n + 15, what="live batches after the backlog")
        log = second.log()
        assert log.count("connected to") == 1 and "lost the broker" not in log, log
        assert "Traceback" not in log and "refused" not in log, log
    finally:
        second.stop()
        watch.close()
    assert not any(b in watch.seqs(hostname, b) for b in before)  # nothing under the old name


def test_a_refused_publish_is_said_once_with_user_and_topic_and_not_repeated(setup: SecureSetup, broker: Mosquitto,
                                                                            tmp_path: Path) -> None:
    # Logged in as node-a but named node-b: the ACL refuses every publish under node-b (0x87) and Mosquitto
    # drops the connection after each. The agent says so once per topic and stops publishing what is refused.
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "node": "node-b", "mqtt": {"url": broker.url, "username": NODE,
                                   "password_file": str(setup.password_file(NODE))},
        "spool": {"path": str(tmp_path / "spool")}, "sampling": {"interval": "100ms", "per_cpu": False},
        "log_level": "debug"}))
    agent = RunlabProcess("agent", cfg, tmp_path / "agent.log").start()
    try:
        status = topics.status("node-b")
        line = wait_until(lambda: next((ln for ln in agent.log().splitlines() if "refused a publish" in ln), None),
                          what="the refusal in the agent's log")
        assert f"refused a publish on {status} by user {NODE!r}: Not authorized (0x87)" in line, line
        assert "not sent again until the agent restarts" in line and "make node and mqtt.username the same" in line
        # Each of its two topics (status, samples) is refused once and costs one connection; the third
        # connection publishes nothing refused: it is not dropped again, and the outbox keeps growing.
        wait_until(lambda: agent.log().count("refused a publish") == 2 and agent.log().count("connected to") == 3,
                   what="both topics refused once, then a third connection")
        wait_until(lambda: sum(len(v) for v in spooled(tmp_path / "spool").values()) >= 30,
                   what="batches kept in the outbox")
        log = agent.log()
        assert log.count("refused a publish") == 2 and log.count("connected to") == 3, log
        assert log.count("lost the broker") == 2, log
        assert "Traceback" not in log, log
        assert agent.alive
    finally:
        agent.stop()


def test_a_publish_in_flight_when_the_connection_ends_fails_at_once_not_at_its_timeout(mosquitto: Mosquitto) -> None:
    """The broker is frozen (SIGSTOP: no PUBACK comes), then SIGKILLed (its sockets close): the agent's
    publish fails with the end of the connection, not after its 60 s timeout — aiomqtt's own wait ignored
    the drop, and an agent whose publish Mosquitto refused (it then closes the connection) sat out 30 s."""
    import aiomqtt

    from agent.aio import within
    from agent.service import Link

    async def main() -> str:
        async with Link(hostname="127.0.0.1", port=mosquitto.port) as link:
            assert mosquitto.proc is not None
            mosquitto.proc.send_signal(signal.SIGSTOP)
            try:
                sending = asyncio.create_task(link.send("runlab/v1/nodes/x/samples", b"x", timeout=60))
                await asyncio.sleep(0)  # the publish is written (to the kernel's buffer) before the kill
                mosquitto.proc.kill()
            finally:
                mosquitto.proc.send_signal(signal.SIGCONT)
            with pytest.raises(aiomqtt.MqttError) as e:
                await within(sending, 20.0)  # a TimeoutError here is the bug: it waited for the 60 s
            return str(e.value)
    assert asyncio.run(main()) == "the connection ended before the broker acknowledged a publish"
