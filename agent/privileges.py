"""What this machine's privileges will not let an accepted experiment do, said before anything starts.

The policy (agent/policy.py) says what the administrator *allows*; this module
says what the agent *can*: it runs as the system user ``runlab`` with no
capabilities, so a microVM needs ``/dev/kvm`` (group kvm), docker its socket
(group docker), rootless podman subordinate ids, ``cold: page-cache`` root,
``runtime: systemd`` a systemd manager. Without these the run would fail halfway
with the runtime's own error (often after other variants ran); instead the
order is ``rejected`` with one line per problem naming the variant, what is
missing and the fix (packaging/examples/*.conf are the least-privilege recipes).

Only what can be decided cheaply and reliably is checked — ``stat`` and mode
bits against the agent's uid, gid and supplementary groups, a few files and
environment variables; no process is started. Whenever the answer is not
certain (a POSIX ACL on the file, a docker context, a remote podman, a subid
database in nsswitch, a program that is not there yet) the check keeps quiet
and the runtime decides at run time: a refusal here is always a real one.
Credentials and paths are parameters so that tests inject them.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.policy import EXECUTES, _flag_values, _values, program_path, runtime_of
from runlab.experiment import (
    ContainerVariant,
    Experiment,
    KubernetesVariant,
    SystemdVariant,
    Variant,
    VmVariant,
    fill,
)

R, W, X = 4, 2, 1


@dataclass(frozen=True)
class Credentials:
    """Who the agent is for the kernel's permission checks."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    user: str = ""
    no_new_privs: bool = False  # setuid helpers (newuidmap) do not gain privileges (NoNewPrivileges=yes)

    @classmethod
    def current(cls) -> Credentials:
        uid = os.geteuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        nnp = False
        try:
            with open("/proc/self/status") as f:
                nnp = any(line.split() == ["NoNewPrivs:", "1"] for line in f)
        except OSError:
            pass
        return cls(uid=uid, gid=os.getegid(), groups=frozenset(os.getgroups()), user=user, no_new_privs=nnp)

    @property
    def name(self) -> str:
        return self.user or str(self.uid)


@dataclass(frozen=True)
class HostPaths:
    """The host files the checks look at (tests point them at temp files with chosen modes)."""

    kvm: str = "/dev/kvm"
    tun: str = "/dev/net/tun"
    docker_sock: str = "/var/run/docker.sock"
    subuid: str = "/etc/subuid"
    subgid: str = "/etc/subgid"
    nsswitch: str = "/etc/nsswitch.conf"
    systemd_dir: str = "/run/systemd/system"  # sd_booted(): systemd is init
    systemd_private: str = "/run/systemd/private"
    drop_caches: str = "/proc/sys/vm/drop_caches"
    tmp_dirs: tuple[str, ...] | None = None  # default: tempfile's candidates ($TMPDIR, $TEMP, $TMP, /tmp, …)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


# -- permission bits ----------------------------------------------------------------------------------

def _has_acl(path: str) -> bool:
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        return False


def allowed(path: str, want: int, creds: Credentials) -> bool | None:
    """Whether ``creds`` get ``want`` (R|W|X bits) on ``path``; None when unsure (missing file, ACL)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if _has_acl(path):
        return None
    if creds.uid == 0:  # root: everything but executing a file no one may execute
        return not (want & X) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == creds.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == creds.gid or st.st_gid in creds.groups:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def describe(path: str) -> str:
    """``owner root:kvm, mode 0660`` for messages."""
    try:
        st = os.stat(path)
    except OSError:
        return "cannot stat"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owner {owner}:{group}, mode {stat.S_IMODE(st.st_mode):04o}"


def _group_grants(path: str, want: int) -> str | None:
    """The file's group name when its group bits grant ``want`` (joining that group is the fix)."""
    try:
        st = os.stat(path)
        if (st.st_mode >> 3) & want != want or st.st_gid == 0:
            return None
        return grp.getgrgid(st.st_gid).gr_name
    except (OSError, KeyError):
        return None


def blocking_dir(path: str, creds: Credentials) -> str | None:
    """The first directory on the way to ``path`` (as written and resolved) that ``creds`` cannot enter."""
    dirs: list[str] = []
    for p in (os.path.normpath(path), os.path.realpath(path)):
        d = os.path.dirname(p)
        chain = []
        while True:
            chain.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        dirs += [c for c in reversed(chain) if c not in dirs]
    return next((d for d in dirs if allowed(d, X, creds) is False), None)


