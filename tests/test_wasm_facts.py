"""What the node reports about its runtimes: every engine `make workloads` fetched, with its version, in
`runlab-agent check` and the status; and /dev/kvm judged by what it can run, not by its existence."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent import facts
from tests.conftest import REPO
from tests.engines import engines


def test_detect_runtimes_lists_the_fetched_engines_with_their_versions() -> None:
    engines()
    found = asyncio.run(facts.detect_runtimes())
    assert "wasmtime 46.0.1" in found["wasmtime"]
    assert "wasmedge version 0.14.1" in found["wasmedge"]
    assert "crun version 1.21" in found["crun"]
    assert "runsc version 0.0~2024" in found["runsc"]
    assert "wazero" in found
    assert found["podman"].startswith("podman version") and found["runc"].startswith("runc version")
    # wasmedge prints its own path before its version: the line names it by its base name only.
    assert not found["wasmedge"].endswith(f"{facts.EXTRA_DIRS[0]}/wasmedge version 0.14.1")


def test_agent_check_prints_the_runtimes_and_what_kvm_can_do(tmp_path: Path) -> None:
    engines()
    with socket.socket() as s:  # a port nobody listens on: check gets past the runtimes, then fails on the broker
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"node: n1\nspool:\n  path: {tmp_path}/spool\nmqtt:\n  url: mqtt://127.0.0.1:{port}\n")
    r = subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(cfg)], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("runtimes: ")), "")
    for what in ("wasmtime (", "wazero (", "wasmedge (", "crun (", "runsc (", "runc (", "podman ("):
        assert what in line, (what, r.stdout)
    if os.path.exists("/dev/kvm"):
        assert "kvm (" in line
        if facts.kvm_backend() == "kvm_pvm" or facts.cpu_virt_flag() is None:
            assert "kvm (/dev/kvm present but unusable" in line, line


def test_kvm_here_is_not_called_usable_when_it_cannot_run_a_stock_guest() -> None:
    """These machines: /dev/kvm is a nested PVM device. The test guest runs, yet the status must say unusable."""
    status = facts.kvm_status()
    if not os.path.exists("/dev/kvm"):
        assert status == "absent"
        return
    if facts.kvm_backend() == "kvm_pvm" or facts.cpu_virt_flag() is None:
        assert status.startswith("/dev/kvm present but unusable"), status
        assert "keep VMs on TCG" in status
    else:
        assert status.startswith(("/dev/kvm usable (", "/dev/kvm present but unusable: ")), status


@pytest.mark.parametrize(("guest", "backend", "flag", "expected"), [
    ("", "kvm_intel", "vmx", "DEV usable (kvm_intel, vmx; a test guest ran in "),
    ("", "kvm_pvm", None, "DEV present but unusable for stock guest kernels: backend kvm_pvm"),
    ("", None, None, "DEV present but unusable for stock guest kernels: no vmx/svm CPU flag"),
    ("KVM ioctl failed: Invalid argument", "kvm_intel", "vmx",
     "DEV present but unusable: KVM ioctl failed: Invalid argument; keep VMs on TCG"),
])
def test_kvm_status_decides_from_the_test_guest_the_backend_and_the_cpu(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, guest: str, backend: str | None, flag: str | None,
        expected: str) -> None:
    dev = tmp_path / "kvm"
    dev.touch()
    monkeypatch.setattr(facts, "kvm_test_guest", lambda device: guest)
    monkeypatch.setattr(facts, "kvm_backend", lambda: backend)
    monkeypatch.setattr(facts, "cpu_virt_flag", lambda: flag)
    assert facts.kvm_status(str(dev)).startswith(expected.replace("DEV", str(dev)))
    assert facts.kvm_status(str(tmp_path / "none")) == "absent"


def test_kvm_test_guest_names_a_device_that_is_not_kvm(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_text("")
    assert facts.kvm_test_guest(str(fake)).startswith("KVM ioctl failed: ")


def test_fetching_the_engines_left_the_machines_apt_alone() -> None:
    """fetch-runtimes.sh used its own sources, lists and cache: the system's apt knows nothing of trixie or sid."""
    engines()
    private = list((REPO / "build" / "cache" / "runtimes" / "apt" / "lists").glob("*_dists_trixie_*"))
    assert private, "the private apt lists should hold trixie's"
    system = [p.name for p in Path("/var/lib/apt/lists").glob("*")
              if "_dists_trixie" in p.name or "_dists_sid" in p.name]
    assert system == []
    for src in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if src.is_file():
            words = src.read_text(errors="replace").split()
            assert "trixie" not in words and "sid" not in words, src
