"""What a task hands to a method: a training subset and fixed evaluation sets, as tensors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

CLASSIFICATION = "classification"
REGRESSION = "regression"
IGNORE_INDEX = -100  # a target not to score (PyTorch's cross-entropy convention)


@dataclass
class TaskData:
    kind: str  # CLASSIFICATION or REGRESSION
    train_x: torch.Tensor  # (N, D)
    train_y: torch.Tensor  # (N,) class indices or real targets
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor | None]]  # "test" then OOD sets; labels may be None
    n_classes: int = 0  # classification only
    extras: dict = field(default_factory=dict)  # task facts a method may use, e.g. the true noise variance

    @property
    def input_dim(self) -> int:
        return self.train_x.shape[1]

    @property
    def output_dim(self) -> int:
        """Network outputs: class logits, or (mean, raw variance) for Gaussian regression."""
        return self.n_classes if self.kind == CLASSIFICATION else 2


def nested_subset(pool_size: int, n: int, seed: int) -> torch.Tensor:
    """Indices of the first n of a seed-fixed permutation: for one seed, smaller N ⊂ larger N."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(pool_size, generator=generator)[:n]


def content_hash(x: torch.Tensor, y: torch.Tensor | None) -> str:
    """A short hash of an evaluation set's contents (inputs, labels, their dtypes and shapes): two rows
    with the same hash were scored on the same examples, whatever Python or corpus version made them."""
    digest = hashlib.sha256()
    for tensor in (x, y):
        if tensor is None:
            digest.update(b"none")
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]
