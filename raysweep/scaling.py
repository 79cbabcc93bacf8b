"""Scaling laws as plain functions, fitted with lmfit, with bootstrap intervals and checked extrapolation.

Each law is a plain function whose docstring states its formula, an `inner` form with its gradient
(for the vectorised Levenberg-Marquardt), a `guess` of starting values from a straight line on
log-log axes, and bounds.

Every fit minimises squared *log* residuals, log y - log f(x): the quantities are positive and span
decades, seed noise is multiplicative, and in logs a pure power law is a straight line, so lmfit's
answer equals ordinary least squares on log-log axes. AIC/BIC of different laws compare the same data.

    fit(x, y, law="power" | "saturating" | "offset", weights=None, n_boot=0, seed=0)  -> LawFit
    fit_joint(n, p, y, ...)                                                            -> LawFit
    fit_many([(law, xs, y, weights, seed, level), ...], n_boot)                        -> [LawFit]
    select(fits), holdout(...), holdout_refits(...), solve_for_x(fit, target)

Point fits: the minima of all curves of one law are found together by a numpy Levenberg-Marquardt
(refit_many); lmfit starts at each, confirms and polishes it, and reports the standard errors,
AIC and BIC. Bootstrap over seeds: the values at each distinct x (each N, or each (N, P) for the
joint law) are resampled with replacement, so the design stays fixed and only seed-to-seed
variation enters; every resample is refitted at once by the same Levenberg-Marquardt started at
the point estimate (1,000 lmfit calls per curve would take seconds; see benchmarks/RESULTS-fit.md).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import lmfit
import numpy as np
from scipy import special

# ---------------------------------------------------------------- the laws

def power_law(x, a, b):
    """y = a · x^(-b)"""
    return a * x ** -b


def power_inner(xs, log_xs, log_a, b):
    """f and its gradient in (log a, b), for the vectorised LM (see refit_many)"""
    term = np.exp(log_a - b * log_xs[0])
    return term, [term, -log_xs[0] * term]


def guess_power(x, y) -> dict:
    """Start from the least-squares line log y = log a - b log x."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return {"a": math.exp(intercept), "b": -slope}


def saturating_law(x, a, b, c):
    """y = a · x^(-b) + c, with c ≥ 0: a floor that no amount of x removes"""
    return a * x ** -b + c


def saturating_inner(xs, log_xs, log_a, b, c):
    term = np.exp(log_a - b * log_xs[0])
    return term + c, [term, -log_xs[0] * term, np.ones_like(term)]


def guess_saturating(x, y) -> dict:
    """A floor of a quarter of the smallest y, then the log-log line through what is left.
    (Starting c exactly at its bound 0 would stall lmfit's bounded parameter.)"""
    c = 0.25 * np.min(y)
    start = guess_power(x, y - c)
    return start | {"b": max(start["b"], 1e-3), "c": c}


def offset_law(x, a, b, x0):
    """y = a · (x + x0)^(-b), with x0 > -min(x): a power law whose small-x end is shifted.
    Finite-size corrections look like this, e.g. exact Bayesian linear regression has
    EU ≈ d / (2 (N - d - 1)), an exact power law in N - d - 1 with exponent 1."""
    return a * (x + x0) ** -b


def offset_inner(xs, log_xs, log_a, b, x0):
    shifted = xs[0] + x0
    log_shifted = np.log(shifted)
    term = np.exp(log_a - b * log_shifted)
    return term, [term, -log_shifted * term, -b * term / shifted]


def guess_offset(x, y) -> dict:
    return guess_power(x, y) | {"x0": 0.0}


def joint_law(n, p, E, A, alpha, B, beta):
    """y = E + A · N^(-α) + B · P^(-β): data and model size each remove their own part"""
    return E + A * n ** -alpha + B * p ** -beta


def joint_inner(xs, log_xs, E, log_A, alpha, log_B, beta):
    (log_n, log_p) = log_xs
    data, model = np.exp(log_A - alpha * log_n), np.exp(log_B - beta * log_p)
    return E + data + model, [np.ones_like(data), data, -log_n * data, model, -log_p * model]


def guess_joint(n, p, y) -> dict:
    """A floor of a quarter of the smallest y; exponents from the plane log(y - E) ~ log N + log P;
    A and B each explain half of what is above the floor."""
    floor = 0.25 * np.min(y)
    design = np.column_stack([np.ones_like(n), np.log(n), np.log(p)])
    _, slope_n, slope_p = np.linalg.lstsq(design, np.log(y - floor), rcond=None)[0]
    alpha, beta = (float(np.clip(-s, 0.05, 5)) for s in (slope_n, slope_p))
    above = np.mean(y - floor)
    return {"E": floor, "A": 0.5 * above / np.mean(n ** -alpha), "alpha": alpha,
            "B": 0.5 * above / np.mean(p ** -beta), "beta": beta}


@dataclass(frozen=True)
class Law:
    function: Callable
    inner: Callable  # (xs, log xs, *parameters with `scales` as logs) -> (f, its gradient): refit_many's model
    guess: Callable
    bounds: Callable  # (*xs) -> {parameter: (min, max)}; may depend on the data (offset's x0)
    exponents: tuple[str, ...]  # the parameters reported as exponents
    independent: tuple[str, ...] = ("x",)
    scales: tuple[str, ...] = ()  # amplitudes (bounds 0, inf), moved as logs by the vectorised LM

    @property
    def params(self) -> tuple[str, ...]:
        return _parameters_of(self.function, len(self.independent))


