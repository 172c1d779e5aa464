"""End-to-end delivery bookkeeping: which sample batches wait for the collector's receipt, and when to resend.

A batch leaves the agent's keeping only when a receipt (runlab.wire.Receipt, from the collector after its
store write) names its (boot, seq); the broker's PUBACK only moves it from "to send" to "awaiting receipt".
Pure logic, no I/O: agent/service.py does the publishing and the disk (agent/outbox.py).

Where a batch lives:
- memory only, while it is young: a healthy link receipts it within a second, and the SD card never sees it;
- on disk (the outbox) once it is ``flush_after`` old without a receipt, or at once when it carries run
  results or events (``run_*`` samples): a power cut loses at most the last ``flush_after`` + one sampling
  interval of host samples, never a run's results;
- disk rows not in this index are the backlog: read back in id order when there is room.

When to resend (``receipt_timeout``, doubling per resend of the same batch, capped at 64×): a batch the
broker acknowledged but the store never receipted was lost on the way (a broker restart before it saved,
a shared-subscription member that died, a queue limit). At most ``window`` batches await a receipt at once:
while the collector is away the broker holds at most that many of this node's batches (plus their
resends), the rest waits on the agent's disk — an hour-long absence does not multiply the broker's queue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX_BACKOFF_DOUBLINGS = 6  # a batch's timeout grows to at most 64 × receipt_timeout


@dataclass(slots=True)
class Entry:
    """One sample batch not yet receipted."""

    boot: str
    seq: int
    topic: str
    payload: bytes | None  # None: only on disk (row ``rowid``)
    samples: int
    made: float  # time.monotonic() when produced (or read back from disk)
    rowid: int | None = None  # its outbox row, once on disk
    acked: float | None = None  # when the broker acknowledged the last publish; None: to send
    inflight: bool = False
    sent: bool = False  # published at least once: it holds a place in the window until its receipt
    resends: int = 0


class Pending:
    """The batches this agent process knows to be unreceipted, in the order they were added."""

    def __init__(self, receipt_timeout: float, window: int) -> None:
        self.timeout = receipt_timeout
        self.window = window
        self.entries: dict[tuple[str, int], Entry] = {}
        self.rowids: set[int] = set()  # outbox rows indexed here (the backlog reader skips them)
        self.resent = 0  # publishes of a batch again after its receipt timeout (counted, duplicates are harmless)
        self.receipted = 0
        self.duplicate_receipts = 0  # seqs receipted that were not waiting here (already receipted, or a restart)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, e: Entry) -> None:
        self.entries[(e.boot, e.seq)] = e
        if e.rowid is not None:
            self.rowids.add(e.rowid)

    def stored(self, e: Entry, rowid: int) -> None:
        """``e`` is on disk now; its payload can leave memory unless it is about to be published."""
        e.rowid = rowid
        self.rowids.add(rowid)
        if not e.inflight:
            e.payload = None

    def awaiting(self) -> int:
        """Batches published at least once that have no receipt yet: the window's occupants."""
        return sum(1 for e in self.entries.values() if e.sent)

    def room(self) -> bool:
        return self.awaiting() < self.window

    def to_send(self, now: float | None = None) -> list[Entry]:
        """Batches to publish now, oldest first.

        First those in the window that are due again: their receipt timeout passed (a resend: the broker or
        the store lost it), or their last publish got no PUBACK (the link failed). They keep their place:
        resending never lets another batch into the window, so a broker holding a window of unreceipted
        batches for a collector that is away gets copies of those, with a doubling wait, never more distinct
        batches. Then never-sent batches, as many as the window has free places.
        """
        now = time.monotonic() if now is None else now
        room = self.window - self.awaiting()
        out = []
        for e in self.entries.values():
            if e.inflight:
                continue
            if e.sent:
                if e.acked is None:
                    out.append(e)
                elif now - e.acked >= self.timeout * (1 << min(e.resends, MAX_BACKOFF_DOUBLINGS)):
                    e.resends += 1
                    self.resent += 1
                    e.acked = None
                    out.append(e)
            elif room > 0:
                out.append(e)
                room -= 1
        return out

    def next_due(self) -> float | None:
        """When the earliest resend falls due (monotonic), or None."""
        due = [e.acked + self.timeout * (1 << min(e.resends, MAX_BACKOFF_DOUBLINGS))
               for e in self.entries.values() if e.acked is not None and not e.inflight]
        return min(due) if due else None

    def connection_lost(self) -> None:
        """What was in flight when the link failed has no PUBACK: send it again on the next connection."""
        for e in self.entries.values():
            if e.inflight:
                e.inflight = False
                e.acked = None

    def receipt(self, boot: str, ranges: list[tuple[int, int]]) -> list[int]:
        """Forget every batch of ``boot`` in the inclusive ranges; return their outbox rows to delete."""
        rows: list[int] = []
        for first, last in ranges:
            if last - first + 1 <= len(self.entries):
                keys = [(boot, s) for s in range(first, last + 1)]
            else:
                keys = [k for k in self.entries if k[0] == boot and first <= k[1] <= last]
            found = 0
            for k in keys:
                e = self.entries.pop(k, None)
                if e is None:
                    continue
                found += 1
                self.receipted += 1
                if e.rowid is not None:
                    self.rowids.discard(e.rowid)
                    rows.append(e.rowid)
            self.duplicate_receipts += last - first + 1 - found
        return rows

    def to_store(self, now: float, flush_after: float) -> list[Entry]:
        """Every batch only in memory, once the oldest of them is ``flush_after`` old (always when < 0).

        All of them in one go: one transaction every ``flush_after`` instead of one per batch, which is
        what a sustained outage writes to the SD card (SQLite rewrites a page per commit).
        """
        young = [e for e in self.entries.values() if e.rowid is None]
        if young and (flush_after < 0 or now - min(e.made for e in young) >= flush_after):
            return young
        return []

    def evict_stored(self, keep: int) -> int:
        """Drop on-disk batches never sent from the index beyond ``keep`` entries (oldest first); they stay on
        disk and come back through the backlog reader. A batch once sent keeps its entry (its place in the
        window, its resend count) until its receipt. Returns the lowest row id dropped (0: none)."""
        lowest = 0
        if len(self.entries) <= keep:
            return lowest
        for k, e in list(self.entries.items()):
            if len(self.entries) <= keep:
                break
            if e.rowid is not None and not e.inflight and not e.sent:
                del self.entries[k]
                self.rowids.discard(e.rowid)
                lowest = e.rowid if not lowest else min(lowest, e.rowid)
        return lowest
