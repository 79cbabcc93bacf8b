"""What one cell costs, per method and per evaluation extra, on one machine in one run.

    python benchmarks/method_costs.py [--experiment experiments/digits.py] [--n 400] [--size 32]
                                      [--members 1,2,3,5] [--repeats 3] [--threads 1]

For one grid point (N, size, seed 0) of an experiment it runs `raysweep.cell.run_cell` (no Ray) once
per method of the grid, and once more for the first method with `grid.members` set (the nested
sub-ensemble evaluations of issue 18), interleaved over the repeats, and prints per arm the median
wall time of the cell, of which training and evaluation (`raysweep.evaluate.evaluate_sub_ensembles`, all splits),
and inside evaluation the temperature fit and the selective-prediction and OOD metrics added with
issue 18 (AURC, AUGRC, FPR at 95% TPR, ECE after temperature scaling). `train_flops` is the --plan
formula applied to facts the cell already has: it costs nothing measurable and is not timed.
Results: benchmarks/RESULTS.md, "Per-cell cost of methods and metrics".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

import raysweep.cell as cell_module
from raysweep import evaluate as evaluation
from raysweep import experiment as E
from raysweep import uncertainty as U

TIMED = {  # (module, function name) -> the line it is reported on
    (evaluation, "evaluate_sub_ensembles"): "evaluation",
    (evaluation, "fit_temperatures"): "  temperature fit",
    (U, "aurc"): "  AURC + AUGRC + FPR95",
    (U, "augrc"): "  AURC + AUGRC + FPR95",
    (U, "fpr_at_tpr"): "  AURC + AUGRC + FPR95",
}


@contextmanager
def timing(seconds: dict[str, float]):
    """Wrap the functions in TIMED so their wall time adds up in `seconds` (outermost calls only)."""
    originals = {key: getattr(*key) for key in TIMED}
    depth = defaultdict(int)

    def timed(key, function):
        def wrapper(*args, **kwargs):
            depth[key] += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth[key] -= 1
                if depth[key] == 0:
                    seconds[TIMED[key]] += time.perf_counter() - started
        return wrapper

    try:
        for (module, name), function in originals.items():
            setattr(module, name, timed((module, name), function))
        # run_cell holds its own reference (imported by name)
        cell_module.evaluate_sub_ensembles = evaluation.evaluate_sub_ensembles
        yield
    finally:
        for (module, name), function in originals.items():
            setattr(module, name, function)
        cell_module.evaluate_sub_ensembles = originals[(evaluation, "evaluate_sub_ensembles")]


def arms(e: E.Experiment, n: int, size: int, members: tuple[int, ...]) -> dict[str, dict]:
    grid = dataclasses.replace(e.grid, n=(n,), sizes=(size,), seeds=(0,))
    one = dataclasses.replace(e, grid=grid).validate()
    out = {cell["method"]: cell for cell in E.cells(one)}
    first = grid.methods[0]
    with_members = dataclasses.replace(one, grid=dataclasses.replace(grid, methods=(first,), members=members))
    out[f"{first}, grid.members={','.join(map(str, members))}"] = E.cells(with_members.validate())[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="experiments/digits.py")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--members", default="1,2,3,5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    e = E.load(args.experiment)
    cells = arms(e, args.n, args.size, tuple(int(m) for m in args.members.split(",")))
    measured = defaultdict(lambda: defaultdict(list))
    for repeat in range(args.repeats + 1):  # the first round warms caches and is not counted
        for label, cell in cells.items():
            seconds = defaultdict(float)
            started = time.perf_counter()
            with timing(seconds):
                cell_module.run_cell(cell, lambda rows: None)
            seconds["cell"] = time.perf_counter() - started
            seconds["training (the rest)"] = seconds["cell"] - seconds["evaluation"]
            if repeat:
                for line, value in seconds.items():
                    measured[label][line].append(value)
    print(f"{e.name}: N={args.n}, {e.model.size_knob}={args.size}, seed 0, {args.threads} thread(s), "
          f"{args.repeats} repeats, load {os.getloadavg()[0]:.1f}; median seconds per cell")
    lines = ("cell", "training (the rest)", "evaluation", "  temperature fit", "  AURC + AUGRC + FPR95")
    print("| arm | " + " | ".join(line.strip() for line in lines) + " |")
    print("|---" * (len(lines) + 1) + "|")
    for label, values in measured.items():
        cells_text = [f"{statistics.median(values[line]):.3f}" if line in values else "—" for line in lines]
        print(f"| {label} | " + " | ".join(cells_text) + " |")


if __name__ == "__main__":
    main()
