"""HTTP readiness: a GET answered with the expected status (and body, if asked)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from urllib.parse import urlsplit

from agent.runtimes.base import Instance
from runlab.experiment import Ready, fill


class HttpProbe:
    def __init__(self, url: str, expect_status: int, expect_body: str | None, timeout: float) -> None:
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n"
                        f"User-Agent: runlab-probe\r\n\r\n").encode()
        self.expect_status = expect_status
        self.body = re.compile(expect_body) if expect_body else None
        self.timeout = timeout
        self.last_error = ""

    async def _attempt(self) -> bool:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(self.request)
            status_line = await reader.readline()
            parts = status_line.split()
            if len(parts) < 2 or int(parts[1]) != self.expect_status:
                self.last_error = f"status line {status_line[:80]!r}"
                return False
            if self.body is None:
                return True
            data = await reader.read(65536)
            _, _, body = data.partition(b"\r\n\r\n")
            while not body and data:
                data = await reader.read(65536)
                body += data
            return bool(self.body.search(body.decode(errors="replace")))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def check(self) -> bool:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that lands as
            # the attempt completes, and a cancelled run would go on (seen with 1 ms probe intervals).
            async with asyncio.timeout(self.timeout):
                return await self._attempt()
        except (TimeoutError, OSError, ValueError, IndexError) as e:
            self.last_error = type(e).__name__
            return False


def make(ready: Ready, values: dict[str, str], instance: Instance) -> HttpProbe:
    assert ready.http is not None
    return HttpProbe(fill(ready.http, values), ready.expect_status, ready.expect_body, float(ready.probe_timeout))