@functools.lru_cache(maxsize=None)
def _parameters_of(function, skip: int) -> tuple[str, ...]:
    # cached: inspect.signature takes ~30 µs, and the fits ask for a law's parameters thousands of times
    return tuple(inspect.signature(function).parameters)[skip:]


LAWS = {
    "power": Law(power_law, power_inner, guess_power,
                 lambda x: {"a": (0, np.inf), "b": (-10, 10)}, ("b",), scales=("a",)),  # b < 0: a rising curve, a finding
    "saturating": Law(saturating_law, saturating_inner, guess_saturating,
                      lambda x: {"a": (0, np.inf), "b": (0, 10), "c": (0, np.inf)}, ("b",), scales=("a",)),
    "offset": Law(offset_law, offset_inner, guess_offset,
                  lambda x: {"a": (0, np.inf), "b": (0, 10), "x0": (-0.9 * np.min(x), 10 * np.max(x))}, ("b",),
                  scales=("a",)),
    "joint": Law(joint_law, joint_inner, guess_joint,
                 lambda n, p: {"E": (0, np.inf), "A": (0, np.inf), "alpha": (0, 10), "B": (0, np.inf), "beta": (0, 10)},
                 ("alpha", "beta"), independent=("n", "p"), scales=("A", "B")),
}
CURVE_LAWS = ("power", "saturating", "offset")  # the laws tried on a one-variable curve, simplest first


def _in_logs(function):
    """The law's logarithm, with the law's own signature, so lmfit sees the same parameters."""
    @functools.wraps(function)
    def log_function(*args, **kwargs):
        return np.log(function(*args, **kwargs))
    return log_function


@functools.lru_cache(maxsize=None)
def model(name: str) -> lmfit.Model:
    """The lmfit Model of log f for the named law."""
    law = LAWS[name]
    return lmfit.Model(_in_logs(law.function), independent_vars=list(law.independent))


# ---------------------------------------------------------------- the result

@dataclass
class LawFit:
    law: str
    values: dict[str, float]
    stderr: dict[str, float | None]  # None: lmfit could not estimate the covariance ("unavailable")
    ci: dict[str, tuple[float, float] | None]  # at `level`; see ci_method
    ci_method: str = "unavailable"  # "bootstrap" (percentile), "stderr" (t interval) or "unavailable"
    level: float = 0.95
    n_points: int = 0
    n_dropped: int = 0  # non-finite or non-positive values left out
    ok: bool = True
    message: str = ""
    aic: float = float("nan")
    bic: float = float("nan")
    flags: list[str] = field(default_factory=list)
    lack_of_fit_p: float | None = None  # F-test of the law against the scatter of seeds at each x
    residual_sd: float = float("nan")  # of log residuals: the seed scatter a new run adds
    boot: np.ndarray | None = None  # (R, parameters) bootstrap refits
    seed: int = 0
    xs: tuple = ()  # the finite data the law was fitted to, and its weights
    y: np.ndarray | None = None
    w: np.ndarray | None = None

    def predict(self, *xs):
        return LAWS[self.law].function(*(np.asarray(x, dtype=float) for x in xs), **self.values)

    def draws(self, *xs) -> np.ndarray:
        """The law at xs under every bootstrap refit: (R, len(x))."""
        xs = [np.atleast_1d(np.asarray(x, dtype=float)) for x in xs]
        columns = [self.boot[:, [j]] for j in range(self.boot.shape[1])]
        return LAWS[self.law].function(*xs, *columns)

    def band(self, *xs, kind: str = "confidence", m: int = 1):
        """(lower, upper) at `level` for the law itself ("confidence"), or for the mean of m new
        seeds ("prediction": adds the seed scatter, σ/√m in logs); None without a bootstrap."""
        if self.boot is None:
            return None
        logs = np.log(self.draws(*xs))  # (R, len(x))
        if kind == "prediction":
            rng = np.random.default_rng(self.seed + 1)
            logs = logs + rng.normal(0, self.residual_sd / math.sqrt(m), logs.shape)
        tail = 100 * (1 - self.level) / 2
        # nanpercentile handles a column at a time; draws are finite unless a refit overflows
        percentile = np.percentile if np.isfinite(logs).all() else np.nanpercentile
        lower, upper = percentile(logs, [tail, 100 - tail], axis=0)
        return np.exp(lower), np.exp(upper)


def unfit(law: str, n_points: int, n_dropped: int, message: str) -> LawFit:
    return LawFit(law, {}, {}, {}, n_points=n_points, n_dropped=n_dropped, ok=False, message=message)


# ---------------------------------------------------------------- fitting

