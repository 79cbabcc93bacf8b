"""Which law a curve follows: AICc, or the holdout extrapolation error when one is measured."""

from __future__ import annotations

import math

from raysweep.scaling.laws import LAWS
from raysweep.scaling.pointfit import LawFit

MARGIN = 2.0  # Burnham & Anderson: a difference under 2 is no substantial support for the larger law

ELIGIBLE = ("laws whose exponent (or offset x0) sits on a bound of its range are not chosen while another "
            "law estimates its own, and a saturating fit whose floor is 0 counts as the power law")
RULE_AICC = (f"lowest AICc (AIC + 2k(k+1)/(n-k-1)); a law with more parameters must lower it by more "
             f"than {MARGIN:g} to replace a simpler one; {ELIGIBLE}")
RULE_HOLDOUT = ("smallest |relative error| predicting the held-out largest N (largest P for curves against P) "
                f"from a refit on the rest; AICc where no holdout could be made; {ELIGIBLE}")


def eligible(fits: dict[str, LawFit]) -> dict[str, LawFit]:
    """The fitted laws that estimate their shape. A shape parameter on a bound was imposed, not
    estimated: offset with b = 10 and x0 beyond the data is an exponential-like fall that no power
    law follows, and its 10x extrapolation is whatever the bound allows; AICc's comparison does not
    hold at a boundary either. Where every law meets a bound, all stay (and carry the flag). A law on
    the bound that makes it a simpler candidate law is that law, and leaves it the choice."""
    fitted = {law: f for law, f in fits.items() if f.ok}
    interior = {law: f for law, f in fitted.items() if not set(f.at_bound) & set(LAWS[law].shape)}
    candidates = interior or fitted
    return {law: f for law, f in candidates.items() if not _is_simpler_law(law, f, candidates)}


def _is_simpler_law(law: str, fit: LawFit, candidates: dict[str, LawFit]) -> bool:
    """True where the fit sits where the law becomes a simpler one that is itself a candidate (a
    saturating fit with its floor at 0 is the power law: it is reported as the power law)."""
    reduces = LAWS[law].reduces_to
    return reduces is not None and reduces[0] in fit.at_bound and reduces[1] in candidates


def select(fits: dict[str, LawFit], criterion: str = "aicc") -> str | None:
    """The eligible law with the lowest AICc (or "aic", "bic"), simplest first, a larger law having
    to beat the current choice by more than MARGIN. None if nothing fitted."""
    fitted = sorted((f for f in eligible(fits).values() if math.isfinite(getattr(f, criterion))),
                    key=lambda f: len(f.values))
    best = None
    for candidate in fitted:
        if best is None or getattr(candidate, criterion) < getattr(best, criterion) - MARGIN:
            best = candidate
    return None if best is None else best.law


def select_by_holdout(fits: dict[str, LawFit], errors: dict[str, float]) -> str | None:
    """The fitted law whose refit predicted the held-out point best; ties and missing errors fall
    back to AICc's order."""
    candidates = eligible(fits)
    usable = {law: abs(e) for law, e in errors.items() if law in candidates and math.isfinite(e)}
    if not usable:
        return select(fits)
    return min(usable, key=lambda law: (usable[law], fits[law].aicc))
