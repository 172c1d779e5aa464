"""Config loading shared by every runlab program: YAML → typed structs, one-line errors.

Errors a user can cause name the file, the key path and what was expected, e.g.
``agent.yaml: mqtt.url: expected str, got int``; never a traceback.
"""

from __future__ import annotations

import math
import os
import re
import socket
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

T = TypeVar("T")


class ConfigError(Exception):
    """A config the user must fix; str(e) is the whole one-line message."""

    def __init__(self, message: str) -> None:
        # One line even when a key, a value or a path holds a line break.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class Duration(float):
    """Seconds, written in YAML as ``250ms``, ``1s``, ``5m``, ``2h`` or a plain number of seconds."""


class ByteSize(int):
    """Bytes, written in YAML as ``256MB``, ``64KiB``, ``1GB`` or a plain number."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_duration(value: object) -> Duration:
    """``"250ms"`` → 0.25; raise ValueError with what was expected."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and math.isfinite(value):
        return Duration(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return Duration(float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f"expected a duration such as 250ms, 1s, 5m (got {value!r})")


def parse_size(value: object) -> ByteSize:
    """``"256MB"`` → 256000000; raise ValueError with what was expected."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return ByteSize(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return ByteSize(int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]))
    raise ValueError(f"expected a size such as 256MB, 64KiB or a number of bytes (got {value!r})")


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Duration:
        return parse_duration(obj)
    if typ is ByteSize:
        return parse_size(obj)
    raise NotImplementedError(typ)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, (Duration, ByteSize)):
        return float(obj) if isinstance(obj, Duration) else int(obj)
    raise NotImplementedError(type(obj))


def to_builtins(obj: Any) -> Any:
    """A config struct as plain dicts/lists (durations as seconds), e.g. for JSON output."""
    return msgspec.to_builtins(obj, enc_hook=_enc_hook)


def _friendly(err: msgspec.ValidationError) -> str:
    """msgspec's ``Expected `str`, got `int` - at `$.mqtt.url``` → ``mqtt.url: expected str, got int``."""
    text = str(err)
    msg, sep, where = text.rpartition(" - at `")
    if not sep:  # a problem at the top level comes without a location
        msg, where = text, "$`"
    bad_key = where.startswith("key` in `")  # "Expected `str` - at `key` in `$.mqtt`": a non-text key
    path = where.removeprefix("key` in `").rstrip("`").removeprefix("$").removeprefix(".") or "(top level)"
    prefix = path + "." if path != "(top level)" else ""
    m = re.fullmatch(r"Object contains unknown field `(.+)`", msg, re.DOTALL)
    if m:
        return f"{prefix}{m.group(1)}: unknown key"
    m = re.fullmatch(r"Object missing required field `(.+)`", msg, re.DOTALL)
    if m:
        return f"{prefix}{m.group(1)}: required key is missing"
    if bad_key:
        return f"{path}: every key must be text ({msg[0].lower()}{msg[1:]})".replace("`", "")
    m = re.fullmatch(r"([a-z_]+): (.+)", msg, re.DOTALL)  # a struct's own check (__post_init__) names its key
    if m:
        return f"{prefix}{m.group(1)}: {m.group(2)}"
    return f"{path}: {msg[0].lower()}{msg[1:]}".replace("`", "")


def convert(data: Any, cls: type[T], source: str) -> T:
    """Turn parsed YAML into ``cls``; raise ConfigError naming ``source`` and the key."""
    if data is None:
        data = {}
    try:
        return msgspec.convert(data, cls, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_friendly(e)}") from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; raise ConfigError with the file and line on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    return parse_yaml_text(text, str(p))


def parse_yaml_text(text: str, p: str) -> Any:
    """Parse YAML text (e.g. a pushed experiment file) named ``p`` in errors; ConfigError with the line."""
    import yaml  # here: the idle agent reads its config in a child (read_yaml_in_child) and never loads it

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark, ctx = e.problem_mark, e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        # e.g. an unclosed quote is found at the end of the file: also say where it was opened.
        context = (f" ({e.context} at line {ctx.line + 1}, column {ctx.column + 1})"
                   if e.context and ctx and (mark is None or ctx.line != mark.line) else "")
        raise ConfigError(f"{p}: {where}invalid YAML: {e.problem or e.context}{context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None


def read_yaml_in_child(path: str | Path) -> Any:
    """``read_yaml`` in a forked child, handing the data back as MessagePack: PyYAML (~1 MB of objects)
    never loads into this process. For the agent, whose idle footprint is a goal (docs/packaging.md). Call it
    before any thread starts (a fork copies only the calling thread)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: parse, send, and leave without running anything of the parent's (atexit, buffers)
        code = 0
        try:
            os.close(r)
            try:
                out = msgspec.msgpack.encode([True, read_yaml(path)])
            except ConfigError as e:
                out = msgspec.msgpack.encode([False, str(e)])
            except (TypeError, ValueError) as e:  # a value msgspec cannot encode as MessagePack
                out = msgspec.msgpack.encode([False, f"{path}: unsupported YAML value: {e}"])
            with os.fdopen(w, "wb") as f:
                f.write(out)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not raw:
        raise ConfigError(f"{path}: cannot read: the YAML reader process failed (wait status {status})")
    ok, data = msgspec.msgpack.decode(raw)
    if not ok:
        raise ConfigError(str(data))
    return data


def load(path: str | Path, cls: type[T], *, in_child: bool = False) -> T:
    """Read and validate a YAML config file into ``cls`` (``in_child``: parsed by ``read_yaml_in_child``)."""
    data = read_yaml_in_child(path) if in_child else read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return convert(data, cls, str(path))


def read_secret(path: str | None, inline: str | None, source: str, key: str) -> str | None:
    """A secret given inline or as ``*_file`` (first line, stripped)."""
    if inline:
        return inline
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{source}: {key}: cannot read {path}: {e.strerror}") from None


class MqttSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``mqtt:`` section every runlab program shares."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: Duration = Duration(30.0)
    connect_timeout: Duration = Duration(10.0)

    def __post_init__(self) -> None:
        # MQTT carries the keepalive as 16-bit seconds; paho fails deep inside its network thread beyond that.
        seconds = float(self.keepalive)
        if not (seconds == 0 or 1 <= seconds <= 65535):
            raise ValueError(f"keepalive: expected 1s to 65535s, or 0 for none (got {seconds:g}s)")

    def endpoint(self, source: str) -> tuple[str, int, bool]:
        """(host, port, tls) from ``url``; ConfigError when it is not mqtt:// or mqtts://."""
        try:
            u = urlsplit(self.url)
        except ValueError as e:  # e.g. "Invalid IPv6 URL"
            raise ConfigError(f"{source}: mqtt.url: {e} in {self.url!r}") from None
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ConfigError(f"{source}: mqtt.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], "
                              f"got {self.url!r}")
        tls = u.scheme == "mqtts"
        try:
            port = u.port
        except ValueError:
            port = 0
        if port == 0:  # out of range, not a number, or 0 (which urlsplit reports and `or` would hide)
            raise ConfigError(f"{source}: mqtt.url: invalid port in {self.url!r}")
        if port is None:
            port = 8883 if tls else 1883
        return u.hostname, port, tls


def default_node_name() -> str:
    """The short hostname, made topic-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]) or "node"
