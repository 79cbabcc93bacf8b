"""Scaling laws against synthetic data from known parameters: recovery, selection, intervals, extrapolation."""

import math

import numpy as np
import pytest

from raysweep import scaling

N = np.repeat([100.0, 200, 400, 800, 1600, 3200], 5)  # 6 N x 5 seeds
GRID = np.array([100.0, 200, 400, 800, 1600, 3200])


def noisy(y, sd=0.05, seed=0):
    return y * np.exp(np.random.default_rng(seed).normal(0, sd, np.shape(y)))


def test_power_law_parameters_are_recovered_from_noisy_data():
    law = scaling.fit(N, noisy(10.0 * N ** -0.7, 0.03), "power", n_boot=500)
    assert law.ok and law.values["b"] == pytest.approx(0.7, abs=0.03)
    assert law.ci_method == "cluster bootstrap" and law.ci["b"][0] < 0.7 < law.ci["b"][1]


def test_saturating_and_offset_laws_recover_their_parameters():
    floor = scaling.fit(N, noisy(5.0 * N ** -0.8 + 0.004, 0.01), "saturating")
    assert floor.values["c"] == pytest.approx(0.004, rel=0.15)
    fits = {name: scaling.fit(N, noisy(5.0 * N ** -0.8 + 0.004, 0.01), name) for name in scaling.CURVE_LAWS}
    assert scaling.select(fits) == "saturating"
    shifted = scaling.fit(N, noisy(3.0 * (N - 60) ** -1.0, 0.005), "offset")
    assert shifted.values["x0"] == pytest.approx(-60, abs=8) and shifted.values["b"] == pytest.approx(1.0, abs=0.05)


def test_joint_law_recovers_both_exponents():
    n, p = np.meshgrid([250.0, 500, 1000, 2000, 4000], [1e3, 4e3, 16e3, 64e3])
    n, p = np.tile(n.ravel(), 3), np.tile(p.ravel(), 3)
    law = scaling.fit_joint(n, p, noisy(0.05 + 3 * n ** -0.6 + 20 * p ** -0.5, 0.005), n_boot=200)
    assert law.values["alpha"] == pytest.approx(0.6, abs=0.1) and law.values["beta"] == pytest.approx(0.5, abs=0.1)
    assert law.ci["alpha"][0] <= law.values["alpha"] <= law.ci["alpha"][1]


def test_point_fit_is_lmfit_models_own_answer():
    """The production path is lmfit.Model.fit: the same law fitted by hand through the Model agrees."""
    x, y = N, noisy(5.0 * N ** -0.8 + 0.004, 0.02, seed=4)
    law = scaling.fit(x, y, "saturating")
    params = scaling.model("saturating").make_params(**scaling.LAWS["saturating"].guess(x, y))
    for p, (low, high) in scaling.LAWS["saturating"].bounds(x).items():
        params[p].set(min=low, max=high)
    reference = scaling.model("saturating").fit(np.log(y), params, x=x)
    assert law.aic == pytest.approx(reference.aic, abs=1e-3)
    for p in ("a", "b", "c"):
        assert law.values[p] == pytest.approx(reference.params[p].value, rel=1e-3, abs=1e-6)


def test_aicc_picks_the_power_law_for_pure_power_law_data_in_90_percent_of_draws():
    """6 N x 3 seeds, 5% noise, 200 draws: the issue's acceptance test."""
    x = np.repeat(GRID, 3)
    chosen = [scaling.select({name: scaling.fit(x, noisy(2.0 * x ** -0.5, 0.05, seed=draw), name)
                              for name in scaling.CURVE_LAWS}) for draw in range(200)]
    rate = chosen.count("power") / len(chosen)
    print(f"AICc chose the power law in {rate:.1%} of 200 draws")
    assert rate >= 0.9


def test_aicc_penalises_extra_parameters_more_than_aic_on_few_points():
    law = scaling.fit(GRID, noisy(2.0 * GRID ** -0.5, 0.05), "saturating")
    k, n = 3, 6
    assert law.aicc == pytest.approx(law.aic + 2 * k * (k + 1) / (n - k - 1))


