"""The secured broker: shipped runlab.conf + ACL + runlab-broker-setup on a real Mosquitto 2, and TLS end to end.

A forbidden publish is invisible to its sender under MQTT 3.1.1, so "not delivered" is shown with a barrier:
after the forbidden message, an allowed one goes to the same subscriber; Mosquitto queues a subscriber's
messages in the order it handled the publishes, so once the barrier arrived, anything that was going to be
delivered before it has been.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from runlab.devservers import BROKER_SETUP, SHIPPED_MOSQUITTO_CONF, InfluxV1, Mosquitto, SecureSetup, mosquitto_config
from tests.conftest import REPO, RunlabProcess, need, v1_section, wait_until

NODES = ("node-a", "node-b")
SECURE_NODES = NODES  # conftest's secured-broker `setup` makes their users
NOT_AUTHORIZED = 0x87
Message = tuple[str, bytes, bool]  # topic, payload, retained


class Peer:
    """A paho client logged in as one broker user; waits for CONNACK, SUBACK and PUBACK and keeps their reasons."""

    def __init__(self, mq: Mosquitto, user: str | None, password: str | None = None, *, tls: bool = False,
                 ca: Path | None = None, protocol: MQTTProtocolVersion = mqtt.MQTTv5, client_id: str = "",
                 will: tuple[str, bytes] | None = None) -> None:
        self.protocol = protocol
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        self.client.reconnect_delay_set(60, 60)  # a refused client must not retry behind the test's back
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set(ca_certs=str(ca) if ca else None, cert_reqs=ssl.CERT_REQUIRED)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self._cond = threading.Condition()
        self._acks: dict[int, Any] = {}
        self.connack: ReasonCode | None = None
        self.received: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.dropped = threading.Event()  # the connection ended without our asking
        self._closing = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: None if self._closing else self.dropped.set()
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self._ack(mid, codes)
        self.client.on_publish = lambda _c, _u, mid, code, _p: self._ack(mid, code)
        self.client.on_message = lambda _c, _u, m: self.received.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.connect("127.0.0.1", mq.tls_port if tls else mq.port)  # type: ignore[arg-type]
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _ack(self, mid: int, result: Any) -> None:
        with self._cond:
            self._acks[mid] = result
            self._cond.notify_all()

    def _wait_ack(self, mid: int, what: str) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acks, timeout=10):
                raise AssertionError(f"no {what} from the broker within 10 s")
            return self._acks.pop(mid)

    def connected(self) -> ReasonCode:
        """The broker's CONNACK reason (waits for it)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.connack is not None, timeout=10):
                raise AssertionError("no CONNACK within 10 s")
        assert self.connack is not None
        return self.connack

    def subscribe(self, *filters: str) -> list[ReasonCode]:
        assert not self.connected().is_failure, f"connection refused: {self.connack}"
        _rc, mid = self.client.subscribe([(f, 1) for f in filters])
        assert mid is not None
        return list(self._wait_ack(mid, "SUBACK"))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish with QoS 1; the PUBACK's reason code (always 0 under MQTT 3.1.1)."""
        assert not self.connected().is_failure, f"connection refused: {self.connack}"
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        return int(self._wait_ack(mid, f"PUBACK for {topic}").value)

    def until(self, topic: str, payload: bytes, timeout: float = 10.0) -> list[Message]:
        """Everything received before the barrier message (topic, payload), which must arrive."""
        before: list[Message] = []
        while True:
            try:
                m = self.received.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"barrier {topic} never arrived; got {before}") from None
            if m[:2] == (topic, payload):
                return before
            before.append(m)

    def disconnect_with_will(self) -> None:
        """MQTT 5 DISCONNECT reason 0x04: the broker publishes our will as if the link had died."""
        self._closing = True
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(broker: Mosquitto, setup: SecureSetup) -> Iterator[Any]:
    """``peers(user)`` logs in as that runlab user (its real password) over the plain loopback listener."""
    opened: list[Peer] = []

    def login(user: str, **kw: Any) -> Peer:
        p = Peer(broker, user, setup.password(user), **kw)
        opened.append(p)
        return p

    yield login
    for p in opened:
        p.close()


