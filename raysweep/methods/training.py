"""Train M copies of one architecture at once with torch.func (stack_module_state + vmap).

Small members are far too small to keep two cores busy one at a time; stacked, the M forward and
backward passes become one batched pass. Each member keeps its own initialisation and its own data
order, and Adam is element-wise, so the result equals M independent training runs.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from raysweep.tasks.data import CLASSIFICATION, TaskData


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the cell is recorded as failed, not retried."""


class StackedMembers:
    """M members of one architecture held as stacked parameters: each tensor is (M, ...)."""

    def __init__(self, members: list[nn.Module]):
        self.params, self.buffers = stack_module_state(members)
        self.skeleton = copy.deepcopy(members[0]).to("meta")  # structure only; weights come from params
        self.size = len(members)

    def forward(self, x: torch.Tensor, *, shared_input: bool, train: bool) -> torch.Tensor:
        """x: (B, D) shared by every member, or (M, B, D) one batch per member. Returns (M, B, out)."""
        self.skeleton.train(train)

        def one(params, buffers, inputs):
            return functional_call(self.skeleton, (params, buffers), (inputs,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(one, in_dims=in_dims, randomness="different")(self.params, self.buffers, x)


def loss_per_member(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """outputs (M, B, out), targets (M, B) -> mean loss per member (M,)."""
    if kind == CLASSIFICATION:
        return nn.functional.cross_entropy(outputs.transpose(1, 2), targets, reduction="none").mean(1)
    mean, variance = gaussian_head(outputs)
    return nn.functional.gaussian_nll_loss(mean, targets, variance, reduction="none", full=True).mean(1)


def gaussian_head(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (…, 2) outputs into a mean and a positive variance."""
    return outputs[..., 0], nn.functional.softplus(outputs[..., 1]) + 1e-6


def epochs_for(train, n: int) -> int:
    """train.epochs, raised so that the run takes at least train.min_steps optimiser steps."""
    steps_per_epoch = math.ceil(n / min(train.batch_size, n))
    return max(train.epochs, math.ceil(train.min_steps / steps_per_epoch))


def train_members(
    stack: StackedMembers,
    data: TaskData,
    train,
    seed: int,
    on_epoch: Callable[[int, float], None],
) -> StackedMembers:
    """Minibatch Adam on every member at once; reports the mean member loss after each epoch."""
    device = stack.params[next(iter(stack.params))].device
    x, y = data.train_x.to(device), data.train_y.to(device)
    optimizer = torch.optim.Adam(stack.params.values(), lr=train.lr, weight_decay=train.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    n, batch = len(x), min(train.batch_size, len(x))
    steps = math.ceil(n / batch)
    for epoch in range(1, epochs_for(train, n) + 1):
        # Every member sees the data in its own order.
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(stack.size)]).to(device)  # (M, N)
        total = 0.0
        for step in range(steps):
            idx = order[:, step * batch:(step + 1) * batch]  # (M, b)
            losses = loss_per_member(stack.forward(x[idx], shared_input=False, train=True), y[idx], data.kind)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # members share no parameters, so each gets its own gradient
            optimizer.step()
            total += losses.detach().mean().item()
        epoch_loss = total / steps
        if not math.isfinite(epoch_loss):
            raise TrainingDiverged(f"training diverged at epoch {epoch}: loss={epoch_loss}")
        on_epoch(epoch, epoch_loss)
    return stack
