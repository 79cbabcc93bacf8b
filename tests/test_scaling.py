import numpy as np
import pytest

from raysweep import scaling


def test_power_law_parameters_are_recovered_from_noisy_data():
    rng = np.random.default_rng(0)
    n = np.repeat([100, 200, 400, 800, 1600, 3200], 3)
    y = 10.0 * n ** -0.7 * np.exp(rng.normal(0, 0.03, n.size))
    law = scaling.fit(n, y, "power")
    assert law.ok and law.n_points == 18
    assert law.values["b"] == pytest.approx(0.7, abs=3 * law.stderr["b"])
    assert law.stderr["b"] < 0.05
    np.testing.assert_allclose(law.predict([1000]), 10.0 * 1000 ** -0.7, rtol=0.05)


def test_exact_data_gives_exact_parameters():
    n = np.array([10.0, 20, 40, 80])
    law = scaling.fit(n, 3 * n ** -1.0)
    assert law.values["a"] == pytest.approx(3) and law.values["b"] == pytest.approx(1)


def test_non_finite_and_non_positive_points_are_dropped_and_counted():
    n = np.array([10.0, 20, 40, 80, 160, 320])
    y = 2 * n ** -0.5
    y[1], y[3] = np.nan, -1.0
    law = scaling.fit(n, y)
    assert law.ok and law.n_dropped == 2 and law.values["b"] == pytest.approx(0.5)


def test_too_few_points_is_an_unfit_curve_not_a_crash():
    law = scaling.fit([10, 20, np.inf], [1.0, 0.5, 0.3])
    assert not law.ok and law.message == "need at least 3 finite points at 2+ distinct x, got 2"


def test_unknown_law_is_refused():
    with pytest.raises(ValueError, match="unknown law 'cubic'; allowed: power"):
        scaling.fit([1, 2, 3], [1, 2, 3], "cubic")
