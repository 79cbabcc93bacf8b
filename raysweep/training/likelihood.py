"""The likelihood of network outputs: per-member losses, the Gaussian head, and outputs turned into
predictive distributions."""

from __future__ import annotations

import torch
from torch import nn

from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX


def loss_per_member(outputs: torch.Tensor, targets: torch.Tensor, kind: str, may_ignore: bool = True) -> torch.Tensor:
    """outputs (M, B, out), targets (M, B) -> mean loss per member (M,).

    Language models give (M, B, T, V) and (M, B, T): the mean is over scored tokens, skipping
    targets equal to IGNORE_INDEX (may_ignore=False: the caller knows there are none, and the
    counting is skipped).
    """
    if kind == CLASSIFICATION:
        members, classes = outputs.shape[0], outputs.shape[-1]
        if outputs.stride(-1) == 1:  # classes contiguous (vmap, language models): rows of class scores
            losses = nn.functional.cross_entropy(outputs.reshape(-1, classes), targets.reshape(-1), reduction="none",
                                                 ignore_index=IGNORE_INDEX).view(members, -1)  # (M, B·T)
        else:  # the batched model's features-first (M, C, B) seen as (M, B, C): classes in dim 1, no copy
            losses = nn.functional.cross_entropy(outputs.movedim(-1, 1), targets, reduction="none",
                                                 ignore_index=IGNORE_INDEX).flatten(1)  # (M, B·T)
        if not may_ignore:
            return losses.mean(1)
        return losses.sum(1) / (targets != IGNORE_INDEX).flatten(1).sum(1).clamp_min(1)
    mean, variance = gaussian_head(outputs)
    return nn.functional.gaussian_nll_loss(mean, targets, variance, reduction="none", full=True).mean(1)


def scored_units(y: torch.Tensor, kind: str) -> int:
    """How many targets of y the likelihood scores: tokens of a sequence task (IGNORE_INDEX skipped,
    e.g. the operands of an equation), examples otherwise."""
    if kind == CLASSIFICATION:
        return int((y != IGNORE_INDEX).sum())
    return len(y)


def training_units(data) -> int:
    """The likelihood's N: the scored units of the training set. The losses here are means over scored
    units, so a log likelihood is training_units · mean loss; counting sequences instead would temper a
    language model's posterior by its context length (1/64 locally)."""
    return scored_units(data.train_y, data.kind)


def mean_loss(network: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-example negative log-likelihood of one network on a batch (a scalar)."""
    return loss_per_member(network(x).unsqueeze(0), y.unsqueeze(0), kind)[0]


def gaussian_head(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (…, 2) outputs into a mean and a positive variance."""
    return outputs[..., 0], nn.functional.softplus(outputs[..., 1]) + 1e-6


def to_prediction(outputs: torch.Tensor, kind: str):
    """Network outputs (S, B, out) -> probabilities (S, B, C), or Gaussian means and variances (S, B)."""
    if kind == CLASSIFICATION:
        return outputs.softmax(-1)
    return gaussian_head(outputs)