def fit(x, y, law: str = "power", weights=None, n_boot: int = 0, seed: int = 0, level: float = 0.95) -> LawFit:
    """Fit y against x with the named law (see LAWS). `weights` multiply the log residuals.
    n_boot > 0 adds percentile intervals from a bootstrap over the seeds at each x.
    Too few usable points gives ok=False with the reason, not an exception."""
    if law not in LAWS or LAWS[law].independent != ("x",):
        allowed = [name for name in LAWS if LAWS[name].independent == ("x",)]
        raise ValueError(f"unknown law {law!r}; allowed: {', '.join(allowed)} (joint: use fit_joint)")
    return fit_many([(law, [x], y, weights, seed, level)], n_boot)[0]


def fit_joint(n, p, y, weights=None, n_boot: int = 0, seed: int = 0, level: float = 0.95) -> LawFit:
    """Fit y = E + A·N^(-α) + B·P^(-β); the bootstrap resamples seeds within each (N, P)."""
    return fit_many([("joint", [n, p], y, weights, seed, level)], n_boot)[0]


def fit_many(jobs, n_boot: int = 0) -> list[LawFit]:
    """`fit` of many curves at once; each job is (law, xs, y, weights, seed, level). The minimum of
    every curve is found by one vectorised Levenberg-Marquardt call per law and number of points
    (refit_many, started at the law's guess, as lmfit would be); lmfit.minimize then starts there,
    checks that it is a minimum, polishes it to its own tolerance and reports the standard errors,
    AIC and BIC. Started at the minimum, lmfit needs ~k+5 evaluations instead of ~50-150 from the
    guess. Each curve's answer is the same as when it is fitted alone."""
    prepared = [_prepare(*job) for job in jobs]
    batches: dict[tuple, list[int]] = {}
    for i, job in enumerate(prepared):
        if isinstance(job, _Problem):
            batches.setdefault((job.law, len(job.y)), []).append(i)
    for (name, _), members in batches.items():
        problems = [prepared[i] for i in members]
        xs = [np.stack([p.xs[j] for p in problems]) for j in range(len(LAWS[name].independent))]
        start, low, high = (np.stack(v) for v in zip(*(p.start_and_bounds() for p in problems)))
        minima = refit_many(LAWS[name], xs, np.stack([p.y for p in problems]), np.stack([p.w for p in problems]),
                            start, low, high, POINT_ITERATIONS, np.arange(len(problems)), POINT_PLATEAU)
        for i, minimum in zip(members, minima):
            prepared[i] = _polish(prepared[i], minimum)
    if n_boot > 0:
        bootstrap_many([out for out in prepared if out.xs], n_boot)
    return prepared


@dataclass
class _Problem:
    """A curve ready to fit: finite data, the law's starting guess and bounds."""
    law: str
    xs: list
    y: np.ndarray
    w: np.ndarray
    dropped: int
    seed: int
    level: float
    guess: dict
    bounds: dict

    def start_and_bounds(self):
        params = LAWS[self.law].params
        low, high = (np.array([self.bounds[p][i] for p in params], dtype=float) for i in (0, 1))
        return np.clip([self.guess[p] for p in params], low, high), low, high


def _prepare(name, xs, y, weights, seed, level) -> _Problem | LawFit:
    law = LAWS[name]
    xs, y, w, dropped = _finite(xs, y, weights)
    k = len(law.params)
    need = k + 1  # one degree of freedom left, or there is no error to estimate
    distinct = len(np.unique(np.column_stack(xs), axis=0))
    if len(y) < need:
        return unfit(name, len(y), dropped, f"need at least {need} finite points, got {len(y)}")
    if distinct < k:
        return unfit(name, len(y), dropped, f"need at least {k} distinct x values, got {distinct}")
    return _Problem(name, xs, y, w, dropped, seed, level, law.guess(*xs, y), law.bounds(*xs))


def _polish(problem: _Problem, minimum: np.ndarray) -> LawFit:
    """lmfit from the vectorised minimum: the point estimate, its standard errors, AIC and BIC."""
    name, xs, y, w, k = problem.law, problem.xs, problem.y, problem.w, len(minimum)
    law = LAWS[name]
    # A list of Parameters rather than lmfit.Parameters: lmfit then builds its one copy itself
    # instead of deep-copying ours (0.5 ms of a ~2 ms call).
    params = [lmfit.Parameter(p, value=float(np.clip(v, *problem.bounds[p])), min=problem.bounds[p][0],
                              max=problem.bounds[p][1]) for p, v in zip(law.params, minimum)]
    try:
        result = lmfit.minimize(_log_residual(law, xs, np.log(y), w), params, method="leastsq")
    except ValueError as exc:  # lmfit refuses NaN from a wandering parameter
        return unfit(name, len(y), problem.dropped, f"fit failed: {exc}")
    values = {p: float(v.value) for p, v in result.params.items()}
    perfect = result.chisqr <= 1e-20 * len(y)  # no residual, no noise to scale a covariance by
    stderr = {p: None if perfect else _usable(v.stderr) for p, v in result.params.items()}
    out = LawFit(name, values, stderr, {}, level=problem.level, n_points=len(y), n_dropped=problem.dropped,
                 ok=bool(result.success), message="" if result.success else result.message,
                 aic=float(result.aic), bic=float(result.bic), seed=problem.seed, xs=tuple(xs), y=y, w=w,
                 residual_sd=float(np.sqrt(result.chisqr / max(len(y) - k, 1))))
    out.lack_of_fit_p = _lack_of_fit(xs, np.log(y), result.residual / w, k)
    out.ci, out.ci_method = _stderr_intervals(stderr, values, len(y) - k, problem.level)
    out.flags = _flags(out, problem.bounds)
    return out


