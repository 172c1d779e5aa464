"""runlab.logs: the agent's log lines are written by a thread of their own, in order, bounded; journald
gets a priority on every line, tracebacks included."""

from __future__ import annotations

import logging
import threading

import pytest

from runlab import logs


class Stream:
    """A stderr whose reader can stall (journald busy, a full pipe): ``write`` waits while ``open`` is clear."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.open = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.open.wait()
        self.lines.append((threading.current_thread().name, text))
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def log() -> logging.Logger:
    logger = logging.getLogger("runlab.test-logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_records_are_written_by_the_log_thread_in_order_while_the_caller_never_waits(log: logging.Logger) -> None:
    stream = Stream()
    handler = logs.Background(stream, logging.Formatter("%(message)s"))  # type: ignore[arg-type]
    log.handlers[:] = [handler]
    log.info("first")
    assert stream.writing.wait(10)  # the log thread is stuck in write(): the reader does not read
    for i in range(500):
        log.info("line %d", i)  # returns although nothing can be written: the caller times workloads
    assert stream.lines == []
    stream.open.set()
    handler.close()  # at exit: what waits is written first
    assert [t for t, _ in stream.lines] == ["runlab-log"] * 501
    assert [text for _, text in stream.lines] == ["first\n", *(f"line {i}\n" for i in range(500))]


def test_a_stuck_reader_bounds_the_queue_and_the_drop_is_reported(log: logging.Logger) -> None:
    stream = Stream()
    handler = logs.Background(stream, logging.Formatter("%(message)s"), limit=10)  # type: ignore[arg-type]
    log.handlers[:] = [handler]
    log.info("first")
    assert stream.writing.wait(10)
    for i in range(25):
        log.info("line %d", i)
    assert handler.dropped == 15
    stream.open.set()
    handler.close()
    texts = [text for _, text in stream.lines]
    assert texts == ["first\n", "15 log records dropped: the log's reader did not keep up\n",
                     *(f"line {i}\n" for i in range(10))]


def test_journald_lines_each_carry_the_priority_tracebacks_too() -> None:
    fmt = logs._JournalFormatter()
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = logging.LogRecord("runlab.agent", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info())
    lines = fmt.format(rec).splitlines()
    assert lines[0] == "<3>runlab.agent: failed x" and len(lines) > 2
    assert all(line.startswith("<3>") for line in lines) and lines[-1] == "<3>ValueError: bad"
