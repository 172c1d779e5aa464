"""Grafana: the generated dashboards, their provisioning, and every panel query against real data.

Grafana itself is not installed here (no package source for it), so the structure tests below are the
schema check, and the data tests play Grafana's part: resolve the template variables with their own
queries, interpolate them the way Grafana's InfluxDB datasource does, and send every panel query as
Grafana would (POST /query, form body, Authorization: Token header) to a real InfluxDB 1.x holding what
a real agent + collector wrote and what a real experiment run (hello workload) produced.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest
import yaml

from agent.engine import Runner
from agent.sampler import HostSampler, read_pi_throttled
from runlab import topics, wire
from runlab.devservers import InfluxV1, Mosquitto, http
from runlab.experiment import parse
from runlab.results import ExperimentResult, summary_samples
from tests.conftest import REPO, Stack, need, wait_until
from tests.helpers import Publisher

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "runlab.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "runlab.yaml"
ENV_FILE = GRAFANA / "grafana.env"
DOCS = REPO / "docs" / "grafana.md"
DS = {"type": "influxdb", "uid": "runlab-influxdb"}
INSTALL_PATH = "/var/lib/grafana/dashboards/runlab"
EXPECTED = {"runlab-fleet.json": ("runlab-fleet", "runlab — fleet"),
            "runlab-experiments.json": ("runlab-experiments", "runlab — experiment comparison"),
            "runlab-live-run.json": ("runlab-live-run", "runlab — live run")}

# Grafana's macros, as the brief for these tests fixes them.
BUILTINS = {"timeFilter": "time > now() - 1h", "__interval": "10s"}
# $var, ${var}, ${var:format}, [[var]] — the forms Grafana interpolates.
VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")
# The only queries without $timeFilter: a node's status is written only when it changes, so "the last
# status" must look back over all time.
NO_TIME_FILTER = {("runlab-fleet", "Nodes")}

NODE, GONE = "gf-node", "gf-gone"

# Panels that need something this kind of machine may not have. Where the machine lacks it the panel
# is empty by design (the agent leaves out fields it cannot read); the test then says so and proves
# the query on a point carrying the real field names instead. Where the machine has it, real data must
# fill the panel like any other.
CAPABILITIES = {
    "thermal sensors": "psutil.sensors_temperatures() finds none (usual in VMs and containers)",
    "Raspberry Pi firmware throttling flags": "no /sys/devices/platform/soc/soc:firmware/get_throttled "
                                              "(only Raspberry Pis have it)",
    "a CPU clock reading": "psutil.cpu_freq() gives none (some VMs, containers and ARM boards)",
}
NEEDS = {("runlab-fleet", "Temperature"): "thermal sensors",
         ("runlab-live-run", "Host temperature"): "thermal sensors",
         ("runlab-fleet", "Raspberry Pi throttling"): "Raspberry Pi firmware throttling flags",
         ("runlab-fleet", "CPU clock"): "a CPU clock reading"}
# Panels a bug outside deploy/grafana keeps empty (none now: the engine's load points used to carry an
# integer `ok` that clashed with the cold starts' boolean `ok`; they carry `succeeded` since).
KNOWN_BUGS: dict[tuple[str, str], str] = {}
SYNTHETIC_FIELDS = {"thermal sensors": "temp_synthetic_c=47.5",
                    "Raspberry Pi firmware throttling flags": "under_voltage=false,arm_freq_capped=false,"
                                                              "throttled=true,soft_temp_limit=false",
                    "a CPU clock reading": "cpu_freq_mhz=1500.0"}


def machine_has(capability: str) -> bool:
    if capability == "thermal sensors":
        return bool(HostSampler._temperatures())
    if capability == "a CPU clock reading":
        freq = psutil.cpu_freq()
        return freq is not None and bool(freq.current) and math.isfinite(freq.current)
    return read_pi_throttled() is not None


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runlab_grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def targets(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield panel, t


def referenced(text: str) -> set[str]:
    return {a or b or c for a, b, c in VAR_RE.findall(text)}


def grafana_expand(value: str, env: dict[str, str]) -> str:
    """Grafana's provisioning expansion (os.ExpandEnv after $$ → $): $VAR or ${VAR}, unset → ""."""
    return "$".join(re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), part)
                    for part in value.split("$$"))


