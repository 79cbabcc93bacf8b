"""Faults a real cluster throws at a sweep: workers killed mid-cell, a driver killed mid-sweep."""

import signal
import subprocess
import sys
import time

import psutil
import pyarrow.compute as pc
import pytest

from raysweep import experiment as E
from raysweep import store

pytestmark = pytest.mark.slow

# Two cells of a few seconds each: long enough to be killed in the middle.
# A fixed budget long enough that a kill lands mid-cell (digits' converged budget, capped by --smoke,
# would end each cell within a second).
SETTINGS = ["--smoke", "--no-dashboard", "--set", "grid.methods=ensemble", "--set", "train.until=fixed",
            "--set", "train.epochs=1200"]


def launch(root, output, *extra):
    command = [sys.executable, "-m", "raysweep.launch", str(root / "experiments" / "digits.py"),
               "--output", str(output), *SETTINGS, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root)


def expected_cells(root, *extra):
    e = E.smoke(E.load(root / "experiments" / "digits.py"))
    overrides = [SETTINGS[i + 1] for i, a in enumerate(SETTINGS) if a == "--set"] + list(extra)
    return {c["cell_id"] for c in E.cells(E.apply_overrides(e, overrides))}


def busy_trial_worker(driver, timeout=120.0):
    """The first Ray worker process of this driver's local Ray running a trial that has used a
    second of CPU (only its descendants: other Ray instances on the machine are left alone)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for process in psutil.Process(driver.pid).children(recursive=True):
            try:
                title = " ".join(process.cmdline())
                if (title.startswith("ray::") and "IDLE" not in title and "Func" in title
                        and process.cpu_times().user > 1.0):
                    return process
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError("no busy Ray trial worker appeared")


def test_a_worker_killed_mid_cell_is_retried_and_written_once(root, tmp_path):
    driver = launch(root, tmp_path)
    busy_trial_worker(driver).send_signal(signal.SIGKILL)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    assert "retrying" in output
    results = store.results_dir(tmp_path, "digits")
    table = store.load(results)
    assert set(table.column("cell_id").to_pylist()) == expected_cells(root)
    assert set(table.column("status").to_pylist()) <= set(store.DONE)
    files = [p.name.split(".")[0] for p in results.glob("*.parquet")]
    assert sorted(files) == sorted(set(files))  # exactly one file (one final row set) per cell


def test_a_killed_driver_resumes_with_only_the_missing_cells(root, tmp_path):
    # Grid of 4 cells, one at a time; kill the driver once the first is in the store.
    extra = ["--set", "grid.seeds=0,1", "--max-concurrent", "1"]
    driver = launch(root, tmp_path, *extra)
    results = store.results_dir(tmp_path, "digits")
    deadline = time.time() + 120
    while not list(results.glob("*.parquet")) and time.time() < deadline:
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    finished = {p.name: p.read_bytes() for p in results.glob("*.parquet")}
    assert 1 <= len(finished) < 4

    again = launch(root, tmp_path, *extra)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert f"{len(finished)} already done, {4 - len(finished)} to run" in output
    all_cells = expected_cells(root, "grid.seeds=0,1")
    assert set(store.load(results).column("cell_id").to_pylist()) == all_cells
    for name, content in finished.items():  # finished cells untouched, byte for byte
        assert (results / name).read_bytes() == content


# A chunk of 4 cells in one trial, one trial at a time: the worker is killed once a cell is stored.
CHUNK = ["--set", "grid.seeds=0,1", "--cells-per-trial", "4", "--max-concurrent", "1"]


def kill_worker_once_a_cell_is_stored(driver, results) -> dict[str, bytes]:
    deadline = time.time() + 120
    while not list(results.glob("*.parquet")) and time.time() < deadline:
        time.sleep(0.1)
    busy_trial_worker(driver).send_signal(signal.SIGKILL)
    return {p.name: p.read_bytes() for p in results.glob("*.parquet")}


def test_a_worker_killed_mid_chunk_reruns_only_the_cells_not_yet_stored(root, tmp_path):
    driver = launch(root, tmp_path, *CHUNK)
    results = store.results_dir(tmp_path, "digits")
    stored = kill_worker_once_a_cell_is_stored(driver, results)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    assert "retrying" in output and "1 trial(s) of up to 4 cell(s)" in output
    table = store.load(results)
    assert set(table.column("cell_id").to_pylist()) == expected_cells(root, "grid.seeds=0,1")
    assert set(table.column("status").to_pylist()) <= set(store.DONE)
    files = [p.name.split(".")[0] for p in results.glob("*.parquet")]
    assert sorted(files) == sorted(set(files))  # no cell run twice: a rerun would add a second attempt file
    for name, content in stored.items():
        assert (results / name).read_bytes() == content


def test_a_chunk_out_of_retries_keeps_its_stored_cells_and_the_next_launch_runs_only_the_rest(root, tmp_path):
    extra = [*CHUNK, "--set", "resources.max_retries=0"]
    driver = launch(root, tmp_path, *extra)
    results = store.results_dir(tmp_path, "digits")
    kill_worker_once_a_cell_is_stored(driver, results)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    finished = store.finished_cells(results)
    failed = set(store.load(results).filter(pc.field("status") == "failed").column("cell_id").to_pylist())
    assert finished and failed and finished | failed == expected_cells(root, "grid.seeds=0,1")
    kept = {p.name: p.read_bytes() for p in results.glob("*.parquet") if p.name.split(".")[0] in finished}

    again = launch(root, tmp_path, *extra)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert f"{len(finished)} already done, {len(failed)} to run" in output
    assert store.finished_cells(results) == expected_cells(root, "grid.seeds=0,1")
    for name, content in kept.items():
        assert (results / name).read_bytes() == content
