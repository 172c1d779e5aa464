"""The local policy: what a signed experiment may make this machine execute — an allow-list, whole.

A signature says who sent an order; the policy says what this machine lets
anyone run (agent.yaml ``policy:``; without ``runtimes`` nothing). It is the
line that holds when a signing key leaks or an operator errs, so everything in
a variant that can make an allowed program do something else is on an
allow-list too, and whatever is not named is refused:

- **programs** (``policy.commands``, absolute path globs): every program the
  agent starts for a variant, a probe or a phase, after the placeholders are
  filled and the path is made absolute and normalised (``os.path.normpath``),
  under every ``{version}`` and ``{role}`` it can be started with; a bare name
  is resolved on the PATH it would be started with. Each runtime declares what
  a variant of it executes in one small function registered in ``EXECUTES``; a
  runtime without one is refused even when listed.
- **environment** (``policy.env``, name globs, default a small safe set):
  every ``env:`` key. The start-up hooks of shells, interpreters, the C
  library and the dynamic loader (``BASH_ENV``, ``PYTHONPATH``,
  ``NODE_OPTIONS``, ``LD_PRELOAD``, ``GCONV_PATH``, ``PATH``, ``HOME``… see
  ``HOOKS``) load code of the variant's choosing into an allowed program, so
  a glob never admits them: only their exact name in ``policy.env`` does.
- **systemd unit properties** (``policy.systemd_properties``, default:
  resource limits and sandboxing): ``ExecStartPre=``, ``User=``,
  ``Environment=``, ``RootDirectory=``, ``BindPaths=``… are refused unless
  named. A systemd variant's command must be an absolute path.
- **container engine flags** (``policy.container_flags``): ``engine_args``
  and ``run_args`` are parsed as the engines parse them (agent/flags.py, Go
  pflag) and each flag checked, in its long name, against ``--flag`` (any
  value) or ``--flag=VALUE-GLOB`` entries. Volumes, mounts, devices,
  capabilities, security options, host namespaces, ``--rootfs``, remote
  engines, hooks and modules are not in the default and so are refused.
- **Kubernetes manifests**: the file must lie under ``policy.commands``
  (kubectl does what it says), its images match ``policy.images``, its kinds
  be workloads, Services or ConfigMaps, and its pods meet the Pod Security
  Standard ``restricted`` — what it refuses is refused here unless
  ``policy.kubernetes`` waives the rule by name. A ``kubeconfig`` (it can name
  a credential program) must lie under ``policy.commands`` too.
- **the pushed file** is data: the agent stores it under a name of its own,
  mode 0600, in a directory no ``policy.commands`` glob may cover; no program
  may be it.

Every rejection names the key path and the rule
(``variants[0].env.BASH_ENV is not in policy.env (…)``). What the policy does
not do: look inside allowed programs. An allowed shell or interpreter runs
whatever its arguments say (allowing ``/bin/sh`` allows anything); symlinks in
the administrator's directories are not resolved; what runs inside a container
image or a Kubernetes pod is the image's.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import flags
from agent.config import KUBERNETES_RULES, PolicySettings
from runlab.experiment import (
    PLACEHOLDERS,
    ContainerVariant,
    Experiment,
    KubernetesVariant,
    ProcessVariant,
    Ready,
    ServerlessVariant,
    SystemdVariant,
    Variant,
    VmVariant,
    WasmVariant,
    fill,
    manifest_images,
)

# Environment variables that make a shell, an interpreter, the C library or the dynamic loader run or load code
# (or find programs) of the variant's choosing. A glob in policy.env never admits them; their exact name does.
HOOKS = (
    # shells: bash, dash, zsh, ksh
    "BASH_ENV", "ENV", "BASH_FUNC_*", "SHELLOPTS", "BASHOPTS", "PS4", "PS1", "PS2", "PROMPT_COMMAND", "IFS",
    "CDPATH", "GLOBIGNORE", "ZDOTDIR", "FPATH", "SHELL", "HOME", "PATH", "INPUTRC", "HISTFILE", "TMOUT",
    # interpreters and language runtimes
    "PYTHON*", "VIRTUAL_ENV", "NODE_*", "NPM_*", "PERL*", "RUBY*", "GEM_*", "BUNDLE_*", "LUA_*", "PHP*", "TCL*",
    "R_*", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "DOTNET_*", "CORECLR_*",
    "COMPlus_*", "GOFLAGS", "GOENV", "CARGO_*", "RUSTC_WRAPPER", "WASMTIME_*", "WASMEDGE_*", "WASMER_*",
    # the C library and the dynamic loader
    "LD_*", "GCONV_PATH", "GLIBC_TUNABLES", "MALLOC_*", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_*",
    "RES_OPTIONS", "LOCALDOMAIN", "TZDIR", "OPENSSL_*", "SSL_*", "DYLD_*", "TERMINFO*", "*SAN_OPTIONS",
    "*SAN_SYMBOLIZER_PATH", "GNUTLS_*", "NSS_*", "SASL_PATH", "MAGIC",
    # libraries that load plug-ins (shared objects) from a path: toolkits, media, graphics
    "QT_*", "GTK_*", "GIO_*", "GST_*", "GDK_*", "LIBGL_*", "VK_*", "__EGL_*", "LIBVA_*", "OMPI_*", "CUDA_*",
    # programs that other programs start, configuration that names programs
    "EDITOR", "VISUAL", "PAGER", "BROWSER", "LESSOPEN", "LESSCLOSE", "GIT_*", "SSH_*", "XDG_*", "TMPDIR",
    "KUBECONFIG", "DOCKER_*", "CONTAINER_*", "CONTAINERS_*", "REGISTRIES_CONFIG_PATH", "CONTAINERD_*", "BUILDAH_*",
    "SYSTEMD_*", "DBUS_*", "XAUTHORITY", "DISPLAY", "WAYLAND_*", "LISTEN_*", "NOTIFY_SOCKET", "CREDENTIALS_*",
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROPERTY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# Kinds a manifest may hold without policy.kubernetes naming them (kind:KIND): workloads, Services, ConfigMaps.
KUBERNETES_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Service",
                    "ConfigMap")


def is_hook(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, h) for h in HOOKS)


@dataclass
class Violation:
    """One thing the policy refuses: where (key path), why (the rule), and the entry that would allow it."""

    path: str
    why: str
    allow: tuple[str, str] | None = None  # (policy key, entry); None: no policy can allow it

    def __str__(self) -> str:
        return f"{self.path} {self.why}"


class PolicyError(Exception):
    """The experiment asks for something the policy does not allow; str(e) names the key path and the rule."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        shown = "; ".join(str(v) for v in violations[:4])
        more = f"; and {len(violations) - 4} more" if len(violations) > 4 else ""
        super().__init__(shown + more)


