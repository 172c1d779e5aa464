"""InfluxQL over plain HTTP ``/query``: the one read path that InfluxDB 1.x, 2.x (with a DBRP mapping) and 3.x share.

v1 configs read ``influx.database`` with basic auth (username/password); v2 configs read the DBRP database
named by ``influx.bucket`` (``db`` or ``db/rp``) with ``Authorization: Token …``. Rows come back as dicts
(column → value, plus the series' GROUP BY tags), times in ns.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import urllib3

from collector.config import InfluxSettings
from collector.ops.link import OpsError


def quote(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxQL:
    """A read-only InfluxQL client for the ``influx:`` section of a config."""

    def __init__(self, settings: InfluxSettings, source: str) -> None:
        self.url = settings.url.rstrip("/")
        self.headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if settings.api == "v2":
            self.db, _, self.rp = settings.bucket.partition("/")
        else:
            self.db, self.rp = settings.database, settings.retention_policy
        self.headers.update(settings.auth_headers(source))
        self.pool = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False,
                                        timeout=urllib3.Timeout(connect=3.0, read=float(settings.timeout)))

    @property
    def where(self) -> str:
        """Where reads go, for messages: ``db runlab at http://…``."""
        return f"db {self.db} at {self.url}"

    def query(self, q: str) -> list[dict[str, Any]]:
        """Run one statement; every row of every series as a dict (GROUP BY tags included)."""
        params = {"db": self.db, "q": q, "epoch": "ns"}
        if self.rp:
            params["rp"] = self.rp
        try:
            r = self.pool.request("POST", f"{self.url}/query", body=urllib.parse.urlencode(params),
                                  headers=self.headers)
        except urllib3.exceptions.HTTPError as e:
            inner = str(getattr(e, "reason", None) or e)
            inner = inner.split("Failed to establish a new connection: ", 1)[-1].rstrip(")")
            raise OpsError(f"cannot reach InfluxDB at {self.url}: {inner} (is influx.url right?)") from None
        text = r.data.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            raise OpsError(f"InfluxDB at {self.url} answered HTTP {r.status} without JSON: "
                           f"{' '.join(text.split())[:200]}") from None
        if not isinstance(body, dict):
            raise OpsError(f"InfluxDB at {self.url} answered unexpected JSON for /query")
        if r.status in (401, 403):
            raise OpsError(f"InfluxDB at {self.url} refused to read {self.db!r} (HTTP {r.status}): "
                           f"{body.get('error') or body.get('message') or text[:200]} — check the credentials")
        err = body.get("error") or body.get("message")
        results = body.get("results") or [{}]
        first = results[0] if isinstance(results[0], dict) else {}
        err = err or first.get("error")
        if err or r.status != 200:
            raise OpsError(f"InfluxQL on {self.where} failed (HTTP {r.status}): {err or text[:200]}")
        rows: list[dict[str, Any]] = []
        for s in first.get("series") or []:
            if s.get("name") == "databases" and s.get("columns") == ["name"]:
                raise OpsError(f"{self.url} does not answer InfluxQL queries (VictoriaMetrics?); `runlab report` "
                               "needs InfluxDB 1.x, 2.x with a DBRP mapping, or 3.x")
            cols, tags = s.get("columns") or [], s.get("tags") or {}
            for v in s.get("values") or []:
                row = dict(zip(cols, v, strict=False))
                row.update({k: val for k, val in tags.items() if k not in row or row[k] is None})
                rows.append(row)
        return rows
