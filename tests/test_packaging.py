"""Fast packaging checks (seconds): sd_notify from the real agent and collector processes, the systemd units
(``systemd-analyze verify`` and the offline exposure score), the shipped conffiles, changelog and maintainer
scripts. The full install proof (a .deb booted in systemd-nspawn) is tests/test_packaging_install.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import AgentConfig
from agent.config import load_config as load_agent_config
from collector.config import CollectorConfig
from collector.config import load_config as load_collector_config
from runlab import __version__
from runlab.devservers import InfluxV1, Mosquitto
from runlab.sdnotify import Notifier
from tests.conftest import REPO, need, v1_section

UNITS = REPO / "deploy" / "systemd"
PACKAGING = REPO / "packaging"


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket (the real protocol, our end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, state: str, timeout: float = 30.0) -> list[str]:
        """Collect datagrams until one contains ``state`` (e.g. READY=1)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(msg)
            if state in msg.split("\n"):
                return self.messages
        raise AssertionError(f"no {state} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> NotifySocket:
    s = NotifySocket(tmp_path / "notify")
    yield s  # type: ignore[misc]
    s.close()


# -- sd_notify ---------------------------------------------------------------------------------------
def test_notifier_speaks_the_protocol_and_rate_limits_the_watchdog(notify_socket: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "10000000"})
    assert n.enabled and n.watchdog_interval == 5.0
    assert n.ready("node x")
    assert notify_socket.wait_for("READY=1")[-1] == "READY=1\nSTATUS=node x"
    assert n.watchdog()
    assert not n.watchdog()  # within half of WatchdogSec: not sent again
    assert n.stopping()
    assert notify_socket.wait_for("STOPPING=1")[-2:] == ["WATCHDOG=1", "STOPPING=1"]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"runlab-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(100) == b"READY=1"


def test_notifier_is_a_no_op_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready() and not n.watchdog() and not n.stopping()
    # WATCHDOG_PID names another process (systemd set it for our parent): not our watchdog.
    other = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval == 0.0
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/socket"}).ready()  # a send failure is not fatal


def _serve(module: str, config: Path, notify: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="400000")
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, "serve", "--config", str(config)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_agent_serve_tells_systemd_ready_watchdog_stopping(tmp_path: Path, mosquitto: Mosquitto,
                                                          notify_socket: NotifySocket) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"node: notify-node\nmqtt:\n  url: {mosquitto.url}\nspool:\n  path: {tmp_path}/spool\n")
    proc = _serve("agent", cfg, notify_socket.path, tmp_path / "agent.log")
    try:
        msgs = notify_socket.wait_for("READY=1")
        assert msgs[0].startswith("READY=1\nSTATUS=node notify-node")
        notify_socket.wait_for("WATCHDOG=1")
        notify_socket.wait_for("WATCHDOG=1")  # keeps coming while the event loop turns (every 0.2 s here)
    finally:
        rc = _stop(proc)
    notify_socket.wait_for("STOPPING=1")
    assert rc == 0, (tmp_path / "agent.log").read_text()


def test_collector_serve_tells_systemd_ready_watchdog_stopping(tmp_path: Path, mosquitto: Mosquitto,
                                                              influx: InfluxV1, notify_socket: NotifySocket) -> None:
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(f"mqtt:\n  url: {mosquitto.url}\n  client_id: notify-test\ninflux:\n{v1_section(influx)}\n"
                   f"quarantine:\n  path: {tmp_path}/q.jsonl\n")
    proc = _serve("collector", cfg, notify_socket.path, tmp_path / "collector.log")
    try:
        assert notify_socket.wait_for("READY=1")[0] == "READY=1"
        notify_socket.wait_for("WATCHDOG=1")
        notify_socket.wait_for("WATCHDOG=1")
    finally:
        rc = _stop(proc)
    notify_socket.wait_for("STOPPING=1")
    assert rc == 0, (tmp_path / "collector.log").read_text()


# -- units ---------------------------------------------------------------------------------------------
def _unit_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at the venv's entry point: verify insists the binary exists."""
    text = (UNITS / name).read_text()
    exe = name.removesuffix(".service")
    venv_bin = Path(sys.executable).parent / exe
    assert venv_bin.exists(), venv_bin
    out = tmp_path / name
    out.write_text(text.replace(f"/usr/bin/{exe} ", f"{venv_bin} "))
    return out


