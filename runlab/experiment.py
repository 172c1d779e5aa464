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
    "workloads": "the workloads directory (see workloads_dir(): /usr/lib/runlab/workloads when installed, else "
                 "the checkout's build/cache/workloads; agent config experiments.workloads overrides it)",
    "version": "the version being deployed: redeploy.v1 or redeploy.v2 (v1 outside the redeploy phase)",
    "role": "server or client in the interservice phase (server elsewhere)",
    "peer": "HOST:PORT of the server, for the client of the interservice phase (empty elsewhere)",
}
PHASES = ("cold_start", "footprint", "size", "load", "redeploy", "stack", "interservice", "overhead", "benchmark")
Phase = Literal["cold_start", "footprint", "size", "load", "redeploy", "stack", "interservice", "overhead",
                "benchmark"]


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

    def executables(self, here: str | None = None) -> list[str]:
        """Programs this variant execs (for the agent's policy): the command; ``{here}`` filled when given."""
        return _here([self.command[0]], here)

    def images(self, here: str | None = None) -> list[str]:
        """Container images this variant runs (for the agent's policy): none."""
        return []


class ContainerVariant(_Variant, tag="container"):
    """An OCI container through a CLI engine: docker, podman or nerdctl."""

    image: Annotated[str, msgspec.Meta(min_length=1)]
    engine: Literal["docker", "podman", "nerdctl"] = "podman"
    engine_args: list[str] = []  # global flags before the subcommand (--root, -H, --runtime…)
    run_args: list[str] = []  # extra flags for `run`
    command: list[str] = []  # overrides the image's CMD
    stop_timeout: int = 2  # seconds the engine waits after SIGTERM before SIGKILL
    # The OCI runtime (runtime class): "kata" / "io.containerd.kata.v2" for Kata Containers, "runsc" for gVisor…
    # podman takes it as a global --runtime, docker and nerdctl as `run --runtime`.
    oci_runtime: str | None = None

    def executables(self, here: str | None = None) -> list[str]:
        return [self.engine]

    def images(self, here: str | None = None) -> list[str]:
        return [self.image]


