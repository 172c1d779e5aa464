"""The agent's config file (``agent.yaml``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

from runlab import topics
from runlab.config import ByteSize, ConfigError, Duration, MqttSettings, default_node_name, load, read_secret


class SpoolSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str = "/var/lib/runlab/spool"
    max_bytes: ByteSize = ByteSize(256 * 10**6)  # beyond it the oldest samples are dropped and counted
    flush_after: Duration = Duration(2.0)  # batches not receipted this long go to disk (power-cut window)


class DeliverySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """End-to-end delivery: a batch is kept until the collector's receipt says the store has it."""

    receipt_timeout: Duration = Duration(60.0)  # no receipt this long after the PUBACK: resent (doubling, ≤ 64×)
    window: int = 1000  # batches awaiting a receipt at once; beyond it the rest waits on disk


class SamplingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: Duration = Duration(1.0)
    per_cpu: bool = True  # cpuN_percent fields for every core


class TrustSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Ed25519 public keys (PEM files) whose signed orders this agent acts on; none: it acts on nothing."""

    keys: list[str] = []


class PolicySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What this machine may be asked to run (agent/policy.py); every list empty by default: nothing."""

    runtimes: list[str] = []  # variant runtimes allowed (process, container, vm, wasm, and later ones)
    commands: list[str] = []  # globs for every program a pushed file would execute (after {here} etc.)
    images: list[str] = []  # globs for container images


class ExperimentsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Pushed experiment files: where ``{here}`` points and how many runs may wait."""

    here: str | None = None  # default: a per-run directory under spool.path holding the pushed file
    queue_max: int = 16


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    node: str = ""  # default: the short hostname
    groups: list[str] = []
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    spool: SpoolSettings = msgspec.field(default_factory=SpoolSettings)
    sampling: SamplingSettings = msgspec.field(default_factory=SamplingSettings)
    delivery: DeliverySettings = msgspec.field(default_factory=DeliverySettings)
    trust: TrustSettings = msgspec.field(default_factory=TrustSettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    experiments: ExperimentsSettings = msgspec.field(default_factory=ExperimentsSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    source: str = ""


def load_config(path: str) -> AgentConfig:
    """Load and cross-check ``agent.yaml``; ConfigError names file and key."""
    cfg = load(path, AgentConfig, in_child=True)  # PyYAML stays out of the agent (idle PSS)
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
    if not 0 <= cfg.spool.flush_after <= 60:
        raise ConfigError(f"{path}: spool.flush_after: expected 0s to 60s, got {cfg.spool.flush_after}s")
    if cfg.delivery.receipt_timeout < 1:
        raise ConfigError(f"{path}: delivery.receipt_timeout: expected at least 1s, got "
                          f"{cfg.delivery.receipt_timeout}s")
    if cfg.delivery.window < 1:
        raise ConfigError(f"{path}: delivery.window: expected at least 1, got {cfg.delivery.window}")
    cfg.mqtt.endpoint(cfg.source)
    read_secret(cfg.mqtt.password_file, cfg.mqtt.password, cfg.source, "mqtt.password_file")
    _check_fleet(cfg, path)
    return cfg


def _check_fleet(cfg: AgentConfig, path: str) -> None:
    """trust/policy/experiments: key files must be Ed25519 PEM (parsed without loading PyNaCl), globs absolute."""
    from runlab.control import _SPKI_PREFIX, ControlError, _unpem

    for i, k in enumerate(cfg.trust.keys):
        try:
            _unpem(Path(k), "PUBLIC KEY", _SPKI_PREFIX)
        except ControlError as e:
            raise ConfigError(f"{path}: trust.keys[{i}]: {e}") from None
    for i, rt in enumerate(cfg.policy.runtimes):
        if not topics.valid_name(rt):
            raise ConfigError(f"{path}: policy.runtimes[{i}]: expected a runtime name such as process, "
                              f"container, vm, wasm, got {rt!r}")
    for i, g in enumerate(cfg.policy.commands):
        if not g.startswith("/"):
            raise ConfigError(f"{path}: policy.commands[{i}]: expected an absolute path glob such as "
                              f"/opt/runlab/workloads/*, got {g!r}")
    for i, g in enumerate(cfg.policy.images):
        if not g:
            raise ConfigError(f"{path}: policy.images[{i}]: expected an image glob such as localhost/*, got ''")
    here = cfg.experiments.here
    if here is not None and not os.path.isdir(here):
        raise ConfigError(f"{path}: experiments.here: expected an existing directory, got {here!r}")
    if cfg.experiments.queue_max < 1:
        raise ConfigError(f"{path}: experiments.queue_max: expected at least 1, got {cfg.experiments.queue_max}")