def _readonly(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# -- the checks ---------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, exp: Experiment, here: str, creds: Credentials, host: HostPaths) -> None:
        self.exp, self.here, self.creds, self.host = exp, here, creds, host
        self.problems: list[str] = []

    def add(self, line: str) -> None:
        if line not in self.problems:
            self.problems.append(line)

    def denied(self, path: str, want: int) -> str | None:
        """Why ``creds`` cannot use ``path`` as ``want`` asks; None when they can or it is not certain."""
        if not os.path.exists(path):
            return None  # absent: the runtime says so; this is not about privileges
        u = self.creds.name
        d = blocking_dir(path, self.creds)
        if d is not None:
            return f"it lies in {d}, which user {u} cannot enter ({describe(d)})"
        if allowed(path, want, self.creds) is False:
            verb = {X: "execute", R: "read", W: "write", R | W: "read and write"}.get(want, "use")
            return f"user {u} may not {verb} it ({describe(path)})"
        return None

    def program(self, who: str, where: str, program: str, env: Mapping[str, str], cwd: str | None) -> None:
        path = program_path(program, dict(env), cwd)
        if path is None or not os.path.isfile(path):
            return  # not there (yet): the runtime says so, this is not about privileges
        u = self.creds.name
        why = self.denied(path, X)
        if why is not None:
            self.add(f"{who}: {where} {path}: {why} — let user {u} execute it (chmod, or a group {u} is in) "
                     f"or move it")
            return
        try:
            with open(path, "rb") as f:
                script = f.read(2) == b"#!"
        except OSError:
            script = False
        why = self.denied(path, R) if script else None  # the interpreter reads a script: r as well as x
        if why is not None:
            self.add(f"{who}: {where} {path} is a script: {why} — let user {u} read it")

    # ---- per runtime ----
    def variant(self, v: Variant) -> None:
        who = f"variant {v.name}"
        rt = runtime_of(v)
        values = _values(self.exp, v, self.here)
        declare = EXECUTES.get(rt)
        if declare is not None:
            ex = declare(v, values)
            for where, program in ex.programs:
                if rt == "systemd" and where == "command[0]":
                    continue  # the systemd manager starts it, with the unit's credentials
                if where == "kubeconfig":
                    continue  # read, not executed: checked below
                if where == "manifest":
                    why = self.denied(program, R)
                    if why is not None:
                        self.add(f"{who}: manifest {program}: {why} — let user {self.creds.name} read it")
                    continue
                self.program(who, where, program, ex.env, ex.cwd)
        ready = v.ready or self.exp.ready
        if ready.command:
            self.program(who, "ready.command[0]", fill(ready.command[0], values), {}, None)
        if isinstance(v, KubernetesVariant) and v.kubeconfig:
            path = fill(v.kubeconfig, values)
            why = self.denied(path, R)
            if why is not None:
                self.add(f"{who}: kubeconfig {path}: {why} — let user {self.creds.name} read it (a copy it owns)")
        if isinstance(v, ContainerVariant):
            self.container(who, v, values)
        elif isinstance(v, VmVariant):
            self.vm(who, v, values)
        elif isinstance(v, SystemdVariant):
            self.systemd(who, v)

    def container(self, who: str, v: ContainerVariant, values: dict[str, str]) -> None:
        env = self.host.env
        self.program(who, "engine", v.engine, env, None)
        args = [fill(a, values) for a in v.engine_args]
        u = self.creds.name
        if v.engine == "docker":
            sock = self._docker_socket(args)
            why = self.denied(sock, W) if sock is not None else None
            if why is not None:
                group = _group_grants(str(sock), W) or "docker"
                self.add(f"{who}: engine docker needs write access to {sock}: {why} — add user {u} to group "
                         f"{group} (SupplementaryGroups={group}; note: the {group} group is root-equivalent — "
                         f"rootless podman is the least-privilege way, packaging drop-in containers.conf)")
        elif v.engine == "nerdctl":
            given = [val for _f, val in _flag_values(args, ("-a", "--address", "-H", "--host"))]
            addr = given[-1] if given else env.get("CONTAINERD_ADDRESS")
            if addr and self.creds.uid != 0:
                sock = addr.removeprefix("unix://")
                why = self.denied(sock, W)
                if why is not None:
                    self.add(f"{who}: engine nerdctl needs write access to {sock}: {why} — add user {u} to the "
                             f"socket's group, or use rootless podman (packaging drop-in containers.conf)")
        elif v.engine == "podman" and self.creds.uid != 0:
            self._rootless_podman(who, args)

    def _docker_socket(self, args: list[str]) -> str | None:
        env = self.host.env
        if _flag_values(args, ("-c", "--context")) or env.get("DOCKER_CONTEXT"):
            return None  # a context names the endpoint: unsure
        config = os.path.join(env.get("DOCKER_CONFIG") or os.path.join(env.get("HOME", "/"), ".docker"),
                              "config.json")
        try:
            with open(config) as f:
                if "currentContext" in f.read():
                    return None
        except OSError:
            pass
        hosts = [val for _f, val in _flag_values(args, ("-H", "--host"))]
        host = hosts[-1] if hosts else env.get("DOCKER_HOST")
        if not host:
            return self.host.docker_sock
        return host.removeprefix("unix://") if host.startswith("unix://") else None  # tcp/ssh: not local

    def _rootless_podman(self, who: str, args: list[str]) -> None:
        env = self.host.env
        if (_flag_values(args, ("--remote", "-r", "--url", "--connection", "-c"))
                or env.get("CONTAINER_HOST") or env.get("CONTAINER_CONNECTION")):
            return  # a remote podman: its service's privileges count, not ours
        try:
            with open(self.host.nsswitch) as f:
                if any(line.split(":", 1)[0].strip() == "subid" for line in f):
                    return  # subordinate ids come from a database we do not read
        except OSError:
            pass
        u, missing = self.creds.name, []
        for path in (self.host.subuid, self.host.subgid):
            has = _has_subid_range(path, self.creds)
            if has is False:
                missing.append(path)
        if missing:
            self.add(f"{who}: rootless podman for user {u} needs a subordinate id range in "
                     f"{' and '.join(missing)} — usermod --add-subuids 200000-265535 --add-subgids "
                     f"200000-265535 {u} (packaging drop-in containers.conf)")
        elif self.creds.no_new_privs:
            self.add(f"{who}: rootless podman for user {u} maps its subordinate ids with the setuid helper "
                     f"newuidmap, but the agent runs with no_new_privs (NoNewPrivileges=yes) — install the "
                     f"packaging drop-in containers.conf (NoNewPrivileges=no)")

    def vm(self, who: str, v: VmVariant, values: dict[str, str]) -> None:
        why = needs_kvm(v)
        u = self.creds.name
        if why is not None:
            if not os.path.exists(self.host.kvm):
                self.add(f"{who}: needs {self.host.kvm} ({why}), which the agent cannot see — KVM is absent on "
                         f"this machine, or the unit's PrivateDevices=yes hides it (packaging drop-in vm.conf)")
            else:
                group = _group_grants(self.host.kvm, R | W)
                fix = (f"add user {u} to group {group} (packaging drop-in vm.conf)" if group else
                       f"give it to group kvm, mode 0660 (udev rule), and add user {u} to that group "
                       f"(packaging drop-in vm.conf)")
                denied = self.denied(self.host.kvm, R | W)
                if denied is not None:
                    self.add(f"{who}: needs read/write access to {self.host.kvm} ({why}): {denied} — {fix}")
        tap = (v.firecracker.tap if v.firecracker else v.cloud_hypervisor.tap if v.cloud_hypervisor else None)
        if tap:
            if not os.path.exists(self.host.tun):
                self.add(f"{who}: tap {fill(tap, values)} needs {self.host.tun}, which the agent cannot see "
                         f"(PrivateDevices=yes hides it — packaging drop-in vm.conf)")
            elif (denied := self.denied(self.host.tun, R | W)) is not None:
                self.add(f"{who}: tap {fill(tap, values)} needs read/write access to {self.host.tun}: {denied} — "
                         f"chmod 0666 {self.host.tun} (the kernel's default)")

    def systemd(self, who: str, v: SystemdVariant) -> None:
        env = self.host.env
        if not v.user:
            if not os.path.isdir(self.host.systemd_dir) and not os.path.exists(self.host.systemd_private):
                self.add(f"{who}: needs a running systemd manager, but systemd is not this machine's init (no "
                         f"{self.host.systemd_dir}: `systemctl is-system-running` would say offline) — run it on a "
                         f"systemd host, or set user: true with a user manager")
            return
        u = self.creds.name
        fix = (f"loginctl enable-linger {u} and, in a drop-in, Environment=XDG_RUNTIME_DIR=/run/user/"
               f"{self.creds.uid}")
        if env.get("DBUS_SESSION_BUS_ADDRESS"):
            return
        xdg = env.get("XDG_RUNTIME_DIR")
        if not xdg:
            self.add(f"{who}: user: true needs user {u}'s systemd manager, but XDG_RUNTIME_DIR is not set for "
                     f"the agent — {fix}")
        elif os.path.isdir(xdg) and not any(os.path.exists(os.path.join(xdg, s)) for s in ("systemd/private", "bus")):
            self.add(f"{who}: user: true needs user {u}'s systemd manager, but none listens in "
                     f"XDG_RUNTIME_DIR={xdg} (no systemd/private or bus socket) — {fix}")

    def experiment(self) -> None:
        u = self.creds.name
        if self.exp.cold == "page-cache":
            if self.creds.uid != 0:
                self.add(f"cold: page-cache needs root to write {self.host.drop_caches} (drop_caches); the agent "
                         f"runs as user {u} — use cold: process, or run this file with `runlab-agent run` as root")
            elif _readonly(os.path.dirname(self.host.drop_caches)):
                self.add(f"cold: page-cache: {os.path.dirname(self.host.drop_caches)} is read-only for the agent "
                         f"(ProtectKernelTunables=yes in the unit, or a container) — use cold: process")
        if self.exp.benchmark is not None:
            values = {"here": self.here, "port": "0", "name": "x", "run_dir": "/", "variant": "x",
                      "version": "v1", "role": "server", "peer": ""}
            self.program("benchmark", "benchmark.command[0]", fill(self.exp.benchmark.command[0], values), {}, None)
        self.tmp()

    def tmp(self) -> None:
        """Every start gets a run_dir under tempfile's directory: at least one candidate must be writable."""
        env = self.host.env
        cands = self.host.tmp_dirs
        if cands is None:
            cands = tuple(dict.fromkeys([*(env[k] for k in ("TMPDIR", "TEMP", "TMP") if env.get(k)),
                                         "/tmp", "/var/tmp", "/usr/tmp"]))
        existing = [d for d in cands if os.path.isdir(d)]
        for d in existing:
            blocked, ok = blocking_dir(d, self.creds), allowed(d, W | X, self.creds)
            if blocked is None and (ok is None or (ok and not _readonly(d))):
                return  # writable, or not certain
        if existing:
            self.add(f"run_dir: no temporary directory user {self.creds.name} may write "
                     f"({', '.join(existing)}) — set TMPDIR to one it may write, or PrivateTmp=yes in the unit")


def _has_subid_range(path: str, creds: Credentials) -> bool | None:
    """Whether ``/etc/subuid``-style ``path`` gives the user a range; None when it cannot be read."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (creds.user, str(creds.uid)) and parts[2].isdigit() and int(parts[2]) > 0:
            return True
    return False


def needs_kvm(v: VmVariant) -> str | None:
    """Why this VM cannot run without /dev/kvm (``-accel kvm``, ``firecracker``…), or None when it can."""
    if v.firecracker is not None:
        return "firecracker"
    if v.cloud_hypervisor is not None:
        return "cloud-hypervisor"
    cmd = v.command
    base = os.path.basename(cmd[0]) if cmd else ""
    if base in ("firecracker", "cloud-hypervisor"):
        return base
    accels: list[str] = []
    for i, a in enumerate(cmd):
        nxt = cmd[i + 1] if i + 1 < len(cmd) else ""
        if a in ("-enable-kvm", "--enable-kvm"):
            accels.append("kvm")
        elif a in ("-accel", "--accel"):
            accels.append(nxt.split(",")[0])
        elif a.startswith(("-accel=", "--accel=")):
            accels.append(a.split("=", 1)[1].split(",")[0])
        elif a in ("-machine", "-M", "--machine"):
            for part in nxt.split(","):
                if part.startswith("accel="):
                    accels += part[len("accel="):].split(":")
    if accels and set(accels) == {"kvm"}:  # "kvm:tcg" or a second -accel falls back: that can run
        return "-accel kvm"
    return None


def problems(exp: Experiment, here: str, creds: Credentials | None = None,
             host: HostPaths | None = None) -> list[str]:
    """One line per thing this agent's privileges will not let ``exp`` do; empty when nothing certain fails."""
    c = _Checker(exp, here, creds or Credentials.current(), host or HostPaths())
    for v in exp.variants:
        c.variant(v)
    c.experiment()
    return c.problems
