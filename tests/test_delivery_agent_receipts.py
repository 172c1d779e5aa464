"""End-to-end receipts and the spool, the agent side, counted by sequence numbers.

A real Mosquitto and real agent processes; the collector is played by the test (a paho client that reads
sample batches and publishes runlab.wire.Receipt for them, or stays silent, or "loses" what it is given).
Power cuts are SIGKILLs of the agent; what a README statement promises is checked by boot and sequence.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from runlab import topics, wire
from runlab.devservers import InfluxV1, Mosquitto
from tests.conftest import RunlabProcess, Stack, host_times, v1_section, wait_until

INTERVAL = 0.25
FLUSH_AFTER = 1.0


class FakeCollector:
    """Reads every sample batch; in mode "receipt" stores and receipts it, "silent" stores it and says nothing,
    "lose" drops it on the floor (a broker that lost it)."""

    def __init__(self, mq: Mosquitto) -> None:
        self.mode = "receipt"
        self.lock = threading.Lock()
        self.stored: dict[tuple[str, str], dict[int, int]] = {}  # (node, boot) → seq → times stored
        self.last_ts: dict[tuple[str, str, int], int] = {}  # (node, boot, seq) → newest host sample ts
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fake-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.subscriptions = 0
        self.client.on_connect = lambda c, *_a: c.subscribe(topics.all_nodes("samples"), qos=1)
        self.client.on_subscribe = lambda *_a: self._subscribed()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", mq.port)
        self.client.loop_start()
        wait_until(lambda: self.subscriptions, timeout=10, what="the fake collector to subscribe")

    def _subscribed(self) -> None:
        self.subscriptions += 1

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        b = wire.decode_batch(bytes(msg.payload))
        if self.mode == "lose":
            return
        with self.lock:
            seen = self.stored.setdefault((b.node, b.boot), {})
            seen[b.seq] = seen.get(b.seq, 0) + 1
            ts = [s.ts for s in b.samples if s.name == "host"]
            if ts:
                self.last_ts[(b.node, b.boot, b.seq)] = max(ts)
        if self.mode == "receipt":
            r = wire.Receipt(v=wire.WIRE_VERSION, node=b.node, boot=b.boot, ranges=[(b.seq, b.seq)])
            self.client.publish(topics.receipts(b.node), wire.encode(r), qos=1)

    def seqs(self, boot: str, node: str = "node-a") -> dict[int, int]:
        with self.lock:
            return dict(self.stored.get((node, boot), {}))

    def boots(self, node: str = "node-a") -> list[str]:
        with self.lock:
            return [b for n, b in self.stored if n == node]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(mosquitto: Mosquitto) -> Iterator[FakeCollector]:
    c = FakeCollector(mosquitto)
    yield c
    c.close()


def agent(stack: Stack, extra: str = "", receipt_timeout: str = "60s", window: int = 1000) -> RunlabProcess:
    return stack.agent("node-a", interval=f"{int(INTERVAL * 1000)}ms",
                       extra=f"delivery:\n  receipt_timeout: {receipt_timeout}\n  window: {window}\n{extra}")


def set_flush_after(stack: Stack) -> None:
    cfg = stack.tmp / "agent-node-a.yaml"
    cfg.write_text(cfg.read_text().replace("  max_bytes:", f"  flush_after: {FLUSH_AFTER}s\n  max_bytes:"))


def disk_batches(stack: Stack) -> dict[str, set[int]]:
    """boot → seqs of the sample batches in the agent's outbox file."""
    out: dict[str, set[int]] = {}
    path = stack.tmp / "spool-node-a" / "outbox.sqlite"
    if not path.exists():
        return out
    with sqlite3.connect(path) as db:
        for topic, payload in db.execute("SELECT topic, payload FROM outbox"):
            if topic.endswith("/samples"):
                b = wire.decode_batch(payload)
                out.setdefault(b.boot, set()).add(b.seq)
    return out


def boot_of(p: RunlabProcess) -> str:
    line = wait_until(lambda: next((ln for ln in p.log().splitlines() if " boot " in ln and "runlab-agent" in ln),
                                   None), what="the agent's boot id")
    return line.split(" boot ", 1)[1].split()[0].rstrip(",")


