"""Proof by property: an order the policy accepts executes nothing outside ``policy.commands``.

Hypothesis generates experiment orders from the schema — process, wasm and vm variants whose program, arguments,
environment (hooks, odd names, the pushed file, a directory of impostors), working directory and readiness probe
are drawn from pools of honest and adversarial values — against a policy that allows a directory of instrumented
programs and, as loosely as it can, every environment key (``env: ["*"]``). Each accepted order is stored as the
agent stores a pushed file and run by the agent's engine in one helper process traced with
``strace -f -e trace=execve``: every program the kernel was asked to execute while it ran must match
``policy.commands``. The pushed file is also a shell script whose command substitution would run ``touch``, and
the impostor directory holds a ``hello`` that would show as itself: any way around the policy shows in the trace.

The agent's own machine-facts probe (``podman --version``…, fixed, not the order's) is switched off in the helper.
Container, systemd and Kubernetes variants start the engine's programs (podman, conmon, runc; systemd; kubectl's
cluster) by design: their checks are in tests/test_policy.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.config import PUSHED_FILE, PolicySettings
from agent.policy import PolicyError, check
from runlab.experiment import parse
from tests.conftest import REPO, wait_until

WORKLOADS = REPO / "build" / "cache" / "workloads"

HELPER = '''
import asyncio, sys
from agent import facts
from agent.engine import Runner
from runlab.config import read_yaml
from runlab.experiment import parse

async def no_probe():
    return {}
facts.detect_runtimes = no_probe  # the agent's fixed machine-facts probe, not the order's
import subprocess
subprocess.run(["/bin/true", "runlab-mark", "0"])  # the helper's own start ends here in the trace

for line in sys.stdin:
    path, mark = line.split()
    exp = parse(read_yaml(path), path)
    try:
        result = asyncio.run(Runner(exp, file=path).run())
        status = result.status + "".join(f" {v.name}: {v.error}" for v in result.variants if v.error)
    except Exception as e:
        status = f"error {type(e).__name__}: {e}"
    subprocess.run(["/bin/true", "runlab-mark", mark])  # in the trace: everything before it belongs to this run
    print(status.replace(chr(10), " "), flush=True)
'''


class Traced:
    """The engine in a helper process under strace; ``run`` returns the programs one experiment executed."""

    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "execve.log"
        self.script = tmp / "helper.py"
        self.script.write_text(HELPER)
        self.proc = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-s", "256",
                                      "-o", str(self.log), sys.executable, str(self.script)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.offset, self.n = 0, 0
        self._upto(0)

    def run(self, path: Path) -> tuple[str, list[str]]:
        self.n += 1
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{path} {self.n}\n")
        self.proc.stdin.flush()
        status = self.proc.stdout.readline().strip()
        return status, executed(self._upto(self.n))

    def _upto(self, n: int) -> str:
        """The trace from the last marker up to marker ``n`` (which the helper executes after each run)."""
        mark = f'"runlab-mark", "{n}"'
        def logged() -> str | None:
            t = self.log.read_text(errors="replace")[self.offset:] if self.log.exists() else ""
            return t if mark in t else None

        text = wait_until(logged, timeout=30, what="the run's trace")
        at = text.index(mark)
        start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
        self.offset += end + 1 if end >= 0 else len(text)
        return text[:start]  # up to the marker's own line

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def executed(trace: str) -> list[str]:
    """Paths of every execve in an ``strace -f`` log that did not fail with ENOENT (a PATH search's misses)."""
    pending: dict[str, str] = {}
    out: list[str] = []
    for line in trace.splitlines():
        m = re.match(r'^(\d+)\s+execve\("([^"]*)"', line)
        if m:
            pid, path = m.groups()
            if "<unfinished ...>" in line:
                pending[pid] = path
            elif "= -1 ENOENT" not in line:
                out.append(path)
            continue
        m = re.match(r"^(\d+)\s+<\.\.\. execve resumed>", line)
        if m and m.group(1) in pending:
            path = pending.pop(m.group(1))
            if "= -1 ENOENT" not in line:
                out.append(path)
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, workloads: Path) -> Iterator[dict[str, Any]]:
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed: scripts/ensure-system-packages installs it")
    tmp = tmp_path_factory.mktemp("policy-property")
    cmds, evil = tmp / "cmds", tmp / "evil"
    cmds.mkdir()
    evil.mkdir()
    shutil.copy(workloads / "hello", cmds / "hello")
    (cmds / "serve.sh").write_text(f'#!/bin/bash\nexec {cmds}/hello --port "$1"\n')
    (cmds / "serve.sh").chmod(0o755)
    for name in ("hello", "evil.sh", "sh"):  # impostors: executing any shows in the trace
        (evil / name).write_text(f"#!/bin/sh\necho ran >> {evil}/ran\n")
        (evil / name).chmod(0o755)
    traced = Traced(tmp)
    yield {"tmp": tmp, "cmds": cmds, "evil": evil, "traced": traced, "n": 0}
    traced.close()


