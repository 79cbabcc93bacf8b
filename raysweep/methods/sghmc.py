"""Stochastic-gradient Hamiltonian Monte Carlo (Chen et al., 2014), with the network's weights under a
N(0, 1/α) prior. With step size η = lr/N and friction a (identity mass, no noise estimate):

    v ← (1 - a) v - η ∇Ũ(θ) + N(0, 2 a η T),   θ ← θ + v

where Ũ is the minibatch estimate of N · mean NLL + (α/2)‖θ‖² and T the temperature (1 = the
Bayesian posterior). The first `burnin` fraction of the steps is discarded; S samples are then taken
evenly over the rest. The run takes as many steps as ordinary training would (train.epochs,
train.min_steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from raysweep.methods.training import (SampledNetworks, check_finite, epochs_for, flatten, minibatches, potential,
                                       seeded_network, steps_per_epoch)

uses_model = True


@dataclass(frozen=True)
class Options:
    lr: float = 0.01  # η·N: the step size on the per-example loss scale (SGD-equivalent lr: lr/friction)
    friction: float = 0.1  # a, in (0, 1]
    burnin: float = 0.5  # fraction of the steps discarded
    prior_precision: float = 1.0
    temperature: float = 1.0
    samples: int = 16

    def smoke(self) -> "Options":
        return replace(self, samples=min(self.samples, 4))

    def problems(self) -> str | None:
        if not self.lr > 0:
            return f"methods.sghmc.lr must be > 0, got {self.lr}"
        if not 0 < self.friction <= 1:
            return f"methods.sghmc.friction must be in (0, 1], got {self.friction}"
        if not 0 <= self.burnin < 1:
            return f"methods.sghmc.burnin must be in [0, 1), got {self.burnin}"
        if not self.prior_precision > 0:
            return f"methods.sghmc.prior_precision must be > 0, got {self.prior_precision}"
        if not self.temperature >= 0:
            return f"methods.sghmc.temperature must be >= 0, got {self.temperature}"
        if self.samples < 1:
            return f"methods.sghmc.samples must be >= 1, got {self.samples}"
        return None


def unsupported(task) -> str | None:
    return None


def fit(data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> SampledNetworks:
    network = seeded_network(model, data, seed, device)
    x, y = data.train_x.to(device), data.train_y.to(device)
    n, per_epoch = len(x), steps_per_epoch(train, len(x))
    # at least one step per sample after burn-in
    epochs = max(epochs_for(train, n), math.ceil(options.samples / (1 - options.burnin) / per_epoch))
    total_steps = epochs * per_epoch
    first = min(int(options.burnin * total_steps), total_steps - 1)
    # S collection steps spread evenly over the post-burn-in steps, the last step included
    keep = {first + round((i + 1) * (total_steps - first) / options.samples) - 1 for i in range(options.samples)}
    eta = options.lr / n
    noise_std = math.sqrt(2 * options.friction * eta * options.temperature)
    params = list(network.parameters())
    momenta = [torch.zeros_like(p) for p in params]
    generator = torch.Generator(device=device).manual_seed(seed)
    samples, step = [], 0
    for epoch, batches in minibatches(n, train.batch_size, epochs, seed, device):
        total = 0.0
        for idx in batches:
            energy, nll = potential(network, x[idx], y[idx], data.kind, n, options.prior_precision)
            grads = torch.autograd.grad(energy, params)
            with torch.no_grad():
                for p, v, g in zip(params, momenta, grads):
                    noise = torch.randn(p.shape, generator=generator, device=device)
                    v.mul_(1 - options.friction).add_(g, alpha=-eta).add_(noise, alpha=noise_std)
                    p.add_(v)
            if step in keep:
                samples.append(flatten(network))
            step += 1
            total += nll.item()
        check_finite(epoch, total / len(batches))
        on_epoch(epoch, total / len(batches))
    return SampledNetworks(network, torch.stack(samples), data.kind)  # (S, P)
