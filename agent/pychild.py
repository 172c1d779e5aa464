"""Python helper programs the agent starts in their own process, from source and from the frozen bundle alike.

Some measurements need a helper that shares neither the agent's event loop nor its interpreter lock, e.g. the
load generator's calibration server (``agent/loadgen.py``). From source, ``sys.executable`` is a Python
interpreter and a helper is ``python -I -c SOURCE ARGS``. In the packaged agent (PyInstaller) ``sys.executable``
is ``runlab-agent`` itself, whose command line is the agent's CLI: there :func:`argv` gives
``runlab-agent --runlab-helper NAME ARGS`` instead, and the frozen entry point (``build/entry.py``) hands that
to :func:`main` before anything else is imported, which runs the same SOURCE with the same ``sys.argv``.

Helpers are an allow-list of names (:data:`HELPERS`); the frozen binary never takes Python source from its
command line, so it is no general-purpose interpreter for whoever can start it. Nothing here is imported by
the idle agent.
"""

from __future__ import annotations

import importlib
import sys

MARKER = "--runlab-helper"
# name → (module, attribute): the helper's Python source, a string run as ``python -I -c`` would run it.
HELPERS = {"floor-server": ("agent.loadgen", "_FLOOR_SERVER")}


def frozen() -> bool:
    """True in the PyInstaller bundle, where ``sys.executable`` is the agent's binary, not a Python."""
    return bool(getattr(sys, "frozen", False))


def source(name: str) -> str:
    module, attr = HELPERS[name]
    return str(getattr(importlib.import_module(module), attr))


def argv(name: str, *args: str) -> list[str]:
    """The command line that runs helper ``name`` with ``args`` (its ``sys.argv[1:]``) in a new process."""
    if name not in HELPERS:
        raise KeyError(f"no runlab helper named {name!r} (known: {', '.join(sorted(HELPERS))})")
    if frozen():
        return [sys.executable, MARKER, name, *args]
    return [sys.executable, "-I", "-c", source(name), *args]


def main(args: list[str]) -> int:
    """Run helper ``args[0]`` with ``args[1:]``, as ``python -I -c SOURCE ARGS`` would; the frozen entry calls
    this for ``runlab-agent --runlab-helper NAME ARGS``."""
    if not args or args[0] not in HELPERS:
        got = repr(args[0]) if args else "nothing"
        print(f"runlab-agent: {MARKER}: expected a helper name ({', '.join(sorted(HELPERS))}), got {got}",
              file=sys.stderr)
        return 2
    code = compile(source(args[0]), f"<runlab helper {args[0]}>", "exec")
    sys.argv = ["-c", *args[1:]]
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    return 0
