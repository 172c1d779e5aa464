"""Container engine command lines read the way the engines read them (Go pflag, as cobra uses it).

docker, podman and nerdctl parse their flags with spf13/pflag: ``--flag=value``,
``--flag value``, a bool ``--flag`` (or ``--flag=false``), short flags bundled
(``-dit``) with a value glued on (``-v/x:/y``, ``-dv/x:/y``) or after ``=``
(``-e=K=V``) or in the next argument, ``--`` ending the flags, a flag given
many times. A deny-list that looks for ``-v`` misses ``-dv/:/h``; so
agent/policy.py parses ``engine_args`` and ``run_args`` with this module into
(long name, value) pairs and checks each against an allow-list.

The tables give every flag the engines know with its arity (tests compare them
with ``podman --help`` / ``docker --help``). Parsing refuses, rather than
guesses, wherever the engine and this parser could disagree: an unknown flag,
a positional argument (in ``run_args`` it would become the image, in
``engine_args`` the subcommand), ``--``, a value-taking flag at the end (it
would swallow the next argument), and a value in the next argument that starts
with ``-`` (write ``--flag=-x``).
"""

from __future__ import annotations

from dataclasses import dataclass


def _table(values: str, bools: str) -> dict[str, bool]:
    """long name → takes a value."""
    return {**{n: True for n in values.split()}, **{n: False for n in bools.split()}}


# `run` flags: podman 4 and docker 24+ (nerdctl's are a subset of docker's), names as pflag registers them.
RUN_FLAGS = _table(
    values="""add-host annotation arch attach authfile blkio-weight blkio-weight-device cap-add cap-drop cgroup-conf
    cgroup-parent cgroupns cgroups chrootdirs cidfile conmon-pidfile cpu-count cpu-percent cpu-period cpu-quota
    cpu-rt-period cpu-rt-runtime cpu-shares cpus cpuset-cpus cpuset-mems detach-keys device device-cgroup-rule
    device-read-bps device-read-iops device-write-bps device-write-iops dns dns-option dns-search domainname
    entrypoint env env-file env-merge expose gidmap gpus group-add health-cmd health-interval health-on-failure
    health-retries health-start-interval health-start-period health-timeout hostname hostuser image-volume
    init-path io-maxbandwidth io-maxiops ip ip6 ipc isolation kernel-memory label label-file link link-local-ip
    log-driver log-opt mac-address memory memory-reservation memory-swap memory-swappiness mount name network
    network-alias oom-score-adj os passwd-entry personality pid pidfile pids-limit platform pod pod-id-file
    preserve-fds publish pull requires restart runtime sdnotify seccomp-policy secret security-opt shm-size
    stop-signal stop-timeout storage-opt subgidname subuidname sysctl systemd timeout tmpfs tz uidmap ulimit umask
    unsetenv user userns uts variant volume volume-driver volumes-from workdir""",
    bools="""detach disable-content-trust env-host help http-proxy init interactive no-healthcheck no-hosts
    oom-kill-disable passwd privileged publish-all quiet read-only read-only-tmpfs replace rm rmi rootfs sig-proxy
    tls-verify tty unsetenv-all use-api-socket""")
RUN_SHORT = {"a": "attach", "c": "cpu-shares", "d": "detach", "e": "env", "h": "hostname", "i": "interactive",
             "l": "label", "m": "memory", "p": "publish", "P": "publish-all", "q": "quiet", "t": "tty", "u": "user",
             "v": "volume", "w": "workdir"}

