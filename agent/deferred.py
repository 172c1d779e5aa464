"""Modules a dependency imports at its top but the agent never uses: imported on first use instead.

Why: the idle agent's memory is mostly its imported modules (docs/packaging.md, "Figures"). paho-mqtt's
client module imports ``urllib.request`` only to look up an MQTT proxy for PySocks, which runlab does not
install, so that code never runs — yet ``urllib.request`` brings ``http.client`` and the ``email``
package: ~40 modules, 1.1 MB of the idle agent (measured on the frozen agent with ``/proc/PID/smaps``).
Importing this module (``agent.cli`` and ``agent.service`` do, first) puts a placeholder in ``sys.modules``
that imports the real module the first time any attribute is asked for, so nothing changes for code that
does use it. ``importlib.util.LazyLoader`` cannot do this on Python 3.11: the ``import`` statement itself
reads ``__spec__`` from the module, which makes the lazy module load.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_lock = threading.RLock()


class _Deferred(types.ModuleType):
    """Stands in for a module not imported yet; the first missing attribute imports the real one."""

    def __getattr__(self, attr: str) -> object:
        return getattr(_load(self), attr)


def _load(stub: _Deferred) -> types.ModuleType:
    with _lock:
        name = stub.__name__
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        real = importlib.import_module(name)  # also rebinds the parent package's attribute to it
        if stub.__dict__.get("__deferred__"):
            stub.__dict__.update(real.__dict__)  # whoever kept the placeholder now sees the real module
            stub.__dict__.pop("__deferred__", None)
        return real


def defer(name: str) -> None:
    """Import ``name`` on first attribute access (no-op when something imported it already).

    When the parent package is imported already, its attribute points to the placeholder too. When it is
    not, the placeholder waits in ``sys.modules`` for the parent's own ``from . import name`` (which takes
    it from there); its ``__spec__`` is then None until the first use, since finding the spec of a
    submodule would import the parent now.
    """
    with _lock:
        if name in sys.modules:
            return
        parent, _, child = name.rpartition(".")
        spec = None
        if not parent or parent in sys.modules:
            spec = importlib.util.find_spec(name)
            if spec is None:
                return
        stub = _Deferred(name)
        stub.__spec__ = spec  # `import name` finds a module that is not initialising and takes it as is
        stub.__dict__["__deferred__"] = True
        sys.modules[name] = stub
        if parent in sys.modules:
            setattr(sys.modules[parent], child, stub)


# paho.mqtt.client: `urllib.request.proxy_bypass/getproxies` only when PySocks is importable.
defer("urllib.request")
# shutil (argparse-free, but agent.facts needs shutil.which) imports bz2 and lzma for its archive functions:
# their modules, _compression and four shared libraries, ~0.2 MB of the idle agent's PSS.
defer("bz2")
defer("lzma")
# msgspec/__init__ imports its type-introspection module (~30 Struct types), used by
# msgspec.json.schema() and msgspec.inspect only; runlab uses neither. Works only when this module is
# imported before msgspec (agent.cli imports it first).
defer("msgspec.inspect")
