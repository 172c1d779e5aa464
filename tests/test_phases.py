"""The phases beyond cold start against real workloads: redeploy, stack boot, inter-service RTT, platform
overhead and density, workload benchmark — with real processes and podman containers — and the Pi care."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from agent.engine import Runner
from agent.phases.pi import PiCare, cool_down, parse_vcgencmd
from agent.phases.redeploy import Answer, swap_figures
from collector.lineprotocol import LineEncoder
from runlab.config import ConfigError
from runlab.experiment import parse
from runlab.report import render
from runlab.results import ExperimentResult, decode_json, encode_json, summary_samples
from tests.conftest import REPO

CACHE = (REPO / "build" / "cache").resolve()  # podman keeps the resolved store path in its database
WORKLOADS = CACHE / "workloads"
STORE = CACHE / "podman-store"
ENGINE_ARGS = ["--root", f"{STORE}/root", "--runroot", "/tmp/runlab-podman-runroot", "--tmpdir", f"{STORE}/tmp",
               "--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--events-backend=none", "--runtime", "runc"]
RUN_ARGS = ["--network=host", "--log-driver=none", "--no-hosts", "--dns=none", "--ulimit", "nofile=4096:4096",
            "--ulimit", "nproc=4096:4096"]


def build_workloads() -> Path:
    """The shared hello binary and podman image (build.sh reuses what is up to date)."""
    env = {**os.environ, "PODMAN_STORE": str(STORE)}
    r = subprocess.run(["bash", str(REPO / "build" / "workloads" / "build.sh"), str(WORKLOADS)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return WORKLOADS


def build_pingpong() -> Path:
    """build/cache/extra/pingpong and the podman image localhost/runlab-pingpong:1 (build-extra.sh)."""
    env = {**os.environ, "PODMAN_STORE": str(STORE)}
    r = subprocess.run(["bash", str(REPO / "build" / "workloads" / "build-extra.sh"), str(CACHE / "extra")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return CACHE / "extra" / "pingpong"


@pytest.fixture(scope="session")
def workloads() -> Path:
    return build_workloads()


@pytest.fixture(scope="session")
def pingpong(workloads: Path) -> Path:
    return build_pingpong()


def hello(workloads: Path, *args: str) -> dict[str, object]:
    return {"runtime": "process", "command": [str(workloads / "hello"), "--port", "{port}", *args]}


def container(image: str, *command: str, run_args: list[str] | None = None) -> dict[str, object]:
    return {"runtime": "container", "engine": "podman", "engine_args": ENGINE_ARGS, "run_args": RUN_ARGS +
            (run_args or []), "image": image, "command": list(command)}


def podman_leftovers(experiment: str = "phases") -> list[str]:
    """Containers of ``experiment`` still present (other helpers' runs share the store: only ours count)."""
    r = subprocess.run(["podman", *ENGINE_ARGS, "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                       text=True, timeout=60)
    return [n for n in r.stdout.split() if n.startswith(f"runlab-{experiment}-")]


MARK = "RUNLAB_PHASES_TEST_MARK"  # every process a test starts inherits it: leftovers are found precisely


@pytest.fixture(autouse=True)
def mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh marker in this test's environment (other helpers run the same binaries at the same time)."""
    value = f"{os.getpid()}-{os.urandom(4).hex()}"
    monkeypatch.setenv(MARK, value)
    return value


def process_leftovers(mark: str) -> list[str]:
    """Processes still alive that inherited ``mark`` (workloads, conmon, up scripts' children)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.environ().get(MARK) == mark and p.pid != os.getpid():
                found.append(f"pid {p.pid}: {' '.join(p.info['cmdline'] or [])[:120]}")
        except psutil.Error:
            continue
    return found


def run(data: dict[str, object], **kw: object) -> tuple[ExperimentResult, list]:
    exp = parse({"name": "phases", "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "30s"}, "settle": "50ms",
                 **data}, "phases.yaml")
    emitted: list = []
    result = asyncio.run(Runner(exp, emit=emitted.append, **kw).run())  # type: ignore[arg-type]
    # every result survives the JSON round trip, renders in every format, and its live and summary samples
    # are valid InfluxDB points
    assert decode_json(encode_json(result)) == result
    for fmt in ("table", "markdown", "csv", "json"):
        assert render(fmt, [result])
    enc = LineEncoder(backslash=False)
    assert all("\n" not in enc.encode(s) for s in emitted + summary_samples(result))
    return result, emitted


# ---------------------------------------------------------------- redeploy


@pytest.mark.parametrize("strategy", ["stop-start", "start-stop"])
def test_redeploy_of_a_process_measures_time_to_v2_and_what_the_client_saw(workloads: Path, strategy: str) -> None:
    """v2 needs 300 ms before it listens: stop-start leaves the client without answers at least that long;
    start-stop keeps v1 answering meanwhile, so its longest gap stays well below."""
    result, emitted = run({
        "phases": ["redeploy"],
        "variants": [{"name": "native", **hello(workloads, "--body", "{version}", "--delay-ms", "300")}],
        "redeploy": {"repeat": 2, "strategy": strategy, "v1": "blue-1", "v2": "green-2"},
    })
    rd = result.variants[0].redeploy
    assert rd is not None and rd.strategy == strategy and rd.time_to_v2_ms is not None
    assert rd.time_to_v2_ms.n == 2 and rd.time_to_v2_ms.failures == 0
    assert rd.time_to_v2_ms.min >= 300  # v2 cannot answer before it listens
    assert len(rd.errors) == len(rd.requests) == 2 and all(n > 10 for n in rd.requests)
    assert rd.gap_ms is not None
    if strategy == "stop-start":
        assert rd.gap_ms.min >= 300 and sum(rd.errors) > 0  # connection refused while nothing listens
    else:
        assert rd.gap_ms.max < 300
    samples = [s for s in emitted if s.tags["figure"] == "redeploy_ms"]
    assert len(samples) == 2 and all(s.fields["ok"] and s.tags["strategy"] == strategy for s in samples)
    assert {s.tags["figure"] for s in summary_samples(result)} >= {"redeploy_ms"}
    assert process_leftovers(os.environ[MARK]) == []


@pytest.mark.parametrize("strategy", ["stop-start", "start-stop"])
def test_redeploy_of_a_podman_container_swaps_the_version_in_its_command(workloads: Path, strategy: str) -> None:
    result, _ = run({
        "phases": ["redeploy"],
        "variants": [{"name": "ctr", **container("localhost/runlab-hello:1", "/hello", "--port", "{port}",
                                                 "--body", "{version}")}],
        "redeploy": {"repeat": 2, "strategy": strategy, "expect_v2": "^v2$"},
    })
    rd = result.variants[0].redeploy
    assert rd is not None and rd.time_to_v2_ms is not None and rd.time_to_v2_ms.n == 2, result.variants[0].error
    assert rd.time_to_v2_ms.min > 0 and rd.gap_ms is not None and rd.gap_ms.min > 0
    assert all(n > 0 for n in rd.requests)
    assert podman_leftovers() == []


def test_swap_figures_count_errors_and_the_longest_gap_from_the_client_log() -> None:
    log = [Answer(0.00, 0.001, True, False), Answer(0.01, 0.011, True, False),  # v1, before the swap at 0.015
           Answer(0.02, 0.021, False, False), Answer(0.03, 0.031, False, False),  # refused
           Answer(0.04, 0.052, True, True), Answer(0.05, 0.051, True, True)]
    ms, errors, requests, gap = swap_figures(log, t_swap=0.015)
    assert ms == pytest.approx(36.0) and errors == 2 and requests == 4  # the first v2 answer to arrive
    assert gap == pytest.approx(30.0)  # last success sent at 0.01, next at 0.04


# ---------------------------------------------------------------- stack boot


def test_stack_boot_of_processes_and_podman_containers_per_service(workloads: Path) -> None:
    result, emitted = run({
        "phases": ["stack"],
        "variants": [{"name": "web", **hello(workloads)}, {"name": "api", **hello(workloads, "--delay-ms", "150")},
                     {"name": "web-ctr", **container("localhost/runlab-hello:1", "/hello", "--port", "{port}")}],
        "stack": {"repeat": 2, "stacks": [{"name": "procs", "services": ["web", "api"]},
                                          {"name": "mixed", "services": ["web", "web-ctr"]}]},
    })
    procs, mixed = result.stacks
    assert procs.total_ms is not None and procs.total_ms.n == 2 and mixed.total_ms is not None, procs.error
    svc = {s.name: s.ready_ms for s in procs.services}
    assert svc["api"] is not None and svc["api"].min >= 150 and svc["web"] is not None
    assert svc["web"].median < svc["api"].median
    assert procs.total_ms.samples == [max(a, b) for a, b in zip(svc["web"].samples, svc["api"].samples, strict=True)]
    assert [s.name for s in mixed.services] == ["web", "web-ctr"]
    assert any(c.figure == "stack_ms" and c.candidate == "mixed" for c in result.comparisons)
    per_service = [s for s in emitted if s.tags["figure"] == "stack_service_ms"]
    assert len(per_service) == 8 and {s.tags["runtime"] for s in per_service} == {"stack"}
    csv = render("csv", [result])
    assert "procs/api" in csv and ",stack_ms," in csv
    assert podman_leftovers() == []


def test_stack_boot_by_an_up_command_with_probes_and_down(workloads: Path, tmp_path: Path) -> None:
    """A compose-like script: ``up`` starts two servers in the background and exits, ``down`` stops them."""
    from agent.engine import PortPicker

    pick = PortPicker()
    p1, p2 = pick(), pick()
    script = tmp_path / "fake-compose"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # fake-compose up|down DIR: what docker compose up -d / down does, for two hello servers
        case "$1" in
          up) {workloads}/hello --port {p1} --body web >/dev/null 2>&1 & echo $! > "$2/web.pid"
              {workloads}/hello --port {p2} --delay-ms 100 >/dev/null 2>&1 & echo $! > "$2/db.pid" ;;
          down) pids=$(cat "$2/web.pid" "$2/db.pid"); kill $pids
                while kill -0 $pids 2>/dev/null; do sleep 0.01; done ;;  # gone, as compose down waits
        esac
        """))
    script.chmod(0o755)
    result, _ = run({
        "phases": ["stack"], "variants": [{"name": "unused", **hello(workloads)}],
        "stack": {"repeat": 3, "stacks": [{
            "name": "compose", "up": [str(script), "up", "{run_dir}"], "down": [str(script), "down", "{run_dir}"],
            "probes": {"web": {"http": f"http://127.0.0.1:{p1}/", "expect_body": "web", "timeout": "20s"},
                       "db": {"tcp": f"127.0.0.1:{p2}", "timeout": "20s"}}}]},
    })
    st = result.stacks[0]
    assert st.kind == "command" and st.total_ms is not None and st.total_ms.n == 3, st.error
    db = next(s.ready_ms for s in st.services if s.name == "db")
    assert db is not None and db.min >= 100
    assert process_leftovers(os.environ[MARK]) == []


# ---------------------------------------------------------------- inter-service latency


def test_interservice_rtt_between_two_processes_and_two_podman_containers(pingpong: Path) -> None:
    args = ["{role}", "--port", "{port}", "--peer", "{peer}", "--out", "{run_dir}/rtt.txt", "--count", "300",
            "--warmup", "20"]
    result, emitted = run({
        "phases": ["interservice"], "ready": {"tcp": "127.0.0.1:{port}", "timeout": "30s"},
        "variants": [{"name": "procs", "runtime": "process", "command": [str(pingpong), *args]},
                     {"name": "ctrs", **container("localhost/runlab-pingpong:1", "/pingpong", *args,
                                                  run_args=["-v", "{run_dir}:{run_dir}"])}],
        "interservice": {"repeat": 2},
    })
    for v in result.variants:
        it = v.interservice
        assert it is not None and it.rtt_ms is not None, v.error
        assert it.pairs == 2 and it.rtt_ms.n == 600 and 0 < it.rtt_ms.min <= it.rtt_ms.median
    assert any(c.figure == "rtt_ms" and c.candidate == "ctrs" for c in result.comparisons)
    assert len([s for s in emitted if s.tags["figure"] == "rtt_ms"]) == 4
    assert "Inter-service latency" in render("table", [result])
    assert podman_leftovers() == [] and process_leftovers(os.environ[MARK]) == []


def test_interservice_client_that_fails_is_reported_with_its_reason(pingpong: Path) -> None:
    """The client is pointed at a port nobody listens on (no {peer}): it fails, the reason is kept."""
    result, _ = run({
        "phases": ["interservice"], "ready": {"tcp": "127.0.0.1:{port}", "timeout": "10s"},
        "variants": [{"name": "procs", "runtime": "process", "command": [
            str(pingpong), "{role}", "--port", "{port}", "--peer", "{peer}x", "--out", "{run_dir}/rtt.txt"]}],
        "interservice": {"repeat": 1, "timeout": "20s"},
    })
    v = result.variants[0]
    assert v.interservice is not None and v.interservice.rtt_ms is None and "every pair failed" in v.error
    assert "exited with code" in v.error


# ---------------------------------------------------------------- platform overhead and density

DAEMON = """
import os, sys, time
while not os.path.exists(sys.argv[3]): time.sleep(0.01)  # moved into its cgroup first: charges stay put
ballast = bytearray(40 * 2**20)                        # 40 MiB, touched: resident
for i in range(0, len(ballast), 4096): ballast[i] = 1
open(sys.argv[1], "w").write("ready")
while True:                                            # a little CPU and disk, like a daemon's housekeeping
    with open(sys.argv[2], "wb") as f:
        f.write(os.urandom(64 * 1024)); f.flush(); os.fsync(f.fileno())
    t = time.perf_counter()
    while time.perf_counter() - t < 0.02: pass
    time.sleep(0.05)
"""


def test_overhead_reads_the_platform_daemon_apart_from_its_workloads_and_fits_density(
        workloads: Path, tmp_path: Path) -> None:
    """The "platform" is a real process named runlab-fakeplatformd (40 MiB, some CPU and disk) in its own
    memory cgroup; the workloads are hello servers, 0, 1 and 3 of them."""
    exe = tmp_path / "runlab-fakeplatformd"
    exe.symlink_to(sys.executable)  # comm = the name it was started by
    script, ready, data = tmp_path / "daemon.py", tmp_path / "ready", tmp_path / "data"
    script.write_text(DAEMON)
    data.mkdir()
    (data / "blob").write_bytes(b"x" * 200_000)
    cg = Path("/sys/fs/cgroup/memory") / f"runlab-test-{os.getpid()}"
    go = tmp_path / "go"
    daemon = subprocess.Popen([str(exe), str(script), str(ready), str(data / "state"), str(go)])
    try:
        from tests.conftest import wait_until

        cgroups: list[str] = []
        try:
            cg.mkdir()
            (cg / "cgroup.procs").write_text(str(daemon.pid))
            cgroups = [str(cg)]
        except OSError:
            pass  # no writable v1 memory hierarchy: the process names alone still find the daemon
        go.touch()
        wait_until(ready.exists, timeout=30, what="the fake platform daemon")
        result, emitted = run({
            "phases": ["overhead"], "variants": [{"name": "native", **hello(workloads)}],
            "overhead": {"density": [0, 1, 3], "window": "500ms", "settle": "100ms", "platforms": {
                "native": {"processes": ["runlab-fakeplatformd"], "cgroups": cgroups, "data_dirs": [str(data)]}}},
        })
    finally:
        daemon.kill()
        daemon.wait()
        if cg.exists():
            cg.rmdir()
    oh = result.variants[0].overhead
    assert oh is not None and [lv.workloads for lv in oh.levels] == [0, 1, 3], result.variants[0].error
    for lv in oh.levels:
        assert lv.platform_processes == 1 and lv.platform_pss_bytes >= 40 * 2**20
        assert lv.cpu_percent > 1 and lv.write_bytes > 0
        if cgroups:
            assert lv.cgroup_bytes is not None and lv.cgroup_bytes >= 40 * 2**20
    # PSS is shared with every other process mapping the same binary (other runs on this machine too), so
    # three servers' PSS need not exceed one's: their process count must
    assert [lv.workloads_processes for lv in oh.levels] == [0, 1, 3]
    assert oh.levels[0].workloads_pss_bytes == 0 and all(lv.workloads_pss_bytes > 0 for lv in oh.levels[1:])
    assert oh.per_workload_bytes is not None and oh.per_workload_bytes > 0
    assert oh.data_bytes is not None and oh.data_bytes >= 200_000
    assert len([s for s in emitted if s.tags["figure"] == "overhead"]) == 3
    assert "per added workload" in render("table", [result])


def test_overhead_density_of_podman_containers(workloads: Path) -> None:
    result, _ = run({
        "phases": ["overhead"],
        "variants": [{"name": "ctr", **container("localhost/runlab-hello:1", "/hello", "--port", "{port}")}],
        "overhead": {"density": [0, 2], "window": "200ms", "settle": "100ms",
                     "platforms": {"ctr": {"data_dirs": [str(STORE / "root")]}}},
    })
    oh = result.variants[0].overhead
    assert oh is not None and len(oh.levels) == 2, result.variants[0].error
    # two containers: their processes and conmon each, never counted as the platform's
    assert oh.levels[1].workloads_pss_bytes > 0 and oh.levels[1].platform_processes == 0
    assert oh.levels[1].workloads_processes >= 4  # hello and conmon, twice
    assert oh.data_bytes is not None and oh.data_bytes > 0
    assert podman_leftovers() == []


# ---------------------------------------------------------------- workload benchmark

BENCH = str(REPO / "configs" / "experiments" / "bench" / "http-tps.py")


def test_benchmark_scores_a_process_and_a_container_and_compares_them(workloads: Path) -> None:
    result, emitted = run({
        "phases": ["benchmark"],
        "variants": [{"name": "bare", **hello(workloads)},
                     {"name": "ctr", **container("localhost/runlab-hello:1", "/hello", "--port", "{port}")}],
        "benchmark": {"command": [sys.executable, BENCH, "--url", "http://127.0.0.1:{port}/", "--requests", "400"],
                      "score": r"tps = ([0-9.]+)", "unit": "tps", "repeat": 3, "warmup": 1},
    })
    for v in result.variants:
        b = v.benchmark
        assert b is not None and b.score is not None, v.error
        assert b.score.n == 3 and len(b.score.warmup) == 1 and b.score.min > 0 and b.unit == "tps"
    c = next(c for c in result.comparisons if c.figure == "benchmark")
    assert c.reference == "bare" and c.candidate == "ctr" and "tps" in c.sentence
    assert len([s for s in emitted if s.tags["figure"] == "benchmark"]) == 8
    assert podman_leftovers() == []


def test_benchmark_without_a_score_in_the_output_is_a_failure_naming_the_regex(workloads: Path) -> None:
    result, _ = run({
        "phases": ["benchmark"], "variants": [{"name": "bare", **hello(workloads)}],
        "benchmark": {"command": ["echo", "nothing here"], "score": r"tps = ([0-9.]+)", "repeat": 2, "warmup": 0},
    })
    v = result.variants[0]
    assert v.benchmark is not None and v.benchmark.score is None
    assert "no match for 'tps = ([0-9.]+)'" in v.error and "nothing here" in v.error


# ---------------------------------------------------------------- Raspberry Pi care


def test_cool_down_waits_until_below_the_threshold_with_an_injected_sensor() -> None:
    temps = iter([82.0, 79.0, 76.0, 74.5, 70.0])
    now = [0.0]

    async def fake_sleep(s: float) -> None:
        now[0] += s

    waited, last = asyncio.run(cool_down(lambda: next(temps), 75.0, 60.0, fake_sleep, clock=lambda: now[0]))
    assert (waited, last) == (3.0, 74.5)


def test_cool_down_gives_up_after_max_wait_and_never_waits_without_a_sensor() -> None:
    now = [0.0]

    async def fake_sleep(s: float) -> None:
        now[0] += s

    waited, last = asyncio.run(cool_down(lambda: 90.0, 75.0, 2.5, fake_sleep, clock=lambda: now[0]))
    assert waited == 2.5 and last == 90.0
    assert asyncio.run(cool_down(lambda: None, 75.0, 60.0, fake_sleep, clock=lambda: now[0]))[1] is None


def test_vcgencmd_output_parses_and_a_fake_vcgencmd_is_used_without_sysfs(tmp_path: Path) -> None:
    assert parse_vcgencmd("throttled=0x50005\n") == 0x50005 and parse_vcgencmd("throttled=0x0") == 0
    assert parse_vcgencmd("error") is None
    fake = tmp_path / "vcgencmd"
    fake.write_text("#!/bin/sh\n[ \"$1\" = get_throttled ] && echo throttled=0x4\n")
    fake.chmod(0o755)
    pi = PiCare(root=tmp_path, vcgencmd=str(fake))
    assert pi.mask() == 0x4
    assert pi.flags() == {"throttled": True, "under_voltage": False, "throttled_mask": 4}
    assert PiCare(root=tmp_path, vcgencmd=None).flags() == {}  # not a Pi: no flags at all


def test_every_run_sample_carries_the_throttling_flags_from_a_fake_sysfs(workloads: Path, tmp_path: Path) -> None:
    """0x50005: under-voltage and throttled now (and since boot); every sample of every phase says so."""
    sysfs = tmp_path / "sys" / "devices" / "platform" / "soc" / "soc:firmware"
    sysfs.mkdir(parents=True)
    (sysfs / "get_throttled").write_text("50005\n")
    temps = iter([80.0, 80.0, 60.0] + [60.0] * 1000)
    pi = PiCare(root=tmp_path, temperature=lambda: next(temps), vcgencmd=None)
    result, emitted = run({
        "phases": ["cold_start", "benchmark"], "repeat": 3, "warmup": 0,
        "cooldown": {"below_c": 70, "max_wait": "5s"},
        "variants": [{"name": "native", **hello(workloads)}],
        "benchmark": {"command": ["echo", "score 7"], "score": r"score (\d+)", "repeat": 2, "warmup": 0},
    }, pi=pi)
    assert emitted and all(s.fields["under_voltage"] is True and s.fields["throttled"] is True
                           and s.fields["throttled_mask"] == 0x50005 for s in emitted)
    assert {s.tags["figure"] for s in emitted} == {"startup_ms", "benchmark"}
    v = result.variants[0]
    assert v.throttled_samples == 3 and v.max_temp_c == 60.0
    assert len(result.cooldown_waits_s) == 1 and result.cooldown_waits_s[0] >= 1.0  # 80, 80, then 60
    assert "taken while throttled or under-voltage" in render("table", [result])


# ---------------------------------------------------------------- the experiment file's phase sections


@pytest.mark.parametrize(("change", "message"), [
    ({"phases": ["redeploy"]}, "x.yaml: redeploy: required when phases lists 'redeploy'"),
    ({"benchmark": {"command": ["b"], "score": "(\\d+)"}},
     "x.yaml: phases: expected 'benchmark' in the list since a benchmark: section is given"),
    ({"phases": ["redeploy"], "redeploy": {}},
     "x.yaml: variants[0]: the redeploy phase needs {version} somewhere in the variant"),
    ({"phases": ["stack"], "stack": {"stacks": [{"name": "s", "services": ["nope"]}]}},
     "x.yaml: stack.stacks[0].services[0]: 'nope' is not a variant (variants: a)"),
    ({"phases": ["stack"], "stack": {"stacks": [{"name": "s", "up": ["x"]}]}},
     "x.yaml: stack.stacks[0].probes: expected service name → ready probe for an up stack"),
    ({"phases": ["benchmark"], "benchmark": {"command": ["b"], "score": "tps = [0-9.]+"}},
     "x.yaml: benchmark.score: expected a regex with a (group) capturing the value"),
    ({"phases": ["overhead"], "overhead": {"platforms": {"k3s": {}}}},
     "x.yaml: overhead.platforms.k3s: not a variant (variants: a)"),
    ({"phases": ["overhead"], "overhead": {"density": [0, 4, 2]}},
     "x.yaml: overhead.density: expected increasing workload counts"),
    ({"phases": ["interservice"], "interservice": {}}, "x.yaml: interservice: expected {peer}"),
    ({"phases": ["benchmark"], "benchmark": {"command": ["b", "{prot}"], "score": "(\\d+)"}},
     "x.yaml: benchmark.command[1]: unknown placeholder {prot}"),
    ({"phases": ["overhead"], "overhead": {"window": "soon"}}, "x.yaml: overhead.window"),
])
def test_phase_sections_are_validated_with_one_line_naming_the_key(change: dict[str, object], message: str) -> None:
    data = {"name": "x", "variants": [{"name": "a", "runtime": "process", "command": ["a"]}],
            "ready": {"http": "http://127.0.0.1:{port}/"}, **change}
    with pytest.raises(ConfigError) as e:
        parse(data, "x.yaml")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_summaries_of_the_new_phases_encode_as_line_protocol(workloads: Path) -> None:
    result, emitted = run({
        "phases": ["redeploy", "benchmark"],
        "variants": [{"name": "native", **hello(workloads, "--body", "{version}")}],
        "redeploy": {"repeat": 1}, "benchmark": {"command": ["echo", "42"], "score": r"(\d+)", "repeat": 2},
    })
    summary = summary_samples(result)
    assert {s.tags["figure"] for s in summary} == {"redeploy_ms", "benchmark", "run"}  # run: machine, methodology…
    enc = LineEncoder(backslash=False)
    assert all("\n" not in enc.encode(s) for s in emitted + summary)
    data = json.loads(render("json", [result]))
    assert data["variants"][0]["benchmark"]["score"]["samples"] == [42.0, 42.0]
    assert data["methodology"]["redeploy"]["strategy"] == "stop-start"


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("phase", ["redeploy", "stack", "benchmark"])
def test_interrupting_a_new_phase_leaves_nothing_behind(workloads: Path, tmp_path: Path, phase: str) -> None:
    """SIGINT while the phase has workloads (a container among them), a client, a proxy or a benchmark running."""
    import signal
    import time

    import yaml

    from tests.conftest import wait_until

    ctr = {"name": "ctr", **container("localhost/runlab-hello:1", "/hello", "--port", "{port}", "--body",
                                      "{version}")}
    data: dict[str, object] = {
        "name": "phases", "phases": [phase], "ready": {"http": "http://127.0.0.1:{port}/"}, "settle": "10ms",
        "variants": [{"name": "native", **hello(workloads, "--body", "{version}")}, ctr],
        "redeploy": {"repeat": 1000, "strategy": "start-stop"},
        "stack": {"repeat": 1000, "stacks": [{"name": "s", "services": ["native", "ctr"]}]},
        "benchmark": {"command": ["sleep", "600"], "score": r"(\d+)", "repeat": 1000},
    }
    for other in ("redeploy", "stack", "benchmark"):
        if other != phase:
            del data[other]
    f = tmp_path / "interrupt.yaml"
    f.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(f), "--quiet"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = {"redeploy": "--body", "stack": "conmon", "benchmark": "sleep 600"}[phase]

    def running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the {phase} phase was seen: {proc.communicate()[1][-2000:]}")
        if phase == "stack":  # podman hands conmon a minimal environment, without the mark: found by the name
            return any("runlab-phases-ctr-" in " ".join(p.info["cmdline"] or []) and
                       "conmon" in (p.info["name"] or "") for p in psutil.process_iter(["cmdline", "name"]))
        return any(marker in " ".join(ln) for ln in _marked_cmdlines(os.environ[MARK]))

    wait_until(running, timeout=120, what=f"the {phase} phase to be running", interval=0.01)
    time.sleep(0.3)  # well into a cycle
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "cancelled" in err and "Traceback" not in err
    assert process_leftovers(os.environ[MARK]) == [] and podman_leftovers() == []


def _marked_cmdlines(mark: str) -> list[list[str]]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.environ().get(MARK) == mark:
                out.append(p.info["cmdline"] or [])
        except psutil.Error:
            continue
    return out
