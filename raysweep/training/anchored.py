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
from raysweep.training import optim
from raysweep.training.budget import check_finite, epochs_for, steps_per_epoch
from raysweep.training.likelihood import loss_per_member
from raysweep.training.loop import augmenter
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
    device = stack.device
    generator = torch.Generator().manual_seed(seed)
    anchors = anchor(stack, prior_precision, generator)
    x, targets = data.train_x.to(device), perturbed_targets(data, stack.size, generator).to(device)
    n, batch = len(x), min(train.batch_size, len(x))
    steps, epochs = steps_per_epoch(train, n), epochs_for(train, n)
    optimizer = optim.make("adam", list(stack.params.values()), train)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k / (steps * epochs), 1.0))))
    rows = torch.arange(stack.size, device=device)[:, None]
    augment = augmenter(data, seed)
    for epoch in range(1, epochs + 1):
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(stack.size)]).to(device)  # (M, N)
        total = torch.zeros((), device=device)
        for step in range(steps):
            idx = order[:, step * batch:(step + 1) * batch]  # (M, b)
            outputs = stack.forward(augment(x[idx]), shared_input=False, train=True)
            nll = loss_per_member(outputs, targets[rows, idx], data.kind)  # (M,)
            penalty = sum(((stack.params[k] - a) ** 2).flatten(1).sum(1) for k, a in anchors.items())  # (M,)
            losses = nll + 0.5 * prior_precision * penalty / n
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            schedule.step()
            total += nll.detach().mean()
        epoch_loss = total.item() / steps
        check_finite(epoch, epoch_loss)
        on_epoch(epoch, epoch_loss)
    return stack
