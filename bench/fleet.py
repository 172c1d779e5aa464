"""The simulated fleet's data: host-like samples, their MessagePack batches and their line protocol.

Every benchmark writes the same points: measurement ``host``, tag ``node``
(added by the collector from the topic), ten fields shaped like the agent's own
(nine floats, one int), so one series per simulated node. A message is one
node's ``SampleBatch`` of ``samples`` samples 1 µs apart, the last one stamped
when the message is made (distinct timestamps: no point overwrites another, so
every point is counted), optionally followed by one ``probe`` sample with the
same stamp that the latency checker looks for.

Payloads are rendered from templates: the batch is encoded once by
``runlab.wire.encode`` with sentinel timestamps and sequence number written as
fixed-width uint64, and each message only splices in the real values. That keeps
the generator cheap (its CPU is taken from the pipeline on a 2-core machine)
while every message is still a complete, valid wire-v1 batch that the collector
decodes and validates in full.
"""

from __future__ import annotations

import random
import struct
import time

from collector.lineprotocol import LineEncoder
from runlab import topics, wire

MEASUREMENT = "host"
PROBE = "probe"
COUNT_FIELD = "cpu_percent"  # present in every host sample: count(cpu_percent) counts points
_TS_SENTINEL = 0x7E57_7E57_7E57_7E57
_SEQ_SENTINEL = 0x5E05_5E05_5E05_5E05
_U64 = struct.Struct(">Q")


def host_fields(rng: random.Random) -> dict[str, wire.FieldValue]:
    """Ten fields as the agent's sampler produces them (percentages with one decimal, raw rates)."""
    return {
        "cpu_percent": round(rng.uniform(0, 100), 1),
        "cpu_user_percent": round(rng.uniform(0, 60), 1),
        "cpu_system_percent": round(rng.uniform(0, 20), 1),
        "load1": round(rng.uniform(0, 4), 2),
        "load5": round(rng.uniform(0, 4), 2),
        "mem_used_percent": round(rng.uniform(10, 90), 1),
        "mem_available_bytes": rng.randrange(1 << 28, 1 << 33),
        "disk_write_bytes_per_s": rng.uniform(0, 5e6),
        "net_recv_bytes_per_s": rng.uniform(0, 1e6),
        "net_sent_bytes_per_s": rng.uniform(0, 1e6),
    }


def host_samples(rng: random.Random, count: int) -> list[wire.Sample]:
    """``count`` samples of one node (timestamps are filled in when a message is made)."""
    return [wire.Sample(ts=0, name=MEASUREMENT, tags={}, fields=host_fields(rng)) for _ in range(count)]


SPACING_NS = 1_000  # between the samples of one message


class BatchTemplate:
    """One node's message shape; ``render(seq, ts)`` gives a complete wire-v1 payload."""

    def __init__(self, node: str, samples: list[wire.Sample], probe_tag: str | None = None) -> None:
        self.node = node
        self.topic = topics.samples(node)
        self.samples = len(samples)
        body = [wire.Sample(ts=_TS_SENTINEL, name=s.name, tags=s.tags, fields=s.fields) for s in samples]
        if probe_tag is not None:
            body.append(wire.Sample(ts=_TS_SENTINEL, name=PROBE, tags={"gen": probe_tag}, fields={"seen": 1}))
        raw = wire.encode(wire.SampleBatch(v=wire.WIRE_VERSION, node=node, boot="bench", seq=_SEQ_SENTINEL,
                                           samples=body))
        seq_mark = b"\xcf" + _U64.pack(_SEQ_SENTINEL)
        ts_mark = b"\xcf" + _U64.pack(_TS_SENTINEL)
        head, seq_found, tail = raw.partition(seq_mark)
        chunks = tail.split(ts_mark)
        if not seq_found or len(chunks) != len(body) + 1:
            raise AssertionError("sentinels not found exactly once per sample in the encoded batch")
        # One struct packs a whole payload: head, seq, then (chunk, stamp) per sample, then the tail.
        chunks = [c + b"\xcf" for c in chunks[:-1]] + [chunks[-1]]
        fmt = f">{len(head) + 1}sQ" + "".join(f"{len(c)}sQ" for c in chunks[:-1]) + f"{len(chunks[-1])}s"
        self._struct = struct.Struct(fmt)
        self._args: list[object] = [head + b"\xcf", 0]
        for c in chunks[:-1]:
            self._args += [c, 0]
        self._args.append(chunks[-1])
        n = self.samples
        # Offsets from the message's stamp: samples SPACING_NS apart, the probe (if any) with the last one.
        self._deltas = [(n - 1 - i) * SPACING_NS for i in range(n)] + ([0] if probe_tag is not None else [])

    def render(self, seq: int, ts: int) -> bytes:
        """The payload with sequence number ``seq``; the last sample (and the probe) stamped ``ts``."""
        args = self._args[:]
        args[1] = seq
        args[3::2] = [ts - d for d in self._deltas]
        return self._struct.pack(*args)

    @property
    def span_ns(self) -> int:
        """How far apart the first and the last sample of a message are."""
        return (self.samples - 1) * SPACING_NS


def node_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}n{i:03d}" for i in range(count)]


def templates(prefix: str, nodes: int, samples_per_message: int, variants: int, seed: int,
              probe_tag: str | None = None) -> list[list[BatchTemplate]]:
    """``variants`` templates (different field values) for each of ``nodes`` nodes."""
    rng = random.Random(seed)
    return [[BatchTemplate(node, host_samples(rng, samples_per_message), probe_tag) for _ in range(variants)]
            for node in node_names(prefix, nodes)]


class LinePool:
    """Pre-serialised line protocol of the same points, as the collector writes them to InfluxDB 1.x."""

    def __init__(self, prefix: str, nodes: int, samples_per_message: int, variants: int, seed: int) -> None:
        rng = random.Random(seed)
        enc = LineEncoder(backslash=False)
        self.samples_per_message = samples_per_message
        # [node][variant] → the lines of one message without their timestamps
        self.bodies: list[list[list[bytes]]] = []
        for node in node_names(prefix, nodes):
            per_node = []
            for _ in range(variants):
                lines = [enc.encode(s, {"node": node}).rsplit(" ", 1)[0].encode()
                         for s in host_samples(rng, samples_per_message)]
                per_node.append(lines)
            self.bodies.append(per_node)

    def batch(self, start_msg: int, messages: int, last_ts: list[int]) -> bytes:
        """``messages`` consecutive messages (round robin over nodes) as one line-protocol body.

        Timestamps are taken now and spaced like the generator's (``last_ts`` per node is
        updated): distinct points, so every one of them is counted once.
        """
        out: list[bytes] = []
        n_nodes = len(self.bodies)
        n = self.samples_per_message
        span = (n - 1) * SPACING_NS
        now = time.time_ns()
        for i in range(messages):
            k = start_msg + i
            node = k % n_nodes
            lines = self.bodies[node][(k // n_nodes) % len(self.bodies[node])]
            ts = last_ts[node] = max(now, last_ts[node] + span + SPACING_NS)
            first = ts - span
            out.extend(b"%s %d" % (line, first + j * SPACING_NS) for j, line in enumerate(lines))
        return b"\n".join(out)
