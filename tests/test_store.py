import os
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raysweep import store


def rows(cell_id, attempt, splits=("test",), status="ok", **metrics):
    return [{"experiment": "e", "cell_id": cell_id, "attempt": attempt, "method": "ensemble", "n": 100, "seed": 0,
             "kind": "final", "split": split, "status": status, "epistemic": 0.1, **metrics} for split in splits]


def test_load_keeps_only_the_latest_attempt_of_each_cell(tmp_path):
    store.write_cell(tmp_path, rows("a", "001", epistemic=0.5))
    store.write_cell(tmp_path, rows("a", "002", splits=("test", "ood"), epistemic=0.25))
    store.write_cell(tmp_path, [{**rows("b", "001")[0], "kind": "epoch", "split": "train", "epoch": 1},
                                *rows("b", "001")])
    table = store.load(tmp_path).to_pandas()
    assert sorted(zip(table.cell_id, table.split)) == [("a", "ood"), ("a", "test"), ("b", "test")]
    assert set(table[table.cell_id == "a"].epistemic) == {0.25}
    assert store.load(tmp_path, kind="epoch").num_rows == 1


def test_failed_latest_attempt_is_not_finished(tmp_path):
    store.write_cell(tmp_path, rows("a", "001"))
    store.write_cell(tmp_path, rows("a", "002", splits=(None,), status="failed", error="boom"))
    store.write_cell(tmp_path, rows("b", "001"))
    assert store.finished_cells(tmp_path) == {"b"}


def test_a_write_interrupted_before_its_rename_leaves_no_visible_file(tmp_path, monkeypatch):
    def crash(*args):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="cannot write results to .*: simulated crash"):
        store.write_cell(tmp_path, rows("a", "001"))
    assert list(tmp_path.iterdir()) == []
    assert store.load(tmp_path).num_rows == 0


