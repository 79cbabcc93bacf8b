"""Method registry: REGISTRY lists one instance of every method; everything else is derived from it.

    METHODS         {name: method}, what experiments, cells and the Ray edge look methods up in
    MethodOptions   a frozen dataclass with one field per method that has options, e.g.
                    MethodOptions(ensemble=ensemble.Options(members=4)); `--set methods.<name>.<field>`

Adding a method: a new file methods/<name>.py with an `Options` dataclass and a `Method` subclass
(the protocol and its hooks are documented in methods/base.py), and one line in REGISTRY.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field, replace

from raysweep.methods import (
    csgld,
    dropout,
    ensemble,
    exact,
    exact_meanfield,
    ivon,
    laplace,
    lora_laplace,
    sghmc,
    swag,
    vi,
)
from raysweep.methods.base import Method, NoOptions

REGISTRY: tuple[Method, ...] = (
    exact.Exact(),
    exact_meanfield.ExactMeanField(),
    ensemble.Ensemble(),
    dropout.Dropout(),
    vi.VI(),
    laplace.Laplace(),
    swag.SWAG(),
    sghmc.SGHMC(),
    csgld.CSGLD(),
    ivon.IVON(),
    lora_laplace.LoRALaplace(),
)

METHODS: dict[str, Method] = {method.name: method for method in REGISTRY}


class _AllOptions:
    """What MethodOptions adds to its generated fields."""

    def options_of(self, name: str, values: dict):
        """The options of method `name` rebuilt from a cell's stored dict (NoOptions if it has none)."""
        return METHODS[name].Options(**values)

    def for_method(self, name: str) -> dict:
        """The options of method `name` as a plain dict, as stored in a cell."""
        return dataclasses.asdict(getattr(self, name)) if name in _OPTION_FIELDS else {}

    def smoke(self):
        return replace(self, **{name: getattr(self, name).smoke() for name in _OPTION_FIELDS})

    def problems(self) -> str | None:
        return next((p for name in _OPTION_FIELDS if (p := getattr(self, name).problems())), None)


_OPTION_FIELDS = [method.name for method in REGISTRY if method.Options is not NoOptions]

MethodOptions = dataclasses.make_dataclass(
    "MethodOptions",
    [(name, METHODS[name].Options, field(default_factory=METHODS[name].Options)) for name in _OPTION_FIELDS],
    bases=(_AllOptions,),
    frozen=True,
)
MethodOptions.__module__ = __name__  # pickled by reference (Ray ships experiments to workers)
MethodOptions.__doc__ = "Settings of every method that has some, one field per method name (derived from REGISTRY)."

__all__ = ["METHODS", "REGISTRY", "Method", "MethodOptions", "NoOptions"]
