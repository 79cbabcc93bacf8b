"""What the SG-MCMC samplers (SGHMC, cSGLD) share: the minibatch potential, its gradient noise
estimate, and minibatches drawn independently."""

from __future__ import annotations

import math

import torch
from torch import nn

from raysweep.training.likelihood import mean_loss


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


def potential(network: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, n: int,
              prior_precision: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch estimate of U(θ) = -log p(D|θ) - log p(θ) + const for SG-MCMC, with a N(0, 1/α) prior:
    U ≈ N · mean batch NLL + (α/2)‖θ‖², N the training set's scored units (training_units: tokens of a
    sequence task, as the NLL is a mean over scored tokens). Returns (U, mean batch NLL)."""
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