def correlated_seeds(rng, seeds=30, slope_sd=0.05, noise=0.05):
    """Each seed has its own slope around the true 0.5, pivoting mid-range: a seed above the law at
    large N is below it at small N, at every N (the correlation the per-N bootstrap breaks)."""
    centred = np.log(GRID) - np.log(GRID).mean()
    slope = rng.normal(0, slope_sd, seeds)
    y = 2.0 * GRID ** -0.5 * np.exp(slope[:, None] * centred + rng.normal(0, noise, (seeds, len(GRID))))
    return np.tile(GRID, seeds), y.ravel(), np.repeat(np.arange(seeds), len(GRID))


def test_cluster_bootstrap_covers_the_true_exponent_where_the_per_n_bootstrap_does_not():
    covered = {"cluster": 0, "per-x": 0}
    for draw in range(200):
        x, y, seeds = correlated_seeds(np.random.default_rng(draw))
        for scheme in covered:
            low, high = scaling.fit(x, y, "power", n_boot=400, seed=draw, clusters=seeds, scheme=scheme).ci["b"]
            covered[scheme] += low <= 0.5 <= high
    print(f"coverage of the 95% interval over 200 draws: {covered}")
    assert covered["cluster"] >= 0.9 * 200
    assert covered["per-x"] <= 0.85 * 200


def test_no_interval_leaves_its_bounds_and_a_parameter_on_a_bound_says_so():
    laws = [scaling.fit(N, noisy((N / 100) ** -12.0, 0.01), n_boot=200),  # steeper than any law: b stops at 10
            scaling.fit(N, noisy(10.0 * N ** -0.7, 0.05), "saturating", n_boot=200),  # no floor: c at 0
            scaling.fit(N[::5], noisy(10.0 * N[::5] ** -0.7, 0.05), "saturating"),  # one seed: profile
            scaling.fit(N, noisy(np.full(N.shape, 0.2), 0.3), "offset", n_boot=200)]  # flat and noisy
    for law in laws:
        for p, interval in law.ci.items():
            if interval is not None:
                low, high = law.bounds[p]
                assert low <= interval[0] <= interval[1] <= high, (law.law, p, interval, law.bounds[p])
    assert "b" in laws[0].at_bound and "b at bound 10" in laws[0].flags and laws[0].stderr["b"] is None


def test_one_seed_gives_profile_likelihood_intervals_not_a_bootstrap():
    law = scaling.fit(GRID, noisy(3 * GRID ** -0.5, 0.02), n_boot=100)
    assert law.ci_method == "profile likelihood" and law.boot is None
    assert law.ci["b"][0] < 0.5 < law.ci["b"][1]
    assert "one seed: no bootstrap" in law.flags


def test_bootstrap_is_deterministic_for_a_seed():
    y = noisy(5.0 * N ** -0.8 + 0.004, 0.02)
    one, two = (scaling.fit(N, y, "saturating", n_boot=100, seed=7) for _ in range(2))
    assert one.ci == two.ci
    assert scaling.fit(N, y, "saturating", n_boot=100, seed=8).ci != one.ci


def test_prediction_band_is_wider_than_the_confidence_band():
    law = scaling.fit(N, noisy(10.0 * N ** -0.7), n_boot=300)
    conf, pred = law.band([5000.0]), law.band([5000.0], kind="prediction")
    assert pred[0][0] < conf[0][0] < conf[1][0] < pred[1][0]


def test_n_star_is_flagged_beyond_the_data_or_already_reached():
    law = scaling.fit(N, noisy(10.0 * N ** -1.0, 0.02), n_boot=300)
    value, low, high, note = scaling.solve_for_x(law, 0.001)
    assert value == pytest.approx(10_000, rel=0.1) and low < value < high and note == ""
    far = scaling.solve_for_x(law, 1e-6)
    assert far[0] > scaling.BEYOND_FACTOR * 3200 and far[3].startswith("beyond the data")
    assert scaling.solve_for_x(law, 0.05)[3] == "already reached"
    floor = scaling.fit(N, noisy(5.0 * N ** -0.8 + 0.004, 0.01), "saturating", n_boot=100)
    value, _, _, note = scaling.solve_for_x(floor, 0.001)
    assert math.isinf(value) and note.startswith("never: the law saturates")


def test_holdout_predicts_the_largest_n_within_its_band_and_catches_a_wrong_law():
    good = scaling.holdout([N], noisy(10.0 * N ** -0.7), "power", n_boot=300)
    assert good.held_out == 3200 and abs(good.relative_error) < 0.1 and good.inside
    bent = 10.0 * N ** -0.7 + 0.02 * (N / 3200) ** 3  # turns up at the end
    wrong = scaling.holdout([N], noisy(bent, 0.01), "power", n_boot=300)
    assert wrong.relative_error < -0.3 and wrong.inside is False


