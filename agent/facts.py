"""What a node is: hardware, OS, kernel and the runtimes it can launch (for the retained status)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import platform
import shutil
import struct
import time
from pathlib import Path

from agent import procfs

# Runtime CLIs runlab can drive, and the argument that prints their version.
RUNTIME_PROBES: dict[str, list[str]] = {
    "podman": ["--version"], "docker": ["--version"], "nerdctl": ["--version"], "runc": ["--version"],
    "crun": ["--version"], "runsc": ["--version"], "kata-runtime": ["--version"],
    "qemu-system-x86_64": ["--version"], "qemu-system-aarch64": ["--version"],
    "firecracker": ["--version"], "cloud-hypervisor": ["--version"], "wasmtime": ["--version"],
    "wazero": ["version"], "wasmedge": ["--version"], "wasmer": ["--version"], "kubectl": ["version", "--client"],
    "k3s": ["--version"], "systemd-run": ["--version"], "node": ["--version"],
}
# Besides PATH: where `make workloads` unpacks the engines Debian 12 lacks (build/workloads/fetch-runtimes.sh).
EXTRA_DIRS = [Path(__file__).resolve().parent.parent / "build" / "cache" / "runtimes" / "bin"]
KVM = "/dev/kvm"


def cpu_model() -> str:
    """CPU model name (x86 'model name', Raspberry Pi 'Model' line, else the machine type)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def governor() -> str:
    with contextlib.suppress(OSError):
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    return ""


def static_facts() -> dict[str, object]:
    """Facts that need no subprocess: arch, CPU, cores, memory, OS, kernel."""
    return {
        "arch": platform.machine(), "cpu_model": cpu_model(), "cores": os.cpu_count() or 0,
        "memory_bytes": procfs.meminfo()[b"MemTotal:"], "os": os_name(), "kernel": platform.release(),
    }


