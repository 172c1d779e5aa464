"""Runtime adapters, one module each, found by the variant's ``runtime:`` name."""

from __future__ import annotations

import importlib

from agent.runtimes.base import Runtime
from runlab.experiment import Experiment, Variant


def make_runtime(spec: Variant, experiment: Experiment, here: str = ".") -> Runtime:
    """The adapter for ``spec.runtime`` (module ``agent.runtimes.<runtime>``, class ``RUNTIME``)."""
    tag = type(spec).__struct_config__.tag
    module = importlib.import_module(f"agent.runtimes.{tag}")
    cls: type[Runtime] = module.RUNTIME
    return cls(spec, experiment, here)