def fresh(prefix: str = "x") -> bytes:
    return f"{prefix}-{uuid.uuid4().hex[:10]}".encode()


def topic(kind: str, node: str = "node-a", run: str = "") -> str:
    base = f"runlab/v1/nodes/{node}/{kind}"
    return f"{base}/{run}" if kind == "experiments" else base


# ---- the shipped config ---------------------------------------------------------------------------------------
def test_shipped_config_requires_login_everywhere_and_test_brokers_stay_anonymous(tmp_path: Path) -> None:
    shipped = SHIPPED_MOSQUITTO_CONF.read_text()
    keys = [ln.split()[0] for ln in shipped.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    settings = {ln.split()[0]: ln.split()[1:] for ln in shipped.splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")}
    assert settings["allow_anonymous"] == ["false"] and settings["per_listener_settings"] == ["false"]
    assert keys.index("per_listener_settings") < keys.index("listener")
    listeners = [ln.split()[1:] for ln in shipped.splitlines() if ln.startswith("listener ")]
    assert listeners == [["8883"], ["1883", "127.0.0.1"]], "plain MQTT must stay on loopback"
    # Debian's mosquitto.conf sets persistence_location; a second one stops the broker (Duplicate ... value).
    assert "persistence_location" not in settings and settings["persistence"] == ["true"]
    assert settings["max_queued_messages"] == ["0"]

    anonymous = mosquitto_config(shipped, tmp_path, 1234)
    assert [ln for ln in anonymous.splitlines() if ln.startswith("listener")] == ["listener 1234 127.0.0.1"]
    for key in ("password_file", "acl_file", "certfile", "keyfile", "cafile", "allow_anonymous false"):
        assert key not in anonymous
    assert "max_queued_messages 0" in anonymous and "allow_anonymous true" in anonymous

    secured = mosquitto_config(shipped, tmp_path, 1234, secure=SecureSetup(tmp_path / "s"), tls_port=5678)
    assert "/etc/mosquitto" not in secured and "allow_anonymous true" not in secured
    assert f"password_file {tmp_path}/s/passwd" in secured and f"keyfile {tmp_path}/s/server.key" in secured
    assert secured.index("listener 5678 127.0.0.1") < secured.index("certfile") < secured.index("listener 1234")


# ---- who may connect ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tls", [False, True], ids=["loopback-1883", "tls-8883"])
def test_wrong_password_unknown_user_and_anonymous_are_refused(broker: Mosquitto, setup: SecureSetup,
                                                               tls: bool) -> None:
    kw: dict[str, Any] = {"tls": tls, "ca": setup.ca_file}
    attempts = {
        "right password": Peer(broker, "node-a", setup.password("node-a"), **kw),
        "wrong password": Peer(broker, "node-a", "not-" + setup.password("node-a"), **kw),
        "another node's password": Peer(broker, "node-a", setup.password("node-b"), **kw),
        "unknown user": Peer(broker, "node-z", setup.password("node-a"), **kw),
        "anonymous": Peer(broker, None, **kw),
        "wrong password, MQTT 3.1.1": Peer(broker, "node-a", "wrong", protocol=mqtt.MQTTv311, **kw),
    }
    try:
        reasons = {name: p.connected() for name, p in attempts.items()}
    finally:
        for p in attempts.values():
            p.close()
    assert not reasons.pop("right password").is_failure
    # Mosquitto 2.0 answers every refused login with "not authorized": MQTT 5 reason 0x87, MQTT 3.1.1 code 5
    # (which paho reports as the same reason).
    assert {name: (rc.is_failure, rc.getName()) for name, rc in reasons.items()} == {
        name: (True, "Not authorized") for name in reasons}


def test_tls_listener_needs_tls_and_the_setup_ca(broker: Mosquitto, setup: SecureSetup, tmp_path: Path) -> None:
    other = SecureSetup.create(tmp_path / "other-ca", ["node-a"])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        Peer(broker, "node-a", setup.password("node-a"), tls=True, ca=other.ca_file)
    # Plain MQTT on the TLS port: the TLS listener never answers it with a CONNACK.
    connect = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x"  # MQTT 3.1.1 CONNECT, client id "x"
    assert broker.tls_port is not None
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=10) as s:
        s.sendall(connect)
        try:
            answer = s.recv(64)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"\x20"), f"a CONNACK from the TLS port: {answer!r}"