def _log_residual(law: Law, xs, logy, w):
    """The residual lmfit.Model(log f).fit minimises, (log y - log f)·w, computed with the same
    floating-point operations but without Model's per-call overhead (argument matching, coercion),
    so lmfit.minimize takes the same steps and returns the same parameters, errors and AIC."""
    names = law.params

    def residual(params):
        fitted = np.log(law.function(*xs, *(params[p].value for p in names)))
        if not np.all(np.isfinite(fitted)):
            raise ValueError("The model function generated NaN values and the fit aborted! Please check "
                             "your model function and/or set boundaries on parameters where applicable. "
                             "In cases like this, using \"nan_policy='omit'\" will probably not work.")
        diff = logy - fitted
        diff *= w
        return diff
    return residual


def _finite(xs, y, weights):
    xs = [np.asarray(x, dtype=float).ravel() for x in xs]
    y = np.asarray(y, dtype=float).ravel()
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float).ravel()
    usable = np.isfinite(y) & (y > 0) & np.isfinite(w) & (w > 0)
    for x in xs:
        usable &= np.isfinite(x) & (x > 0)
    return [x[usable] for x in xs], y[usable], w[usable], int((~usable).sum())


def _usable(stderr) -> float | None:
    """lmfit's standard error, or None when it is missing, infinite or exactly zero (a perfect or
    degenerate fit has no estimable covariance; a zero would read as certainty)."""
    if stderr is None or not math.isfinite(stderr) or stderr <= 0:
        return None
    return float(stderr)


def _stderr_intervals(stderr, values, dof, level):
    t = special.stdtrit(max(dof, 1), 0.5 + level / 2)  # = stats.t.ppf, without its ~0.15 ms of checks
    ci = {p: None if s is None else (values[p] - t * s, values[p] + t * s) for p, s in stderr.items()}
    return ci, "stderr" if any(v is not None for v in ci.values()) else "unavailable"


def _lack_of_fit(xs, logy, residual, k) -> float | None:
    """p-value of the classical lack-of-fit F-test: is the scatter around the law larger than the
    scatter between seeds at the same x? Small p: the law's shape is wrong, and intervals that
    only know seed noise are too narrow for extrapolation."""
    _, group = np.unique(np.column_stack(xs), axis=0, return_inverse=True)
    group = group.ravel()
    means = np.bincount(group, logy) / np.bincount(group)
    pure = float(np.sum((logy - means[group]) ** 2))
    dof_pure, dof_lof = len(logy) - group.max() - 1, group.max() + 1 - k
    if dof_pure <= 0 or dof_lof <= 0 or pure <= 0:
        return None
    lack = max(float(np.sum(residual ** 2)) - pure, 0.0)
    return float(special.fdtrc(dof_lof, dof_pure, (lack / dof_lof) / (pure / dof_pure)))  # = stats.f.sf


def _flags(out: LawFit, bounds) -> list[str]:
    flags = []
    for name in LAWS[out.law].exponents:
        value = out.values[name]
        for bound in bounds[name]:
            if math.isfinite(bound) and abs(value - bound) <= 1e-4 * (1 + abs(bound)):
                flags.append(f"{name} at bound {bound:g}")
    if out.lack_of_fit_p is not None and out.lack_of_fit_p < 0.01:
        flags.append(f"lack of fit (p={out.lack_of_fit_p:.2g})")
    return flags


def trend(out: LawFit) -> str:
    """'falling', 'flat' or 'rising' from the power-law exponent and its interval. A flat or rising
    curve is a finding about the method (uncertainty that does not shrink with data), not an error."""
    if not out.ok:
        return "unknown"
    b = out.values[LAWS[out.law].exponents[0]]
    low, high = out.ci.get(LAWS[out.law].exponents[0]) or (b, b)
    if abs(b) < 0.01:  # a tenfold x changes y by under 2.3%
        return "flat"
    if low > 0:
        return "falling"
    return "rising" if high < 0 else "flat"


# ---------------------------------------------------------------- bootstrap

def bootstrap(out: LawFit, n_boot: int = 1000) -> LawFit:
    """Resample seeds within each x, refit every resample at once, keep percentile intervals.
    Deterministic: the resamples come from numpy's generator seeded with out.seed."""
    return bootstrap_many([out], n_boot)[0]


