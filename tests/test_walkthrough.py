"""docs/deploy.md, followed literally: a central box and a first agent, from zero, with the shipped parts.

The walkthrough the docs give, run whole:
- the broker: deploy/mosquitto/runlab.conf with its ACL and users from runlab-broker-setup (its listeners
  moved to free loopback ports: the one change a test must make), on this machine;
- InfluxDB 1.x with auth on, set up by deploy/influxdb/setup-v1.sh, run on the central box itself;
- the central box: a booted Debian bookworm (systemd-nspawn -b) where the runlab-collector .deb is installed,
  configured exactly as runlab-broker-setup and setup-v1.sh print, checked as its service user, started;
- the node: a second booted bookworm where the runlab-agent .deb is installed — and so started — before it
  is configured, then configured as runlab-broker-setup prints (TLS, its own login), trusting the operator's
  key and allowing the packaged workload;
- the operator, on the central box, with its own login from runlab-broker-setup and the InfluxDB read user:
  `runlab keys generate`, `runlab nodes`, `runlab push` of the packaged first experiment (cold start,
  footprint, size, closed- and open-loop load) with --wait, `runlab report`, `runlab cancel`.
Both containers share this machine's loopback (no private network), as two machines would share a LAN.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runlab.devservers import Mosquitto, SecureSetup, http
from tests.conftest import REPO, need, wait_until
from tests.test_influx_setup import AuthInflux
from tests.test_packaging_install import Container, build_deb, rootfs_tarball

NODE = "pi4-livingroom"
ADMIN_PASSWORD = "walkthrough-admin"
FIRST = "/usr/share/runlab-collector/experiments/first-experiment.yaml"


def printed_sections(stdout: str) -> dict[str, dict[str, Any]]:
    """What runlab-broker-setup prints per user: its YAML lines, plus the password (the line after the
    "holds this one line" comment) under ``_password``."""
    out: dict[str, dict[str, Any]] = {}
    for block in stdout.split("# ==== ")[1:]:
        user = block.split(":", 1)[0]
        lines = block.splitlines()[1:]
        yaml_lines = [ln for ln in lines if re.match(r"(node|mqtt):|  \w+:", ln)]
        section: dict[str, Any] = yaml.safe_load("\n".join(yaml_lines))
        pw = [lines[i + 1] for i, ln in enumerate(lines) if ln.endswith("holds this one line:")]
        section["_password"] = pw[0].strip()
        out[user] = section
    return out


def influxql(server: AuthInflux, q: str) -> list[list[Any]]:
    qs = urllib.parse.urlencode({"q": q, "db": "runlab", "epoch": "ns", "u": "admin", "p": ADMIN_PASSWORD})
    status, body = http("GET", f"{server.url}/query?{qs}")
    assert status == 200, body
    series = json.loads(body)["results"][0].get("series", [])
    return [row for s in series for row in s["values"]]


@pytest.fixture
def booted(tmp_path: Path) -> Iterator[dict[str, Container]]:
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "mosquitto", "mosquitto_passwd", "openssl", "influxd"):
        need(tool)
    if os.geteuid() != 0:
        pytest.fail("the walkthrough boots containers: run it as root (CI does)")
    tarball = rootfs_tarball("boot", "amd64")
    boxes: dict[str, Container] = {}
    try:
        for name in ("box", "node"):
            root = tmp_path / name
            root.mkdir()
            subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)], check=True)
            boxes[name] = Container(root, tmp_path / f"nspawn-{name}.log", machine=f"runlab-{name}-{os.getpid()}")
        yield boxes
    finally:
        for c in boxes.values():
            c.shutdown()
        for name in ("box", "node"):
            shutil.rmtree(tmp_path / name, ignore_errors=True)


def influx_client_deb(cache: Path) -> Path:
    """Debian's influxdb-client .deb (the `influx` CLI setup-v1.sh needs), as `apt-get install` would fetch it."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("influxdb-client_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", "-q", "influxdb-client"], cwd=cache, check=True, capture_output=True)
        found = sorted(cache.glob("influxdb-client_*.deb"))
    return found[-1]


def put(c: Container, path: str, text: str, mode: str, owner: str = "root:root") -> None:
    """Write a file inside the container as an admin would (install -m MODE -o/-g)."""
    staged = c.root / "root" / f".staged-{Path(path).name}"
    staged.write_text(text)
    user, group = owner.split(":")
    c.run("install", "-D", "-m", mode, "-o", user, "-g", group, f"/root/{staged.name}", path)
    staged.unlink()


