"""Log readiness: a line of the workload's output (stdout/stderr, a VM's serial console) matches a regex.

Event-driven: the probe is woken by each new line instead of polling.
"""

from __future__ import annotations

import re

from agent.runtimes.base import Instance
from runlab.experiment import Ready, fill


class LogProbe:
    def __init__(self, pattern: str, instance: Instance) -> None:
        self.pattern = re.compile(pattern)
        self.output = instance.output
        self._seen = 0

    async def check(self) -> bool:
        lines, self._seen = self.output.since(self._seen)
        return any(self.pattern.search(line) for line in lines)

    async def wait(self, timeout: float) -> None:
        await self.output.wait_new(self._seen, timeout)


def make(ready: Ready, values: dict[str, str], instance: Instance) -> LogProbe:
    assert ready.log is not None
    return LogProbe(fill(ready.log, values), instance)
