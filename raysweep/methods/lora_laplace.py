"""Laplace-LoRA (Yang et al., "Bayesian low-rank adaptation for large language models", ICLR 2024):
fine-tune the LoRA adapters to a point estimate θ*, then put a Gaussian on the trainable parameters
(the LoRA matrices and, for a classification head, the head) around it; the frozen base stays a point.

    posterior  N(θ*, (H + αI)⁻¹),   H ≈ the GGN  Σ_n J_nᵀ Λ_n J_n   (summed over examples)

with J_n the Jacobian of the logits and Λ_n = diag(p_n) - p_n p_nᵀ, in one of two structures:

    structure="diag"  H = diag of the GGN, per parameter
    structure="kfac"  H ≈ G ⊗ A per linear map (every lora_A, lora_B and the head), as Yang et al. use:
                      A sums the map's inputs a aᵀ, G its output gradients g gᵀ (raysweep.training.kfac)

Since ∇θ log p_c = Jᵀ(e_c - p), Σ_c p_c (e_c - p)(e_c - p)ᵀ = Λ gives either without forming J:

    curvature="ggn"  every class c with weight p_nc                 exact: one backward pass per class
    curvature="mc"   one label ŷ_n ~ p_n with weight 1             one backward pass, unbiased for the same H;
                     for the lm head ŷ is drawn at every token and the sequence's gradient used (cross
                     terms have mean 0), the only affordable choice with V classes per token

diag takes one example per backward pass (it squares per-example parameter gradients); kfac a batch
(it needs only the gradients w.r.t. each map's outputs, which are per example anyway).

α, the prior precision of N(0, 1/α) on every trainable parameter: prior="marglik" maximises the Laplace
evidence log p(D|θ*) + (P/2) log α - (α/2)‖θ*‖² - ½ log det(H + αI) (as methods/laplace.py does; for
kfac the eigenvalues of G ⊗ A + αI are λ_G λ_A + α); "fixed" uses prior_precision. Prediction: S draws
of θ, the same S for every batch (drawn from a generator seeded per cell), each loaded into the one
network in turn: probabilities (S, B, C) or (S, B, T, V).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from raysweep.methods.base import Method
from raysweep.methods.laplace import _log_prior_and_occam, _maximise
from raysweep.tasks.data import IGNORE_INDEX
from raysweep.training import adapters, kfac
from raysweep.training.loop import seeded_network

CURVATURES = ("ggn", "mc")
STRUCTURES = ("diag", "kfac")
PRIORS = ("marglik", "fixed")
BATCH = 64  # examples per no-grad pass when summing the log-likelihood


@dataclass(frozen=True)
class Options:
    curvature: str = "ggn"  # "ggn": every class (classification heads); "mc": sampled labels (any head)
    structure: str = "diag"  # "diag": the GGN's diagonal; "kfac": a Kronecker factor pair per linear map
    prior: str = "marglik"  # "marglik": maximise the evidence; "fixed": use prior_precision
    prior_precision: float = 1.0  # α when prior="fixed"
    samples: int = 32

    def smoke(self) -> Options:
        return replace(self, samples=min(self.samples, 4))

    def problems(self) -> str | None:
        if self.curvature not in CURVATURES:
            return f"methods.lora_laplace.curvature must be one of {', '.join(CURVATURES)}, got {self.curvature!r}"
        if self.structure not in STRUCTURES:
            return f"methods.lora_laplace.structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}"
        if self.prior not in PRIORS:
            return f"methods.lora_laplace.prior must be one of {', '.join(PRIORS)}, got {self.prior!r}"
        if not self.prior_precision > 0:
            return f"methods.lora_laplace.prior_precision must be > 0, got {self.prior_precision}"
        if self.samples < 1:
            return f"methods.lora_laplace.samples must be >= 1, got {self.samples}"
        return None


class Posterior:
    """N(mean, Σ) over the network's trainable parameters (dicts by parameter name): Σ = diag(variance),
    or one Kronecker block per linear map (raysweep.training.kfac.Block) when blocks are given."""

    def __init__(self, network, mean: dict, alpha: float, kind: str, options: Options, seed: int,
                 variance: dict | None = None, blocks: list[kfac.Block] = ()):
        self.network, self.mean, self.variance, self.blocks, self.alpha = network, mean, variance, blocks, alpha
        self.kind, self.options, self.seed = kind, options, seed
        self.device = next(network.parameters()).device

    def draws(self):
        """The S parameter draws, identical on every call (so every batch sees the same S networks)."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        for _ in range(self.options.samples):
            if self.blocks:
                yield {k: v for block in self.blocks for k, v in block.draw(self.mean, self.alpha, generator).items()}
                continue
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


