"""The report from a synthetic store: every curve kind, the tables, the plots, the robustness notes."""

import json

import numpy as np
import pandas as pd
import pytest

from raysweep import report, store


def write_store(directory, with_bad_values=False, statuses=False):
    """EU = 0.002 + 3 N^-0.8 + 4 P^-0.5 with 3% seed noise; 'flat' method: EU does not shrink."""
    rng = np.random.default_rng(0)
    for method in ("ensemble", "flat"):
        for n in (250, 500, 1000, 2000):
            for width in (16, 64, 256):
                params = 100 * width
                for seed in range(3):
                    rows = []
                    for split in ("test", "shifted"):
                        eu = 0.002 + 3 * n ** -0.8 + 4 * params ** -0.5 if method == "ensemble" else 0.05
                        noise = 0.03 if method == "ensemble" else 0.001
                        eu *= (2 if split == "shifted" else 1) * np.exp(rng.normal(0, noise))
                        if with_bad_values and (n, width, seed) == (250, 16, 0):
                            eu = float("nan")
                        rows.append({"cell_id": f"{method}{n}{width}{seed}", "attempt": "0", "task": "toy",
                                     "model": "mlp", "size_knob": "width", "size": width, "params": params, "n": n,
                                     "method": method, "seed": seed, "split": split, "kind": "final", "status": "ok",
                                     "epistemic": eu, "total": 0.3 + eu})  # two metrics keep the test quick
                    if statuses and (method, n, width, seed) == ("ensemble", 2000, 16, 0):
                        rows = [rows[0] | {"split": None, "status": "degenerate", "error": "constant predictions"}]
                    store.write_cell(directory, rows)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    write_store(root / "results", with_bad_values=True, statuses=True)
    report.write(root / "results", root / "report", n_boot=100, holdout=True, target_eu=0.01, plots=True)
    return root / "report"


def test_every_curve_kind_is_fitted_with_its_laws_and_one_choice(written):
    fits = pd.read_parquet(written / "fits.parquet")
    assert set(fits["axis"]) == {"n", "params", "joint"}
    curves = fits.groupby(report.CURVE_ID, dropna=False)
    assert (curves["chosen"].sum() == 1).all() and (curves["chosen_aicc"].sum() == 1).all()
    assert set(fits["law"]) == {"power", "saturating", "offset", "joint"}


def test_gamma_is_the_power_law_exponent_on_every_row_whatever_law_is_chosen(written):
    fits = pd.read_parquet(written / "fits.parquet")
    curves = fits[fits.axis == "n"]
    power = curves[curves.law == "power"].set_index(report.CURVE_ID)["b"]
    assert np.allclose(curves.set_index(report.CURVE_ID)["gamma"],
                       power.reindex(curves.set_index(report.CURVE_ID).index))
    chosen = curves[curves.chosen & curves.ok]
    assert (chosen["gamma_lo"] <= chosen["gamma"]).all() and (chosen["gamma"] <= chosen["gamma_hi"]).all()


def test_no_reported_interval_leaves_its_bounds(written):
    fits = pd.read_parquet(written / "fits.parquet")
    for p, (low, high) in {"b": (-10, 10), "c": (0, np.inf), "alpha": (0, 10), "beta": (0, 10),
                           "E": (0, np.inf)}.items():
        rows = fits[fits[f"{p}_lo"].notna()] if f"{p}_lo" in fits else fits.iloc[:0]
        assert ((rows[f"{p}_lo"] >= low) & (rows[f"{p}_hi"] <= high)).all(), p


