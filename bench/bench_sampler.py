"""The idle agent's host and self sampling: agent.procfs (now) against psutil (before), side by side.

Per sample, CPU time of ``HostSampler.sample()`` + ``SelfSampler.footprint()`` as the agent runs them at
1 Hz (per-CPU fields on), the two implementations alternating in one process; the psutil one is the
sampler as it was before agent/procfs.py (kept here, verbatim in what it reads). Then what importing each
costs a fresh interpreter that has already imported the agent's entry module: Python objects (tracemalloc;
PSS deltas are quantised by obmalloc's 1 MiB arenas), new modules, and C extensions mapped.

    .venv/bin/python bench/bench_sampler.py [--samples 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import tables  # noqa: E402

from agent.sampler import HostSampler, SelfSampler, _clean  # noqa: E402
from runlab.wire import FieldValue  # noqa: E402


class PsutilSampler:
    """HostSampler.sample() + SelfSampler.footprint() as they were with psutil (without PSS, which both read
    from smaps_rollup every 10 s)."""

    def __init__(self) -> None:
        psutil.cpu_percent(percpu=True)
        psutil.cpu_times_percent()
        self._last_t = time.monotonic()
        self._last_disk = psutil.disk_io_counters()
        self._last_net = psutil.net_io_counters()
        self.proc = psutil.Process()
        self._last_cpu = sum(self.proc.cpu_times()[:2])

    def sample(self) -> dict[str, FieldValue]:
        now = time.monotonic()
        dt = max(1e-6, now - self._last_t)
        self._last_t = now
        f: dict[str, FieldValue] = {}
        per = psutil.cpu_percent(percpu=True)
        f["cpu_percent"] = float(sum(per) / len(per)) if per else 0.0
        for i, p in enumerate(per):
            f[f"cpu{i}_percent"] = float(p)
        times = psutil.cpu_times_percent()
        for name in ("user", "system", "iowait", "steal"):
            if hasattr(times, name):
                f[f"cpu_{name}_percent"] = float(getattr(times, name))
        load1, load5, load15 = os.getloadavg()
        f.update(load1=float(load1), load5=float(load5), load15=float(load15))
        vm = psutil.virtual_memory()
        f.update(mem_total_bytes=int(vm.total), mem_available_bytes=int(vm.available), mem_used_bytes=int(vm.used),
                 mem_used_percent=float(vm.percent))
        sw = psutil.swap_memory()
        f.update(swap_total_bytes=int(sw.total), swap_used_bytes=int(sw.used), swap_used_percent=float(sw.percent))
        disk = psutil.disk_io_counters()
        if disk is not None:
            f.update(disk_read_bytes=int(disk.read_bytes), disk_write_bytes=int(disk.write_bytes))
            if self._last_disk is not None:
                f["disk_read_bytes_per_s"] = float(max(0, disk.read_bytes - self._last_disk.read_bytes) / dt)
                f["disk_write_bytes_per_s"] = float(max(0, disk.write_bytes - self._last_disk.write_bytes) / dt)
            self._last_disk = disk
        net = psutil.net_io_counters()
        if net is not None:
            f.update(net_recv_bytes=int(net.bytes_recv), net_sent_bytes=int(net.bytes_sent))
            self._last_net = net
        for chip, entries in psutil.sensors_temperatures().items():
            for i, e in enumerate(entries):
                if e.current is not None and math.isfinite(e.current):
                    f[f"temp_{_clean(f'{chip}_{e.label or i}')}_c"] = float(e.current)
        freq = psutil.cpu_freq()
        if freq is not None and freq.current and math.isfinite(freq.current):
            f["cpu_freq_mhz"] = float(freq.current)
        cpu = sum(self.proc.cpu_times()[:2])
        f["self_cpu_percent"] = 100.0 * (cpu - self._last_cpu) / dt
        self._last_cpu = cpu
        f["rss_bytes"] = int(self.proc.memory_info().rss)
        return f


class ProcfsSampler:
    def __init__(self) -> None:
        self.host = HostSampler(per_cpu=True)
        self.me = SelfSampler(pss_every=math.inf)

    def sample(self) -> dict[str, FieldValue]:
        return {**self.host.sample().fields, **self.me.footprint()}


def cpu_per_sample(samples: int) -> dict[str, dict[str, float]]:
    impls = {"procfs": ProcfsSampler(), "psutil": PsutilSampler()}
    times: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(samples):
        for name, impl in impls.items():
            t0 = time.thread_time()
            impl.sample()
            times[name].append(time.thread_time() - t0)
    out = {}
    for name, xs in times.items():
        med = statistics.median(xs)
        out[name] = {"median_s": med, "mean_s": statistics.fmean(xs), "cpu_percent_at_1hz": 100.0 * med}
    return out


IMPORT_COST = """
import json, sys, tracemalloc
def libraries():
    with open("/proc/self/maps") as fh:
        return {line.split()[-1] for line in fh if line.rstrip().endswith(".so") or ".so." in line}
import agent.cli  # what `runlab-agent serve` has loaded before the service
mods, libs = len(sys.modules), libraries()
tracemalloc.start()
import %s
objects = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
new_libs = libraries() - libs
print(json.dumps({"objects": objects, "modules": len(sys.modules) - mods, "libraries": len(new_libs),
                  "library_bytes": sum(__import__("os").path.getsize(p) for p in new_libs)}))
"""


def import_cost(module: str, rounds: int = 5) -> dict[str, float]:
    runs = [json.loads(subprocess.run([sys.executable, "-c", IMPORT_COST % module], cwd=REPO, check=True,
                                      capture_output=True, text=True).stdout) for _ in range(rounds)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def report(res: dict[str, Any]) -> str:
    c, i = res["cpu"], res["import"]
    rows = [
        ["CPU per sample (median)", f"{c['procfs']['median_s'] * 1e6:.0f} µs",
         f"{c['psutil']['median_s'] * 1e6:.0f} µs",
         tables.ratio(c["procfs"]["median_s"] / c["psutil"]["median_s"])],
        ["CPU at 1 Hz, % of one core", f"{c['procfs']['cpu_percent_at_1hz']:.3f} %",
         f"{c['psutil']['cpu_percent_at_1hz']:.3f} %", ""],
        ["import after agent.cli: Python objects (tracemalloc)", f"{i['procfs']['objects'] / 1e6:.2f} MB",
         f"{i['psutil']['objects'] / 1e6:.2f} MB", ""],
        ["import after agent.cli: new modules", i["procfs"]["modules"], i["psutil"]["modules"], ""],
        ["import after agent.cli: C extensions mapped (file size)",
         f"{i['procfs']['libraries']} ({i['procfs']['library_bytes'] / 1e6:.2f} MB)",
         f"{i['psutil']['libraries']} ({i['psutil']['library_bytes'] / 1e6:.2f} MB)", ""],
    ]
    return tables.table(["host + self sampling", "agent.procfs", "psutil", "ratio"], rows,
                        f"sampler cost, {res['samples']} samples each, alternating (venv, {tables.machine()})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()
    res = {"samples": args.samples, "cpu": cpu_per_sample(args.samples),
           "import": {"procfs": import_cost("agent.procfs"), "psutil": import_cost("psutil")}}
    return tables.finish(res, report, args.out)


if __name__ == "__main__":
    sys.exit(main())
