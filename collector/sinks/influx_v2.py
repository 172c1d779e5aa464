"""The InfluxDB v2 write API (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics…) through influxdb-client."""

from __future__ import annotations

import json
import urllib.parse

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from collector.config import InfluxSettings
from collector.sinks import RETRYABLE_4XX, SinkRejected, SinkTooLarge, SinkUnavailable
from collector.sinks import influx_check as ic
from runlab.config import read_secret

# A str constant on the class; write() is annotated with the class itself.
NS: WritePrecision = WritePrecision.NS  # type: ignore[assignment]


class InfluxV2Sink:
    backslash_escapes = True  # the v2 line protocol reads "\\" as one backslash

    def __init__(self, settings: InfluxSettings, source: str) -> None:
        self.settings = settings
        token = read_secret(settings.token_file, settings.token, source, "influx.token_file") or ""
        self._token = token
        # retries=False: the collector owns retry and backoff, and acks only after success.
        self._client = InfluxDBClient(url=settings.url, token=token, org=settings.org or "-",
                                      timeout=int(settings.timeout * 1000), retries=False)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        try:
            self._write.write(bucket=self.settings.bucket, org=self.settings.org or "-", record=body,
                              write_precision=NS)
        except ApiException as e:
            text = _error_text(e.body)
            if e.status == 413:
                raise SinkTooLarge(f"HTTP 413: {text or 'request body too large'}") from None
            if e.status in (400, 422):
                raise SinkRejected(text) from None
            if e.status and 400 <= e.status < 500 and e.status not in RETRYABLE_4XX:
                raise SinkRejected(f"HTTP {e.status}: {text}") from None
            if e.status in (401, 403):
                raise SinkUnavailable(f"HTTP {e.status} (check influx.token / its write permission on bucket "
                                      f"{self.settings.bucket!r}): {text}") from None
            if e.status == 404:
                raise SinkUnavailable(f"bucket {self.settings.bucket!r} or org {self.settings.org!r} "
                                      f"not found: {text}") from None
            raise SinkUnavailable(f"HTTP {e.status}: {text}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise SinkUnavailable(f"{self.settings.url}: {type(e).__name__}: {e}") from None

    def check(self) -> list[str]:
        """What stops writes (each: what is wrong, then how to fix it); facts and read-side warnings go to
        ``check_notes``. Writes an empty body through the same client ``write`` uses."""
        s = self.settings
        self.check_notes: list[str] = []
        pool = ic.http_pool(float(s.timeout))
        auth = {"Authorization": f"Token {self._token}"} if self._token else {}
        try:
            server = ic.identify(pool, s.url, auth)
        except ic.Unreachable as e:
            return ["\n".join(ic.unreachable(s.url, e))]
        self.check_notes.append(f"server: {server.describe()}")
        try:
            self._write.write(bucket=s.bucket, org=s.org or "-", record=b"", write_precision=NS)
        except ApiException as e:
            if e.status not in (400, 422):  # an empty body refused as unparsable, after the checks that matter
                text = " ".join(_error_text(e.body).split())
                return ["\n".join(self._write_problem(server, int(e.status or 0), text))]
        except (urllib3.exceptions.HTTPError, OSError) as e:
            return ["\n".join(ic.unreachable(s.url, e))]
        self.check_notes.extend(self._check_reads(pool, server, auth))
        return []

    def _hints(self, server: ic.Server) -> dict[str, str]:
        s = self.settings
        org = ic.quote(s.org or "ORG")
        host = ic.influx2_cli(s.url)
        bucket_id = f"$(influx bucket list {host} --org {org} --name {ic.quote(s.bucket)} --hide-headers | cut -f 1)"
        return {
            "bucket": f"  influx bucket create {host} --org {org} --name {ic.quote(s.bucket)} --retention 30d",
            "token": f"  influx auth create {host} --org {org} --description runlab-collector "
                     f"--write-bucket {bucket_id}",
            "dbrp": f"  influx v1 dbrp create {host} --org {org} --db {ic.quote(self._db)} --rp autogen "
                    f"--bucket-id {bucket_id} --default",
            "dbrp_list": f"  influx v1 dbrp list {host} --org {org} --db {ic.quote(self._db)}",
            "v3_token": f"  influxdb3 create token --host {ic.quote(s.url.rstrip('/'))} --permission "
                        f"{ic.quote(f'db:{s.bucket}:write')} --name runlab-collector   (Enterprise; Core: "
                        "influxdb3 create token --admin)",
        }

    @property
    def _db(self) -> str:
        return self.settings.bucket.partition("/")[0]

    def _write_problem(self, server: ic.Server, status: int, text: str) -> list[str]:
        s = self.settings
        h = self._hints(server)
        where = self.settings.token_file or "influx.token"
        setup = "(deploy/influxdb/setup-v2.sh creates the buckets, the DBRP mappings and both tokens)"
        if status == 401:
            if server.kind == "influxdb3":
                return [f"InfluxDB 3 refused the token (HTTP 401: {text})",
                        f"put a token that may write database {s.bucket!r} into {where}:", h["v3_token"]]
            if server.kind == "influxdb1":
                return [f"InfluxDB 1.x refused the credentials (HTTP 401: {text})",
                        f"with auth on, the v2 API of InfluxDB 1.8+ takes the token \"USER:PASSWORD\" ({where})"]
            missing = "no token is configured" if not self._token else "the token is not valid here"
            fix = [f"InfluxDB refused the token (HTTP 401: {text}): {missing}",
                   f"create a write-only token for the collector {setup} and put it into {where}:", h["token"]]
            if server.kind != "influxdb2":  # unidentified (InfluxDB 3 answers /ping only to a valid token)
                fix += ["on InfluxDB 3:", h["v3_token"]]
            return fix
        if status == 403:
            fix = [f"the token may not write to bucket {s.bucket!r} (HTTP 403: {text})",
                   f"give the collector a token with write permission on it, into {where}:", h["token"]]
            if server.kind != "influxdb2":
                fix += ["on InfluxDB 3:", h["v3_token"]]
            return fix
        if status == 404 and "organization" in text.lower():
            if not s.org:
                return [f"influx.org is empty, and InfluxDB 2.x needs the organization ({text})",
                        f"set influx.org to one of: influx org list {ic.influx2_cli(s.url)}"]
            return [f"organization {s.org!r} not found ({text})",
                    f"set influx.org to an existing one (influx org list {ic.influx2_cli(s.url)}), or create it:",
                    f"  influx org create {ic.influx2_cli(s.url)} --name {ic.quote(s.org)}"]
        if status == 404 and "bucket" in text.lower():
            return [f"bucket {s.bucket!r} not found in organization {s.org!r}, or this token may not see it ({text})",
                    f"create it {setup}:", h["bucket"],
                    "and a token that may write to it:", h["token"]]
        if status == 404 and "database not found" in text:
            if server.kind == "influxdb3":
                return [f"database {s.bucket!r} does not exist ({text})",
                        f"  influxdb3 create database --host {ic.quote(s.url.rstrip('/'))} {ic.quote(s.bucket)}"
                        "   (see deploy/influxdb/setup-v3.md)"]
            db = self._db
            return [f"database {db!r} does not exist ({text})",
                    f"  {ic.influx1_cli(s.url)} -execute {ic.quote(f'CREATE DATABASE {_ident(db)}')}"]
        if status == 404:
            return [f"{s.url}/api/v2/write answered 404 ({text}): this server has no InfluxDB v2 write API "
                    "(InfluxDB 1.x before 1.8?)",
                    "set influx.api: v1 (with influx.database) in the collector's config"]
        return [f"{s.url}/api/v2/write answered HTTP {status}: {text}"]

    def _check_reads(self, pool: urllib3.PoolManager, server: ic.Server, auth: dict[str, str]) -> list[str]:
        """The read side (InfluxQL /query?db=…, as Grafana and ``runlab report`` use it): notes, never problems."""
        s = self.settings
        db, _, rp = s.bucket.partition("/")
        if server.kind == "victoriametrics":
            return [f"warning: reads: {ic.VM_READS}"]
        outcome, detail = ic.probe_reads(pool, s.url, auth, db, rp)
        if outcome == "ok":
            return [f"reads: InfluxQL /query?db={db} works"]
        if outcome == "stub":
            return [f"warning: reads: {ic.VM_READS}"]
        if outcome == "unreachable":
            return [f"warning: reads: /query did not answer: {detail}"]
        status, text = detail if isinstance(detail, tuple) else (0, str(detail))
        h = self._hints(server)
        unmapped = any(k in str(text) for k in ("database not found", "retention policy not found",
                                                "default retention policy not set"))
        if status in (401, 403) or "not authorized" in str(text) or "insufficient permission" in str(text):
            return [f"reads: this token may not query {db!r} (HTTP {status}: {text}) — right for the collector's "
                    "own write-only token; Grafana's and `runlab report`'s token needs read permission on the "
                    "bucket"]
        if unmapped and server.kind == "influxdb3":
            return [f"warning: reads: database {db!r} not found by InfluxQL ({text}); InfluxDB 3 creates it "
                    "with the first write, or: "
                    f"influxdb3 create database --host {ic.quote(s.url.rstrip('/'))} {ic.quote(db)}"]
        if unmapped and server.kind in ("influxdb2", "unknown"):
            if self._token_reads_bucket(pool, auth):
                return [f"warning: reads: InfluxQL finds no database {db!r} ({text}): bucket {s.bucket!r} has no "
                        "DBRP mapping, so Grafana and `runlab report` cannot query it. Create it:", h["dbrp"]]
            return [f"warning: reads: InfluxQL finds no database {db!r} ({text}). Either bucket {s.bucket!r} has no "
                    "DBRP mapping, or this token may not read the bucket (right for the collector's own write-only "
                    "token: InfluxDB 2.x then hides the mapping). With an admin token, list the mappings:",
                    h["dbrp_list"], "and if there is none, create it:", h["dbrp"]]
        return [f"warning: reads: InfluxQL /query?db={db} failed (HTTP {status}): {text}"]

    def _token_reads_bucket(self, pool: urllib3.PoolManager, auth: dict[str, str]) -> bool:
        """True when this token can see the bucket through the 2.x API (then it could read it with InfluxQL)."""
        s = self.settings
        q = urllib.parse.urlencode({"name": s.bucket, **({"org": s.org} if s.org else {})})
        try:
            r = pool.request("GET", f"{s.url.rstrip('/')}/api/v2/buckets?{q}", headers=auth)
            found = json.loads(r.data or b"{}").get("buckets") if r.status == 200 else None
        except (urllib3.exceptions.HTTPError, ValueError, AttributeError):
            return False
        return bool(found)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


def _ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _error_text(body: object) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        return str(json.loads(text).get("message", text))[:500]
    except (ValueError, AttributeError):
        return text[:500]
