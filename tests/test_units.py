"""Units without servers: sequence tracking, the agent's outbox (incl. a full and a read-only disk),
the host sampler's field types, and topic names."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.sampler as sampler
import collector.sequence as sequence
from agent.outbox import Outbox
from collector.sequence import SequenceTracker
from runlab import topics, wire
from tests.conftest import REPO

# --- collector.sequence.SequenceTracker -----------------------------------------------------------------------


def feed(tracker: SequenceTracker, seqs: list[int], node: str = "n", boot: str = "b") -> list[bool]:
    return [tracker.see(node, boot, s) for s in seqs]


def test_in_order_stream_has_no_gaps_or_duplicates() -> None:
    t = SequenceTracker()
    assert all(feed(t, list(range(50))))
    assert (t.gaps, t.duplicates, t.streams) == (0, 0, 1)


def test_gap_is_counted_until_the_missing_batch_arrives() -> None:
    t = SequenceTracker()
    feed(t, [0, 1, 4, 5])
    assert t.gaps == 2  # 2 and 3
    assert t.see("n", "b", 3)
    assert t.gaps == 1
    assert t.see("n", "b", 2)
    assert (t.gaps, t.duplicates) == (0, 0)


def test_duplicates_are_counted_and_reported() -> None:
    t = SequenceTracker()
    feed(t, [0, 1, 2])
    assert feed(t, [2, 0, 1]) == [False, False, False]
    assert (t.duplicates, t.gaps) == (3, 0)
    feed(t, [5])
    assert t.see("n", "b", 4) and not t.see("n", "b", 4)  # a filled hole seen again is a duplicate too
    assert (t.duplicates, t.gaps) == (4, 1)


def test_backlog_draining_oldest_first_behind_live_batches() -> None:
    # The collector (re)starts while an agent has a backlog: live batches 100.. overtake it, the backlog
    # 90..99 then drains oldest-first. Nothing is lost, nothing is duplicated.
    t = SequenceTracker()
    feed(t, [100, 101, 102])
    assert t.see("n", "b", 90)
    assert t.gaps == 9  # 91..99 are now known to be on their way
    feed(t, [103, *range(91, 100), 104])
    assert (t.gaps, t.duplicates) == (0, 0)
    assert feed(t, [90, 95, 104]) == [False, False, False]
    assert t.duplicates == 3


def test_streams_are_per_node_and_boot() -> None:
    t = SequenceTracker()
    feed(t, [0, 1], node="a", boot="1")
    feed(t, [0, 1], node="a", boot="2")  # a restarted agent starts again at 0: not a duplicate
    feed(t, [0, 2], node="b", boot="1")
    assert (t.streams, t.duplicates, t.gaps) == (3, 0, 1)


def test_missing_ranges_are_bounded_and_forgotten_holes_stay_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "MAX_MISSING", 10)
    t = SequenceTracker()
    feed(t, [0, 100])
    st_ = t._streams[("n", "b")]
    assert t.gaps == 99 and len(st_.los) == 1  # one range, however long
    feed(t, list(range(102, 142, 2)))  # 20 more holes of one batch each: only the 10 highest ranges are kept
    assert len(st_.los) == 10 and st_.forgotten == 99 + 10
    assert t.gaps == 99 + 20  # forgotten ones stay counted
    assert t.see("n", "b", 139)
    assert t.gaps == 99 + 19
    assert t.see("n", "b", 139) is False and t.duplicates == 1
    # A forgotten hole arriving late: written (the store overwrites a redelivery anyway), not called a duplicate,
    # and still counted as lost (the tracker cannot tell which of the forgotten came).
    assert t.see("n", "b", 50) and t.see("n", "b", 101)
    assert (t.gaps, t.duplicates) == (99 + 19, 1)


def test_a_hole_split_in_the_middle_keeps_both_sides() -> None:
    t = SequenceTracker()
    feed(t, [0, 10])
    assert feed(t, [5, 1, 9]) == [True, True, True]
    assert t.gaps == 6  # 2 3 4 6 7 8
    assert feed(t, [5, 1, 9]) == [False, False, False]
    assert feed(t, [2, 3, 4, 6, 7, 8]) == [True] * 6
    assert (t.gaps, t.duplicates) == (0, 3)


def test_backlog_longer_than_max_missing_is_neither_undercounted_nor_duplicated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "MAX_MISSING", 10)
    t = SequenceTracker()
    feed(t, [100])
    feed(t, [0])  # a long backlog starts draining, oldest first
    assert t.gaps == 99
    assert all(feed(t, list(range(1, 100))))
    assert (t.gaps, t.duplicates) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=200))
def test_tracker_agrees_with_a_set_of_everything_seen(seqs: list[int]) -> None:
    """Any arrival order (backlogs, overtaking, redeliveries): duplicates and gaps as a plain set would count
    them, for as long as nothing had to be forgotten."""
    t = SequenceTracker()
    seen: set[int] = set()
    for s in seqs:
        assert t.see("n", "b", s) == (s not in seen)
        seen.add(s)
        assert t.gaps == max(seen) - min(seen) + 1 - len(seen)
    assert t.duplicates == len(seqs) - len(seen)


# --- agent.outbox.Outbox ------------------------------------------------------------------------------------

def test_put_read_ack(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, 10**6)
    ids = [ob.put(f"t/{i}", bytes([i]) * (i + 1), samples=i, qos=1, retain=i == 2) for i in range(5)]
    assert ids == sorted(ids) and None not in ids and len(set(ids)) == 5
    assert (ob.depth, ob.bytes, ob.last_id()) == (5, 1 + 2 + 3 + 4 + 5, ids[-1])
    rows = ob.read(0, 10)
    assert [(m.id, m.topic, m.payload, m.qos, m.retain) for m in rows] == [
        (ids[i], f"t/{i}", bytes([i]) * (i + 1), 1, i == 2) for i in range(5)]
    assert [m.id for m in ob.read(ids[1], 2)] == ids[2:4]
    assert [m.id for m in ob.read(0, 10, upto_id=ids[2])] == ids[:3]
    ob.ack([ids[0], ids[3], 999_999])  # an unknown id is harmless
    assert (ob.depth, ob.bytes) == (3, 2 + 3 + 5)
    ob.ack([ids[0]])  # acked twice (a replayed PUBACK): harmless
    ob.ack([])
    assert [m.id for m in ob.read(0, 10)] == [ids[1], ids[2], ids[4]]
    assert ob.last_id() == ids[4]
    ob.close()


def test_ack_of_many_ids_in_chunks(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, 10**7)
    ids = [ob.put("t", b"x" * 10) for _ in range(1200)]
    ob.ack([i for i in ids if i is not None][:1100])
    assert (ob.depth, ob.bytes) == (100, 1000)
    assert len(ob.read(0, 2000)) == 100
    ob.close()


def test_contents_and_counters_survive_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, 300)
    for i in range(10):
        ob.put("t", bytes([i]) * 100, samples=2)
    assert (ob.dropped_messages, ob.dropped_samples) == (7, 14)  # 3 × 100 bytes fit
    ob.ack([ob.read(0, 1)[0].id])
    before = ob.read(0, 100)
    ob.close()
    again = Outbox(tmp_path, 300)
    assert again.read(0, 100) == before
    assert (again.depth, again.bytes) == (2, 200)
    assert (again.dropped_messages, again.dropped_samples) == (7, 14)
    again.close()


def test_sigkill_right_after_put_loses_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from agent.outbox import Outbox
        ob = Outbox({str(tmp_path)!r}, 10**6)
        for i in range(20):
            assert ob.put("t", b"payload-%d" % i, samples=1) is not None
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ob = Outbox(tmp_path, 10**6)
    assert [m.payload for m in ob.read(0, 100)] == [b"payload-%d" % i for i in range(20)]
    ob.close()


def test_bound_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, 1000)
    for i in range(10):
        assert ob.put("t", bytes([i]) * 200, samples=3) is not None
        assert ob.bytes <= 1000
    assert [m.payload[0] for m in ob.read(0, 100)] == [5, 6, 7, 8, 9]  # the newest five fit
    assert (ob.depth, ob.bytes, ob.dropped_messages, ob.dropped_samples) == (5, 1000, 5, 15)
    ob.put("t", b"z" * 450, samples=1)  # needs three slots
    assert [m.payload[0] for m in ob.read(0, 100)] == [8, 9, ord("z")]
    assert (ob.dropped_messages, ob.dropped_samples) == (8, 24)
    ob.close()


def test_corrupt_outbox_is_moved_aside_and_a_new_one_started(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "outbox.sqlite").write_bytes(b"this is not a database" * 100)
    ob = Outbox(tmp_path, 10**6)
    assert ob.depth == 0 and ob.put("t", b"x") is not None
    ob.close()
    aside = list(tmp_path.glob("outbox.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not a database" * 100
    assert "moved aside" in caplog.text


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own (root only): a disk that can really fill up or turn read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)  # something still open: detach anyway


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; return it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: close() has nothing left to flush
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_full_disk_counts_failed_puts_and_recovers(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(tmpfs / "spool", 10**9)
    kept = [ob.put("t", b"k%d" % i + b"." * 2000, samples=1) for i in range(5)]
    assert None not in kept
    filler = fill(tmpfs)
    results = [ob.put("t", os.urandom(8000), samples=1) for _ in range(20)]  # must not raise
    assert ob.failed_puts == results.count(None) >= 1
    assert "database or disk is full" in caplog.text  # the real reason, not a failed ROLLBACK
    stored = ob.read(0, 1000)
    assert [m.id for m in stored][:5] == kept
    assert (ob.depth, ob.bytes) == (len(stored), sum(len(m.payload) for m in stored))
    ob.ack([m.id for m in stored[:2]])  # may fail on a full disk: must not raise either
    filler.unlink()
    assert ob.put("t", b"after", samples=1) is not None
    ob.ack([m.id for m in ob.read(0, 1000)])
    assert (ob.depth, ob.bytes) == (0, 0)
    ob.close()


def test_outbox_on_a_read_only_disk(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A file system cannot be remounted read-only while the outbox has its files open (the kernel answers
    # EBUSY), so the realistic case is an agent (re)starting on a disk that went read-only: once after a
    # SIGKILL (the WAL and shared-memory files are still there), once after a clean stop, once with no
    # outbox yet.
    script = textwrap.dedent(f"""
        import os, signal
        from agent.outbox import Outbox
        ob = Outbox({str(tmpfs / "killed")!r}, 10**6)
        for i in range(3):
            ob.put("t", b"kept-%d" % i, samples=1)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    clean = Outbox(tmpfs / "clean", 10**6)
    clean.put("t", b"clean")
    clean.close()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)

    ob = Outbox(tmpfs / "killed", 10**6)  # opens read-only: what is spooled can still be sent
    assert [m.payload for m in ob.read(0, 10)] == [b"kept-0", b"kept-1", b"kept-2"]
    assert ob.put("t", b"new") is None and ob.failed_puts == 1
    ob.ack([m.id for m in ob.read(0, 10)])  # cannot delete: logged, not raised; sent again later
    assert ob.depth == 3
    assert "readonly database" in caplog.text
    ob.close()

    with pytest.raises(OSError, match="cannot open the outbox database"):
        Outbox(tmpfs / "clean", 10**6)
    # Not mistaken for corruption: nothing renamed, nothing lost.
    assert sorted(p.name for p in (tmpfs / "clean").iterdir()) == ["outbox.sqlite"]
    with sqlite3.connect(f"file:{tmpfs / 'clean' / 'outbox.sqlite'}?immutable=1", uri=True) as db:
        assert db.execute("SELECT payload FROM outbox").fetchall() == [(b"clean",)]
    with pytest.raises(OSError):
        Outbox(tmpfs / "new", 10**6)
    assert "moved aside" not in caplog.text


