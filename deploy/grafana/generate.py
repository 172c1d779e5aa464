#!/usr/bin/env python3
"""Generates runlab's Grafana dashboards (deploy/grafana/dashboards/*.json) from plain Python dicts.

    python3 deploy/grafana/generate.py           # rewrite the JSON files
    python3 deploy/grafana/generate.py --check   # exit 1 if a committed file differs from what this makes

The JSON files are committed (Grafana provisions them as they are); edit this
script, never the JSON, and re-run it. ``tests/test_grafana.py`` checks that the
committed files equal this output, checks their structure, and runs every panel
query against a real InfluxDB 1.x filled by a real agent, collector and
experiment run.

Every query is raw InfluxQL (InfluxDB 1.x; 2.x through its DBRP mapping; 3.x's
InfluxQL endpoint), against the datasource provisioned by
``provisioning/datasources/runlab.yaml`` (uid ``runlab-influxdb``). Template
variables are matched as regular expressions (``"node" =~ /^$node$/``) so that a
single value, several values and "All" all work. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DS = {"type": "influxdb", "uid": "runlab-influxdb"}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11; newer Grafana migrates it on load
GRID_WIDTH = 24

NODE = '"node" =~ /^$node$/'
RUN = '"run" =~ /^$run$/'
EXPERIMENT = '"experiment" =~ /^$experiment$/'
SERIES = "GROUP BY time($__interval), \"node\" fill(none)"

Panel = dict[str, Any]


# --- building blocks ---------------------------------------------------------------------------------------------


def target(query: str, ref: str = "A", alias: str = "", table: bool = False) -> dict[str, Any]:
    """One raw InfluxQL query of a panel."""
    t: dict[str, Any] = {"datasource": DS, "refId": ref, "rawQuery": True,
                         "resultFormat": "table" if table else "time_series", "query": query}
    if alias:
        t["alias"] = alias
    return t


def field_config(unit: str = "short", *, custom: dict[str, Any] | None = None, minimum: float | None = None,
                 maximum: float | None = None, mappings: list[dict[str, Any]] | None = None,
                 overrides: list[dict[str, Any]] | None = None, decimals: int | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "palette-classic"}}
    if custom is not None:
        defaults["custom"] = custom
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if decimals is not None:
        defaults["decimals"] = decimals
    if mappings:
        defaults["mappings"] = mappings
    return {"defaults": defaults, "overrides": overrides or []}


def lines(*, points: bool = False, fill: int = 10) -> dict[str, Any]:
    """Time-series drawing: lines, or bare points for one value per measured start."""
    if points:
        return {"drawStyle": "points", "pointSize": 6, "showPoints": "always", "lineWidth": 0,
                "fillOpacity": 0, "spanNulls": False}
    return {"drawStyle": "line", "lineWidth": 1, "fillOpacity": fill, "showPoints": "never", "spanNulls": False,
            "lineInterpolation": "linear"}


LEGEND = {"displayMode": "list", "placement": "bottom", "showLegend": True}
TOOLTIP = {"mode": "multi", "sort": "desc"}
LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}
HIDE_TIME = [{"id": "organize", "options": {"excludeByName": {"Time": True}, "indexByName": {}, "renameByName": {}}}]
ONLINE = [{"type": "value", "options": {"true": {"text": "online", "color": "green", "index": 0},
                                        "false": {"text": "offline", "color": "red", "index": 1}}}]
ON_OFF = [{"type": "value", "options": {"true": {"text": "yes", "color": "red", "index": 0},
                                        "false": {"text": "no", "color": "green", "index": 1}}}]


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str, *, points: bool = False,
               minimum: float | None = 0, maximum: float | None = None) -> Panel:
    return {"type": "timeseries", "title": title, "description": description, "targets": targets,
            "fieldConfig": field_config(unit, custom=lines(points=points), minimum=minimum, maximum=maximum),
            "options": {"legend": LEGEND, "tooltip": TOOLTIP}}


def state_timeline(title: str, description: str, targets: list[dict[str, Any]],
                   mappings: list[dict[str, Any]]) -> Panel:
    return {"type": "state-timeline", "title": title, "description": description, "targets": targets,
            "fieldConfig": field_config("short", custom={"fillOpacity": 70, "lineWidth": 0}, mappings=mappings),
            "options": {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                        "legend": LEGEND, "tooltip": {"mode": "single", "sort": "none"}}}


def table(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", *,
          overrides: list[dict[str, Any]] | None = None, mappings: list[dict[str, Any]] | None = None) -> Panel:
    return {"type": "table", "title": title, "description": description, "targets": targets,
            "fieldConfig": field_config(unit, custom={"align": "auto", "cellOptions": {"type": "auto"}},
                                        overrides=overrides, mappings=mappings),
            "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
            "transformations": HIDE_TIME}


def barchart(title: str, description: str, targets: list[dict[str, Any]], unit: str, x_field: str) -> Panel:
    return {"type": "barchart", "title": title, "description": description, "targets": targets,
            "fieldConfig": field_config(unit, custom={"fillOpacity": 80, "lineWidth": 1, "axisSoftMin": 0}),
            "options": {"xField": x_field, "orientation": "horizontal", "showValue": "auto", "groupWidth": 0.7,
                        "barWidth": 0.9, "stacking": "none", "legend": LEGEND,
                        "tooltip": {"mode": "multi", "sort": "none"}, "xTickLabelRotation": 0}}


def histogram(title: str, description: str, targets: list[dict[str, Any]], unit: str) -> Panel:
    return {"type": "histogram", "title": title, "description": description, "targets": targets,
            "fieldConfig": field_config(unit, custom={"fillOpacity": 60, "lineWidth": 1}),
            "options": {"bucketCount": 30, "combine": False, "legend": LEGEND,
                        "tooltip": {"mode": "multi", "sort": "none"}}}


def stat(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", *,
         decimals: int | None = None) -> Panel:
    return {"type": "stat", "title": title, "description": description, "targets": targets,
            "fieldConfig": field_config(unit, decimals=decimals),
            "options": {"reduceOptions": LAST, "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                        "orientation": "auto", "textMode": "value_and_name", "wideLayout": True}}


def bargauge(title: str, description: str, targets: list[dict[str, Any]], unit: str) -> Panel:
    return {"type": "bargauge", "title": title, "description": description, "targets": targets,
            "fieldConfig": field_config(unit, minimum=0),
            "options": {"reduceOptions": LAST, "displayMode": "gradient", "orientation": "horizontal",
                        "showUnfilled": True, "valueMode": "color", "namePlacement": "auto"}}


def layout(rows: list[list[tuple[Panel, int]]], heights: list[int]) -> list[Panel]:
    """Place rows of (panel, width) on Grafana's 24-column grid; number the panels 1, 2, …"""
    out: list[Panel] = []
    y = 0
    for row, h in zip(rows, heights, strict=True):
        x = 0
        for panel, w in row:
            assert x + w <= GRID_WIDTH, f"row at y={y} is wider than {GRID_WIDTH}"
            out.append({"id": len(out) + 1, **panel, "datasource": DS,
                        "gridPos": {"h": h, "w": w, "x": x, "y": y}})
            x += w
        y += h
    return out


