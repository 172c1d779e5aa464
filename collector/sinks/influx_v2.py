"""The InfluxDB v2 write API (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics…) through influxdb-client."""

from __future__ import annotations

import json

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from collector.config import InfluxSettings
from collector.sinks import SinkRejected, SinkUnavailable
from runlab.config import read_secret


class InfluxV2Sink:
    backslash_escapes = True  # the v2 line protocol reads "\\" as one backslash

    def __init__(self, settings: InfluxSettings, source: str) -> None:
        self.settings = settings
        token = read_secret(settings.token_file, settings.token, source, "influx.token_file") or ""
        # retries=False: the collector owns retry and backoff, and acks only after success.
        self._client = InfluxDBClient(url=settings.url, token=token, org=settings.org or "-",
                                      timeout=int(settings.timeout * 1000), retries=False)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        try:
            self._write.write(bucket=self.settings.bucket, org=self.settings.org or "-", record=body,
                              write_precision=WritePrecision.NS)
        except ApiException as e:
            text = _error_text(e.body)
            if e.status in (400, 422):
                raise SinkRejected(text) from None
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
        try:
            self._client.ping()
        except Exception as e:
            return [f"cannot reach {self.settings.url}: {e}"]
        try:
            self.write(b"")
        except SinkUnavailable as e:
            return [f"cannot write to bucket {self.settings.bucket!r}: {e}"]
        except SinkRejected:
            pass
        return []

    def close(self) -> None:
        self._client.close()


def _error_text(body: object) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        return str(json.loads(text).get("message", text))[:500]
    except (ValueError, AttributeError):
        return text[:500]
