"""InfluxDB 3 Processing Engine plugin: copy run_sample and run_summary, as they are written, from the
30-day database (runlab) into the forever one (runlab/results). See deploy/influxdb/setup-v3.md.

A WAL trigger sees every write when it lands, whatever its timestamp, so results an agent delivers late
(after spooling through an outage) are copied too. Rows are copied unchanged: tags stay tags (InfluxDB 3
keeps them as dictionary-encoded string columns, which information_schema.columns shows), fields keep
their type, the timestamp is kept; writing a row twice overwrites it.

Install (plugin directory of `influxdb3 serve --plugin-dir DIR`):
    cp deploy/influxdb/v3_keep_results.py DIR/
    influxdb3 create trigger --database runlab --plugin-filename v3_keep_results.py \
        --trigger-spec all_tables --trigger-arguments target=runlab/results runlab_keep_results

Written against the documented Processing Engine API (influxdb3_local.query / write_to_db, LineBuilder,
TableBatch); not run against a real InfluxDB 3 here (none installable), only against stand-ins in
tests/test_influx_setup.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TABLES = ("run_sample", "run_summary")


def schema(influxdb3_local: Any, table: str, refresh: bool = False) -> tuple[set[str], set[str]]:
    """(tag columns, all columns) of ``table``, cached for 5 minutes or until a row has an unknown column."""
    key = f"runlab_schema:{table}"
    cached = None if refresh else influxdb3_local.cache.get(key)
    if cached is None:
        rows = influxdb3_local.query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $table",
            {"table": table})
        cached = {"tags": sorted(r["column_name"] for r in rows if str(r["data_type"]).startswith("Dictionary")),
                  "columns": sorted(r["column_name"] for r in rows)}
        influxdb3_local.cache.put(key, cached, ttl=300)
    return set(cached["tags"]), set(cached["columns"])


def to_line(table: str, row: Mapping[str, Any], tags: set[str]) -> Any | None:
    """One row as a LineBuilder (None when it has no field to copy)."""
    line = LineBuilder(table)  # type: ignore[name-defined]  # noqa: F821 — injected by the engine
    fields = 0
    for name, value in sorted(row.items()):
        if name == "time" or value is None:
            continue
        if name in tags:
            line.tag(name, str(value))
            continue
        if isinstance(value, bool):
            line.bool_field(name, value)
        elif isinstance(value, int):
            line.int64_field(name, value)
        elif isinstance(value, float):
            line.float64_field(name, value)
        else:
            line.string_field(name, str(value))
        fields += 1
    if not fields:
        return None
    line.time_ns(int(row["time"]))
    return line


def process_writes(influxdb3_local: Any, table_batches: Sequence[Mapping[str, Any]],
                   args: Mapping[str, str] | None = None) -> None:
    """WAL trigger entry point: copy the rows of TABLES just written to ``target``."""
    target = (args or {}).get("target", "runlab/results")
    tables = tuple((args or {}).get("tables", ".".join(TABLES)).split("."))
    copied = 0
    for batch in table_batches:
        table = batch["table_name"]
        if table not in tables:
            continue
        tags, columns = schema(influxdb3_local, table)
        for row in batch["rows"]:
            if not columns.issuperset(row):  # a column added since the schema was read
                tags, columns = schema(influxdb3_local, table, refresh=True)
            line = to_line(table, row, tags)
            if line is not None:
                influxdb3_local.write_to_db(target, line)
                copied += 1
    if copied:
        influxdb3_local.info(f"runlab: copied {copied} rows to {target}")
