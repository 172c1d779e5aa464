"""The idle agent's host and self readings straight from /proc and /sys, with psutil 7's Linux semantics.

Why: importing psutil cost the idle agent ~1.1 MB of PSS (about 0.94 MB of Python objects, its C extension
and the ``resource`` module it pulls in). Measured side by side on the frozen agent, both builds running at
once: anonymous memory 15.6 → 14.9 MB, PSS −0.6 to −0.8 MB, against a 25 MB goal it sat at
(docs/packaging.md). The idle agent only publishes a handful of host figures once a second, so it reads the
same files psutil reads and computes them as psutil's own code does (``psutil/_pslinux.py``, ``__init__.py``
and ``_common.py`` of psutil 7.x; tests/test_procfs.py compares both, live and on fixture trees). It is also
cheaper per sample (bench/bench_sampler.py). psutil remains the project's metrics library for workloads:
process trees and footprint phases import it when an experiment runs (agent/memory.py, agent/phases).

Every reader takes ``root`` ("" for the live system), the directory that stands for ``/`` in tests. Where
psutil would raise on an absent source (no /proc/diskstats nor /sys/block, a cpufreq directory without its
files, no /proc/cpuinfo), these readers return None and the sampler leaves the fields out, as it does for
whatever the machine cannot provide; a malformed /proc/diskstats or /proc/net/dev line raises ValueError
as in psutil. Only ``os`` is imported (``typing`` for annotations, loaded by the agent anyway): no ``glob``,
``re``, ``collections``, ``resource`` or C extension. CPU and counter state is per sampler, not per thread
as in psutil's module-level functions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGESIZE = os.sysconf("SC_PAGE_SIZE")
DISK_SECTOR_SIZE = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own sector size
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # psutil's open_text
        return f.read()


def _ls(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


# --- CPU ---------------------------------------------------------------------------------------------------

CpuTimes = tuple[float, ...]


def cpu_times(root: str = "") -> tuple[CpuTimes, list[CpuTimes]]:
    """System-wide and per-CPU times in seconds from /proc/stat, as many fields as the kernel prints (≤ 10)."""
    with open(f"{root}/proc/stat", "rb") as f:
        first = f.readline().split()
        n = min(len(first) - 1, len(CPU_FIELDS))
        total = tuple(float(x) / CLOCK_TICKS for x in first[1:n + 1])
        per = [tuple(float(x) / CLOCK_TICKS for x in line.split()[1:n + 1]) for line in f if line.startswith(b"cpu")]
    return total, per


def _deltas(t1: CpuTimes, t2: CpuTimes) -> list[float]:
    return [max(0, b - a) for a, b in zip(t1, t2, strict=False)]  # psutil trims decreasing fields to 0


def _total(d: list[float]) -> float:
    tot = sum(d)
    # guest and guest_nice are already counted in user and nice (psutil's _cpu_tot_time, like htop)
    for i in (8, 9):
        if len(d) > i:
            tot -= d[i]
    return tot


def busy_percent(t1: CpuTimes, t2: CpuTimes) -> float:
    """psutil.cpu_percent(): busy = total − idle − iowait, over the total; one decimal, not clamped."""
    d = _deltas(t1, t2)
    all_delta = _total(d)
    busy = all_delta - d[3]
    if len(d) > 4:
        busy -= d[4]
    try:
        return round((busy / all_delta) * 100, 1)
    except ZeroDivisionError:
        return 0.0


def times_percent(t1: CpuTimes, t2: CpuTimes) -> dict[str, float]:
    """psutil.cpu_times_percent(): each field over the total, one decimal, clamped to 0..100."""
    d = _deltas(t1, t2)
    scale = 100.0 / max(1, _total(d))
    return {name: min(max(0.0, round(v * scale, 1)), 100.0) for name, v in zip(CPU_FIELDS, d, strict=False)}


def cpu_freq_mhz(root: str = "") -> float | None:
    """psutil.cpu_freq().current: the mean over CPUs of cpufreq's (or /proc/cpuinfo's) current clock, MHz.

    As psutil: with a cpufreq policy (or cpu0/cpufreq) directory, per policy the "cpu MHz" of /proc/cpuinfo
    when it lists as many CPUs as there are policies, else scaling_cur_freq, else cpuinfo_cur_freq (an
    offline CPU counts as 0), kHz truncated to an int then / 1000; without cpufreq, the "cpu MHz" lines.
    """
    try:
        with open(f"{root}/proc/cpuinfo", "rb") as f:
            infos = [float(line.split(b":", 1)[1]) for line in f if line.lower().startswith(b"cpu mhz")]
    except (OSError, ValueError, IndexError):
        return None
    sysfs = f"{root}/sys/devices/system/cpu"
    if not (os.path.exists(f"{sysfs}/cpufreq/policy0") or os.path.exists(f"{sysfs}/cpu0/cpufreq")):
        currents = infos
    else:
        paths = [(int(_digits(n[6:])), f"{sysfs}/cpufreq/{n}") for n in _ls(f"{sysfs}/cpufreq")
                 if n.startswith("policy") and n[6:7].isdigit()]
        if not paths:
            paths = [(int(_digits(n[3:])), f"{sysfs}/{n}/cpufreq") for n in _ls(sysfs)
                     if n.startswith("cpu") and n[3:4].isdigit() and os.path.lexists(f"{sysfs}/{n}/cpufreq")]
        paths.sort(key=lambda p: p[0])
        currents = []
        for i, (_, path) in enumerate(paths):
            # the cached "cpu MHz" when it covers every policy (psutil #1851)
            curr: float | bytes | None = (infos[i] * 1000 if len(paths) == len(infos)
                                          else _bytes_or_none(f"{path}/scaling_cur_freq"))
            if curr is None:
                curr = _bytes_or_none(f"{path}/cpuinfo_cur_freq")
                if curr is None:
                    if _bytes_or_none(f"{sysfs}/cpu{i}/online") == b"0\n":
                        currents.append(0.0)
                        continue
                    return None  # psutil raises NotImplementedError here
            try:
                currents.append(int(curr) / 1000)
                int(_bytes(f"{path}/scaling_max_freq")), int(_bytes(f"{path}/scaling_min_freq"))  # psutil needs both
            except (OSError, ValueError):
                return None
    return sum(currents) / len(currents) if currents else None


def _digits(s: str) -> str:
    end = 0
    while end < len(s) and s[end].isdigit():
        end += 1
    return s[:end]


def _bytes_or_none(path: str) -> bytes | None:
    try:
        return _bytes(path)
    except OSError:
        return None


# --- memory ------------------------------------------------------------------------------------------------

def meminfo(root: str = "") -> dict[bytes, int]:
    """/proc/meminfo in bytes, keyed as psutil keys it (b"MemTotal:")."""
    mems = {}
    with open(f"{root}/proc/meminfo", "rb") as f:
        for line in f:
            fields = line.split()
            mems[fields[0]] = int(fields[1]) * 1024
    return mems


def _estimated_available(mems: dict[bytes, int], root: str) -> int:
    """psutil's calculate_avail_vmem: the kernel's MemAvailable formula for kernels < 3.14 (or a 0 reading)."""
    free = mems[b"MemFree:"]
    fallback = free + mems.get(b"Cached:", 0)
    try:
        lru_active_file = mems[b"Active(file):"]
        lru_inactive_file = mems[b"Inactive(file):"]
        slab_reclaimable = mems[b"SReclaimable:"]
    except KeyError:
        return fallback
    try:
        f = open(f"{root}/proc/zoneinfo", "rb")  # noqa: SIM115
    except OSError:
        return fallback
    watermark_low = 0
    with f:
        for line in f:
            line = line.strip()
            if line.startswith(b"low"):
                watermark_low += int(line.split()[1])
    watermark_low *= PAGESIZE
    avail: float = free - watermark_low
    pagecache: float = lru_active_file + lru_inactive_file
    pagecache -= min(pagecache / 2, watermark_low)
    avail += pagecache
    avail += slab_reclaimable - min(slab_reclaimable / 2.0, watermark_low)
    return int(avail)


def usage_percent(used: int, total: int) -> float:
    try:
        return round((float(used) / total) * 100, 1)
    except ZeroDivisionError:
        return 0.0


def virtual_memory(mems: dict[bytes, int], root: str = "") -> tuple[int, int, int, float]:
    """psutil.virtual_memory()'s (total, available, used, percent) from a meminfo() reading."""
    total, free = mems[b"MemTotal:"], mems[b"MemFree:"]
    avail = mems.get(b"MemAvailable:", 0)
    if avail == 0:  # absent before 3.14; 0 from a kernel bug (psutil #1915)
        avail = _estimated_available(mems, root)
    if avail < 0:
        avail = 0
    elif avail > total:  # inside an LXC container: as procps does
        avail = free
    return total, avail, total - avail, usage_percent(total - avail, total)