def test_report_opens_with_the_summary_and_names_what_was_left_out(written):
    text = (written / "report.md").read_text()
    assert text.index("## Summary") < text.index("![") < text.index("## Fitting checklist") < text.index("## Appendix")
    summary = text[text.index("## Summary"):text.index("![")]
    assert "| ensemble | test |" in summary and "γ_EU" in summary and "Holdout coverage, largest N:" in summary
    assert "1 degenerate (constant predictions; ensemble 1)" in summary
    assert "| ensemble2000160 | ensemble | 2000 | 0 | degenerate | constant predictions |" in text
    assert ("### Values left out of the log fits" in text
            and "| ensemble250160 | ensemble | test | epistemic | nan |" in text)
    for item in ("Law forms:", "Loss:", "Optimizer:", "Start values:", "Points per curve:", "Intervals:",
                 "Selection rule:"):
        assert item in text


def test_n_star_beyond_the_data_and_uninformative_bands_are_words_not_numbers(written):
    fits = pd.read_parquet(written / "fits.parquet")
    flat = fits[(fits.axis == "n") & fits.chosen & (fits.method == "flat") & (fits.metric == "epistemic")]
    assert (flat["trend"] == "flat").all() and flat["x_star_note"].str.startswith("never").all()
    from raysweep.report import writing
    row = {"x_star": 5e3, "x_star_lo": 3e3, "x_star_hi": 4.45e101, "x_star_note": "", "x_10x": 2e4}
    assert writing._needed(row) == "5e+03 [3e+03, beyond the data]"
    assert writing._needed(row | {"x_star_note": "already reached"}) == "already reached"
    wide = {"y_10x": 0.003, "y_10x_lo": 2.75e-17, "y_10x_hi": 3.97e11}
    assert "uninformative" in writing._prediction_at_10x(wide)
    assert writing._prediction_at_10x(wide | {"y_10x_lo": 0.002, "y_10x_hi": 0.004}) == "0.003 [0.002, 0.004]"


def test_outputs_are_written_and_readable(written):
    assert json.loads((written / "fits.json").read_text())[0]["law"] == "power"
    assert set(pd.read_csv(written / "fits.csv").columns) >= {"method", "split", "metric", "b", "points", "gamma",
                                                              "aicc"}
    for metric in ("epistemic", "total"):
        assert (written / f"{metric}_vs_n.png").stat().st_size > 10_000
    assert json.loads((written / "settings.json").read_text())["n_boot"] == 100


def test_the_same_settings_give_the_same_report_and_other_settings_say_they_replace_it(tmp_path):
    write_store(tmp_path / "results")
    one = report.write(tmp_path / "results", tmp_path / "report", n_boot=20, plots=False).read_text()
    again = report.write(tmp_path / "results", tmp_path / "report", n_boot=20, plots=False).read_text()
    assert one == again
    other = report.write(tmp_path / "results", tmp_path / "report", n_boot=30, plots=False).read_text()
    assert "replaces one written with other settings (n_boot 20 -> 30)" in other


def test_regression_differential_entropies_are_shown_not_log_fitted(tmp_path):
    rng = np.random.default_rng(0)
    for n in (100, 200, 400, 800):
        for seed in range(2):
            eu = 2.0 / n * np.exp(rng.normal(0, 0.05))
            store.write_cell(tmp_path / "results", [{
                "cell_id": f"r{n}{seed}", "attempt": "0", "task": "regression", "method": "exact", "n": n, "seed": seed,
                "split": "test", "kind": "final", "status": "ok", "epistemic": eu, "total": -0.3 + eu,
                "aleatoric": -0.3, "total_var": 0.5 + eu, "aleatoric_var": 0.5, "epistemic_var": eu}])
    path = report.write(tmp_path / "results", tmp_path / "report", n_boot=20)
    fits = pd.read_parquet(tmp_path / "report" / "fits.parquet")
    assert set(fits["metric"]) == {"epistemic", "total_var", "aleatoric_var", "epistemic_var"}
    assert (fits[(fits.metric == "epistemic")]["dropped"] == 0).all()
    assert "differential entropies total, aleatoric are shown, not log-fitted" in path.read_text()
    assert (tmp_path / "report" / "total_vs_n.png").exists()