# --- agent.sampler -----------------------------------------------------------------------------------------

def field_types(fields: dict[str, Any]) -> dict[str, type]:
    return {k: type(v) for k, v in fields.items()}


@pytest.mark.parametrize("per_cpu", [True, False])
def test_host_samples_keep_their_field_types(per_cpu: bool) -> None:
    h = sampler.HostSampler(per_cpu=per_cpu)
    first, second = h.sample(), h.sample()
    assert first.name == second.name == "host" and first.tags == second.tags == {}
    assert field_types(first.fields) == field_types(second.fields)
    assert set(field_types(first.fields).values()) <= {int, float, bool}
    for name in ("cpu_percent", "load1", "mem_used_percent", "swap_used_percent"):
        assert type(first.fields[name]) is float, name
    for name in ("mem_total_bytes", "mem_available_bytes", "swap_total_bytes"):
        assert type(first.fields[name]) is int, name
    assert all(v == v and abs(v) != float("inf") for v in first.fields.values() if type(v) is float)
    assert ("cpu0_percent" in first.fields) is per_cpu
    assert second.ts > first.ts


def test_pi_throttle_fields_keep_their_types(monkeypatch: pytest.MonkeyPatch) -> None:
    masks = iter([0x0, 0x50005])
    monkeypatch.setattr(sampler, "read_pi_throttled", lambda *a: next(masks))
    h = sampler.HostSampler(per_cpu=False)
    h.has_pi_firmware = True
    first, second = h.sample(), h.sample()
    assert field_types(first.fields) == field_types(second.fields)
    assert first.fields["throttled_mask"] == 0 and second.fields["throttled_mask"] == 0x50005
    assert first.fields["throttled"] is False and second.fields["throttled"] is True


