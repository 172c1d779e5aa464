"""`runlab report` from InfluxDB shows the phases beyond cold start exactly as the local run reported them.

Two tiny real experiments run through the engine with real processes (hello servers, the pingpong peer, the
http-tps benchmark script; a fake Pi firmware tree and temperature source for the Pi care): cold starts,
redeploy, stack boot, overhead and density, benchmark — and inter-service RTT. Every sample the engine
emitted, the run's summaries and its lifecycle events are encoded by the collector's LineEncoder and written
to a real InfluxDB 1.x; the operator CLI then runs as a subprocess and its JSON, table, Markdown and CSV are
held against the local result's own rendering.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.engine import Runner
from agent.phases.pi import PiCare
from collector.lineprotocol import LineEncoder
from runlab import control, wire
from runlab.config import to_builtins
from runlab.devservers import InfluxV1
from runlab.experiment import parse
from runlab.report import render, store_phases
from runlab.report.sections import result_view
from runlab.report.table import grid_lines
from runlab.results import ExperimentResult, summary_samples
from tests.conftest import REPO
from tests.test_operator import runlab, write_config
from tests.test_phases import build_pingpong

NODE = "pi-1"
BENCH = str(REPO / "configs" / "experiments" / "bench" / "http-tps.py")
PHASE_TITLES = ("Redeploy", "Stack boot", "Inter-service latency", "Platform overhead", "Workload benchmark")


def run_engine(data: dict[str, object], pi: PiCare | None = None) -> tuple[ExperimentResult, list[wire.Sample]]:
    exp = parse({"ready": {"http": "http://127.0.0.1:{port}/", "timeout": "30s"}, "settle": "50ms", **data},
                "store.yaml")
    emitted: list[wire.Sample] = []
    result = asyncio.run(Runner(exp, node=NODE, emit=emitted.append, pi=pi).run())
    return result, emitted


def lines(result: ExperimentResult, emitted: list[wire.Sample], node: str = NODE) -> bytes:
    """What the collector writes for one node's run: live samples, summaries, accepted/finished events."""
    first = min(s.ts for s in emitted)
    events = [control.event_sample(control.RunEvent(node=node, run=result.run, experiment=result.experiment,
                                                    status="accepted", ts=first - 1000)),
              control.event_sample(control.RunEvent(node=node, run=result.run, experiment=result.experiment,
                                                    status="finished", ts=time_after(emitted)))]
    samples = [*emitted, *summary_samples(result, ts=time_after(emitted) - 500), *events]
    enc = LineEncoder(backslash=False)
    return b"\n".join(enc.line(s, {"node": node}) for s in samples)


def time_after(samples: list[wire.Sample]) -> int:
    return max(s.ts for s in samples) + 10**6


