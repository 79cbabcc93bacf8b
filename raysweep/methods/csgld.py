"""Cyclical stochastic-gradient Langevin dynamics (Zhang et al., 2020), weights under a N(0, 1/α)
prior. The run (as many steps as ordinary training) is cut into `cycles` cycles of L steps; within a
cycle the step size follows a cosine from lr down to 0:

    lr_k = lr/2 · (cos(π · (k mod L) / L) + 1),   η_k = lr_k / N
    exploration (first `exploration` fraction of a cycle):  θ ← θ - η_k ∇Ũ(θ)            (plain SGD)
    sampling (the rest):                                      θ ← θ - η_k ∇Ũ(θ) + N(0, 2 η_k T)

and `samples_per_cycle` samples are taken at the end of each cycle's sampling stage, evenly spaced
over its second half, the cycle's last step included. S = cycles × samples_per_cycle.
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
    lr: float = 0.1  # peak η·N of each cycle, on the per-example loss scale
    cycles: int = 4
    samples_per_cycle: int = 4
    exploration: float = 0.5  # fraction of each cycle spent as plain SGD
    prior_precision: float = 1.0
    temperature: float = 1.0

    def smoke(self) -> "Options":
        return replace(self, cycles=min(self.cycles, 2), samples_per_cycle=min(self.samples_per_cycle, 2))

    def problems(self) -> str | None:
        if not self.lr > 0:
            return f"methods.csgld.lr must be > 0, got {self.lr}"
        if self.cycles < 1:
            return f"methods.csgld.cycles must be >= 1, got {self.cycles}"
        if self.samples_per_cycle < 1:
            return f"methods.csgld.samples_per_cycle must be >= 1, got {self.samples_per_cycle}"
        if not 0 <= self.exploration < 1:
            return f"methods.csgld.exploration must be in [0, 1), got {self.exploration}"
        if not self.prior_precision > 0:
            return f"methods.csgld.prior_precision must be > 0, got {self.prior_precision}"
        if not self.temperature >= 0:
            return f"methods.csgld.temperature must be >= 0, got {self.temperature}"
        return None


def unsupported(task) -> str | None:
    return None


def fit(data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> SampledNetworks:
    network = seeded_network(model, data, seed, device)
    x, y = data.train_x.to(device), data.train_y.to(device)
    n, epochs = len(x), epochs_for(train, len(x))
    per_epoch = steps_per_epoch(train, n)
    # at least enough steps for every cycle to hold its samples
    epochs = max(epochs, math.ceil(options.cycles * 2 * options.samples_per_cycle / per_epoch))
    cycle = epochs * per_epoch // options.cycles  # L; leftover steps at the end are not run
    sampling_from = int(options.exploration * cycle)
    # positions in a cycle where a sample is taken: evenly over the sampling stage's second half
    gap = max((cycle - sampling_from) // (2 * options.samples_per_cycle), 1)
    keep = {cycle - 1 - i * gap for i in range(options.samples_per_cycle)}
    params = list(network.parameters())
    generator = torch.Generator(device=device).manual_seed(seed)
    samples, step = [], 0
    for epoch, batches in minibatches(n, train.batch_size, epochs, seed, device):
        total, count = 0.0, 0
        for idx in batches:
            if step >= cycle * options.cycles:
                break
            position = step % cycle
            eta = options.lr / 2 * (math.cos(math.pi * position / cycle) + 1) / n
            energy, nll = potential(network, x[idx], y[idx], data.kind, n, options.prior_precision)
            grads = torch.autograd.grad(energy, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.add_(g, alpha=-eta)
                    if position >= sampling_from:
                        noise = torch.randn(p.shape, generator=generator, device=device)
                        p.add_(noise, alpha=math.sqrt(2 * eta * options.temperature))
            if position in keep:
                samples.append(flatten(network))
            step += 1
            total, count = total + nll.item(), count + 1
        if count:
            check_finite(epoch, total / count)
            on_epoch(epoch, total / count)
    return SampledNetworks(network, torch.stack(samples), data.kind)  # (S, P)