def swap_memory(mems: dict[bytes, int]) -> tuple[int, int, float] | None:
    """psutil.swap_memory()'s (total, used, percent); None if meminfo lacks the swap lines (psutil would ask
    sysinfo(2); every Linux since 2.6 prints them)."""
    try:
        total, free = mems[b"SwapTotal:"], mems[b"SwapFree:"]
    except KeyError:
        return None
    return total, total - free, usage_percent(total - free, total)


# --- disks and network -------------------------------------------------------------------------------------

class NoWrap:
    """psutil's _WrapNumbers for one counter family: a per-key, per-field value that went down wrapped, so the
    old value is added to it from then on; a key that disappears forgets its reminders."""

    def __init__(self) -> None:
        self.cache: Mapping[str, tuple[int, ...]] | None = None
        self.reminders: dict[tuple[str, int], int] = {}
        self.reminder_keys: dict[str, set[tuple[str, int]]] = {}

    def run(self, new: Mapping[str, tuple[int, ...]]) -> Mapping[str, tuple[int, ...]]:
        old = self.cache
        self.cache = new
        if old is None:
            return new
        for gone in set(old) - set(new):
            for remkey in self.reminder_keys.pop(gone, ()):
                self.reminders.pop(remkey, None)
        out = {}
        for key, values in new.items():
            if key not in old:
                out[key] = values
                continue
            bits = []
            for i, value in enumerate(values):
                remkey = (key, i)
                if value < old[key][i]:
                    self.reminders[remkey] = self.reminders.get(remkey, 0) + old[key][i]
                    self.reminder_keys.setdefault(key, set()).add(remkey)
                bits.append(value + self.reminders.get(remkey, 0))
            out[key] = tuple(bits)
        return out


