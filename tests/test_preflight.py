"""The pre-flight (agent/preflight.py) against the real tools of this machine, and partial runs.

Each refusal is produced by the real thing: podman with an OCI runtime it does not know, an image not in its
store, a docker CLI pointed at a socket with no daemon, a closed gateway port, a program that is not there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.engine import ExperimentError, Runner
from agent.preflight import Verdict, check, narrow
from runlab.experiment import load_file, parse, with_repeat, with_workloads, workloads_dir
from runlab.report import render
from runlab.results import summary_samples
from tests.conftest import REPO, need
from tests.test_phases import ENGINE_ARGS, RUN_ARGS, WORKLOADS, build_workloads, mark

__all__ = ["mark"]
READY = {"http": "http://127.0.0.1:{port}/", "timeout": "20s"}


@pytest.fixture(scope="module")
def hello() -> Path:
    return build_workloads() / "hello"


def exp_of(variants: list[dict[str, Any]], **extra: Any) -> Any:
    return parse({"name": "preflight", "ready": READY, "settle": "50ms", "variants": variants, **extra},
                 "preflight.yaml")


def verdicts(exp: Any, here: str = str(REPO), file: str = "") -> dict[str, Verdict]:
    got, problems = asyncio.run(check(exp, here, file))
    assert problems == []
    return {v.variant: v for v in got}


def podman(name: str, image: str = "localhost/runlab-hello:1", **kw: Any) -> dict[str, Any]:
    return {"name": name, "runtime": "container", "engine": "podman", "engine_args": ENGINE_ARGS[:-2],
            "run_args": RUN_ARGS, "image": image, "command": ["/hello", "--port", "{port}"], **kw}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------- the engines' own words

def test_podman_unknown_runtime_missing_image_and_a_good_variant_are_three_verdicts(hello: Path) -> None:
    need("podman")
    exp = exp_of([podman("runc", oci_runtime="runc"), podman("kata", oci_runtime="no-such-runtime"),
                  podman("noimage", image="localhost/runlab-no-such-image:1", oci_runtime="runc")])
    v = verdicts(exp)
    assert v["runc"].ok, v["runc"].line()
    assert 'OCI runtime "no-such-runtime" not found' in v["kata"].reason
    assert "containers.conf" in v["kata"].fix and "image" not in v["kata"].reason
    assert "image localhost/runlab-no-such-image:1" in v["noimage"].reason
    assert "image not known" in v["noimage"].reason and "runtime" not in v["noimage"].reason


def test_docker_without_a_daemon_says_the_daemon_is_down_not_that_the_image_is_missing() -> None:
    need("docker")
    exp = exp_of([{"name": "d", "runtime": "container", "engine": "docker", "image": "hello:1",
                   "engine_args": ["-H", "unix:///nonexistent/docker.sock"]}])
    v = verdicts(exp)["d"]
    assert "Cannot connect to the Docker daemon" in v.reason and "image" not in v.reason
    assert "systemctl start docker" in v.fix


def test_missing_tools_files_and_a_closed_gateway_are_refusals_never_tracebacks(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the gateway is down
    exp = exp_of([
        {"name": "nobin", "runtime": "process", "command": ["runlab-no-such-program", "{port}"]},
        {"name": "deploy", "runtime": "serverless", "invoke": f"http://127.0.0.1:{port}/function/f",
         "deploy": ["runlab-no-such-faas-cli", "deploy"], "cold": {"command": ["true"]}},
        {"name": "gateway", "runtime": "serverless", "invoke": f"http://127.0.0.1:{port}/function/f",
         "cold": {"command": ["true"]}},
        {"name": "module", "runtime": "wasm", "command": ["sh", "-c", "exit 0"], "module": "{here}/missing.wasm"},
    ])
    (tmp_path / "exp.yaml").write_text("# Provide missing.wasm: build it with `cargo build --target wasm32-wasip1`\n")
    v = verdicts(exp, str(tmp_path), str(tmp_path / "exp.yaml"))
    assert v["nobin"].reason == "runlab-no-such-program is not installed (not on PATH)"
    assert v["deploy"].reason == "runlab-no-such-faas-cli is not installed (not on PATH)"
    assert f"gateway 127.0.0.1:{port}" in v["gateway"].reason and "does not accept connections" in v["gateway"].reason
    assert v["module"].reason == f"module {tmp_path}/missing.wasm is missing"
    assert "cargo build --target wasm32-wasip1" in v["module"].fix  # the file's own header line is the fix


def test_systemd_without_a_manager_and_a_hardened_unit_in_tmp(hello: Path, tmp_path: Path) -> None:
    exp = exp_of([
        {"name": "unit", "runtime": "systemd", "command": [str(hello), "--port", "{port}"]},
        {"name": "hardened", "runtime": "systemd", "command": [str(tmp_path / "hello"), "--port", "{port}"],
         "properties": {"PrivateTmp": "yes"}},
    ])
    shutil.copy(hello, tmp_path / "hello")
    v = verdicts(exp)
    assert "sandbox hides it" in v["hardened"].reason and str(tmp_path) in v["hardened"].reason
    if os.path.isdir("/run/systemd/system"):
        assert v["unit"].ok
    else:
        assert "no systemd manager" in v["unit"].reason and "PID 1" in v["unit"].reason


def test_kvm_is_checked_as_usable_not_only_present() -> None:
    exp = exp_of([{"name": "vm", "runtime": "vm", "command": ["sh", "-c", "exit 1", "-accel", "kvm"]}])
    v = verdicts(exp)["vm"]
    pvm_only = (os.path.isdir("/sys/module/kvm_pvm") and not os.path.isdir("/sys/module/kvm_intel")
                and not os.path.isdir("/sys/module/kvm_amd"))
    if not os.path.exists("/dev/kvm"):
        assert "/dev/kvm is absent" in v.reason
    elif pvm_only:  # this workplace: /dev/kvm exists and answers, but boots no stock kernel
        assert "PVM" in v.reason and "-accel tcg" in v.fix
    else:
        assert v.ok, v.line()


# ------------------------------------------------------------------------------------------- partial runs

def test_a_run_skips_what_cannot_run_reports_why_everywhere_and_falls_back_for_the_reference(hello: Path) -> None:
    exp = exp_of([{"name": "ghost", "runtime": "process", "command": ["/nonexistent/edge-dns", "{port}"]},
                  {"name": "a", "runtime": "process", "command": [str(hello), "--port", "{port}"]},
                  {"name": "b", "runtime": "process", "command": [str(hello), "--port", "{port}"]}],
                 repeat=2, warmup=0, phases=["cold_start"], reference="ghost")
    emitted: list[Any] = []
    told: list[list[Verdict]] = []
    result = asyncio.run(Runner(exp, emit=emitted.append, on_preflight=told.append).run())
    assert [[vd.ok for vd in t] for t in told] == [[False, True, True]]  # before the first sample
    by = {v.name: v for v in result.variants}
    assert by["ghost"].skipped.startswith("/nonexistent/edge-dns is missing")
    assert by["ghost"].startup_ms is None and not by["ghost"].error
    assert by["a"].startup_ms is not None and by["a"].startup_ms.n == 2 and not by["a"].skipped
    assert [c.reference for c in result.comparisons] == ["a"]
    assert any("reference: ghost did not run" in w and "use a instead" in w for w in result.warnings)
    assert result.methodology["reference"] == "a" and result.status == "finished"
    # JSON, table, Markdown, events (run_sample "skipped") and summaries (fleet report) all carry the reason
    assert json.loads(render("json", [result]))["variants"][0]["skipped"] == by["ghost"].skipped
    for fmt in ("table", "markdown"):
        assert "ghost: skipped (pre-flight) — /nonexistent/edge-dns is missing" in render(fmt, [result])
    skipped = [s for s in emitted if s.tags["figure"] == "skipped"]
    assert [s.tags["variant"] for s in skipped] == ["ghost"] and "missing" in str(skipped[0].fields["reason"])
    assert [s.tags["variant"] for s in summary_samples(result) if s.tags["figure"] == "skipped"] == ["ghost"]


def test_strict_stops_before_the_first_sample(hello: Path) -> None:
    exp = exp_of([{"name": "ghost", "runtime": "process", "command": ["/nonexistent/x"]},
                  {"name": "a", "runtime": "process", "command": [str(hello), "--port", "{port}"]}],
                 repeat=2, warmup=0, phases=["cold_start"])
    emitted: list[Any] = []
    with pytest.raises(ExperimentError, match=r"strict: 1 of 2 variants cannot run here: variant ghost: "):
        asyncio.run(Runner(exp, emit=emitted.append, strict=True).run())
    assert [s for s in emitted if s.tags["figure"] == "startup_ms"] == []


def test_narrow_drops_stacks_and_platforms_of_skipped_variants() -> None:
    exp = exp_of([{"name": n, "runtime": "process", "command": ["true"]} for n in ("web", "api", "web-ctr")],
                 phases=["stack", "overhead"],
                 stack={"stacks": [{"name": "p", "services": ["web", "api"]}, {"name": "c", "services": ["web-ctr"]}]},
                 overhead={"platforms": {"web-ctr": {"processes": ["dockerd"]}, "web": {}}})
    narrowed, notes = narrow(exp, ["web", "api"], {"web-ctr": "podman: no store"})
    assert [st.name for st in narrowed.stack.stacks] == ["p"] and list(narrowed.overhead.platforms) == ["web"]
    assert notes == ["stack c: not booted — its service(s) web-ctr did not run"]
    assert narrow(exp, ["web", "api", "web-ctr"]) == (exp, [])


def test_repeat_applies_to_every_phase_that_repeats() -> None:
    exp = exp_of([{"name": "a", "runtime": "process", "command": ["true", "{peer}", "{role}"]}],
                 phases=["benchmark", "stack", "interservice"],
                 benchmark={"command": ["true"], "score": "(x)", "repeat": 10},
                 stack={"repeat": 10, "stacks": [{"name": "s", "services": ["a"]}]}, interservice={"repeat": 3})
    r = with_repeat(exp, 2)
    assert (r.repeat, r.benchmark.repeat, r.stack.repeat, r.interservice.repeat) == (2, 2, 2, 2)


# ------------------------------------------------------------------------------------------------ the CLI

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def test_validate_says_a_kubernetes_manifest_is_not_an_experiment_file() -> None:
    r = cli("validate", "configs/experiments/kubernetes/hello-hostport.yaml")
    assert r.returncode == 1 and "this is not an experiment file" in r.stderr and "unknown key" not in r.stderr


def test_validate_here_exit_code_tells_whether_anything_would_run(hello: Path, tmp_path: Path) -> None:
    some = tmp_path / "some.yaml"
    some.write_text(json.dumps({"name": "some", "ready": READY, "variants": [
        {"name": "native", "runtime": "process", "command": ["{workloads}/hello", "--port", "{port}"]},
        {"name": "gone", "runtime": "process", "command": ["{here}/gone", "--port", "{port}"]}]}))
    none = tmp_path / "none.yaml"
    none.write_text(json.dumps({"name": "none", "ready": READY, "variants": [
        {"name": "gone", "runtime": "process", "command": ["{here}/gone"]}]}))
    r = cli("validate", "--here", str(some))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 of 2 variants would run here" in r.stdout and "✓ native (process): will run" in r.stdout
    assert f"⊘ gone (process): skipped — {tmp_path}/gone is missing" in r.stdout
    r = cli("validate", "--here", str(none))
    assert r.returncode == 1 and "0 of 1 variants would run here" in r.stdout
    assert cli("validate", str(none)).returncode == 0  # without --here: the file itself is valid


def test_run_with_variant_picks_and_an_unknown_variant_is_refused(hello: Path, tmp_path: Path) -> None:
    f = tmp_path / "pick.yaml"
    f.write_text(json.dumps({"name": "pick", "ready": READY, "repeat": 2, "warmup": 0, "phases": ["cold_start"],
                             "variants": [{"name": n, "runtime": "process",
                                           "command": ["{workloads}/hello", "--port", "{port}"]} for n in "abc"]}))
    out = tmp_path / "r.json"
    r = cli("run", str(f), "--variant", "b", "--variant", "c", "--json", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert [v["name"] for v in json.loads(out.read_text())["variants"]] == ["b", "c"]
    assert "pre-flight" in r.stderr and "2 of 2 variants will run" in r.stderr
    r = cli("run", str(f), "--variant", "z")
    assert r.returncode == 2 and "--variant z: not a variant" in r.stderr and "Traceback" not in r.stderr


def test_workloads_placeholder_resolves_to_one_documented_place(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = exp_of([{"name": "a", "runtime": "process", "command": ["{workloads}/hello", "--port", "{port}"]}])
    assert with_workloads(exp, "/opt/w").variants[0].command[0] == "/opt/w/hello"
    assert workloads_dir("/srv/w") == "/srv/w"
    expected = "/usr/lib/runlab/workloads" if os.path.isdir("/usr/lib/runlab/workloads") else str(WORKLOADS)
    assert workloads_dir() == expected
    exp2, _ = load_file(REPO / "configs" / "experiments" / "local-runtimes.yaml")
    assert "{workloads}" not in repr(with_workloads(exp2, "/x").variants)


def test_a_failed_start_is_named_by_its_phase_and_every_one_is_in_the_json(hello: Path, tmp_path: Path) -> None:
    """Two good cold starts, then the load phase's start fails: "load: …", never "footprint: …"."""
    count = tmp_path / "n"
    count.write_text("0")
    script = (f'n=$(cat {count}); echo $((n+1)) > {count}; if [ "$n" -ge 2 ]; then echo "broken on start $n"; '
              f'exit 3; fi; exec {hello} --port "$1"')
    exp = exp_of([{"name": "flaky", "runtime": "process", "command": ["sh", "-c", script, "sh", "{port}"]}],
                 repeat=2, warmup=0, phases=["cold_start", "load"], load={"requests": 10, "concurrency": 1})
    result = asyncio.run(Runner(exp).run())
    v = result.variants[0]
    assert v.startup_ms is not None and v.startup_ms.n == 2
    assert v.error.startswith("load: ") and "broken on start 2" in v.error, v.error
    assert [f.split(":")[0] for f in v.failed_starts] == ["load"]
    data = json.loads(render("json", [result]))["variants"][0]
    assert data["failed_starts"] == v.failed_starts and "footprint" not in data["error"]
