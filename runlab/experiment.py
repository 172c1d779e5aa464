"""The experiment file format (YAML): what to start, under which runtimes, how readiness is judged.

Shared by the agent (which runs experiments) and the operator CLI (which
validates them before pushing): one schema, the same errors. Each runtime's
keys are a tagged struct selected by ``runtime:``; adding a runtime adds its
spec here and its implementation in ``agent/runtimes/<name>.py``.
"""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from runlab.config import ConfigError, Duration, convert, read_yaml, to_builtins
from runlab.topics import NAME_PATTERN

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
# Placeholders the agent fills in for every start.
PLACEHOLDERS = {
    "port": "a free loopback TCP port picked for this start",
    "name": "a unique name for this start (container name, unit name)",
    "run_dir": "a fresh temporary directory for this start",
    "variant": "the variant's name",
    "here": "the directory holding the experiment file (for paths shipped beside it)",
}


class _Variant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="runtime"):
    name: Name
    env: dict[str, str] = {}
    artifact: str | list[str] | None = None  # what "size" measures (several files are summed)
    ready: Ready | None = None  # per-variant readiness, overriding the experiment's
    settle: Duration | None = None


class ProcessVariant(_Variant, tag="process"):
    """A program started directly (a static binary, an interpreter and script…)."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    cwd: str | None = None


class ContainerVariant(_Variant, tag="container"):
    """An OCI container through a CLI engine: docker, podman or nerdctl."""

    image: Annotated[str, msgspec.Meta(min_length=1)]
    engine: Literal["docker", "podman", "nerdctl"] = "podman"
    engine_args: list[str] = []  # global flags before the subcommand (--root, -H, --runtime…)
    run_args: list[str] = []  # extra flags for `run`
    command: list[str] = []  # overrides the image's CMD
    stop_timeout: int = 2  # seconds the engine waits after SIGTERM before SIGKILL


class VmVariant(_Variant, tag="vm"):
    """A VMM command line (qemu, firecracker, cloud-hypervisor): unikernels and microVMs."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    cwd: str | None = None


class WasmVariant(_Variant, tag="wasm"):
    """A WebAssembly runtime CLI (wasmtime, wasmedge, wasmer, or any host program)."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    module: str | None = None  # the .wasm file, for size
    cwd: str | None = None


Variant = ProcessVariant | ContainerVariant | VmVariant | WasmVariant
RUNTIMES = ("process", "container", "vm", "wasm")


class Ready(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How readiness is judged: exactly one of http, tcp, command, log."""

    http: str | None = None  # GET; ready on expect_status (and expect_body, if given)
    tcp: str | None = None  # HOST:PORT accepts a connection
    command: list[str] | None = None  # exits 0
    log: str | None = None  # regex matched by a line of the workload's output
    expect_status: int = 200
    expect_body: str | None = None  # regex the body must match
    timeout: Duration = Duration(60.0)
    interval: Duration = Duration(0.001)  # poll period; detection is 0..interval late, recorded with results
    probe_timeout: Duration = Duration(0.25)  # one attempt's own timeout

    def kind(self) -> str:
        return next(k for k in ("http", "tcp", "command", "log") if getattr(self, k) is not None)