# ---- the ACL --------------------------------------------------------------------------------------------------
def attempt(peers: Any, user: str, to: str, payload: bytes, *, retain: bool = False,
            protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> int:
    """One publish on a connection of its own (Mosquitto 2.0 closes a connection after a denied publish)."""
    return int(peers(user, protocol=protocol).publish(to, payload, retain))


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_denied_publish_is_dropped_and_costs_the_connection(peers: Any, protocol: MQTTProtocolVersion) -> None:
    collector = peers("collector")
    collector.subscribe(topic("samples", "+"))
    a = peers("node-a", protocol=protocol)
    forged = fresh("forged")
    reason = a.publish(topic("samples", "node-b"), forged)
    # MQTT 5 tells the sender (0x87); MQTT 3.1.1 has no reason codes: a normal PUBACK, then ...
    assert reason == (NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else 0)
    # ... Mosquitto 2.0.11 closes the connection either way (log: "Bad socket read/write on client ...:
    # Unknown error", eclipse-mosquitto/mosquitto#2579). docs/deploy-mosquitto.md relies on this symptom.
    assert a.dropped.wait(10), "the broker kept the connection of a client whose publish it denied"
    barrier = fresh("barrier")
    assert attempt(peers, "node-a", topic("samples", "node-a"), barrier) == 0
    assert [m for m in collector.until(topic("samples", "node-a"), barrier) if m[1] == forged] == []


def test_node_cannot_publish_as_another_node(peers: Any) -> None:
    collector = peers("collector")
    collector.subscribe(topic("samples", "+"), topic("status", "+"), topic("events", "+"))
    forged = fresh("forged")
    reasons = [attempt(peers, "node-a", topic(kind, "node-b"), forged, retain=kind == "status")
               for kind in ("samples", "status", "events")]
    assert reasons == [NOT_AUTHORIZED] * 3
    barrier = fresh("barrier")
    assert attempt(peers, "node-a", topic("samples", "node-a"), barrier) == 0
    assert [m for m in collector.until(topic("samples", "node-a"), barrier) if m[1] == forged] == []

    # The forged retained status was not stored either: a new subscriber sees none of it.
    late = peers("collector")
    late.subscribe(topic("status", "node-b"), topic("samples", "node-a"))
    barrier = fresh("barrier")
    assert attempt(peers, "node-a", topic("samples", "node-a"), barrier) == 0
    assert [m for m in late.until(topic("samples", "node-a"), barrier) if m[1] == forged] == []


def test_last_will_cannot_speak_for_another_node(peers: Any, broker: Mosquitto) -> None:
    collector = peers("collector")
    collector.subscribe(topic("status", "+"))
    forged, own = fresh("offline-b"), fresh("offline-a")
    for payload, node in ((forged, "node-b"), (own, "node-a")):
        client_id = f"will-{payload.decode()}"
        p = peers("node-a", client_id=client_id, will=(topic("status", node), payload))
        assert not p.connected().is_failure  # Mosquitto 2.0 accepts a forbidden will at CONNECT ...
        p.disconnect_with_will()
        wait_until(lambda c=client_id: f"Client {c} disconnected" in broker.log.read_text(),  # type: ignore[misc]
                   what="the broker to handle the DISCONNECT")
    # ... and drops it when it fires; the allowed will, fired after it, is the barrier.
    before = collector.until(topic("status", "node-a"), own)
    assert [m for m in before if m[1] == forged] == []


def test_node_reads_only_its_own_experiments_and_control_and_cannot_push(peers: Any) -> None:
    run = f"r{uuid.uuid4().hex[:8]}"
    a, b, operator = peers("node-a"), peers("node-b"), peers("operator")
    a.subscribe("runlab/v1/nodes/+/experiments/#", topic("control", "+"))
    b.subscribe(topic("experiments", "node-b", "#"), "runlab/v1/groups/+/experiments/#", topic("control", "node-b"))
    forged = fresh("forged")
    pushes = [topic("experiments", "node-a", run), topic("experiments", "node-b", run),
              f"runlab/v1/groups/g1/experiments/{run}"]
    assert [attempt(peers, "node-a", t, forged, retain=True) for t in pushes] == [NOT_AUTHORIZED] * 3
    assert attempt(peers, "node-a", topic("control", "node-b"), forged) == NOT_AUTHORIZED
    assert attempt(peers, "node-a", topic("control", "node-a"), forged) == NOT_AUTHORIZED

    signed = {t: fresh("signed") for t in pushes}
    for t in pushes:
        assert operator.publish(t, signed[t], retain=True) == 0
    ctl_b, ctl_a = fresh("cancel-b"), fresh("cancel-a")
    assert operator.publish(topic("control", "node-b"), ctl_b) == 0
    assert operator.publish(topic("control", "node-a"), ctl_a) == 0

    def this_test(ms: list[Message]) -> list[Message]:  # retained experiments of other tests come first
        return [m for m in ms if m[0].endswith(run) or m[0].endswith("/control")]

    assert this_test(b.until(topic("control", "node-b"), ctl_b)) == [(pushes[1], signed[pushes[1]], False),
                                                                     (pushes[2], signed[pushes[2]], False)]
    assert this_test(a.until(topic("control", "node-a"), ctl_a)) == [(pushes[0], signed[pushes[0]], False)]

    # What stays retained for node-a is the operator's experiment, and node-a gets it when it (re)subscribes.
    again = peers("node-a")
    again.subscribe(topic("experiments", "node-a", "#"), topic("control", "node-a"))
    barrier = fresh("ping")
    assert operator.publish(topic("control", "node-a"), barrier) == 0
    assert this_test(again.until(topic("control", "node-a"), barrier)) == [(pushes[0], signed[pushes[0]], True)]
    for t in pushes:  # withdraw: an empty retained payload
        assert operator.publish(t, b"", retain=True) == 0


def test_collector_reads_every_nodes_data_and_nothing_else(peers: Any) -> None:
    shared = peers("collector", client_id="collector-shared")
    assert [rc.value for rc in shared.subscribe("$share/collectors/" + topic("samples", "+"))] == [1]
    everything = peers("collector")
    everything.subscribe("runlab/v1/#")
    run, tag = f"r{uuid.uuid4().hex[:8]}", fresh()
    sent: list[tuple[str, bytes]] = []
    for node in NODES:
        p = peers(node)
        for kind in ("samples", "status", "events"):
            sent.append((topic(kind, node), tag + kind.encode()))
            assert p.publish(*sent[-1]) == 0
    operator = peers("operator")
    assert operator.publish(topic("experiments", "node-a", run), tag, retain=True) == 0
    assert operator.publish(f"runlab/v1/groups/g1/experiments/{run}", tag, retain=True) == 0
    assert operator.publish(topic("control", "node-a"), tag) == 0
    barrier = fresh("barrier")
    assert peers("node-b").publish(topic("events", "node-b"), barrier) == 0

    got = [(t, p) for t, p, _r in everything.until(topic("events", "node-b"), barrier) if p.startswith(tag)]
    assert got == sent, "the collector must read all nodes' samples, status and events, and nothing else"
    # ... and as a member of a shared subscription ($share/collectors/...), the same samples.
    assert shared.until(topic("samples", "node-a"), tag + b"samples") == []
    assert shared.until(topic("samples", "node-b"), tag + b"samples") == []

    forbidden = [topic("samples", "collector"), topic("samples", "node-a"), topic("status", "node-a"),
                 topic("experiments", "node-a", run), f"runlab/v1/groups/g1/experiments/{run}",
                 topic("control", "node-a")]
    assert [attempt(peers, "collector", t, b"x") for t in forbidden] == [NOT_AUTHORIZED] * len(forbidden)
    for t in (topic("experiments", "node-a", run), f"runlab/v1/groups/g1/experiments/{run}"):
        assert operator.publish(t, b"", retain=True) == 0


def test_collector_writes_receipts_and_nothing_else(peers: Any) -> None:
    # Receipts (collector → agent, end-to-end delivery) are the one thing the collector may publish.
    agent = peers("node-a")
    agent.subscribe(topic("receipts", "node-a"))
    receipt = fresh("receipt")
    assert peers("collector").publish(topic("receipts", "node-a"), receipt) == 0
    assert agent.until(topic("receipts", "node-a"), receipt) == []  # it arrived, and nothing before it
    # An attacker holding the collector's password still cannot feed the pipeline or the agents: no samples,
    # status or events under any node, no experiments, no control, nothing beside or below a receipts topic.
    forbidden = [topic("samples", "node-a"), topic("status", "node-a"), topic("events", "node-a"),
                 topic("experiments", "node-a", "r1"), "runlab/v1/groups/g1/experiments/r1",
                 topic("control", "node-a"), topic("receipts", "node-a") + "/x", "runlab/v1/nodes/node-a",
                 "runlab/v1/receipts", topic("receipts", "collector")]
    assert [attempt(peers, "collector", t, b"x") for t in forbidden] == [NOT_AUTHORIZED] * len(forbidden)
    # A node cannot forge receipts (to make another node, or itself, forget unstored batches).
    assert attempt(peers, "node-b", topic("receipts", "node-a"), b"x") == NOT_AUTHORIZED
    assert attempt(peers, "node-a", topic("receipts", "node-a"), b"x") == NOT_AUTHORIZED


def test_operator_pushes_and_watches_but_cannot_speak_for_a_node(peers: Any) -> None:
    operator = peers("operator")
    operator.subscribe(topic("status", "+"), topic("events", "+"), topic("samples", "+"), topic("control", "+"))
    a = peers("node-a")
    tag = fresh()
    for kind in ("status", "events", "samples"):
        assert a.publish(topic(kind), tag + kind.encode()) == 0
    barrier = fresh("ping")
    assert operator.publish(topic("control"), barrier) == 0  # allowed to write control, not to read it back
    assert a.publish(topic("events"), barrier) == 0
    got = [(t, p) for t, p, _r in operator.until(topic("events"), barrier) if p.startswith(tag) or p == barrier]
    assert got == [(topic(kind), tag + kind.encode()) for kind in ("status", "events", "samples")]

    forbidden = [topic("samples"), topic("status"), topic("events"), topic("samples", "operator"),
                 "runlab/v1/anything/else", "$SYS/broker/x"]
    assert [attempt(peers, "operator", t, tag) for t in forbidden] == [NOT_AUTHORIZED] * len(forbidden)


# ---- runlab-broker-setup --------------------------------------------------------------------------------------
def run_setup(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BROKER_SETUP), "--out", str(out), *args], capture_output=True, text=True,
                          check=False)