def test_walkthrough_central_box_and_first_agent_from_zero(booted: dict[str, Container], tmp_path: Path) -> None:
    t0 = time.monotonic()
    agent_deb, collector_deb = build_deb("agent"), build_deb("collector")
    client_deb = influx_client_deb(REPO / "build" / "cache" / "debs")
    built = time.monotonic()

    # ---- 1. the broker: runlab.conf + runlab-broker-setup (docs/deploy.md step 1) ------------------------
    setup = SecureSetup.create(tmp_path / "mosquitto-runlab", [NODE], hosts=("127.0.0.1",))
    printed = printed_sections(subprocess.run(
        [str(REPO / "deploy" / "mosquitto" / "runlab-broker-setup"), "--out", str(setup.dir), NODE],
        capture_output=True, text=True, check=True).stdout)
    assert set(printed) == {NODE, "collector", "operator"}
    broker = Mosquitto(tmp_path / "mosquitto", secure=setup)
    influx = AuthInflux(tmp_path / "influxdb")  # auth on, no user yet: a fresh install
    with broker, influx:
        plain = broker.url  # "on the broker machine itself: url: mqtt://127.0.0.1:1883" (moved port)
        tls_port = broker.tls_port

        box, node = booted["box"].boot(), booted["node"].boot()

        # ---- 2. the central box: collector package, then InfluxDB set up by setup-v1.sh ------------------
        for deb in (collector_deb, client_deb):
            shutil.copy(deb, box.root / "root" / deb.name)
            box.run("dpkg", "-i", f"/root/{deb.name}")
        # Started at once with the shipped conffile (no login, broker on 1883 where there is none here):
        # it must wait for its configuration, not crash-loop or print a traceback.
        wait_until(lambda: box.prop("runlab-collector.service", "ActiveState") == "active",
                   what="runlab-collector active after dpkg -i")
        shutil.copy(REPO / "deploy" / "influxdb" / "setup-v1.sh", box.root / "root" / "setup-v1.sh")
        box.run("bash", "-c", f"INFLUX_PASSWORD={ADMIN_PASSWORD} /root/setup-v1.sh --host 127.0.0.1 "
                              f"--port {influx.port} --create-admin admin")
        assert box.run("stat", "-c", "%a", "/etc/runlab").stdout.strip() == "755"
        assert box.run("stat", "-c", "%a %G", "/etc/runlab/influx/collector.password").stdout.strip() == "640 runlab"

        # collector.yaml exactly as printed: runlab-broker-setup's mqtt: (plain listener on the box), and
        # setup-v1.sh's influx: block.
        col = printed["collector"]
        put(box, col["mqtt"]["password_file"], col["_password"] + "\n", "0640", "root:runlab")
        cfg = {"mqtt": {"url": plain, "username": "collector", "password_file": col["mqtt"]["password_file"]},
               "influx": {"url": f"http://127.0.0.1:{influx.port}", "api": "v1", "database": "runlab",
                          "username": "collector", "password_file": "/etc/runlab/influx/collector.password"}}
        put(box, "/etc/runlab/collector.yaml", yaml.safe_dump(cfg), "0640", "root:runlab")
        # Checked as the service's own user: root would read every file and hide a permission problem.
        check = box.run("runuser", "-u", "runlab", "--", "runlab-collector", "check", "--config",
                        "/etc/runlab/collector.yaml", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        unconfigured = box.journal("runlab-collector.service")
        assert "Traceback" not in unconfigured and box.prop("runlab-collector.service", "NRestarts") == "0", \
            unconfigured[-3000:]
        box.run("systemctl", "restart", "runlab-collector.service")
        wait_until(lambda: "subscribed" in box.journal("runlab-collector.service"), timeout=60,
                   what="the packaged collector to subscribe")

        # ---- 3. the operator, on the box: its own logins, its key --------------------------------------
        op = printed["operator"]
        assert op["mqtt"]["password_file"] == "~/.config/runlab/mqtt.password"
        box.run("runlab", "keys", "generate", "--dir", "/root/.config/runlab")
        put(box, "/root/.config/runlab/mqtt.password", op["_password"] + "\n", "0600")
        box.run("install", "-m", "0600", "/etc/runlab/influx/grafana.password", "/root/.config/runlab/influx.password")
        op_cfg = {"mqtt": {"url": plain, "username": "operator", "password_file": "~/.config/runlab/mqtt.password"},
                  "influx": {"url": f"http://127.0.0.1:{influx.port}", "api": "v1", "database": "runlab",
                             "username": "grafana", "password_file": "~/.config/runlab/influx.password"},
                  "signing": {"key": "~/.config/runlab/signing.key"}}
        put(box, "/root/.config/runlab/runlab.yaml", yaml.safe_dump(op_cfg), "0600")

        def runlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
            return box.run("env", "HOME=/root", "runlab", *args, check=False, timeout=timeout)

        # ---- 4. the first agent: installed (and so started) before it is configured -------------------
        shutil.copy(agent_deb, node.root / "root" / agent_deb.name)
        node.run("dpkg", "-i", f"/root/{agent_deb.name}")
        unit = "runlab-agent.service"
        wait_until(lambda: node.prop(unit, "ActiveState") == "active", what="runlab-agent active after dpkg -i")
        # Its defaults (node = host name, broker on loopback without a login) keep it sampling into the outbox.
        def spooled() -> int:
            sizes = node.run("sh", "-c", "stat -c %s /var/lib/runlab/spool/* 2>/dev/null", check=False).stdout
            return sum(int(x) for x in sizes.split())
        first = wait_until(spooled, timeout=30, what="the unconfigured agent's outbox")
        wait_until(lambda: spooled() > first, timeout=30, what="the unconfigured agent to spool more samples")
        unconfigured_until = time.time_ns()

        # Then configured as runlab-broker-setup printed it for the node, over TLS with the broker's CA.
        mine = printed[NODE]
        shutil.copy(setup.ca_file, node.root / "root" / "ca.crt")
        node.run("install", "-m", "0644", "/root/ca.crt", "/etc/runlab/ca.crt")
        put(node, mine["mqtt"]["password_file"], mine["_password"] + "\n", "0640", "root:runlab")
        pub = box.run("cat", "/root/.config/runlab/signing.pub").stdout
        put(node, "/etc/runlab/keys/operator.pub", pub, "0644")
        agent_cfg = {"node": mine["node"],
                     "mqtt": {**mine["mqtt"], "url": f"mqtts://127.0.0.1:{tls_port}"},
                     "sampling": {"interval": "1s", "per_cpu": False},
                     "trust": {"keys": ["/etc/runlab/keys/operator.pub"]},
                     "policy": {"runtimes": ["process"], "commands": ["/usr/lib/runlab/workloads/*"]}}
        put(node, "/etc/runlab/agent.yaml", yaml.safe_dump(agent_cfg), "0640", "root:runlab")
        checked = node.run("runuser", "-u", "runlab", "--", "runlab-agent", "check", "--config",
                           "/etc/runlab/agent.yaml", check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        node.run("systemctl", "restart", unit)
        assert node.prop(unit, "ActiveState") == "active"

        # Samples land, under the node's name — those taken before it was configured too.
        def host_rows() -> list[list[Any]]:
            return influxql(influx, f"SELECT cpu_percent FROM host WHERE node = '{NODE}'")
        wait_until(lambda: len(host_rows()) >= 3, timeout=90, what="the packaged agent's host samples in InfluxDB")
        wait_until(lambda: any(r[0] < unconfigured_until for r in host_rows()), timeout=90,
                   what="the samples taken before the agent was configured")
        journal = node.journal(unit)
        assert "Traceback" not in journal and "Bad file descriptor" not in journal, journal[-3000:]
        assert node.prop(unit, "NRestarts") == "0"

        # ---- 5. the operator pushes the packaged first experiment, lists, reports, cancels ------------
        nodes = runlab("nodes", "--format", "json")
        assert nodes.returncode == 0, nodes.stderr
        assert any(n["node"] == NODE and n["online"] for n in json.loads(nodes.stdout)), nodes.stdout
        pushed = runlab("push", FIRST, "--to", NODE, "--wait", "--timeout", "5m", timeout=400)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        report = runlab("report", "first-experiment", "--format", "json")
        assert report.returncode == 0, report.stderr
        variants = json.loads(report.stdout)["variants"]
        native = next(v for v in variants if v["node"] == NODE and v["name"] == "native")
        assert native["startup_ms"]["n"] >= 20 and native["startup_ms"]["median"] > 0
        assert native["footprint"] and native["size"]
        assert native["load"], native  # the closed- and open-loop load phase ran on the packaged agent

        again = runlab("push", FIRST, "--to", NODE)
        assert again.returncode == 0, again.stderr
        run = again.stdout.strip()
        cancelled = runlab("cancel", run, "--node", NODE)
        assert cancelled.returncode == 0, cancelled.stderr
        watched = runlab("watch", run, "--timeout", "2m", timeout=180)
        assert "cancelled" in watched.stdout + watched.stderr, watched.stdout + watched.stderr
    print(f"\nbuild {built - t0:.0f} s, walkthrough {time.monotonic() - built:.0f} s")
