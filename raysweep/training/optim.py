"""The optimizer factory: a method says which optimizer its networks train with, by name, and the
training loops build it here (`make(name, params, train)`) instead of hard-coding one.

    OPTIMIZERS = {"adam": adam, "sgd": sgd}

A new optimizer (e.g. SAM) is one function `(params, train) -> torch.optim.Optimizer` and
one line in OPTIMIZERS; the optimizers used for stacked members must be element-wise (Adam, SGD),
so that M members trained as one stack stay M independent runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import ivon
import torch

Factory = Callable[[list, object], torch.optim.Optimizer]


def adam(params: list[torch.Tensor], train) -> torch.optim.Optimizer:
    """Adam, fused where torch has the kernel: one pass over each tensor instead of a dozen
    element-wise ops, which for small members cost more than the forward and backward passes.
    The update is Adam's, element by element, so members stay independent."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None)


def sgd(params: list[torch.Tensor], train) -> torch.optim.Optimizer:
    """Plain SGD with momentum 0.9 (element-wise, so stacked members stay independent)."""
    return torch.optim.SGD(params, lr=train.lr, momentum=0.9, weight_decay=train.weight_decay)


OPTIMIZERS: dict[str, Factory] = {"adam": adam, "sgd": sgd}


def make(optimizer: str | Factory, params: list[torch.Tensor], train) -> torch.optim.Optimizer:
    """The optimizer named in OPTIMIZERS, or built by a method's own factory (e.g. IVON with the
    effective sample size and prior of its cell)."""
    if callable(optimizer):
        return optimizer(params, train)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[optimizer](params, train)


def sampling(optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
    """The context each forward and backward pass runs in: a variational optimizer (IVON) draws the
    weights of the pass from its posterior there and restores the means after; a no-op otherwise."""
    if isinstance(optimizer, ivon.IVON):
        return optimizer.sampled_params(train=True)
    return contextlib.nullcontext()
