"""deploy/compose.yaml: its structure, and the parts of it that can run without a container engine.

No Docker/Podman engine runs here, so the stack is not started. What is checked: the file parses; every
service has an image or a build; every host path it mounts exists in the repository (or is a documented
operator path); host ports are unique; depends_on targets exist and have healthchecks; the variables the
Grafana datasource uses are set; the collector's inline config loads with runlab's own loader; and the
Mosquitto start script, run here against the shipped runlab.conf, yields a config a real Mosquitto accepts
with the secrets of runlab-broker-setup (a collector logs in, an anonymous client does not).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import load_config
from runlab.devservers import free_port, wait_tcp
from tests.conftest import REPO, need

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCS = REPO / "docs" / "deploy.md"
# Host paths outside the repository that the operator provides (documented in compose.yaml and docs/deploy.md).
OPERATOR_PATHS = {"${RUNLAB_MOSQUITTO_DIR:-/etc/mosquitto/runlab}",
                  "${RUNLAB_MOSQUITTO_DIR:-/etc/mosquitto/runlab}/clients/collector.password"}
VAR_RE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def load() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation for what this file uses: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"{name} is required: {arg}")
        return ""

    parts = text.split("$$")
    return "$".join(VAR_RE.sub(sub, p) for p in parts)


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of every volume entry, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "$")) else "volume"
            out.append((kind, source, target))
        else:
            out.append((v["type"], v["source"], v["target"]))
    return out


def test_parses_with_the_four_services() -> None:
    doc = load()
    assert set(doc["services"]) == {"mosquitto", "influxdb", "grafana", "collector"}
    assert doc["services"]["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert doc["services"]["influxdb"]["image"] == "influxdb:2"
    assert doc["services"]["grafana"]["image"].startswith("grafana/grafana")


def test_every_service_has_an_image_or_a_build_restart_and_healthcheck() -> None:
    for name, svc in load()["services"].items():
        assert "image" in svc or "build" in svc, name
        assert svc.get("restart") == "unless-stopped", name
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] in ("CMD", "CMD-SHELL"), name
    build = load()["services"]["collector"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).is_file()


def test_mounted_host_paths_exist_and_named_volumes_are_declared() -> None:
    doc = load()
    declared = set(doc["volumes"])
    used = set()
    for name, svc in doc["services"].items():
        for kind, source, _target in mounts(svc):
            if kind == "volume":
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            elif source.startswith("$"):
                assert source in OPERATOR_PATHS, f"{name}: undocumented host path {source}"
                assert source.split(":-")[1].split("}")[0] in DOCS.read_text(), source
            else:
                path = (DEPLOY / source).resolve()
                assert path.exists(), f"{name}: {source} does not exist in the repository"
                assert REPO in path.parents, f"{name}: {source} is outside the repository"
    assert used == declared, f"declared but unused: {declared - used}"
    for svc in doc["services"].values():
        for env_file in svc.get("env_file", []):
            assert (DEPLOY / env_file).is_file(), env_file


def test_host_ports_are_unique_and_the_plain_broker_port_is_loopback_only() -> None:
    published: dict[str, str] = {}
    for name, svc in load()["services"].items():
        for p in svc.get("ports", []):
            *host, _container = str(p).split(":")
            host_port = host[-1]
            assert host_port not in published, f"{name} and {published[host_port]} both publish {host_port}"
            published[host_port] = name
            if host_port == "1883":
                assert host[0] == "127.0.0.1", "plain MQTT must stay on the host's loopback"
    assert published == {"1883": "mosquitto", "8883": "mosquitto", "8086": "influxdb", "3000": "grafana"}


def test_depends_on_targets_exist_and_are_healthchecked() -> None:
    services = load()["services"]
    for name, svc in services.items():
        for target, cond in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
    assert set(services["collector"]["depends_on"]) == {"mosquitto", "influxdb"}


def test_configs_referenced_exist() -> None:
    doc = load()
    for name, svc in doc["services"].items():
        for c in svc.get("configs", []):
            assert c["source"] in doc["configs"], f"{name}: unknown config {c['source']}"


def test_required_variables_are_documented() -> None:
    text = COMPOSE.read_text()
    required = {m.group(1) for m in VAR_RE.finditer(text) if m.group(2) in (":?", "?")}
    assert required == {"INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD"}
    header = text.split("\nname:")[0]
    docs = DOCS.read_text()
    for var in required:
        assert var in header and var in docs, var


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def test_grafana_gets_every_variable_its_datasource_uses() -> None:
    """${VAR} in deploy/grafana/provisioning/datasources/*.yaml: set by environment, env_file or the entrypoint;
    the dashboards provider's path is mounted."""
    grafana_dir = DEPLOY / "grafana"
    if not grafana_dir.exists():
        pytest.skip("deploy/grafana is not in this tree")
    svc = load()["services"]["grafana"]
    env = set(svc.get("environment", {}))
    for env_file in svc.get("env_file", []):
        env |= {line.split("=", 1)[0] for line in (DEPLOY / env_file).read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    exported = set(re.findall(r"export (\w+)", " ".join(svc.get("entrypoint", []))))
    used: set[str] = set()
    for ds in (grafana_dir / "provisioning" / "datasources").glob("*.y*ml"):
        used |= {a or b for value in _strings(yaml.safe_load(ds.read_text()))  # values only, not comments
                 for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", value)}
    assert used, "the datasource uses no variable?"
    assert used <= env | exported, f"not set for Grafana: {used - env - exported}"
    assert svc["environment"]["RUNLAB_INFLUX_URL"] == "http://influxdb:8086"
    assert "RUNLAB_INFLUX_TOKEN" in exported  # the read-only token setup-v2.sh wrote
    token_mount = next(t for k, s, t in mounts(svc) if s == "grafana-influx-token")
    assert f"{token_mount}/influx.token" in " ".join(svc["entrypoint"])
    targets = [t for _k, _s, t in mounts(svc)]
    for provider in (grafana_dir / "provisioning" / "dashboards").glob("*.y*ml"):
        for p in yaml.safe_load(provider.read_text())["providers"]:
            path = p["options"]["path"]
            assert any(path == t or path.startswith(t + "/") for t in targets), f"{path} is not mounted"
    assert ("bind", "./grafana/provisioning", "/etc/grafana/provisioning") in [
        (k, s, t.removesuffix(":ro")) for k, s, t in mounts(svc)]


def test_influxdb_runs_setup_v2_with_the_token_files_its_consumers_mount() -> None:
    doc = load()
    influx = doc["services"]["influxdb"]
    [(source, target)] = [(s, t) for k, s, t in mounts(influx) if t.startswith("/docker-entrypoint-initdb.d/")]
    script = DEPLOY / source
    assert script.name == "setup-v2.sh" and os.access(script, os.X_OK)  # the image runs executable *.sh only
    assert target.endswith(".sh")
    env = influx["environment"]
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "runlab" and env["DOCKER_INFLUXDB_INIT_RETENTION"] == "30d"
    vol_target = {s: t for k, s, t in mounts(influx) if k == "volume"}
    for consumer, volume, var in (("collector", "collector-influx-token", "RUNLAB_COLLECTOR_TOKEN_FILE"),
                                  ("grafana", "grafana-influx-token", "RUNLAB_GRAFANA_TOKEN_FILE")):
        assert Path(env[var]).parent == Path(vol_target[volume]), var
        consumer_mounts = {s: t for k, s, t in mounts(doc["services"][consumer])}
        assert volume in consumer_mounts
        others = [n for n, svc in doc["services"].items() if n not in (consumer, "influxdb")
                  and volume in {s for _k, s, _t in mounts(svc)}]
        assert not others, f"{volume} is also mounted by {others}"  # least privilege: one reader per token
    assert env["RUNLAB_GRAFANA_TOKEN_OWNER"] == "472" and doc["services"]["grafana"]["user"] == "472"


def test_collector_config_loads_and_points_at_what_is_mounted(tmp_path: Path) -> None:
    doc = load()
    svc = doc["services"]["collector"]
    [cfg_mount] = svc["configs"]
    text = interpolate(doc["configs"][cfg_mount["source"]]["content"])
    cfg_yaml = yaml.safe_load(text)
    targets = {t for _k, _s, t in mounts(svc)}
    token_file = cfg_yaml["influx"]["token_file"]
    password_file = cfg_yaml["mqtt"]["password_file"]
    assert str(Path(token_file).parent) in targets and password_file in targets
    assert any(cfg_yaml["quarantine"]["path"].startswith(t + "/") for t in targets)
    assert cfg_yaml["mqtt"]["url"] == "mqtt://mosquitto:1883" and cfg_yaml["influx"]["url"] == "http://influxdb:8086"
    # runlab's own loader (unknown keys, types, secret files) on it, with the secrets where it can read them
    (tmp_path / "token").write_text("t0ken")
    (tmp_path / "password").write_text("pw\n")
    local = text.replace(token_file, str(tmp_path / "token")).replace(password_file, str(tmp_path / "password"))
    (tmp_path / "collector.yaml").write_text(local)
    cfg = load_config(str(tmp_path / "collector.yaml"))
    assert cfg.influx.api == "v2" and cfg.influx.org == "homelab" and cfg.mqtt.username == "collector"
    assert svc["image"] and svc["user"] == "0:0" and svc["cap_drop"] == ["ALL"] and svc["read_only"] is True


def test_collector_dockerfile_copies_what_pip_install_needs() -> None:
    dockerfile = (DEPLOY / "collector.Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    copied = [src for line in dockerfile.splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1]]
    ignore = (DEPLOY / "collector.Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for src in copied:
        assert (REPO / src).exists(), src
        assert src.rstrip("/") in allowed, f"{src} is excluded by collector.Dockerfile.dockerignore"
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r'include = \[([^]]*)\]', pyproject)
    assert include
    for pattern in re.findall(r'"(\w+)\*"', include.group(1)):
        assert pattern in copied, f"package {pattern} is not copied"
    assert 'readme = "README.md"' in pyproject and "README.md" in copied
    assert "pip install --no-cache-dir -c requirements.lock ." in dockerfile
    assert 'ENTRYPOINT ["runlab-collector"]' in dockerfile


def test_docs_say_agents_are_not_containers() -> None:
    for text in (COMPOSE.read_text(), DOCS.read_text()):
        assert re.search(r"[Aa]gents are not (part of this|containers)|NOT part of this", text), "agents"


# --- the Mosquitto start script, for real --------------------------------------------------------------

def mosquitto_start_script() -> str:
    doc = load()
    [cfg] = doc["services"]["mosquitto"]["configs"]
    assert doc["services"]["mosquitto"]["command"] == ["sh", cfg["target"]]
    return interpolate(doc["configs"][cfg["source"]]["content"])


def test_mosquitto_start_script_keeps_the_shipped_settings(tmp_path: Path) -> None:
    """Run here with a stand-in `mosquitto`: the config it starts is the shipped runlab.conf, with only the
    plain listener opened from loopback to the container's interfaces, plus data directory and log."""
    shipped = DEPLOY / "mosquitto" / "runlab.conf"
    assert "listener 1883 127.0.0.1" in shipped.read_text().splitlines()
    conf = tmp_path / "generated.conf"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mosquitto").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n")
    (bindir / "mosquitto").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "RUNLAB_SHIPPED": str(shipped),
           "RUNLAB_CONF": str(conf)}
    subprocess.run(["sh", "-c", mosquitto_start_script()], env=env, check=True, timeout=10)
    assert (tmp_path / "args").read_text().split() == ["-c", str(conf)]
    lines = conf.read_text().splitlines()
    assert lines[:2] == ["persistence_location /mosquitto/data/", "log_dest stdout"]
    expected = [("listener 1883" if ln == "listener 1883 127.0.0.1" else ln)
                for ln in shipped.read_text().splitlines()]
    assert lines[2:] == expected


def test_mosquitto_start_script_refuses_an_unexpected_shipped_config(tmp_path: Path) -> None:
    odd = tmp_path / "runlab.conf"
    odd.write_text("listener 1884\n")
    proc = subprocess.run(["sh", "-c", mosquitto_start_script()], capture_output=True, text=True, timeout=10,
                          env={**os.environ, "RUNLAB_SHIPPED": str(odd), "RUNLAB_CONF": str(tmp_path / "c")})
    assert proc.returncode == 1 and "no 'listener 1883 127.0.0.1'" in proc.stderr


def _login(port: int, username: str | None, password: str | None) -> str:
    """MQTT v5 CONNECT; the CONNACK reason as text."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"compose-test-{username}", protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    got: list[str] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        got.append(str(rc))
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
        return got[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_mosquitto_container_config_runs_with_runlab_broker_setup_secrets(tmp_path: Path) -> None:
    """The generated config, with this machine's paths and free ports in place of the container's, started
    by a real Mosquitto with the files runlab-broker-setup writes: the collector logs in, anonymous does not."""
    need("mosquitto")
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("runlab-broker-setup needs openssl and mosquitto_passwd: run `make test`")
    secrets = tmp_path / "secrets"
    subprocess.run([str(DEPLOY / "mosquitto" / "runlab-broker-setup"), "--out", str(secrets), "--host", "127.0.0.1",
                    "--no-secrets"], check=True, capture_output=True, timeout=60)
    conf = tmp_path / "generated.conf"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mosquitto").write_text("#!/bin/sh\ntrue\n")
    (bindir / "mosquitto").chmod(0o755)
    subprocess.run(["sh", "-c", mosquitto_start_script()], check=True, timeout=10,
                   env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "RUNLAB_CONF": str(conf),
                        "RUNLAB_SHIPPED": str(DEPLOY / "mosquitto" / "runlab.conf"),
                        "RUNLAB_DATA": f"{tmp_path}/data/"})
    plain, tls = free_port(), free_port()
    text = (conf.read_text().replace("/etc/mosquitto/runlab/", f"{secrets}/")
            .replace("\nlistener 1883\n", f"\nlistener {plain} 127.0.0.1\n")
            .replace("\nlistener 8883\n", f"\nlistener {tls} 127.0.0.1\n"))
    (tmp_path / "data").mkdir()
    local = tmp_path / "local.conf"
    local.write_text(text + "user root\n")
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115 — closed below
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(local)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_tcp(plain, proc=proc)
        wait_tcp(tls, proc=proc)
        password = (secrets / "clients" / "collector.password").read_text().strip()
        assert _login(plain, "collector", password) == "Success"
        assert _login(plain, None, None) == "Not authorized"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_mosquitto_healthcheck_sees_a_listening_broker(tmp_path: Path) -> None:
    """The healthcheck (no client login possible without a password) reads /proc/net/tcp for a listener on
    1883: run it here, with a real broker's port in place of 1883."""
    from runlab.devservers import Mosquitto

    need("mosquitto")
    test = load()["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and ":075B " in test[1]
    with Mosquitto(tmp_path / "mq") as mq:
        cmd = test[1].replace(":075B ", f":{mq.port:04X} ")
        assert subprocess.run(["sh", "-c", cmd], timeout=10).returncode == 0
    assert subprocess.run(["sh", "-c", cmd], timeout=10).returncode == 1