def test_self_sampler_field_types() -> None:
    s = sampler.SelfSampler()
    a, b = s.footprint(), s.footprint()
    assert field_types(a) == field_types(b)
    assert type(a["rss_bytes"]) is int and type(a["cpu_percent"]) is float


def test_temperatures_are_floats_and_skip_missing_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler.procfs, "sensors_temperatures", lambda root="": {
        "cpu_thermal": [("", 48.0)], "coretemp": [("Core 0", 51.5), ("Core 1", float("inf")),
                                                  ("Core 2", float("nan"))]})
    temps = sampler.HostSampler._temperatures()
    assert temps == {"temp_cpu_thermal_0_c": 48.0, "temp_coretemp_core_0_c": 51.5}
    assert all(type(v) is float for v in temps.values())


@pytest.mark.parametrize(("mask", "on"), [
    (0x0, set()),
    (0x1, {"under_voltage"}),
    (0x2, {"arm_freq_capped"}),
    (0x4, {"throttled"}),
    (0x8, {"soft_temp_limit"}),
    (0x10000, {"under_voltage_occurred"}),
    (0x20000, {"arm_freq_capped_occurred"}),
    (0x40000, {"throttled_occurred"}),
    (0x80000, {"soft_temp_limit_occurred"}),
    (0x50005, {"under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"}),
    (0x10, set()),  # bits the firmware documents no meaning for are only in the mask
    (0xF000F, {"under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit", "under_voltage_occurred",
               "arm_freq_capped_occurred", "throttled_occurred", "soft_temp_limit_occurred"}),
])
def test_throttle_fields_bits(mask: int, on: set[str]) -> None:
    f = sampler.throttle_fields(mask)
    assert f.pop("throttled_mask") == mask
    assert len(f) == 8 and all(type(v) is bool for v in f.values())
    assert {k for k, v in f.items() if v} == on


