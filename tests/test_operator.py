"""The operator CLI (`runlab`) against a real Mosquitto and a real InfluxDB 1.x, run as a real subprocess.

Reports are read from an InfluxDB filled with several runs' points, encoded by the collector's own line
encoder from samples shaped exactly as the agent emits them (engine ``run_sample`` tags, results.py
``run_summary``, control.py ``run_event``); the end-to-end path through real agents is tests/test_fleet_e2e.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.lineprotocol import LineEncoder
from collector.ops.config import load_config, resolve_path
from runlab import control, topics, wire
from runlab.config import ConfigError
from runlab.devservers import InfluxV1, Mosquitto, free_port
from runlab.results import ExperimentResult, Figure, Footprint, LoadFigures, Size, VariantResult, summary_samples
from tests.conftest import REPO
from tests.helpers import Publisher

LOCAL_RUNTIMES = REPO / "configs" / "experiments" / "local-runtimes.yaml"
T0 = 1_764_000_000_000_000_000  # ns, a fixed past instant: runs get distinct, ordered times


def runlab(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    pre = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "collector.operator", *pre, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def write_config(tmp: Path, mq_url: str, influx: InfluxV1 | None = None, key: Path | None = None,
                 influx_url: str | None = None) -> Path:
    url = influx_url or (influx.url if influx else "http://127.0.0.1:1")
    db = influx.database if influx else "runlab"
    cfg = tmp / "runlab.yaml"
    cfg.write_text(f"mqtt:\n  url: {mq_url}\n  connect_timeout: 5s\ninflux:\n  url: {url}\n  api: v1\n"
                   f"  database: {db}\n  timeout: 5s\n" + (f"signing:\n  key: {key}\n" if key else ""))
    return cfg


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return control.generate_keys(tmp_path / "keys")


# ------------------------------------------------------------------ data shaped like the agent's


def run_points(node: str, run: str, experiment: str, starts: dict[str, list[float]], t0: int,
               pss: dict[str, int] | None = None, status: str = "finished", load: bool = False) -> bytes:
    """Line protocol for one node's run: raw cold starts, footprint/size points, summaries, lifecycle events."""
    samples: list[wire.Sample] = []
    ts = t0
    runtimes = {"native": "process", "container": "container", "microvm": "vm"}
    samples.append(control.event_sample(control.RunEvent(node=node, run=run, experiment=experiment,
                                                         status="accepted", ts=ts)))
    variants = []
    for name, values in starts.items():
        rt = runtimes.get(name, "process")
        base = {"run": run, "experiment": experiment, "variant": name, "runtime": rt}
        ts += 1000
        samples.append(wire.Sample(ts=ts, name="run_sample", tags={**base, "figure": "startup_ms", "warmup": "true",
                                                                   "cold": "process"},
                                   fields={"value": 999.0, "i": 0, "ok": True, "throttled": False}))
        for i, v in enumerate(values, start=1):
            ts += 1000
            samples.append(wire.Sample(ts=ts, name="run_sample", tags={**base, "figure": "startup_ms",
                                                                       "warmup": "false", "cold": "process"},
                                       fields={"value": float(v), "i": i, "ok": True, "throttled": False}))
        p = (pss or {}).get(name, 1_000_000)
        ts += 1000
        samples.append(wire.Sample(ts=ts, name="run_sample", tags={**base, "figure": "footprint"},
                                   fields={"pss_bytes": p, "uss_bytes": p // 2, "rss_bytes": p * 2, "processes": 1}))
        fig = Figure.of([float(v) for v in values], "ms", [999.0])
        loads = []
        if load:
            lat = Figure.of([0.2, 0.3, 0.25, 0.4, 0.22, 0.5, 0.31], "ms")
            loads = [LoadFigures(mode="closed", url="", requests=1000, ok=1000, errors=0, concurrency=10,
                                 target_rps=0.0, achieved_rps=4000.0, duration_s=0.25, latency_ms=lat, p999_ms=0.6)]
        variants.append(VariantResult(name=name, runtime=rt, node=node, startup_ms=fig,
                                      footprint=Footprint(pss_bytes=p, uss_bytes=p // 2, rss_bytes=p * 2,
                                                          processes=1, peak_source="PSS sampled at 50 Hz"),
                                      size=Size(bytes=4096, what="file hello"), load=loads))
    result = ExperimentResult(experiment=experiment, run=run, file="x.yaml", file_sha256="", started="",
                              finished="", machine={}, methodology={}, variants=variants)
    ts += 1000
    samples += summary_samples(result, ts=ts)
    ts += 1000
    samples.append(control.event_sample(control.RunEvent(node=node, run=run, experiment=experiment,
                                                         status=status, ts=ts + 100,
                                                         reason="boom" if status == "failed" else "")))
    enc = LineEncoder(backslash=False)
    return b"\n".join(enc.line(s, {"node": node}) for s in samples)


@pytest.fixture
def filled(influx: InfluxV1) -> InfluxV1:
    """Experiment `hello-cmp`: node a ran it twice (old run slow, new run fast), node b once; plus another one."""
    influx.write(run_points("node-a", "r-old", "hello-cmp", {"native": [50.0] * 7, "microvm": [900.0] * 7}, T0))
    influx.write(run_points("node-a", "r-new", "hello-cmp", {"native": [1.0, 1.2, 1.1, 1.3, 0.9, 1.0, 1.1],
                                                             "microvm": [1500.0, 1600, 1550, 1580, 1620, 1490, 1510]},
                            T0 + 10**12, pss={"native": 300_000, "microvm": 90_000_000}, load=True))
    influx.write(run_points("node-b", "r-b", "hello-cmp", {"native": [3.0, 3.1, 2.9, 3.2, 3.0, 3.05, 2.95],
                                                           "microvm": [4000.0, 4100, 3900, 4050, 3950, 4020, 3980]},
                            T0 + 2 * 10**12))
    influx.write(run_points("node-a", "r-other", "other", {"native": [7.0] * 6}, T0 + 3 * 10**12,
                            status="failed"))
    return influx


# ------------------------------------------------------------------ config and keys


def test_config_is_found_by_flag_then_env_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert resolve_path("a.yaml", {"RUNLAB_CONFIG": "b.yaml"}, home) == (Path("a.yaml"), "--config")
    assert resolve_path(None, {"RUNLAB_CONFIG": "b.yaml"}, home) == (Path("b.yaml"), "$RUNLAB_CONFIG")
    assert resolve_path(None, {}, home)[0] == home / ".config" / "runlab" / "runlab.yaml"
    default = home / ".config" / "runlab" / "runlab.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("mqtt:\n  url: mqtt://10.0.0.9:1884\nsigning:\n  key: keys/op.key\n")
    cfg = load_config(None, {}, home)
    assert cfg.mqtt.url == "mqtt://10.0.0.9:1884" and cfg.signing.key == str(default.parent / "keys" / "op.key")
    with pytest.raises(ConfigError, match=r"runlab\.yaml: file not found \(no --config and no \$RUNLAB_CONFIG"):
        load_config(None, {}, tmp_path / "nohome")
    # the shipped example loads as it is
    assert load_config(str(REPO / "configs" / "runlab.yaml")).influx.database == "runlab"


@pytest.mark.parametrize(("text", "message"), [
    ("mqtt:\n  url: http://x\n", "mqtt.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
    ("influx:\n  bogus: 1\n", "influx.bogus: unknown key"),
    ("signing:\n  key: [1]\n", "signing.key: expected str, got array"),
    ("influx:\n  url: ftp://x\n", "influx.url: expected http://HOST:PORT"),
])
def test_config_errors_are_one_line_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = runlab("nodes", config=cfg)
    assert r.returncode == 2
    assert r.stderr.startswith(f"runlab: {cfg}: {message}") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_env_config_is_used_when_no_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "env.yaml"
    cfg.write_text("mqtt:\n  url: nope\n")
    r = runlab("nodes", env={"RUNLAB_CONFIG": str(cfg)})
    assert r.returncode == 2 and f"{cfg}: mqtt.url" in r.stderr


def test_keys_generate_writes_a_0600_openssl_readable_pair_without_any_config(tmp_path: Path) -> None:
    out = tmp_path / "k"
    r = runlab("keys", "generate", "--dir", str(out), env={"HOME": str(tmp_path / "empty"), "RUNLAB_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    priv, pub = out / "signing.key", out / "signing.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    text = subprocess.run(["openssl", "pkey", "-in", str(priv), "-noout", "-text"], capture_output=True, text=True)
    assert text.returncode == 0 and "ED25519" in text.stdout.upper(), text.stderr
    derived = subprocess.run(["openssl", "pkey", "-in", str(priv), "-pubout"], capture_output=True, text=True)
    assert derived.stdout == pub.read_text()  # the .pub is the private key's own public half
    again = runlab("keys", "generate", "--dir", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.count("\n") == 1


# ------------------------------------------------------------------ push


def retained(mq: Mosquitto, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under ``topic_filter`` right now (a barrier marks the end of them)."""
    from collector.config import CollectorMqtt
    from collector.ops.config import OperatorConfig
    from collector.ops.link import Link

    cfg = OperatorConfig(mqtt=CollectorMqtt(url=mq.url, client_id="t"))
    with Link(cfg) as link:
        link.subscribe(topic_filter)
        return {t: p for t, p, r in link.barrier() if r}


def test_a_bad_file_is_refused_with_the_agents_own_message_and_nothing_is_published(
        tmp_path: Path, mosquitto: Mosquitto, keys: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvariants:\n  - name: a\n    runtime: container\n    engine: podman\n"
                   "ready:\n  http: http://127.0.0.1:{port}/\n")
    cfg = write_config(tmp_path, mosquitto.url, key=keys[0])
    r = runlab("push", str(bad), "--to", "n1", config=cfg)
    agent = subprocess.run([sys.executable, "-m", "agent", "validate", str(bad)], capture_output=True, text=True,
                           cwd=REPO)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"runlab: {bad}: variants[0].image: required key is missing\n"
    assert f"{bad}: variants[0].image: required key is missing" in agent.stderr
    assert retained(mosquitto, f"{topics.PREFIX}/#") == {}


def test_push_publishes_one_signed_retained_order_per_node(tmp_path: Path, mosquitto: Mosquitto,
                                                           keys: tuple[Path, Path]) -> None:
    cfg = write_config(tmp_path, mosquitto.url, key=keys[0])
    r = runlab("push", str(LOCAL_RUNTIMES), "--to", "n1", "--to", "n2", "--expires", "1h", config=cfg)
    assert r.returncode == 0, r.stderr
    run = r.stdout.strip()
    assert topics.valid_name(run) and "local-runtimes" in r.stderr
    got = retained(mosquitto, f"{topics.PREFIX}/nodes/+/experiments/+")
    assert set(got) == {topics.node_experiment("n1", run), topics.node_experiment("n2", run)}
    trusted = control.load_trusted([str(keys[1])])
    for topic, payload in got.items():
        order = control.verify(payload, trusted)
        assert isinstance(order, control.ExperimentOrder)
        assert order.target == topic and order.run == run and order.file_name == "local-runtimes.yaml"
        assert order.yaml == LOCAL_RUNTIMES.read_text()
        assert 3500e9 < order.expires - order.issued <= 3600e9
    other = control.generate_keys(tmp_path / "other")[1]
    with pytest.raises(control.ControlError, match="untrusted key"):
        control.verify(next(iter(got.values())), control.load_trusted([str(other)]))
    group = runlab("push", str(LOCAL_RUNTIMES), "--group", "edge", config=cfg)
    assert group.returncode == 0
    assert topics.group_experiment("edge", group.stdout.strip()) in retained(mosquitto, f"{topics.PREFIX}/groups/#")


def test_push_without_a_signing_key_or_with_a_bad_name_says_so(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write_config(tmp_path, mosquitto.url)
    r = runlab("push", str(LOCAL_RUNTIMES), "--to", "n1", config=cfg)
    assert r.returncode == 2 and "signing.key: required to sign orders" in r.stderr
    cfg2 = write_config(tmp_path, mosquitto.url, key=control.generate_keys(tmp_path / "k")[0])
    r = runlab("push", str(LOCAL_RUNTIMES), "--to", "a/b", config=cfg2)
    assert r.returncode == 1 and "'a/b' is not a valid node or group name" in r.stderr
    assert retained(mosquitto, f"{topics.PREFIX}/#") == {}


def test_unreachable_broker_and_influxdb_are_one_line_naming_the_url(tmp_path: Path,
                                                                     keys: tuple[Path, Path]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, f"mqtt://127.0.0.1:{port}", key=keys[0], influx_url=f"http://127.0.0.1:{port}")
    for args in (("nodes",), ("push", str(LOCAL_RUNTIMES), "--to", "n1"), ("cancel", "r1", "--node", "n1")):
        r = runlab(*args, config=cfg)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"runlab: cannot connect to the broker at mqtt://127.0.0.1:{port}")
        assert r.stderr.count("\n") == 1
    for args in (("runs",), ("report", "x")):
        r = runlab(*args, config=cfg)
        assert r.returncode == 1
        assert r.stderr.startswith(f"runlab: cannot reach InfluxDB at http://127.0.0.1:{port}") and \
            r.stderr.count("\n") == 1, r.stderr


# ------------------------------------------------------------------ report


def report_json(cfg: Path, *args: str) -> dict[str, Any]:
    r = runlab("report", *args, "--format", "json", config=cfg)
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def test_report_picks_the_latest_run_per_node_or_the_named_run(tmp_path: Path, filled: InfluxV1) -> None:
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", filled)
    data = report_json(cfg, "hello-cmp")
    assert data["experiment"] == "hello-cmp"
    got = {(v["node"], v["name"]): v for v in data["variants"]}
    assert set(got) == {("node-a", "native"), ("node-a", "microvm"), ("node-b", "native"), ("node-b", "microvm")}
    assert got[("node-a", "native")]["startup_ms"]["median"] == pytest.approx(1.1)  # r-new, not r-old's 50
    assert got[("node-a", "native")]["startup_ms"]["n"] == 7  # warm-up kept apart
    assert got[("node-a", "native")]["startup_ms"]["warmup"] == [999.0]
    assert got[("node-b", "microvm")]["startup_ms"]["median"] == pytest.approx(4000.0)
    assert got[("node-a", "microvm")]["runtime"] == "vm"
    assert got[("node-a", "microvm")]["footprint"]["pss_bytes"] == 90_000_000
    assert got[("node-a", "native")]["load"][0]["achieved_rps"] == 4000.0
    assert set(data["run"].split(", ")) == {"r-new", "r-b"}
    # Mann-Whitney against the reference (native), per node, recomputed from the raw starts
    starts = [c for c in data["comparisons"] if c["figure"] == "startup_ms"]
    assert len(starts) == 2 and all("microvm" in c["sentence"] for c in starts)
    assert all(c["significant"] and c["p_value"] < 0.01 for c in starts)
    # no engine comparison was stored for this run: latency is compared from the load phases' histograms
    # (the same latencies on both variants here: no difference)
    (lat,) = [c for c in data["comparisons"] if c["figure"] == "latency_ms_closed"]
    assert lat["candidate"] == "microvm" and not lat["significant"] and lat["ratio"] == 1.0

    old = report_json(cfg, "r-old")
    assert [v["startup_ms"]["median"] for v in old["variants"]] == [50.0, 900.0]
    assert old["run"] == "r-old" and {v["node"] for v in old["variants"]} == {"node-a"}

    only_b = report_json(cfg, "hello-cmp", "--node", "node-b")
    assert {v["node"] for v in only_b["variants"]} == {"node-b"}
    failed = report_json(cfg, "other")
    assert failed["status"] == "failed"


def test_report_table_markdown_and_csv_put_nodes_side_by_side(tmp_path: Path, filled: InfluxV1) -> None:
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", filled)
    table = runlab("report", "hello-cmp", config=cfg)
    assert table.returncode == 0, table.stderr
    assert "side by side" in table.stdout and "node-a" in table.stdout and "node-b" in table.stdout
    assert "1.1" in table.stdout and "4,000" in table.stdout
    md = runlab("report", "hello-cmp", "--format", "markdown", config=cfg)
    assert md.returncode == 0 and md.stdout.count("|") > 20 and "node-b" in md.stdout
    csv = runlab("report", "hello-cmp", "--format", "csv", config=cfg)
    lines = csv.stdout.splitlines()
    assert csv.returncode == 0 and "node" in lines[0]
    assert sum(1 for line in lines if "node-b" in line and "microvm" in line) >= 7  # every raw start is a row


def test_report_plot_writes_a_png(tmp_path: Path, filled: InfluxV1) -> None:
    from PIL import Image

    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", filled)
    out = tmp_path / "plot.png"
    r = runlab("report", "hello-cmp", "--plot", str(out), config=cfg)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG"
        w, h = img.size
    assert f"({w}×{h} px)" in r.stderr
    assert w >= 700 and h >= 3 * 400  # three panels: cold starts, memory, latency (r-new had a load phase)


def test_report_without_data_says_what_was_looked_for_where(tmp_path: Path, influx: InfluxV1) -> None:
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    r = runlab("report", "nothing-here", config=cfg)
    assert r.returncode == 1
    assert r.stderr == (f"runlab: no run_sample rows for experiment or run 'nothing-here' in db {influx.database} "
                        f"at {influx.url}\n")


# ------------------------------------------------------------------ runs and nodes


def test_runs_lists_latest_status_per_run_and_node(tmp_path: Path, filled: InfluxV1) -> None:
    enc = LineEncoder(backslash=False)
    t = T0 + 4 * 10**12
    events = [control.RunEvent(node="node-c", run="r-q", experiment="hello-cmp", status="queued", queue=1, ts=t),
              control.RunEvent(node="node-c", run="r-rej", experiment="hello-cmp", status="rejected",
                               reason="policy: runtime vm is not allowed", ts=t + 1)]
    filled.write(b"\n".join(enc.line(control.event_sample(e), {"node": e.node}) for e in events))
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", filled)
    r = runlab("runs", "--format", "json", config=cfg)
    assert r.returncode == 0, r.stderr
    rows = {(x["run"], x["node"]): x for x in json.loads(r.stdout)}
    assert rows[("r-rej", "node-c")]["status"] == "rejected"
    assert rows[("r-rej", "node-c")]["reason"] == "policy: runtime vm is not allowed"
    assert rows[("r-q", "node-c")]["status"] == "queued" and rows[("r-q", "node-c")]["queue"] == 1
    assert rows[("r-other", "node-a")]["status"] == "failed" and rows[("r-other", "node-a")]["reason"] == "boom"
    assert rows[("r-new", "node-a")]["status"] == "finished"
    assert rows[("r-new", "node-a")]["started"] < rows[("r-new", "node-a")]["finished"]
    assert next(iter(rows))[0] == "r-rej"  # newest first
    limited = runlab("runs", "--limit", "2", config=cfg)
    assert limited.returncode == 0
    assert "r-rej" in limited.stdout and "r-q" in limited.stdout and "r-old" not in limited.stdout
    assert "policy: runtime vm is not allowed" in limited.stdout


def test_watch_of_a_run_that_already_ended_says_so_at_once(tmp_path: Path, filled: InfluxV1,
                                                            mosquitto: Mosquitto) -> None:
    # Events are not retained: a run that ended before `watch` subscribed (a quick cancel) used to be waited
    # for until --timeout. Its end comes from the store now, with the exit status of the outcome.
    cfg = write_config(tmp_path, mosquitto.url, filled)
    ok = runlab("watch", "r-new", "--timeout", "60s", config=cfg, timeout=30)
    assert ok.returncode == 0 and "finished (from the store)" in ok.stdout, ok.stdout + ok.stderr
    failed = runlab("watch", "r-other", "--timeout", "60s", config=cfg, timeout=30)
    assert failed.returncode == 1 and "failed: boom (from the store)" in failed.stdout, failed.stdout + failed.stderr


def test_nodes_shows_every_retained_status(tmp_path: Path, mosquitto: Mosquitto) -> None:
    pub = Publisher(mosquitto)
    try:
        for st in (wire.NodeStatus(v=1, node="pi4", online=True, ts=1, version="0.4.0", arch="aarch64",
                                   cpu_model="Cortex-A72", cores=4, memory_bytes=4 * 2**30,
                                   runtimes={"podman": "podman 4.3"}, groups=["edge"], run="r-9"),
                   wire.NodeStatus(v=1, node="nuc", online=False, ts=1, arch="x86_64", cores=8)):
            pub.client.publish(topics.status(st.node), wire.encode(st), qos=1, retain=True).wait_for_publish(10)
    finally:
        pub.close()
    cfg = write_config(tmp_path, mosquitto.url)
    r = runlab("nodes", "--format", "json", config=cfg)
    assert r.returncode == 0, r.stderr
    nodes = {n["node"]: n for n in json.loads(r.stdout)}
    assert nodes["pi4"]["online"] is True and nodes["pi4"]["run"] == "r-9" and nodes["nuc"]["online"] is False
    table = runlab("nodes", config=cfg)
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["node", "state", "version"]
    pi = next(line for line in lines if line.startswith("pi4"))
    assert "online" in pi and "aarch64" in pi and "4.0 GiB" in pi and "podman" in pi and "edge" in pi and "r-9" in pi
    assert "offline" in next(line for line in lines if line.startswith("nuc"))


def test_every_command_has_help_with_examples() -> None:
    for cmd in ("push", "nodes", "runs", "watch", "cancel", "report", "keys"):
        r = runlab(cmd, "--help")
        assert r.returncode == 0 and "examples:" in r.stdout and f"runlab {cmd}" in r.stdout, cmd
    top = runlab("--help")
    assert "examples:" in top.stdout and "RUNLAB_CONFIG" in top.stdout


def test_waiter_follows_one_run_and_learns_group_members_from_their_events() -> None:
    from collector.ops.push import Waiter, members

    class NoLink:
        pass

    def ev(node: str, status: str, run: str = "r1", **kw: Any) -> tuple[str, bytes]:
        return topics.events(node), control.encode_event(control.RunEvent(node=node, run=run, status=status, **kw))

    w = Waiter(NoLink(), "r1", ["a"], open_ended=True)  # type: ignore[arg-type]
    assert w.handle(*ev("a", "accepted")) == "a" and w.nodes["a"].status == "accepted"
    assert w.handle(*ev("a", "phase", phase="cold starts", n=6)) == "a"
    assert w.handle(*ev("a", "progress", phase="cold starts", i=4, n=6)) == "a"
    assert (w.nodes["a"].status, w.nodes["a"].i, w.nodes["a"].n) == ("running", 4, 6)
    assert w.handle(*ev("a", "finished", run="r2")) is None  # another run
    assert w.handle(topics.events("b"), control.encode_event(control.RunEvent(node="c", run="r1",
                                                                              status="queued"))) is None  # spoofed
    assert w.handle(*ev("b", "queued", queue=2)) == "b"  # a group member we did not know of joins
    assert w.handle(*ev("a", "finished")) == "a" and not w.done
    assert w.handle(*ev("b", "rejected", reason="bad signature")) == "b"
    assert w.done and w.nodes["b"].reason == "bad signature"
    assert w.handle(*ev("a", "failed")) is None  # an ended run stays ended
    closed = Waiter(NoLink(), "r1", ["a"], open_ended=False)  # type: ignore[arg-type]
    assert closed.handle(*ev("z", "accepted")) is None and list(closed.nodes) == ["a"]
    sts = [wire.NodeStatus(v=1, node="x", online=True, ts=1, groups=["edge"]),
           wire.NodeStatus(v=1, node="y", online=False, ts=1, groups=["edge"]),
           wire.NodeStatus(v=1, node="z", online=True, ts=1, groups=[])]
    assert members(sts, "edge") == ["x"] and members(sts, "all") == ["x", "z"]


def test_a_v2_config_reads_the_dbrp_database_named_by_the_bucket_with_its_token(tmp_path: Path,
                                                                                filled: InfluxV1) -> None:
    """influx.api v2: /query?db=<bucket's db>&rp=<its rp> with `Authorization: Token …` (InfluxDB 1.x without auth
    ignores the token; 2.x maps the db/rp through DBRP)."""
    cfg = tmp_path / "v2.yaml"
    cfg.write_text(f"mqtt:\n  url: mqtt://127.0.0.1:1\ninflux:\n  url: {filled.url}\n  api: v2\n  org: home\n"
                   f"  bucket: {filled.database}/autogen\n  token: read-token\n")
    data = report_json(cfg, "r-b")
    assert {v["node"] for v in data["variants"]} == {"node-b"}
    cfg.write_text(cfg.read_text().replace(f"bucket: {filled.database}/autogen", "bucket: nope"))
    r = runlab("report", "r-b", config=cfg)
    assert r.returncode == 1 and r.stderr.startswith(f"runlab: InfluxQL on db nope at {filled.url} failed")
    assert "database not found" in r.stderr and r.stderr.count("\n") == 1


def test_victoriametrics_is_named_as_unable_to_answer_influxql(tmp_path: Path, victoria: Any) -> None:
    cfg = tmp_path / "vm.yaml"
    cfg.write_text(f"mqtt:\n  url: mqtt://127.0.0.1:1\ninflux:\n  url: {victoria.url}\n  api: v2\n  bucket: runlab\n")
    r = runlab("report", "anything", config=cfg)
    assert r.returncode == 1 and "does not answer InfluxQL queries (VictoriaMetrics?)" in r.stderr, r.stderr


def test_report_rp_reads_the_results_copies(tmp_path: Path, influx: InfluxV1) -> None:
    """`--rp results`: where deploy/influxdb keeps run_sample/run_summary forever (raw data: 30 days)."""
    from runlab.devservers import http

    db = influx.database
    influx.query(f'CREATE RETENTION POLICY "results" ON "{db}" DURATION INF REPLICATION 1')
    lines = run_points("node-a", "r-archived", "hello-cmp", {"native": [5.0] * 6, "microvm": [700.0] * 6}, T0)
    status, body = http("POST", f"{influx.url}/write?db={db}&rp=results&precision=ns", lines)
    assert status == 204, body
    cfg = write_config(tmp_path, "mqtt://127.0.0.1:1", influx)
    assert runlab("report", "r-archived", config=cfg).returncode == 1  # not in the default (raw) policy
    old = report_json(cfg, "hello-cmp", "--rp", "results")
    assert old["run"] == "r-archived" and [v["startup_ms"]["median"] for v in old["variants"]] == [5.0, 700.0]
