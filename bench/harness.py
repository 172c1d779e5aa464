"""What every pipeline benchmark needs: the servers, the collector and generator processes, CPU meters, counts.

Nothing here formats output (bench/tables.py does) and nothing here decides what
a figure means (each bench script does).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import fleet
import urllib3

from runlab.devservers import InfluxV1, Mosquitto

# A bench stopped with SIGTERM (kill, a CI timeout) unwinds like Ctrl-C: its `finally` blocks and context
# managers stop the broker, InfluxDB and the processes it started (seen: a killed bench left its Mosquitto).
signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(143))

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the report."""
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- CPU and memory of processes ------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(parts[11]) + int(parts[12])) / CLOCK_TICKS


def smaps_rollup(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in bytes (Rss, Pss, Pss_Anon, …)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


class CpuMeter:
    """CPU used by named processes between ``start()`` and ``stop()``, in % of one core."""

    def __init__(self) -> None:
        self.pids: dict[str, list[int]] = {}
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self.percent: dict[str, float] = {}

    def watch(self, name: str, pid: int) -> None:
        self.pids.setdefault(name, []).append(pid)

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}

    def start(self) -> None:
        self._t0, self._c0 = time.monotonic(), self._now()

    def stop(self) -> dict[str, float]:
        dt = time.monotonic() - self._t0
        now = self._now()
        self.percent = {name: 100.0 * (now[name] - self._c0.get(name, 0.0)) / dt for name in now}
        return self.percent


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, elapsed) CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:8]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / CLOCK_TICKS, sum(vals) / CLOCK_TICKS


class MachineMeter:
    """Busy CPU of the whole machine between ``start()`` and ``stop()``, in % of one core."""

    def start(self) -> None:
        self._b0, self._t0 = machine_cpu_seconds()

    def stop(self) -> float:
        b1, t1 = machine_cpu_seconds()
        cores = os.cpu_count() or 1
        return 100.0 * cores * (b1 - self._b0) / max(1e-9, t1 - self._t0)


