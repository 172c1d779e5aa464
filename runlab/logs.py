"""Logging set-up: journald-friendly (priority prefixes, no timestamps) under systemd, plain elsewhere."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from typing import TextIO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:  # journald reads a line per entry: every traceback line carries the priority
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


class Background(logging.Handler):
    """Formats a record in the thread that logs it and writes it in a thread of its own (``runlab-log``).

    For the agent's ``serve``: its main thread times workloads, and a write to stderr can block for as long as
    the reader makes it (journald busy or rate-limiting, a full pipe). Records keep their order; what is
    queued is written before the process exits (``logging.shutdown`` closes the handler at exit), a SIGKILL
    loses what the thread had not written yet. At most ``limit`` records wait: while the reader is stuck,
    more are dropped, and their number is written once it reads again. ``logging.handlers.QueueHandler``
    would do, but its module imports pickle and socket (kept in the idle agent's memory for nothing).
    """

    def __init__(self, stream: TextIO, formatter: logging.Formatter, limit: int = 10_000) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._stream = stream
        self._queue: queue.Queue[str | None] = queue.Queue(limit)
        self.dropped = 0
        self._thread = threading.Thread(target=self._write, name="runlab-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._queue.put_nowait(self.format(record))
        except queue.Full:
            self.dropped += 1
        except Exception:  # logging's own convention: a broken record is reported, never raised
            self.handleError(record)

    def _write(self) -> None:
        told = 0
        while (line := self._queue.get()) is not None:
            try:
                if self.dropped > told:
                    n, told = self.dropped - told, self.dropped
                    self._stream.write(f"{n} log records dropped: the log's reader did not keep up\n")
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell it to
                pass

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=5.0)
            except queue.Full:  # the reader is stuck: what waits is lost with the process
                pass
            self._thread.join(5.0)
        super().close()


def setup(level: str = "info", *, background: bool = False) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) use sd-daemon priority prefixes. ``background``:
    write from a thread of its own (``Background``), never from the caller's."""
    if os.environ.get("JOURNAL_STREAM"):
        formatter: logging.Formatter = _JournalFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    handler: logging.Handler
    if background:
        handler = Background(sys.stderr, formatter)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if isinstance(old, Background):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho/aiomqtt log every reconnect attempt at length; we log our own one-liners.
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's "N pending publish calls" chatter
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("influxdb_client").setLevel(logging.ERROR)