@dataclass
class Executes:
    """What one variant makes the machine execute and hand over; ``where`` paths are relative to the variant."""

    programs: list[tuple[str, str]] = field(default_factory=list)  # (where, program)
    images: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the environment programs are started with
    cwd: str | None = None
    properties: dict[str, str] = field(default_factory=dict)  # systemd unit properties
    flags: list[tuple[str, list[str], str]] = field(default_factory=list)  # (where, args, "engine:ENGINE"|"run")
    manifests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (where, path, placeholders)
    absolute: list[tuple[str, str]] = field(default_factory=list)  # programs that must be absolute paths
    refused: list[tuple[str, str]] = field(default_factory=list)  # (where, why) no policy can allow


EXECUTES: dict[str, Callable[[Variant, dict[str, str]], Executes]] = {}


def executes(runtime: str) -> Callable[[Callable[[Variant, dict[str, str]], Executes]],
                                       Callable[[Variant, dict[str, str]], Executes]]:
    """Register what variants of ``runtime`` execute."""
    def register(fn: Callable[[Variant, dict[str, str]], Executes]) -> Callable[[Variant, dict[str, str]], Executes]:
        EXECUTES[runtime] = fn
        return fn
    return register


def _env(v: Variant, values: dict[str, str]) -> dict[str, str]:
    """The variant's environment as started: values filled ({version} can be anything the order says)."""
    return {k: fill(val, values) for k, val in v.env.items()}


def _labelled(v: Variant, programs: list[str]) -> list[tuple[str, str]]:
    """(where, program) for a variant's ``executables()``: command[0] by that name, others by position."""
    command: list[str] = getattr(v, "command", [])
    return [("command[0]" if command and p == command[0] else f"executables[{i}]", p) for i, p in enumerate(programs)]


