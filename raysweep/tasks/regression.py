"""Bayesian linear regression: the ground truth every part of raysweep is checked against.

    w ~ N(0, α⁻¹ I_d),  x ~ N(0, I_d),  y = wᵀx + ε,  ε ~ N(0, σ²)

The posterior over w is Gaussian and known exactly, and the mean epistemic uncertainty on test
points falls as d / (2N) for N ≫ d (slope -1 on log-log).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raysweep.tasks.base import Task
from raysweep.tasks.data import REGRESSION, TaskData

# Inputs of the "shifted" OOD set are this many times wider than training inputs: a covariate
# shift under which the exact posterior's epistemic uncertainty grows by about this factor squared.
OOD_SCALE = 3.0


@dataclass(frozen=True)
class LinearRegression(Task):
    dim: int = 20
    noise_var: float = 0.25  # σ²
    prior_precision: float = 1.0  # α
    n_test: int = 1000
    truth_seed: int = 0  # fixes the true w and the evaluation sets across every cell

    def available_train_size(self) -> int:
        return 10_000_000  # data is generated, so only memory limits N

    def min_train_size(self) -> int:
        """N ≥ d: below it the data fix fewer directions of w than it has, and EU ≈ d/(2N) does not hold."""
        return self.dim

    def min_train_size_reason(self) -> str:
        return f"at least task.dim = {self.dim} examples, one per weight"

    def ood_sets(self) -> tuple[str, ...]:
        return ("shifted",)

    def problems(self) -> str | None:
        if self.dim <= 0 or self.n_test <= 0:
            return f"task.dim and task.n_test must be > 0, got dim={self.dim}, n_test={self.n_test}"
        if self.noise_var <= 0 or self.prior_precision <= 0:
            return f"task.noise_var and task.prior_precision must be > 0, got {self.noise_var}, {self.prior_precision}"
        return None

    def load(self, n: int, seed: int, ood: list[str], max_eval: int) -> TaskData:
        w = np.random.default_rng([self.truth_seed, 0]).normal(0, self.prior_precision ** -0.5, self.dim)
        # Inputs and noise come from separate streams drawn row by row, so the first n rows are the
        # same for every N: subsets are nested for one seed.
        x = np.random.default_rng([self.truth_seed, 1, seed]).standard_normal((n, self.dim))
        eps = np.random.default_rng([self.truth_seed, 2, seed]).standard_normal(n)
        n_eval = min(self.n_test, max_eval)
        eval_sets = {"test": self._labelled(w, np.random.default_rng([self.truth_seed, 3]), n_eval, 1.0)}
        if "shifted" in ood:
            eval_sets["shifted"] = self._labelled(w, np.random.default_rng([self.truth_seed, 4]), n_eval, OOD_SCALE)
        return TaskData(
            kind=REGRESSION,
            train_x=torch.from_numpy(x).float(),
            train_y=torch.from_numpy(x @ w + self.noise_var ** 0.5 * eps).float(),
            eval_sets=eval_sets,
            extras={"noise_var": self.noise_var, "prior_precision": self.prior_precision, "true_w": w},
        )

    def _labelled(self, w, rng, n, scale):
        x = scale * rng.standard_normal((n, self.dim))
        y = x @ w + self.noise_var ** 0.5 * rng.standard_normal(n)
        return torch.from_numpy(x).float(), torch.from_numpy(y).float()
