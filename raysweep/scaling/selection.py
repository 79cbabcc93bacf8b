"""Which law a curve follows: AICc, or the holdout extrapolation error when one is measured."""

from __future__ import annotations

import math

from raysweep.scaling.pointfit import LawFit

MARGIN = 2.0  # Burnham & Anderson: a difference under 2 is no substantial support for the larger law

RULE_AICC = (f"lowest AICc (AIC + 2k(k+1)/(n-k-1)); a law with more parameters must lower it by more "
             f"than {MARGIN:g} to replace a simpler one")
RULE_HOLDOUT = ("smallest |relative error| predicting the held-out largest N (largest P for curves against P) "
                "from a refit on the rest; "
                "AICc where no holdout could be made")


def select(fits: dict[str, LawFit], criterion: str = "aicc") -> str | None:
    """The law with the lowest AICc (or "aic", "bic"), simplest first, a larger law having to beat
    the current choice by more than MARGIN. None if nothing fitted."""
    fitted = sorted((f for f in fits.values() if f.ok and math.isfinite(getattr(f, criterion))),
                    key=lambda f: len(f.values))
    best = None
    for candidate in fitted:
        if best is None or getattr(candidate, criterion) < getattr(best, criterion) - MARGIN:
            best = candidate
    return None if best is None else best.law


def select_by_holdout(fits: dict[str, LawFit], errors: dict[str, float]) -> str | None:
    """The fitted law whose refit predicted the held-out point best; ties and missing errors fall
    back to AICc's order."""
    usable = {law: abs(e) for law, e in errors.items() if law in fits and fits[law].ok and math.isfinite(e)}
    if not usable:
        return select(fits)
    return min(usable, key=lambda law: (usable[law], fits[law].aicc))