def variable(name: str, query: str, *, label: str = "", multi: bool = False, sort: int = 1,
             description: str = "") -> dict[str, Any]:
    """A query variable; ``sort`` 1 = alphabetical, 2 = alphabetical descending (newest run id first)."""
    return {"name": name, "label": label or name, "description": description, "type": "query", "datasource": DS,
            "query": query, "definition": query, "refresh": 2, "regex": "", "sort": sort, "multi": multi,
            "includeAll": multi, "current": {}, "options": [], "hide": 0, "skipUrlSync": False}


def dashboard(uid: str, title: str, description: str, panels: list[Panel], variables: list[dict[str, Any]], *,
              time_from: str, refresh: str) -> dict[str, Any]:
    return {
        "id": None, "uid": uid, "title": title, "description": description, "tags": ["runlab"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "timezone": "browser", "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "time": {"from": time_from, "to": "now"}, "refresh": refresh,
        "timepicker": {"refresh_intervals": ["1s", "5s", "10s", "30s", "1m", "5m", "15m"]},
        "templating": {"list": variables}, "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["runlab"], "title": "runlab", "asDropdown": False,
                   "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "panels": panels,
    }


# --- runlab — fleet ------------------------------------------------------------------------------------------------


def host_series(field: str, agg: str = "mean") -> str:
    return f'SELECT {agg}("{field}") FROM "host" WHERE {NODE} AND $timeFilter {SERIES}'


TEMPERATURE = f'SELECT max(/^temp_.*_c$/) FROM "host" WHERE {NODE} AND $timeFilter {SERIES}'


def fleet() -> dict[str, Any]:
    nodes = table(
        "Nodes", "The last status each agent published (retained on the broker): online, or offline when it "
        "stopped or its connection died (MQTT last will). All time, not the dashboard range: a status is written "
        "only when it changes.",
        [target('SELECT last("online") AS "online", last("version") AS "version", last("arch") AS "arch", '
                'last("cores") AS "cores", last("memory_bytes") AS "memory", last("kernel") AS "kernel", '
                'last("cpu_model") AS "CPU", last("run") AS "run" '
                f'FROM "node_status" WHERE {NODE} GROUP BY "node"', table=True)],
        mappings=ONLINE,
        overrides=[{"matcher": {"id": "byName", "options": "online"},
                    "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
                   {"matcher": {"id": "byName", "options": "memory"},
                    "properties": [{"id": "unit", "value": "bytes"}]}])
    online = state_timeline(
        "Online / offline", "Status changes in the range (each agent connect, stop or lost connection). "
        "Before a node's first change in the range the row is empty.",
        [target(f'SELECT last("online") FROM "node_status" WHERE {NODE} AND $timeFilter '
                'GROUP BY time($__interval), "node" fill(previous)', alias="$tag_node")], ONLINE)
    heartbeat = timeseries(
        "Host samples received", "Host points per interval and node: a flat line is a healthy agent, a gap "
        "is a node that was silent (down, or its data is still in its outbox).",
        [target(f'SELECT count("cpu_percent") FROM "host" WHERE {NODE} AND $timeFilter {SERIES}',
                alias="$tag_node")], "short")
    cpu = timeseries("CPU", "host.cpu_percent: all cores, mean per interval.",
                     [target(host_series("cpu_percent"), alias="$tag_node")], "percent", maximum=100)
    mem = timeseries("Memory used", "host.mem_used_percent.",
                     [target(host_series("mem_used_percent"), alias="$tag_node")], "percent", maximum=100)
    load = timeseries("Load average (1 min)", "host.load1: runnable + uninterruptible tasks; compare with the "
                      "node's core count (Nodes table).", [target(host_series("load1"), alias="$tag_node")], "short")
    temp = timeseries(
        "Temperature", "Every host.temp_<sensor>_c field (hottest value per interval). Empty on machines "
        "without thermal sensors (most VMs): the agent leaves fields it cannot read out.",
        [target(TEMPERATURE, alias="$tag_node $col")], "celsius", minimum=None)
    clock = timeseries("CPU clock", "host.cpu_freq_mhz: a clock that drops under load is thermal or power "
                       "throttling, on any machine.", [target(host_series("cpu_freq_mhz"), alias="$tag_node")],
                       "rotmhz")
    throttling = state_timeline(
        "Raspberry Pi throttling", "Firmware flags (vcgencmd get_throttled) right now: under-voltage, ARM "
        "frequency capped, throttled, soft temperature limit. Only Raspberry Pis report them.",
        [target('SELECT last("under_voltage") AS "under-voltage", last("arm_freq_capped") AS "freq capped", '
                'last("throttled") AS "throttled", last("soft_temp_limit") AS "soft temp limit" '
                f'FROM "host" WHERE {NODE} AND $timeFilter {SERIES}', alias="$tag_node $col")], ON_OFF)
    outbox = timeseries(
        "Agent outbox depth", "agent.outbox_messages: batches waiting on the node's disk for the broker's "
        "PUBACK. Near 0 when the link is up; grows while the broker is unreachable.",
        [target(f'SELECT max("outbox_messages") FROM "agent" WHERE {NODE} AND $timeFilter {SERIES}',
                alias="$tag_node")], "short")
    dropped = timeseries(
        "Agent losses", "agent.samples_dropped (outbox full: oldest batches dropped) and agent.messages_lost "
        "(the disk refused a write), counted since the agent started. Should stay 0.",
        [target('SELECT max("samples_dropped") AS "samples dropped", max("messages_lost") AS "messages lost" '
                f'FROM "agent" WHERE {NODE} AND $timeFilter {SERIES}', alias="$tag_node $col")], "short")
    ingest = timeseries(
        "Collector ingest", "Samples written to InfluxDB per second: derivative of collector.samples_written "
        "(a counter since the collector started), per collector.",
        [target('SELECT non_negative_derivative(max("samples_written"), 1s) AS "samples/s" FROM "collector" '
                'WHERE $timeFilter GROUP BY time($__interval), "collector" fill(none)',
                alias="$tag_collector")], "short")
    quarantine = timeseries(
        "Collector problems", "Counters since the collector started: quarantined (refused input, see "
        "quarantine.jsonl), gaps and duplicates in the agents' batch sequences, failed writes.",
        [target('SELECT max("quarantined") AS "quarantined", max("gaps") AS "gaps", '
                'max("duplicates") AS "duplicates", max("write_errors") AS "write errors" FROM "collector" '
                'WHERE $timeFilter GROUP BY time($__interval), "collector" fill(none)',
                alias="$tag_collector $col")], "short")
    lag = timeseries(
        "End-to-end lag", "Sample taken on the node → write accepted by InfluxDB (collector.lag_p99_ms, "
        "lag_max_ms). Includes clock skew between node and collector.",
        [target('SELECT max("lag_p99_ms") AS "p99", max("lag_max_ms") AS "max" FROM "collector" '
                'WHERE $timeFilter GROUP BY time($__interval), "collector" fill(none)',
                alias="$tag_collector $col")], "ms")
    panels = layout(
        [[(nodes, 12), (online, 6), (heartbeat, 6)],
         [(cpu, 8), (mem, 8), (load, 8)],
         [(temp, 8), (clock, 8), (throttling, 8)],
         [(outbox, 8), (dropped, 8), (ingest, 8)],
         [(quarantine, 12), (lag, 12)]],
        [7, 8, 8, 8, 8])
    return dashboard(
        "runlab-fleet", "runlab — fleet",
        "Every node's host, its agent's outbox, and the collector's ingest.", panels,
        [variable("node", 'SHOW TAG VALUES FROM "host" WITH KEY = "node"', multi=True)],
        time_from="now-1h", refresh="10s")


# --- runlab — experiment comparison --------------------------------------------------------------------------------


def summary(select: str, figure: str, group: str = '"node", "variant"') -> str:
    return (f'SELECT {select} FROM "run_summary" WHERE "figure" = \'{figure}\' AND {EXPERIMENT} AND {RUN} '
            f'AND {NODE} AND $timeFilter GROUP BY {group}')


RAW_STARTS = (f'SELECT "value" FROM "run_sample" WHERE "figure" = \'startup_ms\' AND "warmup" = \'false\' '
              f'AND {EXPERIMENT} AND {RUN} AND {NODE} AND $timeFilter GROUP BY "node", "variant"')


def experiments() -> dict[str, Any]:
    ci_table = table(
        "Start time: median with 95 % CI", "From run_summary (figure startup_ms): the statistics the local "
        "`runlab-agent run` table prints. CI: order-statistic 95 % interval of the median. Warm-up starts "
        "excluded; failures counted.",
        [target(summary('last("median") AS "median", last("ci_low") AS "CI low", last("ci_high") AS "CI high", '
                        'last("mean") AS "mean", last("stdev") AS "σ", last("p90") AS "p90", '
                        'last("p99") AS "p99", last("min") AS "min", last("max") AS "max", last("n") AS "n", '
                        'last("failures") AS "failures", last("outliers") AS "outliers"', "startup_ms"),
                table=True)], "ms",
        overrides=[{"matcher": {"id": "byRegexp", "options": "^(n|failures|outliers)$"},
                    "properties": [{"id": "unit", "value": "short"}, {"id": "decimals", "value": 0}]}])
    ci_bars = barchart(
        "Start time: median and CI", "Median per variant with the low and high ends of its 95 % CI: "
        "bars whose intervals do not overlap differ.",
        [target(summary('last("ci_low") AS "CI low", last("median") AS "median", last("ci_high") AS "CI high"',
                        "startup_ms"), table=True)], "ms", "variant")
    distribution = histogram(
        "Start-time distribution", "Every measured cold start (run_sample startup_ms, warm-up excluded), "
        "bucketed per variant.", [target(RAW_STARTS, alias="$tag_variant ($tag_node)")], "ms")
    in_order = timeseries(
        "Start times in measurement order", "Each cold start as it was measured: drift, warm-up effects or "
        "thermal throttling show as a trend.", [target(RAW_STARTS, alias="$tag_variant ($tag_node)")], "ms",
        points=True)
    footprint = barchart(
        "Idle memory (PSS)", "run_summary footprint: proportional set size of everything the runtime "
        "started, after `settle`; peak since the start.",
        [target(summary('last("pss_bytes") AS "PSS", last("peak_bytes") AS "peak"', "footprint"), table=True)],
        "bytes", "variant")
    memory_table = table(
        "Memory detail", "PSS, USS, RSS of the process tree; the cgroup's own figure where the runtime has one; "
        "the peak and how it was read.",
        [target(summary('last("pss_bytes") AS "PSS", last("uss_bytes") AS "USS", last("rss_bytes") AS "RSS", '
                        'last("processes") AS "processes", last("cgroup_bytes") AS "cgroup", '
                        'last("peak_bytes") AS "peak", last("peak_source") AS "peak source"', "footprint"),
                table=True)], "bytes",
        overrides=[{"matcher": {"id": "byName", "options": "processes"},
                    "properties": [{"id": "unit", "value": "short"}]}])
    size = barchart(
        "Artifact size", "run_summary size: binary, image (uncompressed, as the engine reports it), kernel + "
        "initrd or the experiment's `artifact`.",
        [target(summary('last("bytes") AS "size"', "size"), table=True)], "bytes", "variant")
    latency = table(
        "Load latency percentiles", "run_summary latency_ms per load mode (closed: N requests over C "
        "connections; open: fixed rate, latency from the intended send time).",
        [target(summary('last("median") AS "p50", last("p90") AS "p90", last("p99") AS "p99", '
                        'last("p999_ms") AS "p99.9", last("max") AS "max", last("achieved_rps") AS "req/s", '
                        'last("errors") AS "errors"', "latency_ms", '"node", "variant", "mode"'), table=True)],
        "ms",
        overrides=[{"matcher": {"id": "byRegexp", "options": "^(req/s|errors)$"},
                    "properties": [{"id": "unit", "value": "short"}]}])
    latency_bars = barchart(
        "Load latency", "p50 / p90 / p99 per variant and load mode.",
        [target(summary('last("median") AS "p50", last("p90") AS "p90", last("p99") AS "p99"', "latency_ms",
                        '"node", "variant", "mode"'), table=True)], "ms", "variant")
    errors = table(
        "Variants that failed", "run_summary error: variants where something failed (no successful start, or "
        "a phase error such as a failed benchmark or redeploy), and why.",
        [target(summary('last("message") AS "reason"', "error"), table=True)])
    compared = table(
        "Compared with the reference: N× slower / N % faster (95 % CI)",
        "run_summary comparison: the engine's own comparisons, worded as `runlab report` and the local table "
        "word them — growth as a multiple (37.8× slower), a drop as a percentage (96.5 % faster), with the 95 % "
        "bootstrap CI of the ratio of medians and the Mann–Whitney p. ratio = variant median / reference median.",
        [target(f'SELECT "candidate" AS "variant", "compared" AS "figure", "sentence" AS "comparison", '
                f'"ratio", "ratio_ci_low" AS "CI low", "ratio_ci_high" AS "CI high", "p_value" AS "p" '
                f'FROM "run_summary" WHERE "figure" = \'comparison\' AND {EXPERIMENT} AND {RUN} AND {NODE} '
                f'AND $timeFilter GROUP BY "node"', table=True)],
        overrides=[{"matcher": {"id": "byRegexp", "options": "^(ratio|CI low|CI high)$"},
                    "properties": [{"id": "decimals", "value": 3}]}])
    host = timeseries(
        "Host CPU during the runs", "host.cpu_percent of the selected nodes: a busy host makes start times "
        "noisy.", [target(host_series("cpu_percent"), alias="$tag_node")], "percent", maximum=100)
    panels = layout(
        [[(ci_table, 14), (ci_bars, 10)],
         [(distribution, 12), (in_order, 12)],
         [(footprint, 8), (memory_table, 10), (size, 6)],
         [(latency, 14), (latency_bars, 10)],
         [(errors, 10), (host, 14)],
         [(compared, 24)]],
        [8, 9, 8, 8, 7, 8])
    return dashboard(
        "runlab-experiments", "runlab — experiment comparison",
        "One experiment run: start time, memory, size and latency per variant.", panels,
        [variable("node", 'SHOW TAG VALUES FROM "run_summary" WITH KEY = "node"', multi=True),
         variable("experiment", f'SHOW TAG VALUES FROM "run_summary" WITH KEY = "experiment" WHERE {NODE}'),
         variable("run", f'SHOW TAG VALUES FROM "run_summary" WITH KEY = "run" WHERE {EXPERIMENT} AND {NODE}',
                  sort=2, description="Run ids start with their UTC start time: the newest is first.")],
        time_from="now-30d", refresh="")


# --- runlab — live run ---------------------------------------------------------------------------------------------


def live_sample(select: str, figure: str, group: str = '"variant"', where: str = "") -> str:
    return (f'SELECT {select} FROM "run_sample" WHERE "figure" = \'{figure}\' {where}AND {RUN} AND {NODE} '
            f'AND $timeFilter GROUP BY {group}')


def live() -> dict[str, Any]:
    done = stat("Cold starts done", "run_sample startup_ms points per variant, warm-up and failed starts "
                "included: the run's progress.",
                [target(live_sample('count("i") AS "starts"', "startup_ms"), alias="$tag_variant")], decimals=0)
    median = stat("Median so far", "Median of the measured (not warm-up) cold starts received so far.",
                  [target(live_sample('median("value")', "startup_ms", where='AND "warmup" = \'false\' '),
                         alias="$tag_variant")], "ms", decimals=1)
    recent = timeseries(
        "Cold starts as they arrive", "Every start of the run (warm-up ones marked), newest on the right.",
        [target(live_sample('"value"', "startup_ms", '"variant", "warmup"'),
                alias="$tag_variant (warm-up: $tag_warmup)")], "ms", points=True)
    memory = bargauge(
        "Workload memory", "run_sample footprint: PSS after `settle`, and the peak since the start.",
        [target(live_sample('last("pss_bytes") AS "PSS", last("peak_bytes") AS "peak"', "footprint"),
                alias="$tag_variant $col")], "bytes")
    load = bargauge(
        "Load latency", "run_sample load: p50 and p99 of each load phase as it finishes.",
        [target(live_sample('last("p50_ms") AS "p50", last("p99_ms") AS "p99"', "load", '"variant", "mode"'),
                alias="$tag_variant $tag_mode $col")], "ms")
    cpu = timeseries("Host CPU", "host.cpu_percent of the node running the experiment.",
                     [target(host_series("cpu_percent"), alias="$tag_node")], "percent", maximum=100)
    temp = timeseries("Host temperature", "Every host.temp_<sensor>_c of the node (empty without sensors).",
                      [target(TEMPERATURE, alias="$tag_node $col")], "celsius", minimum=None)
    outbox = timeseries("Agent outbox depth", "Batches of this node not yet acknowledged by the broker: the "
                        "run's samples reach this dashboard once it drains.",
                        [target(f'SELECT max("outbox_messages") FROM "agent" WHERE {NODE} AND $timeFilter '
                                f'{SERIES}', alias="$tag_node")], "short")
    panels = layout(
        [[(done, 12), (median, 12)],
         [(recent, 24)],
         [(memory, 12), (load, 12)],
         [(cpu, 8), (temp, 8), (outbox, 8)]],
        [5, 9, 7, 8])
    return dashboard(
        "runlab-live-run", "runlab — live run",
        "The run in progress on one node, refreshed every second.", panels,
        [variable("node", 'SHOW TAG VALUES FROM "run_sample" WITH KEY = "node"'),
         variable("run", f'SHOW TAG VALUES FROM "run_sample" WITH KEY = "run" WHERE {NODE}', sort=2,
                  description="Run ids start with their UTC start time: the newest (the current run) is first.")],
        time_from="now-30m", refresh="1s")


# --- output -----------------------------------------------------------------------------------------------------


DASHBOARDS = {"runlab-fleet.json": fleet, "runlab-experiments.json": experiments, "runlab-live-run.json": live}


def render() -> dict[str, str]:
    """File name → exact JSON text."""
    return {name: json.dumps(make(), indent=2, ensure_ascii=False) + "\n" for name, make in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        path = OUT / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text, encoding="utf-8")
    if check and stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(("up to date: " if not stale else "written: " if not check else "") +
          ", ".join(stale or sorted(DASHBOARDS)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