def test_two_workers_give_the_same_fits_as_one(tmp_path):
    write_store(tmp_path / "results")
    table = store.load(tmp_path / "results").to_pandas()
    one = report.fits_frame(report.fit_all(table, n_boot=30, workers=1), 0.01)
    two = report.fits_frame(report.fit_all(table, n_boot=30, workers=2), 0.01)
    pd.testing.assert_frame_equal(one, two, rtol=1e-6)


def test_n_is_labelled_by_the_stores_unit():
    assert report.x_label({"tokens"}) == "training tokens N"
    assert report.x_label({"examples"}) == "training examples N"
    assert report.x_label({"tokens", "examples"}) == "training examples or tokens N"


def test_configurations_are_never_pooled_and_sub_ensembles_stay_out_of_the_main_fits(tmp_path):
    """Two learning rates merged into one store (launch --merge) and grid.members rows: the report fits
    one curve per configuration, named by what differs, from the rows of all S members only."""
    rng = np.random.default_rng(1)
    results = tmp_path / "results"
    for lr, scale in ((0.001, 1.0), (0.01, 3.0)):
        config = {"method": "ensemble", "train": {"lr": lr, "epochs": 5}, "method_options": {"members": 4}}
        variant = store.variant(config)
        for n in (100, 200, 400, 800, 1600):
            for seed in range(3):
                base = {"cell_id": f"{lr}-{n}-{seed}", "attempt": "0", "task": "toy", "model": "mlp", "size": 8,
                        "size_knob": "width", "params": 100, "n": n, "method": "ensemble", "seed": seed,
                        "split": "test", "kind": "final", "status": "ok", "variant": variant,
                        "config": json.dumps(config | {"n": n, "seed": seed})}
                eu = scale * n ** -0.5 * np.exp(rng.normal(0, 0.02))
                rows = [base | {"epistemic": eu, "total": 1 + eu},
                        base | {"members": 2, "epistemic": eu / 100, "total": 1 + eu}]  # a sub-ensemble row
                store.write_cell(results, rows)
    report.write(results, tmp_path / "report", n_boot=50, plots=False)
    fits = pd.read_parquet(tmp_path / "report" / "fits.parquet")
    power = fits[(fits.axis == "n") & (fits.law == "power") & (fits.metric == "epistemic")]
    assert sorted(power["method"]) == ["ensemble (train.lr=0.001)", "ensemble (train.lr=0.01)"]
    # each curve has 5 N x 3 seeds of its own configuration: exponent 0.5, amplitudes 1 and 3
    for method, amplitude in (("ensemble (train.lr=0.001)", 1.0), ("ensemble (train.lr=0.01)", 3.0)):
        (row,) = power[power.method == method].itertuples()
        assert row.b == pytest.approx(0.5, abs=0.03) and row.a == pytest.approx(amplitude, rel=0.15)


