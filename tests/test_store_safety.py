"""Issue 16: the store is one configuration, one writer at a time, and a reader that only reads
its own `*.parquet` files, checks their types and tolerates other readers."""

import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysweep import store
from raysweep.trial import StoreCallback, chunk_config


def rows(cell_id, attempt="001", **extra):
    return [{"cell_id": cell_id, "attempt": attempt, "kind": "final", "split": "test", "status": "ok",
             "n": 50, "epistemic": 0.1} | extra]


# ---------------------------------------------------------------------------------------------
# Reader

def test_only_the_folders_own_parquet_files_are_read(tmp_path):
    results = tmp_path / "results"
    store.write_cell(results, rows("a"))
    (results / "notes.txt").write_text("my notes")
    nested = results / "runs" / "other" / "results"  # an --output nested inside the store
    store.write_cell(nested, rows("b"))
    (results / "dir.parquet").mkdir()  # a folder named like a file
    assert store.load(results).column("cell_id").to_pylist() == ["a"]
    assert store.finished_cells(results) == {"a"}
    assert (results / "notes.txt").exists() and not store.corrupt_dir(results).exists()


def test_a_foreign_file_with_the_required_columns_but_other_types_is_quarantined(tmp_path, capsys):
    store.write_cell(tmp_path / "results", rows("a"))
    foreign = pa.table({"cell_id": ["x"], "attempt": ["1"], "kind": ["final"], "status": ["ok"], "n": ["fifty"]})
    pq.write_table(foreign, tmp_path / "results" / "x.1.parquet")
    assert store.load(tmp_path / "results").column("cell_id").to_pylist() == ["a"]
    assert (tmp_path / "corrupt" / "x.1.parquet").exists()
    assert "mistyped columns: n is string, expected int64" in capsys.readouterr().err


def test_an_older_file_without_new_columns_still_loads_and_gets_its_variant(tmp_path):
    cell = {"cell_id": "a", "experiment": "e", "n": 50, "size": 8, "seed": 0, "method": "ensemble",
            "size_knob": "width", "model": {"name": "mlp", "width": 8}, "train": {"lr": 0.1}}
    old = pa.table({"cell_id": ["a"], "attempt": ["1"], "kind": ["final"], "status": ["ok"], "n": [50],
                    "config": [json.dumps(cell)]})
    (tmp_path / "r").mkdir()
    pq.write_table(old, tmp_path / "r" / "a.1.parquet")
    table = store.load(tmp_path / "r")
    assert table.schema == store.SCHEMA and table.column("variant").to_pylist() == [store.variant(cell)]


def test_a_file_corrupted_after_an_earlier_scan_is_quarantined_when_read(tmp_path):
    results = tmp_path / "results"
    store.write_cell(results, rows("a"))
    late = store.write_cell(results, rows("b"))
    assert store.quarantine_corrupt(results) == []
    late.write_bytes(b"garbage")  # after the scan, before the load
    assert store.load(results).column("cell_id").to_pylist() == ["a"]


def test_concurrent_readers_quarantining_the_same_files_do_not_race(tmp_path):
    results = tmp_path / "results"
    store.write_cell(results, rows("a"))
    for i in range(30):
        (results / f"bad{i}.1.parquet").write_bytes(b"garbage")
    errors = []

    def read():
        try:
            assert store.load(results).column("cell_id").to_pylist() == ["a"]
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(list(store.corrupt_dir(results).iterdir())) == 30


def test_a_reader_never_sees_a_file_another_reader_moved_away(tmp_path, monkeypatch):
    results = tmp_path / "results"
    store.write_cell(results, rows("a"))
    gone = store.write_cell(results, rows("b"))
    real = pq.read_table

    def vanish(path, *args, **kwargs):  # the other reader quarantines it between glob and read
        if str(path) == str(gone):
            os.unlink(gone)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", vanish)
    assert store.load(results).column("cell_id").to_pylist() == ["a"]


# ---------------------------------------------------------------------------------------------
# Writer: lock, temporaries, identity