@executes("process")
@executes("wasm")
def _command_variant(v: Variant, values: dict[str, str]) -> Executes:
    # Generic: whatever the variant says it executes (a WASM runtime preset's binary as well as command[0]).
    assert isinstance(v, ProcessVariant | WasmVariant)
    return Executes(programs=[(w, fill(p, values)) for w, p in _labelled(v, v.executables())], env=_env(v, values),
                    cwd=fill(v.cwd, values) if v.cwd else None)  # as the runtime starts it: placeholders filled


@executes("vm")
def _vm_variant(v: Variant, values: dict[str, str]) -> Executes:
    assert isinstance(v, VmVariant)
    where = "firecracker.binary" if v.firecracker else "cloud_hypervisor.binary" if v.cloud_hypervisor else "command[0]"
    return Executes(programs=[(where, fill(p, values)) for p in v.executables()], env=_env(v, values),
                    cwd=fill(v.cwd, values) if v.cwd else None)


@executes("systemd")
def _systemd_variant(v: Variant, values: dict[str, str]) -> Executes:
    # systemd-run and systemctl are programs like any other; the unit's command is what the manager starts, on
    # its own search path: it must be absolute. The unit's properties and environment are allow-listed.
    assert isinstance(v, SystemdVariant)
    command = fill(v.command[0], values)
    return Executes(programs=[("systemd_run", fill(v.systemd_run, values)), ("systemctl", fill(v.systemctl, values)),
                              ("command[0]", command)],
                    env=_env(v, values), properties={k: fill(p, values) for k, p in v.properties.items()},
                    absolute=[("command[0]", command)])


@executes("kubernetes")
def _kubernetes_variant(v: Variant, values: dict[str, str]) -> Executes:
    # kubectl does whatever the manifest says, so the manifest file is vouched for like a program (it must lie
    # under policy.commands), its images must be in policy.images and its pods meet Pod Security `restricted`.
    # A kubeconfig can name a credential program (users[].user.exec): it is vouched for like a program too.
    assert isinstance(v, KubernetesVariant)
    manifest = fill(v.manifest, values)
    ex = Executes(programs=[("kubectl", fill(v.kubectl, values)), ("manifest", manifest)], env=_env(v, values),
                  manifests=[("manifest", manifest, values)])
    if v.kubeconfig:
        ex.programs.append(("kubeconfig", fill(v.kubeconfig, values)))
    for i, res in enumerate(v.rollout):  # `kubectl rollout status RES`: a RES such as --kubeconfig=… is a flag
        if res.startswith("-"):
            ex.refused.append((f"rollout[{i}]", f"{res!r} starts with '-': kubectl would read it as a flag"))
    images = manifest_images(manifest)
    if not images:
        ex.refused.append(("manifest", f"names no image the agent could read from {manifest}, so policy.images "
                                       f"cannot vouch for it"))
    ex.images = [("manifest image", i) for i in images]
    return ex


@executes("serverless")
def _serverless_variant(v: Variant, values: dict[str, str]) -> Executes:
    # The function runs on the platform; what this machine executes are the deploy and "make it cold" commands,
    # started with the agent's environment (the variant's env is not theirs).
    assert isinstance(v, ServerlessVariant)
    cmds = (("deploy[0]", v.deploy), ("cold.command[0]", v.cold.command), ("cold.until[0]", v.cold.until))
    return Executes(programs=[(k, fill(c[0], values)) for k, c in cmds if c], env=_env(v, values))


@executes("container")
def _container_variant(v: Variant, values: dict[str, str]) -> Executes:
    assert isinstance(v, ContainerVariant)
    # The engine (docker/podman/nerdctl) is fixed by the schema and the command runs inside the image; what
    # remains are the engine's flags: parsed as the engine parses them and each checked (policy.container_flags).
    ex = Executes(images=[("image", fill(v.image, values))], env=_env(v, values))
    if v.image.startswith("-"):
        ex.refused.append(("image", f"{v.image!r} starts with '-': the engine would read it as a flag"))
    if v.oci_runtime and "/" in v.oci_runtime:  # a path is a host program; a name is the engine's configured one
        ex.programs.append(("oci_runtime", fill(v.oci_runtime, values)))
    # {port}, {name} and {run_dir} are the agent's own per start (a fresh temporary directory, a free port):
    # flag values keep them as written, so a policy can name them (--volume={run_dir}:{run_dir}).
    own = {**values, "port": "{port}", "name": "{name}", "run_dir": "{run_dir}"}
    ex.flags = [("engine_args", [fill(a, own) for a in v.engine_args], f"engine:{v.engine}"),
                ("run_args", [fill(a, own) for a in v.run_args], "run")]
    return ex


