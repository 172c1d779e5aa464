"""``runtime: kubernetes`` — a manifest applied with kubectl (K3s, kind, any cluster the kubeconfig names).

Start = ``kubectl apply -f MANIFEST`` (the manifest with ``{port}``, ``{name}``…
filled, and ``runtimeClassName`` set when ``runtime_class`` is given, written to
the start's run directory); the clock runs from issuing it, and the cold start
ends with the first success of the experiment's own probe — never with the
kubelet's readiness, whose period would quantise the figure. ``rollout:``
resources get ``kubectl rollout status`` in the background as a check (a
failed rollout fails the start), not as a timer. Memory = the processes of the
selected pods' cgroups on this node (``selector:``; pod UIDs from kubectl).
Stop = ``kubectl delete -f MANIFEST --wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agent.aio import within
from agent.runtimes.base import LIVE, Instance, Runtime, RuntimeUnavailable, StartContext, read_client, spawn
from agent.runtimes.container import _run
from runlab.experiment import PLACEHOLDERS, KubernetesVariant, fill
from runlab.results import Size

POD_KINDS_WITH_TEMPLATE = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def fill_text(text: str, values: dict[str, str]) -> str:
    """Replace only the known ``{placeholder}`` names: YAML flow mappings keep their braces."""
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    return text


def set_runtime_class(docs: list[Any], runtime_class: str) -> list[Any]:
    """Set ``runtimeClassName`` in every Pod spec and pod template of the manifest's documents."""
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind")
        spec = doc.get("spec") or {}
        if kind == "Pod":
            spec["runtimeClassName"] = runtime_class
        elif kind in POD_KINDS_WITH_TEMPLATE:
            spec.setdefault("template", {}).setdefault("spec", {})["runtimeClassName"] = runtime_class
        elif kind == "CronJob":
            (spec.setdefault("jobTemplate", {}).setdefault("spec", {}).setdefault("template", {})
             .setdefault("spec", {}))["runtimeClassName"] = runtime_class
        doc["spec"] = spec
    return docs


def render_manifest(text: str, values: dict[str, str], runtime_class: str | None) -> str:
    """The manifest as applied for one start."""
    text = fill_text(text, values)
    if runtime_class is None:
        return text
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    return str(yaml.safe_dump_all(set_runtime_class(docs, runtime_class), sort_keys=False))


def pod_cgroup_pids(uids: list[str], root: str = "/sys/fs/cgroup") -> list[int]:
    """PIDs in the cgroups of the pods with these UIDs (cgroupfs "pod<uid>" or systemd "pod<uid_with_>.slice")."""
    wanted = {u for uid in uids for u in (f"pod{uid}", f"pod{uid.replace('-', '_')}")}
    pids: list[int] = []
    seen: set[Path] = set()
    for procs in Path(root).rglob("cgroup.procs"):
        if not any(part.removesuffix(".slice").split("-")[-1] in wanted or part in wanted
                   for part in procs.parent.parts):
            continue
        if procs.parent in seen:
            continue
        seen.add(procs.parent)
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split() if p.isdigit() and int(p) not in pids]
    return pids


class KubernetesInstance(Instance):
    def __init__(self, runtime: KubernetesRuntime, client: asyncio.subprocess.Process, manifest: Path,
                 values: dict[str, str]) -> None:
        super().__init__()
        self.rt, self.client, self.manifest, self.values = runtime, client, manifest, values
        self.text = manifest.read_text()
        self.failed: str | None = None
        self._applied = asyncio.create_task(read_client(self.client, self.output))
        self._rollout = asyncio.create_task(self._check_rollout())
        self._stopped = False
        LIVE.add(self)

    async def _check_rollout(self) -> None:
        await self._applied
        if self.client.returncode:
            return
        for res in (fill(r, self.values) for r in self.rt.spec.rollout):
            timeout = f"--timeout={int(float(self.rt.experiment.ready.timeout))}s"
            code, out = await _run([*self.rt.base, "rollout", "status", res, timeout], 3600)
            if code != 0:
                self.failed = f"rollout status {res}: {out[-300:]}"
                self.output.add(f"runlab: {self.failed}")
                return

    def exit_code(self) -> int | None:
        code = self.client.returncode
        return code if code else (-1 if self.failed else None)

    async def pids(self) -> list[int]:
        await self._applied
        if not self.rt.spec.selector:
            return []
        code, out = await _run([*self.rt.base, "get", "pods", "-l", fill(self.rt.spec.selector, self.values), "-o",
                                "jsonpath={.items[*].metadata.uid}"], 30)
        return pod_cgroup_pids(out.split()) if code == 0 else []

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            with contextlib.suppress(TimeoutError):
                await within(asyncio.shield(self._applied), 120)
            self._rollout.cancel()
            t = int(float(self.rt.spec.delete_timeout))
            await _run([*self.rt.base, "delete", "-f", str(self.manifest), "--ignore-not-found", "--wait=true",
                        f"--timeout={t}s"], t + 30)
        finally:
            self._rollout.cancel()
        LIVE.discard(self)

    def kill_now(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.client.kill()
        # The manifest goes on stdin: by now the run directory holding the file may be gone (Ctrl-C).
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self.rt.base, "delete", "-f", "-", "--ignore-not-found", "--wait=false",
                            "--grace-period=0"], input=self.text.encode(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, check=False)


class KubernetesRuntime(Runtime):
    name = "kubernetes"
    spec: KubernetesVariant

    @property
    def base(self) -> list[str]:
        """kubectl with the connection flags every call shares."""
        s = self.spec
        argv = [s.kubectl.replace("{here}", self.here)]
        if s.kubeconfig:
            argv += ["--kubeconfig", s.kubeconfig.replace("{here}", self.here)]
        if s.context:
            argv += ["--context", s.context]
        if s.namespace:
            argv += ["--namespace", s.namespace]
        return argv

    def manifest_path(self) -> Path:
        return Path(self.spec.manifest.replace("{here}", self.here))

    def apply_argv(self, manifest: Path) -> list[str]:
        return [*self.base, "apply", "-f", str(manifest)]

    async def prepare(self) -> None:
        exe = self.base[0]
        if shutil.which(exe) is None:
            raise RuntimeUnavailable(f"variant {self.spec.name}: {exe}: not found")
        if not self.manifest_path().is_file():
            raise RuntimeUnavailable(f"variant {self.spec.name}: manifest {self.manifest_path()} not found")
        # Leftovers of an interrupted run: delete what the manifest names. A manifest with placeholders cannot be
        # deleted as it is (the last run's values are unknown); kill_now() deleted its resources on interruption.
        text = self.manifest_path().read_text()
        if not any("{" + k + "}" in text for k in PLACEHOLDERS):
            await _run([*self.base, "delete", "-f", str(self.manifest_path()), "--ignore-not-found", "--wait=true"],
                       int(float(self.spec.delete_timeout)) + 30)

    async def start(self, ctx: StartContext) -> Instance:
        rendered = ctx.run_dir / "manifest.yaml"
        rendered.write_text(render_manifest(self.manifest_path().read_text(), ctx.values(), self.spec.runtime_class))
        client = await spawn(self.apply_argv(rendered), env={k: v for k, v in self.spec.env.items()} or None)
        return KubernetesInstance(self, client, rendered, ctx.values())

    async def size(self) -> Size | None:
        return self.artifact_size()


RUNTIME = KubernetesRuntime
