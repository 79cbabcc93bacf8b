"""The law catalogue: each law a plain function whose docstring states its formula, with a starting
guess, its bounds, and an `inner` form with its gradient for the vectorised bootstrap solver.

Every fit minimises squared *log* residuals, log y - log f(x): the quantities are positive and span
decades, seed noise is multiplicative, and in logs a pure power law is a straight line.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import lmfit
import numpy as np


def power_law(x, a, b):
    """y = a · x^(-b)"""
    return a * x ** -b


def power_inner(xs, log_xs, log_a, b):
    """f and its gradient in (log a, b), for the vectorised LM (see solver.refit_many)"""
    term = np.exp(log_a - b * log_xs[0])
    return term, [term, -log_xs[0] * term]


def guess_power(x, y) -> dict:
    """Start from the least-squares line log y = log a - b log x (the power law's exact minimum)."""
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
    inner: Callable  # (xs, log xs, *parameters with `scales` as logs) -> (f, its gradient)
    guess: Callable
    bounds: Callable  # (*xs) -> {parameter: (min, max)}; may depend on the data (offset's x0)
    exponents: tuple[str, ...]  # the parameters reported as exponents
    independent: tuple[str, ...] = ("x",)
    scales: tuple[str, ...] = ()  # amplitudes (bounds 0, inf), moved as logs by the vectorised LM
    # The shape parameters a fit must estimate, not meet a bound, to be chosen (selection.eligible):
    # the exponents, and offset's x0. Amplitudes and floors at 0 are allowed (a floor of 0 is the power law).
    shape: tuple[str, ...] = ()
    # (parameter, simpler law): with this parameter on its bound the law is the simpler one (saturating
    # with c = 0 is the power law), so it is reported as that law (selection.eligible)
    reduces_to: tuple[str, str] | None = None

    @property
    def params(self) -> tuple[str, ...]:
        return _parameters_of(self.function, len(self.independent))

    @property
    def formula(self) -> str:
        return self.function.__doc__.splitlines()[0]


@functools.cache
def _parameters_of(function, skip: int) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)[skip:]


LAWS = {
    # b < 0 allowed for the power law: a rising curve is a finding about a method, not a failed fit
    "power": Law(power_law, power_inner, guess_power,
                 lambda x: {"a": (0, np.inf), "b": (-10, 10)}, ("b",), scales=("a",), shape=("b",)),
    "saturating": Law(saturating_law, saturating_inner, guess_saturating,
                      lambda x: {"a": (0, np.inf), "b": (0, 10), "c": (0, np.inf)}, ("b",), scales=("a",),
                      shape=("b",), reduces_to=("c", "power")),
    "offset": Law(offset_law, offset_inner, guess_offset,
                  # x0 <= max x: at the largest x run the local slope b·x/(x + x0) is then at least b/2, so
                  # the data reach the power-law regime; a larger shift is a bend the data never leave
                  lambda x: {"a": (0, np.inf), "b": (0, 10), "x0": (-0.9 * np.min(x), np.max(x))}, ("b",),
                  scales=("a",), shape=("b", "x0")),
    "joint": Law(joint_law, joint_inner, guess_joint,
                 lambda n, p: {"E": (0, np.inf), "A": (0, np.inf), "alpha": (0, 10), "B": (0, np.inf), "beta": (0, 10)},
                 ("alpha", "beta"), independent=("n", "p"), scales=("A", "B"), shape=("alpha", "beta")),
}
CURVE_LAWS = ("power", "saturating", "offset")  # the laws tried on a one-variable curve, simplest first


def _in_logs(function):
    """The law's logarithm, with the law's own signature, so lmfit sees the same parameters."""
    @functools.wraps(function)
    def log_function(*args, **kwargs):
        return np.log(function(*args, **kwargs))
    return log_function


@functools.cache
def model(name: str) -> lmfit.Model:
    """The lmfit Model of log f for the named law: every point fit goes through it."""
    law = LAWS[name]
    return lmfit.Model(_in_logs(law.function), independent_vars=list(law.independent))
