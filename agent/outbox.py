"""The agent's durable outbox: the disk part of its spool (agent/delivery.py says what goes here, when).

Run events are put here before they are published and deleted at their PUBACK;
sample batches once they wait for their receipt longer than spool.flush_after
(at once when they hold run samples) and deleted when a receipt names them.
SQLite in WAL mode (measured against append-only segment files in
bench/bench_outbox.py). Every ``put``/``put_many`` is one transaction, fsynced
(``synchronous=FULL``): a SIGKILL or a power cut loses nothing that it
returned for. Deliveries are deleted in groups without an fsync of their own (a
lost delete only means the message is sent again, and replays are harmless).
The outbox is bounded: beyond ``max_bytes`` of payload the oldest messages are
dropped and counted, persistently.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import msgspec

log = logging.getLogger("runlab.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Message(NamedTuple):
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_ns: int


class Outbox:
    """A bounded, crash-safe FIFO of MQTT messages."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "outbox.sqlite"
        self.max_bytes = max_bytes
        self.failed_puts = 0  # puts lost because the disk refused them (full, read-only)
        try:
            self._db = self._open()
        except sqlite3.OperationalError as e:
            # Locked, read-only, unopenable: the file may be fine, so never move it aside for that.
            raise OSError(errno.EIO, f"cannot open the outbox database: {e}", str(self.path)) from None
        except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
            aside = self.path.with_name(f"outbox.sqlite.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved aside to %s, starting empty", self.path, e, aside)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._db = self._open()
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self.depth, self.bytes = int(row[0]), int(row[1])
        # Read once; kept in step in memory (the agent reports them every tick).
        self._dropped = [self._counter("dropped_samples"), self._counter("dropped_messages")]
        self._dropping = (0, 0)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()  # surfaces corruption now, not later
        return db

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def dropped_samples(self) -> int:
        """Samples dropped to stay under max_bytes, since the outbox was created (kept in the file)."""
        return self._dropped[0]

    @property
    def dropped_messages(self) -> int:
        return self._dropped[1]

    def put(self, topic: str, payload: bytes, *, samples: int = 0, qos: int = 1, retain: bool = False) -> int | None:
        """Store one message durably; return its id (None if the disk refused it: counted, logged)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._dropping = (0, 0)
                self._make_room(len(payload))
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, samples, created_ns) VALUES (?,?,?,?,?,?)",
                    (topic, payload, qos, int(retain), samples, time.time_ns()))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self.failed_puts += 1
            if self.failed_puts in (1, 10, 100) or self.failed_puts % 1000 == 0:
                log.error("outbox %s refused a message (%s); %d lost so far", self.path, e, self.failed_puts)
            self._resync()
            return None
        self.depth += 1
        self.bytes += len(payload)
        self._dropped[0] += self._dropping[0]
        self._dropped[1] += self._dropping[1]
        return int(cur.lastrowid or 0)

    def put_many(self, items: list[tuple[str, bytes, int]]) -> list[int | None]:
        """Store (topic, payload, samples) QoS 1 messages in one fsynced transaction; their ids (None: refused)."""
        if not items:
            return []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._dropping = (0, 0)
                self._make_room(sum(len(p) for _t, p, _n in items))
                now = time.time_ns()
                ids = []
                for topic, payload, samples in items:
                    cur = self._db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain, samples, created_ns) VALUES (?,?,1,0,?,?)",
                        (topic, payload, samples, now))
                    ids.append(int(cur.lastrowid or 0))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self.failed_puts += len(items)
            log.error("outbox %s refused %d messages (%s); %d lost so far", self.path, len(items), e,
                      self.failed_puts)
            self._resync()
            return [None] * len(items)
        self.depth += len(items)
        self.bytes += sum(len(p) for _t, p, _n in items)
        self._dropped[0] += self._dropping[0]
        self._dropped[1] += self._dropping[1]
        return list(ids)

    def get(self, row_id: int) -> bytes | None:
        """The payload of one message, or None if it is gone (delivered, or dropped for room)."""
        row = self._db.execute("SELECT payload FROM outbox WHERE id = ?", (row_id,)).fetchone()
        return bytes(row[0]) if row else None

    def _make_room(self, incoming: int) -> None:
        """Inside a transaction: drop the oldest messages until ``incoming`` fits."""
        excess = self.bytes + incoming - self.max_bytes
        if excess <= 0:
            return
        freed = n = samples = 0
        last_id = 0
        for row_id, size, nsamples in self._db.execute(
                "SELECT id, LENGTH(payload), samples FROM outbox ORDER BY id"):
            freed += size
            samples += nsamples
            n += 1
            last_id = row_id
            if freed >= excess:
                break
        if not n:
            return
        self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        for name, value in (("dropped_samples", samples), ("dropped_messages", n)):
            self._db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=value+?",
                             (name, value, value))
        self.depth -= n
        self.bytes -= freed
        self._dropping = (samples, n)
        log.warning("outbox full (%d bytes): dropped the %d oldest messages (%d samples)", self.max_bytes, n, samples)

    def _resync(self) -> None:
        try:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
            self.depth, self.bytes = int(row[0]), int(row[1])
        except sqlite3.Error:
            pass

    def read(self, after_id: int, limit: int, upto_id: int | None = None) -> list[Message]:
        """Up to ``limit`` messages with ``after_id < id [<= upto_id]``, oldest first."""
        if upto_id is None:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, created_ns FROM outbox "
                                    "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        else:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, created_ns FROM outbox "
                                    "WHERE id > ? AND id <= ? ORDER BY id LIMIT ?", (after_id, upto_id, limit))
        return [Message(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    def last_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()
        return int(row[0])

    def ack(self, ids: Iterable[int]) -> None:
        """Delete delivered messages (one transaction, no fsync of its own)."""
        ids = list(ids)
        if not ids:
            return
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            freed = 0
            gone = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                row = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                                       f"WHERE id IN ({marks})", chunk).fetchone()
                gone += int(row[0])
                freed += int(row[1])
                self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
            self._db.execute("COMMIT")
            self.depth -= gone
            self.bytes -= freed
        except sqlite3.Error as e:
            log.warning("outbox: could not delete %d delivered messages (%s); they will be sent again", len(ids), e)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def readdress(self, node: str) -> dict[str, int]:
        """Messages spooled under another node name, moved to ``node``'s topics (payload's node too).

        The node's name changed between two runs of the agent (the package starts it with the host name
        before its config is edited): what it measured before is still its own, and the broker's ACL lets
        it publish only under its current name. Returns {old name: messages moved}; undecodable ones stay.
        """
        from runlab import topics, wire
        from runlab.control import decode_event, encode_event

        prefix = topics.status(node).rsplit("/", 1)[0] + "/"
        moved: dict[str, int] = {}
        rows = self._db.execute("SELECT id, topic, payload FROM outbox WHERE substr(topic, 1, ?) != ?",
                                (len(prefix), prefix)).fetchall()
        if not rows:
            return moved
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for row_id, topic, payload in rows:
                parsed = topics.parse_node_topic(topic)
                if parsed is None:
                    continue
                old, kind = parsed
                try:
                    if kind == "samples":
                        batch = wire.decode_batch(payload)
                        new = wire.encode(msgspec.structs.replace(batch, node=node))
                    elif kind == "events":
                        new = encode_event(msgspec.structs.replace(decode_event(payload), node=node))
                    else:
                        continue
                except Exception as e:  # a message we cannot rewrite stays as it is
                    log.warning("outbox: message %d on %s cannot be re-addressed (%s); left as it is", row_id, topic, e)
                    continue
                self._db.execute("UPDATE outbox SET topic = ?, payload = ? WHERE id = ?",
                                 (f"{prefix}{kind}", new, row_id))
                moved[old] = moved.get(old, 0) + 1
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._resync()
        return moved

    def holdings(self) -> list[tuple[str, int, int]]:
        """(topic, messages, payload bytes) of what the outbox holds, by topic."""
        rows = self._db.execute("SELECT topic, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                                "GROUP BY topic ORDER BY topic").fetchall()
        return [(str(t), int(n), int(b)) for t, n, b in rows]

    def close(self) -> None:
        self._db.close()
