"""Resume and the report at many cells: how long a launch takes to find the finished cells of a
store, with the resume index (raysweep.store.finished_cells), and how long the report's read of every
final row takes (store.load) with its rows cache, against reading every result file (what both did
before), side by side in one run.

    python benchmarks/resume_index.py                 # 100,000 cells
    python benchmarks/resume_index.py --cells 20000

Each cell is one result file of 3 rows (2 final splits and 1 epoch row, with a ~1 kB JSON config),
written through store.write_cell as a sweep writes them. Timed, each --repeats times:
  cold    finished_cells with no index: opens every file's four index columns, writes the index
  warm    finished_cells with the index: lists the folder, reads one small file
  warm+1  as warm, after one more cell was written (one file opened)
  load cold    store.load with no rows cache: opens every file, as every load did before the cache
               (and resume before the index); writes the cache
  load warm    store.load with the cache: lists the folder, reads one file
  load warm+1  as load warm, after one more cell was written
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from raysweep import store


def write_store(results: Path, cells: int) -> None:
    config = json.dumps({"experiment": "bench", "task": {"name": "regression", "dim": 20}, "train": {"epochs": 20},
                         "padding": "x" * 900}, sort_keys=True)
    for index in range(cells):
        base = {"experiment": "bench", "cell_id": f"{index:016x}", "attempt": f"{index:020d}-abcdef",
                "method": "ensemble", "n": 100, "seed": index % 5, "config": config}
        status = "failed" if index % 50 == 0 else "ok"
        store.write_cell(results, [base | {"kind": "epoch", "split": "train", "epoch": 1, "status": "ok"},
                                   base | {"kind": "final", "split": "test", "status": status, "epistemic": 0.1},
                                   base | {"kind": "final", "split": "ood", "status": status, "epistemic": 0.2}])
        if index and index % 10_000 == 0:
            print(f"  wrote {index:,} cells", flush=True)


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to build the store (default: a temporary folder)")
    parser.add_argument("--existing", action="store_true", help="reuse the store already in --dir (writing "
                        "100,000 fsynced files takes ~25 minutes on a loaded 2-core machine)")
    parser.add_argument("--skip-load", action="store_true", help="leave out the full store.load (minutes at 100k)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="raysweep-resume-"))
    results = root / "results"
    started = time.perf_counter()
    if not args.existing:
        write_store(results, args.cells)
        print(f"wrote {args.cells:,} cells in {time.perf_counter() - started:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f}")
    times: dict[str, list[float]] = {"cold": [], "warm": [], "warm+1": [], "load cold": [], "load warm": [],
                                     "load warm+1": []}
    for repeat in range(args.repeats):
        store.index_path(results).unlink(missing_ok=True)
        seconds, cold = timed(lambda: store.finished_cells(results))
        times["cold"].append(seconds)
        print(f"cold {seconds:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
        seconds, warm = timed(lambda: store.finished_cells(results))
        times["warm"].append(seconds)
        assert warm == cold
        store.write_cell(results, [{"cell_id": f"extra{repeat}", "attempt": "1", "kind": "final", "split": "test",
                                    "status": "ok"}])
        times["warm+1"].append(timed(lambda: store.finished_cells(results))[0])
        if not args.skip_load:
            store.rows_cache_path(results).unlink(missing_ok=True)
            seconds, table = timed(lambda: store.load(results))
            times["load cold"].append(seconds)
            ok = table.filter(pc.equal(table.column("status"), "ok"))
            assert set(ok.column("cell_id").to_pylist()) == warm | {f"extra{repeat}"}  # the index agrees with the rows
            seconds, cached = timed(lambda: store.load(results))
            times["load warm"].append(seconds)
            assert cached.equals(table)  # the cache gives the rows of the files
            store.write_cell(results, [{"cell_id": f"more{repeat}", "attempt": "1", "kind": "final", "split": "test",
                                        "status": "ok"}])
            seconds, grown = timed(lambda: store.load(results))
            times["load warm+1"].append(seconds)
            assert grown.num_rows == table.num_rows + 1
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v), flush=True)
    print(f"\n{args.cells:,} cells, median of {args.repeats} (load average now {os.getloadavg()[0]:.1f}):")
    for name, values in times.items():
        if values:
            print(f"  {name:<12} {statistics.median(values):8.3f} s")
    if times["load cold"]:
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"  resume: warm index is {median['load cold'] / median['warm']:.0f}x faster than reading every file")
        print(f"  report: warm rows cache is {median['load cold'] / median['load warm']:.0f}x faster than reading "
              "every file")
        print(f"rows cache: {store.rows_cache_path(results).stat().st_size / 1e6:.1f} MB")
    print(f"index: {store.index_path(results).stat().st_size / 1e6:.1f} MB for {args.cells:,} files")


if __name__ == "__main__":
    main()
