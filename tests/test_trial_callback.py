"""The driver-side store callback and the chunk loop, driven with stand-in trials (no Ray cluster needed)."""

from types import SimpleNamespace

import pytest

from raysweep import cell as cell_module
from raysweep import store
from raysweep import trial as trial_module
from raysweep.trial import StoreCallback


def make_cell(cell_id, seed=0):
    return {"cell_id": cell_id, "experiment": "e", "task": {"name": "digits"}, "model": {"name": "mlp"},
            "size_knob": "width", "size": 16, "n": 50, "method": "ensemble", "seed": seed}


CELL = make_cell("c1")


class StandInTrial(SimpleNamespace):
    """What the callback uses of a Tune Trial: id, config (set_config on recovery) and the error text;
    its chunk is the callback's chunk 0 (`chunks(t)`)."""

    def __init__(self, cells, error=None):
        super().__init__(trial_id="t1", config={"chunk": trial_module.chunk_config(0, cells)}, error=error, cells=cells)

    def get_error(self):
        return self.error

    def set_config(self, config):
        self.config = config


def trial(error=None):
    return StandInTrial([CELL], error)


def epoch(attempt, e, cell_id="c1"):
    return {"cell_id": cell_id, "attempt": attempt, "kind": "epoch", "split": "train", "epoch": e, "status": "ok",
            "loss": 1.0 / e}


def final(attempt, epistemic, cell_id="c1"):
    return {"cell_id": cell_id, "attempt": attempt, "kind": "final", "split": "test", "status": "ok",
            "epistemic": epistemic}


def files_per_cell(directory):
    names = [p.name.split(".")[0] for p in directory.glob("*.parquet")]
    return {name: names.count(name) for name in names}


def test_a_retried_cell_that_replays_epochs_keeps_only_its_latest_attempt(tmp_path, capsys):
    t = trial()
    callback = StoreCallback(tmp_path, [t.cells], total=1)
    for rows in ([epoch("001", 1)], [epoch("001", 2)], [epoch("002", 1)], [epoch("002", 2)], [final("002", 0.3)]):
        callback.on_trial_result(0, [], t, {"rows": rows})
    callback.on_trial_complete(0, [], t)
    files = list(tmp_path.glob("*.parquet"))
    assert [f.name for f in files] == ["c1.002.parquet"]
    assert store.load(tmp_path, kind="epoch").column("epoch").to_pylist() == [1, 2]
    finals = store.load(tmp_path)
    assert finals.num_rows == 1 and finals.column("epistemic").to_pylist() == [0.3]
    assert finals.column("method").to_pylist() == ["ensemble"] and finals.column("size").to_pylist() == [16]
    assert "1/1 cells (0 failed" in capsys.readouterr().out


def test_a_cell_that_errors_is_recorded_as_failed_with_its_reason(tmp_path, capsys):
    t = trial(error="Traceback ...\nRuntimeError: CUDA out of memory")
    callback = StoreCallback(tmp_path, [t.cells], total=2)
    callback.on_trial_result(0, [], t, {"rows": [epoch("001", 1)]})
    callback.on_trial_error(0, [], t)
    table = store.load(tmp_path)
    assert table.column("status").to_pylist() == ["failed"]
    assert "CUDA out of memory" in table.column("error")[0].as_py()
    assert store.finished_cells(tmp_path) == set()
    assert "FAILED: RuntimeError: CUDA out of memory" in capsys.readouterr().out


def test_each_cell_of_a_chunk_is_written_to_its_own_file_as_soon_as_it_finishes(tmp_path, capsys):
    cells = [make_cell(f"c{i}", seed=i) for i in (1, 2, 3)]
    t = StandInTrial(cells)
    callback = StoreCallback(tmp_path, [t.cells], total=3)
    # One report may carry the end of one cell and the start of the next.
    callback.on_trial_result(0, [], t, {"rows": [epoch("a1", 1, "c1"), final("a1", 0.1, "c1"), epoch("a2", 1, "c2")]})
    assert files_per_cell(tmp_path) == {"c1": 1}
    callback.on_trial_result(0, [], t, {"rows": [final("a2", 0.2, "c2"), epoch("a3", 1, "c3"), final("a3", 0.3, "c3")]})
    callback.on_trial_complete(0, [], t)
    assert files_per_cell(tmp_path) == {"c1": 1, "c2": 1, "c3": 1}
    finals = store.load(tmp_path).to_pandas().set_index("cell_id")
    assert finals.epistemic.to_dict() == {"c1": 0.1, "c2": 0.2, "c3": 0.3}
    # coordinates come from each cell, not the chunk's first
    assert finals.seed.to_dict() == {"c1": 1, "c2": 2, "c3": 3}
    assert store.load(tmp_path, kind="epoch").num_rows == 3
    lines = [line for line in capsys.readouterr().out.splitlines() if " cells (" in line]
    assert [line.split(" cells")[0] for line in lines] == ["[raysweep] 1/3", "[raysweep] 2/3", "[raysweep] 3/3"]


