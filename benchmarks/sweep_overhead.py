"""Sweep overhead: the same 100-cell grid run by raysweep and by plain Ray Tune, side by side.

    python benchmarks/sweep_overhead.py                  # 2 interleaved repeats
    python benchmarks/sweep_overhead.py --repeats 3 --defaults
    python benchmarks/sweep_overhead.py --set train.min_steps=160   # the same grid, 4x the work per cell
    # the main job's cells:
    python benchmarks/sweep_overhead.py --grid experiments/digits.py --variants raysweep,tune-reuse

The grid is benchmarks/sweep_experiment.py: 100 real cells (regression task, 2-member MLP ensemble,
fixed number of optimiser steps). Every variant runs raysweep.cell.run_cell on the same cells, so
the work is the same; each cell times its own work (`wall_time_s`, from just before data loading to
just after evaluation). With K parallel slots (one CPU per trial, K = os.cpu_count()):

    ideal = Σ_cells wall_time_s / K          overhead ratio = wall / ideal

"wall" is what a user waits for once Python has imported its modules (imports are not counted for
any variant): for raysweep, all of `raysweep.launch.main` (validation, listing the store, ray.init,
the sweep, ray.shutdown; the final report is switched off here, it is measured by
benchmarks/fit_report.py); for plain Tune, from validating the grid to just after ray.shutdown.
Variants, each in a fresh subprocess, interleaved (the order rotates every repeat) because the
machine is shared:

    raysweep          python -m raysweep.launch <grid> --output <tmp>, defaults: cells batched per
                      trial (automatic: 10 per trial on 2 slots), store callback, JSON logger, rows
                      sent at most once a second, dashboard off on <= 4 CPUs (as a user runs it).
    raysweep-1        the same with --cells-per-trial 1: one Tune trial per cell (before batching).
    raysweep-dash     the same as raysweep with --dashboard (what the dashboard costs).
    raysweep-attached the same with --address auto, joining a Ray started beforehand with
                      `ray start --head` (not timed: a user starts it once for many sweeps), i.e. a
                      sweep that skips starting and stopping Ray.
    tune-reuse        plain Ray Tune: a minimal function trainable calling run_cell with no store and
                      reporting once, TuneConfig(reuse_actors=True), Tune's default loggers, a plain
                      ray.init() (which starts the dashboard: Ray's default).
    tune-defaults     the same with Tune's defaults (a fresh worker per trial). Slow (~3-4x ideal):
                      only with --defaults, once, on the first 30 cells (--defaults-cells 100 for all).

Timing wrappers (not changing behaviour) split raysweep's time into ray.init, Tuner.fit,
ray.shutdown, store writes and callback work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "benchmarks" / "sweep_experiment.py"
VARIANTS = ("raysweep", "raysweep-1", "raysweep-dash", "raysweep-attached", "tune-reuse", "tune-defaults")
RAYSWEEP_FLAGS = {"raysweep": [], "raysweep-1": ["--cells-per-trial", "1"], "raysweep-dash": ["--dashboard"],
                  "raysweep-attached": ["--address", "auto"]}


# ---------------------------------------------------------------------------------------------
# One variant, in this (fresh) process

class Clock:
    """Accumulates seconds and calls per named wrapped function."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.spans: dict[str, tuple[float, float]] = {}  # label -> (first start, last end), epoch seconds

    def wrap(self, owner, name: str, label: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start, wall_start = time.perf_counter(), time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
                self.calls[label] = self.calls.get(label, 0) + 1
                self.spans[label] = (self.spans.get(label, (wall_start,))[0], time.time())

        setattr(owner, name, timed)


def plain_trainable(config: dict) -> None:
    """What a user of plain Tune would write: do the work, report one scalar result."""
    import torch
    from ray import tune

    from raysweep.cell import run_cell

    torch.set_num_threads(1)
    rows = run_cell(config["cell"], lambda rows: None)
    tune.report({"wall_time_s": max(row["wall_time_s"] for row in rows), "status": rows[-1]["status"],
                 "start_ns": int(rows[0]["attempt"].split("-")[0])})


def run_raysweep(out: Path, flags: list[str], overrides: list[str], grid: Path) -> dict:
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from raysweep import experiment as exp
    from raysweep import launch, report, store, trial

    name = exp.load(grid).name

    clock = Clock()
    clock.wrap(ray, "init", "ray.init")
    clock.wrap(ray, "shutdown", "ray.shutdown")
    clock.wrap(tune.Tuner, "fit", "Tuner.fit")
    clock.wrap(store, "write_cell", "store.write_cell")
    clock.wrap(trial.StoreCallback, "on_trial_result", "StoreCallback.on_trial_result")
    clock.wrap(trial.StoreCallback, "on_trial_complete", "StoreCallback.on_trial_complete")
    clock.wrap(JsonLoggerCallback, "on_trial_result", "JsonLoggerCallback.on_trial_result")
    clock.wrap(launch, "run_sweep", "run_sweep")
    report.write = lambda *args, **kwargs: "(report skipped by the benchmark)"
    sets = [arg for override in overrides for arg in ("--set", override)]
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet:  # one progress line per cell: keep the benchmark's output short
        stdout, sys.stdout = sys.stdout, quiet
        try:
            code = launch.main([str(grid), "--output", str(out), *flags, *sets])
        finally:
            sys.stdout = stdout
    wall_s = time.perf_counter() - started
    assert code == 0, f"raysweep exited with {code}"
    table = store.load(store.results_dir(out, name))
    per_cell, failed = {}, {}
    columns = ("cell_id", "status", "wall_time_s", "error")
    for cell_id, status, wall, error in zip(*(table.column(c).to_pylist() for c in columns)):
        if status != "ok":  # a failed cell did no (measured) work: it counts as overhead
            failed[cell_id] = (error or "")[-300:]
        per_cell[cell_id] = max(per_cell.get(cell_id, 0.0), wall or 0.0)
    epoch_rows = store.load(store.results_dir(out, name), kind="epoch").num_rows
    starts = {cell_id: int(attempt.split("-")[0]) / 1e9
              for cell_id, attempt in zip(*(table.column(c).to_pylist() for c in ("cell_id", "attempt")))}
    return {"wall_s": wall_s, "work_s": sum(per_cell.values()), "cells": len(per_cell), "failed": failed,
            "epoch_rows": epoch_rows, "seconds": clock.seconds, "calls": clock.calls,
            "timeline": timeline(clock.spans["Tuner.fit"], [(starts[c], starts[c] + per_cell[c]) for c in per_cell])}


def timeline(fit: tuple[float, float], cells: list[tuple[float, float]]) -> dict:
    """Tuner.fit split by the cells' own clocks: until the first cell starts (Tune set-up, worker
    start and imports), while cells run (how busy the slots are), after the last cell ends."""
    first, last = min(start for start, _ in cells), max(end for _, end in cells)
    busy = sum(end - start for start, end in cells) / (os.cpu_count() * (last - first))
    return {"before_first_cell_s": first - fit[0], "slots_busy": busy, "after_last_cell_s": fit[1] - last}


def run_tune(out: Path, reuse: bool, limit: int | None, overrides: list[str], grid: Path) -> dict:
    import ray
    from ray import tune

    from raysweep import experiment as exp

    started = time.perf_counter()
    cells = exp.cells(exp.apply_overrides(exp.load(grid), overrides).validate())[:limit]
    init_started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    init_s = time.perf_counter() - init_started
    tuner = tune.Tuner(
        tune.with_resources(plain_trainable, {"cpu": 1}),
        param_space={"cell": tune.grid_search(cells)},
        tune_config=tune.TuneConfig(reuse_actors=reuse),
        run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=0),
    )
    fit_started, fit_wall_start = time.perf_counter(), time.time()
    results = tuner.fit()
    fit_s = time.perf_counter() - fit_started
    fit_span = (fit_wall_start, time.time())
    shutdown_started = time.perf_counter()
    ray.shutdown()
    shutdown_s = time.perf_counter() - shutdown_started
    wall_s = time.perf_counter() - started
    frame = results.get_dataframe()
    assert len(frame) == len(cells) and (frame["status"] == "ok").all(), "some plain-Tune trials failed"
    cells = [(start / 1e9, start / 1e9 + wall) for start, wall in zip(frame["start_ns"], frame["wall_time_s"])]
    return {"wall_s": wall_s, "work_s": float(frame["wall_time_s"].sum()), "cells": len(frame),
            "seconds": {"ray.init": init_s, "Tuner.fit": fit_s, "ray.shutdown": shutdown_s}, "calls": {},
            "timeline": timeline(fit_span, cells)}


