"""The report from a synthetic store: every curve kind, the tables, the plots, the robustness notes."""

import json

import numpy as np
import pandas as pd
import pytest

from raysweep import report, store


def write_store(directory, with_bad_values=False):
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
                        rows.append({"cell_id": f"{method}{n}{width}{seed}", "attempt": "0", "task": "toy", "model": "mlp",
                                     "size_knob": "width", "size": width, "params": params, "n": n, "method": method,
                                     "seed": seed, "split": split, "kind": "final", "status": "ok", "epistemic": eu,
                                     "total": 0.3 + eu})  # two metrics keep the test quick
                    store.write_cell(directory, rows)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    write_store(root / "results", with_bad_values=True)
    report.write(root / "results", root / "report", n_boot=200, holdout=True, target_eu=0.01)
    return root / "report"


def test_every_curve_kind_is_fitted_with_its_laws(written):
    fits = pd.read_parquet(written / "fits.parquet")
    assert set(fits["axis"]) == {"n", "params", "joint"}
    curves = fits.groupby(["method", "split", "metric", "axis", "size", "at_n"], dropna=False)
    assert (curves["chosen"].sum() == 1).all()  # exactly one chosen law per curve
    # 2 methods x 2 splits x 2 metrics x (3 sizes + 4 N + 1 joint)
    assert curves.ngroups == 2 * 2 * 2 * 8
    assert set(fits["law"]) == {"power", "saturating", "offset", "joint"}


def test_joint_law_recovers_the_exponents(written):
    fits = pd.read_parquet(written / "fits.parquet")
    joint = fits[(fits.axis == "joint") & (fits.method == "ensemble") & (fits.split == "test") & (fits.metric == "epistemic")].iloc[0]
    assert joint["alpha_lo"] <= 0.8 <= joint["alpha_hi"] and abs(joint["alpha"] - 0.8) < 0.15
    assert abs(joint["beta"] - 0.5) < 0.15


def test_n_star_extrapolation_and_holdout_are_reported(written):
    fits = pd.read_parquet(written / "fits.parquet")
    row = fits[(fits.axis == "n") & fits.chosen & (fits.method == "ensemble") & (fits.split == "test")
               & (fits.metric == "epistemic") & (fits["size"] == 256)].iloc[0]
    assert row["x_10x"] == 20000 and row["y_10x_lo"] <= row["y_10x"] <= row["y_10x_hi"]
    assert row["x_star"] > 0 and row["holdout_n_x"] == 2000 and not pd.isna(row["holdout_n_rel_error"])
    flat = fits[(fits.axis == "n") & fits.chosen & (fits.method == "flat") & (fits.metric == "epistemic")]
    assert (flat["trend"] == "flat").all()
    assert np.isinf(flat[flat.split == "shifted"]["x_star"]).all()  # 0.1 nats, flat, never reaches 0.01


def test_markdown_states_dropped_values_unfit_curves_and_findings(written):
    text = (written / "report.md").read_text()
    assert "### Dropped values" in text and "| ensemble | size 16 | test | epistemic | 1 | 11 |" in text
    assert "| flat |" in text and "flat" in text
    assert "How much more until epistemic uncertainty ≤ 0.01 nats" in text
    assert "Extrapolation check: refit without the largest N" in text and "without the largest P" in text
    assert "![epistemic_vs_n](epistemic_vs_n.png)" in text


def test_a_curve_with_too_few_points_is_unfit_in_the_report(tmp_path):
    write_store(tmp_path / "results")
    table = store.load(tmp_path / "results").to_pandas()
    table = table[table["n"] <= 500]  # two N: 6 points per curve, 2 distinct x
    fits, _ = report.fit_all(table, n_boot=50)
    unfit = fits[(fits.axis == "n") & (fits.law == "saturating")]
    assert (~unfit["ok"]).all() and (unfit["message"] == "need at least 3 distinct x values, got 2").all()


def test_outputs_are_written_and_readable(written):
    assert json.loads((written / "fits.json").read_text())[0]["law"] == "power"
    assert set(pd.read_csv(written / "fits.csv").columns) >= {"method", "split", "metric", "b", "points"}
    for metric in ("epistemic", "total"):
        for axis in ("n", "params"):
            assert (written / f"{metric}_vs_{axis}.png").stat().st_size > 10_000


def test_terminal_table_is_compact_and_has_intervals(written):
    text = report.table(pd.read_parquet(written / "fits.parquet"))
    lines = text.splitlines()
    assert len(lines) == 1 + 2 * 2 * 2 * 2  # header + (method x split x metric) x (largest size, joint)
    assert any("alpha = " in line and "[" in line for line in lines)


def test_two_workers_give_the_same_fits_as_one(tmp_path):
    write_store(tmp_path / "results")
    table = store.load(tmp_path / "results").to_pandas()
    one, _ = report.fit_all(table, n_boot=50, holdout=True, workers=1)
    two, _ = report.fit_all(table, n_boot=50, holdout=True, workers=2)
    pd.testing.assert_frame_equal(one, two)


def test_a_reused_canvas_draws_each_figure_as_a_fresh_one(tmp_path):
    """The canvas is cleared between metrics; nothing of the previous figure may show."""
    write_store(tmp_path / "results")
    table = store.load(tmp_path / "results").to_pandas()
    _, fitted = report.fit_all(table, n_boot=20)
    jobs = report.figure_jobs(table, fitted)
    (tmp_path / "reused").mkdir()
    (tmp_path / "fresh").mkdir()
    report._plot_part(jobs, tmp_path / "reused")
    for job in jobs:
        report._plot_part([job], tmp_path / "fresh")
    for path in (tmp_path / "fresh").iterdir():
        assert path.read_bytes() == (tmp_path / "reused" / path.name).read_bytes(), path.name


def test_log_axes_are_labelled_with_plain_numbers():
    fig, ax = report.plt.subplots()
    ax.set(xscale="log", yscale="log", xlim=(300, 2e6), ylim=(0.28, 0.33))  # y spans under a decade
    for side in (ax.xaxis, ax.yaxis):
        side.set_major_formatter(report._PlainLog())
        side.set_minor_formatter(report._PlainLog())
    fig.canvas.draw()
    x_labels = [t.get_text() for t in ax.get_xticklabels() if 300 <= t.get_position()[0] <= 2e6]
    y_labels = [t.get_text() for t in ax.get_yticklabels(minor=True) if 0.28 <= t.get_position()[1] <= 0.33]
    report.plt.close(fig)
    assert x_labels == ["1k", "10k", "100k", "1M"]
    assert y_labels == ["0.28", "0.29", "0.3", "0.31", "0.32", "0.33"]


def test_n_is_labelled_in_tokens_for_language_tasks():
    assert report.x_label("n", {"text"}) == "training tokens N"
    assert report.x_label("n", {"digits", "regression"}) == "training examples N"
    assert report.x_label("n", {"text", "digits"}) == "training examples or tokens N"
    assert report.x_label("params", {"text"}) == "parameters P"
