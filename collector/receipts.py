"""Receipts: which batches (per node and boot, by sequence number) the store has, for the agents.

The writer threads ``add`` the sequence numbers of every batch the store took (written, or
quarantined whole); the batching loop ``take``s what accumulated at most every
``receipts.interval`` and publishes one ``runlab.wire.Receipt`` per node and boot, with the
numbers coalesced into sorted inclusive ranges. An agent forgets a batch only when a receipt
names it, and sends again what was never receipted, so a receipt lost on the way (collector
SIGKILLed between the write and the publish) costs a duplicate write, never a lost batch.
"""

from __future__ import annotations

import threading

from runlab import wire

# Ranges per receipt message: bounds a receipt's size (~20 bytes a range) whatever the disorder of a backlog.
MAX_RANGES = 2000


def coalesce(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping inclusive ranges covering exactly ``seqs`` (any order, repeats allowed)."""
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and s <= out[-1][1] + 1:
            if s > out[-1][1]:
                out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


class Receipts:
    """Sequence numbers stored since the last ``take``, per (node, boot); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stored: dict[tuple[str, str], list[int]] = {}
        self.sent = 0  # receipt messages handed to the MQTT client

    def add(self, stored: list[tuple[str, str, int]]) -> None:
        """Record batches the store has: (node, boot, seq) each."""
        if not stored:
            return
        with self._lock:
            for node, boot, seq in stored:
                self._stored.setdefault((node, boot), []).append(seq)

    def take(self) -> list[wire.Receipt]:
        """The receipts for everything recorded since the last call (one per node and boot, or more when
        a stream has more than MAX_RANGES ranges)."""
        with self._lock:
            stored, self._stored = self._stored, {}
        out = []
        for (node, boot), seqs in stored.items():
            ranges = coalesce(seqs)
            for i in range(0, len(ranges), MAX_RANGES):
                out.append(wire.Receipt(v=wire.WIRE_VERSION, node=node, boot=boot, ranges=ranges[i:i + MAX_RANGES]))
        return out

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._stored.values())
