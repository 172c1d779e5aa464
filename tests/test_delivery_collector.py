"""End-to-end delivery, the collector's side: receipts for exactly what the store has, with real Mosquitto,
InfluxDB 1.x and VictoriaMetrics (issue 12)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.receipts import MAX_RANGES, Receipts, coalesce
from runlab import topics, wire
from runlab.devservers import InfluxV1, Mosquitto
from tests.conftest import RunlabProcess, Stack, v1_section, wait_until
from tests.helpers import Publisher, StoreView, batch, quarantine_entries, sample, v2_section


def unique(prefix: str) -> str:
    """Names unique per test: VictoriaMetrics keeps data for the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class ReceiptListener:
    """Subscribes to one node's receipts topic, as its agent would, and keeps every receipt decoded."""

    def __init__(self, mq: Mosquitto, node: str) -> None:
        self.receipts: list[wire.Receipt] = []
        self.raw_errors: list[str] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("listener"), protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topics.receipts(node), qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", mq.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the receipt listener could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            r = wire.decode_receipt(msg.payload)
        except wire.DecodeError as e:
            with self._lock:
                self.raw_errors.append(str(e))
            return
        with self._lock:
            self.receipts.append(r)

    def seqs(self, boot: str) -> set[int]:
        """Every sequence number of ``boot`` some receipt named."""
        with self._lock:
            return {s for r in self.receipts if r.boot == boot for a, b in r.ranges for s in range(a, b + 1)}

    def count(self) -> int:
        with self._lock:
            return len(self.receipts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(mq: Mosquitto, node: str, boot: str, seqs: list[int]) -> None:
    """One batch per sequence number (one sample tagged with boot and seq), published back to back."""
    pub = Publisher(mq, client_id=unique("pub"))
    try:
        infos = [pub.client.publish(topics.samples(node), batch(node, s, [sample(tags={"b": boot, "s": str(s)})],
                                                                boot=boot), qos=1) for s in seqs]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        pub.close()


def stored_seqs(view: StoreView, node: str, boot: str) -> list[int]:
    """The sequence numbers whose sample is in the store (repeats kept: one per stored point)."""
    return sorted(int(t["s"]) for t in view.tag_sets("probe", node) if t.get("b") == boot)


# ---- pure logic --------------------------------------------------------------------------------------------
def test_coalesce_makes_sorted_disjoint_inclusive_ranges() -> None:
    assert coalesce([]) == []
    assert coalesce([5, 3, 4, 4, 9, 0, 10, 1]) == [(0, 1), (3, 5), (9, 10)]
    assert coalesce([7]) == [(7, 7)]


def test_receipts_take_groups_by_node_and_boot_and_bounds_a_message() -> None:
    r = Receipts()
    r.add([("a", "b1", 1), ("a", "b1", 2), ("a", "b2", 0), ("c", "b1", 4)])
    got = sorted((x.node, x.boot, x.ranges) for x in r.take())
    assert got == [("a", "b1", [(1, 2)]), ("a", "b2", [(0, 0)]), ("c", "b1", [(4, 4)])]
    assert r.take() == []
    r.add([("a", "b", 2 * i) for i in range(MAX_RANGES + 1)])  # every other number: one range each
    parts = r.take()
    assert [len(p.ranges) for p in parts] == [MAX_RANGES, 1]
    assert all(len(wire.encode(p)) < 64 * 1024 for p in parts)


# ---- with real servers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("store", ["influx_v1", "victoria_v2"])
def test_receipts_name_exactly_what_the_store_has(stack: Stack, store: str, request: pytest.FixtureRequest) -> None:
    if store == "influx_v1":
        server = request.getfixturevalue("influx")
        section = v1_section(server)
    else:
        server = request.getfixturevalue("victoria")
        section = v2_section(server)
    view = StoreView(server)
    node = unique("rcpt")
    stack.collector(section, name=unique("col")).start().wait_subscribed()
    listener = ReceiptListener(stack.mq, node)
    try:
        first = [*range(10), 12, 13, 14]  # a hole at 10-11: a receipt may not cover it
        publish_all(stack.mq, node, "boot-1", first)
        publish_all(stack.mq, node, "boot-2", [0, 1, 2])
        wait_until(lambda: listener.seqs("boot-1") == set(first) and listener.seqs("boot-2") == {0, 1, 2},
                   what="receipts for every batch")
        # Receipted means stored: each receipted batch's point is in the store, once. (VictoriaMetrics shows a
        # new series to queries a moment after it answered the write: wait for it to become readable.)
        wait_until(lambda: stored_seqs(view, node, "boot-1") == first, what="boot-1's points readable")
        wait_until(lambda: stored_seqs(view, node, "boot-2") == [0, 1, 2], what="boot-2's points readable")
        assert listener.raw_errors == []
        with listener._lock:
            for r in listener.receipts:
                assert r.node == node and r.v == wire.WIRE_VERSION
                assert all(a <= b for a, b in r.ranges)
                assert all(r.ranges[i][1] + 1 < r.ranges[i + 1][0] for i in range(len(r.ranges) - 1)), r.ranges
        # Coalesced: 16 batches published back to back take fewer receipts than batches.
        assert listener.count() < 16
    finally:
        listener.close()


def test_no_receipt_while_influxdb_is_down_then_receipts_when_it_is_back(stack: Stack, tmp_path: Path) -> None:
    node, boot = unique("down"), "boot-x"
    with InfluxV1(tmp_path / "own-influx", database="receipts") as own:
        view = StoreView(own)
        collector = stack.collector(v1_section(own)).start().wait_subscribed()
        listener = ReceiptListener(stack.mq, node)
        try:
            publish_all(stack.mq, node, boot, list(range(5)))
            wait_until(lambda: listener.seqs(boot) == set(range(5)), what="receipts before the outage")
            own.stop()
            publish_all(stack.mq, node, boot, list(range(5, 10)))
            # The collector has tried (and failed) 5 times: >= 1.5 s of back-off, several receipt intervals.
            wait_until(lambda: collector.log().count("cannot write to") >= 3, what="failed writes")
            assert listener.seqs(boot) == set(range(5)), "a receipt for a batch the store does not have"
            own.start()
            wait_until(lambda: listener.seqs(boot) == set(range(10)), timeout=60,
                       what="receipts once InfluxDB is back")
            assert stored_seqs(view, node, boot) == list(range(10))
        finally:
            listener.close()


def test_a_backlog_larger_than_the_inbox_pauses_reads_and_lands_whole(stack: Stack, influx: InfluxV1) -> None:
    # The collector's inbox holds 1 MB; 120 messages of ~90 KB wait at the broker for its persistent session.
    # It must stop reading while the inbox is full (the broker keeps the rest), and land every batch once.
    node, boot, name = unique("backlog"), "boot-b", unique("col")
    cfg = stack.tmp / f"{name}.yaml"
    cfg.write_text(f"mqtt:\n  url: {stack.mq.url}\n  client_id: {name}\ninflux:\n{v1_section(influx)}\n"
                   f"quarantine:\n  path: {stack.quarantine}\ninbox:\n  max_bytes: 1MB\nmetrics_interval: 1s\n"
                   "log_level: debug\n")
    collector = RunlabProcess("collector", cfg, stack.tmp / f"{name}.log")
    stack.procs.append(collector)
    collector.start().wait_subscribed()
    collector.stop()  # its session stays: the broker queues for it
    listener = ReceiptListener(stack.mq, node)
    pub = Publisher(stack.mq, client_id=unique("pub"))
    messages, per = 120, 300
    try:
        def payload(s: int) -> bytes:
            return batch(node, s, [sample(tags={"s": str(s)}, fields={"value": float(j), "pad": "p" * 250},
                                          ts=10**18 + s * 10**6 + j) for j in range(per)], boot=boot)

        infos = [pub.client.publish(topics.samples(node), payload(s), qos=1) for s in range(messages)]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
    finally:
        pub.close()
    try:
        collector.start()
        wait_until(lambda: listener.seqs(boot) == set(range(messages)), timeout=90, what="every batch receipted")
        res = influx.query(f"SELECT count(value) FROM probe WHERE node = '{node}' GROUP BY s")["results"][0]
        counts = {int(sr["tags"]["s"]): sr["values"][0][1] for sr in res["series"]}
        assert counts == dict.fromkeys(range(messages), per), "a batch missing, partial or stored twice"
        view = StoreView(influx)
        wait_until(lambda: (view.last_collector_field(name, "reads_paused_s") or 0) > 0,
                   what="the collector to report paused reads")
        wait_until(lambda: "backlog drained:" in collector.log(), what="the drain rate in the log")
        assert "draining a backlog:" in collector.log()
    finally:
        listener.close()


def test_a_dead_share_group_member_stops_getting_a_share_once_its_session_expires(stack: Stack,
                                                                                 influx: InfluxV1) -> None:
    # Mosquitto routes a shared subscription's messages round robin to every member's session, connected or
    # not. A member SIGKILLed for good would swallow half the stream for as long as its session lives; with
    # a finite session expiry (2m by default in a share group, 2s here) the broker drops it and the live
    # member gets everything. (What the dead member held is resent by the agents: no receipt named it.)
    node, boot = unique("share"), "boot-s"
    procs = []
    for name in (unique("dies"), unique("lives")):
        cfg = stack.tmp / f"{name}.yaml"
        cfg.write_text(f"mqtt:\n  url: {stack.mq.url}\n  client_id: {name}\n  share_group: g\n"
                       f"  session_expiry: 2s\ninflux:\n{v1_section(influx)}\nquarantine:\n  path: {stack.quarantine}\n"
                       "log_level: debug\n")
        p = RunlabProcess("collector", cfg, stack.tmp / f"{name}.log")
        stack.procs.append(p)
        procs.append(p.start().wait_subscribed())
    dies, _lives = procs
    listener = ReceiptListener(stack.mq, node)
    pub = Publisher(stack.mq, client_id=unique("pub"))
    try:
        pub.publish(topics.samples(node), batch(node, 0, [sample()], boot=boot))
        wait_until(lambda: listener.seqs(boot) == {0}, what="the first receipt")
        dies.kill()
        seq = 0
        run: list[int] = []  # the latest consecutive batches that were all receipted

        def next_batch_receipted() -> bool:
            nonlocal seq
            seq += 1
            pub.publish(topics.samples(node), batch(node, seq, [sample()], boot=boot))
            try:
                wait_until(lambda: seq in listener.seqs(boot), timeout=1.0, interval=0.02)
            except AssertionError:
                run.clear()  # routed to the dead member's session
                return False
            run.append(seq)
            return len(run) >= 20

        wait_until(next_batch_receipted, timeout=60, interval=0, what="20 batches in a row stored by the live member")
        swallowed = seq - len(run)
        assert swallowed >= 1, "the dead member got no share at all: the test proves nothing"
        assert seq < 60, f"{seq} batches before the share moved: the session did not expire"
    finally:
        pub.close()
        listener.close()


def test_a_batch_quarantined_whole_is_receipted_and_a_forged_one_is_not(stack: Stack, influx: InfluxV1) -> None:
    # A batch the collector refuses whole is kept (quarantine) and so "stored": its agent must not resend it for
    # ever. One whose payload names another node than its topic is nobody's to receipt.
    node, boot = unique("poison"), "boot-p"
    stack.collector(v1_section(influx), name=unique("col")).start().wait_subscribed()
    listener = ReceiptListener(stack.mq, node)
    pub = Publisher(stack.mq, client_id=unique("pub"))
    try:
        pub.publish(topics.samples(node), batch(node, 0, [sample()], v=2, boot=boot))  # unsupported wire version
        pub.publish(topics.samples(node), batch(node, 1, [sample(fields=[1, 2])], boot=boot))  # invalid sample
        pub.publish(topics.samples(node), batch(unique("other"), 2, [sample()], boot=boot))  # node ≠ topic
        pub.publish(topics.samples(node), batch(node, 3, [sample(tags={"i": "ok"})], boot=boot))
        wait_until(lambda: listener.seqs(boot) >= {0, 1, 3}, what="receipts for the refused and the valid batch")
        assert listener.seqs(boot) == {0, 1, 3}
        assert len(quarantine_entries(stack.quarantine)) == 3
        assert [t["i"] for t in StoreView(influx).tag_sets("probe", node)] == ["ok"]
    finally:
        pub.close()
        listener.close()
