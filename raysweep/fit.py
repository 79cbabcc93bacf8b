"""Refit the scaling laws from a run's store and write its report.

    python -m raysweep.fit RUN_DIR [--holdout] [--target-eu EPS] [--boot R] [--seed S] [--workers W]

RUN_DIR is a run's folder (OUTPUT/<experiment>, holding results/) or the results folder itself.
The report goes to RUN_DIR/report/: report.md (summary first), fits.csv/.parquet/.json, settings.json, PNG
plots. With --holdout every law is refitted without the largest N (and P), the law is chosen by that
prediction error instead of AICc, and the holdout coverage of the prediction bands is reported.
`python -m raysweep.launch` does the same at the end of every sweep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

from raysweep import report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raysweep.fit", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (OUTPUT/<experiment>) or its results/ folder")
    parser.add_argument("--holdout", action="store_true",
                        help="also refit without the largest N (and largest P) and check the prediction")
    parser.add_argument("--target-eu", type=float, default=0.01, metavar="EPS",
                        help="report N* (and P*): where epistemic uncertainty falls to EPS nats (default 0.01)")
    parser.add_argument("--boot", type=int, default=1000, metavar="R",
                        help="bootstrap resamples per curve (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), metavar="W",
                        help="processes to fit and plot in; any number gives the same report, to "
                             "rounding (default: 2, or 1 on a one-CPU machine)")
    args = parser.parse_args(argv)
    if args.target_eu <= 0:
        parser.error(f"--target-eu must be > 0 nats, got {args.target_eu}")
    if args.boot < 0:
        parser.error(f"--boot must be >= 0, got {args.boot}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def results_of(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "results", run_dir):
        if candidate.is_dir() and any(candidate.glob("*.parquet")):
            return candidate
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    results = results_of(args.run_dir)
    if results is None:
        print(f"raysweep.fit: error: no results store in {args.run_dir} (expected {args.run_dir}/results/*.parquet "
              "from `python -m raysweep.launch`)", file=sys.stderr)
        return 2
    out_dir = (results.parent if results.name == "results" else results) / "report"
    started = time.perf_counter()
    path = report.write(results, out_dir, title=f"raysweep report: {results.parent.name}", n_boot=args.boot,
                        seed=args.seed, holdout=args.holdout, target_eu=args.target_eu, workers=args.workers)
    print(report.table(pd.read_parquet(out_dir / "fits.parquet")))
    print(f"[raysweep] fitted in {time.perf_counter() - started:.1f}s; report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
