"""Point fits through lmfit.Model: one curve, one law, least squares on log y.

    fit(x, y, law, clusters=seeds, n_boot=R)  -> LawFit
    fit_many([(law, xs, y, weights, seed, level, clusters), ...], n_boot)  -> [LawFit]

Each law's lmfit Model (laws.model: log f) is fitted from the law's starting guess within its
bounds. Intervals: with two or more seeds, the cluster bootstrap (bootstrap.py) resamples whole
seeds; with one seed, lmfit's profile likelihood (`conf_interval`) where it works, else none.
No t interval from standard errors: it ignores bounds (b = 3.47 [-5.19, 12.1] for b in [0, 10]).
Every interval is kept inside its parameter's bounds; a parameter that ends on a bound is listed
in `at_bound` and reported as "at bound" rather than with a meaningless error.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from raysweep.scaling.laws import LAWS, model

AT_BOUND_TOL = 1e-4  # relative: an lmfit value this close to a finite bound sits on it


@dataclass
class LawFit:
    law: str
    values: dict[str, float]
    stderr: dict[str, float | None]  # lmfit's; None where unavailable or the parameter is at a bound
    ci: dict[str, tuple[float, float] | None]  # at `level`, inside the bounds; see ci_method
    ci_method: str = "none"  # "cluster bootstrap", "per-x bootstrap", "profile likelihood" or "none"
    level: float = 0.95
    n_points: int = 0
    n_dropped: int = 0  # non-finite or non-positive values left out
    n_clusters: int = 0  # seeds
    ok: bool = True
    message: str = ""
    aic: float = float("nan")
    aicc: float = float("nan")  # AIC with the small-sample correction 2k(k+1)/(n-k-1)
    bic: float = float("nan")
    flags: list[str] = field(default_factory=list)
    at_bound: list[str] = field(default_factory=list)
    lack_of_fit_p: float | None = None  # F-test of the law against the scatter of seeds at each x
    residual_sd: float = float("nan")  # of log residuals: includes any lack of fit
    boot: np.ndarray | None = None  # (R, parameters) bootstrap refits
    seed: int = 0
    xs: tuple = ()  # the finite data the law was fitted to, its weights and the seed of each point
    y: np.ndarray | None = None
    w: np.ndarray | None = None
    clusters: np.ndarray | None = None
    bounds: dict = field(default_factory=dict)
    nfev: int = 0

    @property
    def k(self) -> int:
        return len(LAWS[self.law].params)

    @property
    def n_distinct(self) -> int:
        return 0 if not self.xs else len(np.unique(np.column_stack(self.xs), axis=0))

    def predict(self, *xs):
        return LAWS[self.law].function(*(np.asarray(x, dtype=float) for x in xs), **self.values)

    def draws(self, *xs) -> np.ndarray:
        """The law at xs under every bootstrap refit: (R, len(x))."""
        xs = [np.atleast_1d(np.asarray(x, dtype=float)) for x in xs]
        columns = [self.boot[:, [j]] for j in range(self.boot.shape[1])]
        return LAWS[self.law].function(*xs, *columns)

    def band(self, *xs, kind: str = "confidence", m: int = 1):
        """(lower, upper) of the law ("confidence") or of the mean of m new seeds ("prediction");
        None without a bootstrap. See extrapolate.py."""
        from raysweep.scaling import extrapolate
        return extrapolate.band(self, *xs, kind=kind, m=m)


def unfit(law: str, n_points: int, n_dropped: int, message: str) -> LawFit:
    return LawFit(law, {}, {}, {}, n_points=n_points, n_dropped=n_dropped, ok=False, message=message)


def fit(x, y, law: str = "power", weights=None, n_boot: int = 0, seed: int = 0, level: float = 0.95,
        clusters=None, scheme: str = "cluster") -> LawFit:
    """Fit y against x with the named law (see LAWS). `clusters` is each point's seed (default:
    the k-th value at each x belongs to seed k). n_boot > 0 adds bootstrap intervals (`scheme`
    "cluster": whole seeds resampled; "per-x": seeds resampled independently at each x).
    Too few usable points gives ok=False with the reason, not an exception."""
    if law not in LAWS or LAWS[law].independent != ("x",):
        allowed = [name for name in LAWS if LAWS[name].independent == ("x",)]
        raise ValueError(f"unknown law {law!r}; allowed: {', '.join(allowed)} (joint: use fit_joint)")
    return fit_many([(law, [x], y, weights, seed, level, clusters)], n_boot, scheme)[0]


def fit_joint(n, p, y, weights=None, n_boot: int = 0, seed: int = 0, level: float = 0.95, clusters=None) -> LawFit:
    """Fit y = E + A·N^(-α) + B·P^(-β); the bootstrap resamples whole seeds."""
    return fit_many([("joint", [n, p], y, weights, seed, level, clusters)], n_boot)[0]


def fit_many(jobs, n_boot: int = 0, scheme: str = "cluster") -> list[LawFit]:
    """`fit` of many curves; each job is (law, xs, y, weights, seed, level[, clusters]). Every
    answer is lmfit.Model.fit's, started where the vectorised Levenberg-Marquardt of all curves of
    one law and length found the minimum (from the law's guess): from the guess alone lmfit takes
    ~200 evaluations per fit, from there ~10 (the benchmark's reason for the solver). Then the
    bootstraps of all of them together (bootstrap_many)."""
    from raysweep.scaling.bootstrap import bootstrap_many

    prepared = [_prepare(*job) for job in jobs]
    for members in _batches(prepared).values():
        _warm_start([prepared[i] for i in members])
    fits = [p if isinstance(p, LawFit) else _finish(p) for p in prepared]
    if n_boot > 0:
        bootstrap_many([f for f in fits if f.ok], n_boot, scheme)
    return fits


@dataclass
class _Problem:
    """A curve ready to fit: finite data, where to start, the bounds."""
    law: str
    xs: list
    y: np.ndarray
    w: np.ndarray
    clusters: np.ndarray
    dropped: int
    seed: int
    level: float
    start: dict
    bounds: dict


def _prepare(name, xs, y, weights, seed, level, clusters=None) -> _Problem | LawFit:
    law = LAWS[name]
    xs, y, w, clusters, dropped = finite(xs, y, weights, clusters)
    k = len(law.params)
    distinct = len(np.unique(np.column_stack(xs), axis=0)) if len(y) else 0
    if len(y) < k + 1:  # one degree of freedom left, or there is no error to estimate
        return unfit(name, len(y), dropped, f"need at least {k + 1} finite points, got {len(y)}")
    if distinct < k:
        return unfit(name, len(y), dropped, f"need at least {k} distinct x values, got {distinct}")
    return _Problem(name, xs, y, w, clusters, dropped, seed, level, law.guess(*xs, y), law.bounds(*xs))


def _batches(prepared) -> dict:
    batches: dict[tuple, list[int]] = {}
    for i, p in enumerate(prepared):
        if isinstance(p, _Problem):
            batches.setdefault((p.law, len(p.y)), []).append(i)
    return batches


def _warm_start(problems: list[_Problem]) -> None:
    from raysweep.scaling import solver

    law = LAWS[problems[0].law]
    low, high = (np.array([[p.bounds[q][i] for q in law.params] for p in problems], dtype=float) for i in (0, 1))
    start = np.clip([[p.start[q] for q in law.params] for p in problems], low, high)
    xs = [np.stack([p.xs[j] for p in problems]) for j in range(len(law.independent))]
    minima = solver.refit_many(law, xs, np.stack([p.y for p in problems]), np.stack([p.w for p in problems]),
                               start, low, high, solver.POINT_ITERATIONS, np.arange(len(problems)),
                               solver.POINT_PLATEAU)
    for p, minimum in zip(problems, minima):
        if np.all(np.isfinite(minimum)):
            p.start = dict(zip(law.params, minimum))


def _finish(p: _Problem) -> LawFit:
    result = _lmfit(p.law, p.xs, p.y, p.w, p.start, p.bounds)
    if isinstance(result, str):
        return unfit(p.law, len(p.y), p.dropped, result)
    out = _law_fit(p.law, result, p.xs, p.y, p.w, p.clusters, p.dropped, p.seed, p.level, p.bounds)
    if out.n_clusters == 1:
        _profile_intervals(out, result)
    return out


def _lmfit(name, xs, y, w, guess, bounds):
    """lmfit.Model(log f).fit from the guess (clipped into the bounds); a string on failure."""
    law = LAWS[name]
    params = model(name).make_params()
    for p in law.params:
        low, high = bounds[p]
        # strictly inside: lmfit's bound transform has no slope exactly on a bound, so a start
        # there would never move
        inside = np.clip(guess[p], low + 1e-9 * (1 + abs(low)) if math.isfinite(low) else low,
                         high - 1e-9 * (1 + abs(high)) if math.isfinite(high) else high)
        params[p].set(value=float(inside), min=low, max=high)
    try:
        return model(name).fit(np.log(y), params, weights=w, max_nfev=max_evaluations(name),
                               **dict(zip(law.independent, xs)))
    except ValueError as exc:  # lmfit refuses NaN from a wandering parameter
        return f"fit failed: {exc}"


def max_evaluations(name: str) -> int:
    """lmfit's evaluation cap: started at the vectorised minimum it needs ~5-30; a curve whose law
    the data do not determine (a flat curve and a floor) can creep along a valley for thousands."""
    return 100 * (len(LAWS[name].params) + 1)


def _law_fit(name, result, xs, y, w, clusters, dropped, seed, level, bounds) -> LawFit:
    law = LAWS[name]
    n, k = len(y), len(law.params)
    values = {p: float(result.params[p].value) for p in law.params}
    at_bound = [p for p in law.params for bound in bounds[p]
                if math.isfinite(bound) and abs(values[p] - bound) <= AT_BOUND_TOL * (1 + abs(bound))]
    perfect = result.chisqr <= 1e-20 * n  # no residual, no noise to scale a covariance by
    stderr = {p: None if perfect or p in at_bound else _usable(result.params[p].stderr) for p in law.params}
    capped = result.nfev >= max_evaluations(name)  # still creeping: the data do not pin the law down
    out = LawFit(name, values, stderr, {p: None for p in law.params}, level=level, n_points=n,
                 n_dropped=dropped, n_clusters=len(np.unique(clusters)), ok=bool(result.success) or capped,
                 message="" if result.success or capped else str(result.message), aic=float(result.aic),
                 aicc=aicc(float(result.aic), n, k), bic=float(result.bic), at_bound=at_bound, seed=seed,
                 xs=tuple(xs), y=y, w=w, clusters=clusters, bounds=bounds, nfev=int(result.nfev),
                 residual_sd=float(np.sqrt(result.chisqr / max(n - k, 1))))
    out.lack_of_fit_p = _lack_of_fit(xs, np.log(y), result.residual / w, k)
    out.flags = [f"{p} at bound {_nearest(values[p], bounds[p]):g}" for p in at_bound]
    if capped:
        out.flags.append(f"lmfit stopped at {max_evaluations(name)} evaluations")
    if out.lack_of_fit_p is not None and out.lack_of_fit_p < 0.01:
        out.flags.append(f"lack of fit (p={out.lack_of_fit_p:.2g})")
    return out


def aicc(aic: float, n: int, k: int) -> float:
    """AIC + 2k(k+1)/(n-k-1): plain AIC favours extra parameters on few points."""
    return aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf


def _profile_intervals(out: LawFit, result) -> None:
    """One seed: no bootstrap is possible; lmfit's profile likelihood where it converges."""
    try:
        with warnings.catch_warnings():  # "bound reached": the profile stops at the bound, as it should
            warnings.simplefilter("ignore", UserWarning)
            profile = result.conf_interval(sigmas=[out.level])
    except Exception as exc:  # noqa: BLE001 -- lmfit raises many kinds when a profile cannot be traced
        out.flags.append(f"one seed: no interval ({type(exc).__name__})")
        return
    for p, rows in profile.items():
        low, high = rows[0][1], rows[-1][1]
        if math.isfinite(low) and math.isfinite(high):
            out.ci[p] = clip_interval((low, high), out.bounds[p])
    out.ci_method = "profile likelihood"


def clip_interval(interval, bounds) -> tuple[float, float]:
    low, high = bounds
    return float(np.clip(interval[0], low, high)), float(np.clip(interval[1], low, high))


def _nearest(value, bounds) -> float:
    return min((b for b in bounds if math.isfinite(b)), key=lambda b: abs(value - b))


def finite(xs, y, weights, clusters=None):
    """The usable points: finite, positive y, x and weights; their seeds (default: the k-th value
    at each x belongs to seed k); and how many were left out."""
    xs = [np.asarray(x, dtype=float).ravel() for x in xs]
    y = np.asarray(y, dtype=float).ravel()
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float).ravel()
    clusters = _default_clusters(xs) if clusters is None else np.asarray(clusters).ravel()
    usable = np.isfinite(y) & (y > 0) & np.isfinite(w) & (w > 0)
    for x in xs:
        usable &= np.isfinite(x) & (x > 0)
    return [x[usable] for x in xs], y[usable], w[usable], clusters[usable], int((~usable).sum())


def _default_clusters(xs) -> np.ndarray:
    if not len(xs[0]):
        return np.zeros(0, dtype=int)
    _, group = np.unique(np.column_stack(xs), axis=0, return_inverse=True)
    group = group.ravel()
    order = np.zeros(len(group), dtype=int)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        order[members] = np.arange(len(members))
    return order


def _usable(stderr) -> float | None:
    """lmfit's standard error, or None when it is missing, infinite or exactly zero."""
    if stderr is None or not math.isfinite(stderr) or stderr <= 0:
        return None
    return float(stderr)


def _lack_of_fit(xs, logy, residual, k) -> float | None:
    """p-value of the classical lack-of-fit F-test: is the scatter around the law larger than the
    scatter between seeds at the same x? Small p: the law's shape is wrong."""
    _, group = np.unique(np.column_stack(xs), axis=0, return_inverse=True)
    group = group.ravel()
    means = np.bincount(group, logy) / np.bincount(group)
    pure = float(np.sum((logy - means[group]) ** 2))
    dof_pure, dof_lof = len(logy) - group.max() - 1, group.max() + 1 - k
    if dof_pure <= 0 or dof_lof <= 0 or pure <= 0:
        return None
    lack = max(float(np.sum(residual ** 2)) - pure, 0.0)
    return float(special.fdtrc(dof_lof, dof_pure, (lack / dof_lof) / (pure / dof_pure)))


def trend(out: LawFit) -> str:
    """'falling', 'flat' or 'rising' from the power-law exponent and its interval. A flat or rising
    curve is a finding about the method (uncertainty that does not shrink with data), not an error."""
    if not out.ok:
        return "unknown"
    name = LAWS[out.law].exponents[0]
    b = out.values[name]
    low, high = out.ci.get(name) or (b, b)
    if abs(b) < 0.01:  # a tenfold x changes y by under 2.3%
        return "flat"
    if low > 0:
        return "falling"
    return "rising" if high < 0 else "flat"
