"""agent.procfs reads what psutil 7 reads and computes what psutil computes (Linux), without importing it.

Three kinds of evidence: this machine's live readings against psutil's, back to back (counters sandwiched
between two psutil reads); fixture /proc trees that psutil itself is pointed at (``psutil.PROCFS_PATH``) for
what this VM lacks (no MemAvailable, a 0 MemAvailable, swap, partitions, loop/ram devices, wrapped
counters, guest CPU time, /proc/cpuinfo clocks); and fixture /sys trees (Pi thermal zone, hwmon with and
without labels) read by psutil's own sensors code with its ``glob`` redirected there, or, where psutil's
choice is made once at import (cpufreq sysfs) or hard-codes /sys (the /sys/block fallback), values worked out
from its source. Last, the idle agent never loads psutil, and workload measurement still does.
"""

from __future__ import annotations

import glob as glob_module
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import psutil._pslinux as pslinux
import pytest

from agent import procfs
from agent.sampler import HostSampler, SelfSampler

REPO = Path(__file__).resolve().parents[1]


def put(root: Path, rel: str, text: str) -> Path:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def psutil_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """Point psutil's /proc readers at a fixture tree; its per-thread CPU and nowrap state is restored after."""
    tid = threading.current_thread().ident
    for name in ("_last_cpu_times", "_last_per_cpu_times", "_last_cpu_times_2", "_last_per_cpu_times_2"):
        monkeypatch.setattr(psutil, name, {})
    psutil.disk_io_counters.cache_clear()  # type: ignore[attr-defined]
    psutil.net_io_counters.cache_clear()  # type: ignore[attr-defined]

    def at(root: Path) -> None:
        monkeypatch.setattr(psutil, "PROCFS_PATH", str(root / "proc"))

    yield types.SimpleNamespace(at=at, tid=tid)
    psutil.disk_io_counters.cache_clear()  # type: ignore[attr-defined]
    psutil.net_io_counters.cache_clear()  # type: ignore[attr-defined]


# --- this machine, against psutil ---------------------------------------------------------------------------

def test_live_totals_and_counters_equal_psutil() -> None:
    mems = procfs.meminfo()
    total, avail, used, percent = procfs.virtual_memory(mems)
    vm = psutil.virtual_memory()
    assert total == vm.total and used == total - avail
    assert abs(avail - vm.available) < 64 << 20 and abs(percent - vm.percent) <= 1.0
    sw, psw = procfs.swap_memory(mems), psutil.swap_memory()
    assert sw is not None and sw[0] == psw.total and abs(sw[1] - psw.used) < 64 << 20

    _, per = procfs.cpu_times()
    assert len(per) == psutil.cpu_count() == len(psutil.cpu_percent(percpu=True))

    io = procfs.IoCounters()
    for _ in range(2):  # the second read goes through the nowrap state
        d1, n1 = psutil.disk_io_counters(), psutil.net_io_counters()
        disk, net = io.disk(), io.net()
        d2, n2 = psutil.disk_io_counters(), psutil.net_io_counters()
        # counters only grow: ours, read between two psutil reads, lie between them
        assert disk is not None and d1 is not None and d2 is not None
        assert d1.read_bytes <= disk[0] <= d2.read_bytes and d1.write_bytes <= disk[1] <= d2.write_bytes
        assert net is not None and n1 is not None and n2 is not None
        assert n1.bytes_recv <= net[0] <= n2.bytes_recv and n1.bytes_sent <= net[1] <= n2.bytes_sent

    freq = psutil.cpu_freq()
    mine = procfs.cpu_freq_mhz()
    assert (mine is None) == (freq is None)
    if freq is not None and mine is not None:
        assert abs(mine - freq.current) < 0.05 * freq.current  # a clock that moves between two reads

    temps = {chip: [(e.label, e.current) for e in entries] for chip, entries in psutil.sensors_temperatures().items()}
    ours = procfs.sensors_temperatures()
    assert {c: [lbl for lbl, _ in e] for c, e in ours.items()} == {c: [lbl for lbl, _ in e] for c, e in temps.items()}
    for chip, entries in temps.items():
        for (_, theirs), (_, mine_c) in zip(entries, ours[chip], strict=True):
            assert abs(theirs - mine_c) < 5.0


