"""Command line: validate an experiment, run its missing cells on Ray Tune, then fit and report.

    python -m raysweep.launch experiments/digits.py [--smoke] [--set key=value ...]
        [--output DIR] [--address ADDR] [--max-concurrent K] [--no-dashboard]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from raysweep import experiment as exp
from raysweep import report, store
from raysweep.experiment import ExperimentError, cell_label


QUICK_BOOT = 200


class LaunchError(RuntimeError):
    """A problem found once Ray is up (e.g. the cluster's shape), reported before any cell runs."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="raysweep", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="path to an experiment file defining `experiment = Experiment(...)`")
    parser.add_argument("--smoke", action="store_true", help="shrink to a run of seconds: tiny grid, one epoch")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, dotted for nested ones (e.g. grid.seeds=0,1); repeatable")
    parser.add_argument("--output", default="runs", help="results go to OUTPUT/<experiment name>/ (default: runs)")
    parser.add_argument("--address", default=None, help="Ray cluster to join, e.g. 'auto'; default: a local Ray")
    parser.add_argument("--storage", default=os.environ.get("RAYSWEEP_STORAGE"),
                        help="Tune's run storage, shared by every node: s3://..., gs://... or a shared "
                             "filesystem path (default: $RAYSWEEP_STORAGE, else OUTPUT; required on multi-node "
                             "clusters). raysweep's results store is written by the driver and needs none")
    parser.add_argument("--max-concurrent", type=int, default=None, help="at most K cells at once")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local runs)")
    parser.add_argument("--plan", action="store_true", help="print the grid, cells, FLOPs and GPU-hours; run nothing")
    args = parser.parse_args(argv)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        parser.error(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    return args


def prepare(args: argparse.Namespace) -> exp.Experiment:
    """Everything that can go wrong with the input goes wrong here, before Ray starts."""
    experiment = exp.load(args.experiment)
    if args.smoke:
        experiment = exp.smoke(experiment)
    # Explicit --set values win over --smoke's choices.
    return exp.apply_overrides(experiment, args.overrides).validate(check_data=not args.plan)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        experiment = prepare(args)
    except ExperimentError as exc:
        print(f"raysweep: error: {exc}", file=sys.stderr)
        return 2
    if args.plan:
        from raysweep.plan import describe

        print(describe(experiment))
        return 0
    root = Path(args.output).resolve() / experiment.name
    results = store.results_dir(args.output, experiment.name).resolve()
    try:
        store.check_writable(results)
    except OSError as exc:
        print(f"raysweep: error: {exc}", file=sys.stderr)
        return 2
    swept = store.sweep_temporaries(results)
    if swept:
        print(f"[raysweep] removed {swept} temporary file(s) left by an interrupted write")
    grid = exp.cells(experiment)
    done = store.finished_cells(results)
    todo = [cell for cell in grid if cell["cell_id"] not in done]
    print(f"[raysweep] {experiment.name}: {len(grid)} cells, {len(grid) - len(todo)} already done, "
          f"{len(todo)} to run -> {results}", flush=True)
    if todo:
        try:
            run_sweep(experiment, todo, len(grid), len(grid) - len(todo), root, args)
        except LaunchError as exc:
            print(f"raysweep: error: {exc}", file=sys.stderr)
            return 2
    else:
        print("[raysweep] nothing to run: every cell is already in the store")
    # A quick report after the sweep (200 bootstrap resamples per curve); `python -m raysweep.fit`
    # refits from the store with 1,000 and the holdout check.
    path = report.write(results, root / "report", title=f"raysweep report: {experiment.name}", n_boot=QUICK_BOOT)
    print(f"[raysweep] report: {path}")
    return 0


def start_local_ray(dashboard: bool):
    """An embedded Ray on this machine's CPUs. The dashboard listens on loopback only (anyone who
    reaches it can run code here) and Ray's token authentication stays on."""
    import ray

    # address="local": always a fresh instance, never another Ray already running on this machine.
    context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       log_to_driver=False, num_cpus=os.cpu_count())
    if context.dashboard_url:
        print(f"[raysweep] Ray dashboard: http://{context.dashboard_url} "
              f"(it asks for the token in ~/.ray/auth_token; print it with `ray get-auth-token`)", flush=True)
    return context


def run_sweep(experiment, todo: list[dict], total: int, already_done: int, root: Path, args) -> None:
    # raysweep's store is the record of results; of Tune's per-trial loggers keep only the JSON one
    # its result grid reads (TensorBoard and CSV cannot log a list of rows and only warn).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from raysweep.trial import StoreCallback, trainable

    started = time.time()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        if len(nodes) > 1 and not args.storage:
            ray.shutdown()
            raise LaunchError(
                f"the cluster at {args.address!r} has {len(nodes)} nodes, but Tune's run storage would be "
                f"{root}, a folder on this node only; pass --storage s3://BUCKET/PATH (or gs://..., or a "
                f"filesystem shared by every node), or set RAYSWEEP_STORAGE")
    else:
        start_local_ray(dashboard=not args.no_dashboard)
    resources = experiment.resources
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpus, "gpu": resources.gpus}),
        param_space={"cell": tune.grid_search(todo), "cpus": resources.cpus, "gpus": resources.gpus},
        tune_config=tune.TuneConfig(
            # Small cells would otherwise pay for a fresh worker process each (DESIGN.md §6).
            reuse_actors=True,
            max_concurrent_trials=args.max_concurrent,
            trial_name_creator=lambda trial: cell_label(trial.config["cell"]),
            trial_dirname_creator=lambda trial: f"{cell_label(trial.config['cell'])}_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=args.storage or str(root),
            callbacks=[StoreCallback(store.results_dir(root.parent, experiment.name), total, already_done),
                       JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=resources.max_retries),
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    finally:
        if not args.address:
            ray.shutdown()
    print(f"[raysweep] sweep finished in {time.time() - started:.1f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