def test_laws_in_compute_and_in_ensemble_size_are_fitted_from_their_own_rows(tmp_path):
    """EU = 5·C^-0.3 over the cells' stored compute, and EU(m) = 0.2·m^-0.5 over a pool's first m
    members (grid.members rows): each law comes back from its own axis."""
    rng = np.random.default_rng(2)
    results = tmp_path / "results"
    for n in (100, 200, 400, 800, 1600):
        for width in (8, 32):
            for seed in range(3):
                flops = 6.0 * 100 * width * n * 10
                base = {"cell_id": f"{n}-{width}-{seed}", "attempt": "0", "task": "toy", "model": "mlp", "size": width,
                        "size_knob": "width", "params": 100 * width, "n": n, "method": "ensemble", "seed": seed,
                        "split": "test", "kind": "final", "status": "ok", "train_flops": flops}
                noise = lambda: np.exp(rng.normal(0, 0.02))  # noqa: E731
                rows = [base | {"epistemic": 5 * flops ** -0.3 * noise(), "total": 1.0}]
                rows += [base | {"members": m, "epistemic": 0.2 * m ** -0.5 * noise(), "total": 1.0}
                         for m in (2, 4, 8, 16)]
                store.write_cell(results, rows)
    report.write(results, tmp_path / "report", n_boot=20, plots=False)
    fits = pd.read_parquet(tmp_path / "report" / "fits.parquet")
    power = fits[(fits.law == "power") & (fits.metric == "epistemic")]
    (compute,) = power[power.axis == "compute"].itertuples()
    assert compute.b == pytest.approx(0.3, abs=0.02) and compute.a == pytest.approx(5, rel=0.3)
    members = power[power.axis == "members"]
    assert len(members) == 5 * 2  # one curve per (size, N)
    assert np.allclose(members.b, 0.5, atol=0.05) and np.allclose(members.a, 0.2, rtol=0.1)
    main = power[power.axis == "n"]  # C ∝ N at each width: slope 0.3, which the members rows (flat in N) would flatten
    assert np.allclose(main.b, 0.3, atol=0.03)


SCORES = {"auroc_epistemic": "AUROC EU ↑", "auroc_total": "AUROC TU ↑", "ece": "ECE ↓", "ece_ts": "ECE TS ↓",
          "nll_ts": "NLL TS ↓", "temperature": "T", "aurc": "AURC ↓", "augrc": "AUGRC ↓"}


