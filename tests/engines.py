"""The real WebAssembly engines and OCI runtimes for tests: fetched and built by the same scripts as
`make workloads` (idempotent: a no-op run takes well under a second), once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psutil

from tests.conftest import PODMAN_STORE, REPO

RUNTIMES = REPO / "build" / "cache" / "runtimes"
WASM = REPO / "build" / "cache" / "wasm"
STORE = PODMAN_STORE.resolve()  # podman keeps the resolved path in its database (build/cache may be a symlink)
PODMAN_ARGS = ["--root", str(STORE / "root"), "--runroot", "/tmp/runlab-podman-runroot",
               "--tmpdir", str(STORE / "tmp"), "--storage-driver=vfs", "--cgroup-manager=cgroupfs",
               "--events-backend=none"]
CTR_RUN_ARGS = ["--network=host", "--log-driver=none", "--no-hosts", "--dns=none",
                "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


@dataclass(frozen=True)
class Engines:
    bin: Path
    wasm: Path

    def __getitem__(self, name: str) -> str:
        return str(self.bin / name)


@cache
def engines() -> Engines:
    """fetch-runtimes.sh + build-wasm.sh (the `make workloads` steps); a failure fails the test with its log."""
    env = {**os.environ, "PODMAN_STORE": str(PODMAN_STORE), "PYTHON": sys.executable}
    for script in ("fetch-runtimes.sh", "build-wasm.sh"):
        r = subprocess.run(["bash", str(REPO / "build" / "workloads" / script)], env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"{script} failed:\n{r.stderr[-3000:]}"
    return Engines(RUNTIMES / "bin", WASM)


def processes_running(*markers: str) -> list[str]:
    """Processes whose command line contains every marker (a test's own module path, a container name)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if all(m in cmd for m in markers) and p.info["pid"] != os.getpid():
            found.append(f"pid {p.info['pid']}: {cmd[:200]}")
    return found
