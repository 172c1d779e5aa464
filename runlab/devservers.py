"""Throwaway local servers (Mosquitto, InfluxDB 1.x, VictoriaMetrics) for the demo, tests and benchmarks.

Each starts on a free loopback port in its own directory, waits until it really
answers, and stops (SIGTERM, then SIGKILL) on exit. Nothing here is used by the
agent or the collector in production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHIPPED_MOSQUITTO_CONF = REPO / "deploy" / "mosquitto" / "runlab.conf"
BROKER_SETUP = REPO / "deploy" / "mosquitto" / "runlab-broker-setup"
# Where runlab.conf expects the files of runlab-broker-setup; a secured test broker points these at its own.
SHIPPED_SECURE_DIR = "/etc/mosquitto/runlab/"
# Lines of the shipped broker config that name places of a real install: a test broker sets its own.
_INSTALL_ONLY = ("persistence_location", "pid_file", "log_dest", "include_dir", "user")
# ... and, for an anonymous test broker, every listener with its per-listener (TLS) options, and the auth.
_LOCAL_ONLY = (*_INSTALL_ONLY, "listener", "socket_domain", "bind_interface", "mount_point", "protocol",
               "max_connections", "cafile", "capath", "certfile", "keyfile", "crlfile", "dhparamfile", "ciphers",
               "ciphers_tls1.3", "tls_version", "tls_engine", "tls_keyform", "require_certificate",
               "use_identity_as_username", "use_subject_as_username", "use_username_as_clientid", "psk_hint",
               "psk_file", "password_file", "acl_file", "allow_anonymous", "auth_plugin", "plugin",
               "per_listener_settings")
# The shipped listeners, by port: a secured test broker moves each to a free loopback port.
_SHIPPED_PLAIN_PORT, _SHIPPED_TLS_PORT = 1883, 8883


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """A tiny HTTP client for readiness checks and queries; returns (status, body)."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class _Server:
    name = "server"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_ready(self) -> None:
        wait_tcp(self.port, proc=self.proc)

    def wait_http(self, url: str, status: int, timeout: float = 30.0) -> None:
        """Block until GET ``url`` answers ``status`` (the process must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited")
            with contextlib.suppress(OSError):
                if http("GET", url, timeout=0.5)[0] == status:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer {url} with {status}")

    def start(self) -> None:
        """Start (or restart after stop) on the same port and data directory."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                         start_new_session=True)
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; its log says:\n{self.log.read_text()[-2000:]}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class SecureSetup:
    """The files runlab-broker-setup wrote into ``dir`` (CA, server certificate, passwd, acl, client passwords)."""

    dir: Path

    @classmethod
    def create(cls, out: Path, nodes: Sequence[str], hosts: Sequence[str] = ("127.0.0.1", "localhost"),
               options: Sequence[str] = ()) -> SecureSetup:
        """Run deploy/mosquitto/runlab-broker-setup into ``out`` for ``nodes`` (plus collector and operator)."""
        cmd = [str(BROKER_SETUP), "--out", str(out), *(a for h in hosts for a in ("--host", h)), *options, *nodes]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"runlab-broker-setup failed ({done.returncode}): {done.stderr.strip()}")
        return cls(Path(out))

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    def password_file(self, user: str) -> Path:
        return self.dir / "clients" / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()


def mosquitto_config(shipped: str, workdir: Path, port: int, extra: str = "", secure: SecureSetup | None = None,
                     tls_port: int | None = None) -> str:
    """A test broker's config from the shipped runlab.conf, with this broker's ports and paths.

    Anonymous (``secure`` None): the shipped settings without any listener, TLS or auth line, plus one
    anonymous listener on 127.0.0.1:``port``. Secured: every shipped line, the listeners moved to loopback
    (1883 → ``port``, 8883 → ``tls_port``) and /etc/mosquitto/runlab/ → ``secure.dir``.
    """
    lines: list[str] = []
    for raw in shipped.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, *args = line.split()
        if key in (_LOCAL_ONLY if secure is None else _INSTALL_ONLY):
            continue
        if key == "listener":
            moved = {_SHIPPED_PLAIN_PORT: port, _SHIPPED_TLS_PORT: tls_port}.get(int(args[0]))
            if moved is None:
                raise ValueError(f"{SHIPPED_MOSQUITTO_CONF}: no test port for {line!r}")
            line = f"listener {moved} 127.0.0.1"
        elif secure is not None:
            line = line.replace(SHIPPED_SECURE_DIR, f"{secure.dir}/")
        lines.append(line)
    if secure is None:
        lines += [f"listener {port} 127.0.0.1", "allow_anonymous true"]
    return "\n".join([
        *lines,
        "user root",
        f"persistence_location {workdir}/",
        f"pid_file {workdir}/mosquitto.pid",
        "log_dest stderr",
        extra,
    ]) + "\n"