def bootstrap_many(outs: list[LawFit], n_boot: int = 1000) -> list[LawFit]:
    """`bootstrap` of many fits at once: the resamples of every fit of the same law (and number of
    distinct x) are refitted in one vectorised Levenberg-Marquardt call. Each row of that call is
    independent of the others, so every fit gets the same resamples and refits as on its own."""
    jobs = [(out, _resamples(out, n_boot)) for out in outs]
    batches: dict[tuple, list] = {}
    for out, job in jobs:
        if job is not None and out.law != "power":
            batches.setdefault((out.law, job[1].shape[1]), []).append((out, job))
    for (name, _), batch in batches.items():
        law = LAWS[name]
        rows = [len(job[1]) for _, job in batch]
        xs = [np.concatenate([np.broadcast_to(job[0][i], job[1].shape) for _, job in batch])
              for i in range(len(law.independent))]
        Y, W = (np.concatenate([job[j] for _, job in batch]) for j in (1, 2))
        start, low, high = (np.concatenate([np.broadcast_to(v, (r, len(law.params)))
                                            for v, r in zip(column, rows)])
                            for column in zip(*(_start_and_bounds(out) for out, _ in batch)))
        boot = refit_many(law, xs, Y, W, start, low, high, BOOT_ITERATIONS, np.repeat(np.arange(len(rows)), rows),
                          BOOT_PLATEAU)
        for (out, _), part in zip(batch, np.split(boot, np.cumsum(rows)[:-1])):
            _keep_boot(out, part)
    for out, job in jobs:
        if job is not None and out.law == "power":
            _keep_boot(out, _refit(out, *job))
    return outs


def _resamples(out: LawFit, n_boot: int):
    """(xs, Y, W) of every resample, one weighted point per distinct x; None (and a flag) when no x
    has two seeds to resample."""
    rng = np.random.default_rng(out.seed)
    _, group = np.unique(np.column_stack(out.xs), axis=0, return_inverse=True)
    group = group.ravel()
    if np.bincount(group).max() < 2:
        out.flags.append("bootstrap needs 2+ seeds at some x; intervals from lmfit's errors")
        return None
    # Least squares in logs depends on the points at one x only through their weighted mean
    # (Σ w²(log y - log f)² = Σ_x W (mean - log f)² + const), so each resample is refitted on one
    # point per x: the same answer, several times fewer points.
    w2, logy = out.w ** 2, np.log(out.y)
    sums, logs, first = np.empty((n_boot, group.max() + 1)), np.empty((n_boot, group.max() + 1)), []
    for g in range(group.max() + 1):
        members = np.flatnonzero(group == g)
        drawn = members[rng.integers(0, len(members), (n_boot, len(members)))]  # which seeds stand in
        sums[:, g] = w2[drawn].sum(axis=1)
        logs[:, g] = (w2[drawn] * logy[drawn]).sum(axis=1)
        first.append(members[0])
    return [x[first] for x in out.xs], np.exp(logs / sums), np.sqrt(sums)


def _keep_boot(out: LawFit, boot: np.ndarray) -> None:
    out.boot = boot[np.all(np.isfinite(boot), axis=1)]
    tail = 100 * (1 - out.level) / 2
    lower, upper = np.percentile(out.boot, [tail, 100 - tail], axis=0)
    out.ci = {p: (float(lower[j]), float(upper[j])) for j, p in enumerate(LAWS[out.law].params)}
    out.ci_method = "bootstrap"


def _start_and_bounds(out: LawFit):
    law = LAWS[out.law]
    bounds = law.bounds(*out.xs)
    low, high = (np.array([bounds[p][i] for p in law.params]) for i in (0, 1))
    return np.array([out.values[p] for p in law.params]), low, high


def _refit(out: LawFit, xs, Y, W) -> np.ndarray:
    """Every resample's parameters, (R, parameters), by the same estimator lmfit used."""
    if out.law == "power":  # a straight line in logs: weighted least squares, exactly, all rows at once
        design = np.column_stack([np.ones_like(xs[0]), -np.log(xs[0])])  # (n, 2)
        lhs = np.einsum("rn,ni,nj->rij", W ** 2, design, design)
        rhs = np.einsum("rn,ni,rn->ri", W ** 2, design, np.log(Y))
        log_a, b = np.linalg.solve(lhs, rhs[..., None])[..., 0].T
        return np.column_stack([np.exp(log_a), b])
    return refit_many(LAWS[out.law], xs, Y, W, *_start_and_bounds(out), BOOT_ITERATIONS, plateau=BOOT_PLATEAU)


def refit_many(law: Law, xs, Y, W, start, low, high, iterations: int = 100, segments=None,
               plateau: float | None = None) -> np.ndarray:
    """Levenberg-Marquardt on log residuals for every row of Y at once: (R, n) -> (R, parameters).
    Hand-written because lmfit (MINPACK) fits one curve per call, ~2-10 ms each, and a report needs
    hundreds of thousands of fits (every bootstrap resample of every curve).

    Amplitudes (law.scales) are moved as logarithms: a·x^(-b) = exp(log a - b·log x) turns the
    curved a-b valley of a power law into a straight one, which Gauss-Newton crosses in a step or
    two instead of crawling along it (the minimum is the same: a > 0 either way). Damping follows
    Nielsen's rule (Madsen, Nielsen & Tingleff 2004, "Methods for non-linear least squares",
    eq. 2.21). Steps are projected onto the bounds; a parameter at a bound that the gradient
    pushes further out is held there.

    xs, start, low and high may be shared by every row ((n,) and (k,)) or given per row ((R, n) and
    (R, k)): rows never interact, so many curves' resamples can go through one call. `segments`
    (R,) says which curve each row belongs to; where one row's step is singular, all rows of its
    curve take the pseudo-inverse step, exactly as when that curve is refitted alone."""
    R, k = Y.shape[0], len(law.params)
    logs = np.array([p in law.scales for p in law.params])
    with np.errstate(divide="ignore"):
        inner = [np.where(logs, np.log(np.clip(v, _TINY, _HUGE)), v)
                 for v in (np.broadcast_to(np.asarray(v, dtype=float), (R, k)) for v in (start, low, high))]
    xs = [np.broadcast_to(np.asarray(x, dtype=float), Y.shape) for x in xs]
    rows = _Rows(law, xs, [np.log(x) for x in xs], np.log(Y), np.asarray(W, dtype=float), *inner,
                 np.zeros(R, dtype=int) if segments is None else np.asarray(segments))
    out = np.empty((R, k))
    for iteration in range(1, iterations + 1):
        done = rows.step(plateau if plateau is not None and iteration % PLATEAU_STEPS == 0 else None)
        out[rows.index[done]] = rows.u[done]
        rows.keep(~done)
        if len(rows.index) == 0:
            break
    out[rows.index] = rows.u
    out[:, logs] = np.exp(out[:, logs])
    return out


