"""Entry point of the frozen runlab apps (PyInstaller): one binary, dispatched on the name it was started as.

``runlab-agent`` → agent.cli, ``runlab-collector`` → collector.cli, ``runlab`` → the operator CLI. The
hidden ``--self-test`` (first argument) imports every module the spec collected and signs + verifies an
order with PyNaCl, so the build's smoke test proves lazily imported code (experiments, fleet control)
was bundled — an import that only fails on a Pi in the field is the failure mode a freeze invites.

Two things differ from running from source, both handled here before anything else is imported:

- ``sys.executable`` is this binary, not a Python. The agent starts its Python helpers (the load generator's
  calibration server) as ``runlab-agent --runlab-helper NAME ARGS`` (``agent.pychild``); that first argument
  runs the named helper instead of a CLI.
- PyInstaller's bootloader puts its private library directory first in ``LD_LIBRARY_PATH`` (and adds
  ``_PYI_*`` variables) for this process's sake, and every child would inherit them: a workload, runtime or
  probe command run by the packaged agent would load the bundle's ``libpython3.11.so.1.0`` before its own
  (a Python workload linked to another 3.11 runs on the bundle's), and search one directory more for every
  library it loads. The dynamic loader read those variables when this process started, so they are put
  back as they were (``LD_LIBRARY_PATH_ORIG``) for the children: workloads start exactly as from source.

And one thing only the frozen agent's ``serve`` does: it starts itself again (``execv``, same PID, ~25 ms)
with ``MALLOC_ARENA_MAX=1`` when that (or ``GLIBC_TUNABLES``) is not set already. glibc gives every thread
that calls malloc an arena of its own, and keeps it; the agent's delivery thread and asyncio's connect
threads held two, 0.3–0.4 MB of the idle agent's PSS (docs/packaging.md), for no speed the agent needs:
its threads take turns on the GIL anyway. glibc reads the variable only when a process starts, and Python
has no ``mallopt``, hence the ``execv``. The variable is taken out of the environment again at once, so
workloads and probes the agent starts get glibc's default, as from source.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile


def self_test(app: str) -> int:
    """Import everything the bundle should hold; exercise Ed25519 when fleet control is present."""
    names = [n.strip() for n in _bundled_list(app) if n.strip() and not n.strip().endswith(".__main__")]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # report every missing piece at once, not only the first
            failed.append(f"{name}: {type(e).__name__}: {e}")
    try:
        from runlab import control
    except ImportError:
        control = None  # type: ignore[assignment]
    if control is not None:
        with tempfile.TemporaryDirectory() as d:
            priv, pub = control.generate_keys(d)
            order = control.cancel_order("20260101T000000-abcdef", "selftest")
            payload = control.sign(order, control.load_signing_key(priv))
            if control.verify(payload, control.load_trusted([str(pub)])) != order:
                failed.append("runlab.control: a signed order did not verify")
    failed += [f"a child process inherits the bootloader's {line}" for line in _environment_leaks()]
    for line in failed:
        print(f"self-test: {line}", file=sys.stderr)
    print(f"self-test: {len(names)} modules imported, {len(failed)} failures"
          + (", signed order verified" if control is not None and not failed else ""))
    return 1 if failed else 0


def restore_environment() -> None:
    """Undo the bootloader's changes to the environment children inherit (see the module docstring)."""
    orig = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if orig is not None:
        os.environ["LD_LIBRARY_PATH"] = orig
    else:
        os.environ.pop("LD_LIBRARY_PATH", None)
    for name in [n for n in os.environ if n.startswith("_PYI_")]:
        del os.environ[name]


ARENA_MARK = "_RUNLAB_ARENA_MAX_SET"  # this process set MALLOC_ARENA_MAX for itself, not for its children


def limit_malloc_arenas() -> None:
    """Start again with MALLOC_ARENA_MAX=1 (see the module docstring); once started so, unset it for children."""
    if os.environ.pop(ARENA_MARK, None) is not None:
        os.environ.pop("MALLOC_ARENA_MAX", None)
        return
    if "MALLOC_ARENA_MAX" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return  # the operator chose: leave it to them
    os.environ["MALLOC_ARENA_MAX"] = "1"
    os.environ[ARENA_MARK] = "1"
    try:
        os.execv(sys.executable, sys.argv)
    except OSError:  # not worth failing a start for: run on with glibc's default
        os.environ.pop("MALLOC_ARENA_MAX", None)
        os.environ.pop(ARENA_MARK, None)


def _environment_leaks() -> list[str]:
    """What of the bootloader's environment a child would still inherit (the self-test's check)."""
    import subprocess

    env = subprocess.run(["/usr/bin/env"], capture_output=True, text=True, check=True).stdout.splitlines()
    bundle = getattr(sys, "_MEIPASS", os.path.dirname(os.path.abspath(__file__)))
    return [line for line in env if line.startswith(("_PYI_", ARENA_MARK + "="))
            or (line.startswith("LD_LIBRARY_PATH=") and bundle in line.split("=", 1)[1].split(":"))]


def _bundled_list(app: str) -> list[str]:
    here = getattr(sys, "_MEIPASS", os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, f"{app}-modules.txt"), encoding="utf-8") as f:
        return f.read().splitlines()


def main() -> int:
    restore_environment()
    name = os.path.basename(sys.argv[0])
    app = "collector" if name in ("runlab-collector", "runlab") else "agent"
    if len(sys.argv) > 1 and sys.argv[1] == "--self-test":
        return self_test(app)
    if app == "agent" and len(sys.argv) > 1 and sys.argv[1] == "serve":
        limit_malloc_arenas()
    if app == "agent" and len(sys.argv) > 1 and sys.argv[1] == "--runlab-helper":  # = agent.pychild.MARKER
        from agent import pychild

        return pychild.main(sys.argv[2:])
    if name == "runlab":
        from collector.operator import main as run
    elif name == "runlab-collector":
        from collector.cli import main as run
    else:
        from agent.cli import main as run
    return run() or 0


if __name__ == "__main__":
    sys.exit(main())