def _summed(per_key: Mapping[str, tuple[int, ...]], wrap: NoWrap | None) -> tuple[int, ...] | None:
    if not per_key:
        return None
    if wrap is not None:
        per_key = wrap.run(per_key)
    return tuple(sum(x) for x in zip(*per_key.values(), strict=True))


def is_storage_device(name: str, root: str = "") -> bool:
    """A whole disk (sda, nvme0n1, mmcblk0) or a virtual one (loop0, zram0), not a partition: it is in /sys/block."""
    return os.access(f"{root}/sys/block/{name.replace('/', '!')}", os.F_OK)


def disk_bytes(root: str = "") -> dict[str, tuple[int, int]] | None:
    """Bytes read and written per device of /sys/block, from /proc/diskstats (else /sys/block/*/stat), as
    psutil.disk_io_counters(perdisk=False) counts them; None where neither exists."""
    raw: list[tuple[str, int, int]] = []
    try:
        with open(f"{root}/proc/diskstats") as f:
            lines = f.readlines()
    except FileNotFoundError:
        block = f"{root}/sys/block"
        if not os.path.exists(block):
            return None
        for dev in os.listdir(block):
            for top, _, files in os.walk(f"{block}/{dev}"):
                if "stat" in files:
                    fields = _text(f"{top}/stat").split()
                    raw.append((os.path.basename(top), int(fields[2]), int(fields[6])))
    else:
        for line in lines:
            fields = line.split()
            flen = len(fields)
            if flen == 15:  # Linux 2.4
                raw.append((fields[3], int(fields[5]), int(fields[9])))
            elif flen == 14 or flen >= 18:  # a disk (4.18+: 18, 5.5+: 20 fields)
                raw.append((fields[2], int(fields[5]), int(fields[9])))
            elif flen == 7:  # a partition on 2.6
                raw.append((fields[2], int(fields[4]), int(fields[6])))
            else:
                raise ValueError(f"{root}/proc/diskstats: not sure how to interpret line {line!r}")
    return {name: (r * DISK_SECTOR_SIZE, w * DISK_SECTOR_SIZE) for name, r, w in raw if is_storage_device(name, root)}


