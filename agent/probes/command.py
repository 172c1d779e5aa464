"""Command readiness: a command (e.g. a client of the workload's protocol) exits 0."""

from __future__ import annotations

import asyncio
import contextlib

from agent.runtimes.base import Instance
from runlab.experiment import Ready, fill


class CommandProbe:
    def __init__(self, argv: list[str], timeout: float) -> None:
        self.argv, self.timeout = argv, timeout

    async def check(self) -> bool:
        try:
            proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
        except OSError:
            return False
        try:
            async with asyncio.timeout(self.timeout):  # not wait_for: see http.py
                return await proc.wait() == 0
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return False


def make(ready: Ready, values: dict[str, str], instance: Instance) -> CommandProbe:
    assert ready.command is not None
    # An attempt may take longer than a fast poll interval; give it at least a second.
    return CommandProbe([fill(a, values) for a in ready.command], max(1.0, float(ready.probe_timeout)))
