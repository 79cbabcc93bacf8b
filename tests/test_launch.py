"""End to end through Ray Tune: experiment file → trials → store → fits → report."""

import pandas as pd
import pytest

from raysweep import store
from raysweep.launch import main

from conftest import EXPERIMENTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory, request):
    root = request.config.rootpath
    output = tmp_path_factory.mktemp("runs")
    args = [str(root / "experiments" / "regression.py"), "--output", str(output), "--no-dashboard",
            "--set", "grid.methods=exact"]
    assert main(args) == 0
    return output, args


def test_exact_epistemic_uncertainty_falls_as_one_over_n(regression_run):
    output, _ = regression_run
    fits = pd.read_csv(output / "regression" / "report" / "fits.csv")
    law = fits[(fits.method == "exact") & (fits.split == "test") & (fits.metric == "epistemic")].iloc[0]
    # Theory: EU ≈ d / (2(N - d - 1)) for the exact posterior, whose local log-log slope runs from
    # -1.10 at N = 200 to -1.003 at N = 6400; the fitted exponent must lie in [-1.1, -0.9].
    assert -1.1 <= -law.b <= -0.9
    assert law.points == 6 * 3  # every N and seed, nothing dropped
    report = (output / "regression" / "report" / "report.md").read_text()
    assert "18 cells finished, 0 failed" in report
    assert (output / "regression" / "report" / "epistemic_vs_n.png").stat().st_size > 10_000


def test_rerunning_a_finished_launch_runs_nothing_and_adds_no_rows(regression_run, capsys):
    output, args = regression_run
    results = store.results_dir(output, "regression")
    files_before = {p.name: p.read_bytes() for p in results.iterdir()}
    assert main(args) == 0
    assert "nothing to run: every cell is already in the store" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in results.iterdir()} == files_before
    assert store.load(results).num_rows == 18 * 2  # 18 cells x (test, shifted)


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_file_runs_in_smoke_mode(experiment, tmp_path):
    assert main([str(experiment), "--smoke", "--output", str(tmp_path), "--no-dashboard"]) == 0
    name = next((tmp_path).iterdir()).name
    table = store.load(store.results_dir(tmp_path, name)).to_pandas()
    assert (table.status == "ok").all() and table.cell_id.nunique() >= 2
    assert (tmp_path / name / "report" / "report.md").exists()
