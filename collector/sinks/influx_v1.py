"""InfluxDB 1.x: plain ``POST /write`` with line protocol, over one kept-alive connection."""

from __future__ import annotations

import base64
import json
import urllib.parse

import urllib3

from collector.config import InfluxSettings
from collector.sinks import SinkRejected, SinkUnavailable
from runlab.config import read_secret


class InfluxV1Sink:
    backslash_escapes = False  # measured: InfluxDB 1.6 keeps "\\" in tags literally

    def __init__(self, settings: InfluxSettings, source: str) -> None:
        self.settings = settings
        params = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            params["rp"] = settings.retention_policy
        self._write_url = f"{settings.url.rstrip('/')}/write?{urllib.parse.urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = read_secret(settings.password_file, settings.password, source, "influx.password_file")
        if settings.username:
            token = base64.b64encode(f"{settings.username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
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
        if r.status == 400:  # "partial write" / "unable to parse": the valid points were written
            raise SinkRejected(_error_text(text))
        if r.status == 404:
            raise SinkUnavailable(f"database {self.settings.database!r} not found: {_error_text(text)}")
        raise SinkUnavailable(f"HTTP {r.status}: {_error_text(text)}")

    def check(self) -> list[str]:
        problems = []
        try:
            r = self._http.request("GET", f"{self.settings.url.rstrip('/')}/ping")
        except urllib3.exceptions.HTTPError as e:
            return [f"cannot reach InfluxDB at {self.settings.url}: {e}"]
        if r.status != 204:
            problems.append(f"{self.settings.url}/ping answered {r.status}: is this InfluxDB 1.x?")
        try:
            self.write(b"")
        except SinkUnavailable as e:
            problems.append(f"write to database {self.settings.database!r} fails: {e}. "
                            f"Create it with: influx -execute 'CREATE DATABASE \"{self.settings.database}\"'")
        except SinkRejected:
            pass  # an empty body may be refused as unparsable: the database exists
        return problems

    def close(self) -> None:
        self._http.clear()


def _error_text(body: str) -> str:
    try:
        return str(json.loads(body).get("error", body))
    except ValueError:
        return body
