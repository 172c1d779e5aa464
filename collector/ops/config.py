"""The operator's config file (``runlab.yaml``): ``mqtt:`` and ``influx:`` shaped as the collector's, plus ``signing:``.

Found as ``--config FILE``, else ``$RUNLAB_CONFIG``, else ``~/.config/runlab/runlab.yaml``. The logins are
the operator's own (broker user ``operator``, a read-only InfluxDB user): the shipped ACL refuses the
collector's login every publish the CLI makes.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from collector.config import CollectorMqtt, InfluxSettings
from runlab.config import ConfigError, load, read_secret

ENV = "RUNLAB_CONFIG"
DEFAULT_PATH = Path("~/.config/runlab/runlab.yaml")


class SigningSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    key: str = ""  # Ed25519 private key (PEM) from `runlab keys generate`


class OperatorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # client_id: a unique suffix is always added, so a section copied from collector.yaml never
    # takes over the collector's own session.
    mqtt: CollectorMqtt = msgspec.field(default_factory=lambda: CollectorMqtt(client_id="runlab-operator"))
    influx: InfluxSettings = msgspec.field(default_factory=InfluxSettings)
    signing: SigningSettings = msgspec.field(default_factory=SigningSettings)
    source: str = ""


def resolve_path(given: str | None, env: dict[str, str] | None = None, home: Path | None = None) -> tuple[Path, str]:
    """(path, how it was chosen) by the order --config, $RUNLAB_CONFIG, ~/.config/runlab/runlab.yaml."""
    found = (os.environ if env is None else env).get(ENV)
    if given:
        return Path(given), "--config"
    if found:
        return Path(found), f"${ENV}"
    base = home if home is not None else Path.home()
    return base / ".config" / "runlab" / "runlab.yaml", "default"


def load_config(given: str | None, env: dict[str, str] | None = None, home: Path | None = None) -> OperatorConfig:
    """Find, load and cross-check the operator config; ConfigError names the file and the key."""
    path, how = resolve_path(given, env, home)
    if not path.exists():
        hint = {"--config": "", f"${ENV}": f" (from ${ENV})",
                "default": f" (no --config and no ${ENV}; copy configs/runlab.yaml there or pass --config FILE)"}
        raise ConfigError(f"{path}: file not found{hint[how]}")
    cfg = load(path, OperatorConfig)
    cfg.source = str(path)
    cfg.mqtt.endpoint(cfg.source)
    if not cfg.influx.url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: influx.url: expected http://HOST:PORT or https://…, got {cfg.influx.url!r}")
    # Every file the config names: "~" expanded, a relative path taken from the config's directory (the
    # operator's config lives in a home directory; runlab-broker-setup prints ~/.config/runlab/mqtt.password).
    for section, key in (("mqtt", "password_file"), ("mqtt", "ca_file"), ("mqtt", "cert_file"), ("mqtt", "key_file"),
                         ("influx", "password_file"), ("influx", "token_file")):
        obj = getattr(cfg, section)
        if getattr(obj, key):
            setattr(obj, key, str(resolve_relative(path, getattr(obj, key))))
    read_secret(cfg.influx.token_file, cfg.influx.token, cfg.source, "influx.token_file")
    read_secret(cfg.influx.password_file, cfg.influx.password, cfg.source, "influx.password_file")
    read_secret(cfg.mqtt.password_file, cfg.mqtt.password, cfg.source, "mqtt.password_file")
    if cfg.signing.key:
        cfg.signing.key = str(resolve_relative(path, cfg.signing.key))
    return cfg


def resolve_relative(config_path: Path, value: str) -> Path:
    """A path from the config: ``~`` expanded, relative ones taken from the config file's directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else config_path.parent / p


def signing_key_path(cfg: OperatorConfig) -> str:
    """The private key file; ConfigError when the config names none."""
    if not cfg.signing.key:
        raise ConfigError(f"{cfg.source}: signing.key: required to sign orders (a key from "
                          "`runlab keys generate --dir DIR`: DIR/signing.key)")
    return cfg.signing.key