class Mosquitto(_Server):
    """Mosquitto 2 with the settings of deploy/mosquitto/runlab.conf on loopback.

    By default anonymous, on one plain listener (``url``). With ``secure`` (files of runlab-broker-setup):
    the shipped listeners, passwords and ACL, plain on ``port`` (``url``) and TLS on ``tls_port``
    (``tls_url``), both requiring a username and password as in production.
    """

    name = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "",
                 secure: SecureSetup | None = None) -> None:
        super().__init__(workdir, port)
        self.extra = extra
        self.secure = secure
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.tls_port = free_port() if secure is not None else None
        self.tls_url = f"mqtts://127.0.0.1:{self.tls_port}" if secure is not None else None

    def command(self) -> list[str]:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(mosquitto_config(SHIPPED_MOSQUITTO_CONF.read_text(), self.dir, self.port, self.extra,
                                         self.secure, self.tls_port))
        return [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]

    def wait_ready(self) -> None:
        wait_tcp(self.port, proc=self.proc)
        if self.tls_port is not None:
            wait_tcp(self.tls_port, proc=self.proc)


class InfluxV1(_Server):
    """InfluxDB 1.x (Debian's ``influxdb``) with one database created."""

    name = "influxd"

    def __init__(self, workdir: Path, port: int | None = None, database: str = "runlab",
                 max_body_size: int = 0) -> None:
        super().__init__(workdir, port)
        self.max_body_size = max_body_size  # bytes of a /write body; larger ones get 413 (0: no limit)
        self.rpc_port = free_port()
        self.database = database
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        d = self.dir
        conf = d / "influxdb.conf"
        conf.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = {self.max_body_size}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
""")
        return [shutil.which("influxd") or "/usr/bin/influxd", "-config", str(conf)]

    def wait_ready(self) -> None:
        self.wait_http(f"{self.url}/ping", 204)
        self.query(f'CREATE DATABASE "{self.database}"')

    def query(self, q: str, epoch: str = "ns") -> Any:
        """Run InfluxQL; return the decoded JSON."""
        import json

        params = urllib.parse.urlencode({"q": q, "db": self.database, "epoch": epoch})
        status, body = http("POST", f"{self.url}/query?{params}")
        if status != 200:
            raise RuntimeError(f"query failed ({status}): {body[:300]!r}")
        return json.loads(body)

    def rows(self, q: str) -> list[list[Any]]:
        """All value rows of the first series of the first statement."""
        res = self.query(q)["results"][0]
        if "error" in res:
            raise RuntimeError(res["error"])
        series = res.get("series") or []
        return [row for s in series for row in s["values"]]

    def write(self, lines: bytes) -> None:
        status, body = http("POST", f"{self.url}/write?db={self.database}&precision=ns", lines)
        if status != 204:
            raise RuntimeError(f"write failed ({status}): {body[:300]!r}")


class VictoriaMetrics(_Server):
    """VictoriaMetrics (Debian's ``victoria-metrics``): accepts the InfluxDB v2 write API."""

    name = "victoria-metrics"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        exe = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
        return [exe, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.dir}/data",
                "-retentionPeriod=100y", "-loggerLevel=ERROR", "-search.latencyOffset=0s"]

    def wait_ready(self) -> None:
        self.wait_http(f"{self.url}/health", 200)

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching the selector, with all values (after a forced flush)."""
        import json

        http("GET", f"{self.url}/internal/force_flush")
        q = urllib.parse.urlencode({"match[]": match})
        status, body = http("GET", f"{self.url}/api/v1/export?{q}")
        if status != 200:
            raise RuntimeError(f"export failed ({status}): {body[:300]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]
