"""`--plan`: what a sweep will cost, printed before anything runs.

Training compute is estimated the standard way (Kaplan et al., 2020): about 6 FLOPs per parameter
per training unit (forward 2, backward 4), where a unit is a token for sequence models and an
example otherwise. Prediction costs 2 FLOPs per parameter per unit per posterior sample.

    train FLOPs ≈ 6 · P · units per example · examples seen · training phases · networks trained
                  (the converged mode at its cap: an upper bound; each cell stores what it ran)
    eval  FLOPs ≈ 2 · P · units per example · evaluation examples · (S + Σ grid.members)

(each sub-ensemble size m of grid.members is one more evaluation with m members or samples).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from raysweep.experiment import Experiment, cell_label, cells
from raysweep.methods import METHODS, MethodOptions
from raysweep.models import MODELS, parameter_count
from raysweep.training.budget import max_epochs

# Sustained throughput assumed for GPU-hours: 40% of an H100's dense bf16 peak (989 TFLOP/s).
ASSUMED_FLOPS_PER_SECOND = 0.4 * 989e12


@dataclass
class CellCost:
    label: str
    params: int
    train_flops: float
    eval_flops: float

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops


def estimate(experiment: Experiment) -> list[CellCost]:
    input_dim, output_dim, units, eval_examples = _task_dims(experiment)
    counts_tokens = experiment.task.counts_tokens  # N in tokens, not examples
    parameters = {}
    costs = []
    for cell in cells(experiment):
        if cell["model"]:
            key = json.dumps(cell["model"], sort_keys=True)
            if key not in parameters:
                parameters[key] = _parameters(cell["model"], input_dim, output_dim)
            params = parameters[key]
        else:
            params = input_dim
        networks, phases, samples = _networks_phases_samples(cell)
        examples = max(cell["n"] // units, 1) if counts_tokens else cell["n"]
        # the converged mode stops when it stops: its cap bounds the cost from above
        seen = max_epochs(experiment.train, examples) * examples * phases
        train = training_flops(params, units, seen, networks) if cell["model"] else 0.0
        predictions = samples + sum(cell.get("members", []))
        costs.append(CellCost(cell_label(cell), params, train, 2 * params * units * eval_examples * predictions))
    return costs


def training_flops(params: int, units: int, examples_seen: int, networks: int) -> float:
    """6 · P · units per example · examples seen · networks trained (forward 2, backward 4 per unit).
    --plan calls it with the budget; every cell stores it with the epochs it ran (`train_flops`)."""
    return 6.0 * params * units * examples_seen * networks


def _task_dims(experiment: Experiment) -> tuple[int, int, int, int]:
    """(input_dim, output_dim, units per example, evaluation examples over all splits)."""
    task = experiment.task
    dims = task.plan_dims(experiment.eval.max_examples, len(experiment.grid.ood))
    if dims is not None:  # tasks whose data may be out of reach (a hub) say it themselves
        return dims
    sample = task.load(min(experiment.grid.n), 0, list(experiment.grid.ood), experiment.eval.max_examples)
    units = sample.train_x[0].numel() if sample.train_x.dtype == torch.long else 1
    return sample.input_dim, sample.output_dim, units, sum(len(x) for x, _ in sample.eval_sets.values())


def _parameters(model_config: dict, input_dim: int, output_dim: int) -> int:
    config = dict(model_config)
    model = MODELS[config.pop("name")](**config)
    return parameter_count(model, input_dim, output_dim)


def _networks_phases_samples(cell: dict) -> tuple[int, int, int]:
    """(networks trained, training phases, posterior samples S at prediction), as the method says."""
    method = METHODS[cell["method"]]
    options = MethodOptions().options_of(cell["method"], cell["method_options"])
    return method.networks_trained(options), method.training_phases(options), method.samples(options)


def describe(experiment: Experiment) -> str:
    costs = estimate(experiment)
    g = experiment.grid
    total = sum(c.flops for c in costs)
    hours = total / ASSUMED_FLOPS_PER_SECOND / 3600
    lines = [
        f"experiment {experiment.name}: task {type(experiment.task).__name__}, model {type(experiment.model).__name__}",
        f"grid: N {list(g.n)} x {experiment.model.size_knob} {list(g.sizes)} x methods {list(g.methods)} "
        f"x seeds {list(g.seeds)}; OOD {list(g.ood)}",
        f"{len(costs)} cells (methods without a network skip the size axis)",
        "FLOPs: train ≈ 6·P·units·examples seen·networks, eval ≈ 2·P·units·eval examples·S "
        "(a unit is a token for sequence models, an example otherwise)",
        f"{'cell':<48} {'P':>12} {'FLOPs':>10}",
    ]
    lines += [f"{c.label:<48} {c.params:>12,} {c.flops:>10.2e}" for c in costs[:20]]
    if len(costs) > 20:
        lines.append(f"... and {len(costs) - 20} more cells")
    lines.append(f"total {total:.3e} FLOPs = {hours:.3g} GPU-hours at {ASSUMED_FLOPS_PER_SECOND:.2e} FLOP/s "
                 f"(40% of one H100's dense bf16 peak)")
    return "\n".join(lines)
