"""``runtime: vm`` — any VMM command line (qemu, …), or a Firecracker / cloud-hypervisor preset.

The memory figure is the host's cost: the VMM process tree (PSS/USS/RSS), guest
RAM included as far as the guest touched it. The size is ``artifact:``, or the
kernel + initrd/disk images (found on a QEMU-style command line, or named by the
preset).

Presets generate the VMM's command line so that an experiment file names only
kernel, disks, CPUs and memory. Firecracker runs either from a generated
``--config-file`` (``--no-api``: one exec, nothing else to time) or through its
API socket (``mode: api``): the PUTs of boot-source, drives, machine-config and
network, then InstanceStart — all inside the measured start, since a user of
the API pays for them too. Neither VMM has a user-mode port forward: give the
guest a tap device and probe the guest's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time

from agent.aio import within
from agent.runtimes.base import CommandRuntime, Instance, ProcessInstance, RuntimeUnavailable, StartContext, spawn
from runlab.experiment import CloudHypervisorVm, FirecrackerVm, VmVariant, fill
from runlab.results import Size

_IMAGE_FLAGS = ("-kernel", "-initrd", "--kernel", "--initramfs", "--disk")
API_SOCKET_WAIT = 10.0  # seconds for firecracker to create its API socket


def _fc_parts(fc: FirecrackerVm, values: dict[str, str]) -> tuple[dict[str, object], list[dict[str, object]],
                                                                  dict[str, object], list[dict[str, object]]]:
    boot: dict[str, object] = {"kernel_image_path": fill(fc.kernel, values), "boot_args": fill(fc.boot_args, values)}
    if fc.initrd:
        boot["initrd_path"] = fill(fc.initrd, values)
    drives: list[dict[str, object]] = ([{"drive_id": "rootfs", "path_on_host": fill(fc.rootfs, values),
                                         "is_root_device": True, "is_read_only": False}] if fc.rootfs else [])
    machine: dict[str, object] = {"vcpu_count": fc.vcpus, "mem_size_mib": fc.memory_mib}
    nets: list[dict[str, object]] = ([{"iface_id": "eth0", "guest_mac": fc.guest_mac,
                                       "host_dev_name": fill(fc.tap, values)}] if fc.tap else [])
    return boot, drives, machine, nets


def firecracker_config(fc: FirecrackerVm, values: dict[str, str]) -> dict[str, object]:
    """Firecracker's configuration (the --config-file JSON; the API takes the same objects one by one)."""
    boot, drives, machine, nets = _fc_parts(fc, values)
    cfg: dict[str, object] = {"boot-source": boot, "drives": drives, "machine-config": machine}
    if nets:
        cfg["network-interfaces"] = nets
    return cfg


def firecracker_api_calls(fc: FirecrackerVm, values: dict[str, str]) -> list[tuple[str, str, dict[str, object]]]:
    """The API requests (method, path, body) that configure and boot the VM, in order."""
    boot, drives, machine, nets = _fc_parts(fc, values)
    return [("PUT", "/boot-source", boot),
            *(("PUT", f"/drives/{d['drive_id']}", d) for d in drives),
            ("PUT", "/machine-config", machine),
            *(("PUT", f"/network-interfaces/{n['iface_id']}", n) for n in nets),
            ("PUT", "/actions", {"action_type": "InstanceStart"})]


def cloud_hypervisor_argv(ch: CloudHypervisorVm, values: dict[str, str]) -> list[str]:
    """cloud-hypervisor's command line from the preset's keys."""
    argv = [ch.binary, "--kernel", fill(ch.kernel, values)]
    if ch.initramfs:
        argv += ["--initramfs", fill(ch.initramfs, values)]
    if ch.disks:
        argv += ["--disk", *(f"path={fill(d, values)}" for d in ch.disks)]
    argv += ["--cmdline", fill(ch.cmdline, values), "--cpus", f"boot={ch.cpus}", "--memory",
             f"size={ch.memory_mib}M"]
    if ch.tap:
        net = f"tap={fill(ch.tap, values)}" + (f",mac={ch.guest_mac}" if ch.guest_mac else "")
        argv += ["--net", net]
    argv += ["--serial", "tty", "--console", "off"]
    return argv + [fill(a, values) for a in ch.extra_args]


