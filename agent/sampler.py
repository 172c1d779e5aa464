"""Host sampling: the ``host`` measurement, one point per interval.

The figures are read from /proc and /sys by agent.procfs with psutil 7's Linux semantics, not through psutil:
importing psutil cost the idle agent ~1.1 MB of PSS (docs/packaging.md). Nothing the idle agent runs may
load psutil; workload measurement (agent/memory.py, agent/phases) still uses it.

Every field has one fixed type (an InfluxDB field keeps its first type forever):
counters and sizes are int, percentages, rates, temperatures and clocks are
float, flags are bool. Fields the machine cannot provide are left out, never
sent as 0 or NaN.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from agent import procfs
from runlab.wire import FieldValue, Sample

# Raspberry Pi firmware throttling bits (vcgencmd get_throttled), now and since boot.
PI_THROTTLED_PATH = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
PI_BITS = {0: "under_voltage", 1: "arm_freq_capped", 2: "throttled", 3: "soft_temp_limit"}


def read_pi_throttled(path: Path = PI_THROTTLED_PATH) -> int | None:
    """The firmware's throttled bit mask, or None where there is none."""
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def throttle_fields(mask: int) -> dict[str, FieldValue]:
    """Bit mask → ``under_voltage``/``throttled``… now and ``…_occurred`` since boot."""
    out: dict[str, FieldValue] = {"throttled_mask": mask}
    for bit, name in PI_BITS.items():
        out[name] = bool(mask & (1 << bit))
        out[f"{name}_occurred"] = bool(mask & (1 << (bit + 16)))
    return out


def _clean(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "sensor"


class HostSampler:
    """Produces ``host`` samples; rates are computed against the previous call."""

    def __init__(self, *, per_cpu: bool = True, root: str = "") -> None:
        self.per_cpu = per_cpu
        self.root = root  # the directory standing for / (tests)
        self._last_cpu = procfs.cpu_times(root)  # primes the deltas
        self._io = procfs.IoCounters(root)
        self._last_t = time.monotonic()
        self._last_disk = self._io.disk()
        self._last_net = self._io.net()
        self.has_pi_firmware = PI_THROTTLED_PATH.exists()

    def sample(self) -> Sample:
        ts = time.time_ns()
        now = time.monotonic()
        dt = max(1e-6, now - self._last_t)
        self._last_t = now
        f: dict[str, FieldValue] = {}
        (total0, per0), (total, per_times) = self._last_cpu, procfs.cpu_times(self.root)
        self._last_cpu = (total, per_times)
        per = [procfs.busy_percent(a, b) for a, b in zip(per0, per_times, strict=False)]
        f["cpu_percent"] = float(sum(per) / len(per)) if per else 0.0
        if self.per_cpu:
            for i, p in enumerate(per):
                f[f"cpu{i}_percent"] = float(p)
        times = procfs.times_percent(total0, total)
        for name in ("user", "system", "iowait", "steal"):
            if name in times:
                f[f"cpu_{name}_percent"] = float(times[name])
        load1, load5, load15 = os.getloadavg()
        f.update(load1=float(load1), load5=float(load5), load15=float(load15))
        mems = procfs.meminfo(self.root)
        total_b, available, used, percent = procfs.virtual_memory(mems, self.root)
        f.update(mem_total_bytes=int(total_b), mem_available_bytes=int(available), mem_used_bytes=int(used),
                 mem_used_percent=float(percent))
        sw = procfs.swap_memory(mems)
        if sw is not None:
            f.update(swap_total_bytes=int(sw[0]), swap_used_bytes=int(sw[1]), swap_used_percent=float(sw[2]))
        disk = self._io.disk()
        if disk is not None:
            f.update(disk_read_bytes=int(disk[0]), disk_write_bytes=int(disk[1]))
            if self._last_disk is not None:
                f["disk_read_bytes_per_s"] = float(max(0, disk[0] - self._last_disk[0]) / dt)
                f["disk_write_bytes_per_s"] = float(max(0, disk[1] - self._last_disk[1]) / dt)
            self._last_disk = disk
        net = self._io.net()
        if net is not None:
            f.update(net_recv_bytes=int(net[0]), net_sent_bytes=int(net[1]))
            if self._last_net is not None:
                f["net_recv_bytes_per_s"] = float(max(0, net[0] - self._last_net[0]) / dt)
                f["net_sent_bytes_per_s"] = float(max(0, net[1] - self._last_net[1]) / dt)
            self._last_net = net
        f.update(self._temperatures(self.root))
        freq = procfs.cpu_freq_mhz(self.root)
        if freq and math.isfinite(freq):
            f["cpu_freq_mhz"] = float(freq)  # the ARM clock on a Pi
        mask = read_pi_throttled() if self.has_pi_firmware else None
        if mask is not None:
            f.update(throttle_fields(mask))
        return Sample(ts=ts, name="host", tags={}, fields=f)

    @staticmethod
    def _temperatures(root: str = "") -> dict[str, FieldValue]:
        out: dict[str, FieldValue] = {}
        try:
            sensors = procfs.sensors_temperatures(root)
        except OSError:
            return out
        for chip, entries in sensors.items():
            for i, (name, current) in enumerate(entries):
                if not math.isfinite(current):
                    continue
                label = _clean(f"{chip}_{name or i}")
                out[f"temp_{label}_c"] = float(current)
        return out


def max_temperature() -> float | None:
    """The hottest sensor the kernel exposes (°C), or None."""
    temps = [float(v) for v in HostSampler._temperatures().values() if isinstance(v, float)]
    return max(temps) if temps else None


class SelfSampler:
    """The agent's own footprint: RSS and CPU % every call, PSS every ``pss_every`` seconds.

    Reading smaps_rollup walks every mapping of the process (~1.5 ms for the
    agent here): at 1 Hz that alone was a third of its CPU, so PSS is refreshed
    less often and the last value is repeated.
    """

    def __init__(self, pss_every: float = 10.0) -> None:
        self.pid = os.getpid()
        self._last_cpu = procfs.process_cpu_seconds(self.pid)
        self._last_t = time.monotonic()
        self._pss_every = pss_every
        self._pss: int | None = None
        self._pss_at = -1e9

    def footprint(self) -> dict[str, FieldValue]:
        now = time.monotonic()
        cpu = procfs.process_cpu_seconds(self.pid)
        pct = 100.0 * (cpu - self._last_cpu) / max(1e-6, now - self._last_t)
        self._last_cpu, self._last_t = cpu, now
        out: dict[str, FieldValue] = {"rss_bytes": procfs.process_rss(self.pid), "cpu_percent": float(pct)}
        if now - self._pss_at >= self._pss_every:
            self._pss, self._pss_at = read_pss(self.pid), now
        if self._pss is not None:
            out["pss_bytes"] = self._pss
        return out


def read_pss(pid: int) -> int | None:
    """PSS in bytes from /proc/PID/smaps_rollup (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
