"""The linear-Gaussian model y ~ N(wᵀx, σ²), with σ² known: the conjugate model of
tasks.regression.LinearRegression written as a network, so that every method can run it and its
posterior can be compared with the exact posterior of the same model (methods/exact.py).

On the MLP an approximate method's EU mixes model mismatch (a learned variance head, N(0, 1) priors
on hidden weights) with inference error; on this model only the inference error is left.

The network is `nn.Sequential(KnownNoiseLinear(d))`: one bias-free linear layer for the mean
(so last-layer Laplace sees an identity feature map and its posterior is the exact one), whose
output also carries the raw variance that training.likelihood.gaussian_head turns into σ², as a
constant, not a parameter: no method can learn the noise away. The prior precision α is each
method's own option (`methods.<name>.prior_precision`); an experiment on this model sets it to the
task's (experiments/fidelity.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from raysweep.models.base import Model

VARIANCE_FLOOR = 1e-6  # what gaussian_head adds to softplus(raw)


def raw_variance(noise_var: float) -> float:
    """softplus⁻¹(σ² - floor): the raw output that gaussian_head maps back to σ²."""
    return math.log(math.expm1(noise_var - VARIANCE_FLOOR))


class KnownNoiseLinear(nn.Linear):
    """x ↦ (wᵀx, raw σ²). An nn.Linear (bias-free, one output row) so the methods that look for a
    linear last layer (Laplace) find one; its forward appends the constant raw variance."""

    def __init__(self, input_dim: int, noise_var: float):
        super().__init__(input_dim, 1, bias=False)
        self.raw_variance = raw_variance(noise_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = super().forward(x)  # (..., 1)
        return torch.cat([mean, torch.full_like(mean, self.raw_variance)], -1)  # (..., 2)


@dataclass(frozen=True)
class Linear(Model):
    noise_var: float = 0.25  # σ², must equal the task's
    size: int = 1  # the model has no size; the grid's sizes axis must be (1,)
    size_knob: ClassVar[str] = "size"

    def problems(self) -> str | None:
        if not (math.isfinite(self.noise_var) and self.noise_var > VARIANCE_FLOOR):
            return f"model.noise_var must be a finite number > {VARIANCE_FLOOR}, got {self.noise_var}"
        if self.size != 1:
            return f"model 'linear' has no size knob: grid.sizes must be (1,), got size {self.size}"
        return None

    def problems_with(self, task) -> str | None:
        """The model's σ² is the task's known noise variance; anything else is model mismatch."""
        task_noise = getattr(task, "noise_var", None)
        if task_noise is None:
            return (f"model 'linear' is the linear-Gaussian model of a regression task with a known noise "
                    f"variance (task 'regression'), not of {type(task).__name__}")
        if not math.isclose(task_noise, self.noise_var, rel_tol=1e-9):
            return f"model.noise_var={self.noise_var} must equal task.noise_var={task_noise}"
        return None

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> nn.Module:
        if output_dim != 2:
            raise ValueError(f"model 'linear' predicts a Gaussian (2 outputs: mean, raw variance), "
                             f"asked for {output_dim}")
        layers = [KnownNoiseLinear(input_dim, self.noise_var)]
        if dropout > 0:  # MC dropout on the inputs: the only place a linear model can drop anything
            layers.insert(0, nn.Dropout(dropout))
        return nn.Sequential(*layers)
