"""raysweep: how predictive uncertainty scales with data (N) and model size (P).

The names below are loaded on first use (PEP 562), so `import raysweep.store`, `raysweep.scaling`
or `raysweep.clusters` does not pay for torch and pyro, which the experiment classes pull in
through the method registry.
"""

import importlib

_LAZY = {
    "Experiment": "raysweep.experiment",
    "Grid": "raysweep.experiment",
    "Train": "raysweep.experiment",
    "Eval": "raysweep.experiment",
    "Resources": "raysweep.experiment",
    "MethodOptions": "raysweep.methods",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'raysweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
