"""OCI runtimes for real, under podman: runc (Debian 12), crun 1.21 and gVisor's runsc (Debian trixie), on the same
image; and crun's WasmEdge handler running hello-wasi's WasmEdge module as a container (the way Kubernetes runs
WASM: a runtime class whose handler is crun). Through `oci_runtime:` and through podman's own `--runtime` flag.

The runtimes are the ones `make workloads` fetches (build/workloads/fetch-runtimes.sh). Kata Containers is the
same `oci_runtime:` key with a Kata runtime; it cannot be had on these machines (no package; no usable KVM).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.runtimes import make_runtime
from agent.runtimes.base import RuntimeUnavailable
from runlab.experiment import parse
from tests.conftest import REPO, wait_until
from tests.engines import CTR_RUN_ARGS, PODMAN_ARGS, Engines, engines, processes_running

EXPERIMENTS = REPO / "configs" / "experiments"
CACHE = (REPO / "build" / "cache").resolve()  # podman records the resolved store path
IMAGE = "localhost/runlab-hello:1"
WASM_IMAGE = "localhost/runlab-hello-wasm:1"


@pytest.fixture(scope="module")
def eng(workloads: Path) -> Engines:
    return engines()


def variants(eng: Engines) -> dict[str, dict[str, Any]]:
    def ctr(name: str, *, oci: str | None = None, engine_args: list[str] | None = None, image: str = IMAGE,
            command: list[str] | None = None, run_args: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        v: dict[str, Any] = {
            "name": name, "runtime": "container", "engine": "podman", "engine_args": PODMAN_ARGS + (engine_args or []),
            "run_args": CTR_RUN_ARGS + (run_args or []), "image": image,
            "command": (command or ["/hello", "--port", "{port}"]) + ["--body", f"hello from {name}"],
            "ready": {"http": "http://127.0.0.1:{port}/", "expect_body": f"^hello from {name}$"}, **extra}
        if oci:
            v["oci_runtime"] = oci
        return v

    return {
        "runc": ctr("runc", oci="runc"),
        # podman's own flag, in engine_args: the same thing as oci_runtime for podman
        "crun": ctr("crun", engine_args=["--runtime", eng["crun"]]),
        "runsc": ctr("runsc", oci=eng["runsc"],
                     engine_args=["--runtime-flag", "network=host", "--runtime-flag", "platform=systrap"]),
        "crun-wasmedge": ctr("crun-wasmedge", oci=eng["crun"], image=WASM_IMAGE,
                             command=["/hello-wasmedge.wasm", "--port", "{port}", "--bind", "127.0.0.1"],
                             run_args=["--annotation", "module.wasm.image/variant=compat"], stop_timeout=0),
    }


def experiment(d: Path, eng: Engines, names: tuple[str, ...], repeat: int) -> Path:
    exp = {"name": "oci-runtimes", "repeat": repeat, "warmup": 1, "settle": "500ms",
           "phases": ["cold_start", "footprint", "size", "load"],
           "variants": [variants(eng)[n] for n in names],
           "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "30s", "interval": "2ms",
                     "probe_timeout": "250ms"},
           "load": {"requests": 100, "concurrency": 4, "timeout": "10s"}}
    f = d / f"oci-{'-'.join(names)}-{repeat}.yaml"
    f.write_text(yaml.safe_dump(exp, sort_keys=False))
    return f


def podman(*args: str) -> str:
    r = subprocess.run(["podman", *PODMAN_ARGS, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_container_runtimes_file_runs_runc_crun_runsc_and_crun_wasmedge(eng: Engines, tmp_path: Path) -> None:
    """configs/experiments/container-runtimes.yaml as shipped (shortened), plus crun named by podman's own
    --runtime flag in engine_args instead of oci_runtime:."""
    text = (EXPERIMENTS / "container-runtimes.yaml").read_text()
    data = yaml.safe_load(text.replace("{workloads}/..", str(CACHE)))
    data.update(repeat=2, warmup=0, settle="300ms")
    data["load"] = {"requests": 100, "concurrency": 4, "timeout": "10s"}
    data["variants"].append(variants(eng)["crun"] | {"name": "crun-flag"})
    names = [v["name"] for v in data["variants"]]
    assert names == ["runc", "crun", "runsc", "crun-wasmedge", "crun-flag"]
    copy = tmp_path / "container-runtimes.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "agent", "run", str(copy), "--json", str(out), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    by_name = {v["name"]: v for v in json.loads(out.read_text())["variants"]}
    for name in names:
        v = by_name[name]
        assert not v.get("error"), (name, v.get("error"))
        # Counted only once the probe got the body: the container of that runtime answered.
        assert v["startup_ms"]["n"] == 2, name
        assert v["load"][0]["ok"] == 100 and v["load"][0]["errors"] == 0, (name, v["load"][0])
        assert v["footprint"]["pss_bytes"] > 0, name
    # gVisor's memory is the sandbox's: conmon + runsc-gofer + runsc-sandbox (the Sentry) and its helpers, far
    # more than conmon + the static server under runc.
    assert by_name["runsc"]["footprint"]["processes"] >= 3, by_name["runsc"]["footprint"]
    assert by_name["runsc"]["footprint"]["pss_bytes"] > 3 * by_name["runc"]["footprint"]["pss_bytes"]
    # crun's WasmEdge handler loads libwasmedge (and LLVM) into the container's process.
    assert by_name["crun-wasmedge"]["footprint"]["pss_bytes"] > by_name["crun"]["footprint"]["pss_bytes"]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", WASM_IMAGE).strip())
    assert by_name["crun-wasmedge"]["size"]["bytes"] == size
    assert by_name["runc"]["size"]["bytes"] == by_name["runsc"]["size"]["bytes"]  # the same image
    left = [n for n in podman("ps", "-a", "--format", "{{.Names}}").split() if n.startswith("runlab-container-")]
    assert left == []


def test_ctrl_c_during_a_runsc_run_leaves_no_sandbox(eng: Engines, tmp_path: Path) -> None:
    """SIGINT while a gVisor sandbox serves: no container, and no runsc process of those containers, survives."""
    exp_file = experiment(tmp_path, eng, ("runsc",), 1000)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(exp_file), "--quiet"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ids: set[str] = set()
    try:
        def sandbox_up() -> bool:
            out = subprocess.run(["podman", *PODMAN_ARGS, "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
                                 capture_output=True, text=True, timeout=60).stdout
            ids.update(line.split()[0] for line in out.splitlines() if "runlab-oci-runtimes-" in line)
            return any(processes_running("runsc-sandbox", i) for i in ids)

        wait_until(sandbox_up, timeout=120, what="a runsc sandbox", interval=0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert ids
    assert [p for i in ids for p in processes_running(i)] == []
    left = [n for n in podman("ps", "-a", "--format", "{{.Names}}").split() if n.startswith("runlab-oci-runtimes-")]
    assert left == []


def test_oci_runtime_path_takes_here_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    exp = parse({"name": "x", "ready": {"http": "http://127.0.0.1:{port}/"},
                 "variants": [{"name": "v", "runtime": "container", "image": IMAGE,
                               "oci_runtime": "{here}/bin/runsc"}]}, "x.yaml")
    rt = make_runtime(exp.variants[0], exp, here=str(tmp_path))
    assert rt.base == ["podman", "--runtime", f"{tmp_path}/bin/runsc"]  # type: ignore[attr-defined]
    with pytest.raises(RuntimeUnavailable, match=rf"variant v: oci_runtime {tmp_path}/bin/runsc: not found"):
        asyncio.run(rt.prepare())
