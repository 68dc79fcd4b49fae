"""Every benchmark the harness runs, by its `benchmarks:` key (the interface: `eval_harness.tasks.base`).

A benchmark is found by being a module-level `Benchmark` instance in a module (or package) of this
folder, so adding one is adding its module (docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from eval_harness.tasks.base import Benchmark


def discover() -> dict[str, Benchmark]:
    """The Benchmark instances defined in the modules of this package, by key (a key defined twice is an error)."""
    found: dict[str, Benchmark] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if not isinstance(value, Benchmark) or found.get(value.key) is value:
                continue
            if value.key in found:
                raise RuntimeError(f"benchmark key {value.key!r} is defined twice ({module.__name__} and another "
                                   "module of eval_harness.tasks); give one of them another key")
            found[value.key] = value
    return found


BENCHMARKS: dict[str, Benchmark] = discover()
