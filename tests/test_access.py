"""`check` as root sees what the service's user cannot read (runlab.access), with real users and modes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runlab import access, control
from runlab.devservers import Mosquitto
from tests.conftest import REPO

USER = "nobody"  # every Debian has it, in no group that owns our files


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's own tmp dirs are 0700 root)."""
    if os.geteuid() != 0:
        pytest.fail("checking as another user needs root (CI runs as root)")
    d = Path(tempfile.mkdtemp(prefix="runlab-access-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_files_and_directories_are_judged_by_the_kernel_as_that_user(public_dir: Path) -> None:
    ok = public_dir / "ok.password"
    ok.write_text("x\n")
    ok.chmod(0o644)
    secret = public_dir / "root-only.password"
    secret.write_text("x\n")
    secret.chmod(0o600)
    closed = public_dir / "closed"
    closed.mkdir(mode=0o700)
    inside = closed / "readable-but-unreachable"
    inside.write_text("x\n")
    inside.chmod(0o644)
    spool = public_dir / "spool"  # not there yet: its parent decides
    problems = access.problems_as(USER, [str(ok), str(secret), str(inside)], [str(spool)])
    assert problems == [f"cannot read {secret} (Permission denied)",
                        f"cannot read {inside} (Permission denied)",
                        f"cannot write into {public_dir} (to create {spool})"]
    public_dir.chmod(0o777)
    assert access.problems_as(USER, [str(ok)], [str(spool)]) == []
    assert access.problems_as("no-such-user-x", [str(ok)]) == ["user no-such-user-x does not exist"]


def test_collector_check_as_root_fails_on_a_password_its_user_cannot_read(public_dir: Path,
                                                                           mosquitto: Mosquitto) -> None:
    pw = public_dir / "influx.password"
    pw.write_text("secret\n")
    pw.chmod(0o600)  # what setup-v1.sh's umask 077 left before: root's only
    cfg = public_dir / "collector.yaml"
    cfg.write_text(f"mqtt:\n  url: {mosquitto.url}\ninflux:\n  url: http://127.0.0.1:1\n  api: v1\n"
                   f"  username: collector\n  password_file: {pw}\nquarantine:\n  path: {public_dir}/q.jsonl\n")
    cfg.chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "collector", "check", "--user", USER, "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    assert f"service user {USER}: cannot read {pw} (Permission denied)" in r.stdout, r.stdout
    assert f"chgrp {USER} FILE && chmod 0640 FILE" in r.stdout


def test_agent_check_as_root_names_the_unreadable_trust_key(public_dir: Path, mosquitto: Mosquitto) -> None:
    _priv, key = control.generate_keys(public_dir / "keys")
    (public_dir / "keys").chmod(0o755)
    key.chmod(0o600)
    spool = public_dir / "spool"
    spool.mkdir(mode=0o777)
    cfg = public_dir / "agent.yaml"
    cfg.write_text(f"node: n1\nmqtt:\n  url: {mosquitto.url}\nspool:\n  path: {spool}\n"
                   f"trust:\n  keys: [{key}]\n")
    cfg.chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "agent", "check", "--user", USER, "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"service user {USER}: cannot read {key} (Permission denied)" in r.stdout, r.stdout
