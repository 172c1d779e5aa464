"""Where the collector writes: one module per store API, found by name (``influx.api``).

A sink writes one batch of line protocol and either succeeds, raises
``SinkUnavailable`` (try again later: server down, slow, auth not ready) or
``SinkRejected`` (the data itself was refused: retrying cannot help; the collector bisects the
batch to find the lines at fault) or ``SinkTooLarge`` (HTTP 413: the collector splits the batch).
"""

from __future__ import annotations

from typing import Protocol

from collector.config import InfluxSettings


class SinkUnavailable(Exception):
    """The store could not take the batch now; the same batch is retried."""


class SinkRejected(Exception):
    """The store refused (part of) the batch as invalid: the same body is never sent again as it is."""


class SinkTooLarge(SinkRejected):
    """The store refused the request body as too large (HTTP 413): smaller parts may pass."""


# 4xx answers that say nothing about the data: the request may pass later (credentials, database, rate).
RETRYABLE_4XX = frozenset({401, 403, 404, 408, 429})


class Sink(Protocol):
    #: True when the store's line protocol reads "\\" in a tag as one backslash.
    backslash_escapes: bool

    def write(self, body: bytes) -> None: ...

    def check(self) -> list[str]:
        """Problems a user must fix (empty when the store is ready)."""
        ...

    def close(self) -> None: ...


def open_sink(settings: InfluxSettings, source: str) -> Sink:
    """The sink for ``settings.api``."""
    if settings.api == "v1":
        from collector.sinks.influx_v1 import InfluxV1Sink

        return InfluxV1Sink(settings, source)
    from collector.sinks.influx_v2 import InfluxV2Sink

    return InfluxV2Sink(settings, source)
