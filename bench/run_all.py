"""Run every benchmark in bench/ in sequence and print a one-table summary (``make bench``).

The pipeline benches come first, in an order that lets one feed the next (the
overload bench offers twice the capacity the throughput bench measured); any
other ``bench/bench_*.py`` follows with its own defaults (``--quick`` if it has
one). Each bench prints its own table; figures also go to ``bench/results/*.json``
(not committed). A bench that crashes makes the exit status non-zero; a missed
goal does not (benchmarks report, tests assert).

    .venv/bin/python bench/run_all.py            # about 9 minutes on 2 cores (idle machine)
    .venv/bin/python bench/run_all.py --quick    # about 5 minutes
    .venv/bin/python bench/run_all.py --only throughput,latency
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tables

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
OURS = ["outbox", "agent", "delivery", "throughput", "overload", "latency", "hotpath", "packaging"]


def others() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py")
                  if p.stem.removeprefix("bench_") not in OURS)


def command(name: str, quick: bool, results: Path) -> list[str]:
    script = BENCH / f"bench_{name}.py"
    cmd = [PYTHON, str(script)]
    if name in OURS:
        cmd += ["--out", str(results / f"{name}.json"), "--wait-quiet", "20"]
        if quick:
            cmd.append("--quick")
        if name == "overload":
            thr = load(results, "throughput")
            if thr and thr.get("landed_rate"):
                cmd += ["--capacity", f"{thr['landed_rate']:.0f}"]
    elif quick:
        helptext = subprocess.run([PYTHON, str(script), "--help"], capture_output=True, text=True).stdout
        if "--quick" in helptext:
            cmd.append("--quick")
    return cmd


def load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def summary(results: Path, ran: list[str]) -> str:
    rows: list[list[str]] = []
    if "throughput" in ran and (t := load(results, "throughput")):
        rows.append(["throughput landed / ceiling (1 conn.)", f"{t['landed_rate']:,.0f} / {t['ceiling']:,.0f} /s",
                     f"ratio {t['ratio']:.2f} ({t['ratio_2']:.2f} of 2 conn.)",
                     f"≥ 0.8: {tables.verdict(t['ratio'] >= 0.8)}"])
    if "overload" in ran and (o := load(results, "overload")):
        drain = "not drained" if o["drain_seconds"] is None else f"drained in {o['drain_seconds']:.1f} s"
        rows.append([f"overload {o['offered_rate'] / o['capacity']:.1f}× for {o['seconds']:g} s",
                     f"lost {o['lost']:,} of {o['offered']:,}", drain, f"lost 0: {tables.verdict(o['lost'] == 0)}"])
    if "latency" in ran and (lat := load(results, "latency")):
        for r in lat["runs"]:
            goal = r.get("goal_ms")
            rows.append([f"latency at {r['rate']:,}/s", f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms",
                         f"max {r['max_ms']:.1f} ms",
                         f"p99 ≤ {goal:g} ms: {tables.verdict(r['p99_ms'] <= goal)}" if goal else ""])
    if "agent" in ran and (a := load(results, "agent")):
        rows.append(["agent footprint", f"PSS {a['pss'] / 1e6:.1f} MB, RSS {a['rss'] / 1e6:.1f} MB",
                     f"CPU {a['cpu_percent']:.2f}%",
                     f"≤ 25 MB: {tables.verdict(a['pss_max'] <= 25e6)}, "
                     f"≤ 0.5%: {tables.verdict(a['cpu_percent'] <= 0.5)}"])
    if "delivery" in ran and (dv := load(results, "delivery")):
        worst = max(dv["cold_start"], key=lambda c: c["fsync_ms"])
        gap = worst["delay_fleet"] - worst["delay_local"]
        rows.append([f"agent: pushed − local cold start, fsync +{worst['fsync_ms']} ms", f"{gap:+.2f} ms",
                     f"writes {dv['healthy']['per_day'] / 1e6:.1f} MB/day healthy, "
                     f"{dv['broker-down']['per_day'] / 1e6:.0f} MB/day broker down",
                     f"≤ 10 MB/day: {tables.verdict(dv['healthy']['per_day'] <= 10e6)}"])
    if "packaging" in ran and (pk := load(results, "packaging")):
        fz, vv = pk["frozen"], pk["venv"]
        rows.append(["shipped agent (.deb) vs venv", f"start→PUBACK {fz['warm']['median'] * 1000:.0f} / "
                     f"{vv['warm']['median'] * 1000:.0f} ms", f"PSS {fz['idle']['pss'] / 1e6:.1f} / "
                     f"{vv['idle']['pss'] / 1e6:.1f} MB",
                     f"≤ 0.5 s: {tables.verdict(fz['warm']['median'] <= 0.5)}, "
                     f"≤ 25 MB: {tables.verdict(fz['idle']['pss_max'] <= 25e6)}"])
    if "outbox" in ran and (b := load(results, "outbox")):
        m = b["median"]
        full = m["sqlite-full"]
        rows.append(["outbox puts/s FULL / NORMAL / segment",
                     " / ".join(f"{m[v]['puts_per_s']:,.0f}" for v in ("sqlite-full", "sqlite-normal", "segment")),
                     " / ".join(f"{m[v]['puts_per_s'] / full['puts_per_s']:.2f}"
                                for v in ("sqlite-full", "sqlite-normal", "segment")), "ratios vs FULL"])
    return tables.table(["benchmark", "figure", "", "goal"], rows, title="Summary") if rows else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter windows everywhere")
    p.add_argument("--only", help="comma-separated bench names (e.g. throughput,latency)")
    p.add_argument("--skip", default="", help="comma-separated bench names to leave out")
    p.add_argument("--results", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    names = [*OURS, *others()]
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(names)
        if unknown:
            p.error(f"unknown bench {', '.join(sorted(unknown))}; there are: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    names = [n for n in names if n not in args.skip.split(",")]
    args.results.mkdir(parents=True, exist_ok=True)
    for n in names:
        (args.results / f"{n}.json").unlink(missing_ok=True)
    failed: list[str] = []
    started = time.monotonic()
    print(f"runlab benchmarks on {tables.machine()}{' (quick)' if args.quick else ''}\n", flush=True)
    for n in names:
        print(f"=== bench_{n}.py", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(command(n, args.quick, args.results), cwd=BENCH.parent)
        print(f"--- bench_{n}.py: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.monotonic() - t0:.0f} s\n",
              flush=True)
        if rc != 0:
            failed.append(n)
    text = summary(args.results, names)
    if text:
        print(text)
    print(f"\n{len(names)} benches in {(time.monotonic() - started) / 60:.1f} min"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
