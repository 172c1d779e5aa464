"""The one small interface every runtime adapter implements, and the subprocess plumbing most share.

A ``Runtime`` is made from a variant spec; ``start`` issues the start and
returns an ``Instance`` at once (readiness is the engine's business); an
``Instance`` names the processes and cgroup the runtime added (for memory),
keeps the workload's output (for log probes and error messages) and always
stops cleanly. Every live instance is tracked so that a cancelled run can
stop whatever is left, even from a signal handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from runlab.experiment import Experiment, ProcessVariant, SystemdVariant, Variant, VmVariant, WasmVariant, fill
from runlab.results import Size
from runlab.wire import FieldValue

KEEP_LINES = 4000


class RuntimeUnavailable(Exception):
    """A runtime cannot be used here (missing binary, image, permission): the message says which."""


class OutputLines:
    """A workload's output lines, bounded, with a wake-up for readers waiting on new lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.dropped = 0
        self._new = asyncio.Event()

    def add(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > KEEP_LINES:
            cut = KEEP_LINES // 2
            del self.lines[:cut]
            self.dropped += cut
        self._new.set()

    def since(self, seen: int) -> tuple[list[str], int]:
        """Lines after absolute line number ``seen``, and the new absolute count."""
        start = max(0, seen - self.dropped)
        return self.lines[start:], self.dropped + len(self.lines)

    async def wait_new(self, seen: int, timeout: float) -> None:
        if self.dropped + len(self.lines) > seen:
            return
        self._new.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._new.wait()


@dataclass
class StartContext:
    port: int
    name: str
    run_dir: Path
    variant: str
    here: str = "."
    extra: dict[str, str] = field(default_factory=dict)  # phase placeholders: version, role, peer

    def values(self) -> dict[str, str]:
        return {"version": "", "role": "server", "peer": "", **self.extra, "port": str(self.port),
                "name": self.name, "run_dir": str(self.run_dir), "variant": self.variant, "here": self.here}


class Instance(ABC):
    """One started workload."""

    def __init__(self) -> None:
        self.output = OutputLines()

    @abstractmethod
    async def pids(self) -> list[int]:
        """Every process the runtime added for this workload (runtime daemons excluded)."""

    @abstractmethod
    def exit_code(self) -> int | None:
        """The code if the workload (or its launcher) already failed, else None."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop and reap everything this instance started. Idempotent."""

    @abstractmethod
    def kill_now(self) -> None:
        """Synchronous last resort (signal handlers, interpreter exit)."""

    def sample_fields(self) -> dict[str, FieldValue]:
        """Extra fields for this start's sample, learnt in-band (a serverless function saying it was cold)."""
        return {}

    def tail(self, n: int = 5) -> str:
        lines = [ln for ln in self.output.lines[-n:] if ln.strip()]
        return (": " + " | ".join(lines))[:600] if lines else ""


LIVE: set[Instance] = set()


def kill_all_now() -> None:
    """Kill every instance still alive (used when a run is interrupted)."""
    for inst in list(LIVE):
        with contextlib.suppress(Exception):
            inst.kill_now()


class Runtime(ABC):
    """A runtime adapter, made from one variant of an experiment."""

    name: ClassVar[str]

    def __init__(self, spec: Variant, experiment: Experiment, here: str = ".") -> None:
        self.spec = spec
        self.experiment = experiment
        self.here = here  # fills {here} where a path is needed before any start

    async def prepare(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Check that the runtime can work here; remove leftovers of earlier runs."""

    async def before_start(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Untimed work right before every start (a serverless function is made cold here)."""

    @abstractmethod
    async def start(self, ctx: StartContext) -> Instance:
        """Issue the start and return at once."""

    async def size(self) -> Size | None:
        """The artifact's size: ``artifact:`` when given, else what the runtime knows."""
        return self.artifact_size()

    def artifact_size(self) -> Size | None:
        """Sum of the ``artifact:`` path(s), or None when not given or missing."""
        art = self.spec.artifact
        return self.files_size([art] if isinstance(art, str) else art or [], "artifact")

    def files_size(self, paths: list[str], what: str) -> Size | None:
        """Total size of files or directories named in the spec (``{here}`` filled); None if any is missing."""
        sizes = [file_size(p.replace("{here}", self.here), what) for p in paths]
        if not sizes or any(s is None for s in sizes):
            return None
        return Size(bytes=sum(s.bytes for s in sizes if s), what=" + ".join(s.what for s in sizes if s))

    def file_size(self, path: str, what: str) -> Size | None:
        """Size of a file or directory named in the spec (``{here}`` filled)."""
        return file_size(path.replace("{here}", self.here), what)


def file_size(path: str, what: str) -> Size | None:
    p = Path(path)
    if not p.exists():
        resolved = shutil.which(path)
        if resolved is None:
            return None
        p = Path(resolved)
    total = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return Size(bytes=total, what=f"{what} {p}")


async def _pump(stream: asyncio.StreamReader | None, out: OutputLines) -> None:
    if stream is None:
        return
    while True:
        line = await stream.readline()
        if not line:
            return
        out.add(line.decode(errors="replace").rstrip("\r\n"))


async def read_client(proc: asyncio.subprocess.Process, out: OutputLines) -> None:
    """Copy an engine client's output (podman run -d, systemd-run, kubectl apply) into ``out``, then reap it."""
    await _pump(proc.stdout, out)
    await proc.wait()


class ProcessInstance(Instance):
    """A command started in its own session (process group); stop = SIGTERM the group, then SIGKILL."""

    def __init__(self, proc: asyncio.subprocess.Process, stop_grace: float = 5.0) -> None:
        super().__init__()
        self.proc = proc
        self.stop_grace = stop_grace
        self._pump = asyncio.create_task(_pump(proc.stdout, self.output))
        self._stopped = False
        LIVE.add(self)

    async def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc.returncode is None else []

    def exit_code(self) -> int | None:
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.proc.returncode is None:
                self._signal_group(signal.SIGTERM)
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that lands
                # as the wait ends, and a cancelled run then went on to "finished" (seen in a CI run).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.stop_grace):
                        await self.proc.wait()
            # Children that outlived the leader (or ignored SIGTERM) go too.
            self._signal_group(signal.SIGKILL)
            if self.proc.returncode is None:
                await self.proc.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._pump
        finally:
            self._pump.cancel()
        # Only now: a stop interrupted above (Ctrl-C) leaves the instance in LIVE for kill_all_now().
        LIVE.discard(self)

    def kill_now(self) -> None:
        self._signal_group(signal.SIGKILL)


async def spawn(argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None
                ) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new session with stdout+stderr captured; RuntimeUnavailable when it cannot start."""
    full_env = {**os.environ, **env} if env else None
    try:
        return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, env=full_env, cwd=cwd,
                                                    start_new_session=True)
    except FileNotFoundError:
        raise RuntimeUnavailable(f"{argv[0]}: command not found") from None
    except PermissionError:
        raise RuntimeUnavailable(f"{argv[0]}: permission denied") from None
    except OSError as e:
        raise RuntimeUnavailable(f"{argv[0]}: cannot start: {e.strerror}") from None


class CommandRuntime(Runtime):
    """Runtimes whose workload is one command line (process, vm, wasm)."""

    spec: ProcessVariant | VmVariant | WasmVariant | SystemdVariant

    def argv(self, ctx: StartContext) -> list[str]:
        command: list[str] = self.spec.command
        return [fill(a, ctx.values()) for a in command]

    async def prepare(self) -> None:
        command: list[str] = self.spec.command
        values = {"here": self.here, "port": "0", "name": "x", "run_dir": "/", "variant": "x"}
        exe = fill(command[0], values)
        cwd: str | None = getattr(self.spec, "cwd", None)
        if "/" in exe and not os.path.isabs(exe) and cwd:
            exe = os.path.join(fill(cwd, values), exe)  # a relative program runs in the variant's cwd
        if shutil.which(exe) is None and not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise RuntimeUnavailable(f"variant {self.spec.name}: {exe}: not found or not executable")

    async def start(self, ctx: StartContext) -> Instance:
        env = {k: fill(v, ctx.values()) for k, v in self.spec.env.items()}
        cwd: str | None = getattr(self.spec, "cwd", None)
        proc = await spawn(self.argv(ctx), env=env or None, cwd=fill(cwd, ctx.values()) if cwd else None)
        return ProcessInstance(proc)

