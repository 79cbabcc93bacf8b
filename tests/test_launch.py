"""End to end through Ray Tune: experiment file → trials → store → fits → report."""

import pandas as pd
import pytest
import torch
from conftest import EXPERIMENTS

from raysweep import experiment as E
from raysweep import store
from raysweep.cell import run_cell
from raysweep.launch import auto_cells_per_trial, chunk_cells, main, parse_args, wants_dashboard
from raysweep.trial import chunk_label

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory, request):
    root = request.config.rootpath
    output = tmp_path_factory.mktemp("runs")
    args = [str(root / "experiments" / "regression.py"), "--output", str(output), "--no-dashboard",
            "--set", "grid.methods=exact", "--cells-per-trial", "4"]
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


def test_the_rows_are_kept_once_in_the_store_not_again_in_tunes_folder(regression_run):
    output, _ = regression_run
    tune = output / "regression" / "tune"
    logs = sorted(tune.glob("*/result.json"))
    assert logs, "Tune's result grid needs a result.json per trial"
    cell_ids = set(store.load(store.results_dir(output, "regression")).column("cell_id").to_pylist())
    assert len(cell_ids) == 18
    for saved in logs + sorted(tune.glob("experiment_state*.json")):
        text = saved.read_text()
        assert '"rows"' not in text and "epistemic" not in text, saved  # no row, no metric of one
    for log in logs:
        assert "cell_id" not in log.read_text()  # not even the chunk's config: params.json has it


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
    assert table.status.isin(store.DONE).all() and table.cell_id.nunique() >= 2  # smoke cells may be at chance
    assert (tmp_path / name / "report" / "report.md").exists()


# ---------------------------------------------------------------------------------------------
# Several cells per Tune trial

def test_automatic_cells_per_trial_batches_only_many_small_cpu_cells():
    assert auto_cells_per_trial(100, slots=2, gpus=0) == 10  # 10 trials, 5 per slot
    assert auto_cells_per_trial(6, slots=2, gpus=0) == 1  # a small grid keeps one cell per trial
    assert auto_cells_per_trial(10_000, slots=64, gpus=0) == 10  # capped
    assert auto_cells_per_trial(10_000, slots=64, gpus=1) == 1  # GPU cells: one per trial


@pytest.mark.parametrize("cells, per_trial, slots", [(100, 10, 2), (18, 4, 2), (7, 3, 3), (5, 10, 2), (3, 1, 8)])
def test_chunks_hold_every_cell_once_at_most_k_each_and_fill_the_slots(cells, per_trial, slots):
    chunks = chunk_cells(list(range(cells)), per_trial, slots)
    assert sorted(c for chunk in chunks for c in chunk) == list(range(cells))
    assert max(map(len, chunks)) <= per_trial and max(map(len, chunks)) - min(map(len, chunks)) <= 1
    assert len(chunks) % slots == 0 or len(chunks) == cells


def test_a_chunk_of_the_grid_mixes_its_costs_and_names_its_cells(root):
    cells = E.cells(E.load(root / "benchmarks" / "sweep_experiment.py"))  # 2 widths x 5 N x 10 seeds
    chunks = chunk_cells(cells, 10, slots=2)
    assert [len(chunk) for chunk in chunks] == [10] * 10
    assert {(c["size"], c["n"]) for c in chunks[0]} == {(s, n) for s in (16, 32) for n in (100, 200, 400, 800, 1600)}
    assert chunk_label(chunks[0]) == "regression_N{100,200,400,800,1600}_width{16,32}_ensemble_s0 (10 cells)"
    assert chunk_label(chunks[0][:1]) == E.cell_label(chunks[0][0])


def test_chunked_cells_give_one_file_each_and_the_rows_of_cells_run_alone(root, tmp_path):
    # 4 trained cells (2 N x 2 seeds, 3 epochs), two per trial; the reference runs each cell by
    # itself in this process, without Ray, on one thread like a trial.
    settings = ["--smoke", "--set", "grid.methods=ensemble", "--set", "grid.seeds=0,1", "--set", "train.epochs=3"]
    assert main([str(root / "experiments" / "digits.py"), "--output", str(tmp_path), "--no-dashboard",
                 "--cells-per-trial", "2", *settings]) == 0
    results = store.results_dir(tmp_path, "digits")
    names = sorted(p.name.split(".")[0] for p in results.glob("*.parquet"))
    experiment = E.apply_overrides(E.smoke(E.load(root / "experiments" / "digits.py")), settings[2::2])
    cells = E.cells(experiment)
    assert names == sorted(c["cell_id"] for c in cells)  # one file per cell

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = [row for c in cells for row in run_cell(c, lambda rows: None)]
        alone_epochs = []
        for c in cells:
            run_cell(c, lambda rows: alone_epochs.extend(r for r in rows if r["kind"] == "epoch"))
    finally:
        torch.set_num_threads(threads)
    keys = ["cell_id", "split"]
    columns = keys + ["params", "epoch", "status", *store.METRICS[1:]]
    chunked = store.load(results).to_pandas()[columns].sort_values(keys).reset_index(drop=True)
    reference = pd.DataFrame(alone).reindex(columns=columns).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(chunked, reference, check_dtype=False, check_exact=True)
    epochs = store.load(results, kind="epoch").to_pandas()[["cell_id", "epoch", "loss"]].sort_values(
        ["cell_id", "epoch"])
    expected = pd.DataFrame(alone_epochs)[["cell_id", "epoch", "loss"]].sort_values(["cell_id", "epoch"])
    pd.testing.assert_frame_equal(epochs.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False,
                                  check_exact=True)


@pytest.mark.parametrize("argv, cpus, expected", [([], 2, False), ([], 4, False), ([], 16, True),
                                                   (["--dashboard"], 2, True), (["--no-dashboard"], 16, False)])
def test_the_dashboard_is_off_by_default_only_on_small_machines(argv, cpus, expected):
    assert wants_dashboard(parse_args(["experiment.py", *argv]).dashboard, cpus=cpus) is expected
