"""The collector's config file (``collector.yaml``)."""

from __future__ import annotations

import base64
from typing import Literal

import msgspec

from runlab.config import ByteSize, ConfigError, Duration, MqttSettings, load, read_secret


class CollectorMqtt(MqttSettings, kw_only=True, forbid_unknown_fields=True):
    client_id: str = "runlab-collector"  # persistent session: the broker keeps what we have not acked
    # "" (default): a plain persistent subscription, lossless across broker restarts (measured).
    # A name: $share/<name>/... so several collectors split the load; on Mosquitto 2.0 a broker
    # restart then loses the messages in flight to the collectors (~1 s of samples, measured).
    share_group: str = ""
    # How long the broker keeps our session (and queues for it) after we disconnect. Unset: for ever with a
    # plain subscription; 2 minutes as a member of a share group, so that the broker stops routing a share to
    # a member that died for good (Mosquitto keeps routing to an offline member's session). What an expired
    # session held is not lost: agents keep every batch until a receipt names it, and send it again.
    session_expiry: Duration | None = None

    def session_expiry_seconds(self) -> int:
        if self.session_expiry is not None:
            return min(0xFFFFFFFE, int(self.session_expiry))
        return 120 if self.share_group else 0xFFFFFFFF


class InfluxSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2"] = "v2"
    # v2 (InfluxDB 2.x, 3.x, 1.8+ and compatible servers), through influxdb-client
    org: str = ""
    bucket: str = "runlab"
    token: str | None = None
    token_file: str | None = None
    # v1 (plain /write of InfluxDB 1.x)
    database: str = "runlab"
    retention_policy: str = ""
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    timeout: Duration = Duration(10.0)

    def auth_headers(self, source: str) -> dict[str, str]:
        """The Authorization header for plain HTTP requests (v1 /write, /query): Basic for a v1 user,
        ``Token`` for a v2 token; none when the server needs no credentials."""
        if self.api == "v2":
            token = read_secret(self.token_file, self.token, source, "influx.token_file")
            return {"Authorization": f"Token {token}"} if token else {}
        password = read_secret(self.password_file, self.password, source, "influx.password_file")
        if not self.username:
            return {}
        cred = base64.b64encode(f"{self.username}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {cred}"}


class BatchSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_points: int = 5000
    # Upper bound on how long a point waits while a batch fills under load; an idle
    # collector writes as soon as its inbound queue is empty.
    max_delay: Duration = Duration(0.25)


class QuarantineSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str = "/var/lib/runlab/quarantine.jsonl"
    # The quarantine's own budget: the file never grows past it; further refusals are counted, not kept.
    max_bytes: ByteSize = ByteSize(64 * 1024 * 1024)


class InboxSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Messages read from the broker and not yet decoded, at most (payload bytes + ~600 each). Past it the
    # collector stops reading and the broker keeps the backlog: the collector's memory stays flat.
    max_bytes: ByteSize = ByteSize(32 * 1000 * 1000)


class ReceiptSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # After the store took a batch, tell its agent (runlab/v1/nodes/<node>/receipts) so it may forget it;
    # agents resend what has no receipt. Off only to measure what receipts cost (bench/).
    enabled: bool = True
    # At most one receipt per node and boot this often, covering every batch stored meanwhile.
    interval: Duration = Duration(0.25)


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mqtt: CollectorMqtt = msgspec.field(default_factory=CollectorMqtt)
    influx: InfluxSettings = msgspec.field(default_factory=InfluxSettings)
    batch: BatchSettings = msgspec.field(default_factory=BatchSettings)
    quarantine: QuarantineSettings = msgspec.field(default_factory=QuarantineSettings)
    receipts: ReceiptSettings = msgspec.field(default_factory=ReceiptSettings)
    inbox: InboxSettings = msgspec.field(default_factory=InboxSettings)
    metrics_interval: Duration = Duration(10.0)  # how often the collector writes its own `collector` point
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    source: str = ""  # the file this came from (set by load_config)


def load_config(path: str) -> CollectorConfig:
    """Load and cross-check ``collector.yaml``; ConfigError names file and key."""
    cfg = load(path, CollectorConfig)
    cfg.source = str(path)
    cfg.mqtt.endpoint(cfg.source)
    if cfg.batch.max_points < 1:
        raise ConfigError(f"{path}: batch.max_points: expected a positive number, got {cfg.batch.max_points}")
    if cfg.inbox.max_bytes < 1_000_000:
        raise ConfigError(f"{path}: inbox.max_bytes: expected at least 1MB, got {int(cfg.inbox.max_bytes)} bytes")
    if not 0.01 <= float(cfg.receipts.interval) <= 60:
        raise ConfigError(f"{path}: receipts.interval: expected a duration from 10ms to 60s, "
                          f"got {float(cfg.receipts.interval)}s")
    if not cfg.influx.url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: influx.url: expected http://HOST:PORT or https://…, got {cfg.influx.url!r}")
    read_secret(cfg.influx.token_file, cfg.influx.token, path, "influx.token_file")
    read_secret(cfg.influx.password_file, cfg.influx.password, path, "influx.password_file")
    read_secret(cfg.mqtt.password_file, cfg.mqtt.password, path, "mqtt.password_file")
    return cfg
