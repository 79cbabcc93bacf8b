"""Which cells next (raysweep.scaling.design, raysweep.suggest): the greedy c-optimal design against
evenly spaced log N, judged by the report's own interval (cluster bootstrap) after refitting."""

import math

import numpy as np
import pytest

from raysweep import scaling
from raysweep.scaling import design


def power_truth(x):
    return 2.0 * np.asarray(x, dtype=float) ** -0.5


@pytest.mark.parametrize("law, truth, noise", [
    ("power", power_truth, 0.15),
    # the saturating law's Jacobian depends on θ: the design is made at the first fit's estimate
    ("saturating", lambda x: power_truth(x) + 0.01, 0.10),
])
def test_design_narrows_the_target_interval_more_than_even_log_spacing(law, truth, noise):
    """50 synthetic stores from a known law (5 N x 8 seeds): K = 8 new cells at the design's N
    against 8 at evenly spaced log N over the same range, each refitted with the cluster bootstrap
    the report uses (independent of design.py's linearised variance)."""
    rng = np.random.default_rng(1)
    seeds = 8
    n0 = np.repeat([100, 200, 400, 800, 1600], seeds).astype(float)
    s0 = np.tile(np.arange(seeds), 5)
    target, k, top = design.Target("value", 1e5), 8, 16000
    wins, widths = 0, []
    for draw in range(50):
        y0 = truth(n0) * np.exp(rng.normal(0, noise, n0.size))
        start = scaling.fit(n0, y0, law)
        picked = design.choose_points(law, start.values, start.residual_sd ** 2, n0,
                                      design.candidate_n(n0, top), target, k, cost=lambda x: 1.0)
        assert len(picked) == k
        pair = []
        for new in (np.array(picked), np.geomspace(100, top, k)):
            x = np.concatenate([n0, new])
            y = np.concatenate([y0, truth(new) * np.exp(rng.normal(0, noise, k))])
            refit = scaling.fit(x, y, law, n_boot=200, seed=draw,
                                clusters=np.concatenate([s0, np.arange(k) % seeds]))
            low, high = refit.band(target.at)
            pair.append(math.log(high[0] / low[0]))
        wins += pair[0] < pair[1]
        widths.append(pair)
    print(f"{law}: design narrower in {wins}/50; median log widths {np.median(widths, axis=0)}")
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
    one_n = [100.0, 100.0]  # an intercept, no slope: nothing extrapolates
    assert design.target_variance("power", {"a": 1.0, "b": 0.5}, 0.01, one_n, design.Target("value", 1e4)) == math.inf


# ---------------------------------------------------------------------------------------------
# The CLI on a tiny synthetic store

def write_store(results, n_values=(100, 200, 400, 800), seeds=(0, 1, 2), noise=0.1):
    """Rows of two curves with a known power law: `exact` (no model) and an ensemble of width 16."""
    from raysweep import store

    rng = np.random.default_rng(0)
    for method, size in (("exact", None), ("ensemble", 16)):
        for n in n_values:
            for seed in seeds:
                cell = f"{method}-{n}-{seed}"
                y = float(power_truth(n) * (2 if size else 1) * math.exp(rng.normal(0, noise)))
                model, params = (None, None) if size is None else ("mlp", 1000)
                store.write_cell(results, [{"cell_id": cell, "attempt": "a", "kind": "final", "status": "ok",
                                            "task": "regression", "method": method, "model": model, "size": size,
                                            "params": params, "n": n, "seed": seed, "split": "test",
                                            "epistemic": y, "config": "{}"}])


def test_cli_prints_proposals_and_writes_an_overlay_launch_can_take(tmp_path, capsys):
    from raysweep import experiment as exp
    from raysweep import suggest

    write_store(tmp_path / "results")
    assert suggest.main([str(tmp_path), "--target", "n=1e5", "--budget", "12"]) == 0
    out = capsys.readouterr().out
    assert "target: epistemic at N=100000" in out and "exact" in out and "ensemble size 16" in out
    assert "+ N=" in out or "+ seed" in out
    lines = (tmp_path / "suggested.txt").read_text().splitlines()
    sets = [line for line in lines if not line.startswith("#")]
    assert any(line.startswith("# python -m raysweep.launch") for line in lines)
    grid_n = [int(v) for v in sets[0].removeprefix("grid.n=").split(",")]
    assert set(grid_n) >= {100, 200, 400, 800}  # existing values kept: their cells are not rerun
    # the overlay applies to the regression experiment, and its new cells are at most the budget
    e = exp.load("experiments/regression.py")
    before = exp.apply_overrides(e, ["grid.n=100,200,400,800", "grid.seeds=0,1,2", *sets[2:]])
    after = exp.apply_overrides(e, sets)
    old_ids = {c["cell_id"] for c in exp.cells(before)}
    new = [c for c in exp.cells(after) if c["cell_id"] not in old_ids]
    assert 0 < len(new) <= 12 and all(c["method"] in ("exact", "ensemble") for c in new)


