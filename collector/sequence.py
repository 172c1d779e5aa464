"""Per (node, boot) sequence tracking: counts batches missing and batches seen twice.

Agents drain their backlog oldest-first while live batches overtake it, so
batches arrive out of order: a missing number is a gap only until it arrives.
Missing numbers are kept as ranges, so a backlog of any length costs one range
until its batches arrive.
"""

from __future__ import annotations

from bisect import bisect_right

MAX_MISSING = 100_000  # ranges of missing numbers per stream; the lowest beyond that are forgotten (stay counted)


class _Stream:
    __slots__ = ("bottom", "count", "floor", "forgotten", "his", "los", "top")

    def __init__(self, seq: int) -> None:
        self.bottom = self.top = seq
        self.los: list[int] = []  # missing ranges lo..hi (inclusive), sorted, disjoint
        self.his: list[int] = []
        self.count = 0  # numbers in those ranges
        self.forgotten = 0  # numbers in ranges dropped to stay within MAX_MISSING: counted as lost for good
        self.floor = seq - 1  # at or below this (and at or above bottom) a number not in a range may be forgotten

    def add(self, i: int, lo: int, hi: int) -> None:
        self.los.insert(i, lo)
        self.his.insert(i, hi)
        self.count += hi - lo + 1
        if len(self.los) > MAX_MISSING:
            lo, hi = self.los.pop(0), self.his.pop(0)
            self.count -= hi - lo + 1
            self.forgotten += hi - lo + 1
            self.floor = max(self.floor, hi)

    def take(self, seq: int) -> bool | None:
        """Remove ``seq`` from the missing ranges: True if it was missing, None if it may have been forgotten."""
        i = bisect_right(self.los, seq) - 1
        if i >= 0 and seq <= self.his[i]:
            lo, hi = self.los[i], self.his[i]
            if lo == hi:
                del self.los[i], self.his[i]
            elif seq == lo:
                self.los[i] = seq + 1
            elif seq == hi:
                self.his[i] = seq - 1
            else:  # split
                self.his[i] = seq - 1
                self.los.insert(i + 1, seq + 1)
                self.his.insert(i + 1, hi)
            self.count -= 1
            return True
        return None if seq <= self.floor and self.forgotten else False


class SequenceTracker:
    """Feed every batch's (node, boot, seq); read ``gaps`` and ``duplicates``."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], _Stream] = {}
        self.duplicates = 0

    def see(self, node: str, boot: str, seq: int) -> bool:
        """Record one batch; return False when it was seen before (a redelivery)."""
        st = self._streams.get((node, boot))
        if st is None:
            self._streams[(node, boot)] = _Stream(seq)
            return True
        if seq > st.top:
            if seq > st.top + 1:
                st.add(len(st.los), st.top + 1, seq - 1)
            st.top = seq
            return True
        if seq < st.bottom:
            # Older than anything seen since this collector started (a backlog drains
            # oldest-first): what lies between is not known to be missing yet.
            if seq < st.bottom - 1:
                st.add(0, seq + 1, st.bottom - 1)
            st.bottom = seq
            return True
        found = st.take(seq)
        if found is False:
            self.duplicates += 1
            return False
        return True  # was missing; or (None) one of the forgotten: cannot tell, so neither filled nor a duplicate

    @property
    def gaps(self) -> int:
        """Batches currently missing (not yet arrived) across all streams."""
        return sum(s.count + s.forgotten for s in self._streams.values())

    @property
    def streams(self) -> int:
        return len(self._streams)
