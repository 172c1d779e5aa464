"""The collector: MQTT messages → validated samples → line-protocol batches → InfluxDB, then acks.

paho-mqtt 2.x with ``manual_ack=True`` and a persistent session: a message is
acknowledged to the broker only after the store accepted the batch holding it,
so a crash or an unreachable store loses nothing (the broker redelivers). The
network loop runs in paho's thread and only queues messages; this module's
loop decodes, batches, writes, and acks in the order messages arrived.
"""

from __future__ import annotations

import logging
import queue
import random
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import CollectorConfig
from collector.lineprotocol import InvalidSample, LineEncoder
from collector.quarantine import Quarantine
from collector.sequence import SequenceTracker
from collector.sinks import Sink, SinkRejected, SinkUnavailable, open_sink
from runlab import topics, wire
from runlab.config import read_secret

log = logging.getLogger("runlab.collector")
LAG_RESERVOIR = 50_000
# Unacked messages the broker may send us (MQTT v5 Receive Maximum). Bounds a batch in
# messages; kept well below 65535 packet ids (Mosquitto reuses ids past that, measured).
RECEIVE_MAXIMUM = 20_000
SESSION_EXPIRY = 0xFFFFFFFF  # the broker keeps our session (and queues for us) indefinitely


@dataclass
class Stats:
    """The collector's own counters, written as the ``collector`` measurement."""

    messages: int = 0
    samples_written: int = 0
    batches_written: int = 0
    write_errors: int = 0
    rejected_batches: int = 0
    last_batch_points: int = 0
    write_seconds: float = 0.0
    lags_ns: list[int] = field(default_factory=list)