def program_pool(cmds: Path, evil: Path) -> list[str]:
    return [f"{cmds}/hello", f"{cmds}/serve.sh", "{here}/../../cmds/hello", f"{cmds}/../evil/hello", f"{evil}/hello",
            f"{evil}/evil.sh", "hello", "sh", "/bin/sh", "/usr/bin/env", "{here}/" + PUSHED_FILE,
            f"{cmds}/./serve.sh", "./hello"]


ENV_KEYS = ["PORT", "MY_SETTING", "LC_ALL", "BASH_ENV", "ENV", "PATH", "HOME", "SHELLOPTS", "PS4", "LD_PRELOAD",
            "LD_LIBRARY_PATH", "PYTHONPATH", "NODE_OPTIONS", "GCONV_PATH", "A=B", "BASH_FUNC_hello%%", "bash_env",
            "IFS", "PROMPT_COMMAND", "GLIBC_TUNABLES"]


def env_values(evil: Path) -> list[str]:
    return [f"{evil}/evil.sh", "{here}/" + PUSHED_FILE, str(evil), f"{evil}:/usr/bin:/bin", "xtrace",
            "$(/usr/bin/touch /tmp/x)", "() {{ /usr/bin/touch /tmp/x; }}", "1", "C.UTF-8"]


@st.composite
def orders(draw: st.DrawFn, cmds: Path, evil: Path) -> dict[str, Any]:
    # Half the draws from the honest part of each pool, so that enough orders are accepted and run.
    honest = [f"{cmds}/hello", f"{cmds}/serve.sh", "{here}/../../cmds/hello", f"{cmds}/./serve.sh"]
    program = draw(st.one_of(st.sampled_from(honest), st.sampled_from(program_pool(cmds, evil))))
    args = ["{port}"] if program.endswith(("serve.sh", PUSHED_FILE)) else ["--port", "{port}"]
    keys = st.one_of(st.sampled_from(["PORT", "MY_SETTING", "LC_ALL"]), st.sampled_from(ENV_KEYS))
    env = draw(st.one_of(st.just({}), st.dictionaries(keys, st.sampled_from(env_values(evil)), max_size=3)))
    variant: dict[str, Any] = {"name": "v", "runtime": draw(st.sampled_from(["process", "wasm", "vm"])),
                               "command": [program, *args], "env": env}
    if draw(st.booleans()):
        variant["cwd"] = draw(st.sampled_from([str(cmds), str(evil), "{here}"]))
    ready: dict[str, Any] = {"http": "http://127.0.0.1:{port}/", "timeout": "10s"}
    if draw(st.integers(0, 4)) == 0:
        probe = draw(st.sampled_from(program_pool(cmds, evil)))
        ready = {"command": [probe, "--version"], "timeout": "3s"}
    return {"name": "prop", "description": f"$(/usr/bin/touch {evil}/pwned)", "repeat": 1, "warmup": 0,
            "phases": ["cold_start"], "ready": ready, "variants": [variant]}


