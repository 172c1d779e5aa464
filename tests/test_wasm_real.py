"""The ``wasm`` runtime against a real WebAssembly engine (wasmtime-py), next to the native static server.

No wasmtime/WasmEdge CLI can be installed here, so the runtime command is build/workloads/wasm/wasm-host.py:
a stand-in for `wasmtime serve` whose engine is real — the body of every answer is computed by hello.wasm.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from agent.engine import Runner
from runlab.experiment import load_file
from tests.conftest import REPO, wait_until

WASM_DIR = REPO / "build" / "workloads" / "wasm"
HOST = WASM_DIR / "wasm-host.py"
# What the readiness probe (GET / over HTTP/1.1) gets back from the module; #N is the module's request count.
WASM_BODY = r"^hello from wasm #\d+: GET / HTTP/1\.1\n$"


def wasm_hosts(d: Path) -> list[str]:
    """wasm-host.py processes serving a module from ``d`` (this module's directory: not another session's)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(a.endswith("wasm-host.py") for a in cmd) and any(a.startswith(str(d)) for a in cmd):
            found.append(f"pid {p.info['pid']}: {' '.join(cmd)[:160]}")
    return found


@pytest.fixture(scope="module")
def wasm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding hello.wasm, compiled from hello.wat by the host itself (wasmtime's wat2wasm)."""
    d = tmp_path_factory.mktemp("wasm")
    r = subprocess.run([sys.executable, str(HOST), str(WASM_DIR / "hello.wat"), "--compile", str(d / "hello.wasm")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (d / "hello.wasm").read_bytes()[:4] == b"\0asm"
    return d


def experiment(d: Path, workloads: Path, *, repeat: int, variants: tuple[str, ...] = ("native", "wasm")) -> Path:
    """The experiment file, written beside hello.wasm so that ``{here}`` names the module's directory."""
    all_variants = {
        "native": {"name": "native", "runtime": "process",
                   "command": [str(workloads / "hello"), "--port", "{port}", "--body", "hello from native"],
                   "ready": {"http": "http://127.0.0.1:{port}/", "expect_body": "^hello from native$"}},
        "wasm": {"name": "wasm", "runtime": "wasm",
                 "command": [sys.executable, str(HOST), "{here}/hello.wasm", "--port", "{port}"],
                 "module": "{here}/hello.wasm",
                 "ready": {"http": "http://127.0.0.1:{port}/", "expect_body": WASM_BODY, "timeout": "15s"}},
    }
    exp = {"name": "wasm-real", "repeat": repeat, "warmup": 1, "settle": "300ms",
           "phases": ["cold_start", "footprint", "size", "load"],
           "variants": [all_variants[v] for v in variants],
           "ready": {"http": "http://127.0.0.1:{port}/"},
           "load": {"requests": 200, "concurrency": 4, "timeout": "10s"}}
    f = d / f"wasm-real-{'-'.join(variants)}-{repeat}.yaml"
    f.write_text(yaml.safe_dump(exp, sort_keys=False))
    return f


def run_agent(*args: str, timeout: float) -> tuple[int, str, str]:
    """``python -m agent ARGS``; past the timeout it gets Ctrl-C (so it still stops its workloads), not SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"runlab-agent {' '.join(args)}: still running after {timeout}s: {err[-2000:]}")
    return proc.returncode, out, err


def test_wasm_host_answers_with_what_the_module_computes(wasm_dir: Path) -> None:
    """The host's body is the module's: the request line echoed and a counter kept inside the instance."""
    proc = subprocess.Popen([sys.executable, str(HOST), str(wasm_dir / "hello.wasm"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "wasm-host: serving on 127.0.0.1:PORT" once listening (port 0: any)
        assert line.startswith("wasm-host: serving on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        bodies = [urllib.request.urlopen(f"http://127.0.0.1:{port}/{p}", timeout=10).read() for p in ("a", "bc")]
        assert bodies == [b"hello from wasm #1: GET /a HTTP/1.1\n", b"hello from wasm #2: GET /bc HTTP/1.1\n"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_host_rejects_a_module_without_the_handler_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "nohandler.wat"
    bad.write_text('(module (memory (export "memory") 1))')
    r = subprocess.run([sys.executable, str(HOST), str(bad), "--port", "1"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"wasm-host.py: {bad}: the module must export `memory` and a function " \
                               "`handle(i32) -> i32`"


def test_wasm_and_native_variants_measure_start_footprint_size_and_load(workloads: Path, wasm_dir: Path,
                                                                        tmp_path: Path) -> None:
    exp_file = experiment(wasm_dir, workloads, repeat=5)
    out = tmp_path / "result.json"
    code, stdout, stderr = run_agent("run", str(exp_file), "--json", str(out), "--quiet", timeout=240)
    assert code == 0, stdout[-2000:] + stderr[-3000:]
    by_name = {v["name"]: v for v in json.loads(out.read_text())["variants"]}
    native, wasm = by_name["native"], by_name["wasm"]
    assert wasm["runtime"] == "wasm" and not wasm.get("error"), wasm.get("error")
    for v in (native, wasm):
        # Every start counted only once its probe saw the expected body (for wasm: computed by the module).
        assert v["startup_ms"]["n"] == 5 and len(v["startup_ms"]["samples"]) == 5, v["name"]
        assert v["footprint"]["pss_bytes"] > 0, v["name"]
        assert v["load"][0]["ok"] == 200 and v["load"][0]["errors"] == 0, v["name"]
    assert wasm["size"]["bytes"] == (wasm_dir / "hello.wasm").stat().st_size
    assert wasm["size"]["what"] == f"module {wasm_dir / 'hello.wasm'}"
    assert native["size"]["bytes"] == (workloads / "hello").stat().st_size
    # Not a timing race: an interpreter plus a WASM engine is tens of MB, the static server under 2 MB.
    assert wasm["footprint"]["pss_bytes"] > 4 * native["footprint"]["pss_bytes"]
    assert "wasm" in stdout and "native" in stdout
    assert wasm_hosts(wasm_dir) == []


@pytest.mark.parametrize("moment", ["first-start", "later-start"])
def test_ctrl_c_during_a_wasm_run_leaves_no_host_process(workloads: Path, wasm_dir: Path, moment: str) -> None:
    """SIGINT while the wasm host is up — in the very first start, or once a start/stop cycle has completed."""
    exp_file = experiment(wasm_dir, workloads, repeat=1000, variants=("wasm",))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(exp_file), "--quiet"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: set[int] = set()

        def hosts_seen() -> bool:
            seen.update(int(h.split()[1].rstrip(":")) for h in wasm_hosts(wasm_dir))
            return len(seen) >= (1 if moment == "first-start" else 3)

        wait_until(hosts_seen, timeout=120, what=f"wasm host processes ({moment})", interval=0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # the wait failed: still stop the agent by Ctrl-C, so that it cleans up
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "cancelled" in err
    assert wasm_hosts(wasm_dir) == []


def test_cancelling_the_runner_task_stops_the_wasm_host(workloads: Path, wasm_dir: Path) -> None:
    """The in-process path (the fleet agent cancels a run): the task ends cancelled, no host survives."""
    exp_file = experiment(wasm_dir, workloads, repeat=1000, variants=("wasm",))
    exp, _ = load_file(str(exp_file))

    async def scenario() -> str:
        runner = Runner(exp, file=str(exp_file))
        task = asyncio.create_task(runner.run())
        for _ in range(12000):  # up to ~60 s: wait for a host to exist, then cancel at once
            if wasm_hosts(wasm_dir):
                break
            await asyncio.sleep(0.005)
        assert wasm_hosts(wasm_dir), "no wasm host was started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return runner.status

    assert asyncio.run(scenario()) == "cancelled"
    assert wasm_hosts(wasm_dir) == []
