"""Which cells to run next: the new N values (and seeds) that most shrink one extrapolation's interval.

    python -m raysweep.suggest RUN_DIR --target n=1e6 [--metric epistemic] [--budget K]
                                       [--experiment PATH] [--split S] [--method M] [--size W] [--max-n N]

--target n=X: the interval of the metric at N = X; --target y=EPS: the interval of the N at which
the metric falls to EPS. The store is fitted as the report fits it (every law, AICc's choice) on
the N-axis curves of --metric (narrowed by --split/--method/--size). The design is c-optimal
(raysweep.scaling.design): the variance of the target, linearised around each curve's fit, as
σ²·gᵀ(JᵀJ)⁻¹g, summed over the curves (it is a variance of logs, so curves of different scales
count alike), lowered greedily per unit of compute. Moves are those a launch can run without
rerunning anything: one more N value (every seed, method and size of the curves) or one more seed
(at every N); K bounds the new cells. Compute is --plan's FLOPs with --experiment (training
FLOPs ∝ N); without it, cost is taken ∝ N (the store does not record its experiment file).

Prints each move with its cost and the expected 95% interval after it, and writes
RUN_DIR/suggested.txt: the --set lines and the launch command that runs only the new cells
(cell ids are config hashes: the cells already in the store are kept, not rerun).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from raysweep.scaling import BEYOND_FACTOR, design

DEFAULT_BUDGET = 24  # new cells


class SuggestError(ValueError):
    """Bad input: printed as one line, exit status 2."""


def parse_target(text: str) -> design.Target:
    """"n=1e6" -> the metric at N = 1e6; "y=0.01" -> the N where the metric reaches 0.01."""
    kind, sep, value = text.partition("=")
    usage = (f"--target {text!r}: expected n=<N> (the interval of the metric at that N, e.g. n=1e6) or "
             f"y=<level> (the interval of the N where the metric falls to that level, e.g. y=0.01)")
    if not sep or kind.strip().lower() not in ("n", "y"):
        raise SuggestError(usage)
    try:
        number = float(value)
    except ValueError:
        raise SuggestError(f"{usage}; {value.strip()!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise SuggestError(f"{usage}; the value must be a finite number > 0, got {value.strip()}")
    return design.Target("value" if kind.strip().lower() == "n" else "reach", number)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m raysweep.suggest", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (OUTPUT/<experiment>) holding results/")
    parser.add_argument("--target", required=True, help="n=<N> (the metric at N) or y=<level> (the N reaching it)")
    parser.add_argument("--metric", default="epistemic", help="the metric to design for (default epistemic)")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, metavar="K",
                        help=f"at most K new cells (default {DEFAULT_BUDGET})")
    parser.add_argument("--experiment", type=Path, default=None, metavar="PATH",
                        help="the experiment file, for --plan's FLOPs per cell (default: cost ∝ N)")
    parser.add_argument("--split", default=None, help="evaluation split (default: test, else the first)")
    parser.add_argument("--method", action="append", default=None, help="only this method's curves; repeatable")
    parser.add_argument("--size", type=int, action="append", default=None, help="only this model size; repeatable")
    parser.add_argument("--rank-by", choices=("compute", "cells"), default="compute",
                        help="rank moves by variance drop per FLOP (compute, default) or per cell (cells: "
                             "the K cells that shrink the interval most, whatever they cost)")
    parser.add_argument("--max-n", type=float, default=None, metavar="N",
                        help=f"largest new N (default {BEYOND_FACTOR:g}x the largest in the store, and not past n=X)")
    args = parser.parse_args(argv)
    if args.budget < 1:
        parser.error(f"--budget must be >= 1 cell, got {args.budget}")
    try:
        args.target = parse_target(args.target)
    except SuggestError as exc:
        parser.error(str(exc))
    return args


def load_rows(run_dir: Path) -> pd.DataFrame:
    from raysweep import store
    from raysweep.fit import results_of

    results = results_of(run_dir)
    if results is None:
        raise SuggestError(f"no results store in {run_dir} (expected {run_dir}/results/*.parquet from "
                           "`python -m raysweep.launch`)")
    return store.load(results).to_pandas()  # every status: a degenerate cell is done, launch won't rerun it


def fitted_curves(rows: pd.DataFrame, args) -> list:
    """The N-axis curves of the metric, fitted as the report fits them (ok rows, no bootstrap needed)."""
    from raysweep.report.curves import curves, fit_curves

    rows = rows[rows["status"] == "ok"]

    if args.metric not in rows or rows[args.metric].isna().all():
        raise SuggestError(f"--metric {args.metric!r}: the store has no values of it")
    splits = sorted(rows["split"].dropna().unique())
    split = args.split or ("test" if "test" in splits else splits[0])
    if split not in splits:
        raise SuggestError(f"--split {split!r}: the store has {', '.join(splits)}")
    chosen = [c for c in curves(rows) if c.key["axis"] == "n" and c.key["metric"] == args.metric
              and c.key["split"] == split and (not args.method or c.key["method"] in args.method)
              and (not args.size or c.key["size"] in args.size)]
    if not chosen:
        raise SuggestError(f"no N-axis curve of {args.metric!r} on split {split!r} matches --method/--size")
    fit_curves(chosen, n_boot=0, seed=0, holdout=False)
    usable = []
    for c in chosen:
        if c.best is None or not c.best.ok:
            print(f"[suggest] skipped {name(c)}: not fitted ({c.best.message if c.best else 'no law fits'})")
        elif args.target.kind == "reach" and (why := unreachable(c.best, args.target.at)):
            print(f"[suggest] skipped {name(c)}: {why}")  # no N to put an interval on
        else:
            usable.append(c)
    if not usable:
        raise SuggestError("no curve is fitted with the target in reach (see the skipped lines above); "
                           "run more cells or change --target")
    return usable


def unreachable(fit, level: float) -> str | None:
    try:
        design.reach(fit.law, fit.values, level)
    except ValueError as exc:
        return str(exc)
    return None


def name(curve) -> str:
    size = curve.key["size"]
    return f"{curve.key['method']}" + ("" if size is None or pd.isna(size) else f" size {int(size)}")


def curve_key(method, size) -> tuple:
    return (method, None if size is None or pd.isna(size) else int(size))


class Plan:
    """The grid after some moves: (new N values, new seeds); its new cells are the cross product
    of the grid's N and seeds for every curve, minus what the store holds."""

    def __init__(self, rows: pd.DataFrame, fitted: list):
        from raysweep.store import DONE

        rows = rows[rows["status"].isin(DONE)]  # the cells a launch would not run again
        names = rows["experiment"].dropna().unique() if "experiment" in rows else []
        self.experiment = names[0] if len(names) == 1 else None
        self.curves = {curve_key(c.key["method"], c.key["size"]): c for c in fitted}
        self.n = sorted(int(v) for v in rows["n"].unique())
        self.seeds = sorted(int(s) for s in rows["seed"].unique())
        self.have = {(curve_key(r.method, r.size), int(r.n), int(r.seed))
                     for r in rows[["method", "size", "n", "seed"]].drop_duplicates().itertuples()}

    def new_cells(self, state) -> list[tuple]:
        new_n, new_seeds = state
        return [(key, n, s) for key in self.curves for n in sorted(set(self.n) | new_n)
                for s in sorted(set(self.seeds) | new_seeds) if (key, n, s) not in self.have]

    def variance(self, cells, target) -> float:
        total = 0.0
        for key, curve in self.curves.items():
            fit = curve.best
            added = np.array([n for k, n, _ in cells if k == key], dtype=float)
            total += design.target_variance(fit.law, fit.values, fit.residual_sd ** 2,
                                            np.concatenate([curve.xs[0], added]), target)
        return total


