"""Entry point of the frozen runlab apps (PyInstaller): one binary, dispatched on the name it was started as.

``runlab-agent`` → agent.cli, ``runlab-collector`` → collector.cli, ``runlab`` → the operator CLI. The
hidden ``--self-test`` (first argument) imports every module the spec collected and signs + verifies an
order with PyNaCl, so the build's smoke test proves lazily imported code (experiments, fleet control)
was bundled — an import that only fails on a Pi in the field is the failure mode a freeze invites.
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
            order = control.CancelOrder(run="20260101T000000-abcdef", node="selftest", issued=control.now_ns())
            payload = control.sign(order, control.load_signing_key(priv))
            if control.verify(payload, control.load_trusted([str(pub)])) != order:
                failed.append("runlab.control: a signed order did not verify")
    for line in failed:
        print(f"self-test: {line}", file=sys.stderr)
    print(f"self-test: {len(names)} modules imported, {len(failed)} failures"
          + (", signed order verified" if control is not None and not failed else ""))
    return 1 if failed else 0


def _bundled_list(app: str) -> list[str]:
    here = getattr(sys, "_MEIPASS", os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, f"{app}-modules.txt"), encoding="utf-8") as f:
        return f.read().splitlines()


def main() -> int:
    name = os.path.basename(sys.argv[0])
    app = "collector" if name in ("runlab-collector", "runlab") else "agent"
    if len(sys.argv) > 1 and sys.argv[1] == "--self-test":
        return self_test(app)
    if name == "runlab":
        from collector.operator import main as run
    elif name == "runlab-collector":
        from collector.cli import main as run
    else:
        from agent.cli import main as run
    return run() or 0


if __name__ == "__main__":
    sys.exit(main())