def test_non_finite_and_non_positive_points_are_dropped_and_counted():
    y = noisy(3 * N ** -0.5)
    y[[0, 5, 9]] = [np.nan, -1.0, 0.0]
    law = scaling.fit(N, y)
    assert law.ok and law.n_dropped == 3 and law.n_points == len(N) - 3


def test_too_few_points_or_distinct_x_is_an_unfit_curve_not_a_crash():
    assert scaling.fit([10, 20, np.inf], [1.0, 0.5, 0.3]).message == "need at least 3 finite points, got 2"
    assert not scaling.fit([10, 10, 20, 20], [1.0, 1.1, 0.5, 0.6], "saturating").ok
    with pytest.raises(ValueError, match="unknown law"):
        scaling.fit([1, 2, 3], [1, 2, 3], "cubic")


def test_flat_and_rising_curves_are_findings_not_errors():
    flat = scaling.fit(N, noisy(np.full(N.shape, 0.2), 0.02), n_boot=200)
    rising = scaling.fit(N, noisy(0.01 * N ** 0.3, 0.02), n_boot=200)
    assert scaling.trend(flat) == "flat" and scaling.trend(rising) == "rising"
    assert scaling.trend(scaling.fit(N, noisy(10.0 * N ** -0.7), n_boot=200)) == "falling"


def test_lack_of_fit_is_flagged_when_the_shape_is_wrong():
    assert scaling.fit(N, noisy(5.0 * N ** -1.2 + 0.002, 0.01)).lack_of_fit_p < 0.01
    assert scaling.fit(N, noisy(10.0 * N ** -0.7)).lack_of_fit_p > 0.01


def test_batched_bootstrap_equals_each_curve_alone():
    def one(k):
        return scaling.fit(N, noisy(5.0 * N ** -0.8 + 0.004 * k, 0.02, seed=k), "saturating", seed=k)
    together = scaling.bootstrap_many([one(k) for k in (1, 2, 3)], 100)
    for k, fit in zip((1, 2, 3), together):
        alone = scaling.bootstrap(one(k), 100)
        np.testing.assert_allclose(fit.boot, alone.boot, rtol=1e-9)


def test_a_law_whose_shape_sits_on_a_bound_is_not_chosen_and_a_fall_no_power_law_follows_is_flagged():
    # EU falling like exp(-N / 500): offset can only follow it by pushing x0 past the data (or b to 10),
    # i.e. by a shape its bounds impose; the curve keeps a law that estimates its parameters, and the
    # lack of fit says that no power law follows it.
    x = np.repeat([50.0, 100, 200, 400, 800, 1100], 3)
    fits = {name: scaling.fit(x, noisy(0.1 * np.exp(-x / 500), 0.05), name) for name in scaling.CURVE_LAWS}
    assert set(fits["offset"].at_bound) & {"b", "x0"} and fits["offset"].aicc < fits["power"].aicc - 10
    chosen = scaling.select(fits)
    assert chosen != "offset" and not set(fits[chosen].at_bound) & set(scaling.LAWS[chosen].shape)
    assert fits[chosen].lack_of_fit_p < 0.01
    assert scaling.select_by_holdout(fits, {"offset": 0.0, "power": 0.5}) == "power"
    # a true shifted power law keeps its interior offset fit
    shifted = {name: scaling.fit(N, noisy(3.0 * (N - 60) ** -1.0, 0.005), name) for name in scaling.CURVE_LAWS}
    assert scaling.select(shifted) == "offset"


def test_a_saturating_fit_with_its_floor_at_zero_is_reported_as_the_power_law_it_is():
    fits = {name: scaling.fit(N, noisy(2.0 * N ** -0.5, 0.05, seed=2), name) for name in scaling.CURVE_LAWS}
    assert "c" in fits["saturating"].at_bound
    assert fits["saturating"].predict(N) == pytest.approx(fits["power"].predict(N), rel=1e-3)  # the same curve
    assert scaling.select_by_holdout(fits, {"saturating": 0.01, "power": 0.02, "offset": 0.5}) == "power"
    assert "saturating" not in scaling.eligible(fits)
