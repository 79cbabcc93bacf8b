"""The vectorised bootstrap solver against scipy.optimize.least_squares, resample by resample."""

import numpy as np
import pytest
from scipy.optimize import least_squares

from raysweep import scaling
from raysweep.scaling import solver

X = np.array([100.0, 200, 400, 800, 1600, 3200])


def _scipy(law, x, y, w, start, low, high):
    """The same weighted log least squares, bounded, by scipy's trust-region reflective method."""
    def residual(theta):
        return w * (np.log(y) - np.log(law.function(x, *theta)))
    return least_squares(residual, start, bounds=(low, high), x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)


@pytest.mark.parametrize("name", ["saturating", "offset"])
def test_each_resample_reaches_the_minimum_scipy_finds(name):
    rng = np.random.default_rng(1)
    truth = {"saturating": (5.0, 0.8, 0.004), "offset": (3.0, 1.0, -40.0)}[name]
    law = scaling.LAWS[name]
    Y = law.function(X, *truth) * np.exp(rng.normal(0, 0.03, (40, len(X))))
    W = rng.uniform(0.5, 2.0, Y.shape)  # resamples weigh their x unequally
    bounds = law.bounds(X)
    low, high = (np.array([bounds[p][i] for p in law.params]) for i in (0, 1))
    start = np.array(truth) * np.array([1.3, 0.9, 1.2])
    ours = solver.refit_many(law, [X], Y, W, start, low, high, iterations=500)
    for r in range(len(Y)):
        reference = _scipy(law, X, Y[r], W[r], start, low, high)
        cost = np.sum((W[r] * (np.log(Y[r]) - np.log(law.function(X, *ours[r])))) ** 2)
        # the same minimum: equal cost to a tolerance (not bit equality; flat directions may differ)
        assert cost <= 2 * reference.cost * (1 + 1e-6) + 1e-12
        assert cost == pytest.approx(2 * reference.cost, rel=1e-4, abs=1e-10)


def test_power_law_resamples_are_the_exact_weighted_line():
    rng = np.random.default_rng(2)
    Y = 2.0 * X ** -0.5 * np.exp(rng.normal(0, 0.05, (20, len(X))))
    W = rng.uniform(0.5, 2.0, Y.shape)
    ours = solver.power_wls(X, Y, W, np.array([0, -10.0]), np.array([np.inf, 10.0]))
    for r in range(len(Y)):
        reference = _scipy(scaling.LAWS["power"], X, Y[r], W[r], [1.0, 0.3], [0, -10], [np.inf, 10])
        np.testing.assert_allclose(ours[r], reference.x, rtol=1e-6)
