"""`runlab compare BASE NEW` on two real local runs, no server: a known regression is called worse and fails the
gate; a rerun of the same thing is not; bad input is one line.

The runs are `runlab-agent run --json` of one variant served by tests/standins/delayed.py: it comes up 250 ms
after its exec and answers each request after 2 ms; in the "slower" run after 700 ms and 6 ms (the ground truth).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runlab.histogram import Histogram
from runlab.report import compare as cmp
from tests.conftest import REPO
from tests.test_operator import runlab

DELAYED = REPO / "tests" / "standins" / "delayed.py"


def agent_run(tmp: Path, name: str, start_ms: int, delay_ms: int) -> Path:
    exp = tmp / f"{name}.yaml"
    exp.write_text(f"""\
name: compare-me
repeat: 10
warmup: 1
phases: [cold_start, footprint, load]
ready: {{http: "http://127.0.0.1:{{port}}/", timeout: 30s}}
settle: 50ms
load: {{requests: 200, concurrency: 2}}
variants:
  - name: svc
    runtime: process
    command: [{sys.executable}, -S, -I, {DELAYED}, --port, "{{port}}", --start-ms, "{start_ms}",
              --delay-ms, "{delay_ms}"]
""")
    out = tmp / f"{name}.json"
    r = subprocess.run([sys.executable, "-m", "agent", "run", str(exp), "--json", str(out), "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env={**os.environ})
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("compare")
    # the servers sleep most of each figure: what is measured is the ground truth, not this busy machine's noise
    return {"base": agent_run(tmp, "base", 250, 2), "again": agent_run(tmp, "again", 250, 2),
            "slower": agent_run(tmp, "slower", 700, 6)}


def test_a_slower_run_is_worse_and_fails_the_gate(runs: dict[str, Path]) -> None:
    r = runlab("compare", str(runs["base"]), str(runs["slower"]), "--format", "json", "--fail-on", "worse:5%")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.strip().endswith("significantly worse by 5 % or more (--fail-on)") and "Traceback" not in r.stderr
    data = json.loads(r.stdout)
    rows = {x["figure"]: x for x in data["rows"]}
    assert data["correction"] == "Holm–Bonferroni" and data["alpha"] == 0.05
    for figure in ("startup_ms", "latency_ms_closed"):
        row = rows[figure]
        assert row["verdict"] == "worse", row
        assert row["ratio"] > 1.2 and row["ratio_ci_low"] > 1 and row["p_adjusted"] < 0.01
        assert row["base_ci_low"] <= row["base_median"] <= row["base_ci_high"]
        assert row["change"].endswith(")") and "slower (95 % CI" in row["change"]
    assert rows["latency_ms_closed"]["new_median"] - rows["latency_ms_closed"]["base_median"] > 3.5  # the 4 ms
    assert rows["pss_bytes"]["verdict"] == "not tested" and rows["pss_bytes"]["note"] == "one value per run"
    assert len(data["failed"]) == 2
    # the table says the same in words; without --fail-on the exit status is 0
    r = runlab("compare", str(runs["base"]), str(runs["slower"]))
    assert r.returncode == 0, r.stderr
    assert "svc cold start:" in r.stdout and "— worse" in r.stdout and "2 worse, 0 better" in r.stdout
    # a gate set above the regression passes (both figures are about 3× slower)
    r = runlab("compare", str(runs["base"]), str(runs["slower"]), "--fail-on", "worse:500%")
    assert r.returncode == 0 and "PASS: nothing significantly worse by 500 % or more." in r.stdout, r.stdout


def test_the_same_thing_twice_shows_no_significant_difference(runs: dict[str, Path]) -> None:
    r = runlab("compare", str(runs["base"]), str(runs["again"]), "--format", "markdown", "--fail-on", "worse:5%")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 worse" in r.stdout and "PASS: nothing significantly worse by 5 % or more." in r.stdout
    data = json.loads(runlab("compare", str(runs["base"]), str(runs["again"]), "--format", "json").stdout)
    tested = [x for x in data["rows"] if x["p_value"] is not None]
    assert {x["figure"] for x in tested} == {"startup_ms", "latency_ms_closed"}
    assert all(x["verdict"] != "worse" for x in tested), tested


def test_latency_of_the_json_file_is_compared_from_its_histogram(runs: dict[str, Path]) -> None:
    data = json.loads(runs["slower"].read_text())
    (lf,) = data["variants"][0]["load"]
    h = Histogram.decode(lf["histogram"])
    assert h.count == lf["ok"] == 200 and h.hi == lf["latency_ms"]["max"]


@pytest.mark.parametrize(("args", "message"), [
    (["nothing.json", "other.json"], "nothing.json: cannot read: No such file or directory"),
    (["{base}", "{bad}"], "not JSON"),
    (["{base}", "{alien}"], "not a runlab result"),
    (["{base}", "{base}", "--fail-on", "slower:5%"], "expected worse:N%"),
    (["{base}", "{base}", "--fail-on", "worse:lots%"], "expected worse:N% with a number N"),
    (["{base}", "exp@yesterday"], "@yesterday: expected a date"),
    (["{base}", "{other}"], "have no figure in common (variants svc vs elsewhere)"),
])
def test_bad_input_is_one_line(runs: dict[str, Path], tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "alien.json").write_text('{"hello": "world"}')
    other = json.loads(runs["base"].read_text())
    other["variants"][0]["name"] = "elsewhere"
    (tmp_path / "other.json").write_text(json.dumps(other))
    paths = {"base": str(runs["base"]), "bad": str(tmp_path / "bad.json"), "alien": str(tmp_path / "alien.json"),
             "other": str(tmp_path / "other.json")}
    cfg = tmp_path / "runlab.yaml"  # a store side needs the config: a real one, pointing nowhere
    cfg.write_text("mqtt:\n  url: mqtt://127.0.0.1:1\ninflux:\n  url: http://127.0.0.1:1\n  api: v1\n"
                   "  database: runlab\n")
    r = runlab("compare", *[a.format(**paths) for a in args], config=cfg)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""


def test_holm_adjustment_and_fail_on_parsing() -> None:
    assert cmp._holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert cmp.parse_fail_on("worse:5%") == 0.05 and cmp.parse_fail_on("worse:0.1") == 0.1
    assert cmp.parse_fail_on("worse") == 0.0
    for bad in ("worse:-5%", "better:5%", "worse:inf%"):
        with pytest.raises(ValueError, match="--fail-on"):
            cmp.parse_fail_on(bad)


def test_one_node_against_another_is_matched_by_variant(runs: dict[str, Path], tmp_path: Path) -> None:
    sides = []
    for name, node in (("base", "pi4"), ("again", "pi5")):
        data = json.loads(runs[name].read_text())
        for v in data["variants"]:
            v["node"] = node
        (tmp_path / f"{node}.json").write_text(json.dumps(data))
        sides.append(str(tmp_path / f"{node}.json"))
    r = runlab("compare", *sides, "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert rows and {x["node"] for x in rows} == {"pi4 → pi5"} and {x["variant"] for x in rows} == {"svc"}