def test_a_temporary_left_by_a_killed_writer_is_invisible_and_swept(tmp_path):
    store.write_cell(tmp_path, rows("a", "001"))
    (tmp_path / f"{store.TEMP_PREFIX}deadbeef.part").write_bytes(b"PAR1 half a file")
    assert store.load(tmp_path).num_rows == 1
    assert len(pd.read_parquet(tmp_path)) == 1
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path}/*.parquet'").fetchall()[0][0] == 1
    assert store.sweep_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.001.parquet"]


def test_files_open_in_pandas_duckdb_and_datasets(tmp_path):
    from datasets import load_dataset

    store.write_cell(tmp_path, rows("a", "001", splits=("test", "rotated")))
    store.write_cell(tmp_path, rows("b", "001"))
    assert len(pd.read_parquet(tmp_path)) == 3
    assert duckdb.sql(f"SELECT count(DISTINCT cell_id) FROM '{tmp_path}/*.parquet'").fetchall()[0][0] == 2
    loaded = load_dataset("parquet", data_files=str(tmp_path / "*.parquet"), split="train",
                          cache_dir=str(tmp_path / ".hf-cache"))
    assert loaded.num_rows == 3 and "epistemic" in loaded.column_names
    assert pq.read_schema(next(tmp_path.glob("a.*.parquet"))) == store.SCHEMA


def test_loading_a_missing_or_empty_store_gives_an_empty_table(tmp_path):
    assert store.load(tmp_path / "absent").num_rows == 0
    assert store.load(tmp_path).schema == store.SCHEMA


def test_a_corrupt_file_is_moved_aside_and_the_rest_still_loads(tmp_path, capsys):
    results = tmp_path / "results"
    store.write_cell(results, rows("a", "001"))
    good = store.write_cell(results, rows("b", "001"))
    truncated = results / "c.001.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (results / "d.001.parquet").write_bytes(b"not parquet at all")
    table = store.load(results)
    assert sorted(table.column("cell_id").to_pylist()) == ["a", "b"]
    assert sorted(p.name for p in store.corrupt_dir(results).iterdir()) == ["c.001.parquet", "d.001.parquet"]
    assert "moved corrupt result file c.001.parquet" in capsys.readouterr().err


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match=r"cannot write results to .*file/results"):
        store.check_writable(blocker / "results")


def test_launch_reports_an_unwritable_output_folder(root, tmp_path, capsys, monkeypatch):
    import sys

    from raysweep.launch import main

    monkeypatch.setitem(sys.modules, "ray", None)  # never reached
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([str(root / "experiments" / "regression.py"), "--output", str(blocker)]) == 2
    assert "cannot write results to" in capsys.readouterr().err


def test_a_full_disk_gives_a_clear_error_and_no_partial_file(tmp_path, monkeypatch):
    import errno

    def half_write_then_fail(table, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", half_write_then_fail)
    with pytest.raises(OSError, match=r"cannot write results to .*: No space left on device"):
        store.write_cell(tmp_path, rows("a", "001"))
    assert list(tmp_path.iterdir()) == []


def final_rows_by_definition(directory) -> pd.DataFrame:
    """Read without raysweep: every result file through pandas, final rows, each cell's latest attempt."""
    frames = [pd.read_parquet(path) for path in sorted(Path(directory).glob("*.parquet"))]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["cell_id", "attempt", "kind"])
    table = table[table.kind == "final"]
    latest = table.groupby("cell_id").attempt.transform("max")
    return table[table.attempt == latest]


def finished_by_definition(directory):
    """The definition, from every row: cells whose latest final attempt has status ok."""
    table = final_rows_by_definition(directory)
    return set(table[table.status == "ok"].cell_id)


def loaded_as_frame(directory) -> pd.DataFrame:
    columns = ["cell_id", "attempt", "split", "status", "epistemic"]
    return store.load(directory).to_pandas()[columns].sort_values(columns[:3]).reset_index(drop=True)


def expected_frame(directory) -> pd.DataFrame:
    columns = ["cell_id", "attempt", "split", "status", "epistemic"]
    return final_rows_by_definition(directory)[columns].sort_values(columns[:3]).reset_index(drop=True)


def test_the_rows_cache_gives_the_rows_of_the_files_and_opens_only_new_or_changed_ones(tmp_path, monkeypatch):
    import random

    results = tmp_path / "results"
    draw = random.Random(1)
    for i in range(40):
        store.write_cell(results, rows(f"c{draw.randrange(15)}", f"{i:03d}", splits=("test", "ood"),
                                       epistemic=draw.random()))
    pd.testing.assert_frame_equal(loaded_as_frame(results), expected_frame(results))
    assert store.rows_cache_path(results).is_file()

    opened = []  # every result file raysweep reads, whichever pyarrow entry point reads it
    for name in ("read_table", "ParquetFile"):
        real = getattr(pq, name)
        monkeypatch.setattr(pq, name, lambda path, *a, real=real, **k: opened.append(str(path)) or real(path, *a, **k))

    def load_and_compare() -> list[str]:
        """store.load against the definition; returns the result files store.load read."""
        expected = expected_frame(results)
        opened.clear()
        loaded = loaded_as_frame(results)
        pd.testing.assert_frame_equal(loaded, expected)
        return [p for p in opened if p.startswith(str(results) + os.sep)]

    assert load_and_compare() == []  # warm: the cache answered for all 40 files
    later = store.write_cell(results, rows("c3", "999", splits=("test",), epistemic=7.0))  # a new, later attempt
    assert load_and_compare() == [str(later)]
    assert loaded_as_frame(results).query("cell_id == 'c3'").epistemic.tolist() == [7.0]

    store.write_cell(results, rows("c3", "999", splits=("test", "ood"), epistemic=8.0))  # same name, other rows
    os.utime(later, ns=(0, 0))  # and another mtime, in case the size were the same
    assert load_and_compare() == [str(later)]
    assert loaded_as_frame(results).query("cell_id == 'c3'").epistemic.tolist() == [8.0, 8.0]

    later.unlink()  # moved away (say, quarantined by another reader): its rows leave the cache
    assert load_and_compare() == []
    assert "999" not in set(loaded_as_frame(results).attempt)


def test_a_lost_garbled_or_stale_rows_cache_is_rebuilt_and_a_file_corrupted_since_is_moved_aside(tmp_path):
    results = tmp_path / "results"
    store.write_cell(results, rows("a", "001"))
    bad = store.write_cell(results, rows("b", "001", epistemic=0.5))
    expected = expected_frame(results)
    pd.testing.assert_frame_equal(loaded_as_frame(results), expected)
    store.rows_cache_path(results).write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(loaded_as_frame(results), expected)
    store.rows_cache_path(results).unlink()
    pd.testing.assert_frame_equal(loaded_as_frame(results), expected)
    bad.write_bytes(b"garbage")  # changed after it was cached: read again, found corrupt, moved aside
    assert loaded_as_frame(results).cell_id.tolist() == ["a"]
    assert (store.corrupt_dir(results) / bad.name).is_file()


def test_the_resume_index_agrees_with_the_rows_and_opens_only_new_files(tmp_path, monkeypatch):
    import random

    results = tmp_path / "results"
    draw = random.Random(0)
    for i in range(60):
        cell = f"c{draw.randrange(25)}"
        status = draw.choice(["ok", "ok", "failed"])
        store.write_cell(results, rows(cell, f"{i:03d}", splits=("test",) if status == "ok" else (None,),
                                       status=status))
    assert store.finished_cells(results) == finished_by_definition(results)
    assert store.index_path(results).is_file()

    opened = []  # every Parquet file opened, whichever pyarrow entry point opens it
    for name in ("read_table", "read_schema", "ParquetFile"):
        real = getattr(pq, name)
        monkeypatch.setattr(pq, name, lambda path, *a, real=real, **k: opened.append(str(path)) or real(path, *a, **k))
    store.write_cell(results, rows("c3", "999", splits=(None,), status="failed"))  # a new, later attempt
    new_ok = store.write_cell(results, rows("new", "001"))
    done = store.finished_cells(results)
    result_files = [p for p in opened if p.startswith(str(results) + os.sep)]
    assert len(result_files) == 2 and "c3" not in done and "new" in done  # the index answered for the other 60

    new_ok.unlink()  # a file moved away (quarantined by another reader): its index entry is dropped
    assert "new" not in store.finished_cells(results)
    monkeypatch.undo()
    assert store.finished_cells(results) == finished_by_definition(results)


def test_a_lost_or_garbled_index_is_rebuilt_from_the_files(tmp_path):
    results = tmp_path / "results"
    store.write_cell(results, rows("a", "001"))
    store.write_cell(results, rows("b", "001", splits=(None,), status="failed"))
    assert store.finished_cells(results) == {"a"}
    store.index_path(results).write_bytes(b"not parquet")
    assert store.finished_cells(results) == {"a"}
    store.index_path(results).unlink()
    assert store.finished_cells(results) == {"a"}
