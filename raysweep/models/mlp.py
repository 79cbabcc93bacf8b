"""Multi-layer perceptron with a width knob; dropout after every hidden layer when asked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from raysweep.models.base import Model


@dataclass(frozen=True)
class MLP(Model):
    width: int = 64
    depth: int = 2  # hidden layers
    size_knob: ClassVar[str] = "width"

    def problems(self) -> str | None:
        if self.width <= 0 or self.depth <= 0:
            return f"model.width and model.depth must be > 0, got width={self.width}, depth={self.depth}"
        return None

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> nn.Module:
        layers, fan_in = [], input_dim
        for _ in range(self.depth):
            layers += [nn.Linear(fan_in, self.width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = self.width
        layers.append(nn.Linear(fan_in, output_dim))
        return nn.Sequential(*layers)
