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

from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX, TaskData


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the cell is recorded as failed, not retried."""


class StackedMembers:
    """M members of one architecture held as stacked parameters: each tensor is (M, ...)."""

    def __init__(self, members: list[nn.Module]):
        self.params, self.buffers = stack_module_state(members)
        self.skeleton = copy.deepcopy(members[0]).to("meta")  # structure only; weights come from params
        self.size = len(members)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def forward(self, x: torch.Tensor, *, shared_input: bool, train: bool) -> torch.Tensor:
        """x: (B, D) shared by every member, or (M, B, D) one batch per member. Returns (M, B, out)."""
        self.skeleton.train(train)

        def one(params, buffers, inputs):
            return functional_call(self.skeleton, (params, buffers), (inputs,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(one, in_dims=in_dims, randomness="different")(self.params, self.buffers, x)


def loss_per_member(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """outputs (M, B, out), targets (M, B) -> mean loss per member (M,).

    Language models give (M, B, T, V) and (M, B, T): the mean is over scored tokens, skipping
    targets equal to IGNORE_INDEX.
    """
    if kind == CLASSIFICATION:
        members = outputs.shape[0]
        flat_targets = targets.reshape(members, -1)  # (M, B·T)
        losses = nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), flat_targets.reshape(-1),
                                             reduction="none", ignore_index=IGNORE_INDEX).view(members, -1)
        return losses.sum(1) / (flat_targets != IGNORE_INDEX).sum(1).clamp_min(1)
    mean, variance = gaussian_head(outputs)
    return nn.functional.gaussian_nll_loss(mean, targets, variance, reduction="none", full=True).mean(1)


def gaussian_head(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (…, 2) outputs into a mean and a positive variance."""
    return outputs[..., 0], nn.functional.softplus(outputs[..., 1]) + 1e-6


def steps_per_epoch(train, n: int) -> int:
    """Minibatches in one pass over n examples (the last one may be short)."""
    return math.ceil(n / min(train.batch_size, n))


def epochs_for(train, n: int) -> int:
    """train.epochs, raised so that the run takes at least train.min_steps optimiser steps."""
    return max(train.epochs, math.ceil(train.min_steps / steps_per_epoch(train, n)))


def seeded_network(model, data: TaskData, seed: int, device) -> nn.Module:
    """One freshly initialised network for the task, its initialisation fixed by the seed."""
    torch.manual_seed(seed)
    return model.build(data.input_dim, data.output_dim).to(device)


def train_members(
    stack: StackedMembers,
    data: TaskData,
    train,
    seed: int,
    on_epoch: Callable[[int, float], None],
) -> StackedMembers:
    """Minibatch Adam on every member at once; reports the mean member loss after each epoch."""
    device = stack.device
    x, y = data.train_x.to(device), data.train_y.to(device)
    optimizer = torch.optim.Adam(stack.params.values(), lr=train.lr, weight_decay=train.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    n, batch = len(x), min(train.batch_size, len(x))
    steps = steps_per_epoch(train, n)
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
        check_finite(epoch, epoch_loss)
        on_epoch(epoch, epoch_loss)
    return stack


# ---------------------------------------------------------------------------------------------
# Helpers shared by the methods that train one network, then hold S parameter samples of it
# (Laplace, SWAG, SGHMC, cSGLD).

def train_network(network: nn.Module, data: TaskData, train, seed: int, on_epoch) -> nn.Module:
    """Minibatch Adam on one network (the same loop as the ensembles, with M = 1); returns it trained."""
    stack = train_members(StackedMembers([network]), data, train, seed, on_epoch)
    with torch.no_grad():
        for name, value in network.named_parameters():
            value.copy_(stack.params[name][0])
    return network


def mean_loss(network: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-example negative log-likelihood of one network on a batch (a scalar)."""
    return loss_per_member(network(x).unsqueeze(0), y.unsqueeze(0), kind)[0]


def minibatches(n: int, batch: int, epochs: int, seed: int, device):
    """Yield (epoch, index tensors of that epoch's minibatches): `epochs` seed-fixed passes over n examples."""
    generator = torch.Generator().manual_seed(seed)
    batch = min(batch, n)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        yield epoch, order.split(batch)


def check_finite(epoch: int, loss: float) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged at epoch {epoch}: loss={loss}")


def flatten(network: nn.Module) -> torch.Tensor:
    """All parameters as one vector (P,), in named_parameters order."""
    return torch.cat([p.detach().reshape(-1) for p in network.parameters()])


class SampledNetworks:
    """A posterior held as S parameter vectors of one architecture; predicts with all S at once."""

    def __init__(self, network: nn.Module, samples: torch.Tensor, kind: str):
        """samples: (S, P) flat parameter vectors in `flatten(network)` order."""
        names = [name for name, _ in network.named_parameters()]
        shapes = [p.shape for p in network.parameters()]
        chunks = samples.split([math.prod(s) for s in shapes], dim=1)
        stack = StackedMembers.__new__(StackedMembers)
        stack.params = {n: c.reshape(len(samples), *s) for n, c, s in zip(names, chunks, shapes)}
        stack.buffers = {n: b.unsqueeze(0).expand(len(samples), *b.shape) for n, b in network.named_buffers()}
        stack.skeleton = copy.deepcopy(network).to("meta")
        stack.size = len(samples)
        self.stack, self.kind = stack, kind

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        outputs = self.stack.forward(x.to(self.stack.device), shared_input=True, train=False)  # (S, B, out)
        return to_prediction(outputs.to(x.device), self.kind)


def to_prediction(outputs: torch.Tensor, kind: str):
    """Network outputs (S, B, out) -> probabilities (S, B, C), or Gaussian means and variances (S, B)."""
    if kind == CLASSIFICATION:
        return outputs.softmax(-1)
    return gaussian_head(outputs)


def potential(network: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, n: int,
              prior_precision: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch estimate of U(θ) = -log p(D|θ) - log p(θ) + const for SG-MCMC, with a N(0, 1/α) prior:
    U ≈ N · mean batch NLL + (α/2)‖θ‖². Returns (U, mean batch NLL)."""
    nll = mean_loss(network, x, y, kind)
    square_norm = sum((p ** 2).sum() for p in network.parameters())
    return n * nll + 0.5 * prior_precision * square_norm, nll
