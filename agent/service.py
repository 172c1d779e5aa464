"""``runlab-agent serve``: sample the host on a fixed tick, spool to the outbox, drain it to MQTT.

Two threads, each with its own asyncio loop. The main thread runs the fleet
(agent/fleet.py) and with it the engine that times workloads; nothing else runs
there. The delivery thread runs everything that can block or take its time:
host sampling, the outbox's fsynced SQLite writes and the MQTT link. The fleet
hands samples and events over without waiting (a deque, ``call_soon_threadsafe``),
and the link hands received orders back the same way, so a slow disk or a
stalled broker never moves a measurement (tests/test_delivery_agent.py proves
it with every fsync delayed by 100 ms).

In the delivery thread, two loops. The sampling loop turns every tick's samples
into one ``SampleBatch`` (node, boot, seq), kept in memory (agent/delivery.py)
and written to the outbox once it is ``spool.flush_after`` old without a
receipt (at once if it holds run samples). The link loop keeps an MQTT 5
connection (reconnecting with backoff and jitter), publishes the retained
status, and publishes with QoS 1: run events, then this process's batches (new,
and those due for a resend), then the disk backlog, while fewer than
``delivery.window`` batches await the collector's receipt. A batch is forgotten
(and its row deleted) when a receipt names it; an event row at its PUBACK.

The link also subscribes (again on every connection: the session is clean) to
its receipts, the node's and its groups' experiment topics and its control
topic, and hands orders to the fleet (agent/fleet.py), which runs signed
experiments one at a time; their run events go through the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import agent.deferred  # noqa: F401  (before aiomqtt: paho's unused urllib.request is imported on first use)

# isort: split
import aiomqtt
import paho.mqtt.client as paho

from agent import facts
from agent.aio import within
from agent.config import AgentConfig
from agent.delivery import Entry, Pending
from agent.fleet import Fleet
from agent.outbox import Message, Outbox
from agent.sampler import HostSampler, SelfSampler
from runlab import __version__, topics, wire
from runlab.config import read_secret
from runlab.control import RunEvent, encode_event, event_sample
from runlab.sdnotify import Notifier

log = logging.getLogger("runlab.agent")

WINDOW = 64  # QoS 1 messages in flight at once
ACK_FLUSH_SECONDS = 0.2
# Run events that are not kept on disk: a run's phase and progress (the lifecycle ones are).
EPHEMERAL_EVENTS = ("phase", "progress")
SWITCH_INTERVAL = 0.0005  # seconds; CPython's default is 0.005


@dataclass
class LinkStats:
    published: int = 0
    refused: int = 0  # topics the broker refused a publish on
    reconnects: int = 0
    connected: bool = False
    latency_sum: float = 0.0
    latency_max: float = 0.0
    latency_n: int = 0

    def take_latency(self) -> tuple[float, float]:
        """(average, max) publish→PUBACK latency in ms since the last call."""
        avg = 1000.0 * self.latency_sum / self.latency_n if self.latency_n else 0.0
        mx = 1000.0 * self.latency_max
        self.latency_sum = self.latency_max = 0.0
        self.latency_n = 0
        return avg, mx


def name_hint(cfg: AgentConfig) -> str:
    """Why a broker with the shipped ACL drops this agent: it logs in under another name than its node's."""
    user = cfg.mqtt.username
    if not user or user == cfg.node:
        return ""
    return (f"logged in as {user!r} but the node is {cfg.node!r}: the shipped broker ACL "
            f"(deploy/mosquitto/acl) lets a login publish only under runlab/v1/nodes/<its username>/, and a "
            f"refused publish costs the connection; make node and mqtt.username the same")


REFUSED = 0x80  # an MQTT 5 reason code at or above this in a PUBACK: the broker refused the message


