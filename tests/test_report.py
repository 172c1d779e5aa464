"""Tests of the report writers (runlab.report) on hand-built results: table, Markdown, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import random
import re

import msgspec
import pytest

from runlab import stats
from runlab.report import WRITERS, cells, render
from runlab.report import csv as report_csv
from runlab.results import (
    ComparisonResult,
    ExperimentResult,
    Figure,
    Footprint,
    LoadFigures,
    Size,
    VariantResult,
    decode_json,
)

MIB = 1024 * 1024
# as agent.engine records it
METHODOLOGY: dict[str, object] = {
    "repeat": 50, "warmup": 1, "order": "interleaved", "cold": "process", "probe": "http", "probe_interval_ms": 1.0,
    "probe_timeout_ms": 250.0, "settle_s": 2.0, "pause_s": 0.0, "cooldown": None,
    "clock": "CLOCK_MONOTONIC (start issued → first probe success)", "memory": "PSS from smaps_rollup"}


def _series(rng: random.Random, centre: float, spread: float, n: int) -> list[float]:
    return [round(rng.gauss(centre, spread), 3) for _ in range(n)]


def _figure(samples: list[float], warmup: list[float] | None = None, failures: int = 0,
            reasons: list[str] | None = None) -> Figure:
    f = Figure.of(samples, "ms", warmup=warmup, failures=failures, failure_reasons=reasons)
    assert f is not None
    return f


def _load(rng: random.Random, mode: str, centre: float, n: int, errors: int = 0) -> LoadFigures:
    lat = _figure(_series(rng, centre, centre * 0.08, n))
    return LoadFigures(mode=mode, url="http://127.0.0.1:8080/", requests=n + errors, ok=n, errors=errors,
                       concurrency=10, target_rps=200.0 if mode == "open" else 0.0,
                       achieved_rps=198.7 if mode == "open" else 781.3, duration_s=5.0, latency_ms=lat,
                       p999_ms=lat.max * 0.98, generator_floor_ms=0.21)


def _comparison(figure: str, what: str, ref_name: str, ref: Figure | None, cand_name: str,
                cand: Figure | None) -> ComparisonResult:
    """As agent.engine builds it: stats.compare, worded by stats.describe."""
    assert ref is not None and cand is not None
    c = stats.compare(ref.samples, cand.samples, ref_name=ref_name, cand_name=cand_name)
    sentence = stats.describe(c, f"{cand_name} {what}", "ms", stats.summarize(ref.samples),
                              stats.summarize(cand.samples))
    return ComparisonResult(figure=figure, reference=ref_name, candidate=cand_name, ratio=c.ratio,
                            ratio_ci_low=c.ratio_ci_low, ratio_ci_high=c.ratio_ci_high, p_value=c.p_value,
                            significant=c.significant, change_pct=c.change_pct, sentence=sentence)


def make_result(node: str = "pi5", scale: float = 1.0, seed: int = 1, run: str = "r-0729") -> ExperimentResult:
    """Container (reference, 2 failed starts, one outlier) against WASM (no footprint measured)."""
    rng = random.Random(seed)
    container_samples = _series(rng, 1340 * scale, 40 * scale, 50)
    container_samples[17] = 2950.0 * scale  # a stall: flagged, kept
    container = VariantResult(
        name="container", runtime="container", node=node,
        startup_ms=_figure(container_samples, warmup=[3120.5 * scale], failures=2,
                           reasons=["readiness timeout after 60 s: http://127.0.0.1:41234/ never answered 200"] * 2),
        footprint=Footprint(pss_bytes=int(45.3 * MIB), uss_bytes=int(41.0 * MIB), rss_bytes=int(61.2 * MIB),
                            processes=3, cgroup_bytes=int(52.4 * MIB), cgroup_anon_bytes=int(30.1 * MIB),
                            cgroup_file_bytes=int(22.3 * MIB), peak_bytes=int(58.9 * MIB),
                            peak_source="cgroup memory.peak", settle_s=2.0),
        size=Size(bytes=72 * MIB, what="image localhost/hello-node:1 (uncompressed)"),
        load=[_load(rng, "closed", 127 * scale, 1000), _load(rng, "open", 131 * scale, 400, errors=3)],
        throttled_samples=0)
    wasm = VariantResult(
        name="wasm", runtime="wasm", node=node,
        startup_ms=_figure(_series(rng, 47 * scale, 1.5 * scale, 50), warmup=[61.0 * scale]),
        footprint=None,
        size=Size(bytes=int(3.8 * MIB), what="file /opt/hello/hello.wasm"),
        load=[_load(rng, "closed", 89 * scale, 1000)],
        throttled_samples=3, max_temp_c=81.4)
    machine: dict[str, object] = {"cpu_model": "Cortex-A76", "arch": "aarch64", "cores": 4,
                                  "memory_bytes": 8 * 1024 * MIB, "kernel": "6.6.31", "governor": "ondemand",
                                  "hostname": node, "runlab": "0.1.0", "cmdline": "console=serial0,115200",
                                  "runtimes": {"podman": "podman version 4.3.1", "wasmtime": "wasmtime-cli 21.0.1"}}
    return ExperimentResult(
        experiment="hello-http", run=run, file="experiments/hello.yaml", file_sha256="ab" * 32,
        started="2024-07-29T02:00:00Z", finished="2024-07-29T02:14:31Z", machine=machine,
        methodology=dict(METHODOLOGY), variants=[container, wasm],
        comparisons=[_comparison("startup_ms", "startup", "container", container.startup_ms, "wasm", wasm.startup_ms),
                     _comparison("latency_ms_closed", "closed-loop latency", "container", container.load[0].latency_ms,
                                 "wasm", wasm.load[0].latency_ms)],
        warnings=["CPU governor is 'ondemand', not 'performance'"])


@pytest.fixture(scope="module")
def one() -> ExperimentResult:
    return make_result()


@pytest.fixture(scope="module")
def two_nodes() -> list[ExperimentResult]:
    return [make_result("pi5"), make_result("x86-box", scale=0.45, seed=2, run="r-0730")]


# ---------------------------------------------------------------- cells


def test_cells_format_thousands_significant_digits_and_binary_units() -> None:
    assert cells.number(1340.2) == "1,340"
    assert cells.number(46.54) == "46.5"
    assert cells.quantity(47.0, "ms") == "47 ms"
    assert cells.size(int(3.8 * MIB)) == "3.8 MiB"
    assert cells.size(72 * MIB) == "72.0 MiB"
    assert cells.size(512) == "512 B"
    assert cells.size(1024 * 1024 - 20) == "1.0 MiB"  # not "1,024.0 KiB"
    assert cells.size(3 * 1024 * MIB // 2) == "1.5 GiB"
    assert cells.interval(1320.4, 1361.0) == "[1,320–1,361]"
    assert cells.number(None) == cells.MISSING


# ---------------------------------------------------------------- table


def test_table_shows_medians_intervals_units_memory_load_and_the_comparison(one: ExperimentResult) -> None:
    text = render("table", [one])
    container, wasm = one.variants
    assert container.startup_ms is not None and wasm.startup_ms is not None
    for f in (container.startup_ms, wasm.startup_ms):
        assert cells.number(f.median) in text
        assert cells.interval(f.ci_low, f.ci_high) in text
        assert cells.plus_minus(f.mean, f.stdev) in text
        assert cells.number(f.p99) in text
    assert "Cold start (ms)" in text
    assert "idle PSS" in text and "45.3 MiB" in text and "58.9 MiB" in text  # PSS and peak
    assert "72.0 MiB" in text and "3.8 MiB" in text  # sizes
    for c in one.comparisons:
        assert c.sentence in text
    assert "wasm startup: 47 ms vs 1,347 ms container — 96.5 % faster (95 % CI" in text
    assert "wasm closed-loop latency: " in text
    assert "⚠ CPU governor is 'ondemand'" in text
    assert "wasm: 3 cold start(s) taken while throttled or under-voltage (max 81.4 °C)" in text
    assert ("Method: repeat 50 + 1 warm-up per variant · interleaved order · http probe every 1 ms · "
            "cold level: process · settle 2 s") in text
    # the stall at sample 17 is counted and named, never dropped
    assert 17 in container.startup_ms.outliers
    assert f"{cells.quantity(container.startup_ms.samples[17], 'ms')} (sample 17)" in text
    assert "container cold start: 2 failed — readiness timeout" in text


def test_table_rows_are_aligned_and_variant_without_footprint_shows_a_dash(one: ExperimentResult) -> None:
    lines = render("table", [one]).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Memory"))
    header, rule, container_row, wasm_row = lines[start + 1:start + 5]
    assert set(rule.strip()) == {"─", " "}
    assert len(container_row) == len(rule)  # right-aligned last numeric column ends where the rule ends…
    assert wasm_row.split()[:3] == ["wasm", "wasm", cells.MISSING]
    assert "PSS" in header
    startup = next(i for i, line in enumerate(lines) if line.startswith("Cold start"))
    rows = lines[startup + 3:startup + 5]
    median_end = lines[startup + 1].index("median") + len("median")
    for row, v in zip(rows, one.variants, strict=True):  # …and every median ends in the same column
        assert v.startup_ms is not None
        m = cells.number(v.startup_ms.median)
        assert row[median_end - len(m):median_end] == m
        assert row[median_end - len(m) - 1] == " "


def test_table_puts_two_nodes_side_by_side(two_nodes: list[ExperimentResult]) -> None:
    text = render("table", two_nodes)
    first = text.split("\n\n\n")[0]
    assert first.startswith("hello-http — cold start (ms) and idle PSS, side by side")
    group_row = first.splitlines()[1]
    assert "─ pi5 ─" in group_row and "─ x86-box ─" in group_row
    assert group_row.index("pi5") < group_row.index("x86-box")
    wasm_row = next(line for line in first.splitlines() if line.strip().startswith("wasm"))
    for r in two_nodes:
        f = r.variants[1].startup_ms
        assert f is not None
        assert cells.number(f.median) in wasm_row
        assert cells.interval(f.ci_low, f.ci_high) in wasm_row
    pct = two_nodes[1].comparisons[0].change_pct
    assert pct is not None and pct < 0
    assert f"{cells.number(-pct)} % faster" in wasm_row  # the sentences' words, without the interval
    assert first.count("reference") >= 2  # the container row, in both column groups
    assert text.count("hello-http — run ") == 2  # then each run in full


def test_table_of_a_variant_that_produced_nothing() -> None:
    r = make_result()
    r.variants.append(VariantResult(name="unikernel", runtime="vm", node="pi5",
                                    error="qemu-system-aarch64: not found on PATH"))
    text = render("table", [r])
    row = next(line for line in text.splitlines() if line.strip().startswith("unikernel"))
    assert row.split()[2:4] == [cells.MISSING, cells.MISSING]
    assert "✗ unikernel: qemu-system-aarch64: not found on PATH" in text


def test_table_marks_a_median_interval_that_is_only_min_to_max() -> None:
    r = make_result()
    r.variants[1].startup_ms = _figure([47.0, 45.5, 49.0])  # n = 3: no 95 % order-statistic interval exists
    lines = render("table", [r]).splitlines()
    wasm_row = next(line for line in lines if line.strip().startswith("wasm") and "[" in line)
    assert "[45.5–49]*" in wasm_row
    assert "  * fewer than 6 samples: no 95 % order-statistic interval exists; min–max shown" in lines


# ---------------------------------------------------------------- markdown


def _md_cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return re.split(r"(?<!\\)\|", line[1:-1])


@pytest.mark.parametrize("nodes", [1, 2])
def test_markdown_tables_are_valid_gfm(nodes: int, one: ExperimentResult, two_nodes: list[ExperimentResult]) -> None:
    results = [one] if nodes == 1 else two_nodes
    text = render("markdown", results)
    blocks = re.findall(r"(?:^\|.*\n)+", text, flags=re.MULTILINE)
    side_by_side = 1 if nodes == 2 else 0
    assert len(blocks) == 4 * nodes + side_by_side  # startup, memory, size and load per run
    for block in blocks:
        lines = block.splitlines()
        counts = {len(_md_cells(line)) for line in lines}
        assert len(counts) == 1, block  # the same column count on every row
        assert all(re.fullmatch(r" -{3,}:? ", c) for c in _md_cells(lines[1])), lines[1]
        assert len(lines) >= 3
    assert one.comparisons[0].sentence.replace("*", "\\*") in text
    assert "### Cold start (ms)" in text


def test_markdown_escapes_pipes_in_cells() -> None:
    r = make_result()
    r.variants[0].size = Size(bytes=1, what="a|b")
    text = render("markdown", [r])
    row = next(line for line in text.splitlines() if "a\\|b" in line)
    assert len(_md_cells(row)) == 4  # variant, runtime, size, what


# ---------------------------------------------------------------- JSON


def test_json_of_one_run_is_exactly_the_result_object(one: ExperimentResult) -> None:
    text = render("json", [one])
    assert decode_json(text.encode()) == one
    data = json.loads(text)
    assert isinstance(data, dict)
    assert data["experiment"] == "hello-http"
    v0 = data["variants"][0]
    assert (v0["name"], v0["runtime"]) == ("container", "container")
    assert v0["startup_ms"]["n"] == 50
    assert isinstance(v0["startup_ms"]["median"], float)
    assert v0["startup_ms"]["samples"] == one.variants[0].startup_ms.samples  # type: ignore[union-attr]
    assert "\n  \"experiment\"" in text  # indent 2, as runlab.results.encode_json


def test_json_of_several_runs_is_an_array(two_nodes: list[ExperimentResult]) -> None:
    text = render("json", two_nodes)
    data = json.loads(text)
    assert isinstance(data, list) and len(data) == 2
    assert [decode_json(json.dumps(item).encode()) for item in data] == two_nodes
    assert msgspec.json.decode(text, type=list[ExperimentResult]) == two_nodes


# ---------------------------------------------------------------- CSV

HEADER = ["experiment", "run", "node", "variant", "runtime", "figure", "index", "value", "warmup", "outlier", "unit"]


def _raw_count(results: list[ExperimentResult]) -> int:
    n = 0
    for r in results:
        for v in r.variants:
            figures = [v.startup_ms, *(ld.latency_ms for ld in v.load)]
            n += sum(len(f.samples) + len(f.warmup) for f in figures if f is not None)
    return n


def test_csv_has_the_documented_header_and_one_row_per_raw_sample(two_nodes: list[ExperimentResult]) -> None:
    text = render("csv", two_nodes)
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == HEADER
    assert list(report_csv.COLUMNS) == HEADER
    for column in HEADER:
        assert f"``{column}``" in (report_csv.__doc__ or "")
    rows = list(reader)
    assert len(rows) == _raw_count(two_nodes) == 2 * (51 + 1000 + 400 + 51 + 1000)
    startup = [r for r in rows if r["node"] == "pi5" and r["variant"] == "container" and r["figure"] == "startup_ms"]
    measured = [float(r["value"]) for r in startup if r["warmup"] == "false"]
    f = two_nodes[0].variants[0].startup_ms
    assert f is not None
    assert measured == f.samples  # full precision, in order
    assert [float(r["value"]) for r in startup if r["warmup"] == "true"] == f.warmup
    assert [int(r["index"]) for r in startup if r["outlier"] == "true"] == f.outliers
    assert {r["figure"] for r in rows} == {"startup_ms", "latency_ms_closed", "latency_ms_open"}
    assert {r["unit"] for r in rows} == {"ms"}


# ---------------------------------------------------------------- registry


def test_writers_registry_and_unknown_format(one: ExperimentResult) -> None:
    assert set(WRITERS) == {"table", "markdown", "json", "csv", "html"}
    for fmt in WRITERS:
        assert render(fmt, [one]) == WRITERS[fmt]([one])
        assert render(fmt, []).endswith("\n")
    with pytest.raises(ValueError, match=r"unknown report format 'pdf': expected one of table, markdown, json, csv, h"):
        render("pdf", [one])
