"""End to end with real servers: agent → Mosquitto → collector → InfluxDB, through outages and kills."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from runlab.devservers import InfluxV1, VictoriaMetrics
from tests.conftest import Stack, host_times, v1_section, wait_until

INTERVAL_NS = 250_000_000


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
def test_collector_sigkill_and_restart_leaves_no_gap_and_no_duplicates(stack: Stack, influx: InfluxV1,
                                                                        share_group: str) -> None:
    collector = stack.collector(v1_section(influx), share_group=share_group).start()
    stack.agent().start()
    wait_until(lambda: len(host_times(influx)) >= 8, what="samples before the kill")
    before = time.time_ns()
    collector.kill()
    time.sleep(4)  # samples published now must wait at the broker for our persistent session
    collector.start()
    after = time.time_ns()
    wait_until(lambda: any(t > after + 2 * 10**9 for t in host_times(influx)), timeout=60,
               what="samples after the collector restarted")
    times = host_times(influx)
    assert_no_gap(times, before - 10**9, after + 10**9)
    assert len(times) == len(set(times))
    # One host and one agent point per batch: equal counts mean every batch landed exactly once.
    agents = [r[0] for r in influx.rows("SELECT rss_bytes FROM agent WHERE node = 'node-a'")]
    last = min(times[-1], agents[-1]) - INTERVAL_NS // 2  # between two batches
    assert len([t for t in times if t <= last]) == len([t for t in agents if t <= last])


@pytest.mark.slow
def test_influxdb_down_30s_leaves_no_gap(stack: Stack, tmp_path: Path) -> None:
    with InfluxV1(tmp_path / "own-influx", database="outage") as own:
        collector = stack.collector(v1_section(own)).start()
        stack.agent().start()
        wait_until(lambda: len(host_times(own)) >= 8, what="samples before the outage")
        before = time.time_ns()
        own.stop()
        time.sleep(30)  # the outage itself is what is tested
        own.start()
        after = time.time_ns()
        wait_until(lambda: any(t > after + 2 * 10**9 for t in host_times(own)), timeout=60,
                   what="samples after InfluxDB returned")
        assert_no_gap(host_times(own), before - 10**9, after + 10**9)
        assert collector.alive
        assert "cannot write to" in collector.log()


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