class Link(aiomqtt.Client):
    """aiomqtt.Client speaking MQTT 5, whose ``send`` returns the PUBACK's reason code.

    A publish the broker refuses (0x87 not authorized: the ACL) is then told apart from a lost connection.
    Also: aiomqtt registers the socket with the event loop through ``call_soon_threadsafe``; when the broker
    closes the connection before that callback runs, ``add_reader``/``add_writer`` met a closed descriptor
    and asyncio logged an ``OSError: [Errno 9] Bad file descriptor`` traceback. Here the registration checks
    that the socket is still the client's and open.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs, protocol=aiomqtt.ProtocolVersion.V5)
        self._reasons: dict[int, int] = {}
        self.pending_calls_threshold = 4 * WINDOW  # aiomqtt warns beyond 10 in flight; the window is ours

    @property
    def dropped(self) -> asyncio.Future[None]:
        """Done once the connection has ended."""
        return self._disconnected

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            # aiomqtt leaves a dropped connection's exception unread ("Future exception was never
            # retrieved" at exit): the call that met the drop has reported it already.
            d = self._disconnected
            if d.done() and not d.cancelled():
                d.exception()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._reasons[mid] = int(getattr(reason_code, "value", reason_code) or 0)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                   timeout: float = 30.0) -> int:
        """Publish; the broker's reason code (0: accepted, >= 0x80: refused); MqttError if the link failed."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            try:
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    # Until the PUBACK or the end of the connection, whichever is first: aiomqtt's own wait
                    # ignores a connection that ended with the publish in flight and sat out the whole
                    # timeout (30 s without a link, after a refusal Mosquitto answers by closing it).
                    acked = asyncio.ensure_future(confirmation.wait())
                    try:
                        ends: list[asyncio.Future[Any]] = [acked, self._disconnected]
                        await asyncio.wait(ends, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        acked.cancel()
                    if not confirmation.is_set():
                        if self._disconnected.done():
                            raise aiomqtt.MqttError("the connection ended before the broker acknowledged a publish")
                        raise aiomqtt.MqttError("Operation timed out")
            except BaseException:
                self._reasons.pop(info.mid, None)
                raise
        return self._reasons.pop(info.mid, 0)

    def _guarded(self, client: paho.Client, sock: Any, add: Callable[[int, Callable[[], None]], None],
                 callback: Callable[[], None]) -> Callable[[], None]:
        def register() -> None:
            fd = sock.fileno()
            if fd < 0 or client.socket() is not sock:
                return  # closed meanwhile: nothing to watch
            add(fd, callback)
        return register

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def callback() -> None:
            try:
                while True:
                    client.loop_read()
                    if hasattr(client._sock, "pending") and client._sock.pending() > 0:  # type: ignore[union-attr]
                        continue
                    break
            except Exception as exc:  # as aiomqtt: the connection broke
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(self._guarded(client, sock, self._loop.add_reader, callback))
        self._loop.call_soon_threadsafe(create_misc_task)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def callback() -> None:
            try:
                client.loop_write()
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        self._loop.call_soon_threadsafe(self._guarded(client, sock, self._loop.add_writer, callback))

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        if fd >= 0:
            self._loop.remove_writer(fd)


def mqtt_client_kwargs(cfg: AgentConfig) -> dict[str, object]:
    """aiomqtt.Client keyword arguments from the ``mqtt:`` section (also used by ``check``)."""
    host, port, tls = cfg.mqtt.endpoint(cfg.source)
    kw: dict[str, object] = {"hostname": host, "port": port, "keepalive": int(cfg.mqtt.keepalive),
                             "timeout": float(cfg.mqtt.connect_timeout)}
    if cfg.mqtt.username:
        kw["username"] = cfg.mqtt.username
        kw["password"] = read_secret(cfg.mqtt.password_file, cfg.mqtt.password, cfg.source, "mqtt.password_file")
    if tls:
        kw["tls_params"] = aiomqtt.TLSParameters(ca_certs=cfg.mqtt.ca_file, certfile=cfg.mqtt.cert_file,
                                                 keyfile=cfg.mqtt.key_file, cert_reqs=ssl.CERT_REQUIRED)
    return kw


class Agent:
    """One agent process: ``await Agent(cfg).run()`` until ``stop()``."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.boot = uuid.uuid4().hex[:12]
        self.seq = 0
        self.outbox = Outbox(cfg.spool.path, int(cfg.spool.max_bytes))
        self.stats = LinkStats()
        self._held: dict[str, int] = {}  # topics the broker refused (reason code): not published again
        # Sample batches until their receipt (agent/delivery.py); run events, stored first, until their PUBACK.
        self.pending = Pending(float(cfg.delivery.receipt_timeout), cfg.delivery.window)
        self._live_events: deque[Message] = deque()
        self._event_rows: set[int] = set()  # event rows queued or in flight (the backlog reader skips them)
        self._rewind = 0  # the backlog reader goes back to this row (batches dropped from the index)
        self._pending: deque[wire.Sample] = deque()  # appended by both threads, emptied by the delivery thread
        # Delivery-thread events (set from the main thread only through _in_delivery):
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()  # stop(): sampling ends
        self._link_stop = asyncio.Event()  # then the link delivers what is left and says "offline"
        self._stop_requested = asyncio.Event()  # main loop: stop() was called, the fleet stops its run
        self._delivery_done = asyncio.Event()  # main loop: the delivery thread has ended
        self._main: asyncio.AbstractEventLoop | None = None
        self._delivery: asyncio.AbstractEventLoop | None = None
        self._delivery_thread: threading.Thread | None = None
        self._client: Link | None = None
        self._run = ""  # the run in progress (NodeStatus.run)
        self._bg: set[asyncio.Task[None]] = set()
        self._facts = facts.static_facts()
        self._runtimes: dict[str, str] = {}
        self._host = HostSampler(per_cpu=cfg.sampling.per_cpu)
        self._self = SelfSampler()
        self._systemd = Notifier()  # Type=notify units: READY=1, WATCHDOG=1, STOPPING=1 (no-op elsewhere)
        moved = self.outbox.readdress(self.node)
        if moved:
            log.warning("node name is now %s: re-addressed %s spooled under %s to its topics", self.node,
                        " and ".join(f"{n} messages" for n in moved.values()), ", ".join(map(repr, moved)))
        self.readdressed = sum(moved.values())
        if self.outbox.depth:
            log.info("outbox holds %d messages from before; they drain oldest-first", self.outbox.depth)
        self.fleet = Fleet(cfg, self)

    # -- threads ------------------------------------------------------------------------------
    def _in_delivery(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn(*args)`` in the delivery thread; from the main thread it is queued, never awaited."""
        loop = self._delivery
        if loop is None or threading.current_thread() is self._delivery_thread:
            fn(*args)
        else:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the delivery loop has ended (shutdown): too late for the link
                fn(*args)

    def _in_main(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._main
        if loop is None or threading.current_thread() is threading.main_thread():
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # -- producing ----------------------------------------------------------------------------
    def emit(self, sample: wire.Sample) -> None:
        """Queue a sample for the next batch (any thread; never blocks)."""
        self._pending.append(sample)

    def flush(self) -> None:
        """Turn queued samples into one durable batch in the outbox (delivery thread)."""
        if not self._pending:
            return
        samples: list[wire.Sample] = []
        with contextlib.suppress(IndexError):
            while True:
                samples.append(self._pending.popleft())
        batch = wire.SampleBatch(v=wire.WIRE_VERSION, node=self.node, boot=self.boot, seq=self.seq,
                                 samples=samples)
        self.seq += 1
        topic, payload = topics.samples(self.node), wire.encode(batch)
        e = Entry(self.boot, batch.seq, topic, payload, len(samples), time.monotonic())
        if any(x.name.startswith("run_") for x in samples):
            # A run's events, raw starts and results are rare and precious: on disk before they are sent.
            e.rowid = self.outbox.put(topic, payload, samples=len(samples))
        self.pending.add(e)
        self._wake.set()

    def store_young(self, force: bool = False) -> None:
        """Batches unreceipted for spool.flush_after go to disk, in one transaction (all of them: ``force``)."""
        young = self.pending.to_store(time.monotonic(), -1.0 if force else float(self.cfg.spool.flush_after))
        if young:
            rows = self.outbox.put_many([(e.topic, e.payload or b"", e.samples) for e in young])
            for e, row in zip(young, rows, strict=True):
                if row is not None:
                    self.pending.stored(e, row)
        lowest = self.pending.evict_stored(keep=self.pending.window)
        if lowest:
            self._rewind = lowest if not self._rewind else min(self._rewind, lowest)

    def publish_event(self, ev: RunEvent) -> None:
        """A run event: QoS 1 on the events topic and a ``run_event`` sample, both through the outbox.

        Called by the fleet in the main thread: the writes happen in the delivery thread.
        """
        self._in_delivery(self._publish_event_here, ev)

    def _publish_event_here(self, ev: RunEvent) -> None:
        topic, payload = topics.events(self.node), encode_event(ev)
        self.emit(event_sample(ev))
        if ev.status in EPHEMERAL_EVENTS:
            # Up to 4 a second while a run measures: sent from memory, their sample rides the next batch.
            self._live_events.append(Message(0, topic, payload, 1, False, time.time_ns()))
            self._wake.set()
            return
        row = self.outbox.put(topic, payload, qos=1)  # durable before it is published
        if row is not None:
            self._event_rows.add(row)
            self._live_events.append(Message(row, topic, payload, 1, False, time.time_ns()))
        self.flush()

    def set_run(self, run: str) -> None:
        """The run in progress changed: republish the retained status with it."""
        self._in_delivery(self._set_run_here, run)

    def _set_run_here(self, run: str) -> None:
        if run == self._run:
            return
        self._run = run
        client = self._client
        if client is not None:
            async def republish() -> None:
                with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                    await client.send(topics.status(self.node), self.status(True), retain=True)
            t = asyncio.create_task(republish())
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)

    def _agent_sample(self) -> wire.Sample:
        avg, mx = self.stats.take_latency()
        fields: dict[str, wire.FieldValue] = {
            **self._self.footprint(),
            "outbox_messages": self.outbox.depth, "outbox_bytes": self.outbox.bytes,
            "unreceipted": len(self.pending), "awaiting_receipt": self.pending.awaiting(),
            "resent": self.pending.resent, "receipted": self.pending.receipted,
            "samples_dropped": self.outbox.dropped_samples, "messages_lost": self.outbox.failed_puts,
            "published": self.stats.published, "publish_latency_ms_avg": avg, "publish_latency_ms_max": mx,
            "connected": self.stats.connected, "reconnects": self.stats.reconnects,
            "refused_topics": self.stats.refused, "readdressed": self.readdressed,
        }
        return wire.Sample(ts=time.time_ns(), name="agent", tags={"version": __version__}, fields=fields)

    async def sampling_loop(self) -> None:
        interval = float(self.cfg.sampling.interval)
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            self.emit(self._host.sample())
            self.emit(self._agent_sample())
            self.flush()
            self.store_young()
            next_tick += interval
            delay = next_tick - time.monotonic()
            if delay < 0:  # we fell behind (suspend, overload): skip ticks rather than burst
                next_tick = time.monotonic() + interval
                delay = interval
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._stopping.wait(), delay)

    # -- the link -----------------------------------------------------------------------------
    def status(self, online: bool) -> bytes:
        f = self._facts
        st = wire.NodeStatus(
            v=wire.WIRE_VERSION, node=self.node, online=online, ts=time.time_ns(), version=__version__,
            boot=self.boot, arch=str(f["arch"]), cpu_model=str(f["cpu_model"]), cores=int(f["cores"]),  # type: ignore[call-overload]
            memory_bytes=int(f["memory_bytes"]), os=str(f["os"]), kernel=str(f["kernel"]),  # type: ignore[call-overload]
            runtimes=self._runtimes, groups=list(self.cfg.groups), run=self._run)
        return wire.encode(st)

    async def link_loop(self) -> None:
        backoff = 0.5
        stable_after = 10.0  # a connection that lasted this long resets the backoff
        kwargs = mqtt_client_kwargs(self.cfg)
        status_topic = topics.status(self.node)
        detect = asyncio.create_task(self._detect_runtimes())
        while not self._link_stop.is_set():
            will = aiomqtt.Will(status_topic, self.status(False), qos=1, retain=True)
            connected_at: float | None = None
            try:
                async with Link(**kwargs, identifier=f"runlab-agent-{self.node}", will=will,
                                clean_start=True, max_inflight_messages=WINDOW) as client:
                    self.stats.connected = True
                    log.info("connected to %s as node %s", self.cfg.mqtt.url, self.node)
                    connected_at = time.monotonic()
                    if status_topic not in self._held:  # refused once: publishing it again only costs the link
                        self._check_refused(status_topic,
                                            await client.send(status_topic, self.status(True), retain=True))
                    self._client = client
                    republish = asyncio.create_task(self._republish_status_after(detect, client))
                    subscribed = asyncio.Event()
                    receive = asyncio.create_task(self._receive(client, subscribed))
                    try:
                        # Receipts are subscribed before anything is sent (else a prompt receipt is missed and
                        # the batch resent after the timeout), but a slow SUBACK does not hold delivery up.
                        with contextlib.suppress(TimeoutError):
                            await within(subscribed.wait(), 10)
                        await self._drain(client)
                    finally:
                        self.pending.connection_lost()
                        self._client = None
                        republish.cancel()
                        receive.cancel()
                        if self._link_stop.is_set() and status_topic not in self._held:
                            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                                await client.send(status_topic, self.status(False), retain=True, timeout=2)
            except aiomqtt.MqttError as e:
                if self.stats.connected:
                    hint = name_hint(self.cfg)
                    log.warning("lost the broker %s: %s%s", self.cfg.mqtt.url, e, f" — {hint}" if hint else "")
                else:
                    log.warning("cannot reach the broker %s: %s (retrying in ≤%.1fs)", self.cfg.mqtt.url, e, backoff)
            self.stats.connected = False
            # Back off again unless the connection had been up for a while: a broker that accepts and
            # then drops us (an ACL refusing our topics, a wrong username) must not be hammered.
            if connected_at is not None and time.monotonic() - connected_at >= stable_after:
                backoff = 0.5
            if self._link_stop.is_set():
                break
            self.stats.reconnects += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._link_stop.wait(), backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 30.0)
        detect.cancel()

    async def _receive(self, client: Link, subscribed: asyncio.Event) -> None:
        """Subscribe to receipts and the fleet's topics (retained orders arrive now); handle every message."""
        receipts = topics.receipts(self.node)
        try:
            await client.subscribe([(receipts, 1), *((f, 1) for f in self.fleet.subscriptions())], timeout=30)
        except (aiomqtt.MqttError, TimeoutError) as e:
            log.warning("could not subscribe to receipts, experiments and control: %s", e)
            return
        finally:
            subscribed.set()
        log.info("subscribed to experiments (node %s, groups %s), control and receipts", self.node,
                 ", ".join([*self.cfg.groups, "all"]))
        try:
            async for msg in client.messages:
                payload = msg.payload
                data = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
                if msg.topic.value == receipts:
                    self._on_receipt(data)
                else:
                    self._in_main(self._handle, msg.topic.value, data)
        except aiomqtt.MqttError:
            pass  # the connection ended: the drain loop sees it too and reconnects

    def _on_receipt(self, data: bytes) -> None:
        """The collector stored these batches: forget them (and delete their rows, without an fsync)."""
        try:
            r = wire.decode_receipt(data)
        except wire.DecodeError as e:
            log.warning("ignored a receipt: %s", e)
            return
        if r.node != self.node:
            log.warning("ignored a receipt for node %s (this is %s)", r.node, self.node)
            return
        rows = self.pending.receipt(r.boot, [(a, b) for a, b in r.ranges])
        if rows:
            self.outbox.ack(rows)
        self._wake.set()  # room in the window: the backlog may go on

    def _handle(self, topic: str, data: bytes) -> None:
        """An order or a control message, handed to the fleet in the main thread."""
        try:
            self.fleet.handle(topic, data)
        except Exception:  # one bad message must not take the agent down
            log.exception("could not handle a message on %s", topic)

    async def _detect_runtimes(self) -> None:
        self._runtimes = await facts.detect_runtimes()
        log.info("runtimes found: %s", ", ".join(sorted(self._runtimes)) or "none")

    async def _republish_status_after(self, detect: asyncio.Task[None], client: Link) -> None:
        if not detect.done():
            await asyncio.wait([detect])
            with contextlib.suppress(aiomqtt.MqttError):
                await client.send(topics.status(self.node), self.status(True), retain=True)

    async def _drain(self, client: Link) -> None:
        """Publish until the connection fails (raises MqttError) or we stop.

        Order: run events first, then this process's batches (new ones and those due for a resend), then
        the backlog read back from disk, as long as fewer than ``delivery.window`` batches await a receipt.
        A batch stays in ``self.pending`` until its receipt; an event row is deleted at its PUBACK.
        """
        window = asyncio.Semaphore(WINDOW)
        acked_rows: list[int] = []  # event rows delivered: deleted in groups
        failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        tasks: set[asyncio.Task[None]] = set()
        verified: set[str] = set()  # topics the broker accepted a publish on in this connection
        cursor = 0  # backlog: outbox rows up to here were looked at on this connection
        pending = self.pending
        self._live_events.clear()  # every event row still on disk is met by the backlog reader
        self._event_rows.clear()
        self._rewind = 0

        async def send(topic: str, payload: bytes, qos: int = 1) -> bool:
            """True once the broker accepted it; False if refused or the link failed (then `failed` is set)."""
            t0 = time.monotonic()
            try:
                reason = await client.send(topic, payload, qos=qos, timeout=30)
            except (TimeoutError, aiomqtt.MqttError) as e:
                if not failed.done():
                    failed.set_result(e)
                return False
            finally:
                window.release()
            if self._check_refused(topic, reason):
                return False
            verified.add(topic)
            dt = time.monotonic() - t0
            st = self.stats
            st.published += 1
            st.latency_sum += dt
            st.latency_n += 1
            st.latency_max = max(st.latency_max, dt)
            return True

        async def send_event(m: Message) -> None:
            if await send(m.topic, m.payload, m.qos):
                if m.id:
                    acked_rows.append(m.id)
            else:
                self._event_rows.discard(m.id)  # met again by the backlog reader (next connection)

        async def send_batch(e: Entry) -> None:
            payload = e.payload
            if payload is None and e.rowid is not None:
                payload = self.outbox.get(e.rowid)
            if payload is None:  # its row was dropped to stay under spool.max_bytes
                pending.entries.pop((e.boot, e.seq), None)
                e.inflight = False
                window.release()
                return
            ok = await send(e.topic, payload)
            e.inflight = False
            if ok:
                e.acked = time.monotonic()
                if e.rowid is not None:
                    e.payload = None  # on disk: memory holds only what is young

        async def flush_acks() -> None:
            while True:
                await asyncio.sleep(ACK_FLUSH_SECONDS)
                if acked_rows:
                    self.outbox.ack(acked_rows[:])
                    self._event_rows.difference_update(acked_rows)
                    acked_rows.clear()

        def backlog(limit: int) -> list[Message | Entry]:
            """Up to ``limit`` outbox rows not known here yet: events as they are, batches indexed."""
            nonlocal cursor
            out: list[Message | Entry] = []
            while len(out) < limit:
                rows = self.outbox.read(cursor, WINDOW)
                if not rows:
                    break
                for m in rows:
                    cursor = m.id
                    if m.id in pending.rowids or m.id in self._event_rows or m.topic in self._held:
                        continue
                    if m.topic.endswith("/samples"):
                        try:
                            b = wire.decode_batch(m.payload)
                        except wire.DecodeError as err:
                            log.warning("outbox row %d is not a sample batch (%s); dropped", m.id, err)
                            self.outbox.ack([m.id])
                            continue
                        if (b.boot, b.seq) in pending.entries:
                            continue
                        e = Entry(b.boot, b.seq, m.topic, m.payload, len(b.samples), time.monotonic(), rowid=m.id)
                        pending.add(e)
                        out.append(e)
                        if not pending.room():
                            break
                    else:
                        self._event_rows.add(m.id)
                        out.append(m)
                if not pending.room():
                    break
            return out

        async def dispatch(item: Message | Entry) -> bool:
            """Start publishing one item; False when the link failed."""
            await window.acquire()
            if failed.done():
                window.release()
                return False
            if isinstance(item, Message):
                coro = send_event(item)
            else:
                item.inflight = True  # now, not when the task starts: the next round must not pick it again
                item.sent = True  # it holds a place in the window from now until its receipt
                coro = send_batch(item)
            if item.topic not in verified:
                # The first message on a topic goes alone: a refusal (0x87) is read before Mosquitto
                # drops the connection, not lost behind a window of publishes that fail with it.
                await coro
                return not failed.done()
            t = asyncio.create_task(coro)
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            return True

        flusher = asyncio.create_task(flush_acks())
        try:
            while not failed.done():
                stopping = self._link_stop.is_set()  # then: deliver what is new, not the backlog, and go
                self._wake.clear()
                work: list[Message | Entry] = [*self._live_events]  # one on a refused topic is skipped below
                self._live_events.clear()
                work.extend(e for e in pending.to_send() if e.topic not in self._held)
                room = pending.window - pending.awaiting() - sum(1 for w in work if isinstance(w, Entry) and not w.sent)
                if room > 0 and not stopping:
                    if self._rewind:
                        cursor = min(cursor, self._rewind - 1)
                        self._rewind = 0
                    work.extend(backlog(min(room, WINDOW)))
                for item in work:
                    if item.topic in self._held:  # refused while this round was under way: kept, not sent
                        continue
                    if not await dispatch(item):
                        break
                if work:
                    continue
                if stopping:
                    break
                due = pending.next_due()
                timeout = None if due is None else max(0.05, due - time.monotonic())
                waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait()),
                                                      asyncio.ensure_future(self._link_stop.wait())]
                await asyncio.wait([*waiters, failed, client.dropped], timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if client.dropped.done() and not failed.done():  # nothing in flight saw it: say it here
                    failed.set_result(aiomqtt.MqttError("the broker closed the connection"))
            if self._link_stop.is_set() and tasks:  # let what is in flight get its PUBACK
                await asyncio.wait(tasks, timeout=2)
        finally:
            flusher.cancel()
            for t in tasks:
                t.cancel()
            if acked_rows:
                self.outbox.ack(acked_rows)
                self._event_rows.difference_update(acked_rows)
        if failed.done():
            err = failed.result()
            raise err if isinstance(err, aiomqtt.MqttError) else aiomqtt.MqttError(f"publish timed out: {err}")

    def _check_refused(self, topic: str, reason: int) -> bool:
        """True when the broker refused a publish on ``topic``: said once, and the topic is held from then on.

        A refusal (the shipped ACL: a login may publish only under its own node name) is not a lost
        connection, and sending the same message again would only be refused again (Mosquitto 2.0 also
        drops the connection after it). What the outbox holds for that topic stays there, not sent again by
        this agent process; after node/mqtt.username are fixed the agent restarts, re-addresses it to the
        node's current name and sends it.
        """
        if reason < REFUSED:
            return False
        if topic not in self._held:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.reasoncodes import ReasonCode

            self._held[topic] = reason
            why = str(ReasonCode(PacketTypes.PUBACK, identifier=reason))
            hint = name_hint(self.cfg)
            log.error("the broker %s refused a publish on %s by user %s: %s (0x%02x); what the outbox holds "
                      "for that topic stays there and is not sent again until the agent restarts%s",
                      self.cfg.mqtt.url, topic, repr(self.cfg.mqtt.username) if self.cfg.mqtt.username
                      else "(anonymous)", why, reason, f" — {hint}" if hint else "")
            self.stats.refused += 1
        return True

    # -- lifecycle ----------------------------------------------------------------------------
    def _delivery_main(self, ready: threading.Event) -> None:
        """The delivery thread: sampling and the link on a loop of their own."""
        async def main() -> None:
            self._delivery = asyncio.get_running_loop()
            ready.set()
            sampling = asyncio.create_task(self.sampling_loop())
            link = asyncio.create_task(self.link_loop())
            try:
                await sampling  # returns once stop() was called
                await self._link_stop.wait()  # the fleet has recorded the end of its run
                self.flush()
                await asyncio.wait([link], timeout=self._link_grace)
            finally:
                for t in (sampling, link):
                    t.cancel()
                await asyncio.wait([sampling, link], timeout=1.0)
                self.store_young(force=True)  # a clean stop loses nothing unreceipted

        try:
            asyncio.run(main())
        except Exception:
            log.exception("the delivery thread failed")
        finally:
            ready.set()
            if self._main is not None:
                with contextlib.suppress(RuntimeError):  # the main loop may be gone already
                    self._main.call_soon_threadsafe(self._delivery_done.set)

    _link_grace = 5.0

    async def run(self) -> None:
        log.info("runlab-agent %s node %s boot %s, sampling every %gs, outbox %s", __version__, self.node,
                 self.boot, self.cfg.sampling.interval, self.outbox.path)
        self._main = asyncio.get_running_loop()
        # The delivery thread's Python (encoding, psutil, paho) holds the GIL in bursts; when the timing thread
        # wakes (a probe connected, a child exited) it waits at most this long for it instead of 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL)
        ready = threading.Event()
        thread = threading.Thread(target=self._delivery_main, args=(ready,), name="runlab-delivery", daemon=True)
        self._delivery_thread = thread
        thread.start()
        await asyncio.to_thread(ready.wait)
        self.fleet.start()
        watchdog = asyncio.create_task(self._watchdog_loop())
        self._systemd.ready(f"node {self.node}, outbox {self.outbox.path}")
        try:
            await asyncio.wait([asyncio.ensure_future(self._stop_requested.wait()),
                                asyncio.ensure_future(self._delivery_done.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            t0 = time.monotonic()
            await self.fleet.shutdown()  # a run in progress stops its workloads: failed "agent stopped"
            # The link gets a few seconds to deliver what is in flight and say "offline"; what it
            # has not delivered stays in the outbox for the next start.
            self._link_grace = max(1.0, 5.0 - (time.monotonic() - t0))
            self._in_delivery(self._link_stop.set)
            await asyncio.to_thread(thread.join, self._link_grace + 2.0)
        finally:
            watchdog.cancel()
            if "agent.runtimes.base" in sys.modules:  # a run was interrupted harder than stop(): no leftovers
                sys.modules["agent.runtimes.base"].kill_all_now()
            if not thread.is_alive():
                self.outbox.close()
            log.info("agent stopped")

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 while this event loop turns and the delivery thread lives (else systemd restarts us)."""
        while self._systemd.watchdog_interval:
            thread = self._delivery_thread
            if thread is None or thread.is_alive():
                self._systemd.watchdog()
            await asyncio.sleep(self._systemd.watchdog_interval)

    def stop(self) -> None:
        """SIGTERM/SIGINT (main thread): sampling ends, the fleet stops its run, the link drains and goes."""
        self._systemd.stopping()
        self._stop_requested.set()
        self._in_delivery(self._stopping.set)
