"""Run one cell of the grid, without Ray: data(N, seed) → model(P) → method.fit → metrics → rows.

`raysweep.trial` wraps this for Ray Tune (one trial runs a chunk of cells, `run_chunk`); tests and
notebooks call it directly.
"""

from __future__ import annotations

import random
import time
import traceback
import uuid
from typing import Callable, Collection

import numpy as np
import torch

from raysweep.evaluate import evaluate
from raysweep.experiment import Train
from raysweep.methods import METHODS, MethodOptions
from raysweep.methods.training import TrainingDiverged, epochs_for
from raysweep.models import MODELS, parameter_count
from raysweep.tasks import TASKS

Report = Callable[[list[dict]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_cell(cell: dict, report: Report, device: str = "cpu") -> list[dict]:
    """Train and evaluate one cell. Epoch rows go to `report` as they happen; the final rows
    (one per evaluation split, or one failed row) are reported and returned."""
    started = time.time()
    attempt = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"  # sorts by time: the latest attempt wins
    seed_everything(cell["seed"])
    task_config = dict(cell["task"])
    task = TASKS[task_config.pop("name")](**task_config)
    data = task.load(cell["n"], cell["seed"], cell["ood"], cell["eval"]["max_examples"])
    model = _model(cell)
    params = parameter_count(model, data.input_dim, data.output_dim) if model else data.input_dim
    n_unit = "tokens" if getattr(task, "counts_tokens", False) else "examples"  # the report labels N by it
    base = {"cell_id": cell["cell_id"], "attempt": attempt, "params": params, "n_unit": n_unit}

    def on_epoch(epoch: int, loss: float) -> None:
        report([base | {"kind": "epoch", "split": "train", "epoch": epoch, "loss": loss,
                        "status": "ok", "wall_time_s": time.time() - started}])

    method = METHODS[cell["method"]]
    options = MethodOptions().options_of(cell["method"], cell["method_options"])
    train = Train(**cell["train"])
    try:
        posterior = method.fit(data, model, options, train, cell["seed"], on_epoch, device)
    except TrainingDiverged as exc:  # deterministic: a retry would diverge again
        rows = [base | {"kind": "final", "split": None, "status": "failed", "error": str(exc),
                        "wall_time_s": time.time() - started}]
        report(rows)
        return rows
    metrics = evaluate(posterior, data, cell["eval"]["ece_bins"])
    elapsed = time.time() - started
    epochs = epochs_for(train, cell["n"]) if model else 0
    rows = [base | {"kind": "final", "split": split, "epoch": epochs, "status": "ok",
                    "wall_time_s": elapsed} | values for split, values in metrics.items()]
    report(rows)
    return rows


def run_chunk(cells: list[dict], report: Report, device: str = "cpu",
              skip: Collection[str] = ()) -> dict[str, str]:
    """Run several cells one after another in this process, skipping the ids in `skip` (cells a
    previous attempt already delivered). A cell that raises does not stop its siblings: the
    traceback of each cell that raised is returned by cell id, for the caller to retry or record."""
    errors = {}
    for cell in cells:
        if cell["cell_id"] in skip:
            continue
        try:
            run_cell(cell, report, device=device)
        except Exception:  # noqa: BLE001 -- any error of one cell is that cell's failure, not its siblings'
            errors[cell["cell_id"]] = traceback.format_exc()
    return errors


def _model(cell: dict):
    if cell["model"] is None:
        return None
    config = dict(cell["model"])
    return MODELS[config.pop("name")](**config)
