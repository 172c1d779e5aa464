"""Quarantine: every message or sample the collector refused, with why, as bounded JSON lines."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("runlab.quarantine")
EXCERPT_BYTES = 512


class Quarantine:
    """Appends one JSON line per refusal; rotates to ``<path>.1`` so both files stay under max_bytes."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.half = max(4096, max_bytes // 2)
        self.count = 0
        self.write_errors = 0
        self._file: Any = None

    def add(self, topic: str, reason: str, payload: bytes | None = None, sample: Any = None) -> None:
        """Record a refusal; never raises (a full disk must not stop the stream)."""
        self.count += 1
        entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "topic": topic,
                                 "reason": reason}
        if payload is not None:
            entry["bytes"] = len(payload)
            entry["excerpt_b64"] = base64.b64encode(payload[:EXCERPT_BYTES]).decode()
        if sample is not None:
            entry["sample"] = sample
        line = json.dumps(entry, default=repr, ensure_ascii=False) + "\n"
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            if self._file.tell() + len(line) > self.half:
                self._file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            self.write_errors += 1
            if self.write_errors in (1, 10, 100) or self.write_errors % 1000 == 0:
                log.error("cannot write quarantine file %s: %s (%d refusals not recorded)",
                          self.path, e.strerror, self.write_errors)
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
