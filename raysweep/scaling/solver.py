"""A vectorised Levenberg-Marquardt for bootstrap refits: thousands of resamples of one law at once.

Only the bootstraps use it (lmfit fits one curve per call, ~2-10 ms each, and a report refits
hundreds of thousands of resamples; see benchmarks/RESULTS-fit.md). It minimises the same
squared log residuals as the point fit in lmfit; tests/test_solver.py checks each resample
against scipy.optimize.least_squares. The k x k systems (k ≤ 5) go through numpy's batched
np.linalg.solve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: laws.py imports this module's solver
    from raysweep.scaling.laws import Law


def power_wls(x, Y, W, low, high) -> np.ndarray:
    """Every row's power law a·x^(-b) by weighted least squares in logs, exactly (a straight line):
    (R, n) -> (R, 2) columns (a, b); b clipped to its bounds. Rows with fewer than two weighted x
    (a resample that drew no seed there) take the pseudo-inverse answer."""
    design = np.stack([np.ones_like(x), -np.log(x)], axis=-1)  # (R, n, 2) or (n, 2)
    design = np.broadcast_to(design, Y.shape + (2,))
    w2 = W ** 2
    lhs = np.einsum("rn,rni,rnj->rij", w2, design, design)
    rhs = np.einsum("rn,rni,rn->ri", w2, design, np.log(Y))
    solved, singular = _batched_solve(lhs, rhs)
    if singular.any():
        solved[singular] = (np.linalg.pinv(lhs[singular]) @ rhs[singular][..., None])[..., 0]
    b = np.clip(solved[:, 1], low[1], high[1])
    return np.column_stack([np.exp(solved[:, 0]), b])


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
_TINY, _HUGE = 1e-300, 1e300  # an amplitude's log stays finite at the bounds 0 and inf


class _Rows:
    """The rows refit_many is still moving, packed together so every array operation touches only
    them; finished rows are dropped (keep) instead of masked, which would cost as much as moving.
"""

    def __init__(self, law, xs, log_xs, logY, W, u, low, high, segments):
        self.law, self.logs = law, np.array([p in law.scales for p in law.params])
        self.xs, self.log_xs, self.logY, self.W = xs, log_xs, logY, W
        self.u, self.low, self.high, self.segments = u.copy(), low, high, segments
        self.index = np.arange(len(u))
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
        step = _damped_step(JtJ, descent, self.damping, self.u, self.low, self.high, self.segments)
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


def _damped_step(JtJ, descent, damping, theta, low, high, segments):
    """Marquardt's step, scaled by the diagonal of JᵀJ so that parameters of any size move alike,
    and kept inside the bounds. A parameter at a bound that the gradient pushes further out is held
    there; one whose step would cross a bound stops on it, and the others' step is solved again
    with it there (a clipped step alone is often worse than none, and the damping then grows for
    several iterations before anything moves)."""
    held = ((theta <= low) & (descent < 0)) | ((theta >= high) & (descent > 0))
    step = _solve_free(JtJ, descent, damping, ~held, segments)
    crossing = ~held & ((theta + step < low) | (theta + step > high))
    again = np.flatnonzero(crossing.any(axis=1))
    if len(again):
        to_bound = np.where(crossing[again],
                            np.clip(theta[again] + step[again], low[again], high[again]) - theta[again], 0.0)
        rhs = descent[again] - (JtJ[again] @ to_bound[..., None])[..., 0]
        free = ~held[again] & ~crossing[again]
        step[again] = _solve_free(JtJ[again], rhs, damping[again], free, segments[again]) + to_bound
    return step


def _solve_free(JtJ, descent, damping, free, segments):
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
    step, singular = _batched_solve(lhs, rhs)
    if singular.any():
        singular = np.isin(segments, segments[singular])
        step[singular] = (np.linalg.pinv(lhs[singular]) @ rhs[singular][..., None])[..., 0]
    return step


def _batched_solve(A, b):
    """numpy's batched solve of every row's k x k system, and the rows where it is singular
    (solved again one by one only then, so the others keep the batched answer)."""
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