# How refit_many stops (see _Rows.step): a step under STEP_TOL relative, an accepted step whose
# actual and predicted fall in cost are under COST_TOL of the cost (MINPACK's tests; lmfit's
# defaults are 1.5e-8 for both), no step helping at any damping, a cost that fell by under
# `plateau` of itself in PLATEAU_STEPS steps, or the iteration cap. Bootstrap rows: 100 steps and
# a plateau of 1e-6; point fits: 500 steps and 1e-8 (lmfit stops at 1.5e-8 in one step), so
# that lmfit, started there, agrees in a few evaluations (a curve still creeping after 500 steps,
# in the benchmark only one whose laws the data do not determine, is left to lmfit from there:
# one row alone costs more per step here than in lmfit).
STEP_TOL, COST_TOL, PLATEAU_STEPS = 1e-8, 1e-10, 10
BOOT_ITERATIONS, BOOT_PLATEAU = 100, 1e-6
POINT_ITERATIONS, POINT_PLATEAU = 500, 1e-8
START_DAMPING = 1e-5
CHOLESKY_ROWS = 256
_TINY, _HUGE = 1e-300, 1e300  # an amplitude's log stays finite at the bounds 0 and inf


class _Rows:
    """The rows refit_many is still moving, packed together so every array operation touches only
    them; finished rows are dropped (keep) instead of masked, which would cost as much as moving.
    The Cholesky solver is used where every curve (segment) has CHOLESKY_ROWS rows or more: a
    choice by curve, not by call, so that a curve's rows take the same arithmetic whatever else
    is in the call."""

    def __init__(self, law, xs, log_xs, logY, W, u, low, high, segments):
        self.law, self.logs = law, np.array([p in law.scales for p in law.params])
        self.xs, self.log_xs, self.logY, self.W = xs, log_xs, logY, W
        self.u, self.low, self.high, self.segments = u.copy(), low, high, segments
        self.index = np.arange(len(u))
        self.cholesky = len(u) > 0 and np.unique(segments, return_counts=True)[1].min() >= CHOLESKY_ROWS
        self.r, self.J = self.residual_and_jacobian(self.u)
        self.cost = np.sum(self.r ** 2, axis=1)
        self.checkpoint = self.cost.copy()
        self.damping, self.growth = np.full(len(u), START_DAMPING), np.full(len(u), 2.0)

    def residual_and_jacobian(self, u):
        f, gradient = self.law.inner(self.xs, self.log_xs, *(u[:, [j]] for j in range(u.shape[1])))
        J = np.empty(f.shape + (len(gradient),))  # d r / d u: (R, n, k), filled a column at a time
        with np.errstate(all="ignore"):
            r = self.W * (self.logY - np.log(f))
            scale = -self.W / f
            for j, column in enumerate(gradient):
                np.multiply(column, scale, out=J[..., j])
        return r, J

    def step(self, plateau: float | None) -> np.ndarray:
        """One damped step for every row; returns the rows that are finished."""
        descent = -(self.r[:, None, :] @ self.J)[:, 0, :]  # -Jᵀr: (R, k)
        JtJ = self.J.transpose(0, 2, 1) @ self.J  # (R, k, k)
        step = _damped_step(JtJ, descent, self.damping, self.u, self.low, self.high, self.segments, self.cholesky)
        trial = np.clip(self.u + step, self.low, self.high)
        taken = trial - self.u
        # The fall in cost the linear model predicts: |r|² - |r + J h|² = 2 h·(-Jᵀr) - h·JᵀJ h
        predicted = 2 * np.sum(taken * descent, axis=1) - np.sum(taken * (JtJ @ taken[..., None])[..., 0], axis=1)
        r_new, J_new = self.residual_and_jacobian(trial)
        cost_new = np.sum(r_new ** 2, axis=1)
        actual = self.cost - cost_new
        better = np.isfinite(cost_new) & (actual > 0)
        with np.errstate(all="ignore"):  # how well the linear model predicted the fall in cost
            gain = np.clip(np.nan_to_num(actual / predicted), 0, 1)
        self.damping = np.where(better, self.damping * np.maximum(1 / 3, 1 - (2 * gain - 1) ** 3),
                                self.damping * self.growth)
        self.growth = np.where(better, 2.0, 2 * self.growth)
        # Stop where nothing an interval could show still changes (see STEP_TOL).
        scale = np.where(self.logs, 1.0, np.abs(self.u) + 1e-300)
        done = np.all(np.abs(taken) <= STEP_TOL * scale, axis=1)
        done |= better & (actual <= COST_TOL * self.cost) & (np.abs(predicted) <= COST_TOL * self.cost)
        done |= ~better & (self.damping > 1e12)
        for kept, new, where in ((self.u, trial, better[:, None]), (self.r, r_new, better[:, None]),
                                 (self.J, J_new, better[:, None, None]), (self.cost, cost_new, better)):
            np.copyto(kept, new, where=where)
        if plateau is not None:
            # Rows of curves whose parameters the data determine converge in ~5-30 steps, before
            # this can trigger (on the benchmark store their intervals equal a 3000-step run's).
            # Rows still creeping after that are in a direction the data do not pin down (a flat
            # curve fitted with an exponent: the minimum may lie far off, at a bound), where any
            # stopping point is as arbitrary as the 100-step cap alone; this stops them sooner.
            done |= self.checkpoint - self.cost <= plateau * self.cost
            self.checkpoint = self.cost.copy()
        return done

    def keep(self, rows: np.ndarray) -> None:
        if rows.all():
            return
        for name in ("u", "low", "high", "segments", "index", "r", "J", "cost", "checkpoint", "damping",
                     "growth", "logY", "W"):
            setattr(self, name, getattr(self, name)[rows])
        self.xs, self.log_xs = [x[rows] for x in self.xs], [x[rows] for x in self.log_xs]


