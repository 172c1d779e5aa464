"""Every file under configs/experiments/ validates, and the ones that can run on this machine run.

Runnable files are run through the CLI (``runlab-agent run FILE --json``) from a copy whose
``{here}/../../build/cache`` points at the resolved shared cache (podman records the resolved store path, so
a worktree's symlinked cache would not match) and whose repeats are cut to keep the suite short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from runlab.experiment import load_file
from tests.conftest import REPO
from tests.test_phases import CACHE, MARK, build_pingpong, build_workloads, mark, podman_leftovers, process_leftovers

__all__ = ["mark"]  # the autouse fixture that marks every process a test starts
EXPERIMENTS = REPO / "configs" / "experiments"
FILES = sorted(EXPERIMENTS.glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_experiment_file_validates_and_says_what_the_seed_measured(path: Path) -> None:
    exp, digest = load_file(path)
    assert exp.name == path.stem and len(digest) == 64
    header = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    assert len(header) >= 3, f"{path.name}: expected a comment header (what the seed measured, how to adjust)"


def _shrink_overhead(d: dict[str, Any]) -> None:
    d["overhead"].update(density=[0, 1, 2], window="300ms")
    d["settle"] = "100ms"


def _shrink(section: str, **values: object) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        d[section].update(values)
        d["settle"] = "100ms"
    return apply


# file → (how to make it short, what each variant or stack must then have)
RUNNABLE: dict[str, tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], None]]] = {}


def _check_db_penalty(r: dict[str, Any]) -> None:
    for v in r["variants"]:
        assert v["benchmark"]["score"]["n"] == 3 and v["benchmark"]["score"]["median"] > 0, v["error"]
    assert [c["figure"] for c in r["comparisons"]] == ["benchmark"]


def _check_overhead(r: dict[str, Any]) -> None:
    by = {v["name"]: v["overhead"] for v in r["variants"]}
    for name, oh in by.items():
        assert [lv["workloads"] for lv in oh["levels"]] == [0, 1, 2], name
        assert oh["levels"][2]["workloads_processes"] > oh["levels"][1]["workloads_processes"] > 0, name
        assert oh["levels"][1]["workloads_pss_bytes"] > 0, name
        assert oh["per_workload_bytes"] > 0, name
    assert by["podman"]["data_bytes"] > 0  # the image store


def _check_stack(r: dict[str, Any]) -> None:
    for st in r["stacks"]:
        assert st["total_ms"]["n"] == 2, st["error"]
        worker = next(s for s in st["services"] if s["name"].startswith("worker"))
        assert worker["ready_ms"]["min"] >= 250  # it listens only after 250 ms
    assert [c["figure"] for c in r["comparisons"]] == ["stack_ms"]


def _check_interservice(r: dict[str, Any]) -> None:
    for v in r["variants"]:
        assert v["interservice"]["rtt_ms"]["n"] == 2000 and v["interservice"]["rtt_ms"]["min"] > 0, v["error"]
    assert [c["figure"] for c in r["comparisons"]] == ["rtt_ms"]


RUNNABLE.update({
    "db-penalty": (_shrink("benchmark", repeat=3, warmup=0), _check_db_penalty),
    "compose-vs-k3s-overhead": (_shrink_overhead, _check_overhead),
    "stack-boot": (_shrink("stack", repeat=2), _check_stack),
    "inter-service-latency": (_shrink("interservice", repeat=1), _check_interservice),
})


@pytest.fixture(scope="module")
def built() -> None:
    """hello + its podman image (build.sh), pingpong + its podman image (build-extra.sh)."""
    build_workloads()
    build_pingpong()


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_experiment_file_runs_here(name: str, built: None, tmp_path: Path) -> None:
    shrink, check = RUNNABLE[name]
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    text = text.replace("{here}/../../build/cache", str(CACHE)).replace("{here}/", f"{EXPERIMENTS}/")
    data = yaml.safe_load(text)
    shrink(data)
    copy = tmp_path / f"{name}.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, "-m", "agent", "run", str(copy), "--json", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600, cwd=REPO, env=os.environ)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["experiment"] == name and result["status"] == "finished"
    check(result)
    assert name in r.stdout and "Traceback" not in r.stderr
    assert podman_leftovers(name) == [] and process_leftovers(os.environ[MARK]) == []
