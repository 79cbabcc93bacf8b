"""Using a fit beyond its data: bands, N* for a target, and the holdout check of extrapolation.

Prediction band for the mean of m new seeds at x, in logs:
    log f̂(x) ± t(q, G - k) · sqrt(Var_boot log f(x) + s² / m)
Var_boot is the spread of the law over the cluster-bootstrap refits, s the residual sd of the log
fit (seed scatter plus any lack of fit), G the number of distinct x and k the law's parameters:
the law is in effect fitted to G curve means, so t has G - k degrees of freedom, not n - k
(the seeds at one x are not independent evidence about the law's shape). With G = k (a power law
through two model sizes) nothing measures the misfit, and there is no prediction band.

Anything beyond BEYOND_FACTOR times the largest x in the data is "beyond the data": computed,
kept in fits.csv, but reported as such rather than as a number (N* of 4e101 means nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from raysweep.scaling.laws import LAWS
from raysweep.scaling.pointfit import LawFit, fit_many

BEYOND_FACTOR = 10.0


def band(fit: LawFit, *xs, kind: str = "confidence", m: int = 1):
    """(lower, upper) at fit.level: of the law ("confidence", bootstrap percentiles) or of the mean
    of m new seeds ("prediction", see the module docstring); None without a bootstrap."""
    if fit.boot is None or not len(fit.boot):
        return None
    with np.errstate(all="ignore"):
        logs = np.log(fit.draws(*xs))  # (R, len(x))
    tail = (1 - fit.level) / 2
    if kind == "confidence":
        lower, upper = np.nanpercentile(logs, [100 * tail, 100 * (1 - tail)], axis=0)
        return np.exp(lower), np.exp(upper)
    if fit.n_distinct - fit.k < 1:  # a law through as many means as parameters: no measure of its misfit
        return None
    centre = np.log(fit.predict(*(np.atleast_1d(np.asarray(x, dtype=float)) for x in xs)))
    spread = np.sqrt(np.nanvar(logs, axis=0) + fit.residual_sd ** 2 / m)
    t = special.stdtrit(max(fit.n_distinct - fit.k, 1), 1 - tail)
    return np.exp(centre - t * spread), np.exp(centre + t * spread)


def beyond(fit: LawFit, x: float, axis: int = 0) -> bool:
    return x > BEYOND_FACTOR * float(np.max(fit.xs[axis]))


def solve_for_x(out: LawFit, target: float):
    """Smallest x at which the law predicts y ≤ target: (value, lower, upper, note). inf when the
    law never gets there; the note says "already reached" (the largest x run is past it) or
    "beyond the data" (more than BEYOND_FACTOR x the largest x)."""
    values = {p: np.atleast_1d(v) for p, v in out.values.items()}
    point = float(_solve(out.law, values, target)[0])
    interval = (None, None)
    if out.boot is not None and len(out.boot):
        columns = {p: out.boot[:, j] for j, p in enumerate(LAWS[out.law].params)}
        tail = (1 - out.level) / 2
        # inverted_cdf: no interpolation between a finite x and inf
        interval = tuple(float(np.quantile(_solve(out.law, columns, target), q, method="inverted_cdf"))
                         for q in (tail, 1 - tail))
    largest = float(np.max(out.xs[0]))
    if math.isinf(point):
        note = _never_note(out, target)
    elif point <= largest:
        note = "already reached"
    elif beyond(out, point):
        note = f"beyond the data (> {BEYOND_FACTOR:g}x the largest x)"
    else:
        note = ""
    return point, *interval, note


def _solve(law: str, v: dict, target: float) -> np.ndarray:
    b = v["b"]
    floor = v.get("c", np.zeros_like(b))
    shift = v.get("x0", np.zeros_like(b))
    with np.errstate(all="ignore"):
        x = (v["a"] / (target - floor)) ** (1 / b) - shift
    return np.where((b > 0) & (floor < target), np.maximum(x, 0), np.inf)


def _never_note(out: LawFit, target: float) -> str:
    if out.values.get("c", 0) >= target:
        return f"never: the law saturates at {out.values['c']:.3g} ≥ {target:g}"
    return f"never: the fitted curve does not fall (exponent {out.values['b']:.3g})"


@dataclass
class Holdout:
    held_out: float  # the x left out
    predicted: float
    observed: float  # geometric mean over seeds there (the fit is in logs)
    relative_error: float
    inside: bool | None  # within the prediction band for the mean of that many seeds; None without one
    note: str = ""


def holdout(xs, y, law: str, drop: int = 0, n_boot: int = 200, seed: int = 0, level: float = 0.95,
            clusters=None) -> Holdout | None:
    """Refit without the largest value of xs[drop] and predict the points left out. For several
    held-out points (the joint law), the worst relative error is reported and all must be inside."""
    split = holdout_refits([(xs, y, law, drop, seed, level, clusters)], n_boot)[0]
    return None if split is None else holdout_check(*split)


def holdout_refits(specs, n_boot: int = 0) -> list:
    """Refits without the largest xs[drop] of many (xs, y, law, drop, seed, level[, clusters]),
    bootstrapped together: [(refit, held-out xs, held-out y, largest x) or None]."""
    splits = [_split(*spec) for spec in specs]
    fitted = iter(fit_many([split[0] for split in splits if split is not None], n_boot))
    return [None if split is None else (next(fitted), *split[1:]) for split in splits]


def _split(xs, y, law, drop, seed, level, clusters=None):
    xs = [np.asarray(x, dtype=float) for x in xs]
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(y) & (y > 0) & np.all([np.isfinite(x) for x in xs], axis=0)
    clusters = None if clusters is None else np.asarray(clusters)[keep]
    xs, y = [x[keep] for x in xs], y[keep]
    if len(y) == 0:
        return None
    train = xs[drop] < xs[drop].max()
    job = (law, [x[train] for x in xs], y[train], None, seed, level, None if clusters is None else clusters[train])
    return job, [x[~train] for x in xs], y[~train], float(xs[drop].max())


def holdout_check(fitted: LawFit, xs_out, y_out, largest: float) -> Holdout:
    """Predict the held-out points with the (bootstrapped) refit."""
    if not fitted.ok:
        return Holdout(largest, math.nan, math.nan, math.nan, None, f"refit unfit: {fitted.message}")
    keys, group = np.unique(np.column_stack(xs_out), axis=0, return_inverse=True)
    checks = [_check_point(fitted, key, y_out[group.ravel() == g]) for g, key in enumerate(keys)]
    worst = max(checks, key=lambda c: abs(c.relative_error))
    insides = [c.inside for c in checks]
    return Holdout(largest, worst.predicted, worst.observed, worst.relative_error,
                   None if None in insides else all(insides))


def _check_point(fitted: LawFit, key, seeds) -> Holdout:
    observed = float(np.exp(np.mean(np.log(seeds))))
    predicted = float(fitted.predict(*key))
    found = band(fitted, *key, kind="prediction", m=len(seeds))
    slack = 1e-9 * observed  # a band of zero width (a perfect fit) still holds its own prediction
    inside = None if found is None else bool(found[0][0] - slack <= observed <= found[1][0] + slack)
    return Holdout(float(key[0]), predicted, observed, (predicted - observed) / observed, inside)