def runtime_of(v: Variant) -> str:
    return str(type(v).__struct_config__.tag)


def _values(exp: Experiment, v: Variant, here: str, version: str = "v1", role: str = "server") -> dict[str, str]:
    """Placeholder values as the engine fills them (port, name and run_dir vary per start, never by path)."""
    return {"here": here, "port": "0", "name": f"runlab-{exp.name}-{v.name}-0-0000",
            "run_dir": os.path.join(tempfile.gettempdir(), "runlab-run-x", f"{v.name}-0"), "variant": v.name,
            "version": version, "role": role, "peer": "127.0.0.1:0"}


def _fillings(exp: Experiment) -> list[tuple[str, str]]:
    """Every (version, role) a variant may be started with: a program path may name either."""
    versions = [exp.redeploy.v1, exp.redeploy.v2] if exp.redeploy is not None else ["v1"]
    roles = ["server", "client"] if exp.interservice is not None else ["server"]
    return [(ver, role) for ver in versions for role in roles]


def program_path(program: str, env: dict[str, str], cwd: str | None) -> str | None:
    """The absolute, normalised path ``program`` starts; None when a bare name is not on the PATH."""
    base = cwd or os.getcwd()
    if "/" not in program:
        path = env.get("PATH", os.environ.get("PATH", os.defpath))
        # exec resolves relative PATH entries against the working directory the program starts in
        path = os.pathsep.join(os.path.join(base, d) for d in path.split(os.pathsep))
        found = shutil.which(program, path=path)
        if found is None:
            return None
        program = found
    return os.path.normpath(os.path.join(base, program))


def _normalise(value: str) -> str:
    """Absolute paths in a flag value normalised (``/srv/data/..:/d`` → ``/:/d``), so a glob sees where they lead."""
    return "".join(os.path.normpath(t) if t.startswith("/") and not t.startswith("//") else t
                   for t in re.split(r"([:,=])", value))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _listing(entries: list[str], empty: str) -> str:
    shown = ", ".join(entries[:12]) + (", …" if len(entries) > 12 else "")
    return shown or empty


