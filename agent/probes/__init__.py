"""Readiness probes: one module per kind (http, tcp, command, log, dns), found by the ``ready:`` key used.

A probe answers one question, quickly: is the workload ready now? The engine
polls it at a fixed interval from the client side and records the interval;
a probe that can be told (a log line) waits for the event instead.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import Protocol

from agent.runtimes.base import Instance
from runlab.experiment import Ready


class Probe(Protocol):
    async def check(self) -> bool:
        """One attempt, bounded by the probe timeout: True when ready."""
        ...


class NotReady(Exception):
    """Readiness was not reached: timeout, or the workload exited first."""


def make_probe(ready: Ready, values: dict[str, str], instance: Instance) -> Probe:
    """The probe for ``ready`` with placeholders filled for this start."""
    module = importlib.import_module(f"agent.probes.{ready.kind()}")
    probe: Probe = module.make(ready, values, instance)
    return probe


async def wait_ready(probe: Probe, instance: Instance, ready: Ready, t0_ns: int) -> int:
    """Poll ``probe`` every ``ready.interval`` from ``t0_ns``; return the monotonic ns of the first success."""
    interval = float(ready.interval)
    deadline = t0_ns + int(float(ready.timeout) * 1e9)
    waiter = getattr(probe, "wait", None)
    k = 0
    while True:
        if await probe.check():
            return time.monotonic_ns()
        code = instance.exit_code()
        if code is not None:
            raise NotReady(f"exited with code {code} before it was ready{instance.tail()}")
        now = time.monotonic_ns()
        if now > deadline:
            raise NotReady(f"not ready after {float(ready.timeout):g}s{instance.tail()}")
        if waiter is not None:  # event-driven probe: wake on new output, or every 50 ms to check for exit
            await waiter(0.05)
            continue
        k += 1
        next_at = t0_ns + int(k * interval * 1e9)
        if next_at < now:  # an attempt took longer than the interval: poll again at once
            k = int((now - t0_ns) / (interval * 1e9)) + 1
            next_at = t0_ns + int(k * interval * 1e9)
        await asyncio.sleep((next_at - now) / 1e9)
