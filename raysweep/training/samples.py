"""A posterior held as S flat parameter vectors of one architecture (Laplace, SWAG, SGHMC, cSGLD)."""

from __future__ import annotations

import math

import torch
from torch import nn

from raysweep.training.likelihood import to_prediction
from raysweep.training.stack import StackedMembers


def flatten(network: nn.Module) -> torch.Tensor:
    """All parameters as one vector (P,), in named_parameters order."""
    return torch.cat([p.detach().reshape(-1) for p in network.parameters()])


class SampledNetworks:
    """A posterior held as S parameter vectors of one architecture; predicts with all S at once."""

    def __init__(self, network: nn.Module, samples: torch.Tensor, kind: str):
        """samples: (S, P) flat parameter vectors in `flatten(network)` order."""
        names = [name for name, _ in network.named_parameters()]
        shapes = [p.shape for p in network.parameters()]
        chunks = samples.split([math.prod(s) for s in shapes], dim=1)
        params = {n: c.reshape(len(samples), *s) for n, c, s in zip(names, chunks, shapes)}
        buffers = {n: b.unsqueeze(0).expand(len(samples), *b.shape) for n, b in network.named_buffers()}
        stack = StackedMembers.of(params, buffers, network)
        self.stack, self.kind = stack, kind

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        outputs = self.stack.forward(x.to(self.stack.device), shared_input=True, train=False)  # (S, B, out)
        return to_prediction(outputs.to(x.device), self.kind)
