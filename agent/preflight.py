"""Pre-flight: which variants of an experiment can run on this machine, and for each that cannot, why and the fix.

Checked before the first sample (``runlab-agent run``, fleet runs) or alone
(``runlab-agent validate --here``), per runtime kind, first failure wins:

- every variant: its programs (``executables()``: the command, the engine, kubectl, the deploy and cold
  tools) on PATH or executable; the files it names (``artifact:``, ``module:``, kernel/disk images, the
  manifest, the kubeconfig, and every argument that starts with ``{here}/`` or ``{workloads}/``) present;
- container: the engine answers (``ENGINE info``: a docker daemon that is down says so), the OCI runtime is
  registered (podman: ``--runtime X info``; docker: ``info`` lists its runtimes), the image is in the store;
- vm: ``/dev/kvm`` usable when the VM needs KVM (present is not usable: a paravirtual ``kvm_pvm`` host boots
  no stock guest kernel), the tap device present;
- systemd: a systemd manager running (PID 1, or the user's), and a hardened unit's binary where the unit's
  sandbox lets it be seen (ProtectHome, PrivateTmp);
- kubernetes: the cluster answers (``kubectl get --raw /readyz``);
- serverless: the gateway accepts a connection.

The engines' own messages are passed through (the last line of their output): "Cannot connect to the Docker
daemon", "default OCI runtime "kata" not found" and "image not known" are three different problems. A missing
file gets as its fix the line of the experiment file's header that names it (the shipped files say there
how to provide every artifact nothing in the repository builds).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runlab.experiment import (
    ContainerVariant,
    Experiment,
    KubernetesVariant,
    ServerlessVariant,
    SystemdVariant,
    Variant,
    VmVariant,
    WasmVariant,
)

KVM_GET_API_VERSION = 0xAE00
COMMAND_TIMEOUT = 30.0  # for one engine query (podman info on a loaded machine takes seconds)
# How to get the programs experiment files use; anything else: "install it or put it on PATH".
INSTALL = {
    "docker": "apt install docker.io (and start it: systemctl start docker), or use engine: podman",
    "podman": "apt install podman",
    "nerdctl": "install nerdctl and containerd (not packaged in Debian 12)",
    "qemu-system-x86_64": "apt install qemu-system-x86",
    "qemu-system-aarch64": "apt install qemu-system-arm",
    "firecracker": "take the firecracker release binary from its GitHub releases and put it on PATH",
    "cloud-hypervisor": "take the cloud-hypervisor release binary from its GitHub releases and put it on PATH",
    "wasmedge": "install WasmEdge (its install.sh, or the release tarball) and put wasmedge on PATH",
    "wasmtime": "install wasmtime (its release tarball, or `pip install wasmtime` for the library only)",
    "kubectl": "apt install kubectl, or install K3s (k3s kubectl)",
    "faas-cli": "install faas-cli (OpenFaaS's release binary) and put it on PATH, or drop deploy: and deploy "
                "the function yourself",
    "curl": "apt install curl",
    "dnsmasq": "apt install dnsmasq-base",
    "systemd-run": "systemd's own tool: run on a machine whose init is systemd",
    "systemctl": "systemd's own tool: run on a machine whose init is systemd",
}


@dataclass
class Verdict:
    """One variant's pre-flight: it runs, or the one reason it cannot and the fix."""

    variant: str
    runtime: str
    reason: str = ""
    fix: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    def line(self) -> str:
        if self.ok:
            return f"{self.variant} ({self.runtime}): will run"
        return f"{self.variant} ({self.runtime}): skipped — {self.reason}" + (f" — fix: {self.fix}" if self.fix
                                                                                else "")

    def why(self) -> str:
        """The reason and the fix, as one line for results and events."""
        return self.reason + (f" (fix: {self.fix})" if self.fix else "")


class _Refuse(Exception):
    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def runtime_tag(v: Variant) -> str:
    return str(type(v).__struct_config__.tag)


