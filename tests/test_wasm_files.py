"""The experiment files with real WASM engines run here, through the CLI, shortened (container-runtimes.yaml
runs in tests/test_oci_runtimes.py): http-api-wasm-vs-container.yaml's and local-runtimes.yaml's variants that
this machine can run (`--variant`), the others needing what is not here (a Node image, a Rust module, QEMU's
minute-long boots kept out of the suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.engines import engines, processes_running

EXPERIMENTS = REPO / "configs" / "experiments"
CACHE = (REPO / "build" / "cache").resolve()  # podman records the resolved store path

CASES = {
    "http-api-wasm-vs-container": "hello-container,hello-wasmedge,hello-wasmtime",
    "local-runtimes": "native,wasm",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_file_runs_here(name: str, workloads: Path, tmp_path: Path) -> None:
    engines()
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    text = text.replace("{workloads}/..", str(CACHE)).replace("{here}/", f"{EXPERIMENTS}/")
    data = yaml.safe_load(text)
    data.update(repeat=2, warmup=0, settle="200ms")
    data["load"] = {"requests": 100, "concurrency": 4, "timeout": "10s"}
    copy = tmp_path / f"{name}.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "result.json"
    only = CASES[name]
    args = [a for n in only.split(",") for a in ("--variant", n)]
    if data.get("reference") not in only.split(","):
        args += ["--reference", only.split(",")[0]]
    r = subprocess.run([sys.executable, "-m", "agent", "run", str(copy), *args, "--json", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    ran = [v["name"] for v in result["variants"]]
    assert ran == only.split(",")
    for v in result["variants"]:
        assert not v["error"], (v["name"], v["error"])
        assert v["startup_ms"]["n"] == 2 and v["footprint"]["pss_bytes"] > 0, v["name"]
        assert v["load"][0]["ok"] == 100 and v["load"][0]["errors"] == 0, (v["name"], v["load"][0])
        assert v["size"]["bytes"] > 0, v["name"]
    assert processes_running(str(CACHE / "runtimes" / "bin"), str(CACHE / "wasm")) == []


def test_variant_names_an_unknown_variant_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "run", str(EXPERIMENTS / "local-runtimes.yaml"),
                        "--variant", "native", "--variant", "nope"], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(
        f"runlab-agent: --variant nope: not a variant of {EXPERIMENTS / 'local-runtimes.yaml'}"), r.stderr