def summary_rows(text: str) -> dict:
    """(method, split) -> {header: cell} from the summary's markdown table."""
    lines = [line for line in text[text.index("## Summary"):].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {(r["method"], r["split"]): r for r in rows if "split" in r}


def test_summary_scores_are_the_store_means_at_the_largest_n_and_size_and_a_dash_where_a_task_has_none(tmp_path):
    """Random AURC, AUGRC, temperature-scaled ECE and NLL per row: each summary cell is the mean over
    seeds of the store's rows at the largest N and size; a regression task's cells are '—', not nan."""
    rng = np.random.default_rng(3)
    results = tmp_path / "results"
    for n in (100, 200, 400):
        for width in (8, 16):
            for seed in range(3):
                rows = []
                for split in ("test", "ood"):
                    base = {"cell_id": f"c{n}-{width}-{seed}", "attempt": "0", "task": "toy", "model": "mlp",
                            "size": width, "size_knob": "width", "params": 100 * width, "n": n,
                            "method": "ensemble", "seed": seed, "split": split, "kind": "final", "status": "ok",
                            "epistemic": n ** -0.5 * np.exp(rng.normal(0, 0.05)), "total": 1.0}
                    scores = {key: rng.uniform(0.01, 0.9) for key in SCORES if split == "ood" or "auroc" not in key}
                    if (n, width, seed) == (400, 16, 2):
                        scores["aurc"] = float("nan")  # a seed without the score: the mean of the others
                    rows.append(base | scores)
                store.write_cell(results, rows)
        for seed in range(3):
            store.write_cell(results, [{"cell_id": f"r{n}-{seed}", "attempt": "0", "task": "regression",
                                        "method": "exact", "n": n, "seed": seed, "split": "test", "kind": "final",
                                        "status": "ok", "epistemic": 2.0 / n, "total": 0.1, "aleatoric": 0.1,
                                        "total_var": 0.5 + 2.0 / n, "aleatoric_var": 0.5, "epistemic_var": 2.0 / n}])
    text = report.write(results, tmp_path / "report", n_boot=0, plots=False).read_text()
    table = summary_rows(text)
    rows = store.load(results).to_pandas()
    largest = rows[(rows.method == "ensemble") & (rows.n == 400) & (rows["size"] == 16)]
    for split in ("test", "ood"):
        cells = table[("ensemble", split)]
        for key, header in SCORES.items():
            expected = largest[largest.split == split][key].dropna()
            if expected.empty:
                assert cells[header] == "—", (split, key)
                continue
            assert len(expected) == (2 if key == "aurc" else 3)  # the seed without AURC is left out of its mean
            digits = 2 if key == "temperature" else 3
            assert float(cells[header]) == pytest.approx(expected.mean(), abs=0.6 * 10 ** -digits), (split, key)
    assert all(table[("exact", "test")][header] == "—" for header in SCORES.values())
    assert "↓ lower is better" in text and "nan" not in text[text.index("## Summary"):text.index("Holdout")]


def test_holdout_coverage_far_below_nominal_is_called_unsupported_beside_the_number():
    from raysweep.report import writing

    def fits(inside_n, inside_p, checks=20):
        return pd.DataFrame({"chosen": True, "chosen_aicc": True, "size": np.tile([8, 32, 128, 512], checks // 4),
                             "holdout_n_inside": [True] * inside_n + [False] * (checks - inside_n),
                             "holdout_p_inside": [True] * inside_p + [False] * (checks - inside_p)})

    good = writing._coverage_lines(fits(19, 18), holdout=True)
    assert len(good) == 1 and "largest N: 19/20 (95%)" in good[0] and "largest P: 18/20 (90%)" in good[0]
    bad = writing._coverage_lines(fits(19, 7), holdout=True)
    assert len(bad) == 2 and "largest P: 7/20 (35%)" in bad[0]
    assert bad[1].startswith("The bands understate the error of extrapolating in P (35% covered")
    assert "4 model sizes: a law in P is checked on 3" in bad[1]
    few = writing._coverage_lines(fits(1, 1, checks=4), holdout=True)  # too few checks to judge
    assert len(few) == 1


def test_cells_left_out_are_grouped_by_the_kind_of_reason_with_the_methods_behind_them():
    from raysweep.report import writing

    table = pd.DataFrame([{"cell_id": f"c{i}", "method": method, "n": 50, "size": 8, "seed": i, "status": "degenerate",
                           "error": f"test accuracy 0.{11 + i} is at chance (always predicting the most common "
                                    f"class scores 0.1433)"} for i, method in enumerate(["ivon", "ivon", "vi"])]
                         + [{"cell_id": "f", "method": "vi", "n": 50, "size": 8, "seed": 0, "status": "failed",
                             "error": "Traceback ...\nRuntimeError: training diverged at epoch 3: loss=nan"}])
    (line,) = writing._left_out_lines(table)
    assert line == ("Cells left out: 3 degenerate (test accuracy … is at chance (always predicting the most common "
                    "class scores …); ivon 2, vi 1); 1 failed (RuntimeError: training diverged at epoch …: loss=nan; "
                    "vi 1) (appendix).")


def test_the_summary_says_where_a_methods_eu_is_not_yet_learned():
    from raysweep.report import writing

    cells = pd.DataFrame([{"cell_id": "a", "scale_speed": 0.9}, {"cell_id": "a", "scale_speed": 0.9},  # two splits
                          {"cell_id": "b", "scale_speed": 0.8}, {"cell_id": "c", "scale_speed": 0.1},
                          {"cell_id": "d", "scale_speed": float("nan")}, {"cell_id": "e", "hess_init_weight": 0.01}])
    cells["method"] = ["vi", "vi", "vi", "vi", "vi (lr=0.3)", "ivon"]
    (line,) = writing._not_learned_lines(cells)
    assert line.startswith("VI: in 2 of 3 cells the guide's scales still moved at 80-90% (median 85%) of Adam's "
                           "full step in the last epoch, so their EU is where training stopped")
    assert writing._not_learned_lines(cells.assign(scale_speed=0.1)) == []  # settled; IVON's 1% is learned too
    assert writing._not_learned_methods(cells) == {"vi"}  # 2 of its 3 cells; the summary marks its γ
    assert writing._not_learned_methods(cells.assign(scale_speed=0.1)) == set()