def test_live_self_readings_equal_psutil() -> None:
    proc = psutil.Process()
    c1 = sum(proc.cpu_times()[:2])
    mine = procfs.process_cpu_seconds(os.getpid())
    c2 = sum(proc.cpu_times()[:2])
    assert c1 <= mine <= c2
    r1 = proc.memory_info().rss
    rss = procfs.process_rss(os.getpid())
    r2 = proc.memory_info().rss
    assert min(r1, r2) - (1 << 20) <= rss <= max(r1, r2) + (1 << 20)
    s = SelfSampler()
    assert type(s.footprint()["rss_bytes"]) is int


def test_live_percentages_over_the_same_interval_are_close() -> None:
    h = HostSampler(per_cpu=True)
    psutil.cpu_percent(percpu=True)
    psutil.cpu_times_percent()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # some user time to measure
        sum(range(1000))
    theirs, theirs_t = psutil.cpu_percent(percpu=True), psutil.cpu_times_percent()
    f = h.sample().fields
    for i, p in enumerate(theirs):
        assert abs(f[f"cpu{i}_percent"] - p) <= 15.0, (i, f, theirs)
    assert abs(f["cpu_user_percent"] - theirs_t.user) <= 15.0


def test_cpu_percentages_equal_psutil_on_the_same_two_snapshots(tmp_path: Path,
                                                                  psutil_at: types.SimpleNamespace) -> None:
    """Two copies of this machine's /proc/stat, then a synthetic pair with guest time, a counter that went
    down and a CPU that did nothing: psutil and procfs give the same figures to the last decimal."""
    a, b = tmp_path / "a", tmp_path / "b"
    put(a, "proc/stat", Path("/proc/stat").read_text())
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        sum(range(1000))
    put(b, "proc/stat", Path("/proc/stat").read_text())
    c, d = tmp_path / "c", tmp_path / "d"
    ncpu = len(procfs.cpu_times()[1])  # psutil's field count and CPU lines come from this machine's /proc/stat
    first = "cpu  1000 20 300 5000 40 0 7 3 200 10\n"
    put(c, "proc/stat", first + "".join(f"cpu{i} 1000 20 300 5000 40 0 7 3 200 10\n" for i in range(ncpu)))
    later = ["cpu1 1000 20 300 5000 40 0 7 3 200 10\n"] * ncpu  # idle CPUs: 0 / 0 is 0.0
    later[0] = "cpu0 1433 25 301 5111 99 2 8 1 400 13\n"  # steal went down: trimmed to 0; lots of guest
    put(d, "proc/stat", "cpu  1433 25 301 5111 99 2 8 1 400 13\n" + "".join(later))
    for t1, t2 in ((a, b), (c, d)):
        psutil_at.at(t1)
        psutil.cpu_percent(percpu=True)
        psutil.cpu_times_percent()
        psutil_at.at(t2)
        per, times = psutil.cpu_percent(percpu=True), psutil.cpu_times_percent()
        (tot1, per1), (tot2, per2) = procfs.cpu_times(str(t1)), procfs.cpu_times(str(t2))
        assert [procfs.busy_percent(x, y) for x, y in zip(per1, per2, strict=True)] == per
        assert procfs.times_percent(tot1, tot2) == times._asdict()
    assert per[0] == 72.2 and times.steal == 0.0 and per[1:] == [0.0] * (ncpu - 1)


# --- fixture /proc trees, against psutil pointed at them ----------------------------------------------------

MEMINFO = Path("/proc/meminfo").read_text()


def meminfo_with(**lines: int | None) -> str:
    """This machine's /proc/meminfo with some lines replaced (kB) or removed (None)."""
    keys = {k.replace("__", "(").replace("_", ")") if "__" in k else k: v for k, v in lines.items()}
    out = []
    for line in MEMINFO.splitlines():
        key = line.split(":")[0]
        if key in keys:
            if keys[key] is not None:
                out.append(f"{key}: {keys[key]} kB")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


ZONEINFO = """Node 0, zone      DMA
  pages free     3840
        min      21
        low      26
        high     31
Node 0, zone    DMA32
  pages free     200000
        min      5000
        low      6250
        high     7500
"""


