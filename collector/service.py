"""The collector: MQTT messages → validated samples → line-protocol batches → InfluxDB, then acks.

paho-mqtt 2.x with ``manual_ack=True`` and a persistent session: a message is
acknowledged to the broker only after the store accepted the batch holding it,
so a crash or an unreachable store loses nothing (the broker redelivers). The
network loop runs in paho's thread and only queues messages; this module's
loop decodes and batches them, and ``WRITERS`` writer threads write batches to
the store, so the store's time overlaps the decoding of the next batch and two
writes proceed at once (bench/bench_throughput.py). A batch's acks go out only
after it and every batch filled before it were written: acks leave in the order
the messages arrived. Once a batch is stored (written, or quarantined whole) its
agent gets a receipt (collector/receipts.py) and may forget it. The inbox is
bounded in bytes (collector/inbox.py): when it is full the network thread stops
reading and the broker keeps the backlog. A batch the store refuses is split
(413) or bisected (other 4xx) so that only the refused lines are quarantined.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import CollectorConfig
from collector.inbox import Inbox
from collector.lineprotocol import InvalidSample, LineEncoder
from collector.quarantine import Quarantine
from collector.receipts import Receipts
from collector.sequence import SequenceTracker
from collector.sinks import Sink, SinkRejected, SinkTooLarge, SinkUnavailable, open_sink
from runlab import topics, wire
from runlab.config import read_secret
from runlab.sdnotify import Notifier

log = logging.getLogger("runlab.collector")
LAG_RESERVOIR = 50_000
# Writes in flight to the store at once, each on its own connection. The store parses and
# indexes concurrent writes in parallel (InfluxDB 1.6 on 2 cores: ~1.5× one connection's
# rate, bench/bench_throughput.py); acks still go out in arrival order (see _release).
WRITERS = 2
# Unacked messages the broker may send us (MQTT v5 Receive Maximum). Bounds a batch in
# messages; kept well below 65535 packet ids (Mosquitto reuses ids past that, measured).
RECEIVE_MAXIMUM = 20_000
# Refusals (other than 413) spent bisecting one batch for its bad lines; ~log2(points) per bad line.
BISECT_REFUSALS = 256


class _NotKept(Exception):
    """A refusal could not be written to the quarantine: the message holding it must not be acked."""


class _Identity(msgspec.Struct):
    node: str
    boot: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    seq: Annotated[int, msgspec.Meta(ge=0)]


_identity_decoder = msgspec.msgpack.Decoder(_Identity)


def _batch_identity(payload: bytes) -> tuple[str, str, int] | None:
    """(node, boot, seq) of a sample batch the decoder refused, when those three can be read at all."""
    if len(payload) > wire.MAX_PAYLOAD_BYTES:
        return None
    try:
        b = _identity_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return None
    return b.node, b.boot, b.seq


@dataclass
class Stats:
    """The collector's own counters, written as the ``collector`` measurement."""

    messages: int = 0
    samples_written: int = 0
    batches_written: int = 0
    write_errors: int = 0
    rejected_batches: int = 0  # batches the store refused (some of)
    refusals: int = 0  # refused write requests (413 splits and bisection steps included)
    rejected_lines: int = 0  # lines quarantined because the store refused them
    last_batch_points: int = 0
    write_seconds: float = 0.0
    lags_ns: list[int] = field(default_factory=list)


class Batch(NamedTuple):
    """Lines ready for the store, and the messages to ack (and batches to receipt) once the store took them."""

    lines: list[bytes]  # line protocol, one point each
    msgs: list[mqtt.MQTTMessage]
    oldest: list[int]  # per message: its oldest sample time (ns), for the lag figures
    stored: list[tuple[str, str, int]]  # (node, boot, seq) of each sample batch in it: receipted once stored


def new_batch() -> Batch:
    return Batch([], [], [], [])


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
    client.reconnect_delay_set(0.5, 5)  # type: ignore[arg-type]  # paho says int; it sleeps floats. Back within seconds
    client.connect_timeout = float(cfg.mqtt.connect_timeout)
    return client