@pytest.mark.parametrize("name", ["runlab-agent.service", "runlab-collector.service"])
def test_unit_verifies_is_notify_with_watchdog_and_scores_at_most_2(tmp_path: Path, name: str) -> None:
    need("systemd-analyze")
    text = (UNITS / name).read_text()
    assert "Type=notify" in text and re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert "Restart=on-failure" in text
    assert "ProcSubset" not in text.replace("no ProcSubset", "")  # it hides /proc/stat from psutil
    unit = _unit_copy(tmp_path, name)
    v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and unit.name not in v.stderr, v.stderr
    s = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", s.stdout)
    assert m, s.stdout + s.stderr
    assert float(m.group(1)) <= 2.0, s.stdout


def test_agent_unit_comments_every_relaxation_in_the_drop_ins() -> None:
    for drop_in in ("vm.conf", "containers.conf"):
        lines = (PACKAGING / "examples" / drop_in).read_text().splitlines()
        for i, line in enumerate(lines):
            if "=" in line and not line.startswith("#"):
                assert lines[i - 1].startswith("#") or "=" in lines[i - 1], f"{drop_in}: {line!r} is not explained"


# -- package files -------------------------------------------------------------------------------------
def _keys(struct: type[msgspec.Struct], prefix: str = "") -> list[str]:
    out = []
    for f in msgspec.structs.fields(struct):
        if f.name == "source":
            continue
        out.append(prefix + f.name)
        t = f.type
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            out += _keys(t, prefix + f.name + ".")
    return out


@pytest.mark.parametrize(("conffile", "struct", "loader"), [
    ("agent.yaml", AgentConfig, load_agent_config), ("collector.yaml", CollectorConfig, load_collector_config)])
def test_conffile_loads_and_explains_every_key(conffile: str, struct: type[msgspec.Struct], loader: object) -> None:
    path = PACKAGING / conffile
    loader(str(path))  # type: ignore[operator]
    text = path.read_text()
    missing = [k for k in _keys(struct) if not re.search(rf"^\s*#?\s*{re.escape(k.split('.')[-1])}:", text, re.M)]
    assert not missing, f"{conffile} does not mention {missing}"


def test_agent_conffile_keeps_a_marked_place_for_fleet_control() -> None:
    assert "# --- fleet control" in (PACKAGING / "agent.yaml").read_text()


def test_changelog_top_entry_is_the_project_version() -> None:
    first = (PACKAGING / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"@PACKAGE@ ({__version__}-1) "), first


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_are_clean_posix_sh(tmp_path: Path, script: str) -> None:
    need("shellcheck")
    text = (PACKAGING / "scripts" / script).read_text()
    for pkg, conf, state in (("runlab-agent", "agent.yaml", "spool"),
                             ("runlab-collector", "collector.yaml", "quarantine.jsonl quarantine.jsonl.1")):
        rendered = tmp_path / f"{pkg}.{script}"
        rendered.write_text(text.replace("@PACKAGE@", pkg).replace("@CONF@", conf).replace("@STATE@", state))
        assert "@" not in rendered.read_text().replace("$@", "")
        subprocess.run(["sh", "-n", str(rendered)], check=True)
        sc = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2043", str(rendered)], capture_output=True, text=True)
        assert sc.returncode == 0, sc.stdout


def test_build_scripts_pass_shellcheck() -> None:
    need("shellcheck")
    scripts = [str(REPO / "build" / s) for s in ("rootfs.sh", "freeze.sh", "deb.sh")]
    sc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert sc.returncode == 0, sc.stdout


