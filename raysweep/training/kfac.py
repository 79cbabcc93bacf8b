"""Kronecker-factored (KFAC) curvature of a network's trainable linear maps (Martens & Grosse, 2015),
in the "expand" form for inputs with a sequence axis (Eschenhagen et al., NeurIPS 2023), as
Laplace-LoRA uses it (Yang et al., ICLR 2024): for peft's lora_A / lora_B and a linear head.

For a linear map f = W a + b with inputs a_nt at position t of example n and g_nt = ∂ℓ/∂f_nt, the
gradient of the objective ℓ_n is Σ_t g_nt a_ntᵀ, and the GGN/Fisher block of [W | b] (row-major,
the bias as W's last column, a 1 appended to every a) is approximated as

    H ≈ G ⊗ A,   A = Σ_{n,t} a_nt a_ntᵀ,   G = (1/K) Σ_{n,t} E_y[g_nt g_ntᵀ],   K = the number of (n, t) terms

E_y is over labels y ~ p(·|x_n): the caller gives the objectives and their weights (every class with
weight p_nc, which is exactly Λ_n = diag(p_n) - p_n p_nᵀ, or one sampled label with weight 1). With one
example and one position the block is a aᵀ ⊗ E[g gᵀ], so KFAC is exact there; with N examples, 1/K
shares the sum between the factors (as methods/laplace.py's G = (1/N) Σ Λ_n). Only positions whose
output gradient is not zero count in A and K: padding, and every position but the last real token of a
classification head's input, never reach the loss, so they carry no curvature.

Posterior precision per block G ⊗ A + αI: with G = V_G diag(λ_G) V_Gᵀ and A = V_A diag(λ_A) V_Aᵀ its
eigenvalues are λ_G,i λ_A,j + α (exact for this Kronecker-plus-isotropic form), which give both the
log-determinant of the evidence and the draws W = θ* + V_G (Z / sqrt(λ_G λ_Aᵀ + α)) V_Aᵀ, Z ~ N(0, I).

Written here, not taken from a library: laplace-torch 0.3 (and its ASDL/BackPACK backends) would
replace the CPU torch with a CUDA build and pull torchvision, which does not load against the CPU
torch (docs/design.md §6); forward hooks and autograd.grad w.r.t. the maps' outputs are enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# (logits, labels) -> [(objective, weight per example)]: E_y[g gᵀ] = Σ_k weight_k g_k g_kᵀ
Objectives = Callable[[torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]


def linear_maps(network: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear modules whose weight trains, by module name; every trainable parameter must be
    one of their weights or biases (a block needs a Kronecker structure to be one)."""
    maps = {name: m for name, m in network.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad}
    covered = {f"{name}.{p}" for name, m in maps.items() for p in ("weight", "bias") if getattr(m, p) is not None}
    loose = [name for name, p in network.named_parameters() if p.requires_grad and name not in covered]
    if loose:
        raise ValueError(f"KFAC covers the weights (and biases) of trainable nn.Linear maps; these trainable "
                         f"parameters are not one: {', '.join(loose)} (use structure='diag')")
    return maps


def _has_bias(module: nn.Linear) -> bool:
    return module.bias is not None and module.bias.requires_grad


def factors(network: nn.Module, x: torch.Tensor, y: torch.Tensor, objectives: Objectives,
            batch: int = 64) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A, G)} in float64 over the examples (x, y), batch by batch: the examples of a batch
    do not interact, so the gradient of the batch's summed objective w.r.t. a map's output is per example."""
    maps = linear_maps(network)
    seen = {}

    def keep(name):
        def hook(module, args, output):
            if name in seen:  # a second call would overwrite the first one's input and output
                raise ValueError(f"KFAC needs each linear map called once per forward; {name} was called again")
            seen[name] = (args[0].detach(), output)
        return hook

    A = {n: torch.zeros(m.in_features + _has_bias(m), m.in_features + _has_bias(m), dtype=torch.float64,
                        device=x.device) for n, m in maps.items()}
    G = {n: torch.zeros(m.out_features, m.out_features, dtype=torch.float64, device=x.device) for n, m in maps.items()}
    terms = dict.fromkeys(maps, 0)
    handles = [m.register_forward_hook(keep(n)) for n, m in maps.items()]
    try:
        for start in range(0, len(x), batch):
            seen.clear()
            logits = network(x[start:start + batch])
            B = len(logits)
            active = dict.fromkeys(maps, False)
            for objective, weight in objectives(logits, y[start:start + batch]):
                grads = torch.autograd.grad(objective, [seen[n][1] for n in maps], retain_graph=True)
                for n, g in zip(maps, grads):
                    g = g.double().reshape(B, -1, g.shape[-1])  # (B, T, out); T = 1 without a sequence axis
                    G[n] += torch.einsum("bto,btp,b->op", g, g, weight.double())
                    active[n] = active[n] | (g != 0).any(-1)  # (B, T)
            for n, m in maps.items():
                a = seen[n][0].double().reshape(B, -1, m.in_features)[active[n]]  # (K_batch, in)
                if _has_bias(m):
                    a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)
                A[n] += a.T @ a
                terms[n] += len(a)
    finally:
        for handle in handles:
            handle.remove()
    return {n: (A[n], G[n] / max(terms[n], 1)) for n in maps}


@dataclass(frozen=True)
class Block:
    """N(0, (G ⊗ A + αI)⁻¹) over one linear map's [W | b] (row-major), held as eigendecompositions."""

    weight: str  # parameter names
    bias: str | None
    values_a: torch.Tensor
    vectors_a: torch.Tensor
    values_g: torch.Tensor
    vectors_g: torch.Tensor

    @classmethod
    def of(cls, name: str, module: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> Block:
        (values_a, vectors_a), (values_g, vectors_g) = torch.linalg.eigh(a), torch.linalg.eigh(g)
        # both factors are PSD: clamp rounding below 0
        return cls(f"{name}.weight", f"{name}.bias" if _has_bias(module) else None,
                   values_a.clamp_min(0.0), vectors_a, values_g.clamp_min(0.0), vectors_g)

    def eigenvalues(self) -> torch.Tensor:
        """Of G ⊗ A, one per parameter of the block: the log-determinant's terms."""
        return torch.outer(self.values_g, self.values_a).reshape(-1)

    def draw(self, mean: dict[str, torch.Tensor], alpha: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
        scale = (torch.outer(self.values_g, self.values_a) + alpha).rsqrt()  # (out, in [+1])
        z = torch.randn(scale.shape, generator=generator, device=scale.device, dtype=scale.dtype)
        # (V_G ⊗ V_A) vec(X) = vec(V_G X V_Aᵀ) for row-major vec
        deviation = self.vectors_g @ (z * scale) @ self.vectors_a.T
        weight = mean[self.weight]
        state = {self.weight: weight + deviation[:, :weight.shape[1]].to(weight.dtype)}
        if self.bias is not None:
            state[self.bias] = mean[self.bias] + deviation[:, -1].to(weight.dtype)
        return state


def blocks(network: nn.Module, x: torch.Tensor, y: torch.Tensor, objectives: Objectives) -> list[Block]:
    maps = linear_maps(network)
    return [Block.of(n, maps[n], a, g) for n, (a, g) in factors(network, x, y, objectives).items()]