def connect_properties(*, persistent: bool, expiry: int = 0xFFFFFFFF) -> Properties:
    """MQTT v5 CONNECT properties: a session that outlives us (``expiry`` s; 0xFFFFFFFF: for ever), and our own
    in-flight window."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    if persistent:
        props.SessionExpiryInterval = expiry
    return props


class Collector:
    """One collector process. ``run()`` blocks until ``stop()``."""

    def __init__(self, cfg: CollectorConfig, sink: Sink | None = None) -> None:
        self.cfg = cfg
        self.sink = sink or open_sink(cfg.influx, cfg.source)
        # One sink (connection) per writer thread; a sink given by the caller is used alone.
        self._sinks = [self.sink] + ([open_sink(cfg.influx, cfg.source) for _ in range(WRITERS - 1)]
                                     if sink is None else [])
        self.encoder = LineEncoder(backslash=self.sink.backslash_escapes)
        self.quarantine = Quarantine(cfg.quarantine.path, cfg.quarantine.max_bytes)
        self.sequences = SequenceTracker()
        self.receipts = Receipts()
        self.stats = Stats()
        self.inbox = Inbox(cfg.inbox.max_bytes)
        self._stop = threading.Event()
        self._connected = threading.Event()
        # Batches handed to the writer threads, numbered in the order they were filled.
        self._handover: queue.SimpleQueue[tuple[int, Batch] | None] = queue.SimpleQueue()
        self._filled = 0  # batches handed over so far
        self._pending = 0  # handed over and not yet written (or given up)
        self._pending_changed = threading.Condition()
        self._written: dict[int, tuple[Batch, bool]] = {}  # written, waiting for an earlier batch before their acks
        self._next_ack = 0  # the batch whose acks go out next
        self._ack_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._abandon = False  # stopping while the store is down: nothing more is written or acked
        self._systemd = Notifier()  # Type=notify unit: READY=1 in run(), WATCHDOG=1 from _batching, STOPPING=1
        self._writer_failed: BaseException | None = None
        self._quarantine_lock = threading.Lock()  # every thread may quarantine
        self.client = make_client(cfg, cfg.mqtt.client_id, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # Receipts leave on a connection (and paho thread) of their own: their PUBACKs, handled on the
        # samples connection, queued the next sample messages behind them (5 k samples/s, 40 nodes:
        # p99 34-47 ms instead of 13-15 ms, bench_latency.py).
        self.receipt_client = make_client(cfg, f"{cfg.mqtt.client_id}-receipts", manual_ack=False)
        self.receipt_client.max_inflight_messages_set(1000)
        self.receipt_client.on_connect = self._on_receipt_connect
        self._filters: list[str] = []
        self._node_tag = {"collector": cfg.mqtt.client_id}
        self._rate_mark = (time.monotonic(), 0, 0.0)  # (when, samples written, reads paused s) at the last metrics
        self._backlog: tuple[float, int] | None = None  # (since, samples written then) while reads are paused

    # -- paho thread ---------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.cfg.mqtt.url, rc)
            return
        group = self.cfg.mqtt.share_group
        self._filters = [topics.shared(group, topics.all_nodes("samples")), topics.all_nodes("status")]
        client.subscribe([(f, 1) for f in self._filters])
        self._connected.set()
        log.info("connected to %s; subscribing", self.cfg.mqtt.url)

    def _on_receipt_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker %s refused the receipts connection (%s): agents get no receipts and will resend",
                      self.cfg.mqtt.url, rc)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        # A broker's ACL may refuse a filter (0x87) while accepting the connection: say so, or the
        # collector sits there receiving nothing with no hint why.
        refused = [f"{f} ({rc})" for f, rc in zip(self._filters, codes, strict=False) if rc.is_failure]
        if refused:
            log.error("broker %s refused the subscription to %s: check the ACL grants user %r read on "
                      "runlab/v1/nodes/+/samples and runlab/v1/nodes/+/status (deploy/mosquitto/acl)",
                      self.cfg.mqtt.url, ", ".join(refused), self.cfg.mqtt.username or "(anonymous)")
            return
        group = self.cfg.mqtt.share_group
        log.info("subscribed to samples%s and status", f" as share group {group!r}" if group else "")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("lost the broker (%s); reconnecting", rc)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(msg, self._stop)  # blocks while the inbox is full: we read no more, the broker keeps it

    # -- decoding ------------------------------------------------------------------------------
    def _quarantine(self, topic: str, reason: str, payload: bytes | None = None, sample: Any = None,
                    lines: list[bytes] | None = None) -> bool:
        """Keep a refusal whole; False when it could not be written (then its message is not acked)."""
        with self._quarantine_lock:
            return self.quarantine.add(topic, reason, payload, sample, lines)

    def _refuse(self, topic: str, reason: str, payload: bytes | None = None, sample: Any = None) -> None:
        """Quarantine what a message holds that cannot be stored; raise _NotKept when that failed."""
        if not self._quarantine(topic, reason, payload, sample):
            raise _NotKept

    def _lines_for(self, msg: mqtt.MQTTMessage, out: list[bytes], stored: list[tuple[str, str, int]]) -> int | None:
        """Append the message's lines to ``out`` (and its batch's identity to ``stored``); return its oldest
        sample time (ns) or None."""
        self.stats.messages += 1
        topic = msg.topic
        payload: bytes = msg.payload  # type: ignore[assignment]  # paho reads bytes (it says bytes | bytearray)
        parsed = topics.parse_node_topic(topic)
        if parsed is None:
            self._refuse(topic, "not a runlab node topic", payload)
            return None
        node, kind = parsed
        try:
            if kind == "samples":
                return self._batch_lines(topic, node, wire.decode_batch(payload), out, stored, payload)
            if kind == "status":
                if not payload:  # a cleared retained status
                    return None
                return self._status_line(topic, node, wire.decode_status(payload), out)
        except wire.DecodeError as e:
            self._refuse(topic, str(e), payload)
            if kind == "samples" and (ident := _batch_identity(payload)) is not None and ident[0] == node:
                stored.append(ident)  # quarantined whole: receipted, or its agent would send it again for ever
            return None
        self._refuse(topic, f"unexpected message kind {kind!r}", payload)
        return None

    def _batch_lines(self, topic: str, node: str, batch: wire.SampleBatch, out: list[bytes],
                     stored: list[tuple[str, str, int]], payload: bytes | None = None) -> int | None:
        if batch.node != node:
            self._refuse(topic, f"payload node {batch.node!r} does not match the topic's {node!r}", payload)
            return None
        self.sequences.see(node, batch.boot, batch.seq)  # a redelivery is written again: harmless
        samples = batch.samples
        refused = self.encoder.encode_many(samples, {"node": node}, out)
        for i, s, e in refused:
            self._refuse(topic, f"samples[{i}] ({s.name}): {e}", sample=msgspec.to_builtins(s))
        stored.append((node, batch.boot, batch.seq))  # the samples refused above are quarantined: stored all the same
        if refused:
            bad = {i for i, _, _ in refused}
            samples = [s for i, s in enumerate(samples) if i not in bad]
        return min(s.ts for s in samples) if samples else None

    def _status_line(self, topic: str, node: str, st: wire.NodeStatus, out: list[bytes]) -> int | None:
        if st.node != node:
            self._refuse(topic, f"payload node {st.node!r} does not match the topic's {node!r}",
                         sample=msgspec.to_builtins(st))
            return None
        sample = wire.Sample(ts=st.ts, name="node_status", tags={"node": node}, fields={
            "online": st.online, "version": st.version or "?", "arch": st.arch or "?", "cores": st.cores,
            "memory_bytes": st.memory_bytes, "cpu_model": st.cpu_model or "?", "kernel": st.kernel or "?",
            "run": st.run or "-"})
        try:
            out.append(self.encoder.line(sample))
        except InvalidSample as e:
            self._refuse(topic, f"status: {e}", sample=msgspec.to_builtins(st))
        return None

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        host, port, _tls = self.cfg.mqtt.endpoint(self.cfg.source)
        self.client.connect_async(host, port, keepalive=int(self.cfg.mqtt.keepalive), clean_start=False,
                                  properties=connect_properties(persistent=True,
                                                                expiry=self.cfg.mqtt.session_expiry_seconds()))
        self.client.loop_start()
        if self.cfg.receipts.enabled:
            self.receipt_client.connect_async(host, port, keepalive=int(self.cfg.mqtt.keepalive), clean_start=True)
            self.receipt_client.loop_start()
        log.info("collector %s → %s (%s API)", self.cfg.mqtt.client_id, self.cfg.influx.url, self.cfg.influx.api)
        writers = [threading.Thread(target=self._writer, args=(sink,), name=f"runlab-writer-{i}", daemon=True)
                   for i, sink in enumerate(self._sinks)]
        for w in writers:
            w.start()
        self._systemd.ready()
        try:
            self._batching()
        finally:
            for w in writers:
                if w.is_alive():
                    self._handover.put(None)  # each writer finishes what it holds (or gives up: store down)
            for w in writers:
                w.join()
            self._send_receipts(wait=2.0)  # what was stored before the stop: saves the agents a resend
            self.client.disconnect()
            self.client.loop_stop()
            if self.cfg.receipts.enabled:
                self.receipt_client.disconnect()
                self.receipt_client.loop_stop()
            self.quarantine.close()
            for sink in self._sinks:
                sink.close()
            log.info("collector stopped")
        if self._writer_failed is not None:
            raise self._writer_failed

    def _batching(self) -> None:
        """Fill batches from the inbox and hand them to the writer threads.

        A batch that is not full goes over only when a writer has nothing to do (meanwhile it keeps
        filling); a full one also when every writer is busy, to be next (so a writer never waits
        for Python); with that one waiting too, the loop takes nothing more and the broker holds it.
        """
        next_metrics = time.monotonic() + float(self.cfg.metrics_interval)
        max_points, max_delay = self.cfg.batch.max_points, float(self.cfg.batch.max_delay)
        inbox, changed, writers = self.inbox, self._pending_changed, len(self._sinks)
        batch = new_batch()
        receipts_every = float(self.cfg.receipts.interval)
        next_receipts = time.monotonic() + receipts_every
        while not self._stop.is_set():
            self._systemd.watchdog()  # rate-limited to half WatchdogSec; a wedged loop gets restarted
            if time.monotonic() >= next_receipts:  # here: also while a full batch waits for a writer
                next_receipts = time.monotonic() + receipts_every
                self._send_receipts()
            if batch.msgs or batch.lines:
                full = len(batch.lines) >= max_points
                with changed:
                    if self._pending < writers or (full and self._pending == writers):
                        self._hand_over(batch)
                        batch = new_batch()
                    elif full:
                        changed.wait(0.1)
                        continue
            try:
                # Holding a batch for busy writers: look back soon; otherwise sleep until a message comes.
                m: mqtt.MQTTMessage | None = inbox.get(timeout=0.005 if batch.msgs else 0.1)
            except queue.Empty:
                m = None
            started = time.monotonic()
            # Take what is queued now; never wait for more (idle → write at once).
            while m is not None:
                try:
                    ts = self._lines_for(m, batch.lines, batch.stored)
                except _NotKept:  # not acked: the broker delivers it again after a reconnection
                    ts = None
                else:
                    batch.msgs.append(m)
                if ts is not None:
                    batch.oldest.append(ts)
                if len(batch.lines) >= max_points or time.monotonic() - started > max_delay:
                    break
                try:
                    m = inbox.get_nowait()
                except queue.Empty:
                    m = None
            now = time.monotonic()
            if now >= next_metrics:
                next_metrics = now + float(self.cfg.metrics_interval)
                batch.lines.append(self._metrics_line())
        if (batch.msgs or batch.lines) and self._writer_failed is None:
            # What was taken is written and acked, unless the store is down (the writers give up then).
            with changed:
                changed.wait_for(lambda: self._pending <= writers)
                self._hand_over(batch)

    def _hand_over(self, batch: Batch) -> None:
        """(Holding ``_pending_changed``.) Queue ``batch`` for the writers."""
        self._pending += 1
        self._handover.put((self._filled, batch))
        self._filled += 1

    def _writer(self, sink: Sink) -> None:
        """A writer thread: write each batch it takes until the store takes it, then release its acks."""
        try:
            while (item := self._handover.get()) is not None:
                seq, batch = item
                outcome = "stop" if self._abandon else self._store(sink, batch) if batch.lines else "stored"
                if outcome == "stop":
                    self._abandon = True  # stopping while the store is down: unacked messages stay with the broker
                else:
                    if outcome == "stored":
                        self.receipts.add(batch.stored)  # only now: the store has every one of them
                    self._release(seq, batch, ack=outcome == "stored")
                with self._pending_changed:
                    self._pending -= 1
                    self._pending_changed.notify()
        except BaseException as e:  # never leave the batching loop waiting for a dead writer
            log.exception("a writer thread failed; stopping")
            self._writer_failed = e
            self._abandon = True
            self._stop.set()
            with self._pending_changed:
                self._pending = 0
                self._pending_changed.notify()

    def _release(self, seq: int, batch: Batch, *, ack: bool = True) -> None:
        """Ack the messages of every written batch up to the first one not written yet, in order.

        Batch ``seq`` may be written before an earlier one (two writes in flight): its acks wait,
        so acks go out in the order the messages arrived, and a batch whose write never succeeds
        (store down at shutdown) holds back every ack after it: those messages are delivered again.
        A batch released with ``ack=False`` (a refusal its quarantine could not keep) is passed over unacked.
        """
        with self._ack_lock:
            self._written[seq] = (batch, ack)
            while self._next_ack in self._written:
                done, acked = self._written.pop(self._next_ack)
                for m in done.msgs if acked else []:
                    if m.qos:
                        self.client.ack(m.mid, m.qos)
                self._next_ack += 1

    def _store(self, sink: Sink, batch: Batch) -> str:
        """Put the batch's lines in the store: "stored", "unkept" (all written or quarantined, but a quarantine
        write failed: ack nothing) or "stop" (told to stop while the store is down).

        A 413 halves the part until it fits; any other refusal bisects the part to find the lines at fault
        and quarantines only them, so their neighbours land (at most BISECT_REFUSALS refusals a batch; past
        that each part still refused is quarantined whole: kept, never stalling the stream).
        """
        parts, refusals, kept, refused = [batch.lines], 0, True, False
        while parts:
            part = parts.pop()
            try:
                if not self._write(sink, part):
                    return "stop"
                continue
            except SinkTooLarge as e:
                error: SinkRejected = e
                split = len(part) > 1
            except SinkRejected as e:
                error = e
                refusals += 1
                split = len(part) > 1 and refusals <= BISECT_REFUSALS
            with self._stats_lock:
                self.stats.rejected_batches += not refused
                self.stats.refusals += 1
            refused = True
            if split:
                if refusals == 1 and not isinstance(error, SinkTooLarge):
                    log.warning("store refused a batch of %d points (%s); bisecting to keep its valid neighbours",
                                len(part), error)
                half = len(part) // 2
                parts += [part[half:], part[:half]]  # first half next: the lines keep their order
                continue
            what = "the line" if len(part) == 1 else f"{len(part)} lines (bisect budget spent)"
            this_kept = self._quarantine("(store)", f"store refused {what}: {error}", lines=part)
            kept = kept and this_kept
            with self._stats_lock:
                self.stats.rejected_lines += len(part)
            log.warning("store refused %s, %s: %s", what, "quarantined" if this_kept else
                        "NOT quarantined (the quarantine file cannot be written): its batch is not acked", error)
        with self._stats_lock:
            if len(self.stats.lags_ns) < LAG_RESERVOIR:
                done = time.time_ns()
                self.stats.lags_ns.extend(done - ts for ts in batch.oldest)
        return "stored" if kept else "unkept"

    def _write(self, sink: Sink, lines: list[bytes]) -> bool:
        """Write until the store takes it (True) or we are told to stop (False); SinkRejected passes up."""
        body = b"\n".join(lines)
        delay = 0.2
        while True:
            t0 = time.monotonic()
            try:
                sink.write(body)
            except SinkUnavailable as e:
                with self._stats_lock:
                    self.stats.write_errors += 1
                if self.stats.write_errors in (1, 2, 5) or self.stats.write_errors % 50 == 0:
                    log.warning("cannot write to %s (%s); retrying, nothing is acked meanwhile",
                                self.cfg.influx.url, e)
                if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                    return False
                delay = min(delay * 2, 10.0)
                continue
            st = self.stats
            with self._stats_lock:
                st.write_seconds += time.monotonic() - t0
                st.batches_written += 1
                st.samples_written += len(lines)
                st.last_batch_points = len(lines)
            return True

    def _send_receipts(self, wait: float = 0.0) -> None:
        """Publish a receipt for every batch stored since the last call (QoS 1, not retained).

        paho queues them while the broker is away and sends them on reconnection; one lost with
        us (SIGKILL) only makes the agent resend batches the store already has: duplicates, counted.
        """
        if not self.cfg.receipts.enabled:
            self.receipts.take()
            return
        infos = []
        for r in self.receipts.take():
            infos.append(self.receipt_client.publish(topics.receipts(r.node), wire.encode(r), qos=1))
            self.receipts.sent += 1
        deadline = time.monotonic() + wait
        for info in infos if wait else []:
            if not self.receipt_client.is_connected():
                break
            with contextlib.suppress(ValueError, RuntimeError):  # not queued / not connected: nothing to wait for
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))

    def _drain_rate(self) -> float:
        """Samples written per second since the last call; logs while a backlog drains (reads paused)."""
        now, written, paused = time.monotonic(), self.stats.samples_written, self.inbox.paused_seconds
        then, written0, paused0 = self._rate_mark
        self._rate_mark = (now, written, paused)
        rate = (written - written0) / max(1e-6, now - then)
        if paused > paused0:
            if self._backlog is None:
                self._backlog = (then, written0)
            log.info("draining a backlog: %.0f samples/s written; reads paused %.1f s of the last %.1f s "
                     "(inbox full: the broker keeps the rest)", rate, paused - paused0, now - then)
        elif self._backlog is not None:
            since, at = self._backlog
            self._backlog = None
            log.info("backlog drained: %d samples in %.1f s (%.0f samples/s)", written - at, now - since,
                     (written - at) / max(1e-6, now - since))
        return rate

    def _metrics_line(self) -> bytes:
        st = self.stats
        with self._stats_lock:
            taken, st.lags_ns = st.lags_ns, []
        lags = sorted(taken)
        rate = self._drain_rate()

        def pct(p: float) -> float:
            return lags[min(len(lags) - 1, int(p * len(lags)))] / 1e6 if lags else 0.0

        fields: dict[str, wire.FieldValue] = {
            "messages": st.messages, "samples_written": st.samples_written, "batches": st.batches_written,
            "quarantined": self.quarantine.count, "gaps": self.sequences.gaps,
            "duplicates": self.sequences.duplicates, "write_errors": st.write_errors,
            "rejected_batches": st.rejected_batches, "rejected_lines": st.rejected_lines,
            "quarantine_full": self.quarantine.full,
            "quarantine_errors": self.quarantine.write_errors, "last_batch_points": st.last_batch_points,
            "inbox": self.inbox.qsize(), "inbox_bytes": self.inbox.bytes,
            "reads_paused_s": self.inbox.paused_seconds, "write_rate": rate, "streams": self.sequences.streams,
            "write_ms_avg": 1000.0 * st.write_seconds / max(1, st.batches_written),
            "lag_p50_ms": pct(0.5), "lag_p99_ms": pct(0.99), "lag_max_ms": lags[-1] / 1e6 if lags else 0.0,
            "connected": self._connected.is_set(), "receipts": self.receipts.sent,
        }
        return self.encoder.line(wire.Sample(ts=time.time_ns(), name="collector", tags=self._node_tag,
                                               fields=fields))

    def stop(self) -> None:
        self._systemd.stopping()
        self._stop.set()
