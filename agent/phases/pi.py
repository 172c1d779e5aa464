"""Raspberry Pi care: the cool-down wait between samples, and the throttling flags every sample carries.

Both read sources that tests replace: the temperature is a callable, the throttled mask comes from the
firmware's sysfs file under a root directory (a fake tree in tests) or from ``vcgencmd get_throttled``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.sampler import PI_THROTTLED_PATH, max_temperature
from runlab.wire import FieldValue

THROTTLE_NOW_BITS = 0b1111  # under-voltage, freq capped, throttled, soft temp limit — right now
UNDER_VOLTAGE_BIT = 0b1
VCGENCMD_EVERY_S = 0.5  # vcgencmd is a process spawn: its answer is reused this long


async def cool_down(read_temp: Callable[[], float | None], below_c: float, max_wait: float,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, step: float = 1.0,
                    clock: Callable[[], float] = time.monotonic) -> tuple[float, float | None]:
    """Wait until ``read_temp()`` < ``below_c`` or ``max_wait`` passed; (seconds waited, last temperature).

    A machine without a sensor (None) does not wait: there is nothing to cool down to.
    """
    start = clock()
    temp = read_temp()
    while temp is not None and temp >= below_c and clock() - start < max_wait:
        await sleep(min(step, max(0.0, max_wait - (clock() - start))))
        temp = read_temp()
    return clock() - start, temp


def parse_vcgencmd(text: str) -> int | None:
    """``throttled=0x50005`` → 0x50005."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    return int(m.group(1), 0) if m else None


class PiCare:
    """Where the throttled mask and the temperature come from on this machine (sysfs first, then vcgencmd)."""

    def __init__(self, root: Path = Path("/"), temperature: Callable[[], float | None] = max_temperature,
                 vcgencmd: str | None = "vcgencmd") -> None:
        self.sysfs = root / PI_THROTTLED_PATH.relative_to("/")
        self.vcgencmd = shutil.which(vcgencmd) if vcgencmd and not self.sysfs.exists() else None
        self.temperature = temperature
        self._cached: tuple[float, int | None] = (-1e9, None)

    def mask(self) -> int | None:
        """The firmware's throttled bit mask now, or None where there is no Pi firmware."""
        try:
            return int(self.sysfs.read_text().strip(), 16)
        except (OSError, ValueError):
            pass
        if self.vcgencmd is None:
            return None
        at, value = self._cached
        if time.monotonic() - at < VCGENCMD_EVERY_S:
            return value
        try:
            out = subprocess.run([self.vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=2,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        value = parse_vcgencmd(out)
        self._cached = (time.monotonic(), value)
        return value

    def flags(self) -> dict[str, FieldValue]:
        """``throttled`` (any throttling bit set now), ``under_voltage`` and the mask; {} off a Pi."""
        m = self.mask()
        if m is None:
            return {}
        return {"throttled": bool(m & THROTTLE_NOW_BITS), "under_voltage": bool(m & UNDER_VOLTAGE_BIT),
                "throttled_mask": m}