def _damped_step(JtJ, descent, damping, theta, low, high, segments, cholesky):
    """Marquardt's step, scaled by the diagonal of JᵀJ so that parameters of any size move alike,
    and kept inside the bounds. A parameter at a bound that the gradient pushes further out is held
    there; one whose step would cross a bound stops on it, and the others' step is solved again
    with it there (a clipped step alone is often worse than none, and the damping then grows for
    several iterations before anything moves)."""
    held = ((theta <= low) & (descent < 0)) | ((theta >= high) & (descent > 0))
    step = _solve_free(JtJ, descent, damping, ~held, segments, cholesky)
    crossing = ~held & ((theta + step < low) | (theta + step > high))
    again = np.flatnonzero(crossing.any(axis=1))
    if len(again):
        to_bound = np.where(crossing[again], np.clip(theta[again] + step[again], low[again], high[again]) - theta[again], 0.0)
        rhs = descent[again] - (JtJ[again] @ to_bound[..., None])[..., 0]
        free = ~held[again] & ~crossing[again]
        step[again] = _solve_free(JtJ[again], rhs, damping[again], free, segments[again], cholesky) + to_bound
    return step


def _solve_free(JtJ, descent, damping, free, segments, cholesky):
    """(JᵀJ + damping·diag(JᵀJ)) step = descent over the free parameters; the others do not move.
    Where that matrix is singular in a row (a parameter with no effect), every row of that row's
    curve takes the pseudo-inverse step, exactly as when the curve is refitted alone."""
    k = JtJ.shape[2]
    if free.all():
        lhs, rhs = JtJ.copy(), descent
    else:
        weight = free.astype(float)
        lhs, rhs = JtJ * weight[:, :, None] * weight[:, None, :], descent * weight
    scale = np.diagonal(lhs, axis1=1, axis2=2)
    scale = np.maximum(scale, 1e-12 * scale.max(axis=1, keepdims=True) + 1e-30)
    lhs[:, range(k), range(k)] += damping[:, None] * scale
    if not (np.isfinite(lhs).all() and np.isfinite(rhs).all()):
        lhs, rhs = np.nan_to_num(lhs), np.nan_to_num(rhs)
    step, singular = _cholesky_solve(lhs, rhs) if cholesky else _lapack_solve(lhs, rhs)
    if singular.any():
        singular = np.isin(segments, segments[singular])
        step[singular] = (np.linalg.pinv(lhs[singular]) @ rhs[singular][..., None])[..., 0]
    return step


def _lapack_solve(A, b):
    """np.linalg.solve row by row (one LAPACK call per matrix), and the rows where it is singular.
    The rows that are not keep LAPACK's answer whatever else is in the batch."""
    try:
        return np.linalg.solve(A, b[..., None])[..., 0], np.zeros(len(A), dtype=bool)
    except np.linalg.LinAlgError:  # singular somewhere: solve the others alone
        x, singular = np.zeros_like(b), np.zeros(len(A), dtype=bool)
        for i in range(len(A)):
            try:
                x[i] = np.linalg.solve(A[i], b[i])
            except np.linalg.LinAlgError:
                singular[i] = True
        return x, singular