def test_freeze_requirements_are_exact_pins() -> None:
    for name in ("requirements-freeze.txt", "requirements-package.txt"):
        for line in (REPO / "build" / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or line.startswith("-c"):
                continue
            lock = (REPO / "requirements.lock").read_text().lower()
            assert "==" in line or f"\n{line.lower()}==" in "\n" + lock, f"{name}: {line} is not pinned"


def test_libraries_left_out_of_the_bundle_are_package_dependencies() -> None:
    """build/runlab.spec loads these from the system: the .deb must depend on the packages holding them."""
    package_of = {"libssl.so.3": "libssl3", "libcrypto.so.3": "libssl3", "libsqlite3.so.0": "libsqlite3-0",
                  "libz.so.1": "zlib1g", "libexpat.so.1": "libexpat1", "libffi.so.8": "libffi8",
                  "liblzma.so.5": "liblzma5", "libbz2.so.1.0": "libbz2-1.0", "libuuid.so.1": "libuuid1"}
    spec = (REPO / "build" / "runlab.spec").read_text()
    listed = re.search(r"SYSTEM_LIBS = \(([^)]*)\)", spec)
    assert listed
    libs = re.findall(r'"([^"]+)"', listed.group(1))
    assert sorted(libs) == sorted(package_of)
    depends = re.findall(r"^  - ([a-z0-9.+-]+)", (PACKAGING / "nfpm.yaml").read_text().split("depends:")[1]
                         .split("contents:")[0], re.M)
    for lib in libs:
        assert package_of[lib] in depends, f"{lib} is not bundled but {package_of[lib]} is not a dependency"


# --- the frozen agent runs what the source agent runs (issue 11) -------------------------------------------

def _entry_module() -> Any:
    spec = importlib.util.spec_from_file_location("runlab_frozen_entry", REPO / "build" / "entry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_starts_its_floor_servers_through_the_frozen_binary(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """In the bundle sys.executable is runlab-agent, whose argv is the agent's CLI (on main: `invalid choice`,
    then `calibrate: the floor server did not start`). Stand-in for the frozen binary: a script that runs
    build/entry.py, the bundle's entry point; with sys.frozen set, calibrate() must start its floor servers
    through it (``--runlab-helper floor-server``) and measure against them."""
    from agent import loadgen, pychild

    fake = tmp_path / "runlab-agent"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "build" / "entry.py"} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(fake))
    argv = pychild.argv("floor-server", "", "0")
    assert argv == [str(fake), "--runlab-helper", "floor-server", "", "0"]  # no Python source on the command line
    cal = asyncio.run(loadgen.calibrate(0.3))
    assert cal.floor_p50_ms > 0 and cal.floor_p99_ms >= cal.floor_p50_ms and cal.max_rps > 0
    # Only allow-listed helpers: the frozen binary is no interpreter for source given on its command line.
    for args in (["print('pwned')"], ["-c", "print('pwned')"], []):
        p = subprocess.run([str(fake), "--runlab-helper", *args], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "pwned" not in p.stdout and "expected a helper name" in p.stderr, p
    with pytest.raises(KeyError):
        pychild.argv("sh")


def test_frozen_entry_gives_children_the_environment_the_bootloader_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyInstaller's bootloader prepends its library directory to LD_LIBRARY_PATH (a workload linked to another
    libpython3.11 would load the bundle's) and sets _PYI_* variables; workloads must inherit neither."""
    entry = _entry_module()
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib/runlab-agent/_internal:/opt/mine")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/opt/mine")
    monkeypatch.setenv("_PYI_ARCHIVE_FILE", "/usr/lib/runlab-agent/runlab-agent")
    monkeypatch.setenv("_PYI_PARENT_PROCESS_LEVEL", "1")
    entry.restore_environment()
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/mine" and "LD_LIBRARY_PATH_ORIG" not in os.environ
    assert [n for n in os.environ if n.startswith("_PYI_")] == []
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib/runlab-agent/_internal")  # none before the bootloader's
    entry.restore_environment()
    assert "LD_LIBRARY_PATH" not in os.environ


def test_frozen_serve_limits_malloc_arenas_for_itself_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The frozen ``serve`` starts again with MALLOC_ARENA_MAX=1 (glibc reads it only at exec), and once so
    started takes it out of the environment its workloads inherit; an operator's own setting is left alone.
    (The install proof checks the running service's /proc/PID/environ.)"""
    entry = _entry_module()
    execs: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(entry.os, "execv", lambda path, argv: execs.append((path, list(argv), dict(os.environ))))
    monkeypatch.setattr(sys, "argv", ["runlab-agent", "serve", "--config", "/etc/runlab/agent.yaml"])
    for name in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES", entry.ARENA_MARK):
        monkeypatch.delenv(name, raising=False)
    entry.limit_malloc_arenas()  # first start: exec itself with the variable
    (path, argv, env), = execs
    assert path == sys.executable and argv == sys.argv
    assert env["MALLOC_ARENA_MAX"] == "1" and env[entry.ARENA_MARK] == "1"
    entry.limit_malloc_arenas()  # the second start (same environment): no exec, and children get neither
    assert len(execs) == 1 and "MALLOC_ARENA_MAX" not in os.environ and entry.ARENA_MARK not in os.environ
    for name, value in (("MALLOC_ARENA_MAX", "4"), ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")):
        monkeypatch.setenv(name, value)
        entry.limit_malloc_arenas()
        assert len(execs) == 1 and os.environ[name] == value
        monkeypatch.delenv(name)


def test_setuptools_in_tree_build_output_is_ignored() -> None:
    """setuptools builds in ./build (lib/, bdist.PLATFORM/), which is also this repository's build scripts'
    directory: `pip install .` / `pipx install .` (the documented collector install from source) left
    build/lib/ untracked and not ignored."""
    for path in ("build/lib/agent/cli.py", "build/bdist.linux-x86_64/wheel/x", "build/bdist.linux-aarch64/x"):
        p = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert p.returncode == 0, f"{path} is not ignored by .gitignore"
    p = subprocess.run(["git", "check-ignore", "-q", "--no-index", "build/smoke.py"], cwd=REPO)
    assert p.returncode == 1  # the build scripts themselves stay tracked
