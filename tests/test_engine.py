"""The experiment engine against real workloads: a static C server, podman + runc, a QEMU microVM."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from agent.engine import Runner
from runlab.experiment import parse
from tests.conftest import REPO, wait_until

WORKLOADS = REPO / "build" / "cache" / "workloads"
PODMAN_STORE = (REPO / "build" / "cache").resolve() / "podman-store"  # podman keeps the resolved path
LOCAL_RUNTIMES = REPO / "configs" / "experiments" / "local-runtimes.yaml"
PODMAN = ["podman", "--root", f"{PODMAN_STORE}/root", "--runroot", "/tmp/runlab-podman-runroot",
          "--tmpdir", f"{PODMAN_STORE}/tmp", "--storage-driver=vfs", "--cgroup-manager=cgroupfs",
          "--events-backend=none", "--runtime", "runc"]


MARKERS = ("build/cache/workloads", "runlab-local-runtimes", "qemu-system")


def leftovers() -> list[str]:
    """Workload processes (hello, conmon of a runlab container, QEMU) and runlab containers still present."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in MARKERS) and "pytest" not in cmd and "-m agent" not in cmd:
            found.append(f"pid {p.info['pid']}: {cmd[:120]}")
    r = subprocess.run([*PODMAN, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    found += [f"container {n}" for n in r.stdout.split() if n.startswith("runlab-")]
    return found


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.mark.parametrize("delay_ms", [50, 200])
def test_cold_start_median_is_within_2ms_of_a_known_delay(workloads: Path, delay_ms: int) -> None:
    """The accuracy proof: a server that sleeps D ms before listening must measure D (± 2 ms) more than the same
    server without the sleep, started interleaved with it (so the exec cost, which varies with machine load,
    cancels out and what remains is the timer and the probe)."""
    cmd = [str(workloads / "hello"), "--port", "{port}", "--delay-ms"]
    exp = parse({
        "name": "accuracy", "repeat": 20, "warmup": 2, "phases": ["cold_start"],
        "variants": [{"name": "sleep0", "runtime": "process", "command": [*cmd, "0"]},
                     {"name": f"sleep{delay_ms}", "runtime": "process", "command": [*cmd, str(delay_ms)]}],
        "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "5s"},
    }, "accuracy.yaml")
    result = asyncio.run(Runner(exp).run())
    base, fig = result.variants[0].startup_ms, result.variants[1].startup_ms
    assert base is not None and fig is not None and fig.n == 20 and len(fig.warmup) == 2
    assert base.median < 20, f"a plain start took {base.median:.2f} ms"
    measured = fig.median - base.median
    assert abs(measured - delay_ms) <= 2.0, (f"median {fig.median:.2f} ms − {base.median:.2f} ms without the "
                                            f"delay = {measured:.2f} ms for a {delay_ms} ms delay")
    assert result.methodology["probe_interval_ms"] == 1.0


def test_local_runtimes_example_runs_process_podman_and_microvm(workloads: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    md = tmp_path / "result.md"
    csv = tmp_path / "result.csv"
    r = run_cli("run", str(LOCAL_RUNTIMES), "--repeat", "3", "--json", str(out), "--markdown", str(md),
                "--csv", str(csv), "--quiet")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["experiment"] == "local-runtimes"
    by_name = {v["name"]: v for v in data["variants"]}
    # wasm (wasmtime from make workloads' fetch-runtimes.sh) runs when fetched, else the pre-flight skips it
    assert set(by_name) - {"wasm"} == {"native", "container", "microvm"}
    if "wasm" in by_name and by_name["wasm"]["startup_ms"] is None:
        assert "wasmtime" in by_name["wasm"]["skipped"], by_name["wasm"]  # skipped, naming what is missing
        del by_name["wasm"]
    for name, v in by_name.items():
        assert v["startup_ms"]["n"] == 3, name
        assert len(v["startup_ms"]["samples"]) == 3
        assert v["startup_ms"]["median"] > 0
        assert v["footprint"]["pss_bytes"] > 0, name
        assert v["size"]["bytes"] > 0, name
        assert v["load"][0]["ok"] == 1000, name
    # The container's memory includes conmon, found by inspect, not only the client's tree.
    assert by_name["container"]["footprint"]["processes"] >= 2
    assert by_name["microvm"]["startup_ms"]["median"] > by_name["native"]["startup_ms"]["median"]
    assert data["machine"]["cores"] >= 1 and data["file_sha256"]
    assert "native" in r.stdout and "microvm" in r.stdout
    assert md.read_text().count("|") > 10
    assert len(csv.read_text().splitlines()) > 9
    assert leftovers() == []


@pytest.mark.parametrize("variant", ["native", "container", "microvm"])
def test_interrupting_a_run_leaves_nothing_behind(workloads: Path, tmp_path: Path, variant: str) -> None:
    """SIGINT (Ctrl-C) while a workload is up: the run says cancelled and no process or container remains."""
    text = LOCAL_RUNTIMES.read_text().replace("repeat: 30", "repeat: 1000")
    exp_file = LOCAL_RUNTIMES.parent / f".interrupt-{variant}.yaml"  # {here} must resolve like the original
    data = __import__("yaml").safe_load(text)
    data["variants"] = [v for v in data["variants"] if v["name"] == variant]
    exp_file.write_text(__import__("yaml").safe_dump(data))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(exp_file), "--quiet"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the microVM itself, not the agent's `qemu-system-x86_64 --version` probe at start
        marker = {"native": "workloads/hello", "container": "conmon", "microvm": "-M microvm"}[variant]
        wait_until(lambda: any(marker in " ".join(p.info["cmdline"] or [])
                               for p in psutil.process_iter(["cmdline"])), timeout=120,
                   what=f"a {variant} workload to be running", interval=0.01)
        time.sleep(0.3)  # let it get well into a start/stop cycle
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        assert "cancelled" in err
        assert leftovers() == []
    finally:
        exp_file.unlink(missing_ok=True)


def test_validate_names_every_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvariants:\n  - name: a\n    runtime: container\n    engine: podman\n"
                   "ready:\n  http: http://127.0.0.1:{port}/\n")
    r = run_cli("validate", str(bad), str(LOCAL_RUNTIMES))
    assert r.returncode == 1
    assert f"{bad}: variants[0].image: required key is missing" in r.stderr
    assert "local-runtimes.yaml: ok" in r.stdout
    assert "Traceback" not in r.stderr


def test_results_become_samples_that_line_protocol_accepts(workloads: Path) -> None:
    """The fleet path: every raw cold start is emitted live, the summaries after; all encode as points."""
    from collector.lineprotocol import LineEncoder
    from runlab.results import summary_samples

    exp = parse({
        "name": "emit", "repeat": 3, "warmup": 1, "phases": ["cold_start", "footprint", "size"],
        "variants": [{"name": "native", "runtime": "process", "command": [str(workloads / "hello"), "--port",
                                                                           "{port}"]}],
        "ready": {"http": "http://127.0.0.1:{port}/"}, "settle": "100ms",
    }, "emit.yaml")
    emitted: list = []
    result = asyncio.run(Runner(exp, emit=emitted.append).run())
    starts = [s for s in emitted if s.tags["figure"] == "startup_ms"]
    assert len(starts) == 4 and [s.tags["warmup"] for s in starts] == ["true", "false", "false", "false"]
    assert {s.tags["run"] for s in emitted} == {result.run}
    summary = summary_samples(result)
    figures = {s.tags["figure"]: s for s in summary}
    assert figures["startup_ms"].fields["median"] == result.variants[0].startup_ms.median
    assert figures["footprint"].fields["pss_bytes"] > 0
    assert figures["size"].fields["bytes"] == (workloads / "hello").stat().st_size
    enc = LineEncoder(backslash=False)
    assert all("\n" not in enc.encode(s) for s in emitted + summary)


def test_page_cache_cold_level_random_order_and_cooldown_are_applied_and_recorded(workloads: Path) -> None:
    hello = str(workloads / "hello")
    exp = parse({
        "name": "levels", "repeat": 3, "warmup": 0, "phases": ["cold_start"], "order": "random",
        "cold": "page-cache", "cooldown": {"below_c": 1000, "max_wait": "1s"}, "pause": "10ms",
        "variants": [{"name": n, "runtime": "process", "command": [hello, "--port", "{port}"]} for n in "abc"],
        "ready": {"http": "http://127.0.0.1:{port}/"},
    }, "levels.yaml")
    emitted: list = []
    result = asyncio.run(Runner(exp, emit=emitted.append).run())
    assert result.methodology["cold"] == "page-cache" and result.methodology["order"] == "random"
    assert all(v.startup_ms is not None and v.startup_ms.n == 3 for v in result.variants)
    assert {s.tags["cold"] for s in emitted} == {"page-cache"}
    rounds = [[s.tags["variant"] for s in emitted[i:i + 3]] for i in range(0, 9, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds), rounds  # every round has each variant once


def test_a_workload_that_exits_early_is_a_failure_with_its_reason(workloads: Path) -> None:
    exp = parse({
        "name": "broken", "repeat": 2, "warmup": 0, "phases": ["cold_start"],
        "variants": [{"name": "ok", "runtime": "process", "command": [str(workloads / "hello"), "--port", "{port}"]},
                     {"name": "bad", "runtime": "process", "command": [str(workloads / "hello"), "--bogus"]}],
        "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "5s"},
    }, "broken.yaml")
    result = asyncio.run(Runner(exp).run())
    ok, bad = result.variants
    assert ok.startup_ms is not None and ok.startup_ms.n == 2
    assert bad.startup_ms is None and "exited with code" in bad.error
    assert not [c for c in result.comparisons if c.candidate == "bad"]


def test_a_process_variant_cwd_gets_its_placeholders_filled_for_the_runtime_and_the_policy(
        workloads: Path, tmp_path: Path) -> None:
    """``cwd: "{here}/srv"`` starts the workload there (it used to be passed on literally, so the start failed),
    and the policy resolves a relative program against the same directory the runtime uses."""
    from agent.config import PolicySettings
    from agent.policy import PolicyError, check

    (tmp_path / "srv").mkdir()
    shutil.copy(workloads / "hello", tmp_path / "srv" / "hello")
    exp = parse({
        "name": "cwd", "repeat": 1, "warmup": 0, "phases": ["cold_start"],
        "variants": [{"name": "rel", "runtime": "process", "cwd": "{here}/srv",
                      "command": ["./hello", "--port", "{port}"]}],
        "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "5s"},
    }, "cwd.yaml")
    result = asyncio.run(Runner(exp, file=str(tmp_path / "cwd.yaml")).run())
    fig = result.variants[0].startup_ms
    assert not result.variants[0].error and fig is not None and fig.n == 1, result.variants[0].skipped
    allowed = msgspec.convert({"runtimes": ["process"], "commands": [f"{tmp_path}/srv/hello"]}, PolicySettings)
    check(exp, allowed, str(tmp_path), None)  # ./hello is {here}/srv/hello: allowed
    with pytest.raises(PolicyError, match="srv/hello"):
        check(exp, msgspec.convert({"runtimes": ["process"], "commands": ["/bin/sh"]}, PolicySettings),
              str(tmp_path), None)
