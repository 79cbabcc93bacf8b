"""SWAG (Maddox et al., 2019): after ordinary training, run SGD at a constant learning rate and fit
a Gaussian to the iterates it visits, one snapshot per epoch:

    mean θ̄ (torch.optim.swa_utils.AveragedModel: the SWA solution), diagonal Σ_diag = mean θ² - θ̄²,
    low-rank part D = [θ_i - θ̄_i] over the last K snapshots (K = rank).

covariance="diagonal" samples N(θ̄, Σ_diag) (SWAG-Diagonal); covariance="lowrank" samples
N(θ̄, ½ (Σ_diag + D Dᵀ/(K-1))), the paper's full SWAG. The MLPs here have no batch norm, so
swa_utils.update_bn is not needed after sampling.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import torch
from torch.optim.swa_utils import AveragedModel

from raysweep.methods.training import (SampledNetworks, check_finite, epochs_for, flatten, mean_loss, seeded_network,
                                       minibatches, train_network)

uses_model = True

COVARIANCES = ("diagonal", "lowrank")


@dataclass(frozen=True)
class Options:
    covariance: str = "lowrank"
    rank: int = 10  # K: snapshots kept for the low-rank part
    snapshots: int = 20  # SGD epochs after training, one snapshot each
    lr: float = 0.01  # the constant SGD learning rate of the SWA phase (momentum 0.9)
    samples: int = 32

    def smoke(self) -> "Options":
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
        return None


def unsupported(task) -> str | None:
    return None


def fit(data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> SampledNetworks:
    network = train_network(seeded_network(model, data, seed, device), data, train, seed, on_epoch)
    x, y = data.train_x.to(device), data.train_y.to(device)
    swa = AveragedModel(network)  # running mean of the snapshots
    square_mean = torch.zeros_like(flatten(network))
    deviations = deque(maxlen=options.rank)
    optimizer = torch.optim.SGD(network.parameters(), lr=options.lr, momentum=0.9)
    for snapshot, batches in minibatches(len(x), train.batch_size, options.snapshots, seed + 1, device):
        total = 0.0
        for idx in batches:
            loss = mean_loss(network, x[idx], y[idx], data.kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        check_finite(snapshot, total / len(batches))
        on_epoch(epochs_for(train, len(x)) + snapshot, total / len(batches))  # epochs count on after training
        swa.update_parameters(network)
        theta = flatten(network)
        square_mean += (theta ** 2 - square_mean) / snapshot
        deviations.append(theta - flatten(swa.module))
    mean = flatten(swa.module)
    std = (square_mean - mean ** 2).clamp_min(1e-30).sqrt()  # (P,)
    generator = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(options.samples, len(mean), generator=generator, device=device)
    if options.covariance == "diagonal":
        samples = mean + std * z
    else:
        d = torch.stack(list(deviations), 1)  # (P, K)
        z2 = torch.randn(options.samples, d.shape[1], generator=generator, device=device)
        samples = mean + 2 ** -0.5 * (std * z + z2 @ d.T / max(d.shape[1] - 1, 1) ** 0.5)
    return SampledNetworks(network, samples, data.kind)  # (S, P)
