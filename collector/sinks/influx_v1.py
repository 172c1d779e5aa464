"""InfluxDB 1.x: plain ``POST /write`` with line protocol, over one kept-alive connection."""

from __future__ import annotations

import json
import urllib.parse

import urllib3

from collector.config import InfluxSettings
from collector.sinks import RETRYABLE_4XX, SinkRejected, SinkTooLarge, SinkUnavailable
from collector.sinks import influx_check as ic


class InfluxV1Sink:
    backslash_escapes = False  # measured: InfluxDB 1.6 keeps "\\" in tags literally

    def __init__(self, settings: InfluxSettings, source: str) -> None:
        self.settings = settings
        params = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            params["rp"] = settings.retention_policy
        self._write_url = f"{settings.url.rstrip('/')}/write?{urllib.parse.urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8", **settings.auth_headers(source)}
        self._http = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False,
                                         timeout=urllib3.Timeout(connect=3.0, read=float(settings.timeout)))

    def write(self, body: bytes) -> None:
        try:
            r = self._http.request("POST", self._write_url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as e:
            raise SinkUnavailable(f"{self.settings.url}: {type(e).__name__}: {e}") from None
        if r.status in (200, 204):
            return
        text = r.data[:500].decode("utf-8", "replace")
        if r.status == 413:
            raise SinkTooLarge(f"HTTP 413: {_error_text(text) or 'request body too large'}")
        if 400 <= r.status < 500 and r.status not in RETRYABLE_4XX:
            # 400 "partial write" / "unable to parse": the valid points were written (they are again, harmlessly).
            raise SinkRejected(_error_text(text) if r.status == 400 else f"HTTP {r.status}: {_error_text(text)}")
        if r.status == 404:
            raise SinkUnavailable(f"database {self.settings.database!r} not found: {_error_text(text)}")
        raise SinkUnavailable(f"HTTP {r.status}: {_error_text(text)}")

    def check(self) -> list[str]:
        """What stops writes (each: what is wrong, then how to fix it); facts and read-side warnings go to
        ``check_notes``. Tries the very request ``write`` sends, with an empty body."""
        s = self.settings
        self.check_notes: list[str] = []
        pool = ic.http_pool(float(s.timeout))
        try:
            server = ic.identify(pool, s.url, {})
        except ic.Unreachable as e:
            return ["\n".join(ic.unreachable(s.url, e))]
        self.check_notes.append(f"server: {server.describe()}")
        if server.kind == "influxdb2":
            self.check_notes.append("warning: this is InfluxDB 2.x; runlab writes to it with influx.api: v2 "
                                    "(org, bucket, token) — see deploy/influxdb/setup-v2.sh")
        cli = ic.influx1_cli(s.url)
        admin = ("as an InfluxDB admin (with auth on, export INFLUX_USERNAME and INFLUX_PASSWORD of an admin "
                 "first: the influx CLI reads them):")
        db = s.database
        try:
            r = pool.request("POST", self._write_url, body=b"", headers=self._headers)
        except urllib3.exceptions.HTTPError as e:
            return ["\n".join(ic.unreachable(s.url, e))]
        text = " ".join(_error_text(r.data[:500].decode("utf-8", "replace")).split())
        user = s.username or ""
        problem: list[str] = []
        if r.status in (200, 204, 400):  # 400: an empty body refused as unparsable, after the checks that matter
            pass
        elif r.status == 404 and "database not found" in text:
            problem = [f"database {db!r} does not exist",
                       "create it with deploy/influxdb/setup-v1.sh (also the 30-day and forever retention "
                       f"policies and the users), or alone {admin}",
                       f"  {cli} -execute {ic.quote(f'CREATE DATABASE {_ident(db)}')}"]
        elif r.status == 404:
            problem = [f"{s.url}/write answered 404 ({text or 'not found'}): is this InfluxDB 1.x?"]
        elif r.status == 401 and not user:
            problem = ["InfluxDB requires authentication and influx.username is not set",
                       "set influx.username and influx.password_file in the collector's config to a user with "
                       f"WRITE on {db!r}; to create one {admin}",
                       f"  {cli} -execute {ic.quote(f'CREATE USER collector WITH PASSWORD {_string(_PW)}')}",
                       f"  {cli} -execute {ic.quote(f'GRANT WRITE ON {_ident(db)} TO collector')}"]
        elif r.status == 401:
            problem = [f"InfluxDB refused user {user!r} ({text}): wrong password, or no such user",
                       f"check influx.password_file; to (re)set the password {admin}",
                       f"  {cli} -execute {ic.quote(f'SET PASSWORD FOR {_ident(user)} = {_string(_PW)}')}",
                       "or, if the user does not exist:",
                       f"  {cli} -execute {ic.quote(f'CREATE USER {_ident(user)} WITH PASSWORD {_string(_PW)}')}",
                       f"  {cli} -execute {ic.quote(f'GRANT WRITE ON {_ident(db)} TO {_ident(user)}')}"]
        elif r.status == 403:
            problem = [f"user {user!r} may not write to database {db!r} ({text})",
                       f"grant it {admin}",
                       f"  {cli} -execute {ic.quote(f'GRANT WRITE ON {_ident(db)} TO {_ident(user)}')}"]
        elif "retention policy not found" in text:
            rp = s.retention_policy
            problem = [f"retention policy {rp!r} does not exist in database {db!r}",
                       "leave influx.retention_policy empty to write to the default one (deploy/influxdb/setup-v1.sh"
                       " makes raw, 30 days, the default), or create it "
                       f"{admin}",
                       f"  {cli} -execute "
                       + ic.quote(f"CREATE RETENTION POLICY {_ident(rp)} ON {_ident(db)} DURATION 30d REPLICATION 1")]
        else:
            problem = [f"{s.url}/write answered HTTP {r.status}: {text}"]
        if problem:
            return ["\n".join(problem)]
        self.check_notes.extend(self._check_reads(pool, server, cli))
        return []

    def _check_reads(self, pool: urllib3.PoolManager, server: ic.Server, cli: str) -> list[str]:
        """The read side (InfluxQL /query, as Grafana and ``runlab report`` use it): notes, never problems."""
        s = self.settings
        outcome, detail = ic.probe_reads(pool, s.url, self._headers, s.database, s.retention_policy)
        if outcome == "ok":
            return [f"reads: InfluxQL on database {s.database!r} works"]
        if outcome == "stub" or server.kind == "victoriametrics":
            return [f"warning: reads: {ic.VM_READS}"]
        status, text = detail if isinstance(detail, tuple) else (0, str(detail))
        if status == 403 or "not authorized" in str(text):
            return [f"reads: user {s.username!r} may not read {s.database!r} — right for the collector's own "
                    "write-only user; Grafana's and `runlab report`'s user needs READ (as an InfluxDB admin: "
                    "export INFLUX_USERNAME and INFLUX_PASSWORD of an admin first, the influx CLI reads them):",
                    f"  {cli} -execute {ic.quote(f'GRANT READ ON {_ident(s.database)} TO grafana')}"]
        return [f"warning: reads: InfluxQL on database {s.database!r} failed: {text}"]

    def close(self) -> None:
        self._http.clear()


_PW = "NEW_PASSWORD"  # placeholder in printed commands


def _ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _string(value: str) -> str:
    """An InfluxQL string literal, single-quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _error_text(body: str) -> str:
    try:
        return str(json.loads(body).get("error", body))
    except ValueError:
        return body