def make_client(cfg: CollectorConfig, client_id: str, *, manual_ack: bool) -> mqtt.Client:
    """A paho client configured from the ``mqtt:`` section (TLS, credentials)."""
    _host, _port, tls = cfg.mqtt.endpoint(cfg.source)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    password = read_secret(cfg.mqtt.password_file, cfg.mqtt.password, cfg.source, "mqtt.password_file")
    if cfg.mqtt.username:
        client.username_pw_set(cfg.mqtt.username, password)
    if tls:
        client.tls_set(ca_certs=cfg.mqtt.ca_file, certfile=cfg.mqtt.cert_file, keyfile=cfg.mqtt.key_file,
                       cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(0.5, 5)  # a collector should be back within seconds
    client.connect_timeout = float(cfg.mqtt.connect_timeout)
    return client


def connect_properties(*, persistent: bool) -> Properties:
    """MQTT v5 CONNECT properties: a session that outlives us, and our own in-flight window."""
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    if persistent:
        props.SessionExpiryInterval = SESSION_EXPIRY
    return props


class Collector:
    """One collector process. ``run()`` blocks until ``stop()``."""

    def __init__(self, cfg: CollectorConfig, sink: Sink | None = None) -> None:
        self.cfg = cfg
        self.sink = sink or open_sink(cfg.influx, cfg.source)
        self.encoder = LineEncoder(backslash=self.sink.backslash_escapes)
        self.quarantine = Quarantine(cfg.quarantine.path, cfg.quarantine.max_bytes)
        self.sequences = SequenceTracker()
        self.stats = Stats()
        self.inbox: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self.client = make_client(cfg, cfg.mqtt.client_id, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._node_tag = {"collector": cfg.mqtt.client_id}

    # -- paho thread ---------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.cfg.mqtt.url, rc)
            return
        group = self.cfg.mqtt.share_group
        client.subscribe([(topics.shared(group, topics.all_nodes("samples")), 1),
                          (topics.all_nodes("status"), 1)])
        self._connected.set()
        log.info("connected to %s; subscribed to samples%s and status", self.cfg.mqtt.url,
                 f" as share group {group!r}" if group else "")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("lost the broker (%s); reconnecting", rc)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(msg)

    # -- decoding ------------------------------------------------------------------------------
    def _lines_for(self, msg: mqtt.MQTTMessage, out: list[str]) -> int | None:
        """Append the message's lines to ``out``; return its oldest sample time (ns) or None."""
        self.stats.messages += 1
        topic, payload = msg.topic, msg.payload
        parsed = topics.parse_node_topic(topic)
        if parsed is None:
            self.quarantine.add(topic, "not a runlab node topic", payload)
            return None
        node, kind = parsed
        try:
            if kind == "samples":
                return self._batch_lines(topic, node, wire.decode_batch(payload), out)
            if kind == "status":
                if not payload:  # a cleared retained status
                    return None
                return self._status_line(topic, node, wire.decode_status(payload), out)
        except wire.DecodeError as e:
            self.quarantine.add(topic, str(e), payload)
            return None
        self.quarantine.add(topic, f"unexpected message kind {kind!r}", payload)
        return None

    def _batch_lines(self, topic: str, node: str, batch: wire.SampleBatch, out: list[str]) -> int | None:
        if batch.node != node:
            self.quarantine.add(topic, f"payload node {batch.node!r} does not match the topic's {node!r}")
            return None
        self.sequences.see(node, batch.boot, batch.seq)  # a redelivery is written again: harmless
        node_tag = {"node": node}
        oldest: int | None = None
        encode = self.encoder.encode
        for i, s in enumerate(batch.samples):
            try:
                out.append(encode(s, node_tag))
            except InvalidSample as e:
                self.quarantine.add(topic, f"samples[{i}] ({s.name}): {e}", sample=msgspec.to_builtins(s))
                continue
            if oldest is None or s.ts < oldest:
                oldest = s.ts
        return oldest

    def _status_line(self, topic: str, node: str, st: wire.NodeStatus, out: list[str]) -> int | None:
        if st.node != node:
            self.quarantine.add(topic, f"payload node {st.node!r} does not match the topic's {node!r}")
            return None
        sample = wire.Sample(ts=st.ts, name="node_status", tags={"node": node}, fields={
            "online": st.online, "version": st.version or "?", "arch": st.arch or "?", "cores": st.cores,
            "memory_bytes": st.memory_bytes, "cpu_model": st.cpu_model or "?", "kernel": st.kernel or "?",
            "run": st.run or "-"})
        try:
            out.append(self.encoder.encode(sample))
        except InvalidSample as e:
            self.quarantine.add(topic, f"status: {e}")
        return None

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        host, port, _tls = self.cfg.mqtt.endpoint(self.cfg.source)
        self.client.connect_async(host, port, keepalive=int(self.cfg.mqtt.keepalive), clean_start=False,
                                  properties=connect_properties(persistent=True))
        self.client.loop_start()
        log.info("collector %s → %s (%s API)", self.cfg.mqtt.client_id, self.cfg.influx.url, self.cfg.influx.api)
        next_metrics = time.monotonic() + float(self.cfg.metrics_interval)
        max_points, max_delay = self.cfg.batch.max_points, float(self.cfg.batch.max_delay)
        try:
            while not self._stop.is_set():
                try:
                    first = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    first = None
                msgs: list[mqtt.MQTTMessage] = []
                lines: list[str] = []
                oldest: list[int] = []
                if first is not None:
                    started = time.monotonic()
                    m: mqtt.MQTTMessage | None = first
                    # Take what is queued now; never wait for more (idle → write at once).
                    while m is not None:
                        msgs.append(m)
                        ts = self._lines_for(m, lines)
                        if ts is not None:
                            oldest.append(ts)
                        if len(lines) >= max_points or time.monotonic() - started > max_delay:
                            break
                        try:
                            m = self.inbox.get_nowait()
                        except queue.Empty:
                            m = None
                now = time.monotonic()
                if now >= next_metrics:
                    next_metrics = now + float(self.cfg.metrics_interval)
                    lines.append(self._metrics_line())
                if lines and not self._write(lines, oldest):
                    break  # stopping while the store is down: unacked messages stay with the broker
                for m in msgs:
                    if m.qos:
                        self.client.ack(m.mid, m.qos)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self.quarantine.close()
            self.sink.close()
            log.info("collector stopped")

    def _write(self, lines: list[str], oldest: list[int]) -> bool:
        """Write until the store takes it (True) or we are told to stop (False)."""
        body = "\n".join(lines).encode()
        delay = 0.2
        while True:
            t0 = time.monotonic()
            try:
                self.sink.write(body)
            except SinkRejected as e:
                self.stats.rejected_batches += 1
                self.quarantine.add("(store)", f"store refused the batch: {e}", body)
                log.warning("store refused part of a batch of %d points: %s", len(lines), e)
                return True
            except SinkUnavailable as e:
                self.stats.write_errors += 1
                if self.stats.write_errors in (1, 2, 5) or self.stats.write_errors % 50 == 0:
                    log.warning("cannot write to %s (%s); retrying, nothing is acked meanwhile",
                                self.cfg.influx.url, e)
                if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                    return False
                delay = min(delay * 2, 10.0)
                continue
            done = time.time_ns()
            st = self.stats
            st.write_seconds += time.monotonic() - t0
            st.batches_written += 1
            st.samples_written += len(lines)
            st.last_batch_points = len(lines)
            if len(st.lags_ns) < LAG_RESERVOIR:
                st.lags_ns.extend(done - ts for ts in oldest)
            return True

    def _metrics_line(self) -> str:
        st = self.stats
        lags = sorted(st.lags_ns)
        st.lags_ns = []

        def pct(p: float) -> float:
            return lags[min(len(lags) - 1, int(p * len(lags)))] / 1e6 if lags else 0.0

        fields: dict[str, wire.FieldValue] = {
            "messages": st.messages, "samples_written": st.samples_written, "batches": st.batches_written,
            "quarantined": self.quarantine.count, "gaps": self.sequences.gaps,
            "duplicates": self.sequences.duplicates, "write_errors": st.write_errors,
            "rejected_batches": st.rejected_batches, "last_batch_points": st.last_batch_points,
            "inbox": self.inbox.qsize(), "streams": self.sequences.streams,
            "write_ms_avg": 1000.0 * st.write_seconds / max(1, st.batches_written),
            "lag_p50_ms": pct(0.5), "lag_p99_ms": pct(0.99), "lag_max_ms": lags[-1] / 1e6 if lags else 0.0,
            "connected": self._connected.is_set(),
        }
        return self.encoder.encode(wire.Sample(ts=time.time_ns(), name="collector", tags=self._node_tag,
                                               fields=fields))

    def stop(self) -> None:
        self._stop.set()