def label_objectives(curvature: str, seed: int, device) -> kfac.Objectives:
    """(logits, labels) -> [(objective, weight per example)] whose weighted gradient outer products
    have the GGN as expectation: every class (ggn) or one sampled label (mc). Labels only mark ignored
    positions (IGNORE_INDEX): the GGN itself does not depend on them."""
    generator = torch.Generator(device=device).manual_seed(seed)  # one stream per fit: labels differ per batch

    def objectives(logits: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        log_p = logits.log_softmax(-1)  # (B, C) or (B, T, V)
        if curvature == "ggn":
            if log_p.dim() != 2:
                raise ValueError(f"methods.lora_laplace.curvature='ggn' needs one backward pass per class; the lm "
                                 f"head has {log_p.shape[-1]} classes at each of {log_p.shape[1]} tokens: "
                                 f"use curvature='mc'")
            probs = log_p.detach().exp()
            return [(log_p[:, c].sum(), probs[:, c]) for c in range(log_p.shape[-1])]
        flat = log_p.reshape(-1, log_p.shape[-1])
        sampled = torch.multinomial(flat.detach().exp(), 1, generator=generator)[:, 0]
        chosen = flat.gather(1, sampled[:, None])[:, 0].reshape(y.shape)
        return [(chosen[y != IGNORE_INDEX].sum(), torch.ones(len(y), device=y.device))]

    return objectives


def diagonal_ggn(network, x: torch.Tensor, y: torch.Tensor, curvature: str, seed: int) -> dict[str, torch.Tensor]:
    """The GGN diagonal of the summed negative log-likelihood over (x, y), per trainable parameter."""
    params = adapters.trainable(network)
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    objectives = label_objectives(curvature, seed, x.device)
    for n in range(len(x)):  # one example at a time: squares of per-example gradients
        for objective, weight in objectives(network(x[n:n + 1]), y[n:n + 1]):
            grads = torch.autograd.grad(objective, list(params.values()), retain_graph=True)
            for name, g in zip(params, grads):
                total[name] += weight[0] * g ** 2
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
    """Laplace (diagonal or KFAC) over the trainable LoRA (and head) parameters around the fine-tuned adapters."""

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
        if options.structure == "kfac":
            blocks, variance = kfac.blocks(network, x, y, label_objectives(options.curvature, seed, x.device)), None
            values = torch.cat([block.eigenvalues() for block in blocks])
        else:
            blocks, variance = [], diagonal_ggn(network, x, y, options.curvature, seed)
            values = torch.cat([h.reshape(-1) for h in variance.values()]).double()
        if options.prior == "fixed":
            alpha = options.prior_precision
        else:
            square_norm = sum((m.double() ** 2).sum().item() for m in mean.values())
            fit = log_likelihood(network, x, y)
            alpha = _maximise(lambda a: fit + _log_prior_and_occam(a, square_norm, values))
        if variance is not None:
            variance = {name: 1.0 / (h + alpha) for name, h in variance.items()}
        return Posterior(network, mean, alpha, data.kind, options, seed, variance, blocks)

    def samples(self, options: Options) -> int:
        return options.samples