class _Check:
    """Collects every violation of one experiment against one policy."""

    def __init__(self, policy: PolicySettings, here: str, pushed: str | None) -> None:
        self.policy, self.here, self.pushed = policy, here, pushed
        self.found: list[Violation] = []

    def refuse(self, path: str, why: str, allow: tuple[str, str] | None = None) -> None:
        if not any(f.path == path and f.why == why for f in self.found):
            self.found.append(Violation(path, why, allow))

    # ---- programs ----
    def program(self, path: str, program: str, env: dict[str, str], cwd: str | None) -> None:
        envs = [env] if "PATH" not in env else [env, {}]  # a variant's PATH: spawns use it, helpers may not
        for e in envs:
            full = program_path(program, e, cwd)
            if full is None:
                self.refuse(path, f"{program!r} is not on the PATH, so policy.commands cannot vouch for it")
                continue
            if self.pushed is not None and full == os.path.normpath(self.pushed):
                self.refuse(path, f"{full} is the pushed experiment file itself, which is never a program")
                continue
            if not any(fnmatch.fnmatchcase(full, g) for g in self.policy.commands):
                allowed = _listing(self.policy.commands, "empty: no command is allowed")
                self.refuse(path, f"{full} is outside policy.commands ({allowed})", ("commands", _glob_escape(full)))

    def ready(self, path: str, ready: Ready | None, values: dict[str, str]) -> None:
        if ready is not None and ready.command:  # probes run with the agent's environment
            self.program(f"{path}.command[0]", fill(ready.command[0], values), {}, None)

    # ---- environment ----
    def env(self, path: str, key: str, value: str | None) -> None:
        where = f"{path}.{key}"
        if not ENV_NAME.fullmatch(key):
            self.refuse(where, "is not a valid environment variable name (letters, digits, '_')")
            return
        if value is not None and any(ord(c) < 32 and c != "\t" for c in value):
            self.refuse(where, "has a control character in its value (a newline would start a new setting)")
        allowed = self.policy.env
        if key in allowed:
            return
        if is_hook(key):
            self.refuse(where, "is a start-up hook (it makes a shell, interpreter or the loader run code or "
                               "programs of the order's choosing): only its exact name in policy.env allows it",
                        ("env", key))
        elif not any(fnmatch.fnmatchcase(key, g) for g in allowed):
            self.refuse(where, f"is not in policy.env ({_listing(allowed, 'empty')})", ("env", key))

    # ---- systemd ----
    def properties(self, path: str, props: dict[str, str]) -> None:
        allowed = self.policy.systemd_properties
        for key, value in props.items():
            where = f"{path}.{key}"
            if not PROPERTY_NAME.fullmatch(key):
                self.refuse(where, "is not a systemd property name (letters and digits)")
                continue
            if any(ord(c) < 32 and c != "\t" for c in value):
                self.refuse(where, "has a control character in its value (a newline would start a new setting)")
            if not any(fnmatch.fnmatchcase(key, g) for g in allowed):
                self.refuse(where, f"is not in policy.systemd_properties ({_listing(allowed, 'empty')})",
                            ("systemd_properties", key))

    # ---- container engines ----
    def container_flags(self, path: str, args: list[str], place: str, env_ok: bool = True) -> None:
        engine = place.split(":", 1)[1] if place.startswith("engine:") else ""
        longs, shorts = GLOBAL_TABLES[engine] if engine else (flags.RUN_FLAGS, flags.RUN_SHORT)
        try:
            parsed = flags.parse(args, longs, shorts)
        except flags.FlagError as e:
            self.refuse(f"{path}[{e.arg}]", f"is refused: {e}")
            return
        allowed = [(e.partition("=")[0][2:], e.partition("=")[2] if "=" in e else None)
                   for e in self.policy.container_flags]
        for p in parsed:
            where = f"{path}[{p.arg}]"
            p = flags.Parsed(p.name, _normalise(p.value), p.arg, p.spelled)
            if re.search(r"(^|[/:=,])\.\.($|[/:=,])", p.value):
                self.refuse(where, f"{p.spelled}: '..' in a relative path of a flag value is refused (the engine "
                                   f"would follow it from wherever it runs)")
                continue
            if not any(n == p.name and (g is None or fnmatch.fnmatchcase(p.value, g)) for n, g in allowed):
                shown = f"--{p.name}" if p.value == "true" and not (longs.get(p.name)) else f"--{p.name}={p.value}"
                self.refuse(where, f"{shown} is not in policy.container_flags (it may hand the container the host: "
                                   f"files, devices, privileges, namespaces or another engine)",
                            ("container_flags", f"--{p.name}={_glob_escape(p.value)}" if longs.get(p.name)
                             else f"--{p.name}"))
            if p.name in flags.PROGRAM_FLAGS and "/" in p.value:
                self.program(f"{where} --{p.name}", p.value, {}, None)
            if p.name in flags.ENV_FLAGS and env_ok:
                key, eq, value = p.value.partition("=")
                self.env(f"{where} --{p.name}", key, value if eq else None)

    # ---- Kubernetes ----
    def manifest(self, path: str, file: str, values: dict[str, str]) -> None:
        import yaml

        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
            # As the runtime renders it (plain text replacement): {version} or {variant} could write YAML.
            for k in PLACEHOLDERS:
                text = text.replace("{" + k + "}", "1" if k == "port" else values.get(k, "x"))
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            self.refuse(path, f"{file} cannot be read as YAML ({type(e).__name__}), so the policy cannot vouch for "
                              f"it")
            return
        waived = set(self.policy.kubernetes)
        for d, doc in enumerate(docs):
            where = f"{path}[{d}]"
            kind = doc.get("kind") if isinstance(doc, dict) else None
            if not isinstance(kind, str):
                self.refuse(where, "is not a Kubernetes object with a kind")
                continue
            if kind not in KUBERNETES_KINDS and f"kind:{kind}" not in waived:
                self.refuse(f"{where}.kind", f"{kind} is not a workload, Service or ConfigMap and not in "
                                             f"policy.kubernetes (kind:{kind})", ("kubernetes", f"kind:{kind}"))
            for image in _images(doc):
                if not any(fnmatch.fnmatchcase(image, g) for g in self.policy.images):
                    allowed = _listing(self.policy.images, "empty: no image is allowed")
                    self.refuse(f"{where} image", f"{image} is outside policy.images ({allowed})",
                                ("images", _glob_escape(image)))
            for spath, spec, meta in _pod_specs(doc, where):
                for rule, at, why in pod_security(spec, meta):
                    if rule not in waived:
                        self.refuse(f"{spath}{at}", f"{why}: Pod Security `restricted` refuses it "
                                                    f"(policy.kubernetes: {rule})", ("kubernetes", rule))


