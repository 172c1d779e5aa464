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


# Defaults of the policy's allow-lists (agent/policy.py); a key set in agent.yaml replaces its default.
DEFAULT_ENV = ["PORT", "LANG", "LANGUAGE", "LC_*", "TZ", "RUST_LOG", "RUST_BACKTRACE", "GOMAXPROCS", "GOGC",
               "GOMEMLIMIT", "NO_COLOR", "TERM"]
DEFAULT_SYSTEMD_PROPERTIES = [
    "MemoryAccounting", "MemoryMax", "MemoryHigh", "MemoryLow", "MemoryMin", "MemorySwapMax", "CPUAccounting",
    "CPUQuota", "CPUQuotaPeriodSec", "CPUWeight", "StartupCPUWeight", "AllowedCPUs", "AllowedMemoryNodes",
    "TasksAccounting", "TasksMax", "IOAccounting", "IOWeight", "StartupIOWeight", "DynamicUser", "Protect*",
    "PrivateTmp", "PrivateDevices", "PrivateNetwork", "PrivateUsers", "PrivateIPC", "PrivateMounts",
    "NoNewPrivileges", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "RestrictAddressFamilies",
    "LockPersonality", "MemoryDenyWriteExecute", "SystemCallFilter", "SystemCallArchitectures",
    "SystemCallErrorNumber", "CapabilityBoundingSet", "UMask", "LimitNOFILE", "LimitNPROC", "LimitCORE",
    "TimeoutStartSec", "TimeoutStopSec", "RuntimeMaxSec", "KillSignal", "OOMPolicy", "IPAccounting",
    "IPAddressAllow", "IPAddressDeny"]
DEFAULT_CONTAINER_FLAGS = [
    # global engine flags: a private image store, the OCI runtime (a path must be in policy.commands)
    "--root", "--runroot", "--tmpdir", "--storage-driver", "--cgroup-manager", "--events-backend", "--log-level",
    "--namespace", "--runtime", "--debug",
    # run flags: network on the host's or the container's own stack, ports on loopback, limits, read-only
    # (slirp4netns:/pasta: options are refused: pasta's are its command line, --pcap FILE writes a host file)
    "--network=host", "--network=none", "--network=private", "--network=bridge", "--network=slirp4netns",
    "--network=pasta", "--publish=127.0.0.1:*", "--expose", "--no-hosts", "--dns", "--dns-search",
    "--dns-option", "--add-host", "--hostname", "--ulimit", "--cpus", "--cpu-shares", "--cpuset-cpus",
    "--cpu-period", "--cpu-quota", "--memory", "--memory-swap", "--memory-reservation", "--pids-limit",
    "--shm-size", "--read-only", "--read-only-tmpfs", "--tmpfs", "--env", "--log-driver=none",
    "--log-driver=k8s-file", "--log-driver=json-file", "--log-driver=journald", "--log-driver=passthrough",
    "--user", "--workdir", "--entrypoint", "--label", "--stop-signal", "--stop-timeout", "--cap-drop",
    "--security-opt=no-new-privileges", "--security-opt=no-new-privileges=true",
    "--security-opt=no-new-privileges:true", "--pid=private", "--ipc=private", "--uts=private", "--cgroupns=private",
    "--pull=never", "--pull=missing", "--rm", "--detach", "--interactive", "--tty", "--init", "--quiet", "--tz",
    "--umask", "--sig-proxy"]


class PolicySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What this machine may be asked to run (agent/policy.py); nothing at all unless runtimes lists some."""

    runtimes: list[str] = []  # variant runtimes allowed (process, container, vm, wasm, and later ones)
    commands: list[str] = []  # globs for every program a pushed file would execute (after {here} etc.)
    images: list[str] = []  # globs for container images
    env: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ENV))  # variant env keys (globs)
    systemd_properties: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SYSTEMD_PROPERTIES))
    container_flags: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CONTAINER_FLAGS))
    kubernetes: list[str] = []  # Pod Security `restricted` rules waived (hostPorts, …) and kinds (kind:Secret)


# Kubernetes Pod Security Standard rules (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
# a manifest must meet unless policy.kubernetes waives them by name; agent/policy.py checks them.
KUBERNETES_RULES = ("hostProcess", "hostNamespaces", "privileged", "capabilities", "hostPathVolumes", "hostPorts",
                    "appArmor", "seLinux", "procMount", "seccomp", "sysctls", "volumeTypes",
                    "allowPrivilegeEscalation", "runAsNonRoot", "runAsUser")
PUSHED_FILE = "experiment.yaml"  # the name the agent stores a pushed file under, in {here} = spool/runs/RUN


class ExperimentsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Pushed experiment files: where ``{here}`` points and how many runs may wait."""

    here: str | None = None  # default: a per-run directory under spool.path holding the pushed file
    workloads: str | None = None  # what {workloads} means; default: runlab.experiment.workloads_dir()
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
    if problem := _policy_problem(cfg.policy, cfg.spool.path, cfg.experiments.here):
        raise ConfigError(f"{path}: {problem}")
    here = cfg.experiments.here
    if here is not None and not os.path.isdir(here):
        raise ConfigError(f"{path}: experiments.here: expected an existing directory, got {here!r}")
    if cfg.experiments.queue_max < 1:
        raise ConfigError(f"{path}: experiments.queue_max: expected at least 1, got {cfg.experiments.queue_max}")


def _policy_problem(policy: PolicySettings, spool: str, here: str | None) -> str | None:
    """The first policy entry that cannot mean what it says, or a pushed file's place policy.commands covers."""
    import fnmatch
    import re

    from agent.flags import GLOBAL_FLAGS, RUN_FLAGS

    for i, e in enumerate(policy.env):
        if not re.fullmatch(r"[A-Za-z_*?\[\]!][A-Za-z0-9_*?\[\]!]*", e):
            return f"policy.env[{i}]: expected a variable name or glob such as RUST_LOG or LC_*, got {e!r}"
    for i, e in enumerate(policy.systemd_properties):
        if not re.fullmatch(r"[A-Za-z*?\[\]!][A-Za-z0-9*?\[\]!]*", e):
            return f"policy.systemd_properties[{i}]: expected a property name or glob such as MemoryMax, got {e!r}"
    known = set(RUN_FLAGS).union(*(t[0] for t in GLOBAL_FLAGS.values()))
    for i, e in enumerate(policy.container_flags):
        name = e.partition("=")[0]
        if not name.startswith("--") or name[2:] not in known:
            return (f"policy.container_flags[{i}]: expected --FLAG or --FLAG=VALUE-GLOB with a flag docker, podman "
                    f"or nerdctl know (long form), got {e!r}")
    for i, e in enumerate(policy.kubernetes):
        if e not in KUBERNETES_RULES and not re.fullmatch(r"kind:[A-Za-z][A-Za-z0-9]*", e):
            return (f"policy.kubernetes[{i}]: expected a Pod Security rule ({', '.join(KUBERNETES_RULES)}) or "
                    f"kind:KIND, got {e!r}")
    if here is None:  # the pushed file lies in spool/runs/RUN: no command glob may cover it
        sample = os.path.join(os.path.abspath(spool), "runs", "20260101T000000-000000", PUSHED_FILE)
        for i, g in enumerate(policy.commands):
            if fnmatch.fnmatchcase(sample, g) or fnmatch.fnmatchcase(os.path.dirname(sample) + "/x", g):
                return (f"policy.commands[{i}]: {g} covers {os.path.dirname(os.path.dirname(sample))}/, where "
                        f"pushed experiment files are stored: a pushed file must never be an allowed program "
                        f"(narrow the glob, or set experiments.here)")
    return None