def test_cli_ranked_per_cell_proposes_the_widest_lever_arm_and_per_flop_a_cheap_n(tmp_path, capsys):
    """A power law (a straight line in logs) extrapolated 100x: per cell, the variance of the
    prediction falls most with the N farthest from x*'s other side (least squares' lever arm), the
    largest allowed; per unit of compute (∝ N) one of the cheap small N wins instead."""
    from raysweep import suggest

    write_store(tmp_path / "results")
    overlay = tmp_path / "suggested.txt"
    common = [str(tmp_path), "--target", "n=1e5", "--budget", "3", "--method", "exact", "--max-n", "8000"]
    assert suggest.main(common + ["--rank-by", "cells"]) == 0
    sets = [line for line in overlay.read_text().splitlines() if not line.startswith("#")]
    assert sets == ["grid.n=100,200,400,800,8000", "grid.seeds=0,1,2", "grid.methods=exact"]
    assert suggest.main(common) == 0
    new_n = set(overlay.read_text().splitlines()[3].removeprefix("grid.n=").split(",")) - {"100", "200", "400", "800"}
    assert len(new_n) == 1 and int(new_n.pop()) < 200


@pytest.mark.parametrize("bad, why", [("1e6", "expected n=<N>"), ("n=abc", "'abc' is not a number"),
                                      ("n=-5", "must be a finite number > 0, got -5"), ("p=10", "expected n=<N>")])
def test_cli_refuses_a_bad_target_naming_the_value_and_the_format(tmp_path, capsys, bad, why):
    from raysweep import suggest

    with pytest.raises(SystemExit) as stop:
        suggest.main([str(tmp_path), "--target", bad])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"--target {bad!r}" in err and why in err and "y=<level>" in err


def test_cli_without_a_store_says_what_it_expected(tmp_path, capsys):
    from raysweep import suggest

    assert suggest.main([str(tmp_path), "--target", "n=1e5"]) == 2
    assert f"no results store in {tmp_path}" in capsys.readouterr().err


def test_cli_costs_cells_by_the_plan_formula_with_an_experiment_file(tmp_path, capsys):
    """The printed cost is --plan's FLOPs for the proposed cells, recomputed here from plan.estimate."""
    from raysweep import experiment as exp
    from raysweep import suggest
    from raysweep.plan import estimate

    write_store(tmp_path / "results")
    assert suggest.main([str(tmp_path), "--target", "n=1e5", "--budget", "3", "--method", "ensemble",
                         "--experiment", "experiments/regression.py"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs by --plan's formula" in out
    sets = [line for line in (tmp_path / "suggested.txt").read_text().splitlines() if not line.startswith("#")]
    new_n = sorted(set(sets[0].removeprefix("grid.n=").split(",")) - {"100", "200", "400", "800"})
    assert len(new_n) == 1
    e = exp.apply_overrides(exp.load("experiments/regression.py"),
                            [f"grid.n={new_n[0]}", "grid.seeds=0,1,2", "grid.methods=ensemble", "grid.sizes=16"])
    expected = sum(cost.flops for cost in estimate(e))
    assert f"total: 3 new cells, cost {expected:.3g}" in out


def test_degenerate_cells_are_done_and_not_proposed_again(tmp_path):
    from raysweep import store, suggest

    write_store(tmp_path / "results")
    store.write_cell(tmp_path / "results", [{"cell_id": "exact-1600-0", "attempt": "a", "kind": "final",
                                             "status": "degenerate", "task": "regression", "method": "exact",
                                             "n": 1600, "seed": 0, "split": "test", "config": "{}"}])
    rows = suggest.load_rows(tmp_path)
    args = suggest.parse_args([str(tmp_path), "--target", "n=1e5", "--method", "exact"])
    plan = suggest.Plan(rows, suggest.fitted_curves(rows, args))
    assert 1600 in plan.n  # the degenerate cell's N is in the grid already
    cells = plan.new_cells((frozenset({1600}), frozenset()))
    assert sorted(cells) == [(("exact", None), 1600, 1), (("exact", None), 1600, 2)]
    assert plan.new_cells((frozenset(), frozenset())) == cells  # launch would run these two anyway


def test_a_level_no_curve_reaches_is_refused_naming_it(tmp_path, capsys):
    """EU of the synthetic store falls as N^-0.5 without a floor, so every level > 0 is reached
    at some N; a level above every fitted curve at N = 1e-3 is not (the curves start below it)."""
    from raysweep import suggest

    write_store(tmp_path / "results")
    assert suggest.main([str(tmp_path), "--target", "y=1e6"]) == 2
    captured = capsys.readouterr()
    assert "never reaches 1e+06" in captured.out and "no curve is fitted with the target in reach" in captured.err
