"""``runtime: container`` — an OCI image through a CLI engine (podman, docker, nerdctl).

Start = ``ENGINE [engine_args] run -d --name NAME [run_args] IMAGE [command]``;
the clock runs from issuing that command. Memory = the container's processes
plus the engine's per-container helpers (podman's conmon, containerd's shim),
found with ``inspect`` (conmon double-forks out of the client's tree), and the
container's own cgroup. Stop = ``rm -f`` by name — never by signalling the
client, which races (RUNTIMES.md: 2 in 10 left the container running).

``oci_runtime`` picks the OCI runtime (the "runtime class": kata, runsc, runc…):
podman takes it as a global ``--runtime`` (so inspect and rm see the same
runtime), docker and nerdctl as ``run --runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess

import psutil

from agent.aio import within
from agent.runtimes.base import LIVE, Instance, Runtime, RuntimeUnavailable, StartContext, read_client, spawn
from runlab.experiment import ContainerVariant, fill
from runlab.results import Size


async def _run(argv: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """(exit code, output) of a helper command (engine, systemctl, kubectl, a deploy or cold step); a program that
    cannot be started is exit 127 with the reason, never an exception (the pre-flight names it before the run)."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except OSError as e:
        return 126, f"{argv[0]}: cannot start: {e.strerror}"
    try:
        out, _ = await within(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{argv[0]} {argv[1] if len(argv) > 1 else ''}: timed out after {timeout:g}s"
    except asyncio.CancelledError:  # e.g. a background `kubectl rollout status` when the instance stops
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await within(proc.wait(), 5)  # reap it, so that no transport outlives the loop
        raise
    return proc.returncode or 0, out.decode(errors="replace").strip()


class ContainerInstance(Instance):
    def __init__(self, client: asyncio.subprocess.Process, base: list[str], name: str, stop_timeout: int) -> None:
        super().__init__()
        self.client, self.base, self.name, self.stop_timeout = client, base, name, stop_timeout
        self._client_done = asyncio.create_task(read_client(self.client, self.output))
        self._stopped = False
        LIVE.add(self)

    def exit_code(self) -> int | None:
        code = self.client.returncode
        return code if code else None  # a detached `run` exits 0 once the container started

    async def pids(self) -> list[int]:
        await self._client_done
        fmt = "{{.State.Pid}} {{.State.ConmonPid}}" if self.base[0].endswith("podman") else "{{.State.Pid}}"
        code, out = await _run([*self.base, "inspect", "--format", fmt, self.name], 30)
        if code != 0:
            return []
        pids = [int(p) for p in out.split() if p.isdigit() and int(p) > 0]
        if pids and len(pids) == 1:  # docker/nerdctl: the shim is the container init's parent
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(pids[0]).parent()
                if parent is not None and "shim" in parent.name():
                    pids.append(parent.pid)
        return pids

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            await within(asyncio.shield(self._client_done), 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.client.kill()
        await _run([*self.base, "rm", "-f", "-t", str(self.stop_timeout), self.name], 60)
        # Only now: a stop interrupted above (Ctrl-C) leaves the instance in LIVE for kill_all_now().
        LIVE.discard(self)

    def kill_now(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.client.kill()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self.base, "rm", "-f", "-t", "0", self.name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, check=False)


class ContainerRuntime(Runtime):
    name = "container"
    spec: ContainerVariant

    @property
    def base(self) -> list[str]:
        base = [self.spec.engine, *(a.replace("{here}", self.here) for a in self.spec.engine_args)]
        if self.spec.oci_runtime and self.spec.engine == "podman":
            base += ["--runtime", self.spec.oci_runtime]
        return base

    def name_prefix(self) -> str:
        return f"runlab-{self.experiment.name}-"

    async def prepare(self) -> None:
        if shutil.which(self.spec.engine) is None:
            raise RuntimeUnavailable(f"variant {self.spec.name}: {self.spec.engine} is not installed")
        code, out = await _run([*self.base, "image", "inspect", "--format", "{{.Id}}", self.spec.image], 60)
        if code != 0:  # the engine's own words: a daemon that is down, an unknown runtime, an image not there
            raise RuntimeUnavailable(f"variant {self.spec.name}: {' '.join(self.base)} image inspect "
                                     f"{self.spec.image} failed: {out[-300:]}")
        await self.remove_leftovers()

    async def remove_leftovers(self) -> None:
        code, out = await _run([*self.base, "ps", "-a", "--format", "{{.Names}}"], 60)
        if code != 0:
            return
        for name in out.split():
            if name.startswith(self.name_prefix()):
                await _run([*self.base, "rm", "-f", "-t", "0", name], 60)

    def run_argv(self, ctx: StartContext) -> list[str]:
        """The `run` command line for one start."""
        v = ctx.values()
        argv = [*self.base, "run", "-d", "--name", ctx.name]
        if self.spec.oci_runtime and self.spec.engine != "podman":
            argv += ["--runtime", self.spec.oci_runtime]
        for k, val in self.spec.env.items():
            argv += ["-e", f"{k}={fill(val, v)}"]
        argv += [fill(a, v) for a in self.spec.run_args]
        return [*argv, self.spec.image, *(fill(a, v) for a in self.spec.command)]

    async def start(self, ctx: StartContext) -> Instance:
        client = await spawn(self.run_argv(ctx))
        return ContainerInstance(client, self.base, ctx.name, self.spec.stop_timeout)

    async def size(self) -> Size | None:
        if self.spec.artifact:
            return self.artifact_size()
        code, out = await _run([*self.base, "image", "inspect", "--format", "{{.Size}}", self.spec.image], 60)
        if code != 0 or not out.strip().isdigit():
            return None
        return Size(bytes=int(out.strip()), what=f"image {self.spec.image} (uncompressed, as {self.spec.engine} "
                                                 f"reports it)")


RUNTIME = ContainerRuntime
