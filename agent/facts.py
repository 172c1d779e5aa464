"""What a node is: hardware, OS, kernel and the runtimes it can launch (for the retained status)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
from pathlib import Path

import psutil

# Runtime CLIs runlab can drive, and the argument that prints their version.
RUNTIME_PROBES: dict[str, list[str]] = {
    "podman": ["--version"], "docker": ["--version"], "nerdctl": ["--version"], "runc": ["--version"],
    "crun": ["--version"], "qemu-system-x86_64": ["--version"], "qemu-system-aarch64": ["--version"],
    "firecracker": ["--version"], "cloud-hypervisor": ["--version"], "wasmtime": ["--version"],
    "wasmedge": ["--version"], "wasmer": ["--version"], "kubectl": ["version", "--client"],
    "k3s": ["--version"], "systemd-run": ["--version"], "node": ["--version"],
}


def cpu_model() -> str:
    """CPU model name (x86 'model name', Raspberry Pi 'Model' line, else the machine type)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def governor() -> str:
    with contextlib.suppress(OSError):
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    return ""


def static_facts() -> dict[str, object]:
    """Facts that need no subprocess: arch, CPU, cores, memory, OS, kernel."""
    return {
        "arch": platform.machine(), "cpu_model": cpu_model(), "cores": os.cpu_count() or 0,
        "memory_bytes": int(psutil.virtual_memory().total), "os": os_name(), "kernel": platform.release(),
    }


async def _version(exe: str, args: list[str]) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(exe, *args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT,
                                                    stdin=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        async with asyncio.timeout(3.0):
            out, _ = await proc.communicate()
    except TimeoutError:
        return "unknown version"
    finally:  # timed out, or the run was cancelled meanwhile: no probe outlives the agent
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    first = out.decode(errors="replace").strip().splitlines()
    return first[0][:120] if first else "unknown version"


async def detect_runtimes() -> dict[str, str]:
    """Runtime CLIs found on PATH, with the first line of their version output."""
    found = {name: path for name in RUNTIME_PROBES if (path := shutil.which(name))}
    versions = await asyncio.gather(*(_version(path, RUNTIME_PROBES[name]) for name, path in found.items()))
    return {name: v for name, v in zip(found, versions, strict=True) if v is not None}
