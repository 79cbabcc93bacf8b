"""MC dropout (Gal & Ghahramani, 2016): train with dropout, keep it on at prediction, S passes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from raysweep.methods.training import StackedMembers, gaussian_head, train_members
from raysweep.tasks.data import CLASSIFICATION

uses_model = True


@dataclass(frozen=True)
class Options:
    rate: float = 0.1
    samples: int = 32

    def smoke(self) -> "Options":
        return replace(self, samples=min(self.samples, 4))

    def problems(self) -> str | None:
        if not 0 < self.rate < 1:
            return f"methods.dropout.rate must be in (0, 1), got {self.rate}"
        if self.samples < 1:
            return f"methods.dropout.samples must be >= 1, got {self.samples}"
        return None


def unsupported(task) -> str | None:
    return None


class Posterior:
    def __init__(self, stack: StackedMembers, kind: str, samples: int):
        self.stack, self.kind, self.samples = stack, kind, samples

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        # One pass over S stacked copies of the batch: each row draws its own dropout mask.
        repeated = x.unsqueeze(0).expand(self.samples, *x.shape).reshape(-1, x.shape[-1])  # (S*B, D)
        outputs = self.stack.forward(repeated, shared_input=True, train=True)[0]  # (S*B, out)
        outputs = outputs.reshape(self.samples, x.shape[0], -1)  # (S, B, out)
        if self.kind == CLASSIFICATION:
            return outputs.softmax(-1)
        return gaussian_head(outputs)


def fit(data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> Posterior:
    torch.manual_seed(seed)
    network = model.build(data.input_dim, data.output_dim, dropout=options.rate).to(device)
    stack = train_members(StackedMembers([network]), data, train, seed, on_epoch)
    return Posterior(stack, data.kind, options.samples)
