"""Platform overhead and density: the standing cost of a platform's daemons, at idle and with 1…N workloads.

The platform is what the experiment file names for a variant: process names (dockerd, containerd,
k3s-server…), cgroup directories, systemd units (read through their cgroup, ``system.slice/UNIT``) and
data directories. At every density level (``[0, 1, 2, 4]`` workloads of the variant running, started one
after another and left running) the phase reads, after settling: the platform's PSS/RSS (its processes,
never the workloads'), its cgroups' memory.current, its CPU time and disk bytes (/proc/PID/io) over
``window``; and the workloads' own PSS. The density figure is the least-squares slope of platform +
workload PSS over the workload count: memory per added workload. Data directories are measured once, at the
end, as disk usage (allocated blocks, hard links once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from agent.memory import CGROUP_ROOT, TreeMemory, cgroup_memory, smaps_rollup, with_descendants
from agent.probes import NotReady
from agent.runtimes.base import Instance, Runtime, RuntimeUnavailable
from runlab.experiment import Platform
from runlab.results import DensityLevel, Overhead

if TYPE_CHECKING:
    from agent.engine import Runner


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs; None with fewer than two distinct xs."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def cgroup_dirs(platform: Platform, root: Path = CGROUP_ROOT) -> list[Path]:
    """Existing cgroup directories of the platform: ``cgroups`` as given, ``units`` under system.slice."""
    wanted = [*platform.cgroups, *(f"system.slice/{u}" for u in platform.units)]
    out: list[Path] = []
    for w in wanted:
        rel = w[len(str(root)):].lstrip("/") if w.startswith(str(root)) else w.lstrip("/")
        for base in (root, root / "unified", root / "memory"):
            if (base / rel).is_dir():
                out.append(base / rel)
                break
    return out


def _procs_in(d: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    return []


def platform_pids(platform: Platform, exclude: set[int], root: Path = CGROUP_ROOT) -> list[int]:
    """Processes named in ``processes`` (comm or argv[0] basename) and those in the platform's cgroups."""
    names = set(platform.processes)
    found: set[int] = set()
    if names:
        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if p.info["name"] in names or (cmd and os.path.basename(cmd[0]) in names):
                found.add(p.pid)
    for d in cgroup_dirs(platform, root):
        found.update(_procs_in(d))
    found.discard(os.getpid())
    return sorted(found - exclude)


@dataclass
class _Counters:
    cpu: float
    read: int
    write: int


def _counters(pids: list[int]) -> dict[int, _Counters]:
    out: dict[int, _Counters] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error, AttributeError):
            p = psutil.Process(pid)
            t = p.cpu_times()
            try:
                io = p.io_counters()
                rd, wr = int(io.read_bytes), int(io.write_bytes)
            except (psutil.Error, AttributeError):
                rd = wr = 0
            out[pid] = _Counters(t.user + t.system, rd, wr)
    return out


def disk_usage(paths: list[str]) -> int:
    """Allocated bytes under ``paths`` (like ``du -s``: blocks, each hard-linked inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        for dirpath, dirs, files in os.walk(top):
            for n in [*dirs, *files]:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, n))
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
        with contextlib.suppress(OSError):
            total += os.lstat(top).st_blocks * 512
    return total


def _sum_memory(pids: set[int]) -> TreeMemory:
    total = TreeMemory()
    for pid in sorted(pids):
        m = smaps_rollup(pid)
        if m is not None:
            total.rss, total.pss, total.uss = total.rss + m[0], total.pss + m[1], total.uss + m[2]
            total.processes += 1
    return total


async def measure_level(platform: Platform, workloads: list[Instance], window: float) -> DensityLevel:
    """The platform's memory, CPU and disk over ``window`` and the workloads' PSS, right now."""
    wl: set[int] = set()
    for inst in workloads:
        wl.update(await inst.pids())
    wl = set(with_descendants(sorted(wl)))
    pids = platform_pids(platform, exclude=wl)
    before = _counters(pids)
    await asyncio.sleep(window)
    after = _counters(pids)
    common = [p for p in pids if p in before and p in after]
    cpu = sum(after[p].cpu - before[p].cpu for p in common)
    # the daemons and their children (a shim per container, say), never a workload's own processes
    mem = _sum_memory(set(with_descendants(common)) - wl)
    mem_wl = _sum_memory(wl)
    cg_total: int | None = None
    for d in cgroup_dirs(platform):
        m = cgroup_memory(d, 2 if (d / "memory.current").exists() else 1)
        if m is not None:
            cg_total = (cg_total or 0) + m.current
    return DensityLevel(workloads=len(workloads), platform_pss_bytes=mem.pss, platform_rss_bytes=mem.rss,
                        platform_processes=mem.processes, workloads_pss_bytes=mem_wl.pss,
                        workloads_processes=mem_wl.processes, cgroup_bytes=cg_total,
                        cpu_percent=100.0 * cpu / window if window > 0 else 0.0,
                        read_bytes=sum(max(0, after[p].read - before[p].read) for p in common),
                        write_bytes=sum(max(0, after[p].write - before[p].write) for p in common), window_s=window)


def _here(p: Platform, here: str) -> Platform:
    """``{here}`` filled in the platform's paths (data directories beside the experiment file)."""
    return Platform(processes=p.processes, units=p.units, cgroups=[c.replace("{here}", here) for c in p.cgroups],
                    data_dirs=[d.replace("{here}", here) for d in p.data_dirs])


async def run(runner: Runner, runtimes: dict[str, Runtime]) -> None:
    exp = runner.exp
    cfg = exp.overhead
    assert cfg is not None
    runner.progress.phase("platform overhead", len(cfg.density) * len(exp.variants))
    settle = float(cfg.settle if cfg.settle is not None else exp.settle)
    for v in exp.variants:
        platform = _here(cfg.platforms.get(v.name, Platform()), runner.here)
        running: list[Instance] = []
        levels: list[DensityLevel] = []
        await runner.prepare_host()
        try:
            for n in cfg.density:
                while len(running) < n:
                    inst, _ = await runner.start_ready(runtimes[v.name], v, runner.context(v))
                    running.append(inst)
                await asyncio.sleep(settle)
                lvl = await measure_level(platform, running, float(cfg.window))
                levels.append(lvl)
                runner.emit("overhead", v, {"workloads": n, "platform_pss_bytes": lvl.platform_pss_bytes,
                                            "workloads_pss_bytes": lvl.workloads_pss_bytes,
                                            "platform_processes": lvl.platform_processes,
                                            "cpu_percent": lvl.cpu_percent, "read_bytes": lvl.read_bytes,
                                            "write_bytes": lvl.write_bytes}, level=str(n))
                runner.progress.advance(f"{v.name} ×{n}: platform {lvl.platform_pss_bytes / 2**20:,.1f} MiB")
        except (NotReady, RuntimeUnavailable) as e:
            runner.results[v.name].error = runner.results[v.name].error or f"overhead: {e}"
        finally:
            await asyncio.gather(*(i.stop() for i in running), return_exceptions=True)
        data = await asyncio.to_thread(disk_usage, platform.data_dirs) if platform.data_dirs else None
        xs = [float(lv.workloads) for lv in levels]
        runner.results[v.name].overhead = Overhead(
            levels=levels, data_bytes=data, data_what=", ".join(platform.data_dirs),
            per_workload_bytes=slope(xs, [float(lv.total_bytes) for lv in levels]),
            platform_per_workload_bytes=slope(xs, [float(lv.platform_pss_bytes) for lv in levels]))
