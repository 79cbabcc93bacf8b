"""Last-layer Laplace (MacKay, 1992; Daxberger et al., 2021): train the network to a point estimate,
then put a Gaussian on the last linear layer, with the generalised Gauss-Newton (GGN) as curvature.

Written here, not taken from laplace-torch, because laplace-torch imports torchvision, and
torchvision's registry build does not load against the CPU torch build used here
(`operator torchvision::nms does not exist`).

With features φ(x) from the layers before the last (plus a 1 when the last layer has a bias) and the
last layer's weights θ, the outputs f = θφ are linear in θ, so the GGN is exact for them:

    classification  H = Σ_n Λ_n ⊗ φ_n φ_nᵀ,   Λ_n = diag(p_n) - p_n p_nᵀ    (hessian="full")
                    H ≈ G ⊗ A,  G = (1/N) Σ_n Λ_n,  A = Σ_n φ_n φ_nᵀ          (hessian="kron", KFAC)
    regression      H = Σ_n φ_n φ_nᵀ / σ²  for the mean output                 (full and kron agree)

    posterior  N(θ*, (H + α I)⁻¹);  α, the prior precision, maximises the Laplace evidence
    log Z(α) = log p(D | θ*) + (P/2) log α - (α/2) ‖θ*‖² - ½ log det(H + α I) + const.

Regression needs the noise variance σ²: the task's `extras["noise_var"]` when it knows it (the
linear-Gaussian task does), otherwise the mean squared residual of the trained network. The
Gaussian log-posterior of the last layer is then exactly quadratic, so the mode θ* is found in
closed form (one Newton step from anywhere), the evidence is exact, and on the linear-Gaussian task
with an identity feature map this posterior *is* the exact conjugate posterior. Its predictive is
Gaussian, returned as two sigma points that carry its mean and variance exactly (as `exact` does).

Classification predictive: `predictive="sampling"` draws S last-layer weights (exact for the
linearised model, since f is linear in θ) and returns S softmaxes; `predictive="probit"` returns the
single probit-approximated predictive softmax(μ / sqrt(1 + π/8 · var)), which gives NLL, accuracy
and total uncertainty but no aleatoric/epistemic split (its epistemic part is 0 by construction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from raysweep.methods.base import Method
from raysweep.tasks.data import CLASSIFICATION
from raysweep.training.likelihood import gaussian_head
from raysweep.training.loop import seeded_network, train_network

HESSIANS = ("full", "kron")
PREDICTIVES = ("sampling", "probit")
PRIORS = ("marglik", "fixed")
LOG_ALPHA_RANGE = (-12.0, 12.0)  # search range of log prior precision for the marginal likelihood


@dataclass(frozen=True)
class Options:
    hessian: str = "kron"
    prior: str = "marglik"  # "marglik": maximise the evidence; "fixed": use prior_precision
    prior_precision: float = 1.0  # α when prior="fixed"
    predictive: str = "sampling"
    samples: int = 32

    def smoke(self) -> Options:
        return replace(self, samples=min(self.samples, 4))

    def problems(self) -> str | None:
        if self.hessian not in HESSIANS:
            return f"methods.laplace.hessian must be one of {', '.join(HESSIANS)}, got {self.hessian!r}"
        if self.prior not in PRIORS:
            return f"methods.laplace.prior must be one of {', '.join(PRIORS)}, got {self.prior!r}"
        if not self.prior_precision > 0:
            return f"methods.laplace.prior_precision must be > 0, got {self.prior_precision}"
        if self.predictive not in PREDICTIVES:
            return f"methods.laplace.predictive must be one of {', '.join(PREDICTIVES)}, got {self.predictive!r}"
        if self.predictive == "probit":
            # one predictive per input has no spread: EU ≡ 0, which a sweep would then fit as if measured
            return ("methods.laplace.predictive='probit' gives one predictive per input, so no aleatoric/epistemic "
                    "split (EU is 0 by construction); a sweep must use predictive='sampling'")
        if self.samples < 1:
            return f"methods.laplace.samples must be >= 1, got {self.samples}"
        return None


def _last_layer(network: nn.Module) -> nn.Linear | None:
    if isinstance(network, nn.Sequential) and len(network) and isinstance(network[-1], nn.Linear):
        return network[-1]
    return None


class Posterior:
    """N(mean, covariance) over the last layer's weights θ, a (C, F) matrix (F counts the bias column).

    hessian="full": the precision's Cholesky factor and the dense (C·F, C·F) covariance (row-major θ);
    hessian="kron": eigendecompositions G = V_G diag(λ_G) V_Gᵀ and A = V_A diag(λ_A) V_Aᵀ, so the
    covariance is (V_G ⊗ V_A) diag(1/(λ_G ⊗ λ_A + α)) (V_G ⊗ V_A)ᵀ and is never formed.
    """

    def __init__(self, body: nn.Module, bias: bool, kind: str, mean: torch.Tensor, curvature: dict,
                 alpha: float, options: Options, noise_var: float | None, seed: int):
        self.body, self.bias, self.kind = body, bias, kind
        self.mean, self.alpha = mean, alpha  # mean: (C, F)
        self.options, self.noise_var = options, noise_var
        if "hessian" in curvature:  # full: factor the precision once
            precision = curvature["hessian"] + alpha * torch.eye(len(curvature["hessian"]), dtype=mean.dtype,
                                                                 device=mean.device)
            self.precision_tril = torch.linalg.cholesky(precision)
            self.dense_covariance = torch.cholesky_inverse(self.precision_tril)
        else:
            self.kron = curvature
        self.weight_samples = None
        if kind == CLASSIFICATION and options.predictive == "sampling":
            generator = torch.Generator(device=mean.device).manual_seed(seed)
            self.weight_samples = self._sample(options.samples, generator)  # (S, C, F)

    @property
    def covariance(self) -> torch.Tensor:
        """The full (C·F, C·F) covariance of row-major θ (formed on demand for kron)."""
        if hasattr(self, "dense_covariance"):
            return self.dense_covariance
        k = self.kron
        vectors = torch.kron(k["vectors_g"], k["vectors_a"])
        return (vectors / (torch.outer(k["values_g"], k["values_a"]).reshape(-1) + self.alpha)) @ vectors.T

    def _sample(self, count: int, generator) -> torch.Tensor:
        C, F = self.mean.shape
        z = torch.randn(count, C, F, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        if hasattr(self, "precision_tril"):  # L Lᵀ = precision, so L⁻ᵀ z ~ N(0, precision⁻¹)
            deviation = torch.linalg.solve_triangular(self.precision_tril.T, z.reshape(count, -1).T, upper=True)
            return self.mean + deviation.T.reshape(count, C, F)
        k = self.kron
        scale = (torch.outer(k["values_g"], k["values_a"]) + self.alpha).rsqrt()  # (C, F)
        # (V_G ⊗ V_A) vec(X) = vec(V_G X V_Aᵀ) for row-major vec
        return self.mean + k["vectors_g"] @ (z * scale) @ k["vectors_a"].T

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return _features(self.body, self.bias, x.to(self.mean.device))

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        phi = self.features(x)  # (B, F)
        if self.kind != CLASSIFICATION:
            mu = phi @ self.mean[0]  # (B,)
            spread = self._output_variance(phi).sqrt()[:, 0]  # (B,)
            means = torch.stack([mu - spread, mu + spread])  # (2, B): exact mean and variance
            return means.to(x.device), torch.full_like(means, self.noise_var).to(x.device)
        if self.weight_samples is not None:
            logits = torch.einsum("scf,bf->sbc", self.weight_samples, phi)  # (S, B, C)
            return logits.softmax(-1).float().to(x.device)
        kappa = (1 + math.pi / 8 * self._output_variance(phi)).rsqrt()  # (B, C)
        return ((phi @ self.mean.T) * kappa).softmax(-1).unsqueeze(0).float().to(x.device)  # (1, B, C)

    def _output_variance(self, phi: torch.Tensor) -> torch.Tensor:
        """Var[f_c(x)] = φᵀ Σ_cc φ per input and output: (B, C)."""
        C, F = self.mean.shape
        if hasattr(self, "dense_covariance"):
            blocks = self.dense_covariance.reshape(C, F, C, F).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (C, F, F)
            return torch.einsum("bf,cfg,bg->bc", phi, blocks, phi)
        k = self.kron
        pa = phi @ k["vectors_a"]  # (B, F)
        inverse = 1.0 / (torch.outer(k["values_g"], k["values_a"]) + self.alpha)  # (C', F)
        return (pa ** 2) @ inverse.T @ (k["vectors_g"] ** 2).T  # (B, C)


def _features(body: nn.Module, bias: bool, x: torch.Tensor) -> torch.Tensor:
    phi = body(x).double()  # (B, F0)
    return torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype, device=phi.device)], 1) if bias else phi


def _eigh(matrix: torch.Tensor):
    values, vectors = torch.linalg.eigh(matrix)
    return values.clamp_min(0.0), vectors  # the GGN is PSD; clamp rounding below 0


def _fit_classification(body, bias, phi, theta, y, options: Options, seed: int) -> Posterior:
    probs = (phi @ theta.T).softmax(-1)  # (N, C)
    lam = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]  # (N, C, C)
    C, F = theta.shape
    if options.hessian == "full":
        hessian = torch.einsum("nab,nf,ng->afbg", lam, phi, phi).reshape(C * F, C * F)
        values = torch.linalg.eigvalsh(hessian).clamp_min(0.0) if options.prior == "marglik" else None
        curvature = {"hessian": hessian}
    else:
        values_g, vectors_g = _eigh(lam.mean(0))  # G = (1/N) Σ Λ_n
        values_a, vectors_a = _eigh(phi.T @ phi)  # A = Σ φφᵀ
        values = torch.outer(values_g, values_a).reshape(-1)
        curvature = {"values_g": values_g, "vectors_g": vectors_g, "values_a": values_a, "vectors_a": vectors_a}
    log_likelihood = -torch.nn.functional.cross_entropy(phi @ theta.T, y, reduction="sum").item()
    square_norm = (theta ** 2).sum().item()
    if options.prior == "fixed":
        alpha = options.prior_precision
    else:
        alpha = _maximise(lambda a: log_likelihood + _log_prior_and_occam(a, square_norm, values))
    return Posterior(body, bias, CLASSIFICATION, theta, curvature, alpha, options, None, seed)


def _fit_regression(body, bias, network, x, phi, y, data, options: Options, seed: int) -> Posterior:
    if "noise_var" in data.extras:
        noise_var = float(data.extras["noise_var"])
    else:
        mean, _ = gaussian_head(network(x))
        noise_var = ((mean.double() - y) ** 2).mean().item()
    values, vectors = _eigh(phi.T @ phi / noise_var)  # H for the mean row; full = kron here
    b = vectors.T @ (phi.T @ y) / noise_var  # Φᵀy/σ² in the eigenbasis

    def mode(alpha: float) -> torch.Tensor:  # argmax of the (quadratic) last-layer log posterior
        return vectors @ (b / (values + alpha))

    def evidence(alpha: float) -> float:  # exact for a Gaussian likelihood
        m = mode(alpha)
        log_likelihood = -0.5 * (((phi @ m - y) ** 2).sum().item() / noise_var
                                 + len(y) * math.log(2 * math.pi * noise_var))
        return log_likelihood + _log_prior_and_occam(alpha, (m ** 2).sum().item(), values)

    alpha = options.prior_precision if options.prior == "fixed" else _maximise(evidence)
    mean = mode(alpha)[None, :]  # (1, F): the mean output's row
    curvature = {"hessian": phi.T @ phi / noise_var}
    return Posterior(body, bias, data.kind, mean, curvature, alpha, options, noise_var, seed)


def _log_prior_and_occam(alpha: float, square_norm: float, values: torch.Tensor) -> float:
    """(P/2) log α - (α/2)‖θ‖² - ½ log det(H + αI): the α-dependent part of the Laplace evidence."""
    return (0.5 * len(values) * math.log(alpha) - 0.5 * alpha * square_norm
            - 0.5 * torch.log(values + alpha).sum().item())


def _maximise(evidence) -> float:
    """The prior precision α that maximises the evidence, searched over log α."""
    from scipy.optimize import (
        minimize_scalar,  # here: only Laplace cells pay its import (~0.5 s)
    )

    result = minimize_scalar(lambda log_alpha: -evidence(math.exp(log_alpha)), bounds=LOG_ALPHA_RANGE,
                             method="bounded", options={"xatol": 1e-6})
    return math.exp(result.x)


class Laplace(Method):
    """Last-layer Laplace approximation around the trained network."""

    name = "laplace"
    Options = Options

    def unsupported_model(self, model) -> str | None:
        """Last-layer Laplace needs an nn.Sequential whose last module is an nn.Linear."""
        with torch.device("meta"):  # only the structure matters: nothing allocated or initialised
            network = model.build(4, 2)
        last = _last_layer(network)
        if last is None:
            kind = (type(list(network.children())[-1]).__name__ if isinstance(network, nn.Sequential) and len(network)
                    else type(network).__name__)
            return (f"last-layer Laplace needs a model whose last layer is linear (an nn.Sequential ending in "
                    f"nn.Linear), but model {model!r} ends in {kind}")
        return None

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> Posterior:
        if problem := self.unsupported_model(model):
            raise ValueError(problem)  # before any training
        network = seeded_network(model, data, seed, device)
        network = train_network(network, data, train, seed, on_epoch)
        last = _last_layer(network)
        body, bias = network[:-1].eval(), last.bias is not None
        # The curvature is that of the training images as they are: training may have seen random crops
        # and flips (task.augment), but the likelihood the posterior approximates is of the data set.
        x, y = data.train_x.to(device), data.train_y.to(device)
        with torch.no_grad():
            phi = _features(body, bias, x)  # (N, F)
            theta = torch.cat([last.weight, last.bias[:, None]], 1) if bias else last.weight.clone()
            theta = theta.double()  # (C_out, F)
            if data.kind == CLASSIFICATION:
                return _fit_classification(body, bias, phi, theta, y, options, seed)
            return _fit_regression(body, bias, network, x, phi, y.double(), data, options, seed)

    def samples(self, options: Options) -> int:
        return options.samples
