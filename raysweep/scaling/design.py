"""Which cells to run next: a c-optimal design for one extrapolated quantity, chosen greedily.

The target is one scalar of a fitted law: log f(x*) (the metric at N = x*), or log x* where f(x*)
= ε (the N that brings the metric down to ε). Linearised around the current fit, with J the
Jacobian of the log residuals at the design points (one row per cell: every fit here minimises
squared log residuals, laws.py) and σ² the residual variance of the fit,

    Var(target) ≈ σ² · gᵀ (JᵀJ)⁻¹ g,     g = ∂ target / ∂θ

(c-optimality: the variance of one linear combination of θ, not of θ as a whole, is what an
extrapolation's interval is made of; D-optimality would spend compute on parameters that barely
move the target). A new cell at x adds its row ∂ log f(x)/∂θ to J, so the variance after any
candidate set needs no refit and no new data. Designs are chosen greedily: at each step the move
with the largest drop in variance per unit of cost, until the cell budget is spent. Greedy is not
the optimum of the combinatorial problem, but the variance is a smooth, diminishing-returns
function of the rows added, and each step is exact given the earlier ones.

g and J are evaluated at the current estimate θ̂: a design is only as good as the fit it starts
from (for the power law J does not depend on θ at all; for the saturating and offset laws it does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from raysweep.scaling.laws import LAWS

Z95 = 1.959963984540054  # two-sided 95% normal quantile: the interval is ±Z95 sd in logs


def log_gradient(law: str, values: dict, x) -> np.ndarray:
    """∂ log f(x)/∂θ for each x: (len(x), k). Amplitudes (law.scales) are taken as logs, as the
    solver moves them; the variance of a scalar target does not depend on the parameterisation."""
    spec = LAWS[law]
    x = np.atleast_1d(np.asarray(x, dtype=float))
    params = [math.log(values[p]) if p in spec.scales else values[p] for p in spec.params]
    f, grads = spec.inner([x], [np.log(x)], *params)
    return np.column_stack([np.broadcast_to(g, x.shape) for g in grads]) / f[:, None]


def slope(law: str, values: dict, x: float) -> float:
    """d log f / d log x at x (central difference: every law is smooth in log x)."""
    h = 1e-4
    up, down = (LAWS[law].function(x * math.exp(s), **values) for s in (h, -h))
    return float((math.log(up) - math.log(down)) / (2 * h))


@dataclass(frozen=True)
class Target:
    """What the user needs an interval of: "value" = log f(at), "reach" = log x where f(x) = at."""
    kind: str
    at: float

    def gradient(self, law: str, values: dict) -> np.ndarray:
        if self.kind == "value":
            return log_gradient(law, values, self.at)[0]
        x_star = reach(law, values, self.at)
        # implicit function: log f(x*; θ) = log ε, so ∂ log x*/∂θ = -(∂ log f/∂θ) / (∂ log f/∂ log x)
        return -log_gradient(law, values, x_star)[0] / slope(law, values, x_star)

    def center(self, law: str, values: dict) -> float:
        """The target's point estimate, in the log units its variance is in."""
        if self.kind == "value":
            return math.log(float(LAWS[law].function(self.at, **values)))
        return math.log(reach(law, values, self.at))


def reach(law: str, values: dict, level: float) -> float:
    """The x where the law falls to `level`, by bisection in log x over 1e-3 .. 1e15 (every
    one-variable law here is monotone). ValueError where it never gets there."""
    f = lambda log_x: math.log(float(LAWS[law].function(math.exp(log_x), **values))) - math.log(level)  # noqa: E731
    low, high = math.log(1e-3), math.log(1e15)
    if f(low) * f(high) > 0:
        raise ValueError(f"the fitted {law} law never reaches {level:g} between N = 1e-3 and 1e15")
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if f(low) * f(mid) > 0 else (low, mid)
    return math.exp(0.5 * (low + high))


def target_variance(law: str, values: dict, sigma2: float, x_points, target: Target) -> float:
    """σ² gᵀ(JᵀJ)⁻¹g; inf where the design cannot pin the target down (g outside the row space)."""
    J = log_gradient(law, values, x_points)
    g = target.gradient(law, values)
    info = J.T @ J
    solved, *_ = np.linalg.lstsq(info, g, rcond=None)
    if np.linalg.norm(info @ solved - g) > 1e-6 * max(np.linalg.norm(g), 1e-300):
        return math.inf
    return float(sigma2 * g @ solved)


def width(variance: float) -> float:
    """Width of the 95% interval of the target in log units: 2·1.96·sd."""
    return 2 * Z95 * math.sqrt(variance) if math.isfinite(variance) else math.inf


@dataclass
class Step:
    move: Hashable  # what was added, as the caller's moves name it
    cells: int  # new cells this step adds
    cost: float  # their cost
    variance: float  # of the target after this step


def greedy(start, moves: Callable, new_cells: Callable, variance: Callable, cost: Callable,
           max_cells: int) -> tuple[object, list[Step]]:
    """From `start`, repeatedly take the move with the largest variance drop per unit of cost.
    moves(state) -> [(name, next state)]; new_cells(state) -> the cells the state adds;
    variance(cells) -> target variance with them; cost(cell) -> the cell's cost (> 0).
    Stops when no move fits in max_cells new cells or none lowers the variance."""
    state, current, steps = start, variance(new_cells(start)), []
    while True:
        have = new_cells(state)
        spent = sum(cost(c) for c in have)
        best = None
        for name, after in moves(state):
            cells = new_cells(after)
            if len(cells) > max_cells or len(cells) <= len(have):
                continue
            v = variance(cells)
            extra = sum(cost(c) for c in cells) - spent
            gain = (current - v) / extra if math.isfinite(current) else (math.inf if math.isfinite(v) else 0)
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, name, after, v, len(cells) - len(have), extra)
        if best is None:
            return state, steps
        _, name, state, current, added, extra = best
        steps.append(Step(name, added, extra, current))


def choose_points(law: str, values: dict, sigma2: float, x_have, candidates: Iterable[float], target: Target,
                  k: int, cost: Callable[[float], float] | None = None) -> list[float]:
    """Up to k new points (repeats allowed) from `candidates` for one curve: the greedy c-optimal
    design, ranked by variance drop per unit of cost(x) (default ∝ x, as training FLOPs are ∝ N)."""
    x_have = np.asarray(x_have, dtype=float)
    candidates = sorted(set(float(c) for c in candidates))
    cost = cost or (lambda x: x)
    state, _ = greedy((), lambda s: [(c, s + (c,)) for c in candidates], lambda s: s,
                      lambda cells: target_variance(law, values, sigma2, np.concatenate([x_have, cells]), target),
                      cost, k)
    return list(state)


def candidate_n(n_have, upper: float, per_decade: int = 8) -> list[int]:
    """New N values to choose from: log-spaced from the smallest N in hand to `upper`, two
    significant figures (N values a person would type), none already in hand."""
    low = min(n_have)
    count = max(int(math.ceil(per_decade * math.log10(upper / low))), 1) + 1
    raw = np.geomspace(low, upper, count)
    rounded = {int(float(f"{v:.2g}")) for v in raw}
    return sorted(n for n in rounded if n not in set(int(v) for v in n_have) and low <= n <= upper)
