"""``runtime: process`` — a program started directly (static binary, interpreter + script)."""

from __future__ import annotations

from agent.runtimes.base import CommandRuntime
from runlab.results import Size


class ProcessRuntime(CommandRuntime):
    name = "process"

    async def size(self) -> Size | None:
        if self.spec.artifact:
            return self.artifact_size()
        return self.file_size(self.spec.command[0], "file")


RUNTIME = ProcessRuntime