class FirecrackerVm(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A Firecracker microVM, configured by a generated ``--config-file`` or through its API socket."""

    kernel: Annotated[str, msgspec.Meta(min_length=1)]  # uncompressed vmlinux
    rootfs: str | None = None  # ext4 image, attached as the root drive
    initrd: str | None = None
    boot_args: str = "console=ttyS0 reboot=k panic=1 pci=off"
    vcpus: Annotated[int, msgspec.Meta(ge=1)] = 1
    memory_mib: Annotated[int, msgspec.Meta(ge=8)] = 128
    tap: str | None = None  # host tap device for eth0 (create it beforehand; the guest has no port forward)
    guest_mac: str = "06:00:ac:10:00:02"
    mode: Literal["config-file", "api"] = "config-file"  # api: PUTs on --api-sock, timed from the spawn
    binary: str = "firecracker"
    extra_args: list[str] = []


class CloudHypervisorVm(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A cloud-hypervisor microVM; the command line is generated from these keys."""

    kernel: Annotated[str, msgspec.Meta(min_length=1)]  # vmlinux (PVH) or a firmware such as hypervisor-fw
    initramfs: str | None = None
    disks: list[str] = []  # image paths, attached in order
    cmdline: str = "console=ttyS0 panic=-1"
    cpus: Annotated[int, msgspec.Meta(ge=1)] = 1
    memory_mib: Annotated[int, msgspec.Meta(ge=8)] = 128
    tap: str | None = None
    guest_mac: str | None = None
    binary: str = "cloud-hypervisor"
    extra_args: list[str] = []


class VmVariant(_Variant, tag="vm"):
    """A VMM: any command line (qemu, …), or a firecracker / cloud_hypervisor preset the agent turns into one."""

    command: list[str] = []  # exactly one of command, firecracker, cloud_hypervisor
    cwd: str | None = None
    firecracker: FirecrackerVm | None = None
    cloud_hypervisor: CloudHypervisorVm | None = None

    def executables(self, here: str | None = None) -> list[str]:
        if self.firecracker is not None:
            return _here([self.firecracker.binary], here)
        if self.cloud_hypervisor is not None:
            return _here([self.cloud_hypervisor.binary], here)
        return _here([self.command[0]] if self.command else [], here)

    def images(self, here: str | None = None) -> list[str]:
        return []


class WasmVariant(_Variant, tag="wasm"):
    """A WebAssembly runtime CLI (wasmtime, wasmedge, wasmer, or any host program)."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    module: str | None = None  # the .wasm file, for size
    cwd: str | None = None

    def executables(self, here: str | None = None) -> list[str]:
        return _here([self.command[0]], here)

    def images(self, here: str | None = None) -> list[str]:
        return []


class SystemdVariant(_Variant, tag="systemd"):
    """The workload as a transient systemd unit (`systemd-run`): "a static binary started by systemd"."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    cwd: str | None = None
    properties: dict[str, str] = {}  # unit properties (-p KEY=VALUE): MemoryMax, CPUQuota, DynamicUser…
    service_type: Literal["exec", "simple", "notify", "forking"] = "exec"
    user: bool = False  # the user's manager (systemd-run --user) instead of the system one
    systemd_run: str = "systemd-run"
    systemctl: str = "systemctl"

    def executables(self, here: str | None = None) -> list[str]:
        return _here([self.systemd_run, self.systemctl, self.command[0]], here)

    def images(self, here: str | None = None) -> list[str]:
        return []


class KubernetesVariant(_Variant, tag="kubernetes"):
    """A manifest applied with kubectl (K3s, kind, any cluster); cold start = apply → first probe success."""

    manifest: Annotated[str, msgspec.Meta(min_length=1)]  # YAML file; {port} {name}… are filled in its text
    kubectl: str = "kubectl"
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    rollout: list[str] = []  # e.g. ["deployment/hello"]: `rollout status` must succeed (a check, never the timer)
    selector: str | None = None  # label selector of the workload's pods, for memory (pod cgroups on this node)
    runtime_class: str | None = None  # sets runtimeClassName in every pod template (e.g. kata)
    delete_timeout: Duration = Duration(60.0)

    def executables(self, here: str | None = None) -> list[str]:
        return _here([self.kubectl], here)

    def images(self, here: str | None = None) -> list[str]:
        """The manifest's images (read when ``here`` makes its path resolvable, or it is absolute)."""
        return manifest_images(_here([self.manifest], here)[0])


class ColdStep(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How a serverless function is made cold before each sample: a command, a wait, or both."""

    command: list[str] = []  # e.g. a scale-to-zero call (faas-cli, kubectl scale, curl on the gateway API)
    until: list[str] = []  # polled until it exits 0 (e.g. "no pod left"), after command
    wait: Duration = Duration(0.0)  # then sleep this long (the platform's idle timeout, when nothing else works)
    timeout: Duration = Duration(300.0)  # for command + until


class ServerlessVariant(_Variant, tag="serverless"):
    """A function behind a gateway URL (OpenFaaS, Knative, Fission): cold and warm invocations."""

    invoke: Annotated[str, msgspec.Meta(min_length=1)]  # the function's http:// URL
    cold: ColdStep
    method: Literal["GET", "POST", "PUT"] = "GET"
    body: str | None = None
    headers: dict[str, str] = {}
    expect_status: int = 200
    deploy: list[str] = []  # run once before the first sample (e.g. faas-cli deploy -f stack.yml)
    cold_header: str | None = None  # regex on "Name: value" header lines: the function says it cold-started
    cold_body: str | None = None  # regex on the body, same meaning
    warm: Annotated[int, msgspec.Meta(ge=0)] = 5  # warm invocations timed after each cold one
    invoke_timeout: Duration = Duration(30.0)
    retry_interval: Duration = Duration(0.01)  # between attempts while the gateway answers errors

    def executables(self, here: str | None = None) -> list[str]:
        return _here([c[0] for c in (self.deploy, self.cold.command, self.cold.until) if c], here)

    def images(self, here: str | None = None) -> list[str]:
        return []


Variant = (ProcessVariant | ContainerVariant | VmVariant | WasmVariant | SystemdVariant | KubernetesVariant
           | ServerlessVariant)
RUNTIMES = ("process", "container", "vm", "wasm", "systemd", "kubernetes", "serverless")


def _here(values: list[str], here: str | None) -> list[str]:
    return [v.replace("{here}", here) for v in values] if here is not None else values


def manifest_images(path: str) -> list[str]:
    """Every ``image:`` in a Kubernetes manifest file (empty when it cannot be read or parsed)."""
    import yaml

    try:
        text = Path(path).read_text()
        for k in PLACEHOLDERS:  # stand-ins, so that a manifest whose {port} sits in a flow mapping parses
            text = text.replace("{" + k + "}", "1" if k == "port" else "x")
        docs = list(yaml.safe_load_all(text))
    except (OSError, yaml.YAMLError):
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str) and v not in found:
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(docs)
    return found


class DnsQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One DNS question over UDP: readiness (``ready.dns``) and DNS load (``load.dns``)."""

    server: str  # HOST:PORT ({port} allowed)
    name: Annotated[str, msgspec.Meta(min_length=1)]
    type: Literal["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT"] = "A"
    expect: str | None = None  # regex on the answer records ("NAME TYPE VALUE" lines)
    rcode: Literal["NOERROR", "NXDOMAIN", "any"] = "NOERROR"


class Ready(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How readiness is judged: exactly one of http, tcp, command, log, dns."""

    http: str | None = None  # GET; ready on expect_status (and expect_body, if given)
    tcp: str | None = None  # HOST:PORT accepts a connection
    command: list[str] | None = None  # exits 0
    log: str | None = None  # regex matched by a line of the workload's output
    dns: DnsQuery | None = None  # a UDP query answered (rcode, and expect if given)
    expect_status: int = 200
    expect_body: str | None = None  # regex the body must match
    timeout: Duration = Duration(60.0)
    interval: Duration = Duration(0.001)  # poll period; detection is 0..interval late, recorded with results
    probe_timeout: Duration = Duration(0.25)  # one attempt's own timeout

    def kind(self) -> str:
        return next(k for k in READY_KINDS if getattr(self, k) is not None)


READY_KINDS = ("http", "tcp", "command", "log", "dns")


class Load(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Load phase: closed-loop (requests + concurrency) and/or open-loop (rate + duration)."""

    url: str | None = None  # default: ready.http
    method: Literal["GET", "POST", "PUT"] = "GET"
    body: str | None = None  # sent with every request (placeholders filled once), with its Content-Length
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # extra request headers, e.g. Content-Type
    dns: DnsQuery | None = None  # DNS mode: this query over UDP instead of HTTP GETs
    requests: int | None = None
    concurrency: int = 10
    rate: float | None = None  # requests/s, latency from the intended send time
    duration: Duration = Duration(10.0)
    timeout: Duration = Duration(5.0)


class Cooldown(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Wait between samples until the hottest sensor is below ``below_c`` (at most ``max_wait``)."""

    below_c: float
    max_wait: Duration = Duration(120.0)


class Redeploy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Redeploy phase: swap v1 → v2 of each variant while a steady client keeps asking (agent/phases/redeploy)."""

    repeat: Annotated[int, msgspec.Meta(ge=1)] = 5  # swaps per variant, each from a fresh v1
    strategy: Literal["stop-start", "start-stop"] = "stop-start"
    v1: str = "v1"  # text filled into {version} for the running version
    v2: str = "v2"  # … and for the new one
    expect_v2: str | None = None  # regex v2's answer body matches (default: the v2 text)
    url: str | None = None  # what the client asks, {port} = the service port (default: ready.http)
    client_interval: Duration = Duration(0.005)  # the steady client sends one request every interval
    request_timeout: Duration = Duration(1.0)
    timeout: Duration = Duration(60.0)  # for v2's first answer
    tail: Duration = Duration(0.2)  # the client keeps asking this long after v2 answered


class StackSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One stack: variants of this experiment started together, or an ``up`` command plus probes."""

    name: Name
    services: list[str] = []  # variant names, all started at once
    up: list[str] | None = None  # e.g. podman-compose -f FILE up -d, kubectl apply -f DIR
    down: list[str] | None = None  # undoes ``up`` after every sample
    probes: dict[str, Ready] = {}  # service name → readiness, for an ``up`` stack


class Stack(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Stack-boot phase: time until every service of a stack answers, per service too (agent/phases/stack)."""

    repeat: Annotated[int, msgspec.Meta(ge=1)] = 5
    stacks: Annotated[list[StackSpec], msgspec.Meta(min_length=1)]
    timeout: Duration = Duration(300.0)


class InterService(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Inter-service phase: TCP ping-pong between two instances of a variant (agent/phases/interservice)."""

    repeat: Annotated[int, msgspec.Meta(ge=1)] = 1  # server + client pairs per variant
    peer_host: str = "127.0.0.1"  # how the client reaches the server ({name} = the server's name)
    results: str = "{run_dir}/rtt.txt"  # the file the client writes, one RTT per line (client's run_dir)
    unit: Literal["ns", "us", "ms"] = "us"  # of the numbers in that file
    timeout: Duration = Duration(120.0)  # for the client to finish


class Platform(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The standing parts of a platform: its daemons, cgroups, units and data directories."""

    processes: list[str] = []  # process names (comm or argv[0] basename): dockerd, containerd, k3s-server
    cgroups: list[str] = []  # cgroup directories, absolute or relative to /sys/fs/cgroup
    units: list[str] = []  # systemd units, read through their cgroup (system.slice/UNIT)
    data_dirs: list[str] = []  # image store, cluster state: their disk usage


class Overhead(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Platform overhead and density phase (agent/phases/overhead)."""

    platforms: dict[str, Platform] = {}  # variant name → the platform it runs on (none: only workloads)
    density: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=lambda: [0, 1, 2, 4])
    window: Duration = Duration(10.0)  # CPU and disk are measured over this window at every level
    settle: Duration | None = None  # after the last start of a level (default: the experiment's settle)


class Benchmark(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Workload benchmark phase: a command against (or inside) each running variant (agent/phases/benchmark)."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]  # placeholders of the running variant
    score: str  # regex whose first group is the score in the command's output
    unit: str = ""
    higher_is_better: bool = True
    repeat: Annotated[int, msgspec.Meta(ge=1)] = 5
    warmup: Annotated[int, msgspec.Meta(ge=0)] = 1
    timeout: Duration = Duration(600.0)


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
    phases: list[Phase] = msgspec.field(default_factory=lambda: ["cold_start", "footprint", "size", "load"])
    variants: Annotated[list[Variant], msgspec.Meta(min_length=1)]
    ready: Ready
    load: Load | None = None
    redeploy: Redeploy | None = None
    stack: Stack | None = None
    interservice: InterService | None = None
    overhead: Overhead | None = None
    benchmark: Benchmark | None = None


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
                raise ConfigError(f"{source}: {where}: unknown placeholder {{{n}}} (known: {known}; "
                                  f"write {{{{ and }}}} for literal braces, as in JSON)")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_placeholders(v, f"{where}[{i}]", source)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_placeholders(v, f"{where}.{k}", source)


def _check_ready(r: Ready, where: str, source: str) -> None:
    given = [k for k in READY_KINDS if getattr(r, k) is not None]
    if len(given) != 1:
        raise ConfigError(f"{source}: {where}: expected exactly one of {', '.join(READY_KINDS)} "
                          f"(got {', '.join(given) or 'none'})")
    if r.dns is not None:
        _check_dns(r.dns, f"{where}.dns", source)
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


def _check_load_request(load: Load, source: str) -> None:
    """What the HTTP load generator sends: a body needs POST or PUT; headers are one-line name: value pairs."""
    if load.dns is not None and (load.method != "GET" or load.body is not None or load.headers):
        raise ConfigError(f"{source}: load: method, body and headers are for HTTP load, not load.dns")
    if load.body is not None and load.method == "GET":
        raise ConfigError(f"{source}: load.body: needs method POST or PUT (got GET)")
    for name, value in load.headers.items():
        if not name or any(c in name for c in ":\r\n \t") or any(c in value for c in "\r\n"):
            raise ConfigError(f"{source}: load.headers: {name!r}: expected a header name without ':' or spaces, "
                              "and a one-line value")
        if name.lower() in ("host", "content-length"):
            raise ConfigError(f"{source}: load.headers: {name}: set by the load generator")


def _check_dns(q: DnsQuery, where: str, source: str) -> None:
    if not re.match(r"^[^:]+:(\d+|\{port\})$", q.server):
        raise ConfigError(f"{source}: {where}.server: expected HOST:PORT, got {q.server!r}")
    _check_regex(q.expect, f"{where}.expect", source)


def _check_regex(pattern: str | None, where: str, source: str) -> None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{source}: {where}: invalid regex: {e}") from None


def _check_variant(v: Variant, where: str, source: str) -> None:
    """Runtime-specific rules msgspec cannot express; fills a serverless variant's default readiness."""
    if isinstance(v, VmVariant):
        given = [k for k in ("command", "firecracker", "cloud_hypervisor") if getattr(v, k)]
        if len(given) != 1:
            raise ConfigError(f"{source}: {where}: expected exactly one of command, firecracker, cloud_hypervisor "
                              f"(got {', '.join(given) or 'none'})")
    elif isinstance(v, ServerlessVariant):
        if not v.invoke.startswith("http://"):
            raise ConfigError(f"{source}: {where}.invoke: expected an http:// URL, got {v.invoke!r}")
        if not v.cold.command and not v.cold.wait:
            raise ConfigError(f"{source}: {where}.cold: expected command (scale to zero) and/or wait "
                              f"(the platform's idle timeout)")
        _check_regex(v.cold_header, f"{where}.cold_header", source)
        _check_regex(v.cold_body, f"{where}.cold_body", source)
        if v.ready is None:  # the runtime logs each invocation as it completes: the first success is "ready"
            v.ready = Ready(log=SERVERLESS_READY_LOG, timeout=v.invoke_timeout)


SERVERLESS_READY_LOG = r"^invocation 1 ok\b"


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
        _check_variant(v, f"variants[{i}]", source)
        _check_placeholders(to_builtins(v), f"variants[{i}]", source)
    _check_placeholders(to_builtins(exp.ready), "ready", source)
    if exp.load is not None:
        if exp.load.requests is None and exp.load.rate is None:
            raise ConfigError(f"{source}: load: expected requests (closed loop) and/or rate (open loop)")
        if exp.load.dns is not None:
            _check_dns(exp.load.dns, "load.dns", source)
        elif exp.load.url is None and exp.ready.http is None:
            raise ConfigError(f"{source}: load.url: required when ready is not an http probe")
        if exp.load.concurrency < 1:
            raise ConfigError(f"{source}: load.concurrency: expected at least 1, got {exp.load.concurrency}")
        _check_load_request(exp.load, source)
        for key in ("url", "body"):  # filled per start, like ready's
            _check_placeholders(getattr(exp.load, key), f"load.{key}", source)
    _check_phases(exp, names, source)
    return exp


def _regex(pattern: str, where: str, source: str, groups: int = 0) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{source}: {where}: invalid regex: {e}") from None
    if compiled.groups < groups:
        raise ConfigError(f"{source}: {where}: expected a regex with a (group) capturing the value, got {pattern!r}")


def _check_phases(exp: Experiment, names: list[str], source: str) -> None:
    """Every phase listed has its section and every section its phase; names and regexes are valid."""
    for phase in ("redeploy", "stack", "interservice", "overhead", "benchmark"):
        listed, given = phase in exp.phases, getattr(exp, phase) is not None
        if listed and not given:
            raise ConfigError(f"{source}: {phase}: required when phases lists {phase!r}")
        if given and not listed:
            raise ConfigError(f"{source}: phases: expected {phase!r} in the list since a {phase}: section is given")
    if len(set(exp.phases)) != len(exp.phases):
        raise ConfigError(f"{source}: phases: each phase once, got {', '.join(exp.phases)}")
    if exp.redeploy is not None:
        rd = exp.redeploy
        if rd.v1 == rd.v2:
            raise ConfigError(f"{source}: redeploy.v2: expected a text different from v1 ({rd.v1!r})")
        _regex(rd.expect_v2 or re.escape(rd.v2), "redeploy.expect_v2", source)
        url = rd.url or exp.ready.http
        if url is None or not url.startswith("http://") or "{port}" not in url:
            raise ConfigError(f"{source}: redeploy.url: expected an http:// URL with {{port}} (the service port), "
                              f"got {url!r} (default: ready.http)")
        _check_placeholders(url, "redeploy.url", source)
        for i, v in enumerate(exp.variants):
            if "{version}" not in msgspec.json.encode(to_builtins(v)).decode():
                raise ConfigError(f"{source}: variants[{i}]: the redeploy phase needs {{version}} somewhere in "
                                  f"the variant (e.g. --body {{version}} or an image tag) so v1 and v2 differ")
    if exp.stack is not None:
        for i, st in enumerate(exp.stack.stacks):
            where = f"stack.stacks[{i}]"
            if bool(st.services) == (st.up is not None):
                raise ConfigError(f"{source}: {where}: expected either services (variant names) or up (a command)")
            for j, svc in enumerate(st.services):
                if svc not in names:
                    raise ConfigError(f"{source}: {where}.services[{j}]: {svc!r} is not a variant "
                                      f"(variants: {', '.join(names)})")
            if st.up is not None and not st.probes:
                raise ConfigError(f"{source}: {where}.probes: expected service name → ready probe for an up stack")
            for svc, r in st.probes.items():
                _check_ready(r, f"{where}.probes.{svc}", source)
            _check_placeholders([*(st.up or []), *(st.down or [])], f"{where}.up/down", source)
        stack_names = [st.name for st in exp.stack.stacks]
        if len(set(stack_names)) != len(stack_names):
            raise ConfigError(f"{source}: stack.stacks: names must differ, got {', '.join(stack_names)}")
    if exp.interservice is not None:
        if not any("{peer}" in msgspec.json.encode(to_builtins(v)).decode() for v in exp.variants):
            raise ConfigError(f"{source}: interservice: expected {{peer}} (and {{role}}) in the variants' "
                              f"command so the client instance knows its server")
        _check_placeholders(exp.interservice.results, "interservice.results", source)
    if exp.overhead is not None:
        for key in exp.overhead.platforms:
            if key not in names:
                raise ConfigError(f"{source}: overhead.platforms.{key}: not a variant (variants: {', '.join(names)})")
        d = exp.overhead.density
        if not d or d != sorted(set(d)):
            raise ConfigError(f"{source}: overhead.density: expected increasing workload counts like [0, 1, 2, 4], "
                              f"got {d}")
    if exp.benchmark is not None:
        _regex(exp.benchmark.score, "benchmark.score", source, groups=1)
        _check_placeholders(exp.benchmark.command, "benchmark.command", source)


INSTALLED_WORKLOADS = "/usr/lib/runlab/workloads"


def workloads_dir(configured: str | None = None) -> str:
    """Where ``{workloads}`` points: the one rule, documented in docs/runtimes.md.

    1. ``configured`` (the agent config's ``experiments.workloads``) when given;
    2. else ``/usr/lib/runlab/workloads`` when that directory exists (the packages install the hello
       workloads there);
    3. else the checkout's ``build/cache/workloads`` (what ``make workloads`` builds), with symlinks resolved.
    """
    if configured:
        return configured
    if Path(INSTALLED_WORKLOADS).is_dir():
        return INSTALLED_WORKLOADS
    return str((Path(__file__).resolve().parent.parent / "build" / "cache" / "workloads").resolve())


def with_workloads(exp: Experiment, directory: str) -> Experiment:
    """``exp`` with every ``{workloads}`` replaced by ``directory`` (done once, before policy checks and runs)."""
    data = to_builtins(exp)
    if "{workloads}" not in repr(data):
        return exp

    def sub(node: Any) -> Any:
        if isinstance(node, str):
            return node.replace("{workloads}", directory)
        if isinstance(node, list):
            return [sub(x) for x in node]
        if isinstance(node, dict):
            return {k: sub(v) for k, v in node.items()}
        return node

    return convert(sub(data), Experiment, "experiment")


REPEATING = ("benchmark", "stack", "interservice", "redeploy")  # phases with a repeat of their own


def with_repeat(exp: Experiment, n: int) -> Experiment:
    """``exp`` with ``n`` as the cold starts per variant and as the repeat of every phase that repeats (benchmark
    runs, stack boots, inter-service pairs, redeploy swaps). The overhead phase measures density levels once
    each and has no repeat; load runs once per variant."""
    changes: dict[str, Any] = {"repeat": n}
    for p in REPEATING:
        section = getattr(exp, p)
        if section is not None:
            changes[p] = msgspec.structs.replace(section, repeat=n)
    return msgspec.structs.replace(exp, **changes)


def not_an_experiment(data: Any) -> str | None:
    """What ``data`` looks like when it is plainly not an experiment file (a Kubernetes manifest, a compose
    file), or None."""
    if isinstance(data, dict) and "variants" not in data:
        if "apiVersion" in data or "kind" in data:
            return f"a Kubernetes manifest (kind {data.get('kind', '?')})"
        if "services" in data:
            return "a compose file"
    return None


def load_file(path: str | Path) -> tuple[Experiment, str]:
    """Read and validate an experiment file; return it with the file's SHA-256."""
    data = read_yaml(path)
    what = not_an_experiment(data)
    if what is not None:
        raise ConfigError(f"{path}: this is not an experiment file (it looks like {what}; an experiment has "
                          f"name, variants and ready at the top level)")
    exp = parse(data, str(path))
    return exp, hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Keep(dict[str, str]):
    """Placeholders without a value stay as written (``{workloads}`` before it is resolved), never a KeyError."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(value: str, values: dict[str, str]) -> str:
    """Replace ``{port}``-style placeholders (already validated) in one string."""
    return value.format_map(_Keep(values)) if "{" in value else value