def printed_configs(stdout: str) -> dict[str, Any]:
    """The YAML blocks the setup prints, by user (comment lines and the password line left out)."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        m = re.match(r"# ==== (\S+): ", line)
        if m:
            current = m.group(1)
            blocks[current] = []
        elif current and re.match(r"(node|mqtt):|  \w+:", line):
            blocks[current].append(line)
    return {user: yaml.safe_load("\n".join(lines)) for user, lines in blocks.items()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def san(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout


def test_setup_is_idempotent_keeps_secrets_private_and_prints_client_configs(tmp_path: Path) -> None:
    need("openssl")
    need("mosquitto_passwd")
    out = tmp_path / "runlab"
    first = run_setup(out, "--host", "broker.lan", "--host", "192.168.1.10", "pi4", "nuc")
    assert first.returncode == 0, first.stderr
    users = ("pi4", "nuc", "collector", "operator")
    passwords = {u: (out / "clients" / f"{u}.password").read_text() for u in users}
    assert len(set(passwords.values())) == 4 and all(len(p.strip()) == 32 for p in passwords.values())
    for secret in ("ca.key", "server.key", "passwd", "acl", *(f"clients/{u}.password" for u in users)):
        assert mode(out / secret) == 0o600, secret
    assert mode(out / "clients") == 0o700 and mode(out / "ca.crt") == 0o644
    if os.geteuid() == 0 and subprocess.run(["id", "-u", "mosquitto"], capture_output=True).returncode == 0:
        # Mosquitto 2 reads these after dropping root (measured: a root-owned 0600 key stops it).
        for f in ("server.key", "passwd", "acl"):
            assert (out / f).owner() == "mosquitto", f
    assert sorted(ln.split(":")[0] for ln in (out / "passwd").read_text().splitlines()) == sorted(users)
    assert "$7$" in (out / "passwd").read_text() and passwords["pi4"].strip() not in (out / "passwd").read_text()
    assert "IP Address:192.168.1.10" in san(out / "server.crt") and "DNS:broker.lan" in san(out / "server.crt")

    printed = printed_configs(first.stdout)
    assert printed["pi4"] == {"node": "pi4", "mqtt": {"url": "mqtts://broker.lan:8883", "username": "pi4",
                                                      "password_file": "/etc/runlab/mqtt.password",
                                                      "ca_file": "/etc/runlab/ca.crt"}}
    assert printed["collector"]["mqtt"]["username"] == "collector" and "operator" in printed
    assert passwords["nuc"].strip() in first.stdout

    kept = {f: (out / f).read_bytes() for f in ("ca.crt", "ca.key", "server.crt", "server.key")}
    again = run_setup(out, "pi4", "nuc", "pi5")
    assert again.returncode == 0, again.stderr
    assert {f: (out / f).read_bytes() for f in kept} == kept, "a re-run must keep the CA and the certificate"
    assert {u: (out / "clients" / f"{u}.password").read_text() for u in users} == passwords
    assert "pi5:" in (out / "passwd").read_text()
    assert printed_configs(again.stdout)["pi5"]["mqtt"]["url"] == "mqtts://broker.lan:8883"  # hosts remembered

    rotated = run_setup(out, "--rotate", "nuc", "--remove", "pi5", "--host", "broker.lan", "--host", "10.0.0.2")
    assert rotated.returncode == 0, rotated.stderr
    assert (out / "clients" / "nuc.password").read_text() != passwords["nuc"]
    assert (out / "clients" / "pi4.password").read_text() == passwords["pi4"]
    assert "pi5:" not in (out / "passwd").read_text()
    assert (out / "ca.crt").read_bytes() == kept["ca.crt"] and (out / "server.crt").read_bytes() != kept["server.crt"]
    assert "IP Address:10.0.0.2" in san(out / "server.crt") and "192.168.1.10" not in san(out / "server.crt")

    forced = run_setup(out, "--force", "--no-secrets")
    assert forced.returncode == 0, forced.stderr
    assert (out / "ca.crt").read_bytes() != kept["ca.crt"]
    assert (out / "clients" / "pi4.password").read_text() != passwords["pi4"]
    assert passwords["pi4"].strip() not in forced.stdout and "collector" in forced.stdout
    subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt")], check=True,
                   capture_output=True)


@pytest.mark.parametrize("args, error", [
    (["node/evil"], "node 'node/evil': expected letters"),
    (["+"], "node '+': expected letters"),
    (["collector"], "'collector' is reserved"),
    (["--host", "bad host", "pi4"], "--host 'bad host'"),
    (["--port", "99999", "pi4"], "--port: expected 1..65535"),
    (["--rotate", "ghost"], "--rotate ghost: no such user"),
])
def test_setup_refuses_bad_input(tmp_path: Path, args: list[str], error: str) -> None:
    need("openssl")
    need("mosquitto_passwd")
    done = run_setup(tmp_path / "out", *args)
    assert done.returncode == 2 and error in done.stderr, done.stderr


# ---- TLS end to end with the real runlab processes ------------------------------------------------------------
def write_config(path: Path, printed: dict[str, Any], setup: SecureSetup, user: str, **sections: Any) -> Path:
    """A config from the lines runlab-broker-setup printed, with this test's copies of the secret files."""
    cfg = {**printed, **sections}
    cfg["mqtt"] = {**printed["mqtt"], "password_file": str(setup.password_file(user)),
                   "ca_file": str(setup.ca_file), **sections.get("mqtt", {})}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tls_end_to_end_agent_broker_collector_influxdb(setup: SecureSetup, broker: Mosquitto, influx: InfluxV1,
                                                        tmp_path: Path) -> None:
    # Re-running the setup against the live broker's files only reprints (here with the test's TLS port).
    before = {f: (setup.dir / f).read_bytes() for f in ("ca.crt", "server.crt", "server.key")}
    printed_run = run_setup(setup.dir, "--port", str(broker.tls_port), "node-a")
    assert printed_run.returncode == 0, printed_run.stderr
    assert {f: (setup.dir / f).read_bytes() for f in before} == before
    printed = printed_configs(printed_run.stdout)
    assert printed["node-a"]["mqtt"]["url"] == broker.tls_url

    collector_cfg = write_config(
        tmp_path / "collector.yaml", {"mqtt": printed["collector"]["mqtt"]}, setup, "collector",
        mqtt={"client_id": "secure-collector"},
        influx=yaml.safe_load(f"x:\n{v1_section(influx)}")["x"],
        quarantine={"path": str(tmp_path / "quarantine.jsonl")}, metrics_interval="1s", log_level="debug")
    agent_cfg = write_config(
        tmp_path / "agent.yaml", printed["node-a"], setup, "node-a",
        spool={"path": str(tmp_path / "spool-a")}, sampling={"interval": "250ms", "per_cpu": False},
        log_level="debug")
    procs = [RunlabProcess("collector", collector_cfg, tmp_path / "collector.log"),
             RunlabProcess("agent", agent_cfg, tmp_path / "agent.log")]
    try:
        procs[0].start().wait_subscribed()
        procs[1].start()
        rows = wait_until(lambda: influx.rows("SELECT count(cpu_percent) FROM host WHERE node = 'node-a'"),
                          what="host samples of node-a in InfluxDB over TLS")
        assert rows[0][1] >= 1
        status = wait_until(lambda: influx.rows("SELECT online FROM node_status WHERE node = 'node-a'"),
                            what="node-a's status in InfluxDB")
        assert status[-1][1] is True
        assert f"connected to {broker.tls_url} as node node-a" in procs[1].log()
        assert f"connected to {broker.tls_url}" in procs[0].log()
    finally:
        for p in procs:
            p.stop()