@pytest.mark.parametrize(("case", "meminfo", "zoneinfo"), [
    ("modern kernel", meminfo_with(), True),
    ("no MemAvailable (kernel < 3.14)", meminfo_with(MemAvailable=None), True),
    ("MemAvailable 0 (psutil #1915)", meminfo_with(MemAvailable=0), True),
    ("no MemAvailable, no zoneinfo", meminfo_with(MemAvailable=None), False),
    ("no MemAvailable nor Active(file)", meminfo_with(MemAvailable=None, Active__file_=None), True),
    ("available above total (LXC)", meminfo_with(MemTotal=1000, MemFree=400, MemAvailable=5000), True),
    ("estimate below 0", meminfo_with(MemAvailable=None, MemFree=10, Active__file_=0, Inactive__file_=0,
                                      SReclaimable=0), True),
    ("no swap", meminfo_with(SwapTotal=0, SwapFree=0), True),
    ("swap half used", meminfo_with(SwapTotal=2097148, SwapFree=1048574), True),
])
def test_memory_equals_psutil_on_fixtures(tmp_path: Path, psutil_at: types.SimpleNamespace, case: str,
                                          meminfo: str, zoneinfo: bool) -> None:
    put(tmp_path, "proc/meminfo", meminfo)
    put(tmp_path, "proc/vmstat", "pswpin 3\npswpout 5\n")
    if zoneinfo:
        put(tmp_path, "proc/zoneinfo", ZONEINFO)
    psutil_at.at(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # psutil warns about the fields a fixture leaves out
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    mems = procfs.meminfo(str(tmp_path))
    assert procfs.virtual_memory(mems, str(tmp_path)) == (vm.total, vm.available, vm.used, vm.percent), case
    assert procfs.swap_memory(mems) == (sw.total, sw.used, sw.percent), case
    types_ = [type(x) for x in procfs.virtual_memory(mems, str(tmp_path))]
    assert types_ == [int, int, int, float]


def test_the_missing_memavailable_estimate_is_the_kernels_formula(tmp_path: Path) -> None:
    """Worked out by hand from psutil's calculate_avail_vmem, so a fixture mistake cannot hide in both."""
    put(tmp_path, "proc/zoneinfo", ZONEINFO)
    mems = {b"MemTotal:": 8 << 30, b"MemFree:": 1 << 30, b"Cached:": 2 << 30, b"Active(file):": 1 << 30,
            b"Inactive(file):": 1 << 30, b"SReclaimable:": 256 << 20}
    low = (26 + 6250) * procfs.PAGESIZE
    expected = (1 << 30) - low + (2 << 30) - low + (256 << 20) - low
    assert procfs.virtual_memory(mems, str(tmp_path))[1] == expected
    del mems[b"SReclaimable:"]
    assert procfs.virtual_memory(mems, str(tmp_path))[1] == (1 << 30) + (2 << 30)  # free + cached


DISKS = """   7       0 loop0 100 0 2000 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 5 0 40 0 1 0 8 0 0 0 0 0 0 0 0 0 0
   8       0 sda 500 10 40000 300 600 20 80000 900 0 1200 1200 0 0 0 0 0 0
   8       1 sda1 300 5 30000 200 400 10 60000 700 0 900 900 0 0 0 0 0 0
   8       2 sda2 200 10000 5 200
 179       0 mmcblk0 900 3 123456 10 800 1 654321 20 0 30 30 0 0 0 0
 179       1 mmcblk0p1 900 3 123456 10 800 1 654321 20 0 30 30 0 0 0 0
 259       0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11
 253       0 dm-0 10 0 80 0 10 0 80 0 0 0 0
 104       0 cciss/c0d0 1 0 16 0 1 0 16 0 0 0 0
   3     0   8 hda 8 8 8 8 8 8 8 8 8 8 8
"""


def block_devices(root: Path, names: list[str]) -> None:
    for name in names:
        (root / "sys/block" / name.replace("/", "!")).mkdir(parents=True)


@pytest.fixture
def storage_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """psutil's is_storage_device asks the real /sys/block: the same check, asked of the fixture's."""
    roots: list[Path] = []
    monkeypatch.setattr(pslinux, "is_storage_device",
                        lambda name: os.access(f"{roots[-1]}/sys/block/{name.replace('/', '!')}", os.F_OK))
    yield roots


def test_disk_counters_equal_psutil_on_fixtures(tmp_path: Path, psutil_at: types.SimpleNamespace,
                                                storage_in: list[Path]) -> None:
    """Whole disks and virtual ones (loop, ram, zram, dm) count, partitions do not, sectors are 512 B, every
    /proc/diskstats layout (2.6 partition lines, 14, 15, 18 and 20 fields) is read, and a counter that wraps
    keeps growing."""
    a, b = tmp_path / "a", tmp_path / "b"
    block_devices(a, ["loop0", "ram0", "sda", "mmcblk0", "nvme0n1", "dm-0", "cciss/c0d0", "hda"])
    block_devices(b, ["loop0", "ram0", "sda", "mmcblk0", "nvme0n1", "dm-0", "cciss/c0d0", "hda"])
    put(a, "proc/diskstats", DISKS)
    put(b, "proc/diskstats", DISKS.replace("sda 500 10 40000", "sda 500 10 1200").replace("ram0 5", "ram0 6"))
    io = procfs.IoCounters(str(a))
    for root in (a, b):
        storage_in.append(root)
        psutil_at.at(root)
        io.root = str(root)
        theirs = psutil.disk_io_counters()
        assert theirs is not None
        assert io.disk() == (theirs.read_bytes, theirs.write_bytes)
    assert theirs.read_bytes == (2000 + 40 + 1200 + 40000 + 123456 + 3 + 80 + 16 + 8) * 512  # sda wrapped
    assert theirs.write_bytes == (0 + 8 + 80000 + 654321 + 7 + 80 + 16 + 8) * 512


def test_disk_counters_without_storage_and_from_sys_block(tmp_path: Path, psutil_at: types.SimpleNamespace,
                                                          storage_in: list[Path]) -> None:
    put(tmp_path, "proc/diskstats", "   8       1 sda1 300 5 30000 200 400 10 60000 700 0 900 900 0 0 0 0 0 0\n")
    storage_in.append(tmp_path)
    psutil_at.at(tmp_path)
    assert psutil.disk_io_counters() is None and procfs.IoCounters(str(tmp_path)).disk() is None
    # No /proc/diskstats: psutil walks /sys/block (hard-coded, so worked out here): disks and their partitions
    # have a stat file, the partitions are left out by name.
    (tmp_path / "proc/diskstats").unlink()
    put(tmp_path, "sys/block/mmcblk0/stat", "900 3 1000 10 800 1 2000 20 0 30 30 0 0 0 0 0 0\n")
    put(tmp_path, "sys/block/mmcblk0/mmcblk0p1/stat", "900 3 1000 10 800 1 2000 20 0 30 30\n")
    assert procfs.disk_bytes(str(tmp_path)) == {"mmcblk0": (1000 * 512, 2000 * 512)}
    shutil.rmtree(tmp_path / "sys")
    assert procfs.disk_bytes(str(tmp_path)) is None  # psutil raises NotImplementedError: the fields are left out


NETDEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier
    lo: 68671436271 34082098    0    0    0     0          0         0 68671436271 34082098 0 0 0 0 0 0
  eth0: 4294967000 1000 0 0 0 0 0 0 123456 900 0 0 0 0 0 0
 wlan0:   5000 10 0 0 0 0 0 0 6000 12 0 0 0 0 0 0
"""


def test_net_counters_equal_psutil_on_fixtures(tmp_path: Path, psutil_at: types.SimpleNamespace) -> None:
    """Every interface (loopback too) summed; eth0's 32-bit receive counter wraps and keeps growing; an
    interface that goes away takes its bytes with it."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    put(a, "proc/net/dev", NETDEV)
    put(b, "proc/net/dev", NETDEV.replace("eth0: 4294967000", "eth0: 700"))
    put(c, "proc/net/dev", "".join(line + "\n" for line in (b / "proc/net/dev").read_text().splitlines()
                                   if "wlan0" not in line))
    io = procfs.IoCounters(str(a))
    for root in (a, b, c):
        psutil_at.at(root)
        io.root = str(root)
        theirs = psutil.net_io_counters()
        assert theirs is not None and io.net() == (theirs.bytes_recv, theirs.bytes_sent)
    assert theirs.bytes_recv == 68671436271 + 4294967000 + 700  # eth0 wrapped, wlan0 gone
    put(a, "proc/net/dev", "\n".join(NETDEV.splitlines()[:2]) + "\n")
    psutil_at.at(a)
    assert psutil.net_io_counters() is None and procfs.IoCounters(str(a)).net() is None


def test_cpu_clock_from_cpuinfo_equals_psutil(tmp_path: Path, psutil_at: types.SimpleNamespace) -> None:
    """Without cpufreq (this VM, many VMs) psutil averages /proc/cpuinfo's "cpu MHz" lines; none: no field."""
    sysfs = "/sys/devices/system/cpu"
    if os.path.exists(f"{sysfs}/cpufreq/policy0") or os.path.exists(f"{sysfs}/cpu0/cpufreq"):
        pytest.skip("this machine has cpufreq: psutil chose its sysfs reader at import")
    put(tmp_path, "proc/cpuinfo", "processor\t: 0\ncpu MHz\t\t: 1497.6\n\nprocessor\t: 1\ncpu MHz\t\t: 3000.05\n"
                                  "\nprocessor\t: 2\nCPU MHz\t\t: 800.0\n")
    psutil_at.at(tmp_path)
    freq = psutil.cpu_freq()
    assert freq is not None and procfs.cpu_freq_mhz(str(tmp_path)) == freq.current
    put(tmp_path, "proc/cpuinfo", "processor\t: 0\ncpu MHz\t\t: 1497.6\n")
    freq = psutil.cpu_freq()
    assert freq is not None and procfs.cpu_freq_mhz(str(tmp_path)) == freq.current == 1497.6
    put(tmp_path, "proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\nModel\t\t: Raspberry Pi 4 Model B\n")
    assert psutil.cpu_freq() is None and procfs.cpu_freq_mhz(str(tmp_path)) is None


def test_cpu_clock_from_cpufreq_as_psutil_computes_it(tmp_path: Path) -> None:
    """psutil chooses its sysfs reader at import from the real /sys, so these are worked out from its source."""
    sysfs = "sys/devices/system/cpu"
    # A Pi 4: one policy for four cores, no "cpu MHz" in /proc/cpuinfo: scaling_cur_freq (kHz).
    put(tmp_path, "proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\n")
    for f, v in (("scaling_cur_freq", 1500000), ("scaling_min_freq", 600000), ("scaling_max_freq", 1500000)):
        put(tmp_path, f"{sysfs}/cpufreq/policy0/{f}", f"{v}\n")
    assert procfs.cpu_freq_mhz(str(tmp_path)) == 1500.0
    # As many policies as "cpu MHz" lines: the cached cpuinfo value, kHz truncated to an int (psutil #1851).
    put(tmp_path, "proc/cpuinfo", "cpu MHz\t\t: 1497.6\n\ncpu MHz\t\t: 2000.0009\n")
    for f, v in (("scaling_cur_freq", 999), ("scaling_min_freq", 1), ("scaling_max_freq", 2)):
        put(tmp_path, f"{sysfs}/cpufreq/policy10/{f}", f"{v}\n")
    assert procfs.cpu_freq_mhz(str(tmp_path)) == (int(1497.6 * 1000) / 1000 + int(2000.0009 * 1000) / 1000) / 2.0
    # One line too few: scaling_cur_freq, else cpuinfo_cur_freq; an offline CPU without either counts 0.
    put(tmp_path, "proc/cpuinfo", "cpu MHz\t\t: 1497.6\n")
    (tmp_path / sysfs / "cpufreq/policy10/scaling_cur_freq").unlink()
    put(tmp_path, f"{sysfs}/cpufreq/policy10/cpuinfo_cur_freq", "1200000\n")
    assert procfs.cpu_freq_mhz(str(tmp_path)) == (1500.0 + 1200.0) / 2.0
    (tmp_path / sysfs / "cpufreq/policy10/cpuinfo_cur_freq").unlink()
    assert procfs.cpu_freq_mhz(str(tmp_path)) is None  # psutil raises NotImplementedError: left out
    put(tmp_path, f"{sysfs}/cpu1/online", "0\n")  # psutil asks cpu{i}: policy10 is the second, i = 1
    assert procfs.cpu_freq_mhz(str(tmp_path)) == (1500.0 + 0.0) / 2.0


# --- fixture /sys trees for temperatures, read by psutil's own code too --------------------------------------

@pytest.fixture
def sys_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A root for psutil's sensors_temperatures, whose glob patterns are absolute /sys paths: its glob is
    redirected below this root. psutil splits whole paths at "_", so the root has none."""
    root = Path(f"/tmp/procfs-{uuid.uuid4().hex}")
    root.mkdir()

    def rooted(pattern: str) -> list[str]:  # trip points are globbed below a path that has the root already
        return glob_module.glob(pattern if pattern.startswith(str(root)) else f"{root}{pattern}")

    monkeypatch.setattr(pslinux, "glob", types.SimpleNamespace(glob=rooted))
    yield root
    shutil.rmtree(root)


def psutil_temps() -> dict[str, list[tuple[str, float]]]:
    return {chip: [(e.label, e.current) for e in entries] for chip, entries in psutil.sensors_temperatures().items()}


def test_pi_thermal_zone_only(sys_root: Path) -> None:
    put(sys_root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    put(sys_root, "sys/class/thermal/thermal_zone0/temp", "48312\n")
    put(sys_root, "sys/class/thermal/thermal_zone0/trip_point_0_type", "critical\n")
    put(sys_root, "sys/class/thermal/thermal_zone1/type", "broken\n")  # no temp: skipped
    put(sys_root, "sys/class/thermal/cooling_device0/type", "fan\n")
    ours = procfs.sensors_temperatures(str(sys_root))
    assert ours == psutil_temps() == {"cpu-thermal": [("", 48.312)]}
    assert HostSampler._temperatures(str(sys_root)) == {"temp_cpu_thermal_0_c": 48.312}


def test_hwmon_with_and_without_labels(sys_root: Path) -> None:
    hw = "sys/class/hwmon"
    put(sys_root, f"{hw}/hwmon0/name", "coretemp\n")
    for i, (label, milli) in enumerate((("Package id 0", 51000), ("Core 0", 49000), ("Core 1", 50500)), 1):
        put(sys_root, f"{hw}/hwmon0/temp{i}_label", f"{label}\n")
        put(sys_root, f"{hw}/hwmon0/temp{i}_input", f"{milli}\n")
        put(sys_root, f"{hw}/hwmon0/temp{i}_crit", "100000\n")
    put(sys_root, f"{hw}/hwmon0/temp10_input", "30000\n")  # sorts before temp2, no label
    put(sys_root, f"{hw}/hwmon1/name", "cpu_thermal\n")  # a Pi 4's hwmon: no labels
    put(sys_root, f"{hw}/hwmon1/temp1_input", "47234\n")
    put(sys_root, f"{hw}/hwmon2/device/name", "nvme\n")  # CentOS's intermediate device/ directory
    put(sys_root, f"{hw}/hwmon2/device/temp1_input", "35850\n")
    put(sys_root, f"{hw}/hwmon2/device/temp1_label", "Composite\n")
    put(sys_root, f"{hw}/hwmon2/device/temp2_input", "garbage\n")  # unreadable: skipped
    put(sys_root, f"{hw}/hwmon3/name", "acpitz\n")
    put(sys_root, f"{hw}/hwmon3/temp1_max", "90000\n")  # no _input: skipped, but hwmon was found
    put(sys_root, f"{hw}/hwmon4/temp1_input", "20000\n")  # no name: skipped
    put(sys_root, "sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n")  # ignored: hwmon has sensors
    put(sys_root, "sys/class/thermal/thermal_zone0/temp", "60000\n")
    ours = procfs.sensors_temperatures(str(sys_root))
    assert ours == psutil_temps()
    assert ours == {"coretemp": [("Package id 0", 51.0), ("", 30.0), ("Core 0", 49.0), ("Core 1", 50.5)],
                    "cpu_thermal": [("", 47.234)], "nvme": [("Composite", 35.85)]}
    assert HostSampler._temperatures(str(sys_root)) == {
        "temp_coretemp_package_id_0_c": 51.0, "temp_coretemp_1_c": 30.0, "temp_coretemp_core_0_c": 49.0,
        "temp_coretemp_core_1_c": 50.5, "temp_cpu_thermal_0_c": 47.234, "temp_nvme_composite_c": 35.85}


def test_hwmon_without_temperatures_falls_back_to_thermal_zones(sys_root: Path) -> None:
    put(sys_root, "sys/class/hwmon/hwmon0/name", "rpi_volt\n")  # a Pi's other hwmon: in0_lcrit_alarm only
    put(sys_root, "sys/class/hwmon/hwmon0/in0_lcrit_alarm", "0\n")
    put(sys_root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    put(sys_root, "sys/class/thermal/thermal_zone0/temp", "51121\n")
    assert procfs.sensors_temperatures(str(sys_root)) == psutil_temps() == {"cpu-thermal": [("", 51.121)]}
    # coretemp's platform hwmon counts as "sensors found" for psutil, even when it reads nothing from it
    put(sys_root, "sys/devices/platform/coretemp.0/hwmon/hwmon5/temp1_input", "40000\n")
    assert procfs.sensors_temperatures(str(sys_root)) == psutil_temps() == {}
    shutil.rmtree(sys_root / "sys")
    assert procfs.sensors_temperatures(str(sys_root)) == psutil_temps() == {}


# --- the whole sampler on a Pi-like tree ---------------------------------------------------------------------

def test_host_sampler_on_a_pi_like_tree_keeps_the_live_field_types(tmp_path: Path) -> None:
    """No swap, an SD card, wlan0, one cpufreq policy and a thermal zone: the same field types as this
    machine's sample, plus the Pi's clock and temperature."""
    put(tmp_path, "proc/stat", "cpu  100 0 50 1000 5 0 1 0 0 0\n" + "".join(
        f"cpu{i} 25 0 12 250 1 0 0 0 0 0\n" for i in range(4)))
    put(tmp_path, "proc/meminfo", meminfo_with(MemTotal=3884000, MemFree=1000000, MemAvailable=2000000,
                                                  SwapTotal=0, SwapFree=0))
    put(tmp_path, "proc/diskstats", DISKS.split("\n", 5)[5])  # mmcblk0 and what follows
    block_devices(tmp_path, ["mmcblk0"])
    put(tmp_path, "proc/net/dev", NETDEV)
    put(tmp_path, "proc/cpuinfo", "processor\t: 0\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    for f, v in (("scaling_cur_freq", 1800000), ("scaling_min_freq", 600000), ("scaling_max_freq", 1800000)):
        put(tmp_path, f"sys/devices/system/cpu/cpufreq/policy0/{f}", f"{v}\n")
    put(tmp_path, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    put(tmp_path, "sys/class/thermal/thermal_zone0/temp", "48312\n")
    h = HostSampler(per_cpu=True, root=str(tmp_path))
    put(tmp_path, "proc/stat", "cpu  200 0 50 1100 5 0 1 0 0 0\n" + "".join(
        f"cpu{i} 50 0 12 275 1 0 0 0 0 0\n" for i in range(4)))
    pi = h.sample().fields
    assert pi["cpu_percent"] == 50.0 and pi["cpu3_percent"] == 50.0 and "cpu4_percent" not in pi
    assert pi["cpu_user_percent"] == 50.0 and pi["cpu_freq_mhz"] == 1800.0
    assert pi["temp_cpu_thermal_0_c"] == 48.312 and pi["mem_total_bytes"] == 3884000 * 1024
    assert pi["swap_total_bytes"] == 0 and pi["swap_used_percent"] == 0.0
    assert pi["disk_read_bytes"] == 123456 * 512 and pi["disk_read_bytes_per_s"] == 0.0
    live = HostSampler(per_cpu=False).sample().fields
    shared = set(pi) & set(live)
    assert {"cpu_percent", "mem_used_percent", "disk_write_bytes", "net_sent_bytes_per_s"} <= shared
    assert {k: type(pi[k]) for k in shared} == {k: type(live[k]) for k in shared}


# --- the idle agent never loads psutil; workloads still do ---------------------------------------------------

def test_idle_agent_does_not_import_psutil_and_workload_measurement_does() -> None:
    code = textwrap.dedent("""
        import os, sys
        import agent.cli, agent.service
        from agent import facts
        from agent.sampler import HostSampler, SelfSampler, max_temperature
        h, s = HostSampler(per_cpu=True), SelfSampler()
        samples = [h.sample(), h.sample()]
        s.footprint(); s.footprint()
        facts.static_facts(); max_temperature()
        print("psutil" in sys.modules, "psutil._psutil_linux" in sys.modules, "resource" in sys.modules,
              len(samples[1].fields))
        from agent.memory import tree_memory
        import agent.engine
        print("psutil" in sys.modules, tree_memory([os.getpid()]).processes)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    idle, used = out.stdout.splitlines()
    assert idle.split()[:3] == ["False", "False", "False"] and int(idle.split()[3]) > 10
    assert used == "True 1"
