"""Randomize-then-optimize training of a stack of members (Bardsley et al., 2014; Pearce et al., 2020,
"anchored ensembles"; Osband et al., 2018): member m minimises

    (1/N) [ Σ_n NLL(y_n + ε_mn | x_n, θ_m) + (α/2) ‖θ_m - θ0_m‖² ],   θ0_m ~ N(0, 1/α),  ε_mn ~ N(0, σ²)

with its own anchor θ0_m and, when the task states its noise variance σ², its own perturbed targets
(drawn once, fixed for the whole run). For a linear-Gaussian model the minimiser is an exact draw
from the posterior: θ*_m = Λ⁻¹(Xᵀ(y + ε_m)/σ² + α θ0_m) has mean m_N and covariance Λ⁻¹ = S_N.
Without σ² only the anchor is random (Pearce et al.'s variant), which is exact only in the limit
of many data.

The draw is the optimum, not an iterate near it: the learning rate decays to 0 along a cosine, since
constant-lr Adam jitters about the optimum by about lr and that jitter would add to the spread.
"""

from __future__ import annotations

import math

import torch

from raysweep.tasks.data import REGRESSION, TaskData
from raysweep.training.loop import Objective, train_members
from raysweep.training.stack import StackedMembers


def anchor(stack: StackedMembers, prior_precision: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One prior draw θ0_m per member; the members start at their anchors."""
    anchors = {}
    with torch.no_grad():
        for name, value in stack.params.items():
            draw = torch.randn(value.shape, generator=generator) * prior_precision ** -0.5
            anchors[name] = draw.to(value.device, value.dtype)
            value.copy_(anchors[name])
    return anchors


def perturbed_targets(data: TaskData, members: int, generator: torch.Generator) -> torch.Tensor:
    """(M, N) targets: y + ε_m with ε_m ~ N(0, σ²) when σ² is known, else y for every member."""
    y = data.train_y
    if data.kind != REGRESSION or "noise_var" not in data.extras:
        return y.unsqueeze(0).expand(members, *y.shape)
    noise = torch.randn((members, *y.shape), generator=generator) * float(data.extras["noise_var"]) ** 0.5
    return y.unsqueeze(0) + noise.to(y.dtype)


def train_anchored(stack: StackedMembers, data: TaskData, train, seed: int, on_epoch,
                   prior_precision: float) -> StackedMembers:
    """The shared loop (loop.train_members) with each member's own targets and anchor penalty
    α/2N ‖θ_m − θ0_m‖² (the loss is a per-example mean), and a cosine decay of the step size to 0."""
    generator = torch.Generator().manual_seed(seed)
    anchors = anchor(stack, prior_precision, generator)
    n = len(data.train_x)

    def penalty(params: dict[str, torch.Tensor]) -> torch.Tensor:  # (M,)
        square = sum(((params[k] - a) ** 2).flatten(1).sum(1) for k, a in anchors.items())
        return 0.5 * prior_precision * square / n

    def cosine(optimizer, total_steps: int):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k / total_steps, 1.0))))

    objective = Objective(targets=perturbed_targets(data, stack.size, generator), penalty=penalty, schedule=cosine)
    return train_members(stack, data, train, seed, on_epoch, objective=objective)