def run_one(variant: str, limit: int | None, overrides: list[str], grid: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as tmp:
        out = Path(tmp)
        if variant.startswith("raysweep"):
            return run_raysweep(out, RAYSWEEP_FLAGS[variant], overrides, grid)
        return run_tune(out, reuse=variant == "tune-reuse", limit=limit, overrides=overrides, grid=grid)


# ---------------------------------------------------------------------------------------------
# The driver: interleave variants over repeats, each in its own process

def spawn(variant: str, grid: Path, overrides: list[str], limit: int | None = None) -> dict:
    extra = (["--cells", str(limit)] if limit else []) + [arg for o in overrides for arg in ("--set", o)]
    command = [sys.executable, __file__, "--one", variant, "--grid", str(grid), *extra]
    with local_ray_head() if variant == "raysweep-attached" else contextlib.nullcontext():
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


@contextlib.contextmanager
def local_ray_head():
    """A Ray head on this machine's CPUs for the duration, as `ray start --head` leaves one running."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_cli, "start", "--head", f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([ray_cli, "stop"], capture_output=True)


def summary(values: list[float]) -> str:
    return f"min {min(values):6.2f}  median {statistics.median(values):6.2f}  max {max(values):6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="raysweep,raysweep-1,raysweep-dash,tune-reuse",
                        help="comma-separated variants interleaved every repeat (default: all but tune-defaults)")
    parser.add_argument("--defaults", action="store_true", help="also run the slow tune-defaults variant")
    parser.add_argument("--defaults-repeats", type=int, default=1, help="runs of tune-defaults (default 1)")
    parser.add_argument("--defaults-cells", type=int, default=30,
                        help="tune-defaults runs only the first K cells (default 30: it is ~4x ideal; 100 for all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the grid for every variant, e.g. train.min_steps=160")
    parser.add_argument("--grid", type=Path, default=GRID,
                        help="experiment file whose cells every variant runs (default: the 100-cell benchmark grid)")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--cells", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.cells, args.overrides, args.grid)), flush=True)
        return

    slots = os.cpu_count()
    fast = args.variants.split(",")
    unknown = set(fast) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    schedule = []
    for r in range(args.repeats):
        schedule += fast[r % len(fast):] + fast[:r % len(fast)]
        if args.defaults and r < args.defaults_repeats:
            schedule.append("tune-defaults")
    print(f"[sweep_overhead] {slots} slots, grid {args.grid} {' '.join(args.overrides)}, "
          f"schedule: {', '.join(schedule)}")
    print(f"[sweep_overhead] {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load before: {os.getloadavg()[0]:.2f} (1-min average)", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for variant in schedule:
        load_before = os.getloadavg()[0]
        result = spawn(variant, args.grid, args.overrides, args.defaults_cells if variant == "tune-defaults" else None)
        result["ideal_s"] = result["work_s"] / slots
        result["ratio"] = result["wall_s"] / result["ideal_s"]
        result["load"] = (load_before, os.getloadavg()[0])
        runs[variant].append(result)
        for cell_id, error in result.get("failed", {}).items():
            print(f"  !! {variant}: cell {cell_id} FAILED: {error}")
        print(f"  {variant:17s} cells {result['cells']}  wall {result['wall_s']:6.1f}s  "
              f"ideal {result['ideal_s']:6.1f}s  "
              f"wall/ideal {result['ratio']:.3f}  ray.init {result['seconds'].get('ray.init', 0):5.1f}s  "
              f"(load {result['load'][0]:.1f} -> {result['load'][1]:.1f})", flush=True)
    report(runs, slots)


def report(runs: dict[str, list[dict]], slots: int) -> None:
    runs = {variant: results for variant, results in runs.items() if results}
    print("\nwall / ideal over repeats (ideal = Σ per-cell work / slots):")
    for variant, results in runs.items():
        print(f"  {variant:17s} n={len(results)}  {summary([r['ratio'] for r in results])}")
    print("\nseconds over repeats (wall; ideal):")
    for variant, results in runs.items():
        print(f"  {variant:17s} wall {summary([r['wall_s'] for r in results])};  "
              f"ideal {summary([r['ideal_s'] for r in results])}")
    print("\nfixed and steady costs: ray.init + ray.shutdown (s); Tuner.fit / ideal:")
    for variant, results in runs.items():
        fixed = [r["seconds"].get("ray.init", 0) + r["seconds"].get("ray.shutdown", 0) for r in results]
        steady = [r["seconds"]["Tuner.fit"] / r["ideal_s"] for r in results]
        print(f"  {variant:17s} fixed {summary(fixed)};  fit/ideal {summary(steady)}")
    print("\ninside Tuner.fit (medians): until the first cell starts; slots busy while cells run; after the last cell:")
    for variant, results in runs.items():
        t = {key: statistics.median(r["timeline"][key] for r in results) for key in results[0]["timeline"]}
        print(f"  {variant:17s} {t['before_first_cell_s']:6.2f} s;  {100 * t['slots_busy']:5.1f} %;  "
              f"{t['after_last_cell_s']:6.2f} s")
    print("\nratios of median wall/ideal:")
    med = {v: statistics.median(r["ratio"] for r in rs) for v, rs in runs.items()}
    for a, b in (("raysweep", "tune-reuse"), ("raysweep", "raysweep-1"), ("raysweep-1", "tune-reuse"),
                 ("raysweep-dash", "raysweep"), ("raysweep", "tune-defaults")):
        if a in med and b in med:
            print(f"  {a} / {b}: {med[a] / med[b]:.3f}")
    print("\nper-cell overhead (wall - ideal) x slots / cells, median seconds:")
    for variant, results in runs.items():
        values = [(r["wall_s"] - r["ideal_s"]) * slots / r["cells"] for r in results]
        print(f"  {variant:17s} {statistics.median(values):.3f} s/cell  ({summary(values)})")
    print("\nwhere the time goes (median seconds per run; calls in the first run):")
    for variant, results in runs.items():
        for label in sorted({k for r in results for k in r["seconds"]}):
            values = [r["seconds"].get(label, 0.0) for r in results]
            calls = results[0]["calls"].get(label, "")
            print(f"  {variant:17s} {label:36s} {statistics.median(values):7.2f}s  {calls}")
    loads = [value for results in runs.values() for r in results for value in r["load"]]
    print(f"\n[sweep_overhead] load (1-min average) over the runs: {min(loads):.1f}-{max(loads):.1f}; "
          f"after: {os.getloadavg()[0]:.2f}")
    goal = med.get("raysweep", float("inf"))
    print(f"\nGOAL raysweep <= 1.10 x ideal: {'MET' if goal <= 1.10 else 'NOT MET'} ({goal:.3f}); "
          f"not above plain Tune (reuse_actors): "
          f"{'MET' if 'tune-reuse' in med and goal <= med['tune-reuse'] else 'NOT MET'}")


if __name__ == "__main__":
    main()