def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from raysweep import store\n"
        f"with store.locked({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(store.StoreBusy, match=rf"another launch \(pid {holder.pid}@.*\) is writing to "
                                                  r".*; wait for it to finish \(--wait-for-lock SECONDS\)"):
            with store.locked(tmp_path, wait_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with store.locked(tmp_path):  # released with its holder's death
        pass


def test_temporaries_of_a_live_writer_are_never_swept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f"{store.TEMP_PREFIX}{live.pid}-abc.part").write_bytes(b"in flight")
        (tmp_path / f"{store.TEMP_PREFIX}999999999-abc.part").write_bytes(b"left by a dead writer")
        assert store.sweep_temporaries(tmp_path) == 1
        assert [p.name for p in tmp_path.iterdir()] == [f"{store.TEMP_PREFIX}{live.pid}-abc.part"]
    finally:
        live.kill()
        live.wait()


def test_a_store_refuses_another_configuration_naming_the_differing_keys(tmp_path):
    first = {"name": "e", "train": {"lr": 0.001, "epochs": 3}, "methods": {"ensemble": {"members": 5}}}
    assert store.check_identity(tmp_path, first) is None
    assert store.check_identity(tmp_path, first) is None  # the same again: fine
    extended = first | {"methods": {"ensemble": {"members": 5}, "swag": {"rank": 3}}}
    assert store.check_identity(tmp_path, extended) is None  # a method added to the grid: an extension
    other = first | {"train": {"lr": 0.01, "epochs": 3}}
    with pytest.raises(store.StoreMismatch, match=r"another configuration \(train.lr: 0.001 in the store, 0.01 now\)"
                                                  r".*--new-store.*--merge"):
        store.check_identity(tmp_path, other)
    assert "merged a new configuration" in store.check_identity(tmp_path, other, merge=True)
    assert store.check_identity(tmp_path, other) is None  # merged once: known from now on


def test_new_store_sets_the_old_one_aside_but_keeps_the_lock(tmp_path):
    root = tmp_path / "e"
    with store.locked(root):
        store.write_cell(root / "results", rows("a"))
        store.check_identity(root, {"x": 1})
        aside = store.set_aside(root)
        assert sorted(p.name for p in root.iterdir()) == [store.LOCK_NAME]
        assert sorted(p.name for p in aside.iterdir()) == ["results", "store.json"]
        assert aside.name.startswith("e.")


def test_variant_ignores_the_curve_axes_but_not_the_rest():
    cell = {"cell_id": "a", "experiment": "e", "n": 50, "size": 8, "seed": 0, "method": "ensemble",
            "size_knob": "width", "model": {"name": "mlp", "width": 8, "depth": 2}, "train": {"lr": 0.1}}
    same = cell | {"cell_id": "b", "n": 100, "size": 16, "seed": 3, "model": {"name": "mlp", "width": 16, "depth": 2}}
    assert store.variant(cell) == store.variant(same) and len(store.variant(cell)) == 12
    assert store.variant(cell) != store.variant(cell | {"train": {"lr": 0.2}})
    assert store.variant(cell) != store.variant(cell | {"model": {"name": "mlp", "width": 8, "depth": 3}})


# ---------------------------------------------------------------------------------------------
# The driver callback: one cell's write error is that cell's failure

def make_cell(cell_id, n=50, seed=0):
    return {"cell_id": cell_id, "experiment": "e", "task": {"name": "digits"}, "model": {"name": "mlp"},
            "size_knob": "width", "size": 16, "n": n, "method": "ensemble", "seed": seed}


def test_a_cell_whose_rows_cannot_be_written_fails_alone_and_the_sweep_goes_on(tmp_path, capsys):
    cells = [make_cell("bad", seed=2**63), make_cell("good")]  # 2**63 does not fit int64
    trial = SimpleNamespace(trial_id="t1", config={"chunk": chunk_config(0, cells)}, get_error=lambda: None)
    callback = StoreCallback(tmp_path, [cells], total=2)
    final = lambda cell_id: {"cell_id": cell_id, "attempt": "1", "kind": "final", "split": "test", "status": "ok"}
    callback.on_trial_result(0, [], trial, {"rows": [final("bad"), final("good")]})
    callback.on_trial_complete(0, [], trial)
    table = store.load(tmp_path).to_pandas().set_index("cell_id")
    assert table.loc["good", "status"] == "ok" and table.loc["good", "variant"] == store.variant(cells[1])
    assert table.loc["bad", "status"] == "failed"
    assert "its results could not be written: OverflowError" in table.loc["bad", "error"]
    assert callback.failed == 1 and callback.unfinished == 0
    assert "2/2 cells (1 failed" in capsys.readouterr().out
