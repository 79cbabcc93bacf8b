"""Train M copies of one architecture at once: a batched model (batched.py) for plain Sequentials
of common layers, torch.func (stack_module_state + vmap) for everything else.

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

from raysweep.methods import batched
from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX, TaskData


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the cell is recorded as failed, not retried."""


class StackedMembers:
    """M members of one architecture held as stacked parameters: each tensor is (M, ...)."""

    def __init__(self, members: list[nn.Module]):
        params, buffers = stack_module_state(members)
        self.hold(params, buffers, members[0], len(members))

    @classmethod
    def of(cls, params: dict, buffers: dict, network: nn.Module) -> "StackedMembers":
        """Members given as already stacked (M, ...) parameters and buffers of `network`'s architecture."""
        members = cls.__new__(cls)
        members.hold(params, buffers, network, len(next(iter(params.values()))))
        return members

    def hold(self, params: dict, buffers: dict, network: nn.Module, size: int) -> None:
        self.params, self.buffers, self.size = params, buffers, size
        self.skeleton = copy.deepcopy(network).to("meta")  # structure only; weights come from params
        # Plain Sequentials of common layers run as one batched model, without vmap's per-step overhead.
        self.batched = batched.supports(self.skeleton) and not buffers

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def forward(self, x: torch.Tensor, *, shared_input: bool, train: bool) -> torch.Tensor:
        """x: (B, D) shared by every member, or (M, B, D) one batch per member. Returns (M, B, out)."""
        self.skeleton.train(train)
        if self.batched:
            return batched.forward(self.skeleton, self.params, x, self.size, shared_input)
        return self.vmapped(x, shared_input)

    def vmapped(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """The generic path, for any architecture vmap can batch."""
        def one(params, buffers, inputs):
            return functional_call(self.skeleton, (params, buffers), (inputs,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(one, in_dims=in_dims, randomness="different")(self.params, self.buffers, x)


def loss_per_member(outputs: torch.Tensor, targets: torch.Tensor, kind: str, may_ignore: bool = True) -> torch.Tensor:
    """outputs (M, B, out), targets (M, B) -> mean loss per member (M,).

    Language models give (M, B, T, V) and (M, B, T): the mean is over scored tokens, skipping
    targets equal to IGNORE_INDEX (may_ignore=False: the caller knows there are none, and the
    counting is skipped).
    """
    if kind == CLASSIFICATION:
        members, classes = outputs.shape[0], outputs.shape[-1]
        if outputs.stride(-1) == 1:  # classes contiguous (vmap, language models): rows of class scores
            losses = nn.functional.cross_entropy(outputs.reshape(-1, classes), targets.reshape(-1), reduction="none",
                                                 ignore_index=IGNORE_INDEX).view(members, -1)  # (M, B·T)
        else:  # the batched model's features-first (M, C, B) seen as (M, B, C): classes in dim 1, no copy
            losses = nn.functional.cross_entropy(outputs.movedim(-1, 1), targets, reduction="none",
                                                 ignore_index=IGNORE_INDEX).flatten(1)  # (M, B·T)
        if not may_ignore:
            return losses.mean(1)
        return losses.sum(1) / (targets != IGNORE_INDEX).flatten(1).sum(1).clamp_min(1)
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


def augmenter(data: TaskData, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The task's training-time augmentation (TaskData.extras["augment"], e.g. random crop + flip),
    drawing from a generator of its own so a cell is repeatable; the identity when the task has none.
    Every training loop passes each minibatch's inputs through it; evaluation never does."""
    augment = data.extras.get("augment")
    if augment is None:
        return lambda inputs: inputs
    generator = torch.Generator().manual_seed(seed)
    return lambda inputs: augment(inputs, generator)


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
    optimizer = adam(list(stack.params.values()), train)
    generator = torch.Generator().manual_seed(seed)
    n, batch = len(x), min(train.batch_size, len(x))
    steps = steps_per_epoch(train, n)
    may_ignore = data.kind == CLASSIFICATION and bool((y == IGNORE_INDEX).any())
    augment = augmenter(data, seed)
    for epoch in range(1, epochs_for(train, n) + 1):
        # Every member sees the data in its own order.
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(stack.size)]).to(device)  # (M, N)
        total = torch.zeros((), device=device)  # summed where the losses are: no host sync per step
        for step in range(steps):
            idx = order[:, step * batch:(step + 1) * batch]  # (M, b)
            outputs = stack.forward(augment(x[idx]), shared_input=False, train=True)
            losses = loss_per_member(outputs, y[idx], data.kind, may_ignore)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # members share no parameters, so each gets its own gradient
            optimizer.step()
            total += losses.detach().mean()
        epoch_loss = total.item() / steps
        check_finite(epoch, epoch_loss)
        on_epoch(epoch, epoch_loss)
    return stack


def adam(params: list[torch.Tensor], train) -> torch.optim.Optimizer:
    """Adam, fused where torch has the kernel: one pass over each tensor instead of a dozen
    element-wise ops, which for small members cost more than the forward and backward passes.
    The update is Adam's, element by element, so members stay independent."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None)


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


def independent_minibatches(n: int, batch: int, epochs: int, seed: int, device):
    """Like `minibatches`, but every minibatch drawn with replacement, independently of the others.
    SG-MCMC needs this: its noise correction (gradient_and_noise) assumes white minibatch noise,
    while the batches of one pass over the data have noises that sum to zero over the pass."""
    generator = torch.Generator().manual_seed(seed)
    batch = min(batch, n)
    per_epoch = math.ceil(n / batch)
    for epoch in range(1, epochs + 1):
        draws = torch.randint(n, (per_epoch, batch), generator=generator).to(device)
        yield epoch, list(draws)


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
        params = {n: c.reshape(len(samples), *s) for n, c, s in zip(names, chunks, shapes)}
        buffers = {n: b.unsqueeze(0).expand(len(samples), *b.shape) for n, b in network.named_buffers()}
        stack = StackedMembers.of(params, buffers, network)
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


def gradient_and_noise(network: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, kind: str,
                       n: int, prior_precision: float):
    """∇Ũ on a minibatch, and per parameter the variance of that estimate around the full-data ∇U.

    The minibatch noise of N · (mean gradient) grows with N while the noise SG-MCMC injects,
    2η = 2·lr/N, shrinks, so a sampler that ignores it runs hotter the more data it has (on Bayesian
    linear regression, SGHMC's epistemic uncertainty was 10x the exact posterior's at N = 1000).
    Chen et al. (2014) subtract an estimate B̂ of it from the injected noise; here it comes from the
    batch's two halves, whose gradients g₁, g₂ are independent estimates of ∇U:
    Var(ĝ) = E[(g₁ - g₂)²] · n₁n₂ / (n₁ + n₂)². Returns (gradients, variances, mean batch NLL).
    """
    if len(x) < 2:  # no second half to compare with
        energy, nll = potential(network, x, y, kind, n, prior_precision)
        grads = torch.autograd.grad(energy, params)
        return grads, [torch.zeros_like(g) for g in grads], nll.detach()
    half = len(x) // 2
    w = half / len(x)  # the first half's share
    energy_1, nll_1 = potential(network, x[:half], y[:half], kind, n, prior_precision)
    energy_2, nll_2 = potential(network, x[half:], y[half:], kind, n, prior_precision)
    grads_1, grads_2 = torch.autograd.grad(energy_1, params), torch.autograd.grad(energy_2, params)
    grads = [w * a + (1 - w) * b for a, b in zip(grads_1, grads_2)]
    variances = [(a - b) ** 2 * (w * (1 - w)) for a, b in zip(grads_1, grads_2)]
    return grads, variances, (w * nll_1 + (1 - w) * nll_2).detach()


class NoiseEstimate:
    """Running (exponential) mean of the per-parameter minibatch-gradient variances: one batch's
    estimate has a single degree of freedom, far too noisy to subtract on its own."""

    def __init__(self, decay: float = 0.9):
        self.decay, self.values = decay, None

    def update(self, variances: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.values is None:
            self.values = [v.clone() for v in variances]
        else:
            for mean, v in zip(self.values, variances):
                mean.lerp_(v, 1 - self.decay)
        return self.values

