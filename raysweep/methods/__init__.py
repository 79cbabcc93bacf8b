"""Method registry. The key, the file name and the `method` value in the results are one word.

Each method module has:
  uses_model: bool                        does it train the experiment's network?
  unsupported(task) -> str | None         why it cannot run a task, or None
  Options (optional)                      a frozen dataclass of its settings
  fit(data, model, options, train, seed, on_epoch, device) -> posterior
and the posterior has predict(x) returning S predictive distributions for the batch:
  classification: probabilities (S, B, C);  regression: Gaussian means (S, B) and variances (S, B),
  on the device of x (the posterior moves x to its own device).
A method whose fit needs something of the model (dropout layers, a linear last layer) also has
  unsupported_model(model) -> str | None, checked by fit before any training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

from raysweep.methods import csgld, dropout, ensemble, exact, laplace, sghmc, swag, vi

METHODS = {
    "exact": exact,
    "ensemble": ensemble,
    "dropout": dropout,
    "vi": vi,
    "laplace": laplace,
    "swag": swag,
    "sghmc": sghmc,
    "csgld": csgld,
}


@dataclass(frozen=True)
class MethodOptions:
    """Settings of every method that has some, one field per method name."""

    ensemble: ensemble.Options = field(default_factory=ensemble.Options)
    dropout: dropout.Options = field(default_factory=dropout.Options)
    vi: vi.Options = field(default_factory=vi.Options)
    laplace: laplace.Options = field(default_factory=laplace.Options)
    swag: swag.Options = field(default_factory=swag.Options)
    sghmc: sghmc.Options = field(default_factory=sghmc.Options)
    csgld: csgld.Options = field(default_factory=csgld.Options)

    def for_method(self, name: str) -> dict:
        options = getattr(self, name, None)
        return dataclasses.asdict(options) if options is not None else {}

    def options_of(self, name: str, values: dict):
        return type(getattr(self, name))(**values) if hasattr(self, name) else None

    def smoke(self) -> "MethodOptions":
        return replace(self, **{f.name: getattr(self, f.name).smoke() for f in dataclasses.fields(self)})

    def problems(self) -> str | None:
        return next((p for f in dataclasses.fields(self) if (p := getattr(self, f.name).problems())), None)
