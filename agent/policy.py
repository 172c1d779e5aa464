"""The local policy: what a signed experiment may make this machine execute.

A signature says who sent an order; the policy says what this machine lets
anyone run (agent.yaml ``policy:``, empty = nothing). Each runtime declares
what a variant of it executes — the programs it starts, the images it runs —
in one small function registered in ``EXECUTES``; a runtime without one is
refused even when listed, until it says what it executes. Readiness probes
that run a command (``ready.command``) and the commands phases run themselves
(``benchmark.command``, a stack's ``up``/``down`` and probes) are checked like
any program; a program path is checked under every ``{version}`` (redeploy)
and ``{role}`` (interservice) it can be started with. systemd variants run
``systemd_run``, ``systemctl`` and their command; serverless variants their
``deploy`` and ``cold`` commands; VM presets their ``binary``. A Kubernetes
manifest is handed to kubectl, which runs what it says, so the manifest file
must lie under ``policy.commands`` like a program, and every image it names
must be in ``policy.images`` (a manifest whose images cannot be read is
refused).

Container variants may not use engine flags that hand the container the
host (``--privileged``, ``-v``/``--mount``, ``--device``, ``--cap-add``, host
namespaces…); an OCI runtime or conmon given as a path is a program like any
other. Programs are checked after the placeholders are filled and the path made
absolute and normalised (``os.path.normpath``), so ``{here}/../../bin/sh``
cannot slip past ``/opt/runlab/workloads/*``. A bare name is resolved on the
PATH the program would be started with (a variant's ``env: PATH`` included).
Globs are ``fnmatch`` globs: ``*`` also matches ``/``, so ``/opt/w/*`` allows
everything beneath ``/opt/w``. Symlinks are not resolved: the administrator's
directories are trusted to hold what their names say.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import PolicySettings
from runlab.experiment import (
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


class PolicyError(Exception):
    """The experiment asks for something the policy does not allow; str(e) names the variant and the rule."""


@dataclass
class Executes:
    """What one variant makes the machine execute: (where in the file, value) pairs."""

    programs: list[tuple[str, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    refused: list[tuple[str, str]] = field(default_factory=list)  # (where, why) no policy can allow


EXECUTES: dict[str, Callable[[Variant, dict[str, str]], Executes]] = {}


def executes(runtime: str) -> Callable[[Callable[[Variant, dict[str, str]], Executes]],
                                       Callable[[Variant, dict[str, str]], Executes]]:
    """Register what variants of ``runtime`` execute."""
    def register(fn: Callable[[Variant, dict[str, str]], Executes]) -> Callable[[Variant, dict[str, str]], Executes]:
        EXECUTES[runtime] = fn
        return fn
    return register


@executes("process")
@executes("wasm")
def _command_variant(v: Variant, values: dict[str, str]) -> Executes:
    assert isinstance(v, ProcessVariant | WasmVariant)
    return Executes(programs=[("command[0]", fill(v.command[0], values))], env=dict(v.env), cwd=v.cwd)


@executes("vm")
def _vm_variant(v: Variant, values: dict[str, str]) -> Executes:
    assert isinstance(v, VmVariant)
    where = "firecracker.binary" if v.firecracker else "cloud_hypervisor.binary" if v.cloud_hypervisor else "command[0]"
    return Executes(programs=[(where, fill(p, values)) for p in v.executables()], env=dict(v.env), cwd=v.cwd)


@executes("systemd")
def _systemd_variant(v: Variant, values: dict[str, str]) -> Executes:
    # systemd-run and systemctl are programs like any other; the unit's own command is what systemd starts.
    assert isinstance(v, SystemdVariant)
    return Executes(programs=[(k, fill(p, values)) for k, p in
                              zip(("systemd_run", "systemctl", "command[0]"), v.executables(), strict=True)],
                    env=dict(v.env))


@executes("kubernetes")
def _kubernetes_variant(v: Variant, values: dict[str, str]) -> Executes:
    # kubectl runs whatever the manifest says, so the manifest file is vouched for like a program (it must lie
    # under policy.commands) and every image in it must be in policy.images; one that cannot be read is refused.
    assert isinstance(v, KubernetesVariant)
    manifest = fill(v.manifest, values)
    ex = Executes(programs=[("kubectl", fill(v.kubectl, values)), ("manifest", manifest)], env=dict(v.env))
    images = manifest_images(manifest)
    if not images:
        ex.refused.append(("manifest", f"names no image the agent could read from {manifest}, so policy.images "
                                       f"cannot vouch for it"))
    ex.images = [("manifest image", i) for i in images]
    return ex


@executes("serverless")
def _serverless_variant(v: Variant, values: dict[str, str]) -> Executes:
    # The function runs on the platform; what this machine executes are the deploy and "make it cold" commands.
    assert isinstance(v, ServerlessVariant)
    cmds = (("deploy[0]", v.deploy), ("cold.command[0]", v.cold.command), ("cold.until[0]", v.cold.until))
    return Executes(programs=[(k, fill(c[0], values)) for k, c in cmds if c], env=dict(v.env))


# Engine flags whose value is a host program the engine executes (checked against policy.commands when a path).
_ENGINE_PROGRAMS = ("--runtime", "--conmon", "--network-cmd-path")
# Flags that hand a container the host (its files, devices, processes, privileges): never allowed.
_HOST_FLAGS = ("--privileged", "--volume", "-v", "--mount", "--device", "--cap-add", "--security-opt",
               "--pid", "--ipc", "--userns", "--uts", "--hooks-dir", "--volumes-from", "--env-file")
_HOST_OK = {"--pid": "private", "--ipc": "private", "--uts": "private", "--userns": "private"}


def _flag_values(args: list[str], flags: tuple[str, ...]) -> list[tuple[str, str]]:
    """(flag, value) for every ``--flag value`` / ``--flag=value`` / bare ``--flag`` in ``args``."""
    out = []
    for i, a in enumerate(args):
        for f in flags:
            if a == f:
                nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else ""
                out.append((f, nxt))
            elif a.startswith(f + "="):
                out.append((f, a[len(f) + 1:]))
    return out


@executes("container")
def _container_variant(v: Variant, values: dict[str, str]) -> Executes:
    assert isinstance(v, ContainerVariant)
    # The engine (docker/podman/nerdctl) is fixed by the schema and the command runs inside the image; what
    # remains are the engine's own flags that run host programs or give the container the host.
    ex = Executes(images=[("image", v.image)])
    if v.oci_runtime and "/" in v.oci_runtime:  # a path is a host program; a name is the engine's configured one
        ex.programs.append(("oci_runtime", fill(v.oci_runtime, values)))
    for key, args in (("engine_args", v.engine_args), ("run_args", v.run_args)):
        filled = [fill(a, values) for a in args]
        for flag, value in _flag_values(filled, _ENGINE_PROGRAMS):
            if "/" in value:
                ex.programs.append((f"{key} {flag}", value))
        for flag, value in _flag_values(filled, _HOST_FLAGS):
            if _HOST_OK.get(flag) != value:
                ex.refused.append((f"{key} {flag}", "gives the container the host (files, devices, processes or "
                                                     "privileges)"))
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
    if "/" not in program:
        path = env.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(program, path=path)
        if found is None:
            return None
        program = found
    return os.path.normpath(os.path.join(cwd or os.getcwd(), program))


def _check_program(policy: PolicySettings, who: str, where: str, program: str, env: dict[str, str],
                   cwd: str | None) -> None:
    path = program_path(program, env, cwd)
    if path is None:
        raise PolicyError(f"{who}: {where} {program!r} is not on the PATH, so policy.commands cannot vouch for it")
    if not any(fnmatch.fnmatchcase(path, g) for g in policy.commands):
        allowed = ", ".join(policy.commands) or "empty: no command is allowed"
        raise PolicyError(f"{who}: {where} {path} is outside policy.commands ({allowed})")


def _check_ready(policy: PolicySettings, who: str, where: str, ready: Ready | None, values: dict[str, str],
                 env: dict[str, str]) -> None:
    if ready is not None and ready.command:
        _check_program(policy, who, f"{where}.command[0]", fill(ready.command[0], values), env, None)


def check(exp: Experiment, policy: PolicySettings, here: str) -> None:
    """Raise PolicyError unless every variant, and every probe command, is allowed by ``policy``."""
    for i, v in enumerate(exp.variants):
        rt = runtime_of(v)
        who = f"variant {v.name} (variants[{i}])"
        if rt not in policy.runtimes:
            allowed = ", ".join(policy.runtimes) or "empty: no runtime is allowed"
            raise PolicyError(f"{who}: runtime {rt} is not in policy.runtimes ({allowed})")
        declare = EXECUTES.get(rt)
        if declare is None:
            raise PolicyError(f"{who}: runtime {rt} does not declare what it executes, so no policy can allow it")
        for version, role in _fillings(exp):
            values = _values(exp, v, here, version, role)
            _check_variant(policy, who, declare(v, values))
        # The probe in effect for this variant; it runs with the agent's environment, not the variant's.
        where = f"variants[{i}].ready" if v.ready is not None else "ready"
        _check_ready(policy, who, where, v.ready or exp.ready, values, {})
    _check_phase_commands(exp, policy, here)


def _check_variant(policy: PolicySettings, who: str, ex: Executes) -> None:
    for where, why in ex.refused:
        raise PolicyError(f"{who}: {where}: policy refuses it: it {why}")
    for key in ex.env:
        if key.startswith("LD_"):
            raise PolicyError(f"{who}: env {key}: policy refuses LD_* variables (they load code that "
                              f"policy.commands never saw)")
    for where, program in ex.programs:
        _check_program(policy, who, where, program, ex.env, ex.cwd)
    for where, image in ex.images:
        if not any(fnmatch.fnmatchcase(image, g) for g in policy.images):
            allowed = ", ".join(policy.images) or "empty: no image is allowed"
            raise PolicyError(f"{who}: {where} {image} is outside policy.images ({allowed})")


def _check_phase_commands(exp: Experiment, policy: PolicySettings, here: str) -> None:
    """Phases that run commands of their own (benchmark, a stack's up/down and probes) are programs too."""
    values = {"here": here, "port": "0", "name": "runlab-x", "run_dir": tempfile.gettempdir(), "variant": "x",
              "version": "v1", "role": "server", "peer": "127.0.0.1:0"}
    if exp.benchmark is not None:
        _check_program(policy, "benchmark", "benchmark.command[0]", fill(exp.benchmark.command[0], values), {}, None)
    if exp.stack is not None:
        for i, s in enumerate(exp.stack.stacks):
            who = f"stack {s.name} (stack.stacks[{i}])"
            for key, cmd in (("up", s.up), ("down", s.down)):
                if cmd:
                    _check_program(policy, who, f"{key}[0]", fill(cmd[0], values), {}, None)
            for svc, ready in s.probes.items():
                _check_ready(policy, who, f"probes.{svc}", ready, values, {})
