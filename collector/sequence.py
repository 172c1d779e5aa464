"""Per (node, boot) sequence tracking: counts batches missing and batches seen twice.

Agents drain their backlog oldest-first while live batches overtake it, so
batches arrive out of order: a missing number is a gap only until it arrives.
"""

from __future__ import annotations

MAX_MISSING = 100_000  # per stream; older holes are forgotten (and stay counted as lost)


class _Stream:
    __slots__ = ("bottom", "forgotten", "missing", "top")

    def __init__(self, seq: int) -> None:
        self.bottom = self.top = seq
        self.missing: set[int] = set()
        self.forgotten = 0


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
                st.missing.update(range(max(st.top + 1, seq - MAX_MISSING), seq))
                st.forgotten += max(0, seq - MAX_MISSING - st.top - 1)
                if len(st.missing) > MAX_MISSING:
                    for old in sorted(st.missing)[: len(st.missing) - MAX_MISSING]:
                        st.missing.discard(old)
                        st.forgotten += 1
            st.top = seq
            return True
        if seq < st.bottom:
            # Older than anything seen since this collector started (a backlog drains
            # oldest-first): what lies between is not known to be missing yet.
            st.missing.update(range(max(seq + 1, st.bottom - MAX_MISSING), st.bottom))
            st.bottom = seq
            return True
        if seq in st.missing:
            st.missing.discard(seq)
            return True
        self.duplicates += 1
        return False

    @property
    def gaps(self) -> int:
        """Batches currently missing (not yet arrived) across all streams."""
        return sum(len(s.missing) + s.forgotten for s in self._streams.values())

    @property
    def streams(self) -> int:
        return len(self._streams)