def test_healthy_link_keeps_batches_off_the_disk_and_receipts_empty_the_memory(stack: Stack,
                                                                             collector: FakeCollector) -> None:
    a = agent(stack)
    set_flush_after(stack)
    a.start()
    boot = boot_of(a)
    wait_until(lambda: len(collector.seqs(boot)) >= 24, what="6 s of receipted batches")
    assert disk_batches(stack) == {}, "receipted batches were written to disk"
    seqs = collector.seqs(boot)
    assert sorted(seqs) == list(range(len(seqs))) and set(seqs.values()) == {1}, seqs


def test_silent_collector_spools_to_disk_bounds_the_broker_queue_then_everything_lands(
        stack: Stack, collector: FakeCollector) -> None:
    window = 8
    collector.mode = "silent"
    a = agent(stack, window=window)
    set_flush_after(stack)
    a.start()
    boot = boot_of(a)
    wait_until(lambda: len(disk_batches(stack).get(boot, ())) >= 3 * window, what="batches spooled to disk")
    # At most `window` batches went to the broker while nothing was receipted; the rest waits on disk.
    assert len(collector.seqs(boot)) <= window, collector.seqs(boot)
    collector.mode = "receipt"
    # The window's batches were stored (no receipt was sent for them): receipt them now, as a collector
    # coming back would once they are written.
    for seq in collector.seqs(boot):
        r = wire.Receipt(v=wire.WIRE_VERSION, node="node-a", boot=boot, ranges=[(seq, seq)])
        collector.client.publish(topics.receipts("node-a"), wire.encode(r), qos=1)
    wait_until(lambda: not disk_batches(stack).get(boot), timeout=60, what="the disk backlog to drain")
    seqs = collector.seqs(boot)
    assert sorted(seqs) == list(range(max(seqs) + 1)), f"holes: {set(range(max(seqs) + 1)) - set(seqs)}"


def test_a_batch_the_broker_lost_is_resent_after_the_receipt_timeout(stack: Stack,
                                                                    collector: FakeCollector) -> None:
    a = agent(stack, receipt_timeout="1s")
    set_flush_after(stack)
    a.start()
    boot = boot_of(a)
    wait_until(lambda: len(collector.seqs(boot)) >= 4, what="first batches")
    collector.mode = "lose"  # PUBACKed by the broker, never reaching the store
    time.sleep(1.0)  # the lost span (what is measured is which of its seqs come back)
    collector.mode = "receipt"
    wait_until(lambda: len(collector.seqs(boot)) >= 20, what="batches after the loss")
    top = max(collector.seqs(boot))
    wait_until(lambda: set(range(top)) <= set(collector.seqs(boot)), timeout=30,
               what="the lost batches, resent after the 1 s receipt timeout")
    seqs = collector.seqs(boot)
    assert all(n == 1 for n in seqs.values()), "a receipted batch was sent again"
    assert "Traceback" not in a.log()


def test_a_collector_away_for_sixteen_receipt_timeouts_costs_the_broker_a_few_copies_per_batch(
        stack: Stack, collector: FakeCollector) -> None:
    """A collector away for a quarter of an hour, at 1/60 scale: receipt_timeout 1 s (its floor), silent for
    16 s. Every copy the agent publishes is one more message the broker queues for a collector that is away;
    the doubling wait makes that 4 or 5 per batch (sent, then resent 1, 3, 7 and 15 s later), not 16, and
    only the window's batches: no other batch gets in while they wait for their receipt."""
    window = 8
    collector.mode = "silent"
    a = agent(stack, receipt_timeout="1s", window=window)
    a.start()
    boot = boot_of(a)
    wait_until(lambda: len(collector.seqs(boot)) >= window, what="a window of batches")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 16.0:  # the clock is what is measured against: 16 receipt timeouts
        time.sleep(0.5)
    copies = collector.seqs(boot)
    assert len(copies) == window, f"only the window goes out while nothing is receipted: {copies}"
    assert min(copies.values()) >= 4 and max(copies.values()) <= 5, copies
    print(f"\ncopies per batch over 16 receipt timeouts: {sorted(copies.values())} (without the back-off: 16)")
    a.stop()


