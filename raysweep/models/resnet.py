"""ResNet-18-style and WideResNet-style image classifiers with a width knob (CIFAR-style stems).

Both use GroupNorm where the originals use BatchNorm: ensemble members are trained stacked under
torch.func.vmap, and BatchNorm's in-place running statistics do not stack (see models/cnn.py).
The stem is a 3x3 convolution with no max-pool, as for 32x32 CIFAR images; the spatial size is
pooled away at the end, so any image size runs.

- ResNet(width=64): He et al. (2016) ResNet-18 layout, stages of (2, 2, 2, 2) basic blocks with
  width·(1, 2, 4, 8) channels; width=64 is the standard ResNet-18 (about 11.2M parameters on CIFAR-10).
- WideResNet(widen=k, depth=d): Zagoruyko & Komodakis (2016) WRN-d-k, pre-activation blocks with
  (16k, 32k, 64k) channels and (d − 4) / 6 blocks per stage; WRN-28-10 is the usual CIFAR model.
  Dropout sits between the two convolutions of each block, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from raysweep.models.base import Model
from raysweep.models.cnn import group_norm, image_problems


class BasicBlock(nn.Module):
    """conv3x3 → GN → ReLU → conv3x3 → GN, plus the input (1x1 conv when the shape changes), → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), group_norm(cout), nn.ReLU(),
            *([nn.Dropout(dropout)] if dropout > 0 else []),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), group_norm(cout),
        )
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), group_norm(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class WideBlock(nn.Module):
    """Pre-activation: GN → ReLU → conv3x3 → GN → ReLU → dropout → conv3x3, plus the input."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            group_norm(cout), nn.ReLU(), *([nn.Dropout(dropout)] if dropout > 0 else []),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        )
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


@dataclass(frozen=True)
class ResNet(Model):
    width: int = 64  # channels of the first stage; later stages double it
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # basic blocks per stage: ResNet-18; (3, 4, 6, 3) is ResNet-34
    size_knob: ClassVar[str] = "width"
    takes_images: ClassVar[bool] = True

    def problems(self) -> str | None:
        if self.width <= 0 or not self.blocks or any(b <= 0 for b in self.blocks):
            return f"model.width and every model.blocks entry must be > 0, got width={self.width}, blocks={self.blocks}"
        return None

    def problems_with(self, task) -> str | None:
        return image_problems(self, task)

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> nn.Module:
        """input_dim: image channels C; output_dim: classes."""
        layers = [nn.Conv2d(input_dim, self.width, 3, 1, 1, bias=False), group_norm(self.width), nn.ReLU()]
        channels = self.width
        for stage, count in enumerate(self.blocks):
            out = self.width * 2 ** stage
            for i in range(count):
                layers.append(BasicBlock(channels, out, 2 if stage > 0 and i == 0 else 1, dropout))
                channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers.append(nn.Linear(channels, output_dim))
        return nn.Sequential(*layers)


@dataclass(frozen=True)
class WideResNet(Model):
    widen: int = 4  # the width multiplier k of WRN-d-k
    depth: int = 16  # 6·blocks + 4: 10, 16, 22, 28, 40, ...
    size_knob: ClassVar[str] = "widen"
    takes_images: ClassVar[bool] = True

    def problems(self) -> str | None:
        if self.widen <= 0:
            return f"model.widen must be > 0, got {self.widen}"
        if self.depth < 10 or (self.depth - 4) % 6:
            return f"model.depth must be 6·k + 4 with k >= 1 (10, 16, 22, 28, 40, ...), got {self.depth}"
        return None

    def problems_with(self, task) -> str | None:
        return image_problems(self, task)

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> nn.Module:
        """input_dim: image channels C; output_dim: classes."""
        per_stage = (self.depth - 4) // 6
        layers, channels = [nn.Conv2d(input_dim, 16, 3, 1, 1, bias=False)], 16
        for stage, base in enumerate((16, 32, 64)):
            out = base * self.widen
            for i in range(per_stage):
                layers.append(WideBlock(channels, out, 2 if stage > 0 and i == 0 else 1, dropout))
                channels = out
        layers += [group_norm(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers.append(nn.Linear(channels, output_dim))
        return nn.Sequential(*layers)
