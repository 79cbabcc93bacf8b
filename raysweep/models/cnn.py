"""A small convolutional network with a width knob, and what every image model shares.

Image models take (B, C, H, W) batches: `build(input_dim, ...)` gets the channel count C (the
task's `data.input_dim` is `train_x.shape[1]`), and the spatial size is handled lazily by global
average pooling, so one config runs on 8x8 digits and on 32x32 CIFAR alike. Every image model is an
nn.Sequential ending in nn.Linear (what last-layer Laplace needs) and stacks under torch.func.vmap:
GroupNorm instead of BatchNorm (no running statistics to update in place), no in-place ops, no tied
parameters. With dropout > 0 they put nn.Dropout layers in, for MC dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from raysweep.models.base import Model


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (as many as divide the channels): per-example, vmap-safe."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def image_problems(model, task) -> str | None:
    """Why `task` cannot feed `model` images, or None. Tasks that can give images have `image_shape`
    ((C, H, W), or None when they give flat vectors)."""
    shape = task.image_shape
    if shape is None or len(shape) != 3:
        return (f"model {type(model).__name__} takes images (N, C, H, W), but task {task!r} gives flat vectors; "
                f"give the task images (Digits(as_images=True), Vision(flatten=False)) or use model MLP")
    return None


@dataclass(frozen=True)
class CNN(Model):
    """stages x [conv3x3 → GroupNorm → ReLU → 2x2 max-pool]; channels width, 2·width, 4·width, …;
    then global average pooling and a linear classifier. P grows about as width²."""

    width: int = 32
    stages: int = 2
    norm: bool = True
    size_knob: ClassVar[str] = "width"
    takes_images: ClassVar[bool] = True

    def problems(self) -> str | None:
        if self.width <= 0 or self.stages <= 0:
            return f"model.width and model.stages must be > 0, got width={self.width}, stages={self.stages}"
        return None

    def problems_with(self, task) -> str | None:
        return image_problems(self, task)

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> nn.Module:
        """input_dim: image channels C; output_dim: classes."""
        layers, channels = [], input_dim
        for stage in range(self.stages):
            out = self.width * 2 ** stage
            layers += [nn.Conv2d(channels, out, 3, padding=1)]
            layers += [group_norm(out)] if self.norm else []
            layers += [nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]  # ceil: odd and 1x1 maps still pool
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, channels) whatever H, W were
        layers.append(nn.Linear(channels, output_dim))
        return nn.Sequential(*layers)
