"""The agent's config file (``agent.yaml``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from runlab import topics
from runlab.config import ByteSize, ConfigError, Duration, MqttSettings, default_node_name, load, read_secret


class SpoolSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str = "/var/lib/runlab/spool"
    max_bytes: ByteSize = ByteSize(256 * 10**6)  # beyond it the oldest samples are dropped and counted


class SamplingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: Duration = Duration(1.0)
    per_cpu: bool = True  # cpuN_percent fields for every core


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    node: str = ""  # default: the short hostname
    groups: list[str] = []
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    spool: SpoolSettings = msgspec.field(default_factory=SpoolSettings)
    sampling: SamplingSettings = msgspec.field(default_factory=SamplingSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    source: str = ""


def load_config(path: str) -> AgentConfig:
    """Load and cross-check ``agent.yaml``; ConfigError names file and key."""
    cfg = load(path, AgentConfig)
    cfg.source = str(path)
    cfg.node = cfg.node or default_node_name()
    if not topics.valid_name(cfg.node):
        raise ConfigError(f"{path}: node: expected letters, digits, '.', '_' or '-' (max 64), got {cfg.node!r}")
    for i, g in enumerate(cfg.groups):
        if not topics.valid_name(g):
            raise ConfigError(f"{path}: groups[{i}]: expected letters, digits, '.', '_' or '-', got {g!r}")
    if cfg.sampling.interval < 0.05:
        raise ConfigError(f"{path}: sampling.interval: expected at least 50ms, got {cfg.sampling.interval}s")
    if cfg.spool.max_bytes < 64 * 1024:
        raise ConfigError(f"{path}: spool.max_bytes: expected at least 64KiB, got {int(cfg.spool.max_bytes)}")
    cfg.mqtt.endpoint(cfg.source)
    read_secret(cfg.mqtt.password_file, cfg.mqtt.password, cfg.source, "mqtt.password_file")
    return cfg
