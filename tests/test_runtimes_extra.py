"""The issue-7 runtimes and probes: systemd, kubernetes, serverless, DNS, runtime classes and VM presets.

Real where this machine can: DNS against a real dnsmasq, kubernetes through a kubectl stand-in that
runs the manifest's command as a real process, serverless through a gateway stand-in that spawns the
function on the first invocation after scale-to-zero, podman + runc for the runtime-class file.
Pure command-line tests where it cannot (systemd is not PID 1 here; no Kata, Firecracker,
cloud-hypervisor binaries).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from agent.dnsload import DnsAnswer, build_query, parse_response, query
from agent.engine import Runner
from agent.runtimes import make_runtime
from agent.runtimes.base import RuntimeUnavailable, StartContext
from agent.runtimes.kubernetes import pod_cgroup_pids, render_manifest
from agent.runtimes.systemd import unit_pids
from agent.runtimes.vm import api_request, cloud_hypervisor_argv, firecracker_api_calls
from runlab.config import ConfigError
from runlab.experiment import DnsQuery, Experiment, load_file, parse
from runlab.wire import Sample
from tests.conftest import REPO, need, wait_until

STANDINS = REPO / "tests" / "standins"
EXPERIMENTS = REPO / "configs" / "experiments"
HELLO = REPO / "build" / "cache" / "workloads" / "hello"
MINE = ["static-binary-systemd", "edge-dns", "serverless-coldstart", "firecracker-microvm", "kata-vs-runc",
        "unikernel-http", "http-api-wasm-vs-container"]


@pytest.fixture(autouse=True)
def _workloads_built(workloads: Path) -> None:
    """Tests here start build/cache/workloads/hello (and the podman image): built once per session."""



def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ctx(tmp_path: Path, port: int = 8123, name: str = "runlab-x-v-1-abcd") -> StartContext:
    return StartContext(port=port, name=name, run_dir=tmp_path, variant="v", here="/exp")


def experiment(variant: dict[str, object], ready: dict[str, object] | None = None, **top: object) -> Experiment:
    return parse({"name": "x", "variants": [{"name": "v", **variant}],
                  "ready": ready or {"http": "http://127.0.0.1:{port}/"}, **top}, "x.yaml")


def run(exp: Experiment, samples: list[Sample] | None = None) -> object:
    return asyncio.run(Runner(exp, emit=samples.append if samples is not None else None).run())


def processes_with(marker: str) -> list[str]:
    return [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
            if marker in " ".join(p.info["cmdline"] or []) and "pytest" not in " ".join(p.info["cmdline"] or [])]


# -- the experiment files ------------------------------------------------------------------------

@pytest.mark.parametrize("name", MINE)
def test_experiment_file_validates(name: str) -> None:
    exp, digest = load_file(EXPERIMENTS / f"{name}.yaml")
    assert exp.name == name and len(digest) == 64
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    assert text.startswith("#") and "seed" in text.split("\nname:")[0], "a comment header quoting the seed"
    for v in exp.variants:
        assert v.executables(str(EXPERIMENTS)), f"{v.name}: executables() names what it execs"


def test_bad_variant_keys_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml: variants\[0\]: expected exactly one of command, firecracker"):
        experiment({"runtime": "vm", "command": ["qemu"], "firecracker": {"kernel": "k"}})
    with pytest.raises(ConfigError, match=r"variants\[0\].cold: expected command"):
        experiment({"runtime": "serverless", "invoke": "http://h/f", "cold": {}})
    with pytest.raises(ConfigError, match=r"ready.dns.server: expected HOST:PORT"):
        experiment({"runtime": "process", "command": ["x"]}, {"dns": {"server": "localhost", "name": "a"}})
    with pytest.raises(ConfigError, match=r"variants\[0\].runtime: expected one of process, container, vm, wasm, "
                                          r"systemd, kubernetes, serverless"):
        experiment({"runtime": "lambda"})
    with pytest.raises(ConfigError, match=r"variants\[0\].cold_header: invalid regex"):
        experiment({"runtime": "serverless", "invoke": "http://h/f", "cold": {"wait": "1s"}, "cold_header": "(("})


def test_executables_and_images_of_every_runtime(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n"
                        "        - {image: 'nginx:1.27', ports: [{containerPort: {port}}]}\n"
                        "        - {image: 'busybox:1'}\n")
    cases = [
        ({"runtime": "process", "command": ["{here}/bin/srv"]}, ["/exp/bin/srv"], []),
        ({"runtime": "container", "image": "alpine:3", "engine": "docker"}, ["docker"], ["alpine:3"]),
        ({"runtime": "vm", "command": ["qemu-system-x86_64"]}, ["qemu-system-x86_64"], []),
        ({"runtime": "vm", "firecracker": {"kernel": "k", "binary": "/opt/fc/firecracker"}}, ["/opt/fc/firecracker"],
         []),
        ({"runtime": "vm", "cloud_hypervisor": {"kernel": "k"}}, ["cloud-hypervisor"], []),
        ({"runtime": "wasm", "command": ["wasmedge", "m.wasm"]}, ["wasmedge"], []),
        ({"runtime": "systemd", "command": ["/usr/bin/srv"]}, ["systemd-run", "systemctl", "/usr/bin/srv"], []),
        ({"runtime": "kubernetes", "manifest": str(manifest)}, ["kubectl"], ["nginx:1.27", "busybox:1"]),
        ({"runtime": "serverless", "invoke": "http://h/f", "deploy": ["faas-cli", "deploy"],
          "cold": {"command": ["kubectl", "scale"], "until": ["sh", "-c", "true"]}}, ["faas-cli", "kubectl", "sh"], []),
    ]
    for variant, exes, images in cases:
        v = experiment(variant).variants[0]
        assert v.executables("/exp") == exes, variant
        assert v.images("/exp") == images, variant


# -- container runtime classes and VM presets (pure: no Kata, Firecracker or cloud-hypervisor here) -------

def test_oci_runtime_is_a_global_flag_for_podman_and_a_run_flag_for_docker(tmp_path: Path) -> None:
    exp = experiment({"runtime": "container", "image": "img:1", "oci_runtime": "kata", "run_args": ["-p", "{port}:80"]})
    rt = make_runtime(exp.variants[0], exp)
    assert rt.run_argv(ctx(tmp_path)) == ["podman", "--runtime", "kata", "run", "-d", "--name", "runlab-x-v-1-abcd",  # type: ignore[attr-defined]
                                          "-p", "8123:80", "img:1"]
    exp = experiment({"runtime": "container", "engine": "docker", "image": "img:1",
                      "oci_runtime": "io.containerd.kata.v2"})
    rt = make_runtime(exp.variants[0], exp)
    assert rt.run_argv(ctx(tmp_path)) == ["docker", "run", "-d", "--name", "runlab-x-v-1-abcd", "--runtime",  # type: ignore[attr-defined]
                                          "io.containerd.kata.v2", "img:1"]


def test_firecracker_config_file_preset(tmp_path: Path) -> None:
    exp = experiment({"runtime": "vm", "firecracker": {
        "kernel": "{here}/vmlinux", "rootfs": "{here}/rootfs.ext4", "vcpus": 2, "memory_mib": 256, "tap": "fc-tap0",
        "boot_args": "console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off"}})
    rt = make_runtime(exp.variants[0], exp)
    argv = rt.argv(ctx(tmp_path))  # type: ignore[attr-defined]
    assert argv == ["firecracker", "--no-api", "--config-file", str(tmp_path / "vm-config.json")]
    assert json.loads((tmp_path / "vm-config.json").read_text()) == {
        "boot-source": {"kernel_image_path": "/exp/vmlinux",
                        "boot_args": "console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off"},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/exp/rootfs.ext4", "is_root_device": True,
                    "is_read_only": False}],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "network-interfaces": [{"iface_id": "eth0", "guest_mac": "06:00:ac:10:00:02", "host_dev_name": "fc-tap0"}]}


def test_firecracker_api_mode_sends_the_boot_sequence_over_a_unix_socket(tmp_path: Path) -> None:
    """The API client against a real unix-socket HTTP server that records what it got (Firecracker's API shape)."""
    exp = experiment({"runtime": "vm", "firecracker": {"mode": "api", "kernel": "/k", "initrd": "/i"}})
    fc = exp.variants[0].firecracker  # type: ignore[union-attr]
    assert fc is not None
    calls = firecracker_api_calls(fc, {})
    assert [(m, p) for m, p, _ in calls] == [("PUT", "/boot-source"), ("PUT", "/machine-config"), ("PUT", "/actions")]
    rt = make_runtime(exp.variants[0], exp)
    assert rt.argv(ctx(tmp_path)) == ["firecracker", "--api-sock", str(tmp_path / "firecracker.sock")]  # type: ignore[attr-defined]
    got: list[tuple[str, dict[str, object]]] = []

    short = Path(tempfile.mkdtemp(prefix="fc-"))  # a unix socket path has at most 107 bytes

    async def main(fail_on: str | None) -> None:
        sock = str(short / f"api-{len(got)}.sock")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                              if ln.lower().startswith(b"content-length"))
                body = json.loads(await reader.readexactly(length))
                path = head.split(b" ")[1].decode()
                got.append((path, body))
                if path == fail_on:
                    msg = b'{"fault_message": "no kernel"}'
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(msg), msg))
                else:
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handle, sock)
        async with server:
            await api_request(sock, calls)

    asyncio.run(main(None))
    assert got == [(p, b) for _, p, b in calls]
    assert got[0][1] == {"kernel_image_path": "/k", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
                         "initrd_path": "/i"}
    assert got[-1] == ("/actions", {"action_type": "InstanceStart"})
    with pytest.raises(RuntimeError, match="PUT /machine-config: HTTP 400"):
        asyncio.run(main("/machine-config"))
    shutil.rmtree(short)


