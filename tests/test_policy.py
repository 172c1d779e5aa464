"""The policy as an allow-list: every side door of issue 13, tried as an attacker would, is refused.

Pure logic (agent/policy.py, agent/flags.py) against a generous policy — process, container, systemd,
kubernetes, serverless and a workload directory allowed — so that each refusal is the rule under test and
not a missing runtime or program. Each case names the key path and the rule the rejection must give.
The flag tables are compared with the engines' own ``--help`` so that the parser reads arguments as they do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent import flags
from agent.config import PUSHED_FILE, PolicySettings, load_config
from agent.policy import PolicyError, check, describe, pod_security, required, violations
from runlab.config import ConfigError
from runlab.experiment import load_file, parse, with_workloads, workloads_dir
from tests.conftest import REPO

W = "/opt/w"
COMMANDS = [f"{W}/*", "/usr/bin/systemd-run", "/usr/bin/systemctl", "/usr/bin/kubectl", "/usr/bin/faas-cli"]
RUNTIMES = ["process", "container", "systemd", "kubernetes", "serverless", "vm", "wasm"]


def policy(**kw: Any) -> PolicySettings:
    return PolicySettings(**{"runtimes": RUNTIMES, "commands": COMMANDS, "images": ["localhost/*"], **kw})


def exp(variant: dict[str, Any], **top: Any) -> Any:
    return parse({"name": "e", "ready": {"tcp": "127.0.0.1:{port}"}, "variants": [variant], **top}, "e.yaml")


def verdict(variant: dict[str, Any], pol: PolicySettings | None = None, here: str = "/srv/here",
            pushed: str | None = None) -> str:
    try:
        check(exp(variant), pol or policy(), here, pushed)
    except PolicyError as e:
        return str(e)
    return "ok"


def proc(**kw: Any) -> dict[str, Any]:
    return {"name": "p", "runtime": "process", "command": [f"{W}/run.sh", "{port}"], **kw}


def ctr(**kw: Any) -> dict[str, Any]:
    return {"name": "c", "runtime": "container", "image": "localhost/hello:1", **kw}


def unit(**kw: Any) -> dict[str, Any]:
    return {"name": "s", "runtime": "systemd", "command": [f"{W}/hello"], "systemd_run": "/usr/bin/systemd-run",
            "systemctl": "/usr/bin/systemctl", **kw}


# ---- environment: interpreter and loader start-up hooks ------------------------------------------------------
HOOK_ENV = {
    "BASH_ENV": "{here}/tiny.yaml",  # the issue's attack: bash sources the pushed file before the script
    "ENV": "{here}/tiny.yaml",  # sh/dash/ksh (interactive), bash in POSIX mode
    "SHELLOPTS": "xtrace", "PS4": "$(touch /tmp/x)", "BASHOPTS": "extdebug", "PROMPT_COMMAND": "touch /tmp/x",
    "IFS": "/", "PATH": "{here}:/usr/bin", "HOME": "{here}", "CDPATH": "{here}",
    "PYTHONSTARTUP": "{here}/tiny.yaml", "PYTHONPATH": "{here}", "PYTHONHOME": "{here}",
    "PYTHONWARNINGS": "ignore::x.Y", "PYTHONINSPECT": "1", "PYTHONUSERBASE": "{here}",
    "NODE_OPTIONS": "--require {here}/tiny.yaml", "NODE_PATH": "{here}", "PERL5OPT": "-Mx", "PERL5LIB": "{here}",
    "PERLLIB": "{here}", "RUBYOPT": "-r{here}/x", "RUBYLIB": "{here}", "JAVA_TOOL_OPTIONS": "-javaagent:x.jar",
    "LD_PRELOAD": "/tmp/x.so", "LD_LIBRARY_PATH": "{here}", "LD_AUDIT": "/tmp/x.so", "GCONV_PATH": "{here}",
    "GLIBC_TUNABLES": "glibc.malloc.check=3", "MALLOC_CHECK_": "3", "LOCPATH": "{here}", "OPENSSL_CONF": "{here}/x",
    "KUBECONFIG": "{here}/tiny.yaml", "DOCKER_HOST": "tcp://10.0.0.1:2375", "CONTAINER_HOST": "ssh://x",
    "GIT_SSH_COMMAND": "touch /tmp/x", "EDITOR": "/tmp/x", "TMPDIR": "{here}", "XDG_CONFIG_HOME": "{here}",
    "DOTNET_STARTUP_HOOKS": "/tmp/x.dll", "LUA_INIT": "@/tmp/x.lua", "PHPRC": "{here}",
    "ASAN_OPTIONS": "external_symbolizer_path=/tmp/x", "QT_PLUGIN_PATH": "{here}", "GTK_MODULES": "x",
    "VK_LAYER_PATH": "{here}", "TERMINFO": "{here}",
}


@pytest.mark.parametrize("key", sorted(HOOK_ENV))
def test_start_up_hooks_are_refused_even_by_a_glob_that_covers_them(key: str) -> None:
    variant = proc(env={key: HOOK_ENV[key]})
    assert verdict(variant).startswith(f"variants[0].env.{key} is a start-up hook"), verdict(variant)
    # An administrator's `*` does not let them in either: they need their exact name.
    assert f"variants[0].env.{key} is a start-up hook" in verdict(variant, policy(env=["*"]))
    assert verdict(variant, policy(env=["PORT", key])) == "ok"


def test_env_is_an_allow_list_with_a_small_safe_default() -> None:
    assert verdict(proc(env={"PORT": "{port}", "RUST_LOG": "info", "LC_ALL": "C.UTF-8", "TZ": "UTC"})) == "ok"
    assert verdict(proc(env={"MY_SETTING": "1"})).startswith(
        "variants[0].env.MY_SETTING is not in policy.env (PORT, LANG, LANGUAGE, LC_*, TZ, RUST_LOG")
    assert verdict(proc(env={"MY_SETTING": "1"}), policy(env=["MY_*"])) == "ok"
    # Names the environment cannot hold as such, and values that would start a new line of a unit file.
    for key in ("BASH_FUNC_cat%%", "A=B", "PORT=1\nBASH_ENV", "", "1X", "PORT\0"):
        assert "is not a valid environment variable name" in verdict(proc(env={key: "x"}), policy(env=["*"])), key
    assert "has a control character" in verdict(proc(env={"PORT": "1\nExecStartPre=/bin/sh"}))
    # Every runtime's env is checked: systemd (--setenv), kubernetes (kubectl's), containers, serverless.
    assert "variants[0].env.BASH_ENV is a start-up hook" in verdict(unit(env={"BASH_ENV": "/tmp/x"}))
    assert "variants[0].env.LD_PRELOAD is a start-up hook" in verdict(ctr(env={"LD_PRELOAD": "/x.so"}))


# ---- the pushed file -------------------------------------------------------------------------------------------
def test_the_pushed_file_is_never_a_program() -> None:
    here = "/var/lib/runlab/spool/runs/r1"
    pushed = f"{here}/{PUSHED_FILE}"
    broad = PolicySettings(runtimes=["process"], commands=["/var/lib/runlab/*"])
    v = proc(command=["{here}/" + PUSHED_FILE])
    found = verdict(v, broad, here, pushed)
    assert f"variants[0].command[0] {pushed} is the pushed experiment file itself" in found
    assert "experiments.here the pushed file is stored in /var/lib/runlab/spool/runs/r1, which policy.commands " \
           "/var/lib/runlab/* covers" in found
    # Under the agent's config check, such a policy does not even load (see test_config_refuses_...).


def test_the_pushed_file_is_stored_as_data_under_the_agents_name(tmp_path: Path) -> None:
    from agent.fleet import store_pushed

    path = store_pushed(tmp_path / "runs" / "r1", "name: e\n")
    assert path.name == PUSHED_FILE and path.read_text() == "name: e\n"
    assert path.stat().st_mode & 0o777 == 0o600
    target = tmp_path / "elsewhere"
    path.unlink()
    path.symlink_to(target)  # a link planted where the file goes is replaced, never followed
    store_pushed(tmp_path / "runs" / "r1", "again\n")
    assert not target.exists() and not path.is_symlink() and path.read_text() == "again\n"


# ---- systemd properties ---------------------------------------------------------------------------------------
SYSTEMD_SIDE_DOORS = {
    "ExecStartPre": "/bin/sh -c 'touch /tmp/x'", "ExecStartPost": "/bin/sh", "ExecStart": "/bin/sh",
    "ExecStopPost": "/bin/sh", "ExecCondition": "/bin/sh", "ExecReload": "/bin/sh", "User": "root", "Group": "root",
    "SupplementaryGroups": "docker", "Environment": "BASH_ENV=/tmp/x", "EnvironmentFile": "/tmp/x",
    "PassEnvironment": "SSH_AUTH_SOCK", "UnsetEnvironment": "PATH", "RootDirectory": "/", "RootImage": "/tmp/x.img",
    "BindPaths": "/:/h", "BindReadOnlyPaths": "/etc", "StandardOutput": "file:/etc/passwd",
    "StandardInput": "file:/etc/shadow", "AmbientCapabilities": "CAP_SYS_ADMIN", "OnFailure": "evil.service",
    "Slice": "system.slice", "KillMode": "none", "DeviceAllow": "/dev/sda rw", "Delegate": "yes",
    "LoadCredential": "x:/etc/shadow", "PAMName": "login", "WorkingDirectory": "/", "TTYPath": "/dev/tty1",
    "ExtensionImages": "/tmp/x.raw", "MountImages": "/tmp/x.raw:/h", "SetLoginEnvironment": "yes",
}


@pytest.mark.parametrize("prop", sorted(SYSTEMD_SIDE_DOORS))
def test_systemd_properties_that_start_programs_or_change_user_env_or_root_are_refused(prop: str) -> None:
    found = verdict(unit(properties={prop: SYSTEMD_SIDE_DOORS[prop]}))
    assert found.startswith(f"variants[0].properties.{prop} is not in policy.systemd_properties"), found
    assert verdict(unit(properties={prop: SYSTEMD_SIDE_DOORS[prop]}),
                   policy(systemd_properties=[prop])) == "ok"


def test_systemd_resource_and_sandboxing_properties_pass_and_spellings_do_not_smuggle() -> None:
    hardened = {"MemoryAccounting": "yes", "MemoryMax": "32M", "CPUQuota": "50%", "TasksMax": "64",
                "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                "NoNewPrivileges": "yes", "IOWeight": "100"}
    assert verdict(unit(properties=hardened)) == "ok"
    # `Protect*` must not match a key that carries a second assignment, nor a value a second line.
    assert "is not a systemd property name" in verdict(unit(properties={"ProtectHome=yes\nExecStartPre": "/x"}))
    assert "is not a systemd property name" in verdict(unit(properties={"ProtectHome=yes ExecStartPre": "/x"}))
    assert "has a control character" in verdict(unit(properties={"MemoryMax": "1G\nExecStartPre=/bin/sh"}))
    # The unit's command is found by the manager on its own search path: only an absolute path can be vouched for.
    assert "variants[0].command[0] 'hello' is not an absolute path" in verdict(unit(command=["hello"]))


# ---- container engine flags -----------------------------------------------------------------------------------
RUN_SIDE_DOORS = [
    (["-v/:/host"], "run_args[0] --volume=/:/host is not in policy.container_flags"),  # the issue's spelling
    (["-dv/:/host"], "run_args[0] --volume=/:/host"),
    (["-itv", "/:/host"], "run_args[0] --volume=/:/host"),
    (["-v=/:/host"], "run_args[0] --volume=/:/host"),
    (["--volume=/:/host"], "run_args[0] --volume=/:/host"),
    (["--volume", "/:/host"], "run_args[0] --volume=/:/host"),
    (["--rm", "-v", "/etc:/h:ro"], "run_args[1] --volume=/etc:/h:ro"),
    (["--mount=type=bind,src=/,dst=/h"], "run_args[0] --mount=type=bind,src=/,dst=/h"),
    (["--mount", "type=bind,source=/,target=/h"], "run_args[0] --mount=type=bind,source=/,target=/h"),
    (["--privileged"], "run_args[0] --privileged is not in"),
    (["--privileged=true"], "run_args[0] --privileged is not in"),
    (["--device=/dev/sda"], "--device=/dev/sda"), (["--device", "/dev/kvm"], "--device=/dev/kvm"),
    (["--cap-add=ALL"], "--cap-add=ALL"), (["--cap-add", "SYS_ADMIN"], "--cap-add=SYS_ADMIN"),
    (["--security-opt=seccomp=unconfined"], "--security-opt=seccomp=unconfined"),
    (["--security-opt", "apparmor=unconfined"], "--security-opt=apparmor=unconfined"),
    (["--pid=host"], "--pid=host"), (["--ipc=host"], "--ipc=host"), (["--uts=host"], "--uts=host"),
    (["--userns=host"], "--userns=host"), (["--cgroupns=host"], "--cgroupns=host"),
    (["--network=container:other"], "--network=container:other"), (["--net=ns:/proc/1/ns/net"], "--network=ns:"),
    (["--volumes-from=other"], "--volumes-from=other"), (["--env-file=/etc/shadow"], "--env-file=/etc/shadow"),
    (["--env-host"], "--env-host is not in"), (["--annotation=run.oci.hooks=x"], "--annotation="),
    (["--rootfs"], "--rootfs is not in"), (["--log-opt=path=/etc/cron.d/x"], "--log-opt=path=/etc/cron.d/x"),
    (["--cidfile=/etc/x"], "--cidfile=/etc/x"), (["--pidfile=/etc/x"], "--pidfile=/etc/x"),
    (["--conmon-pidfile=/etc/x"], "--conmon-pidfile=/etc/x"), (["--init-path=/tmp/x"], "--init-path=/tmp/x"),
    (["--gpus=all"], "--gpus=all"), (["--sysctl=net.ipv4.ip_forward=1"], "--sysctl="),
    (["--storage-opt=mount_program=/tmp/x"], "--storage-opt="), (["--systemd=always"], "--systemd=always"),
    (["--name=other"], "--name=other"),  # the agent names the container: another name would escape its clean-up
    (["--replace"], "--replace is not in"), (["--publish=0.0.0.0:80:80"], "--publish=0.0.0.0:80:80"),
    (["-P"], "--publish-all is not in"), (["--runtime=/tmp/evil"], "--runtime /tmp/evil is outside policy.commands"),
    (["--network=pasta:--pcap,/etc/x"], "--network=pasta:--pcap,/etc/x"),
    (["--security-opt=no-new-privileges,seccomp=unconfined"], "--security-opt=no-new-privileges,seccomp"),
    (["--secret=x"], "--secret=x"), (["--hostuser=root"], "--hostuser=root"),
    # The parser refuses what it cannot be sure the engine reads the same way.
    (["--bogus"], "run_args[0] is refused: --bogus: unknown flag"),
    (["-Z"], "run_args[0] is refused: -Z (in -Z): unknown flag"),
    (["---volume=/:/h"], "run_args[0] is refused: ---volume=/:/h: not a flag"),
    (["docker.io/evil:1"], "run_args[0] is refused: 'docker.io/evil:1' is not a flag"),  # would be the image
    (["--", "docker.io/evil:1"], "run_args[0] is refused: '--' ends the flags"),
    (["--rm", "-e"], "run_args[1] is refused: -e expects a value but ends the list"),  # would eat the image
    (["--ulimit", "-v/:/h"], "run_args[1] is refused: --ulimit -v/:/h: a value starting with '-' is ambiguous"),
    (["--rm=yes"], "expected a boolean value"),
    (["-e", "LD_PRELOAD=/x.so"], "run_args[0] --env.LD_PRELOAD is a start-up hook"),
    (["--env=BASH_ENV"], "run_args[0] --env.BASH_ENV is a start-up hook"),
]


@pytest.mark.parametrize("args, expected", RUN_SIDE_DOORS, ids=[" ".join(a) for a, _ in RUN_SIDE_DOORS])
def test_run_flags_that_hand_over_the_host_are_refused_however_spelled(args: list[str], expected: str) -> None:
    found = verdict(ctr(run_args=args))
    assert found.startswith("variants[0].run_args[") and expected in found, found


ENGINE_SIDE_DOORS = [
    ("podman", ["--url=tcp://10.0.0.1:8080"], "--url=tcp://10.0.0.1:8080"),
    ("podman", ["--remote"], "--remote is not in"), ("podman", ["-r"], "--remote is not in"),
    ("podman", ["--connection", "prod"], "--connection=prod"), ("podman", ["-c", "prod"], "--connection=prod"),
    ("podman", ["--hooks-dir=/tmp/hooks"], "--hooks-dir=/tmp/hooks"),
    ("podman", ["--module=/tmp/evil.conf"], "--module=/tmp/evil.conf"),
    ("podman", ["--runtime-flag=debug"], "--runtime-flag=debug"),
    ("podman", ["--storage-opt", "overlay.mount_program=/tmp/x"], "--storage-opt="),
    ("podman", ["--network-cmd-path=/tmp/x"], "--network-cmd-path=/tmp/x"),
    ("podman", ["--cni-config-dir=/tmp/cni"], "--cni-config-dir=/tmp/cni"),
    ("podman", ["--conmon=/tmp/conmon"], "engine_args[0] --conmon /tmp/conmon is outside policy.commands"),
    ("podman", ["--runtime", "/tmp/evil"], "engine_args[0] --runtime /tmp/evil is outside policy.commands"),
    ("podman", ["system", "service"], "engine_args[0] is refused: 'system' is not a flag"),  # another subcommand
    ("podman", ["--root"], "expects a value but ends the list"),
    ("docker", ["-H", "tcp://10.0.0.1:2375"], "--host=tcp://10.0.0.1:2375"),
    ("docker", ["-Htcp://10.0.0.1:2375"], "--host=tcp://10.0.0.1:2375"),
    ("docker", ["--host=ssh://root@x"], "--host=ssh://root@x"),
    ("docker", ["--context", "prod"], "--context=prod"), ("docker", ["-c", "prod"], "--context=prod"),
    ("docker", ["--config=/tmp/dockercfg"], "--config=/tmp/dockercfg"),
    ("docker", ["--tlsverify"], "--tlsverify is not in"),
    ("nerdctl", ["--address=/run/containerd/containerd.sock"], "--address="),
    ("nerdctl", ["-H", "unix:///x"], "--address=unix:///x"), ("nerdctl", ["--cni-path=/tmp/cni"], "--cni-path="),
]


@pytest.mark.parametrize("engine, args, expected", ENGINE_SIDE_DOORS,
                         ids=[f"{e} {' '.join(a)}" for e, a, _ in ENGINE_SIDE_DOORS])
def test_global_engine_flags_that_reach_another_engine_or_run_programs_are_refused(
        engine: str, args: list[str], expected: str) -> None:
    found = verdict(ctr(engine=engine, engine_args=args))
    assert found.startswith("variants[0].engine_args[") and expected in found, found


def test_allowed_flags_pass_and_an_administrator_can_allow_more_by_name_and_value() -> None:
    store = ["--root", "/srv/store/root", "--runroot", "/tmp/rr", "--tmpdir", "/srv/store/tmp",
             "--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--events-backend=none", "--runtime", "runc"]
    run = ["--network=host", "--log-driver=none", "--no-hosts", "--dns=none", "--ulimit", "nofile=4096:4096",
           "-p", "127.0.0.1:{port}:8080", "--read-only", "--tmpfs", "/tmp", "-dit", "--cpus=1", "-m", "64m",
           "--memory-swap=64m", "--pid=private", "-e", "PORT=8080", "--security-opt=no-new-privileges"]
    assert verdict(ctr(engine_args=store, run_args=run)) == "ok"
    vol = ctr(run_args=["-v", "/srv/data:/data:ro"])
    assert verdict(vol, policy(container_flags=["--volume=/srv/data:*"])) == "ok"
    assert "--volume=/etc:/data:ro is not in" in verdict(ctr(run_args=["-v/etc:/data:ro"]),
                                                          policy(container_flags=["--volume=/srv/data:*"]))
    # '..' would let a glob such as /srv/data* reach elsewhere: absolute paths are normalised, relative refused.
    assert "--volume=/srv:/data is not in" in verdict(ctr(run_args=["-v", "/srv/data/..:/data"]),
                                                      policy(container_flags=["--volume=/srv/data*"]))
    assert "'..' in a relative path" in verdict(ctr(run_args=["-v", "data/../..:/data"]),
                                               policy(container_flags=["--volume=*"]))
    assert "variants[0].image is refused: it '--privileged' starts with '-'" in verdict(ctr(image="--privileged"),
                                                                                       policy(images=["*"]))
    # An OCI runtime given by name is the engine's configured one (kata, runsc, crun…); by path a program.
    assert verdict(ctr(oci_runtime="runsc")) == "ok"
    assert "oci_runtime /tmp/crun is outside policy.commands" in verdict(ctr(oci_runtime="/tmp/crun"))


def test_the_pflag_reading() -> None:
    longs, shorts = flags.RUN_FLAGS, flags.RUN_SHORT

    def read(*args: str) -> list[tuple[str, str]]:
        return [(p.name, p.value) for p in flags.parse(list(args), longs, shorts)]

    assert read("-dv/x:/y") == [("detach", "true"), ("volume", "/x:/y")]
    assert read("-itd") == [("interactive", "true"), ("tty", "true"), ("detach", "true")]
    assert read("-ite", "A=1") == [("interactive", "true"), ("tty", "true"), ("env", "A=1")]
    assert read("-e=A=1", "-eB=2") == [("env", "A=1"), ("env", "B=2")]
    assert read("--rm=false", "-d=0", "--net=host") == [("rm", "false"), ("detach", "false"), ("network", "host")]
    assert read("--env", "A=1", "--env", "A=2") == [("env", "A=1"), ("env", "A=2")]  # repeated
    assert read("--dns-opt=x") == [("dns-option", "x")]
    with pytest.raises(flags.FlagError, match="ends the list"):
        read("-dv")


def _help_arity(argv: list[str]) -> dict[str, bool]:
    """long name → takes a value, from an engine's --help (a type word follows the flag after one space)."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([\w-]+)( \S+)?\s{2,}", line) or re.match(r"^\s+(?:-\w, )?--([\w-]+)( \S+)?$",
                                                                                   line)
        if m:
            found[m.group(1)] = m.group(2) is not None
    return found