def test_a_retried_chunk_skips_the_cells_already_written(tmp_path, capsys):
    cells = [make_cell(f"c{i}", seed=i) for i in (1, 2, 3)]
    t = StandInTrial(cells, error="CellsFailed: digits_N50_width16_ensemble_s2: ValueError: bad batch")
    callback = StoreCallback(tmp_path, [t.cells], total=3)
    callback.on_trial_result(0, [], t, {"rows": [final("a1", 0.1, "c1"), epoch("a2", 1, "c2"), final("a3", 0.3, "c3")],
                                        "errors": {"c2": "Traceback ...\nValueError: bad batch"}})
    callback.on_trial_recover(0, [], t)
    assert t.config["skip"] == ["c1", "c3"]
    assert "retrying digits_N50_width16_ensemble_s2 after: ValueError: bad batch" in capsys.readouterr().out
    callback.on_trial_result(0, [], t, {"rows": [epoch("b2", 1, "c2"), final("b2", 0.2, "c2")]})  # the retry
    callback.on_trial_complete(0, [], t)
    assert files_per_cell(tmp_path) == {"c1": 1, "c2": 1, "c3": 1}
    assert store.finished_cells(tmp_path) == {"c1", "c2", "c3"}
    assert store.load(tmp_path, kind="epoch").column("attempt").to_pylist() == ["b2"]


def test_a_chunk_out_of_retries_keeps_its_finished_cells_and_records_the_rest_as_failed(tmp_path, capsys):
    cells = [make_cell(f"c{i}", seed=i) for i in (1, 2, 3)]
    t = StandInTrial(cells, error="Traceback ...\nRayActorError: The actor died unexpectedly")
    callback = StoreCallback(tmp_path, [t.cells], total=3)
    callback.on_trial_result(0, [], t, {"rows": [final("a1", 0.1, "c1"), epoch("a2", 1, "c2")]})
    callback.on_trial_error(0, [], t)  # the worker died during c2; c3 never started
    table = store.load(tmp_path).to_pandas().set_index("cell_id")
    assert table.status.to_dict() == {"c1": "ok", "c2": "failed", "c3": "failed"}
    assert table.loc["c1", "epistemic"] == 0.1
    assert all("The actor died unexpectedly" in table.loc[c, "error"] for c in ("c2", "c3"))
    assert store.load(tmp_path, kind="epoch").column("cell_id").to_pylist() == ["c2"]  # c2's partial epochs kept
    assert store.finished_cells(tmp_path) == {"c1"}  # the next launch runs c2 and c3 only
    assert "3/3 cells (2 failed" in capsys.readouterr().out


def test_run_chunk_runs_every_cell_past_one_that_raises_and_skips_the_given_ones(monkeypatch):
    ran = []

    def fake_run_cell(cell, report, device="cpu"):
        ran.append(cell["cell_id"])
        if cell["cell_id"] == "c2":
            raise ValueError("bad batch")
        report([final("a", 0.5, cell["cell_id"])])

    monkeypatch.setattr(cell_module, "run_cell", fake_run_cell)
    reported = []
    cells = [make_cell(f"c{i}") for i in (1, 2, 3, 4)]
    errors = cell_module.run_chunk(cells, reported.extend, skip={"c4"})
    assert ran == ["c1", "c2", "c3"]
    assert [row["cell_id"] for row in reported] == ["c1", "c3"]
    assert list(errors) == ["c2"] and "ValueError: bad batch" in errors["c2"]


@pytest.mark.parametrize("flush_every, reports", [(3600.0, 1), (0.0, 3)])
def test_the_outbox_sends_rows_at_most_once_per_flush_interval(monkeypatch, flush_every, reports):
    sent = []
    monkeypatch.setattr(trial_module.tune, "report", sent.append)
    monkeypatch.setattr(trial_module, "FLUSH_EVERY_S", flush_every)
    outbox = trial_module.Outbox(node="n1")
    for e in (1, 2, 3):
        outbox.add([epoch("a", e)])
    outbox.flush()
    assert len(sent) == reports
    rows = [row for result in sent for row in result["rows"]]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and {row["node"] for row in rows} == {"n1"}
