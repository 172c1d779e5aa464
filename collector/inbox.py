"""The collector's inbox: messages read from the broker, waiting to be decoded — bounded in bytes.

paho's network thread ``put``s every message it reads; when the inbox holds ``max_bytes`` already, ``put``
blocks, so the network thread stops reading: TCP flow control then stops the broker, which keeps the rest
of the backlog in our persistent session (deploy/mosquitto/runlab.conf: max_queued_bytes). Mosquitto 2.0
sends more unacknowledged messages than the Receive Maximum we ask for once acks flow (measured: 30–37 k
messages of 29 KB), so this bound, not Receive Maximum, is what keeps the collector's memory flat whatever
the backlog. Acks and receipts are queued by other threads and leave as soon as the network thread runs
again (at the latest once the inbox has drained below the bound: well within the MQTT keepalive).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

OVERHEAD = 600  # bytes of Python objects per message beside its payload (MQTTMessage, topic, properties)


class Inbox:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._q: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._bytes = 0
        self._room = threading.Condition()
        self.paused_seconds = 0.0  # time the network thread waited for room (the broker kept the backlog)
        self.pauses = 0
        self._waiting = False

    @staticmethod
    def _size(msg: mqtt.MQTTMessage) -> int:
        return len(msg.payload) + OVERHEAD

    def put(self, msg: mqtt.MQTTMessage, stopping: threading.Event) -> None:
        """Queue ``msg``; when the inbox is full, wait until it is half empty (reading resumes in bursts, not a
        message at a time), never while ``stopping`` (then nothing more is read)."""
        n = self._size(msg)
        with self._room:
            if self._bytes + n > self.max_bytes and self._bytes > 0 and not stopping.is_set():
                self.pauses += 1
                t0 = time.monotonic()
                self._waiting = True
                while self._bytes > self.max_bytes // 2 and not stopping.is_set():
                    self._room.wait(0.5)
                self._waiting = False
                self.paused_seconds += time.monotonic() - t0
            self._bytes += n
        self._q.put(msg)

    def _took(self, msg: mqtt.MQTTMessage) -> mqtt.MQTTMessage:
        with self._room:
            self._bytes -= self._size(msg)
            if self._waiting and self._bytes <= self.max_bytes // 2:
                self._room.notify()
        return msg

    def get(self, timeout: float) -> mqtt.MQTTMessage:
        """The oldest message; queue.Empty after ``timeout`` s."""
        return self._took(self._q.get(timeout=timeout))

    def get_nowait(self) -> mqtt.MQTTMessage:
        return self._took(self._q.get_nowait())

    def qsize(self) -> int:
        return self._q.qsize()

    @property
    def bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, Any]:
        return {"inbox": self.qsize(), "inbox_bytes": self._bytes, "reads_paused_s": self.paused_seconds}
