"""Run one cell of the grid, without Ray: data(N, seed) → model(P) → method.fit → metrics → rows.

`raysweep.trial` wraps this for Ray Tune (one trial runs a chunk of cells, `run_chunk`); tests and
notebooks call it directly.
"""

from __future__ import annotations

import random
import time
import traceback
import uuid
from collections.abc import Callable, Collection

import numpy as np
import torch

from raysweep import quality
from raysweep.evaluate import evaluate_sub_ensembles
from raysweep.experiment import Train
from raysweep.methods import METHODS, MethodOptions
from raysweep.models import MODELS, parameter_count
from raysweep.plan import training_flops
from raysweep.tasks import TASKS
from raysweep.tasks.data import content_hash
from raysweep.training import budget
from raysweep.training.budget import TrainingDiverged

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
    train = Train(**cell["train"])
    data = task.load(cell["n"], cell["seed"], cell["ood"], cell["eval"]["max_examples"])
    eval_hashes = {split: content_hash(x, y) for split, (x, y) in data.eval_sets.items()}
    # The converged budget holds out part of this N's own training examples (never the test set).
    data = budget.hold_out_validation(data, train, cell["seed"]) if cell["model"] is not None else data
    model = _model(cell)
    params = parameter_count(model, data.input_dim, data.output_dim) if model else data.input_dim
    method = METHODS[cell["method"]]
    options = MethodOptions().options_of(cell["method"], cell["method_options"])
    n_unit = "tokens" if task.counts_tokens else "examples"  # the report labels N by it
    # S in the open: plug-in EU from S draws is biased by about (S-1)/S
    base = {"cell_id": cell["cell_id"], "attempt": attempt, "params": params, "n_unit": n_unit,
            "samples": method.samples(options)}

    def on_epoch(epoch: int, loss: float) -> None:
        report([base | {"kind": "epoch", "split": "train", "epoch": epoch, "loss": loss,
                        "status": "ok", "wall_time_s": time.time() - started}])

    log = budget.TrainingLog(on_epoch)
    try:
        posterior = method.fit(data, model, options, train, cell["seed"], log, device)
    except TrainingDiverged as exc:  # deterministic: a retry would diverge again
        rows = [base | {"kind": "final", "split": None, "status": "failed", "error": str(exc),
                        "wall_time_s": time.time() - started}]
        report(rows)
        return rows
    # None: all S members/samples; then grid.members' nested sub-ensembles of the same pool
    evaluations = evaluate_sub_ensembles(posterior, data, cell.get("members", []), cell["eval"]["ece_bins"])
    elapsed = time.time() - started
    facts = _training_facts(log, train, model is not None) | {"n_fit": len(data.train_x)} | method.facts(posterior)
    facts["train_flops"] = _train_flops(facts, params, data, method.networks_trained(options)) if model else 0.0
    reason = quality.degenerate(evaluations[None], quality.baselines(data))
    status = {"status": "ok"} if reason is None else {"status": "degenerate", "error": reason}
    rows = [base | facts | {"kind": "final", "split": split, "members": members, "wall_time_s": elapsed,
                            "eval_hash": eval_hashes[split]} | status | values
            for members, metrics in evaluations.items() for split, values in metrics.items()]
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


def _training_facts(log: budget.TrainingLog, train: Train, trains_network: bool) -> dict:
    """The columns that say how long the cell trained and how it stopped. `epoch`: every epoch run, all
    phases (SWAG's, SGHMC's and cSGLD's second phase included); `epochs_run`: the training phase's."""
    if not trains_network:
        return {"epoch": 0, "epochs_run": 0, "budget": None}
    outcome = log.outcome or budget.Outcome(log.last_epoch, log.last_loss, None, budget.STOP_FIXED)
    return {"epoch": log.last_epoch, "epochs_run": outcome.epochs_run, "train_loss": outcome.train_loss,
            "val_loss": outcome.val_loss, "stop_reason": outcome.stop_reason, "budget": budget.describe(train)}


def _train_flops(facts: dict, params: int, data, networks: int) -> float:
    """Compute C of the cell: the --plan formula with the epochs it ran (all phases) over its fitted
    examples; a unit is a token of a sequence task, an example otherwise."""
    units = data.train_x[0].numel() if data.train_x.dtype == torch.long else 1
    return training_flops(params, units, facts["epoch"] * facts["n_fit"], networks)


def _model(cell: dict):
    if cell["model"] is None:
        return None
    config = dict(cell["model"])
    return MODELS[config.pop("name")](**config)
