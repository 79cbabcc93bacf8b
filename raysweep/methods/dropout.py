"""MC dropout (Gal & Ghahramani, 2016): train with dropout, keep it on at prediction, S passes.

The rate is the one setting worth sweeping. Rate 0 is refused: every pass would be the same network,
so epistemic uncertainty would be exactly 0 and every EU fit would drop the cell without a word.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from raysweep.methods.base import Method
from raysweep.training.likelihood import to_prediction
from raysweep.training.loop import train_members
from raysweep.training.stack import StackedMembers


@dataclass(frozen=True)
class Options:
    rate: float = 0.1
    samples: int = 32

    def smoke(self) -> Options:
        return replace(self, samples=min(self.samples, 4))

    def problems(self) -> str | None:
        if not 0 < self.rate < 1:
            return (f"methods.dropout.rate must be in (0, 1) (rate 0 makes every pass the same network, so its "
                    f"epistemic uncertainty is 0 by construction), got {self.rate}")
        if self.samples < 1:
            return f"methods.dropout.samples must be >= 1, got {self.samples}"
        return None


class Posterior:
    def __init__(self, stack: StackedMembers, kind: str, samples: int):
        self.stack, self.kind, self.samples = stack, kind, samples

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        # One pass over S stacked copies of the batch: each row draws its own dropout mask.
        inputs = x.to(self.stack.device)
        repeated = inputs.unsqueeze(0).expand(self.samples, *x.shape).reshape(-1, *x.shape[1:])  # (S*B, D)
        outputs = self.stack.forward(repeated, shared_input=True, train=True)[0]  # (S*B, out)
        outputs = outputs.reshape(self.samples, x.shape[0], *outputs.shape[1:])  # (S, B, out) or (S, B, T, V)
        return to_prediction(outputs.to(x.device), self.kind)


class Dropout(Method):
    """MC dropout: one network trained with dropout, S stochastic passes at prediction."""

    name = "dropout"
    Options = Options

    def unsupported_model(self, model) -> str | None:
        """MC dropout needs a network that puts dropout layers in when asked to."""
        with torch.device("meta"):  # only the structure matters: nothing allocated or initialised
            network = model.build(4, 2, dropout=0.5)
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in network.modules()):
            return (f"MC dropout needs dropout layers, but model {model!r} built with dropout=0.5 has none; "
                    f"use a model whose build() adds nn.Dropout (e.g. raysweep.models.mlp.MLP)")
        return None

    def fit(self, data, model, options: Options, train, seed: int, on_epoch, device="cpu") -> Posterior:
        if options.rate > 0 and (problem := self.unsupported_model(model)):
            raise ValueError(problem)  # before any training
        torch.manual_seed(seed)
        network = model.build(data.input_dim, data.output_dim, dropout=options.rate).to(device)
        stack = train_members(StackedMembers([network]), data, train, seed, on_epoch)
        return Posterior(stack, data.kind, options.samples)

    def samples(self, options: Options) -> int:
        return options.samples
