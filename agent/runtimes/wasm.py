"""``runtime: wasm`` — a WebAssembly runtime CLI (wasmtime, wasmedge, wasmer, or any host program).

The memory figure is the runtime process with the module loaded; the size is
the module (``module:`` or ``artifact:``).
"""

from __future__ import annotations

from agent.runtimes.base import CommandRuntime
from runlab.results import Size


class WasmRuntime(CommandRuntime):
    name = "wasm"

    async def size(self) -> Size | None:
        if self.spec.artifact:
            return self.artifact_size()
        module = getattr(self.spec, "module", None)
        if module:
            return self.file_size(module, "module")
        wasm = [a for a in self.spec.command if a.endswith(".wasm")]
        return self.file_size(wasm[0], "module") if wasm else None


RUNTIME = WasmRuntime
