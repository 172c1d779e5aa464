"""``runtime: wasm`` — a WebAssembly runtime CLI (wasmtime, wazero, WasmEdge, wasmer, or any host program).

The command is the engine's own command line, e.g.
``wasmtime run -S preview2=n,tcplisten=127.0.0.1:{port} hello-wasi.wasm``,
``wasmtime run --allow-precompiled -S … hello-wasi.cwasm`` (AOT, from ``wasmtime compile``),
``wazero run -listen 127.0.0.1:{port} hello-wasi.wasm``, ``wasmedge hello-wasmedge.wasm --port {port}``.
Cold start = exec of the engine → the experiment's probe answered by the module; the memory figure is the
engine process (and anything it started) with the module loaded; the size is the module (``module:``,
``artifact:``, or the first ``.wasm`` / ``.cwasm`` / ``.aot`` file on the command line).
"""

from __future__ import annotations

import os

from agent.runtimes.base import CommandRuntime, RuntimeUnavailable
from runlab.experiment import WasmVariant, fill
from runlab.results import Size

MODULE_SUFFIXES = (".wasm", ".cwasm", ".aot", ".so")


def module_of(spec: WasmVariant) -> str | None:
    """The module this variant runs: ``module:``, else the first argument that looks like one."""
    if spec.module:
        return spec.module
    found = [a for a in spec.command[1:] if a.endswith(MODULE_SUFFIXES)]
    return found[0] if found else None


class WasmRuntime(CommandRuntime):
    name = "wasm"
    spec: WasmVariant

    async def prepare(self) -> None:
        await super().prepare()
        module = module_of(self.spec)
        if module is None:
            return
        path = fill(module, {"here": self.here, "port": "0", "name": "x", "run_dir": "/", "variant": "x"})
        if not os.path.isfile(path):
            raise RuntimeUnavailable(f"variant {self.spec.name}: module {path} does not exist (build it first: "
                                     f"make workloads)")

    async def size(self) -> Size | None:
        if self.spec.artifact:
            return self.artifact_size()
        module = module_of(self.spec)
        return self.file_size(module, "module") if module else None


RUNTIME = WasmRuntime
