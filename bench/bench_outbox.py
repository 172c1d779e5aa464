"""The agent's outbox: SQLite WAL with synchronous=FULL vs =NORMAL vs an append-only segment file.

Three durable FIFOs of MQTT messages, side by side on the same disk, in
interleaved rounds (medians reported):

- ``agent.outbox.Outbox`` as shipped: SQLite WAL, every put its own fsynced
  transaction (synchronous=FULL), acks deleted in groups without an fsync;
- the same with synchronous=NORMAL (the WAL is fsynced only at checkpoints);
- ``SegmentLog`` below, a minimal append-only segment file: one record
  (length, CRC-32, id, topic, payload) per put, fdatasync per append, acks kept
  as a cursor file written without fsync, fully acked segments deleted.

puts/s: one message of a real agent batch (host + agent samples, per-CPU
fields) per put, each durable before the next. acks/s: delivered ids removed in
groups of 64 (the agent's publish window). The crash check SIGKILLs a writer
process mid-stream and reopens the store: every put it had returned from must
be there. Power loss cannot be simulated here; the table says what each one
promises.

    .venv/bin/python bench/bench_outbox.py [--quick] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import harness
import tables

from agent.outbox import Outbox
from agent.sampler import HostSampler
from runlab import topics, wire

TOPIC = topics.samples("bench-node")
ACK_GROUP = 64


class Store(Protocol):
    def put(self, topic: str, payload: bytes, *, samples: int = 0) -> int | None: ...
    def ack(self, ids: Iterable[int]) -> None: ...
    def ids(self) -> list[int]: ...
    def close(self) -> None: ...


class SqliteFull(Outbox):
    """The shipped outbox, unchanged."""

    def ids(self) -> list[int]:
        return [m.id for m in self.read(0, 10**9)]


class SqliteNormal(SqliteFull):
    """The shipped outbox with synchronous=NORMAL for puts too."""

    def _open(self) -> Any:
        db = super()._open()
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def ack(self, ids: Iterable[int]) -> None:
        super().ack(ids)
        self._db.execute("PRAGMA synchronous=NORMAL")  # Outbox.ack restores FULL


class SegmentLog:
    """A minimal append-only segment-file FIFO: fdatasync per append, acks as a cursor (no fsync).

    Records: u32 length of the rest, u32 CRC-32 of the rest, u64 id, u16 topic length, topic, payload.
    On open every segment is scanned; a torn or corrupt tail ends the segment. Acks below the
    contiguous cursor are forgotten after a crash only in the sense that the cursor file may be
    stale: those messages are sent again (harmless, as with the SQLite outbox). Not here: the
    max_bytes bound, reading for the drain, the dropped counters.
    """

    HEADER = struct.Struct(">II")
    ID = struct.Struct(">QH")

    def __init__(self, directory: Path, segment_bytes: int = 4 * 2**20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._cursor_path = self.dir / "acked"
        self.cursor = int(self._cursor_path.read_text() or 0) if self._cursor_path.exists() else 0
        self._acked: set[int] = set()
        self._segments: list[tuple[Path, int]] = []  # (file, last id in it)
        self._ids: list[int] = []
        for seg in sorted(self.dir.glob("*.seg")):
            ids = self._scan(seg)
            self._ids += ids
            self._segments.append((seg, ids[-1] if ids else 0))
        self._next = max(self._ids, default=self.cursor) + 1
        self._fd = -1
        self._size = 0
        self._rotate()

    def _scan(self, seg: Path) -> list[int]:
        data = seg.read_bytes()
        ids, pos = [], 0
        while pos + self.HEADER.size <= len(data):
            length, crc = self.HEADER.unpack_from(data, pos)
            rest = data[pos + self.HEADER.size:pos + self.HEADER.size + length]
            if len(rest) < length or zlib.crc32(rest) != crc:
                break  # torn tail: the put never returned
            (rid, _tlen) = self.ID.unpack_from(rest)
            if rid > self.cursor:
                ids.append(rid)
            pos += self.HEADER.size + length
        return ids

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        path = self.dir / f"{self._next:020d}.seg"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new file's directory entry is durable too
        finally:
            os.close(dfd)
        self._segments.append((path, 0))
        self._size = 0

    def put(self, topic: str, payload: bytes, *, samples: int = 0) -> int | None:
        rid = self._next
        t = topic.encode()
        rest = self.ID.pack(rid, len(t)) + t + payload
        os.write(self._fd, self.HEADER.pack(len(rest), zlib.crc32(rest)) + rest)
        os.fdatasync(self._fd)
        self._next += 1
        self._size += self.HEADER.size + len(rest)
        self._segments[-1] = (self._segments[-1][0], rid)
        self._ids.append(rid)
        if self._size >= self.segment_bytes:
            self._rotate()
        return rid

    def ack(self, ids: Iterable[int]) -> None:
        self._acked.update(ids)
        while self.cursor + 1 in self._acked:
            self.cursor += 1
            self._acked.discard(self.cursor)
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(str(self.cursor))
        os.replace(tmp, self._cursor_path)  # no fsync: a stale cursor only means sending again
        while len(self._segments) > 1 and 0 < self._segments[0][1] <= self.cursor:
            self._segments.pop(0)[0].unlink()

    def ids(self) -> list[int]:
        return [i for i in self._ids if i > self.cursor and i not in self._acked]

    def close(self) -> None:
        os.close(self._fd)


VARIANTS: dict[str, tuple[str, Any]] = {
    "sqlite-full": ("SQLite WAL, synchronous=FULL (shipped)", lambda d: SqliteFull(d, 256 * 10**6)),
    "sqlite-normal": ("SQLite WAL, synchronous=NORMAL", lambda d: SqliteNormal(d, 256 * 10**6)),
    "segment": ("append-only segment file, fsync per append", lambda d: SegmentLog(d)),
}
SAFETY = {
    "sqlite-full": "process crash: nothing lost; power loss: nothing lost that put returned for",
    "sqlite-normal": "process crash: nothing lost; power loss: the last puts since a checkpoint may vanish",
    "segment": "process crash and power loss: nothing lost (torn tail detected by CRC); a stale ack "
               "cursor resends",
}


def agent_payload() -> bytes:
    """One real agent batch: a host sample with per-CPU fields and an agent sample."""
    host = HostSampler(per_cpu=True)
    time.sleep(0.1)
    s = host.sample()
    agent = wire.Sample(ts=s.ts, name="agent", tags={"version": "0.1.0"}, fields={
        "rss_bytes": 30_000_000, "pss_bytes": 24_000_000, "cpu_percent": 0.4, "outbox_messages": 0,
        "outbox_bytes": 0, "samples_dropped": 0, "messages_lost": 0, "published": 1234,
        "publish_latency_ms_avg": 0.8, "publish_latency_ms_max": 2.1, "connected": True, "reconnects": 0})
    return wire.encode(wire.SampleBatch(v=1, node="bench-node", boot="0123456789ab", seq=1, samples=[s, agent]))


def one_round(variant: str, work: Path, payload: bytes, seconds: float) -> dict[str, float]:
    d = work / f"{variant}-{time.monotonic_ns()}"
    store: Store = VARIANTS[variant][1](d)
    ids: list[int] = []
    lat: list[float] = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    while time.perf_counter() - t0 < seconds:
        p0 = time.perf_counter()
        rid = store.put(TOPIC, payload, samples=2)
        lat.append(time.perf_counter() - p0)
        assert rid is not None
        ids.append(rid)
    put_wall = time.perf_counter() - t0
    put_cpu = time.process_time() - c0
    t1 = time.perf_counter()
    for i in range(0, len(ids), ACK_GROUP):
        store.ack(ids[i:i + ACK_GROUP])
    ack_wall = time.perf_counter() - t1
    left = store.ids()
    store.close()
    shutil.rmtree(d, ignore_errors=True)
    if left:
        raise AssertionError(f"{variant}: {len(left)} messages left after acking all of them")
    lat.sort()
    return {"puts_per_s": len(ids) / put_wall, "acks_per_s": len(ids) / ack_wall,
            "put_p50_ms": lat[len(lat) // 2] * 1e3, "put_p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "put_cpu_us": put_cpu / len(ids) * 1e6}


def crash_check(variant: str, work: Path, payload_len: int) -> dict[str, int]:
    """SIGKILL a process that is putting; every put it returned from must be in the store."""
    d = work / f"crash-{variant}"
    child = subprocess.Popen([harness.PYTHON, __file__, "--child", variant, str(d), str(payload_len)],
                             stdout=subprocess.PIPE, cwd=harness.REPO)
    assert child.stdout is not None
    confirmed: list[int] = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        confirmed.append(int(line))
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()
    child.wait()
    confirmed += [int(x) for x in rest.split()]
    store: Store = VARIANTS[variant][1](d)
    present = set(store.ids())
    store.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"confirmed": len(confirmed), "missing": sum(1 for i in confirmed if i not in present)}


def child(variant: str, directory: str, payload_len: int) -> int:
    store: Store = VARIANTS[variant][1](Path(directory))
    payload = os.urandom(payload_len)
    out = sys.stdout
    while True:
        rid = store.put(TOPIC, payload)
        out.write(f"{rid}\n")
        out.flush()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness.wait_quiet(args.wait_quiet)
    payload = agent_payload()
    base = Path(args.dir) if args.dir else None
    work = Path(tempfile.mkdtemp(prefix="runlab-bench-outbox-", dir=base))
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    try:
        for r in range(args.rounds):
            for v in VARIANTS:
                harness.log(f"round {r + 1}/{args.rounds}: {v}")
                runs[v].append(one_round(v, work, payload, args.seconds))
        crashes = {v: crash_check(v, work, len(payload)) for v in VARIANTS}
        fs = subprocess.run(["findmnt", "-no", "FSTYPE,SOURCE", "-T", str(work)], capture_output=True,
                            text=True).stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    return {"payload_bytes": len(payload), "rounds": args.rounds, "seconds": args.seconds, "median": med,
            "crash": crashes, "filesystem": fs, "directory": str(base or tempfile.gettempdir())}


def report(res: dict[str, Any]) -> str:
    med = res["median"]
    ref = med["sqlite-full"]
    rows = []
    for v, (label, _) in VARIANTS.items():
        m = med[v]
        rows.append([label, f"{m['puts_per_s']:,.0f}", tables.ratio(m["puts_per_s"] / ref["puts_per_s"]),
                     f"{m['put_p50_ms']:.2f} / {m['put_p99_ms']:.2f}", f"{m['put_cpu_us']:.0f}",
                     f"{m['acks_per_s']:,.0f}", tables.ratio(m["acks_per_s"] / ref["acks_per_s"])])
    out = [tables.table(["outbox", "puts/s", "ratio", "put p50/p99 ms", "CPU µs/put", "acks/s", "ratio"], rows,
                        title=f"Outbox, {res['payload_bytes']}-byte agent batches, median of {res['rounds']} "
                              f"interleaved rounds of {res['seconds']:g} s (ratios vs the shipped FULL)")]
    out.append(f"  disk: {res['filesystem']} ({res['directory']}); acks in groups of {ACK_GROUP}")
    rows = [[VARIANTS[v][0], f"{c['confirmed']} returned, {c['missing']} missing", SAFETY[v]]
            for v, c in res["crash"].items()]
    out.append("")
    out.append(tables.table(["crash safety", "SIGKILL mid-stream", "what it promises"], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 rounds of 1 s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="of puts per variant and round")
    p.add_argument("--dir", help="where to put the stores (default: the temp dir); use the agent's disk")
    p.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for an idle machine")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 1.0
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