@pytest.mark.parametrize("argv, table", [(["podman", "run", "--help"], flags.RUN_FLAGS),
                                         (["podman", "--help"], flags.GLOBAL_FLAGS["podman"][0]),
                                         (["docker", "run", "--help"], flags.RUN_FLAGS),
                                         (["docker", "--help"], flags.GLOBAL_FLAGS["docker"][0])],
                         ids=["podman run", "podman", "docker run", "docker"])
def test_flag_tables_read_arguments_as_the_engines_do(argv: list[str], table: dict[str, bool]) -> None:
    """A flag whose arity were wrong here would make the parser skip, or take as a flag, what the engine reads."""
    if shutil.which(argv[0]) is None:
        if argv[0] == "docker":  # the docker CLI is optional on a test machine; podman is the tests' engine
            pytest.skip("the docker CLI is not installed on this machine")
        pytest.fail(f"{argv[0]} is not installed")
    engine = _help_arity(argv)
    assert len(engine) > 10, f"cannot read {' '.join(argv)}"
    wrong = {n: (table[n], v) for n, v in engine.items() if n in table and table[n] != v}
    assert wrong == {}, f"arity differs from {' '.join(argv)} (ours, engine's): {wrong}"
    if argv[0] == "podman":  # the engine the tests run: every flag it knows is in the table
        assert sorted(set(engine) - set(table)) == []