def net_bytes(root: str = "") -> dict[str, tuple[int, int]]:
    """Bytes received and sent per interface (loopback included) from /proc/net/dev."""
    with open(f"{root}/proc/net/dev", encoding="utf-8", errors="surrogateescape") as f:
        lines = f.readlines()
    out = {}
    for line in lines[2:]:
        colon = line.rfind(":")
        fields = line[colon + 1:].split()
        if colon <= 0 or len(fields) != 16:
            raise ValueError(f"{root}/proc/net/dev: not sure how to interpret line {line!r}")
        out[line[:colon].strip()] = (int(fields[0]), int(fields[8]))
    return out


class IoCounters:
    """Disk and network byte totals that never go down (psutil's nowrap=True), one state per sampler."""

    def __init__(self, root: str = "") -> None:
        self.root = root
        self._disk = NoWrap()
        self._net = NoWrap()

    def disk(self) -> tuple[int, int] | None:
        """(read_bytes, write_bytes) summed over storage devices, or None where there is none."""
        per = disk_bytes(self.root)
        total = _summed(per, self._disk) if per is not None else None
        return (total[0], total[1]) if total else None

    def net(self) -> tuple[int, int] | None:
        """(bytes_recv, bytes_sent) summed over interfaces, or None where there is none."""
        total = _summed(net_bytes(self.root), self._net)
        return (total[0], total[1]) if total else None


# --- temperatures ------------------------------------------------------------------------------------------

def sensors_temperatures(root: str = "") -> dict[str, list[tuple[str, float]]]:
    """psutil.sensors_temperatures() as (label, °C) per chip: every hwmon temp*_input with its chip's name and
    temp*_label (sorted by path, hwmon*/device/ included); only where there is none, the thermal zones (label
    "", chip = the zone's type). An unreadable entry is skipped."""
    ret: dict[str, list[tuple[str, float]]] = {}
    hwmon = f"{root}/sys/class/hwmon"
    bases: set[str] = set()
    for h in _ls(hwmon):
        if h.startswith("hwmon"):
            for d in (f"{hwmon}/{h}", f"{hwmon}/{h}/device"):
                bases.update(f"{d}/{n.split('_')[0]}" for n in _ls(d) if n.startswith("temp") and "_" in n[4:])
    for base in sorted(bases):
        try:
            current = float(_bytes(base + "_input")) / 1000.0
            unit_name = _text(os.path.dirname(base) + "/name").strip()
        except (OSError, ValueError):
            continue
        try:
            label = _text(base + "_label").strip()
        except OSError:
            label = ""
        ret.setdefault(unit_name, []).append((label, current))
    if bases or _has_coretemp(root):  # psutil counts coretemp's platform hwmon as "sensors found" too
        return ret
    thermal = f"{root}/sys/class/thermal"
    for zone in sorted(f"{thermal}/{n}" for n in _ls(thermal) if n.startswith("thermal_zone")):
        try:
            current = float(_bytes(f"{zone}/temp")) / 1000.0
            unit_name = _text(f"{zone}/type").strip()
        except (OSError, ValueError):
            continue
        ret.setdefault(unit_name, []).append(("", current))
    return ret


def _has_coretemp(root: str) -> bool:
    platform = f"{root}/sys/devices/platform"
    for c in _ls(platform):
        if c.startswith("coretemp."):
            for h in _ls(f"{platform}/{c}/hwmon"):
                if h.startswith("hwmon") and any(n.startswith("temp") and "_" in n[4:]
                                                 for n in _ls(f"{platform}/{c}/hwmon/{h}")):
                    return True
    return False


# --- this process ------------------------------------------------------------------------------------------

def process_cpu_seconds(pid: int, root: str = "") -> float:
    """psutil.Process(pid).cpu_times() user + system, in seconds."""
    data = _bytes(f"{root}/proc/{pid}/stat")
    fields = data[data.rfind(b")") + 2:].split()  # the name in parentheses may hold spaces and parentheses
    return float(fields[11]) / CLOCK_TICKS + float(fields[12]) / CLOCK_TICKS


def process_rss(pid: int, root: str = "") -> int:
    """psutil.Process(pid).memory_info().rss: resident pages of /proc/PID/statm, in bytes."""
    with open(f"{root}/proc/{pid}/statm", "rb") as f:
        return int(f.readline().split()[1]) * PAGESIZE