def test_firecracker_api_mode_boots_through_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mode: api end to end against tests/standins/firecracker (API socket, boot sequence, a stand-in guest)."""
    monkeypatch.setenv("RUNLAB_KVM", "usable")  # the stand-in needs no KVM (this host's is PVM: the pre-flight says so)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\0" * 4096)
    fc = {"mode": "api", "binary": str(STANDINS / "firecracker"), "kernel": str(kernel),
          "boot_args": "console=ttyS0 runlab.port={port} runlab.boot_ms=30"}
    exp = experiment({"runtime": "vm", "firecracker": fc}, {"http": "http://127.0.0.1:{port}/", "timeout": "10s"},
                     repeat=3, warmup=0, phases=["cold_start", "size"])
    result = run(exp)
    v = result.variants[0]  # type: ignore[attr-defined]
    assert v.startup_ms is not None and v.startup_ms.n == 3, v.error
    assert v.startup_ms.min >= 30  # the stand-in guest boots in 30 ms after InstanceStart
    assert v.size is not None and v.size.bytes == 4096
    bad = experiment({"runtime": "vm", "firecracker": {**fc, "kernel": str(tmp_path / "gone")}},
                     {"http": "http://127.0.0.1:{port}/", "timeout": "10s"}, repeat=1, warmup=0,
                     phases=["cold_start"])
    (tmp_path / "gone").write_bytes(b"")

    class Vanish(Runner):  # the kernel goes between the pre-flight and the start: the VMM's API says so
        async def cold_starts(self, runtimes: dict[str, Any]) -> None:
            (tmp_path / "gone").unlink()
            await super().cold_starts(runtimes)

    t0 = time.monotonic()
    err = asyncio.run(Vanish(bad).run()).variants[0].error
    assert "PUT /boot-source: HTTP 400" in err and "Invalid kernel path" in err, err
    assert time.monotonic() - t0 < 8, "an API error fails the start at once, not at the readiness timeout"
    missing = experiment({"runtime": "vm", "firecracker": {**fc, "kernel": str(tmp_path / "missing")}},
                         repeat=1, warmup=0, phases=["cold_start"])
    skipped = run(missing).variants[0]  # type: ignore[attr-defined]
    assert skipped.skipped.startswith(f"kernel {tmp_path}/missing is missing") and not skipped.error
    assert not processes_with(str(STANDINS / "firecracker"))


def test_cloud_hypervisor_preset() -> None:
    exp = experiment({"runtime": "vm", "cloud_hypervisor": {
        "kernel": "{here}/vmlinux", "disks": ["{here}/a.img", "{here}/b.img"], "cpus": 2, "memory_mib": 256,
        "tap": "tap0", "guest_mac": "12:34:56:78:9a:bc", "extra_args": ["--seccomp", "false"]}})
    ch = exp.variants[0].cloud_hypervisor  # type: ignore[union-attr]
    assert ch is not None
    assert cloud_hypervisor_argv(ch, {"here": "/exp"}) == [
        "cloud-hypervisor", "--kernel", "/exp/vmlinux", "--disk", "path=/exp/a.img", "path=/exp/b.img",
        "--cmdline", "console=ttyS0 panic=-1", "--cpus", "boot=2", "--memory", "size=256M",
        "--net", "tap=tap0,mac=12:34:56:78:9a:bc", "--serial", "tty", "--console", "off", "--seccomp", "false"]


def test_vm_presets_say_why_they_cannot_run_here() -> None:
    exp = experiment({"runtime": "vm", "firecracker": {"kernel": "/k", "binary": "no-such-firecracker"}})
    with pytest.raises(RuntimeUnavailable, match="no-such-firecracker: not found"):
        asyncio.run(make_runtime(exp.variants[0], exp).prepare())
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        exp = experiment({"runtime": "vm", "cloud_hypervisor": {"kernel": "/k", "binary": sys.executable}})
        with pytest.raises(RuntimeUnavailable, match="needs read-write /dev/kvm"):
            asyncio.run(make_runtime(exp.variants[0], exp).prepare())


# -- systemd (systemd is not PID 1 here: command lines, cgroup reading, and the refusal) ------------------

def test_systemd_run_command_line(tmp_path: Path) -> None:
    exp = experiment({"runtime": "systemd", "command": ["{here}/srv", "--port", "{port}"], "cwd": "{run_dir}",
                      "env": {"GREETING": "hi {variant}"},
                      "properties": {"MemoryMax": "32M", "DynamicUser": "yes"}})
    rt = make_runtime(exp.variants[0], exp)
    c = ctx(tmp_path)
    assert rt.run_argv(c) == [  # type: ignore[attr-defined]
        "systemd-run", "--unit=runlab-x-v-1-abcd", "--collect", "--quiet", "--property=Type=exec",
        f"--property=StandardOutput=append:{tmp_path}/output.log", "--property=StandardError=inherit",
        "--property=MemoryMax=32M", "--property=DynamicUser=yes", "--setenv=GREETING=hi v",
        f"--working-directory={tmp_path}", "--", "/exp/srv", "--port", "8123"]
    user = experiment({"runtime": "systemd", "command": ["/srv"], "user": True, "service_type": "notify"})
    urt = make_runtime(user.variants[0], user)
    assert urt.run_argv(c)[:2] == ["systemd-run", "--user"]  # type: ignore[attr-defined]
    assert "--property=Type=notify" in urt.run_argv(c)  # type: ignore[attr-defined]
    assert urt.systemctl == ["systemctl", "--user"]  # type: ignore[attr-defined]


def test_systemd_unit_pids_come_from_the_units_cgroup(tmp_path: Path) -> None:
    unit = tmp_path / "unified" / "system.slice" / "runlab-x.service"
    (unit / "sub").mkdir(parents=True)
    (unit / "cgroup.procs").write_text("101\n102\n")
    (unit / "sub" / "cgroup.procs").write_text("103\n")
    roots = (str(tmp_path / "missing"), str(tmp_path / "unified"))
    assert unit_pids("/system.slice/runlab-x.service", roots) == [101, 102, 103]
    assert unit_pids("/system.slice/other.service", roots) == []


def systemd_booted() -> bool:
    return Path("/run/systemd/system").is_dir()


def test_systemd_runtime_refuses_clearly_without_a_manager_and_runs_with_one(tmp_path: Path) -> None:
    """Here (no systemd as PID 1) prepare() names the reason; on a systemd machine the unit really runs."""
    need("systemd-run")
    exp = experiment({"runtime": "systemd", "command": [str(HELLO), "--port", "{port}"]},
                     {"http": "http://127.0.0.1:{port}/", "timeout": "10s"}, repeat=2, warmup=0,
                     phases=["cold_start", "footprint"], settle="0.2s")
    if not systemd_booted():
        with pytest.raises(RuntimeUnavailable, match="no systemd manager to talk to here"):
            asyncio.run(make_runtime(exp.variants[0], exp).prepare())
        return
    result = run(exp)
    fig = result.variants[0].startup_ms  # type: ignore[attr-defined]
    assert fig is not None and fig.n == 2
    assert result.variants[0].footprint.cgroup_bytes  # type: ignore[attr-defined]


NSPAWN_ROOT = REPO / "build" / "cache" / "systemd-nspawn" / "bookworm"


@pytest.fixture
def systemd_container(tmp_path: Path) -> Iterator[list[str]]:
    """A booted systemd (Debian 12, PID 1 of its own) in systemd-nspawn, with this checkout, the cached
    workloads and this Python bound in; yields the nsenter prefix that runs a command inside it."""
    need("systemd-nspawn")
    need("nsenter")
    r = subprocess.run(["bash", str(STANDINS / "systemd-root.sh"), str(NSPAWN_ROOT)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    binds = {str(REPO), str((REPO / "build" / "cache").resolve()), str(tmp_path)}
    proc = subprocess.Popen(
        ["systemd-nspawn", "-q", "-D", str(NSPAWN_ROOT), "--volatile=overlay", "--register=no", "--keep-unit",
         "--console=passive", "-M", f"runlab-{os.getpid()}", "-b", f"--bind-ro={sys.base_prefix}",
         # The hardened unit (ProtectHome, PrivateTmp) cannot see a checkout under /root, /home or /tmp: its
         # binary is where the package installs it, and {workloads} then points there too.
         f"--bind-ro={(REPO / 'build' / 'cache' / 'workloads').resolve()}:/usr/lib/runlab/workloads",
         *(f"--bind={b}" for b in sorted(binds))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        leader = wait_until(lambda: [c.pid for c in psutil.Process(proc.pid).children()] if proc.poll() is None
                            else pytest.fail(f"systemd-nspawn exited: {proc.stderr.read() if proc.stderr else ''}"),
                            30, "the container's init")[0]
        inside = ["nsenter", "-t", str(leader), "-a"]
        wait_until(lambda: subprocess.run([*inside, "systemctl", "is-system-running"], capture_output=True,
                                          text=True).stdout.strip() in ("running", "degraded"), 60, "boot")
        yield inside
    finally:
        proc.terminate()  # nspawn asks the container's systemd to power off
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_systemd_runtime_for_real_in_a_booted_systemd_container(systemd_container: list[str],
                                                                tmp_path: Path) -> None:
    """static-binary-systemd.yaml, run by runlab inside a container whose PID 1 is systemd."""
    inside = systemd_container
    out = tmp_path / "result.json"
    exp = EXPERIMENTS / "static-binary-systemd.yaml"  # as shipped: {workloads} is /usr/lib/runlab/workloads
    r = subprocess.run([*inside, sys.executable, "-m", "agent", "run", str(exp),
                        "--repeat", "3", "--quiet", "--json", str(out)], capture_output=True, text=True,
                       timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(out.read_text())
    by_name = {v["name"]: v for v in result["variants"]}
    for name in ("unit", "hardened-unit"):
        v = by_name[name]
        assert v["runtime"] == "systemd" and not v["error"], v["error"]
        assert v["startup_ms"]["n"] == 3
        assert v["footprint"]["processes"] == 1 and v["footprint"]["pss_bytes"] > 0
        assert v["load"][0]["ok"] == 1000 and v["load"][0]["errors"] == 0
    # A unit that fails at once (systemd-run reports it) or a little later (the unit is watched) fails the start
    # within about a second, not at the 30 s readiness timeout.
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: bad\nrepeat: 1\nwarmup: 0\nphases: [cold_start]\nready: {http: "http://127.0.0.1:{port}/", '
                   'timeout: 30s}\nvariants:\n  - {name: falls, runtime: systemd, command: ["/bin/false"]}\n'
                   '  - {name: later, runtime: systemd, command: ["/bin/sh", "-c", "sleep 0.5; exit 3"]}\n')
    t0 = time.monotonic()
    r = subprocess.run([*inside, sys.executable, "-m", "agent", "run", str(bad), "--quiet", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    errors = [v["error"] for v in json.loads(out.read_text())["variants"]]
    assert "exited with code 1 before it was ready" in errors[0] or re.search(
        r"unit runlab-bad-falls-\S+ (exited|is failed)", errors[0]), errors  # systemd-run or the watch saw it first
    assert re.search(r"unit runlab-bad-later-\S+ (exited|is failed .*exit status 3)", errors[1]), errors
    assert time.monotonic() - t0 < 20
    left = subprocess.run([*inside, "systemctl", "list-units", "--all", "--plain", "--no-legend", "runlab-*"],
                          capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


# -- DNS probe and DNS load against a real dnsmasq --------------------------------------------------

HOSTS = EXPERIMENTS / "edge-dns" / "hosts"


def dnsmasq_argv(port: int | str) -> list[str]:
    return ["dnsmasq", "--keep-in-foreground", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", f"--addn-hosts={HOSTS}", "--local=/lan/", "--conf-file=/dev/null",
            "--pid-file=", "--user=root", "--log-facility=-"]


@pytest.fixture
def dnsmasq() -> Iterator[int]:
    need("dnsmasq")
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(dnsmasq_argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(port), 10, "dnsmasq to answer")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    q = DnsQuery(server=f"127.0.0.1:{port}", name="nas.lan")
    try:
        return asyncio.run(query(q, f"127.0.0.1:{port}", 0.2)).rcode == "NOERROR"
    except (OSError, TimeoutError):
        return False


def test_dns_packets_round_trip_against_dnsmasq(dnsmasq: int) -> None:
    pkt = build_query(0x1234, "nas.lan", "A")
    assert pkt[:2] == b"\x12\x34" and pkt.endswith(b"\x03nas\x03lan\x00\x00\x01\x00\x01")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(pkt, ("127.0.0.1", dnsmasq))
        ans = parse_response(s.recv(4096))
        s.sendto(build_query(7, "nope.lan", "A"), ("127.0.0.1", dnsmasq))
        missing = parse_response(s.recv(4096))
    assert ans == DnsAnswer(qid=0x1234, rcode="NOERROR", records=["nas.lan. A 10.1.2.4"])
    assert missing.rcode == "NXDOMAIN" and missing.records == []
    with pytest.raises(ValueError, match="not a response"):
        parse_response(pkt)


def test_dns_ready_and_dns_load_on_dnsmasq_started_by_the_engine() -> None:
    need("dnsmasq")
    exp = experiment({"runtime": "process", "command": dnsmasq_argv("{port}")},
                     {"dns": {"server": "127.0.0.1:{port}", "name": "camera.lan", "expect": r"A 10\.1\.2\.5$"},
                      "timeout": "10s"},
                     repeat=3, warmup=1, settle="0.2s",
                     load={"dns": {"server": "127.0.0.1:{port}", "name": "nas.lan"}, "requests": 500,
                           "concurrency": 4, "rate": 200, "duration": "1s", "timeout": "2s"})
    samples: list[Sample] = []
    result = run(exp, samples)
    v = result.variants[0]  # type: ignore[attr-defined]
    assert v.startup_ms is not None and v.startup_ms.n == 3 and not v.startup_ms.failures
    modes = {lf.mode: lf for lf in v.load}
    assert set(modes) == {"closed", "open"}
    assert modes["closed"].ok == 500 and modes["closed"].errors == 0
    assert modes["open"].ok == 200 and modes["open"].errors == 0
    assert modes["closed"].url.startswith("dns://127.0.0.1:") and modes["closed"].url.endswith("/nas.lan?type=A")
    assert modes["closed"].latency_ms.p99 >= modes["closed"].latency_ms.median > 0
    assert v.footprint is not None and v.footprint.pss_bytes > 0
    assert [s.tags["mode"] for s in samples if s.tags["figure"] == "load"] == ["closed", "open"]
    assert not processes_with(str(HOSTS))


def test_dns_probe_with_a_wrong_expectation_never_becomes_ready() -> None:
    need("dnsmasq")
    exp = experiment({"runtime": "process", "command": dnsmasq_argv("{port}")},
                     {"dns": {"server": "127.0.0.1:{port}", "name": "nas.lan", "expect": r"10\.9\.9\.9"},
                      "timeout": "1s"}, repeat=1, warmup=0, phases=["cold_start"])
    result = run(exp)
    v = result.variants[0]  # type: ignore[attr-defined]
    assert v.startup_ms is None or v.startup_ms.n == 0
    assert "not ready after 1s" in (v.error or "")
    assert not processes_with(str(HOSTS))


def test_edge_dns_file_runs_its_dnsmasq_variant() -> None:
    """The shipped edge-dns.yaml, reduced to the variant this machine can run (dnsmasq as a process)."""
    need("dnsmasq")
    exp, _ = load_file(EXPERIMENTS / "edge-dns.yaml")
    exp.variants = [v for v in exp.variants if v.name == "dnsmasq"]
    exp.reference, exp.repeat, exp.warmup, exp.cooldown, exp.settle = None, 3, 1, None, 0.2  # type: ignore[assignment]
    assert exp.load is not None
    exp.load.requests, exp.load.rate, exp.load.duration = 300, 100, 1.0  # type: ignore[assignment]
    result = asyncio.run(Runner(exp, file=str(EXPERIMENTS / "edge-dns.yaml")).run())
    v = result.variants[0]
    assert v.startup_ms is not None and v.startup_ms.n == 3
    assert [(lf.mode, lf.ok, lf.errors) for lf in v.load] == [("closed", 300, 0), ("open", 100, 0)]


# -- kubernetes through the kubectl stand-in -------------------------------------------------------

def test_manifest_rendering_fills_placeholders_and_sets_the_runtime_class() -> None:
    text = (EXPERIMENTS / "kubernetes" / "hello-hostport.yaml").read_text()
    out = render_manifest(text, {"port": "8123", "name": "runlab-x-1"}, None)
    doc = yaml.safe_load(out)
    assert doc["metadata"]["name"] == "runlab-x-1"
    assert doc["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8123, "hostPort": 8123}]
    assert "runtimeClassName" not in doc["spec"]["template"]["spec"]
    kata = yaml.safe_load(render_manifest(text, {"port": "8123", "name": "n"}, "kata"))
    assert kata["spec"]["template"]["spec"]["runtimeClassName"] == "kata"
    pod = yaml.safe_load(render_manifest("kind: Pod\nspec: {containers: []}\n", {}, "kata"))
    assert pod["spec"]["runtimeClassName"] == "kata"


def test_pod_pids_come_from_pod_cgroups(tmp_path: Path) -> None:
    uid = "0b7c6a1e-1111-2222-3333-444455556666"
    cgfs = tmp_path / "kubepods" / "besteffort" / f"pod{uid}" / "abc123"
    sysd = tmp_path / "kubepods.slice" / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice" / "cri-containerd-1"
    other = tmp_path / "kubepods" / "podffffffff-0000-0000-0000-000000000000" / "x"
    for d, pids in ((cgfs, "11\n12\n"), (sysd, "13\n"), (other, "99\n")):
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text(pids)
    assert sorted(pod_cgroup_pids([uid], str(tmp_path))) == [11, 12, 13]


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for the stand-in; afterwards, every process it started must be gone."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    yield kubeconfig
    state = Path(str(kubeconfig) + ".state") / "objects.json"
    left = json.loads(state.read_text()) if state.exists() else {}
    for obj in left.values():
        with pytest.raises(ProcessLookupError):
            os.kill(obj["pid"], 0)


def kube_calls(kubeconfig: Path) -> list[list[str]]:
    log = Path(str(kubeconfig) + ".state") / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_kubernetes_runtime_applies_probes_and_deletes_through_kubectl(kube: Path, tmp_path: Path) -> None:
    assert HELLO.exists(), "build/cache/workloads/hello: run `make workloads`"
    manifest = tmp_path / "hello.yaml"
    manifest.write_text((EXPERIMENTS / "kubernetes" / "hello-hostport.yaml").read_text()
                        .replace('command: ["/hello"', f'command: ["{HELLO}"'))
    exp = experiment({"runtime": "kubernetes", "manifest": str(manifest), "kubectl": str(STANDINS / "kubectl"),
                      "kubeconfig": str(kube), "context": "k3s-test", "namespace": "bench",
                      "rollout": ["deployment/{name}"], "selector": "app={name}", "runtime_class": "kata"},
                     {"http": "http://127.0.0.1:{port}/", "expect_body": "hello", "timeout": "20s"},
                     repeat=3, warmup=1, phases=["cold_start", "footprint"], settle="0.2s")
    result = run(exp)
    v = result.variants[0]  # type: ignore[attr-defined]
    assert v.startup_ms is not None and v.startup_ms.n == 3 and not v.startup_ms.failures, v
    calls = kube_calls(kube)
    verbs = [next(a for a in c if not a.startswith("-") and a not in (str(kube), "k3s-test", "bench")) for c in calls]
    assert verbs.count("apply") == 5 and verbs.count("delete") == 5  # 1 warm-up + 3 starts + the footprint start
    assert 1 <= verbs.count("rollout") <= 5  # a check beside the probe: a start may be ready (and stopped) first
    for c in calls:
        assert c[:6] == ["--kubeconfig", str(kube), "--context", "k3s-test", "--namespace", "bench"]
    assert any(c[6:8] == ["get", "pods"] and "-l" in c for c in calls), "pods looked up for memory"
    applied = [Path(c[c.index("-f") + 1]) for c in calls if "apply" in c]
    assert all(p.name == "manifest.yaml" for p in applied)
    assert not processes_with(str(HELLO))


def test_kubernetes_workload_that_dies_fails_the_start_and_is_deleted(kube: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text('apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: "{name}"}\nspec:\n  template:\n'
                        '    spec:\n      containers:\n        - {name: c, image: x, command: ["false"]}\n')
    exp = experiment({"runtime": "kubernetes", "manifest": str(manifest), "kubectl": str(STANDINS / "kubectl"),
                      "kubeconfig": str(kube), "rollout": ["deployment/{name}"]},
                     {"http": "http://127.0.0.1:{port}/", "timeout": "20s"}, repeat=1, warmup=0,
                     phases=["cold_start"])
    t0 = time.monotonic()
    result = run(exp)
    v = result.variants[0]  # type: ignore[attr-defined]
    assert "rollout status deployment/runlab-x-v-" in (v.error or ""), v.error
    assert time.monotonic() - t0 < 15, "a failed rollout ends the wait before the 20 s readiness timeout"
    assert any("delete" in c for c in kube_calls(kube))


@pytest.mark.parametrize("runtime", ["kubernetes", "serverless"])
def test_interrupting_a_run_leaves_nothing_behind(tmp_path: Path, runtime: str) -> None:
    """SIGINT (Ctrl-C) mid-run: the run says cancelled; no pod process, no function process is left."""
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("kind: Config\n")
    gw = None
    if runtime == "kubernetes":
        (tmp_path / "m.yaml").write_text(
            'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: "{name}"}\nspec:\n  template:\n    spec:\n'
            f'      containers:\n        - {{name: c, image: x, command: ["{HELLO}", "--port", "{{port}}", '
            f'"--body", "{marker}"]}}\n')
        variant = {"runtime": "kubernetes", "manifest": str(tmp_path / "m.yaml"), "kubectl": str(STANDINS / "kubectl"),
                   "kubeconfig": str(kubeconfig)}
        ready: dict[str, object] = {"http": "http://127.0.0.1:{port}/"}
    else:
        gw = subprocess.Popen([sys.executable, str(STANDINS / "gateway.py"), "--function", "fn", "--",
                               sys.executable, str(STANDINS / "function.py"), "--port", "{port}", "--delay-ms", "50",
                               "--tag", marker], stdout=subprocess.PIPE, text=True)
        assert gw.stdout is not None
        port = int(gw.stdout.readline())
        variant = serverless(port, scale_to_zero(port))
        ready = {"log": "^invocation 1 ok\\b"}
    exp_file = tmp_path / "x.yaml"
    exp_file.write_text(yaml.safe_dump({"name": "intr", "repeat": 1000, "phases": ["cold_start"],
                                        "variants": [{"name": "v", **variant}], "ready": ready}))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(exp_file), "--quiet"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: workloads(marker), 60, "a workload to be running", interval=0.01)
        time.sleep(0.3)  # well into a start/stop cycle
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        assert "cancelled" in err and "Traceback" not in err, err[-2000:]
        if runtime == "kubernetes":
            assert workloads(marker) == []
            objects = Path(str(kubeconfig) + ".state") / "objects.json"
            assert json.loads(objects.read_text()) == {}
    finally:
        if gw is not None:
            gw.terminate()
            gw.wait(10)
    assert workloads(marker) == []


def workloads(marker: str) -> list[str]:
    """The pod's / function's processes (not the gateway, whose arguments carry the function's command line)."""
    return [c for c in processes_with(marker) if "gateway.py" not in c]


# -- serverless through the gateway stand-in --------------------------------------------------------

@pytest.fixture
def gateway(request: pytest.FixtureRequest) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    idle = getattr(request, "param", 0.0)
    proc = subprocess.Popen([sys.executable, str(STANDINS / "gateway.py"), "--function", "fn", "--idle-timeout",
                             str(idle), "--", sys.executable, str(STANDINS / "function.py"), "--port", "{port}",
                             "--delay-ms", "150"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)
    assert not processes_with(str(STANDINS / "function.py"))


def gateway_state(port: int) -> dict[str, object]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/system/function/fn", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def serverless(port: int, cold: dict[str, object], **extra: object) -> dict[str, object]:
    return {"runtime": "serverless", "invoke": f"http://127.0.0.1:{port}/function/fn", "method": "POST",
            "body": '{{"camera": "door"}}', "cold": cold, "cold_header": "^X-Cold-Start: *true", "warm": 3, **extra}


def scale_to_zero(port: int) -> dict[str, object]:
    return {"command": ["curl", "-fsS", "-X", "POST", "-d", '{{"replicas": 0}}',
                        f"http://127.0.0.1:{port}/system/scale-function/fn"],
            "until": ["sh", "-c", f"curl -fsS http://127.0.0.1:{port}/system/function/fn | grep -q '\"replicas\": 0'"]}


def test_serverless_cold_starts_after_scale_to_zero(gateway: tuple[int, subprocess.Popen[str]]) -> None:
    need("curl")
    port, _ = gateway
    exp = parse({"name": "faas", "repeat": 3, "warmup": 1, "phases": ["cold_start"],
                 "variants": [{"name": "cold", **serverless(port, scale_to_zero(port))}],
                 "ready": {"log": "^invocation 1 ok\\b"}}, "faas.yaml")
    samples: list[Sample] = []
    result = run(exp, samples)
    v = result.variants[0]  # type: ignore[attr-defined]
    assert v.startup_ms is not None and v.startup_ms.n == 3, v
    assert v.startup_ms.min >= 150, "the function takes 150 ms to come up: every sample includes it"
    starts = [s for s in samples if s.tags["figure"] == "startup_ms"]
    assert [s.fields["cold_detected"] for s in starts] == [True] * 4
    assert all(s.fields["warm_n"] == 3 and s.fields["cold_step_ok"] is True for s in starts)
    assert all(float(s.fields["warm_p50_ms"]) < float(s.fields["value"]) for s in starts)  # type: ignore[arg-type]
    assert gateway_state(port)["coldStarts"] == 4


def test_serverless_cold_and_warm_variants_of_one_function_interleaved(
        gateway: tuple[int, subprocess.Popen[str]]) -> None:
    """The cold step runs right before each cold sample: the warm variant's samples in between stay warm."""
    port, _ = gateway
    exp = parse({"name": "faas", "repeat": 3, "warmup": 1, "phases": ["cold_start"], "variants": [
        {"name": "cold", **serverless(port, scale_to_zero(port))},
        {"name": "warm", **serverless(port, {"command": ["true"]})}],
        "ready": {"log": "^invocation 1 ok\\b"}}, "faas.yaml")
    samples: list[Sample] = []
    result = run(exp, samples)
    flags = {name: [s.fields["cold_detected"] for s in samples
                    if s.tags["figure"] == "startup_ms" and s.tags["variant"] == name] for name in ("cold", "warm")}
    assert flags == {"cold": [True] * 4, "warm": [False] * 4}
    cold, warm = (v.startup_ms for v in result.variants)  # type: ignore[attr-defined]
    assert cold.min >= 150 > warm.max, (cold, warm)


def test_serverless_detects_a_start_that_was_not_cold(gateway: tuple[int, subprocess.Popen[str]]) -> None:
    """A cold step that does nothing: the function says it was warm, and the samples say so."""
    port, _ = gateway
    exp = parse({"name": "faas", "repeat": 2, "warmup": 1, "phases": ["cold_start"],
                 "variants": [{"name": "warm", **serverless(port, {"command": ["true"]})}],
                 "ready": {"log": "^invocation 1 ok\\b"}}, "faas.yaml")
    samples: list[Sample] = []
    run(exp, samples)
    flags = [s.fields["cold_detected"] for s in samples if s.tags["figure"] == "startup_ms"]
    assert flags == [True, False, False]  # only the very first invocation found no replica
    assert gateway_state(port)["coldStarts"] == 1


@pytest.mark.parametrize("gateway", [0.3], indirect=True)
def test_serverless_cold_by_waiting_for_the_idle_timeout(gateway: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = gateway
    exp = parse({"name": "faas", "repeat": 2, "warmup": 0, "phases": ["cold_start"],
                 "variants": [{"name": "idle", **serverless(port, {"wait": "1s"}, warm=1)}],
                 "ready": {"log": "^invocation 1 ok\\b"}}, "faas.yaml")
    samples: list[Sample] = []
    run(exp, samples)
    assert [s.fields["cold_detected"] for s in samples if s.tags["figure"] == "startup_ms"] == [True, True]
    assert gateway_state(port)["coldStarts"] == 2


def test_serverless_gateway_down_is_a_clear_failure() -> None:
    port = free_port()
    exp = parse({"name": "faas", "repeat": 1, "warmup": 0, "phases": ["cold_start"],
                 "variants": [{"name": "down", **serverless(port, {"wait": "0.01s"}, invoke_timeout="1s")}],
                 "ready": {"log": "^invocation 1 ok\\b"}}, "faas.yaml")
    t0 = time.monotonic()
    result = run(exp)
    v = result.variants[0]  # type: ignore[attr-defined]
    assert f"the gateway 127.0.0.1:{port}" in v.skipped and "does not accept connections" in v.skipped, v
    assert time.monotonic() - t0 < 10, "the pre-flight says so before any invocation is attempted"


# -- kata-vs-runc.yaml: its runc variant, for real ------------------------------------------------

def test_kata_vs_runc_file_runs_its_runc_variant() -> None:
    need("podman")
    assert (REPO / "build" / "cache" / "podman-store").exists(), "run `make workloads` first"
    exp, _ = load_file(EXPERIMENTS / "kata-vs-runc.yaml")
    exp.variants = [v for v in exp.variants if v.name == "runc"]
    # podman's store remembers its absolute path: where build/cache is a symlink (a git worktree), use its target.
    cache = str((REPO / "build" / "cache").resolve())
    exp.variants[0].engine_args = [a.replace("{here}/../../build/cache", cache)  # type: ignore[union-attr]
                                   for a in exp.variants[0].engine_args]  # type: ignore[union-attr]
    exp.repeat, exp.warmup, exp.settle, exp.load, exp.phases = 3, 1, 0.5, None, ["cold_start", "footprint"]  # type: ignore[assignment]
    result = asyncio.run(Runner(exp, file=str(EXPERIMENTS / "kata-vs-runc.yaml")).run())
    v = result.variants[0]
    assert v.startup_ms is not None and v.startup_ms.n == 3, v.error
    assert v.footprint is not None and v.footprint.processes >= 2  # the server and conmon
    r = subprocess.run(["podman", "--root", f"{cache}/podman-store/root", "--runroot",
                        "/tmp/runlab-podman-runroot", "--storage-driver=vfs", "ps", "-a", "--format", "{{.Names}}"],
                       capture_output=True, text=True)
    assert not [n for n in r.stdout.split() if n.startswith("runlab-kata-vs-runc-")]


def test_missing_kubectl_fails_the_experiment_before_any_sample() -> None:
    """Where a runtime's tool is missing the pre-flight skips the variant before any sample, naming the tool."""
    exp = experiment({"runtime": "kubernetes", "manifest": "/nonexistent.yaml", "kubectl": "no-such-kubectl"})
    result = run(exp)
    assert result.status == "skipped"  # type: ignore[attr-defined]
    assert result.variants[0].skipped.startswith("no-such-kubectl is not installed")  # type: ignore[attr-defined]
    assert shutil.which("no-such-kubectl") is None
