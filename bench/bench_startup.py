"""Start-time accuracy and probe overhead against a ground-truth workload.

The hello server (build/workloads/hello.c) sleeps D ms before it listens, so a
perfect measurement reads D plus the exec of a 0.7 MB static binary. For each
D and probe interval this prints the measured median, its error against D,
the spread, and the cost of one probe attempt (refused, and answered) — side
by side in one run.

    .venv/bin/python bench/bench_startup.py [--repeat 30] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.engine import Runner  # noqa: E402
from agent.probes.http import HttpProbe  # noqa: E402
from runlab.devservers import free_port, wait_tcp  # noqa: E402
from runlab.experiment import parse  # noqa: E402

HELLO = REPO / "build" / "cache" / "workloads" / "hello"


def measure(delay_ms: int, interval_ms: float, repeat: int) -> list[float]:
    exp = parse({
        "name": "accuracy", "repeat": repeat, "warmup": 2, "phases": ["cold_start"],
        "variants": [{"name": "hello", "runtime": "process",
                      "command": [str(HELLO), "--port", "{port}", "--delay-ms", str(delay_ms)]}],
        "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "10s", "interval": f"{interval_ms}ms"},
    }, "bench")
    res = asyncio.run(Runner(exp).run())
    fig = res.variants[0].startup_ms
    assert fig is not None
    return fig.samples


async def probe_cost(n: int = 2000) -> tuple[float, float]:
    """µs per HTTP probe attempt against a closed port and against a listening hello."""
    closed = HttpProbe(f"http://127.0.0.1:{free_port()}/", 200, None, 0.25)
    t0 = time.perf_counter()
    for _ in range(n):
        await closed.check()
    refused = (time.perf_counter() - t0) / n * 1e6
    port = free_port()
    proc = subprocess.Popen([str(HELLO), "--port", str(port)])
    try:
        wait_tcp(port)
        ok = HttpProbe(f"http://127.0.0.1:{port}/", 200, None, 0.25)
        t0 = time.perf_counter()
        for _ in range(n // 4):
            assert await ok.check()
        answered = (time.perf_counter() - t0) / (n // 4) * 1e6
    finally:
        proc.terminate()
        proc.wait()
    return refused, answered


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="fewer delays and repeats")
    args = ap.parse_args()
    if not HELLO.exists():
        print("build the workloads first: make workloads", file=sys.stderr)
        return 1
    repeat = 10 if args.quick else args.repeat
    delays = [0, 50, 200] if args.quick else [0, 10, 50, 200, 1000]
    intervals = [1.0, 10.0] if args.quick else [1.0, 5.0, 10.0]
    print(f"start-time accuracy: hello --delay-ms D, {repeat} cold starts each (+2 warm-up)")
    print(f"{'D ms':>6} {'interval':>9} {'median':>9} {'error':>8} {'stdev':>7} {'min':>8} {'max':>8}")
    for d in delays:
        for iv in intervals:
            s = measure(d, iv, repeat)
            med = statistics.median(s)
            print(f"{d:>6} {iv:>7.0f}ms {med:>9.2f} {med - d:>+8.2f} {statistics.stdev(s):>7.2f} {min(s):>8.2f} "
                  f"{max(s):>8.2f}", flush=True)
    refused, answered = asyncio.run(probe_cost())
    print(f"\nprobe cost: {refused:.0f} µs per attempt against a closed port, {answered:.0f} µs per answered "
          f"GET (ratio {answered / refused:.1f}); at a 1 ms interval the probe keeps "
          f"{refused / 1000 * 100:.0f} % of a core busy while waiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
