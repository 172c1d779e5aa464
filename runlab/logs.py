"""Logging set-up: journald-friendly (priority prefixes, no timestamps) under systemd, plain elsewhere."""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {record.getMessage()}"


def setup(level: str = "info") -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) use sd-daemon priority prefixes."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho/aiomqtt log every reconnect attempt at length; we log our own one-liners.
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's "N pending publish calls" chatter
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("influxdb_client").setLevel(logging.ERROR)
