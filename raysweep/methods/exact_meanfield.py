"""The optimal mean-field Gaussian of the exact posterior: the target of every diagonal-Gaussian
method (vi with guide="meanfield", ivon), in closed form.

For a Gaussian posterior N(m_N, Λ⁻¹) the fully factorised q minimising KL(q ‖ p) has the exact
mean and variances 1/Λ_ii (Bishop 2006, §10.1.2): it keeps each weight's conditional spread and
drops the correlations, so it is narrower than the exact posterior wherever Λ is not diagonal.
On the linear-Gaussian task, vi or ivon's EU / this method's EU measures their optimisation error
alone, apart from the error of the mean-field family itself (this method's EU / exact's).
"""

from __future__ import annotations

import torch

from raysweep.methods.exact import Exact, Posterior, conjugate_posterior


class ExactMeanField(Exact):
    """The KL(q ‖ p)-optimal diagonal Gaussian of the exact conjugate posterior (no network)."""

    name = "exact_meanfield"

    def fit(self, data, model, options, train, seed: int, on_epoch, device="cpu") -> Posterior:
        precision, mean, noise_var = conjugate_posterior(data)
        return Posterior(mean, torch.diag(1 / torch.diagonal(precision)), noise_var)
