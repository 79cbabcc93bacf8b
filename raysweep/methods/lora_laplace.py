"""Laplace-LoRA (Yang et al., "Bayesian low-rank adaptation for large language models", ICLR 2024):
fine-tune the LoRA adapters to a point estimate θ*, then put a diagonal Gaussian on the trainable
parameters (the LoRA matrices and, for a classification head, the head) around it; the frozen base
stays a point. Yang et al. use KFAC; this is the diagonal version, kept simple on purpose.

    posterior  N(θ*, diag(1 / (h + α))),   h = diag of the GGN  Σ_n J_nᵀ Λ_n J_n   (summed over examples)

with J_n the Jacobian of the logits and Λ_n = diag(p_n) - p_n p_nᵀ. Since ∇θ log p_c = Jᵀ(e_c - p),
Σ_c p_c (e_c - p)(e_c - p)ᵀ = Λ gives the diagonal without forming J:

    curvature="ggn"  h = Σ_n Σ_c p_nc (∇θ log p_nc)²      exact: one backward pass per example and class
    curvature="mc"   h = Σ_n (∇θ log p_n(ŷ_n))²,  ŷ_n ~ p_n   one backward pass per example, unbiased for the
                     same diagonal; for the lm head ŷ is drawn at every token and the sequence's gradient
                     squared (cross terms have mean 0), the only affordable choice with V classes per token

α, the prior precision of N(0, 1/α) on every trainable parameter: prior="marglik" maximises the Laplace
evidence log p(D|θ*) + (P/2) log α - (α/2)‖θ*‖² - ½ Σ log(h + α) (as methods/laplace.py does); "fixed"
uses prior_precision. Prediction: S draws of θ, the same S for every batch (drawn from a generator
seeded per cell), each loaded into the one network in turn: probabilities (S, B, C) or (S, B, T, V).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from raysweep.methods.base import Method
from raysweep.methods.laplace import _log_prior_and_occam, _maximise
from raysweep.tasks.data import IGNORE_INDEX
from raysweep.training import adapters
from raysweep.training.loop import seeded_network

CURVATURES = ("ggn", "mc")
PRIORS = ("marglik", "fixed")
BATCH = 64  # examples per no-grad pass when summing the log-likelihood


@dataclass(frozen=True)
class Options:
    curvature: str = "ggn"  # "ggn": exact diagonal (classification heads); "mc": sampled labels (any head)
    prior: str = "marglik"  # "marglik": maximise the evidence; "fixed": use prior_precision
    prior_precision: float = 1.0  # α when prior="fixed"
    samples: int = 32

    def smoke(self) -> Options:
        return replace(self, samples=min(self.samples, 4))

    def problems(self) -> str | None:
        if self.curvature not in CURVATURES:
            return f"methods.lora_laplace.curvature must be one of {', '.join(CURVATURES)}, got {self.curvature!r}"
        if self.prior not in PRIORS:
            return f"methods.lora_laplace.prior must be one of {', '.join(PRIORS)}, got {self.prior!r}"
        if not self.prior_precision > 0:
            return f"methods.lora_laplace.prior_precision must be > 0, got {self.prior_precision}"
        if self.samples < 1:
            return f"methods.lora_laplace.samples must be >= 1, got {self.samples}"
        return None


class Posterior:
    """N(mean, diag(variance)) over the network's trainable parameters (dicts by parameter name)."""

    def __init__(self, network, mean: dict, variance: dict, alpha: float, kind: str, options: Options, seed: int):
        self.network, self.mean, self.variance, self.alpha = network, mean, variance, alpha
        self.kind, self.options, self.seed = kind, options, seed
        self.device = next(network.parameters()).device

    def draws(self):
        """The S parameter draws, identical on every call (so every batch sees the same S networks)."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        for _ in range(self.options.samples):
            yield {name: m + self.variance[name].sqrt() * torch.randn(m.shape, generator=generator, device=self.device,
                                                                      dtype=m.dtype)
                   for name, m in self.mean.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        outputs = []
        for state in self.draws():
            adapters.load(self.network, state)
            outputs.append(self.network(x.to(self.device)).float().softmax(-1))
        adapters.load(self.network, self.mean)  # leave the network at θ*
        return torch.stack(outputs).to(x.device)


def diagonal_ggn(network, x: torch.Tensor, y: torch.Tensor, curvature: str, seed: int) -> dict[str, torch.Tensor]:
    """The GGN diagonal of the summed negative log-likelihood over (x, y), per trainable parameter.
    y only marks ignored positions (IGNORE_INDEX): the GGN itself does not depend on the labels."""
    params = adapters.trainable(network)
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    generator = torch.Generator(device=x.device).manual_seed(seed)
    for n in range(len(x)):
        log_p = network(x[n:n + 1])[0].log_softmax(-1)  # (C,) or (T, V)
        scored = (y[n] != IGNORE_INDEX).reshape(-1) if log_p.dim() == 2 else None
        if curvature == "ggn":
            if log_p.dim() != 1:
                raise ValueError(f"methods.lora_laplace.curvature='ggn' needs one backward pass per class; the lm "
                                 f"head has {log_p.shape[-1]} classes at each of {log_p.shape[0]} tokens: "
                                 f"use curvature='mc'")
            probs = log_p.detach().exp()
            for c in range(len(log_p)):
                grads = torch.autograd.grad(log_p[c], list(params.values()), retain_graph=True)
                for name, g in zip(params, grads):
                    total[name] += probs[c] * g ** 2
        else:
            sampled = torch.multinomial(log_p.detach().exp().reshape(-1, log_p.shape[-1]), 1, generator=generator)[:, 0]
            chosen = log_p.reshape(-1, log_p.shape[-1]).gather(1, sampled[:, None])[:, 0]
            objective = chosen[scored].sum() if scored is not None else chosen.sum()
            for name, g in zip(params, torch.autograd.grad(objective, list(params.values()))):
                total[name] += g ** 2
    return total


@torch.no_grad()
def log_likelihood(network, x: torch.Tensor, y: torch.Tensor) -> float:
    """log p(D | θ): summed over examples (and scored tokens)."""
    total = 0.0
    for start in range(0, len(x), BATCH):
        logits = network(x[start:start + BATCH])
        total -= torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                                   y[start:start + BATCH].reshape(-1), ignore_index=IGNORE_INDEX,
                                                   reduction="sum").item()
    return total


class LoRALaplace(Method):
    """Diagonal Laplace over the trainable LoRA (and head) parameters around the fine-tuned adapters."""

    name = "lora_laplace"
    Options = Options

    def unsupported_model(self, model) -> str | None:
        from raysweep.models.lora import LoRA

        if not isinstance(model, LoRA):
            return (f"lora_laplace puts its Gaussian on LoRA adapters: it needs model 'lora' "
                    f"(raysweep.models.lora.LoRA), got {type(model).__name__}; use method 'laplace' for other models")
        return None

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> Posterior:
        if problem := self.unsupported_model(model):
            raise ValueError(problem)  # before any training
        network = seeded_network(model, data, seed, device)
        for epoch, loss in enumerate(adapters.train_trainable(network, data, train, seed), start=1):
            on_epoch(epoch, loss)
        x, y = data.train_x.to(device), data.train_y.to(device)
        mean = adapters.snapshot(network)
        curvature = diagonal_ggn(network, x, y, options.curvature, seed)
        if options.prior == "fixed":
            alpha = options.prior_precision
        else:
            values = torch.cat([h.reshape(-1) for h in curvature.values()]).double()
            square_norm = sum((m.double() ** 2).sum().item() for m in mean.values())
            fit = log_likelihood(network, x, y)
            alpha = _maximise(lambda a: fit + _log_prior_and_occam(a, square_norm, values))
        variance = {name: 1.0 / (h + alpha) for name, h in curvature.items()}
        return Posterior(network, mean, variance, alpha, data.kind, options, seed)

    def samples(self, options: Options) -> int:
        return options.samples
