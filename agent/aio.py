"""``within``: ``asyncio.wait_for`` without its Python 3.11 flaw.

On 3.11 ``wait_for`` can swallow a cancellation that lands as the awaited thing completes: the caller gets the
result and carries on, and a cancelled run went on to "finished" (seen in CI). ``asyncio.timeout`` (3.11+) does
not lose it, and 3.12 rebuilt ``wait_for`` on it; this is that, for the floor we support.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """Await ``aw``; TimeoutError (and ``aw`` cancelled) after ``timeout`` seconds; None waits for ever."""
    async with asyncio.timeout(timeout):
        return await aw
