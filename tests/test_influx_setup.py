"""deploy/influxdb (setup scripts, forever copies) and `runlab-collector check`, against real servers.

InfluxDB 1.x is Debian's 1.6 (runlab.devservers.InfluxV1), also started with auth on; VictoriaMetrics is
Debian's. InfluxDB 2.x and 3.x are not installable here (no package source): their part of the check is
exercised against a small stand-in that answers with the status codes and messages of InfluxDB 2.7's
source (noted at each test), and the 2.x/3.x setup is documented, not run.
"""

from __future__ import annotations

import http.server as httpserver
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runlab.devservers import InfluxV1, Mosquitto, VictoriaMetrics, free_port, http
from tests.conftest import REPO, need

SETUP_V1 = REPO / "deploy" / "influxdb" / "setup-v1.sh"
KEEP_V1 = REPO / "deploy" / "influxdb" / "keep-results-v1.sh"
SCRIPTS = sorted((REPO / "deploy" / "influxdb").glob("*.sh"))


# --- helpers ------------------------------------------------------------------------------------------

def run(cmd: list[str] | str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def influx_cli(server: InfluxV1, query: str, user: str = "", password: str = "") -> list[list[str]]:
    """Rows (CSV, header included) of the 1.x `influx` CLI's answer to ``query``."""
    env = {"INFLUX_USERNAME": user, "INFLUX_PASSWORD": password} if user else {}
    out = run(["influx", "-host", "127.0.0.1", "-port", str(server.port), "-format", "csv", "-execute", query],
              env=env).stdout
    return [line.split(",") for line in out.splitlines() if line]


def setup_v1(server: InfluxV1, db: str, out: Path, *extra: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return run([str(SETUP_V1), "--host", "127.0.0.1", "--port", str(server.port), "--db", db, "--out", str(out),
                *extra], env=env)


def collector_check(tmp: Path, mq: Mosquitto, influx: str) -> subprocess.CompletedProcess[str]:
    """`python -m collector check` with this influx section, as a real subprocess."""
    cfg = tmp / f"collector-{uuid.uuid4().hex[:6]}.yaml"
    cfg.write_text(f"mqtt:\n  url: {mq.url}\ninflux:\n{influx}\nquarantine:\n  path: {tmp}/quarantine.jsonl\n")
    proc = subprocess.run([sys.executable, "-m", "collector", "check", "--config", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def store_line(proc: subprocess.CompletedProcess[str]) -> str:
    return next(line for line in proc.stdout.splitlines() if line.startswith("store "))


def suggested_commands(output: str, program: str) -> list[str]:
    """The command lines the check printed for the user to run (indented, starting with ``program``)."""
    return [line.strip() for line in output.splitlines() if line.strip().startswith(program + " ")]


def http_as(server: InfluxV1, method: str, path: str, user: str, password: str, body: bytes | None = None
            ) -> tuple[int, bytes]:
    sep = "&" if "?" in path else "?"
    return http(method, f"{server.url}{path}{sep}{urllib.parse.urlencode({'u': user, 'p': password})}", body)


class AuthInflux(InfluxV1):
    """Debian's InfluxDB 1.6 with ``auth-enabled = true`` and no user yet (as after a fresh install)."""

    def command(self) -> list[str]:
        cmd = super().command()
        conf = self.dir / "influxdb.conf"
        conf.write_text(conf.read_text().replace("[http]\n", "[http]\n  auth-enabled = true\n"))
        return cmd

    def wait_ready(self) -> None:  # no query: without an admin user, only CREATE USER … WITH ALL PRIVILEGES works
        self.wait_http(f"{self.url}/ping", 204)


@pytest.fixture(scope="module")
def auth_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuthInflux, Path]]:
    """An auth-enabled InfluxDB 1.6 set up by setup-v1.sh --create-admin; yields it and the password dir."""
    need("influxd")
    need("influx")
    tmp = tmp_path_factory.mktemp("influx-auth")
    with AuthInflux(tmp / "server") as server:
        out = tmp / "passwords"
        setup_v1(server, "runlab", out, "--create-admin", "admin", env={"INFLUX_PASSWORD": "admin-pw"})
        yield server, out


ADMIN = {"INFLUX_USERNAME": "admin", "INFLUX_PASSWORD": "admin-pw"}


# --- setup-v1.sh --------------------------------------------------------------------------------------

def test_setup_v1_creates_database_retention_policies_and_users(influx_server: InfluxV1, tmp_path: Path) -> None:
    need("influx")
    db = f"s_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "passwords"
    first = setup_v1(influx_server, db, out)
    assert f"database {db}: created" in first.stdout

    rps = {row[0]: row for row in influx_cli(influx_server, f'SHOW RETENTION POLICIES ON "{db}"')[1:]}
    assert set(rps) == {"raw", "results"}, rps  # created with raw: no infinite autogen to fill by mistake
    assert rps["raw"][1] == "720h0m0s" and rps["raw"][4] == "true"
    assert rps["results"][1] == "0s" and rps["results"][4] == "false"  # 0s = forever

    users = {row[0]: row[1] for row in influx_cli(influx_server, "SHOW USERS")[1:]}
    assert {"collector", "grafana", "keeper"} <= set(users)
    assert users["collector"] == users["grafana"] == users["keeper"] == "false"  # none is an admin
    grants = {u: {row[0]: row[1] for row in influx_cli(influx_server, f'SHOW GRANTS FOR "{u}"')[1:]}
              for u in ("collector", "grafana", "keeper")}
    assert grants == {"collector": {db: "WRITE"}, "grafana": {db: "READ"}, "keeper": {db: "ALL PRIVILEGES"}}

    files = {p.name: p for p in out.iterdir()}
    assert set(files) == {"collector.password", "grafana.password", "keeper.password", "keeper.env"}
    runlab_group = subprocess.run(["getent", "group", "runlab"], capture_output=True).returncode == 0
    for p in files.values():
        shared = p.name == "collector.password" and runlab_group
        assert stat.S_IMODE(p.stat().st_mode) == (0o640 if shared else 0o600), p
    before = {name: p.read_text() for name, p in files.items()}

    # Again: nothing changes, passwords are kept; a privilege widened by hand is taken back.
    influx_cli(influx_server, f'GRANT ALL ON "{db}" TO "collector"')
    second = setup_v1(influx_server, db, out)
    assert f"database {db}: exists" in second.stdout
    assert {name: p.read_text() for name, p in files.items()} == before
    assert influx_cli(influx_server, 'SHOW GRANTS FOR "collector"')[1:] == [[db, "WRITE"]]
    assert {row[0] for row in influx_cli(influx_server, f'SHOW RETENTION POLICIES ON "{db}"')[1:]} == {"raw", "results"}


def test_setup_v1_leaves_etc_runlab_readable_and_the_collector_its_password(influx_server: InfluxV1,
                                                                             tmp_path: Path) -> None:
    """Under setup-v1.sh's umask 077, /etc/runlab itself came out 0700: the collector's user could not even
    read collector.yaml. Now only the password directory is closed, and the collector's group may enter it."""
    need("influx")
    db = f"m_{uuid.uuid4().hex[:8]}"
    etc = tmp_path / "etc"  # does not exist yet, like /etc/runlab on a fresh box
    out = etc / "runlab" / "influx"
    setup_v1(influx_server, db, out, "--group", "daemon")  # a group every Debian has
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(etc / "runlab") == 0o755
    assert mode(out) == 0o710 and out.group() == "daemon"
    assert mode(out / "collector.password") == 0o640 and (out / "collector.password").group() == "daemon"
    for secret in ("grafana.password", "keeper.password", "keeper.env"):
        assert mode(out / secret) == 0o600, secret
    # A hand-made mistake is put right by the next run.
    (out / "collector.password").chmod(0o600)
    setup_v1(influx_server, db, out, "--group", "daemon")
    assert mode(out / "collector.password") == 0o640
    # No such group yet (the collector package is not installed): closed, and the script says what to do.
    other = tmp_path / "o2"
    r = setup_v1(influx_server, db, other, "--group", "no-such-group-x")
    assert mode(other) == 0o700 and mode(other / "collector.password") == 0o600
    assert "group no-such-group-x does not exist yet" in r.stderr and "run this again" in r.stderr


def test_setup_v1_on_an_existing_database_adds_the_policies(influx_server: InfluxV1, tmp_path: Path) -> None:
    """A database the collector already wrote to (autogen default): raw becomes the default, autogen is reported."""
    need("influx")
    db = f"e_{uuid.uuid4().hex[:8]}"
    influx_server.query(f'CREATE DATABASE "{db}"')
    proc = setup_v1(influx_server, db, tmp_path / "pw", "--no-users", "--raw-duration", "14d")
    rps = {row[0]: row for row in influx_cli(influx_server, f'SHOW RETENTION POLICIES ON "{db}"')[1:]}
    assert rps["raw"][1] == "336h0m0s" and rps["raw"][4] == "true"
    assert rps["autogen"][4] == "false"
    assert "DROP RETENTION POLICY" in proc.stderr
    assert not (tmp_path / "pw").exists()


def test_keep_results_copies_run_measurements_unchanged(influx_server: InfluxV1, tmp_path: Path) -> None:
    """run_sample and run_summary land in the forever policy with their tags as tags and their field types;
    raw measurements do not; running it again changes nothing."""
    need("influx")
    db = f"k_{uuid.uuid4().hex[:8]}"
    setup_v1(influx_server, db, tmp_path / "pw", "--no-users")
    now = time.time_ns()
    old = now - 2 * 86400 * 10**9  # delivered late (agent spool): still within the 3-day window
    influx_server.database = db
    influx_server.write(
        f"run_summary,node=n1,experiment=hello,variant=native,figure=startup_ms "
        f'median=1.5,n=30i,ok=true,unit="ms" {now}\n'
        f"run_sample,node=n1,experiment=hello,variant=native,figure=startup_ms,warmup=false value=1.25 {now + 1}\n"
        f"run_sample,node=n1,experiment=hello,variant=native,figure=startup_ms,warmup=false value=2.5 {old}\n"
        f"host,node=n1 cpu_percent=3.5 {now}\n".encode())
    keep = [str(KEEP_V1), "--host", "127.0.0.1", "--port", str(influx_server.port), "--db", db]
    assert "copied 3 points" in run(keep).stdout
    assert "copied 3 points" in run(keep).stdout

    def rows(q: str) -> list[list[str]]:
        return influx_cli(influx_server, q)[1:]

    assert rows(f'SELECT count(*) FROM "{db}"."results"."host"') == []
    assert [r[1:] for r in rows(f'SELECT value, figure FROM "{db}"."results"."run_sample"')] == [
        [str(old), "2.5", "startup_ms"], [str(now + 1), "1.25", "startup_ms"]]
    assert {r[1] for r in rows(f'SHOW TAG KEYS ON "{db}" FROM "results"."run_summary"')} == {
        "experiment", "figure", "node", "variant"}
    assert {r[1]: r[2] for r in rows(f'SHOW FIELD KEYS ON "{db}" FROM "results"."run_summary"')} == {
        "median": "float", "n": "integer", "ok": "boolean", "unit": "string"}


def test_setup_v1_with_auth_gives_each_user_only_its_part(auth_influx: tuple[AuthInflux, Path]) -> None:
    """collector writes but cannot read, grafana reads but cannot write, keeper copies; checked over HTTP."""
    server, out = auth_influx
    pw = {u: (out / f"{u}.password").read_text().strip() for u in ("collector", "grafana", "keeper")}
    line = f"probe,node=n1 value=1 {time.time_ns()}\n".encode()
    query = "/query?" + urllib.parse.urlencode({"db": "runlab", "q": 'SELECT * FROM "probe"'})

    assert http_as(server, "POST", "/write?db=runlab", "collector", pw["collector"], line)[0] == 204
    status, body = http_as(server, "POST", query, "collector", pw["collector"])
    assert status == 403 and b"requires READ" in body
    assert http_as(server, "POST", "/write?db=runlab", "grafana", pw["grafana"], line)[0] == 403
    status, body = http_as(server, "POST", query, "grafana", pw["grafana"])
    assert status == 200 and b'"probe"' in body
    assert http_as(server, "POST", "/write?db=runlab", "collector", "wrong", line)[0] == 401

    keeper_env = dict(ln.split("=", 1) for ln in (out / "keeper.env").read_text().splitlines())
    assert keeper_env == {"INFLUX_USERNAME": "keeper", "INFLUX_PASSWORD": pw["keeper"]}
    run([str(KEEP_V1), "--host", "127.0.0.1", "--port", str(server.port)], env=keeper_env)
    # Run again as the admin it created first: idempotent, the admin's password is not touched.
    setup_v1(server, "runlab", out, env=ADMIN)


def test_setup_v1_without_admin_on_a_fresh_auth_server_says_how(tmp_path: Path) -> None:
    need("influxd")
    need("influx")
    with AuthInflux(tmp_path / "server") as server:
        proc = run([str(SETUP_V1), "--host", "127.0.0.1", "--port", str(server.port), "--out", str(tmp_path / "o")],
                   check=False)
    assert proc.returncode == 1
    assert "--create-admin" in proc.stderr and "WITH ALL PRIVILEGES" in proc.stderr


# --- runlab-collector check: InfluxDB 1.x -------------------------------------------------------------

def test_check_v1_ok(influx_server: InfluxV1, mosquitto: Mosquitto, tmp_path: Path) -> None:
    proc = collector_check(tmp_path, mosquitto, f"  url: {influx_server.url}\n  api: v1\n  database: runlab")
    assert proc.returncode == 0, proc.stdout
    assert store_line(proc).endswith("(v1 API, database runlab): ok")
    assert "server: InfluxDB 1.6" in proc.stdout
    assert "reads: InfluxQL on database 'runlab' works" in proc.stdout


def test_check_v1_missing_database_prints_the_command_that_creates_it(
        influx_server: InfluxV1, mosquitto: Mosquitto, tmp_path: Path) -> None:
    need("influx")
    db = f"m_{uuid.uuid4().hex[:8]}"
    section = f"  url: {influx_server.url}\n  api: v1\n  database: {db}"
    proc = collector_check(tmp_path, mosquitto, section)
    assert proc.returncode == 1
    assert store_line(proc).endswith(f"database '{db}' does not exist")
    assert "deploy/influxdb/setup-v1.sh" in proc.stdout
    commands = suggested_commands(proc.stdout, "influx")
    assert commands == [f"influx -host 127.0.0.1 -port {influx_server.port} -execute 'CREATE DATABASE \"{db}\"'"]
    run(commands[0])  # exactly what the user is told to run
    after = collector_check(tmp_path, mosquitto, section)
    assert after.returncode == 0, after.stdout


def test_check_v1_missing_retention_policy(influx_server: InfluxV1, mosquitto: Mosquitto, tmp_path: Path) -> None:
    need("influx")
    db = f"r_{uuid.uuid4().hex[:8]}"
    influx_server.query(f'CREATE DATABASE "{db}"')
    section = f"  url: {influx_server.url}\n  api: v1\n  database: {db}\n  retention_policy: raw"
    proc = collector_check(tmp_path, mosquitto, section)
    assert proc.returncode == 1
    assert store_line(proc).endswith(f"retention policy 'raw' does not exist in database '{db}'")
    [command] = suggested_commands(proc.stdout, "influx")
    run(command)
    assert collector_check(tmp_path, mosquitto, section).returncode == 0


@pytest.mark.parametrize(("case", "expect"), [
    ("no-user", "InfluxDB requires authentication and influx.username is not set"),
    ("wrong-password", "InfluxDB refused user 'collector' (authorization failed): wrong password, or no such user"),
    ("no-such-user", "InfluxDB refused user 'nobody' (authorization failed): wrong password, or no such user"),
    ("read-only-user", "user 'grafana' may not write to database 'runlab' (\"grafana\" user is not authorized to "
                       'write to database "runlab")'),
])
def test_check_v1_auth_problems_name_the_user_and_the_fix(
        auth_influx: tuple[AuthInflux, Path], mosquitto: Mosquitto, tmp_path: Path, case: str, expect: str) -> None:
    server, out = auth_influx
    user, password_file = {"no-user": ("", ""),
                           "wrong-password": ("collector", "wrong"),
                           "no-such-user": ("nobody", "whatever"),
                           "read-only-user": ("grafana", str(out / "grafana.password"))}[case]
    section = f"  url: {server.url}\n  api: v1\n  database: runlab"
    if user:
        pw_path = Path(password_file) if password_file.startswith("/") else tmp_path / "pw"
        if not password_file.startswith("/"):
            pw_path.write_text(password_file + "\n")
        section += f"\n  username: {user}\n  password_file: {pw_path}"
    proc = collector_check(tmp_path, mosquitto, section)
    assert proc.returncode == 1
    assert store_line(proc).split("): ", 1)[1] == expect, proc.stdout
    commands = suggested_commands(proc.stdout, "influx")
    assert commands and all(c.startswith(f"influx -host 127.0.0.1 -port {server.port} -execute ") for c in commands)
    assert "INFLUX_USERNAME and INFLUX_PASSWORD" in proc.stdout
    if case == "read-only-user":  # the printed GRANT, run as the admin, fixes it
        [grant] = commands
        assert grant.endswith("""'GRANT WRITE ON "runlab" TO "grafana"'""")
        run(grant, env=ADMIN)
        try:
            assert collector_check(tmp_path, mosquitto, section).returncode == 0
        finally:
            run(grant.replace("GRANT WRITE", "GRANT READ"), env=ADMIN)


def test_check_v1_write_only_user_passes_and_says_reads_are_for_grafana(
        auth_influx: tuple[AuthInflux, Path], mosquitto: Mosquitto, tmp_path: Path) -> None:
    server, out = auth_influx
    proc = collector_check(tmp_path, mosquitto, f"  url: {server.url}\n  api: v1\n  database: runlab\n"
                                                f"  username: collector\n  password_file: {out}/collector.password")
    assert proc.returncode == 0, proc.stdout
    assert ("reads: user 'collector' may not read 'runlab' — right for the collector's own write-only user"
            in proc.stdout)
    # The GRANT it suggests needs an admin: it says how the influx CLI gets one (auth is on here).
    assert "export INFLUX_USERNAME and INFLUX_PASSWORD of an admin first" in proc.stdout
    assert "-execute 'GRANT READ ON \"runlab\" TO grafana'" in proc.stdout


# --- runlab-collector check: VictoriaMetrics, unreachable, wrong API -----------------------------------

@pytest.mark.parametrize("api", ["v2", "v1"])
def test_check_victoriametrics_writes_ok_and_says_reads_are_not_influxql(
        victoria: VictoriaMetrics, mosquitto: Mosquitto, tmp_path: Path, api: str) -> None:
    section = (f"  url: {victoria.url}\n  api: v2\n  org: homelab\n  bucket: runlab\n  token: unused" if api == "v2"
               else f"  url: {victoria.url}\n  api: v1\n  database: runlab")
    proc = collector_check(tmp_path, mosquitto, section)
    assert proc.returncode == 0, proc.stdout  # the collector can work: writes are accepted
    assert store_line(proc).endswith(": ok")
    assert "server: VictoriaMetrics" in proc.stdout
    assert "does not implement InfluxQL reads" in proc.stdout
    assert "no DBRP mapping" not in proc.stdout and "dbrp create" not in proc.stdout  # not a 2.x problem


def test_victoriametrics_query_endpoint_is_a_stub(victoria: VictoriaMetrics) -> None:
    """What the check relies on: VictoriaMetrics' /query answers any query with its database list."""
    status, body = http("POST", f"{victoria.url}/query?" + urllib.parse.urlencode(
        {"db": "runlab", "q": 'SELECT * FROM "collector" LIMIT 1'}))
    assert status == 200
    series = json.loads(body)["results"][0]["series"]
    assert series[0]["name"] == "databases" and series[0]["columns"] == ["name"]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_check_unreachable_store(mosquitto: Mosquitto, tmp_path: Path, api: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = collector_check(tmp_path, mosquitto, f"  url: {url}\n  api: {api}\n  token: x")
    assert proc.returncode == 1
    assert store_line(proc).endswith("cannot reach it: [Errno 111] Connection refused")
    assert "is InfluxDB running and listening there?" in proc.stdout


def test_check_v2_api_against_influxdb_16_says_use_v1(influx_server: InfluxV1, mosquitto: Mosquitto,
                                                      tmp_path: Path) -> None:
    proc = collector_check(tmp_path, mosquitto, f"  url: {influx_server.url}\n  api: v2\n  bucket: runlab\n  token: x")
    assert proc.returncode == 1
    assert "this server has no InfluxDB v2 write API" in store_line(proc)
    assert "set influx.api: v1" in proc.stdout


def test_check_unreachable_broker_says_so(influx_server: InfluxV1, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"mqtt:\n  url: mqtt://127.0.0.1:{free_port()}\ninflux:\n  url: {influx_server.url}\n  api: v1\n"
                   f"quarantine:\n  path: {tmp_path}/q.jsonl\n")
    proc = run([sys.executable, "-m", "collector", "check", "--config", str(cfg)], check=False)
    assert proc.returncode == 1
    assert "is Mosquitto running and listening there?" in proc.stdout
    assert "store " in proc.stdout and store_line(proc).endswith(": ok")


# --- runlab-collector check: InfluxDB 2.x / 3.x answers (stand-in) ------------------------------------

class Influx2StandIn(httpserver.ThreadingHTTPServer):
    """Answers like InfluxDB 2.7 for what the check asks. Status codes and messages are those of InfluxDB's
    source: the auth middleware ("unauthorized access", 401), the write handler (organization / bucket not
    found, 404; an empty body, 400), and the InfluxQL executor (v1/coordinator/statement_executor.go
    normalizeMeasurement: "database not found: <db>" when no DBRP mapping is visible to the token)."""

    def __init__(self, tokens: dict[str, str], mapped: bool = True, version: str = "v2.7.10") -> None:
        self.tokens = tokens  # token -> "all" | "write" | "read"
        self.mapped = mapped
        self.version = version
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _StandInHandler(httpserver.BaseHTTPRequestHandler):
    server: Influx2StandIn

    def log_message(self, *_args: Any) -> None:
        pass

    def _send(self, status: int, body: object = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("X-Influxdb-Version", self.server.version)
        self.send_header("X-Influxdb-Build", "OSS")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append(f"{self.command} {url.path}")
        if url.path == "/ping":
            return self._send(204)
        token = (self.headers.get("Authorization") or "").removeprefix("Token ")
        role = self.server.tokens.get(token)
        if role is None:
            return self._send(401, {"code": "unauthorized", "message": "unauthorized access"})
        if url.path == "/api/v2/write":
            if params.get("org") != "homelab":
                return self._send(404, {"code": "not found", "message": f'organization name "{params.get("org")}" '
                                                                         "not found"})
            if params.get("bucket") != "runlab":
                return self._send(404, {"code": "not found", "message": f'bucket "{params.get("bucket")}" not found'})
            if role == "read":
                return self._send(403, {"code": "forbidden", "message": "insufficient permissions for write"})
            return self._send(400, {"code": "invalid", "message": "writing requires points"})
        if url.path == "/query":
            params.update(urllib.parse.parse_qsl(body.decode()))
            if not self.server.mapped or role == "write":  # the authorized DBRP service hides what it cannot read
                return self._send(200, {"results": [{"statement_id": 0,
                                                     "error": f"database not found: {params['db']}"}]})
            return self._send(200, {"results": [{"statement_id": 0}]})
        if url.path == "/api/v2/buckets":
            if role == "write":
                return self._send(200, {"buckets": []})
            return self._send(200, {"buckets": [{"id": "0123456789abcdef", "name": params.get("name")}]})
        return self._send(404, {"code": "not found", "message": "path not found"})

    do_GET = do_POST = _handle


@pytest.fixture
def standin() -> Iterator[Influx2StandIn]:
    server = Influx2StandIn({"admin-token": "all", "writer-token": "write", "reader-token": "read"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def v2(server: Influx2StandIn, token: str = "writer-token", org: str = "homelab", bucket: str = "runlab") -> str:
    return f"  url: {server.url}\n  api: v2\n  org: {org}\n  bucket: {bucket}\n  token: {token}"


def test_check_v2_write_only_token_is_ok_and_explains_the_read_side(
        standin: Influx2StandIn, mosquitto: Mosquitto, tmp_path: Path) -> None:
    proc = collector_check(tmp_path, mosquitto, v2(standin))
    assert proc.returncode == 0, proc.stdout
    assert "server: InfluxDB v2.7.10 (OSS)" in proc.stdout
    assert "or this token may not read the bucket (right for the collector's own write-only token" in proc.stdout
    [listing, create] = suggested_commands(proc.stdout, "influx")
    assert listing == f"influx v1 dbrp list --host {standin.url} --org homelab --db runlab"
    assert create == (f"influx v1 dbrp create --host {standin.url} --org homelab --db runlab --rp autogen "
                      f"--bucket-id $(influx bucket list --host {standin.url} --org homelab --name runlab "
                      "--hide-headers | cut -f 1) --default")


def test_check_v2_missing_dbrp_with_a_token_that_reads(standin: Influx2StandIn, mosquitto: Mosquitto,
                                                       tmp_path: Path) -> None:
    standin.mapped = False
    proc = collector_check(tmp_path, mosquitto, v2(standin, token="admin-token"))
    assert proc.returncode == 0, proc.stdout  # the collector works; Grafana would not
    assert "bucket 'runlab' has no DBRP mapping, so Grafana and `runlab report` cannot query it" in proc.stdout
    assert any(c.startswith("influx v1 dbrp create ") for c in suggested_commands(proc.stdout, "influx"))
    standin.mapped = True
    proc = collector_check(tmp_path, mosquitto, v2(standin, token="admin-token"))
    assert "reads: InfluxQL /query?db=runlab works" in proc.stdout and "dbrp create" not in proc.stdout


@pytest.mark.parametrize(("kwargs", "first", "fix"), [
    ({"token": "bad"}, "InfluxDB refused the token (HTTP 401: unauthorized access): the token is not valid here",
     "influx auth create --host {url} --org homelab --description runlab-collector --write-bucket "
     "$(influx bucket list --host {url} --org homelab --name runlab --hide-headers | cut -f 1)"),
    ({"token": "reader-token"}, "the token may not write to bucket 'runlab' (HTTP 403: insufficient permissions for "
     "write)", "influx auth create --host {url} --org homelab --description runlab-collector --write-bucket "
     "$(influx bucket list --host {url} --org homelab --name runlab --hide-headers | cut -f 1)"),
    ({"bucket": "runlabx"}, "bucket 'runlabx' not found in organization 'homelab', or this token may not see it "
     '(bucket "runlabx" not found)', "influx bucket create --host {url} --org homelab --name runlabx --retention 30d"),
    ({"org": "nope"}, "organization 'nope' not found (organization name \"nope\" not found)",
     "influx org create --host {url} --name nope"),
])
def test_check_v2_write_problems_print_the_influx_command(
        standin: Influx2StandIn, mosquitto: Mosquitto, tmp_path: Path, kwargs: dict[str, str], first: str,
        fix: str) -> None:
    proc = collector_check(tmp_path, mosquitto, v2(standin, **kwargs))
    assert proc.returncode == 1
    assert store_line(proc).split("): ", 1)[1] == first, proc.stdout
    assert fix.format(url=standin.url) in suggested_commands(proc.stdout, "influx"), proc.stdout


# --- the scripts themselves -----------------------------------------------------------------------------

def test_scripts_are_executable_bash_and_shellcheck_clean() -> None:
    assert SCRIPTS, "no scripts in deploy/influxdb"
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable (the InfluxDB image runs only those)"
        run(["bash", "-n", str(script)])
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    run(["shellcheck", "--severity=style", *map(str, SCRIPTS)])


def test_setup_scripts_refuse_the_wrong_influx_cli(tmp_path: Path) -> None:
    """setup-v1.sh wants the 1.x CLI, setup-v2.sh the 2.x one: both are called `influx`."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "influx").write_text("#!/bin/sh\necho 'Influx CLI 2.7.5 (git: 1234) build_date: 2024-01-01'\n")
    (fake / "influx").chmod(0o755)
    proc = run([str(SETUP_V1)], env={"PATH": f"{fake}:{os.environ['PATH']}"}, check=False)
    assert proc.returncode == 1 and "not the InfluxDB 1.x CLI" in proc.stderr
    if shutil.which("influx"):
        proc = run([str(REPO / "deploy" / "influxdb" / "setup-v2.sh")], check=False)
        assert proc.returncode == 1 and "not the InfluxDB 2.x CLI" in proc.stderr


def test_readme_commands_name_existing_files() -> None:
    """Every deploy/influxdb/… path the docs mention exists."""
    for doc in (REPO / "deploy" / "influxdb" / "README.md", REPO / "deploy" / "influxdb" / "setup-v3.md",
                REPO / "docs" / "deploy.md"):
        text = doc.read_text()
        for path in set(re.findall(r"deploy/influxdb/[\w.-]+", text)):
            assert (REPO / path).exists(), f"{doc.name} names {path}, which does not exist"


def test_quoting_of_printed_commands_survives_the_shell() -> None:
    """The check prints commands for a POSIX shell: names with spaces or quotes stay one argument."""
    from collector.sinks import influx_check as ic

    assert shlex.split(f"x --org {ic.quote('my org')}") == ["x", "--org", "my org"]
    assert shlex.split(ic.influx2_cli("http://h:8086/")) == ["--host", "http://h:8086"]
    assert ic.influx1_cli("https://db.lan") == "influx -host db.lan -port 443 -ssl"


# --- setup-v2.sh, against a stand-in `influx` 2.x CLI ---------------------------------------------------

FAKE_INFLUX2 = r'''#!/usr/bin/env python3
"""A stand-in for the InfluxDB 2.x `influx` CLI: the subcommands setup-v2.sh uses, their flags and output
formats (tab-separated rows with --hide-headers, indented JSON with --json), state in $FAKE_INFLUX_STATE."""
import json, os, sys
state_path = os.environ["FAKE_INFLUX_STATE"]
EMPTY = {"buckets": {}, "dbrps": [], "tasks": [], "auths": [], "log": []}
st = json.load(open(state_path)) if os.path.exists(state_path) else EMPTY
argv = sys.argv[1:]
st["log"].append(argv)
def save():
    json.dump(st, open(state_path, "w"))
def flags(args):
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if a in ("--hide-headers", "--json", "--default"):
            out[a] = True; i += 1
        else:
            out.setdefault(a, []).append(args[i + 1]); i += 2
    return out
def one(f, k):
    return f[k][0]
if argv == ["-version"]:
    print('Error: unknown shorthand flag: "v" in -version', file=sys.stderr); sys.exit(1)
if argv == ["version"]:
    print("Influx CLI 2.7.5 (git: a79a2a1b82) build_date: 2024-04-16T14:32:42Z"); sys.exit(0)
cmd, f = argv[:2] if argv[0] != "v1" else argv[:3], None
if argv[0] == "v1":
    f = flags(argv[3:])
else:
    f = flags(argv[2:])
assert one(f, "--org") == "homelab" if "--org" in f else True, argv
def bucket_row(name, b):
    return f"{b['id']}\t{name}\t{b['retention']}\t24h0m0s\t0000000000000001\timplicit"
if cmd == ["bucket", "list"]:
    name = one(f, "--name")
    if name not in st["buckets"]:
        print(f'Error: failed to list buckets: bucket "{name}" not found', file=sys.stderr); save(); sys.exit(1)
    print(bucket_row(name, st["buckets"][name]))
elif cmd == ["bucket", "create"]:
    name = one(f, "--name")
    assert name not in st["buckets"], "bucket created twice"
    st["buckets"][name] = {"id": f"{len(st['buckets']) + 1:016x}", "retention": one(f, "--retention")}
    print(bucket_row(name, st["buckets"][name]))
elif cmd == ["bucket", "update"]:
    [name] = [n for n, b in st["buckets"].items() if b["id"] == one(f, "--id")]
    st["buckets"][name]["retention"] = one(f, "--retention")
    print(bucket_row(name, st["buckets"][name]))
elif cmd == ["v1", "dbrp", "list"]:
    found = [m for m in st["dbrps"] if m["database"] == one(f, "--db") and m["retention_policy"] == one(f, "--rp")]
    if not found:  # InfluxDB 2.4+: a virtual mapping for every bucket without an explicit one
        found = [{"id": b["id"], "database": n, "retention_policy": "autogen", "default": False,
                  "bucketID": b["id"], "virtual": True}
                 for n, b in st["buckets"].items() if n == one(f, "--db") and one(f, "--rp") == "autogen"]
    print(json.dumps(found, indent=2))
elif cmd == ["v1", "dbrp", "create"]:
    key = (one(f, "--db"), one(f, "--rp"))
    assert key not in [(m["database"], m["retention_policy"]) for m in st["dbrps"]], "dbrp created twice"
    st["dbrps"].append({"id": f"d{len(st['dbrps'])}", "database": key[0], "retention_policy": key[1],
                        "default": "--default" in f, "bucketID": one(f, "--bucket-id"), "virtual": False})
    print("ok")
elif cmd == ["task", "list"]:
    for t in st["tasks"]:
        print(f"{t['id']}\t{t['name']}\t0000000000000001\thomelab\tauth\tactive\t1h\t")
elif cmd == ["task", "create"]:
    flux = open(one(f, "--file")).read()
    name = flux.split('name: "')[1].split('"')[0]
    assert name not in [t["name"] for t in st["tasks"]], "task created twice"
    st["tasks"].append({"id": f"t{len(st['tasks'])}", "name": name, "flux": flux})
    print("ok")
elif cmd == ["auth", "create"]:
    token = f"token-{len(st['auths'])}-secret=="
    st["auths"].append({"description": one(f, "--description"), "write": f.get("--write-bucket", []),
                        "read": f.get("--read-bucket", [])})
    print(json.dumps({"id": "a1", "description": one(f, "--description"), "token": token, "status": "active",
                      "permissions": []}, indent=2))
else:
    print(f"fake influx: unexpected {argv}", file=sys.stderr); save(); sys.exit(2)
save()
'''


@pytest.fixture
def fake_influx2(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "influx").write_text(FAKE_INFLUX2.replace("/usr/bin/env python3", sys.executable))
    (bindir / "influx").chmod(0o755)
    state = tmp_path / "influx-state.json"
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_INFLUX_STATE": str(state), "INFLUX_ORG": "homelab",
           "RUNLAB_COLLECTOR_TOKEN_FILE": str(tmp_path / "tokens" / "collector" / "influx.token"),
           "RUNLAB_GRAFANA_TOKEN_FILE": str(tmp_path / "tokens" / "grafana" / "influx.token")}
    return env, state


@pytest.mark.parametrize("docker_init", [False, True])
def test_setup_v2_flow_and_idempotency(fake_influx2: tuple[dict[str, str], Path], tmp_path: Path,
                                       docker_init: bool) -> None:
    """Against a stand-in CLI (no InfluxDB 2 here): what setup-v2.sh creates, with which permissions, and
    that a second run (or the compose init after DOCKER_INFLUXDB_INIT_* made the bucket) creates nothing twice."""
    env, state_path = fake_influx2
    if docker_init:  # the influxdb:2 image's own setup already made the bucket
        env = {**env, "DOCKER_INFLUXDB_INIT_ORG": "homelab", "DOCKER_INFLUXDB_INIT_BUCKET": "runlab"}
        state_path.write_text(json.dumps({"buckets": {"runlab": {"id": "00000000000000aa", "retention": "720h"}},
                                          "dbrps": [], "tasks": [], "auths": [], "log": []}))
        env.pop("INFLUX_ORG")
    script = str(REPO / "deploy" / "influxdb" / "setup-v2.sh")
    first = run([script], env=env)
    assert "Done." in first.stdout, first.stdout + first.stderr
    state = json.loads(state_path.read_text())
    raw, results = state["buckets"]["runlab"], state["buckets"]["runlab_results"]
    assert raw["retention"] == "30d" and results["retention"] == "0"
    assert sorted((m["database"], m["retention_policy"], m["bucketID"], m["default"]) for m in state["dbrps"]) == [
        ("runlab", "autogen", raw["id"], True), ("runlab", "results", results["id"], False)]
    [task] = state["tasks"]
    assert task["name"] == "runlab-keep-results"
    flux = " ".join(task["flux"].split())
    assert 'from(bucket: "runlab") |> range(start: -3d)' in flux
    assert 'r._measurement == "run_sample" or r._measurement == "run_summary"' in flux
    assert '|> to(bucket: "runlab_results")' in flux and "every: 1h" in flux
    assert state["auths"] == [
        {"description": "runlab-collector", "write": [raw["id"]], "read": []},
        {"description": "runlab-grafana", "write": [], "read": [raw["id"], results["id"]]}]
    tokens = {name: Path(env[f"RUNLAB_{name.upper()}_TOKEN_FILE"]) for name in ("collector", "grafana")}
    assert tokens["collector"].read_text() == "token-0-secret=="  # no newline: Grafana's $__file{} reads it as is
    assert tokens["grafana"].read_text() == "token-1-secret=="
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tokens.values())

    second = run([script], env=env)  # the stand-in fails on any second create
    state = json.loads(state_path.read_text())
    assert len(state["auths"]) == 2 and len(state["tasks"]) == 1 and len(state["dbrps"]) == 2
    assert "token runlab-collector: kept" in second.stderr


# --- the InfluxDB 3 plugin, against stand-ins of the Processing Engine API --------------------------------

class _FakeLineBuilder:
    """The documented LineBuilder methods, rendering line protocol (no escaping needed for these values)."""

    def __init__(self, measurement: str) -> None:
        self.measurement, self.tags, self.fields, self.ts = measurement, [], [], None

    def tag(self, k: str, v: str) -> _FakeLineBuilder:
        self.tags.append(f"{k}={v}")
        return self

    def int64_field(self, k: str, v: int) -> _FakeLineBuilder:
        self.fields.append(f"{k}={v}i")
        return self

    def float64_field(self, k: str, v: float) -> _FakeLineBuilder:
        self.fields.append(f"{k}={float(v)!r}")
        return self

    def string_field(self, k: str, v: str) -> _FakeLineBuilder:
        self.fields.append(f'{k}="{v}"')
        return self

    def bool_field(self, k: str, v: bool) -> _FakeLineBuilder:
        self.fields.append(f"{k}={'t' if v else 'f'}")
        return self

    def time_ns(self, t: int) -> _FakeLineBuilder:
        self.ts = t
        return self

    def build(self) -> str:
        return f"{','.join([self.measurement, *self.tags])} {','.join(self.fields)} {self.ts}"


class _FakeLocal:
    def __init__(self, columns: dict[str, str]) -> None:
        self.columns = columns  # column -> data_type, as information_schema.columns reports it
        self.written: list[tuple[str, str]] = []
        self.queries = 0
        self._cache: dict[str, Any] = {}
        self.cache = self

    def get(self, key: str, default: Any = None) -> Any:
        return self._cache.get(key, default)

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._cache[key] = value

    def query(self, sql: str, args: dict[str, str] | None = None) -> list[dict[str, Any]]:
        assert "information_schema.columns" in sql and args == {"table": "run_summary"}
        self.queries += 1
        return [{"column_name": c, "data_type": t} for c, t in self.columns.items()]

    def write_to_db(self, db: str, line: _FakeLineBuilder) -> None:
        self.written.append((db, line.build()))

    def info(self, *_args: object) -> None:
        pass


def test_v3_plugin_copies_run_rows_unchanged() -> None:
    import importlib.util

    path = REPO / "deploy" / "influxdb" / "v3_keep_results.py"
    spec = importlib.util.spec_from_file_location("v3_keep_results", path)
    assert spec and spec.loader
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    plugin.LineBuilder = _FakeLineBuilder  # the engine installs it into builtins
    dict_t = "Dictionary(Int32, Utf8)"
    local = _FakeLocal({"node": dict_t, "figure": dict_t, "variant": dict_t, "median": "Float64", "n": "Int64",
                        "ok": "Boolean", "unit": "Utf8", "time": "Timestamp(Nanosecond, None)"})
    row = {"node": "n1", "figure": "startup_ms", "variant": "native", "median": 1.5, "n": 30, "ok": True,
           "unit": "ms", "time": 1700000000000000001}
    plugin.process_writes(local, [
        {"table_name": "run_summary", "rows": [row, {**row, "median": None, "n": None, "ok": None, "unit": None}]},
        {"table_name": "host", "rows": [{"node": "n1", "cpu_percent": 3.5, "time": 1}]},
    ], {"target": "runlab/results"})
    assert local.written == [("runlab/results", "run_summary,figure=startup_ms,node=n1,variant=native "
                                                "median=1.5,n=30i,ok=t,unit=\"ms\" 1700000000000000001")]
    # A new tag column appears: the schema is read again instead of taking it for a string field.
    local.columns["mode"] = dict_t
    plugin.process_writes(local, [{"table_name": "run_summary", "rows": [{**row, "mode": "closed"}]}], None)
    assert local.written[-1][1].startswith("run_summary,figure=startup_ms,mode=closed,node=n1,variant=native ")
    assert local.queries == 2
