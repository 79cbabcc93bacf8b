"""How long a cell trains: epochs and steps, and the check that stops a diverging run."""

from __future__ import annotations

import math


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the cell is recorded as failed, not retried."""


def steps_per_epoch(train, n: int) -> int:
    """Minibatches in one pass over n examples (the last one may be short)."""
    return math.ceil(n / min(train.batch_size, n))


def epochs_for(train, n: int) -> int:
    """train.epochs, raised so that the run takes at least train.min_steps optimiser steps."""
    return max(train.epochs, math.ceil(train.min_steps / steps_per_epoch(train, n)))


def check_finite(epoch: int, loss: float) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged at epoch {epoch}: loss={loss}")
