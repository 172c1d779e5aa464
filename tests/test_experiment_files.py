"""Every file under configs/experiments/ validates, and every one runs here as shipped.

``runlab-agent run FILE --repeat 2`` on each file, exactly as a user would type it: every variant must either
produce results or be skipped by the pre-flight with a reason — no file stops on its first variant that cannot
run here. Where a file runs, its phase's figures are checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runlab.experiment import load_file
from tests.conftest import REPO
from tests.test_phases import MARK, build_pingpong, build_workloads, podman_leftovers, process_leftovers

EXPERIMENTS = REPO / "configs" / "experiments"
FILES = sorted(EXPERIMENTS.glob("*.yaml"))
OUTSIDE = ("../../../", "shared/seed", "RUNTIMES.md")  # what a header must not point at


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_experiment_file_validates_and_says_what_the_seed_measured(path: Path) -> None:
    exp, digest = load_file(path)
    assert exp.name == path.stem and len(digest) == 64
    header = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    assert len(header) >= 3, f"{path.name}: expected a comment header (what the seed measured, how to adjust)"
    text = path.read_text()
    assert not [o for o in OUTSIDE if o in text], f"{path.name}: names a path outside the repository"
    assert "{here}/../" not in text, f"{path.name}: a path into the checkout: use {{workloads}}"


def _check_db_penalty(r: dict[str, Any]) -> None:
    for v in r["variants"]:
        if not v["skipped"]:
            assert v["benchmark"]["score"]["n"] == 2 and v["benchmark"]["score"]["median"] > 0, v["error"]


def _check_overhead(r: dict[str, Any]) -> None:
    for v in r["variants"]:
        if not v["skipped"]:
            oh = v["overhead"]
            assert [lv["workloads"] for lv in oh["levels"]] == [0, 1, 2, 4], v["name"]
            assert oh["levels"][2]["workloads_processes"] > oh["levels"][1]["workloads_processes"] > 0
            assert oh["per_workload_bytes"] > 0, v["name"]


def _check_stack(r: dict[str, Any]) -> None:
    for st in r["stacks"]:
        assert st["total_ms"]["n"] == 2, st["error"]  # --repeat 2 applies to the stack phase too
        worker = next(s for s in st["services"] if s["name"].startswith("worker"))
        assert worker["ready_ms"]["min"] >= 250  # it listens only after 250 ms


def _check_interservice(r: dict[str, Any]) -> None:
    for v in r["variants"]:
        if not v["skipped"]:
            assert v["interservice"]["pairs"] == 2 and v["interservice"]["rtt_ms"]["n"] == 4000, v["error"]


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "db-penalty": _check_db_penalty, "compose-vs-k3s-overhead": _check_overhead, "stack-boot": _check_stack,
    "inter-service-latency": _check_interservice,
}


def produced(v: dict[str, Any], r: dict[str, Any]) -> bool:
    """Whether a variant has figures of its own, or (stack phase) booted in a stack that has a time."""
    if v["startup_ms"] or v["footprint"] or v["load"] or v["overhead"]:
        return True
    if (v["benchmark"] or {}).get("score") or (v["interservice"] or {}).get("rtt_ms"):
        return True
    return any(st["total_ms"] and v["name"] in [s["name"] for s in st["services"]] for st in r["stacks"])


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess[str], out: Path) -> None:
        self.proc, self.out = proc, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every shipped file run once, three at a time (most of a run is waiting: settle, windows, open-loop rates),
    so that the whole takes about as long as the longest file."""
    build_workloads()  # hello + its podman image (build.sh)
    build_pingpong()  # pingpong + its podman image (build-extra.sh)
    tmp = tmp_path_factory.mktemp("runs")
    env = {**os.environ, MARK: f"files-{os.getpid()}"}

    def one(path: Path) -> tuple[str, Ran]:
        out = tmp / f"{path.stem}.json"
        r = subprocess.run([sys.executable, "-m", "agent", "run", str(path), "--repeat", "2", "--json", str(out),
                            "--quiet"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        return path.stem, Ran(r, out)

    longest_first = sorted(FILES, key=lambda p: p.stem not in ("compose-vs-k3s-overhead", "local-runtimes"))
    with ThreadPoolExecutor(3) as pool:
        done = dict(pool.map(one, longest_first))
    assert process_leftovers(env[MARK]) == []
    return done


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_shipped_file_runs_here_every_variant_measured_or_skipped_with_a_reason(
        path: Path, runs: dict[str, Ran]) -> None:
    r, out = runs[path.stem].proc, runs[path.stem].out
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["experiment"] == path.stem
    ran = [v for v in result["variants"] if not v["skipped"]]
    assert r.returncode == (0 if ran else 1), r.stdout[-2000:] + r.stderr[-3000:]
    assert result["status"] == ("finished" if ran else "skipped")
    assert f"pre-flight {path}: {len(ran)} of {len(result['variants'])} variants will run" in r.stderr
    for v in result["variants"]:
        if v["skipped"]:
            assert result["methodology"]["preflight"][v["name"]] == v["skipped"]
            assert f"⊘ {v['name']}: skipped (pre-flight) — {v['skipped']}" in r.stdout
            assert not v["startup_ms"] and not v["footprint"] and not v["load"]
        else:
            assert produced(v, result) and not v["error"], (v["name"], v["error"], r.stderr[-2000:])
            if v["startup_ms"]:
                assert v["startup_ms"]["n"] == 2, v["name"]
    if path.stem in CHECKS and ran:
        CHECKS[path.stem](result)
    assert podman_leftovers(path.stem) == []