async def _version(exe: str, args: list[str]) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(exe, *args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT,
                                                    stdin=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        async with asyncio.timeout(3.0):
            out, _ = await proc.communicate()
    except TimeoutError:
        return "unknown version"
    finally:  # timed out, or the run was cancelled meanwhile: no probe outlives the agent
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    first = out.decode(errors="replace").strip().splitlines()
    return first[0][:120] if first else "unknown version"


def find_runtime(name: str) -> list[str]:
    """Every copy of ``name``: on PATH first, then in EXTRA_DIRS (one per real file)."""
    paths: dict[str, str] = {}
    for d in [None, *(str(d) for d in EXTRA_DIRS if d.is_dir())]:
        p = shutil.which(name, path=d)
        if p:
            paths.setdefault(os.path.realpath(p), p)
    return list(paths.values())


async def detect_runtimes() -> dict[str, str]:
    """Runtime CLIs found on PATH (or EXTRA_DIRS), with the first line of their version output (a copy outside
    PATH is named by its path: Debian 12's crun 1.8 and build/cache's crun 1.21 are both listed); and ``kvm``,
    what /dev/kvm is good for (see kvm_status), when it exists."""
    found = [(name, path) for name in RUNTIME_PROBES for path in find_runtime(name)]
    versions = await asyncio.gather(*(_version(path, RUNTIME_PROBES[name]) for name, path in found))
    out: dict[str, str] = {}
    for (name, path), v in zip(found, versions, strict=True):
        if v is None:
            continue
        v = v.replace(f"{path} ", f"{os.path.basename(path)} ")  # wasmedge prints its own path first
        on_path = shutil.which(name) == path
        out[name] = "; ".join([*filter(None, [out.get(name)]), v if on_path else f"{path}: {v}"])
    if os.path.exists(KVM):
        try:
            async with asyncio.timeout(3.0):
                out["kvm"] = await asyncio.to_thread(kvm_status)
        except TimeoutError:
            out["kvm"] = f"{KVM} present but unusable: a 5-byte test guest did not halt within 3 s; keep VMs on TCG"
    return out


# -- KVM -----------------------------------------------------------------------------------------------
# A KVM device is not the same as a KVM that runs a stock kernel: these machines have a nested PVM device
# (kvm_pvm, no vmx/svm flag) on which KVM_CREATE_VM and a tiny real-mode guest work, but a stock Debian kernel
# under -accel kvm hangs in its decompressor or dies on an emulation failure (PVM runs only PVM-enabled
# guest kernels). So: the backend module and the CPU flags decide; the test guest proves the device works.
_KVM_GET_API_VERSION, _KVM_CREATE_VM, _KVM_GET_VCPU_MMAP_SIZE, _KVM_CREATE_VCPU = 0xAE00, 0xAE01, 0xAE04, 0xAE41
_KVM_SET_USER_MEMORY_REGION, _KVM_RUN = 0x4020AE46, 0xAE80
_KVM_SET_REGS, _KVM_GET_SREGS, _KVM_SET_SREGS = 0x4090AE82, 0x8138AE83, 0x4138AE84
_KVM_EXIT_IO, _KVM_EXIT_HLT = 2, 5
_GUEST = bytes([0xB0, 0x42, 0xE6, 0x10, 0xF4])  # mov al, 0x42; out 0x10, al; hlt  (real mode, at 0x1000)


def kvm_backend() -> str | None:
    """The loaded KVM backend module: kvm_intel, kvm_amd, kvm_pvm (a paravirtual, nested one), or None."""
    for mod in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if Path(f"/sys/module/{mod}").exists():
            return mod
    return None


def cpu_virt_flag() -> str | None:
    """vmx or svm when the CPU (as this kernel sees it) has hardware virtualisation."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return next((f for f in ("vmx", "svm") if f in flags), None)
    return None


def kvm_test_guest(device: str = KVM) -> str:
    """Run a 5-byte real-mode guest (OUT 0x42 to port 0x10, HLT); '' when it did exactly that, else why not."""
    try:
        kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open {device}: {e.strerror}"
    fds = [kvm]
    try:
        if fcntl.ioctl(kvm, _KVM_GET_API_VERSION) != 12:
            return "unexpected KVM API version"
        vm = fcntl.ioctl(kvm, _KVM_CREATE_VM, 0)
        fds.append(vm)
        # Guest memory: a memfd mapping, whose address /proc/self/maps tells (the frozen agent has no ctypes).
        memfd = os.memfd_create("runlab-kvm-probe", os.MFD_CLOEXEC)
        fds.append(memfd)
        os.ftruncate(memfd, 0x2000)
        mem = mmap.mmap(memfd, 0x2000)
        mem[0x1000:0x1000 + len(_GUEST)] = _GUEST
        addr = _mapping_address("/memfd:runlab-kvm-probe")
        if addr is None:
            return "cannot find the test guest's memory in /proc/self/maps"
        fcntl.ioctl(vm, _KVM_SET_USER_MEMORY_REGION, struct.pack("IIQQQ", 0, 0, 0, 0x2000, addr))
        vcpu = fcntl.ioctl(vm, _KVM_CREATE_VCPU, 0)
        fds.append(vcpu)
        run = mmap.mmap(vcpu, fcntl.ioctl(kvm, _KVM_GET_VCPU_MMAP_SIZE), mmap.MAP_SHARED,
                        mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = bytearray(312)
        fcntl.ioctl(vcpu, _KVM_GET_SREGS, sregs)
        struct.pack_into("Q", sregs, 0, 0)  # cs.base = 0
        struct.pack_into("H", sregs, 12, 0)  # cs.selector = 0
        fcntl.ioctl(vcpu, _KVM_SET_SREGS, bytes(sregs))
        regs = bytearray(144)
        struct.pack_into("QQ", regs, 128, 0x1000, 2)  # rip, rflags
        fcntl.ioctl(vcpu, _KVM_SET_REGS, bytes(regs))
        seen = []
        for _ in range(2):
            fcntl.ioctl(vcpu, _KVM_RUN, 0)
            reason = struct.unpack_from("I", run, 8)[0]
            if reason == _KVM_EXIT_IO:
                _, _, port, _, off = struct.unpack_from("BBHIQ", run, 32)
                seen.append(f"out {port:#x}={run[off]:#x}")
            else:
                seen.append(f"exit {reason}")
                if reason != _KVM_EXIT_IO:
                    break
        run.close()
        mem.close()
        if seen != ["out 0x10=0x42", f"exit {_KVM_EXIT_HLT}"]:
            return f"the test guest did not run as expected ({', '.join(seen)})"
        return ""
    except OSError as e:
        return f"KVM ioctl failed: {e.strerror or e}"
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                os.close(fd)


def _mapping_address(name: str) -> int | None:
    """Start address of this process's (last) mapping of ``name`` (e.g. a memfd's "/memfd:N")."""
    found = None
    with contextlib.suppress(OSError), open("/proc/self/maps") as fh:
        for line in fh:
            if line.rstrip().endswith(name) or line.rstrip().endswith(name + " (deleted)"):
                found = int(line.split("-", 1)[0], 16)
    return found


def kvm_status(device: str = KVM) -> str:
    """One line: what /dev/kvm is good for here ('/dev/kvm usable …', '/dev/kvm present but unusable: …', or
    'absent')."""
    if not os.path.exists(device):
        return "absent"
    t0 = time.monotonic()
    failed = kvm_test_guest(device)
    took = (time.monotonic() - t0) * 1000
    backend, flag = kvm_backend(), cpu_virt_flag()
    if failed:
        return f"{device} present but unusable: {failed}; keep VMs on TCG"
    if backend == "kvm_pvm" or flag is None:
        what = f"backend {backend}" if backend else "no vmx/svm CPU flag"
        return (f"{device} present but unusable for stock guest kernels: {what} — a nested/paravirtual KVM (PVM "
                f"runs only PVM-enabled guest kernels; a stock kernel under -accel kvm hangs or dies on an "
                f"emulation failure); a real-mode test guest ran ({took:.0f} ms); keep VMs on TCG")
    return f"{device} usable ({backend or 'kvm'}, {flag}; a test guest ran in {took:.0f} ms)"
