"""Cyclical stochastic-gradient Langevin dynamics (Zhang et al., 2020), weights under a N(0, 1/α)
prior. The network is first trained as usual (train_network: Adam, the burn-in); the sampler then
runs as many steps again, cut into `cycles` cycles of L steps; within a cycle the step size follows
a cosine from lr down to 0:

    lr_k = lr/2 · (cos(π · (k mod L) / L) + 1),   η_k = lr_k / N
    exploration (first `exploration` fraction of a cycle):  θ ← θ - η_k ∇Ũ(θ)            (plain SGD)
    sampling (the rest):                       θ ← θ - η_k ∇Ũ(θ) + N(0, 2 η_k T - η_k² V̂)

where Ũ is the minibatch estimate of N · mean NLL + (α/2)‖θ‖² and V̂ the estimated variance of ∇Ũ
per parameter, the noise the minibatch already brings (training.gradient_and_noise; minibatches are
drawn independently, with replacement). `samples_per_cycle` samples are taken at the end of each
cycle's sampling stage, evenly spaced over its second half, the cycle's last step included.
S = cycles × samples_per_cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from raysweep.methods.base import Method
from raysweep.training.budget import check_finite, epochs_for, steps_per_epoch
from raysweep.training.likelihood import training_units
from raysweep.training.loop import augmenter, seeded_network, train_network
from raysweep.training.samples import SampledNetworks, flatten
from raysweep.training.sgmcmc import (
    NoiseEstimate,
    gradient_and_noise,
    independent_minibatches,
)


@dataclass(frozen=True)
class Options:
    lr: float = 0.1  # peak η·N of each cycle, on the per-example loss scale
    cycles: int = 4
    samples_per_cycle: int = 4
    exploration: float = 0.5  # fraction of each cycle spent as plain SGD
    prior_precision: float = 1.0
    temperature: float = 1.0

    def smoke(self) -> Options:
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


class CSGLD(Method):
    """Cyclical SGLD samples after ordinary training as burn-in."""

    name = "csgld"
    Options = Options

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> SampledNetworks:
        # Burn-in by ordinary training (Adam, the ensemble members' budget): from a random start, a few
        # hundred plain-SGD steps at lr ≤ 0.1 left the chain far from any mode (test accuracy 0.25 at
        # width 8 on digits). The cycles then start at a mode; their stationary law is unchanged.
        network = train_network(seeded_network(model, data, seed, device), data, train, seed, on_epoch)
        x, y = data.train_x.to(device), data.train_y.to(device)
        n, trained = len(x), epochs_for(train, len(x))
        per_epoch = steps_per_epoch(train, n)
        units = training_units(data)  # the likelihood's N: tokens of a sequence task, not sequences
        # as many steps as training took, and at least enough for every cycle to hold its samples
        epochs = max(trained, math.ceil(options.cycles * 2 * options.samples_per_cycle / per_epoch))
        cycle = epochs * per_epoch // options.cycles  # L; leftover steps at the end are not run
        sampling_from = int(options.exploration * cycle)
        # positions in a cycle where a sample is taken: evenly over the sampling stage's second half
        gap = max((cycle - sampling_from) // (2 * options.samples_per_cycle), 1)
        keep = {cycle - 1 - i * gap for i in range(options.samples_per_cycle)}
        params = list(network.parameters())
        minibatch_noise = NoiseEstimate()
        generator = torch.Generator(device=device).manual_seed(seed)
        samples, step = [], 0
        augment = augmenter(data, seed + 1)
        for epoch, batches in independent_minibatches(n, train.batch_size, epochs, seed + 1, device):
            total, count = 0.0, 0
            for idx in batches:
                if step >= cycle * options.cycles:
                    break
                position = step % cycle
                eta = options.lr / 2 * (math.cos(math.pi * position / cycle) + 1) / units
                grads, variances, nll = gradient_and_noise(network, params, augment(x[idx]), y[idx], data.kind, units,
                                                           options.prior_precision)
                with torch.no_grad():
                    for p, g, variance in zip(params, grads, minibatch_noise.update(variances)):
                        p.add_(g, alpha=-eta)
                        if position >= sampling_from:
                            # the minibatch already adds η²·Var ĝ; inject the rest of 2ηT (training.gradient_and_noise)
                            injected = (2 * eta * options.temperature - eta ** 2 * variance).clamp_min(0)
                            p.add_(torch.randn(p.shape, generator=generator, device=device) * injected.sqrt())
                if position in keep:
                    samples.append(flatten(network))
                step += 1
                total, count = total + nll.item(), count + 1
            if count:
                check_finite(trained + epoch, total / count)
                on_epoch(trained + epoch, total / count)  # epochs count on after training
        return SampledNetworks(network, torch.stack(samples), data.kind)  # (S, P)

    def training_phases(self, options: Options) -> int:
        return 2  # training (the burn-in), then as many sampler steps again, cut into cycles

    def samples(self, options: Options) -> int:
        return options.cycles * options.samples_per_cycle
