"""The exact conjugate posterior of Bayesian linear regression: the ground truth.

    S_N = (α I + XᵀX / σ²)⁻¹,   m_N = S_N Xᵀy / σ²
    predictive at x: N(m_Nᵀx, σ² + xᵀ S_N x)  →  EU = ½ log(1 + xᵀ S_N x / σ²)
"""

from __future__ import annotations

import torch

from raysweep.methods.base import Method
from raysweep.tasks.data import REGRESSION


class Posterior:
    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, noise_var: float):
        self.mean, self.covariance, self.noise_var = mean, covariance, noise_var

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        x = x.double()
        mu = x @ self.mean  # (B,)
        epistemic_var = ((x @ self.covariance) * x).sum(-1)  # (B,) xᵀ S_N x
        # Two sigma points, mu ± sqrt(v), carry the posterior predictive's mean and variance exactly,
        # so the moment-matched decomposition reproduces the closed form with no sampling noise.
        spread = epistemic_var.sqrt()
        means = torch.stack([mu - spread, mu + spread])  # (2, B)
        return means, torch.full_like(means, self.noise_var)


class Exact(Method):
    """The exact conjugate posterior (no network: one cell per N and seed)."""

    name = "exact"
    uses_model = False  # no network, so the size axis of the grid does not apply

    def unsupported(self, task) -> str | None:
        if not hasattr(task, "noise_var") or not hasattr(task, "prior_precision"):
            return "it needs a linear-Gaussian task with a known noise variance and prior precision (task 'regression')"
        return None

    def fit(self, data, model, options, train, seed: int, on_epoch, device="cpu") -> Posterior:
        precision, mean, noise_var = conjugate_posterior(data)
        return Posterior(mean, torch.linalg.inv(precision), noise_var)


def conjugate_posterior(data) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Λ = α I + XᵀX / σ², m_N, σ²) of the task's linear-Gaussian model, in float64."""
    assert data.kind == REGRESSION
    noise_var, alpha = data.extras["noise_var"], data.extras["prior_precision"]
    x, y = data.train_x.double(), data.train_y.double()
    precision = alpha * torch.eye(x.shape[1], dtype=torch.float64) + x.T @ x / noise_var
    mean = torch.linalg.solve(precision, x.T @ y) / noise_var
    return precision, mean, noise_var
