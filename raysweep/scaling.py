"""Scaling laws as plain functions, fitted with lmfit.

Each law is a plain function whose docstring states its formula, plus a `guess` from a straight
line on log-log axes. Fits weight residuals by 1/y, i.e. they fit relative error, because the
quantities span decades and a plain least-squares fit would see only the smallest N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lmfit
import numpy as np

MIN_POINTS = 3


def power_law(x, a, b):
    """y = a · x^(-b)"""
    return a * np.power(x, -b)


def guess_power(x, y) -> dict:
    """Start from the least-squares line log y = log a - b log x."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return {"a": math.exp(intercept), "b": -slope}


LAWS = {"power": (power_law, guess_power)}


@dataclass
class LawFit:
    law: str
    values: dict[str, float]
    stderr: dict[str, float | None]  # None: the covariance could not be estimated
    n_points: int
    n_dropped: int = 0  # non-finite or non-positive values left out
    ok: bool = True
    message: str = ""
    aic: float = float("nan")
    bic: float = float("nan")
    extra: dict = field(default_factory=dict)

    def predict(self, x):
        function, _ = LAWS[self.law]
        return function(np.asarray(x, dtype=float), **self.values)


def fit(x, y, law: str = "power") -> LawFit:
    """Fit y against x with the named law. Too few usable points gives ok=False, not an exception."""
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; allowed: {', '.join(LAWS)}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    usable = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y, dropped = x[usable], y[usable], int((~usable).sum())
    if len(x) < MIN_POINTS or len(np.unique(x)) < 2:
        return LawFit(law, {}, {}, len(x), dropped, ok=False,
                      message=f"need at least {MIN_POINTS} finite points at 2+ distinct x, got {len(x)}")
    function, guess = LAWS[law]
    model = lmfit.Model(function)
    result = model.fit(y, model.make_params(**guess(x, y)), x=x, weights=1.0 / y)
    values = {name: p.value for name, p in result.params.items()}
    stderr = {name: (p.stderr if p.stderr is not None and math.isfinite(p.stderr) else None)
              for name, p in result.params.items()}
    return LawFit(law, values, stderr, len(x), dropped, ok=bool(result.success),
                  message=result.message, aic=result.aic, bic=result.bic)