def _cholesky_solve(A, b):
    """Solve A x = b for a stack of small symmetric positive definite matrices, (R, k, k) and (R, k),
    by Cholesky with the loops over k (at most 5) and the arithmetic across all R rows at once.
    Hand-written because np.linalg.solve calls LAPACK once per 3x3 or 5x5 matrix, and for
    thousands of rows that cost as much as the rest of an LM step (this is 2-3x faster from a few
    hundred rows; below, its Python loop costs more: see CHOLESKY_ROWS). Returns x and the rows
    whose factorisation broke down (a pivot that is not positive: the matrix is singular there)."""
    k = A.shape[1]
    A, b = np.ascontiguousarray(A.transpose(1, 2, 0)), np.ascontiguousarray(b.T)  # each entry an (R,) run
    L = [[None] * k for _ in range(k)]
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(k):
            pivot = A[j, j] - sum((L[j][m] ** 2 for m in range(j)), np.zeros_like(A[j, j]))
            L[j][j] = np.sqrt(np.maximum(pivot, 0))
            for i in range(j + 1, k):
                L[i][j] = (A[i, j] - sum((L[i][m] * L[j][m] for m in range(j)), np.zeros_like(A[i, j]))) / L[j][j]
        y = [None] * k
        for i in range(k):  # L y = b
            y[i] = (b[i] - sum((L[i][m] * y[m] for m in range(i)), np.zeros_like(b[i]))) / L[i][i]
        x = [None] * k
        for i in reversed(range(k)):  # Lᵀ x = y
            x[i] = (y[i] - sum((L[m][i] * x[m] for m in range(i + 1, k)), np.zeros_like(y[i]))) / L[i][i]
    x = np.stack(x, 1)
    singular = ~np.all(np.stack([L[j][j] for j in range(k)], 1) > 0, axis=1) | ~np.all(np.isfinite(x), axis=1)
    return x, singular


# ---------------------------------------------------------------- using the fits

def select(fits: dict[str, LawFit], criterion: str = "aic") -> str | None:
    """The law with the lowest AIC (or BIC); a law with more parameters must beat a simpler one by
    more than 2 (Burnham & Anderson's 'substantial support') to be chosen. None if nothing fitted."""
    fitted = sorted((f for f in fits.values() if f.ok), key=lambda f: len(f.values))
    best = None
    for candidate in fitted:
        if best is None or getattr(candidate, criterion) < getattr(best, criterion) - 2:
            best = candidate
    return None if best is None else best.law


def solve_for_x(out: LawFit, target: float):
    """Smallest x at which the law predicts y ≤ target: (value, lower, upper, note). inf when the
    law never gets there (saturates above the target, or does not fall)."""
    values = {p: np.atleast_1d(v) for p, v in out.values.items()}
    point = float(_solve(out.law, values, target)[0])
    interval = (None, None)
    if out.boot is not None:
        columns = {p: out.boot[:, j] for j, p in enumerate(LAWS[out.law].params)}
        tail = (1 - out.level) / 2
        # inverted_cdf: no interpolation between a finite x and inf
        interval = tuple(float(np.quantile(_solve(out.law, columns, target), q, method="inverted_cdf"))
                         for q in (tail, 1 - tail))
    return point, *interval, _never_note(out, target) if math.isinf(point) else ""


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


def holdout(xs, y, law: str, drop: int = 0, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> Holdout | None:
    """Refit without the largest value of xs[drop] and predict the points left out. For several
    held-out points (the joint law), the worst relative error is reported and all must be inside."""
    split = holdout_refit(xs, y, law, drop, seed, level)
    if split is None:
        return None
    if split[0].ok and n_boot > 0:
        bootstrap(split[0], n_boot)
    return holdout_check(*split)


def holdout_refit(xs, y, law: str, drop: int = 0, seed: int = 0, level: float = 0.95):
    """The first half of `holdout`: (refit without the largest xs[drop], held-out xs, held-out y,
    largest xs[drop]), not yet bootstrapped (so that many refits can go through `bootstrap_many`
    together); None when no point is usable."""
    return holdout_refits([(xs, y, law, drop, seed, level)])[0]


def holdout_refits(specs) -> list:
    """`holdout_refit` of many (xs, y, law, drop, seed, level) at once, through `fit_many`."""
    splits = [_holdout_split(*spec) for spec in specs]
    fitted = iter(fit_many([split[0] for split in splits if split is not None]))
    return [None if split is None else (next(fitted), *split[1:]) for split in splits]


def _holdout_split(xs, y, law, drop, seed, level):
    xs = [np.asarray(x, dtype=float) for x in xs]
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(y) & (y > 0) & np.all([np.isfinite(x) for x in xs], axis=0)
    xs, y = [x[keep] for x in xs], y[keep]
    if len(y) == 0:
        return None
    train = xs[drop] < xs[drop].max()
    job = (law, [x[train] for x in xs], y[train], None, seed, level)
    return job, [x[~train] for x in xs], y[~train], float(xs[drop].max())


def holdout_check(fitted: LawFit, xs_out, y_out, largest: float) -> Holdout:
    """The second half of `holdout`: predict the held-out points with the (bootstrapped) refit."""
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
    band = fitted.band(*key, kind="prediction", m=len(seeds))
    slack = 1e-9 * observed  # a band of zero width (a perfect fit) still holds its own prediction
    inside = None if band is None else bool(band[0][0] - slack <= observed <= band[1][0] + slack)
    return Holdout(float(key[0]), predicted, observed, (predicted - observed) / observed, inside)
