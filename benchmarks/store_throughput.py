"""Store: rows per second written and read, and bytes per row, for 1 million rows.

    python benchmarks/store_throughput.py                    # 1,000,000 rows, 2 repeats
    python benchmarks/store_throughput.py --rows 200000 --repeats 3

Rows are realistic raysweep rows (every schema column filled the way StoreCallback fills them:
coordinates, the cell's JSON config ~1 kB, package versions) written through raysweep.store.write_cell
in per-cell chunks of --rows-per-cell rows (default 250: 248 epoch rows + 2 final rows, a
small-N cell that takes a few hundred epochs to reach train.min_steps, with an OOD split), so 1M rows
= 4,000 Parquet files, each atomically renamed and fsynced, as in a sweep. `--rows-per-cell 22`
(20 epochs) shows the per-file cost for short cells. Read = raysweep.store.load (final rows, latest
attempt per cell) and the full dataset (both kinds) with pyarrow; bytes per row = bytes on disk / rows.

Also timed, side by side in the same repeats: one big pyarrow write of the same rows (the best a
single file can do; what write_cell's per-cell files cost against it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from raysweep import store


def make_cells(rows: int, per_cell: int) -> list[list[dict]]:
    """Cells of `per_cell` rows each: epoch rows then one final row per split (test, shifted)."""
    versions = store.versions()
    cells = []
    for index in range(rows // per_cell):
        cell_id = f"{index:016x}"
        n, size, seed = 100 * 2 ** (index % 7), 16 * 2 ** (index % 4), index % 5
        config = {"experiment": "bench", "task": {"name": "regression", "dim": 20, "noise_var": 0.25,
                  "prior_precision": 1.0, "n_test": 1000, "truth_seed": 0},
                  "model": {"name": "mlp", "width": size, "depth": 2}, "size_knob": "width", "size": size,
                  "method": "ensemble", "method_options": {"members": 5}, "n": n, "seed": seed,
                  "ood": ["shifted"], "train": {"epochs": 20, "min_steps": 400, "batch_size": 64, "lr": 0.003,
                                                "weight_decay": 0.0},
                  "eval": {"max_examples": 2000, "ece_bins": 15}, "cell_id": cell_id}
        coordinates = {"experiment": "bench", "task": "regression", "model": "mlp", "size_knob": "width",
                       "size": size, "n": n, "method": "ensemble", "seed": seed,
                       "config": json.dumps(config, sort_keys=True), "versions": versions}
        base = coordinates | {"cell_id": cell_id, "attempt": f"{time.time_ns():020d}-abcdef", "params": 1000 + index}
        epochs = per_cell - 2
        rows_of_cell = [base | {"kind": "epoch", "split": "train", "epoch": e, "loss": 1.0 / (e + 1),
                                "status": "ok", "wall_time_s": 0.01 * e} for e in range(epochs)]
        for split in ("test", "shifted"):
            rows_of_cell.append(base | {"kind": "final", "split": split, "epoch": epochs, "status": "ok",
                                        "wall_time_s": 1.5} | {m: 0.1 + index * 1e-6 for m in store.METRICS})
        cells.append(rows_of_cell)
    return cells


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def summary(values: list[float]) -> str:
    return f"min {min(values):12,.0f}  median {statistics.median(values):12,.0f}  max {max(values):12,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-cell", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"[store] pyarrow {pa.__version__}, load {os.getloadavg()[0]:.2f}", flush=True)
    cells = make_cells(args.rows, args.rows_per_cell)
    total = sum(len(c) for c in cells)
    print(f"[store] {total:,} rows in {len(cells):,} cells of {args.rows_per_cell} rows "
          f"({len(cells) * 2:,} final rows)", flush=True)
    results = {k: [] for k in ("write_cell rows/s", "load(final) rows/s", "read all rows/s",
                               "single-file write rows/s", "single-file read rows/s")}
    sizes = {}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            directory = Path(tmp) / "results"
            single = Path(tmp) / "single.parquet"
            steps = ["cells", "single"] if repeat % 2 == 0 else ["single", "cells"]
            for step in steps:
                if step == "cells":
                    start = time.perf_counter()
                    for rows in cells:
                        store.write_cell(directory, rows)
                    results["write_cell rows/s"].append(total / (time.perf_counter() - start))
                    sizes["per-cell files"] = disk_bytes(directory) / total
                    start = time.perf_counter()
                    final = store.load(directory)
                    results["load(final) rows/s"].append(final.num_rows / (time.perf_counter() - start))
                    assert final.num_rows == len(cells) * 2, final.num_rows
                    start = time.perf_counter()
                    everything = ds.dataset(directory, format="parquet", schema=store.SCHEMA).to_table()
                    results["read all rows/s"].append(everything.num_rows / (time.perf_counter() - start))
                    assert everything.num_rows == total
                else:
                    start = time.perf_counter()
                    table = pa.Table.from_pylist([{n: r.get(n) for n in store.SCHEMA.names} for c in cells for r in c],
                                                 schema=store.SCHEMA)
                    pq.write_table(table, single)
                    results["single-file write rows/s"].append(total / (time.perf_counter() - start))
                    sizes["one file"] = single.stat().st_size / total
                    start = time.perf_counter()
                    results["single-file read rows/s"].append(
                        pq.read_table(single).num_rows / (time.perf_counter() - start))
        print(f"  repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()), flush=True)
    print(f"\nover {args.repeats} repeats (rows per second):")
    for name, values in results.items():
        print(f"  {name:26s} {summary(values)}")
    for name, value in sizes.items():
        print(f"  bytes/row, {name:14s} {value:8.1f}")
    ratio = statistics.median(results["single-file write rows/s"]) / statistics.median(results["write_cell rows/s"])
    print(f"  single-file write / write_cell: {ratio:.1f}x (the price of one atomic, fsynced file per cell)")
    per_file_ms = 1000 * args.rows_per_cell / statistics.median(results["write_cell rows/s"])
    print(f"  per cell file: {per_file_ms:.1f} ms (median) for {args.rows_per_cell} rows")
    print(f"[store] load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
