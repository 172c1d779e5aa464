"""Helpers for tests that talk to the real servers with raw payloads (see conftest.py for the fixtures)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from runlab.devservers import InfluxV1, Mosquitto, VictoriaMetrics


class Publisher:
    """A plain paho MQTT v5 client: publishes any bytes with QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, mq: Mosquitto, client_id: str = "test-publisher") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(60, 60)  # a refused publish must not be retried behind our back
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect_reason: Any = None
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connected.set()
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("127.0.0.1", mq.port)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise AssertionError("test publisher could not connect to the broker")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.disconnect_reason = rc
        self.disconnected.set()

    def publish(self, topic: str, payload: bytes, timeout: float = 30.0) -> None:
        """Publish with QoS 1 and block until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"no PUBACK for {topic} within {timeout}s"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sample(name: str = "probe", tags: dict[str, Any] | None = None, fields: dict[str, Any] | None = None,
           ts: Any = None) -> dict[str, Any]:
    """One sample as a plain dict (any types: the point is to send what runlab's own encoder would not)."""
    return {"ts": time.time_ns() if ts is None else ts, "name": name, "tags": tags or {},
            "fields": {"value": 1.0} if fields is None else fields}


def batch(node: str, seq: int, samples: list[Any], *, v: Any = 1, boot: str = "testboot",
          **extra: Any) -> bytes:
    """A SampleBatch packed by the reference ``msgpack`` package from plain dicts."""
    return msgpack.packb({"v": v, "node": node, "boot": boot, "seq": seq, "samples": samples, **extra})


def quarantine_entries(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of the collector's quarantine file (empty while it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def v2_section(vm: VictoriaMetrics) -> str:
    return f"  url: {vm.url}\n  api: v2\n  org: homelab\n  bucket: runlab\n  token: unused"


class StoreView:
    """What landed, read back the same way from InfluxDB 1.x and from VictoriaMetrics."""

    def __init__(self, server: InfluxV1 | VictoriaMetrics) -> None:
        self.server = server

    def tag_sets(self, measurement: str, node: str, field: str = "value") -> list[dict[str, str]]:
        """The tags of every point of ``measurement`` written for ``node`` (tags only, node included)."""
        if isinstance(self.server, InfluxV1):
            res = self.server.query(f'SELECT * FROM "{measurement}" WHERE "node" = \'{node}\'')["results"][0]
            if "error" in res:
                raise RuntimeError(res["error"])
            out = []
            for s in res.get("series") or []:
                cols = s["columns"]
                tag_cols = [c for c in cols if c != "time" and c != field]
                for row in s["values"]:
                    out.append({c: row[cols.index(c)] for c in tag_cols if row[cols.index(c)] is not None})
            return out
        series = self.server.export(f'{{__name__="{measurement}_{field}",node="{node}"}}')
        return [{k: v for k, v in s["metric"].items() if k != "__name__"} for s in series for _ in s["values"]]

    def last_collector_field(self, collector: str, field: str) -> Any:
        """The newest value of one field of the collector's own ``collector`` measurement."""
        if isinstance(self.server, InfluxV1):
            rows = self.server.rows(f"SELECT last({field}) FROM collector WHERE collector = '{collector}'")
            return rows[0][1] if rows else None
        series = self.server.export(f'{{__name__="collector_{field}",collector="{collector}"}}')
        points = sorted((t, v) for s in series for t, v in zip(s["timestamps"], s["values"], strict=True))
        return points[-1][1] if points else None