async def _run(argv: list[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
    """(exit code, output); 127 when the program cannot be started."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        return 127, f"{argv[0]}: {e.strerror}"
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        return -1, f"{' '.join(argv[:2])}: no answer within {timeout:g}s"
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace").strip()


def _last_error(out: str) -> str:
    """The engine's own message: its last line that says something (``Error: …``, ``Cannot connect…``)."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "cannot" in ln.lower() or "not found" in ln.lower()]
    return ((errors or lines or ["no output"])[-1])[:300]


class Preflight:
    """The checks for one experiment; engine queries shared by variants are asked once."""

    def __init__(self, exp: Experiment, here: str, file: str = "") -> None:
        self.exp, self.here, self.file = exp, here, file
        self._cache: dict[tuple[str, ...], asyncio.Task[tuple[int, str]]] = {}
        self._header = _header_lines(file)

    def ask(self, argv: list[str], timeout: float = COMMAND_TIMEOUT) -> asyncio.Task[tuple[int, str]]:
        key = tuple(argv)
        if key not in self._cache:
            self._cache[key] = asyncio.ensure_future(_run(argv, timeout))
        return self._cache[key]

    def fill(self, value: str) -> str:
        return value.replace("{here}", self.here)

    # -- common --------------------------------------------------------------------------------
    def program(self, exe: str, cwd: str | None = None) -> None:
        exe = self.fill(exe)
        if "{" in exe:
            return  # a per-start placeholder ({run_dir}, {version}…): known only at the start
        if "/" in exe and not os.path.isabs(exe) and cwd and "{" not in self.fill(cwd):
            exe = os.path.normpath(os.path.join(self.fill(cwd), exe))  # ./server runs in the variant's cwd
        if "/" in exe:
            if not os.path.exists(exe):
                raise _Refuse(f"{exe} is missing", self.provide(exe))
            if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
                raise _Refuse(f"{exe} is not an executable file", f"chmod +x {exe}, or point the file at the program")
            return
        if shutil.which(exe) is None:
            raise _Refuse(f"{exe} is not installed (not on PATH)", INSTALL.get(exe, f"install {exe} or put it on "
                                                                                     f"PATH"))

    def path(self, p: str, what: str = "") -> None:
        p = self.fill(p)
        if "{" not in p and not os.path.exists(p):
            raise _Refuse(f"{what + ' ' if what else ''}{p} is missing", self.provide(p))

    def provide(self, p: str) -> str:
        """The fix for a missing file: the header line naming it, or `make workloads` for the workloads."""
        rel = os.path.relpath(p, self.here) if os.path.isabs(p) else p
        names = [p] if rel.startswith("..") else [rel, p]  # under {here}: as the header writes it, relative
        for line in self._header:
            if any(n in line for n in names):
                return self.said(line)
        if "/workloads/" in p or "/extra/" in p:
            return "build it: make workloads (in a checkout), or install the runlab-agent package"
        return f"provide it (see the comments at the top of {os.path.basename(self.file) or 'the file'})"

    def said(self, text: str) -> str:
        """The experiment file's header line naming ``text`` (how to provide it), quoted; empty when none does."""
        line = next((ln for ln in self._header if text in ln), None)
        return f"{os.path.basename(self.file)} says: {line}" if line else ""

    def files(self, v: Variant) -> list[tuple[str, str]]:
        """(path, what) the variant names and needs present before it starts."""
        out: list[tuple[str, str]] = []
        art = v.artifact
        out += [(a, "artifact") for a in ([art] if isinstance(art, str) else art or [])]
        argv: list[str] = list(getattr(v, "command", []) or [])
        if isinstance(v, WasmVariant) and v.module:
            out.append((v.module, "module"))
        if isinstance(v, VmVariant):
            fc, ch = v.firecracker, v.cloud_hypervisor
            if fc is not None:
                out += [(p, w) for p, w in ((fc.kernel, "kernel"), (fc.rootfs, "rootfs"), (fc.initrd, "initrd")) if p]
            if ch is not None:
                out += [(ch.kernel, "kernel"), *((d, "disk") for d in ch.disks)]
                if ch.initramfs:
                    out.append((ch.initramfs, "initramfs"))
            out += [(argv[i + 1], "image") for i, a in enumerate(argv[:-1]) if a in ("-kernel", "-initrd")]
        if isinstance(v, KubernetesVariant):
            out.append((v.manifest, "manifest"))
            if v.kubeconfig:
                out.append((v.kubeconfig, "kubeconfig"))
        if isinstance(v, ServerlessVariant):
            argv = [*v.deploy, *v.cold.command, *v.cold.until]
        if isinstance(v, ContainerVariant):
            argv = list(v.run_args)
        for a in argv if isinstance(v, ContainerVariant) else argv[1:]:
            # a shipped path: starts with {here}/ and holds no per-start placeholder; or a bind mount's source
            src = a.split(":")[0] if isinstance(v, ContainerVariant) else a
            if src.startswith("{here}/") and "{" not in src[len("{here}"):]:
                out.append((src, "file"))
        seen: set[str] = set()
        return [(p, w) for p, w in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]

    # -- per runtime ---------------------------------------------------------------------------
    async def container(self, v: ContainerVariant) -> None:
        base = [v.engine, *(self.fill(a) for a in v.engine_args)]
        roots = [base[i + 1] for i, a in enumerate(base[:-1]) if a == "--root"]
        if v.engine == "podman" and roots and not os.path.isdir(roots[-1]):  # podman would create an empty one
            raise _Refuse(f"podman store {roots[-1]} (engine_args --root) is missing",
                          "build it: make workloads (in a checkout), or drop engine_args to use podman's default "
                          "store and put the image there")
        if v.oci_runtime and v.engine == "podman":
            base += ["--runtime", v.oci_runtime]
        fmt = "{{json .}}"
        code, out = await self.ask([*base, "info", "--format", fmt])
        if code != 0:
            msg = _last_error(out)
            if v.engine == "podman" and v.oci_runtime and "runtime" in msg.lower():
                raise _Refuse(f"podman: {msg}", f"install {v.oci_runtime} and register it with podman "
                              f"(containers.conf [engine.runtimes] {v.oci_runtime} = [\"/path/to/it\"])")
            if v.engine == "docker" and ("daemon" in msg.lower() or "docker.sock" in msg):
                raise _Refuse(f"docker: {msg}", "start the docker daemon (systemctl start docker), or use "
                                                "engine: podman")
            raise _Refuse(f"{v.engine} info failed: {msg}", f"make `{' '.join(base)} info` work")
        if v.oci_runtime and v.engine != "podman":
            runtimes: dict[str, object] = {}
            with contextlib.suppress(ValueError, AttributeError, StopIteration):
                line = next(ln for ln in out.splitlines() if ln.startswith("{"))
                runtimes = json.loads(line).get("Runtimes") or {}
            if runtimes and v.oci_runtime not in runtimes:
                raise _Refuse(f"{v.engine}: OCI runtime {v.oci_runtime!r} is not registered (it has "
                              f"{', '.join(sorted(runtimes))})",
                              f"install {v.oci_runtime} and register it (/etc/docker/daemon.json \"runtimes\")")
        code, out = await self.ask([*base, "image", "inspect", "--format", "{{.Id}}", v.image])
        if code != 0:
            said = self.said(v.image) or self.said(v.image.split("/")[-1])
            hint = (said if said else
                    "build it: make workloads" if v.image.startswith("localhost/runlab-") else
                    f"pull or build it first: {v.engine} pull {v.image} (runlab measures starts, not pulls)")
            raise _Refuse(f"image {v.image} is not in {v.engine}'s store: {_last_error(out)}", hint)

    def kvm(self, why: str) -> None:
        dev = "/dev/kvm"
        if not os.path.exists(dev):
            raise _Refuse(f"needs KVM ({why}), and {dev} is absent", "run it on a machine with hardware "
                          "virtualisation (kvm_intel/kvm_amd), or use TCG (-accel tcg) for a QEMU command")
        try:
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise _Refuse(f"needs KVM ({why}): {dev}: {e.strerror}", "add the user to group kvm") from None
        try:
            version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        except OSError as e:
            raise _Refuse(f"needs KVM ({why}): {dev} does not answer KVM_GET_API_VERSION: {e.strerror}") from None
        finally:
            os.close(fd)
        if version != 12:
            raise _Refuse(f"needs KVM ({why}): {dev} speaks KVM API {version}, not 12")
        modules = {m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.isdir(f"/sys/module/{m}")}
        if modules == {"kvm_pvm"} and os.environ.get("RUNLAB_KVM") != "usable":  # usable: PVM-enabled guests
            raise _Refuse(f"needs KVM ({why}), but {dev} here is PVM (kvm_pvm: paravirtual KVM nested in a "
                          f"VM), on which a stock guest kernel does not boot",
                          "use TCG (-accel tcg), or a PVM-enabled guest kernel and RUNLAB_KVM=usable in the "
                          "environment, or run it on bare metal")

    def vm(self, v: VmVariant) -> None:
        from agent.privileges import needs_kvm

        why = needs_kvm(v)
        if why is not None:
            self.kvm(why)
        tap = v.firecracker.tap if v.firecracker else v.cloud_hypervisor.tap if v.cloud_hypervisor else None
        if tap and "{" not in tap and not os.path.exists(f"/sys/class/net/{tap}"):
            raise _Refuse(f"tap device {tap} does not exist",
                          self.said(tap) or f"ip tuntap add {tap} mode tap && ip link set {tap} up (and give it "
                                            f"the guest's gateway address)")

    async def systemd(self, v: SystemdVariant) -> None:
        exe = self.fill(v.command[0])
        props = {k.lower(): str(val).lower() for k, val in v.properties.items()}
        hidden = []
        if props.get("protecthome", "no") not in ("no", "false", "0"):
            hidden += ["/home/", "/root/", "/run/user/"]
        if props.get("privatetmp", "no") in ("yes", "true", "1"):
            hidden += ["/tmp/", "/var/tmp/"]
        real = os.path.realpath(exe) if "/" in exe else (shutil.which(exe) or exe)
        if any(real.startswith(h) for h in hidden):
            raise _Refuse(f"{real} lies where the unit's sandbox hides it (ProtectHome/PrivateTmp)",
                          "install the binary under /usr/local or /opt (or the runlab package's "
                          "/usr/lib/runlab/workloads) and point the variant there")
        if not v.user:
            if not os.path.isdir("/run/systemd/system"):
                init = "?"
                with contextlib.suppress(OSError):
                    init = Path("/proc/1/comm").read_text().strip()
                raise _Refuse(f"no systemd manager: this machine's init (PID 1) is {init}, not systemd",
                              "run it on a machine booted with systemd, or set user: true with a user manager")
        else:
            code, out = await self.ask([v.systemctl, "--user", "show", "--property=Version"])
            if code != 0:
                raise _Refuse(f"no user systemd manager: {_last_error(out)}",
                              "loginctl enable-linger USER, and XDG_RUNTIME_DIR=/run/user/UID")

    async def kubernetes(self, v: KubernetesVariant) -> None:
        base = [self.fill(v.kubectl)]
        if v.kubeconfig:
            base += ["--kubeconfig", self.fill(v.kubeconfig)]
        if v.context:
            base += ["--context", v.context]
        if v.namespace:
            base += ["--namespace", v.namespace]
        code, out = await self.ask([*base, "get", "--raw", "/readyz", "--request-timeout=10s"], 20)
        if code != 0:
            raise _Refuse(f"no cluster answers kubectl: {_last_error(out)}",
                          "start the cluster (K3s: systemctl start k3s) or give kubeconfig:/context:")

    async def serverless(self, v: ServerlessVariant) -> None:
        u = urlsplit(v.invoke.replace("{port}", "0"))
        host, port = u.hostname or "127.0.0.1", u.port or 80
        try:
            async with asyncio.timeout(3.0):
                _, w = await asyncio.open_connection(host, port)
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        except (OSError, TimeoutError) as e:
            msg = "no answer within 3s" if isinstance(e, TimeoutError) else (e.strerror or str(e))
            raise _Refuse(f"the gateway {host}:{port} ({v.invoke}) does not accept connections: {msg}",
                          "start the platform (OpenFaaS: its gateway) or correct invoke:") from None

    # -- the whole ------------------------------------------------------------------------------
    async def variant(self, v: Variant) -> Verdict:
        verdict = Verdict(v.name, runtime_tag(v))
        try:
            for exe in v.executables(self.here):
                self.program(exe, getattr(v, "cwd", None))
            ready = v.ready or self.exp.ready
            if ready.command:
                self.program(ready.command[0])
            for p, what in self.files(v):
                self.path(p, what)
            if isinstance(v, ContainerVariant):
                await self.container(v)
            elif isinstance(v, VmVariant):
                self.vm(v)
            elif isinstance(v, SystemdVariant):
                await self.systemd(v)
            elif isinstance(v, KubernetesVariant):
                await self.kubernetes(v)
            elif isinstance(v, ServerlessVariant):
                await self.serverless(v)
        except _Refuse as r:
            verdict.reason, verdict.fix = r.reason, r.fix
        return verdict

    def experiment_problems(self) -> list[str]:
        """What stops every variant (the benchmark's program, a page-cache drop without root)."""
        out: list[str] = []
        if self.exp.benchmark is not None:
            try:
                self.program(self.exp.benchmark.command[0])
                for a in self.exp.benchmark.command[1:]:
                    if a.startswith("{here}/") and "{" not in a[len("{here}"):]:
                        self.path(a, "benchmark file")
            except _Refuse as r:
                out.append(f"benchmark: {r.reason}" + (f" — fix: {r.fix}" if r.fix else ""))
        if self.exp.cold == "page-cache" and os.geteuid() != 0:
            out.append("cold: page-cache needs root to drop caches — run as root, or use cold: process")
        return out

    async def run(self) -> list[Verdict]:
        try:
            return list(await asyncio.gather(*(self.variant(v) for v in self.exp.variants)))
        finally:
            for t in self._cache.values():
                t.cancel()


def _header_lines(file: str) -> list[str]:
    """The experiment file's leading comment lines, without the '#'."""
    out: list[str] = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path(file).read_text().splitlines():
            if not line.startswith("#"):
                break
            out.append(line.lstrip("#").strip())
    return out


async def check(exp: Experiment, here: str, file: str = "") -> tuple[list[Verdict], list[str]]:
    """(a verdict per variant, problems that stop the whole experiment)."""
    pf = Preflight(exp, here, file)
    return await pf.run(), pf.experiment_problems()


def narrow(exp: Experiment, keep: list[str], why: dict[str, str] | None = None) -> tuple[Experiment, list[str]]:
    """``exp`` with only the variants named in ``keep`` (in the file's order), and notes on what changed with
    them: a stack that needs a dropped variant is dropped, a dropped reference falls back to the first kept
    variant, overhead platforms of dropped variants go. ``why``: the reason per dropped variant (for notes)."""
    import msgspec

    why = why or {}
    names = [v.name for v in exp.variants]
    dropped = [n for n in names if n not in keep]
    if not dropped:
        return exp, []
    notes: list[str] = []
    variants = [v for v in exp.variants if v.name in keep]
    changes: dict[str, object] = {"variants": variants}
    ref = exp.reference or names[0]
    if ref in dropped and variants:
        new_ref = variants[0].name
        because = f" ({why[ref]})" if why.get(ref) else ""
        notes.append(f"reference: {ref} did not run{because}; the comparisons use {new_ref} instead")
        changes["reference"] = new_ref
    if exp.stack is not None:
        stacks = []
        for st in exp.stack.stacks:
            gone = [s for s in st.services if s in dropped]
            if gone:
                notes.append(f"stack {st.name}: not booted — its service(s) {', '.join(gone)} did not run")
            else:
                stacks.append(st)
        changes["stack"] = msgspec.structs.replace(exp.stack, stacks=stacks)
    if exp.overhead is not None:
        platforms = {k: p for k, p in exp.overhead.platforms.items() if k in keep}
        changes["overhead"] = msgspec.structs.replace(exp.overhead, platforms=platforms)
    return msgspec.structs.replace(exp, **changes), notes