def costs(experiment_path: Path | None, plan: Plan, candidates: list[int], extra_seed: int, rank_by: str):
    """cost(cell) in FLOPs from --plan's formula, or ∝ N without an experiment file; 1 per cell
    with --rank-by cells."""
    if rank_by == "cells":
        return (lambda cell: 1.0), "1 per cell (--rank-by cells)"
    if experiment_path is None:
        return (lambda cell: float(cell[1])), "∝ N (relative; pass --experiment for FLOPs)"
    from raysweep import experiment as exp
    from raysweep.plan import estimate

    e = exp.load(experiment_path)
    methods = sorted({k[0] for k in plan.curves})
    sizes = sorted({k[1] for k in plan.curves if k[1] is not None}) or list(e.grid.sizes)
    e = exp.apply_overrides(e, [f"grid.n={','.join(map(str, sorted(set(plan.n + candidates))))}",
                                f"grid.seeds={','.join(map(str, plan.seeds + [extra_seed]))}",
                                f"grid.methods={','.join(methods)}", f"grid.sizes={','.join(map(str, sizes))}"])
    flops = {(curve_key(cell["method"], cell["size"]), cell["n"], cell["seed"]): cost.flops
             for cell, cost in zip(exp.cells(e), estimate(e))}
    return (lambda cell: flops[cell]), "FLOPs by --plan's formula"


