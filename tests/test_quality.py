"""The quality gate (raysweep/quality.py), the `samples` column, and the inputs refused before Ray
starts because they would give numbers that mean nothing (EU ≡ 0, an AUROC from one example)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from raysweep import experiment as E
from raysweep import quality, store
from raysweep.cell import run_cell
from raysweep.methods import dropout as dropout_method
from raysweep.methods import ensemble, exact, laplace
from raysweep.tasks.regression import LinearRegression


def fidelity(root) -> E.Experiment:
    return E.load(root / "experiments" / "fidelity.py")


def test_trivial_rmse_is_that_of_predicting_the_training_mean():
    data = LinearRegression(dim=3).load(50, 0, [], 200)
    y_test, y_train = data.eval_sets["test"][1].double().numpy(), data.train_y.double().numpy()
    expected = np.sqrt(np.mean((y_test - y_train.mean()) ** 2))
    assert quality.baselines(data)["trivial_rmse"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("test_row, message", [
    ({"rmse": 2.0, "epistemic": 0.1}, r"test RMSE 2 is above the 1\.5 of predicting the training mean"),
    ({"rmse": 0.5, "epistemic": float("nan")}, r"non-finite metrics on split 'test': epistemic=nan"),
    ({"rmse": 0.5, "epistemic_var": 500.0}, r"the sample means exploded: their variance 500 is over 100x"),
    ({"accuracy": 0.1}, r"test accuracy 0\.1 is at chance \(always predicting the most common class scores 0\.12\)"),
])
def test_degenerate_predictions_are_named(test_row, message):
    baseline = {"trivial_rmse": 1.5, "target_var": 2.25, "chance_accuracy": 0.12}
    assert quality.degenerate({"test": test_row}, baseline) is not None
    assert pytest.importorskip("re").search(message, quality.degenerate({"test": test_row}, baseline))


def test_sound_predictions_pass():
    baseline = {"trivial_rmse": 1.5, "target_var": 2.25, "chance_accuracy": 0.12}
    assert quality.degenerate({"test": {"rmse": 0.51, "epistemic_var": 0.01, "accuracy": 0.9}}, baseline) is None


class Off(exact.Posterior):
    """The exact posterior, shifted by 100 in every prediction: the cell is degenerate."""

    def predict(self, x):
        means, variances = super().predict(x)
        return means + 100.0, variances


def test_a_degenerate_cell_is_stored_as_such_and_not_rerun(root, tmp_path, monkeypatch):
    original = exact.Exact.fit
    monkeypatch.setattr(exact.Exact, "fit", lambda self, *a, **k: Off(*vars(original(self, *a, **k)).values()))
    e = replace(fidelity(root), grid=replace(fidelity(root).grid, n=(40,), methods=("exact",), seeds=(0,)))
    cell = E.cells(e)[0]
    rows = run_cell(cell, lambda rows: None)
    assert {row["status"] for row in rows} == {"degenerate"}
    assert all("above the" in row["error"] and "predicting the training mean" in row["error"] for row in rows)
    assert {row["samples"] for row in rows} == {1}
    results = tmp_path / "results"
    store.write_cell(results, [{"method": "exact", "n": 40, **row} for row in rows])
    assert store.finished_cells(results) == {cell["cell_id"]}  # launch will not run it again


def test_every_row_carries_the_methods_sample_count(root):
    e = replace(fidelity(root), grid=replace(fidelity(root).grid, n=(40,), methods=("ensemble",), seeds=(0,)),
                train=E.Train(epochs=1, batch_size=40), methods=replace(fidelity(root).methods,
                                                                       ensemble=ensemble.Options(members=3)))
    rows = run_cell(E.cells(e)[0], lambda rows: None)
    assert [row["samples"] for row in rows] == [3, 3] and {row["status"] for row in rows} == {"ok"}


@pytest.mark.parametrize("change, message", [
    (lambda e: replace(e, methods=replace(e.methods, ensemble=ensemble.Options(members=1))),
     r"methods\.ensemble\.members must be >= 2 .*got 1"),
    (lambda e: replace(e, methods=replace(e.methods, dropout=dropout_method.Options(rate=0.0))),
     r"methods\.dropout\.rate must be in \(0, 1\) .*got 0\.0"),
    (lambda e: replace(e, methods=replace(e.methods, laplace=laplace.Options(predictive="probit"))),
     r"methods\.laplace\.predictive='probit' .*EU is 0 by construction.*predictive='sampling'"),
    (lambda e: replace(e, eval=replace(e.eval, max_examples=1)), r"eval\.max_examples must be >= 10 .*got 1"),
    (lambda e: replace(e, grid=replace(e.grid, n=(5, 100))),
     r"grid\.n value\(s\) \[5\] are below the 10 .*at least task\.dim = 10 examples"),
    (lambda e: replace(e, model=replace(e.model, noise_var=1.0)),
     r"model\.noise_var=1\.0 must equal task\.noise_var=0\.25"),
    (lambda e: replace(e, grid=replace(e.grid, sizes=(1, 2))),
     r"model 'linear' has no size knob: grid\.sizes must be \(1,\)"),
    (lambda e: replace(e, methods=replace(e.methods, ensemble=ensemble.Options(prior="flat"))),
     r"methods\.ensemble\.prior must be one of none, anchored, got 'flat'"),
])
def test_inputs_that_would_mean_nothing_are_refused_before_any_work(root, change, message):
    with pytest.raises(E.ExperimentError, match=message):
        change(fidelity(root)).validate()


def test_the_fidelity_experiment_gives_every_method_the_tasks_prior(root):
    e = fidelity(root)
    assert e.validate() is e
    for name in ("ensemble", "vi", "laplace", "swag", "sghmc", "csgld"):
        assert getattr(e.methods, name).prior_precision == e.task.prior_precision, name
    assert torch.is_tensor(e.task.load(10, 0, [], 10).train_x)


def test_fidelity_section_divides_by_the_exact_cell_of_the_same_n_seed_and_split(tmp_path):
    import pandas as pd

    from raysweep import fidelity

    rows = pd.DataFrame([
        {"method": "exact", "n": 10, "seed": 0, "split": "test", "epistemic": 0.2, "samples": 1, "status": "ok",
         "config": "{}"},
        {"method": "exact", "n": 10, "seed": 1, "split": "test", "epistemic": 0.4, "samples": 1, "status": "ok",
         "config": "{}"},
        {"method": "sghmc", "n": 10, "seed": 0, "split": "test", "epistemic": 0.1, "samples": 4, "status": "ok",
         "config": "{}"},
        {"method": "sghmc", "n": 10, "seed": 1, "split": "test", "epistemic": 0.6, "samples": 4, "status": "ok",
         "config": "{}"},
        {"method": "sghmc", "n": 10, "seed": 2, "split": "test", "epistemic": 9.0, "samples": 4, "status": "degenerate",
         "config": "{}"},
    ])
    table = fidelity.ratios(rows)
    assert table["ratio"].tolist() == pytest.approx([(0.5 + 1.5) / 2])  # the degenerate cell is left out
    assert table["ratio_debiased"].tolist() == pytest.approx([1.0 / 0.75])
    lines = fidelity.section(fidelity.ratios(rows), tmp_path)
    assert any(line.startswith("| sghmc | 4 | 2 | 1 [0.5, 1.5] | 1.33 |") for line in lines)
    assert (tmp_path / "fidelity.png").is_file()


def test_fidelity_judges_vi_against_the_best_diagonal_gaussian_and_names_what_is_off_target(tmp_path):
    import pandas as pd

    from raysweep import fidelity

    def row(method, seed, eu, samples=1, **options):
        return {"method": method, "n": 50, "seed": seed, "split": "test", "epistemic": eu, "samples": samples,
                "status": "ok", "config": json.dumps({"method_options": options})}

    seeds = (0, 1, 2)
    bias = 63 / 64
    rows = pd.DataFrame(
        [row("exact", seed, 0.4) for seed in seeds] + [row("exact_meanfield", seed, 0.2) for seed in seeds]
        # 1.27-1.32x the best diagonal Gaussian, tightly: off target
        + [row("vi", seed, eu, 64) for seed, eu in zip(seeds, (0.25, 0.26, 0.255))]
        + [row("ivon", seed, eu, 64) for seed, eu in zip(seeds, (0.17, 0.25, 0.21))]  # 0.86-1.27, mean 1.07: on
        # all three seeds below 1 and the mean 11% below, but too spread to tell from 1 (t-interval ±0.29)
        + [row("sghmc", seed, 0.4 * bias * r, 64) for seed, r in zip(seeds, (0.74, 0.97, 0.96))]
        + [row("ensemble", seed, 0.4 * 15 / 16, 16, prior="anchored") for seed in seeds]  # exactly on target
        + [row("swag", seed, 3.0, 16) for seed in seeds])  # no target: never judged
    table = fidelity.ratios(rows).set_index("label")
    assert table.loc["vi", "to_reference"] == pytest.approx(0.255 / (bias * 0.2))
    assert table.loc["vi", "ratio"] == pytest.approx(0.255 / 0.4)  # against exact as before
    assert table.loc["sghmc", "to_reference"] == pytest.approx((0.74 + 0.97 + 0.96) / 3)
    assert table.loc["ensemble (anchored)", "to_reference"] == pytest.approx(1.0)
    assert table.loc["exact_meanfield", "ratio"] == pytest.approx(0.5)
    assert pd.isna(table.loc["swag", "to_reference"]) and pd.isna(table.loc["exact_meanfield", "to_reference"])
    assert table["off_target"].to_dict() == {"ensemble (anchored)": False, "exact_meanfield": False, "ivon": False,
                                             "sghmc": False, "swag": False, "vi": True}
    text = "\n".join(fidelity.section(fidelity.ratios(rows), tmp_path))
    assert "not distinguishable from it over the seeds: ensemble (anchored), ivon, sghmc." in text
    assert "- vi (reference exact_meanfield): N=50 test: 1.3 [1.27, 1.32]" in text
    assert "| swag | 16 | 3 | 7.5 [7.5, 7.5] | 8 | — |" in text  # no reference: a dash, not empty commas
    notice = fidelity.summary_notice(fidelity.ratios(rows))
    assert notice[0].startswith("Off their target on the exact posterior (fidelity section): vi at N = 50. ")
    assert fidelity.summary_notice(fidelity.ratios(rows[rows["method"] != "vi"])) == []


def test_fidelity_keeps_sizes_apart_and_judges_only_the_conjugate_model(tmp_path):
    import pandas as pd

    from raysweep import fidelity

    def row(method, seed, eu, model=None, size=None):
        return {"method": method, "n": 50, "seed": seed, "split": "test", "epistemic": eu, "samples": 64,
                "status": "ok", "config": "{}", "model": model, "size": size, "size_knob": "width" if size else None}

    rows = pd.DataFrame([row("exact", seed, 0.4) for seed in (0, 1, 2)]
                        + [row("vi", seed, 0.4 * eu, "mlp", 32) for seed, eu in zip((0, 1, 2), (2.0, 2.1, 2.2))]
                        + [row("vi", seed, 0.4 * eu, "mlp", 128) for seed, eu in zip((0, 1, 2), (4.0, 4.1, 4.2))]
                        + [row("laplace", seed, 0.4 * 1.5, "mlp", 32) for seed in (0, 1, 2)])
    table = fidelity.ratios(rows).set_index("label")
    assert table["ratio"].to_dict() == pytest.approx({"vi, width 32": 2.1, "vi, width 128": 4.1,  # not pooled: 3.1
                                                      "laplace, width 32": 1.5})
    assert table.loc["laplace, width 32", "ratio_debiased"] == pytest.approx(1.5)  # closed form on any model
    assert table["to_reference"].isna().all() and not table["off_target"].any()  # an MLP has no target here
    text = "\n".join(fidelity.section(fidelity.ratios(rows), tmp_path))
    assert "| vi, width 32 | 64 | 3 | 2.1 [2, 2.2] |" in text and "none on this model" in text
    assert text.index("| vi, width 32 |") < text.index("| vi, width 128 |")  # sizes in numeric order
    assert fidelity.summary_notice(fidelity.ratios(rows)) == []
