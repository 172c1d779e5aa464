"""The HTML report and comparison of a fleet-sized run: time to render and file size (docs/report.md).

Synthesises two runs of an experiment with 6 variants × 50 cold starts (+1 warm-up) × 3 nodes, each with a
footprint, a size and a 20,000-request closed-loop load phase (latencies drawn from a log-normal around each
runtime's realistic median), as the agent would stream them: one ``run_sample`` point per cold start, then the
run's summaries (``summary_samples``: statistics, histograms, comparisons), lifecycle events. Every point goes
through the collector's LineEncoder into a real InfluxDB 1.x (runlab.devservers), then the operator CLI runs as
a subprocess: ``runlab report EXP --format html`` and ``runlab compare RUN_A RUN_B --format html``, timed end
to end (Python start, InfluxQL queries, statistics, rendering). Run:

    .venv/bin/python bench/bench_report_html.py [--out DIR] [--keep]

Writes report.html and compare.html into --out (default a temp dir) and prints one line per figure.
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.lineprotocol import LineEncoder  # noqa: E402
from runlab import control, stats  # noqa: E402
from runlab.devservers import InfluxV1  # noqa: E402
from runlab.results import (  # noqa: E402
    ExperimentResult,
    Figure,
    Footprint,
    LoadFigures,
    Size,
    VariantResult,
    compare_figures,
    summary_samples,
)
from runlab.wire import Sample  # noqa: E402

# name, runtime, cold start median ms, idle PSS MiB, size MiB, request latency median ms
VARIANTS = [("native", "process", 3.3, 0.7, 2.1, 0.09), ("systemd", "systemd", 18.0, 1.1, 2.1, 0.10),
            ("container", "container", 124.0, 1.7, 7.9, 0.14), ("wasm", "wasm", 47.0, 12.5, 0.4, 0.21),
            ("k3s", "kubernetes", 1900.0, 2.4, 7.9, 0.33), ("microvm", "vm", 410.0, 182.0, 24.0, 0.18)]
NODES = [("pi4", 2.6), ("pi5", 1.3), ("nuc", 1.0)]  # and how much slower than the nuc


def synth(run: str, node: str, slow: float, drift: float, rng: random.Random, t0: int
          ) -> tuple[ExperimentResult, list[Sample]]:
    variants: list[VariantResult] = []
    emitted: list[Sample] = []
    ts = t0
    for name, runtime, cold, pss, size, lat in VARIANTS:
        starts = [cold * slow * drift * math.exp(rng.gauss(0, 0.08)) for _ in range(51)]
        for i, ms in enumerate(starts):
            ts += 20_000_000
            emitted.append(Sample(ts=ts, name="run_sample", tags={
                "run": run, "experiment": "fleet-runtimes", "variant": name, "runtime": runtime,
                "figure": "startup_ms", "warmup": "true" if i == 0 else "false", "cold": "process"},
                fields={"i": i, "ok": True, "value": ms, "throttled": False, "temp_c": 48.0 + rng.random() * 12}))
        latencies = [lat * slow * drift * math.exp(rng.gauss(0, 0.35)) for _ in range(20_000)]
        fig = Figure.of(latencies, "ms")
        assert fig is not None
        load = LoadFigures(mode="closed", url="http://127.0.0.1:8080/", requests=20_000, ok=20_000, errors=0,
                           concurrency=4, target_rps=0.0, achieved_rps=4 / (lat * slow / 1000), duration_s=5.0,
                           latency_ms=fig, p999_ms=stats.percentile(latencies, 99.9), generator_floor_ms=0.05)
        fp = Footprint(pss_bytes=int(pss * 2**20 * math.exp(rng.gauss(0, 0.02))), uss_bytes=int(pss * 2**20 * 0.8),
                       rss_bytes=int(pss * 2**20 * 1.6), processes=1 if runtime != "kubernetes" else 3,
                       settle_s=2.0)
        variants.append(VariantResult(name=name, runtime=runtime, node=node,
                                      startup_ms=Figure.of(starts[1:], "ms", starts[:1]), footprint=fp,
                                      size=Size(bytes=int(size * 2**20), what="file"), load=[load],
                                      max_temp_c=60.0))
    ref = variants[0]
    comparisons = [compare_figures("startup_ms", f"{v.name} startup", "ms", ref.name, v.name, ref.startup_ms,
                                   v.startup_ms) for v in variants[1:] if ref.startup_ms and v.startup_ms]
    result = ExperimentResult(experiment="fleet-runtimes", run=run, file="fleet-runtimes.yaml", file_sha256="0" * 64,
                              started="", finished="", machine={"arch": "aarch64", "cores": 4},
                              methodology={"repeat": 50, "warmup": 1, "order": "interleaved", "cold": "process"},
                              variants=variants, comparisons=comparisons)
    return result, emitted


def lines(result: ExperimentResult, emitted: list[Sample], node: str) -> bytes:
    end = max(s.ts for s in emitted) + 10**6
    events = [control.event_sample(control.RunEvent(node=node, run=result.run, experiment=result.experiment,
                                                    status=status, ts=ts))
              for status, ts in (("accepted", min(s.ts for s in emitted) - 1000), ("finished", end))]
    enc = LineEncoder(backslash=False)
    return b"\n".join(enc.line(s, {"node": node}) for s in [*emitted, *summary_samples(result, ts=end - 500), *events])


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    if r.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[3:])}: exit {r.returncode}: {r.stderr}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="where to write report.html and compare.html")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="runlab-html-"))
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, InfluxV1(Path(tmp) / "influx") as influx:
        influx.query(f'CREATE DATABASE "{influx.database}"')
        t0 = time.time_ns() - 3600 * 10**9
        for k, (run, drift) in enumerate((("r-before", 1.0), ("r-after", 1.0))):
            for node, slow in NODES:
                d = drift * (1.25 if run == "r-after" and node == "pi4" else 1.0)  # one node regressed
                result, emitted = synth(run, node, slow, d, rng, t0 + k * 600 * 10**9)
                influx.write(lines(result, emitted, node))
        cfg = Path(tmp) / "runlab.yaml"
        cfg.write_text(f"mqtt:\n  url: mqtt://127.0.0.1:1\ninflux:\n  url: {influx.url}\n  api: v1\n"
                       f"  database: {influx.database}\n  timeout: 60s\n")
        base = [sys.executable, "-m", "collector.operator", "--config", str(cfg)]
        report, compare = out / "report.html", out / "compare.html"
        from collector.ops.influxql import InfluxQL
        from runlab.report import compare as cmp
        from runlab.report.html import write_report
        from runlab.report.store import load_results

        class _Settings:
            url, api, database, retention_policy, timeout = influx.url, "v1", influx.database, "", 60

            def auth_headers(self, _source: str) -> dict[str, str]:
                return {}

        ql = InfluxQL(_Settings(), "bench")  # type: ignore[arg-type]
        t = time.perf_counter()
        after, before = load_results(ql.query, "r-after"), load_results(ql.query, "r-before")
        inproc = {"load both runs from InfluxDB": (time.perf_counter() - t) / 2}
        t = time.perf_counter()
        write_report(after)
        inproc["render the report page"] = time.perf_counter() - t
        t = time.perf_counter()
        c = cmp.compare(before, after, "r-before", "r-after")
        inproc["compare (statistics)"] = time.perf_counter() - t
        t = time.perf_counter()
        cmp.write(c, "html")
        inproc["render the compare page"] = time.perf_counter() - t
        timings = {
            "report --format html": timed([*base, "report", "r-after", "--format", "html", "--out", str(report)]),
            "report --format table": timed([*base, "report", "r-after"]),
            "compare --format html": timed([*base, "compare", "r-before", "r-after", "--format", "html", "--out",
                                            str(compare)]),
            "compare --format table": timed([*base, "compare", "r-before", "r-after"]),
        }
    print(f"6 variants × 50 cold starts × 3 nodes, 20,000 requests per load phase (InfluxDB 1.x, {out})")
    for what, secs in timings.items():
        path = report if what.startswith("report --format html") else compare if "compare --format html" in what \
            else None
        size = f", {path.stat().st_size / 1024:,.0f} KiB" if path else ""
        print(f"  runlab {what:<24} {secs:6.2f} s{size}  (subprocess, end to end)")
    for what, secs in inproc.items():
        print(f"    in process: {what:<30} {secs:6.2f} s")


if __name__ == "__main__":
    main()
