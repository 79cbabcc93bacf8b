"""SWAG (Maddox et al., 2019): after ordinary training, run SGD at a constant learning rate and fit
a Gaussian to the iterates it visits, `snapshots` snapshots evenly over as many SGD steps as
training took:

    mean θ̄ (torch.optim.swa_utils.AveragedModel: the SWA solution), diagonal Σ_diag = mean θ² - θ̄²,
    low-rank part D = [θ_i - θ̄_i] over the last K snapshots (K = rank).

The SGD phase minimises the per-example negative log posterior under a N(0, 1/α) prior (weight
decay α/N), the posterior the SG-MCMC methods here sample. covariance="diagonal" samples
N(θ̄, Σ_diag) (SWAG-Diagonal); covariance="lowrank" samples N(θ̄, ½ (Σ_diag + D Dᵀ/(K-1))), the
paper's full SWAG. The MLPs here have no batch norm, so swa_utils.update_bn is not needed after
sampling.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import torch
from torch.optim.swa_utils import AveragedModel

from raysweep.methods.base import Method
from raysweep.training.budget import check_finite, epochs_for, steps_per_epoch
from raysweep.training.likelihood import training_units
from raysweep.training.loop import augmenter, minibatches, seeded_network, train_network
from raysweep.training.samples import SampledNetworks, flatten
from raysweep.training.sgmcmc import potential

COVARIANCES = ("diagonal", "lowrank")


@dataclass(frozen=True)
class Options:
    covariance: str = "lowrank"
    rank: int = 10  # K: snapshots kept for the low-rank part
    snapshots: int = 20  # taken evenly over the SGD phase after training (as many steps as training)
    lr: float = 0.01  # the constant SGD learning rate of the SWA phase (momentum 0.9)
    samples: int = 32
    prior_precision: float = 1.0  # α of a N(0, 1/α) prior: weight decay α/N in the SGD phase

    def smoke(self) -> Options:
        return replace(self, samples=min(self.samples, 4), snapshots=min(self.snapshots, 3), rank=min(self.rank, 2))

    def problems(self) -> str | None:
        if self.covariance not in COVARIANCES:
            return f"methods.swag.covariance must be one of {', '.join(COVARIANCES)}, got {self.covariance!r}"
        if self.rank < 1:
            return f"methods.swag.rank must be >= 1, got {self.rank}"
        if self.snapshots < 2:
            return f"methods.swag.snapshots must be >= 2, got {self.snapshots}"
        if self.rank > self.snapshots:
            return f"methods.swag.rank ({self.rank}) must be <= methods.swag.snapshots ({self.snapshots})"
        if not self.lr > 0:
            return f"methods.swag.lr must be > 0, got {self.lr}"
        if self.samples < 1:
            return f"methods.swag.samples must be >= 1, got {self.samples}"
        if not self.prior_precision >= 0:
            return f"methods.swag.prior_precision must be >= 0, got {self.prior_precision}"
        return None


class SWAG(Method):
    """SWAG: a Gaussian fitted to the SGD iterates after training."""

    name = "swag"
    Options = Options

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> SampledNetworks:
        network = train_network(seeded_network(model, data, seed, device), data, train, seed, on_epoch)
        x, y = data.train_x.to(device), data.train_y.to(device)
        n, trained, per_epoch = len(x), epochs_for(train, len(x)), steps_per_epoch(train, len(x))
        # The SGD phase lasts as many steps as training did, a snapshot every `interval` steps. The
        # paper's one snapshot per epoch (of 50,000 images) gave 2 SGD steps between snapshots at N = 100
        # here: the iterates hardly moved, and the covariance (EU ~1e-4) grew with N only because the
        # phase did. Snapshots more often than once per epoch work as well (Maddox et al., 2019, App.).
        interval = max(1, trained * per_epoch // options.snapshots)
        swa = AveragedModel(network)  # running mean of the snapshots
        square_mean = torch.zeros_like(flatten(network), dtype=torch.float64)  # float64: var = E θ² - θ̄² cancels
        deviations = deque(maxlen=options.rank)
        # SGD on the per-unit negative log posterior U/N = nll + α/(2N)·‖θ‖² (sgmcmc.potential; N the scored
        # units, tokens of a sequence task, as nll is a mean over them). Without the prior
        # a network that fits a small training set exactly has near-zero gradients, SGD stands still and
        # the fitted covariance collapses (EU ~1e-4 at N = 50, width 128); the prior keeps the loss, and
        # so SGD's noise, away from zero, more so the less data there is.
        units = training_units(data)
        optimizer = torch.optim.SGD(network.parameters(), lr=options.lr, momentum=0.9)
        epochs = math.ceil(interval * options.snapshots / per_epoch)
        step, snapshot = 0, 0
        augment = augmenter(data, seed + 1)
        for epoch, batches in minibatches(n, train.batch_size, epochs, seed + 1, device):
            total, count = 0.0, 0
            for idx in batches[:max(0, interval * options.snapshots - step)]:
                energy, loss = potential(network, augment(x[idx]), y[idx], data.kind, units, options.prior_precision)
                optimizer.zero_grad(set_to_none=True)
                (energy / units).backward()
                optimizer.step()
                step, total, count = step + 1, total + loss.item(), count + 1
                if step % interval == 0:
                    snapshot += 1
                    swa.update_parameters(network)
                    theta = flatten(network)
                    square_mean += (theta.double() ** 2 - square_mean) / snapshot
                    deviations.append(theta - flatten(swa.module))
            check_finite(trained + epoch, total / count)
            on_epoch(trained + epoch, total / count)  # epochs count on after training
        mean = flatten(swa.module)
        std = (square_mean - mean.double() ** 2).clamp_min(0).sqrt().float()  # (P,)
        generator = torch.Generator(device=device).manual_seed(seed)
        z = torch.randn(options.samples, len(mean), generator=generator, device=device)
        if options.covariance == "diagonal":
            samples = mean + std * z
        else:
            d = torch.stack(list(deviations), 1)  # (P, K)
            z2 = torch.randn(options.samples, d.shape[1], generator=generator, device=device)
            samples = mean + 2 ** -0.5 * (std * z + z2 @ d.T / max(d.shape[1] - 1, 1) ** 0.5)
        return SampledNetworks(network, samples, data.kind)  # (S, P)

    def training_phases(self, options: Options) -> int:
        return 2  # training, then the SWA phase (as many SGD steps as training took)

    def samples(self, options: Options) -> int:
        return options.samples
