"""The operator CLI under the shipped ACL, logged in exactly as runlab-broker-setup prints it.

Every command that talks to the broker (push to nodes and groups, nodes, cancel) must work with the
`operator` login and the shipped deploy/mosquitto/acl, and a login the ACL refuses (the collector's, which
the README once said to copy) must be reported as a refusal naming the user and the topic — not as
"pushed" followed by a timeout.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from runlab import control, topics, wire
from runlab.devservers import Mosquitto, SecureSetup
from tests.conftest import REPO

NODE = "edge-1"
SECURE_NODES = (NODE,)  # the secured broker's users (conftest's `setup`)
TINY = """name: tiny
repeat: 1
variants:
  - {name: native, runtime: process, command: ["/bin/true"]}
ready: {tcp: "127.0.0.1:{port}"}
"""


def printed_section(setup: SecureSetup, user: str) -> dict[str, object]:
    """The mqtt: lines runlab-broker-setup prints for ``user`` (it is idempotent: a re-run prints them again)."""
    out = subprocess.run([str(REPO / "deploy" / "mosquitto" / "runlab-broker-setup"), "--out", str(setup.dir),
                          "--host", "127.0.0.1", NODE], capture_output=True, text=True, check=True).stdout
    block = out.split(f"# ==== {user}:", 1)[1].split("# ====", 1)[0]
    lines = [ln for ln in block.splitlines()[1:] if ln and not ln.startswith("#")]
    password = lines.pop()  # the last non-comment line is the password itself
    section: dict[str, object] = yaml.safe_load("\n".join(lines))
    section["_password"] = password
    return section


def operator_home(tmp: Path, setup: SecureSetup, broker: Mosquitto, user: str) -> tuple[Path, dict[str, str]]:
    """A HOME whose ~/.config/runlab/ holds what the setup script prints for ``user``, on the plain listener."""
    printed = printed_section(setup, user)
    mqtt = dict(printed["mqtt"])  # type: ignore[call-overload]
    home = tmp / f"home-{user}"
    cfgdir = home / ".config" / "runlab"
    cfgdir.mkdir(parents=True)
    pwfile = Path(str(mqtt["password_file"]).replace("~", str(home), 1)) if user == "operator" else \
        cfgdir / "mqtt.password"
    pwfile.write_text(f"{printed['_password']}\n")
    pwfile.chmod(0o600)
    if user != "operator":
        mqtt["password_file"] = str(pwfile)
    mqtt["url"] = broker.url  # the plain loopback listener, as on the central box
    mqtt.pop("ca_file")
    control.generate_keys(cfgdir)
    cfg = {"mqtt": {**mqtt, "connect_timeout": "5s"},
           "influx": {"url": "http://127.0.0.1:1", "api": "v1", "database": "runlab", "timeout": "2s"},
           "signing": {"key": "~/.config/runlab/signing.key"}}
    (cfgdir / "runlab.yaml").write_text(yaml.safe_dump(cfg))
    return home, {**os.environ, "HOME": str(home)}


def runlab(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.operator", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


class Node:
    """The agent's login (MQTT 5): sees what the broker delivers to node ``NODE`` under the ACL."""

    def __init__(self, broker: Mosquitto, setup: SecureSetup) -> None:
        self.messages: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{NODE}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(NODE, setup.password(NODE))
        connected = threading.Event()
        self.client.on_connect = lambda *_a: connected.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert connected.wait(10), "the node could not log in"

    def subscribe(self, *filters: str) -> None:
        self.client.subscribe([(f, 1) for f in filters])

    def publish_retained(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published()

    def wait_for(self, match: Callable[[tuple[str, bytes]], bool], timeout: float = 15) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if match(m):
                return m
        raise AssertionError("the node did not receive the expected message")

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_setup_prints_the_operator_a_home_relative_password_file_that_the_cli_reads(
        tmp_path: Path, setup: SecureSetup, broker: Mosquitto) -> None:
    printed = printed_section(setup, "operator")
    assert printed["mqtt"]["password_file"] == "~/.config/runlab/mqtt.password"  # type: ignore[index]
    assert printed["mqtt"]["username"] == "operator"  # type: ignore[index]
    _home, env = operator_home(tmp_path, setup, broker, "operator")
    r = runlab(env, "nodes", "--format", "json")
    assert r.returncode == 0, r.stderr  # "~" expanded: the login succeeded


def test_every_broker_command_works_with_the_operator_login_under_the_shipped_acl(
        tmp_path: Path, setup: SecureSetup, broker: Mosquitto) -> None:
    home, env = operator_home(tmp_path, setup, broker, "operator")
    status = wire.NodeStatus(v=1, node=NODE, online=True, ts=1, version="t", groups=["edge"], run="")
    with Node(broker, setup) as node:
        node.publish_retained(topics.status(NODE), wire.encode(status))
        node.subscribe(f"runlab/v1/nodes/{NODE}/#", "runlab/v1/groups/+/experiments/+")
        exp = tmp_path / "tiny.yaml"
        exp.write_text(TINY)

        nodes = runlab(env, "nodes", "--format", "json")
        assert nodes.returncode == 0, nodes.stderr  # the barrier topic is allowed: no "did not echo"
        assert NODE in nodes.stdout

        pushed = runlab(env, "push", str(exp), "--to", NODE)
        assert pushed.returncode == 0, pushed.stderr
        run = pushed.stdout.strip()
        got = node.wait_for(lambda m: m[0] == topics.node_experiment(NODE, run) and m[1] != b"")
        assert control.verify(got[1], control.load_trusted([str(home / ".config" / "runlab" / "signing.pub")]))

        group = runlab(env, "push", str(exp), "--group", "edge")
        assert group.returncode == 0, group.stderr
        node.wait_for(lambda m: m[0].startswith("runlab/v1/groups/edge/experiments/") and m[1] != b"")

        cancelled = runlab(env, "cancel", run, "--node", NODE)
        assert cancelled.returncode == 0, cancelled.stderr
        node.wait_for(lambda m: m[0] == topics.control(NODE))


@pytest.mark.parametrize("command", [["push", "EXP", "--to", NODE], ["push", "EXP", "--group", "edge"],
                                     ["cancel", "r-1", "--node", NODE]], ids=["push", "push-group", "cancel"])
def test_a_login_the_acl_refuses_is_named_with_the_topic_not_a_timeout(
        tmp_path: Path, setup: SecureSetup, broker: Mosquitto, command: list[str]) -> None:
    # What the README once said: copy the collector's mqtt: section into the operator's config.
    _home, env = operator_home(tmp_path, setup, broker, "collector")
    exp = tmp_path / "tiny.yaml"
    exp.write_text(TINY)
    r = runlab(env, *[str(exp) if a == "EXP" else a for a in command])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "pushed" not in r.stdout + r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "refused" in err and "for user collector" in err and "Not authorized (0x87)" in err, err
    assert "runlab/v1/" in err and "operator" in err, err


def test_an_anonymous_cli_is_refused_at_login_with_the_config_named(
        tmp_path: Path, broker: Mosquitto) -> None:
    cfg = tmp_path / "runlab.yaml"
    cfg.write_text(f"mqtt: {{url: '{broker.url}', connect_timeout: 5s}}\n")
    r = runlab(dict(os.environ), "--config", str(cfg), "nodes")
    assert r.returncode == 1 and "refused the connection" in r.stderr and str(cfg) in r.stderr, r.stderr
