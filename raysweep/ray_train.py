"""The Ray Train edge: a cell whose ensemble members are trained with DeepSpeed runs on a Ray Train
worker group, so that one member can span several workers (GPUs) while Tune schedules the cells.

The Tune trial is only the driver (Ray's Train+Tune guide: the trial launches and watches the Train
run; the workers hold the real resources). Every worker runs the same `run_cell`: DeepSpeed shards
each member over the workers, and each worker evaluates. Rank 0's rows go back to the Tune trial
through Ray's TuneReportCallback, so the store sees the same rows as from any other cell.
"""

from __future__ import annotations

import uuid

import ray
import torch

from raysweep.cell import run_cell
from raysweep.methods import METHODS, MethodOptions

# The driver trial waits while its workers train and evaluate: it needs almost no CPU. Not zero: a
# Ray placement group cannot be made of empty bundles.
DRIVER_CPUS = 0.05


def _workers(cell: dict) -> int:
    """Ray Train workers the cell's method asks for (0: it runs inside its Tune trial)."""
    options = MethodOptions().options_of(cell["method"], cell["method_options"])
    return METHODS[cell["method"]].train_workers(options)


def uses_workers(cell: dict) -> bool:
    """Does this cell train on a Ray Train worker group?"""
    return _workers(cell) > 0


def chunks_of_their_own(cells: list[dict]) -> list[list[dict]]:
    """Cells on worker groups are never batched with others: each is one Tune trial, one Train run."""
    return [[cell] for cell in cells if uses_workers(cell)]


def trial_resources(chunk: list[dict], cpus: float, gpus: float):
    """What a Tune trial asks for: the cell's resources, or a sliver for the driver of a Train run
    (its workers ask for `cpus` and `gpus` each themselves)."""
    from ray.tune import PlacementGroupFactory

    if uses_workers(chunk[0]):
        return PlacementGroupFactory([{"CPU": DRIVER_CPUS}])
    return PlacementGroupFactory([{"CPU": cpus, "GPU": gpus}])


def unplaceable(cells: list[dict], cpus: float, gpus: float, available: dict) -> str | None:
    """Why a cell's Train run can never start on this cluster (its workers and its driver at once), or None."""
    for cell in cells:
        if not uses_workers(cell):
            continue
        workers = _workers(cell)
        need = {"CPU": workers * cpus + DRIVER_CPUS, "GPU": workers * gpus}
        short = {name: amount for name, amount in need.items() if amount > available.get(name, 0)}
        if short:
            have = ", ".join(f"{available.get(name, 0):g} {name}" for name in short)
            return (f"method {cell['method']!r}: {workers} Ray Train workers with resources.cpus={cpus:g}, "
                    f"resources.gpus={gpus:g} needs {', '.join(f'{v:g} {k}' for k, v in short.items())} at once "
                    f"(workers plus {DRIVER_CPUS} CPU for the trial that drives them), but the cluster has {have}; "
                    f"lower the workers per cell (e.g. methods.ensemble.workers_per_member) or resources.cpus, "
                    f"or add nodes")
    return None


def run_cell_on_workers(cell: dict, cpus: float, gpus: float) -> None:
    """Inside a Tune trial: run the cell on `workers_per_member` Ray Train workers of `cpus` CPUs and
    `gpus` GPUs each; their rows reach the trial's results as if the trial had reported them."""
    # Imported here: every Tune worker imports this module, and most never drive a Train run.
    from ray import train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    workers = _workers(cell)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cell": cell, "cpus": cpus},
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        scaling_config=train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                           resources_per_worker={"CPU": cpus, "GPU": gpus}),
        # A fresh name per run: Ray Train resumes a run whose name it finds in storage.
        run_config=train.RunConfig(name=f"raysweep-{cell['cell_id'][:12]}-{uuid.uuid4().hex[:8]}",
                                   callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def _worker(config: dict) -> None:
    """One Ray Train worker: run the cell in this worker's share of the process group."""
    from ray import train
    from ray.train.torch import get_device

    torch.set_num_threads(max(1, int(config["cpus"])))
    node = ray.get_runtime_context().get_node_id()

    def report(rows: list[dict]) -> None:
        train.report({"rows": [row | {"node": node} for row in rows]})

    run_cell(config["cell"], report, device=str(get_device()))