@pytest.fixture(scope="module")
def phase_run(workloads: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[ExperimentResult, list[wire.Sample]]:
    """Cold start, redeploy, stack, overhead and benchmark of two hello variants, on a "Pi" that is hot at
    first (a cool-down wait) and reports under-voltage on every sample."""
    tmp = tmp_path_factory.mktemp("store-phases")
    sysfs = tmp / "sys" / "devices" / "platform" / "soc" / "soc:firmware"
    sysfs.mkdir(parents=True)
    (sysfs / "get_throttled").write_text("50005\n")
    temps = iter([80.0, 60.0] + [55.0] * 100_000)
    pi = PiCare(root=tmp, temperature=lambda: next(temps), vcgencmd=None)
    data_dir = tmp / "data"
    data_dir.mkdir()
    (data_dir / "blob").write_bytes(b"x" * 100_000)
    hello = [str(workloads / "hello"), "--port", "{port}", "--body", "{version}"]
    return run_engine({
        "name": "store-phases", "repeat": 6, "warmup": 1,
        "phases": ["cold_start", "redeploy", "stack", "overhead", "benchmark"],
        "cooldown": {"below_c": 70, "max_wait": "5s"},
        "variants": [{"name": "native", "runtime": "process", "command": hello},
                     {"name": "slow", "runtime": "process", "command": [*hello, "--delay-ms", "40"]}],
        "redeploy": {"repeat": 3, "tail": "50ms"},
        "stack": {"repeat": 3, "stacks": [{"name": "both", "services": ["native", "slow"]},
                                          {"name": "fast", "services": ["native"]}]},
        "overhead": {"density": [0, 1, 2], "window": "100ms", "settle": "50ms",
                     "platforms": {"native": {"data_dirs": [str(data_dir)]}}},
        "benchmark": {"command": [sys.executable, BENCH, "--url", "http://127.0.0.1:{port}/", "--requests", "100"],
                      "score": r"tps = ([0-9.]+)", "unit": "tps", "repeat": 3, "warmup": 1},
    }, pi=pi)


@pytest.fixture(scope="module")
def rtt_run(workloads: Path) -> tuple[ExperimentResult, list[wire.Sample]]:
    """Inter-service RTT between two pingpong processes, two variants, two pairs each."""
    pingpong = str(build_pingpong())
    args = [pingpong, "{role}", "--port", "{port}", "--peer", "{peer}", "--out", "{run_dir}/rtt.txt", "--count",
            "200", "--warmup", "20"]
    return run_engine({
        "name": "store-rtt", "phases": ["interservice"], "ready": {"tcp": "127.0.0.1:{port}", "timeout": "30s"},
        "variants": [{"name": "procs", "runtime": "process", "command": args},
                     {"name": "procs-2", "runtime": "process", "command": args}],
        "interservice": {"repeat": 2},
    })


def close(got: Any, want: Any, where: str = "") -> None:
    """Equal, floats within rounding, naming the first difference."""
    if isinstance(want, float) and isinstance(got, int | float):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def report(cfg: Path, *args: str) -> str:
    r = runlab("report", *args, config=cfg)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def test_json_from_influxdb_holds_every_phase_figure_of_the_local_run(
        tmp_path: Path, influx: InfluxV1, phase_run: tuple[ExperimentResult, list[wire.Sample]]) -> None:
    local, emitted = phase_run
    assert all(not v.error for v in local.variants), [v.error for v in local.variants]
    influx.write(lines(local, emitted))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    data = json.loads(report(cfg, local.run, "--format", "json"))
    want = to_builtins(local)
    assert data["experiment"] == "store-phases" and data["run"] == local.run and data["status"] == "finished"
    assert [(v["node"], v["name"], v["runtime"]) for v in data["variants"]] == [(NODE, "native", "process"),
                                                                               (NODE, "slow", "process")]
    for got, v in zip(data["variants"], want["variants"], strict=True):
        close(got["startup_ms"], v["startup_ms"], f"{v['name']}.startup_ms")
        for phase in ("redeploy", "overhead", "benchmark"):  # every value, every statistic, every list
            close(got[phase], v[phase], f"{v['name']}.{phase}")
        assert got["interservice"] is None
        assert got["throttled_samples"] == v["throttled_samples"] == 6 and got["max_temp_c"] == 55.0
    rd = data["variants"][1]["redeploy"]
    assert rd["strategy"] == "stop-start" and rd["time_to_v2_ms"]["n"] == 3 and rd["time_to_v2_ms"]["min"] >= 40
    assert len(rd["gap_ms"]["samples"]) == 3 and all(n > 0 for n in rd["requests"])
    assert [lv["workloads"] for lv in data["variants"][0]["overhead"]["levels"]] == [0, 1, 2]
    assert data["variants"][0]["overhead"]["data_bytes"] >= 100_000
    bench = data["variants"][0]["benchmark"]
    assert bench["score"]["n"] == 3 and len(bench["score"]["warmup"]) == 1 and bench["unit"] == "tps"
    assert BENCH in bench["command"] and bench["higher_is_better"] is True
    close(data["stacks"], want["stacks"], "stacks")
    assert [(st["name"], [s["name"] for s in st["services"]]) for st in data["stacks"]] == [
        ("both", ["native", "slow"]), ("fast", ["native"])]
    assert data["stacks"][0]["total_ms"]["n"] == 3 and data["stacks"][0]["node"] == NODE
    # the same comparisons, recomputed from the raw values: cold start, redeploy, benchmark, stack boot
    close(data["comparisons"], want["comparisons"], "comparisons")
    assert {c["figure"] for c in data["comparisons"]} == {"startup_ms", "redeploy_ms", "benchmark", "stack_ms"}
    close(data["cooldown_waits_s"], want["cooldown_waits_s"], "cooldown_waits_s")
    assert len(data["cooldown_waits_s"]) == 1 and data["cooldown_waits_s"][0] >= 0.5
    assert data["methodology"]["phases"] == ["cold_start", "redeploy", "stack", "overhead", "benchmark"]


def test_table_markdown_and_csv_from_influxdb_draw_the_phase_grids_as_the_local_report(
        tmp_path: Path, influx: InfluxV1, phase_run: tuple[ExperimentResult, list[wire.Sample]],
        rtt_run: tuple[ExperimentResult, list[wire.Sample]]) -> None:
    for local, emitted in (phase_run, rtt_run):
        influx.write(lines(local, emitted))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    for local, _ in (phase_run, rtt_run):
        table = report(cfg, local.run)
        md = report(cfg, local.run, "--format", "markdown")
        view = result_view(local)
        grids = [g for g in view.grids if g.title.startswith(PHASE_TITLES)]
        assert grids, "the local run drew no phase grid"
        for g in grids:  # the same title, header, every cell and every note, character for character
            assert "\n".join(grid_lines(g)) in table, "\n".join(grid_lines(g))
            assert g.title in md
        for sentence in view.comparisons:  # RTT: the engine's own comparison travels (the round trips do not)
            assert sentence in table
    phase_local = phase_run[0]
    table = report(cfg, phase_local.run)
    assert "cool-down: waited before 1 sample(s)" in table
    assert "native: 6 cold start(s) taken while throttled or under-voltage (max 55 °C)" in table
    # CSV: every raw value of the phases whose values travel, as the local CSV has them
    csv = report(cfg, phase_local.run, "--format", "csv").splitlines()
    local_csv = render("csv", [phase_local]).splitlines()
    for figure in ("startup_ms", "redeploy_ms", "redeploy_gap_ms", "benchmark", "stack_ms", "stack_service_ms"):
        want = [ln for ln in local_csv if f",{figure}," in ln]
        assert want and [ln for ln in csv if f",{figure}," in ln] == want, figure


def test_rtt_from_influxdb_is_the_summary_of_every_round_trip(
        tmp_path: Path, influx: InfluxV1, rtt_run: tuple[ExperimentResult, list[wire.Sample]]) -> None:
    local, emitted = rtt_run
    influx.write(lines(local, emitted))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    data = json.loads(report(cfg, "store-rtt", "--format", "json"))
    assert [v["name"] for v in data["variants"]] == ["procs", "procs-2"]
    for got, v in zip(data["variants"], local.variants, strict=True):
        it = got["interservice"]
        assert v.interservice is not None and v.interservice.rtt_ms is not None, v.error
        assert it["pairs"] == v.interservice.pairs == 2 and it["peer"] == "127.0.0.1"
        want = to_builtins(v.interservice.rtt_ms)
        assert it["rtt_ms"]["n"] == 400 and it["rtt_ms"]["samples"] == []  # the round trips stay on the node
        close({k: it["rtt_ms"][k] for k in ("n", "median", "mean", "stdev", "cv", "min", "max", "p90", "p95", "p99",
                                            "ci_low", "ci_high", "ci_exact", "failures")},
              {k: want[k] for k in ("n", "median", "mean", "stdev", "cv", "min", "max", "p90", "p95", "p99",
                                    "ci_low", "ci_high", "ci_exact", "failures")}, v.name)
        assert got["startup_ms"] is None and got["redeploy"] is None and not got["error"]
    # the round trips stay on the node, but the engine's comparison of them travels as a summary point
    assert any(c.figure == "rtt_ms" for c in local.comparisons)
    close(data["comparisons"], to_builtins(local.comparisons), "comparisons")
    assert data["methodology"]["phases"] == ["interservice"]


def test_several_nodes_merge_their_stacks_and_a_late_phase_failure_is_shown(
        tmp_path: Path, influx: InfluxV1, phase_run: tuple[ExperimentResult, list[wire.Sample]]) -> None:
    """The same run reported by two nodes; on the second, the benchmark failed after good cold starts."""
    local, emitted = phase_run
    influx.write(lines(local, emitted))
    broken = ExperimentResult(**{**{f: getattr(local, f) for f in local.__struct_fields__},
                                 "variants": [v for v in local.variants]})
    failing = broken.variants[1]
    broken.variants[1] = type(failing)(**{**{f: getattr(failing, f) for f in failing.__struct_fields__},
                                          "error": "benchmark: no score: exited with code 1"})
    influx.write(lines(broken, emitted, node="pi-2"))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    data = json.loads(report(cfg, local.run, "--format", "json"))
    assert [(v["node"], v["name"]) for v in data["variants"]] == [
        ("pi-1", "native"), ("pi-1", "slow"), ("pi-2", "native"), ("pi-2", "slow")]
    assert [(st["node"], st["name"]) for st in data["stacks"]] == [
        ("pi-1", "both"), ("pi-1", "fast"), ("pi-2", "both"), ("pi-2", "fast")]
    assert data["variants"][3]["error"] == "benchmark: no score: exited with code 1"
    assert data["variants"][3]["startup_ms"]["n"] == 6  # its cold starts are still there
    assert sum(c["figure"] == "stack_ms" for c in data["comparisons"]) == 2
    table = report(cfg, local.run)
    pi2 = table[table.index("Machine: pi-2"):]  # each node's report in full, after the side-by-side grid
    assert "✗ slow: benchmark: no score: exited with code 1" in pi2 and table.count("✗") == 1


def test_failed_phases_come_back_with_their_reasons(workloads: Path, tmp_path: Path, influx: InfluxV1) -> None:
    """A pingpong client pointed at a port nobody listens on, a benchmark whose output has no score."""
    pingpong = str(build_pingpong())
    local, emitted = run_engine({
        "name": "store-fail", "phases": ["interservice", "benchmark"],
        "ready": {"tcp": "127.0.0.1:{port}", "timeout": "30s"},
        "variants": [{"name": "procs", "runtime": "process", "command": [
            pingpong, "{role}", "--port", "{port}", "--peer", "{peer}x", "--out", "{run_dir}/rtt.txt"]}],
        "interservice": {"repeat": 1, "timeout": "20s"},
        "benchmark": {"command": ["echo", "nothing here"], "score": r"tps = ([0-9.]+)", "repeat": 2, "warmup": 0},
    })
    v = local.variants[0]
    assert v.interservice is not None and v.interservice.rtt_ms is None and "every pair failed" in v.error
    influx.write(lines(local, emitted))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    data = json.loads(report(cfg, local.run, "--format", "json"))
    got, want = data["variants"][0], to_builtins(v)
    assert got["error"] == want["error"] and "exited with code" in got["error"]
    close(got["interservice"], want["interservice"], "interservice")
    close(got["benchmark"], want["benchmark"], "benchmark")
    assert got["benchmark"]["score"] is None and got["benchmark"]["command"] == "echo nothing here"
    table = report(cfg, local.run)
    assert result_view(local).notes
    for note in result_view(local).notes:
        assert note in table
    plot = tmp_path / "fail.png"
    r = runlab("report", local.run, "--plot", str(plot), config=cfg)
    assert r.returncode == 0 and plot.read_bytes()[:4] == b"\x89PNG", r.stderr


def test_redeploy_swaps_are_told_apart_from_their_rows() -> None:
    """Pure: a swap v2 answered, one it never answered (requests counted, no value), one that raised."""
    base = {"figure": "redeploy_ms", "strategy": "start-stop"}
    raw = [{**base, "ok": True, "value": 10.0, "errors": 1, "requests": 5, "gap_ms": 12.0},
           {**base, "ok": False, "errors": 3, "requests": 9, "gap_ms": 50.0},
           {**base, "ok": False, "error": "v2 exited with code 2 before it answered"}]
    rd = store_phases.redeploy(raw, [{"figure": "redeploy_ms", "client_interval_ms": 5.0, "strategy": "start-stop"}])
    assert rd is not None and rd.strategy == "start-stop" and rd.client_interval_ms == 5.0
    assert rd.time_to_v2_ms is not None and rd.time_to_v2_ms.samples == [10.0]
    assert rd.time_to_v2_ms.failure_reasons == ["v2 exited with code 2 before it answered", store_phases.NEVER_V2]
    assert rd.errors == [1, 3] and rd.requests == [5, 9]
    assert rd.gap_ms is not None and rd.gap_ms.samples == [12.0, 50.0]
    # only the summary left (raw points expired): the figure's statistics, no per-swap lists
    only = store_phases.redeploy([], [{"figure": "redeploy_ms", "strategy": "stop-start", "n": 7, "median": 4.0,
                                       "max": 9.0, "failures": 1}])
    assert only is not None and only.time_to_v2_ms is not None
    assert (only.time_to_v2_ms.n, only.time_to_v2_ms.median, only.time_to_v2_ms.failures) == (7, 4.0, 1)
    assert only.time_to_v2_ms.ci_exact and only.errors == [] and store_phases.redeploy([], []) is None
