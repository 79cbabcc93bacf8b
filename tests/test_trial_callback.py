"""The driver-side store callback, driven with stand-in trials (no Ray cluster needed)."""

from types import SimpleNamespace

from raysweep import store
from raysweep.trial import StoreCallback

CELL = {"cell_id": "c1", "experiment": "e", "task": {"name": "digits"}, "model": {"name": "mlp"},
        "size_knob": "width", "size": 16, "n": 50, "method": "ensemble", "seed": 0}


def trial(error=None):
    return SimpleNamespace(trial_id="t1", config={"cell": CELL}, get_error=lambda: error)


def epoch(attempt, e):
    return {"cell_id": "c1", "attempt": attempt, "kind": "epoch", "split": "train", "epoch": e, "status": "ok", "loss": 1.0 / e}


def final(attempt, epistemic):
    return {"cell_id": "c1", "attempt": attempt, "kind": "final", "split": "test", "status": "ok", "epistemic": epistemic}


def test_a_retried_cell_that_replays_epochs_keeps_only_its_latest_attempt(tmp_path, capsys):
    callback = StoreCallback(tmp_path, total=1)
    t = trial()
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
    callback = StoreCallback(tmp_path, total=2)
    t = trial(error="Traceback ...\nRuntimeError: CUDA out of memory")
    callback.on_trial_result(0, [], t, {"rows": [epoch("001", 1)]})
    callback.on_trial_error(0, [], t)
    table = store.load(tmp_path)
    assert table.column("status").to_pylist() == ["failed"]
    assert "CUDA out of memory" in table.column("error")[0].as_py()
    assert store.finished_cells(tmp_path) == set()
    assert "FAILED: RuntimeError: CUDA out of memory" in capsys.readouterr().out
