"""The slow package proofs, run by ``make test-packaging`` (not by ``make test``: minutes under emulation).

- arm64 agent: built in the arm64 bookworm chroot under qemu-user; ``dpkg-deb --info`` names the right
  package, version, architecture, dependencies and conffile; the frozen binary is aarch64 and runs
  ``--version`` and a short local ``run`` under qemu-user (labelled: emulated, on this x86_64 machine);
- collector (amd64 and arm64): built, ``--version`` under both names, the operator CLI answers;
- lintian: every package clean (only the overrides packaging/lintian-overrides justifies).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runlab import __version__
from tests.conftest import REPO, need
from tests.test_packaging_install import build_deb

ARM64_ROOT = REPO / "build" / "cache" / "packaging" / "chroot-arm64"
HELLO = REPO / "build" / "cache" / "workloads" / "hello"


def fields(deb: Path) -> dict[str, str]:
    out = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith(" "))


def lintian(deb: Path) -> None:
    need("lintian")
    p = subprocess.run(["lintian", "--fail-on", "warning", str(deb)], capture_output=True, text=True, timeout=600)
    tags = [line for line in p.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert p.returncode == 0 and not tags, tags or p.stderr


def emulated(binary: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QEMU_LD_PREFIX=str(ARM64_ROOT))
    return subprocess.run([str(binary), *argv], env=env, capture_output=True, text=True, timeout=timeout)


def test_arm64_agent_deb_is_right_and_its_binary_runs_under_qemu_user(tmp_path: Path) -> None:
    deb = build_deb("agent", "arm64")
    f = fields(deb)
    assert f["Package"] == "runlab-agent" and f["Architecture"] == "arm64" and f["Version"] == f"{__version__}-1"
    assert "adduser" in f["Depends"] and "libc6 (>= 2.36)" in f["Depends"]
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    assert b"./conffiles" in conffiles
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/lib/runlab-agent/runlab-agent", "./usr/bin/runlab-agent -> ../lib/runlab-agent/runlab-agent",
                 "./lib/systemd/system/runlab-agent.service", "./etc/runlab/agent.yaml"):
        assert path in contents, path
    binary = REPO / "dist" / "freeze-arm64" / "runlab-agent" / "runlab-agent"
    elf = subprocess.run(["file", "-b", str(binary)], capture_output=True, text=True).stdout
    assert "ARM aarch64" in elf, elf
    v = emulated(binary, "--version")
    assert v.returncode == 0 and v.stdout.strip() == f"runlab-agent {__version__}", v
    exp = tmp_path / "smoke.yaml"
    exp.write_text("name: arm64-smoke\nrepeat: 2\nwarmup: 0\nsettle: 0s\n"
                   "ready:\n  http: \"http://127.0.0.1:{port}/\"\n  expect_body: hello\n  timeout: 60s\n"
                   "variants:\n  - name: native\n    runtime: process\n"
                   f"    command: [\"{HELLO}\", \"--port\", \"{{port}}\"]\n")
    out = tmp_path / "out.json"
    r = emulated(binary, "run", str(exp), "--json", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["machine"]["arch"] == "aarch64"  # the agent really ran as arm64 (emulated)
    assert len(result["variants"][0]["startup_ms"]["samples"]) == 2
    lintian(deb)


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_collector_deb_builds_and_answers_version(arch: str, tmp_path: Path) -> None:
    deb = build_deb("collector", arch)
    f = fields(deb)
    assert f["Package"] == "runlab-collector" and f["Architecture"] == arch
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/runlab -> ../lib/runlab-collector/runlab-collector" in contents
    assert "./lib/systemd/system/runlab-collector.service" in contents
    root = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    binary = root / "usr" / "lib" / "runlab-collector" / "runlab-collector"
    v = emulated(binary, "--version") if arch == "arm64" else subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and __version__ in v.stdout + v.stderr, v
    op = emulated(root / "usr" / "bin" / "runlab", "--help") if arch == "arm64" else subprocess.run(
        [str(root / "usr" / "bin" / "runlab"), "--help"], capture_output=True, text=True, timeout=60)
    assert op.returncode == 0 and "usage: runlab" in op.stdout, op
    lintian(deb)
