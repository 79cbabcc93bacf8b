"""Benchmark: the full fit and report over a synthetic 200-cell store, 1,000 bootstrap resamples per curve.

    python benchmarks/fit_report.py [--repeats 5] [--boot 1000] [--no-holdout] [--workers 2]

Store: 2 methods x 5 N x 4 model sizes x 5 seeds = 200 cells, each with an ID ('test') and an OOD
('shifted') split and 5 fitted metrics: 80 curves against N, 100 against P, 20 joint = 200 curves.
Each repeat fits from scratch (report.write: every law through lmfit.Model, AICc or holdout choice,
cluster bootstrap of the chosen law and of the power law, holdout refits of every law,
N*, plots, markdown, Parquet/JSON). Results are written down in benchmarks/RESULTS-fit.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from raysweep import report, store

N = (250, 500, 1000, 2000, 4000)
WIDTHS = (16, 32, 64, 128)
SEEDS = range(5)


def synthetic_store(directory: Path) -> int:
    """EU = E + A·N^(-α) + B·P^(-β) with 5% seed noise; the other metrics follow it."""
    rng = np.random.default_rng(0)
    laws = {"ensemble": (0.002, 3.0, 0.8, 4.0, 0.5), "dropout": (0.01, 1.0, 0.5, 2.0, 0.3)}
    cells = 0
    for method, (E, A, alpha, B, beta) in laws.items():
        for n in N:
            for width in WIDTHS:
                params = 64 * width + width * width + 10 * width
                for seed in SEEDS:
                    cell_id = f"{method}-{n}-{width}-{seed}"
                    rows = []
                    for split, shift in (("test", 1.0), ("shifted", 3.0)):
                        eu = shift * (E + A * n ** -alpha + B * params ** -beta) * np.exp(rng.normal(0, 0.05))
                        au = 0.3 * np.exp(rng.normal(0, 0.01))
                        rows.append({"experiment": "bench", "cell_id": cell_id, "attempt": "0", "task": "synthetic",
                                     "model": "mlp", "size_knob": "width", "size": width, "params": params, "n": n,
                                     "method": method, "seed": seed, "split": split, "kind": "final", "status": "ok",
                                     "total": au + eu, "aleatoric": au, "epistemic": eu, "nll": au + 1.5 * eu,
                                     "error_rate": 0.05 + 2 * eu})
                    store.write_cell(directory, rows)
                    cells += 1
    return cells


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (the forked workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--no-holdout", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="processes, as `python -m raysweep.fit --workers`")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "bench" / "results"
        cells = synthetic_store(results)
        times, cpu = [], []
        load_before = f"{os.getloadavg()[0]:.2f}"
        for _ in range(args.repeats):
            started, started_cpu = time.perf_counter(), cpu_seconds()
            report.write(results, Path(tmp) / "bench" / "report", n_boot=args.boot, holdout=not args.no_holdout,
                         workers=args.workers)
            times.append(time.perf_counter() - started)
            cpu.append(cpu_seconds() - started_cpu)
        fits = __import__("pandas").read_parquet(Path(tmp) / "bench" / "report" / "fits.parquet")
    curves = fits.drop_duplicates(report.CURVE_ID).shape[0]
    print(f"{cells} cells, {curves} curves, {args.boot} resamples, holdout={not args.no_holdout}")
    print(f"seconds: min {min(times):.2f}  median {statistics.median(times):.2f}  max {max(times):.2f} "
          f"over {args.repeats} repeats; CPU s: min {min(cpu):.2f} median {statistics.median(cpu):.2f} "
          f"max {max(cpu):.2f}; {platform.processor() or platform.machine()}, {platform.python_version()}; "
          f"load average {load_before} -> {os.getloadavg()[0]:.2f} (a shared machine: write it next to the numbers)")


if __name__ == "__main__":
    main()
