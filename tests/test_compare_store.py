"""A report rebuilt from InfluxDB equals the local one; `runlab compare` reads runs from the store.

One real run through the engine (hello servers, one of them 3 ms slower per request and 30 ms slower to start):
cold starts, footprint, closed-loop load and size. Everything the agent would send (live samples, the run's
summaries with the latency histograms, its events) goes through the collector's LineEncoder into a real
InfluxDB 1.x; `runlab report` runs as a subprocess and its table and Markdown are compared with the local
rendering character for character.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runlab import wire
from runlab.devservers import InfluxV1
from runlab.histogram import Histogram
from runlab.report import render
from runlab.results import ExperimentResult
from tests.conftest import REPO
from tests.test_operator import runlab, write_config
from tests.test_report_store_phases import lines, report, run_engine

DELAYED = [sys.executable, "-S", "-I", str(REPO / "tests" / "standins" / "delayed.py"), "--port", "{port}"]


@pytest.fixture(scope="module")
def load_run() -> tuple[ExperimentResult, list[wire.Sample]]:
    return run_engine({
        "name": "store-load", "repeat": 8, "warmup": 1,
        "phases": ["cold_start", "footprint", "load", "size"],
        "load": {"requests": 400, "concurrency": 2},
        "variants": [{"name": "native", "runtime": "process", "command": DELAYED},
                     {"name": "slow", "runtime": "process",
                      "command": [*DELAYED, "--start-ms", "30", "--delay-ms", "3"]}],
    })


def test_report_from_influxdb_equals_the_local_report(
        tmp_path: Path, influx: InfluxV1, load_run: tuple[ExperimentResult, list[wire.Sample]]) -> None:
    local, emitted = load_run
    assert all(not v.error for v in local.variants), [v.error for v in local.variants]
    assert all(lf.generator_floor_ms > 0 and lf.histogram for v in local.variants for lf in v.load)
    influx.write(lines(local, emitted))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    # every grid (load: generator floor, p99.9), every sentence (latency from the engine's own comparison), every
    # note, the machine, the file and the method line: the whole page, character for character
    assert report(cfg, local.run) == render("table", [local])
    assert report(cfg, local.run, "--format", "markdown") == render("markdown", [local])
    data = json.loads(report(cfg, local.run, "--format", "json"))
    for got, want in zip(data["variants"], local.variants, strict=True):
        (lf,) = want.load
        assert got["load"][0]["histogram"] == lf.histogram
        assert got["load"][0]["generator_floor_ms"] == lf.generator_floor_ms
        h = Histogram.decode(got["load"][0]["histogram"])
        assert h.count == lf.ok == 400
        assert lf.latency_ms is not None and abs(h.quantile(0.5) - lf.latency_ms.median) <= 0.01 * lf.latency_ms.median
    assert {c["figure"] for c in data["comparisons"]} == {"startup_ms", "latency_ms_closed"}
    slow = next(c for c in data["comparisons"] if c["figure"] == "latency_ms_closed")
    assert slow["significant"] and slow["ratio"] > 1.5


def test_another_reference_compares_latency_from_the_histograms(
        tmp_path: Path, influx: InfluxV1, load_run: tuple[ExperimentResult, list[wire.Sample]]) -> None:
    local, emitted = load_run
    influx.write(lines(local, emitted))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    data = json.loads(report(cfg, local.run, "--format", "json", "--reference", "slow"))
    lat = next(c for c in data["comparisons"] if c["figure"] == "latency_ms_closed")
    assert lat["reference"] == "slow" and lat["candidate"] == "native" and lat["significant"]
    assert lat["ratio"] < 0.67 and "% faster (95 % CI" in lat["sentence"]
    engine = next(c for c in local.comparisons if c.figure == "latency_ms_closed")
    assert engine.ratio is not None and abs(lat["ratio"] * engine.ratio - 1) < 0.03  # the inverse, within bucketing


def test_compare_two_runs_from_the_store(
        tmp_path: Path, influx: InfluxV1, load_run: tuple[ExperimentResult, list[wire.Sample]]) -> None:
    """The same run twice under two ids: compare by run id and by EXPERIMENT (latest) finds no difference."""
    local, emitted = load_run
    influx.write(lines(local, emitted))
    again = ExperimentResult(**{**{f: getattr(local, f) for f in local.__struct_fields__}, "run": local.run + "-b"})
    shifted = [wire.Sample(ts=s.ts + 10**9, name=s.name, tags={**s.tags, "run": again.run}, fields=s.fields)
               for s in emitted]
    influx.write(lines(again, shifted))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    r = runlab("compare", local.run, "store-load", "--format", "json", "--fail-on", "worse:5%", config=cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["new"]["runs"] == [again.run] and data["base"]["runs"] == [local.run]
    rows = data["rows"]
    assert {(x["variant"], x["figure"]) for x in rows} >= {("native", "startup_ms"), ("slow", "latency_ms_closed")}
    assert all(x["verdict"] == "no significant difference" for x in rows if x["p_value"] is not None)
    # EXPERIMENT@TIME: the latest run that had started by then (the second one started 1 s after the first)
    between = datetime.fromtimestamp((min(s.ts for s in emitted) + 5 * 10**8) / 1e9, UTC)
    at = between.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    r = runlab("compare", f"store-load@{at}", "store-load", "--format", "json", config=cfg)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["base"]["runs"] == [local.run]
    r = runlab("compare", "store-load@2001-01-01", "store-load", config=cfg)
    assert r.returncode == 1 and "that started by 2001-01-01T23:59:59" in r.stderr, r.stderr
    r = runlab("compare", local.run, "no-such-experiment", config=cfg)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no-such-experiment" in r.stderr, r.stderr
