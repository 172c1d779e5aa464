"""End to end with real servers: agent → Mosquitto → collector → InfluxDB, through outages and kills."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from runlab import topics, wire
from runlab.devservers import InfluxV1, Mosquitto, VictoriaMetrics
from tests.conftest import Stack, host_times, v1_section, wait_until
from tests.helpers import StoreView

INTERVAL_NS = 250_000_000


class Ledger:
    """An independent subscriber that records every batch the agent published: (boot, seq) → its samples.

    The pipeline is then checked batch by batch, by sequence number: each boot's numbers run without a hole
    (the agent published every batch), and every sample of every batch is in the store. A count per second
    would hide a lost batch behind a duplicated one; this cannot.
    """

    def __init__(self, mq: Mosquitto, node: str = "node-a") -> None:
        self.node = node
        self.batches: dict[tuple[str, int], list[tuple[str, int]]] = {}
        self.deliveries = 0
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ledger-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topics.samples(node), qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", mq.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the ledger could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        b = wire.decode_batch(msg.payload)
        with self._lock:
            self.deliveries += 1
            self.batches[(b.boot, b.seq)] = [(s.name, s.ts) for s in b.samples]

    def window(self, upto_ns: int) -> dict[tuple[str, int], list[tuple[str, int]]]:
        """The batches all of whose samples were taken at or before ``upto_ns``."""
        with self._lock:
            return {k: v for k, v in self.batches.items() if all(ts <= upto_ns for _n, ts in v)}

    def missing(self, influx: InfluxV1, upto_ns: int) -> list[tuple[str, int]]:
        """Batches (boot, seq) published up to ``upto_ns`` that the store does not fully hold."""
        batches = self.window(upto_ns)
        stored: dict[str, set[int]] = {}
        for name in {n for samples in batches.values() for n, _ in samples}:
            stored[name] = {r[0] for r in influx.rows(f"SELECT * FROM \"{name}\" WHERE node = '{self.node}'")}
        return sorted(k for k, samples in batches.items() if any(ts not in stored[n] for n, ts in samples))

    def holes(self) -> dict[str, list[int]]:
        """Per boot, sequence numbers between its first and last that no batch had."""
        with self._lock:
            keys = list(self.batches)
        out = {}
        for boot in {b for b, _ in keys}:
            seqs = sorted(s for b, s in keys if b == boot)
            gone = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
            if gone:
                out[boot] = gone
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def assert_every_batch_stored_once(influx: InfluxV1, ledger: Ledger, upto_ns: int, timeout: float = 60) -> int:
    """Every batch the agent published up to ``upto_ns`` lands (waiting for the drain), no point twice; how many."""
    try:
        wait_until(lambda: not ledger.missing(influx, upto_ns), timeout=timeout, what="every published batch to land")
    except AssertionError:
        gone = ledger.missing(influx, upto_ns)
        with ledger._lock:
            detail = {k: ledger.batches[k] for k in gone[:5]}
        raise AssertionError(f"{len(gone)} of {len(ledger.window(upto_ns))} published batches not in the store: "
                             f"{gone[:20]}; e.g. {detail}") from None
    assert ledger.holes() == {}, "the agent skipped sequence numbers"
    times = host_times(influx, ledger.node)
    assert len(times) == len(set(times)), "a host point stored twice"
    return len(ledger.window(upto_ns))


def assert_no_gap(times: list[int], start_ns: int, end_ns: int, max_gap_ns: int = 1_000_000_000) -> None:
    """Consecutive host samples between start and end are never 1 s apart or more."""
    window = [t for t in times if start_ns <= t <= end_ns]
    assert len(window) >= (end_ns - start_ns) // INTERVAL_NS // 2, f"only {len(window)} samples in the window"
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(window) if b - a >= max_gap_ns]
    assert not gaps, f"gaps of {gaps} s in the host samples"


def test_host_samples_land_in_influxdb_v1_with_node_tag(stack: Stack, influx: InfluxV1) -> None:
    stack.collector(v1_section(influx)).start()
    stack.agent("pi4-livingroom").start()
    rows = wait_until(lambda: influx.rows("SELECT count(cpu_percent) FROM host WHERE node = 'pi4-livingroom'"),
                      what="host samples in InfluxDB")
    assert rows[0][1] >= 1
    fields = {r[0]: r[1] for r in influx.rows("SHOW FIELD KEYS FROM host")}
    assert fields["cpu_percent"] == "float"
    assert fields["mem_total_bytes"] == "integer"
    assert fields["load1"] == "float"
    agent_fields = {r[0]: r[1] for r in wait_until(lambda: influx.rows("SHOW FIELD KEYS FROM agent"))}
    for key in ("rss_bytes", "cpu_percent", "outbox_messages", "outbox_bytes", "samples_dropped",
                "publish_latency_ms_avg"):
        assert key in agent_fields, key
    status = wait_until(lambda: influx.rows("SELECT online, arch FROM node_status WHERE node = 'pi4-livingroom'"))
    assert status[-1][1] is True


def test_host_samples_land_in_victoriametrics_through_v2_write_api(stack: Stack, victoria: VictoriaMetrics) -> None:
    stack.collector(f"  url: {victoria.url}\n  api: v2\n  org: homelab\n  bucket: runlab\n  token: unused").start()
    stack.agent("vm-node").start()
    series = wait_until(lambda: victoria.export('host_cpu_percent{node="vm-node"}'), what="series in VM")
    assert series[0]["metric"]["node"] == "vm-node"
    assert len(series[0]["values"]) >= 1


@pytest.mark.slow
def test_broker_down_15s_leaves_no_gap(stack: Stack, influx: InfluxV1) -> None:
    stack.collector(v1_section(influx)).start()
    stack.agent().start()
    wait_until(lambda: len(host_times(influx)) >= 8, what="samples before the outage")
    before = time.time_ns()
    stack.mq.stop()
    time.sleep(15)  # the outage itself is what is tested
    stack.mq.start()
    after = time.time_ns()
    wait_until(lambda: any(t > after + 2 * 10**9 for t in host_times(influx)), timeout=60,
               what="samples after the broker returned")
    assert_no_gap(host_times(influx), before - 10**9, after + 10**9)


@pytest.mark.slow
@pytest.mark.parametrize("share_group", ["", "collectors"])
def test_collector_sigkill_and_restart_loses_no_batch(stack: Stack, influx: InfluxV1, share_group: str) -> None:
    ledger = Ledger(stack.mq)
    try:
        cname = f"col-{uuid.uuid4().hex[:6]}"
        collector = stack.collector(v1_section(influx), name=cname, share_group=share_group).start()
        collector.wait_subscribed()
        stack.agent().start()
        wait_until(lambda: len(host_times(influx)) >= 8, what="samples before the kill")
        collector.kill()
        time.sleep(4)  # batches published now must wait at the broker for our persistent session
        collector.start()
        after = time.time_ns()
        wait_until(lambda: any(t > after + 2 * 10**9 for t in host_times(influx)), timeout=60,
                   what="samples after the collector restarted")
        n = assert_every_batch_stored_once(influx, ledger, after + 10**9)
        assert n >= 20, f"only {n} batches in the window"
        view = StoreView(influx)
        wait_until(lambda: view.last_collector_field(cname, "gaps") == 0, what="the collector to count no gap")
        assert view.last_collector_field(cname, "duplicates") is not None  # counted and reported
    finally:
        ledger.close()


@pytest.mark.slow
def test_influxdb_down_loses_no_batch(stack: Stack, tmp_path: Path) -> None:
    ledger = Ledger(stack.mq)
    try:
        with InfluxV1(tmp_path / "own-influx", database="outage") as own:
            collector = stack.collector(v1_section(own)).start().wait_subscribed()  # its session queues from now
            stack.agent().start()
            wait_until(lambda: len(host_times(own)) >= 8, what="samples before the outage")
            own.stop()
            time.sleep(15)  # the outage itself is what is tested
            own.start()
            after = time.time_ns()
            wait_until(lambda: any(t > after + 2 * 10**9 for t in host_times(own)), timeout=60,
                       what="samples after InfluxDB returned")
            n = assert_every_batch_stored_once(own, ledger, after + 10**9)
            assert n >= 60 + 8, f"only {n} batches in the window"
            assert collector.alive
            assert "cannot write to" in collector.log()
    finally:
        ledger.close()


# The agent resends what has no receipt after delivery.receipt_timeout (60 s by default): 3 s here.
QUICK_RESEND = "delivery:\n  receipt_timeout: 3s\n"


def resent(influx: InfluxV1) -> int:
    """Batches the agent has published again for want of a receipt (its own ``agent`` measurement)."""
    rows = influx.rows("SELECT max(resent) FROM agent WHERE node = 'node-a'")
    return int(rows[0][1]) if rows and rows[0][1] is not None else 0


# ---- faults the broker's queue alone cannot survive: only the agent's resend (no receipt → send again) can ----
def persistent_ledger(mq: Mosquitto, node: str = "node-a") -> Ledger:
    """A Ledger whose session the broker keeps (and saves), so it misses nothing across a broker restart."""
    ledger = Ledger.__new__(Ledger)
    ledger.node, ledger.batches, ledger.deliveries, ledger._lock = node, {}, 0, threading.Lock()
    subscribed = threading.Event()
    ledger.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ledger-{uuid.uuid4().hex[:8]}",
                                protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    ledger.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topics.samples(node), qos=1)
    ledger.client.on_subscribe = lambda *_a: subscribed.set()
    ledger.client.on_message = ledger._on_message
    ledger.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
    ledger.client.connect("127.0.0.1", mq.port, clean_start=False, properties=props)
    ledger.client.loop_start()
    assert subscribed.wait(10), "the ledger could not subscribe"
    return ledger


@pytest.mark.slow
def test_broker_sigkilled_holding_a_backlog_loses_no_batch(stack: Stack, influx: InfluxV1) -> None:
    # The collector is away, so the broker holds what the agent publishes; then the broker is SIGKILLed before
    # it saved any of it (autosave_interval 30 s). Only batches the agent still keeps (no receipt) can come back.
    ledger = persistent_ledger(stack.mq)
    try:
        collector = stack.collector(v1_section(influx)).start().wait_subscribed()
        collector.stop()
        stack.mq.stop()  # a clean stop saves both sessions (collector's, ledger's) ...
        stack.mq.start()
        wait_until(lambda: ledger.client.is_connected(), what="the ledger to reconnect")
        stack.agent(extra=QUICK_RESEND).start()
        wait_until(lambda: len(ledger.window(time.time_ns())) >= 24, what="6 s of batches at the broker")
        stack.mq.kill()  # ... and what was queued since dies with it
        killed = time.time_ns()
        stack.mq.start()
        collector.start().wait_subscribed()
        wait_until(lambda: any(t > killed + 3 * 10**9 for t in host_times(influx)), timeout=60,
                   what="samples after the broker came back")
        n = assert_every_batch_stored_once(influx, ledger, killed + 2 * 10**9, timeout=45)
        assert n >= 24
        assert wait_until(lambda: resent(influx), what="the agent to report its resends") > 0  # what came back
    finally:
        ledger.close()


@pytest.mark.slow
def test_share_group_member_sigkilled_for_good_loses_no_batch(stack: Stack, influx: InfluxV1) -> None:
    # Two collectors share the stream; one is SIGKILLed and never comes back. What the broker had routed to it
    # (and keeps routing until its session expires: 2 s here, 2 min by default) must still land.
    ledger = Ledger(stack.mq)
    try:
        members = []
        for name in ("member-dies", "member-lives"):
            c = stack.collector(v1_section(influx), name=name, share_group="collectors")
            c.config.write_text(c.config.read_text().replace("  share_group: 'collectors'\n",
                                                             "  share_group: 'collectors'\n  session_expiry: 2s\n"))
            members.append(c.start().wait_subscribed())
        stack.agent(extra=QUICK_RESEND).start()
        wait_until(lambda: len(host_times(influx)) >= 8, what="samples before the kill")
        members[0].kill()
        killed = time.time_ns()
        wait_until(lambda: any(t > killed + 8 * 10**9 for t in host_times(influx)), timeout=60,
                   what="8 s of samples after the kill")
        n = assert_every_batch_stored_once(influx, ledger, killed + 6 * 10**9, timeout=45)
        assert n >= 30
        assert wait_until(lambda: resent(influx), what="the agent to report its resends") > 0  # what came back
    finally:
        ledger.close()


@pytest.mark.slow
def test_agent_sigkill_keeps_what_its_outbox_held(stack: Stack, influx: InfluxV1) -> None:
    stack.mq.stop()  # the agent spools to its outbox while the broker is away
    agent = stack.agent().start()
    start = time.time_ns()
    outbox = stack.tmp / "spool-node-a" / "outbox.sqlite"
    wait_until(outbox.exists, what="the outbox file")
    time.sleep(4)
    agent.kill()
    killed = time.time_ns()
    with sqlite3.connect(outbox) as db:
        spooled = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    # A batch goes to disk once it is spool.flush_after (2 s) old without a receipt: a power cut loses at
    # most that plus one sampling interval (README, "What a power cut can lose").
    assert spooled >= 4, f"only {spooled} batches were spooled before SIGKILL"
    stack.mq.start()
    stack.collector(v1_section(influx)).start().wait_subscribed()
    agent.start()
    wait_until(lambda: len([t for t in host_times(influx) if t <= killed]) >= spooled, timeout=60,
               what=f"all {spooled} spooled batches to land")
    assert len([t for t in host_times(influx) if t <= killed]) == spooled
    assert_no_gap(host_times(influx), start + 10**9, killed - 2_750 * 10**6)


def test_full_outbox_drops_oldest_counts_and_keeps_running(stack: Stack, influx: InfluxV1) -> None:
    # The collector's persistent session exists before the outage, as in real life: whatever the
    # agent publishes once the broker is back is queued for it, however fast the agent reconnects.
    collector = stack.collector(v1_section(influx)).start().wait_subscribed()
    stack.mq.stop()
    began = time.time_ns()
    agent = stack.agent(interval="50ms", max_bytes="64KiB").start()
    outbox = stack.tmp / "spool-node-a" / "outbox.sqlite"
    wait_until(lambda: "outbox full" in agent.log(), timeout=60, what="the outbox to overflow")

    def dropped_in_outbox() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM counters WHERE name = 'dropped_messages'").fetchone()
            return int(row[0]) if row else 0

    # Let it drop at least 2 s worth of 50 ms batches before the broker returns.
    wait_until(lambda: dropped_in_outbox() >= 40, timeout=60, what="40 batches dropped")
    stack.mq.start()
    assert collector.alive

    def dropped() -> int:
        rows = influx.rows("SELECT max(samples_dropped) FROM agent WHERE node = 'node-a'")
        return int(rows[0][1]) if rows else 0

    assert wait_until(dropped, timeout=60, what="the agent's drop counter to be reported") > 0
    assert agent.alive
    assert outbox.exists()
    # The first agent point that says "connected" marks the reconnection: what was sampled before it is
    # the backlog, which drains oldest-first behind the live batches, so its newest part lands last.
    first_connected = wait_until(
        lambda: influx.rows("SELECT first(rss_bytes) FROM agent WHERE node = 'node-a' AND connected = true"),
        timeout=60, what="the agent to reconnect")[0][0]
    wait_until(lambda: [t for t in host_times(influx) if first_connected - 10**9 <= t < first_connected],
               timeout=60, what="the whole backlog to land")
    times = host_times(influx)
    spooled = [t for t in times if t < first_connected]
    # What survived is the newest part of the outage, without holes; the start of it was dropped.
    assert_no_gap(times, spooled[0], first_connected - 5 * 10**8)
    assert spooled[0] - began > 2 * 10**9, "the first samples should have been dropped to make room"
