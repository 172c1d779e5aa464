"""Memory of what a runtime adds: PSS/USS/RSS of process trees, and the cgroup's own figures.

Summing RSS double-counts shared pages, so PSS (from /proc/PID/smaps_rollup) is
the headline figure; USS and RSS are recorded beside it. Where the workload has
its own cgroup (containers), its memory.current (v2) or memory.usage_in_bytes
(v1), split into anon and file, and its peak are read as well. Which figure a
number is, is always recorded with it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class TreeMemory:
    """Summed over every process: bytes."""

    pss: int = 0
    uss: int = 0
    rss: int = 0
    processes: int = 0


def smaps_rollup(pid: int) -> tuple[int, int, int] | None:
    """(rss, pss, uss) in bytes for one process, or None if it is gone or unreadable."""
    rss = pss = private = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss = int(rest.split()[0]) * 1024
                elif key == "Pss":
                    pss = int(rest.split()[0]) * 1024
                elif key in ("Private_Clean", "Private_Dirty"):
                    private += int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return rss, pss, private


def with_descendants(pids: list[int]) -> list[int]:
    """The given processes and all their descendants, each once."""
    out: dict[int, None] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out[pid] = None
            for c in p.children(recursive=True):
                out[c.pid] = None
        except psutil.Error:
            continue
    return list(out)


def tree_memory(pids: list[int]) -> TreeMemory:
    """PSS/USS/RSS summed over ``pids`` and their descendants."""
    total = TreeMemory()
    for pid in with_descendants(pids):
        m = smaps_rollup(pid)
        if m is None:
            continue
        total.rss += m[0]
        total.pss += m[1]
        total.uss += m[2]
        total.processes += 1
    return total


@dataclass
class CgroupMemory:
    current: int
    anon: int | None
    file: int | None
    peak: int | None
    path: str
    version: int


def memory_cgroup_of(pid: int) -> tuple[Path, int] | None:
    """The directory of ``pid``'s memory cgroup and the cgroup version (1 or 2)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = CGROUP_ROOT / "memory" / path.lstrip("/")
            if (d / "memory.usage_in_bytes").exists():
                return d, 1
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            for base in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
                d = base / path.lstrip("/")
                if (d / "memory.current").exists():
                    return d, 2
    return None


def _read_int(p: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(p.read_text().strip())
    return None


def _stat(p: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in p.read_text().splitlines():
            k, _, v = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[k] = int(v)
    return out


def cgroup_memory(directory: Path, version: int) -> CgroupMemory | None:
    """The cgroup's own memory figures, or None when unreadable."""
    if version == 2:
        current = _read_int(directory / "memory.current")
        if current is None:
            return None
        st = _stat(directory / "memory.stat")
        return CgroupMemory(current, st.get("anon"), st.get("file"), _read_int(directory / "memory.peak"),
                            str(directory), 2)
    current = _read_int(directory / "memory.usage_in_bytes")
    if current is None:
        return None
    st = _stat(directory / "memory.stat")
    return CgroupMemory(current, st.get("total_rss", st.get("rss")), st.get("total_cache", st.get("cache")),
                        _read_int(directory / "memory.max_usage_in_bytes"), str(directory), 1)


def own_cgroup(pid: int) -> tuple[Path, int] | None:
    """``pid``'s memory cgroup if it is not the agent's own (i.e. the workload has its own cgroup)."""
    theirs = memory_cgroup_of(pid)
    mine = memory_cgroup_of(psutil.Process().pid)
    if theirs is None or (mine is not None and theirs[0] == mine[0]):
        return None
    return theirs