# Global flags (before the subcommand), per engine.
GLOBAL_FLAGS = {
    "podman": (_table(values="""cgroup-manager cni-config-dir conmon connection db-backend events-backend hooks-dir
                      identity log-level module namespace network-backend network-cmd-path network-config-dir out
                      root runroot runtime runtime-flag ssh storage-driver storage-opt tmpdir url volumepath""",
                      bools="help noout remote syslog version"),
               {"c": "connection", "r": "remote", "v": "version"}),
    "docker": (_table(values="config context host log-level tlscacert tlscert tlskey",
                      bools="debug help tls tlsverify version"),
               {"c": "context", "D": "debug", "H": "host", "l": "log-level", "v": "version"}),
    "nerdctl": (_table(values="""address bridge-ip cgroup-manager cni-netconfpath cni-path data-root
                       host-gateway-ip hosts-dir namespace snapshotter storage-driver""",
                       bools="debug debug-full experimental help insecure-registry version"),
                {"a": "address", "H": "address", "n": "namespace", "v": "version"}),
}
# Other spellings pflag normalises to the names above (podman's and docker's alias normalisers).
ALIASES = {"net": "network", "dns-opt": "dns-option", "override-arch": "arch", "override-os": "os",
           "override-variant": "variant"}
# Flags whose value is a host program the engine executes: a path must also be in policy.commands.
PROGRAM_FLAGS = frozenset({"runtime", "conmon", "network-cmd-path", "init-path"})
# Flags whose value is an environment assignment KEY=VALUE (or KEY: the host's value): the key meets policy.env.
ENV_FLAGS = frozenset({"env", "env-merge"})
_TRUE, _FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


@dataclass(frozen=True)
class Parsed:
    """One flag as the engine sees it: long name (aliases resolved) and value (bools: "true"/"false")."""

    name: str
    value: str
    arg: int  # index of the argument it was read from
    spelled: str  # as written, for messages


class FlagError(ValueError):
    """Where parsing cannot agree with the engine for sure; str(e) says what and why."""

    def __init__(self, arg: int, message: str) -> None:
        super().__init__(message)
        self.arg = arg


def _bool(value: str, i: int, spelled: str) -> str:
    if value in _TRUE:
        return "true"
    if value in _FALSE:
        return "false"
    raise FlagError(i, f"{spelled}: expected a boolean value (true/false), got {value!r}")


def parse(args: list[str], longs: dict[str, bool], shorts: dict[str, str]) -> list[Parsed]:
    """Every flag in ``args`` in order, or FlagError at the first argument that is not a known flag."""
    out: list[Parsed] = []
    i = 0

    def next_value(spelled: str) -> str:
        nonlocal i
        if i + 1 >= len(args):
            raise FlagError(i, f"{spelled} expects a value but ends the list (the engine would take the next "
                               f"argument, such as the image, as its value)")
        value = args[i + 1]
        if value.startswith("-"):
            raise FlagError(i + 1, f"{spelled} {value}: a value starting with '-' is ambiguous; write "
                                   f"{spelled}={value}")
        i += 1
        return value

    while i < len(args):
        a, start = args[i], i
        if a == "--":
            raise FlagError(i, "'--' ends the flags: what follows would be taken as the image or subcommand")
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if not name or name.startswith("-"):
                raise FlagError(i, f"{a}: not a flag the engine accepts")
            canon = ALIASES.get(name, name)
            if canon not in longs:
                raise FlagError(i, f"--{name}: unknown flag")
            if not eq:
                value = next_value(f"--{name}") if longs[canon] else "true"
            elif not longs[canon]:
                value = _bool(value, i, a)
            out.append(Parsed(canon, value, start, a))
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                c = a[j]
                if c not in shorts:
                    raise FlagError(i, f"-{c} (in {a}): unknown flag")
                canon = shorts[c]
                if j + 1 < len(a) and a[j + 1] == "=":  # -e=K=V, -d=false
                    value = a[j + 2:]
                    value = value if longs[canon] else _bool(value, i, a)
                    j = len(a)
                elif not longs[canon]:
                    value = "true"
                    j += 1
                elif j + 1 < len(a):  # -v/x:/y, -dv/x:/y: the rest of the argument is the value
                    value = a[j + 1:]
                    j = len(a)
                else:
                    value = next_value(f"-{c}")
                    j = len(a)
                out.append(Parsed(canon, value, start, a))
        else:
            raise FlagError(i, f"{a!r} is not a flag: among these arguments the engine would take it as the "
                               f"image or subcommand")
        i += 1
    return out