def test_agent_log_says_why_the_broker_refused_it(setup: SecureSetup, broker: Mosquitto, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    other_ca = SecureSetup.create(tmp_path / "other-ca", ["node-b"]).ca_file
    cases = {
        "wrong-password": ({"password_file": str(wrong)}, "cannot reach the broker", "Not authorized"),
        "wrong-ca": ({"ca_file": str(other_ca)}, "cannot reach the broker", "certificate verify failed"),
        # Logged in as node-a but named node-b: every publish is denied and costs the connection.
        "name-is-not-username": ({"username": "node-a", "password_file": str(setup.password_file("node-a"))},
                                 "lost the broker", "logged in as 'node-a' but the node is 'node-b'"),
    }
    procs = {}
    try:
        for name, (override, _prefix, _expected) in cases.items():
            cfg = {"node": "node-b", "mqtt": {"url": broker.tls_url, "username": "node-b",
                                              "password_file": str(setup.password_file("node-b")),
                                              "ca_file": str(setup.ca_file), **override},
                   "spool": {"path": str(tmp_path / f"spool-{name}")}, "log_level": "info"}
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            procs[name] = RunlabProcess("agent", path, tmp_path / f"{name}.log").start()
        for name, (_override, prefix, expected) in cases.items():
            line = wait_until(lambda n=name, p=prefix: next(  # type: ignore[misc]
                (ln for ln in procs[n].log().splitlines() if p in ln), None), what=f"{prefix!r} in {name}.log")
            assert expected in line, line
            assert procs[name].alive, "a refused agent keeps running and retrying"
        assert f"connected to {broker.tls_url} as node node-b" in procs["name-is-not-username"].log()
    finally:
        for p in procs.values():
            p.stop()
    # `check` says it before anything is lost (the login itself succeeds), and fails
    check = subprocess.run([sys.executable, "-m", "agent", "check", "--config",
                            str(tmp_path / "name-is-not-username.yaml")], capture_output=True, text=True, cwd=REPO,
                           timeout=60)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "logged in as 'node-a' but the node is 'node-b'" in check.stdout
    assert "make node and mqtt.username the same" in check.stdout


def test_signed_order_runs_over_the_secured_broker(setup: SecureSetup, broker: Mosquitto, peers: Any,
                                                   tmp_path: Path, workloads: Path) -> None:
    """The ACL end to end: the operator pushes and cancels, the agent (TLS, its own login) runs and reports."""
    from runlab import control

    hello = workloads / "hello"
    _priv, pub = control.generate_keys(tmp_path / "keys")
    key = control.load_signing_key(_priv)
    cfg = {"node": "node-b", "mqtt": {"url": broker.tls_url, "username": "node-b",
                                      "password_file": str(setup.password_file("node-b")),
                                      "ca_file": str(setup.ca_file)},
           "spool": {"path": str(tmp_path / "spool")}, "log_level": "debug",
           "trust": {"keys": [str(pub)]}, "policy": {"runtimes": ["process"], "commands": [str(hello)]}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    operator = peers("operator")
    operator.subscribe(topic("events", "node-b"))
    agent = RunlabProcess("agent", path, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: "subscribed to experiments" in agent.log(), what="the agent's subscriptions")
        text = ("name: secure\nrepeat: 200\nwarmup: 0\nphases: [cold_start]\nready:\n  tcp: \"127.0.0.1:{port}\"\n"
                f"variants:\n  - name: native\n    runtime: process\n"
                f"    command: [\"{hello}\", \"--port\", \"{{port}}\"]\n")
        run = control.new_run_id()
        t = topic("experiments", "node-b", run)
        order = control.ExperimentOrder(run=run, target=t, file_name="secure.yaml", yaml=text,
                                        issued=control.now_ns())
        assert operator.publish(t, control.sign(order, key), retain=True) == 0
        seen: list[str] = []

        def status_seen(status: str) -> bool:
            while not operator.received.empty():
                tp, payload, _r = operator.received.get()
                ev = control.decode_event(payload)
                if tp == topic("events", "node-b") and ev.run == run:
                    seen.append(ev.status)
            return status in seen

        wait_until(lambda: status_seen("progress"), what="progress events read by the operator")
        cancel = control.cancel_order(run, "node-b")
        assert operator.publish(topic("control", "node-b"), control.sign(cancel, key)) == 0
        wait_until(lambda: status_seen("cancelled"), what=f"cancelled (seen {seen})")
        assert seen[:2] == ["accepted", "running"] and "finished" not in seen
        assert operator.publish(t, b"", retain=True) == 0
    finally:
        agent.stop()
