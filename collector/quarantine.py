"""Quarantine: every message, sample or line the collector or the store refused, whole, with why, as JSON lines.

Each entry keeps the whole refused thing — a message's payload (``payload_b64``), a sample (``sample``),
the lines the store refused (``lines``) — so nothing refused is lost, within the quarantine's own byte
budget (``quarantine.max_bytes``). The file is never rotated or trimmed: once an entry would take it past
the budget, the entry is not kept and is counted (``full``, the collector measurement's
``quarantine_full``) and logged; moving the file away (or deleting it) makes room again, the collector
notices and starts a new one. ``add`` answers whether the refusal is safe to acknowledge: False only when
the file could not be written (disk full, permissions), and then the collector does not ack.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("runlab.quarantine")


class Quarantine:
    """Appends one JSON line per refusal to ``path`` while the file stays within ``max_bytes``."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.count = 0  # refusals kept
        self.full = 0  # refusals not kept: the budget was spent
        self.write_errors = 0  # refusals not kept: the file could not be written (not acked)
        self._file: Any = None
        self._size = 0

    def add(self, topic: str, reason: str, payload: bytes | None = None, sample: Any = None,
            lines: list[bytes] | None = None) -> bool:
        """Record a refusal. True: kept, or over budget and counted (ack it); False: not written (do not ack).
        Never raises."""
        entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "topic": topic,
                                 "reason": reason}
        if payload is not None:
            entry["bytes"] = len(payload)
            entry["payload_b64"] = base64.b64encode(payload).decode()
        if sample is not None:
            entry["sample"] = sample
        if lines is not None:
            entry["lines"] = [ln.decode("utf-8", "backslashreplace") for ln in lines]
        data = (json.dumps(entry, default=repr, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self._open()
            if self._size + len(data) > self.max_bytes:
                self.full += 1
                if self.full in (1, 10, 100) or self.full % 1000 == 0:
                    log.error("quarantine file %s is at its budget (quarantine.max_bytes = %d bytes): %d refusals "
                              "counted, not kept; move the file away to make room", self.path, self.max_bytes,
                              self.full)
                return True
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
        except OSError as e:
            self.write_errors += 1
            if self.write_errors in (1, 10, 100) or self.write_errors % 1000 == 0:
                log.error("cannot write quarantine file %s: %s (%d refusals not recorded, and not acknowledged: "
                          "the broker delivers them again)", self.path, e.strerror or e, self.write_errors)
            self.close()
            return False
        self.count += 1
        return True

    def _open(self) -> None:
        """Open the file, or open it anew when it was moved away or deleted since (that frees the budget)."""
        if self._file is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return
            self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open
        self._size = self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
