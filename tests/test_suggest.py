"""Which cells next (raysweep.scaling.design, raysweep.suggest): the greedy c-optimal design against
evenly spaced log N, judged by the report's own interval (cluster bootstrap) after refitting."""

import math

import numpy as np
import pytest

from raysweep import scaling
from raysweep.scaling import design


def power_truth(x):
    return 2.0 * np.asarray(x, dtype=float) ** -0.5


def test_design_narrows_the_target_interval_more_than_even_log_spacing():
    """50 synthetic stores from a known power law (5 N x 8 seeds, 15% noise): K = 8 new cells at
    the design's N against 8 at evenly spaced log N over the same range, each refitted with the
    cluster bootstrap the report uses (independent of design.py's linearised variance)."""
    rng = np.random.default_rng(1)
    seeds = 8
    n0 = np.repeat([100, 200, 400, 800, 1600], seeds).astype(float)
    s0 = np.tile(np.arange(seeds), 5)
    target, k, top = design.Target("value", 1e5), 8, 16000
    wins, widths = 0, []
    for draw in range(50):
        y0 = power_truth(n0) * np.exp(rng.normal(0, 0.15, n0.size))
        start = scaling.fit(n0, y0, "power")
        picked = design.choose_points("power", start.values, start.residual_sd ** 2, n0,
                                      design.candidate_n(n0, top), target, k, cost=lambda x: 1.0)
        assert len(picked) == k
        pair = []
        for new in (np.array(picked), np.geomspace(100, top, k)):
            x = np.concatenate([n0, new])
            y = np.concatenate([y0, power_truth(new) * np.exp(rng.normal(0, 0.15, k))])
            refit = scaling.fit(x, y, "power", n_boot=200, seed=draw,
                                clusters=np.concatenate([s0, np.arange(k) % seeds]))
            low, high = refit.band(target.at)
            pair.append(math.log(high[0] / low[0]))
        wins += pair[0] < pair[1]
        widths.append(pair)
    print(f"design narrower in {wins}/50; median log widths {np.median(widths, axis=0)}")
    assert wins >= 40


def test_target_variance_is_the_least_squares_variance_for_a_power_law():
    """For log f = log a - b log x the linearisation is exact: σ² gᵀ(XᵀX)⁻¹g of ordinary least squares."""
    x = np.array([10.0, 30, 100, 300, 300])
    X = np.column_stack([np.ones_like(x), -np.log(x)])
    g = np.array([1.0, -math.log(1e4)])
    expected = 0.04 * g @ np.linalg.inv(X.T @ X) @ g
    got = design.target_variance("power", {"a": 3.0, "b": 0.7}, 0.04, x, design.Target("value", 1e4))
    assert got == pytest.approx(expected, rel=1e-9)


def test_reach_gradient_matches_the_closed_form():
    """log N* = (log a - log ε)/b for a power law: its gradient in (log a, b) by finite differences."""
    a, b, eps = 3.0, 0.7, 0.01
    closed = lambda log_a, b: (log_a - math.log(eps)) / b  # noqa: E731
    h = 1e-6
    numeric = [(closed(math.log(a) + h, b) - closed(math.log(a) - h, b)) / (2 * h),
               (closed(math.log(a), b + h) - closed(math.log(a), b - h)) / (2 * h)]
    got = design.Target("reach", eps).gradient("power", {"a": a, "b": b})
    assert got == pytest.approx(numeric, rel=1e-5)
    assert design.reach("power", {"a": a, "b": b}, eps) == pytest.approx(math.exp(closed(math.log(a), b)), rel=1e-9)


def test_a_design_that_cannot_fix_the_target_has_infinite_variance():
    assert design.target_variance("power", {"a": 1.0, "b": 0.5}, 0.01, [100.0, 100.0], design.Target("value", 1e4)) == math.inf