def strings(node: Any) -> Iterator[str]:
    """Every string value of parsed YAML (Grafana expands values, never comments or keys)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def env_defaults() -> dict[str, str]:
    out = {}
    for line in ENV_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# --- structure: the schema check --------------------------------------------------------------------------------


def test_committed_json_is_the_generators_output() -> None:
    rendered = load_generator().render()
    assert sorted(rendered) == sorted(EXPECTED)
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(EXPECTED), "stray or missing JSON files"
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == text, \
            f"{name} is out of date: run python3 deploy/grafana/generate.py"


def test_generator_check_mode_agrees() -> None:
    r = subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_uids_and_titles() -> None:
    dashes = load_dashboards()
    assert {name: (d["uid"], d["title"]) for name, d in dashes.items()} == EXPECTED
    assert len({d["uid"] for d in dashes.values()}) == len({d["title"] for d in dashes.values()}) == len(dashes)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_structure(name: str) -> None:
    dash = load_dashboards()[name]
    uid = dash["uid"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["id"] is None, "provisioned dashboards carry no database id"
    assert dash["time"]["from"].startswith("now-") and dash["time"]["to"] == "now"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert len(variables) == len(dash["templating"]["list"]), "duplicate variable names"
    for v in variables.values():
        assert v["type"] == "query" and v["datasource"] == DS, v["name"]
        assert v["query"].startswith("SHOW TAG VALUES FROM ")
        # A variable may use the ones before it (Grafana resolves them in order), never itself or a later one.
        earlier = list(variables)[:list(variables).index(v["name"])]
        assert referenced(v["query"]) <= set(earlier), f"{v['name']}: {v['query']}"

    ids = [p["id"] for p in dash["panels"]]
    assert all(type(i) is int for i in ids) and len(set(ids)) == len(ids), ids
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        where = f"{name} panel {panel['id']} {panel.get('title')!r}"
        assert panel["title"] and panel["type"] in {"timeseries", "stat", "table", "state-timeline", "barchart",
                                                    "histogram", "bargauge"}, where
        assert panel["datasource"] == DS, where
        g = panel["gridPos"]
        assert {k: type(g[k]) for k in "hwxy"} == dict.fromkeys("hwxy", int), where
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, where
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{where} overlaps another panel"
        cells |= mine
        assert panel["targets"], where
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), where
    for panel, t in targets(dash):
        where = f"{name} panel {panel['id']} {panel['title']!r} target {t['refId']}"
        assert t["datasource"] == DS and t["rawQuery"] is True, where
        q = t["query"]
        assert q.startswith("SELECT ") and "\n" not in q, where
        assert referenced(q) <= set(variables) | set(BUILTINS), f"{where}: unknown variable in {q}"
        if (uid, panel["title"]) not in NO_TIME_FILTER:
            assert "$timeFilter" in q, where
        if "GROUP BY time(" in q:
            assert "GROUP BY time($__interval)" in q, where
        for var in variables:  # template variables are matched as regexes: single, multi and All all work
            for m in re.finditer(rf"\"?(\w+)\"?\s*(=~|!~|=|!=)\s*['/]?\^?\${var}\b", q):
                assert m.group(2) == "=~" and f"/^${var}$/" in q, f"{where}: ${var} must be used as /^${var}$/"
        # $tag_x in an alias needs x among the GROUP BY tags.
        group = q.split("GROUP BY", 1)[1] if "GROUP BY" in q else ""
        for tag in re.findall(r"\$tag_(\w+)", t.get("alias", "")):
            assert f'"{tag}"' in group, f"{where}: alias uses $tag_{tag}, not grouped by it"


def test_live_run_dashboard_refreshes_every_second() -> None:
    live = load_dashboards()["runlab-live-run.json"]
    assert live["refresh"] == "1s" and "1s" in live["timepicker"]["refresh_intervals"]
    # Grafana clamps refresh to min_refresh_interval (5s unless told otherwise): the env file tells it.
    assert env_defaults()["GF_DASHBOARDS_MIN_REFRESH_INTERVAL"] == "1s"


def test_datasource_provisioning() -> None:
    text = DATASOURCES.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert (ds["uid"], ds["type"], ds["access"]) == (DS["uid"], DS["type"], "proxy")
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["isDefault"] is False  # never fights another provisioned default datasource
    # Every variable it uses has a default in grafana.env, and expands as Grafana would.
    env = env_defaults()
    used = {a or b for value in strings(doc) for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", value)}
    assert used == {"RUNLAB_INFLUX_URL", "RUNLAB_INFLUX_DATABASE", "RUNLAB_INFLUX_TOKEN"}
    assert used <= set(env), f"no default in {ENV_FILE.name} for {used - set(env)}"
    assert grafana_expand(ds["url"], env) == "http://127.0.0.1:8086"
    assert grafana_expand(ds["jsonData"]["dbName"], env) == grafana_expand(ds["database"], env) == "runlab"
    assert grafana_expand(ds["secureJsonData"]["httpHeaderValue1"], {**env, "RUNLAB_INFLUX_TOKEN": "t0k"}) == \
        "Token t0k"
    over = {**env, "RUNLAB_INFLUX_URL": "http://influxdb:8181", "RUNLAB_INFLUX_DATABASE": "lab"}
    assert (grafana_expand(ds["url"], over), grafana_expand(ds["jsonData"]["dbName"], over)) == \
        ("http://influxdb:8181", "lab")


def test_dashboard_provider_points_at_the_installed_dashboards() -> None:
    doc = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == INSTALL_PATH
    assert provider["folder"] == "runlab"
    # The docs say where deploy/grafana/dashboards and the provisioning directory go.
    docs = DOCS.read_text(encoding="utf-8")
    assert INSTALL_PATH in docs and "deploy/grafana/dashboards" in docs
    assert "/etc/grafana/provisioning" in docs and "deploy/grafana/provisioning" in docs


# --- every panel query against real data --------------------------------------------------------------------------


@dataclass
class Store:
    """An InfluxDB 1.x database, queried the way Grafana's InfluxQL datasource sends queries."""

    url: str
    database: str
    token: str = field(default_factory=lambda: env_defaults()["RUNLAB_INFLUX_TOKEN"])

    def query(self, q: str) -> list[dict[str, Any]]:
        body = urllib.parse.urlencode({"q": q, "db": self.database, "epoch": "ms"}).encode()
        req = urllib.request.Request(f"{self.url}/query", data=body, method="POST", headers={
            "Authorization": f"Token {self.token}", "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=30) as r:
            res = json.loads(r.read())["results"][0]
        if "error" in res:
            raise AssertionError(f"InfluxDB refused {q!r}: {res['error']}")
        return list(res.get("series") or [])

    def write(self, lines: str) -> None:
        status, body = http("POST", f"{self.url}/write?db={self.database}&precision=ns", lines.encode())
        assert status == 204, body


@dataclass
class Filled:
    store: Store
    result: ExperimentResult


def hello_binary() -> Path:
    """The hello workload (build/workloads/build.sh, process only: no podman, no QEMU needed here)."""
    out = REPO / "build" / "cache" / "workloads"
    r = subprocess.run(["bash", str(REPO / "build" / "workloads" / "build.sh"), str(out)], capture_output=True,
                       text=True, timeout=900, env={**os.environ, "RUNLAB_WORKLOADS": "process"})
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "hello"


def run_experiment(hello: Path) -> tuple[ExperimentResult, list[wire.Sample]]:
    """Three variants: a plain start, one 20 ms slower, one that always fails (fills the error panel)."""
    exp = parse({
        "name": "grafana-e2e", "repeat": 5, "warmup": 1, "settle": "100ms",
        "phases": ["cold_start", "footprint", "size", "load"],
        "variants": [
            {"name": "native", "runtime": "process", "command": [str(hello), "--port", "{port}"]},
            {"name": "delayed", "runtime": "process",
             "command": [str(hello), "--port", "{port}", "--delay-ms", "20"]},
            {"name": "broken", "runtime": "process", "command": [str(hello), "--bogus"]}],
        "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "5s"},
        "load": {"requests": 200, "concurrency": 4},
    }, "grafana-e2e.yaml")
    emitted: list[wire.Sample] = []
    result = asyncio.run(Runner(exp, node=NODE, emit=emitted.append).run())
    return result, emitted


def publish(mq: Mosquitto, node: str, samples: list[wire.Sample], boot: str) -> None:
    """Send samples the way an agent does: SampleBatches on the node's topic, written by the real collector."""
    pub = Publisher(mq, client_id=f"gf-test-{uuid.uuid4().hex[:6]}")
    try:
        for seq, i in enumerate(range(0, len(samples), 100)):
            batch = wire.SampleBatch(v=wire.WIRE_VERSION, node=node, boot=boot, seq=seq, samples=samples[i:i + 100])
            pub.publish(topics.samples(node), wire.encode(batch))
    finally:
        pub.close()


def points(store: Store, q: str) -> int:
    return sum(len(s["values"]) for s in store.query(q))


def buckets(store: Store, measurement: str, fld: str, where: str = "") -> int:
    """Distinct 10 s intervals holding points: a derivative over GROUP BY time(10s) needs two."""
    series = store.query(f'SELECT count("{fld}") FROM "{measurement}" WHERE time > now() - 1h {where}'
                         "GROUP BY time(10s) fill(none)")
    return sum(len(s["values"]) for s in series)


@pytest.fixture(scope="module")
def filled(influx_server: InfluxV1, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    """Broker + collector + two agents (one stopped: offline) + one experiment run, all in one database."""
    need("mosquitto")
    hello = hello_binary()
    tmp = tmp_path_factory.mktemp("grafana")
    store = Store(influx_server.url, f"grafana_{uuid.uuid4().hex[:8]}")
    store.query(f'CREATE DATABASE "{store.database}"')
    mq = Mosquitto(tmp / "mosquitto")
    mq.start()
    stack = Stack(tmp, mq)
    try:
        stack.collector(f"  url: {store.url}\n  api: v1\n  database: {store.database}").start().wait_subscribed()
        stack.agent(NODE).start()
        gone = stack.agent(GONE).start()
        for node in (NODE, GONE):
            def has_host(n: str = node) -> bool:
                return points(store, f"SELECT cpu_percent FROM host WHERE node = '{n}'") > 0
            wait_until(has_host, what=f"host samples of {node}")
        result, emitted = run_experiment(hello)  # while the agent samples the host
        summary = summary_samples(result)
        publish(mq, NODE, emitted + summary, boot=f"run-{result.run}")
        gone.stop()  # SIGTERM: the agent publishes its offline status
        # One ordered stream: once the summaries (published last) are in, the raw samples were written.
        wait_until(lambda: points(store, 'SELECT * FROM "run_summary"') == len(summary), what="the run summaries")
        wait_until(lambda: store.query(f"SELECT last(online) FROM node_status WHERE node = '{GONE}'")[0]
                   ["values"][0][1] is False, what=f"{GONE} offline")
        wait_until(lambda: buckets(store, "host", "cpu_percent", f"AND node = '{NODE}' ") >= 2
                   and buckets(store, "collector", "samples_written") >= 2, timeout=45,
                   what="host and collector points in two 10 s intervals")
        yield Filled(store, result)
    finally:
        stack.stop_all()
        mq.stop()


def regex_escape(value: str) -> str:
    """Grafana's escapeRegex, applied to variable values interpolated into /…/."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def resolve(store: Store, dash: dict[str, Any]) -> dict[str, str]:
    """Run the variable queries in order, like Grafana: multi-value ones select All, others their first value."""
    values: dict[str, str] = {}
    for v in dash["templating"]["list"]:
        series = store.query(interpolate(v["query"], values))
        found = sorted({row[1] for s in series for row in s["values"]}, reverse=v["sort"] == 2)
        assert found, f"{dash['uid']}: variable {v['name']} has no values ({v['query']})"
        values[v["name"]] = ("(" + "|".join(map(regex_escape, found)) + ")" if v["includeAll"]
                             else regex_escape(found[0]))
    return values


def interpolate(q: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return {**BUILTINS, **values}[name]
    return VAR_RE.sub(sub, q)


def has_values(series: list[dict[str, Any]]) -> bool:
    return any(any(x is not None for x in row[1:]) for s in series for row in s["values"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_query_returns_data(filled: Filled, name: str) -> None:
    dash = load_dashboards()[name]
    values = resolve(filled.store, dash)
    empty, gated = [], []
    for panel, t in targets(dash):
        q = interpolate(t["query"], values)
        if has_values(filled.store.query(q)):
            continue
        need_ = NEEDS.get((dash["uid"], panel["title"]))
        if (dash["uid"], panel["title"]) in KNOWN_BUGS:
            continue  # test_panels_kept_empty_by_known_bugs
        if need_ is not None and not machine_has(need_):
            gated.append(f"{panel['title']!r} needs {need_}: {CAPABILITIES[need_]}")
        else:
            empty.append(f"panel {panel['id']} {panel['title']!r}: {q}")
    assert not empty, "queries that returned no series:\n" + "\n".join(empty)
    for g in gated:  # proven on a point with the real field names in test_capability_gated_panels
        warnings.warn(f"{name}: {g} — empty on this machine", stacklevel=1)


def test_capability_gated_panels(filled: Filled, influx_server: InfluxV1) -> None:
    """Panels this machine cannot fill: its real data lacks the fields, and the query works on them elsewhere."""
    dashes = {d["uid"]: d for d in load_dashboards().values()}
    keys = {row[0] for s in filled.store.query('SHOW FIELD KEYS FROM "host"') for row in s["values"]}
    synthetic = Store(influx_server.url, f"{filled.store.database}_synthetic")
    synthetic.query(f'CREATE DATABASE "{synthetic.database}"')
    for (uid, title), capability in NEEDS.items():
        has = machine_has(capability)
        fields = [f.split("=")[0] for f in SYNTHETIC_FIELDS[capability].split(",")]
        real = {k for k in keys if k.startswith("temp_")} if capability == "thermal sensors" else \
            set(fields) & keys
        # The agent reports the capability exactly when the machine has it (then the panel was checked
        # on real data by test_every_panel_query_returns_data).
        assert bool(real) == has, f"{capability}: machine has it: {has}, fields written by the agent: {real}"
        if has:
            continue
        warnings.warn(f"{uid} {title!r}: this machine lacks {capability} ({CAPABILITIES[capability]}); "
                      "query proven on a synthetic point instead", stacklevel=1)
        dash = dashes[uid]
        values = resolve(filled.store, dash)
        now = time.time_ns()
        synthetic.write(f"host,node={NODE} {SYNTHETIC_FIELDS[capability]} {now}\n")
        [panel] = [p for p in dash["panels"] if p["title"] == title]
        for t in panel["targets"]:
            series = synthetic.query(interpolate(t["query"], values))
            assert has_values(series), f"{uid} {title!r}: {t['query']}"


def test_panels_show_what_the_run_measured(filled: Filled) -> None:
    """Spot checks that the numbers in the panels are the run's own, not just some data."""
    result, store = filled.result, filled.store
    dashes = {d["uid"]: d for d in load_dashboards().values()}

    def panel_series(uid: str, title: str) -> list[dict[str, Any]]:
        dash = dashes[uid]
        [panel] = [p for p in dash["panels"] if p["title"] == title]
        return store.query(interpolate(panel["targets"][0]["query"], resolve(store, dash)))

    by_variant = {v.name: v for v in result.variants}
    ci = {s["tags"]["variant"]: dict(zip(s["columns"], s["values"][0], strict=True))
          for s in panel_series("runlab-experiments", "Start time: median with 95 % CI")}
    assert set(ci) == {"native", "delayed"}
    for name, row in ci.items():
        fig = by_variant[name].startup_ms
        assert fig is not None
        assert (row["median"], row["CI low"], row["CI high"], row["n"]) == (fig.median, fig.ci_low, fig.ci_high, 5)
    assert ci["delayed"]["median"] > ci["native"]["median"] + 15
    errors = {s["tags"]["variant"]: s["values"][0][1] for s in panel_series("runlab-experiments",
                                                                           "Variants that failed")}
    assert list(errors) == ["broken"] and "exited" in errors["broken"]
    done = {s["tags"]["variant"]: s["values"][0][1] for s in panel_series("runlab-live-run", "Cold starts done")}
    assert done == {"native": 6, "delayed": 6, "broken": 6}  # 1 warm-up + 5 measured each, failures included
    compared = panel_series("runlab-experiments", "Compared with the reference: N× slower / N % faster (95 % CI)")
    sentences = [row[s["columns"].index("comparison")] for s in compared for row in s["values"]]
    assert sentences == [c.sentence for c in result.comparisons] and " slower (95 % CI " in sentences[0]
    dist = panel_series("runlab-experiments", "Start-time distribution")
    assert sorted(len(s["values"]) for s in dist) == [5, 5]  # warm-up excluded
    nodes = {s["tags"]["node"]: dict(zip(s["columns"], s["values"][0], strict=True))
             for s in panel_series("runlab-fleet", "Nodes")}
    assert {n: r["online"] for n, r in nodes.items()} == {NODE: True, GONE: False}
    assert nodes[NODE]["run"] == "-"
