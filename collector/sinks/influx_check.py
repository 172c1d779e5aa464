"""What ``runlab-collector check`` asks the store, and how it explains the answers.

Only the sinks' ``check()`` methods use this: identify the server behind ``influx.url`` (InfluxDB 1.x, 2.x,
3.x or VictoriaMetrics), try the InfluxQL read path (``/query``) that Grafana and ``runlab report`` use, and
turn refusals into one sentence plus the exact command that fixes them. Messages are lists of lines: the
first says what is wrong, the following ones (indented by the CLI) say how to fix it.
"""

from __future__ import annotations

import json
import shlex
import urllib.parse
from dataclasses import dataclass

import urllib3

# A SELECT goes through the database/retention-policy lookup on every server (InfluxDB 2.x answers
# SHOW MEASUREMENTS for an unmapped database with an empty result instead of an error). The
# collector writes this measurement itself, so the query never touches anything else.
READ_PROBE = 'SELECT * FROM "collector" LIMIT 1'


@dataclass
class Server:
    """What ``/ping`` (and, without an InfluxDB version header, a Prometheus probe) revealed."""

    kind: str  # "influxdb1", "influxdb2", "influxdb3", "victoriametrics", "unknown"
    version: str = ""
    build: str = ""

    def describe(self) -> str:
        if self.kind == "victoriametrics":
            return "VictoriaMetrics (no InfluxDB version header; answers the Prometheus API)"
        if self.kind == "unknown":
            return "unknown (no X-Influxdb-Version header on /ping)"
        build = f" ({self.build})" if self.build else ""
        return f"InfluxDB {self.version}{build}"


class Unreachable(Exception):
    """No HTTP answer at all."""


def http_pool(timeout: float) -> urllib3.PoolManager:
    return urllib3.PoolManager(num_pools=2, maxsize=1, retries=False,
                               timeout=urllib3.Timeout(connect=3.0, read=timeout))


def reason(e: Exception) -> str:
    """The useful part of a urllib3 connection error ("[Errno 111] Connection refused")."""
    inner = getattr(e, "reason", None) or e
    text = str(inner)
    # NewConnectionError: "<urllib3.connection.HTTPConnection object at 0x…>: Failed to establish … : [Errno 111] …"
    if "Failed to establish a new connection: " in text:
        text = text.split("Failed to establish a new connection: ", 1)[1]
    return text.rstrip(")")


def unreachable(url: str, e: Exception) -> list[str]:
    return [f"cannot reach it: {reason(e)}",
            "is InfluxDB running and listening there? (systemctl status influxdb; with Compose: "
            "docker compose ps influxdb) Is influx.url right (scheme, host, port)?"]


def identify(pool: urllib3.PoolManager, url: str, headers: dict[str, str]) -> Server:
    """Ask ``/ping`` who answers; raise Unreachable when nothing does."""
    base = url.rstrip("/")
    try:
        r = pool.request("GET", f"{base}/ping", headers=headers)
    except urllib3.exceptions.HTTPError as e:
        raise Unreachable(reason(e)) from None
    version = r.headers.get("X-Influxdb-Version", "")
    build = r.headers.get("X-Influxdb-Build", "")
    if not version and r.status in (200, 204):
        try:
            body = json.loads(r.data or b"{}")
            version = str(body.get("version", "")) if isinstance(body, dict) else ""
        except ValueError:
            pass
    v = version.lstrip("v")
    if v.startswith("1."):
        return Server("influxdb1", version, build)
    if v.startswith("2."):
        return Server("influxdb2", version, build)
    if v.startswith("3.") or build.lower() in ("core", "enterprise"):
        return Server("influxdb3", version, build)
    if not version:
        try:
            p = pool.request("GET", f"{base}/api/v1/status/buildinfo")
            if p.status == 200 and json.loads(p.data or b"{}").get("status") == "success":
                return Server("victoriametrics")
        except (urllib3.exceptions.HTTPError, ValueError, AttributeError):
            pass
    return Server("unknown", version, build)


VM_READS = ("VictoriaMetrics accepts the InfluxDB write API but does not implement InfluxQL reads: its "
            "/query answers every query with a stub list of databases. runlab's Grafana dashboards and "
            "`runlab report` read with InfluxQL and need InfluxDB (1.x, 2.x with a DBRP mapping, or 3.x); "
            "with VictoriaMetrics, graph the data through its Prometheus/MetricsQL API instead.")


def probe_reads(pool: urllib3.PoolManager, url: str, headers: dict[str, str], db: str, rp: str = ""
                ) -> tuple[str, object]:
    """Send ``READ_PROBE`` like Grafana does; return ("http", status) / ("error", text) / ("stub", None) /
    ("ok", None) / ("unreachable", reason)."""
    params = {"db": db, "q": READ_PROBE}
    if rp:
        params["rp"] = rp
    try:
        r = pool.request("POST", f"{url.rstrip('/')}/query", body=urllib.parse.urlencode(params),
                         headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    except urllib3.exceptions.HTTPError as e:
        return "unreachable", reason(e)
    text = r.data[:2000].decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return "http", (r.status, text.strip()[:300])
    if not isinstance(body, dict):
        return "http", (r.status, text.strip()[:300])
    if r.status != 200 or "error" in body:
        return "error", (r.status, str(body.get("error") or body.get("message") or text.strip()[:300]))
    results = body.get("results") or [{}]
    first = results[0] if isinstance(results[0], dict) else {}
    if "error" in first:
        return "error", (r.status, str(first["error"]))
    series = first.get("series") or []
    # VictoriaMetrics answers any /query with {"series": [{"name": "databases", "columns": ["name"], ...}]}.
    if any(isinstance(s, dict) and s.get("name") == "databases" and s.get("columns") == ["name"] for s in series):
        return "stub", None
    return "ok", None


def quote(s: str) -> str:
    return shlex.quote(s)


def influx1_cli(url: str) -> str:
    """``influx`` (1.x CLI) pointed at ``url``."""
    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 8086)
    args = ["influx", "-host", u.hostname or "localhost", "-port", str(port)]
    if u.scheme == "https":
        args.append("-ssl")
    return " ".join(args)


def influx2_cli(url: str) -> str:
    """The start of an ``influx`` (2.x CLI) command line for ``url`` (its --host flag goes after the subcommand)."""
    return f"--host {quote(url.rstrip('/'))}"
