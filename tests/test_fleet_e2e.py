"""Fleet control end to end: `runlab` (a real subprocess) → Mosquitto → real agents → collector → InfluxDB → report.

Tiny experiments (the static hello server, 3 cold starts, no warm-up) keep each push to seconds; the
agents trust a key generated here and their policy allows exactly that binary.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from collector.config import CollectorMqtt
from collector.ops.config import OperatorConfig
from collector.ops.link import Link
from collector.ops.push import retained_statuses
from runlab import control, topics
from runlab.devservers import InfluxV1
from tests.conftest import REPO, RunlabProcess, Stack, v1_section, wait_until
from tests.test_operator import runlab, write_config

HELLO = REPO / "build" / "cache" / "workloads" / "hello"
CANCEL_DELAY_MS = "40"  # slow enough starts that a run of 1000 lasts a while


@dataclass
class Fleet:
    stack: Stack
    influx: InfluxV1
    config: Path  # the operator's runlab.yaml
    pub: Path

    def agent(self, node: str, groups: list[str] | None = None) -> RunlabProcess:
        extra = (f"groups: {json.dumps(groups or [])}\ntrust:\n  keys: [{self.pub}]\n"
                 f"policy:\n  runtimes: [process]\n  commands: ['{HELLO}']\n")
        return self.stack.agent(node, interval="1s", extra=extra).start()

    def online(self, *nodes: str) -> None:
        cfg = OperatorConfig(mqtt=CollectorMqtt(url=self.stack.mq.url, client_id="t"))

        def all_online() -> bool:
            with Link(cfg) as link:
                st = {s.node: s for s in retained_statuses(link)}
            return all(n in st and st[n].online for n in nodes)
        wait_until(all_online, timeout=60, what=f"{', '.join(nodes)} online", interval=0.3)

    def experiment(self, name: str, repeat: int = 3, delay_ms: str = "0") -> Path:
        f = self.stack.tmp / f"{name}.yaml"
        f.write_text(f"name: {name}\nrepeat: {repeat}\nwarmup: 0\nsettle: 100ms\n"
                     f"phases: [cold_start, footprint, size]\nready:\n  http: 'http://127.0.0.1:{{port}}/'\n"
                     f"  timeout: 10s\nvariants:\n"
                     f"  - name: native\n    runtime: process\n"
                     f"    command: ['{HELLO}', '--port', '{{port}}', '--delay-ms', '{delay_ms}']\n"
                     f"  - name: slower\n    runtime: process\n"
                     f"    command: ['{HELLO}', '--port', '{{port}}', '--delay-ms', '20']\n")
        return f


@pytest.fixture(scope="session")
def hello() -> Path:
    """The static hello server (build.sh builds it first; the podman and microVM parts are not needed here)."""
    if not HELLO.exists():
        subprocess.run(["bash", str(REPO / "build" / "workloads" / "build.sh"), str(HELLO.parent)],
                       capture_output=True, text=True, timeout=900, check=False)
    assert HELLO.exists(), "build/workloads/build.sh did not build the hello server: run `make workloads`"
    return HELLO


@pytest.fixture
def fleet(stack: Stack, influx: InfluxV1, hello: Path) -> Iterator[Fleet]:
    priv, pub = control.generate_keys(stack.tmp / "keys")
    stack.collector(v1_section(influx)).start().wait_subscribed()
    yield Fleet(stack, influx, write_config(stack.tmp, stack.mq.url, influx, key=priv), pub)


def report_json(cfg: Path, what: str) -> dict:  # type: ignore[type-arg]
    r = runlab("report", what, "--format", "json", config=cfg)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_push_wait_runs_on_the_node_and_reports_from_influxdb(fleet: Fleet) -> None:
    fleet.agent("node-a")
    fleet.online("node-a")
    exp = fleet.experiment("e2e-hello")
    r = runlab("push", str(exp), "--to", "node-a", "--wait", "--timeout", "5m", config=fleet.config, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr + fleet.stack.procs[-1].log()[-3000:]
    run = r.stdout.splitlines()[0]
    assert topics.valid_name(run)
    assert "node-a: finished" in r.stderr or "finished" in r.stderr
    assert "Cold start" in r.stdout and "native" in r.stdout and "slower" in r.stdout  # the final table
    data = report_json(fleet.config, run)
    assert data["experiment"] == "e2e-hello" and data["status"] == "finished"
    by = {v["name"]: v for v in data["variants"]}
    assert by["native"]["node"] == "node-a" and by["native"]["startup_ms"]["n"] == 3
    # hello sleeps 20 ms before listening: a lower bound for every start, however loaded the machine is
    assert min(by["slower"]["startup_ms"]["samples"]) >= 20 and by["native"]["startup_ms"]["median"] > 0
    assert by["native"]["footprint"]["pss_bytes"] > 0 and by["native"]["size"]["bytes"] == HELLO.stat().st_size
    # the retained order was cleared once the node ended the run
    cfg = OperatorConfig(mqtt=CollectorMqtt(url=fleet.stack.mq.url, client_id="t"))
    with Link(cfg) as link:
        link.subscribe(topics.node_experiment("node-a", "+"))
        assert [t for t, p, ret in link.barrier() if ret and p] == []
    runs = json.loads(runlab("runs", "--format", "json", config=fleet.config).stdout)
    assert [(x["run"], x["node"], x["status"]) for x in runs] == [(run, "node-a", "finished")]


def test_a_group_push_runs_on_both_agents_and_the_report_puts_them_side_by_side(fleet: Fleet) -> None:
    fleet.agent("node-a", ["lab"])
    fleet.agent("node-b", ["lab", "edge"])
    fleet.agent("node-c", ["other"])  # not in the group: must not run it
    fleet.online("node-a", "node-b", "node-c")
    exp = fleet.experiment("e2e-group")
    r = runlab("push", str(exp), "--group", "lab", "--wait", "--no-live", "--timeout", "5m", config=fleet.config,
               timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    run = r.stdout.splitlines()[0]
    assert "node-a: finished" in r.stderr and "node-b: finished" in r.stderr and "node-c" not in r.stderr
    assert "side by side" in r.stdout and "node-a" in r.stdout and "node-b" in r.stdout
    data = report_json(fleet.config, "e2e-group")
    assert data["run"] == run
    assert sorted({(v["node"], v["name"]) for v in data["variants"]}) == [
        ("node-a", "native"), ("node-a", "slower"), ("node-b", "native"), ("node-b", "slower")]
    assert all(v["startup_ms"]["n"] == 3 for v in data["variants"])
    nodes = {n["node"]: n for n in json.loads(runlab("nodes", "--format", "json", config=fleet.config).stdout)}
    assert nodes["node-b"]["groups"] == ["lab", "edge"] and nodes["node-c"]["online"] is True


def hello_running(fleet: Fleet) -> bool:
    """A workload of this test's agents is up (their children only: other tests may run hello at the same time)."""
    for agent in fleet.stack.procs:
        if agent.proc is None or agent.module != "agent":
            continue
        try:
            children = psutil.Process(agent.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for p in children:
            with contextlib.suppress(psutil.Error):
                if str(HELLO) in " ".join(p.cmdline()):
                    return True
    return False


def test_ctrl_c_stops_waiting_not_the_run_and_cancel_stops_it_cleanly(fleet: Fleet) -> None:
    fleet.agent("node-a")
    fleet.online("node-a")
    exp = fleet.experiment("e2e-cancel", repeat=1000, delay_ms=CANCEL_DELAY_MS)
    push = subprocess.Popen([sys.executable, "-m", "collector.operator", "--config", str(fleet.config), "push",
                             str(exp), "--to", "node-a", "--wait"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watch: subprocess.Popen[str] | None = None
    try:
        assert push.stdout is not None
        run = push.stdout.readline().strip()
        assert topics.valid_name(run), run
        wait_until(lambda: hello_running(fleet), timeout=120, what="a workload of the run to be up", interval=0.01)
        push.send_signal(signal.SIGINT)
        _, err = push.communicate(timeout=60)
        assert push.returncode == 130, err
        assert f"stopped waiting; run {run} goes on" in err and f"runlab cancel {run}" in err
        watch = subprocess.Popen([sys.executable, "-m", "collector.operator", "--config", str(fleet.config),
                                  "watch", run, "--timeout", "5m"], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert watch.stdout is not None
        assert "watching run" in watch.stdout.readline()  # subscribed: from here on it sees every event
        wait_until(lambda: hello_running(fleet), timeout=30, what="the run to go on without the CLI", interval=0.01)
        c = runlab("cancel", run, config=fleet.config)
        assert c.returncode == 0, c.stderr
        assert "node-a" in c.stdout
        out, err = watch.communicate(timeout=120)
    finally:
        for p in (push, watch):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert watch.returncode == 1, out + err  # the run ended, not as finished
    assert "cancelled" in out and "cold start" in out
    wait_until(lambda: any(x["run"] == run and x["status"] == "cancelled" for x in
                           json.loads(runlab("runs", "--format", "json", config=fleet.config).stdout)),
               timeout=60, what="runs to show the run cancelled")
    assert not hello_running(fleet)
    n = fleet.influx.rows(f"SELECT count(\"value\") FROM run_sample WHERE \"run\" = '{run}'")[0][1]
    assert n < 2000  # stopped long before its 2 × 1000 starts


def test_push_wait_exits_1_with_the_agents_reason_when_the_policy_refuses(fleet: Fleet) -> None:
    fleet.agent("node-a")
    fleet.online("node-a")
    exp = fleet.stack.tmp / "outside.yaml"
    exp.write_text("name: outside\nrepeat: 3\nwarmup: 0\nready:\n  tcp: '127.0.0.1:{port}'\nvariants:\n"
                   "  - name: shell\n    runtime: process\n    command: ['/bin/sh', '-c', 'sleep 1']\n")
    r = runlab("push", str(exp), "--to", "node-a", "--wait", "--timeout", "2m", config=fleet.config, timeout=200)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "node-a: rejected: " in r.stderr and "policy.commands" in r.stderr
    assert "Cold start" not in r.stdout  # no report for a run that never ran


def test_push_wait_to_an_offline_node_finishes_once_it_comes_back(fleet: Fleet) -> None:
    exp = fleet.experiment("e2e-offline")
    push = subprocess.Popen([sys.executable, "-m", "collector.operator", "--config", str(fleet.config), "push",
                             str(exp), "--to", "node-a", "--wait", "--timeout", "5m"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert push.stdout is not None
        run = push.stdout.readline().strip()  # published (retained) while no agent is up
        assert topics.valid_name(run)
        fleet.agent("node-a")
        out, err = push.communicate(timeout=300)
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()
    assert push.returncode == 0, err
    assert "e2e-offline — run " + run in out
    runs = json.loads(runlab("runs", "--format", "json", config=fleet.config).stdout)
    assert [(x["run"], x["status"]) for x in runs] == [(run, "finished")]


def test_a_second_push_queues_visibly_in_runs_and_runs_after_the_first_is_cancelled(fleet: Fleet) -> None:
    fleet.agent("node-a")
    fleet.online("node-a")
    first = runlab("push", str(fleet.experiment("e2e-long", repeat=1000, delay_ms=CANCEL_DELAY_MS)), "--to",
                   "node-a", config=fleet.config).stdout.strip()
    second = runlab("push", str(fleet.experiment("e2e-next")), "--to", "node-a", config=fleet.config).stdout.strip()

    def statuses() -> dict[str, dict]:  # type: ignore[type-arg]
        r = runlab("runs", "--format", "json", config=fleet.config)
        return {x["run"]: x for x in json.loads(r.stdout)}
    wait_until(lambda: statuses().get(second, {}).get("status") == "queued"
               and statuses().get(first, {}).get("status") == "running", timeout=120,
               what="the first run running and the second queued", interval=0.5)
    table = runlab("runs", config=fleet.config).stdout
    assert "queued (place 1)" in table and "running" in table
    assert runlab("cancel", first, config=fleet.config).returncode == 0
    wait_until(lambda: statuses().get(second, {}).get("status") == "finished", timeout=120,
               what="the queued run to run once the first was cancelled", interval=0.5)
    assert statuses()[first]["status"] == "cancelled"
    assert not hello_running(fleet)
