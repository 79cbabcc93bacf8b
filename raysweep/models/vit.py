"""A small Vision Transformer (Dosovitskiy et al., 2021) with a width knob.

Patches of patch x patch pixels → linear embedding + learned positions → depth pre-norm blocks
(multi-head self-attention, MLP) → LayerNorm → mean over patches → linear classifier. Mean pooling
instead of a class token keeps the positional table one row per patch.

The positional table has `max_patches` rows, fixed at build time (build sees only the channel
count), so the image size must fit: H and W multiples of `patch`, (H/patch)·(W/patch) <= max_patches.
`problems_with(task)` checks this before training; forward checks it again for direct use.
Attention is written as plain matmuls: torch.func.vmap batches them, where fused SDPA kernels fall
back to a slow per-member loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from raysweep.models.base import Model
from raysweep.models.cnn import image_problems


@dataclass(frozen=True)
class ViT(Model):
    dim: int = 64  # embedding width
    depth: int = 4  # transformer blocks
    head_dim: int = 16  # heads = dim // head_dim
    patch: int = 4
    max_patches: int = 64  # 64 = a 32x32 image in 4x4 patches
    mlp_ratio: int = 2
    size_knob: ClassVar[str] = "dim"
    takes_images: ClassVar[bool] = True

    def problems(self) -> str | None:
        values = {name: getattr(self, name)
                  for name in ("dim", "depth", "head_dim", "patch", "max_patches", "mlp_ratio")}
        if any(v <= 0 for v in values.values()):
            return "model." + ", ".join(values) + f" must all be > 0, got {tuple(values.values())}"
        if self.dim % self.head_dim:
            return f"model.dim ({self.dim}) must be a multiple of model.head_dim ({self.head_dim})"
        return None

    def problems_with(self, task) -> str | None:
        problem = image_problems(self, task)
        return problem or patch_problems(task.image_shape[1:], self.patch, self.max_patches)

    def build(self, input_dim: int, output_dim: int, dropout: float = 0.0) -> nn.Module:
        """input_dim: image channels C; output_dim: classes."""
        encoder = Encoder(input_dim, self.dim, self.depth, self.dim // self.head_dim, self.patch,
                          self.max_patches, self.mlp_ratio, dropout)
        return nn.Sequential(encoder, nn.Linear(self.dim, output_dim))


def patch_problems(hw, patch: int, max_patches: int) -> str | None:
    height, width = hw
    if height % patch or width % patch:
        return (f"images of {height}x{width} pixels do not split into model.patch={patch} patches; "
                f"use a patch size that divides both")
    patches = (height // patch) * (width // patch)
    if patches > max_patches:
        return (f"images of {height}x{width} pixels make {patches} patches of {patch}x{patch}, more than "
                f"model.max_patches={max_patches}; raise model.max_patches to {patches} or the patch size")
    return None


class Encoder(nn.Module):
    """(B, C, H, W) images -> (B, dim) pooled features."""

    def __init__(self, channels, dim, depth, heads, patch, max_patches, mlp_ratio, dropout):
        super().__init__()
        self.patch, self.max_patches = patch, max_patches
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)  # one linear map per patch
        self.positions = nn.Parameter(torch.randn(max_patches, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"ViT takes images (B, C, H, W), got a tensor of shape {tuple(images.shape)}")
        if problem := patch_problems(images.shape[-2:], self.patch, self.max_patches):
            raise ValueError(problem)
        tokens = self.embed(images).flatten(2).transpose(1, 2)  # (B, T, dim)
        tokens = tokens + self.positions[: tokens.shape[1]]
        return self.norm(self.blocks(tokens)).mean(1)  # (B, dim)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 *([nn.Dropout(dropout)] if dropout > 0 else []), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # 3 x (B, h, T, d)
        q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5).softmax(-1)  # (B, h, T, T)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)  # (B, T, dim)
        x = x + self.drop(self.proj(mixed))
        return x + self.drop(self.mlp(self.norm2(x)))
