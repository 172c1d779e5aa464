"""The operator's MQTT connection: publish with PUBACK, subscribe into a queue, and a barrier for retained state.

A plain paho client (MQTT v5, clean start, network thread) — the CLI is short-lived and synchronous; every
message received goes into one queue the command reads from its own thread, so Ctrl-C is always handled
in the main thread.
"""

from __future__ import annotations

import queue
import secrets
import ssl
import threading
import time
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.ops.config import OperatorConfig
from runlab import topics
from runlab.config import read_secret


class OpsError(Exception):
    """Something the operator must know about (unreachable broker or store, no data); str(e) is one line."""


class Link:
    """``with Link(cfg) as link:`` — connected on entry (or OpsError naming the URL), disconnected on exit."""

    def __init__(self, cfg: OperatorConfig, timeout: float | None = None) -> None:
        self.cfg = cfg
        self.url = cfg.mqtt.url
        self.timeout = float(timeout if timeout is not None else cfg.mqtt.connect_timeout)
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._acked: set[int] = set()  # SUBACKed message ids (the SUBACK may beat subscribe() returning)
        self._refusals: dict[int, str] = {}  # message id → the broker's reason for a refused publish/subscribe
        self._dropped: str | None = None  # why the broker closed the connection, when we did not ask
        self._closing = False
        self._cond = threading.Condition()
        base = cfg.mqtt.client_id or "runlab-operator"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{base}-{secrets.token_hex(4)}",
                                  protocol=mqtt.MQTTv5)
        host, self._port, tls = cfg.mqtt.endpoint(cfg.source)
        self._host = host
        if cfg.mqtt.username:
            self.client.username_pw_set(cfg.mqtt.username, read_secret(cfg.mqtt.password_file, cfg.mqtt.password,
                                                                       cfg.source, "mqtt.password_file"))
        if tls:
            self.client.tls_set(ca_certs=cfg.mqtt.ca_file, certfile=cfg.mqtt.cert_file, keyfile=cfg.mqtt.key_file,
                                cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        # The CLI is short-lived: a dropped connection is reported, never silently re-made.
        self.client.reconnect_delay_set(3600, 3600)

    # -- callbacks (paho's network thread) ------------------------------------------------------
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if getattr(rc, "is_failure", False):
            self._refused = str(rc)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        with self._cond:
            bad = [c for c in (codes or []) if getattr(c, "is_failure", False)]
            if bad:
                self._refusals[mid] = _reason(bad[0])
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, code: Any, _p: Any) -> None:
        # MQTT 5: a PUBACK with a reason >= 0x80 (0x87 "Not authorized" under the ACL) is a refusal.
        if getattr(code, "is_failure", False):
            with self._cond:
                self._refusals[mid] = _reason(code)
                self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._cond:
            if not self._closing:
                self._dropped = _reason(rc) if getattr(rc, "is_failure", False) else "closed by the broker"
            self._cond.notify_all()

    # -- life -------------------------------------------------------------------------------------
    def __enter__(self) -> Link:
        try:
            self.client.connect(self._host, self._port, keepalive=int(self.cfg.mqtt.keepalive) or 30,
                                clean_start=True)
        except (OSError, ValueError) as e:
            raise OpsError(f"cannot connect to the broker at {self.url}: {getattr(e, 'strerror', None) or e} "
                           f"(is Mosquitto running there? is mqtt.url in {self.cfg.source} right?)") from None
        self.client.loop_start()
        if not self._connected.wait(self.timeout):
            self.close()
            raise OpsError(f"no answer from the broker at {self.url} within {self.timeout:g}s")
        if self._refused:
            self.close()
            raise OpsError(f"the broker at {self.url} refused the connection: {self._refused} "
                           f"(check mqtt.username / mqtt.password_file in {self.cfg.source})")
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- operations -----------------------------------------------------------------------------
    @property
    def user(self) -> str:
        return self.cfg.mqtt.username or "(anonymous)"

    def _refusal_error(self, what: str, topic: str, reason: str) -> OpsError:
        return OpsError(
            f"the broker at {self.url} refused {what} {topic} for user {self.user}: {reason} — the ACL lets only the "
            f"operator login push, cancel and list; set mqtt.username and mqtt.password_file in {self.cfg.source} "
            "to the operator's (runlab-broker-setup prints them)")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1; returns once the broker acknowledged it (OpsError otherwise, a refusal named as one)."""
        if self._dropped:
            raise OpsError(f"the broker at {self.url} closed the connection ({self._dropped})")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as e:
            raise OpsError(f"publishing to {topic} at {self.url} failed: {e}") from None
        with self._cond:
            refusal = self._refusals.pop(info.mid, None)
        if refusal:
            raise self._refusal_error("the publish to", topic, refusal)
        if not info.is_published():
            if self._dropped:
                # MQTT 3.1.1 has no refusal code: Mosquitto 2 drops the connection of a client whose publish
                # its ACL denied, so a dropped connection while waiting is most likely that.
                raise self._refusal_error("the publish to", topic, f"it closed the connection ({self._dropped})")
            raise OpsError(f"the broker at {self.url} did not acknowledge {topic} within {self.timeout:g}s")

    def subscribe(self, *filters: str) -> None:
        """Subscribe (QoS 1) and wait for the SUBACK."""
        for f in filters:
            rc, mid = self.client.subscribe(f, qos=1)
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                raise OpsError(f"subscribing to {f} at {self.url} failed ({mqtt.error_string(rc)})")
            if not self._wait_suback(mid):
                if self._dropped:
                    raise OpsError(f"the broker at {self.url} closed the connection ({self._dropped}) "
                                   f"while subscribing to {f}")
                raise OpsError(f"the broker at {self.url} did not confirm the subscription to {f}")
            with self._cond:
                refusal = self._refusals.pop(mid, None)
            if refusal:
                raise self._refusal_error("the subscription to", f, refusal)

    def _wait_suback(self, mid: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: mid in self._acked or bool(self._dropped), self.timeout) \
                and mid in self._acked

    def barrier(self) -> list[tuple[str, bytes, bool]]:
        """Every message queued before now, including all retained ones of the subscriptions made so far.

        The broker sends a subscription's retained messages before anything published after the
        SUBACK, in order on our one connection: a message we send to ourselves marks their end.
        Messages arriving after the marker stay queued.
        """
        marker = f"{topics.PREFIX}/operator/barrier/{secrets.token_hex(8)}"
        self.subscribe(marker)
        self.publish(marker, b"x")
        seen: list[tuple[str, bytes, bool]] = []
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OpsError(f"the broker at {self.url} did not echo a message on {marker} within "
                               f"{self.timeout:g}s (may user {self.user} read and write runlab/v1/operator/barrier/#? "
                               "see deploy/mosquitto/acl)")
            try:
                item = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if item[0] == marker:
                break
            seen.append(item)
        self.client.unsubscribe(marker)
        return seen

    def drain(self) -> list[tuple[str, bytes, bool]]:
        """Every message queued right now."""
        out: list[tuple[str, bytes, bool]] = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out


def _reason(code: Any) -> str:
    """A paho reason code as "Not authorized (0x87)"."""
    value = getattr(code, "value", None)
    return f"{code} (0x{value:02x})" if isinstance(value, int) else str(code)
