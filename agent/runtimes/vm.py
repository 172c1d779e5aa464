"""``runtime: vm`` — any VMM command line (qemu, firecracker, cloud-hypervisor): unikernels and microVMs.

The memory figure is the host's cost: the VMM process tree (PSS/USS/RSS), guest
RAM included as far as the guest touched it. The size is ``artifact:``, or the
kernel + initrd/disk images found on a QEMU-style command line.
"""

from __future__ import annotations

from agent.runtimes.base import CommandRuntime
from runlab.results import Size

_IMAGE_FLAGS = ("-kernel", "-initrd", "--kernel", "--initramfs", "--disk")


class VmRuntime(CommandRuntime):
    name = "vm"

    async def size(self) -> Size | None:
        if self.spec.artifact:
            return self.artifact_size()
        cmd: list[str] = self.spec.command
        paths = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a in _IMAGE_FLAGS]
        paths += [part.split("=", 1)[1] for a in cmd for part in a.split(",") if part.startswith("file=")]
        return self.files_size(paths, "image") if paths else None


RUNTIME = VmRuntime
