"""TCP readiness: HOST:PORT accepts a connection (note: a VMM's port forward may accept before the guest is up)."""

from __future__ import annotations

import asyncio
import contextlib

from agent.runtimes.base import Instance
from runlab.experiment import Ready, fill


class TcpProbe:
    def __init__(self, target: str, timeout: float) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port, self.timeout = host, int(port), timeout

    async def check(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):  # not wait_for: see http.py
                _, writer = await asyncio.open_connection(self.host, self.port)
        except (TimeoutError, OSError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


def make(ready: Ready, values: dict[str, str], instance: Instance) -> TcpProbe:
    assert ready.tcp is not None
    return TcpProbe(fill(ready.tcp, values), float(ready.probe_timeout))