def test_read_pi_throttled(tmp_path: Path) -> None:
    p = tmp_path / "get_throttled"
    p.write_text("50005\n")  # the firmware driver prints the mask in hex
    assert sampler.read_pi_throttled(p) == 0x50005
    p.write_text("garbage\n")
    assert sampler.read_pi_throttled(p) is None
    assert sampler.read_pi_throttled(tmp_path / "missing") is None


# --- runlab.topics -----------------------------------------------------------------------------------------

def test_topic_builders() -> None:
    assert topics.status("pi4") == "runlab/v1/nodes/pi4/status"
    assert topics.samples("pi4") == "runlab/v1/nodes/pi4/samples"
    assert topics.events("pi4") == "runlab/v1/nodes/pi4/events"
    assert topics.control("pi4") == "runlab/v1/nodes/pi4/control"
    assert topics.node_experiment("pi4", "r1") == "runlab/v1/nodes/pi4/experiments/r1"
    assert topics.group_experiment("lab", "r1") == "runlab/v1/groups/lab/experiments/r1"
    assert topics.all_nodes("samples") == "runlab/v1/nodes/+/samples"
    assert topics.shared("collectors", "a/+/b") == "$share/collectors/a/+/b"
    assert topics.shared("", "a/+/b") == "a/+/b"


@pytest.mark.parametrize(("topic", "parsed"), [
    ("runlab/v1/nodes/pi4/samples", ("pi4", "samples")),
    ("runlab/v1/nodes/a.b_c-d/status", ("a.b_c-d", "status")),
    ("runlab/v1/nodes/x/bogus", ("x", "bogus")),  # any kind: the caller decides what it handles
    ("runlab/v1/nodes/pi4/samples/extra", None),
    ("runlab/v1/nodes/pi4", None),
    ("runlab/v1/nodes//samples", None),
    ("runlab/v2/nodes/pi4/samples", None),
    ("/runlab/v1/nodes/pi4/samples", None),
    ("runlab/v1/nodes/pi4/Samples", None),
    ("runlab/v1/nodes/pi4/samples\n", None),
    ("runlab/v1/groups/lab/experiments/r1", None),
])
def test_parse_node_topic(topic: str, parsed: tuple[str, str] | None) -> None:
    assert topics.parse_node_topic(topic) == parsed


@pytest.mark.parametrize(("name", "ok"), [
    ("pi4", True), ("a", True), ("A.b_c-9", True), ("x" * 64, True), ("9lives", True),
    ("", False), ("x" * 65, False), ("-a", False), (".a", False), ("_a", False), ("a/b", False), ("a+b", False),
    ("a#", False), ("a b", False), ("ü", False), ("pi4\n", False), ("pi4\r", False), ("\npi4", False),
])
def test_valid_name(name: str, ok: bool) -> None:
    assert topics.valid_name(name) is ok


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(list("aZ09._-/+# \n\rü")), max_size=70))
def test_wire_and_topics_agree_on_node_names(name: str) -> None:
    payload = msgpack.packb({"v": 1, "node": name, "boot": "b", "seq": 0, "samples": []})
    try:
        wire.decode_batch(payload)
        accepted = True
    except wire.DecodeError:
        accepted = False
    assert accepted is topics.valid_name(name)
    if accepted:
        assert topics.parse_node_topic(topics.samples(name)) == (name, "samples")
