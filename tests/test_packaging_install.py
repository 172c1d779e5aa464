"""The proof of the .deb: build it, install it into a booted Debian bookworm, watch it work, remove it.

build/deb.sh builds dist/runlab-agent_VERSION_amd64.deb (freeze + smoke test of the frozen binary +
nfpm); build/rootfs.sh gives a cached minbase bookworm with systemd. The test boots that tree with
``systemd-nspawn -b`` (a real systemd as PID 1; no private network, so the container shares the host's
loopback), installs the package with dpkg *inside the running system* (so postinst really enables and
starts the unit), points it at the test's Mosquitto, and checks that the host samples reach InfluxDB
through the real collector. Then ``systemctl stop`` must end the service cleanly, ``dpkg -r`` must take
the program away and ``dpkg -P`` everything else — except the system user, which Debian keeps.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runlab import __version__
from runlab.devservers import InfluxV1
from tests.conftest import REPO, Stack, host_times, need, v1_section, wait_until

NODE = "nspawn-node"
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
# Paths a booted system changes by itself, or dpkg/adduser bookkeeping that is not package content.
VOLATILE = ("/var/log/", "/var/lib/dpkg/", "/var/cache/", "/var/lib/systemd/", "/var/tmp/", "/etc/ld.so.cache")


@functools.cache
def build_deb(app: str = "agent", arch: str = "amd64") -> Path:
    """Run build/deb.sh (freezes, smoke-tests the frozen binary, packages) and return the .deb (once per
    test session: the install test and the walkthrough share it)."""
    p = subprocess.run(["bash", str(REPO / "build" / "deb.sh"), app, arch], cwd=REPO, capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, f"build/deb.sh {app} {arch} failed:\n{p.stdout}\n{p.stderr[-3000:]}"
    deb = REPO / "dist" / f"runlab-{app}_{__version__}_{arch}.deb"
    assert deb.is_file() and p.stdout.strip().endswith(deb.name)
    return deb


def rootfs_tarball(kind: str, arch: str) -> Path:
    p = subprocess.run(["bash", str(REPO / "build" / "rootfs.sh"), kind, arch], capture_output=True, text=True,
                       timeout=1800)
    assert p.returncode == 0, f"build/rootfs.sh {kind} {arch} failed:\n{p.stderr[-3000:]}"
    return Path(p.stdout.strip())


class Container:
    """A bookworm tree booted with ``systemd-nspawn -b``; commands run in it through nsenter."""

    def __init__(self, root: Path, log: Path, machine: str = "") -> None:
        self.root, self.logpath = root, log
        self.machine = machine or f"runlab-test-{os.getpid()}"  # also the container's host name
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self) -> Container:
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-b", "-D", str(self.root), "--register=no", "--keep-unit",
                 f"--machine={self.machine}", "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.leader = wait_until(self._leader, timeout=60, what="the container's PID 1")
        # "degraded" is fine (a minbase container has units that cannot start); "running" is better.
        state = wait_until(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip()
                           in ("running", "degraded") and "up", timeout=120, what="the container to boot")
        assert state == "up"
        return self

    def _leader(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "env", "-i", PATH_ENV, *argv],
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        return p

    def prop(self, unit: str, name: str) -> str:
        return self.run("systemctl", "show", unit, "-p", name, "--value").stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat", check=False).stdout

    def paths(self) -> set[str]:
        """Every path of the container's root file system, minus what a running system changes by itself."""
        out = self.run("find", "/", "-xdev").stdout.split("\n")
        return {p for p in out if p and not p.startswith(VOLATILE) and not p.endswith("-")}

    def shutdown(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return self.logpath.read_text(errors="replace") if self.logpath.exists() else ""


def run_every_phase_as_the_service_would(c: Container, tmp: Path) -> None:
    """The installed agent runs an experiment with every default phase — cold start, footprint, size and a
    closed- and open-loop load (its calibration starts the frozen binary as a helper: on main, `calibrate: the
    floor server did not start`) — as user runlab under the shipped unit's own sandbox: a transient service
    with every [Service] setting of runlab-agent.service that is not about the daemon itself."""
    smoke = _smoke_module()
    binary = smoke.hello(tmp)
    assert binary is not None, "no hello workload: build/workloads/build.sh could not build it (gcc?)"
    shutil.copy(binary, c.root / "usr" / "local" / "bin" / "runlab-hello")
    exp = c.root / "usr" / "local" / "share" / "runlab-test" / "every-phase.yaml"
    exp.parent.mkdir(parents=True, exist_ok=True)
    exp.write_text(smoke.experiment(["/usr/local/bin/runlab-hello", "--port", "{port}"]))
    daemon_only = {"Type", "NotifyAccess", "WatchdogSec", "ExecStart", "Restart", "RestartSec", "TimeoutStopSec"}
    unit = (c.root / "lib" / "systemd" / "system" / "runlab-agent.service").read_text()
    service = unit.split("[Service]")[1].split("\n[")[0]
    props = [line.strip() for line in service.splitlines() if "=" in line and not line.lstrip().startswith("#")
             and line.split("=", 1)[0].strip() not in daemon_only]
    assert {"User=runlab", "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service"} <= set(props)
    out = c.root / "var" / "lib" / "runlab" / "every-phase.json"
    try:
        p = c.run("systemd-run", "--wait", "--pipe", "--quiet", "--collect", *[f"--property={x}" for x in props],
                  "/usr/bin/runlab-agent", "run", f"/{exp.relative_to(c.root)}", "--json",
                  f"/{out.relative_to(c.root)}", check=False, timeout=300)
        assert p.returncode == 0, f"run in the unit's sandbox exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        result = json.loads(out.read_text())
    finally:  # the purge below must find only what the package made
        out.unlink(missing_ok=True)
        shutil.rmtree(exp.parent, ignore_errors=True)
        (c.root / "usr" / "local" / "bin" / "runlab-hello").unlink(missing_ok=True)
    assert smoke.run_problems(result) == []
    loads = {lr["mode"]: lr for lr in result["variants"][0]["load"]}
    assert loads["closed"]["ok"] == 200 and loads["open"]["ok"] > 0 and loads["closed"]["generator_floor_ms"] > 0


def _smoke_module() -> Any:
    spec = importlib.util.spec_from_file_location("runlab_build_smoke", REPO / "build" / "smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def container(tmp_path: Path) -> Container:
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        need(tool)
    if os.geteuid() != 0:
        pytest.fail("the install test boots a container: run it as root (CI does)")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(rootfs_tarball("boot", "amd64"))],
                   check=True)
    c = Container(root, tmp_path / "nspawn.log")
    try:
        yield c  # type: ignore[misc]
    finally:
        c.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def test_deb_installs_runs_under_systemd_ships_samples_and_uninstalls_cleanly(
        container: Container, stack: Stack, influx: InfluxV1, tmp_path: Path) -> None:
    t0 = time.monotonic()
    deb = build_deb()
    info = subprocess.run(["dpkg-deb", "--field", str(deb), "Package", "Version", "Architecture"],
                          capture_output=True, text=True, check=True).stdout
    assert f"Version: {__version__}-1" in info and "Architecture: amd64" in info
    shutil.copy(deb, container.root / "root" / deb.name)  # /tmp is a fresh tmpfs once booted
    built = time.monotonic()

    c = container.boot()
    before = c.paths()
    c.run("dpkg", "-i", f"/root/{deb.name}")
    unit = "runlab-agent.service"
    # postinst enabled and started it, with the shipped config (its broker is not there: it keeps trying).
    assert c.prop(unit, "UnitFileState") == "enabled"
    wait_until(lambda: c.prop(unit, "ActiveState") == "active", what="runlab-agent active after dpkg -i")
    assert c.prop(unit, "Type") == "notify" and c.prop(unit, "WatchdogUSec") == "30s"
    assert c.run("stat", "-c", "%U:%G %a", "/etc/runlab/agent.yaml").stdout.strip() == "root:runlab 640"
    assert c.run("id", "-nG", "runlab").stdout.strip() == "runlab"
    c.run("systemd-analyze", "verify", f"/lib/systemd/system/{unit}")
    exposure = re.search(r"exposure level for runlab-agent.service: ([\d.]+)",
                         c.run("systemd-analyze", "security", unit).stdout)
    assert exposure and float(exposure.group(1)) <= 2.0, exposure

    # What an admin does: edit the conffile, restart. The container shares the host's loopback.
    stack.collector(v1_section(influx)).start().wait_subscribed()
    conf = c.root / "etc" / "runlab" / "agent.yaml"
    conf.write_text(f"node: {NODE}\nmqtt:\n  url: {stack.mq.url}\nsampling:\n  interval: 1s\n  per_cpu: false\n")
    c.run("systemctl", "restart", unit)
    assert c.prop(unit, "ActiveState") == "active"  # Type=notify: restart returned after READY=1
    wait_until(lambda: len(host_times(influx, NODE)) >= 3, timeout=60, what="the packaged agent's host samples")
    assert c.prop(unit, "User") == "runlab"
    main_pid = c.prop(unit, "MainPID")
    assert c.run("ps", "-o", "user=", "-p", main_pid).stdout.strip() == "runlab"
    # It started itself again with one malloc arena (build/entry.py): systemd's MainPID is still the agent.
    environ = c.run("cat", f"/proc/{main_pid}/environ").stdout.split("\0")
    assert "MALLOC_ARENA_MAX=1" in environ, environ
    # OpenSSL comes from Debian's libssl3 (security updates through apt), not from a bundled copy.
    maps = {line.split()[-1] for line in c.run("cat", f"/proc/{main_pid}/maps").stdout.splitlines()
            if "libcrypto.so" in line}
    assert maps and all(not m.startswith("/usr/lib/runlab-agent") for m in maps), maps
    assert f"connected to {stack.mq.url} as node {NODE}" in c.journal(unit)
    assert c.prop(unit, "NRestarts") == "0"  # the watchdog was fed: no restarts
    # The outbox lives in the state directory, owned by runlab.
    assert c.run("stat", "-c", "%U", "/var/lib/runlab/spool/outbox.sqlite").stdout.strip() == "runlab"

    run_every_phase_as_the_service_would(c, tmp_path)

    c.run("systemctl", "stop", unit)
    assert c.prop(unit, "ActiveState") == "inactive"
    assert c.prop(unit, "Result") == "success" and c.prop(unit, "ExecMainStatus") == "0"
    assert "agent stopped" in c.journal(unit)
    offline = wait_until(lambda: [r for r in influx.rows(f"SELECT online FROM node_status WHERE node = '{NODE}'")
                                  if r[1] is False], what="the agent's offline status in InfluxDB")
    assert offline

    c.run("dpkg", "-r", "runlab-agent")
    for gone in ("/usr/lib/runlab-agent", "/usr/bin/runlab-agent", f"/lib/systemd/system/{unit}"):
        assert c.run("test", "-e", gone, check=False).returncode == 1, f"{gone} left after dpkg -r"
    assert c.run("test", "-f", "/etc/runlab/agent.yaml", check=False).returncode == 0  # conffiles stay until purge
    c.run("dpkg", "-P", "runlab-agent")
    after = c.paths()
    assert after - before == set(), f"left behind by install + purge: {sorted(after - before)}"
    leftovers = c.run("find", "/etc/systemd", "/var/lib/systemd", "-name", "*runlab*").stdout.split()
    assert leftovers == [], leftovers
    assert c.run("getent", "passwd", "runlab", check=False).returncode == 0  # the user is kept (Debian practice)
    print(f"\nbuild {built - t0:.0f} s, boot + install + run + remove {time.monotonic() - built:.0f} s")