def test_executed_reads_strace() -> None:
    trace = ('12 execve("/a", ["/a"], 0x0 /* 1 var */) = 0\n'
             '13 execve("/usr/local/bin/x", ["x"], 0x0 /* 1 var */) = -1 ENOENT (No such file or directory)\n'
             '14 execve("/b", ["/b"], 0x0 /* 1 var */ <unfinished ...>\n'
             '15 execve("/c", ["/c"], 0x0 /* 1 var */ <unfinished ...>\n'
             '14 <... execve resumed>) = 0\n15 <... execve resumed>) = -1 ENOENT (No such file or directory)\n')
    assert executed(trace) == ["/a", "/b"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_an_accepted_order_executes_nothing_outside_policy_commands(lab: dict[str, Any], data: st.DataObject) -> None:
    cmds, evil, tmp = lab["cmds"], lab["evil"], lab["tmp"]
    order = data.draw(orders(cmds, evil))
    policy = PolicySettings(runtimes=["process", "wasm", "vm"], commands=[f"{cmds}/*"], env=["*"])
    lab["n"] += 1
    here = tmp / "runs" / f"r{lab['n']}"
    here.mkdir(parents=True)
    from agent.fleet import store_pushed

    text = msgspec.json.encode(order).decode()  # JSON is YAML
    pushed = store_pushed(here, text)
    try:
        check(parse(order, "prop.yaml"), policy, str(here), str(pushed))
    except PolicyError:
        event("refused")
        return  # refused: nothing runs
    status, ran = lab["traced"].run(pushed)
    event(f"accepted, {status.split()[0]}")
    outside = [p for p in ran if not os.path.normpath(os.path.join(str(REPO), p)).startswith(f"{cmds}/")]
    assert outside == [], f"accepted order executed {outside} (status {status}): {text}"
    assert not (evil / "ran").exists() and not (evil / "pwned").exists()
    if status == "finished":  # the workload ran: the trace must have seen it (the instrument is not blind)
        assert ran, f"the accepted order executed nothing the trace saw (status {status}): {text}"


def test_the_trace_sees_a_side_door_when_the_policy_opens_one(lab: dict[str, Any]) -> None:
    """The instrument works: with BASH_ENV allowed by its exact name, bash sources the pushed file and its
    command substitution runs touch — which the trace shows outside policy.commands."""
    cmds, tmp = lab["cmds"], lab["tmp"]
    order = {"name": "door", "description": f"$(/usr/bin/touch {tmp}/opened)", "repeat": 1, "warmup": 0,
             "phases": ["cold_start"], "ready": {"http": "http://127.0.0.1:{port}/", "timeout": "10s"},
             "variants": [{"name": "v", "runtime": "process", "command": [f"{cmds}/serve.sh", "{port}"],
                           "env": {"BASH_ENV": "{here}/" + PUSHED_FILE}}]}
    here = tmp / "runs" / "door"
    here.mkdir(parents=True)
    from agent.fleet import store_pushed

    pushed = store_pushed(here, msgspec.json.encode(order).decode())
    opened = PolicySettings(runtimes=["process"], commands=[f"{cmds}/*"], env=["BASH_ENV"])
    check(parse(order, "door.yaml"), opened, str(here), str(pushed))
    with pytest.raises(PolicyError, match="BASH_ENV is a start-up hook"):
        check(parse(order, "door.yaml"), PolicySettings(runtimes=["process"], commands=[f"{cmds}/*"], env=["*"]),
              str(here), str(pushed))
    status, ran = lab["traced"].run(pushed)
    assert "/usr/bin/touch" in ran and (tmp / "opened").exists(), (status, ran)


# ---- adversarial flag spellings (checked, not run: the engine's own programs run for any container) -------------
FRAGMENTS = ["-", "--", "v", "d", "e", "p", "i", "t", "P", "m", "=", "/:/h", "/", "volume", "privileged", "network",
             "net", "host", "rm", "mount", "type=bind,src=/,dst=/h", "127.0.0.1:80:80", "A=1", "LD_PRELOAD=/x",
             "true", "false", "64m", "read-only", "cap-add", "ALL", "pid", "security-opt", "seccomp=unconfined",
             "device", "/dev/sda", "rootfs", "env-file", "name", "x", ":", "docker.io/evil"]
WHOLE = ["--rm", "-d", "-dit", "--network=host", "--net=host", "--read-only", "-e", "PORT=1", "--memory", "64m",
         "-m64m", "--tmpfs", "/tmp", "-p", "127.0.0.1:80:80", "--publish=127.0.0.1:1:1", "-ePORT=1", "--pid=private",
         "--security-opt=no-new-privileges", "-v", "--volume", "--privileged", "--pid=host", "-itv"]
# What hands a container the host, as a reader independent of the parser names it (long name → bad values).
DANGER = {"volume": "*", "mount": "*", "privileged": "true", "device": "*", "cap-add": "*", "rootfs": "true",
          "volumes-from": "*", "env-file": "*", "env-host": "true", "name": "*", "annotation": "*",
          "pid": "host", "ipc": "host", "uts": "host", "userns": "host", "cgroupns": "host",
          "network": "container:*", "security-opt": "[!n]*"}


def naive_reading(args: list[str]) -> list[tuple[str, str]] | None:
    """Every (flag, value) the engine could read, token by token; None when a token would be positional."""
    from agent.flags import RUN_FLAGS, RUN_SHORT  # arity only (compared with the engines' --help elsewhere)

    takes = {n for n, value in RUN_FLAGS.items() if value}
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        t = args[i]
        if not t.startswith("-") or t == "-":
            return None
        if t.startswith("--"):
            name, eq, value = t[2:].partition("=")
            name = "network" if name == "net" else name
            if name in takes and not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            out.append((name, value or "true"))
        else:
            for j, c in enumerate(t[1:], start=1):
                long = RUN_SHORT.get(c, c)
                if long in takes:
                    rest = t[j + 1:].removeprefix("=")
                    if not rest:
                        i += 1
                        rest = args[i] if i < len(args) else ""
                    out.append((long, rest))
                    break
                out.append((long, "true"))
        i += 1
    return out


@settings(max_examples=1500, deadline=None)
@given(args=st.lists(st.one_of(st.sampled_from(WHOLE), st.lists(st.sampled_from(FRAGMENTS), min_size=1,
                                                                max_size=4).map("".join)), max_size=6))
def test_accepted_run_args_hand_over_nothing_however_spelled(args: list[str]) -> None:
    import fnmatch

    variant = {"name": "c", "runtime": "container", "image": "localhost/hello:1", "run_args": args}
    exp = parse({"name": "e", "ready": {"tcp": "127.0.0.1:{port}"}, "variants": [variant]}, "e.yaml")
    try:
        check(exp, PolicySettings(runtimes=["container"], images=["localhost/*"]), "/srv")
    except PolicyError as e:
        event("refused")
        assert str(e).startswith("variants[0].run_args[")
        return
    event("accepted")
    reading = naive_reading(args)
    assert reading is not None, f"accepted {args}: a token would be the image"
    bad = [(n, v) for n, v in reading if any(n == d and fnmatch.fnmatchcase(v, g) for d, g in DANGER.items())]
    assert bad == [], f"accepted {args}, which hands over {bad}"