class Load(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Load phase: closed-loop (requests + concurrency) and/or open-loop (rate + duration)."""

    url: str | None = None  # default: ready.http
    requests: int | None = None
    concurrency: int = 10
    rate: float | None = None  # requests/s, latency from the intended send time
    duration: Duration = Duration(10.0)
    timeout: Duration = Duration(5.0)


class Cooldown(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Wait between samples until the hottest sensor is below ``below_c`` (at most ``max_wait``)."""

    below_c: float
    max_wait: Duration = Duration(120.0)


class Experiment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    description: str = ""
    repeat: Annotated[int, msgspec.Meta(ge=1)] = 50  # cold starts per variant (METHODOLOGY: ≥ 30)
    warmup: Annotated[int, msgspec.Meta(ge=0)] = 1  # extra first starts per variant, kept but not in statistics
    order: Literal["interleaved", "random"] = "interleaved"  # A B C A B C…, or shuffled within each round
    cold: Literal["process", "page-cache"] = "process"  # what "cold" means here (page-cache: drop caches, root)
    pause: Duration = Duration(0.0)  # between samples
    cooldown: Cooldown | None = None
    settle: Duration = Duration(2.0)  # after readiness, before the idle footprint is read
    reference: str | None = None  # variant the others are compared against (default: the first)
    phases: list[Literal["cold_start", "footprint", "size", "load"]] = msgspec.field(
        default_factory=lambda: ["cold_start", "footprint", "size", "load"])
    variants: Annotated[list[Variant], msgspec.Meta(min_length=1)]
    ready: Ready
    load: Load | None = None


_FORMATTER = string.Formatter()


def _check_placeholders(value: Any, where: str, source: str) -> None:
    if isinstance(value, str):
        try:
            names = [f for _, f, _, _ in _FORMATTER.parse(value) if f is not None]
        except ValueError as e:
            raise ConfigError(f"{source}: {where}: {e} (write {{{{ and }}}} for literal braces)") from None
        for n in names:
            if n not in PLACEHOLDERS:
                known = ", ".join("{" + k + "}" for k in PLACEHOLDERS)
                raise ConfigError(f"{source}: {where}: unknown placeholder {{{n}}} (known: {known})")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_placeholders(v, f"{where}[{i}]", source)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_placeholders(v, f"{where}.{k}", source)


def _check_ready(r: Ready, where: str, source: str) -> None:
    given = [k for k in ("http", "tcp", "command", "log") if getattr(r, k) is not None]
    if len(given) != 1:
        raise ConfigError(f"{source}: {where}: expected exactly one of http, tcp, command, log "
                          f"(got {', '.join(given) or 'none'})")
    if r.http is not None and not r.http.startswith("http://"):
        raise ConfigError(f"{source}: {where}.http: expected an http:// URL, got {r.http!r}")
    if r.tcp is not None and not re.match(r"^[^:]+:(\d+|\{port\})$", r.tcp):
        raise ConfigError(f"{source}: {where}.tcp: expected HOST:PORT, got {r.tcp!r}")
    for key in ("log", "expect_body"):
        pattern = getattr(r, key)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"{source}: {where}.{key}: invalid regex: {e}") from None


def _friendly_runtime_error(data: Any, source: str) -> None:
    """Name an unknown ``runtime:`` before msgspec's generic tag error does."""
    variants = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(variants, list):
        return
    for i, v in enumerate(variants):
        if isinstance(v, dict):
            rt = v.get("runtime")
            if rt is None:
                raise ConfigError(f"{source}: variants[{i}].runtime: required key is missing "
                                  f"(one of {', '.join(RUNTIMES)})")
            if rt not in RUNTIMES:
                raise ConfigError(f"{source}: variants[{i}].runtime: expected one of {', '.join(RUNTIMES)}, "
                                  f"got {rt!r}")


def parse(data: Any, source: str) -> Experiment:
    """Validate parsed YAML; raise ConfigError naming ``source``, the key path and the expectation."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with name, variants and ready at the top level")
    _friendly_runtime_error(data, source)
    exp = convert(data, Experiment, source)
    names = [v.name for v in exp.variants]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"{source}: variants[{i}].name: {n!r} is used by another variant")
    if exp.reference is not None and exp.reference not in names:
        raise ConfigError(f"{source}: reference: {exp.reference!r} is not a variant (variants: {', '.join(names)})")
    _check_ready(exp.ready, "ready", source)
    for i, v in enumerate(exp.variants):
        if v.ready is not None:
            _check_ready(v.ready, f"variants[{i}].ready", source)
        _check_placeholders(to_builtins(v), f"variants[{i}]", source)
    _check_placeholders(to_builtins(exp.ready), "ready", source)
    if exp.load is not None:
        if exp.load.requests is None and exp.load.rate is None:
            raise ConfigError(f"{source}: load: expected requests (closed loop) and/or rate (open loop)")
        if exp.load.url is None and exp.ready.http is None:
            raise ConfigError(f"{source}: load.url: required when ready is not an http probe")
        if exp.load.concurrency < 1:
            raise ConfigError(f"{source}: load.concurrency: expected at least 1, got {exp.load.concurrency}")
    return exp


def load_file(path: str | Path) -> tuple[Experiment, str]:
    """Read and validate an experiment file; return it with the file's SHA-256."""
    data = read_yaml(path)
    exp = parse(data, str(path))
    return exp, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fill(value: str, values: dict[str, str]) -> str:
    """Replace ``{port}``-style placeholders (already validated) in one string."""
    return value.format_map(values) if "{" in value else value
