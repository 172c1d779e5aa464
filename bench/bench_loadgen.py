"""Benchmark: runlab's closed-loop generator vs wrk against the same local nginx, side by side in one run.

The generator (runlab or wrk, one at a time) runs on CPU 0; nginx (one worker) on the last CPU. Rounds are
interleaved (wrk, runlab, runlab, wrk, …) so that drift hits both alike. Prints req/s per round, the medians
and their ratio, the latency floor of both at one connection, the open-loop floor, and ``calibrate()``.

    .venv/bin/python bench/bench_loadgen.py [--rounds 5] [--seconds 5] [--connections 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.facts import cpu_model, governor
from agent.loadgen import LoadResult, calibrate, closed_loop, open_loop

GENERATOR_CPU = 0

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 65;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}
}}
"""


def need_binary(name: str, package: str) -> str:
    """The binary's path, installing its Debian package first when missing and we are root."""
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {package} (for {name}) …", flush=True)
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
        if found:
            return found
    sys.exit(f"bench_loadgen: {name} is not installed; run `apt-get install {package}`")


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """``argv`` under ``taskset -c cpu`` when taskset exists and a CPU is given."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def nginx(binary: str, cpu: int | None) -> Iterator[str]:
    """A private nginx (one worker) on a free loopback port answering 200 "ok"; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="runlab-bench-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
        log = open(Path(tmp) / "stdout.log", "wb")  # noqa: SIM115 — closed below, after nginx exits
        proc = subprocess.Popen(pinned(cpu, [binary, "-p", tmp, "-c", str(conf)]), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"bench_loadgen: nginx did not start: {(Path(tmp) / 'error.log').read_text()}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * UNIT_MS[unit]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(binary: str, url: str, connections: int, seconds: float) -> dict[str, float | str]:
    """One ``wrk -t1 -cN -dS --latency`` run on the generator CPU: req/s, p50/p99 in ms, CPU share, errors."""
    argv = pinned(GENERATOR_CPU, [binary, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url])
    cpu0, wall0 = children_cpu_s(), time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu_share = (children_cpu_s() - cpu0) / (time.monotonic() - wall0)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        sys.exit(f"bench_loadgen: cannot read wrk's output:\n{out}")
    result: dict[str, float | str] = {"rps": float(rps.group(1)), "cpu": cpu_share}
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        found = re.search(rf"^\s+{pct}%\s+([\d.]+(?:us|ms|s))\s*$", out, re.MULTILINE)
        if found:
            result[key] = to_ms(found.group(1))
    errors = [line.strip() for line in out.splitlines() if "errors" in line or "Non-2xx" in line]
    result["errors"] = "; ".join(errors)
    return result


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


async def runlab_for(url: str, connections: int, seconds: float, estimate_rps: float) -> LoadResult:
    """A closed loop sized to last about ``seconds`` at the estimated rate (closed_loop takes a request count)."""
    return await closed_loop(url, requests=max(1000, int(estimate_rps * seconds)), concurrency=connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each generator (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run (default 5)")
    parser.add_argument("--connections", type=int, default=10, help="connections of both generators (default 10)")
    args = parser.parse_args()

    nginx_bin = need_binary("nginx", "nginx-light")
    wrk_bin = need_binary("wrk", "wrk")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[-1] if len(cpus) > 1 else None
    nginx_version = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_version = subprocess.run([wrk_bin, "-v"], capture_output=True, text=True).stdout.splitlines()[0]

    print("runlab load generator vs wrk — closed loop against the same nginx")
    print(f"  machine : {cpu_model()}, {os.cpu_count()} CPUs, governor {governor() or 'n/a'}, "
          f"kernel {platform.release()}")
    print(f"  tools   : Python {platform.python_version()}, {wrk_version}, {nginx_version}")
    where = "(shared)" if server_cpu is None else server_cpu
    print(f"  pinning : generator on CPU {GENERATOR_CPU}, nginx on CPU {where}"
          f"{'' if shutil.which('taskset') else ' (taskset missing: not pinned)'}")
    if governor() not in ("performance", ""):
        print(f"  warning : CPU governor is {governor()!r}, not 'performance'")

    with nginx(nginx_bin, server_cpu) as url:
        os.sched_setaffinity(0, {GENERATOR_CPU})  # this process is the runlab generator: same core as wrk
        print(f"  target  : {url} (nginx, 1 worker, return 200 \"ok\")\n")

        warm = asyncio.run(closed_loop(url, requests=5000, concurrency=args.connections))
        estimate = warm.achieved_rps
        run_wrk(wrk_bin, url, args.connections, 1)  # warm-up, discarded

        rounds: dict[str, list[tuple[float, float]]] = {"wrk": [], "runlab": []}  # (req/s, CPU share)
        print(f"throughput, {args.connections} connections, {args.seconds:g} s per run, {args.rounds} rounds "
              "(closed loop; * = generator below 90 % CPU: descheduled or waiting, not CPU-bound)")
        for r in range(args.rounds):
            order = ("wrk", "runlab") if r % 2 == 0 else ("runlab", "wrk")
            for tool in order:
                if tool == "wrk":
                    w = run_wrk(wrk_bin, url, args.connections, args.seconds)
                    rps, cpu_share, note = float(w["rps"]), float(w["cpu"]), str(w["errors"])
                else:
                    cpu0, wall0 = time.process_time(), time.monotonic()
                    res = asyncio.run(runlab_for(url, args.connections, args.seconds, estimate))
                    cpu_share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
                    rps = estimate = res.achieved_rps
                    note = f"{res.requests} requests in {res.duration_s:.2f} s"
                    if res.errors:
                        note += f", errors {res.error_kinds}"
                rounds[tool].append((rps, cpu_share))
                flag = "*" if cpu_share < 0.9 else " "
                print(f"  round {r + 1}  {tool:<7} {rps:>10,.0f} req/s  CPU {cpu_share:4.0%}{flag} "
                      f"{cpu_share / rps * 1e6:6.1f} CPU-µs/request  {note}")
        rps_of = {tool: [rps for rps, _ in rs] for tool, rs in rounds.items()}
        cost_of = {tool: [cpu / rps * 1e6 for rps, cpu in rs] for tool, rs in rounds.items()}
        paired = [ours / theirs for ours, theirs in zip(rps_of["runlab"], rps_of["wrk"], strict=True)]

        print("\nlatency floor, 1 connection, closed loop (nearest-rank percentiles)")
        w1 = run_wrk(wrk_bin, url, 1, 3)
        r1 = asyncio.run(closed_loop(url, requests=max(1000, int(3 * estimate / args.connections)), concurrency=1))
        print(f"  wrk     p50 {float(w1.get('p50_ms', float('nan'))):.3f} ms  "
              f"p99 {float(w1.get('p99_ms', float('nan'))):.3f} ms  ({w1['rps']:,.0f} req/s)")
        print(f"  runlab  p50 {nearest_rank(r1.latencies_ms, 0.5):.3f} ms  "
              f"p99 {nearest_rank(r1.latencies_ms, 0.99):.3f} ms  ({r1.achieved_rps:,.0f} req/s, n={r1.ok})")
        open_rate = 1000.0
        o = asyncio.run(open_loop(url, rate=open_rate, duration=3.0))
        print(f"  runlab open loop at {open_rate:,.0f} req/s (from intended send time): "
              f"p50 {nearest_rank(o.latencies_ms, 0.5):.3f} ms  p99 {nearest_rank(o.latencies_ms, 0.99):.3f} ms  "
              f"achieved {o.achieved_rps:,.1f} req/s, {o.concurrency} connections, errors {o.errors}")

    cal = asyncio.run(calibrate(2.0))
    print(f"\ncalibrate(): floor p50 {cal.floor_p50_ms:.3f} ms, p99 {cal.floor_p99_ms:.3f} ms, "
          f"max {cal.max_rps:,.0f} req/s (against its own Python floor servers, off CPU {GENERATOR_CPU})")

    runlab_med, wrk_med = statistics.median(rps_of["runlab"]), statistics.median(rps_of["wrk"])
    runlab_cost, wrk_cost = statistics.median(cost_of["runlab"]), statistics.median(cost_of["wrk"])
    print(f"\nmedian of {args.rounds} rounds, one core, {args.connections} connections:")
    print(f"  req/s          runlab {runlab_med:>9,.0f}  wrk {wrk_med:>9,.0f}  ratio {runlab_med / wrk_med:.2f} "
          f"(per-round ratios {min(paired):.2f}–{max(paired):.2f})")
    print(f"  CPU-µs/request runlab {runlab_cost:>9.1f}  wrk {wrk_cost:>9.1f}  ratio {runlab_cost / wrk_cost:.2f} "
          f"(wrk drives {runlab_cost / wrk_cost:.1f}× the requests per CPU-second; steadier than req/s on a busy host)")
    print(f"  ranges         runlab {min(rps_of['runlab']):,.0f}–{max(rps_of['runlab']):,.0f} req/s, "
          f"wrk {min(rps_of['wrk']):,.0f}–{max(rps_of['wrk']):,.0f} req/s; load average now "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
