"""agent/privileges.py: what the agent's own credentials will not let an experiment do.

The unit tests inject a uid/gid/groups and point the host paths at temp files
with chosen modes standing in for /dev/kvm, docker.sock, /etc/subuid (the tests
run as root, so every file is visible to the test; the checks reason about the
injected credentials only). The end-to-end test runs a real agent as ``nobody``
(setpriv) and pushes signed orders over a real Mosquitto.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.privileges import Credentials, HostPaths, allowed, needs_kvm, problems
from runlab import control, topics
from runlab.devservers import Mosquitto
from runlab.experiment import Experiment, VmVariant, parse
from tests.conftest import REPO
from tests.test_fleet_agent import Watcher

RUNLAB = Credentials(uid=4242, gid=4242, groups=frozenset({4242}), user="runlab")
USERS = 100  # Debian's "users" group: a real group name for the "add user runlab to group …" advice
IN_USERS = Credentials(uid=4242, gid=4242, groups=frozenset({4242, USERS}), user="runlab")
ROOT = Credentials(uid=0, gid=0, groups=frozenset({0}), user="root")
READY = {"tcp": "127.0.0.1:{port}"}


@pytest.fixture
def d() -> Iterator[Path]:
    """A directory everyone may enter (pytest's tmp_path lies under a 0700 directory of root)."""
    p = Path(tempfile.mkdtemp(prefix="runlab-priv-", dir="/tmp"))
    p.chmod(0o755)
    yield p
    shutil.rmtree(p, ignore_errors=True)


def exp(*variants: dict[str, Any], **top: Any) -> Experiment:
    return parse({"name": "t", "ready": READY, "variants": list(variants), **top}, "t.yaml")


def node(path: Path, mode: int, gid: int = 0, text: str = "") -> str:
    path.write_text(text)
    os.chown(path, 0, gid)
    path.chmod(mode)
    return str(path)


def host(d: Path, **kw: Any) -> HostPaths:
    """Every host path in ``d`` (absent unless a test creates it); the environment given, never the test's."""
    base: dict[str, Any] = {"kvm": str(d / "kvm"), "tun": str(d / "tun"), "docker_sock": str(d / "docker.sock"),
                            "subuid": str(d / "subuid"), "subgid": str(d / "subgid"),
                            "nsswitch": str(d / "nsswitch.conf"), "systemd_dir": str(d / "systemd"),
                            "systemd_private": str(d / "systemd-private"), "drop_caches": str(d / "vm/drop_caches"),
                            "tmp_dirs": ("/tmp",), "env": {"PATH": os.environ["PATH"], "HOME": str(d)}}
    return HostPaths(**{**base, **kw})


QEMU_KVM = {"name": "microvm", "runtime": "vm", "command": ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm"]}
FIRECRACKER = {"name": "fc", "runtime": "vm", "firecracker": {"kernel": "/k", "tap": "tap0"}}


# -- permission bits ----------------------------------------------------------------------------------

def test_mode_bits_owner_group_other_and_root(d: Path) -> None:
    f = node(d / "f", 0o640, gid=USERS)
    assert allowed(f, 4, RUNLAB) is False  # other: ---
    assert allowed(f, 4, IN_USERS) is True  # group: r--
    assert allowed(f, 6, IN_USERS) is False
    os.chown(f, 4242, 0)
    assert allowed(f, 6, RUNLAB) is True  # owner: rw-
    assert allowed(f, 6, ROOT) is True
    assert allowed(f, 1, ROOT) is False  # root too needs an x bit to execute a file
    assert allowed(str(d / "absent"), 4, RUNLAB) is None  # not there: not certain, never a refusal


def test_a_posix_acl_makes_the_answer_unsure(d: Path) -> None:
    f = node(d / "acl", 0o600)
    # system.posix_acl_access, version 2: USER_OBJ rw, USER 4242 rw, GROUP_OBJ -, MASK rw, OTHER -.
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in
                                          ((0x01, 6, 0xFFFFFFFF), (0x02, 6, 4242), (0x04, 0, 0xFFFFFFFF),
                                           (0x10, 6, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)))
    try:
        os.setxattr(f, "system.posix_acl_access", acl)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("/tmp's filesystem has no POSIX ACLs")
        raise
    assert allowed(f, 6, RUNLAB) is None  # the mode bits alone would say False: the ACL grants it


# -- vm ---------------------------------------------------------------------------------------------

def test_vm_with_accel_kvm_needs_read_write_dev_kvm(d: Path) -> None:
    e = exp(QEMU_KVM)
    node(d / "kvm", 0o660, gid=USERS)
    [line] = problems(e, str(d), RUNLAB, host(d))
    assert line.startswith("variant microvm: needs read/write access to ")
    assert "(-accel kvm)" in line and "mode 0660" in line
    assert "add user runlab to group users (packaging drop-in vm.conf)" in line
    assert problems(e, str(d), IN_USERS, host(d)) == []
    assert problems(e, str(d), ROOT, host(d)) == []
    # A device only root may open: the fix is a group for it first.
    (d / "kvm").chmod(0o600)
    os.chown(d / "kvm", 0, 0)
    assert "give it to group kvm, mode 0660" in problems(e, str(d), IN_USERS, host(d))[0]


def test_vm_without_dev_kvm_is_refused_naming_the_drop_in(d: Path) -> None:
    [line] = problems(exp(QEMU_KVM), str(d), ROOT, host(d))
    assert "which the agent cannot see" in line and "PrivateDevices=yes" in line and "vm.conf" in line


def test_only_a_vm_that_cannot_fall_back_needs_kvm() -> None:
    def vm(*args: str) -> VmVariant:
        v = exp({"name": "v", "runtime": "vm", "command": ["qemu-system-x86_64", *args]}).variants[0]
        assert isinstance(v, VmVariant)
        return v

    assert needs_kvm(vm("-accel", "kvm")) == "-accel kvm"
    assert needs_kvm(vm("-enable-kvm")) == "-accel kvm"
    assert needs_kvm(vm("-M", "q35,accel=kvm")) == "-accel kvm"
    assert needs_kvm(vm("-accel", "kvm,kernel-irqchip=on")) == "-accel kvm"
    assert needs_kvm(vm("-M", "q35,accel=kvm:tcg")) is None  # falls back to TCG
    assert needs_kvm(vm("-accel", "kvm", "-accel", "tcg")) is None
    assert needs_kvm(vm("-accel", "tcg")) is None
    assert needs_kvm(vm()) is None  # QEMU's default is TCG
    fc = exp(FIRECRACKER).variants[0]
    assert isinstance(fc, VmVariant) and needs_kvm(fc) == "firecracker"


def test_firecracker_tap_needs_dev_net_tun(d: Path) -> None:
    node(d / "kvm", 0o666)
    e = exp(FIRECRACKER)
    [line] = problems(e, str(d), RUNLAB, host(d))
    assert line.startswith("variant fc: tap tap0 needs ") and "cannot see" in line
    node(d / "tun", 0o600)
    assert "may not read and write it" in problems(e, str(d), RUNLAB, host(d))[0]
    (d / "tun").chmod(0o666)
    assert problems(e, str(d), RUNLAB, host(d)) == []


# -- containers -------------------------------------------------------------------------------------

DOCKER = {"name": "c", "runtime": "container", "engine": "docker", "image": "localhost/hello:1"}
PODMAN = {"name": "p", "runtime": "container", "engine": "podman", "image": "localhost/hello:1"}


def test_docker_needs_its_socket_and_says_the_group_is_root_equivalent(d: Path) -> None:
    node(d / "docker.sock", 0o660, gid=USERS)  # a stand-in: the check only looks at the socket's mode
    [line] = problems(exp(DOCKER), str(d), RUNLAB, host(d))
    assert line.startswith(f"variant c: engine docker needs write access to {d}/docker.sock: ")
    assert "add user runlab to group users" in line and "root-equivalent" in line and "rootless podman" in line
    assert problems(exp(DOCKER), str(d), IN_USERS, host(d)) == []
    assert problems(exp(DOCKER), str(d), ROOT, host(d)) == []


def test_docker_endpoint_from_flags_and_environment(d: Path) -> None:
    node(d / "other.sock", 0o600)
    h_flag = exp({**DOCKER, "engine_args": ["-H", f"unix://{d}/other.sock"]})
    assert "other.sock" in problems(h_flag, str(d), RUNLAB, host(d))[0]
    env = {"PATH": os.environ["PATH"], "HOME": str(d)}
    # Not certain, so not refused: a TCP daemon, a docker context, a socket that is not there.
    assert problems(exp(DOCKER), str(d), RUNLAB, host(d, env={**env, "DOCKER_HOST": "tcp://10.0.0.1:2376"})) == []
    node(d / "docker.sock", 0o600)
    assert problems(exp(DOCKER), str(d), RUNLAB, host(d, env={**env, "DOCKER_CONTEXT": "remote"})) == []
    (d / ".docker").mkdir()
    (d / ".docker" / "config.json").write_text('{"currentContext": "rootless"}')
    assert problems(exp(DOCKER), str(d), RUNLAB, host(d)) == []
    (d / ".docker" / "config.json").unlink()
    assert len(problems(exp(DOCKER), str(d), RUNLAB, host(d))) == 1
    (d / "docker.sock").unlink()
    assert problems(exp(DOCKER), str(d), RUNLAB, host(d)) == []


def test_rootless_podman_needs_subordinate_ids(d: Path) -> None:
    node(d / "subuid", 0o644, text="someone:100000:65536\n")
    [line] = problems(exp(PODMAN), str(d), RUNLAB, host(d))  # subgid missing altogether
    assert line == (f"variant p: rootless podman for user runlab needs a subordinate id range in {d}/subuid and "
                    f"{d}/subgid — usermod --add-subuids 200000-265535 --add-subgids 200000-265535 runlab "
                    f"(packaging drop-in containers.conf)")
    node(d / "subuid", 0o644, text="someone:100000:65536\nrunlab:200000:65536\n")
    node(d / "subgid", 0o644, text="4242:200000:65536\n")  # by uid works too
    assert problems(exp(PODMAN), str(d), RUNLAB, host(d)) == []
    assert problems(exp(PODMAN), str(d), ROOT, host(d)) == []  # rootful podman needs none


def test_rootless_podman_under_no_new_privileges_cannot_map_ids(d: Path) -> None:
    node(d / "subuid", 0o644, text="runlab:200000:65536\n")
    node(d / "subgid", 0o644, text="runlab:200000:65536\n")
    nnp = Credentials(uid=4242, gid=4242, groups=frozenset({4242}), user="runlab", no_new_privs=True)
    [line] = problems(exp(PODMAN), str(d), nnp, host(d))
    assert "newuidmap" in line and "NoNewPrivileges=no" in line


def test_rootless_podman_is_not_judged_when_unsure(d: Path) -> None:
    node(d / "nsswitch.conf", 0o644, text="passwd: files\nsubid: sss\n")  # ids from a database we do not read
    assert problems(exp(PODMAN), str(d), RUNLAB, host(d)) == []
    (d / "nsswitch.conf").unlink()
    remote = exp({**PODMAN, "engine_args": ["--remote"]})
    assert problems(remote, str(d), RUNLAB, host(d)) == []


# -- programs -------------------------------------------------------------------------------------

def test_program_not_executable_by_the_agent_user(d: Path) -> None:
    prog = node(d / "prog", 0o700)
    e = exp({"name": "native", "runtime": "process", "command": [prog, "--port", "{port}"]})
    [line] = problems(e, str(d), RUNLAB, host(d))
    assert line.startswith(f"variant native: command[0] {prog}: user runlab may not execute it (owner root:root, "
                           f"mode 0700)")
    (d / "prog").chmod(0o711)
    assert problems(e, str(d), RUNLAB, host(d)) == []
    # A script is read by its interpreter: x alone is not enough.
    node(d / "prog", 0o711, text="#!/bin/sh\n")
    assert "is a script: user runlab may not read it" in problems(e, str(d), RUNLAB, host(d))[0]
    # Absent: the runtime reports it; it is not a privilege problem.
    gone = exp({"name": "native", "runtime": "process", "command": [str(d / "absent")]})
    assert problems(gone, str(d), RUNLAB, host(d)) == []


def test_program_behind_a_directory_the_user_cannot_enter(d: Path) -> None:
    (d / "private").mkdir(mode=0o700)
    prog = node(d / "private" / "prog", 0o755)
    e = exp({"name": "w", "runtime": "wasm", "command": [prog]},
            {"name": "r", "runtime": "process", "command": ["/bin/true"], "ready": {"command": [prog]}})
    found = problems(e, str(d), RUNLAB, host(d))
    assert [line.split(":")[0] for line in found] == ["variant w", "variant r"]
    assert all(f"lies in {d}/private, which user runlab cannot enter (owner root:root, mode 0700)" in line
               for line in found)


# -- systemd, cold, tmp ---------------------------------------------------------------------------

SYSTEMD = {"name": "unit", "runtime": "systemd", "command": ["/bin/true"]}


def test_systemd_variant_needs_a_systemd_manager(d: Path) -> None:
    [line] = problems(exp(SYSTEMD), str(d), ROOT, host(d))
    assert line.startswith("variant unit: needs a running systemd manager") and "is-system-running" in line
    (d / "systemd").mkdir()
    assert problems(exp(SYSTEMD), str(d), ROOT, host(d)) == []


def test_systemd_user_variant_needs_the_users_manager(d: Path) -> None:
    e = exp({**SYSTEMD, "user": True})
    env = {"PATH": os.environ["PATH"], "HOME": str(d)}
    [line] = problems(e, str(d), RUNLAB, host(d, env=env))
    assert "XDG_RUNTIME_DIR is not set" in line and "loginctl enable-linger runlab" in line
    xdg = d / "xdg"
    xdg.mkdir()
    [line] = problems(e, str(d), RUNLAB, host(d, env={**env, "XDG_RUNTIME_DIR": str(xdg)}))
    assert f"none listens in XDG_RUNTIME_DIR={xdg}" in line
    (xdg / "bus").touch()
    assert problems(e, str(d), RUNLAB, host(d, env={**env, "XDG_RUNTIME_DIR": str(xdg)})) == []


def test_cold_page_cache_needs_root(d: Path) -> None:
    (d / "vm").mkdir()
    node(d / "vm" / "drop_caches", 0o200)
    e = exp({"name": "n", "runtime": "process", "command": ["/bin/true"]}, cold="page-cache")
    [line] = problems(e, str(d), RUNLAB, host(d))
    assert line.startswith("cold: page-cache needs root") and "drop_caches" in line and "cold: process" in line
    assert problems(e, str(d), ROOT, host(d)) == []


def test_run_dir_needs_a_writable_temporary_directory(d: Path) -> None:
    e = exp({"name": "n", "runtime": "process", "command": ["/bin/true"]})
    (d / "t1").mkdir(mode=0o755)
    (d / "t2").mkdir(mode=0o555)
    [line] = problems(e, str(d), RUNLAB, host(d, tmp_dirs=(str(d / "t1"), str(d / "t2"))))
    assert line == (f"run_dir: no temporary directory user runlab may write ({d}/t1, {d}/t2) — set TMPDIR to one "
                    f"it may write, or PrivateTmp=yes in the unit")
    (d / "t2").chmod(0o1777)
    assert problems(e, str(d), RUNLAB, host(d, tmp_dirs=(str(d / "t1"), str(d / "t2")))) == []


def test_every_problem_is_one_line_and_a_fine_experiment_has_none(d: Path) -> None:
    node(d / "kvm", 0o600)
    node(d / "docker.sock", 0o600)
    prog = node(d / "prog", 0o700)
    e = exp(QEMU_KVM, DOCKER, PODMAN, {"name": "x", "runtime": "process", "command": [prog]}, SYSTEMD,
            cold="page-cache")
    found = problems(e, str(d), RUNLAB, host(d))
    assert [line.split(":")[0] for line in found] == ["variant microvm", "variant c", "variant p", "variant x",
                                                      "variant unit", "cold"]
    assert all("\n" not in line and " — " in line for line in found)
    fine = exp({"name": "x", "runtime": "process", "command": ["/bin/true"]})
    assert problems(fine, str(d), RUNLAB, host(d)) == []


# -- end to end: a real agent as nobody -------------------------------------------------------------

NOBODY = Credentials(uid=65534, gid=65534, groups=frozenset(), user="nobody")


def test_agent_as_nobody_rejects_what_it_cannot_do_and_runs_what_it_can(mosquitto: Mosquitto) -> None:
    """A real agent under setpriv (uid/gid 65534, no groups): a vm with -accel kvm and a 0700-root program are
    ``rejected`` with the privilege reason before anything runs; a plain order still runs, as nobody."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if allowed("/dev/kvm", 6, NOBODY):
        pytest.skip("this machine lets nobody open /dev/kvm: no refusal to prove")
    qemu = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    d = Path(tempfile.mkdtemp(prefix="runlab-nobody-", dir="/tmp"))
    d.chmod(0o777)  # the agent (nobody) writes its spool, its marker files and its log here
    proc: subprocess.Popen[bytes] | None = None
    watch = Watcher(mosquitto)
    try:
        priv, pub = control.generate_keys(d / "keys")
        (d / "keys").chmod(0o755)
        pub.chmod(0o644)
        key = control.load_signing_key(priv)
        secret = d / "secret.sh"  # what it would do if run: leave a mark
        node(secret, 0o700, text=f"#!/bin/sh\necho ran >> {d}/marker-secret\nexec sleep 30\n")
        cfg = d / "agent.yaml"
        cfg.write_text(f"node: node-a\nmqtt:\n  url: {mosquitto.url}\nspool:\n  path: {d}/spool\n"
                       f"sampling:\n  interval: 1s\n  per_cpu: false\nlog_level: debug\n"
                       f"trust:\n  keys: [{pub}]\npolicy:\n  runtimes: [process, vm]\n"
                       f"  commands: [\"{secret}\", \"{qemu}\", \"/bin/sh\", \"/bin/true\"]\n")
        cfg.chmod(0o644)
        with open(d / "agent.log", "wb") as log:
            proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                     sys.executable, "-m", "agent", "serve", "--config", str(cfg)],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                    env={**os.environ, "HOME": str(d), "PYTHONDONTWRITEBYTECODE": "1"})

        def push(variant: str) -> str:
            run = control.new_run_id()
            topic = topics.node_experiment("node-a", run)
            text = (f"name: priv\nrepeat: 1\nwarmup: 0\nphases: [cold_start]\n"
                    f"ready:\n  command: [/bin/sh, -c, \"test -s {d}/marker-plain\"]\n  timeout: 30s\n"
                    f"variants:\n{variant}")  # ready once the workload wrote its mark: no race with the stop
            order = control.ExperimentOrder(run=run, target=topic, file_name="priv.yaml", yaml=text,
                                            issued=control.now_ns(), expires=0)
            watch.publish(topic, control.sign(order, key), retain=True)
            return run

        vm = push(f"  - name: microvm\n    runtime: vm\n    command: [{qemu}, -M, microvm, -accel, kvm, "
                  f"-nographic]\n")
        hidden = push(f"  - name: secret\n    runtime: process\n    command: [{secret}]\n")
        plain = push(f"  - name: plain\n    runtime: process\n    command: [/bin/sh, -c, "
                     f"'echo ran >> {d}/marker-plain; exec sleep 30']\n")

        ev = watch.wait_status(vm, "rejected", timeout=60)
        assert ev.reason.startswith("privileges: variant microvm: ")
        assert "/dev/kvm (-accel kvm)" in ev.reason and "vm.conf" in ev.reason and "nobody" in ev.reason
        ev = watch.wait_status(hidden, "rejected", timeout=60)
        assert ev.reason == (f"privileges: variant secret: command[0] {secret}: user nobody may not execute it "
                             f"(owner root:root, mode 0700) — let user nobody execute it (chmod, or a group nobody "
                             f"is in) or move it")
        # The control: an order this user can run is accepted and runs, as nobody.
        watch.wait_status(plain, "finished", timeout=90)
        assert (d / "marker-plain").read_text() == "ran\n"
        assert (d / "marker-plain").stat().st_uid == 65534
        assert not (d / "marker-secret").exists()
        assert watch.statuses(vm) == ["rejected"] and watch.statuses(hidden) == ["rejected"]
    except BaseException:
        print((d / "agent.log").read_text(errors="replace")[-4000:])  # shown by pytest with the failure
        raise
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        watch.close()
        shutil.rmtree(d, ignore_errors=True)


def test_kubernetes_manifest_and_kubeconfig_must_be_readable(d: Path) -> None:
    manifest = node(d / "app.yaml", 0o600, text="kind: Pod\nspec:\n  containers:\n  - image: localhost/hello:1\n")
    kubeconfig = node(d / "kubeconfig", 0o600)
    e = exp({"name": "k", "runtime": "kubernetes", "manifest": manifest, "kubeconfig": kubeconfig})
    found = problems(e, str(d), RUNLAB, host(d))
    assert [line.split(" ")[2] for line in found] == ["manifest", "kubeconfig"]
    assert all("user runlab may not read it (owner root:root, mode 0600)" in line for line in found)
    (d / "app.yaml").chmod(0o644)
    (d / "kubeconfig").chmod(0o644)
    assert problems(e, str(d), RUNLAB, host(d)) == []


def test_local_run_warns_before_it_starts(d: Path) -> None:
    """`runlab-agent run` as nobody: each problem is a warning on stderr, then the run goes on (and fails)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    secret = node(d / "secret", 0o700, text="#!/bin/sh\nexit 0\n")
    f = d / "exp.yaml"
    f.write_text(f"name: t\nrepeat: 1\nwarmup: 0\nphases: [cold_start]\nready:\n  command: [/bin/true]\n"
                 f"variants:\n  - name: secret\n    runtime: process\n    command: [{secret}]\n")
    f.chmod(0o644)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                          "agent", "run", str(f), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": str(d), "PYTHONDONTWRITEBYTECODE": "1"})
    lines = out.stderr.splitlines()
    assert f"runlab-agent: warning: variant secret: command[0] {secret}: user nobody may not execute it " \
           f"(owner root:root, mode 0700) — let user nobody execute it (chmod, or a group nobody is in) or move it" \
        in lines, out.stderr
    assert out.returncode == 1  # the runtime's own error follows: a warning never stops a local run