async def api_request(sock: str, calls: list[tuple[str, str, dict[str, object]]], timeout: float = 10.0) -> None:
    """Send HTTP/1.1 requests over one keep-alive unix-socket connection; RuntimeError on a non-2xx answer."""
    reader, writer = await within(asyncio.open_unix_connection(sock), timeout)
    try:
        for method, path, body in calls:
            data = json.dumps(body).encode()
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
            head = await within(reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await within(reader.readexactly(length), timeout) if length else b""
            if not 200 <= status < 300:
                raise RuntimeError(f"{method} {path}: HTTP {status} {answer.decode(errors='replace')[:300]}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class ApiConfiguredInstance(ProcessInstance):
    """A VMM process configured through its API socket right after the spawn; a failed call fails the start."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: str,
                 calls: list[tuple[str, str, dict[str, object]]]) -> None:
        super().__init__(proc)
        self.failed: str | None = None
        self._configure = asyncio.create_task(self._run(sock, calls))

    async def _run(self, sock: str, calls: list[tuple[str, str, dict[str, object]]]) -> None:
        deadline = time.monotonic() + API_SOCKET_WAIT
        try:
            while True:
                if self.proc.returncode is not None:
                    return
                try:
                    # The socket file appears at bind(), before listen(): until then a connect is refused.
                    if os.path.exists(sock):
                        await api_request(sock, calls)
                        return
                except ConnectionRefusedError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no API socket accepting at {sock} after {API_SOCKET_WAIT:g}s")
                await asyncio.sleep(0.001)
        except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError, TimeoutError) as e:
            self.failed = str(e) or type(e).__name__
            self.output.add(f"runlab: VMM API: {self.failed}")

    def exit_code(self) -> int | None:
        code = self.proc.returncode
        return code if code is not None else (-1 if self.failed else None)

    async def stop(self) -> None:
        self._configure.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._configure
        await super().stop()


class VmRuntime(CommandRuntime):
    name = "vm"
    spec: VmVariant

    def argv(self, ctx: StartContext) -> list[str]:
        fc, ch, values = self.spec.firecracker, self.spec.cloud_hypervisor, ctx.values()
        if fc is not None:
            if fc.mode == "api":
                return [fc.binary, "--api-sock", str(ctx.run_dir / "firecracker.sock"),
                        *(fill(a, values) for a in fc.extra_args)]
            config = ctx.run_dir / "vm-config.json"
            config.write_text(json.dumps(firecracker_config(fc, values), indent=2))
            return [fc.binary, "--no-api", "--config-file", str(config), *(fill(a, values) for a in fc.extra_args)]
        if ch is not None:
            return cloud_hypervisor_argv(ch, values)
        return super().argv(ctx)

    async def prepare(self) -> None:
        preset = self.spec.firecracker or self.spec.cloud_hypervisor
        if preset is None:
            return await super().prepare()
        if shutil.which(preset.binary) is None and not os.access(preset.binary, os.X_OK):
            raise RuntimeUnavailable(f"variant {self.spec.name}: {preset.binary}: not found or not executable")
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise RuntimeUnavailable(f"variant {self.spec.name}: {preset.binary} needs read-write /dev/kvm")
        return None

    async def start(self, ctx: StartContext) -> Instance:
        fc = self.spec.firecracker
        if fc is None or fc.mode != "api":
            return await super().start(ctx)
        argv = self.argv(ctx)
        proc = await spawn(argv, env={k: fill(v, ctx.values()) for k, v in self.spec.env.items()} or None)
        return ApiConfiguredInstance(proc, argv[2], firecracker_api_calls(fc, ctx.values()))

    def image_paths(self) -> list[str]:
        """Kernel, initrd and disk images this variant boots (for size)."""
        fc, ch = self.spec.firecracker, self.spec.cloud_hypervisor
        if fc is not None:
            return [p for p in (fc.kernel, fc.initrd, fc.rootfs) if p]
        if ch is not None:
            return [p for p in (ch.kernel, ch.initramfs, *ch.disks) if p]
        cmd = self.spec.command
        paths = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a in _IMAGE_FLAGS]
        paths += [part.split("=", 1)[1] for a in cmd for part in a.split(",") if part.startswith("file=")]
        return paths

    async def size(self) -> Size | None:
        if self.spec.artifact:
            return self.artifact_size()
        paths = self.image_paths()
        return self.files_size(paths, "image") if paths else None


RUNTIME = VmRuntime