def suggest(rows: pd.DataFrame, args):
    fitted = fitted_curves(rows, args)
    plan = Plan(rows, fitted)
    target = args.target
    upper = args.max_n or BEYOND_FACTOR * max(plan.n)
    if target.kind == "value":
        upper = min(upper, target.at)
    candidates = design.candidate_n(plan.n, upper) if upper > min(plan.n) else []
    extra_seed = max(plan.seeds) + 1
    cost, cost_note = costs(args.experiment, plan, candidates, extra_seed, args.rank_by)
    moves = lambda s: ([(f"N={n}", (s[0] | {n}, s[1])) for n in candidates if n not in s[0]]  # noqa: E731
                       + [(f"seed {extra_seed + len(s[1])}", (s[0], s[1] | {extra_seed + len(s[1])}))])
    if args.experiment is not None and args.rank_by == "compute":  # --plan's costs were estimated for one new seed only
        moves_all = moves
        moves = lambda s: [m for m in moves_all(s) if len(m[1][1]) <= 1]  # noqa: E731
    start = (frozenset(), frozenset())
    state, steps = design.greedy(start, moves, plan.new_cells, lambda cells: plan.variance(cells, target),
                                 cost, args.budget)
    return plan, fitted, state, steps, cost, cost_note


def describe(plan, fitted, state, steps, cost, cost_note, args) -> list[str]:
    target = args.target
    what = (f"{args.metric} at N={target.at:g}" if target.kind == "value" else f"N where {args.metric} = {target.at:g}")
    lines = [f"target: {what}; cost {cost_note}; budget {args.budget} new cells",
             "curves (AICc's law): 95% interval of the target now -> after the proposed cells (linearised)"]
    before = plan.new_cells((frozenset(), frozenset()))
    after = plan.new_cells(state)
    for key, curve in plan.curves.items():
        fit = curve.best
        center = target.center(fit.law, fit.values)
        now, then = (design.target_variance(fit.law, fit.values, fit.residual_sd ** 2,
                                            np.concatenate([curve.xs[0], [n for k, n, _ in cells if k == key]]), target)
                     for cells in (before, after))
        lines.append(f"  {name(curve):<24} {fit.law:<10} {math.exp(center):.4g}  "
                     f"{interval(center, now)} -> {interval(center, then)}")
    if not steps:
        lines.append("no move fits the budget or lowers the variance: nothing to propose")
    for step in steps:
        # the sum over curves of Var(log target): what the greedy lowers, comparable across curves
        lines.append(f"  + {step.move:<10} {step.cells:>4} cells  cost {step.cost:.3g}  "
                     f"Σ Var(log target) after {step.variance:.3g}")
    lines.append(f"total: {len(after)} new cells, cost {sum(cost(c) for c in after):.3g}")
    return lines


def interval(center: float, variance: float) -> str:
    if not math.isfinite(variance):
        return "[unbounded]"
    half = design.Z95 * math.sqrt(variance)
    low, high = math.exp(center - half), math.exp(center + half)
    return f"[{low:.4g}, {high:.4g}] (width {high - low:.3g})"


def overlay(plan, state, args) -> list[str]:
    """The --set lines that make a launch run the new cells only (and any the store lacks)."""
    new_n, new_seeds = state
    methods = sorted({k[0] for k in plan.curves})
    sizes = sorted({k[1] for k in plan.curves if k[1] is not None})
    sets = [f"grid.n={','.join(map(str, sorted(set(plan.n) | new_n)))}",
            f"grid.seeds={','.join(map(str, plan.seeds + sorted(new_seeds)))}",
            f"grid.methods={','.join(methods)}"] + ([f"grid.sizes={','.join(map(str, sizes))}"] if sizes else [])
    run_dir = args.run_dir.resolve()
    stored = plan.experiment or run_dir.name
    experiment = args.experiment or f"experiments/{stored}.py"  # the usual layout; the store keeps no path
    command = " ".join(["python -m raysweep.launch", str(experiment), "--output", str(run_dir.parent)]
                       + [f"--set {s}" for s in sets])
    return [f"# written by python -m raysweep.suggest {args.run_dir} (target {args.target.kind}={args.target.at:g}, "
            f"metric {args.metric})", "# cells already in the store are kept; only the new ones run:",
            f"# {command}", *sets]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rows = load_rows(args.run_dir)
        result = suggest(rows, args)
    except (SuggestError, ValueError) as exc:
        print(f"raysweep.suggest: error: {exc}", file=sys.stderr)
        return 2
    plan, fitted, state, steps, cost, cost_note = result
    print("\n".join(describe(*result, args)))
    path = args.run_dir / "suggested.txt"
    lines = overlay(plan, state, args)
    path.write_text("\n".join(lines) + "\n")
    print(f"[suggest] overlay: {path}\n{lines[2][2:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