def _images(node: Any) -> list[str]:
    """Every ``image:`` string in a parsed manifest document."""
    if isinstance(node, dict):
        return [i for k, v in node.items() for i in ([v] if k == "image" and isinstance(v, str) else _images(v))]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


GLOBAL_TABLES = {engine: tables for engine, tables in flags.GLOBAL_FLAGS.items()}


def _pod_specs(doc: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(path, pod spec, pod metadata) of a Pod, a workload's template or a CronJob's job template."""
    raw = doc.get("spec")
    spec: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = doc.get("kind")
    found: list[tuple[str, Any, Any]] = []
    if kind == "Pod":
        found.append((f"{where}.spec", spec, doc.get("metadata")))
    elif kind == "CronJob":
        t = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        found.append((f"{where}.spec.jobTemplate.spec.template.spec", t.get("spec"), t.get("metadata")))
    elif isinstance(spec.get("template"), dict):
        t = spec["template"]
        found.append((f"{where}.spec.template.spec", t.get("spec"), t.get("metadata")))
    return [(p, s if isinstance(s, dict) else {}, m if isinstance(m, dict) else {}) for p, s, m in found]


_BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                  "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def pod_security(spec: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(rule, key path under the pod spec, why) for everything Pod Security Standard ``restricted`` refuses.

    The rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and restricted),
    checked on the pod spec as written; names are ``config.KUBERNETES_RULES``.
    """
    out: list[tuple[str, str, str]] = []

    def d(x: Any) -> dict[str, Any]:
        return x if isinstance(x, dict) else {}

    psc = d(spec.get("securityContext"))
    for ns in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(ns) is True:
            out.append(("hostNamespaces", f".{ns}", f"{ns}: true shares the host's namespace"))
    if d(psc.get("windowsOptions")).get("hostProcess") is True:
        out.append(("hostProcess", ".securityContext.windowsOptions.hostProcess", "a host process"))
    for i, vol in enumerate(spec.get("volumes") or []):
        vol = d(vol)
        kinds = [k for k in vol if k != "name"]
        if "hostPath" in kinds:
            out.append(("hostPathVolumes", f".volumes[{i}].hostPath", "a hostPath volume mounts the host's files"))
        elif any(k not in _RESTRICTED_VOLUMES for k in kinds):
            out.append(("volumeTypes", f".volumes[{i}]", f"volume type {', '.join(kinds)}"))
    for i, s in enumerate(psc.get("sysctls") or []):
        name = d(s).get("name")
        if name not in _SAFE_SYSCTLS:
            out.append(("sysctls", f".securityContext.sysctls[{i}]", f"sysctl {name} is not a safe one"))
    annotations = d(meta.get("annotations"))
    for k, val in annotations.items():
        if str(k).startswith("container.apparmor.security.beta.kubernetes.io/") and val != "runtime/default" \
                and not str(val).startswith("localhost/"):
            out.append(("appArmor", f" (metadata.annotations.{k})", f"AppArmor profile {val}"))

    def seccomp(sc: dict[str, Any]) -> str | None:
        return d(sc.get("seccompProfile")).get("type")

    pod_seccomp, pod_nonroot = seccomp(psc), psc.get("runAsNonRoot")

    def context_rules(sc: dict[str, Any], at: str) -> None:
        if d(sc.get("appArmorProfile")).get("type") not in (None, "RuntimeDefault", "Localhost"):
            out.append(("appArmor", f"{at}.appArmorProfile.type", "AppArmor Unconfined"))
        se = d(sc.get("seLinuxOptions"))
        if se.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t") \
                or se.get("user") or se.get("role"):
            out.append(("seLinux", f"{at}.seLinuxOptions", "a custom SELinux user, role or type"))
        if sc.get("runAsUser") == 0:
            out.append(("runAsUser", f"{at}.runAsUser", "runAsUser: 0 runs as root"))
        if seccomp(sc) not in (None, "RuntimeDefault", "Localhost"):
            out.append(("seccomp", f"{at}.seccompProfile.type", f"seccomp profile {seccomp(sc)}"))

    context_rules(psc, ".securityContext")
    containers = [(f".{key}[{i}]", d(c)) for key in ("initContainers", "containers", "ephemeralContainers")
                  for i, c in enumerate(spec.get(key) or [])]
    for at, c in containers:
        sc = d(c.get("securityContext"))
        sat = f"{at}.securityContext"
        if sc.get("privileged") is True:
            out.append(("privileged", f"{sat}.privileged", "a privileged container"))
        if d(sc.get("windowsOptions")).get("hostProcess") is True:
            out.append(("hostProcess", f"{sat}.windowsOptions.hostProcess", "a host process"))
        for j, port in enumerate(c.get("ports") or []):
            if d(port).get("hostPort") not in (None, 0):
                out.append(("hostPorts", f"{at}.ports[{j}].hostPort", "a hostPort opens a port on the node"))
        caps = d(sc.get("capabilities"))
        added = [str(x) for x in caps.get("add") or []]
        if [x for x in added if x not in ("NET_BIND_SERVICE",)]:
            out.append(("capabilities", f"{sat}.capabilities.add", f"added capabilities {', '.join(added)}"))
        if "ALL" not in (caps.get("drop") or []):
            out.append(("capabilities", f"{sat}.capabilities.drop", "capabilities not dropped (drop: [ALL])"))
        if sc.get("procMount") not in (None, "Default"):
            out.append(("procMount", f"{sat}.procMount", f"procMount {sc.get('procMount')}"))
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(("allowPrivilegeEscalation", f"{sat}.allowPrivilegeEscalation",
                        "allowPrivilegeEscalation not false"))
        nonroot = sc.get("runAsNonRoot", pod_nonroot)
        if nonroot is not True:
            out.append(("runAsNonRoot", f"{sat}.runAsNonRoot", "runAsNonRoot not true (here or for the pod)"))
        if (seccomp(sc) or pod_seccomp) is None:
            out.append(("seccomp", f"{sat}.seccompProfile", "no seccomp profile (RuntimeDefault or Localhost)"))
        context_rules(sc, sat)
    return out


def _check_variant(c: _Check, path: str, ex: Executes) -> None:
    for where, why in ex.refused:
        c.refuse(f"{path}.{where}", f"is refused: it {why}")
    for key, value in ex.env.items():
        c.env(f"{path}.env", key, value)
    for where, program in ex.absolute:
        if not program.startswith("/"):
            c.refuse(f"{path}.{where}", f"{program!r} is not an absolute path (systemd looks it up on its own search "
                                        f"path, which policy.commands cannot follow)")
    for where, program in ex.programs:
        c.program(f"{path}.{where}", program, ex.env, ex.cwd)
    for where, image in ex.images:
        if not any(fnmatch.fnmatchcase(image, g) for g in c.policy.images):
            allowed = _listing(c.policy.images, "empty: no image is allowed")
            c.refuse(f"{path}.{where}", f"{image} is outside policy.images ({allowed})",
                     ("images", _glob_escape(image)))
    c.properties(f"{path}.properties", ex.properties)
    for where, args, place in ex.flags:
        c.container_flags(f"{path}.{where}", args, place)
    for where, file, values in ex.manifests:
        c.manifest(f"{path}.{where}", file, values)


def violations(exp: Experiment, policy: PolicySettings, here: str, pushed: str | None = None) -> list[Violation]:
    """Everything in ``exp`` that ``policy`` does not allow (empty: allowed). ``pushed``: the stored file."""
    c = _Check(policy, here, pushed)
    for i, v in enumerate(exp.variants):
        rt = runtime_of(v)
        path = f"variants[{i}]"
        if rt not in policy.runtimes:
            allowed = _listing(policy.runtimes, "empty: no runtime is allowed")
            c.refuse(f"{path}.runtime", f"{rt} is not in policy.runtimes ({allowed})", ("runtimes", rt))
        declare = EXECUTES.get(rt)
        if declare is None:
            c.refuse(f"{path}.runtime", f"{rt} does not declare what it executes, so no policy can allow it")
            continue
        for version, role in _fillings(exp):
            values = _values(exp, v, here, version, role)
            _check_variant(c, path, declare(v, values))
            # The probe in effect for this variant; it runs with the agent's environment, not the variant's.
            c.ready(f"{path}.ready" if v.ready is not None else "ready", v.ready or exp.ready, values)
    _check_phase_commands(c, exp, here)
    if pushed is not None:
        for g in policy.commands:
            if fnmatch.fnmatchcase(pushed, g) or fnmatch.fnmatchcase(os.path.join(os.path.dirname(pushed), "x"), g):
                c.refuse("experiments.here", f"the pushed file is stored in {os.path.dirname(pushed)}, which "
                                             f"policy.commands {g} covers: a pushed file is never a program")
    return c.found


def check(exp: Experiment, policy: PolicySettings, here: str, pushed: str | None = None) -> None:
    """Raise PolicyError (every violation, key path and rule) unless ``policy`` allows all of ``exp``."""
    found = violations(exp, policy, here, pushed)
    if found:
        raise PolicyError(found)


def required(exp: Experiment, here: str, base: PolicySettings | None = None) -> dict[str, list[str]]:
    """The entries a policy needs beyond ``base`` (default: the defaults) to allow ``exp``; ValueError when
    something in it no policy can allow."""
    base = base or PolicySettings()
    found = violations(exp, base, here)
    fixed = [v for v in found if v.allow is None]
    if fixed:
        raise ValueError("; ".join(str(v) for v in fixed))
    out: dict[str, list[str]] = {}
    for v in found:
        assert v.allow is not None
        key, entry = v.allow
        if entry not in out.setdefault(key, []):
            out[key].append(entry)
    return out


def _check_phase_commands(c: _Check, exp: Experiment, here: str) -> None:
    """Phases that run commands of their own (benchmark, a stack's up/down and probes) are programs too."""
    values = {"here": here, "port": "0", "name": "runlab-x", "run_dir": tempfile.gettempdir(), "variant": "x",
              "version": "v1", "role": "server", "peer": "127.0.0.1:0"}
    if exp.benchmark is not None:
        c.program("benchmark.command[0]", fill(exp.benchmark.command[0], values), {}, None)
    if exp.stack is not None:
        for i, s in enumerate(exp.stack.stacks):
            path = f"stack.stacks[{i}]"
            for key, cmd in (("up", s.up), ("down", s.down)):
                if cmd:
                    c.program(f"{path}.{key}[0]", fill(cmd[0], values), {}, None)
            for svc, ready in s.probes.items():
                c.ready(f"{path}.probes.{svc}", ready, values)


def _flag_values(args: list[str], names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(flag, value) for every ``--flag value`` / ``--flag=value`` / bare ``--flag`` in ``args`` (privileges.py's
    best-effort look at where an engine connects; the policy itself parses with agent/flags.py)."""
    out = []
    for i, a in enumerate(args):
        for f in names:
            if a == f:
                nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else ""
                out.append((f, nxt))
            elif a.startswith(f + "="):
                out.append((f, a[len(f) + 1:]))
    return out


def describe(policy: PolicySettings) -> list[str]:
    """The effective policy, one line per key (``runlab-agent check``)."""
    def show(entries: list[str]) -> str:
        return ", ".join(entries) if entries else "(none)"

    return [f"policy.runtimes: {show(policy.runtimes)}",
            f"policy.commands: {show(policy.commands)}",
            f"policy.images: {show(policy.images)}",
            f"policy.env: {show(policy.env)} (start-up hooks such as BASH_ENV, PYTHONPATH, LD_PRELOAD, PATH, HOME "
            f"only by exact name)",
            f"policy.systemd_properties: {show(policy.systemd_properties)}",
            f"policy.container_flags: {show(policy.container_flags)}",
            f"policy.kubernetes (Pod Security restricted rules waived, kinds beyond "
            f"{', '.join(KUBERNETES_KINDS)}): {show(policy.kubernetes)}",
            f"  (rules: {', '.join(KUBERNETES_RULES)})"]
