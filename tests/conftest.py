"""Fixtures: real Mosquitto / InfluxDB 1.x / VictoriaMetrics on free loopback ports, and runlab processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runlab.devservers import InfluxV1, Mosquitto, SecureSetup, VictoriaMetrics

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = REPO / "build" / "cache" / "workloads"
PODMAN_STORE = (REPO / "build" / "cache").resolve() / "podman-store"  # podman keeps the resolved path


@pytest.fixture(scope="session")
def workloads() -> Path:
    """Build (or reuse: build.sh skips what is up to date) the hello binary, its podman image and the microVM
    kernel + initramfs, once per session, for every test that starts a real workload."""
    env = {**os.environ, "PODMAN_STORE": str(PODMAN_STORE)}
    r = subprocess.run(["bash", str(REPO / "build" / "workloads" / "build.sh"), str(WORKLOADS)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return WORKLOADS


def need(binary: str) -> None:
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        pytest.fail(f"{binary} is not installed: run `make test`, which installs it")


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.1) -> Any:
    """Poll ``predicate`` (a query against a real server) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RunlabProcess:
    """``python -m agent|collector serve`` as a real subprocess, with its log kept."""

    def __init__(self, module: str, config: Path, log: Path) -> None:
        self.module, self.config, self.logpath = module, config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RunlabProcess:
        with open(self.logpath, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, "serve", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        self.proc = None

    def wait_subscribed(self) -> RunlabProcess:
        """Block until a collector's session has subscribed (from then on the broker queues for it)."""
        wait_until(lambda: "subscribed to samples" in self.log(), what=f"{self.module} to subscribe")
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.logpath.read_text(errors="replace") if self.logpath.exists() else ""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    need("mosquitto")
    with Mosquitto(tmp_path / "mosquitto") as mq:
        yield mq


@pytest.fixture(scope="session")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxV1]:
    need("influxd")
    with InfluxV1(tmp_path_factory.mktemp("influxdb")) as server:
        yield server


@pytest.fixture
def influx(influx_server: InfluxV1) -> InfluxV1:
    """The session's InfluxDB with a fresh database for this test."""
    influx_server.database = f"t_{uuid.uuid4().hex[:10]}"
    influx_server.query(f'CREATE DATABASE "{influx_server.database}"')
    return influx_server


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    need("victoria-metrics")
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria")) as server:
        yield server


class Stack:
    """Writes agent/collector configs in a temp dir and starts them as processes."""

    def __init__(self, tmp: Path, mq: Mosquitto) -> None:
        self.tmp, self.mq = tmp, mq
        self.procs: list[RunlabProcess] = []
        self.quarantine = tmp / "quarantine.jsonl"

    def agent(self, node: str = "node-a", interval: str = "250ms", max_bytes: str = "64MB",
              extra: str = "") -> RunlabProcess:
        cfg = self.tmp / f"agent-{node}.yaml"
        cfg.write_text(f"node: {node}\nmqtt:\n  url: {self.mq.url}\nspool:\n  path: {self.tmp}/spool-{node}\n"
                       f"  max_bytes: {max_bytes}\nsampling:\n  interval: {interval}\n  per_cpu: false\n"
                       f"log_level: debug\n{extra}")
        p = RunlabProcess("agent", cfg, self.tmp / f"agent-{node}.log")
        self.procs.append(p)
        return p

    def collector(self, influx_section: str, name: str = "runlab-collector", share_group: str | None = None
                  ) -> RunlabProcess:
        cfg = self.tmp / f"{name}.yaml"
        share = f"  share_group: '{share_group}'\n" if share_group is not None else ""
        cfg.write_text(f"mqtt:\n  url: {self.mq.url}\n  client_id: {name}\n{share}influx:\n{influx_section}\n"
                       f"quarantine:\n  path: {self.quarantine}\nmetrics_interval: 1s\nlog_level: debug\n")
        p = RunlabProcess("collector", cfg, self.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop()
            if p.proc is not None:
                with contextlib.suppress(Exception):
                    os.kill(p.proc.pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Stack]:
    s = Stack(tmp_path, mosquitto)
    yield s
    s.stop_all()


def v1_section(influx: InfluxV1) -> str:
    return f"  url: {influx.url}\n  api: v1\n  database: {influx.database}"


def host_times(influx: InfluxV1, node: str = "node-a") -> list[int]:
    """Timestamps (ns) of every host point of ``node``, ascending."""
    return [r[0] for r in influx.rows(f"SELECT cpu_percent FROM host WHERE node = '{node}'")]


# -- the shipped, secured broker -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SecureSetup:
    """runlab-broker-setup's users, TLS and the shipped ACL, for the nodes the test module names in
    ``SECURE_NODES`` (one per module: the broker below runs it)."""
    for tool in ("mosquitto", "mosquitto_passwd", "openssl"):
        need(tool)
    return SecureSetup.create(tmp_path_factory.mktemp("broker-setup"), list(request.module.SECURE_NODES))


@pytest.fixture(scope="module")
def broker(setup: SecureSetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto running ``setup`` on free loopback ports."""
    with Mosquitto(tmp_path_factory.mktemp("secure-mosquitto"), secure=setup) as mq:
        yield mq