def wait_quiet(max_wait: float = 60.0, busy_below: float = 20.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine is nearly idle; return the last busy % of one core.

    The figures mean little while something else (a test suite, another benchmark) shares
    the two cores, so every bench waits for quiet first and reports what else ran.
    """
    meter = MachineMeter()
    deadline = time.monotonic() + max_wait
    while True:
        meter.start()
        time.sleep(1.0)
        busy = meter.stop()
        if busy < busy_below or time.monotonic() > deadline:
            if busy >= busy_below:
                log(f"the machine is still busy ({busy:.0f}% of a core) with other work; figures will be low")
            return busy
        log(f"waiting for quiet: other processes use {busy:.0f}% of a core")


# -- servers and the collector --------------------------------------------------------------------
def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` s for a clean exit (an agent flushes, a collector acks), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@dataclass
class CollectorProcess:
    """``python -m collector serve`` with a bench config; its log stays in the work directory."""

    config: Path
    logpath: Path
    src: Path = REPO  # another checkout's collector/ and runlab/ (before/after comparisons)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CollectorProcess:
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        with open(self.logpath, "ab") as fh:
            self.proc = subprocess.Popen([PYTHON, "-m", "collector", "serve", "--config", str(self.config)],
                                         stdout=fh, stderr=subprocess.STDOUT, cwd=self.src, env=env)
        deadline = time.monotonic() + 20
        while "subscribed to samples" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"collector did not come up; its log says:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.logpath.read_text(errors="replace") if self.logpath.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 30)
        self.proc = None


class Pipeline:
    """Mosquitto + InfluxDB 1.x + one collector, in a temporary directory removed on exit."""

    def __init__(self, *, database: str = "bench", metrics_interval: str = "1s", keep: bool = False,
                 mosquitto_extra: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="runlab-bench-"))
        self.keep = keep
        self.mq = Mosquitto(self.dir / "mosquitto", extra=mosquitto_extra)
        self.influx = InfluxV1(self.dir / "influxdb", database=database)
        self.metrics_interval = metrics_interval
        self.collector: CollectorProcess | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Pipeline:
        try:
            self._stack.enter_context(self.influx)
            self._stack.enter_context(self.mq)
        except BaseException:
            self._stack.close()
            raise
        return self

    def start_collector(self, database: str | None = None, src: Path | None = None, extra: str = ""
                        ) -> CollectorProcess:
        """Start the collector (config: ``extra`` YAML lines appended, e.g. ``receipts:\n  enabled: false``)."""
        db = database or self.influx.database
        cfg = self.dir / "collector.yaml"
        cfg.write_text(f"mqtt:\n  url: {self.mq.url}\n  client_id: bench-collector\n"
                       f"influx:\n  url: {self.influx.url}\n  api: v1\n  database: {db}\n"
                       f"quarantine:\n  path: {self.dir}/quarantine.jsonl\n"
                       f"metrics_interval: {self.metrics_interval}\nlog_level: info\n{extra}")
        self.collector = CollectorProcess(cfg, self.dir / "collector.log", src or REPO).start()
        return self.collector

    def broker_dropped(self) -> bool:
        """Whether Mosquitto said it dropped messages for a client (a full queue: max_queued_*)."""
        log = self.dir / "mosquitto" / "mosquitto.log"
        return log.exists() and "messages are being dropped" in log.read_text(errors="replace")

    def quarantined(self) -> int:
        q = self.dir / "quarantine.jsonl"
        return sum(1 for _ in q.open()) if q.exists() else 0

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.collector is not None:
            self.collector.stop()
        self._stack.close()
        if self.keep or e is not None:
            log(f"work directory kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def create_database(influx: InfluxV1, name: str) -> None:
    influx.query(f'CREATE DATABASE "{name}"')


def count(influx: InfluxV1, database: str, measurement: str = fleet.MEASUREMENT,
          fieldname: str = fleet.COUNT_FIELD, where: str = "") -> int:
    """Points stored in ``database`` (one count query; InfluxDB answers for what it holds now)."""
    old, influx.database = influx.database, database
    try:
        rows = influx.rows(f'SELECT count("{fieldname}") FROM "{measurement}" {where}')
    finally:
        influx.database = old
    return int(rows[0][1]) if rows else 0


def collector_metrics(influx: InfluxV1, database: str, since_ns: int, until_ns: int) -> list[dict[str, Any]]:
    """The collector's own ``collector`` points in a time window, oldest first."""
    old, influx.database = influx.database, database
    try:
        res = influx.query(f"SELECT * FROM collector WHERE time >= {since_ns} AND time <= {until_ns}")
    finally:
        influx.database = old
    series = (res["results"][0].get("series") or [])
    if not series:
        return []
    cols = series[0]["columns"]
    return [dict(zip(cols, row, strict=True)) for row in series[0]["values"]]


# -- the ceiling: pre-serialised line protocol straight to InfluxDB -----------------------------
@dataclass
class CeilingResult:
    points: int
    seconds: float
    batches: int

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def post_line_protocol(influx_url: str, database: str, pools: list[fleet.LinePool], seconds: float,
                       batch_points: int = 5000) -> CeilingResult:
    """POST batches of ``batch_points`` lines for ``seconds``, one kept-alive connection per pool.

    Each connection has a producer thread that renders its next batches (timestamps
    taken now, its own nodes) while the poster waits for InfluxDB, so a poster never
    waits for Python.
    """
    url = f"{influx_url}/write?db={database}&precision=ns"
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    stop = threading.Event()
    start = threading.Barrier(len(pools) + 1)
    counts: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def connection(pool: fleet.LinePool) -> None:
        messages_per_batch = max(1, batch_points // pool.samples_per_message)
        ready: queue.Queue[bytes] = queue.Queue(maxsize=4)
        last_ts = [0] * len(pool.bodies)

        def produce() -> None:
            k = 0
            while not stop.is_set():
                body = pool.batch(k, messages_per_batch, last_ts)
                k += messages_per_batch
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        ready.put(body, timeout=0.1)
                        break

        def post(http: urllib3.PoolManager) -> None:
            r = http.request("POST", url, body=ready.get(), headers=headers)
            if r.status != 204:
                raise RuntimeError(f"InfluxDB refused a ceiling batch: {r.status} {r.data[:300]!r}")

        http = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        points = batches = 0
        try:
            for _ in range(2):  # warm the connection and create the series outside the timed window
                post(http)
            start.wait()
            while not stop.is_set():
                post(http)
                points += messages_per_batch * pool.samples_per_message
                batches += 1
        except BaseException as e:
            errors.append(e)
            stop.set()
            with contextlib.suppress(threading.BrokenBarrierError):
                start.abort()
        finally:
            counts.append((points, batches))
            producer.join()
            http.clear()

    threads = [threading.Thread(target=connection, args=(p,), daemon=True) for p in pools]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if errors:
        raise errors[0]
    return CeilingResult(sum(c[0] for c in counts), elapsed, sum(c[1] for c in counts))


# -- generators -------------------------------------------------------------------------------------
@dataclass
class GeneratorRun:
    """``bench/simagents.py`` processes started together; ``results()`` waits for their reports."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    def results(self, timeout: float = 600.0) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            stdout, _ = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"generator exited with {p.returncode}")
            out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def start_generators(broker_url: str, *, processes: int, rate: float, seconds: float, nodes: int = 20,
                     samples: int = 100, probe_every: int = 0, end_marker: bool = True,
                     tag: str = "g") -> GeneratorRun:
    """``processes`` generators sharing ``rate`` samples/s for ``seconds``, each with its own nodes."""
    run = GeneratorRun()
    for i in range(processes):
        prefix = f"{tag}{i}"
        cmd = [PYTHON, str(BENCH / "simagents.py"), "--url", broker_url, "--prefix", prefix,
               "--rate", str(rate / processes), "--seconds", str(seconds), "--nodes", str(nodes),
               "--samples", str(samples), "--probe-every", str(probe_every), "--seed", str(1000 + i)]
        if end_marker:
            cmd.append("--end-marker")
        run.procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO))
        run.prefixes.append(prefix)
    return run


@contextlib.contextmanager
def generators(*args: Any, **kwargs: Any) -> Iterator[GeneratorRun]:
    run = start_generators(*args, **kwargs)
    try:
        yield run
    finally:
        run.kill()


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> float | None:
    """Poll until ``predicate()`` is truthy; the monotonic time it became so, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    return None


def end_markers(influx: InfluxV1, database: str) -> int:
    return count(influx, database, "bench_end", "messages")
