"""Stochastic-gradient Hamiltonian Monte Carlo (Chen et al., 2014), with the network's weights under a
N(0, 1/α) prior. With step size η = lr/N, friction a and identity mass:

    v ← (1 - a_p) v - η ∇Ũ(θ) + N(0, 2 a_p η T - η² V̂),   θ ← θ + v

where Ũ is the minibatch estimate of N · mean NLL + (α/2)‖θ‖², T the temperature (1 = the
Bayesian posterior) and V̂ the estimated variance of ∇Ũ per parameter (Chen et al.'s B̂ = η V̂ / 2,
from training.gradient_and_noise; minibatches are drawn independently, with replacement); a_p is a,
raised for the parameters whose minibatch noise alone exceeds 2 a η T (friction_and_noise).
The network is first trained as usual (train_network: Adam); the sampler then runs as many steps
again (train.epochs, train.min_steps), discards the first `burnin` fraction and takes S samples
evenly over the rest.
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
    lr: float = 0.01  # η·N: the step size on the per-example loss scale (SGD-equivalent lr: lr/friction)
    friction: float = 0.1  # a, in (0, 1]
    burnin: float = 0.5  # fraction of the steps discarded
    prior_precision: float = 1.0
    temperature: float = 1.0
    samples: int = 16

    def smoke(self) -> Options:
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


def friction_and_noise(minibatch: torch.Tensor, friction: float, eta: float, temperature: float):
    """Per parameter, the friction a_p and the noise variance to inject, given the variance the
    minibatch gradient already adds to v each step (η²·Var ĝ): the noise in v must total 2·a_p·η·T
    (Chen et al., 2014, with B̂ = minibatch / 2η). Where the minibatch alone brings more than
    2·a·η·T, the friction rises to match, which keeps the temperature (a_p is capped at 1: beyond
    that only a smaller step size would help)."""
    if temperature == 0:
        return friction, torch.zeros_like(minibatch)
    raised = (minibatch / (2 * eta * temperature)).clamp(min=friction, max=1.0)
    return raised, (2 * raised * eta * temperature - minibatch).clamp_min(0)


class SGHMC(Method):
    """SGHMC samples after ordinary training as burn-in."""

    name = "sghmc"
    Options = Options

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> SampledNetworks:
        # Burn-in by ordinary training first (Adam, the ensemble members' budget): from a random start
        # the chain spent its whole run reaching a mode (test accuracy 0.54 at width 8 on digits).
        network = train_network(seeded_network(model, data, seed, device), data, train, seed, on_epoch)
        x, y = data.train_x.to(device), data.train_y.to(device)
        n, per_epoch, trained = len(x), steps_per_epoch(train, len(x)), epochs_for(train, len(x))
        # as many steps as training took, and at least one step per sample after burn-in
        epochs = max(trained, math.ceil(options.samples / (1 - options.burnin) / per_epoch))
        total_steps = epochs * per_epoch
        first = min(int(options.burnin * total_steps), total_steps - 1)
        # S collection steps spread evenly over the post-burn-in steps, the last step included
        keep = {first + round((i + 1) * (total_steps - first) / options.samples) - 1 for i in range(options.samples)}
        units = training_units(data)  # the likelihood's N: tokens of a sequence task, not sequences
        eta = options.lr / units
        params = list(network.parameters())
        momenta = [torch.zeros_like(p) for p in params]
        minibatch_noise = NoiseEstimate()
        generator = torch.Generator(device=device).manual_seed(seed)
        samples, step = [], 0
        augment = augmenter(data, seed + 1)
        for epoch, batches in independent_minibatches(n, train.batch_size, epochs, seed + 1, device):
            total = 0.0
            for idx in batches:
                grads, variances, nll = gradient_and_noise(network, params, augment(x[idx]), y[idx], data.kind, units,
                                                           options.prior_precision)
                with torch.no_grad():
                    for p, v, g, variance in zip(params, momenta, grads, minibatch_noise.update(variances)):
                        friction, injected = friction_and_noise(eta ** 2 * variance, options.friction, eta,
                                                                options.temperature)
                        noise = torch.randn(p.shape, generator=generator, device=device)
                        v.mul_(1 - friction).add_(g, alpha=-eta).add_(noise * injected.sqrt())
                        p.add_(v)
                if step in keep:
                    samples.append(flatten(network))
                step += 1
                total += nll.item()
            check_finite(trained + epoch, total / len(batches))
            on_epoch(trained + epoch, total / len(batches))  # epochs count on after training
        return SampledNetworks(network, torch.stack(samples), data.kind)  # (S, P)

    def training_phases(self, options: Options) -> int:
        return 2  # training (the burn-in), then as many sampler steps again

    def samples(self, options: Options) -> int:
        return options.samples
