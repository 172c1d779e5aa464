"""The collector's hot path alone: CPU µs per sample to decode, validate and encode, and to join a batch.

No broker, no store: the same ``Collector._lines_for`` the service runs, fed
pre-built MQTT messages (bench/fleet.py batches) in one thread, timed with
process CPU time (minimum of several repeats: on a shared machine the minimum
is the figure least disturbed by neighbours). With ``--baseline DIR`` the same
measurement runs, interleaved, against another checkout's ``collector/`` and
``runlab/`` (for example ``git archive HEAD collector runlab | tar -x -C DIR``),
and the ratio is printed. paho's own cost per message (reading, acking) is not
in here; bench_throughput.py shows the whole.

    .venv/bin/python bench/bench_hotpath.py [--baseline /tmp/runlab-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import tables


def child(samples: int, messages: int, repeats: int) -> dict[str, float]:
    """Runs inside the interpreter whose collector is measured; returns µs per sample."""
    import fleet
    import paho.mqtt.client as mqtt

    from collector.config import CollectorConfig
    from collector.service import Collector

    class NoStore:
        backslash_escapes = False

        def write(self, body: bytes) -> None: ...
        def check(self) -> list[str]: return []
        def close(self) -> None: ...

    cfg = CollectorConfig()
    cfg.quarantine.path = os.path.join(tempfile.mkdtemp(prefix="runlab-hotpath-"), "q.jsonl")
    col = Collector(cfg, sink=NoStore())  # type: ignore[arg-type]
    tpl = fleet.templates("h0", 20, samples, 4, seed=3)
    msgs = []
    now = time.time_ns()
    for k in range(messages):
        t = tpl[k % 20][(k // 20) % 4]
        m = mqtt.MQTTMessage(mid=k % 65535 + 1, topic=t.topic.encode())
        m.payload = t.render(k // 20, now + k * 10**6)
        m.qos = 1
        msgs.append(m)
    best = {"decode_encode": float("inf"), "join": float("inf")}
    for _ in range(repeats):
        lines: list[Any] = []  # bytes here, str in older collectors
        c0 = time.process_time()
        for m in msgs:
            col._lines_for(m, lines)
        c1 = time.process_time()
        if lines and isinstance(lines[0], str):
            "\n".join(lines).encode()
        else:
            b"\n".join(lines)
        c2 = time.process_time()
        n = len(lines)
        best["decode_encode"] = min(best["decode_encode"], (c1 - c0) / n * 1e6)
        best["join"] = min(best["join"], (c2 - c1) / n * 1e6)
    if col.quarantine.count:
        raise AssertionError(f"{col.quarantine.count} samples quarantined: the fleet's batches must be valid")
    return best


def run_child(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(harness.BENCH)])}
    out = subprocess.run([harness.PYTHON, __file__, "--child", str(args.samples), str(args.messages),
                          str(args.repeats)], env=env, cwd=src, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"hot path child failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    harness.wait_quiet(args.wait_quiet)
    variants = {"working tree": harness.REPO}
    if args.baseline:
        variants["baseline"] = args.baseline
    best: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        for name, src in variants.items():
            harness.log(f"round {r + 1}/{args.rounds}: {name}")
            got = run_child(src, args)
            prev = best.get(name)
            best[name] = got if prev is None else {k: min(v, got[k]) for k, v in prev.items()}
    return {"samples_per_message": args.samples, "messages": args.messages,
            "variants": {k: str(v) for k, v in variants.items()}, "us_per_sample": best}


def report(res: dict[str, Any]) -> str:
    us = res["us_per_sample"]
    rows = []
    for name, v in us.items():
        total = v["decode_encode"] + v["join"]
        ratio = ""
        if "baseline" in us and name != "baseline":
            b = us["baseline"]
            ratio = tables.ratio((b["decode_encode"] + b["join"]) / total) + "× faster"
        rows.append([f"{name} ({res['variants'][name]})", f"{v['decode_encode']:.2f}", f"{v['join']:.2f}",
                     f"{total:.2f}", f"{1e6 / total:,.0f}", ratio])
    return tables.table(["collector", "decode+validate+encode µs", "join µs", "µs/sample", "samples/s/core", ""],
                        rows, title=f"Collector hot path, CPU per sample ({res['samples_per_message']} samples/"
                                    f"message, 10 fields; best of repeats)")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--baseline", type=Path, help="another checkout's directory holding collector/ and runlab/")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--samples", type=int, default=100, help="samples per message")
    p.add_argument("--wait-quiet", type=float, default=30.0, help="wait up to this long for an idle machine")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 2
    return tables.finish(measure(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