# ---- Kubernetes: Pod Security `restricted` ----------------------------------------------------------------------
RESTRICTED_POD: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "a", "image": "localhost/hello:1", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}


def _pod(change: dict[str, Any] | None = None, container: dict[str, Any] | None = None,
         sc: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = msgspec.json.decode(msgspec.json.encode(RESTRICTED_POD))
    spec.update(change or {})
    spec["containers"][0].update(container or {})
    spec["containers"][0]["securityContext"].update(sc or {})
    return spec


KUBE_SIDE_DOORS = [
    (_pod({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}), "hostPathVolumes", ".volumes[0].hostPath"),
    (_pod({"hostNetwork": True}), "hostNamespaces", ".hostNetwork"),
    (_pod({"hostPID": True}), "hostNamespaces", ".hostPID"), (_pod({"hostIPC": True}), "hostNamespaces", ".hostIPC"),
    (_pod(sc={"privileged": True}), "privileged", ".containers[0].securityContext.privileged"),
    (_pod(sc={"capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]}}), "capabilities", ".capabilities.add"),
    (_pod(sc={"capabilities": {}}), "capabilities", ".capabilities.drop"),
    (_pod(container={"ports": [{"containerPort": 80, "hostPort": 80}]}), "hostPorts", ".ports[0].hostPort"),
    (_pod(sc={"allowPrivilegeEscalation": True}), "allowPrivilegeEscalation", ".allowPrivilegeEscalation"),
    (_pod(sc={"runAsUser": 0}), "runAsUser", ".containers[0].securityContext.runAsUser"),
    (_pod({"securityContext": {"runAsNonRoot": False, "seccompProfile": {"type": "RuntimeDefault"}}}),
     "runAsNonRoot", ".runAsNonRoot"),
    (_pod(sc={"seccompProfile": {"type": "Unconfined"}}), "seccomp", ".seccompProfile.type"),
    (_pod(sc={"procMount": "Unmasked"}), "procMount", ".procMount"),
    (_pod({"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                               "sysctls": [{"name": "kernel.core_pattern", "value": "|/tmp/x"}]}}),
     "sysctls", ".securityContext.sysctls[0]"),
    (_pod(sc={"appArmorProfile": {"type": "Unconfined"}}), "appArmor", ".appArmorProfile.type"),
    (_pod(sc={"seLinuxOptions": {"type": "spc_t"}}), "seLinux", ".seLinuxOptions"),
    (_pod({"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}), "volumeTypes", ".volumes[0]"),
]


@pytest.mark.parametrize("spec, rule, at", KUBE_SIDE_DOORS, ids=[f"{r}{a}" for _s, r, a in KUBE_SIDE_DOORS])
def test_kubernetes_refuses_what_pod_security_restricted_refuses(tmp_path: Path, spec: dict[str, Any], rule: str,
                                                                 at: str) -> None:
    assert pod_security(RESTRICTED_POD, {}) == []
    manifest = tmp_path / "m" / "app.yaml"
    manifest.parent.mkdir()
    doc = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "{name}"},
           "spec": {"template": {"metadata": {}, "spec": spec}}}
    manifest.write_text(msgspec.json.encode(doc).decode())
    kube = {"name": "k", "runtime": "kubernetes", "manifest": str(manifest), "kubectl": "/usr/bin/kubectl"}
    pol = policy(commands=[*COMMANDS, f"{tmp_path}/m/*"])
    found = verdict(kube, pol)
    assert found.startswith("variants[0].manifest[0].spec.template.spec.") and at in found, found
    assert f"(policy.kubernetes: {rule})" in found, found
    waived = policy(commands=[*COMMANDS, f"{tmp_path}/m/*"], kubernetes=[rule])
    assert verdict(kube, waived) == "ok"


def test_kubernetes_kinds_kubeconfig_and_env(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "app.yaml"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": RESTRICTED_POD}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}, "subjects": []}
    manifest.write_text("\n---\n".join(msgspec.json.encode(d).decode() for d in (pod, binding)))
    kube = {"name": "k", "runtime": "kubernetes", "manifest": str(manifest), "kubectl": "/usr/bin/kubectl"}
    pol = policy(commands=[*COMMANDS, f"{tmp_path}/m/*"])
    assert verdict(kube, pol).startswith("variants[0].manifest[1].kind ClusterRoleBinding is not a workload")
    manifest.write_text(msgspec.json.encode(pod).decode())
    assert verdict(kube, pol) == "ok"
    # A kubeconfig can name a credential program (users[].user.exec): it is vouched for like one.
    assert "variants[0].kubeconfig /tmp/kc is outside policy.commands" in verdict({**kube, "kubeconfig": "/tmp/kc"},
                                                                                  pol)
    assert "variants[0].env.KUBECONFIG is a start-up hook" in verdict({**kube, "env": {"KUBECONFIG": "/x"}}, pol)
    # The manifest is checked as the runtime renders it: {variant} (the order's variant name) writes YAML.
    manifest.write_text(msgspec.json.encode(pod).decode().replace('"spec":{', '"spec":{"hostNetwork":{variant},'))
    found = verdict({**kube, "name": "true"}, pol)
    assert found.startswith("variants[0].manifest[0].spec.hostNetwork hostNetwork: true"), found
    # … and so does {version}, any text redeploy.v1/v2 say, which can write whole YAML structures.
    manifest.write_text("kind: Pod\nspec:\n  containers:\n  - name: a\n    image: localhost/{version}\n")
    redeploy = {"redeploy": {"v1": "a:1", "v2": "b:1\n    securityContext: {privileged: true}"},
                "phases": ["redeploy"], "ready": {"http": "http://127.0.0.1:{port}/"}}
    e = parse({"name": "e", "variants": [{**kube, "selector": "app={version}"}], **redeploy}, "e.yaml")
    found = "; ".join(map(str, violations(e, pol, "/srv")))
    assert "variants[0].manifest[0].spec.containers[0].securityContext.privileged a privileged container" in found
    manifest.write_text(msgspec.json.encode(pod).decode())
    assert "variants[0].rollout[0] is refused: it '--kubeconfig=/tmp/kc' starts with '-'" in verdict(
        {**kube, "rollout": ["--kubeconfig=/tmp/kc"]}, pol)


def test_probe_programs_are_checked_for_every_version() -> None:
    variant = proc(command=[f"{W}/hello", "--body", "{version}", "--port", "{port}"],
                   ready={"command": ["/opt/{version}/probe"]})
    e = exp(variant, redeploy={"v1": "w", "v2": "x"}, phases=["redeploy"],
            ready={"http": "http://127.0.0.1:{port}/"})
    found = "; ".join(map(str, violations(e, policy(), "/srv")))
    assert "variants[0].ready.command[0] /opt/x/probe is outside policy.commands" in found
    assert "/opt/w/probe" not in found


def test_serverless_deploy_and_cold_commands_are_commands() -> None:
    fn = {"name": "f", "runtime": "serverless", "invoke": "http://127.0.0.1:8080/function/x",
          "deploy": ["/usr/bin/faas-cli", "deploy"], "cold": {"command": ["/usr/bin/faas-cli", "scale"]}}
    assert verdict(fn) == "ok"
    assert "variants[0].deploy[0] /bin/sh is outside policy.commands" in verdict({**fn, "deploy": ["/bin/sh", "-c"]})
    assert "variants[0].cold.until[0] /usr/bin/curl is outside" in verdict(
        {**fn, "cold": {"command": ["/usr/bin/faas-cli"], "until": ["/usr/bin/curl"]}})


# ---- every rejection names the key path and the rule; config; check --------------------------------------------
def test_every_violation_is_listed_with_its_key_path() -> None:
    variant = ctr(env={"BASH_ENV": "/x"}, run_args=["-v/:/h"], image="docker.io/evil:1")
    found = [str(v) for v in violations(exp(variant), policy(), "/srv")]
    assert found == ["variants[0].env.BASH_ENV is a start-up hook (it makes a shell, interpreter or the loader run "
                     "code or programs of the order's choosing): only its exact name in policy.env allows it",
                     "variants[0].image docker.io/evil:1 is outside policy.images (localhost/*)",
                     "variants[0].run_args[0] --volume=/:/h is not in policy.container_flags (it may hand the "
                     "container the host: files, devices, privileges, namespaces or another engine)"]
    assert required(exp(variant), "/srv", policy()) == {"env": ["BASH_ENV"], "images": ["docker.io/evil:1"],
                                                       "container_flags": ["--volume=/:/h"]}


@pytest.mark.parametrize("text, expected", [
    ("policy:\n  env: ['A=B']\n", "policy.env[0]: expected a variable name or glob"),
    ("policy:\n  systemd_properties: ['Exec Start']\n", "policy.systemd_properties[0]: expected a property name"),
    ("policy:\n  container_flags: ['-v']\n", "policy.container_flags[0]: expected --FLAG or --FLAG=VALUE-GLOB"),
    ("policy:\n  container_flags: ['--no-such-flag']\n", "policy.container_flags[0]"),
    ("policy:\n  kubernetes: [hostpath]\n", "policy.kubernetes[0]: expected a Pod Security rule"),
    ("policy:\n  commands: ['{tmp}/*']\n", "policy.commands[0]: {tmp}/* covers {tmp}/spool/runs/, where pushed "
                                           "experiment files are stored"),
])
def test_config_refuses_policy_entries_that_cannot_mean_what_they_say(tmp_path: Path, text: str,
                                                                      expected: str) -> None:
    p = tmp_path / "agent.yaml"
    p.write_text(f"node: n1\nspool:\n  path: {tmp_path}/spool\n" + text.format(tmp=tmp_path))
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert str(e.value).startswith(f"{p}: ") and expected.format(tmp=tmp_path) in str(e.value), str(e.value)
    p.write_text(f"node: n1\nspool:\n  path: {tmp_path}/spool\nexperiments:\n  here: {tmp_path}\n"
                 f"policy:\n  commands: ['{tmp_path}/*']\n")
    load_config(str(p))  # with experiments.here nothing is stored: the glob is fine


def test_describe_prints_the_effective_policy() -> None:
    lines = describe(PolicySettings(runtimes=["process"], commands=["/opt/w/*"]))
    assert lines[0] == "policy.runtimes: process" and lines[2] == "policy.images: (none)"
    assert lines[3].startswith("policy.env: PORT, LANG") and "only by exact name" in lines[3]
    assert lines[4].startswith("policy.systemd_properties: MemoryAccounting, MemoryMax")
    assert "--network=host" in lines[5] and "--volume" not in lines[5]


EXPERIMENTS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_file_passes_a_policy_that_allows_exactly_it(path: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults plus what ``required`` says: allowed; without any one of those entries: refused."""
    stubs = tmp_path / "bin"  # programs the files name by bare name that this machine may lack
    stubs.mkdir()
    for name in ("wasmedge", "wasmtime", "faas-cli", "firecracker", "cloud-hypervisor"):
        (stubs / name).write_text("#!/bin/sh\n")
        (stubs / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{os.environ.get('PATH', os.defpath)}:{stubs}")
    exp, _ = load_file(path)
    exp = with_workloads(exp, workloads_dir())  # as the fleet does before its policy check
    here = str(path.parent)
    need = required(exp, here)
    defaults = PolicySettings()

    def with_(extra: dict[str, list[str]]) -> PolicySettings:
        fields = PolicySettings.__struct_fields__
        return PolicySettings(**{k: [*getattr(defaults, k), *extra.get(k, [])] for k in fields})

    assert violations(exp, with_(need), here) == []
    for key, entries in need.items():
        for entry in entries:
            fewer = {**need, key: [e for e in entries if e != entry]}
            assert violations(exp, with_(fewer), here), f"{path.name}: {key} {entry} is not needed"
    assert "--volume" not in str(defaults.container_flags) and "runtimes" in need


def test_runlab_agent_check_prints_the_effective_policy(tmp_path: Path) -> None:
    import sys

    p = tmp_path / "agent.yaml"
    p.write_text(f"node: n1\nmqtt:\n  url: mqtt://127.0.0.1:9\n  connect_timeout: 1s\nspool:\n  path: {tmp_path}/s\n"
                 "policy:\n  runtimes: [process]\n  commands: [/opt/w/*]\n  env: [PORT, BASH_ENV]\n")
    r = subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(p)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert "  policy.runtimes: process\n  policy.commands: /opt/w/*\n  policy.images: (none)\n" in r.stdout, r.stdout
    assert "  policy.env: PORT, BASH_ENV (start-up hooks" in r.stdout
    assert "  policy.container_flags: --root, --runroot" in r.stdout and "Traceback" not in r.stderr


def test_the_demo_agent_allows_exactly_what_local_runtimes_runs(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from runlab import control, demo

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path)
    key, pub = control.generate_keys(tmp_path / "keys")
    demo.write_configs(SimpleNamespace(url="mqtt://127.0.0.1:1883"), SimpleNamespace(url="http://127.0.0.1:8086"),
                       pub, key)  # type: ignore[arg-type]
    cfg = load_config(str(tmp_path / "agent.yaml"))
    exp, _ = load_file(demo.EXPERIMENT)
    exp = with_workloads(exp, workloads_dir())  # as the fleet does before its policy check
    here = str(demo.HERE)
    assert violations(exp, cfg.policy, here) == []
    need = required(exp, here)
    assert {k: sorted(v) for k, v in need.items()} == {
        "runtimes": sorted(cfg.policy.runtimes), "commands": sorted(cfg.policy.commands),
        "images": sorted(cfg.policy.images)}
