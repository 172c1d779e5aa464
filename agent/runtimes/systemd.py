"""``runtime: systemd`` — the workload as a transient unit: "a static binary started by systemd".

Start = ``systemd-run --unit=NAME --collect --property=Type=exec … -- COMMAND``;
the clock runs from issuing it (with ``Type=exec`` systemd-run returns once the
binary was exec'd, so the manager's own work is inside the measurement, as it
is for a service at boot). Memory = every process of the unit's cgroup (read
from ``ControlGroup``), and the engine reads that cgroup's memory.current /
memory.peak (or the v1 memory controller) like a container's. Output goes to a
file in the start's run directory, which is followed for log probes. Stop =
``systemctl stop``; ``--collect`` lets the manager forget a failed unit too.

Needs a running systemd manager (PID 1, or the user's with ``user: true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

from agent.aio import within
from agent.runtimes.base import LIVE, Instance, Runtime, RuntimeUnavailable, StartContext, read_client, spawn
from agent.runtimes.container import _run
from runlab.experiment import SystemdVariant, fill
from runlab.results import Size

CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")
WATCH_PERIOD = 1.0  # seconds between checks that the unit is still active (a crash fails the start at once)


def unit_pids(control_group: str, roots: tuple[str, ...] = CGROUP_ROOTS) -> list[int]:
    """Every PID in a unit's cgroup (and its sub-cgroups), from the first hierarchy that has it."""
    for root in roots:
        base = Path(root + control_group)
        if not (base / "cgroup.procs").is_file():
            continue
        pids: list[int] = []
        for procs in [base / "cgroup.procs", *sorted(base.rglob("*/cgroup.procs"))]:
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split() if p.isdigit()]
        return pids
    return []


class SystemdInstance(Instance):
    def __init__(self, client: asyncio.subprocess.Process, systemctl: list[str], unit: str, log: Path) -> None:
        super().__init__()
        self.client, self.systemctl, self.unit, self.log = client, systemctl, unit, log
        self.failed: str | None = None
        self._client_done = asyncio.create_task(read_client(self.client, self.output))
        self._follow = asyncio.create_task(self._follow_log())
        self._watch = asyncio.create_task(self._watch_unit())
        self._stopped = False
        LIVE.add(self)

    async def _follow_log(self) -> None:
        """The unit's stdout/stderr file, line by line, as it grows."""
        pos, partial = 0, b""
        while True:
            with contextlib.suppress(OSError):
                with self.log.open("rb") as f:
                    f.seek(pos)
                    data = f.read()
                pos += len(data)
                *lines, partial = (partial + data).split(b"\n")
                for line in lines:
                    self.output.add(line.decode(errors="replace").rstrip("\r"))
            await asyncio.sleep(0.005)

    async def _watch_unit(self) -> None:
        await self._client_done
        while not self._stopped:
            code, out = await _run([*self.systemctl, "show", "--property=LoadState,ActiveState,Result,ExecMainStatus",
                                    self.unit], 30)
            props = dict(line.partition("=")[::2] for line in out.splitlines())
            if code == 0 and props.get("LoadState") == "not-found":  # exited, and --collect removed it
                self.failed = f"unit {self.unit} exited (and was collected)"
            elif code == 0 and props.get("ActiveState") in ("failed", "inactive"):
                self.failed = (f"unit {self.unit} is {props['ActiveState']} (result {props.get('Result', '?')}, "
                               f"exit status {props.get('ExecMainStatus', '?')})")
            if self.failed:
                self.output.add(f"runlab: {self.failed}")
                return
            await asyncio.sleep(WATCH_PERIOD)

    def exit_code(self) -> int | None:
        code = self.client.returncode
        if code:
            return code  # systemd-run itself failed (bad property, unit name in use, no manager)
        return -1 if self.failed else None

    async def pids(self) -> list[int]:
        await self._client_done
        code, out = await _run([*self.systemctl, "show", "--property=MainPID,ControlGroup", self.unit], 30)
        if code != 0:
            return []
        props = dict(line.partition("=")[::2] for line in out.splitlines())
        main = int(props.get("MainPID", "0") or 0)
        pids = unit_pids(props["ControlGroup"]) if props.get("ControlGroup") else []
        return [main, *(p for p in pids if p != main)] if main > 0 else pids

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            with contextlib.suppress(TimeoutError):
                await within(asyncio.shield(self._client_done), 60)
            await _run([*self.systemctl, "stop", self.unit], 90)
            await _run([*self.systemctl, "reset-failed", self.unit], 30)  # --collect covers most; a no-op then
        finally:
            for task in (self._follow, self._watch):
                task.cancel()
        # Only now: a stop interrupted above (Ctrl-C) leaves the instance in LIVE for kill_all_now().
        LIVE.discard(self)

    def kill_now(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.client.kill()
        for args in (["kill", "--signal=SIGKILL", self.unit], ["stop", self.unit]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([*self.systemctl, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=30, check=False)


class SystemdRuntime(Runtime):
    name = "systemd"
    spec: SystemdVariant

    @property
    def systemctl(self) -> list[str]:
        return [self.spec.systemctl, *(["--user"] if self.spec.user else [])]

    def name_prefix(self) -> str:
        return f"runlab-{self.experiment.name}-"

    def run_argv(self, ctx: StartContext) -> list[str]:
        """The systemd-run command line for one start (unit = the start's unique name)."""
        v = ctx.values()
        log = ctx.run_dir / "output.log"
        argv = [self.spec.systemd_run, *(["--user"] if self.spec.user else []), f"--unit={ctx.name}",
                "--collect", "--quiet", f"--property=Type={self.spec.service_type}",
                f"--property=StandardOutput=append:{log}", "--property=StandardError=inherit"]
        argv += [f"--property={k}={fill(val, v)}" for k, val in self.spec.properties.items()]
        argv += [f"--setenv={k}={fill(val, v)}" for k, val in self.spec.env.items()]
        if self.spec.cwd:
            argv.append(f"--working-directory={fill(self.spec.cwd, v)}")
        return [*argv, "--", *(fill(a, v) for a in self.spec.command)]

    async def prepare(self) -> None:
        for exe in (self.spec.systemd_run, self.spec.systemctl):
            if shutil.which(exe) is None:
                raise RuntimeUnavailable(f"variant {self.spec.name}: {exe} is not installed")
        code, out = await _run([*self.systemctl, "show", "--property=Version"], 30)
        if code != 0:
            raise RuntimeUnavailable(f"variant {self.spec.name}: no systemd manager to talk to here "
                                     f"({out.splitlines()[0] if out else f'systemctl exited {code}'})")
        await self.remove_leftovers()

    async def remove_leftovers(self) -> None:
        code, out = await _run([*self.systemctl, "list-units", "--all", "--plain", "--no-legend", "--full",
                                f"{self.name_prefix()}*"], 30)
        if code != 0:
            return
        for line in out.splitlines():
            unit = line.split()[0] if line.split() else ""
            if unit.startswith(self.name_prefix()):
                await _run([*self.systemctl, "stop", unit], 90)
                await _run([*self.systemctl, "reset-failed", unit], 30)

    async def start(self, ctx: StartContext) -> Instance:
        client = await spawn(self.run_argv(ctx))
        return SystemdInstance(client, self.systemctl, f"{ctx.name}.service", ctx.run_dir / "output.log")

    async def size(self) -> Size | None:
        if self.spec.artifact:
            return self.artifact_size()
        return self.file_size(self.spec.command[0], "file")


RUNTIME = SystemdRuntime