@pytest.mark.parametrize("state", ["healthy", "collector-silent", "broker-down"])
def test_power_cut_loses_at_most_flush_after_plus_one_interval_of_host_samples(
        stack: Stack, collector: FakeCollector, state: str) -> None:
    """README, "What a power cut can lose": SIGKILL the agent in each state, restart it with a receipting
    collector, and count the first boot's batches by sequence number."""
    a = agent(stack)
    set_flush_after(stack)
    a.start()
    boot = boot_of(a)
    wait_until(lambda: len(collector.seqs(boot)) >= 8, what="first receipted batches")
    if state == "collector-silent":
        collector.mode = "lose"  # the broker accepts, the store never receipts: only the agent's disk keeps them
    elif state == "broker-down":
        stack.mq.stop()
    time.sleep(4 * FLUSH_AFTER)  # batches of several flush windows in this state
    killed_at = time.time_ns()
    a.signal(signal.SIGKILL)
    if state == "broker-down":
        stack.mq.start()
        wait_until(lambda: collector.subscriptions >= 2, what="the fake collector back on the new broker")
    collector.mode = "receipt"
    b = agent(stack)
    set_flush_after(stack)
    b.start()
    wait_until(lambda: not disk_batches(stack).get(boot), timeout=60, what="the first boot's spool to drain")
    seqs = collector.seqs(boot)
    last = max(seqs)
    assert sorted(seqs) == list(range(last + 1)), f"holes in boot {boot}: {set(range(last + 1)) - set(seqs)}"
    lost_s = (killed_at - collector.last_ts[("node-a", boot, last)]) / 1e9
    assert lost_s <= FLUSH_AFTER + INTERVAL + 0.5, f"the last {lost_s:.2f} s before the kill were lost"


def test_with_the_real_collector_every_seq_lands_and_no_batch_touches_the_disk(stack: Stack,
                                                                                influx: InfluxV1) -> None:
    stack.collector(v1_section(influx)).start().wait_subscribed()
    a = agent(stack).start()  # default spool.flush_after (2 s): the real collector receipts within it
    boot = boot_of(a)
    wait_until(lambda: len(host_times(influx)) >= 24, what="6 s of host samples in InfluxDB")

    def counters() -> tuple[int, int] | None:
        rows = influx.rows("SELECT last(receipted), last(resent) FROM agent WHERE node = 'node-a'")
        return (int(rows[0][1]), int(rows[0][2])) if rows and rows[0][1] else None

    receipted, resent = wait_until(counters, what="the agent to report receipted batches")
    assert receipted >= 8 and resent == 0, (receipted, resent)
    assert disk_batches(stack) == {}, "receipted batches were written to disk"
    a.stop()  # a clean stop writes what is still unreceipted; the next start sends it
    left = disk_batches(stack).get(boot, set())
    stored = len(host_times(influx))
    b = agent(stack).start()
    wait_until(lambda: not disk_batches(stack).get(boot), what="what the first process left to be receipted")
    assert len(host_times(influx)) >= stored + len(left)
    b.stop()


# --- agent.delivery.Pending: the bookkeeping alone (pure logic) --------------------------------------------
def test_pending_resends_with_a_doubling_timeout_and_forgets_what_a_receipt_names() -> None:
    from agent.delivery import Entry, Pending

    def sent(entries: list[Entry], at: float) -> None:
        for e in entries:
            e.sent, e.acked = True, at

    p = Pending(receipt_timeout=10.0, window=3)
    for seq in range(5):
        p.add(Entry("b", seq, "t", b"x", 1, made=0.0))
    first = p.to_send(0.0)
    assert [e.seq for e in first] == [0, 1, 2]  # a window of 3: the others wait
    sent(first, 0.0)
    assert not p.room() and p.awaiting() == 3
    assert p.to_send(9.9) == []  # not due yet, and no free place
    due = p.to_send(10.0)
    assert [e.seq for e in due] == [0, 1, 2] and p.resent == 3  # resent once, keeping their places: 3, 4 wait
    sent(due, 10.0)
    assert p.next_due() == 30.0  # the second wait is twice the first
    assert p.to_send(29.9) == []
    # On disk now; eviction (memory beyond the window) drops only batches never sent: the window keeps its own.
    for e in list(p.entries.values()):
        p.stored(e, rowid=e.seq + 100)
    assert p.evict_stored(keep=0) == 103 and sorted(k[1] for k in p.entries) == [0, 1, 2]
    p.entries[("b", 0)].acked = None  # its publish got no PUBACK (the link failed): sent again, no new place
    assert [e.seq for e in p.to_send(29.9)] == [0]
    assert sorted(p.receipt("b", [(0, 1), (4, 9)])) == [100, 101] and sorted(k[1] for k in p.entries) == [2]
    assert p.receipted == 2 and p.duplicate_receipts == 6  # 4..9 were not waiting here
    assert p.receipt("other-boot", [(2, 3)]) == [] and len(p) == 1 and p.room()
    assert p.entries[("b", 2)].payload is None and p.receipt("b", [(2, 2)]) == [102] and 102 not in p.rowids
