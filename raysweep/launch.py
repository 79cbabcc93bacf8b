"""Command line: validate an experiment, run its missing cells on Ray Tune, then fit and report.

    python -m raysweep.launch experiments/digits.py [--smoke] [--set key=value ...]
        [--output DIR] [--address ADDR] [--max-concurrent K] [--cells-per-trial K] [--[no-]dashboard]
        [--new-store | --merge] [--wait-for-lock SECONDS] [--connect-timeout SECONDS]

Exit codes: 0 every cell has an outcome (ok or failed) and the report is written; 2 bad input, a
busy or mismatched store, or a cluster that cannot run the cells; 130 interrupted (Ctrl-C), no report.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
import stat
import sys
import time
from pathlib import Path

from raysweep import experiment as exp
from raysweep import store
from raysweep.experiment import ExperimentError

# Batching small cells (see auto_cells_per_trial): trials per parallel slot, and the most cells per trial.
TRIALS_PER_SLOT = 5
MAX_AUTO_CELLS_PER_TRIAL = 10
# The dashboard's three extra processes cost a 100-cell sweep ~7 s on 2 CPUs (benchmarks/RESULTS.md §1).
SMALL_MACHINE_CPUS = 4


INTERRUPTED = 130  # the shell's code for a SIGINT


class LaunchError(RuntimeError):
    """A problem found once Ray is up (e.g. the cluster's shape), reported before any cell runs."""


class Interrupted(RuntimeError):
    """The sweep stopped before every cell had an outcome (Ctrl-C)."""


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
    parser.add_argument("--max-concurrent", type=int, default=None, help="at most K trials (chunks of cells) at once")
    parser.add_argument("--cells-per-trial", type=int, default=None, metavar="K",
                        help="run up to K cells one after another in each Tune trial, so small cells share its "
                             "start-up cost (default: automatic, ~5 trials per parallel slot and at most "
                             f"{MAX_AUTO_CELLS_PER_TRIAL} cells per trial; 1 for GPU cells)")
    parser.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=None,
                        help="start the Ray dashboard (local runs; default: on, except on machines of "
                             f"{SMALL_MACHINE_CPUS} CPUs or fewer, where its processes slow the sweep)")
    parser.add_argument("--plan", action="store_true", help="print the grid, cells, FLOPs and GPU-hours; run nothing")
    same = parser.add_mutually_exclusive_group()
    same.add_argument("--new-store", action="store_true",
                      help="the store holds another configuration: move it aside to OUTPUT/<name>.<time> "
                           "and start afresh")
    same.add_argument("--merge", action="store_true",
                      help="the store holds another configuration: add this one to it "
                           "(rows tell them apart by `variant`)")
    parser.add_argument("--wait-for-lock", type=float, default=0.0, metavar="SECONDS",
                        help="another launch is writing the same store: wait this long for it "
                             "(default: refuse at once)")
    parser.add_argument("--connect-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="with --address: give up reaching the cluster after this long (default 15)")
    args = parser.parse_args(argv)
    for option, value in (("--max-concurrent", args.max_concurrent), ("--cells-per-trial", args.cells_per_trial)):
        if value is not None and value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    for option, value in (("--wait-for-lock", args.wait_for_lock), ("--connect-timeout", args.connect_timeout)):
        if not math.isfinite(value) or value < 0 or (option == "--connect-timeout" and value == 0):
            parser.error(f"{option} must be a finite number of seconds"
                         f"{' > 0' if option == '--connect-timeout' else ' >= 0'}, got {value}")
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
        with store.locked(root, wait_s=args.wait_for_lock):
            return _launch(experiment, root, results, args)
    except (OSError, store.StoreBusy, store.StoreMismatch, LaunchError) as exc:
        print(f"raysweep: error: {exc}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:
        detail = f": {exc}" if str(exc) else ""
        print(f"raysweep: interrupted{detail}. No report was written; run the same command again to run "
              f"the cells that did not finish", file=sys.stderr)
        return INTERRUPTED


def store_identity(e: exp.Experiment) -> dict:
    """What a store's cells must share: everything but the grid's axes (a grid may grow) and the
    resources (they change how fast, not what is computed). Method options count only for the
    methods in the grid, so adding a method is an extension of the store, not another configuration."""
    whole = dataclasses.asdict(e)
    model = {k: v for k, v in whole["model"].items() if k != getattr(e.model, "size_knob", None)}
    return {
        "name": e.name,
        "task": {"class": type(e.task).__qualname__, **whole["task"]},
        "model": {"class": type(e.model).__qualname__, **model},
        "ood": list(e.grid.ood),
        "train": whole["train"], "eval": whole["eval"],
        "methods": {name: options for name, options in whole["methods"].items() if name in e.grid.methods},
    }


def _launch(experiment, root: Path, results: Path, args) -> int:
    """Everything a launch does while it holds the store's lock."""
    if args.new_store and (aside := store.set_aside(root)):
        print(f"[raysweep] moved the previous store to {aside}")
    if note := store.check_identity(root, store_identity(experiment), merge=args.merge):
        print(f"[raysweep] {note}")
    swept = store.sweep_temporaries(results)
    if swept:
        print(f"[raysweep] removed {swept} temporary file(s) left by an interrupted write")
    grid = exp.cells(experiment)
    done = store.finished_cells(results)
    todo = [cell for cell in grid if cell["cell_id"] not in done]
    print(f"[raysweep] {experiment.name}: {len(grid)} cells, {len(grid) - len(todo)} already done, "
          f"{len(todo)} to run -> {results}", flush=True)
    if todo:
        run_sweep(experiment, todo, len(grid), len(grid) - len(todo), root, args)
    else:
        print("[raysweep] nothing to run: every cell is already in the store")
    # The report after the sweep: the same settings as `python -m raysweep.fit` (one report per store);
    # `python -m raysweep.fit --holdout` adds the holdout check.
    from raysweep import report  # here: lmfit and matplotlib cost --plan and bad-input errors ~1.5 s

    path = report.write(results, root / "report", title=f"raysweep report: {experiment.name}")  # as raysweep.fit
    print(f"[raysweep] report: {path}")
    return 0


def wants_dashboard(flag: bool | None, cpus: int | None = None) -> bool:
    """--dashboard / --no-dashboard if given, else on unless the machine is small."""
    if flag is not None:
        return flag
    cpus = cpus or os.cpu_count() or 1
    if cpus <= SMALL_MACHINE_CPUS:
        print(f"[raysweep] Ray dashboard off on this {cpus}-CPU machine (it slows small sweeps); "
              f"--dashboard turns it on", flush=True)
        return False
    return True


TOKEN_FILE = Path("~/.ray/auth_token").expanduser()


def start_local_ray(dashboard: bool):
    """An embedded Ray on this machine's CPUs. The dashboard listens on loopback only (anyone who
    reaches it can run code here) and Ray's token authentication stays on.

    What cannot be bound to loopback (Ray 2.60, measured with `ss -ltnp`): the GCS, the raylet and
    the workers' gRPC servers always listen on every interface, and the runtime-env and dashboard
    agents on the node's address; no option of ray.init changes that. Token authentication guards
    them. The metrics exporters (which answer without a token) are turned off."""
    import ray

    warn_if_auth_off()
    # Ray's metrics agent serves Prometheus metrics without a token on every interface; a local sweep needs none.
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    # address="local": always a fresh instance, never another Ray already running on this machine.
    context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       _node_ip_address="127.0.0.1", log_to_driver=False, num_cpus=os.cpu_count())
    restrict_token_file()
    if context.dashboard_url:
        print(f"[raysweep] Ray dashboard: http://{context.dashboard_url} "
              f"(it asks for the token in ~/.ray/auth_token; print it with `ray get-auth-token`)", flush=True)
    return context


def warn_if_auth_off(environ=os.environ) -> bool:
    mode = environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode and mode != "token":
        print(f"[raysweep] warning: RAY_AUTH_MODE={environ['RAY_AUTH_MODE']} turns Ray's token authentication "
              f"off: anyone who reaches this machine's Ray ports can run code as you. Unset it",
              file=sys.stderr, flush=True)
        return True
    return False


def restrict_token_file(path: Path = TOKEN_FILE) -> None:
    """Ray writes ~/.ray/auth_token with the umask's mode (often 0644): make it readable by its owner only."""
    try:
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        print(f"[raysweep] warning: cannot make {path} private (chmod 600): {exc}", file=sys.stderr)


def connect(address: str, timeout_s: float) -> None:
    """ray.init(address=...) with a bounded wait and a one-line error: Ray itself retries an
    unreachable GCS for minutes, and `auto` without a running Ray raises a traceback."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(address)
    except Exception as exc:  # noqa: BLE001 -- ConnectionError or ValueError: report it in one line
        raise LaunchError(f"--address {address!r}: {_first_line(exc)}") from None
    if resolved is None:
        raise LaunchError(f"--address {address!r}: no running Ray cluster found on this machine "
                          f"(start one with `ray start --head`, or leave --address out for a local Ray)")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise LaunchError(f"--address {address!r}: cannot reach Ray's GCS at {resolved} within "
                          f"{timeout_s:g}s ({exc}); is the cluster up, and this machine allowed to reach it?") from None
    try:
        ray.init(address=resolved, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001
        raise LaunchError(f"--address {address!r}: cannot join the Ray cluster at {resolved}: "
                          f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def unplaceable_trial(cpus: float, gpus: float, nodes: list[dict]) -> str | None:
    """Why one trial (resources.cpus CPUs and resources.gpus GPUs on one node) fits no node, or None."""
    capacities = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    if any(cap.get("CPU", 0) >= cpus and cap.get("GPU", 0) >= gpus for cap in capacities):
        return None
    largest = ", ".join(f"{cap.get('CPU', 0):g} CPU and {cap.get('GPU', 0):g} GPU" for cap in capacities) or "no nodes"
    return (f"each trial asks for resources.cpus={cpus:g} and resources.gpus={gpus:g} on one node, but the "
            f"nodes have {largest}; Ray would wait for ever. Lower them (--set resources.cpus=1, "
            f"--set resources.gpus=0) or use a cluster with such nodes")


def fractional_cpu_cap(cpus: float, available_cpus: float) -> int | None:
    """With resources.cpus < 1 Ray runs 1/cpus trials per CPU, each a process of several hundred
    MB that only shares the CPU: cap the trials at one per CPU, and say so."""
    if cpus >= 1:
        return None
    cap = max(1, int(available_cpus))
    print(f"[raysweep] warning: resources.cpus={cpus:g} would let Ray start {int(available_cpus / cpus)} trial "
          f"processes on {available_cpus:g} CPUs; running at most {cap} at once (--max-concurrent overrides)",
          file=sys.stderr, flush=True)
    return cap


def auto_cells_per_trial(cells: int, slots: int, gpus: float) -> int:
    """Cells per Tune trial when --cells-per-trial is not given.

    Each trial pays Tune's scheduling and an actor reset: ~0.1 s on an idle 2-core machine, over
    1 s under load (benchmarks/RESULTS.md §1), which sub-second cells cannot absorb. k cells per
    trial divide that by k. About TRIALS_PER_SLOT trials per slot keep enough trials for Tune to
    even out uneven chunks; beyond MAX_AUTO_CELLS_PER_TRIAL cells the saving is under a percent of
    one-second cells. GPU cells run one per trial: they are long, and a CUDA error in one cell
    should not reach the next in the same process.
    """
    if gpus > 0:
        return 1
    return max(1, min(MAX_AUTO_CELLS_PER_TRIAL, math.ceil(cells / (max(slots, 1) * TRIALS_PER_SLOT))))


def chunk_cells(cells: list[dict], per_trial: int, slots: int = 1) -> list[list[dict]]:
    """Split cells into chunks of at most `per_trial`, dealt round-robin: the grid lists cells of
    the same method, size and N together, so contiguous chunks would differ in cost and leave one
    slot finishing the heaviest alone; dealt chunks each get a similar mix. The number of chunks is
    rounded up to a multiple of the slots (when there are cells enough) so that they fill every slot."""
    count = math.ceil(len(cells) / per_trial)
    count = min(len(cells), math.ceil(count / slots) * slots)
    return [cells[i::count] for i in range(count)]


def parallel_slots(resources, max_concurrent: int | None) -> int:
    """How many cells (trials) the Ray cluster can run at once."""
    import ray

    available = ray.cluster_resources()
    slots = math.inf
    for name, per_cell in (("CPU", resources.cpus), ("GPU", resources.gpus)):
        if per_cell > 0:
            slots = min(slots, available.get(name, 0) // per_cell)
    slots = min(slots, max_concurrent or math.inf)
    return 1 if math.isinf(slots) else max(1, int(slots))


def run_sweep(experiment, todo: list[dict], total: int, already_done: int, root: Path, args) -> None:
    # raysweep's store is the record of results; of Tune's per-trial loggers keep only a JSON one
    # without the rows (trial.RowlessJsonLogger), so that Tune's result grid finds its result.json.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray
    from ray import tune

    from raysweep import ray_train
    from raysweep.trial import RowlessJsonLogger, StoreCallback, chunk_config, trainable, trial_dirname, trial_name

    started = time.time()
    if args.address:
        connect(args.address, args.connect_timeout)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        if len(nodes) > 1 and not args.storage:
            ray.shutdown()
            raise LaunchError(
                f"the cluster at {args.address!r} has {len(nodes)} nodes, but Tune's run storage would be "
                f"{root}, a folder on this node only; pass --storage s3://BUCKET/PATH (or gs://..., or a "
                f"filesystem shared by every node), or set RAYSWEEP_STORAGE")
    else:
        start_local_ray(dashboard=wants_dashboard(args.dashboard))
    resources = experiment.resources
    # Only on the embedded local Ray: a cluster's autoscaler may still add the nodes a Train run needs.
    if not args.address and (problem := unplaceable_trial(resources.cpus, resources.gpus, ray.nodes())
                             or ray_train.unplaceable(todo, resources.cpus, resources.gpus, ray.cluster_resources())):
        ray.shutdown()
        raise LaunchError(problem)
    if args.address and (problem := unplaceable_trial(resources.cpus, resources.gpus, ray.nodes())):
        print(f"[raysweep] warning: {problem} (unless the autoscaler adds one)", file=sys.stderr, flush=True)
    max_concurrent = args.max_concurrent or fractional_cpu_cap(resources.cpus, ray.cluster_resources().get("CPU", 1))
    slots = parallel_slots(resources, max_concurrent)
    per_trial = args.cells_per_trial or auto_cells_per_trial(len(todo), slots, resources.gpus)
    batchable = [cell for cell in todo if not ray_train.uses_workers(cell)]
    chunks = ray_train.chunks_of_their_own(todo) + (chunk_cells(batchable, per_trial, slots) if batchable else [])
    print(f"[raysweep] {len(chunks)} trial(s) of up to {max(map(len, chunks))} cell(s) on {slots} slot(s)", flush=True)
    callback = StoreCallback(store.results_dir(root.parent, experiment.name), chunks, total, already_done)
    chunk_refs = [ray.put(chunk) for chunk in chunks]  # each trial fetches its own chunk, not the grid
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, chunk_refs=chunk_refs),
                            lambda config: ray_train.trial_resources(chunks[config["chunk"]["index"]],
                                                                     resources.cpus, resources.gpus)),
        param_space={"chunk": tune.grid_search([chunk_config(i, chunk) for i, chunk in enumerate(chunks)]),
                     "cpus": resources.cpus, "gpus": resources.gpus},
        tune_config=tune.TuneConfig(
            # Small cells would otherwise pay for a fresh worker process each (docs/design.md §6).
            reuse_actors=True,
            # Drivers of Train runs take almost no CPU: without a limit Tune would start a driver for
            # every such cell at once, each waiting for workers (Ray's Train+Tune guide).
            max_concurrent_trials=max_concurrent or (slots if len(batchable) < len(todo) else None),
            # Functions of an importable module: Tune pickles them into every trial's saved state, and
            # a lambda of this module (__main__ under `python -m`) was pickled by value, 8.6 KB a trial.
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=args.storage or str(root),
            callbacks=[callback, RowlessJsonLogger()],
            failure_config=tune.FailureConfig(max_failures=resources.max_retries),
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    finally:
        # Attached to a cluster (--address), this only disconnects the driver: the cluster stays up,
        # and a second launch from the same process (a notebook, a retry) can join it again.
        ray.shutdown()
    check_complete(callback)
    print(f"[raysweep] sweep finished in {time.time() - started:.1f}s", flush=True)


def check_complete(callback) -> None:
    """Tune returns normally after its first Ctrl-C: a sweep with cells left without an outcome
    was interrupted, whatever Tune says, and must not produce a report that looks complete."""
    if callback.unfinished > 0:
        raise Interrupted(f"{callback.done} of {callback.total} cells have an outcome ({callback.failed} failed), "
                          f"{callback.unfinished} did not finish")


if __name__ == "__main__":
    sys.exit(main())
